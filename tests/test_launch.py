"""``st-instruct train RECIPE --num_processes N [--accelerate_config ...] [--num_machines M --machine_rank R
--main_process_ip IP]`` (st_instruct/launch.py): the accelerate command built for each case, on one machine and as one
machine's part of a run over several, the launches refused because accelerate would silently run something else
(docs/design.md §8) or the machines could not meet, and one real 2-process DeepSpeed ZeRO-2 run on the CPU whose world
size is read from what training saw (two machines on loopback: tests/training/test_multinode.py)."""

import json
import re
import socket
import sys
from pathlib import Path

import pytest
import yaml

from st_instruct import launch
from st_instruct.configs import parse_recipe, train_dataclasses
from st_instruct.launch import LaunchError, MachineFlags, accelerate_command, launch_training
from st_instruct.shipped import shipped_dir

ACCELERATE = shipped_dir("recipes") / "accelerate"
HEAD = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
TAIL = ["-m", "st_instruct.train", "smoke_sft", "--max_steps", "2"]


def command(num_processes=None, config=None, environ=None, overwrite=False, **machines):
    return accelerate_command("smoke_sft", ["--max_steps", "2"], num_processes, config, overwrite,
                              environ={} if environ is None else environ, machines=MachineFlags(**machines))


def machine(rank, ip="10.1.2.3", machines="2", **more):
    """The machine flags of machine ``rank`` of a run over ``machines`` machines whose main machine is ``ip``."""
    return {"num_machines": machines, "machine_rank": rank, "main_process_ip": ip, **more}


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


# ------------------------------------------------------------------------------------------ several machines
@pytest.mark.parametrize("rank", ["0", "1"])
def test_each_machine_runs_its_part_of_the_run_under_ddp(rank, no_cuda):
    """The same command on both machines but for the rank; --num_processes is the total (accelerate's meaning)."""
    built = command("4", "ddp", **machine(rank, main_process_port="29600"))
    assert built == [*HEAD, str(ACCELERATE / "ddp.yaml"), "--num_processes", "4", "--num_machines", "2",
                     "--machine_rank", rank, "--main_process_ip", "10.1.2.3", "--main_process_port", "29600", *TAIL]


def test_several_machines_without_a_config_default_to_ddp(no_cuda):
    assert command("2", **machine("1")) == [*HEAD, str(ACCELERATE / "ddp.yaml"), "--num_processes", "2",
                                             "--num_machines", "2", "--machine_rank", "1", "--main_process_ip",
                                             "10.1.2.3", *TAIL]


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_deepspeed_over_several_machines_runs_one_launcher_a_machine(name, no_cuda):
    """accelerate's default DeepSpeed multi-node launcher (pdsh) would start the others over ssh from machine 0."""
    built = command("2", name, **machine("0"))
    assert built == [*HEAD, str(ACCELERATE / f"{name}.yaml"), "--num_processes", "2", "--num_machines", "2",
                     "--machine_rank", "0", "--main_process_ip", "10.1.2.3", "--deepspeed_multinode_launcher",
                     "standard", *TAIL]
    assert "--deepspeed_multinode_launcher" not in command("2", name)  # one machine: no multi-node launcher


def test_a_multi_machine_config_file_supplies_its_own_rank_address_and_total(tmp_path, no_cuda):
    """A file `accelerate config` wrote for machine 1 of 2: its rank, address and total count apply; flags win."""
    config = write_config(tmp_path / "cluster.yaml", distributed_type="MULTI_GPU", num_machines=2, machine_rank=1,
                          main_process_ip="10.9.9.9", num_processes=16)
    assert command(None, str(config)) == [*HEAD, str(config), "--num_machines", "2", "--machine_rank", "1",
                                          "--main_process_ip", "10.9.9.9", *TAIL]
    assert command(None, str(config), machine_rank="0") == [*HEAD, str(config), "--num_machines", "2",
                                                            "--machine_rank", "0", "--main_process_ip", "10.9.9.9",
                                                            *TAIL]
    single = command("2", str(config), num_machines="1")  # back to one machine: the file's rank and address unused
    assert single == [*HEAD, str(config), "--num_processes", "2", "--num_machines", "1", *TAIL]


def test_the_port_passes_on_one_machine_too(no_cuda):
    assert command("2", main_process_port="0") == [*HEAD, str(ACCELERATE / "ddp.yaml"), "--num_processes", "2",
                                                   "--main_process_port", "0", *TAIL]


