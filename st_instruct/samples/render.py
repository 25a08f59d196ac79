"""Rendered spatial images of ST windows, the image modality of ST-VLM (Zhao et al., AAAI 2026).

ST-VLM renders the spatial state of a window to images that a vision-language model reads beside the text and the
ST tokens. Its code is not public; this renderer follows the paper's description and two public analogues: VLM4ST
(a pseudo-image of the window at 224 x 224) and ViST (one image holding a temporal, a spatial and a correlation view).

Two image kinds (``IMAGE_KINDS``), both ``size x size`` RGB:

- ``map``: ``panels`` history steps tiled row-major (evenly spaced over the history, the last step last). Graph data:
  nodes placed by their coordinates (:func:`node_layout`: latitude / longitude, planar x / y, or a spectral layout
  of the adjacency when there are none), drawn as discs coloured by value, the graph's strongest edges drawn faintly
  underneath. Grid data (``grid_shape``): a heat map per panel, cell ``(r, c)`` an exact pixel block
  (:meth:`WindowRenderer.cell_box`).
- ``multiview`` (in the spirit of ViST): four panels of one step range -- top left the node x time matrix of the
  history (the *temporal* view; nodes in spectral order, so neighbours sit in nearby rows), top right the same matrix
  after averaging every node with its graph neighbours (the *spatial* view), bottom left the node x node correlation
  of the history (the *correlation* view, -1 .. 1), bottom right the map of the last history step.

Colours: viridis (perceptually uniform; its 11 standard stops, linearly interpolated to 256 entries, no matplotlib),
on a value range fixed per dataset and channel from the observed values of the *train split*
(:func:`~st_instruct.data.windows.image_value_range`: the 0.5 % and 99.5 % quantiles), so a colour means the same
value in every sample of that dataset; values outside are clipped; missing values are mid grey. Everything is numpy
+ Pillow, with no randomness: the same window gives the same pixels and the same PNG bytes (:func:`png_bytes`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from st_instruct.data.graph import laplacian_eigenvectors
from st_instruct.data.loaders import load_series
from st_instruct.data.stdata import STData
from st_instruct.data.windows import STWindows, build_windows, image_value_range
from st_instruct.outputs import check_output_file, staged_file

IMAGE_KINDS = ("map", "multiview")
# viridis at 0, 0.1, ..., 1 (matplotlib's colour map, CC0)
VIRIDIS_STOPS = np.array([[0x44, 0x01, 0x54], [0x48, 0x24, 0x75], [0x41, 0x44, 0x87], [0x35, 0x5F, 0x8D],
                          [0x2A, 0x78, 0x8E], [0x21, 0x91, 0x8C], [0x22, 0xA8, 0x84], [0x44, 0xBF, 0x70],
                          [0x7A, 0xD1, 0x51], [0xBD, 0xDF, 0x26], [0xFD, 0xE7, 0x25]], dtype=np.float64)
MISSING_COLOUR = (128, 128, 128)
BACKGROUND = (255, 255, 255)
EDGE_COLOUR = (215, 215, 215)
MIN_SIZE = 32
MAX_SIZE = 2048  # a side of 100000 pixels asked for 23 GB; vision towers read 224 .. 1024


class RenderError(ValueError):
    """A window that cannot be rendered as asked; the message names the dataset and what to supply."""


def colour_table() -> np.ndarray:
    """``[256, 3]`` uint8: viridis from its 11 stops, linearly interpolated (index 0 = the range's low end)."""
    positions = np.linspace(0, 1, len(VIRIDIS_STOPS))
    grid = np.linspace(0, 1, 256)
    table = np.stack([np.interp(grid, positions, VIRIDIS_STOPS[:, c]) for c in range(3)], axis=1)
    return np.round(table).astype(np.uint8)


COLOURS = colour_table()


def colour_indices(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Index into :data:`COLOURS` of every value (``int16``, same shape): ``(v - low) / (high - low)`` clipped to
    0 .. 1, times 255, rounded; ``-1`` where the value is NaN."""
    scaled = np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    index = np.round(np.nan_to_num(scaled) * 255).astype(np.int16)
    return np.where(np.isnan(values), -1, index)


def colourize(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` ``[...]`` -> ``[..., 3]`` uint8 viridis colours on ``[low, high]``; NaN -> :data:`MISSING_COLOUR`."""
    index = colour_indices(values, low, high)
    colours = COLOURS[np.maximum(index, 0)]
    colours[index < 0] = MISSING_COLOUR
    return colours


def node_layout(data: STData) -> np.ndarray:
    """``[N, 2]`` node positions ``(x, y)`` in ``[0, 1]``, ``y`` downwards (image order), aspect ratio kept.

    Latitude / longitude: an equirectangular projection (longitude scaled by the cosine of the mean latitude), north
    up; ``xy``: planar, y up; ``grid``: (col, row). Without coordinates: the spectral layout of the adjacency (its
    two lowest non-trivial Laplacian eigenvectors, signs fixed), so the layout is the same on every run.
    """
    if data.coords is not None:
        coords = np.asarray(data.coords, dtype=np.float64)
        if data.coord_kind == "latlon":
            lat, lon = coords[:, 0], coords[:, 1]
            xy = np.stack([lon * np.cos(np.deg2rad(lat.mean())), -lat], axis=1)
        elif data.coord_kind == "grid":
            xy = coords[:, ::-1].copy()
        else:
            xy = np.stack([coords[:, 0], -coords[:, 1]], axis=1)
    else:
        adjacency = data.dense_adjacency()
        if adjacency is None:
            raise RenderError(
                f"dataset {data.name!r} has neither node coordinates nor an adjacency, so its nodes have no place on "
                "an image: give a nodes file with latitude,longitude or x,y columns (--nodes FILE / dataset_nodes) "
                "or an adjacency (--adjacency FILE / dataset_adjacency) to lay them out from")
        xy = laplacian_eigenvectors(adjacency, 2).astype(np.float64)
    xy = xy - xy.min(axis=0)
    extent = float(xy.max()) if xy.size else 0.0
    return xy / extent if extent > 0 else np.full_like(xy, 0.5)


def spectral_order(data: STData) -> np.ndarray:
    """``[N]`` node order for the node x time views: row-major for a grid, else sorted along the Fiedler vector of
    the adjacency (neighbours end up in nearby rows), else the dataset's own order."""
    adjacency = data.dense_adjacency()
    if data.grid_shape is not None or adjacency is None or data.num_nodes < 3:
        return np.arange(data.num_nodes)
    return np.argsort(laplacian_eigenvectors(adjacency, 1)[:, 0], kind="stable")


def panel_steps(history: int, panels: int) -> np.ndarray:
    """The ``panels`` history steps a map shows: evenly spaced, the last history step last (fewer if shorter)."""
    return np.unique(np.round(np.linspace(0, history - 1, min(panels, history))).astype(np.int64))


def png_bytes(image: Image.Image) -> bytes:
    """The PNG encoding of ``image`` with fixed settings and no metadata: the same pixels give the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


class WindowRenderer:
    """Renders the history of windows of one dataset as ``kind`` images of ``size x size`` pixels.

    Args:
        windows: the dataset's windows (:func:`~st_instruct.data.windows.build_windows`); the value range comes
            from their train split.
        kind: one of :data:`IMAGE_KINDS`.
        size: image side in pixels (:data:`MIN_SIZE` .. :data:`MAX_SIZE`).
        panels: history steps per ``map`` image, tiled on a square grid of ``ceil(sqrt(panels))`` columns.
        channel: the channel coloured (index into the dataset's channels).
        colour_range: ``(low, high)`` to colour on instead of the train split's
            :func:`~st_instruct.data.windows.image_value_range` (windows without a train split: a forecast's, coloured
            as training coloured them).

    Layout, node order, edges and value range are computed once here; :meth:`render` only colours.
    """

    def __init__(self, windows: STWindows, kind: str = "map", size: int = 224, panels: int = 4, channel: int = 0,
                 colour_range: tuple[float, float] | None = None):
        data = windows.data
        if kind not in IMAGE_KINDS:
            raise RenderError(f"image kind {kind!r} is not one of {', '.join(IMAGE_KINDS)}")
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise RenderError(f"image size {size} (--size / image_size) is outside {MIN_SIZE} .. {MAX_SIZE} pixels "
                              f"(below {MIN_SIZE} a panel has no room; above {MAX_SIZE} no vision tower reads it and "
                              "memory runs out)")
        if not 0 <= channel < data.num_channels:
            raise RenderError(f"dataset {data.name!r} has {data.num_channels} channel(s) {data.channels}; channel "
                              f"{channel} does not exist")
        if panels < 1:
            raise RenderError(f"panels must be >= 1, found {panels}")
        self.windows, self.kind, self.size, self.channel = windows, kind, size, channel
        self.low, self.high = colour_range if colour_range is not None else image_value_range(windows, channel)
        self.steps = panel_steps(windows.history, panels) if kind == "map" else np.array([windows.history - 1])
        columns = int(np.ceil(np.sqrt(len(self.steps)))) if kind == "map" else 2
        self.columns, self.panel = columns, size // columns
        self.grid = data.grid_shape
        self.order = spectral_order(data)
        if self.grid is None:
            self.layout = node_layout(data)
            self._pixels = self.node_pixels()
            self._labels, self._base = self._node_labels(), self._edge_panel(data)
        else:
            self._labels, self._base = self._cell_labels(), np.full((self.panel, self.panel, 3), BACKGROUND, np.uint8)
        adjacency = data.dense_adjacency()
        if adjacency is None:
            adjacency = np.zeros((data.num_nodes, data.num_nodes))
        weights = np.abs(np.asarray(adjacency, dtype=np.float64))
        np.fill_diagonal(weights, 0.0)
        degree = weights.sum(axis=1, keepdims=True)
        # row-normalised with a self loop (a node without neighbours keeps its own value), in the views' node order
        self._neighbour_mean = ((weights + np.eye(len(weights))) / (degree + 1.0))[np.ix_(self.order, self.order)]

    # --- geometry (computed once) ---------------------------------------------------------------------------------

    def panel_origin(self, index: int) -> tuple[int, int]:
        """``(left, top)`` pixel of panel ``index`` (row-major)."""
        row, col = divmod(index, self.columns)
        return col * self.panel, row * self.panel

    def cell_box(self, row: int, col: int, panel: int = 0) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` (right / bottom exclusive) of grid cell ``(row, col)`` in ``panel``."""
        if self.grid is None:
            raise RenderError(f"dataset {self.windows.data.name!r} is not a grid")
        height, width = self.grid
        cell = max(1, self.panel // max(height, width))
        left0 = (self.panel - cell * width) // 2
        top0 = (self.panel - cell * height) // 2
        left, top = self.panel_origin(panel)
        x, y = left + left0 + col * cell, top + top0 + row * cell
        return x, y, x + cell, y + cell

    def node_pixels(self) -> np.ndarray:
        """``[N, 2]`` integer ``(x, y)`` of every node's centre inside a panel (graph data)."""
        margin = self._radius() + 1
        span = self.panel - 1 - 2 * margin
        return np.round(margin + self.layout * span).astype(np.int64)

    def _radius(self) -> int:
        nodes = self.windows.data.num_nodes
        return int(np.clip(self.panel / (4 * np.sqrt(max(nodes, 1))), 1, 8))

    def _node_labels(self) -> np.ndarray:
        """``[panel, panel]`` int32: the node whose disc covers each pixel (a later node on top), -1 for none."""
        labels = Image.new("I", (self.panel, self.panel), -1)
        draw, radius = ImageDraw.Draw(labels), self._radius()
        for node, (x, y) in enumerate(self._pixels.tolist()):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=node)
        return np.asarray(labels, dtype=np.int32)

    def _cell_labels(self) -> np.ndarray:
        """``[panel, panel]`` int32: the grid cell (node ``row * W + col``) of each pixel, -1 outside the grid."""
        labels = np.full((self.panel, self.panel), -1, dtype=np.int32)
        height, width = self.grid
        for node in range(height * width):
            left, top, right, bottom = self.cell_box(*divmod(node, width))
            labels[top:bottom, left:right] = node
        return labels

    def _edge_panel(self, data: STData) -> np.ndarray:
        """``[panel, panel, 3]`` uint8: the graph's edges drawn faintly on the background, each node's 3 strongest
        links (the whole graph can have thousands)."""
        panel = Image.new("RGB", (self.panel, self.panel), BACKGROUND)
        adjacency = data.dense_adjacency()
        if adjacency is not None:
            weights = np.abs(np.asarray(adjacency, dtype=np.float64))
            np.fill_diagonal(weights, 0.0)
            strongest = np.argsort(-weights, axis=1, kind="stable")[:, :3]
            edges = {(min(i, int(j)), max(i, int(j))) for i in range(len(weights)) for j in strongest[i]
                     if weights[i, j] > 0}
            draw = ImageDraw.Draw(panel)
            for i, j in sorted(edges):
                draw.line([tuple(self._pixels[i]), tuple(self._pixels[j])], fill=EDGE_COLOUR, width=1)
        return np.asarray(panel, dtype=np.uint8)

    # --- drawing: colours looked up into the precomputed label maps -------------------------------------------------

    def _map_panel(self, values: np.ndarray) -> np.ndarray:
        """``[panel, panel, 3]`` uint8: the map of one step, ``values`` ``[N]`` in original units (NaN = missing)."""
        colours = colourize(values, self.low, self.high)
        return np.where((self._labels >= 0)[..., None], colours[np.maximum(self._labels, 0)], self._base)

    def _matrix_panel(self, matrix: np.ndarray, low: float, high: float) -> np.ndarray:
        """A ``[rows, cols]`` matrix as a heat map filling one panel (nearest-neighbour, so no colour is invented)."""
        rows = np.arange(self.panel) * matrix.shape[0] // self.panel
        cols = np.arange(self.panel) * matrix.shape[1] // self.panel
        return colourize(matrix[np.ix_(rows, cols)], low, high)

    def render(self, history: np.ndarray) -> Image.Image:
        """The image of one window's history ``[L, N]`` in original units of the renderer's channel (NaN =
        missing)."""
        history = np.asarray(history, dtype=np.float64)
        expected = (self.windows.history, self.windows.data.num_nodes)
        if history.shape != expected:
            raise RenderError(f"render: history of shape {tuple(history.shape)}, expected [L, N] = {list(expected)}")
        if self.kind == "map":
            panels = [self._map_panel(history[step]) for step in self.steps]
        else:
            ordered = history[:, self.order].T  # [N, L]
            spatial = self._neighbour_mean @ np.nan_to_num(ordered)
            spatial[np.isnan(ordered)] = np.nan
            panels = [self._matrix_panel(ordered, self.low, self.high),
                      self._matrix_panel(spatial, self.low, self.high),
                      self._matrix_panel(correlation(ordered), -1.0, 1.0),
                      self._map_panel(history[-1])]
        image = np.full((self.size, self.size, 3), BACKGROUND, dtype=np.uint8)
        for index, panel in enumerate(panels):
            left, top = self.panel_origin(index)
            image[top:top + self.panel, left:left + self.panel] = panel
        return Image.fromarray(image)

    def history_at(self, start: int) -> np.ndarray:
        """``[L, N]`` history of the window starting at step ``start`` (a sample's ``window_start``) in original
        units (NaN where not observed)."""
        stop = start + self.windows.history
        if not 0 <= start and stop <= self.windows.data.num_steps:
            raise RenderError(f"dataset {self.windows.data.name!r}: a window starting at step {start} does not fit "
                              f"its {self.windows.data.num_steps} steps")
        values = self.windows.data.values[start:stop, :, self.channel]
        return np.where(self.windows.observed[start:stop, :, self.channel], values, np.nan)

    def window_history(self, split: str, index: int) -> np.ndarray:
        """``[L, N]`` history of window ``index`` of ``split`` in original units (NaN where not observed)."""
        return self.window_steps(split, index)[: self.windows.history]

    def window_steps(self, split: str, index: int) -> np.ndarray:
        """``[L + P, N]`` history and future of window ``index`` of ``split`` (NaN where not observed)."""
        count = self.windows.num_windows(split)
        if not 0 <= index < count:
            raise RenderError(f"dataset {self.windows.data.name!r}: the {split} split has {count} windows "
                              f"(0 .. {count - 1}), found window {index}")
        start = int(self.windows.starts[split][index])
        stop = start + self.windows.history + self.windows.horizon
        values = self.windows.data.values[start:stop, :, self.channel]
        return np.where(self.windows.observed[start:stop, :, self.channel], values, np.nan)

    def frames(self, split: str, index: int) -> list[Image.Image]:
        """One full-size map per step of the window (history, then the future it is asked to forecast), each
        labelled, for a person to look at (an animated GIF; not what the model reads)."""
        steps = self.window_steps(split, index)
        single = WindowRenderer(self.windows, "map", self.size, panels=1, channel=self.channel)
        out = []
        for step, values in enumerate(steps):
            frame = Image.fromarray(single._map_panel(values))
            label = f"history {step + 1}/{self.windows.history}" if step < self.windows.history else \
                f"future {step - self.windows.history + 1}/{self.windows.horizon}"
            ImageDraw.Draw(frame).text((3, 2), label, fill=(0, 0, 0))
            out.append(frame)
        return out


def correlation(rows: np.ndarray) -> np.ndarray:
    """``[N, N]`` Pearson correlation between the rows of ``rows`` ``[N, L]`` over their observed common steps;
    0 where a row is constant or has fewer than two observed steps (no NaN reaches the image)."""
    observed = ~np.isnan(rows)
    filled = np.where(observed, rows, 0.0)
    count = observed.sum(axis=1, keepdims=True)
    mean = filled.sum(axis=1, keepdims=True) / np.maximum(count, 1)
    centred = np.where(observed, filled - mean, 0.0)
    norm = np.sqrt((centred ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (centred @ centred.T) / np.outer(norm, norm)
    return np.clip(np.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)


def window_files(out_dir: str, stem: str, kind: str, overwrite: bool = False) -> tuple[Path, Path]:
    """The paths :func:`save_window` writes, ``<stem>-<kind>.png`` and ``<stem>.gif`` in ``out_dir``, each checked
    (:func:`~st_instruct.outputs.check_output_file`: an existing one is refused unless ``overwrite``)."""
    folder = Path(out_dir)
    if folder.is_file():
        raise NotADirectoryError(f"--out {folder} is a file; give the folder for the PNG and the GIF")
    return (check_output_file(folder / f"{stem}-{kind}.png", overwrite),
            check_output_file(folder / f"{stem}.gif", overwrite))


def save_window(renderer: WindowRenderer, split: str, index: int, out_dir: str, stem: str,
                overwrite: bool = False) -> list[str]:
    """Write ``<stem>-<kind>.png`` (the image the model reads) and ``<stem>.gif`` (every step of the window, 400 ms
    each) into ``out_dir`` (:func:`window_files`), each staged; returns the two paths."""
    png, gif = window_files(out_dir, stem, renderer.kind, overwrite)
    image = png_bytes(renderer.render(renderer.window_history(split, index)))
    frames = renderer.frames(split, index)
    with staged_file(png, overwrite) as staged:
        staged.write_bytes(image)
    with staged_file(gif, overwrite) as staged:
        frames[0].save(staged, format="GIF", save_all=True, append_images=frames[1:], duration=400, loop=0)
    return [str(png), str(gif)]


class WindowImages:
    """The image of any sample of an instruction dataset, rendered when asked (per batch, by the vision collator):
    one :class:`WindowRenderer` per dataset, built from the same windows as the samples, so ``image(dataset,
    window_start)`` shows exactly the history a sample's ST tokens carry. Nothing decoded is stored."""

    def __init__(self, renderers: dict[str, WindowRenderer]) -> None:
        self.renderers = renderers

    def __call__(self, dataset: str, window_start: int) -> Image.Image:
        renderer = self.renderers.get(dataset)
        if renderer is None:
            raise RenderError(f"no renderer for dataset {dataset!r}: the images were set up for "
                              f"{sorted(self.renderers)}; batch samples of the datasets the recipe names")
        return renderer.render(renderer.history_at(int(window_start)))


def build_window_images(config, kind: str, size: int, panels: int = 4, channel: int = 0,
                        windows: list[STWindows] | None = None, value_ranges: dict | None = None) -> WindowImages:
    """:class:`WindowImages` for every dataset of the :class:`~st_instruct.configs.DataConfig` ``config``, windowed
    as :func:`~st_instruct.samples.builder.build_dataset` windows them; or for ``windows`` already cut (a forecast's),
    coloured on ``value_ranges[dataset name]`` (training's, from the data profile)."""
    if windows is None:
        windows = [build_windows(data, config.history, config.horizon, config.split, config.stride)
                   for data in load_series(config)]
    ranges = value_ranges or {}
    return WindowImages({w.data.name: WindowRenderer(w, kind, size, panels, channel, ranges.get(w.data.name))
                         for w in windows})


def describe_images(kind: str, size: int | None, panels: int, channel: int) -> str:
    """What the images of a recipe show, in words (for the model card of a VLM forecaster)."""
    side = f"{size} x {size}" if size else "the vision tower's size"
    colours = ("viridis on a value range fixed per dataset from its train split (0.5 % and 99.5 % quantiles), "
               "missing values grey")
    if kind == "map":
        shown = (f"{panels} history step(s), evenly spaced and ending at the last one, tiled as map panels: graph "
                 "nodes as discs placed by their coordinates (or a spectral layout of the graph when there are "
                 "none), the strongest edges faint underneath; grid data as heat maps, one pixel block per cell")
    else:
        shown = ("four views of the history (after ViST): the node x time matrix (nodes in spectral order), the same "
                 "after averaging every node with its graph neighbours, the node x node correlation, and the map of "
                 "the last step")
    return (f"Every window is shown to the model as one {side} RGB image ({kind}) of channel {channel}: {shown}; "
            f"colours: {colours}. Rendered by `st_instruct.samples.render` (`st-instruct render DATASET --window I "
            f"--kind {kind}` writes one as PNG).")
