"""A tokenizer trained locally for tests: byte-level BPE (any text encodes), ~800 tokens, ChatML like SmolLM2."""

from __future__ import annotations

import random

from transformers import PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<pad>"]


def _corpus(lines: int = 400, seed: int = 0) -> list[str]:
    """Text resembling the instruction prompts: places, times, quantities, numbers, role names."""
    rng = random.Random(seed)
    places = ["Midtown", "Harlem", "Chelsea", "SoHo", "Tribeca", "Chinatown", "Dongcheng", "Haidian", "Wanliu",
              "freeway", "sensor", "station", "region", "zone", "grid cell", "district"]
    quantities = ["taxi inflow", "taxi outflow", "bike pickups", "bike dropoffs", "traffic speed", "PM2.5",
                  "PM10", "NO2", "temperature", "wind speed", "demand", "flow"]
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    words = ("the a of in on at for to from with and is are was history forecast predict next previous hours steps "
             "minutes days values given following sequence observed recorded average trend morning evening peak "
             "residential business area near located city please answer based pattern expected will be").split()
    text = []
    for _ in range(lines):
        kind = rng.random()
        if kind < 0.4:
            text.append(f"{rng.choice(places).capitalize()} {rng.randint(0, 300)} on {rng.choice(days)} "
                        f"{rng.randint(2015, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} from "
                        f"{rng.randint(0, 23):02d}:00 to {rng.randint(0, 23):02d}:00, {rng.choice(quantities)}.")
        elif kind < 0.7:
            values = ", ".join(f"{rng.uniform(0, 500):.1f}" for _ in range(rng.randint(3, 12)))
            text.append(f"The {rng.choice(quantities)} history is [{values}]. Predict the next {rng.randint(1, 24)} "
                        "steps.")
        else:
            text.append(" ".join(rng.choice(words) for _ in range(rng.randint(6, 20))).capitalize() + ".")
        text.append(rng.choice(["system", "user", "assistant"]) + "\n" + text[-1])
    return text


def build_test_tokenizer(vocab_size: int = 800) -> PreTrainedTokenizerFast:
    """Train the test tokenizer (well under a second). It has no ST tokens: add them with ``add_st_tokens``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>",
        chat_template=CHATML_TEMPLATE, model_max_length=2048,
    )


def st_messages(num_nodes: int = 1, sample_id: str = "s0") -> list[dict[str, str]]:
    """A user -> assistant exchange with one history and one prediction slot per node."""
    his = " ".join(f"zone {n} <st_start><st_his><st_end>" for n in range(num_nodes))
    pre = " ".join(f"zone {n} <st_start><st_pre><st_end>" for n in range(num_nodes))
    return [
        {"role": "system", "content": "You forecast urban flows."},
        {"role": "user", "content": f"Sample {sample_id}. History {his}. Predict the next 12 hours."},
        {"role": "assistant", "content": f"The forecast is {pre}."},
    ]


def st_sample(sample_id: str = "s0", num_nodes: int = 1, history: int = 12, horizon: int = 12, channels: int = 2,
              coord_dim: int = 4, seed: int = 0) -> dict:
    """One untokenised sample with the columns of st_instruct.samples.builder (numbers random, shapes right)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        "sample_id": sample_id,
        "template": "forecast_test@1",
        "messages": st_messages(num_nodes, sample_id),
        "history": rng.normal(size=(history, num_nodes, channels)).astype(np.float32),
        "history_mask": rng.random((history, num_nodes, channels)) > 0.1,
        "target": rng.normal(size=(horizon, num_nodes, channels)).astype(np.float32),
        "target_mask": rng.random((horizon, num_nodes, channels)) > 0.1,
        "node_index": np.arange(num_nodes, dtype=np.int32) + 5,
        "coords": rng.normal(size=(num_nodes, coord_dim)).astype(np.float32),
        "history_tod": np.arange(history) % 24,
        "history_dow": np.zeros(history, dtype=np.int64),
        "target_tod": (np.arange(horizon) + history) % 24,
        "target_dow": np.zeros(horizon, dtype=np.int64),
        "scaler_mean": np.zeros(channels, dtype=np.float32),
        "scaler_std": np.ones(channels, dtype=np.float32),
        "dataset": "synthetic",
        "city": "Testville",
        "split": "train",
        "time_start": "2020-01-01 00:00",
        "window_start": seed,
        "steps_per_day": 24,
    }


