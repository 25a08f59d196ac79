"""The one in-memory form of a spatio-temporal dataset: values ``[T, N, C]`` plus everything known about them.

Every loader (named datasets, generic files, the synthetic generator) returns an :class:`STData`, and every
later stage (windows, prompts, images, baselines) reads only this object. Validation happens once, here, so
bad input fails with a message naming the dataset and the field instead of deep inside a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

COORD_KINDS = ("latlon", "grid", "xy")


class STDataError(ValueError):
    """Raised when a spatio-temporal dataset is malformed; the message names the dataset and the field."""


@dataclass
class STData:
    """A spatio-temporal series with its graph, clock and descriptions.

    Args:
        values: ``[T, N, C]`` float array. NaN marks a missing value; ``null_value`` (e.g. 0 for flows)
            marks a declared null. ``inf`` is never allowed. A ``[T, N]`` array is read as one channel.
        name: dataset name (``nyc-taxi``, a file stem, ...).
        city: free text, e.g. ``"New York City (Manhattan)"``.
        freq: sampling interval as a pandas offset string (``"5min"``, ``"1h"``, ``"7D"``; also ``"h"``, ``"H"``,
            ``"15T"``, ``"D"``), stored in one canonical form (``"1h"``, ``"15min"``, ``"1D"``); ``None`` when the
            step is unknown (a file without timestamps and no ``--freq``).
        start: timestamp of ``values[0]``; ``None`` when unknown.
        timestamps: explicit ``[T]`` timestamps instead of ``start`` (must be strictly increasing).
        no_calendar: the user chose to run without a calendar (``--no-calendar``): time-of-day / day-of-week
            features are zero and the calendar baselines are skipped. Without it, a dataset whose calendar is
            unknown (no timestamps, and ``freq`` or ``start`` missing) is *refused* by everything that needs a
            calendar (:meth:`require_calendar`), never given an assumed one.
        channels / units: one name and one unit per channel.
        node_names / node_descriptions: one string per node where known.
        coords: ``[N, 2]`` node coordinates; ``coord_kind`` says whether they are ``latlon`` (degrees,
            lat first), ``grid`` (row, col) or ``xy`` (planar).
        adjacency: ``[N, N]`` weights, a dense array or a scipy sparse matrix.
        null_value: a value that means "not observed" besides NaN (``None`` for none).
        grid_shape: ``(H, W)`` when nodes are the cells of a grid, node index ``row * W + col``.
        node_channels: in a channel-independent view (:meth:`series_view`), the original channel each node's
            one-channel series is; ``None`` otherwise.
        node_units: in a channel-independent view, the unit of each node's original channel; ``None`` otherwise.
        sensors: what measured each channel, by channel name (``{"PM2.5": "air-quality monitoring stations",
            "TEMP": "weather station"}``): the registry's ``sensors`` of a named dataset, ``{}`` when unknown (a
            user's file). Keyed by name, so a channel selection or a channel-independent view keeps it.
        description: one paragraph on what the data is and where it came from.
        meta: anything else (source, licence, ...).
    """

    values: np.ndarray
    name: str
    city: str = ""
    freq: str | None = None
    start: pd.Timestamp | None = None
    timestamps: pd.DatetimeIndex | None = None
    no_calendar: bool = False
    channels: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    node_names: list[str] | None = None
    node_descriptions: list[str] | None = None
    coords: np.ndarray | None = None
    coord_kind: str | None = None
    adjacency: np.ndarray | sp.sparray | sp.spmatrix | None = None
    null_value: float | None = None
    grid_shape: tuple[int, int] | None = None
    node_channels: list[str] | None = None
    node_units: list[str] | None = None
    sensors: dict[str, str] = field(default_factory=dict)
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------------ validation
    def _fail(self, message: str) -> None:
        raise STDataError(f"dataset {self.name!r}: {message}")

    def _validate(self) -> None:
        values = np.asarray(self.values)
        if values.ndim == 2:
            values = values[:, :, None]
        if values.ndim != 3:
            self._fail(f"values must have shape [T, N] or [T, N, C], found shape {tuple(values.shape)}")
        if not np.issubdtype(values.dtype, np.number):
            self._fail(f"values must be numeric, found dtype {values.dtype}")
        values = values.astype(np.float32, copy=False)
        n_inf = int(np.isinf(values).sum())
        if n_inf:
            t, n, c = np.argwhere(np.isinf(values))[0]
            self._fail(f"values contain {n_inf} infinite entries (first at t={t}, node={n}, channel={c}); "
                       "use NaN for missing values")
        self.values = values
        T, N, C = values.shape
        if T == 0 or N == 0 or C == 0:
            self._fail(f"values are empty, shape {values.shape}")

        if self.freq is not None:
            self.freq = normalize_freq(self.freq, f"dataset {self.name!r}: frequency")
        if self.timestamps is not None:
            ts = pd.DatetimeIndex(self.timestamps)
            if len(ts) != T:
                self._fail(f"timestamps has {len(ts)} entries but values has T={T} steps")
            steps = np.diff(ts.asi8)
            if (steps <= 0).any():
                i = int(np.argmax(steps <= 0))
                self._fail(f"timestamps must be strictly increasing; timestamps[{i + 1}]={ts[i + 1]} "
                           f"does not come after timestamps[{i}]={ts[i]}")
            self.timestamps = ts
            if self.start is None:
                self.start = ts[0]
        if self.start is not None:
            self.start = parse_timestamp(self.start, f"dataset {self.name!r}: start")
        if self.no_calendar and self.start is not None:
            self._fail("no_calendar=True (--no-calendar) but a start / timestamps are given; drop one of them")

        if not self.channels:
            self.channels = [f"ch{i}" for i in range(C)]
        if len(self.channels) != C:
            self._fail(f"channels lists {len(self.channels)} names {self.channels} but values has C={C} channels")
        if not self.units:
            self.units = [""] * C
        if len(self.units) != C:
            self._fail(f"units lists {len(self.units)} entries but values has C={C} channels")
        if self.node_channels is not None and C != 1:
            self._fail(f"node_channels marks a channel-independent view, which has one channel; values has C={C}")
        for key in ("node_names", "node_descriptions", "node_channels", "node_units"):
            names = getattr(self, key)
            if names is not None and len(names) != N:
                self._fail(f"{key} has {len(names)} entries but values has N={N} nodes")

        if not isinstance(self.sensors, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.sensors.items()):
            self._fail(f"sensors must map channel names to text, found {self.sensors!r}")

        if self.coords is not None:
            coords = np.asarray(self.coords, dtype=np.float64)
            if coords.shape != (N, 2):
                self._fail(f"coords must have shape [N, 2] = [{N}, 2], found {tuple(coords.shape)}")
            if not np.isfinite(coords).all():
                self._fail("coords contain NaN or inf")
            if self.coord_kind not in COORD_KINDS:
                self._fail(f"coord_kind must be one of {COORD_KINDS} when coords are given, found {self.coord_kind!r}")
            self.coords = coords

        if self.adjacency is not None:
            adj = self.adjacency
            if not sp.issparse(adj):
                adj = np.asarray(adj, dtype=np.float32)
            if adj.shape != (N, N):
                self._fail(f"adjacency must be [N, N] = [{N}, {N}] to match the node count, found {tuple(adj.shape)}")
            data = adj.data if sp.issparse(adj) else adj
            if not np.isfinite(data).all():
                self._fail("adjacency contains NaN or inf")
            self.adjacency = adj

        if self.grid_shape is not None:
            h, w = self.grid_shape
            if h * w != N:
                self._fail(f"grid_shape {self.grid_shape} has {h * w} cells but values has N={N} nodes")
            self.grid_shape = (int(h), int(w))

    # ------------------------------------------------------------------ shape and clock
    @property
    def num_steps(self) -> int:
        return self.values.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.values.shape[1]

    @property
    def num_channels(self) -> int:
        return self.values.shape[2]

    @property
    def has_calendar(self) -> bool:
        """True when every step has a known timestamp (timestamps, or a start and a frequency)."""
        return self.timestamps is not None or (self.start is not None and self.freq is not None)

    def time_index(self) -> pd.DatetimeIndex | None:
        """``[T]`` timestamps, or ``None`` when the calendar is unknown."""
        if self.timestamps is not None:
            return self.timestamps
        if self.start is None or self.freq is None:
            return None
        return pd.date_range(self.start, periods=self.num_steps, freq=self.freq)

    def calendar_text(self) -> str:
        """One line on the clock, e.g. ``"2024-03-04 00:00:00 to 2024-03-10 23:45:00, every 15min"``, or what
        is missing and which flags give it (``data inspect`` shows this; it never refuses)."""
        ts = self.time_index()
        if ts is not None:
            return f"{ts[0]} to {ts[-1]}, every {self.freq or 'irregular step'}"
        if self.no_calendar:
            return "none (--no-calendar): no time-of-day / day-of-week features, calendar baselines skipped"
        return f"unknown (give {' and '.join(self._missing_clock())}, or --no-calendar to run without one)"

    def _missing_clock(self) -> list[str]:
        missing = []
        if self.freq is None:
            missing.append("--freq (the step, e.g. 15min)")
        if self.start is None:
            missing.append("--series-start (the timestamp of the first step, e.g. 2024-03-04)")
        return missing

    def require_calendar(self, purpose: str = "time-of-day / day-of-week features and the calendar baselines"
                         ) -> bool:
        """True with a calendar, False when the user chose ``no_calendar``; else raise :class:`STDataError`
        naming the flags to give (``--freq`` / ``--series-start``, recipe keys ``dataset_freq`` /
        ``dataset_series_start``) or ``--no-calendar``. A calendar is never assumed."""
        if self.has_calendar:
            return True
        if self.no_calendar:
            return False
        self._fail(f"its calendar is unknown (no timestamps in the data) and {purpose} need one; give "
                   f"{' and '.join(self._missing_clock())} (recipe keys dataset_freq / dataset_series_start), or "
                   "--no-calendar (dataset_no_calendar: true) to run without a calendar")
        return False  # unreachable: _fail raises

    @property
    def steps_per_day(self) -> int:
        """Number of steps in one day (at least 1, e.g. 288 for 5-minute data, 1 for weekly data)."""
        if self.freq is None:
            self._fail("the step is unknown, so steps per day are too; give --freq (e.g. 15min)")
        return max(1, int(round(pd.Timedelta("1D") / pd.Timedelta(self.freq))))

    # ------------------------------------------------------------------ masks
    def mask(self) -> np.ndarray:
        """``[T, N, C]`` bool, True where a value was observed (not NaN and not the declared null)."""
        observed = ~np.isnan(self.values)
        if self.null_value is not None:
            observed &= ~np.isclose(self.values, self.null_value)
        return observed

    # ------------------------------------------------------------------ selections
    def select_channels(self, channels: list[str] | list[int] | None) -> STData:
        """Keep the named (or indexed) channels, in the order given; ``None`` keeps all."""
        if channels is None:
            return self
        index = []
        for ch in channels:
            if isinstance(ch, (int, np.integer)) or (isinstance(ch, str) and ch.isdigit() and ch not in self.channels):
                i = int(ch)
                if not 0 <= i < self.num_channels:
                    self._fail(f"channel index {i} is out of range; the dataset has {self.num_channels} channels "
                               f"{self.channels}")
                index.append(i)
            elif ch in self.channels:
                index.append(self.channels.index(ch))
            else:
                self._fail(f"unknown channel {ch!r}; available channels: {self.channels}")
        return replace(self, values=self.values[:, :, index], channels=[self.channels[i] for i in index],
                       units=[self.units[i] for i in index])

    def series_view(self) -> STData:
        """The channel-independent view: every channel of every node becomes a node of its own with one channel
        (``[T, N, C] -> [T, N * C, 1]``, node ``n * C + c`` is channel ``c`` of node ``n``), as a universal
        forecaster reads any dataset (PatchTST's channel independence; issue 23). Each new node keeps its node's
        coordinates and names ``"NODE CHANNEL"``, describes its channel and unit, and records its channel in
        ``node_channels`` and its unit in ``node_units`` (``sensors`` stays keyed by channel name); the graph links
        the series of one channel as it linked their nodes (``I_C (x) A`` reordered: series of other channels are not
        neighbours). A grid's cells stop being a grid. A view of a view is itself."""
        if self.node_channels is not None:
            return self
        T, N, C = self.values.shape
        names = self.node_names or [f"node {n}" for n in range(N)]
        descriptions = self.node_descriptions or [""] * N
        units = [f" ({unit})" if unit else "" for unit in self.units]
        adjacency = None
        if self.adjacency is not None:  # series n*C+c and m*C+c linked as nodes n and m were
            adjacency = sp.kron(sp.csr_array(self.adjacency), sp.identity(C, format="csr"), format="csr")
        return replace(
            self, values=self.values.reshape(T, N * C, 1), channels=["value"], units=[""],
            node_names=[f"{name} {channel}" for name in names for channel in self.channels],
            node_descriptions=[f"{text + '; ' if text else ''}{channel}{unit}" for text in descriptions
                               for channel, unit in zip(self.channels, units, strict=True)],
            node_channels=[channel for _ in range(N) for channel in self.channels],
            node_units=[unit for _ in range(N) for unit in self.units],
            coords=None if self.coords is None else np.repeat(self.coords, C, axis=0),
            adjacency=adjacency, grid_shape=None)

    def slice_time(self, start: str | pd.Timestamp | None = None, end: str | pd.Timestamp | None = None) -> STData:
        """Keep steps with ``start <= timestamp < end`` (either bound optional; ``--start`` / ``--end``)."""
        ts = self.time_index()
        if ts is None:
            self._fail(f"cannot slice by date (--start / --end, recipe keys dataset_start / dataset_end): the "
                       f"calendar is {self.calendar_text()}")
        lo = 0 if start is None else int(ts.searchsorted(parse_timestamp(start, "--start (dataset_start)"),
                                                         side="left"))
        hi = len(ts) if end is None else int(ts.searchsorted(parse_timestamp(end, "--end (dataset_end)"),
                                                             side="left"))
        if hi <= lo:
            self._fail(f"the time range [{start}, {end}) selects no steps; the data covers {ts[0]} to {ts[-1]}")
        return replace(self, values=self.values[lo:hi], start=ts[lo],
                       timestamps=None if self.timestamps is None else self.timestamps[lo:hi])

    def as_grid(self) -> np.ndarray:
        """``[T, C, H, W]`` view of a grid dataset (node index ``row * W + col``)."""
        if self.grid_shape is None:
            self._fail("as_grid() needs grid_shape; this dataset is not a grid")
        h, w = self.grid_shape
        return self.values.reshape(self.num_steps, h, w, self.num_channels).transpose(0, 3, 1, 2)

    def dense_adjacency(self) -> np.ndarray | None:
        """``[N, N]`` float32 adjacency as a dense array (``None`` when the dataset has no graph)."""
        if self.adjacency is None:
            return None
        if sp.issparse(self.adjacency):
            return np.asarray(self.adjacency.toarray(), dtype=np.float32)
        return self.adjacency

    def summary(self) -> dict[str, Any]:
        """Shape, clock, nulls and graph statistics, as printed by ``st-instruct data inspect``."""
        ts = self.time_index()
        observed = self.mask()
        info: dict[str, Any] = {
            "name": self.name,
            "city": self.city,
            "shape [T, N, C]": list(self.values.shape),
            "frequency": self.freq or "unknown (give --freq)",
            "calendar": self.calendar_text(),
            "start": None if ts is None else str(ts[0]),
            "end": None if ts is None else str(ts[-1]),
            "channels": [f"{c} ({u})" if u else c for c, u in zip(self.channels, self.units, strict=True)],
            "null value": "NaN" if self.null_value is None else f"NaN or {self.null_value:g}",
            "missing": f"{int((~observed).sum())} of {observed.size} ({100 * (~observed).mean():.2f}%)",
        }
        per_channel = {}
        for i, ch in enumerate(self.channels):
            v = self.values[:, :, i][observed[:, :, i]]
            if v.size:
                per_channel[ch] = {"min": float(v.min()), "max": float(v.max()), "mean": float(v.mean())}
        info["observed values"] = per_channel
        if self.adjacency is not None:
            adj = self.dense_adjacency()
            off = adj.copy()
            np.fill_diagonal(off, 0)
            degree = (off != 0).sum(1)
            info["graph"] = {
                "edges (non-zero off-diagonal)": int((off != 0).sum()),
                "symmetric": bool(np.allclose(adj, adj.T)),
                "degree min/mean/max": [int(degree.min()), round(float(degree.mean()), 2), int(degree.max())],
                "isolated nodes": int((degree == 0).sum()),
            }
        if self.grid_shape is not None:
            info["grid [H, W]"] = list(self.grid_shape)
        if self.coords is not None:
            info["coordinates"] = self.coord_kind
        return info


_LEGACY_UNITS = {"H": "h", "T": "min", "S": "s", "L": "ms", "U": "us", "N": "ns"}  # aliases pandas 3 dropped


def normalize_freq(freq: str, what: str = "frequency (--freq / dataset_freq)") -> str:
    """A fixed sampling interval in one canonical form: ``"h"``, ``"1h"``, ``"H"`` -> ``"1h"``;
    ``"15T"`` / ``"15min"`` -> ``"15min"``; ``"D"`` -> ``"1D"``. Parsed once, through
    ``pandas.tseries.frequencies.to_offset``, so every later ``pd.Timedelta(freq)`` works; ``what`` names the
    source (flag, key or file) in the error."""
    text = str(freq).strip()
    match = re.fullmatch(r"(\d*)\s*([A-Za-z]+)", text)
    if match and match[2] in _LEGACY_UNITS:
        text = f"{match[1]}{_LEGACY_UNITS[match[2]]}"
    try:
        offset = pd.tseries.frequencies.to_offset(text)
        delta = pd.Timedelta(offset)
    except (ValueError, TypeError) as err:
        raise STDataError(f"{what} {freq!r} is not a fixed interval such as '5min', '15min', '1h', '1D' or '7D'"
                          ) from err
    if delta <= pd.Timedelta(0):
        raise STDataError(f"{what} {freq!r} must be positive")
    return offset.freqstr if offset.freqstr[0].isdigit() else f"1{offset.freqstr}"


def parse_timestamp(value: str | pd.Timestamp, what: str) -> pd.Timestamp:
    """``value`` as a timestamp; an error naming ``what`` (the flag or key) for text that is not a date."""
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as err:
        raise STDataError(f"{what} {value!r} is not a date/time such as 2024-03-04 or '2024-03-04 06:00'"
                          ) from err
    if stamp is pd.NaT:
        raise STDataError(f"{what} {value!r} is not a date/time such as 2024-03-04 or '2024-03-04 06:00'")
    return stamp
