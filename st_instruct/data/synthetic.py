"""Deterministic synthetic cities: the dataset that runs when no real data is available.

``generate_synthetic(city, seed)`` returns an :class:`~st_instruct.data.stdata.STData` of zone (or sensor) flows
on a graph, built from a small generative model of a city. Every ingredient is there because real flow data has
it and because a forecaster must be able to exploit it, so that simple baselines rank on it as they do on real
data. Hourly, 12 -> 12 steps (as measured on the NYC taxi/bike zone flows): the last value and a per-node ridge
on the 12 history values beat the time-of-week mean (HA) one step ahead but lose to it on average, because half
a day of history does not pin down the daily profile; the value one week earlier is worse than HA; a model that
combines the calendar with the recent history (a ridge on the residual from HA, STID) beats HA by about 15 %.
Every 5 minutes (the ``motorway`` city, like PEMS), the recent history beats HA at every horizon. The road cities
``ca``, ``gla`` and ``sd`` have the shape of LargeST (Liu et al., NeurIPS 2023 Datasets and Benchmarks): 8,600,
3,834 and 716 loop detectors, one flow channel every 15 minutes.

Layout and graph
    Nodes get planar coordinates in km (``coord_kind="xy"``) and a graph: a kNN graph (k = 5, symmetrised) over
    randomly placed zones (dense centre, sparse outskirts), a ring-road + radial network (concentric rings
    joined by spokes), or a regular grid (``coord_kind="grid"``, 8-neighbour 0/1 adjacency without self-loops,
    like the NYCBike grid), or a road network (``graph="road"``, :func:`_road_network`: towns joined by
    interstate corridors along their Gabriel graph, dead-end state routes and beltways around large towns, over
    a region hundreds of km across; sensors along the roads, denser near towns, linked to their neighbours along
    the road and at interchanges, about three links per sensor). kNN, ring-radial and road edges are weighted by
    the Gaussian kernel of their length, ``exp(-d^2 / 2 sigma^2)`` with sigma the median edge length (at least
    0.05 per edge), 1 on the diagonal as in DCRNN. Each node has a *type* (residential, business, mixed, leisure,
    transit hub) that depends on its distance to the centre (to the nearest town centre in a road city); the
    type drives its daily profile and its description.
Large cities: sparse graph, streamed dynamics
    A road city's adjacency is a ``scipy.sparse.csr_array`` (never a dense ``[N, N]``: 8,600 sensors would take
    300 MB per float32 copy), and its diffusion and incident spreading use sparse products; the latent dynamics
    are streamed in blocks of steps (:func:`_latent_sparse`, the same model in another draw order). The dense
    cities keep their dense arrays and their exact draws, so their series are unchanged.
Daily and weekly cycles (the calendar)
    A node's expected flow is ``base[n, c] * profile[t, n, c]``: ``base`` is lognormal across nodes (a few busy
    zones, many quiet ones) and ``profile`` is a sum of circular Gaussian bumps over the hour of day (morning
    peak, midday, evening peak, late night) whose amplitudes depend on the node type, the channel and the day
    type (Mon-Thu, Fri, Sat, Sun). Residential zones send people out in the morning (outflow peak) and take them
    back in the evening (inflow peak); business districts do the opposite. Weekend peaks are later and broader,
    and the weekend volume is set per type (business about 0.35 of a weekday, residential 0.8, leisure 1.2).
    Public holidays follow the Sunday profile. Peak times and amplitudes are jittered per node, so the calendar
    profile is node-specific (what node embeddings learn and what the historical average captures).
Slow drift
    A city-wide trend (growth over the weeks plus a slow oscillation) and per-node slow waves (periods of weeks)
    multiply the level. The train split therefore does not have exactly the level of the test split: a
    historical average fitted on the train split is biased later on, a model reading the recent history is not.
Latent demand and diffusion along the graph (the part only the recent history and the neighbours know)
    A latent log-deviation ``z[t, n, c]`` multiplies the calendar level. It sums a fast component (time constant
    6 h: local traffic), a slow one (10 days, spatially smooth innovations: a district's demand regime) and a
    city-wide level (4 days: weather, season). The node components follow a diffusion AR(1) along the
    row-normalised adjacency ``P`` (no self-loops)::

        z_t = rho * ((1 - beta) * z_{t-1} + beta * P z_{t-1}) + sqrt(1 - rho^2) * s * eps_t

    with ``rho = exp(-dt / tau)`` and ``beta`` given per hour, so the dynamics are the same whatever the
    sampling interval; innovations are correlated between the two channels of a node, and each component is
    rescaled to a set standard deviation (0.2, 0.3, 0.15). This is what lets last-value, ridge and deep models
    beat the time-of-week average at short horizons, and what makes adjacent nodes' residuals correlated.
Incidents
    Random events at random nodes: a drop (accident, closure: flow x0.25..0.7) or a spike (concert, match:
    flow x1.5..3) for one to six hours. They spread to the graph neighbours half an hour (at least one step)
    later with half the log-effect times the edge weight (in [0, 1]). They are listed in ``meta["incidents"]``
    (node, start step, length in steps, factor) for tests and rationales.
Noise
    Counts are drawn from a gamma-Poisson (negative binomial) with mean equal to the intensity: integer,
    non-negative, heteroscedastic (variance grows with the level), overdispersed like real trip counts. This is
    why the seasonal naive forecast (the value one week earlier) is worse than the averaged time-of-week profile.
Missing values
    Convention of real flow datasets: a missing value is written as ``0`` and ``null_value = 0`` declares it,
    so ``STData.mask()`` masks it (true zero counts, which occur at night in quiet zones, are masked too, exactly
    as with NYC taxi/bike data). Sensor outages are runs of zeros (two to sixteen hours, all channels of one
    node), about 1.5 % of entries; they are listed in ``meta["outages"]``. No NaN is produced.

Everything is drawn from ``np.random.default_rng(seed)``, so ``(city, seed, num_steps)`` fixes the arrays.
The default city (48 zones, 12 weeks hourly, 2 channels) generates in about 0.1 s, the dense ones all under
0.5 s; the road city ``sd`` in about 1 s, ``gla`` in about 3.5 s and ``ca`` (8,600 x 2,688 steps) in about 6 s of
CPU time with a peak resident size of about 0.6 GB (see :func:`generate_synthetic`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from st_instruct.data.graph import euclidean_distances, gaussian_kernel_adjacency, grid_adjacency, grid_coordinates
from st_instruct.data.stdata import STData

START = pd.Timestamp("2024-01-01 00:00")  # a Monday
HOLIDAYS = ("2024-01-01", "2024-01-15", "2024-02-19", "2024-05-27", "2024-07-04", "2024-09-02", "2024-11-28",
            "2024-12-25")
GRAPH_KINDS = ("knn", "ring_radial", "grid", "road")
NODE_TYPES = ("residential", "business", "mixed", "leisure", "hub")
NODE_TYPE_TEXT = {
    "residential": "residential zone",
    "business": "business district",
    "mixed": "mixed-use area",
    "leisure": "nightlife and leisure quarter",
    "hub": "transit hub",
}


@dataclass(frozen=True)
class SyntheticCitySpec:
    """One synthetic city.

    Args:
        city: the city text of the dataset (``STData.city``).
        description: one line on what the city is.
        num_nodes: number of zones / sensors (``H * W`` for a grid).
        graph: ``"knn"`` (random zones, k nearest neighbours), ``"ring_radial"`` (ring roads and spokes),
            ``"grid"`` (``grid_shape`` cells, 8-neighbour adjacency) or ``"road"`` (sensors along a road network
            over a region, sparse adjacency; at least 50 sensors).
        freq: sampling interval (pandas offset string).
        num_weeks: length of the series in weeks (overridden by ``num_steps`` of :func:`generate_synthetic`).
        channels / units: one name and one unit per channel; ``("inflow", "outflow")`` gets the residential /
            business asymmetry, a single channel the average shape of both.
        level: median over nodes of the calendar mean flow per step (before latent deviations and incidents).
        level_spread: standard deviation of the log mean flow across nodes.
        radius_km: size of the city (kNN and ring-radial layouts; half the side of a road city's square
            region) or of one grid cell (grid).
        grid_shape: ``(H, W)`` for ``graph="grid"``.
        node_label: ``"Zone"`` or ``"Sensor"``, the first word of node names.
    """

    city: str
    description: str
    num_nodes: int
    graph: str
    freq: str
    num_weeks: int
    channels: tuple[str, ...]
    units: tuple[str, ...]
    level: float
    level_spread: float = 0.6
    radius_km: float = 6.0
    grid_shape: tuple[int, int] | None = None
    node_label: str = "Zone"

    def __post_init__(self) -> None:
        if self.graph not in GRAPH_KINDS:
            raise ValueError(f"graph must be one of {GRAPH_KINDS}, found {self.graph!r}")
        if self.graph == "grid" and (self.grid_shape is None or self.grid_shape[0] * self.grid_shape[1]
                                     != self.num_nodes):
            raise ValueError(f"a grid city needs grid_shape with H * W = num_nodes = {self.num_nodes}, "
                             f"found {self.grid_shape}")
        if self.graph == "road" and self.num_nodes < 50:
            raise ValueError(f"a road city needs at least 50 sensors, found num_nodes={self.num_nodes}")
        if len(self.channels) != len(self.units) or len(self.channels) not in (1, 2):
            raise ValueError(f"give one or two channels with one unit each, found {self.channels} / {self.units}")

    @property
    def steps_per_day(self) -> int:
        return max(1, int(round(pd.Timedelta("1D") / pd.Timedelta(self.freq))))

    @property
    def num_steps(self) -> int:
        return self.num_weeks * 7 * self.steps_per_day


# what measured a synthetic city's channels, for prompts (STData.sensors): the same for every city
SYNTHETIC_SENSOR_KIND = "simulated sensors"

def _road_city(city: str, num_nodes: int, radius_km: float, description: str) -> SyntheticCitySpec:
    """A LargeST-shaped road city: one flow channel of vehicle counts every 15 minutes over 4 weeks."""
    return SyntheticCitySpec(
        city=city, num_nodes=num_nodes, graph="road", freq="15min", num_weeks=4, channels=("flow",),
        units=("vehicles/15min",), level=450.0, level_spread=0.4, radius_km=radius_km, node_label="Sensor",
        description=f"{description}, vehicle counts every 15 minutes over 4 weeks.")


SYNTHETIC_CITIES: dict[str, SyntheticCitySpec] = {
    "default": SyntheticCitySpec(
        city="Synthetic City A", num_nodes=48, graph="knn", freq="1h", num_weeks=12,
        channels=("inflow", "outflow"), units=("trips/h", "trips/h"), level=60.0, radius_km=6.0,
        description="A mid-sized city of 48 taxi zones (kNN graph), hourly in/out trip counts over 12 weeks."),
    "small": SyntheticCitySpec(
        city="Synthetic Town B", num_nodes=12, graph="knn", freq="1h", num_weeks=8,
        channels=("inflow", "outflow"), units=("trips/h", "trips/h"), level=30.0, radius_km=3.0,
        description="A small town of 12 zones (kNN graph), hourly in/out trip counts over 8 weeks; for fast tests."),
    "large": SyntheticCitySpec(
        city="Synthetic Metropolis C", num_nodes=181, graph="ring_radial", freq="1h", num_weeks=10,
        channels=("inflow", "outflow"), units=("trips/h", "trips/h"), level=40.0, radius_km=15.0,
        description="A metropolis of 181 zones on ring roads and radial avenues, hourly in/out trip counts "
                    "over 10 weeks."),
    "grid": SyntheticCitySpec(
        city="Synthetic Grid City D", num_nodes=64, graph="grid", freq="1h", num_weeks=8,
        channels=("inflow", "outflow"), units=("bikes/h", "bikes/h"), level=15.0, radius_km=1.0,
        grid_shape=(8, 8),
        description="Bike-share flows on an 8 x 8 grid of 1 km cells, hourly in/out counts over 8 weeks."),
    "motorway": SyntheticCitySpec(
        city="Synthetic Ring Motorway E", num_nodes=37, graph="ring_radial", freq="5min", num_weeks=4,
        channels=("flow",), units=("vehicles/5min",), level=150.0, level_spread=0.3, radius_km=12.0,
        node_label="Sensor",
        description="37 loop detectors on a ring motorway and its radial roads, vehicle counts every 5 minutes "
                    "over 4 weeks."),
    # Road cities of the shape of LargeST (Liu et al., NeurIPS 2023 Datasets and Benchmarks): California's
    # 8,600 traffic sensors and its Greater Los Angeles (3,834) and San Diego (716) subsets, 15-minute flow.
    "ca": _road_city("Synthetic State F", 8600, 400.0,
                     "8,600 loop detectors on the interstates, state routes and beltways of a state-sized region "
                     "(800 km across, like LargeST CA)"),
    "gla": _road_city("Synthetic Metro Region G", 3834, 120.0,
                      "3,834 loop detectors on the freeways of a large metropolitan region (240 km across, like "
                      "LargeST GLA)"),
    "sd": _road_city("Synthetic County H", 716, 50.0,
                     "716 loop detectors on the freeways of a county (100 km across, like LargeST SD)"),
}

# Name roots and the landmark each one suggests, for node names and descriptions.
_PLACES = (
    ("Riverside", "the river"), ("Harbour", "the harbour"), ("Station Quarter", "the main railway station"),
    ("Market", "the old market"), ("Hillcrest", "the hills"), ("Parkside", "the central park"),
    ("University", "the university campus"), ("Old Town", "the cathedral"), ("Mill Lane", "the old mills"),
    ("Oakwood", "the oak woods"), ("Bridgeford", "the stone bridge"), ("Canal Side", "the canal"),
    ("Meadowbank", "the meadows"), ("Castlegate", "the castle"), ("Airport Road", "the airport road"),
    ("Stadium", "the stadium"), ("Docklands", "the docks"), ("Greenfield", "the sports fields"),
    ("Chapel Hill", "the chapel"), ("Kingsway", "the shopping avenue"), ("Lakeside", "the lake"),
    ("Foundry", "the old foundry"), ("Orchard", "the orchards"), ("Quayside", "the quay"),
)
_PREFIXES = ("", "North ", "South ", "East ", "West ", "Upper ", "Lower ", "New ")
# Town names of the road cities (``graph="road"``), one per town centre.
_TOWNS = ("Alder Bay", "Bellmont", "Cedar Falls", "Dunmore", "Elm Harbor", "Fairhaven", "Glenrock", "Highgate",
          "Ironvale", "Juniper Springs", "Kingsport", "Larkspur", "Millbrook", "Northam", "Oakridge", "Pinecrest",
          "Quarry Hill", "Redwater", "Stonebridge", "Thornbury", "Upland", "Valemont", "Westfield", "Yarrow Point")
_DIRECTIONS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")

# Daily profile: four circular Gaussian bumps over the hour of day (morning, midday, evening, late night).
# Per day type (0 Mon-Thu, 1 Fri, 2 Sat, 3 Sun/holiday): centre (h) and width (h) of each bump.
_CENTRES = np.array([[8.0, 13.0, 17.8, 22.0], [8.0, 13.0, 17.5, 23.0], [11.0, 14.0, 17.5, 23.5],
                     [11.5, 14.5, 17.0, 21.5]])
_WIDTHS = np.array([[1.7, 3.2, 2.1, 2.0], [1.7, 3.2, 2.3, 2.6], [3.2, 3.9, 3.2, 2.6], [3.2, 3.9, 3.2, 2.3]])
_FLOOR = 0.06  # night-time minimum, relative to the bumps
# Amplitudes [type, channel (in, out), day type, bump]. Weekday commute asymmetry; weekends later and broader.
_AMPS = np.array([
    # residential: out in the morning, in in the evening
    [[[0.30, 0.35, 1.00, 0.30], [0.30, 0.35, 1.00, 0.45], [0.40, 0.55, 0.70, 0.35], [0.35, 0.50, 0.70, 0.20]],
     [[1.00, 0.35, 0.35, 0.15], [1.00, 0.35, 0.40, 0.25], [0.55, 0.60, 0.45, 0.20], [0.45, 0.55, 0.40, 0.10]]],
    # business: in in the morning, out in the evening; quiet weekends
    [[[1.20, 0.50, 0.30, 0.05], [1.10, 0.50, 0.30, 0.10], [0.15, 0.30, 0.15, 0.05], [0.10, 0.20, 0.10, 0.03]],
     [[0.25, 0.50, 1.20, 0.10], [0.25, 0.50, 1.10, 0.20], [0.10, 0.30, 0.20, 0.05], [0.08, 0.20, 0.15, 0.03]]],
    # mixed
    [[[0.60, 0.70, 0.70, 0.25], [0.60, 0.70, 0.75, 0.40], [0.35, 0.80, 0.60, 0.40], [0.30, 0.70, 0.50, 0.20]],
     [[0.60, 0.70, 0.70, 0.25], [0.60, 0.70, 0.75, 0.40], [0.35, 0.80, 0.60, 0.40], [0.30, 0.70, 0.50, 0.20]]],
    # leisure: evenings and nights, busiest on Friday and Saturday
    [[[0.15, 0.50, 0.60, 0.90], [0.15, 0.50, 0.80, 1.50], [0.20, 0.80, 0.90, 1.80], [0.20, 0.80, 0.60, 0.50]],
     [[0.10, 0.40, 0.50, 1.00], [0.10, 0.40, 0.60, 1.70], [0.15, 0.70, 0.80, 2.00], [0.15, 0.70, 0.70, 0.60]]],
    # transit hub: both peaks in both directions
    [[[1.00, 0.50, 0.90, 0.30], [1.00, 0.50, 1.00, 0.40], [0.40, 0.60, 0.50, 0.30], [0.35, 0.55, 0.50, 0.20]],
     [[0.90, 0.50, 1.00, 0.30], [0.90, 0.50, 1.10, 0.40], [0.40, 0.60, 0.55, 0.30], [0.35, 0.55, 0.55, 0.20]]],
])

# Daily volume of Saturday / Sunday relative to Mon-Thu, per node type (the bump tables give only the shape).
_WEEKEND_LEVEL = np.array([[0.85, 0.75], [0.40, 0.30], [0.95, 0.85], [1.35, 1.10], [0.70, 0.60]])

# Latent log-deviation: (time constant in hours, diffusion share per hour, standard deviation) per component.
_FAST = (6.0, 0.3, 0.2)
_SLOW = (240.0, 0.005, 0.3)
_CITY = (96.0, 0.15)  # city-wide day-to-day level (weather, demand regime): time constant (h), standard deviation
_CHANNEL_CORR = 0.7  # correlation of the latent innovations of a node's two channels
_DISPERSION = 200.0  # gamma-Poisson shape: the flow is Poisson(lambda * Gamma(k, 1/k))
_INCIDENTS_PER_NODE_WEEK = 0.25
_OUTAGE_FRACTION = 0.015
_BLOCK = 256  # steps per block where a sparse (large) city is streamed


def generate_synthetic(city: str = "default", seed: int = 0, num_steps: int | None = None) -> STData:
    """Generate one synthetic city (see the module docstring for the model).

    Args:
        city: a key of :data:`SYNTHETIC_CITIES`.
        seed: seeds ``np.random.default_rng``; the same ``(city, seed, num_steps)`` gives identical arrays.
        num_steps: series length ``T``; default ``num_weeks * 7 * steps_per_day`` of the city.
    Returns:
        STData named ``synthetic`` (default city) or ``synthetic-<city>``: values ``[T, N, C]`` float32 integer
        counts (0 = missing, ``null_value=0``), hourly, 5- or 15-minute steps from Monday 2024-01-01 00:00,
        coords ``[N, 2]`` and adjacency ``[N, N]`` (dense float32, or a ``scipy.sparse.csr_array`` for the road
        cities); ``meta`` holds the node types, incidents, outages and holidays, and for road cities the towns
        (name, x_km, y_km) and roads (name, kind, hubs at its ends, length_km).

    Memory: the road cities hold a handful of ``[T, N]`` float64 arrays at a time (``ca``: 185 MB each), never a
    dense ``[N, N]`` one.
    """
    if city not in SYNTHETIC_CITIES:
        raise ValueError(f"unknown synthetic city {city!r}; known cities: {sorted(SYNTHETIC_CITIES)}")
    spec = SYNTHETIC_CITIES[city]
    T = spec.num_steps if num_steps is None else int(num_steps)
    if T < 1:
        raise ValueError(f"num_steps must be >= 1, found {num_steps}")
    rng = np.random.default_rng(seed)
    dt_hours = pd.Timedelta(spec.freq) / pd.Timedelta("1h")

    if spec.graph == "road":
        net = _road_network(spec.num_nodes, spec.radius_km, rng)
        xy = coords = net.xy
        adjacency = net.adjacency  # scipy.sparse.csr_array [N, N] float32
        hub_dist = np.linalg.norm(xy - net.hubs[net.nearest_hub], axis=1)
        kinds = _node_kinds(np.minimum(hub_dist / (0.5 * net.spacing_km), 1.0), rng)
        names, descriptions = _road_node_text(net, hub_dist, kinds)
        off = sp.csr_array(adjacency.astype(np.float64, copy=True))  # a copy: it must not share the structure
        off.setdiag(0.0)
        off.eliminate_zeros()
        walk = sp.csr_array(sp.diags_array(1.0 / np.maximum(off.sum(1), 1e-12)) @ off)  # row-normalised, sparse
        road_meta = {"towns": [{"name": name, "x_km": round(float(x), 3), "y_km": round(float(y), 3)}
                               for name, (x, y) in zip(net.hub_names, net.hubs, strict=True)],
                     "roads": net.roads}
    else:
        xy, coords, adjacency = _layout(spec, rng)
        centre_dist = np.linalg.norm(xy - xy.mean(0), axis=1)
        kinds = _node_kinds(centre_dist / max(centre_dist.max(), 1e-9), rng)
        names, descriptions = _node_text(spec, xy, centre_dist, kinds, rng)
        off = adjacency.astype(np.float64)
        np.fill_diagonal(off, 0.0)
        walk = off / np.maximum(off.sum(1, keepdims=True), 1e-12)  # row-normalised, no self-loops: [N, N]
        road_meta = {}

    timestamps = pd.date_range(START, periods=T, freq=spec.freq)
    holidays = [d for d in HOLIDAYS if timestamps[0].normalize() <= pd.Timestamp(d) <= timestamps[-1]]
    # [T, N, C] arrays are worked on in place: a large city (8,600 sensors x 4 weeks every 15 minutes) holds
    # 23M entries per channel, 185 MB per float64 copy.
    log_rate = _calendar_profile(spec, timestamps, holidays, kinds, rng)  # [T, N, C] calendar multiplier
    N, C = len(kinds), len(spec.channels)
    base = np.exp(rng.normal(np.log(spec.level), spec.level_spread, size=(N, 1)) + rng.normal(0.0, 0.1, size=(N, C)))

    np.log(log_rate, out=log_rate)
    log_rate += np.log(base)[None]
    log_rate += _drift(timestamps, N, rng)[:, :, None]
    _add_latent(log_rate, walk, dt_hours, rng)
    incident_effect, incidents = _incidents(T, N, off, dt_hours, rng)
    log_rate += incident_effect[:, :, None]
    del incident_effect

    rate = np.exp(log_rate, out=log_rate)
    rate *= rng.gamma(_DISPERSION, 1.0 / _DISPERSION, size=rate.shape)
    values = rng.poisson(rate).astype(np.float32)
    del rate, log_rate
    outages = _outages(values, dt_hours, rng)

    return STData(
        values=values,
        name="synthetic" if city == "default" else f"synthetic-{city}",
        city=spec.city,
        freq=spec.freq,
        start=START,
        channels=list(spec.channels),
        units=list(spec.units),
        node_names=names,
        node_descriptions=descriptions,
        coords=coords,
        coord_kind="grid" if spec.graph == "grid" else "xy",
        adjacency=adjacency,
        null_value=0.0,
        grid_shape=spec.grid_shape,
        sensors=dict.fromkeys(spec.channels, SYNTHETIC_SENSOR_KIND),
        description=f"{spec.description} Generated by st_instruct.data.synthetic (seed {seed}): daily and weekly "
                    "cycles per zone type, slow drift, diffusion of latent demand along the graph, incidents, "
                    "gamma-Poisson counts and sensor outages written as 0.",
        meta={"source": "synthetic", "city_key": city, "seed": seed, "graph": spec.graph,
              "node_types": [NODE_TYPES[k] for k in kinds], "incidents": incidents, "outages": outages,
              "holidays": holidays, **road_meta},
    )


def synthetic_graph(city: str = "default", seed: int = 0) -> tuple[np.ndarray, np.ndarray | sp.csr_array]:
    """``(coords [N, 2], adjacency [N, N])`` of a synthetic city, exactly as :func:`generate_synthetic` with the
    same ``seed`` lays it out (the layout is drawn first), without generating the series: milliseconds even for
    ``ca``."""
    if city not in SYNTHETIC_CITIES:
        raise ValueError(f"unknown synthetic city {city!r}; known cities: {sorted(SYNTHETIC_CITIES)}")
    spec = SYNTHETIC_CITIES[city]
    rng = np.random.default_rng(seed)
    if spec.graph == "road":
        net = _road_network(spec.num_nodes, spec.radius_km, rng)
        return net.xy, net.adjacency
    _, coords, adjacency = _layout(spec, rng)
    return coords, adjacency


# ---------------------------------------------------------------------------------------------------- layout
def _layout(spec: SyntheticCitySpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xy [N, 2] km, coords [N, 2] as stored, adjacency [N, N] float32)`` for the city's graph kind."""
    N = spec.num_nodes
    if spec.graph == "grid":
        h, w = spec.grid_shape
        coords = grid_coordinates(h, w)  # (row, col), row 0 at the north edge
        adjacency = grid_adjacency(h, w, neighbourhood=8)
        xy = np.stack([coords[:, 1], h - 1 - coords[:, 0]], axis=1) * spec.radius_km
        return xy, coords, adjacency
    if spec.graph == "knn":
        xy = _random_zones(N, spec.radius_km, rng)
        dist = euclidean_distances(xy)
        k = min(5, N - 1)
        nearest = np.argsort(dist, axis=1)[:, 1 : k + 1]
        edges = np.zeros((N, N), dtype=bool)
        edges[np.repeat(np.arange(N), k), nearest.ravel()] = True
    else:
        xy, edges = _ring_radial(N, spec.radius_km, rng)
        dist = euclidean_distances(xy)
    edges |= edges.T
    edge_dist = np.where(edges, dist, np.inf)
    np.fill_diagonal(edge_dist, 0.0)
    # Kernel width = the median edge length (weight 0.61 there); the standard deviation of the edge lengths,
    # small in a kNN graph, would leave most edges with a negligible weight.
    sigma = float(np.median(dist[edges]))
    adjacency = gaussian_kernel_adjacency(edge_dist, sigma=sigma, threshold=0.0)
    # Keep a minimum weight per edge, so that long edges to outlying zones still connect them.
    adjacency = np.where(edges, np.maximum(adjacency, 0.05), adjacency).astype(np.float32)
    xy = np.round(xy, 3)
    return xy, xy, adjacency


