"""Issue 12, AirGPT's graphs on data that cannot give them: one error line naming what is missing (exit 2, no
traceback), and no output folder left behind. Trains on the tiny Llama of ``tiny_backbone_dir``."""

from __future__ import annotations

import numpy as np
from cli_check import assert_clean_failure

RECIPE = "recipes/airgpt_cot.yaml"


def speeds_with_stations(tmp_path, nodes: int = 4, steps: int = 24 * 20):
    """An hourly ``[T, N]`` series without wind channels, and a nodes csv with station lat/lon."""
    t = np.arange(steps)
    np.savez(tmp_path / "pm.npz", data=(50 + 10 * np.sin(2 * np.pi * t / 24)[:, None] + np.zeros((1, nodes)))
             .astype(np.float32))
    (tmp_path / "nodes.csv").write_text("name,latitude,longitude\n" + "".join(
        f"station {i},39.{i + 1},116.{i + 2}\n" for i in range(nodes)))
    return tmp_path / "pm.npz", tmp_path / "nodes.csv"


def train(cli, tmp_path, tiny_backbone_dir, *flags):
    series, nodes = speeds_with_stations(tmp_path)
    output = tmp_path / "out"
    result = cli("train", RECIPE, "--dataset_names", series, "--dataset_channels", "ch0", "--dataset_nodes", nodes,
                 "--dataset_freq", "1h", "--dataset_series_start", "2024-01-01", "--coordinate_dim", "3",
                 "--rationale_teacher", "none", "--model_name_or_path", tiny_backbone_dir, "--model_num_layers", "2",
                 "--max_steps", "1", "--report_to", "none", "--dataset_cache_dir", tmp_path / "built",
                 "--output_dir", output, *flags)
    return result, output


def test_a_wind_graph_on_data_without_wind_names_the_missing_channels(cli, tmp_path, tiny_backbone_dir):
    result, output = train(cli, tmp_path, tiny_backbone_dir)
    assert_clean_failure(result, "'pm'", "no wind speed (one of WSPM", "and no wind direction", "channels: ch0",
                         "static graph only")
    assert not output.exists()


def test_a_station_graph_on_data_without_coordinates_says_so(cli, tmp_path, tiny_backbone_dir):
    result, output = train(cli, tmp_path, tiny_backbone_dir, "--dataset_nodes", "null", "--st_graph", "static")
    assert_clean_failure(result, "'pm'", "station latitude/longitude", "st_graph: none")
    assert not output.exists()
