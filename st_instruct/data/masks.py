"""Mask families for masked-autoencoder pretraining of an ST encoder: boolean masks ``[B, L, N, C]``, True = hidden.

UniST (Yuan, Ding, Jin and Li, "UniST: A Prompt-Empowered Universal Model for Urban Spatio-Temporal Prediction",
KDD 2024) pretrains its encoder by reconstructing ST data under four masking strategies, one drawn per step:
random entries, tubes (whole nodes over every step), blocks (a contiguous region of space over every step) and
whole time steps. UrbanMind (KDD 2025) adds channel-sensitive masks -- the temporal or the spatial (tube) mask on
one randomly drawn channel, the model reconstructing that attribute from the others -- and an agnostic mix in which
each sample gets a family of its own.

Every function here is pure: it draws only from the ``torch.Generator`` it is given (the same seed gives the same
mask) and returns a CPU tensor (move it to the data's device). ``shape`` is ``(B, L, N, C)``; ``ratio`` the
fraction in (0, 1) of what a family hides: of the entries (random), nodes (tube, block), steps (temporal), and of
the drawn channel's entries for the channel-sensitive ones. Counts are exact per sample, ``round(ratio * size)``
clamped to ``1 .. size - 1`` (a mask that hides nothing or everything teaches nothing), except a grid block, whose
rectangle's area is the closest its drawn height allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

MaskShape = Sequence[int]  # (B, L, N, C)


def _check(shape: MaskShape, ratio: float) -> tuple[int, int, int, int]:
    """``shape`` as four positive ints; ``ratio`` in (0, 1)."""
    if len(shape) != 4 or not all(isinstance(d, int | np.integer) and d >= 1 for d in shape):
        raise ValueError(f"shape must be (B, L, N, C), four sizes >= 1, found {tuple(shape)}")
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1:
        raise ValueError(f"ratio must be a fraction in (0, 1) of what the mask hides, found {ratio!r}")
    batch, steps, nodes, channels = (int(d) for d in shape)
    return batch, steps, nodes, channels


def _count(ratio: float, size: int, what: str) -> int:
    """How many of ``size`` things (``what``, for the error) a ratio hides: ``round(ratio * size)`` in 1 .. size-1."""
    if size < 2:
        raise ValueError(f"a mask hiding a fraction of the {what} needs at least 2 of them, found {size}")
    return min(max(round(ratio * size), 1), size - 1)


def _choose(batch: int, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """[batch, size] bool with exactly ``count`` True per row, at uniformly random places (MAE's shuffle)."""
    rank = torch.rand(batch, size, generator=generator).argsort(dim=1).argsort(dim=1)
    return rank < count


def random_mask(shape: MaskShape, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """UniST (Yuan et al., KDD 2024) random masking: ``round(ratio * L * N * C)`` entries of each sample, drawn
    uniformly without regard to structure (the per-sample shuffle of MAE, so the fraction is exact) -> [B, L, N, C]."""
    batch, steps, nodes, channels = _check(shape, ratio)
    size = steps * nodes * channels
    return _choose(batch, size, _count(ratio, size, "entries"), generator).reshape(batch, steps, nodes, channels)


def tube_mask(shape: MaskShape, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """UniST (Yuan et al., KDD 2024) tube masking: ``round(ratio * N)`` whole nodes of each sample hidden at every
    step and channel (reconstructed from the other nodes: spatial extrapolation) -> [B, L, N, C]."""
    batch, steps, nodes, channels = _check(shape, ratio)
    hidden = _choose(batch, nodes, _count(ratio, nodes, "nodes"), generator)  # [B, N]
    return hidden[:, None, :, None].expand(batch, steps, nodes, channels).clone()


def temporal_mask(shape: MaskShape, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """UniST (Yuan et al., KDD 2024) masking of whole time steps: ``round(ratio * L)`` steps of each sample, drawn
    at random, hidden at every node and channel (UniST's "frame" strategy; its "temporal" one hides the last steps,
    which the forecast task itself already trains) -> [B, L, N, C]."""
    batch, steps, nodes, channels = _check(shape, ratio)
    hidden = _choose(batch, steps, _count(ratio, steps, "time steps"), generator)  # [B, L]
    return hidden[:, :, None, None].expand(batch, steps, nodes, channels).clone()


def _neighbours(adjacency: torch.Tensor | np.ndarray, nodes: int) -> list[list[int]]:
    """Each node's neighbours in the symmetrised adjacency [N, N] (nonzero weight = edge; self-loops ignored)."""
    adj = adjacency if isinstance(adjacency, torch.Tensor) else torch.as_tensor(np.asarray(adjacency))
    if adj.shape != (nodes, nodes):
        raise ValueError(f"adjacency must be [N, N] = [{nodes}, {nodes}] for the mask's N = {nodes} nodes, found "
                         f"shape {tuple(adj.shape)}")
    edges = (adj != 0).cpu()
    edges = edges | edges.T
    edges.fill_diagonal_(False)
    return [row.nonzero().flatten().tolist() for row in edges]


def _grow_region(neighbours: list[list[int]], count: int, generator: torch.Generator) -> torch.Tensor:
    """[N] bool: ``count`` nodes in as few connected regions as the graph allows. A breadth-first search from a
    random node (each node's neighbours visited in a random order) adds nodes until ``count`` are hidden; when it
    exhausts its connected component first, a new region starts from a random node not yet hidden."""
    nodes = len(neighbours)
    priority = torch.rand(nodes, generator=generator).tolist()  # one draw per sample: plain Python in the loop
    starts = torch.randperm(nodes, generator=generator).tolist()
    hidden = [False] * nodes
    taken = 0
    for start in starts:
        if taken == count:
            break
        if hidden[start]:
            continue
        hidden[start], queue, head = True, [start], 0
        taken += 1
        while head < len(queue) and taken < count:
            for nxt in sorted(neighbours[queue[head]], key=priority.__getitem__):
                if taken == count:
                    break
                if not hidden[nxt]:
                    hidden[nxt] = True
                    taken += 1
                    queue.append(nxt)
            head += 1
    return torch.tensor(hidden)


def _rectangle(grid_shape: tuple[int, int], count: int, generator: torch.Generator) -> torch.Tensor:
    """[H * W] bool (node ``row * W + col``): one axis-aligned rectangle of about ``count`` cells at a random
    place; its height is drawn uniformly among those that fit, its width the nearest to ``count / height``."""
    height, width = grid_shape
    low, high = max(1, math.ceil(count / width)), min(height, count)
    rows = low + int(torch.randint(high - low + 1, (), generator=generator))
    cols = min(max(round(count / rows), 1), width)
    if rows * cols == height * width:  # rounding up to the whole grid would hide everything
        rows, cols = (rows, cols - 1) if cols > 1 else (rows - 1, cols)
    top = int(torch.randint(height - rows + 1, (), generator=generator))
    left = int(torch.randint(width - cols + 1, (), generator=generator))
    cells = torch.zeros(height, width, dtype=torch.bool)
    cells[top:top + rows, left:left + cols] = True
    return cells.flatten()


def block_mask(shape: MaskShape, ratio: float, generator: torch.Generator,
               adjacency: torch.Tensor | np.ndarray | None = None,
               grid_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """UniST (Yuan et al., KDD 2024) block masking: a contiguous region of space hidden at every step and channel
    (reconstructed from its surroundings) -> [B, L, N, C].

    On a grid (``grid_shape`` ``(H, W)``, ``H * W = N``, node ``row * W + col``) the region is one rectangle of
    about ``ratio * N`` cells at a random place; otherwise it is grown over ``adjacency`` [N, N] (nonzero = edge,
    made symmetric) by breadth-first search from a random node until ``round(ratio * N)`` nodes are hidden --
    one connected region on a connected graph, a new one from a random node whenever a component runs out.
    ``grid_shape`` wins when both are given.
    """
    batch, steps, nodes, channels = _check(shape, ratio)
    count = _count(ratio, nodes, "nodes")
    if grid_shape is not None:
        if len(grid_shape) != 2 or int(grid_shape[0]) * int(grid_shape[1]) != nodes:
            raise ValueError(f"grid_shape must be (H, W) with H * W = N = {nodes} nodes, found {tuple(grid_shape)}")
        hidden = torch.stack([_rectangle((int(grid_shape[0]), int(grid_shape[1])), count, generator)
                              for _ in range(batch)])
    elif adjacency is not None:
        neighbours = _neighbours(adjacency, nodes)
        hidden = torch.stack([_grow_region(neighbours, count, generator) for _ in range(batch)])
    else:
        raise ValueError("block masks need the graph: pass adjacency [N, N] or grid_shape (H, W)")
    return hidden[:, None, :, None].expand(batch, steps, nodes, channels).clone()


def _on_one_channel(family: Callable[[MaskShape, float, torch.Generator], torch.Tensor], shape: MaskShape,
                    ratio: float, generator: torch.Generator) -> torch.Tensor:
    """``family``'s mask of shape [B, L, N, 1] placed on one channel per sample, drawn uniformly."""
    batch, steps, nodes, channels = _check(shape, ratio)
    single = family((batch, steps, nodes, 1), ratio, generator)
    channel = torch.randint(channels, (batch,), generator=generator)
    on = torch.nn.functional.one_hot(channel, channels).bool()  # [B, C]
    return single & on[:, None, None, :]


def channel_temporal_mask(shape: MaskShape, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """UrbanMind (KDD 2025) channel-sensitive temporal masking: :func:`temporal_mask`'s whole steps hidden on one
    channel of each sample, drawn at random; the other channels stay visible -> [B, L, N, C]."""
    return _on_one_channel(temporal_mask, shape, ratio, generator)


def channel_spatial_mask(shape: MaskShape, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """UrbanMind (KDD 2025) channel-sensitive spatial masking: :func:`tube_mask`'s whole nodes hidden on one
    channel of each sample, drawn at random; the other channels stay visible -> [B, L, N, C]."""
    return _on_one_channel(tube_mask, shape, ratio, generator)


# the families a recipe names; "block" needs the graph, "agnostic" draws one of the others per sample
MASK_FAMILIES = ("random", "tube", "block", "temporal", "channel_temporal", "channel_spatial", "agnostic")
_SIMPLE: dict[str, Callable[[MaskShape, float, torch.Generator], torch.Tensor]] = {
    "random": random_mask, "tube": tube_mask, "temporal": temporal_mask,
    "channel_temporal": channel_temporal_mask, "channel_spatial": channel_spatial_mask}


# the families that hide whole nodes: they need two nodes or more in a sample
_SPATIAL = ("tube", "block", "channel_spatial")


def _available(shape: MaskShape, adjacency: torch.Tensor | np.ndarray | None,
               grid_shape: tuple[int, int] | None) -> list[str]:
    """The single-family names that can be built for ``shape``: ``block`` only with a graph or a grid, and the
    node-hiding ones (tube, block, channel_spatial) only with two nodes or more (a one-series sample of a universal
    forecaster has one)."""
    names = list(_SIMPLE)
    if adjacency is not None or grid_shape is not None:
        names.insert(2, "block")
    return [name for name in names if shape[2] > 1 or name not in _SPATIAL]


def agnostic_mask(shape: MaskShape, ratio: float, generator: torch.Generator,
                  adjacency: torch.Tensor | np.ndarray | None = None,
                  grid_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """UrbanMind (KDD 2025) agnostic masking: each sample hidden by a family of its own, drawn uniformly from random,
    tube, temporal, the two channel-sensitive ones and -- given ``adjacency`` or ``grid_shape`` -- block
    -> [B, L, N, C]."""
    batch, steps, nodes, channels = _check(shape, ratio)
    names = _available(shape, adjacency, grid_shape)
    picks = torch.randint(len(names), (batch,), generator=generator).tolist()
    one = (1, steps, nodes, channels)
    return torch.cat([block_mask(one, ratio, generator, adjacency, grid_shape) if names[pick] == "block"
                      else _SIMPLE[names[pick]](one, ratio, generator) for pick in picks])


def draw_mask(family: str, shape: MaskShape, ratio: float, generator: torch.Generator,
              adjacency: torch.Tensor | np.ndarray | None = None,
              grid_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """UniST (Yuan et al., KDD 2024) / UrbanMind (KDD 2025) masks by name: one of :data:`MASK_FAMILIES`, or
    ``"mix"``: one single family for the whole batch, drawn uniformly per call (UniST draws one strategy per
    training step; block only given ``adjacency`` or ``grid_shape``) -> [B, L, N, C] bool, True = hidden."""
    _check(shape, ratio)
    if family == "mix":
        names = _available(shape, adjacency, grid_shape)
        family = names[int(torch.randint(len(names), (), generator=generator))]
    if family == "block":
        return block_mask(shape, ratio, generator, adjacency, grid_shape)
    if family == "agnostic":
        return agnostic_mask(shape, ratio, generator, adjacency, grid_shape)
    if family not in _SIMPLE:
        raise ValueError(f"family must be one of {[*MASK_FAMILIES, 'mix']}, found {family!r}")
    return _SIMPLE[family](shape, ratio, generator)