def _random_zones(n: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    """``[n, 2]`` zone centres: a dense centre and sparse outskirts, at least ``0.12 * radius / sqrt(n / 10)``
    apart so no two zones coincide."""
    min_sep = 0.12 * radius / np.sqrt(max(n, 10) / 10)
    points: list[np.ndarray] = []
    while len(points) < n:
        r = radius * np.sqrt(rng.uniform()) ** 1.4  # exponent > 1 concentrates zones near the centre
        angle = rng.uniform(0, 2 * np.pi)
        p = np.array([r * np.cos(angle), r * np.sin(angle)])
        if all(np.hypot(*(p - q)) >= min_sep for q in points):
            points.append(p)
    return np.array(points)


def _ring_radial(n: int, radius: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A centre node and concentric rings (ring ``r`` holds nodes in proportion to ``r``), each ring node joined
    to its two ring neighbours and to the angularly closest node of the next inner ring. Returns ``(xy [n, 2],
    edges [n, n] bool)``."""
    num_rings = max(1, int(round(np.sqrt((n - 1) / 6))))
    weights = np.arange(1, num_rings + 1, dtype=np.float64)
    counts = np.floor((n - 1) * weights / weights.sum()).astype(int)
    counts[-1] += (n - 1) - counts.sum()
    xy = [np.zeros(2)]
    angle = [0.0]
    ring = [0]
    for r, count in enumerate(counts, start=1):
        theta = (np.arange(count) + 0.5 * (r % 2)) * 2 * np.pi / count
        rad = radius * r / num_rings
        jitter = rng.normal(0.0, 0.04 * radius / num_rings, size=(count, 2))
        xy += list(np.stack([rad * np.cos(theta), rad * np.sin(theta)], 1) + jitter)
        angle += list(theta)
        ring += [r] * count
    xy_arr, angle_arr, ring_arr = np.array(xy), np.array(angle), np.array(ring)
    edges = np.zeros((n, n), dtype=bool)
    for r in range(1, num_rings + 1):
        idx = np.flatnonzero(ring_arr == r)
        if len(idx) > 1:
            edges[idx, np.roll(idx, -1)] = True
        inner = np.flatnonzero(ring_arr == r - 1)
        gap = np.abs((angle_arr[idx, None] - angle_arr[None, inner] + np.pi) % (2 * np.pi) - np.pi)
        edges[idx, inner[np.argmin(gap, axis=1)]] = True
    np.fill_diagonal(edges, False)
    return xy_arr, edges


@dataclass
class _RoadNetwork:
    """A road city's network (:func:`_road_network`): sensors, their graph, and what names them."""

    xy: np.ndarray  # [N, 2] sensor positions (km)
    adjacency: sp.csr_array  # [N, N] float32 Gaussian-kernel weights of the links, 1 on the diagonal
    road: np.ndarray  # [N] index into roads of the road each sensor is on
    km: np.ndarray  # [N] distance along that road from its start (km)
    roads: list[dict]  # name, kind ("interstate" | "state route" | "beltway"), hubs at its ends, length_km
    hubs: np.ndarray  # [H, 2] town centres (km)
    hub_names: list[str]
    nearest_hub: np.ndarray  # [N] index of the closest town centre
    spacing_km: float  # the minimum distance between two town centres


def _road_network(n: int, radius: float, rng: np.random.Generator) -> _RoadNetwork:
    """``n`` loop detectors on a random planar road network over a ``2 radius`` km square.

    Towns (about ``sqrt(n) / 6`` of them, at least 3) are placed at least ``1.2 radius / sqrt(towns)`` apart and
    joined by interstate corridors along the edges of their Gabriel graph (planar and connected, so the corridors
    do not cross and every town is reachable), each a polyline with a bend every ~60 km. Each town also gets one
    to five dead-end state routes into its suburbs and, when it is a large town, a beltway (a ring) around its
    centre. Sensors are spread over the roads by a density that is high near the towns (by their size) and low on
    rural stretches, at least two per road, and ordered along each road.

    Links: consecutive sensors along a road (a beltway closes its ring), sensors two apart along a road when they
    are within 1 km of each other (dense urban detectors), an interchange at each town (the sensors closest to it
    on each road that ends there, joined in a ring by angle) and at each crossing of two roads (the sensor on each
    road closest to the crossing). Weights are the Gaussian kernel of the link's length (sigma the median length,
    at least 0.05), 1 on the diagonal, as the other graph kinds. Node indices are shuffled, so that index order
    says nothing about position (as in real sensor lists).
    """
    num_hubs = int(np.clip(round(np.sqrt(n) / 6), 3, len(_TOWNS)))
    spacing = 1.2 * radius / np.sqrt(num_hubs)
    hubs = _spread_points(num_hubs, 0.9 * radius, spacing, rng)
    size = np.exp(rng.normal(0.0, 0.7, size=num_hubs))  # town size: sensor density and number of routes
    hub_names = [_TOWNS[i] for i in rng.permutation(len(_TOWNS))[:num_hubs]]
    odd, even = iter(rng.permutation(np.arange(1, 100, 2))), iter(rng.permutation(np.arange(2, 100, 2)))
    state_routes = iter(rng.permutation(np.arange(100, 300)))
    roads: list[dict] = []
    lines: list[np.ndarray] = []
    for i, j in _gabriel_edges(hubs):
        a, b = hubs[i], hubs[j]
        along = b - a
        length = float(np.hypot(*along))
        bends = max(1, int(length // 60.0))
        t = np.linspace(0.0, 1.0, bends + 2)[1:-1, None]
        normal = np.array([-along[1], along[0]]) / length
        offset = rng.normal(0.0, 0.04 * length / np.sqrt(bends), size=(bends, 1))
        lines.append(np.concatenate([a[None], a + t * along + offset * normal, b[None]]))
        number = next(odd) if abs(along[1]) > abs(along[0]) else next(even)  # odd north-south, even east-west
        roads.append({"name": f"I-{number}", "kind": "interstate", "hubs": [int(i), int(j)]})
    for h in range(num_hubs):
        for _ in range(int(np.clip(round(1 + 1.5 * size[h]), 1, 5))):
            angle = rng.uniform(0, 2 * np.pi)
            turn = angle + rng.normal(0.0, 0.3)
            half = 0.5 * spacing * rng.uniform(0.2, 0.45)
            mid = hubs[h] + half * np.array([np.cos(angle), np.sin(angle)])
            lines.append(np.stack([hubs[h], mid, mid + half * np.array([np.cos(turn), np.sin(turn)])]))
            roads.append({"name": f"SR-{next(state_routes)}", "kind": "state route", "hubs": [h, None]})
        if size[h] > 1.0:
            theta = np.linspace(0.0, 2 * np.pi, 25)[:, None] + rng.uniform(0, 2 * np.pi)
            ring = 0.12 * spacing * np.sqrt(size[h]) * (1 + rng.normal(0.0, 0.05, size=(25, 1)))
            loop = hubs[h] + ring * np.concatenate([np.cos(theta), np.sin(theta)], axis=1)
            loop[-1] = loop[0]
            lines.append(loop)
            roads.append({"name": f"{hub_names[h]} Beltway", "kind": "beltway", "hubs": [None, None]})

    # Sensor density along the roads, on a fine arc-length grid per road.
    width = 0.2 * spacing * np.sqrt(size)
    cum_len, grids, masses = [], [], []
    for line in lines:
        cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(line, axis=0).T))])
        s = np.linspace(0.0, cum[-1], max(32, int(np.ceil(cum[-1] / 0.25))))
        d2 = ((_along(line, cum, s)[:, None, :] - hubs[None]) ** 2).sum(-1)
        density = 0.05 + (size * np.exp(-0.5 * d2 / width**2)).sum(1)
        mass = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(s))])
        cum_len.append(cum)
        grids.append(s)
        masses.append(mass)
    totals = np.array([m[-1] for m in masses])
    minimum = min(2, n // len(lines))
    share = (n - minimum * len(lines)) * totals / totals.sum()
    counts = minimum + np.floor(share).astype(int)
    counts[np.argsort(-(share - np.floor(share)), kind="stable")[: n - counts.sum()]] += 1

    xy_parts, road_of, km_of, edges = [], [], [], []
    first = np.concatenate([[0], np.cumsum(counts)])
    for r, (line, cum, s, mass, c) in enumerate(zip(lines, cum_len, grids, masses, counts, strict=True)):
        u = (np.arange(c) + rng.uniform(0.15, 0.85, size=c)) / max(c, 1) * mass[-1]
        pos = np.interp(u, mass, s)
        xy_parts.append(_along(line, cum, pos))
        road_of.append(np.full(c, r))
        km_of.append(pos)
        idx = first[r] + np.arange(c)
        edges.append(np.stack([idx[:-1], idx[1:]], 1))
        close = pos[2:] - pos[:-2] < 1.0
        edges.append(np.stack([idx[:-2][close], idx[2:][close]], 1))
        if roads[r]["kind"] == "beltway" and c > 2:
            edges.append(np.array([[idx[-1], idx[0]]]))
    xy = np.concatenate(xy_parts)
    road = np.concatenate(road_of)
    km = np.concatenate(km_of)
    for h in range(num_hubs):  # interchanges in the towns
        ends = [first[r] if info["hubs"][0] == h else first[r + 1] - 1
                for r, info in enumerate(roads) if h in info["hubs"] and counts[r] > 0]
        if len(ends) >= 2:
            ends = np.array(ends)[np.argsort(np.arctan2(*(xy[ends] - hubs[h]).T[::-1]), kind="stable")]
            edges.append(np.stack([ends, np.roll(ends, -1)], 1)[: len(ends) if len(ends) > 2 else 1])
    for ra, ka, rb, kb in _crossings(lines, cum_len):  # interchanges where two roads cross
        if counts[ra] and counts[rb]:
            na = first[ra] + int(np.argmin(np.abs(km_of[ra] - ka)))
            nb = first[rb] + int(np.argmin(np.abs(km_of[rb] - kb)))
            edges.append(np.array([[na, nb]]))
    pairs = np.concatenate(edges).astype(np.int64)
    pairs = np.unique(np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1), axis=0)

    new_of_old = rng.permutation(n)  # shuffle the node order
    xy_new = np.empty_like(xy)
    xy_new[new_of_old] = xy
    order = np.argsort(new_of_old)
    pairs = new_of_old[pairs]
    length = np.hypot(*(xy_new[pairs[:, 0]] - xy_new[pairs[:, 1]]).T)
    sigma = max(float(np.median(length)), 1e-6)
    weight = np.maximum(np.exp(-0.5 * (length / sigma) ** 2), 0.05)
    rows = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(n)])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(n)])
    vals = np.concatenate([weight, weight, np.ones(n)]).astype(np.float32)
    adjacency = sp.csr_array((vals, (rows, cols)), shape=(n, n))
    xy_new = np.round(xy_new, 3)
    nearest = np.argmin(((xy_new[:, None, :] - hubs[None]) ** 2).sum(-1), axis=1)
    for info, cum in zip(roads, cum_len, strict=True):
        info["length_km"] = round(float(cum[-1]), 1)
    return _RoadNetwork(xy=xy_new, adjacency=adjacency, road=road[order], km=km[order], roads=roads, hubs=hubs,
                        hub_names=hub_names, nearest_hub=nearest, spacing_km=float(spacing))


