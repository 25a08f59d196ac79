"""ST-VLM: the ST forecaster on vision-language backbones (LLaVA, Qwen2-VL, Idefics3), built tiny from config.

The rows are real builder samples of the small synthetic city; their images are rendered from the same windows
(``WindowImages``), 32 x 32 for the tiny towers.
"""

import pytest
import torch
from tiny import VLM_FAMILIES, VLM_IMAGE_TOKENS, build_test_tokenizer, build_tiny_vlm, tiny_st_config

from st_instruct.configs import DataConfig
from st_instruct.models.forecaster import build_st_forecaster
from st_instruct.models.patching import (
    attention_implementation,
    decoder_layers,
    is_vision_language,
    language_model,
    vision_tower,
)
from st_instruct.samples.builder import build_dataset
from st_instruct.samples.collator import STDataCollator
from st_instruct.samples.render import build_window_images
from st_instruct.samples.st_tokens import add_st_tokens, st_token_ids
from st_instruct.samples.vision_collator import STVisionCollator

DATA = dict(dataset_names=["synthetic-small"], granularity="graph", template="forecast_graph", window_sample=3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("built_vlm"))


def family_setup(family, cache, seed=0):
    """``(model, processor, tokenizer, rows, images)`` for one tiny family."""
    tokenizer = build_test_tokenizer()
    add_st_tokens(tokenizer)
    model, processor = build_tiny_vlm(family, tokenizer, seed=seed)
    config = DataConfig(**DATA, dataset_cache_dir=cache)
    rows = build_dataset(config, tokenizer)["train"]
    return model, processor, tokenizer, [rows[i] for i in range(2)], build_window_images(config, "map", 32)


def forecaster(backbone, tokenizer, seed=1, **options):
    config = tiny_st_config(tokenizer, **options)
    torch.manual_seed(seed)
    return build_st_forecaster(backbone, config).eval()


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_collator_keeps_st_positions_and_answer_labels_after_image_expansion(family, cache):
    model, processor, tokenizer, rows, images = family_setup(family, cache)
    batch = STVisionCollator(processor, images)(rows)
    text = STDataCollator(tokenizer)(rows)
    ids = st_token_ids(tokenizer)
    image_ids = {tokenizer.convert_tokens_to_ids(t) for t in VLM_IMAGE_TOKENS[family]}
    assert "pixel_values" in batch
    for b, row in enumerate(rows):
        nodes = len(row["node_index"])
        real = batch["node_mask"][b]
        assert int(real.sum()) == nodes == 12
        his, pre = batch["his_positions"][b][real], batch["pre_positions"][b][real]
        assert (batch["input_ids"][b, his] == ids.his).all() and (batch["input_ids"][b, pre] == ids.pre).all()
        length = int(batch["attention_mask"][b].sum())
        expanded = batch["input_ids"][b, :length]
        is_image = torch.isin(expanded, torch.tensor(sorted(image_ids)))
        assert int(is_image.sum()) > 0
        # the image tokens are the only difference to the text path's ids, and they all come before the ST tokens
        text_length = int(text["attention_mask"][b].sum())
        assert torch.equal(expanded[~is_image], text["input_ids"][b, :text_length])
        shift = int(is_image.sum())
        assert torch.equal(his, text["his_positions"][b][real] + shift)
        assert torch.equal(pre, text["pre_positions"][b][real] + shift)
        # labels: exactly the text path's labelled tokens (the answer and its end of turn), nowhere else
        labelled = batch["labels"][b] != -100
        assert torch.equal(batch["input_ids"][b][labelled], text["input_ids"][b][text["labels"][b] != -100])
        assert labelled[: int(is_image.nonzero().max())].sum() == 0
        assert tokenizer.decode(batch["input_ids"][b][labelled]).endswith("<|im_end|>")


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_fusion_with_its_gate_closed_equals_the_model_without_fusion(family, cache):
    model, processor, tokenizer, rows, images = family_setup(family, cache)
    fused = forecaster(model, tokenizer, st_fusion=True, st_fusion_heads=2)
    assert is_vision_language(fused.backbone) and fused.st_fusion.gate.item() == 0.0
    batch = STVisionCollator(processor, images)(rows)
    with torch.no_grad():
        closed = fused(**batch).predictions
        fusion, fused.st_fusion = fused.st_fusion, None
        without = fused(**batch).predictions
        fused.st_fusion = fusion
        fusion.gate.fill_(0.5)
        opened = fused(**batch).predictions
    assert torch.equal(closed, without)
    assert not torch.allclose(opened, closed)  # the fusion acts once its gate opens: the test can fail


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_the_image_changes_the_forecast(family, cache):
    """The image reaches the language model: another picture of the same prompt gives another forecast."""
    from PIL import Image

    model, processor, tokenizer, rows, images = family_setup(family, cache)
    model_forecaster = forecaster(model, tokenizer)
    with torch.no_grad():
        rendered = model_forecaster(**STVisionCollator(processor, images)(rows)).predictions
        blank = model_forecaster(**STVisionCollator(processor, lambda d, s: Image.new("RGB", (32, 32)))(rows))
    assert not torch.allclose(rendered, blank.predictions)


