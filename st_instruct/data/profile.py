"""What a trained forecaster must know about its training data to forecast new values of it: the data profile.

A forecaster reads more than the values of a window: its prompt names the dataset, the city, the channels and units and
every node (name, location); its coordinates come from the node positions or the graph (Laplacian eigenvectors of the
adjacency); with ``scaling: train`` every value is z-scored with the training dataset's train-split statistics; a VLM
recipe colours its images on a value range fixed from the train split. None of this is in a window of new raw values,
so training writes it beside the model as ``st_data_profile.json`` (:func:`write_data_profiles`), one profile per
training dataset:

``{"version": 1, "datasets": {NAME: {"name", "num_nodes", "city", "description", "freq", "no_calendar", "channels",
"units", "node_names", "node_descriptions", "node_channels" (a channel-independent view's channel per node; absent
in profiles written before it), "node_units" and "sensors" (its unit per node; the sensor kind per channel name: both
absent before issue 24), "coords", "coord_kind", "grid_shape", "null_value", "adjacency": {"shape",
"rows", "cols", "values"} | null, "scaler_mean": [C], "scaler_std": [C], "image_value_range": [low, high] | null}}}``

Every float is written with Python's shortest round-trip repr, and arrays keep their dtype and layout, so a profile
gives back the very statistics, coordinates and graph training used (a forecast from it equals the evaluation's bit for
bit). A folder trained before profiles existed gets them computed from its recipe's datasets where those are at hand
(:func:`read_data_profiles`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from st_instruct.data.loaders import load_series
from st_instruct.data.stdata import COORD_KINDS, STData, normalize_freq
from st_instruct.data.windows import build_windows, image_value_range
from st_instruct.model_dir import COPY_AGAIN, PROFILE_FILE, find_in_folder, read_json_file

PROFILE_VERSION = 1
# the keys data_profile writes, every one read when a profile completes an input
PROFILE_KEYS = {"name", "num_nodes", "city", "description", "freq", "no_calendar", "channels", "units", "node_names",
                "node_descriptions", "coords", "coords_dtype", "coord_kind", "grid_shape", "null_value", "adjacency",
                "scaler_mean", "scaler_std", "image_value_range"}
ADJACENCY_KEYS = {"shape", "rows", "cols", "values", "dtype", "sparse"}
# The most nodes a profile may hold: far above the datasets in use (LargeST's 8,600 sensors), and a bound on what
# a profile's graph and coordinates may allocate
MAX_NODES = 100_000


def data_profile(data: STData, config: Any) -> dict[str, Any]:
    """The profile of ``data`` as the recipe ``config`` (a :class:`~st_instruct.configs.DataConfig`) windows it."""
    windows = build_windows(data, config.history, config.horizon, config.split, config.stride)
    adjacency = None
    if data.adjacency is not None:  # its non-zeros, in the dtype and the layout (dense / sparse) they came in
        coo = sp.coo_array(data.adjacency)
        adjacency = {"shape": list(coo.shape), "rows": coo.row.tolist(), "cols": coo.col.tolist(),
                     "values": coo.data.tolist(), "dtype": str(coo.data.dtype),
                     "sparse": bool(sp.issparse(data.adjacency))}
    image_range = None
    if getattr(config, "image_kind", "none") != "none":
        image_range = [float(v) for v in image_value_range(windows, config.image_channel)]
    return {
        "name": data.name, "num_nodes": data.num_nodes, "city": data.city, "description": data.description,
        "freq": data.freq,
        "no_calendar": data.no_calendar, "channels": list(data.channels), "units": list(data.units),
        "node_names": data.node_names, "node_descriptions": data.node_descriptions,
        "node_channels": data.node_channels, "node_units": data.node_units, "sensors": dict(data.sensors),
        "coords": None if data.coords is None else np.asarray(data.coords).tolist(),
        "coords_dtype": None if data.coords is None else str(np.asarray(data.coords).dtype),
        "coord_kind": data.coord_kind, "grid_shape": None if data.grid_shape is None else list(data.grid_shape),
        "null_value": data.null_value, "adjacency": adjacency,
        "scaler_mean": windows.scaler.mean.astype(np.float32).tolist(),
        "scaler_std": windows.scaler.std.astype(np.float32).tolist(),
        "image_value_range": image_range,
    }


def write_data_profiles(directory: str | Path, config: Any) -> Path:
    """Write ``directory/st_data_profile.json`` with the profile of every dataset of ``config``; returns the path."""
    profiles = {data.name: data_profile(data, config) for data in load_series(config)}
    path = Path(directory) / PROFILE_FILE
    path.write_text(json.dumps({"version": PROFILE_VERSION, "datasets": profiles}) + "\n")
    return path


def read_data_profiles(directory: str | Path, config: Any, channels: int | None = None) -> dict[str, dict[str, Any]]:
    """``{dataset name: profile}`` of the forecaster in ``directory`` (a checkpoint reads its parent's); a folder
    without ``st_data_profile.json`` gets the profiles of its recipe's datasets (``config``) computed, which needs
    those datasets here.

    A file is checked before any profile is used (:func:`_checked_profiles`): against itself, and, given the
    model's channel count ``channels``, against the model; a ValueError names the file, the dataset and the key."""
    found = find_in_folder(directory, PROFILE_FILE)
    if found is not None:
        return _checked_profiles(found, read_json_file(found), config, channels)
    try:
        series = load_series(config)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{directory} has no {PROFILE_FILE} (it was trained by an older st_instruct) and its "
                                f"recipe's datasets {config.dataset_names} cannot be loaded here ({err}); give the "
                                "node names, coordinates and adjacency with the input, or re-train") from err
    return {data.name: data_profile(data, config) for data in series}


