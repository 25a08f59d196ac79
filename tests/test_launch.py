"""``st-instruct train RECIPE --num_processes N [--accelerate_config ...]`` (st_instruct/launch.py): the accelerate
command built for each case, the launches refused because accelerate would silently run something else (docs/design.md
§8), and one real 2-process DeepSpeed ZeRO-2 run on the CPU whose world size is read from what training saw."""

import json
import socket
import sys
from pathlib import Path

import pytest
import yaml

from st_instruct import launch
from st_instruct.configs import parse_recipe, train_dataclasses
from st_instruct.launch import LaunchError, accelerate_command
from st_instruct.shipped import shipped_dir

ACCELERATE = shipped_dir("recipes") / "accelerate"
HEAD = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
TAIL = ["-m", "st_instruct.train", "smoke_sft", "--max_steps", "2"]


def command(num_processes=None, config=None, environ=None, overwrite=False):
    return accelerate_command("smoke_sft", ["--max_steps", "2"], num_processes, config, overwrite,
                              environ={} if environ is None else environ)


@pytest.fixture
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def write_config(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump({"compute_environment": "LOCAL_MACHINE", "num_machines": 1, **settings}))
    return path


# ------------------------------------------------------------------------------------------------ the command
@pytest.mark.parametrize("num_processes", [None, "1"])
def test_one_process_without_a_config_trains_in_this_process(num_processes):
    assert command(num_processes) is None


def test_several_processes_default_to_the_shipped_ddp_config(no_cuda):
    built = command("2")
    assert built == [*HEAD, str(ACCELERATE / "ddp.yaml"), "--num_processes", "2", *TAIL]
    assert "--cpu" not in built and "--use_cpu" not in built  # --cpu silently runs ONE process (docs/design.md §8)


@pytest.mark.parametrize("name", ["zero2", "zero3", "ddp", "single"])
def test_a_shipped_config_by_name_keeps_its_own_process_count(name, no_cuda):
    assert command(config=name) == [*HEAD, str(ACCELERATE / f"{name}.yaml"), *TAIL]


def test_a_config_file_the_process_count_and_overwrite_are_passed_on(tmp_path, no_cuda):
    config = write_config(tmp_path / "mine.yaml", distributed_type="MULTI_GPU", num_processes=8)
    assert command("3", str(config), overwrite=True) == [*HEAD, str(config), "--num_processes", "3", *TAIL,
                                                         "--overwrite"]


def test_ddp_keeps_accelerate_use_cpu_which_works_there(no_cuda):
    assert command("2", "ddp", environ={"ACCELERATE_USE_CPU": "1"}) is not None
    assert command("2", "zero2", environ={"ACCELERATE_USE_CPU": "0"}) is not None  # false is not "set"


# ----------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_the_process_count_must_be_a_whole_number(value):
    with pytest.raises(LaunchError, match=rf"--num_processes takes a whole number of processes >= 1, found '{value}'"):
        command(value)


def test_an_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(LaunchError, match="--accelerate_config 'zero4' is neither a file nor a shipped accelerate "
                                          "config; shipped: ddp, single, zero2, zero3"):
        command("2", "zero4")


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_accelerate_use_cpu_under_deepspeed_is_refused(value, no_cuda):
    """It makes accelerate drop DeepSpeed for plain DDP without a word (recipes/accelerate/zero2.yaml)."""
    with pytest.raises(LaunchError, match=f"ACCELERATE_USE_CPU={value} in the environment makes accelerate drop "
                                          "DeepSpeed"):
        command("2", "zero2", environ={"ACCELERATE_USE_CPU": value})


def test_deepspeed_configs_are_refused_without_deepspeed(monkeypatch, no_cuda):
    monkeypatch.setattr(launch, "deepspeed_installed", lambda: False)
    for name in ("zero2", "zero3"):
        with pytest.raises(LaunchError, match=f"{name}.yaml needs DeepSpeed, which is not installed: DS_BUILD_OPS=0"):
            command("2", name)
    assert command("2", "ddp") is not None


def test_a_zero_config_that_is_not_deepspeed_is_refused(tmp_path, no_cuda):
    config = write_config(tmp_path / "zero2_fast.yaml", distributed_type="MULTI_GPU", num_processes=2)
    with pytest.raises(LaunchError, match="zero2_fast.yaml: named as a DeepSpeed ZeRO config but its "
                                          "distributed_type is MULTI_GPU, which runs without ZeRO"):
        command("2", str(config))


