"""What a rationale teacher may know about one air-quality window: facts derived from the history, and the label.

AirGPT (Li, Chen, Xu, Information Fusion 2025) has a teacher LLM see a window's history *and* its true future and
write a staged rationale that arrives at that future (label-constrained generation). :class:`WindowFacts` keeps the
two apart: every field but ``label`` is computed from the history steps ``[s, s + L)`` alone, so a validator can
tell a number a rationale may know (:meth:`WindowFacts.known_numbers`) from one only the future holds
(:meth:`WindowFacts.future_numbers`).

Our choices (the paper lists its inputs only in words):

- Per station, of the target channel: the last *observed* value, history mean / min / max, the 6-h trend (least
  squares slope over the last 6 history hours, per hour; NaN with fewer than 2 observations), the hour of day of
  the history's peak and trough (``None`` without a calendar), the mean last value of its 2 nearest stations
  (haversine) and its nearest upwind station (bearing from the station within 45 degrees of the direction the wind
  comes from) with that station's last value. City level: the mean of the stations' last values, the mean / min /
  max of all history values, the mean trend, the hours of day of the peak and trough of the hourly station mean,
  and the stations upwind of the stations' centroid (more than 1 km from it, bearing within 45 degrees of the wind)
  with their mean last value. Neighbours and upwind stations are taken among the selected stations
  (``node_index``), so a one-station window has none.
- Weather over the history, all selected stations together: mean wind speed (WSPM, m/s); the dominant direction
  the wind comes from, the speed-weighted vector mean of ``wd_deg`` (``sum s sin(theta)``, ``sum s cos(theta)``) as a
  16-point compass name (``"calm"`` when every observed speed is 0); mean relative humidity from TEMP and DEWP by
  the Magnus formula (a = 17.625, b = 243.04 degC; Alduchov and Eskridge 1996), clipped to [0, 100] %; total rain
  (the hourly mean over stations, summed, mm); mean temperature (degC).
- Missing channels: only the target channel is required. Without ``WSPM`` or ``wd_deg`` the wind facts are ``None``
  (and with them the upwind facts); without ``TEMP`` or ``DEWP`` the humidity is ``None``; without ``TEMP`` the
  temperature, without ``RAIN`` the rain. ``WindowFacts.skipped`` names what was skipped and why. Without lat/lon
  coordinates the neighbour and upwind facts are skipped too.
- ``label`` ``[P, N']`` is the target channel over the horizon ``[s + L, s + L + P)`` in original units (NaN
  missing). :meth:`WindowFacts.conclusion_numbers` is what a rationale's stage 5 must state: each station's mean over
  the horizon (stations without an observed future value omitted) and the ``"city mean"``, the mean of those
  station means (each station weighs the same, as in the conclusion line).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from st_instruct.data.air_graphs import bearing_deg
from st_instruct.data.graph import haversine_km
from st_instruct.data.stdata import STData
from st_instruct.samples.prompts import PeriodText, describe_date

CITY_MEAN = "city mean"
TREND_HOURS = 6
NEIGHBOURS = 2
UPWIND_HALF_ANGLE = 45.0
COMPASS = ("N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW")
MAGNUS_A, MAGNUS_B = 17.625, 243.04


@dataclass
class StationFacts:
    """History facts of one station (target channel, original units; NaN where not computable)."""

    name: str
    last: float
    mean: float
    min: float
    max: float
    trend: float  # per hour over the last TREND_HOURS history steps
    peak_hour: int | None  # hour of day of the history maximum (None without a calendar or any observation)
    trough_hour: int | None
    neighbour_last: float  # mean last value of the NEIGHBOURS nearest selected stations
    upwind: str  # nearest selected station upwind ("" when none)
    upwind_last: float


@dataclass
class WindowFacts:
    """Everything a teacher may know about one window; all fields but ``label`` come from the history alone.

    ``label`` is ``[P, N']`` (horizon steps, selected stations in ``station_names`` order), original units, NaN
    missing. Wind / humidity / rain / temperature are ``None`` when their channels are absent (see ``skipped``).
    """

    dataset: str
    window_start: int
    station_names: list[str]
    target_channel: str
    unit: str
    history_start: str
    target_start: str
    history_steps: int
    horizon_steps: int
    history_period: str
    target_period: str
    city: str
    stations: list[StationFacts]
    city_last: float
    city_mean: float
    city_min: float
    city_max: float
    city_trend: float
    city_peak_hour: int | None  # hour of day of the maximum / minimum of the hourly station mean
    city_trough_hour: int | None
    wind_speed: float | None
    wind_from: str | None  # 16-point compass name, or "calm"
    humidity: float | None  # %
    rain: float | None  # mm over the history
    temperature: float | None  # degC
    upwind_stations: list[str]
    upwind_last: float
    label: np.ndarray = field(repr=False)
    skipped: list[str] = field(default_factory=list)

    def conclusion_numbers(self) -> dict[str, float]:
        """``{station: mean of its label over the horizon, ..., "city mean": mean of those}``; stations whose
        future is all missing are omitted (an all-missing window gives ``{}``)."""
        numbers: dict[str, float] = {}
        for i, name in enumerate(self.station_names):
            column = self.label[:, i]
            if np.isfinite(column).any():
                numbers[name] = float(np.nanmean(column))
        if numbers:
            numbers[CITY_MEAN] = float(np.mean(list(numbers.values())))
        return numbers

    def future_numbers(self) -> set[float]:
        """Magnitudes only the future holds: every observed label value, each station's label mean / min / max and
        the city's (what a leak in stages 1-4 would quote)."""
        observed = self.label[np.isfinite(self.label)]
        numbers = {abs(float(v)) for v in observed}
        if observed.size:
            numbers |= {abs(float(observed.min())), abs(float(observed.max()))}
            numbers |= {abs(v) for v in self.conclusion_numbers().values()}
            for column in self.label.T:
                if np.isfinite(column).any():
                    numbers |= {abs(float(np.nanmin(column))), abs(float(np.nanmax(column)))}
        return numbers

    def stated_numbers(self) -> list[float]:
        """Every number of the history facts (finite ones), as a rationale may quote them."""
        values: list[float | int | None] = [self.city_last, self.city_mean, self.city_min, self.city_max,
                                            self.city_trend, self.city_peak_hour, self.city_trough_hour,
                                            self.wind_speed, self.humidity, self.rain,
                                            self.temperature, self.upwind_last]
        for s in self.stations:
            values += [s.last, s.mean, s.min, s.max, s.trend, s.peak_hour, s.trough_hour, s.neighbour_last,
                       s.upwind_last]
        return [float(v) for v in values if v is not None and math.isfinite(v)]

    def known_numbers(self) -> set[float]:
        """Magnitudes derivable from the history and context: :meth:`stated_numbers`, the history and horizon lengths,
        the station count, the trend span, hours and days 0-31, the stage numbers 1-5, and the years, months and days
        of the history and target start dates."""
        numbers = {abs(v) for v in self.stated_numbers()}
        numbers |= {float(v) for v in range(32)}
        numbers |= {float(self.history_steps), float(self.horizon_steps), float(len(self.station_names)),
                    float(TREND_HOURS), 100.0}  # 100: "percent"
        for text in (self.history_start, self.target_start, self.history_period, self.target_period):
            numbers |= {float(token) for token in _digit_runs(text)}
        return numbers

    def content(self) -> str:
        """Canonical JSON of every field (label included; NaN as null): what a cache key hashes."""
        record = asdict(self)
        record["label"] = [[None if not math.isfinite(v) else round(float(v), 6) for v in row]
                           for row in self.label.tolist()]
        return json.dumps(_finite(record), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        """sha256 hex of :meth:`content`."""
        return hashlib.sha256(self.content().encode()).hexdigest()


def _digit_runs(text: str) -> list[str]:
    return re.findall(r"\d+", text)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------------- helpers
def compass_name(degrees: float) -> str:
    """16-point compass name of a direction in degrees clockwise from north (0 -> "N", 292.5 -> "WNW")."""
    return COMPASS[int(((degrees % 360.0) + 11.25) // 22.5) % 16]


def relative_humidity(temperature: np.ndarray, dew_point: np.ndarray) -> np.ndarray:
    """Relative humidity in % from temperature and dew point (degC, same shape) by the Magnus formula, clipped to
    [0, 100]; NaN where either is NaN."""
    def saturation(t: np.ndarray) -> np.ndarray:
        return np.exp(MAGNUS_A * t / (MAGNUS_B + t))

    with np.errstate(invalid="ignore", over="ignore"):
        return np.clip(100.0 * saturation(dew_point) / saturation(temperature), 0.0, 100.0)


def _nan_stat(fn, values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(fn(finite)) if finite.size else math.nan


def _last_observed(series: np.ndarray) -> float:
    finite = np.flatnonzero(np.isfinite(series))
    return float(series[finite[-1]]) if finite.size else math.nan


def _trend(series: np.ndarray) -> float:
    tail = series[-TREND_HOURS:]
    t = np.flatnonzero(np.isfinite(tail))
    if t.size < 2:
        return math.nan
    return float(np.polyfit(t.astype(np.float64), tail[t].astype(np.float64), 1)[0])


def _angle_gap(a: np.ndarray | float, b: float) -> np.ndarray:
    return np.abs((np.asarray(a) - b + 180.0) % 360.0 - 180.0)


def _channel(data: STData, name: str) -> int | None:
    return data.channels.index(name) if name in data.channels else None


# ---------------------------------------------------------------------------------------------------- facts
def window_facts(data: STData, window_start: int, history: int, horizon: int, node_index: Sequence[int] | None = None,
                 target_channel: str = "PM2.5") -> WindowFacts:
    """The :class:`WindowFacts` of the window whose history is steps ``[window_start, window_start + history)`` and
    whose future is the next ``horizon`` steps, for the stations ``node_index`` (default all).

    ``data`` holds all channels ``[T, N, C]``; only ``target_channel`` is required (see the module docstring for what
    is skipped without the weather channels or coordinates).

    Raises:
        ValueError: the target channel is absent, the window does not fit in the series, or a node index is out of
            range; the message names the dataset.
    """
    target = _channel(data, target_channel)
    if target is None:
        raise ValueError(f"dataset {data.name!r}: window_facts needs the target channel {target_channel!r}, missing "
                         f"from its channels {data.channels}")
    if history < 1 or horizon < 1:
        raise ValueError(f"dataset {data.name!r}: history and horizon must be >= 1, found {history} and {horizon}")
    if window_start < 0 or window_start + history + horizon > data.num_steps:
        raise ValueError(f"dataset {data.name!r}: window_start {window_start} with {history} + {horizon} steps does "
                         f"not fit in its {data.num_steps} steps (window_start must be 0 .. "
                         f"{data.num_steps - history - horizon})")
    nodes = list(range(data.num_nodes)) if node_index is None else [int(i) for i in node_index]
    if not nodes or min(nodes) < 0 or max(nodes) >= data.num_nodes:
        raise ValueError(f"dataset {data.name!r}: node_index must hold indices 0 .. {data.num_nodes - 1}, "
                         f"found {list(node_index or [])}")
    names = [data.node_names[i] if data.node_names is not None else f"node {i}" for i in nodes]
    s, e = window_start, window_start + history
    his = data.values[s:e][:, nodes].astype(np.float64)  # [L, N', C]
    y = his[:, :, target]  # [L, N']
    label = data.values[e:e + horizon][:, nodes, target].astype(np.float64)  # [P, N']
    skipped: list[str] = []

    timestamps = data.time_index()
    periods = PeriodText(timestamps, data.freq)
    if timestamps is not None:
        hours = np.asarray(timestamps[s:e].hour)
        history_start = f"{describe_date(timestamps[s])}, {timestamps[s]:%H:%M}"
        target_start = f"{describe_date(timestamps[e])}, {timestamps[e]:%H:%M}"
    else:
        hours = None
        history_start, target_start = f"step {s}", f"step {e}"

    # weather, all selected stations together
    wind_speed = wind_from = wind_deg = None
    speed_c, dir_c = _channel(data, "WSPM"), _channel(data, "wd_deg")
    if speed_c is None or dir_c is None:
        skipped.append("wind and upwind stations (no WSPM / wd_deg channel)")
    else:
        speed, direction = his[:, :, speed_c], his[:, :, dir_c]
        wind_speed = _nan_stat(np.mean, speed)
        both = np.isfinite(speed) & np.isfinite(direction)
        if both.any():
            theta = np.radians(direction[both])
            u, v = float(np.sum(speed[both] * np.sin(theta))), float(np.sum(speed[both] * np.cos(theta)))
            if math.hypot(u, v) > 1e-9:
                wind_deg = math.degrees(math.atan2(u, v)) % 360.0
                wind_from = compass_name(wind_deg)
            else:
                wind_from = "calm"
        if not math.isfinite(wind_speed):
            wind_speed = None
    temp_c, dew_c = _channel(data, "TEMP"), _channel(data, "DEWP")
    humidity = temperature = rain = None
    if temp_c is None or dew_c is None:
        skipped.append("humidity (no TEMP / DEWP channel)")
    else:
        humidity = _nan_stat(np.mean, relative_humidity(his[:, :, temp_c], his[:, :, dew_c]))
    if temp_c is None:
        skipped.append("temperature (no TEMP channel)")
    else:
        temperature = _nan_stat(np.mean, his[:, :, temp_c])
    rain_c = _channel(data, "RAIN")
    if rain_c is None:
        skipped.append("rain (no RAIN channel)")
    else:
        hourly = his[:, :, rain_c]
        rained = np.isfinite(hourly).any(axis=1)
        rain = float(np.nanmean(hourly[rained], axis=1).sum()) if rained.any() else math.nan
    humidity, temperature, rain = (None if v is None or not math.isfinite(v) else v
                                   for v in (humidity, temperature, rain))

    # geometry among the selected stations
    lasts = np.array([_last_observed(y[:, i]) for i in range(len(nodes))])
    latlon = data.coords[nodes] if data.coords is not None and data.coord_kind == "latlon" else None
    if latlon is None:
        skipped.append("neighbours and upwind stations (no lat/lon coordinates)")
    distance = haversine_km(latlon) if latlon is not None else None
    bearing = bearing_deg(latlon) if latlon is not None else None

    stations = []
    for i, name in enumerate(names):
        column = y[:, i]
        finite = np.isfinite(column)
        peak = trough = None
        if hours is not None and finite.any():
            peak = int(hours[int(np.nanargmax(column))])
            trough = int(hours[int(np.nanargmin(column))])
        neighbour_last, upwind, upwind_last = math.nan, "", math.nan
        if distance is not None and len(nodes) > 1:
            others = [j for j in np.argsort(distance[i]) if j != i]
            neighbour_last = _nan_stat(np.mean, lasts[others[:NEIGHBOURS]])
            if wind_deg is not None:
                upwind_j = [j for j in others if _angle_gap(bearing[i, j], wind_deg) <= UPWIND_HALF_ANGLE]
                if upwind_j:
                    upwind, upwind_last = names[upwind_j[0]], float(lasts[upwind_j[0]])
        stations.append(StationFacts(
            name=name, last=float(lasts[i]), mean=_nan_stat(np.mean, column), min=_nan_stat(np.min, column),
            max=_nan_stat(np.max, column), trend=_trend(column), peak_hour=peak, trough_hour=trough,
            neighbour_last=neighbour_last, upwind=upwind, upwind_last=upwind_last))

    upwind_stations: list[str] = []
    upwind_city_last = math.nan
    if latlon is not None and wind_deg is not None:
        centroid = latlon.mean(axis=0, keepdims=True)
        with_centre = np.concatenate([centroid, latlon])
        from_centre = bearing_deg(with_centre)[0, 1:]
        away = haversine_km(with_centre)[0, 1:]
        chosen = [j for j in range(len(nodes))
                  if away[j] > 1.0 and _angle_gap(from_centre[j], wind_deg) <= UPWIND_HALF_ANGLE]
        upwind_stations = [names[j] for j in chosen]
        upwind_city_last = _nan_stat(np.mean, lasts[chosen]) if chosen else math.nan

    trends = np.array([st.trend for st in stations])
    city_peak = city_trough = None
    observed_hours = np.isfinite(y).any(axis=1)
    if hours is not None and observed_hours.any():
        hourly_mean = np.full(len(y), np.nan)
        hourly_mean[observed_hours] = np.nanmean(y[observed_hours], axis=1)
        city_peak, city_trough = int(hours[np.nanargmax(hourly_mean)]), int(hours[np.nanargmin(hourly_mean)])
    unit = data.units[target] if data.units else ""
    return WindowFacts(
        dataset=data.name, window_start=int(window_start), station_names=names, target_channel=target_channel,
        unit=unit, history_start=history_start, target_start=target_start, history_steps=int(history),
        horizon_steps=int(horizon), history_period=periods.period(s, history),
        target_period=periods.period(e, horizon),
        city=data.city, stations=stations, city_last=_nan_stat(np.mean, lasts), city_mean=_nan_stat(np.mean, y),
        city_min=_nan_stat(np.min, y), city_max=_nan_stat(np.max, y), city_trend=_nan_stat(np.mean, trends),
        city_peak_hour=city_peak, city_trough_hour=city_trough,
        wind_speed=wind_speed, wind_from=wind_from, humidity=humidity, rain=rain, temperature=temperature,
        upwind_stations=upwind_stations, upwind_last=upwind_city_last, label=label, skipped=skipped)