def _checked_profiles(path: Path, content: Any, config: Any, channels: int | None) -> dict[str, dict[str, Any]]:
    """The profiles of ``content`` (the JSON of ``path``) once every one holds what :func:`data_profile` writes, of
    the types and sizes it writes, consistent with itself (one name, coordinate and scaler per node / channel, the
    adjacency's indices among the nodes) and with the model: its ``channels`` are the profile's, or -- with the
    recipe's ``dataset_channels`` (``config``), a selection of the profile's -- that many of them. This catches the
    edits that would otherwise give a quietly wrong forecast (a node count that no longer fits the node names: a
    zero-shot forecast; a scale of 0: NaN) or allocate more than the node count allows (a graph's shape). Else a
    ValueError naming ``path``, the dataset and the key."""
    try:
        _require("the file", content, isinstance(content, dict), "a JSON object")
        _require("version", content.get("version"), content.get("version") == PROFILE_VERSION,
                 f"{PROFILE_VERSION}, the version this st_instruct reads")
        _require("datasets", content.get("datasets"), isinstance(content.get("datasets"), dict),
                 "an object mapping dataset names to profiles")
    except ValueError as err:
        raise ValueError(f"{path}: {err}: it was edited or damaged; {COPY_AGAIN}") from err
    for name, profile in content["datasets"].items():
        try:
            _check_profile(name, profile, config.dataset_channels, channels)
        except ValueError as err:
            raise ValueError(f"{path}: dataset {name!r}: {err}: it was edited or damaged; {COPY_AGAIN}") from err
    return content["datasets"]


def _check_profile(name: str, profile: Any, selected: list[str | int] | None, channels: int | None) -> None:
    """Raise a ValueError ``KEY must be ..., found ...`` for the first key of ``profile`` that is not as
    :func:`data_profile` writes it (:func:`_checked_profiles`)."""
    if not isinstance(profile, dict):
        raise ValueError(f"the profile must be a JSON object, found {type(profile).__name__}")
    missing = sorted(PROFILE_KEYS - set(profile))
    if missing:
        raise ValueError(f"the profile lacks the keys {missing}")
    _require("name", profile["name"], profile["name"] == name, f"{name!r}, its key in datasets")
    nodes = profile["num_nodes"]
    _require("num_nodes", nodes, isinstance(nodes, int) and not isinstance(nodes, bool) and 1 <= nodes <= MAX_NODES,
             f"an integer from 1 to {MAX_NODES}")
    for key in ("city", "description"):
        _require(key, profile[key], isinstance(profile[key], str), "text")
    _require("no_calendar", profile["no_calendar"], isinstance(profile["no_calendar"], bool), "true or false")
    freq = profile["freq"]
    _require("freq", freq, freq is None or isinstance(freq, str), "null or a step such as '1h'")
    if freq is not None:
        normalize_freq(freq, "freq")
    names = profile["channels"]
    _require("channels", names, _is_list(names, str) and 1 <= len(names), "a list of channel names")
    for key in ("units", "scaler_mean", "scaler_std"):
        _require(key, profile[key], isinstance(profile[key], list) and len(profile[key]) == len(names),
                 f"a list of {len(names)} entries, one per channel")
    _require("units", profile["units"], _is_list(profile["units"], str), "a list of unit names")
    for key in ("scaler_mean", "scaler_std"):
        _require(key, profile[key], _is_list(profile[key], float), "finite numbers")
    _require("scaler_std", profile["scaler_std"], all(std > 0 for std in profile["scaler_std"]),
             "positive numbers (a scale of 0 divides by zero)")
    # node_channels: absent before issue 23; node_units and sensors: before issue 24
    for key in ("node_names", "node_descriptions", "node_channels", "node_units"):
        texts = profile.get(key)
        _require(key, texts, texts is None or (_is_list(texts, str) and len(texts) == nodes),
                 f"null or a list of num_nodes = {nodes} strings, one per node")
    sensors = profile.get("sensors", {})
    _require("sensors", sensors, isinstance(sensors, dict) and _is_list(list(sensors.values()), str),
             "an object of channel name -> sensor kind text")
    coords = profile["coords"]
    if coords is not None:
        fits = isinstance(coords, list) and len(coords) == nodes and all(
            _is_list(row, float) and len(row) == 2 for row in coords)
        _require("coords", coords, fits, f"null or [num_nodes, 2] = [{nodes}, 2] finite numbers")
        _require("coord_kind", profile["coord_kind"], profile["coord_kind"] in COORD_KINDS, f"one of {COORD_KINDS}")
        _require("coords_dtype", profile["coords_dtype"], _is_numeric_dtype(profile["coords_dtype"]),
                 "a numeric dtype such as 'float64'")
    grid = profile["grid_shape"]
    fits = grid is None or (_is_list(grid, int) and len(grid) == 2 and min(grid) >= 1 and grid[0] * grid[1] == nodes)
    _require("grid_shape", grid, fits, f"null or [H, W] with H * W = num_nodes = {nodes}")
    null = profile["null_value"]
    _require("null_value", null, null is None or _is_list([null], float), "null or a finite number")
    value_range = profile["image_value_range"]
    _require("image_value_range", value_range, value_range is None or (
        _is_list(value_range, float) and len(value_range) == 2 and value_range[0] < value_range[1]),
        "null or [low, high] finite numbers with low < high")
    if profile["adjacency"] is not None:
        _check_adjacency(profile["adjacency"], nodes)
    if channels is not None:
        _check_model_channels(names, selected, channels)


