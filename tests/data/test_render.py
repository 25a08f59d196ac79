"""The ST-VLM renderer (``st_instruct.samples.render``): viridis on a value range fixed from the train split,
deterministic layouts and bytes, exact grid cells, clear errors for data it cannot place."""

import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from st_instruct.cli import main
from st_instruct.data.stdata import STData
from st_instruct.data.windows import build_windows, image_value_range
from st_instruct.protocols.baselines import prepare_windows
from st_instruct.samples.render import (
    COLOURS,
    MISSING_COLOUR,
    RenderError,
    WindowRenderer,
    colour_indices,
    colourize,
    node_layout,
    png_bytes,
)

# sha256 of the PNG bytes of synthetic-small's test window 3, channel 0, 224 x 224 (pillow pinned in the lock)
GOLDEN = {
    "map": "33db5605c9183fc03e9a9565e120f0c2b50200e0bea928431361d9a184b77cd9",
    "multiview": "4818bf9ab6cf913173c3500f439dad8ec9b372a2fbe9932cf9b33cdcddb2ea47",
}


def grid_windows(height: int = 4, width: int = 3, steps: int = 400):
    """A grid dataset whose cell (r, c) at step t holds 10 * (r * width + c) + t % 7."""
    cells = height * width
    values = (10.0 * np.arange(cells)[None, :] + (np.arange(steps) % 7)[:, None])[:, :, None]
    rows, cols = np.divmod(np.arange(cells), width)
    data = STData(values=values.astype(np.float32), name="toy-grid", freq="1h", start=pd.Timestamp("2024-01-01"),
                  coords=np.stack([rows, cols], axis=1).astype(float), coord_kind="grid", grid_shape=(height, width))
    return build_windows(data, 12, 12)


def test_colour_map_is_viridis_on_the_range_clipped_and_missing_is_grey():
    assert COLOURS.shape == (256, 3) and COLOURS.dtype == np.uint8
    assert tuple(COLOURS[0]) == (0x44, 0x01, 0x54) and tuple(COLOURS[255]) == (0xFD, 0xE7, 0x25)
    assert np.abs(COLOURS[128].astype(int) - [0x21, 0x91, 0x8C]).max() <= 3  # the middle stop, #21918c
    index = colour_indices(np.array([-5.0, 0.0, 5.0, 10.0, 99.0, np.nan]), 0.0, 10.0)
    assert index.tolist() == [0, 0, 128, 255, 255, -1]
    colours = colourize(np.array([[0.0, np.nan]]), 0.0, 10.0)
    assert colours.shape == (1, 2, 3) and tuple(colours[0, 0]) == tuple(COLOURS[0])
    assert tuple(colours[0, 1]) == MISSING_COLOUR
    # luminance rises monotonically along the map: a brighter colour always means a larger value
    luminance = COLOURS @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(luminance) >= -0.5)


def test_value_range_comes_from_the_train_split_only():
    windows = prepare_windows("synthetic-small")
    before = image_value_range(windows, 0)
    lo, hi = windows.borders["train"]
    assert before[0] >= np.nanmin(windows.data.values[lo:hi, :, 0]) and before[1] <= np.nanmax(
        windows.data.values[lo:hi, :, 0])
    changed = windows.data.values.copy()
    changed[hi:] *= 100  # the validation and test splits change; the range must not
    again = build_windows(STData(**{**windows.data.__dict__, "values": changed}), 12, 12)
    assert image_value_range(again, 0) == before
    # so the same value gets the same colour in every window
    renderer = WindowRenderer(windows, "map", panels=1)
    assert (renderer.low, renderer.high) == before


def test_grid_cell_r_c_fills_its_pixel_block_with_its_colour():
    windows = grid_windows()
    renderer = WindowRenderer(windows, "map", size=96, panels=4)
    history = renderer.window_history("test", 0)
    pixels = np.asarray(renderer.render(history))
    for panel, step in enumerate(renderer.steps):
        expected = colourize(history[step], renderer.low, renderer.high)
        for node in range(12):
            row, col = divmod(node, 3)
            left, top, right, bottom = renderer.cell_box(row, col, panel)
            assert right - left == bottom - top == 96 // 2 // 4
            block = pixels[top:bottom, left:right]
            assert (block == expected[node]).all(), (panel, row, col)
    # cells are in row-major order: (0, 1) is right of (0, 0), (1, 0) below it
    assert renderer.cell_box(0, 1)[0] == renderer.cell_box(0, 0)[2]
    assert renderer.cell_box(1, 0)[1] == renderer.cell_box(0, 0)[3]


