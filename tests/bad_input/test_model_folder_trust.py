"""A trained model folder's own files are checked against each other before they are used: an edited or damaged
data profile, ST config, backbone record or tokenizer is one error line naming the file and the key (exit 2, no
traceback, nothing written), never a quietly zero-shot or NaN forecast or an allocation traceback; and ``push``
refuses symlinks that leave the folder. The model is the smoke recipe on the tiny Llama of ``tiny_backbone_dir``,
trained once per module and copied per case."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cli_check import assert_clean_failure
from tiny import train_smoke

from st_instruct.data.loaders import get_dataset
from st_instruct.data.profile import read_data_profiles
from st_instruct.model_dir import BACKBONE_FILE, PROFILE_FILE, ST_CONFIG_FILE

DATASET = "synthetic-small"
REPO = "st-user/trusted"


@pytest.fixture(scope="module")
def trained(tiny_backbone_dir, tmp_path_factory) -> Path:
    """The smoke recipe on synthetic-small (12 nodes, channels inflow / outflow), 2 steps."""
    return train_smoke(tmp_path_factory, tiny_backbone_dir)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[str]:
    """``--input`` and the clock flags of the last 12 hours of synthetic-small: the model's own nodes and channels."""
    data = get_dataset(DATASET)
    path = tmp_path_factory.mktemp("input") / "last_12_hours.npz"
    np.savez(path, data=data.values[-12:])
    return ["--input", str(path), "--series-start", str(data.time_index()[-12]), "--freq", "1h"]


@pytest.fixture
def model(trained, tmp_path) -> Path:
    """A copy of the trained folder, free to edit."""
    return Path(shutil.copytree(trained, tmp_path / "model"))


def edit_json(path: Path, edit) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def edit_profile(model: Path, edit) -> None:
    edit_json(model / PROFILE_FILE, lambda content: edit(content["datasets"][DATASET]))


def predict(cli, model: Path, series: list[str], tmp_path: Path):
    """``st-instruct predict`` of ``series`` with ``model``; returns the result and the output path."""
    output = tmp_path / "forecast.csv"
    return cli("predict", "--model", model, *series, "--output", output, "--quiet"), output


def three_channels(profile: dict) -> None:
    """A third channel, consistent within the profile: only the model (2 channels) can tell it is wrong."""
    profile.update(channels=[*profile["channels"], "trips"], units=[*profile["units"], "trips/h"],
                   scaler_mean=[*profile["scaler_mean"], 1.0], scaler_std=[*profile["scaler_std"], 1.0])


def test_the_untouched_copy_forecasts(cli, model, series, tmp_path):
    """The control of every case below: the copied folder, unedited, forecasts with exit 0."""
    result, output = predict(cli, model, series, tmp_path)
    assert result.code == 0, result.err
    assert output.is_file()


@pytest.mark.parametrize("edit, culprit", [
    (lambda p: p.update(num_nodes=13), "num_nodes = 13"),  # the node names (12) tell
    (lambda p: p.update(channels="inflow"), "channels must be a list"),
    (lambda p: p.update(scaler_std=[0.0, p["scaler_std"][1]]), "scaler_std must be positive"),
    (lambda p: p["adjacency"].update(shape=[10**9, 10**9]), "adjacency.shape must be [num_nodes, num_nodes]"),
], ids=["node-count", "channels-as-text", "zero-std", "huge-adjacency"])
def test_an_edited_profile_is_refused_by_predict(cli, model, series, tmp_path, edit, culprit):
    """predict with an edited st_data_profile.json: exit 2, one line naming the file, the dataset and the key, no
    output file (today: a quietly zero-shot forecast, a NaN forecast or an allocation error)."""
    edit_profile(model, edit)
    result, output = predict(cli, model, series, tmp_path)
    assert_clean_failure(result, PROFILE_FILE, f"dataset '{DATASET}'", culprit, "copy the model folder again")
    assert not output.exists()