def _check_adjacency(adjacency: Any, nodes: int) -> None:
    """The profile's adjacency (:func:`data_profile`) is ``[nodes, nodes]`` with its non-zeros inside: checked before
    :func:`profile_adjacency` allocates it."""
    _require("adjacency", adjacency, isinstance(adjacency, dict) and ADJACENCY_KEYS <= set(adjacency),
             f"null or an object with the keys {sorted(ADJACENCY_KEYS)}")
    _require("adjacency.shape", adjacency["shape"], adjacency["shape"] == [nodes, nodes],
             f"[num_nodes, num_nodes] = [{nodes}, {nodes}]")
    rows, cols, values = adjacency["rows"], adjacency["cols"], adjacency["values"]
    for key, indices in (("rows", rows), ("cols", cols)):
        _require(f"adjacency.{key}", indices, _is_list(indices, int) and all(0 <= i < nodes for i in indices),
                 f"a list of node indices in 0..{nodes - 1}")
    _require("adjacency.values", values, _is_list(values, float) and len(values) == len(rows) == len(cols),
             f"a list of finite numbers as long as adjacency.rows and adjacency.cols ({len(rows)}, {len(cols)})")
    _require("adjacency.dtype", adjacency["dtype"], _is_numeric_dtype(adjacency["dtype"]),
             "a numeric dtype such as 'float32'")
    _require("adjacency.sparse", adjacency["sparse"], isinstance(adjacency["sparse"], bool), "true or false")


def _check_model_channels(names: list[str], selected: list[str | int] | None, channels: int) -> None:
    """The model forecasts ``channels`` channels: all of the profile's ``names``, or the recipe's ``selected``
    (``dataset_channels``: names or indices) among them."""
    if not selected:
        _require("channels", names, len(names) == channels,
                 f"the model's {channels} channel(s) (channels in st_forecaster_config.json)")
        return
    # as STData.select_channels reads them: a name, else a digit string or an int is an index
    known = [c in names or (str(c).isdigit() and int(c) < len(names)) for c in selected]
    _require("channels", names, all(known), f"a list holding the recipe's dataset_channels {selected}")
    if len(selected) != channels:
        raise ValueError(f"the recipe's dataset_channels {selected} select {len(selected)} of its channels, but the "
                         f"model forecasts {channels}")


def _require(key: str, value: Any, holds: bool, expected: str) -> None:
    if not holds:
        raise ValueError(f"{key} must be {expected}, found {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _is_list(value: Any, kind: type) -> bool:
    """``value`` is a list of ``kind`` (``float``: finite numbers, ints included; ``int``: not bools)."""
    if not isinstance(value, list):
        return False
    if kind is float:
        return all(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in value)
    return all(isinstance(v, kind) and not isinstance(v, bool) for v in value)


def _is_numeric_dtype(name: Any) -> bool:
    try:
        return isinstance(name, str) and np.issubdtype(np.dtype(name), np.number)
    except TypeError:
        return False


def profile_adjacency(profile: dict[str, Any]) -> np.ndarray | sp.csr_array | None:
    """The profile's adjacency as the training data held it: dense or sparse, same dtype (``None`` without one)."""
    adjacency = profile.get("adjacency")
    if adjacency is None:
        return None
    values = np.asarray(adjacency["values"], dtype=adjacency["dtype"])
    matrix = sp.csr_array((values, (np.asarray(adjacency["rows"], np.int64), np.asarray(adjacency["cols"], np.int64))),
                          shape=tuple(adjacency["shape"]))
    return matrix if adjacency["sparse"] else matrix.toarray()


def profile_coords(profile: dict[str, Any]) -> np.ndarray | None:
    """The profile's node coordinates in the dtype training read them (``None`` without)."""
    if profile.get("coords") is None:
        return None
    return np.asarray(profile["coords"], dtype=profile["coords_dtype"])