def test_layout_is_deterministic_north_up_and_spectral_without_coordinates():
    north = STData(values=np.ones((60, 3, 1), np.float32), name="three", freq="1h",
                   start=pd.Timestamp("2024-01-01"), coords=np.array([[40.0, -74.0], [41.0, -74.0], [40.0, -73.0]]),
                   coord_kind="latlon")
    xy = node_layout(north)
    assert xy[1, 1] < xy[0, 1]  # further north is higher on the image
    assert xy[2, 0] > xy[0, 0]  # further east is further right
    assert xy.min() >= 0 and xy.max() <= 1
    windows = prepare_windows("synthetic-small")
    plain = STData(**{**windows.data.__dict__, "coords": None, "coord_kind": None})
    first, second = node_layout(plain), node_layout(plain)
    np.testing.assert_array_equal(first, second)
    assert len(np.unique(first.round(6), axis=0)) == plain.num_nodes  # every node at its own place


def test_rendering_is_deterministic_and_matches_the_golden_hashes():
    windows = prepare_windows("synthetic-small")
    for kind, digest in GOLDEN.items():
        renderer = WindowRenderer(windows, kind)
        history = renderer.window_history("test", 3)
        first, second = png_bytes(renderer.render(history)), png_bytes(WindowRenderer(windows, kind).render(history))
        assert first == second
        image = Image.open(__import__("io").BytesIO(first))
        assert image.size == (224, 224) and image.mode == "RGB"
        assert hashlib.sha256(first).hexdigest() == digest, kind


def test_missing_values_are_grey_and_never_nan_in_the_views():
    windows = prepare_windows("synthetic-small")
    history = WindowRenderer(windows, "map").window_history("test", 0)
    history[:, 0] = np.nan
    for kind in ("map", "multiview"):
        pixels = np.asarray(WindowRenderer(windows, kind).render(history))
        assert pixels.dtype == np.uint8
        assert (pixels == MISSING_COLOUR).all(axis=-1).any()


def test_a_dataset_without_coordinates_or_adjacency_names_how_to_supply_one():
    data = STData(values=np.ones((300, 3, 1), np.float32), name="bare", freq="1h", start=pd.Timestamp("2024-01-01"))
    with pytest.raises(RenderError, match=r"'bare'.*--nodes FILE.*--adjacency FILE"):
        WindowRenderer(build_windows(data, 12, 12), "map")


def test_bad_arguments_are_clear_errors():
    windows = prepare_windows("synthetic-small")
    with pytest.raises(RenderError, match="image kind 'photo'"):
        WindowRenderer(windows, "photo")
    with pytest.raises(RenderError, match="channel 5 does not exist"):
        WindowRenderer(windows, "map", channel=5)
    renderer = WindowRenderer(windows, "map")
    with pytest.raises(RenderError, match=r"expected \[L, N\] = \[12, 12\]"):
        renderer.render(np.zeros((12, 5)))
    with pytest.raises(RenderError, match="test split has"):
        renderer.window_history("test", 10**6)


def test_render_command_writes_the_png_and_the_gif_of_the_window(tmp_path, capsys):
    code = main(["render", "synthetic-small", "--window", "2", "--kind", "multiview", "--out", str(tmp_path)])
    assert code == 0
    png, gif = tmp_path / "synthetic-small-test-2-multiview.png", tmp_path / "synthetic-small-test-2.gif"
    assert Image.open(png).size == (224, 224)
    animation = Image.open(gif)
    assert animation.n_frames == 24  # 12 history + 12 future steps
    assert str(png) in capsys.readouterr().out
    assert main(["render", "synthetic-small", "--window", "999999", "--out", str(tmp_path / "x")]) == 2
    assert "windows" in capsys.readouterr().err
