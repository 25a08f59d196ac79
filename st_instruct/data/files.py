"""Generic loaders by path: a ``.npz`` / ``.npy`` / ``.h5`` / ``.csv`` series and an adjacency file -> :class:`STData`.

Series files (``[T, N]`` or ``[T, N, C]``):
- ``.npz``: the array under key ``data``, or the only array in the file.
- ``.npy``: the array.
- ``.h5`` / ``.hdf5`` (read with h5py, no pytables needed): the dataset ``data``, else ``df/block0_values`` (a
  METR-LA style pandas frame, whose ``df/axis1`` nanosecond timestamps and ``df/axis0`` column names become the
  timestamps and node names), else the only dataset in the file.
- ``.csv``: ``T`` rows x ``N`` columns. The first row is a header of node names if any of its cells is not a
  number (a purely numeric first row is data). A first column that is not numeric is parsed as timestamps.

Clock: timestamps found in the file are used as they are (STData rejects non-increasing ones) and the step is
inferred from them. Without timestamps the step and the calendar are unknown (``freq=None``, ``start=None``) until
``freq=`` / ``series_start=`` (``--freq`` / ``--series-start``) give them; nothing is assumed, and whatever needs a
calendar refuses such data unless the user chose ``--no-calendar`` (:meth:`STData.require_calendar`).

Adjacency files (``[N, N]`` for a series of ``N`` nodes): a matrix as ``.npy`` / ``.npz`` / ``.csv`` (with or
without a header row), or a ``from,to[,cost]`` edge list ``.csv``, recognised by its header or by having two or
three columns and a row count other than ``N``. Edge costs are distances and become Gaussian-kernel weights
(:func:`~st_instruct.data.graph.edge_list_to_dense`); two columns give a 0/1 graph.
Nodes files (:func:`load_nodes_file`): a ``.csv`` with a ``name`` column and optionally ``latitude,longitude``
(degrees) or ``x,y`` (planar) columns, one row per node in node order.

Every error names the file and says what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from st_instruct.data.graph import edge_list_to_dense
from st_instruct.data.stdata import STData, STDataError, normalize_freq

SERIES_SUFFIXES = (".npz", ".npy", ".h5", ".hdf5", ".csv")
MISSING_CELLS = ("", "NA", "NaN", "nan", "null")  # csv cells read as NaN


def _cannot_read(path: Path, kind: str, err: Exception) -> STDataError:
    return STDataError(f"cannot read {path} as {kind}: {type(err).__name__}: {err}")


def _read_npz(path: Path, what: str, preferred: tuple[str, ...]) -> np.ndarray:
    """The array under the first of ``preferred`` keys, or the only array; the error lists the keys otherwise."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            key = next((k for k in preferred if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise STDataError(f"{path} holds several arrays {keys} and none is called {' or '.join(preferred)}; "
                                  f"save the {what} under the key {preferred[0]!r}")
            return np.asarray(z[key])
    except STDataError:
        raise
    except Exception as err:  # zipfile.BadZipFile, ValueError (pickled objects), OSError ...
        raise _cannot_read(path, ".npz", err) from err


def _read_h5(path: Path) -> tuple[np.ndarray, pd.DatetimeIndex | None, list[str] | None]:
    """``(values, timestamps or None, node names or None)`` from an HDF5 file."""
    import h5py  # only needed for .h5 input

    try:
        with h5py.File(path, "r") as f:
            datasets: list[str] = []
            f.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
            key = next((k for k in ("data", "df/block0_values") if k in datasets), None)
            if key is None and len(datasets) == 1:
                key = datasets[0]
            if key is None:
                raise STDataError(f"{path} holds the HDF5 datasets {datasets} and none is called 'data' or "
                                  "'df/block0_values'; store the series as 'data'")
            values = np.asarray(f[key])
            timestamps = names = None
            if key == "df/block0_values":  # pandas "fixed" format: axis1 = index (ns timestamps), axis0 = columns
                if "df/axis1" in datasets and np.issubdtype(f["df/axis1"].dtype, np.integer):
                    timestamps = pd.DatetimeIndex(pd.to_datetime(np.asarray(f["df/axis1"]), unit="ns"))
                if "df/axis0" in datasets:
                    names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(f["df/axis0"])]
            return values, timestamps, names
    except STDataError:
        raise
    except Exception as err:  # OSError "file signature not found", KeyError ...
        raise _cannot_read(path, ".h5 (HDF5)", err) from err


