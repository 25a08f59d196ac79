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
    """One untokenised sample with the columns of st_instruct.data.builder (numbers random, shapes right)."""
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


def build_tiny_forecaster(tokenizer, arch: str = "llama", history: int = 12, horizon: int = 12, channels: int = 2,
                          coord_dim: int = 8, seed: int = 0, **config):
    """An ``STForecaster`` on a tiny backbone whose vocabulary covers ``tokenizer`` (which must hold the ST tokens)."""
    import torch

    from st_instruct.data.st_tokens import st_token_ids
    from st_instruct.models.forecaster import STForecaster, STForecasterConfig

    ids = st_token_ids(tokenizer)
    backbone = build_tiny_backbone(arch, vocab_size=len(tokenizer), seed=seed)
    settings = dict(encoder_dim=16, head_dim=32) | config
    torch.manual_seed(seed + 1)
    return STForecaster(backbone, STForecasterConfig(history=history, horizon=horizon, channels=channels,
                                                     coord_dim=coord_dim, his_token_id=ids.his,
                                                     pre_token_id=ids.pre, **settings))