def build_tiny_backbone(arch: str = "llama", vocab_size: int = 800, hidden_size: int = 32, num_layers: int = 2,
                        seed: int = 0):
    """A randomly initialised causal LM of the ``llama``, ``qwen2`` or ``gpt2`` family, built from config."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=4,
                                          n_positions=2048, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0,
                                          embd_pdrop=0.0, attn_pdrop=0.0))
    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                  num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=2048)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    raise ValueError(f"no tiny {arch!r} backbone; use llama, qwen2 or gpt2")


def tiny_st_config(tokenizer, history: int = 12, horizon: int = 12, channels: int = 2, coord_dim: int = 8,
                   hidden_size: int | None = None, **recipe):
    """The ``STForecasterConfig`` of a tiny forecaster for ``tokenizer`` (which must hold the ST tokens): these shapes,
    and the concerns of a recipe with the model keys ``recipe`` (``se_attention=True``, ``st_encoder="tcn"``, ...; by
    default ``st_encoder_dim`` 16 and ``head_dim`` 32)."""
    from st_instruct.configs import ModelConfig
    from st_instruct.models.forecaster import STForecasterConfig
    from st_instruct.samples.st_tokens import st_token_ids

    ids = st_token_ids(tokenizer)
    model_config = ModelConfig(**({"st_encoder_dim": 16, "head_dim": 32} | recipe))
    return STForecasterConfig.of_recipe(model_config, history=history, horizon=horizon, channels=channels,
                                        coord_dim=coord_dim, his_token_id=ids.his, pre_token_id=ids.pre,
                                        hidden_size=hidden_size)


def build_tiny_forecaster(tokenizer, arch: str = "llama", seed: int = 0, **config):
    """An ``STForecaster`` on a tiny backbone whose vocabulary covers ``tokenizer`` (which must hold the ST tokens);
    ``config``: :func:`tiny_st_config`'s shapes and recipe keys."""
    import torch

    from st_instruct.models.forecaster import build_st_forecaster

    backbone = build_tiny_backbone(arch, vocab_size=len(tokenizer), seed=seed)
    st_config = tiny_st_config(tokenizer, **config)
    torch.manual_seed(seed + 1)
    return build_st_forecaster(backbone, st_config)


VLM_FAMILIES = ("llava", "qwen2_vl", "idefics3")
# special tokens each family's processor writes around / for an image
VLM_IMAGE_TOKENS = {"llava": ["<image>"], "qwen2_vl": ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"],
                    "idefics3": ["<image>", "<fake_token_around_image>", "<global-img>"]}
TINY_IMAGE_SIZE = 32


