"""Batch tokenised ST instruction samples: pad the text to the longest sequence and the nodes to the largest ``N'``.

Samples of different datasets may hold different numbers of nodes ``N'`` (one region in node-level prompts, a whole
graph in graph-level ones); their node axes are padded and ``node_mask`` says which nodes are real. History length
``L``, horizon ``P``, channels ``C`` and coordinate size ``K`` must agree within a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from st_instruct.samples.tokenize import IGNORE_INDEX, padding_id

# key -> (dtype, index of the node axis or None); arrays without a node axis must have equal shapes in a batch
ST_ARRAYS: dict[str, tuple[torch.dtype, int | None]] = {
    "history": (torch.float32, 1),
    "history_mask": (torch.bool, 1),
    "target": (torch.float32, 1),
    "target_mask": (torch.bool, 1),
    "node_index": (torch.long, 0),
    "coords": (torch.float32, 0),
    "history_tod": (torch.long, None),
    "history_dow": (torch.long, None),
    "target_tod": (torch.long, None),
    "target_dow": (torch.long, None),
    "scaler_mean": (torch.float32, None),
    "scaler_std": (torch.float32, None),
    "steps_per_day": (torch.long, None),
}


class STDataCollator:
    """Turn a list of tokenised samples into a batch of tensors for the ST model and its loss.

    Each sample is a mapping as a ``datasets`` row gives it (lists or numpy arrays) with ``input_ids``,
    ``labels``, ``his_positions``, ``pre_positions`` (see ``tokenize_dataset``) and the ST arrays of the builder.

    Returns (B samples, S the longest sequence rounded up to ``pad_to_multiple_of``, ``Nmax`` the most nodes):

    - ``input_ids`` [B, S] long, right-padded with the pad token, or with the eos token when the tokenizer has
      no pad token (those positions are masked out of attention and loss either way);
    - ``attention_mask`` [B, S] long (1 on real tokens); ``labels`` [B, S] long (-100 on prompt and padding);
    - ``his_positions``, ``pre_positions`` [B, Nmax] long (padded with 0) and ``node_mask`` [B, Nmax] bool (True
      on real nodes);
    - when the samples carry them: ``history`` [B, L, Nmax, C] float, ``history_mask`` [B, L, Nmax, C] bool,
      ``target`` [B, P, Nmax, C] float, ``target_mask`` [B, P, Nmax, C] bool (False on padded nodes),
      ``node_index`` [B, Nmax] long, ``coords`` [B, Nmax, K] float, ``history_tod`` / ``history_dow`` [B, L] long,
      ``target_tod`` / ``target_dow`` [B, P] long, ``scaler_mean`` / ``scaler_std`` [B, C] float,
      ``steps_per_day`` [B] long (lets the ST encoder read time of day alike across data frequencies).
      Padded nodes hold zeros.

    ``window_inputs``: what is made per batch from the samples' ``dataset``, ``window_start`` and ``node_index``
    rather than stored in their rows, each with ``batch(samples, Nmax) -> {key: array}``: AirGPT's station graphs
    (:class:`~st_instruct.data.air_graphs.WindowGraphs`: ``static_graph`` / ``wind_graph`` [B, Nmax, Nmax]) and
    UniST's priors (:class:`~st_instruct.data.prompt_context.WindowPriors`: ``prompt_*``).

    With the HF ``Trainer`` set ``remove_unused_columns=False``, or the ST columns never reach the collator.

    ``broadcast_channels=C`` feeds one-channel samples to a model trained on ``C`` channels: ``history``,
    ``target``, their masks and the scaler statistics are repeated along the channel axis (the model then reads the
    same series in every input channel and predicts it ``C`` times; :func:`mean_over_channels` reduces the
    forecast). Samples that already have ``C`` channels pass unchanged; any other count is an error.
    """

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None,
                 broadcast_channels: int | None = None, window_inputs: Sequence[Any] = ()) -> None:
        self.pad_token_id = padding_id(tokenizer)
        self.pad_to_multiple_of = pad_to_multiple_of
        if broadcast_channels is not None and broadcast_channels < 1:
            raise ValueError(f"broadcast_channels must be >= 1, found {broadcast_channels}")
        self.broadcast_channels = broadcast_channels
        self.window_inputs = tuple(window_inputs)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        lengths = [len(sample["input_ids"]) for sample in samples]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_size = len(samples)
        input_ids = torch.full((batch_size, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
        for b, sample in enumerate(samples):
            input_ids[b, : lengths[b]] = torch.as_tensor(sample["input_ids"], dtype=torch.long)
            labels[b, : lengths[b]] = torch.as_tensor(sample["labels"], dtype=torch.long)
            attention_mask[b, : lengths[b]] = 1

        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        batch.update(collate_st_arrays(samples, [s["his_positions"] for s in samples],
                                       [s["pre_positions"] for s in samples], self.broadcast_channels,
                                       self.window_inputs))
        return batch


def collate_st_arrays(samples: Sequence[dict[str, Any]], his_positions: Sequence[Sequence[int]],
                      pre_positions: Sequence[Sequence[int]],
                      broadcast_channels: int | None = None, window_inputs: Sequence[Any] = (),
                      ) -> dict[str, torch.Tensor]:
    """The node-padded part of a batch (everything :class:`STDataCollator` returns but the token ids, attention
    mask and labels): ``his_positions`` / ``pre_positions`` / ``node_mask`` [B, Nmax] from the samples' positions
    (into their token ids, however those were made) and the ST arrays the samples carry, and what each of
    ``window_inputs`` makes for them (:class:`STDataCollator`)."""
    names = [sample.get("sample_id", f"#{b}") for b, sample in enumerate(samples)]
    nodes = [len(positions) for positions in his_positions]
    for b, positions in enumerate(pre_positions):
        if len(positions) != nodes[b]:
            raise ValueError(f"sample {names[b]!r} has {nodes[b]} <st_his> but {len(positions)} <st_pre> positions; "
                             "re-tokenise it with tokenize_dataset")
    most = max(nodes)
    batch = {"his_positions": _pad_nodes(list(his_positions), 0, most, torch.long, names),
             "pre_positions": _pad_nodes(list(pre_positions), 0, most, torch.long, names),
             "node_mask": torch.arange(most)[None, :] < torch.as_tensor(nodes)[:, None]}
    present = [key for key in ST_ARRAYS if key in samples[0]]
    for key in present:
        if any(key not in sample for sample in samples):
            lacking = [name for name, sample in zip(names, samples, strict=True) if key not in sample]
            raise ValueError(f"samples {lacking} lack {key!r}; a batch must come from datasets built with the "
                             "same columns")
        dtype, node_axis = ST_ARRAYS[key]
        values = [sample[key] for sample in samples]
        if node_axis is None:
            batch[key] = _stack(values, dtype, key, names)
        else:
            batch[key] = _pad_nodes(values, node_axis, most, dtype, names, key, nodes)
    for made in window_inputs:  # before broadcasting: made from the samples' own channels
        batch.update({key: torch.as_tensor(value) for key, value in made.batch(list(samples), most).items()})
    if broadcast_channels is not None:
        _broadcast_channels(batch, broadcast_channels)
    return batch


CHANNEL_ARRAYS = ("history", "history_mask", "target", "target_mask", "scaler_mean", "scaler_std",
                  "prompt_neighbours", "prompt_region", "prompt_period")


def _broadcast_channels(batch: dict[str, torch.Tensor], channels: int) -> None:
    """Repeat one-channel arrays of ``batch`` (in place) along their last, channel, axis to ``channels``."""
    for key in CHANNEL_ARRAYS:
        if key not in batch:
            continue
        found = batch[key].shape[-1]
        if found == 1 and channels > 1:
            batch[key] = batch[key].expand(*batch[key].shape[:-1], channels).contiguous()
        elif found != channels:
            raise ValueError(f"{key!r} has {found} channels (shape {tuple(batch[key].shape)}); broadcasting feeds "
                             f"one-channel data to a {channels}-channel model, so it needs 1 or {channels}")


def mean_over_channels(forecast: torch.Tensor) -> torch.Tensor:
    """[..., C] forecasts of a broadcast one-channel batch -> [..., 1], the mean of the model's ``C`` outputs."""
    return forecast.mean(dim=-1, keepdim=True)