def test_a_profile_with_another_channel_count_than_the_model_is_refused_by_predict(cli, model, series, tmp_path):
    """A profile of 3 channels beside a 2-channel model: predict fails naming the profile's channels."""
    edit_profile(model, three_channels)
    result, output = predict(cli, model, series, tmp_path)
    assert_clean_failure(result, PROFILE_FILE, "channels must be the model's 2 channel(s)")
    assert not output.exists()


@pytest.mark.parametrize("edit, culprit", [
    (three_channels, "channels must be the model's 2 channel(s)"),
    (lambda p: p.update(units=["trips/h"]), "units must be a list of 2 entries"),
    (lambda p: p.update(scaler_mean=[float("inf"), 0.0]), "scaler_mean must be finite numbers"),
    (lambda p: p.update(node_names=p["node_names"][:11]), "node_names must be null or a list of num_nodes = 12"),
    (lambda p: p.update(coords=[[0.0, 0.0, 0.0]] * 12), "coords must be null or [num_nodes, 2]"),
    (lambda p: p.update(num_nodes=1e9), "num_nodes must be an integer from 1 to 100000"),
    (lambda p: p["adjacency"]["rows"].__setitem__(0, 12), "adjacency.rows must be a list of node indices in 0..11"),
    (lambda p: p["adjacency"].update(values=p["adjacency"]["values"][1:]), "adjacency.values must be a list"),
    (lambda p: p["adjacency"].update(dtype="object"), "adjacency.dtype must be a numeric dtype"),
    (lambda p: p.update(image_value_range=[5.0, 1.0]), "image_value_range must be null or [low, high]"),
    (lambda p: p.update(freq="every hour"), "freq 'every hour' is not a fixed interval"),
    (lambda p: p.update(null_value="0"), "null_value must be null or a finite number"),
    (lambda p: p.pop("city"), "the profile lacks the keys ['city']"),
])
def test_read_data_profiles_names_the_key_of_an_edited_profile(model, edit, culprit):
    """read_data_profiles with the model's 2 channels: a ValueError naming the file, the dataset and the key."""
    edit_profile(model, edit)
    with pytest.raises(ValueError) as error:
        read_data_profiles(model, SimpleNamespace(dataset_channels=None), channels=2)
    assert f"{model / PROFILE_FILE}: dataset '{DATASET}': " in str(error.value)
    assert culprit in str(error.value)


def test_a_profile_file_of_another_version_is_refused(model):
    """A profile file of another version: a ValueError naming the file, the key and the version read."""
    edit_json(model / PROFILE_FILE, lambda content: content.update(version=2))
    with pytest.raises(ValueError, match=f"{PROFILE_FILE}: version must be 1, the version this st_instruct reads, "
                                         "found 2"):
        read_data_profiles(model, SimpleNamespace(dataset_channels=None), channels=2)


@pytest.mark.parametrize("selected, channels, culprit", [
    (None, 2, None),
    (["outflow"], 1, None),
    ([1], 1, None),
    (["PM2.5"], 1, "channels must be a list holding the recipe's dataset_channels ['PM2.5']"),
    (["outflow"], 2, "the recipe's dataset_channels ['outflow'] select 1 of its channels, but the model forecasts 2"),
    (None, 1, "channels must be the model's 1 channel(s)"),
])
def test_the_profile_channels_are_checked_against_the_model(model, selected, channels, culprit):
    """A recipe's dataset_channels (AirGPT: the model forecasts a selection) must be among the profile's channels
    and as many as the model's; without one the profile's channels are the model's."""
    config = SimpleNamespace(dataset_channels=selected)
    if culprit is None:
        assert list(read_data_profiles(model, config, channels=channels)) == [DATASET]
        return
    with pytest.raises(ValueError, match=f"{PROFILE_FILE}: dataset '{DATASET}': ") as error:
        read_data_profiles(model, config, channels=channels)
    assert culprit in str(error.value)