def build_tiny_vlm(family: str, tokenizer, seed: int = 0, hidden_size: int = 32, num_layers: int = 2):
    """``(model, processor)``: a randomly initialised vision-language model of ``family`` (LLaVA with a SigLIP tower,
    Qwen2-VL, Idefics3) built from config, and its processor with the PIL image processor (no torchvision) around
    ``tokenizer``, which gains the family's image tokens here (add the ST tokens first or after: the model covers
    ``len(tokenizer)`` either way when built last). 32 x 32 images."""
    import torch
    import transformers as T
    from tokenizers import AddedToken

    from st_instruct.models.vlm import IMAGE_PLACEHOLDERS, chatml_vision_template, qwen2_vl_processor

    tokenizer.add_special_tokens({"extra_special_tokens": [AddedToken(t, special=True, normalized=False)
                                                           for t in VLM_IMAGE_TOKENS[family]]},
                                 replace_extra_special_tokens=False)
    template = chatml_vision_template(IMAGE_PLACEHOLDERS[family])
    tokenizer.chat_template = template
    vocab, image_id = len(tokenizer), tokenizer.convert_tokens_to_ids(VLM_IMAGE_TOKENS[family][0])
    text = dict(vocab_size=vocab, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=1,
                  num_attention_heads=2, image_size=TINY_IMAGE_SIZE, patch_size=8)
    torch.manual_seed(seed)
    if family == "llava":
        model = T.LlavaForConditionalGeneration(T.LlavaConfig(
            vision_config=T.SiglipVisionConfig(**vision), text_config=T.LlamaConfig(**text), image_token_id=image_id,
            vision_feature_layer=-1, vision_feature_select_strategy="full"))
        processor = T.LlavaProcessor(image_processor=T.SiglipImageProcessorPil(
            size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}), tokenizer=tokenizer, patch_size=8,
            vision_feature_select_strategy="full", chat_template=template, num_additional_image_tokens=0)
    elif family == "qwen2_vl":
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in VLM_IMAGE_TOKENS[family]}
        model = T.Qwen2VLForConditionalGeneration(T.Qwen2VLConfig(
            text_config=dict(text, rope_parameters=rope, bos_token_id=None, eos_token_id=None),
            vision_config=dict(depth=1, embed_dim=hidden_size, hidden_size=hidden_size, num_heads=2, mlp_ratio=2,
                               patch_size=8, spatial_merge_size=2, temporal_patch_size=1, in_channels=3),
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|image_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"]))
        image_processor = T.Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=1,
                                                     min_pixels=TINY_IMAGE_SIZE ** 2, max_pixels=TINY_IMAGE_SIZE ** 2)
        processor = qwen2_vl_processor(image_processor, tokenizer, template)
    elif family == "idefics3":
        model = T.Idefics3ForConditionalGeneration(T.Idefics3Config(
            text_config=dict(text, model_type="llama"), vision_config=vision, image_token_id=image_id,
            scale_factor=2))
        image_processor = T.Idefics3ImageProcessorPil(do_image_splitting=False,
                                                      size={"longest_edge": TINY_IMAGE_SIZE},
                                                      max_image_size={"longest_edge": TINY_IMAGE_SIZE})
        processor = T.Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                        chat_template=template)
    else:
        raise ValueError(f"no tiny {family!r} VLM; use one of {VLM_FAMILIES}")
    return model.eval(), processor


def train_smoke(tmp_path_factory, backbone, *flags: str, steps: int = 2):
    """A forecaster trained by ``recipes/smoke_sft.yaml`` (synthetic-small: 12 zones, inflow / outflow; node prompts,
    scaling: train) on ``backbone`` for ``steps`` steps, no checkpoints, into a fresh folder; ``flags`` override
    recipe keys. Seconds on the tiny Llama of the ``tiny_backbone_dir`` fixture. Returns the folder."""
    from pathlib import Path

    from st_instruct.configs import parse_recipe, train_dataclasses
    from st_instruct.training.run import train

    smoke = Path(__file__).resolve().parents[1] / "recipes" / "smoke_sft.yaml"
    args = ["--model_name_or_path", str(backbone), "--dataset_cache_dir", str(tmp_path_factory.mktemp("built")),
            "--report_to", "none", "--output_dir", str(tmp_path_factory.mktemp("trained")), "--max_steps",
            str(steps), "--save_strategy", "no", *flags]
    return train(*parse_recipe(train_dataclasses(), [str(smoke), *args]))


def two_sample_batch(tokenizer):
    """A real collated batch: two samples of 2 and 3 nodes (``st_sample`` with 8 coordinates), tokenised with
    ``tokenizer`` (which has the ST tokens), right-padded by ``STDataCollator``."""
    from st_instruct.samples.collator import STDataCollator
    from st_instruct.samples.tokenize import tokenize_messages

    samples = []
    for seed, (sample_id, nodes) in enumerate([("a", 2), ("b", 3)]):
        sample = st_sample(sample_id, num_nodes=nodes, coord_dim=8, seed=seed)
        sample.update(tokenize_messages(sample["messages"], tokenizer, sample_id=sample_id, num_nodes=nodes))
        samples.append(sample)
    return STDataCollator(tokenizer)(samples)
