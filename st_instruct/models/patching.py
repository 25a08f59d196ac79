"""The one file that knows Hugging Face's internal module paths (DESIGN.md §4).

Everything else in st_instruct reaches into a backbone only through these functions, so supporting a new
architecture family means adding one row to :data:`DECODER_LAYERS` (and the attention / feed-forward attribute
names if they differ), and a transformers release that moves a module breaks exactly one place. A PEFT-wrapped
model (``PeftModel``) is unwrapped to the transformers model underneath first.

Supported ``model_type`` families: Llama (SmolLM2), Mistral, Qwen2/Qwen3, Gemma/Gemma2, Phi-3 (``model.layers``)
and GPT-2 / GPT-Neo (``transformer.h``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

# model_type -> path of the decoder-layer ModuleList below the *ForCausalLM model
DECODER_LAYERS: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "phi3": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neo": "transformer.h",
}
# attribute names of the self-attention and feed-forward blocks inside one decoder layer
ATTENTION_NAMES = {"gpt2": "attn", "gpt_neo": "attn"}  # default "self_attn"
FEED_FORWARD_NAME = "mlp"  # every family above


class UnsupportedArchitectureError(ValueError):
    """A backbone whose module layout st_instruct does not know."""


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (``PeftModel.get_base_model()``), else ``model`` itself."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def model_type(model: nn.Module) -> str:
    """``config.model_type`` of the (unwrapped) model; raises for a model without a transformers config."""
    config = getattr(unwrap(model), "config", None)
    if config is None or not getattr(config, "model_type", None):
        raise UnsupportedArchitectureError(f"{type(model).__name__} has no transformers config with a model_type; "
                                           "pass a transformers *ForCausalLM model")
    return config.model_type


def _layers_path(model: nn.Module) -> str:
    kind = model_type(model)
    if kind not in DECODER_LAYERS:
        raise UnsupportedArchitectureError(
            f"backbone architecture {kind!r} ({type(unwrap(model)).__name__}) is not supported; supported "
            f"model types: {', '.join(sorted(DECODER_LAYERS))}. Add its decoder-layer path to "
            "st_instruct.models.patching.DECODER_LAYERS")
    return DECODER_LAYERS[kind]


def _resolve(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    """``(parent module, attribute name)`` of the dotted ``path`` below ``root``."""
    *parents, name = path.split(".")
    parent = root
    for part in parents:
        parent = getattr(parent, part)
    return parent, name


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM, first to last (``model.model.layers`` / ``model.transformer.h``)."""
    parent, name = _resolve(unwrap(model), _layers_path(model))
    layers = getattr(parent, name)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedArchitectureError(f"{_layers_path(model)} of {type(unwrap(model)).__name__} is a "
                                           f"{type(layers).__name__}, not a ModuleList of decoder layers")
    return layers


def attention_module(model: nn.Module, layer: nn.Module) -> nn.Module:
    """The self-attention block of one decoder layer of ``model`` (``self_attn``; ``attn`` for GPT-2)."""
    return getattr(layer, ATTENTION_NAMES.get(model_type(model), "self_attn"))


def feed_forward_module(layer: nn.Module) -> nn.Module:
    """The feed-forward block (``mlp``) of one decoder layer."""
    return getattr(layer, FEED_FORWARD_NAME)


def input_embeddings(model: nn.Module) -> nn.Embedding:
    """The token embedding table (``model.model.embed_tokens`` / ``model.transformer.wte``)."""
    return unwrap(model).get_input_embeddings()


def hidden_size(config: Any) -> int:
    """Width of the residual stream: ``hidden_size`` (``n_embd`` for GPT-2 through its attribute map)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text_config.hidden_size)


def truncate_layers(model: nn.Module, num_layers: int) -> nn.Module:
    """Keep only the first ``num_layers`` decoder layers of ``model`` in place (ST-LLM, GPT4TS); returns it.

    Sets ``config.num_hidden_layers`` (``n_layer`` for GPT-2) and cuts per-layer config lists such as
    ``layer_types`` so the model's forward, its mask construction and a ``save_pretrained`` checkpoint all agree
    on the new depth. Idempotent; asking for more layers than the model has is an error.
    """
    layers = decoder_layers(model)
    if not 1 <= num_layers <= len(layers):
        raise ValueError(f"num_layers must be between 1 and the backbone's {len(layers)} layers, found {num_layers}")
    parent, name = _resolve(unwrap(model), _layers_path(model))
    setattr(parent, name, nn.ModuleList(list(layers)[:num_layers]))
    config = unwrap(model).config
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types)[:num_layers]
    assert len(decoder_layers(model)) == num_layers == config.num_hidden_layers
    return model
