"""AirGPT's static and wind graphs, and the gated graph encoder that fuses them (issue 12, first part)."""

import numpy as np
import pytest
import torch

from st_instruct.data.air_graphs import bearing_deg, static_distance_graph, wind_channels, wind_graph
from st_instruct.models.graph_encoders import GatedGraphEncoder

# station 0 in central Beijing, station 1 about 11 km due south of it
TWO = np.array([[39.90, 116.40], [39.80, 116.40]])


def test_bearings_point_the_right_way():
    square = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # origin, north of it, east of it
    bearing = bearing_deg(square)
    assert bearing[0, 1] == pytest.approx(0.0, abs=1e-6) and bearing[0, 2] == pytest.approx(90.0, abs=1e-6)
    assert bearing[1, 0] == pytest.approx(180.0, abs=1e-6) and bearing[2, 0] == pytest.approx(270.0, abs=1e-6)


@pytest.mark.parametrize("wind_from,downwind", [(0.0, (0, 1)), (180.0, (1, 0))])
def test_the_wind_graph_points_downwind(wind_from, downwind):
    """A north wind (from 0 degrees) carries station 0's air to station 1 south of it, never back; a south wind
    the other way."""
    graph = wind_graph(TWO, np.full((1, 2), 3.0), np.full((1, 2), wind_from), sigma0=5.0, alpha=2.0)[0]
    source, target = downwind
    assert graph[source, target] > 0.3 and graph[target, source] == 0.0
    assert graph[0, 0] == graph[1, 1] == 1.0


def test_stronger_wind_reaches_further_and_crosswind_reaches_nothing():
    slow, fast = (wind_graph(TWO, np.full((1, 2), v), np.zeros((1, 2)), sigma0=5.0, alpha=2.0)[0, 0, 1]
                  for v in (0.5, 6.0))
    assert fast > slow > 0
    east = wind_graph(TWO, np.full((1, 2), 6.0), np.full((1, 2), 270.0), sigma0=5.0, alpha=2.0)[0]  # blows east
    assert east[0, 1] == pytest.approx(0.0, abs=1e-6) and east[1, 0] == pytest.approx(0.0, abs=1e-6)


def test_missing_wind_is_masked_and_never_nan():
    speed = np.array([[np.nan, 3.0], [3.0, 3.0]])
    direction = np.array([[0.0, 0.0], [np.nan, 0.0]])
    graph = wind_graph(TWO, speed, direction, sigma0=5.0, alpha=2.0)
    assert np.isfinite(graph).all()
    assert graph[0, 0, 1] == 0.0 and graph[1, 0, 1] == 0.0  # station 0 sends nothing where its wind is missing
    assert graph[0, 0, 0] == 1.0


def test_static_graph_is_the_gaussian_kernel_of_haversine_distances():
    graph = static_distance_graph(TWO, sigma=10.0)
    distance = 111.19 * 0.1  # 0.1 degree of latitude in km
    assert graph[0, 1] == pytest.approx(np.exp(-distance**2 / 200), rel=1e-3) and graph[0, 0] == 1.0


def test_a_dataset_without_wind_channels_names_them():
    with pytest.raises(ValueError, match=r"'traffic' has no wind speed .* and no wind direction .*channels: speed"):
        wind_channels(["speed"], "traffic")
    assert wind_channels(["PM2.5", "WSPM", "wd_deg"], "beijing-air") == (1, 2)


def test_gate_at_one_and_zero_reduces_to_either_graph():
    torch.manual_seed(0)
    encoder = GatedGraphEncoder(6, 8, 4)
    x = torch.randn(2, 3, 6)
    static, dynamic, other = torch.rand(3, 3), torch.rand(2, 3, 3), torch.rand(2, 3, 3)
    with torch.no_grad():
        only_static = encoder(x, static, dynamic, gate=1.0)
        assert torch.equal(only_static, encoder(x, static, other, gate=1.0))  # the wind graph does not count
        only_wind = encoder(x, static, dynamic, gate=0.0)
        assert torch.equal(only_wind, encoder(x, torch.rand(3, 3), dynamic, gate=0.0))
        fused = encoder(x, static, dynamic)
    assert not torch.allclose(fused, only_static) and not torch.allclose(fused, only_wind)
    assert fused.shape == (2, 3, 4)
