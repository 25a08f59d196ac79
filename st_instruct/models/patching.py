"""The one file that knows Hugging Face's internal module paths (docs/design.md §4).

Everything else in st_instruct reaches into a backbone only through these functions, so supporting a new
architecture family means adding one row to :data:`DECODER_LAYERS` (and the attention / feed-forward attribute
names if they differ), and a transformers release that moves a module breaks exactly one place. A PEFT-wrapped
model (``PeftModel``) is unwrapped to the transformers model underneath first.

It also holds the attention seam of SE-Attention (:mod:`st_instruct.models.se_attention`): each family's attention
geometry and RoPE layout, switching ``config._attn_implementation`` and handing extra keyword arguments through the
transformer body to the attention function.

Supported ``model_type`` families: Llama (SmolLM2), Mistral, Qwen2/Qwen3, Gemma/Gemma2, Phi-3 (``model.layers``)
and GPT-2 / GPT-Neo (``transformer.h``); and the vision-language families (:data:`VISION_LANGUAGE`) LLaVA
(``LlavaForConditionalGeneration``), Qwen2-VL / Qwen2.5-VL and Idefics3 / SmolVLM, whose *language model* carries
the ST parts exactly as a causal LM does: their decoder layers, embeddings and attention are those of the language
model, a custom attention implementation is set on the text sub-config only (the vision tower keeps its own), and the
ST vectors enter through a hook on the language model's input embeddings (:func:`replace_input_embeddings`), so
the VLM's own forward still reads ``input_ids`` + ``pixel_values``, places the image features and builds its
positions (Qwen2-VL's M-RoPE) itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

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
    "llava": "model.language_model.layers",
    "qwen2_vl": "model.language_model.layers",
    "qwen2_5_vl": "model.language_model.layers",
    "idefics3": "model.text_model.layers",
    "smolvlm": "model.text_model.layers",
}
# attribute names of the self-attention and feed-forward blocks inside one decoder layer
ATTENTION_NAMES = {"gpt2": "attn", "gpt_neo": "attn"}  # default "self_attn"
FEED_FORWARD_NAME = "mlp"  # every family above
# class-name endings of normalisation modules: each family defines its own RMSNorm class (LlamaRMSNorm, ...)
NORM_CLASS_SUFFIXES = ("LayerNorm", "RMSNorm")
# keyword under which a body's forward receives the key/value cache: transformers 5.24 renamed ``past_key_values``
# to ``cache`` (the old name still accepted through a deprecation shim until 5.40); both are looked up
CACHE_KWARGS = ("cache", "past_key_values")




@dataclass(frozen=True)
class VisionLanguageLayout:
    """Paths below a vision-language ``*ForConditionalGeneration`` model: the language model's body (the decoder
    stack without LM head), the vision tower and the projector from vision features to the language model's width."""

    language_model: str
    vision_tower: str
    vision_projector: str


VISION_LANGUAGE: dict[str, VisionLanguageLayout] = {
    "llava": VisionLanguageLayout("model.language_model", "model.vision_tower", "model.multi_modal_projector"),
    # Qwen2-VL's patch merger (its projector) sits inside the vision tower
    "qwen2_vl": VisionLanguageLayout("model.language_model", "model.visual", "model.visual.merger"),
    "qwen2_5_vl": VisionLanguageLayout("model.language_model", "model.visual", "model.visual.merger"),
    "idefics3": VisionLanguageLayout("model.text_model", "model.vision_model", "model.connector"),
    "smolvlm": VisionLanguageLayout("model.text_model", "model.vision_model", "model.connector"),
}
# the batch keys a VLM's forward reads beside input_ids (LLaVA: pixel_values; Qwen2-VL: + image_grid_thw;
# + mm_token_type_ids, the M-RoPE token kinds; Idefics3: + pixel_attention_mask)
VISION_INPUTS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "mm_token_type_ids")


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
    """The token embedding table (``model.model.embed_tokens`` / ``model.transformer.wte``; a VLM's language
    model's)."""
    return unwrap(model).get_input_embeddings()


def is_vision_language(model: nn.Module) -> bool:
    """Whether ``model`` is one of the vision-language families of :data:`VISION_LANGUAGE`."""
    return model_type(model) in VISION_LANGUAGE


def _vision_layout(model: nn.Module) -> VisionLanguageLayout:
    kind = model_type(model)
    if kind not in VISION_LANGUAGE:
        raise UnsupportedArchitectureError(
            f"{type(unwrap(model)).__name__} (model_type {kind!r}) is not a supported vision-language model; "
            f"supported: {', '.join(sorted(VISION_LANGUAGE))} (st_instruct.models.patching.VISION_LANGUAGE)")
    return VISION_LANGUAGE[kind]