@pytest.mark.parametrize("file, key, value, culprits", [
    (ST_CONFIG_FILE, "horizon", 1e9, ["horizon must be a positive integer, found 1000000000.0", "1 to 10000"]),
    (ST_CONFIG_FILE, "head.head_dim", 10**9, ["head_dim must be a positive integer, found 1000000000", "1 to 65536"]),
    (ST_CONFIG_FILE, "channels", "2", ["channels must be a positive integer, found '2'"]),
    (ST_CONFIG_FILE, "head.revin", 1, ["revin must be true or false, found 1"]),
    (ST_CONFIG_FILE, "horizon", 13, ["st_modules.safetensors has regression_head.out.weight of shape [24, 128]",
                                     "gives it shape [26, 128]"]),
    (ST_CONFIG_FILE, "coord_dim", 4, ["st_modules.safetensors has st_encoder.context.space.weight",
                                      "gives it shape [32, 4]"]),
    (BACKBONE_FILE, "num_layers", 1e9, ["num_layers must be a positive integer or null, found 1000000000.0"]),
    (BACKBONE_FILE, "load_in_4bit", "yes", ["load_in_4bit must be true or false, found 'yes'"]),
], ids=["horizon-1e9", "head_dim-1e9", "channels-as-text", "revin-as-int", "horizon-against-weights",
        "coord_dim-against-weights", "num_layers-1e9", "load_in_4bit-as-text"])
def test_an_edited_config_is_refused_before_the_model_is_built(cli, model, series, tmp_path, file, key, value,
                                                                 culprits):
    """predict with an edited st_forecaster_config.json / st_backbone.json: exit 2, one line naming the file and
    the key (and for a size that contradicts the weights, both files and the tensor), no output file."""
    *outer, inner = key.split(".")  # a concern's key of st_forecaster_config.json: part.key
    edit_json(model / file, lambda content: (content[outer[0]] if outer else content).update({inner: value}))
    result, output = predict(cli, model, series, tmp_path)
    assert_clean_failure(result, file, *culprits, "copy the model folder again")
    assert not output.exists()


@pytest.mark.parametrize("missing", ["tokenizer.json", "tokenizer_config.json"])
def test_a_folder_without_its_tokenizer_names_the_missing_file(cli, model, series, tmp_path, missing):
    """predict from a folder that lost a tokenizer file: exit 2, one line naming it (not transformers' "install
    sentencepiece or tiktoken")."""
    (model / missing).unlink()
    result, output = predict(cli, model, series, tmp_path)
    assert_clean_failure(result, f"lacks its tokenizer's {missing}", "copy the model folder again")
    assert not output.exists()


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_push_refuses_a_symlink_out_of_the_folder(cli, hub_server, model, tmp_path, kind):
    """A symlink (to a file or a folder) leading out of the model folder: push exits 2 naming the link and its
    target, and the Hub stand-in received nothing (today the linked file is uploaded)."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the hub")
    target = outside / "secret.txt" if kind == "file" else outside
    (model / "notes").symlink_to(target)
    result = cli("push", model, "--repo-id", REPO, "--token", hub_server.token)
    assert_clean_failure(result, f"{model / 'notes'} is a symlink to {target}", "outside the model folder",
                         "nothing was uploaded")
    assert hub_server.requests == []


def test_push_refuses_a_symlink_loop(cli, hub_server, model):
    """A symlink loop in the model folder: push exits 2 naming it, and the Hub stand-in received nothing."""
    (model / "runs_link").symlink_to(model / "loop_link")
    (model / "loop_link").symlink_to(model / "runs_link")
    result = cli("push", model, "--repo-id", REPO, "--token", hub_server.token)
    assert_clean_failure(result, f"{model / 'loop_link'} is a symlink loop", "nothing was uploaded")
    assert hub_server.requests == []


def test_push_keeps_a_symlink_inside_the_folder(cli, hub_server, model):
    """A file link that stays inside the folder is pushed as the bytes of its target."""
    os.symlink("recipe.yaml", model / "recipe_copy.yaml")
    assert cli("push", model, "--repo-id", REPO, "--token", hub_server.token).code == 0
    assert hub_server.repo_files(REPO)["recipe_copy.yaml"] == (model / "recipe.yaml").read_bytes()
