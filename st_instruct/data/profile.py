"""What a trained forecaster must know about its training data to forecast new values of it: the data profile.

A forecaster reads more than the values of a window: its prompt names the dataset, the city, the channels and units and
every node (name, location); its coordinates come from the node positions or the graph (Laplacian eigenvectors of the
adjacency); with ``scaling: train`` every value is z-scored with the training dataset's train-split statistics; a VLM
recipe colours its images on a value range fixed from the train split. None of this is in a window of new raw values,
so training writes it beside the model as ``st_data_profile.json`` (:func:`write_data_profiles`), one profile per
training dataset:

``{"version": 1, "datasets": {NAME: {"name", "num_nodes", "city", "description", "freq", "no_calendar", "channels",
"units", "node_names", "node_descriptions", "coords", "coord_kind", "grid_shape", "null_value", "adjacency": {"shape",
"rows", "cols", "values"} | null, "scaler_mean": [C], "scaler_std": [C], "image_value_range": [low, high] | null}}}``

Every float is written with Python's shortest round-trip repr, and arrays keep their dtype and layout, so a profile
gives back the very statistics, coordinates and graph training used (a forecast from it equals the evaluation's bit for
bit). A folder trained before profiles existed gets them computed from its recipe's datasets where those are at hand
(:func:`read_data_profiles`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from st_instruct.data.stdata import STData

PROFILE_FILE = "st_data_profile.json"
PROFILE_VERSION = 1


def data_profile(data: STData, config: Any) -> dict[str, Any]:
    """The profile of ``data`` as the recipe ``config`` (a :class:`~st_instruct.configs.DataConfig`) windows it."""
    from st_instruct.data.windows import build_windows

    windows = build_windows(data, config.history, config.horizon, config.split, config.stride)
    adjacency = None
    if data.adjacency is not None:  # its non-zeros, in the dtype and the layout (dense / sparse) they came in
        coo = sp.coo_array(data.adjacency)
        adjacency = {"shape": list(coo.shape), "rows": coo.row.tolist(), "cols": coo.col.tolist(),
                     "values": coo.data.tolist(), "dtype": str(coo.data.dtype),
                     "sparse": bool(sp.issparse(data.adjacency))}
    image_range = None
    if getattr(config, "image_kind", "none") != "none":
        from st_instruct.data.render import value_range

        image_range = [float(v) for v in value_range(windows, config.image_channel)]
    return {
        "name": data.name, "num_nodes": data.num_nodes, "city": data.city, "description": data.description,
        "freq": data.freq,
        "no_calendar": data.no_calendar, "channels": list(data.channels), "units": list(data.units),
        "node_names": data.node_names, "node_descriptions": data.node_descriptions,
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
    from st_instruct.data.builder import load_series

    profiles = {data.name: data_profile(data, config) for data in load_series(config)}
    path = Path(directory) / PROFILE_FILE
    path.write_text(json.dumps({"version": PROFILE_VERSION, "datasets": profiles}) + "\n")
    return path


def read_data_profiles(directory: str | Path, config: Any) -> dict[str, dict[str, Any]]:
    """``{dataset name: profile}`` of the forecaster in ``directory`` (a checkpoint reads its parent's); a folder
    without ``st_data_profile.json`` gets the profiles of its recipe's datasets (``config``) computed, which needs
    those datasets here. A corrupt file is a ValueError naming it."""
    directory = Path(directory)
    for candidate in (directory / PROFILE_FILE, directory.parent / PROFILE_FILE):
        if candidate.is_file():
            try:
                content = json.loads(candidate.read_text())
                version, profiles = content["version"], content["datasets"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{candidate} is not a data profile written by st_instruct ({err}); copy the model "
                                 "folder again or re-train") from err
            if version != PROFILE_VERSION:
                raise ValueError(f"{candidate} has profile version {version}; this st_instruct reads version "
                                 f"{PROFILE_VERSION}")
            return profiles
    from st_instruct.data.builder import load_series

    try:
        series = load_series(config)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{directory} has no {PROFILE_FILE} (it was trained by an older st_instruct) and its "
                                f"recipe's datasets {config.dataset_names} cannot be loaded here ({err}); give the "
                                "node names, coordinates and adjacency with the input, or re-train") from err
    return {data.name: data_profile(data, config) for data in series}


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