def _is_number(cell: object) -> bool:
    try:
        float(cell)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _is_timestamp(cell: str) -> bool:
    if _is_number(cell):
        return False
    try:
        return pd.Timestamp(cell) is not pd.NaT  # "NA" / "" parse to NaT: not a timestamp
    except (ValueError, TypeError):
        return False


def _read_series_csv(path: Path) -> tuple[np.ndarray, pd.DatetimeIndex | None, list[str] | None]:
    """``(values [T, N], timestamps or None, node names or None)`` from a T x N csv (see the module docstring)."""
    try:
        raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except Exception as err:
        raise _cannot_read(path, ".csv", err) from err
    if raw.empty:
        raise STDataError(f"{path} is empty; expected T rows x N columns of numbers")
    cells = list(raw.iloc[0])
    if _is_timestamp(cells[0]):  # a headerless file whose first column holds timestamps
        cells = cells[1:]
    has_header = not all(_is_number(c) for c in cells if c not in MISSING_CELLS)
    header = list(raw.iloc[0]) if has_header else None
    body = raw.iloc[1:] if has_header else raw
    timestamps = None
    first = body.iloc[:, 0]
    if not all(_is_number(c) for c in first if c not in MISSING_CELLS):
        try:
            timestamps = pd.DatetimeIndex(pd.to_datetime(first, format="mixed"))
        except (ValueError, TypeError) as err:
            raise STDataError(f"{path}: the first column is neither numbers nor timestamps "
                              f"(first value {first.iloc[0]!r}): {err}") from err
        body = body.iloc[:, 1:]
        header = header[1:] if header else None
    numeric = body.replace("", np.nan).apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() & ~body.isin(MISSING_CELLS)
    if bad.any().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        raise STDataError(f"{path}: cell at data row {r + 1}, column {c + 1 + (timestamps is not None)} is "
                          f"{body.iat[r, c]!r}, not a number; a series csv holds numbers (empty or NA = missing)")
    return numeric.to_numpy(dtype=np.float64), timestamps, header


def infer_freq(ts: pd.DatetimeIndex) -> str | None:
    """Canonical step of regular timestamps (``"1h"``, ``"1D"``, ``"15min"``), else their median step; ``None``
    for a single timestamp (STData checks the order itself)."""
    try:
        freq = pd.infer_freq(ts)  # "h", "D", "15min": normalised below so pd.Timedelta(freq) always works
    except (ValueError, TypeError):
        freq = None
    if freq:
        try:
            return normalize_freq(freq)
        except STDataError:  # a calendar rule such as "MS" (month start) is no fixed step: use the median
            pass
    steps = np.asarray(ts[1:] - ts[:-1])  # timedelta64, whatever the index's resolution
    step = pd.Timedelta(np.median(steps.astype("timedelta64[ns]").astype(np.int64)), unit="ns") if len(
        steps) else pd.Timedelta(0)
    return normalize_freq(pd.tseries.frequencies.to_offset(step).freqstr) if step > pd.Timedelta(0) else None


