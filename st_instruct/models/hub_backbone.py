"""The base-model classes a saved adapter names for ``AutoPeftModel*.from_pretrained``: its backbone, or a refusal.

A forecaster saved with format ``"adapter"`` (:mod:`st_instruct.models.saving`) holds a PEFT adapter for a base
backbone that training changed: the ST special tokens were added (their embedding rows set to the mean of the
others, :func:`~st_instruct.samples.st_tokens.add_st_tokens`), possibly the decoder layers truncated, the base
quantised to 4-bit, drawn at random (the random-LLM control), or given modules trained here (MRFFN memories, a VLM's
vision tower and projector). With PEFT's usual ``task_type: CAUSAL_LM``,
``AutoPeftModelForCausalLM.from_pretrained(DIR)`` loads
``AutoModelForCausalLM.from_pretrained(base_model_name_or_path)`` -- all layers, new token rows drawn at random by
``resize_token_embeddings`` -- and applies the adapter to it: a different model, silently.

So :func:`~st_instruct.models.saving.save_forecaster` writes ``task_type: null`` and an ``auto_mapping`` naming one of
the classes below. PEFT then imports this module -- only when the caller allows it, with
``import_allowlist=["st_instruct"]``; without it PEFT refuses with its own message -- and calls
``Class.from_pretrained(base_model_name_or_path, revision=...)``. The class sees the base's name only, not the adapter
folder, so it can rebuild the backbone only when that name and the class (chosen at save time,
:func:`auto_class`) say everything: base weights, ST tokens, 4-bit or not. Every other class refuses, naming what
training changed and pointing to :func:`~st_instruct.models.saving.load_forecaster`, which reads ``st_backbone.json``.

The rebuilt backbone is the language backbone alone (no ST encoder, projector or head): it does not forecast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from st_instruct.models.backbones import BACKBONES, BackboneSource, build_base_backbone, embedded_backbone_name

if TYPE_CHECKING:
    from st_instruct.models.backbones import BackboneSource

LOAD_FORECASTER = "st_instruct.models.saving.load_forecaster(DIR)"


class STBackbone:
    """The base backbone named by ``base_model_name_or_path`` (a hub id or a local folder) with the ST tokens added,
    as training built it (``build_base_backbone``, in float32)."""

    embedded = False  # the name is the Hub id of a registered (GGUF) backbone, whose embedded weights trained
    load_in_4bit = False  # quantised to 4-bit NF4 while loading (QLoRA)

    @classmethod
    def from_pretrained(cls, name_or_path: str, revision: str | None = None, **kwargs: Any) -> Any:
        """The ``PreTrainedModel`` PEFT applies the adapter to; called by ``AutoPeftModel*.from_pretrained``.

        Raises:
            ValueError: ``revision`` set (the backbone is rebuilt from ``model_name_or_path`` alone), or an embedded
                backbone's Hub id that no registered backbone has.
            TypeError: further keyword arguments: nothing about the rebuild is configurable, it must be training's.
        """
        if revision is not None:
            raise ValueError(f"adapter_config.json names revision {revision!r} of the base {name_or_path!r}, but "
                             "st_instruct rebuilds a backbone from its name alone; remove the revision key, or load "
                             f"with {LOAD_FORECASTER}")
        if kwargs:
            raise TypeError(f"{cls.__name__} rebuilds the backbone exactly as training built it (float32) and takes "
                            f"no loading options, got {sorted(kwargs)}; cast the loaded model afterwards")
        name = embedded_backbone_name(name_or_path) if cls.embedded else name_or_path
        backbone, _ = build_base_backbone(BackboneSource(name, load_in_4bit=cls.load_in_4bit))
        return backbone


class STBackbone4bit(STBackbone):
    """:class:`STBackbone` quantised to 4-bit NF4 while loading, as a QLoRA adapter trained on it."""

    load_in_4bit = True


class EmbeddedSTBackbone(STBackbone):
    """The embedded weights of the registered backbone whose Hub id ``base_model_name_or_path`` is (for
    ``HuggingFaceTB/SmolLM2-135M-Instruct``: the dequantised Q4_1 GGUF file of ``smollm2-135m``, not the Hub
    checkpoint itself) with the ST tokens added."""

    embedded = True


class EmbeddedSTBackbone4bit(EmbeddedSTBackbone):
    """:class:`EmbeddedSTBackbone` quantised to 4-bit NF4 while loading, as a QLoRA adapter trained on it."""

    load_in_4bit = True


class _Unfaithful:
    """A backbone its base's name cannot rebuild; ``from_pretrained`` raises, naming ``difference``."""

    difference = ""

    @classmethod
    def from_pretrained(cls, name_or_path: str, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(f"this adapter was not trained on {name_or_path!r} as published: {cls.difference}, so "
                         f"applying it to {name_or_path!r} would build a different model. st_backbone.json in the "
                         f"adapter's folder records how its backbone was built; load that folder with "
                         f"{LOAD_FORECASTER}")


class TruncatedBackbone(_Unfaithful):
    difference = ("its decoder layers were truncated (training kept the first num_layers of the base's "
                  "base_num_layers, see st_backbone.json)")


class RandomInitBackbone(_Unfaithful):
    difference = "its weights were drawn at random (the random-LLM control, random_init_seed in st_backbone.json)"


class BackboneWithSTModules(_Unfaithful):
    difference = ("modules trained by st_instruct sit inside the backbone (a vision-language model's vision tower "
                  "and projector, or MRFFN memories) and are saved in st_modules.safetensors, not in the adapter")


def auto_class(source: BackboneSource, st_modules_inside: bool) -> type:
    """The class ``adapter_config.json``'s ``auto_mapping`` names for a backbone built from ``source`` (with
    ``base_num_layers`` filled in): a rebuilding one when the base's name, 4-bit or not and whether it is embedded
    say how the backbone was built, else the refusal naming the first difference found. ``st_modules_inside``:
    whether ST modules sit inside the backbone (:meth:`STForecaster.st_modules`)."""
    if source.truncated:
        return TruncatedBackbone
    if source.random_init_seed is not None:
        return RandomInitBackbone
    if st_modules_inside:
        return BackboneWithSTModules
    if source.model_name_or_path in BACKBONES:
        return EmbeddedSTBackbone4bit if source.load_in_4bit else EmbeddedSTBackbone
    return STBackbone4bit if source.load_in_4bit else STBackbone