def _module_at(model: nn.Module, path: str) -> nn.Module:
    parent, name = _resolve(unwrap(model), path)
    return getattr(parent, name)


def language_model(model: nn.Module) -> nn.Module:
    """A VLM's language-model body (``LlamaModel`` inside LLaVA, ``Qwen2VLTextModel``, Idefics3's text model)."""
    return _module_at(model, _vision_layout(model).language_model)


def vision_tower(model: nn.Module) -> nn.Module:
    """A VLM's vision encoder (SigLIP / CLIP inside LLaVA, Qwen2-VL's ``visual``, Idefics3's vision model)."""
    return _module_at(model, _vision_layout(model).vision_tower)


def vision_projector(model: nn.Module) -> nn.Module:
    """A VLM's projector from vision features to the language model's width (LLaVA's ``multi_modal_projector``,
    Qwen2-VL's patch merger -- inside its vision tower --, Idefics3's connector)."""
    return _module_at(model, _vision_layout(model).vision_projector)


def vision_module_path(model: nn.Module) -> str:
    """Path of the vision tower below the (unwrapped) model, for PEFT target patterns."""
    return _vision_layout(model).vision_tower


def language_model_path(model: nn.Module) -> str:
    """Path of the language-model body below the (unwrapped) model, for PEFT target patterns."""
    return _vision_layout(model).language_model


def image_size_of(model: nn.Module) -> int | None:
    """The square image side a VLM's vision tower is built for (``vision_config.image_size``), ``None`` for towers
    that take any size in multiples of their patch (Qwen2-VL)."""
    vision = unwrap(model).config.vision_config
    size = getattr(vision, "image_size", None)
    return int(size) if isinstance(size, int) else None


def replace_input_embeddings(model: nn.Module, batch_index: torch.Tensor, positions: torch.Tensor,
                             values: torch.Tensor, length: int) -> RemovableHandle:
    """Make the input-embedding module of ``model`` return its output with rows ``(batch_index[k], positions[k])``
    replaced by ``values[k]`` ([K], [K], [K, H]) on every call whose input is ``length`` tokens long (a generation
    step with the key/value cache is shorter and untouched); remove it with the returned handle's ``remove()``.

    The seam through which the ST vectors enter a backbone (docs/design.md §4): the model's forward still receives
    ``input_ids``, so a VLM places its image features (and builds M-RoPE positions) itself. The replacement is an
    out-of-place ``index_put``: the embedding output stays untouched for autograd.
    """

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if output.shape[1] != length:
            return output
        return output.index_put((batch_index, positions), values.to(output.dtype))

    return input_embeddings(model).register_forward_hook(hook)


def add_language_model_input_hook(model: nn.Module,
                                  edit: Callable[[torch.Tensor], torch.Tensor]) -> RemovableHandle:
    """Replace the ``inputs_embeds`` [B, S, H] a VLM hands its language model (image features placed, before the
    first decoder layer) by ``edit(inputs_embeds)``; remove it with the returned handle's ``remove()``. The seam of
    the ST-VLM fusion (:mod:`st_instruct.models.fusion`); a hook on the body, outside every decoder layer, so
    activation checkpointing's recomputation never misses it."""

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise UnsupportedArchitectureError(f"{type(unwrap(model)).__name__} called its language model without "
                                               "inputs_embeds; the ST-VLM fusion cannot see the image features")
        return args, {**kwargs, "inputs_embeds": edit(embeds)}

    return language_model(model).register_forward_pre_hook(hook, with_kwargs=True)


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
    config = unwrap(model).config.get_text_config()  # a VLM's language model: its text sub-config
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


# --- attention geometry and the attention-implementation seam (SE-Attention, docs/design.md §4) ----------------------

# families whose attention has no rotary position embedding (GPT-2 adds learned absolute position embeddings)
NO_ROPE = ("gpt2", "gpt_neo")


def attention_geometry(model: nn.Module) -> tuple[int, int, int]:
    """``(num_heads, num_kv_heads, head_dim)`` of the backbone's self-attention, read from its config: query heads,
    key/value heads (fewer with grouped-query attention, equal without: GPT-2 has no ``num_key_value_heads``) and
    the width of one head (``config.head_dim`` where the family sets it, as Gemma does, else hidden / heads)."""
    config = unwrap(model).config.get_text_config()
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return heads, kv_heads, head_dim


