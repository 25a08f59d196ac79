"""Faithful loading of a saved adapter forecaster by tools that read ``adapter_config.json`` alone.

``AutoPeftModelForCausalLM.from_pretrained(DIR)`` either rebuilds the backbone ``load_forecaster`` builds (exactly:
state dict and logits, the ST token rows included) or refuses, naming what training changed; the saved
``adapter_config.json`` names the base's Hub id, ``st_backbone.json`` records the truncation and the added tokens.
Tiny Llama backbones in local folders; the embedded backbone ``smollm2-135m`` is played by one placed in a private
model cache (its GGUF conversion is never run).
"""

import json
import shutil

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModelForCausalLM
from tiny import tiny_st_config

from st_instruct.configs import FreezeConfig
from st_instruct.model_dir import ADAPTER_FILES, BACKBONE_FILE
from st_instruct.models import hub_backbone
from st_instruct.models.backbones import BackboneSource, build_base_backbone, embedded_backbone_name, hub_model_id
from st_instruct.models.forecaster import build_st_forecaster
from st_instruct.models.saving import load_forecaster, read_backbone_source, save_forecaster
from st_instruct.samples.st_tokens import ST_TOKENS
from st_instruct.training.freeze import apply_freeze_plan

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
ALLOW = ["st_instruct"]


@pytest.fixture
def embedded_cache(tiny_backbone_dir, tmp_path, monkeypatch):
    """A private model cache where ``smollm2-135m`` is the tiny Llama (model and tokenizer already converted)."""
    monkeypatch.setenv("ST_INSTRUCT_MODEL_CACHE", str(tmp_path / "cache"))
    for part in ("model", "tokenizer"):
        shutil.copytree(tiny_backbone_dir, tmp_path / "cache" / "smollm2-135m" / part)
    return tmp_path / "cache"


def save_adapter_forecaster(directory, source, plan="lora", train_tokens=False, mrffn_layers=None):
    """Build the forecaster as training does (base backbone + ST tokens, ``plan``), move every trainable backbone
    weight off its initial value (a zero LoRA B would hide a wrong rebuild), save it; returns the live model."""
    backbone, tokenizer = build_base_backbone(source)
    config = tiny_st_config(tokenizer, mrffn=mrffn_layers is not None, mrffn_layers=mrffn_layers or [-1],
                            mrffn_slots=4, mrffn_key_dim=8)
    model = build_st_forecaster(backbone, config)
    apply_freeze_plan(model, FreezeConfig(freeze_plan=plan, train_st_token_embeddings=train_tokens))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.backbone.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    save_forecaster(model, directory, source, tokenizer)
    return model.eval()


def token_ids(directory):
    """A batch of ids that includes every ST token (their embedding rows are the ones added in training)."""
    ids = json.loads((directory / BACKBONE_FILE).read_text())["added_tokens"]
    return torch.tensor([[5, 17, *ids.values(), 40, 3], [*ids.values(), 9, 11, 2, 1]])


def adapter_config(directory):
    return json.loads((directory / ADAPTER_FILES[0]).read_text())


def assert_same_backbone(got, expected, ids):
    """Bit-identical logits and parameters. The logits come first: bitsandbytes' CPU path repacks a 4-bit weight
    (and its quantisation state) at its first forward, so two equal 4-bit models compare equal only after one."""
    with torch.no_grad():
        assert torch.equal(got(input_ids=ids).logits, expected(input_ids=ids).logits)
    got_parameters, expected_parameters = dict(got.named_parameters()), dict(expected.named_parameters())
    assert got_parameters.keys() == expected_parameters.keys()
    for name, value in expected_parameters.items():
        assert torch.equal(got_parameters[name], value), name


def test_hub_model_id_names_the_hub_checkpoint_of_registered_backbones_only(tiny_backbone_dir):
    assert hub_model_id("smollm2-135m") == SMOLLM2_HUB_ID
    assert hub_model_id("smollm2-135m-vlm") == SMOLLM2_HUB_ID  # its language model: the only pretrained part
    assert hub_model_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert hub_model_id(str(tiny_backbone_dir)) == str(tiny_backbone_dir)
    assert embedded_backbone_name(SMOLLM2_HUB_ID) == "smollm2-135m"
    with pytest.raises(ValueError, match=r"'Qwen/Qwen2.5-0.5B' is not the Hub id of exactly one registered backbone"):
        embedded_backbone_name("Qwen/Qwen2.5-0.5B")