_SAME_SHAPES = "batch samples with the same history length L, horizon P, channels C and coordinates K together"


def _shapes(names: list[Any], arrays: list[np.ndarray]) -> str:
    return ", ".join(f"{name!r} {array.shape}" for name, array in zip(names, arrays, strict=True))


def _stack(values: list[Any], dtype: torch.dtype, key: str, names: list[Any]) -> torch.Tensor:
    arrays = [np.asarray(value) for value in values]
    if len({array.shape for array in arrays}) > 1:
        raise ValueError(f"cannot batch {key!r}: shapes differ between samples {_shapes(names, arrays)}; "
                         f"{_SAME_SHAPES}")
    return torch.as_tensor(np.stack(arrays)).to(dtype)


def _pad_nodes(values: list[Any], axis: int, most: int, dtype: torch.dtype, names: list[Any],
               key: str = "positions", nodes: list[int] | None = None) -> torch.Tensor:
    """Stack arrays that share every axis but ``axis`` (the node axis), zero-padding it to ``most``."""
    arrays = [np.asarray(value) for value in values]
    for name, array in zip(names, arrays, strict=True):
        if array.ndim <= axis:
            raise ValueError(f"{key!r} of sample {name!r} has shape {array.shape}, which has no node axis {axis}")
    other = {array.shape[:axis] + array.shape[axis + 1:] for array in arrays}
    if len(other) > 1 or len({array.ndim for array in arrays}) > 1:
        raise ValueError(f"cannot batch {key!r}: shapes differ between samples beyond the node axis "
                         f"{_shapes(names, arrays)}; {_SAME_SHAPES}")
    if nodes is not None:
        for name, array, count in zip(names, arrays, nodes, strict=True):
            if array.shape[axis] != count:
                raise ValueError(f"{key!r} of sample {name!r} has {array.shape[axis]} nodes on axis {axis} (shape "
                                 f"{array.shape}) but its prompt has {count} <st_his> tokens")
    shape = list(arrays[0].shape)
    shape[axis] = most
    out = np.zeros((len(arrays), *shape), dtype=arrays[0].dtype)
    for b, array in enumerate(arrays):
        index = [b] + [slice(None)] * array.ndim
        index[axis + 1] = slice(0, array.shape[axis])
        out[tuple(index)] = array
    return torch.as_tensor(out).to(dtype)
