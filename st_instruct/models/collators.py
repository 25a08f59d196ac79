"""The collator a forecaster reads its batches with, chosen from the model: text, vision-language, no backbone, or
the arrays alone (the LLM4HRS imputer, :class:`STArrayCollator`).

The collators themselves are :mod:`st_instruct.samples.collator` and :mod:`st_instruct.samples.vision_collator`; which
one a model needs, and the processor, image size and graphs it is given, is known here, where the model is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from st_instruct.configs import RecipeError
from st_instruct.data.air_graphs import build_window_graphs
from st_instruct.data.prompt_context import build_window_priors
from st_instruct.models.backbones import get_processor
from st_instruct.models.llm4hrs import LLM4HRSImputer
from st_instruct.models.patching import image_size_of, is_vision_language
from st_instruct.models.vlm import check_image_size
from st_instruct.samples.collator import STDataCollator, collate_st_arrays
from st_instruct.samples.render import build_window_images
from st_instruct.samples.vision_collator import STVisionCollator


class STArrayCollator:
    """Batch the builder's samples for a model that reads their arrays only (the LLM4HRS imputer): the node-padded
    arrays of :func:`~st_instruct.samples.collator.collate_st_arrays` (``history`` [B, L, Nmax, C], its mask, the
    target and its mask, ``node_index``, ``node_mask`` [B, Nmax], the scaler statistics, ...), no token columns --
    the samples need not be tokenised, and token columns they carry are not read. A sample's nodes are those of its
    ``node_index``. ``broadcast_channels``: as :class:`~st_instruct.samples.collator.STDataCollator`'s."""

    def __init__(self, broadcast_channels: int | None = None) -> None:
        if broadcast_channels is not None and broadcast_channels < 1:
            raise ValueError(f"broadcast_channels must be >= 1, found {broadcast_channels}")
        self.broadcast_channels = broadcast_channels

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        # collate_st_arrays counts each sample's nodes by its token positions: here, one per node of node_index
        nodes = [range(len(sample["node_index"])) for sample in samples]
        batch = collate_st_arrays(samples, nodes, nodes, self.broadcast_channels)
        del batch["his_positions"], batch["pre_positions"]
        return batch


def build_collator(data_config: Any, model: Any, tokenizer: Any, model_name_or_path: str,
                   broadcast_channels: int | None = None, forecast_inputs: Any = None) -> Any:
    """The collator that batches ``data_config``'s samples for ``model``: :class:`STVisionCollator` (with the
    images ``data_config.image_kind`` asks for, or none) when the forecaster's backbone is a vision-language model,
    else :class:`~st_instruct.samples.collator.STDataCollator` (a text backbone, or none: the no-LLM control of a
    VLM recipe reads the ST arrays only). ``model_name_or_path`` names the backbone whose processor is used. A
    forecaster with AirGPT's graph encoder (``st_config.graph``) gets its station graphs added to every batch, one
    with UniST's memory prompts (``st_config.prompt``) the priors they are queried with.
    ``forecast_inputs`` (:class:`st_instruct.inference.ForecastInputs`): graphs, priors and images come from a
    forecast's own data and windows instead of the recipe's datasets. The LLM4HRS imputer reads the arrays only:
    :class:`STArrayCollator`."""
    if isinstance(model, LLM4HRSImputer):
        return STArrayCollator(broadcast_channels)
    config = model.st_config
    own = forecast_inputs
    window_inputs = []
    graphs = build_window_graphs(data_config, config.graph.st_graph, config.graph.st_graph_sigma0_km,
                                 config.graph.st_graph_alpha_km, series=None if own is None else [own.full_data])
    if graphs is not None:
        window_inputs.append(graphs)
    if config.prompt.unist_prompts:
        window_inputs.append(build_window_priors(data_config, series=None if own is None else [own.model_data]))
    if model.backbone is None:
        return STDataCollator(tokenizer, broadcast_channels=broadcast_channels, window_inputs=window_inputs)
    if not is_vision_language(model.backbone):
        if data_config.image_kind != "none":
            raise RecipeError(f"image_kind: {data_config.image_kind} gives every window an image, but the backbone "
                              f"{model_name_or_path!r} is a text-only model; use a vision-language backbone (e.g. "
                              "smollm2-135m-vlm) or image_kind: none")
        return STDataCollator(tokenizer, broadcast_channels=broadcast_channels, window_inputs=window_inputs)
    images = None
    if data_config.image_kind != "none":
        size = data_config.image_size or image_size_of(model.backbone) or 224
        check_image_size(model.backbone, size, model_name_or_path)
        images = build_window_images(data_config, data_config.image_kind, size, data_config.image_panels,
                                     data_config.image_channel, windows=None if own is None else [own.windows],
                                     value_ranges=None if own is None else own.image_value_ranges)
    return STVisionCollator(get_processor(model_name_or_path, tokenizer), images, broadcast_channels, window_inputs)