def load_series_file(path: str | os.PathLike, *, freq: str | None = None,
                     series_start: str | pd.Timestamp | None = None) -> STData:
    """Load a .npz / .npy / .h5 / .hdf5 / .csv series as an STData ``[T, N, C]`` named after the file stem.

    ``freq`` / ``series_start`` (``--freq`` / ``--series-start``) give the clock of a file without timestamps;
    ``series_start`` on a file with its own timestamps is an error."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SERIES_SUFFIXES:
        raise STDataError(f"unsupported file type {suffix or '(none)'!r} for {path}; give one of "
                          f"{', '.join(SERIES_SUFFIXES)} or a registered dataset name")
    if not path.is_file():
        if path.is_symlink():
            raise STDataError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist or leads back "
                              "to itself (a loop); point it at the series file")
        raise STDataError(f"no such file: {path}")
    timestamps = names = None
    if suffix == ".npz":
        values = _read_npz(path, "series", ("data",))
    elif suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except Exception as err:
            raise _cannot_read(path, ".npy", err) from err
    elif suffix in (".h5", ".hdf5"):
        values, timestamps, names = _read_h5(path)
    else:
        values, timestamps, names = _read_series_csv(path)
    if values.ndim not in (2, 3):
        raise STDataError(f"{path}: expected an array [T, N] or [T, N, C], found rank {values.ndim} with shape "
                          f"{tuple(values.shape)}; reshape it (a grid [T, C, H, W] becomes [T, H*W, C])")
    if not np.issubdtype(values.dtype, np.number):
        raise STDataError(f"{path}: values must be numeric, found dtype {values.dtype}")
    notes = [f"Loaded from {path}."]
    if freq is not None:
        freq = normalize_freq(freq)
    if timestamps is not None:
        if series_start is not None:
            raise STDataError(f"{path} has its own timestamps (first {timestamps[0]}); --series-start "
                              "(dataset_series_start) cannot move them, leave it out")
        inferred = infer_freq(timestamps)
        if freq is not None and inferred is not None and pd.infer_freq(timestamps) is not None and (
                pd.Timedelta(freq) != pd.Timedelta(inferred)):
            raise STDataError(f"{path} has its own timestamps every {inferred}; --freq (dataset_freq) {freq} "
                              "contradicts them, leave it out")
        freq = freq or inferred
    elif freq is None or series_start is None:
        notes.append("The file has no timestamps and its calendar is unknown (give --freq and --series-start).")
    if names is not None and len(names) != values.shape[1]:
        names = None  # a header that does not match the columns is not trustworthy as node names
    try:
        return STData(values=values, name=path.stem, freq=freq,
                      start=None if timestamps is not None else series_start, timestamps=timestamps,
                      node_names=names, description=" ".join(notes),
                      meta={"source_file": str(path), "file_rank": int(values.ndim)})
    except STDataError as err:
        raise STDataError(f"{path}: {err}") from err


def load_adjacency_file(path: str | os.PathLike, num_nodes: int) -> np.ndarray:
    """``[N, N]`` float32 adjacency from a matrix (``.npy``/``.npz``/``.csv``) or an edge-list ``.csv``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise STDataError(f"no such adjacency file: {path}")
    if suffix == ".npy":
        try:
            adj = np.load(path, allow_pickle=False)
        except Exception as err:
            raise _cannot_read(path, ".npy", err) from err
    elif suffix == ".npz":
        adj = _read_npz(path, "adjacency", ("adj_mx", "adj", "adjacency", "data"))
    elif suffix == ".csv":
        adj = _read_adjacency_csv(path, num_nodes)
    else:
        raise STDataError(f"unsupported adjacency file type {suffix or '(none)'!r} for {path}; give an N x N "
                          "matrix as .csv/.npy/.npz or a from,to[,cost] edge list .csv")
    adj = np.asarray(adj, dtype=np.float64)
    if adj.shape != (num_nodes, num_nodes):
        raise STDataError(f"adjacency file {path} has shape {tuple(adj.shape)} but the dataset has N={num_nodes} "
                          f"nodes; give an [{num_nodes}, {num_nodes}] matrix or an edge list over nodes "
                          f"0..{num_nodes - 1} (a csv edge list with a from,to[,cost] header)")
    if not np.isfinite(adj).all():
        i, j = np.argwhere(~np.isfinite(adj))[0]
        raise STDataError(f"adjacency file {path} contains NaN or inf (first at row {i}, column {j}); "
                          "use 0 for 'no edge'")
    return adj.astype(np.float32)