@pytest.mark.parametrize("kind", ["MULTI_GPU", "DEEPSPEED"])
def test_use_cpu_in_the_config_is_refused(kind, tmp_path, no_cuda):
    config = write_config(tmp_path / "cpu.yaml", distributed_type=kind, use_cpu=True, num_processes=2)
    with pytest.raises(LaunchError, match="cpu.yaml: use_cpu: true makes accelerate run ONE process"):
        command(None, str(config))


def test_several_processes_under_a_single_process_config_are_refused(tmp_path, no_cuda):
    with pytest.raises(LaunchError, match="single.yaml has distributed_type NO, which runs one process; "
                                          "--num_processes 2 needs ddp, zero2, zero3"):
        command("2", "single")
    unquoted = tmp_path / "plain.yaml"
    unquoted.write_text("distributed_type: NO\nnum_processes: 2\n")  # YAML 1.1 reads NO as false
    with pytest.raises(LaunchError, match="plain.yaml has distributed_type NO"):
        command(None, str(unquoted))


@pytest.mark.parametrize("text", ["[1, 2]\n", "num_processes: 2\n", "a: [\n"])
def test_a_file_that_is_not_an_accelerate_config_is_refused(text, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(LaunchError, match=r"--accelerate_config .*bad.yaml: (expected an accelerate config|cannot)"):
        command("2", str(bad))


def test_more_processes_than_cuda_devices_are_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(LaunchError, match="--num_processes 2, but this machine has 1 CUDA device"):
        command("2")


def test_the_cli_refuses_in_one_line_before_starting_anything(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    refused = cli("train", "smoke_sft", "--num_processes", "2", "--accelerate_config", "zero2")
    assert refused.code == 2 and refused.err.startswith("st-instruct train: error: ACCELERATE_USE_CPU=1")
    assert len(refused.err.strip().splitlines()) == 1 and "launching" not in refused.out
    typo = cli("train", "smoke_sft", "--num_processes", "2", "--max_stepz", "2", "--output_dir", tmp_path / "m")
    assert typo.code == 2 and "max_stepz" in typo.err and len(typo.err.strip().splitlines()) == 1
    assert "launching" not in typo.out and not (tmp_path / "m").exists()
    count = cli("train", "smoke_sft", "--num_processes", "two")
    assert count.code == 2 and count.err.strip() == ("st-instruct train: error: --num_processes takes a whole number "
                                                     "of processes >= 1, found 'two'")


# ------------------------------------------------------------------------------------------- a real launch
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
def test_two_processes_under_zero2_on_the_cpu(cli, tiny_backbone_dir, tmp_path, monkeypatch):
    """``st-instruct train smoke_sft --num_processes 2 --accelerate_config zero2.yaml`` (the shipped file on a free
    port) trains with DeepSpeed on 2 CPU processes. The world size is read from what training saw: the 16 samples of
    the smoke recipe split over 2 processes of 2 samples a step are 4 steps an epoch, so 2 steps are epoch 0.5 (one
    process: 8 steps an epoch, 0.25)."""
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    config = yaml.safe_load((ACCELERATE / "zero2.yaml").read_text())
    write_config(tmp_path / "zero2.yaml", **{**config, "main_process_port": free_port()})
    output = tmp_path / "model"
    done = cli("train", "smoke_sft", "--num_processes", "2", "--accelerate_config", tmp_path / "zero2.yaml",
               "--model_name_or_path", tiny_backbone_dir, "--output_dir", output, "--report_to", "none",
               "--dataset_cache_dir", tmp_path / "built", "--max_steps", "2", "--save_steps", "2",
               "--per_device_train_batch_size", "2")
    assert done.code == 0, done.err[-4000:]
    assert "-m accelerate.commands.launch" in done.out and "--cpu" not in done.out
    data_config = parse_recipe(train_dataclasses(), ["smoke_sft"])[0]
    samples = data_config.window_sample * data_config.node_sample
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert state["epoch"] == pytest.approx(2 / (samples / (2 * 2)))  # 2 processes x 2 samples a step
    checkpoint = output / "checkpoint-2"
    assert (checkpoint / "global_step2").is_dir(), sorted(p.name for p in checkpoint.iterdir())  # DeepSpeed's own
    assert not (checkpoint / "optimizer.pt").exists()  # what DDP would have saved
    assert (output / "st_backbone.json").is_file() and (output / "recipe.yaml").is_file()