def _along(line: np.ndarray, cum: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``[len(s), 2]`` points at arc lengths ``s`` along the polyline ``line [K, 2]`` (``cum``: its vertices' arc
    lengths)."""
    return np.stack([np.interp(s, cum, line[:, 0]), np.interp(s, cum, line[:, 1])], axis=1)


def _spread_points(n: int, half: float, min_sep: float, rng: np.random.Generator) -> np.ndarray:
    """``[n, 2]`` points uniform in the square ``[-half, half]^2``, at least ``min_sep`` apart (relaxed by 5 % after
    every 1,000 rejections, so it always ends)."""
    points: list[np.ndarray] = []
    tries = 0
    while len(points) < n:
        p = rng.uniform(-half, half, size=2)
        if all(np.hypot(*(p - q)) >= min_sep for q in points):
            points.append(p)
        tries += 1
        if tries % 1000 == 0:
            min_sep *= 0.95
    return np.array(points)


def _gabriel_edges(points: np.ndarray) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, of the Gabriel graph: no other point inside the circle with diameter ``ij``."""
    h = np.arange(len(points))
    mid = (points[:, None] + points[None]) / 2  # [H, H, 2]
    r2 = ((points[:, None] - points[None]) ** 2).sum(-1) / 4
    d2 = ((mid[:, :, None, :] - points[None, None]) ** 2).sum(-1)  # [H, H, H]: pair (i, j), third point k
    end = (h[None, None, :] == h[:, None, None]) | (h[None, None, :] == h[None, :, None])
    ok = ((d2 >= r2[:, :, None]) | end).all(-1)
    return [(i, j) for i in range(len(points)) for j in range(i + 1, len(points)) if ok[i, j]]


def _crossings(lines: list[np.ndarray], cum_len: list[np.ndarray]) -> list[tuple[int, float, int, float]]:
    """``(road a, km along a, road b, km along b)`` for every proper crossing of two roads' segments (touching at a
    shared end, such as a town centre, is not a crossing)."""
    p = np.concatenate([line[:-1] for line in lines])
    q = np.concatenate([line[1:] for line in lines])
    road = np.concatenate([np.full(len(line) - 1, r) for r, line in enumerate(lines)])
    start = np.concatenate([cum[:-1] for cum in cum_len])
    d = q - p
    a, b = np.triu_indices(len(p), k=1)
    keep = road[a] != road[b]
    a, b = a[keep], b[keep]
    denom = d[a, 0] * d[b, 1] - d[a, 1] * d[b, 0]
    w = p[b] - p[a]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (w[:, 0] * d[b, 1] - w[:, 1] * d[b, 0]) / denom
        u = (w[:, 0] * d[a, 1] - w[:, 1] * d[a, 0]) / denom
    hit = (np.abs(denom) > 1e-12) & (t > 1e-9) & (t < 1 - 1e-9) & (u > 1e-9) & (u < 1 - 1e-9)
    seg_len = np.hypot(*d.T)
    return [(int(road[i]), float(start[i] + ti * seg_len[i]), int(road[j]), float(start[j] + ui * seg_len[j]))
            for i, j, ti, ui in zip(a[hit], b[hit], t[hit], u[hit], strict=True)]


def _node_kinds(relative_dist: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[N]`` indices into :data:`NODE_TYPES`: business and hubs near the centre, residential outside."""
    d = relative_dist[:, None]
    logits = np.concatenate([2.5 * d, 2.0 - 3.0 * d, 0.8 + 0 * d, 0.2 - 0.5 * d, -0.5 - 1.0 * d], axis=1)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    kinds = (p.cumsum(1) > rng.uniform(size=(len(d), 1))).argmax(1)
    # Keep the busiest zone a hub so every city has one.
    kinds[int(np.argmin(relative_dist))] = NODE_TYPES.index("hub")
    return kinds


def _node_text(spec: SyntheticCitySpec, xy: np.ndarray, centre_dist: np.ndarray, kinds: np.ndarray,
               rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Node names like ``"Zone 7 (North Riverside)"`` and descriptions like ``"residential zone near the river,
    2.1 km north-west of the centre"``."""
    N = len(kinds)
    combos = [(prefix, place) for place in _PLACES for prefix in _PREFIXES]
    # The plain names first (in random order), then prefixed variants, so small cities get simple names.
    order = sorted(rng.permutation(len(combos)), key=lambda i: combos[i][0] != "")
    centre = xy.mean(0)
    names, descriptions = [], []
    for n in range(N):
        prefix, (place, landmark) = combos[order[n % len(order)]]
        octant = int(np.round(np.arctan2(*(xy[n] - centre)[::-1]) / (np.pi / 4))) % 8
        where = "at the centre" if centre_dist[n] < 0.3 else f"{centre_dist[n]:.1f} km {_DIRECTIONS[octant]} " \
                                                              "of the centre"
        kind = NODE_TYPE_TEXT[NODE_TYPES[kinds[n]]]
        if spec.node_label == "Sensor":
            road = "ring motorway" if centre_dist[n] > 0.6 * spec.radius_km else "radial road"
            names.append(f"Sensor {n} ({prefix}{place})")
            descriptions.append(f"loop detector on the {road} near {landmark}, serving a {kind}, {where}")
        else:
            names.append(f"{spec.node_label} {n} ({prefix}{place})")
            descriptions.append(f"{kind} near {landmark}, {where}")
    return names, descriptions


def _road_node_text(net: _RoadNetwork, hub_dist: np.ndarray, kinds: np.ndarray) -> tuple[list[str], list[str]]:
    """Names like ``"Sensor 4211 (I-5 corridor km 132)"`` and descriptions like ``"loop detector on interstate I-5
    (Alder Bay - Bellmont) at km 132.4, serving a residential zone, 41.2 km south-east of the Alder Bay centre"``:
    unique (the index) and cheap for thousands of sensors."""
    offset = net.xy - net.hubs[net.nearest_hub]
    octant = np.round(np.arctan2(offset[:, 1], offset[:, 0]) / (np.pi / 4)).astype(np.int64) % 8
    labels, long_labels = [], []
    for info in net.roads:
        if info["kind"] == "interstate":
            a, b = (net.hub_names[h] for h in info["hubs"])
            labels.append(f"{info['name']} corridor")
            long_labels.append(f"interstate {info['name']} ({a} - {b})")
        elif info["kind"] == "state route":
            labels.append(info["name"])
            long_labels.append(f"state route {info['name']} out of {net.hub_names[info['hubs'][0]]}")
        else:
            labels.append(info["name"])
            long_labels.append(f"the {info['name']}")
    names, descriptions = [], []
    for n in range(len(kinds)):
        town = net.hub_names[net.nearest_hub[n]]
        if hub_dist[n] < 0.3:
            where = f"at the {town} centre"
        else:
            rural = "on a rural stretch, " if hub_dist[n] > 0.5 * net.spacing_km else ""
            where = f"{rural}{hub_dist[n]:.1f} km {_DIRECTIONS[octant[n]]} of the {town} centre"
        names.append(f"Sensor {n} ({labels[net.road[n]]} km {net.km[n]:.0f})")
        descriptions.append(f"loop detector on {long_labels[net.road[n]]} at km {net.km[n]:.1f}, serving a "
                            f"{NODE_TYPE_TEXT[NODE_TYPES[kinds[n]]]}, {where}")
    return names, descriptions


# ---------------------------------------------------------------------------------------------------- dynamics
def _calendar_profile(spec: SyntheticCitySpec, timestamps: pd.DatetimeIndex, holidays: list[str],
                      kinds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[T, N, C]`` calendar multiplier, normalised to mean 1 over a regular week for every node and channel."""
    N, spd = len(kinds), spec.steps_per_day
    shift = rng.normal(0.0, 0.35, size=N)  # per-node peak-time jitter (hours)
    amps = _AMPS[kinds] * np.exp(rng.normal(0.0, 0.15, size=(N, 1, 1, 4)))  # [N, 2, 4 day types, 4 bumps]
    if len(spec.channels) == 1:
        amps = amps.mean(1, keepdims=True)
    # One table per (day type, step of the day): [4, spd, N, C]; the series then only indexes it.
    hours = np.arange(spd) * 24.0 / spd
    gap = (hours[None, :, None, None] - _CENTRES[:, None, None, :] - shift[:, None] + 12.0) % 24.0 - 12.0
    bumps = np.exp(-0.5 * (gap / _WIDTHS[:, None, None, :]) ** 2)  # [4, spd, N, 4]
    table = _FLOOR + (np.moveaxis(amps, 2, 0)[:, None] * bumps[:, :, :, None, :]).sum(-1)
    level = _WEEKEND_LEVEL[kinds][:, None, :] * np.exp(rng.normal(0.0, 0.1, size=(N, 1, 2)))  # [N, 1, 2]
    table[2:] *= np.moveaxis(level, 2, 0)[:, None] * table[0].mean(0) / table[2:].mean(1, keepdims=True)
    week_days = np.array([0, 0, 0, 0, 1, 2, 3])
    table /= table[week_days].mean(axis=(0, 1))  # a regular week has mean 1
    tod = np.round(_hours(timestamps) * spd / 24.0).astype(np.int64) % spd
    return table[_day_type(timestamps, holidays), tod]


def _hours(ts: pd.DatetimeIndex) -> np.ndarray:
    return (ts.hour + ts.minute / 60.0).to_numpy(dtype=np.float64)


def _day_type(ts: pd.DatetimeIndex, holidays: list[str]) -> np.ndarray:
    """``[T]`` day type: 0 Mon-Thu, 1 Fri, 2 Sat, 3 Sun or public holiday."""
    dow = ts.day_of_week.to_numpy()
    day_type = np.select([dow <= 3, dow == 4, dow == 5], [0, 1, 2], default=3)
    if holidays:
        day_type[ts.normalize().isin(pd.DatetimeIndex(holidays))] = 3
    return day_type


def _drift(timestamps: pd.DatetimeIndex, N: int, rng: np.random.Generator) -> np.ndarray:
    """``[T, N]`` slow log-level drift: city-wide growth and oscillation, plus per-node waves of weeks."""
    days = ((timestamps - START) / pd.Timedelta("1D")).to_numpy(dtype=np.float64)
    city = 0.01 * days / 7 + 0.05 * np.sin(2 * np.pi * days / 60 + rng.uniform(0, 2 * np.pi))
    periods = np.array([14.0, 25.0, 41.0])
    amp = rng.normal(0.0, 0.03, size=(N, 3))
    phase = rng.uniform(0, 2 * np.pi, size=(N, 3))
    # sum_i amp_i sin(w_i t + phase_i) = sum_i (amp_i cos phase_i) sin(w_i t) + (amp_i sin phase_i) cos(w_i t): one
    # [T, 6] @ [6, N] product instead of 3 T N sines and a [T, N, 3] temporary.
    angle = 2 * np.pi * days[:, None] / periods  # [T, 3]
    waves = np.concatenate([np.sin(angle), np.cos(angle)], axis=1)  # [T, 6]
    weights = np.concatenate([amp * np.cos(phase), amp * np.sin(phase)], axis=1)  # [N, 6]
    node = waves @ weights.T
    node += city[:, None]
    return node


def _add_latent(log_rate: np.ndarray, walk: np.ndarray | sp.csr_array, dt_hours: float, rng: np.random.Generator,
                ) -> None:
    """Add the latent log-deviation to ``log_rate [T, N, C]`` in place: :func:`_latent` for a dense ``walk``,
    :func:`_latent_sparse` (the same model, streamed, another draw order) for a sparse one."""
    T, N, C = log_rate.shape
    if sp.issparse(walk):
        _latent_sparse(log_rate, walk, dt_hours, rng)
    else:
        log_rate += _latent(T, N, C, walk, dt_hours, rng)


def _latent(T: int, N: int, C: int, walk: np.ndarray, dt_hours: float, rng: np.random.Generator) -> np.ndarray:
    """``[T, N, C]`` latent log-deviation: a fast and a slow diffusion AR(1) along ``walk [N, N]`` plus a
    city-wide AR(1) level."""
    comps = (_FAST, _SLOW)
    rho = np.array([np.exp(-dt_hours / tau) for tau, _, _ in comps])[None, :, None]  # [1, 2, 1]
    # Diffusion shares are per hour, so a 5-minute city mixes as much per hour as an hourly one.
    beta = np.array([1.0 - (1.0 - b) ** dt_hours for _, b, _ in comps])[None, :, None]
    # A burn-in of a few slow time constants, so the first days are not calmer than the rest.
    burn = int(3 * _SLOW[0] / dt_hours)
    shared = rng.standard_normal((burn + T, N, 2, 1))
    own = rng.standard_normal((burn + T, N, 2, C))
    eps = np.sqrt(_CHANNEL_CORR) * shared + np.sqrt(1 - _CHANNEL_CORR) * own  # [S, N, 2, C]
    # The slow component's innovations are spatially smooth (a regional shock, not a single zone's).
    eps[:, :, 1] += walk @ eps[:, :, 1]
    eps *= np.sqrt(1 - rho**2)
    keep, spread = (rho * (1 - beta)).reshape(1, -1), (rho * beta).reshape(1, -1)
    keep, spread = np.repeat(keep, C, axis=1), np.repeat(spread, C, axis=1)  # [1, 2C]
    eps = eps.reshape(burn + T, N, 2 * C)
    city_rho = np.exp(-dt_hours / _CITY[0])
    city_eps = np.sqrt(1 - city_rho**2) * rng.standard_normal(burn + T)
    city = np.empty(burn + T)
    state, level = np.zeros((N, 2 * C)), 0.0
    for t in range(burn + T):  # small single-threaded products: fast and immune to BLAS thread contention
        state = keep * state + spread * (walk @ state) + eps[t]
        eps[t] = state
        level = city_rho * level + city_eps[t]
        city[t] = level
    # Scale each component to its standard deviation, measured over the burn-in too so that a short series
    # is not blown up.
    z = eps.reshape(burn + T, N, 2, C)
    std = np.array([s for _, _, s in comps])
    z = z[burn:] * (std / z.transpose(2, 0, 1, 3).reshape(2, -1).std(axis=1))[None, None, :, None]
    city = city[burn:] * _CITY[1] / city.std()
    return z.sum(2) + city[:, None, None]


def _latent_sparse(log_rate: np.ndarray, walk: sp.csr_array, dt_hours: float, rng: np.random.Generator) -> None:
    """:func:`_latent` for a sparse ``walk [N, N]``, added to ``log_rate [T, N, C]`` in place.

    The same model (components, burn-in, channel correlation, spatially smooth slow innovations, scaling over the
    burn-in too), streamed in blocks of :data:`_BLOCK` steps in float32: innovations are drawn per block (one
    normal per entry when there is a single channel) and the two node components are kept as float32
    ``[T, N, C]`` each, so memory stays at about ``T * N * C * 8`` bytes instead of ``(burn + T) * N * (4 C + 2)
    * 8``. The draw order differs from :func:`_latent`: a dense and a sparse copy of one graph give different
    (equally distributed) series.
    """
    T, N, C = log_rate.shape
    K = 2 * C  # the state's columns: component-major (fast channels, then slow channels), as in _latent
    comps = (_FAST, _SLOW)
    rho = np.repeat([np.exp(-dt_hours / tau) for tau, _, _ in comps], C)  # [K]
    beta = np.repeat([1.0 - (1.0 - b) ** dt_hours for _, b, _ in comps], C)
    keep, spread = (rho * (1 - beta)).astype(np.float32), (rho * beta).astype(np.float32)
    scale = np.sqrt(1 - rho**2).astype(np.float32)
    walk32 = walk.astype(np.float32)
    burn = int(3 * _SLOW[0] / dt_hours)
    kept = np.empty((T, N, K), dtype=np.float32)
    state = np.zeros((N, K), dtype=np.float32)
    total, squares = np.zeros(K), np.zeros(K)
    for first in range(0, burn + T, _BLOCK):
        b = min(_BLOCK, burn + T - first)
        eps = rng.standard_normal((b, N, K), dtype=np.float32)
        if C > 1:  # channels of a node share part of their innovation
            eps *= np.float32(np.sqrt(1 - _CHANNEL_CORR))
            shared = rng.standard_normal((b, N, 2, 1), dtype=np.float32) * np.float32(np.sqrt(_CHANNEL_CORR))
            eps += np.repeat(shared, C, axis=3).reshape(b, N, K)
        slow = np.ascontiguousarray(eps[:, :, C:].transpose(1, 0, 2)).reshape(N, b * C)
        eps[:, :, C:] += (walk32 @ slow).reshape(N, b, C).transpose(1, 0, 2)
        eps *= scale
        for i in range(b):
            state *= keep
            state += spread * (walk32 @ state)
            state += eps[i]
            eps[i] = state
        flat = eps.reshape(-1, K).astype(np.float64)
        total += np.ones(len(flat)) @ flat  # BLAS: much faster than a reduction along axis 0
        squares += np.diag(flat.T @ flat)
        lo, hi = max(first, burn), first + b
        if hi > lo:
            kept[lo - burn : hi - burn] = eps[lo - first : hi - first]
    count = (burn + T) * N
    std = np.sqrt(np.maximum(squares / count - (total / count) ** 2, 1e-24))
    kept *= (np.repeat([s for _, _, s in comps], C) / std).astype(np.float32)
    for k in range(2):
        log_rate += kept[:, :, k * C : (k + 1) * C]
    del kept
    city_rho = np.exp(-dt_hours / _CITY[0])
    city_eps = np.sqrt(1 - city_rho**2) * rng.standard_normal(burn + T)
    city = np.empty(burn + T)
    level = 0.0
    for t in range(burn + T):
        level = city_rho * level + city_eps[t]
        city[t] = level
    log_rate += (city[burn:] * _CITY[1] / city.std())[:, None, None]


def _incidents(T: int, N: int, weights: np.ndarray | sp.csr_array, dt_hours: float, rng: np.random.Generator,
               ) -> tuple[np.ndarray, list[dict]]:
    """``([T, N] log-effect, list of incidents)``.

    An incident multiplies its node's flow by ``factor`` for ``length`` steps; a neighbour joined by an edge of
    weight ``w`` (in [0, 1], ``weights [N, N]`` without self-loops) gets ``0.5 * w`` of the log-effect half an
    hour (at least one step) later.
    """
    weeks = T * dt_hours / (24 * 7)
    count = rng.poisson(_INCIDENTS_PER_NODE_WEEK * N * weeks)
    direct = np.zeros((T, N))
    incidents = []
    for _ in range(count):
        node = int(rng.integers(N))
        start = int(rng.integers(T))
        length = min(T - start, max(1, int(round(rng.uniform(1.0, 6.0) / dt_hours))))
        if rng.uniform() < 0.6:
            factor = float(np.exp(rng.uniform(np.log(0.25), np.log(0.7))))
        else:
            factor = float(np.exp(rng.uniform(np.log(1.5), np.log(3.0))))
        direct[start : start + length, node] += np.log(factor)
        incidents.append({"node": node, "start": start, "length": length, "factor": round(factor, 3)})
    lag = max(1, int(round(0.5 / dt_hours)))
    if not sp.issparse(weights):
        effect = direct.copy()
        if T > lag:
            effect[lag:] += 0.5 * direct[:-lag] @ weights.T
        return effect, incidents
    # Sparse graph: in place, in blocks of steps from the end, so that no block reads a row already spread into.
    for stop in range(T - lag, 0, -_BLOCK):
        start = max(0, stop - _BLOCK)
        direct[start + lag : stop + lag] += 0.5 * (weights @ direct[start:stop].T).T
    return direct, incidents


def _outages(values: np.ndarray, dt_hours: float, rng: np.random.Generator) -> list[dict]:
    """Write sensor outages (runs of zeros over all channels of a node) into ``values [T, N, C]`` in place."""
    T, N, _ = values.shape
    lo, hi = max(1, int(round(2 / dt_hours))), max(2, int(round(16 / dt_hours)))
    mean_len = (lo + hi) / 2
    outages = []
    for node in range(N):
        for _ in range(rng.poisson(_OUTAGE_FRACTION * T / mean_len)):
            length = int(rng.integers(lo, hi + 1))
            start = int(rng.integers(max(1, T - length + 1)))
            values[start : start + length, node] = 0.0
            outages.append({"node": node, "start": start, "length": length})
    return outages
