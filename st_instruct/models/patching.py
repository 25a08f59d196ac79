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
# class-name endings of normalisation modules: each family defines its own RMSNorm class (LlamaRMSNorm, ...)
NORM_CLASS_SUFFIXES = ("LayerNorm", "RMSNorm")


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


def layer_norms(model: nn.Module) -> list[nn.Module]:
    """Every normalisation module of the backbone, final norm included: ``nn.LayerNorm`` / ``nn.RMSNorm`` and the
    families' own classes (``LlamaRMSNorm``, ``Qwen2RMSNorm``, Qwen3's ``q_norm`` / ``k_norm``, GPT-2's ``ln_*``).

    Matched by class so a family that names its norms differently still counts; raises if none is found.
    """
    norms = [module for module in unwrap(model).modules()
             if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith(NORM_CLASS_SUFFIXES)]
    if not norms:
        raise UnsupportedArchitectureError(f"found no LayerNorm / RMSNorm module in {type(unwrap(model)).__name__}; "
                                           f"add its norm class suffix to {__name__}.NORM_CLASS_SUFFIXES")
    return norms


def _is_projection(module: nn.Module) -> bool:
    # bitsandbytes' Linear4bit subclasses nn.Linear; GPT-2 uses transformers' Conv1D (a transposed Linear); a PEFT
    # LoRA layer holds the original projection as its `base_layer`
    module = getattr(module, "base_layer", module)
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _projections_below(module: nn.Module, prefix: str) -> list[str]:
    """Paths of the outermost linear projections below ``module`` (never their insides)."""
    found = []
    for name, child in module.named_children():
        path = f"{prefix}.{name}"
        found.extend([path] if _is_projection(child) else _projections_below(child, path))
    return found


def _projection_names(model: nn.Module, kind: str) -> list[str]:
    """Paths, relative to a decoder layer, of the linear projections inside the ``kind`` block (``"attention"`` or
    ``"feed-forward"``) of every decoder layer, in order of first appearance; the same with or without LoRA."""
    names: list[str] = []
    for layer in decoder_layers(model):
        block = attention_module(model, layer) if kind == "attention" else feed_forward_module(layer)
        block_path = next(path for path, module in layer.named_modules() if module is block)
        names.extend(name for name in _projections_below(block, block_path) if name not in names)
    if not names:
        raise UnsupportedArchitectureError(f"found no linear projection in the {kind} blocks of "
                                           f"{type(unwrap(model)).__name__}")
    return names


def attention_projection_names(model: nn.Module) -> list[str]:
    """The linear projections of the self-attention blocks as paths below a decoder layer, usable as PEFT
    ``target_modules`` (which match by suffix): ``self_attn.{q,k,v,o}_proj`` for Llama / Qwen2, ``attn.c_attn`` and
    ``attn.c_proj`` for GPT-2 (whose MLP also has a ``c_proj``: the block prefix keeps it out)."""
    return _projection_names(model, "attention")


def feed_forward_projection_names(model: nn.Module) -> list[str]:
    """The linear projections of the feed-forward blocks as paths below a decoder layer (``mlp.gate_proj``,
    ``mlp.up_proj``, ``mlp.down_proj`` for Llama / Qwen2; ``mlp.c_fc``, ``mlp.c_proj`` for GPT-2)."""
    return _projection_names(model, "feed-forward")


def is_loaded_in_4bit(model: nn.Module) -> bool:
    """Whether the (unwrapped) model was loaded with a bitsandbytes 4-bit ``quantization_config``."""
    return bool(getattr(unwrap(model), "is_loaded_in_4bit", False))