def test_saved_adapter_config_names_the_hub_id_not_the_model_cache(embedded_cache, tmp_path):
    live = save_adapter_forecaster(tmp_path / "saved", BackboneSource("smollm2-135m"))
    config = adapter_config(tmp_path / "saved")
    assert config["base_model_name_or_path"] == SMOLLM2_HUB_ID
    assert config["task_type"] is None
    assert config["auto_mapping"] == {"base_model_class": "EmbeddedSTBackbone",
                                      "parent_library": "st_instruct.models.hub_backbone", "task_type": "CAUSAL_LM"}
    peft = live.backbone.peft_config["default"]  # everything else as PEFT wrote it
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == \
        (peft.r, peft.lora_alpha, sorted(peft.target_modules))
    assert str(embedded_cache) not in (tmp_path / "saved" / ADAPTER_FILES[0]).read_text()


def test_a_local_base_folder_stays_as_given(tiny_backbone_dir, tmp_path):
    save_adapter_forecaster(tmp_path / "saved", BackboneSource(str(tiny_backbone_dir)))
    config = adapter_config(tmp_path / "saved")
    assert config["base_model_name_or_path"] == str(tiny_backbone_dir)
    assert config["auto_mapping"]["base_model_class"] == "STBackbone"


def test_st_backbone_json_records_the_truncation_and_the_added_tokens(tiny_backbone_dir, tmp_path):
    save_adapter_forecaster(tmp_path / "cut", BackboneSource(str(tiny_backbone_dir), num_layers=1))
    source, kind = read_backbone_source(tmp_path / "cut")
    assert (kind, source.num_layers, source.base_num_layers, source.truncated) == ("adapter", 1, 2, True)
    tokenizer = build_base_backbone(BackboneSource(str(tiny_backbone_dir)))[1]
    assert source.added_tokens == {token: tokenizer.convert_tokens_to_ids(token) for token in ST_TOKENS}
    assert min(source.added_tokens.values()) >= 800  # new rows, after the base vocabulary's
    save_adapter_forecaster(tmp_path / "all", BackboneSource(str(tiny_backbone_dir), num_layers=2))
    assert not read_backbone_source(tmp_path / "all")[0].truncated  # all of the base's layers kept


def test_plain_auto_peft_refuses_a_truncated_adapter_and_with_the_allowlist_names_the_truncation(
        tiny_backbone_dir, tmp_path):
    save_adapter_forecaster(tmp_path / "cut", BackboneSource(str(tiny_backbone_dir), num_layers=1))
    with pytest.raises(ValueError, match=r"wants to import 'st_instruct.models.hub_backbone' which is not in the "
                                         r"import allowlist"):
        AutoPeftModelForCausalLM.from_pretrained(tmp_path / "cut")
    with pytest.raises(ValueError, match=r"its decoder layers were truncated .*st_backbone.json.* load that folder "
                                         r"with st_instruct\.models\.saving\.load_forecaster\(DIR\)"):
        AutoPeftModelForCausalLM.from_pretrained(tmp_path / "cut", import_allowlist=ALLOW)


@pytest.mark.parametrize("base, num_layers, plan, train_tokens", [
    ("folder", None, "lora", False),
    ("folder", 2, "lora", True),  # num_layers == the base's layers: nothing truncated; the <st_pre> row trains
    ("folder", None, "frozen", True),  # a trainable-tokens adapter (PEFT's task_type is None already)
    ("embedded", None, "lora", False),
    ("folder", None, "qlora", False),  # rebuilt in 4-bit, as it trained (bitsandbytes' CPU kernels)
])
def test_auto_peft_with_the_allowlist_rebuilds_the_backbone_load_forecaster_builds(
        base, num_layers, plan, train_tokens, tiny_backbone_dir, embedded_cache, tmp_path):
    name = "smollm2-135m" if base == "embedded" else str(tiny_backbone_dir)
    source = BackboneSource(name, num_layers, load_in_4bit=plan == "qlora")
    live = save_adapter_forecaster(tmp_path / "saved", source, plan, train_tokens)
    loaded, _ = load_forecaster(tmp_path / "saved")
    ids = token_ids(tmp_path / "saved")
    assert type(loaded.backbone) is type(live.backbone)  # the PEFT class it trained in (task type restored)
    assert_same_backbone(loaded.backbone, live.backbone, ids)
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "saved", import_allowlist=ALLOW)
    assert type(auto) is PeftModelForCausalLM
    assert_same_backbone(auto, loaded.backbone, ids)


@pytest.mark.parametrize("cls, built", [(hub_backbone.EmbeddedSTBackbone, BackboneSource("smollm2-135m")),
                                        (hub_backbone.STBackbone, BackboneSource(SMOLLM2_HUB_ID)),
                                        (hub_backbone.STBackbone4bit,
                                         BackboneSource(SMOLLM2_HUB_ID, load_in_4bit=True))])
