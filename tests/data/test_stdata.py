"""STData validation: bad input gets a clear error naming the dataset and field."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from st_instruct.data.stdata import STData, STDataError


def test_two_dimensional_values_become_one_channel():
    d = STData(values=np.zeros((10, 3)), name="x")
    assert d.values.shape == (10, 3, 1) and d.values.dtype == np.float32 and d.channels == ["ch0"]


def test_inf_is_rejected_with_position():
    v = np.zeros((5, 2, 1))
    v[3, 1, 0] = np.inf
    with pytest.raises(STDataError, match=r"'x'.*1 infinite.*t=3, node=1"):
        STData(values=v, name="x")


def test_adjacency_shape_must_match_node_count():
    with pytest.raises(STDataError, match=r"adjacency must be \[N, N\] = \[3, 3\].*found \(4, 4\)"):
        STData(values=np.zeros((5, 3)), name="x", adjacency=np.eye(4))


def test_nan_in_adjacency_is_rejected():
    adj = np.eye(2)
    adj[0, 1] = np.nan
    with pytest.raises(STDataError, match="adjacency contains NaN"):
        STData(values=np.zeros((5, 2)), name="x", adjacency=adj)


def test_non_monotonic_timestamps_are_rejected():
    ts = pd.to_datetime(["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 00:30"])
    with pytest.raises(STDataError, match=r"strictly increasing; timestamps\[2\]"):
        STData(values=np.zeros((3, 1)), name="x", timestamps=ts)


def test_field_lengths_are_checked():
    with pytest.raises(STDataError, match="channels lists 1 names"):
        STData(values=np.zeros((3, 2, 2)), name="x", channels=["a"])
    with pytest.raises(STDataError, match="node_names has 1 entries but values has N=2"):
        STData(values=np.zeros((3, 2)), name="x", node_names=["a"])
    with pytest.raises(STDataError, match="coords must have shape"):
        STData(values=np.zeros((3, 2)), name="x", coords=np.zeros((3, 2)), coord_kind="xy")
    with pytest.raises(STDataError, match="grid_shape"):
        STData(values=np.zeros((3, 6)), name="x", grid_shape=(2, 2))
    with pytest.raises(STDataError, match="frequency 'often'"):
        STData(values=np.zeros((3, 2)), name="x", freq="often")


def test_mask_select_slice_and_grid():
    v = np.arange(48, dtype=np.float32).reshape(4, 6, 2)
    v[0, 0, 0] = np.nan
    d = STData(values=v, name="g", freq="1h", start="2024-01-01", channels=["in", "out"], null_value=1.0,
               grid_shape=(2, 3))
    m = d.mask()
    assert not m[0, 0, 0] and not m[0, 0, 1] and m[0, 1, 0]  # NaN and the declared null 1.0
    assert d.select_channels(["out"]).values.shape == (4, 6, 1)
    with pytest.raises(STDataError, match="unknown channel 'speed'; available channels: \\['in', 'out'\\]"):
        d.select_channels(["speed"])
    sliced = d.slice_time("2024-01-01 01:00", "2024-01-01 03:00")
    assert sliced.num_steps == 2 and sliced.start == pd.Timestamp("2024-01-01 01:00")
    grid = d.as_grid()
    assert grid.shape == (4, 2, 2, 3)
    assert grid[2, 1, 1, 2] == v[2, 1 * 3 + 2, 1]
    with pytest.raises(STDataError, match="selects no steps"):
        d.slice_time("2030-01-01")


def test_the_series_view_makes_every_channel_of_every_node_a_one_channel_node():
    values = np.arange(5 * 3 * 2, dtype=np.float32).reshape(5, 3, 2)
    adjacency = np.array([[0, 1, 0], [1, 0, 2], [0, 2, 0]], dtype=np.float32)
    data = STData(values=values, name="toy", channels=["inflow", "speed"], units=["trips/h", "km/h"],
                  node_names=["a", "b", "c"], coords=np.arange(6.0).reshape(3, 2), coord_kind="xy",
                  adjacency=adjacency, null_value=0.0)
    view = data.series_view()
    assert view.values.shape == (5, 6, 1) and view.channels == ["value"] and view.null_value == 0.0
    for n in range(3):
        for c in range(2):
            np.testing.assert_array_equal(view.values[:, n * 2 + c, 0], values[:, n, c])
            assert view.node_channels[n * 2 + c] == data.channels[c]
            np.testing.assert_array_equal(view.coords[n * 2 + c], data.coords[n])
    assert view.node_names[:2] == ["a inflow", "a speed"] and view.node_descriptions[1] == "speed (km/h)"
    graph = view.dense_adjacency()
    np.testing.assert_array_equal(graph[0::2, 0::2], adjacency)  # inflow series linked as their nodes are
    np.testing.assert_array_equal(graph[0::2, 1::2], 0)  # never across channels
    assert view.series_view() is view
    assert view.node_units == ["trips/h", "km/h"] * 3 and view.sensors == {}
    sensed = dataclasses.replace(data, sensors={"inflow": "taxi trip records", "speed": "loop detectors"})
    assert sensed.series_view().sensors == sensed.select_channels(["speed"]).sensors == sensed.sensors
    with pytest.raises(STDataError, match="sensors must map channel names to text"):
        STData(values=values, name="toy", sensors={"inflow": 1})
    with pytest.raises(STDataError, match="node_units has 2 entries"):
        STData(values=values[:, :, :1], name="toy", node_units=["a", "b"])
    with pytest.raises(STDataError, match="node_channels marks a channel-independent view"):
        STData(values=values, name="toy", node_channels=["x"] * 3)