def uses_rope(model: nn.Module) -> bool:
    """Whether the backbone rotates queries and keys with rotary position embeddings (every family but GPT-2 /
    GPT-Neo). Raises for partial RoPE (``partial_rotary_factor`` < 1, e.g. some Phi checkpoints): its frequency
    pairs are ``(j, j + rotary_dim / 2)``, not the ``(j, j + head_dim / 2)`` that HF's ``rotate_half`` uses on a
    fully rotated head, so a rotation of those planes would not commute with the backbone's."""
    if model_type(model) in NO_ROPE:
        return False
    config = unwrap(model).config.get_text_config()
    rope = getattr(config, "rope_parameters", None) or {}
    factor = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
    if factor < 1.0:
        raise UnsupportedArchitectureError(f"{type(unwrap(model)).__name__} rotates only {factor:.0%} of each head "
                                           "(partial_rotary_factor < 1); SE-Attention supports fully rotary heads")
    return True


def attention_implementation(model: nn.Module) -> str:
    """The attention implementation the backbone's (language model's) config selects (``"sdpa"``, ``"eager"``, a
    registered name)."""
    return unwrap(model).config.get_text_config()._attn_implementation


def set_attention_implementation(model: nn.Module, name: str) -> int:
    """Select the attention function registered as ``name`` in ``transformers.AttentionInterface`` (and the mask
    function registered under the same name) for every attention module of ``model``; returns how many of the
    decoder layers' attention modules now read ``name`` from their config.

    transformers >= 5 dispatches attention through ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`` in
    Llama / Mistral / Qwen / Gemma / Phi-3 and GPT-2; ``set_attn_implementation`` sets the config of the model and
    of its sub-models. GPT-Neo keeps its own attention classes, so it counts 0 there.
    """
    if is_vision_language(model):  # the text sub-config only: the vision tower keeps its own attention
        unwrap(model).set_attn_implementation({"text_config": name})
    else:
        unwrap(model).set_attn_implementation(name)
    return count_attention_implementation(model, name)


def count_attention_implementation(model: nn.Module, name: str) -> int:
    """How many decoder-layer attention modules of ``model`` dispatch to the attention implementation ``name``."""
    return sum(getattr(getattr(attention_module(model, layer), "config", None), "_attn_implementation", None) == name
               for layer in decoder_layers(model))


def base_model(model: nn.Module) -> nn.Module:
    """The transformer body below the LM head (``LlamaModel`` at ``model.model``, ``GPT2Model`` at
    ``model.transformer``): the module whose forward receives the key/value cache (:data:`CACHE_KWARGS`) and hands
    every extra keyword argument on to each decoder layer, its attention module and finally the attention function.
    A VLM's: its language model's body."""
    return language_model(model) if is_vision_language(model) else unwrap(model).base_model


def cache_argument(model: nn.Module, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` to hand the key/value ``cache`` to ``model``'s forward under the name its transformers
    version takes (:data:`CACHE_KWARGS`: ``cache`` from 5.24, ``past_key_values`` before)."""
    parameters = inspect.signature(unwrap(model).forward).parameters
    return {CACHE_KWARGS[0] if CACHE_KWARGS[0] in parameters else CACHE_KWARGS[1]: cache}


def returned_cache(output: Any) -> Any:
    """The key/value cache a forward with ``use_cache=True`` returned, under either name (:data:`CACHE_KWARGS`)."""
    return next(getattr(output, name) for name in CACHE_KWARGS if getattr(output, name, None) is not None)


def add_forward_kwargs(model: nn.Module, make_kwargs: Callable[[int], dict[str, Any]]) -> RemovableHandle:
    """Add ``make_kwargs(past_length)`` to the keyword arguments of every call of the backbone's body
    (:func:`base_model`); remove it with the returned handle's ``remove()``.

    ``past_length`` is the number of positions already in the key/value cache (0 without one), so the added values
    can tell which absolute positions the call's new tokens sit at: ``position_ids`` cannot (with left padding
    ``generate`` counts them from the first real token). The body forwards extra keyword arguments to the
    attention function, where an ``AttentionInterface`` function reads them; a hook on the body (not on the
    ``*ForCausalLM`` model) also fires under a PEFT wrapper, which calls the inner model's ``forward`` directly.
    Gradient checkpointing keeps each layer's keyword arguments for the recomputation, so the values added here
    reach the recomputed attention too.
    """

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        past = next((kwargs[name] for name in CACHE_KWARGS if kwargs.get(name) is not None), None)
        return args, {**kwargs, **make_kwargs(past.get_seq_length() if past is not None else 0)}

    return base_model(model).register_forward_pre_hook(hook, with_kwargs=True)