def test_the_class_tells_the_embedded_weights_from_the_hub_checkpoint_of_the_same_id(cls, built, monkeypatch):
    """A model trained on the embedded GGUF weights names EmbeddedSTBackbone, one trained on the Hub checkpoint
    itself STBackbone: the same Hub id rebuilds from the embedded weights or from the Hub."""
    sources = []

    def build(source):
        sources.append(source)
        return "backbone", "tokenizer"

    monkeypatch.setattr(hub_backbone, "build_base_backbone", build)
    assert cls.from_pretrained(SMOLLM2_HUB_ID) == "backbone"
    assert sources == [built]


def test_auto_peft_refuses_a_backbone_holding_st_modules(tiny_backbone_dir, tmp_path):
    save_adapter_forecaster(tmp_path / "saved", BackboneSource(str(tiny_backbone_dir)), mrffn_layers=[0])
    assert adapter_config(tmp_path / "saved")["auto_mapping"]["base_model_class"] == "BackboneWithSTModules"
    with pytest.raises(ValueError, match=r"MRFFN memories\) and are saved in st_modules.safetensors, not in the "
                                         r"adapter.*load_forecaster"):
        AutoPeftModelForCausalLM.from_pretrained(tmp_path / "saved", import_allowlist=ALLOW)


@pytest.mark.parametrize("source, inside, expected", [
    (BackboneSource("smollm2-135m", num_layers=2, base_num_layers=30), False, "TruncatedBackbone"),
    (BackboneSource("org/model", num_layers=2), False, "TruncatedBackbone"),  # the base's count unknown
    (BackboneSource("org/model", random_init_seed=0), False, "RandomInitBackbone"),
    (BackboneSource("smollm2-135m-vlm"), True, "BackboneWithSTModules"),
    (BackboneSource("smollm2-135m", num_layers=30, base_num_layers=30), False, "EmbeddedSTBackbone"),
    (BackboneSource("smollm2-135m", load_in_4bit=True), False, "EmbeddedSTBackbone4bit"),
    (BackboneSource(SMOLLM2_HUB_ID), False, "STBackbone"),
    (BackboneSource("org/model", load_in_4bit=True), False, "STBackbone4bit"),
])
def test_the_auto_class_follows_what_training_changed(source, inside, expected):
    assert hub_backbone.auto_class(source, inside).__name__ == expected


def test_the_random_init_refusal_names_it():
    with pytest.raises(ValueError, match=r"its weights were drawn at random \(the random-LLM control"):
        hub_backbone.RandomInitBackbone.from_pretrained("org/model", revision=None)


def test_a_rebuilding_class_takes_no_options(tiny_backbone_dir):
    with pytest.raises(ValueError, match=r"names revision 'v2' of the base"):
        hub_backbone.STBackbone.from_pretrained(str(tiny_backbone_dir), revision="v2")
    with pytest.raises(TypeError, match=r"takes no loading options, got \['dtype'\]"):
        hub_backbone.STBackbone.from_pretrained(str(tiny_backbone_dir), dtype=torch.bfloat16)


def test_a_folder_written_before_the_records_still_loads_to_the_same_backbone(tiny_backbone_dir, tmp_path):
    """Old layout: no base_num_layers / added_tokens in st_backbone.json, PEFT's own adapter_config.json."""
    live = save_adapter_forecaster(tmp_path / "saved", BackboneSource(str(tiny_backbone_dir)))
    ids = token_ids(tmp_path / "saved")
    meta = json.loads((tmp_path / "saved" / BACKBONE_FILE).read_text())
    for key in ("base_num_layers", "added_tokens"):
        del meta[key]
    (tmp_path / "saved" / BACKBONE_FILE).write_text(json.dumps(meta))
    config = adapter_config(tmp_path / "saved")
    config.update(task_type="CAUSAL_LM", auto_mapping=None)
    (tmp_path / "saved" / ADAPTER_FILES[0]).write_text(json.dumps(config))
    source, _ = read_backbone_source(tmp_path / "saved")
    assert (source.base_num_layers, source.added_tokens, source.truncated) == (None, None, False)
    loaded, _ = load_forecaster(tmp_path / "saved")
    assert type(loaded.backbone) is type(live.backbone) is PeftModelForCausalLM
    assert_same_backbone(loaded.backbone, live.backbone, ids)


@pytest.mark.parametrize("key, value, message", [
    ("added_tokens", ["<st_his>"], "added_tokens must map token strings to integer ids, found"),
    ("base_num_layers", "30", "base_num_layers must be a positive integer or null, found '30'"),
])
def test_a_bad_record_names_the_file_and_key(key, value, message, tiny_backbone_dir, tmp_path):
    save_adapter_forecaster(tmp_path / "saved", BackboneSource(str(tiny_backbone_dir)))
    meta = json.loads((tmp_path / "saved" / BACKBONE_FILE).read_text())
    (tmp_path / "saved" / BACKBONE_FILE).write_text(json.dumps({**meta, key: value}))
    with pytest.raises(ValueError, match=rf"st_backbone.json: {message}"):
        read_backbone_source(tmp_path / "saved")