@pytest.mark.parametrize(("processes", "flags", "message"), [
    ("2", {"num_machines": "2", "machine_rank": "0"}, "--num_machines 2 needs --main_process_ip: the address of the "
     "machine of --machine_rank 0, the same on every machine"),
    ("2", {"num_machines": "2", "main_process_ip": "10.1.2.3"}, "--num_machines 2 needs --machine_rank: 0 on the "
     "machine at --main_process_ip 10.1.2.3, 1 on the other (each its own)"),
    (None, machine("0"), "--num_machines 2 needs --num_processes N: the total number of processes over all machines, "
     "as in accelerate (e.g. --num_processes 16 for 2 machines of 8 GPUs)"),
    ("4", machine("2"), "--machine_rank 2 is outside 0..1 (--num_machines 2): 0 on the machine at --main_process_ip "
     "10.1.2.3, 1 on the other"),
    ("6", machine("3", machines="3"), "--machine_rank 3 is outside 0..2 (--num_machines 3): 0 on the machine at "
     "--main_process_ip 10.1.2.3, 1 to 2 on the others"),
    ("3", machine("0"), "--num_processes 3 is the total over all machines (as in accelerate), so it must be a "
     "multiple of --num_machines 2: the same number of processes on each machine"),
    ("1", machine("0"), "--num_processes 1 is the total over all machines"),
    ("2", machine("0", main_process_port="0"), "--main_process_port 0 (any free port) works on one machine only"),
    ("2", machine("0", main_process_port="70000"), "--main_process_port takes a port number up to 65535, found "
     "70000"),
    ("2", machine("0", main_process_port="http"), "--main_process_port takes the port of the main process (a whole "
     "number >= 0), found 'http'"),
    ("2", machine("one"), "--machine_rank takes this machine's rank, 0 on the machine at --main_process_ip (a whole "
     "number >= 0), found 'one'"),
    ("2", machine("-1"), "--machine_rank takes this machine's rank"),
    ("2", machine("0", machines="two"), "--num_machines takes the number of machines (a whole number >= 1), found "
     "'two'"),
    ("2", machine("0", machines="0"), "--num_machines takes the number of machines (a whole number >= 1), found '0'"),
    ("2", machine("0", machines="1.5"), "--num_machines takes the number of machines"),
    ("2", machine("0", ip=""), "--main_process_ip takes the IP address (or host name) of the machine of "
     "--machine_rank 0, found ''"),
    ("2", machine("0", ip="10.1.2.3 10.1.2.4"), "--main_process_ip takes the IP address"),
    ("2", {"machine_rank": "1"}, "--machine_rank is for a run over several machines: add --num_machines M (and the "
     "same --num_machines, --main_process_ip and --num_processes on every machine)"),
    (None, {"main_process_ip": "10.1.2.3"}, "--main_process_ip is for a run over several machines: add "
     "--num_machines M"),
    ("2", {"num_machines": "1", "machine_rank": "0"}, "--machine_rank is for a run over several machines"),
    (None, {"main_process_port": "29600"}, "--main_process_port is for a run over several processes: add "
     "--num_processes N"),
])
def test_machine_flags_that_cannot_meet_are_refused_in_one_line(processes, flags, message, no_cuda):
    with pytest.raises(LaunchError, match=re.escape(message)) as refused:
        command(processes, **flags)
    assert "\n" not in str(refused.value)


def test_a_config_that_starts_the_other_machines_itself_is_refused(tmp_path, no_cuda):
    config = write_config(tmp_path / "zero2_pdsh.yaml", distributed_type="DEEPSPEED", num_processes=2,
                          deepspeed_config={"zero_stage": 2, "deepspeed_multinode_launcher": "pdsh"})
    with pytest.raises(LaunchError, match="deepspeed_multinode_launcher pdsh starts the other machines from this one"):
        command("2", str(config), **machine("0"))
    assert command("2", str(config)) is not None  # on one machine the key does nothing


def test_several_machines_refuse_a_single_process_config(no_cuda):
    with pytest.raises(LaunchError, match="single.yaml has distributed_type NO, which runs one process"):
        command("2", "single", **machine("0"))


def test_cuda_devices_are_counted_a_machine(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert command("16", **machine("1")) is not None  # 8 a machine
    with pytest.raises(LaunchError, match="--num_processes 24 over --num_machines 2, 12 a machine, but this machine "
                                          "has 8 CUDA device"):
        command("24", **machine("1"))


def test_save_on_each_node_is_refused_over_several_machines(monkeypatch, no_cuda):
    """Every machine's main process would write the same checkpoint files into the shared output_dir."""
    monkeypatch.setattr(launch, "run_accelerate", lambda command: pytest.fail(f"launched {command}"))
    flags = MachineFlags(**machine("1"))
    with pytest.raises(LaunchError, match="save_on_each_node: true makes the main process of every machine write"):
        launch_training("smoke_sft", ["--save_on_each_node", "true"], "2", machines=flags)
    launched = []
    monkeypatch.setattr(launch, "run_accelerate", launched.append)
    launch_training("smoke_sft", ["--save_on_each_node", "true"], "2")  # one machine: its business
    launch_training("smoke_sft", [], "2", machines=flags)
    assert len(launched) == 2 and "--num_machines" in launched[1]


def test_the_cli_passes_the_machine_flags_and_refuses_in_one_line(cli, monkeypatch, no_cuda):
    launched = []
    monkeypatch.setattr(launch, "run_accelerate", launched.append)
    done = cli("train", "smoke_sft", "--num_processes", "2", "--num_machines", "2", "--machine_rank", "1",
               "--main_process_ip", "10.1.2.3", "--main_process_port", "29600", "--accelerate_config", "zero2")
    assert done.code == 0, done.err
    assert launched == [[*HEAD, str(ACCELERATE / "zero2.yaml"), "--num_processes", "2", "--num_machines", "2",
                         "--machine_rank", "1", "--main_process_ip", "10.1.2.3", "--main_process_port", "29600",
                         "--deepspeed_multinode_launcher", "standard", "-m", "st_instruct.train", "smoke_sft"]]
    refused = cli("train", "smoke_sft", "--num_processes", "2", "--num_machines", "2", "--machine_rank", "2",
                  "--main_process_ip", "10.1.2.3")
    assert refused.code == 2 and len(refused.err.strip().splitlines()) == 1
    assert refused.err.startswith("st-instruct train: error: --machine_rank 2 is outside 0..1")
    assert len(launched) == 1


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