def _read_adjacency_csv(path: Path, num_nodes: int) -> np.ndarray:
    try:
        raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except Exception as err:
        raise _cannot_read(path, ".csv", err) from err
    first = [str(c).strip().lower() for c in raw.iloc[0]]
    named_edges = len(first) in (2, 3) and first[:2] in (["from", "to"], ["src", "dst"], ["source", "target"])
    has_header = named_edges or not all(_is_number(c) for c in first)
    body = raw.iloc[1:] if has_header else raw
    if not has_header and raw.shape == (num_nodes + 1, num_nodes) and [float(c) for c in first] == list(
            range(num_nodes)):
        body = raw.iloc[1:]  # a header row of the node indices 0..N-1 (as in W_adj_matrix.csv)
    try:
        numeric = body.replace("", np.nan).astype(np.float64).to_numpy()
    except ValueError as err:
        raise STDataError(f"adjacency file {path} holds a cell that is not a number: {err}") from err
    # a square table without a from,to header is a matrix (of the wrong size, if not N x N), not 2 or 3 edges
    is_edge_list = named_edges or (numeric.shape[1] in (2, 3) and numeric.shape[0] != numeric.shape[1])
    if not is_edge_list:
        return numeric
    if not np.isfinite(numeric).all():
        raise STDataError(f"adjacency file {path} (an edge list) contains NaN or inf")
    try:
        return edge_list_to_dense(numeric, num_nodes, weights="gaussian" if numeric.shape[1] == 3 else "binary")
    except ValueError as err:
        raise STDataError(f"adjacency file {path} (read as a from,to[,cost] edge list): {err}") from err


def load_nodes_file(path: str | os.PathLike, num_nodes: int) -> tuple[list[str], np.ndarray | None, str | None]:
    """``(names [N], coords [N, 2] or None, coord_kind)`` from a nodes ``.csv`` (``--nodes`` / ``dataset_nodes``).

    Columns: ``name`` (required), then ``latitude,longitude`` (degrees, kind ``latlon``) or ``x,y`` (planar,
    kind ``xy``); one row per node, in node order. Every error names the file and what was expected.
    """
    path = Path(path)
    expected = (f"a .csv with a 'name' column and optionally latitude,longitude or x,y columns, one row per node "
                f"({num_nodes} rows) in node order")
    if not path.is_file():
        raise STDataError(f"no such nodes file (--nodes / dataset_nodes): {path}")
    if path.suffix.lower() != ".csv":
        raise STDataError(f"nodes file {path}: expected {expected}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:
        raise _cannot_read(path, ".csv", err) from err
    columns = [str(c).strip().lower() for c in table.columns]
    table.columns = columns
    if "name" not in columns:
        raise STDataError(f"nodes file {path} has the columns {columns} and no 'name' column; expected {expected}")
    if len(table) != num_nodes:
        raise STDataError(f"nodes file {path} has {len(table)} rows but the dataset has N={num_nodes} nodes; "
                          f"expected {expected}")
    names = [str(n).strip() for n in table["name"]]
    pairs = [(a, b, kind) for a, b, kind in (("latitude", "longitude", "latlon"), ("x", "y", "xy"))
             if a in columns or b in columns]
    if not pairs:
        return names, None, None
    if len(pairs) > 1:
        raise STDataError(f"nodes file {path} has both latitude,longitude and x,y columns; keep one pair")
    a, b, kind = pairs[0]
    if a not in columns or b not in columns:
        raise STDataError(f"nodes file {path} has {a if a in columns else b!r} without {b if a in columns else a!r};"
                          f" coordinates need both columns {a},{b}")
    coords = table[[a, b]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    if not np.isfinite(coords).all():
        row, col = np.argwhere(~np.isfinite(coords))[0]
        raise STDataError(f"nodes file {path}: {(a, b)[col]} of row {row + 1} ({names[row]!r}) is "
                          f"{table[(a, b)[col]].iloc[row]!r}, not a number")
    if kind == "latlon" and ((np.abs(coords[:, 0]) > 90).any() or (np.abs(coords[:, 1]) > 180).any()):
        raise STDataError(f"nodes file {path}: latitude must lie in [-90, 90] and longitude in [-180, 180] degrees "
                          "(latitude first); give planar coordinates as x,y")
    return names, coords, kind