def test_text_only_vlm_forecaster_equals_the_text_forecaster_on_its_language_model(cache):
    """With the image path switched off (``images=None``) a LLaVA forecaster is the text forecaster on the same
    language model: same ST weights, same language weights, same predictions."""
    from transformers import LlamaForCausalLM

    model, processor, tokenizer, rows, _ = family_setup("llava", cache)
    text_model = LlamaForCausalLM(model.config.text_config)
    text_model.model.load_state_dict(model.model.language_model.state_dict())
    text_model.lm_head.load_state_dict(model.lm_head.state_dict())
    vlm = forecaster(model, tokenizer)
    text = forecaster(text_model.eval(), tokenizer)
    with torch.no_grad():
        vlm_batch = STVisionCollator(processor, None)(rows)
        text_batch = STDataCollator(tokenizer)(rows)
        assert "pixel_values" not in vlm_batch and torch.equal(vlm_batch["input_ids"], text_batch["input_ids"])
        torch.testing.assert_close(vlm(**vlm_batch).predictions, text(**text_batch).predictions, atol=1e-6,
                                   rtol=1e-5)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_vlm_seams_act_on_the_language_model_only(family, cache):
    from st_instruct.models.se_attention import ATTN_IMPLEMENTATION

    model, processor, tokenizer, rows, images = family_setup(family, cache)
    se = forecaster(model, tokenizer, se_attention=True, se_pairs=2, mrffn=True, mrffn_layers=[-1], mrffn_slots=4,
                    mrffn_key_dim=8)
    assert attention_implementation(se.backbone) == ATTN_IMPLEMENTATION
    assert vision_tower(se.backbone).config._attn_implementation != ATTN_IMPLEMENTATION
    assert decoder_layers(se.backbone)[0] is language_model(se.backbone).layers[0]
    inside = family == "qwen2_vl"  # Qwen2-VL's projector (patch merger) is part of its tower, saved with it
    assert {"st_vision_tower", "st_memory.layers.1"} <= set(se.st_modules())
    assert ("st_vision_projector" in se.st_modules()) != inside
    with torch.no_grad():
        out = se(**STVisionCollator(processor, images)(rows)).predictions
    assert out.shape == (2, 12, 12, 2) and torch.isfinite(out).all()


def test_fusion_needs_a_vision_language_backbone(st_tok):
    from tiny import build_tiny_backbone

    with pytest.raises(ValueError, match="fusion joins the ST tokens with a vision-language model"):
        forecaster(build_tiny_backbone(vocab_size=len(st_tok)), st_tok, st_fusion=True)


def test_image_size_the_tower_cannot_take_names_both_sizes(cache):
    from st_instruct.models.vlm import check_image_size

    model, *_ = family_setup("llava", cache)
    with pytest.raises(ValueError, match=r"image_size is 64, but the vision tower of 'tiny' takes 32 x 32"):
        check_image_size(model, 64, "tiny")
    qwen, *_ = family_setup("qwen2_vl", cache)
    check_image_size(qwen, 48, "tiny-qwen")  # any multiple of 8 x 2 = 16
    with pytest.raises(ValueError, match=r"multiples of 16 \(patch_size x spatial_merge_size\)"):
        check_image_size(qwen, 40, "tiny-qwen")


def test_processor_without_chat_template_is_refused(cache):
    from st_instruct.models.vlm import check_processor

    _, processor, *_ = family_setup("llava", cache)
    processor.chat_template = None
    with pytest.raises(ValueError, match=r"processor of 'tiny' \(LlavaProcessor\) has no chat template"):
        check_processor(processor, "tiny")


def test_qwen2_5_vl_and_smolvlm_module_paths_resolve():
    """The two families of VISION_LANGUAGE without a tiny end-to-end test here (they share Qwen2-VL's and
    Idefics3's processors and forward): every path of their layout names the module it should."""
    import transformers as T

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, vocab_size=200)
    qwen = T.Qwen2_5_VLForConditionalGeneration(T.Qwen2_5_VLConfig(
        text_config=dict(text, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                "rope_theta": 10000.0}, bos_token_id=None, eos_token_id=None),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=1, fullatt_block_indexes=[0]),
        image_token_id=190, video_token_id=191, vision_start_token_id=192))
    smol = T.SmolVLMForConditionalGeneration(T.SmolVLMConfig(
        text_config=dict(text, model_type="llama"), vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
            patch_size=8), image_token_id=190, scale_factor=2))
    from st_instruct.models.patching import vision_projector

    for model, names in ((qwen, ("Qwen2_5_VLTextModel", "Qwen2_5_VisionTransformerPretrainedModel",
                                 "Qwen2_5_VLPatchMerger")),
                         (smol, ("LlamaModel", "SmolVLMVisionTransformer", "SmolVLMConnector"))):
        assert is_vision_language(model)
        found = (language_model(model), vision_tower(model), vision_projector(model))
        assert tuple(type(module).__name__ for module in found) == names
        assert decoder_layers(model)[1] is found[0].layers[1]
