"""``st-instruct train RECIPE --num_processes N [--accelerate_config ddp|zero2|zero3|PATH]``: accelerate, launched for
the user.

The command run is ``python -m accelerate.commands.launch --config_file CONFIG [--num_processes N] -m
st_instruct.train RECIPE [flags]``: the recipe says what to train, the accelerate config (a shipped one of
``recipes/accelerate/``, ``ddp`` when only ``--num_processes`` is given, or the user's file) how to spread it.

Several machines: the same command on each, with ``--num_machines M --machine_rank R --main_process_ip IP
[--main_process_port P]`` (R = 0 on the machine at IP, 1..M-1 on the others). As in accelerate, ``--num_processes`` is
then the TOTAL over all machines (``--num_processes 16 --num_machines 2``: 8 a machine) and the main process is rank 0
of machine 0: only it writes the output folder (``st_instruct.training.run.train``, and the trainer's checkpoints
while ``save_on_each_node`` is false; true is refused), so ``output_dir`` belongs on storage the machines share (each
process decides from what it sees there whether the run starts, resumes or replaces). Under DeepSpeed each machine
runs accelerate's ``standard`` (torchrun) multi-node launcher, not its default ``pdsh`` one, which would start the
other machines over ssh from machine 0. On a
machine without CUDA the processes run on the CPU as docs/design.md §8 measured: never accelerate's ``--cpu`` (it
silently runs ONE process), ``use_cpu`` set in the training arguments by the training entry
(:func:`st_instruct.configs.cpu_training_defaults`, gloo), and under DeepSpeed no ``ACCELERATE_USE_CPU`` (it silently
drops DeepSpeed for plain DDP). A configuration that would silently run something other than what it names is
refused with one line (:class:`LaunchError`) before any process starts.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from st_instruct.configs import parse_recipe, train_dataclasses
from st_instruct.shipped import shipped_dir
from st_instruct.train import train_and_push
from st_instruct.training.run import OVERWRITE_FLAG

PROCESSES_FLAG = "--num_processes"
CONFIG_FLAG = "--accelerate_config"
MACHINES_FLAG = "--num_machines"
RANK_FLAG = "--machine_rank"
IP_FLAG = "--main_process_ip"
PORT_FLAG = "--main_process_port"
DEEPSPEED_LAUNCHER_FLAG = "--deepspeed_multinode_launcher"
ONE_LAUNCHER_A_MACHINE = "standard"  # accelerate's torchrun launcher: one `accelerate launch` on each machine
DEFAULT_CONFIG = "ddp"  # several processes and no config named: plain data parallelism
USE_CPU_ENV = "ACCELERATE_USE_CPU"
_TRUE = ("1", "true", "yes", "y", "on", "t")  # what accelerate's str_to_bool reads as true


class LaunchError(ValueError):
    """A launch that cannot run as asked; the message names the flag, file or variable and what to do."""


@dataclass(frozen=True)
class MachineFlags:
    """The multi-machine flags of ``st-instruct train`` as typed (text; None when not given): accelerate's
    ``--num_machines``, ``--machine_rank``, ``--main_process_ip`` and ``--main_process_port``."""

    num_machines: str | None = None
    machine_rank: str | None = None
    main_process_ip: str | None = None
    main_process_port: str | None = None


MACHINE_FLAG_NAMES = tuple(field.name for field in fields(MachineFlags))  # the CLI's attribute names, in order


def shipped_accelerate_configs() -> dict[str, Path]:
    """``{name: path}`` of the shipped accelerate configs (``recipes/accelerate/NAME.yaml``)."""
    return {path.stem: path for path in sorted((shipped_dir("recipes") / "accelerate").glob("*.yaml"))}


def resolve_accelerate_config(name_or_path: str) -> Path:
    """The accelerate config file of ``--accelerate_config``: a shipped config's name (``zero2``) or a file."""
    shipped = shipped_accelerate_configs()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise LaunchError(f"{CONFIG_FLAG} {name_or_path!r} is neither a file nor a shipped accelerate config; "
                          f"shipped: {', '.join(shipped)}")
    return path


def read_accelerate_config(path: Path) -> dict[str, Any]:
    """The mapping of an accelerate config file, with ``distributed_type`` upper-cased (YAML 1.1 reads an unquoted
    ``NO`` as false, as accelerate's own loader does)."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise LaunchError(f"{CONFIG_FLAG} {path}: cannot be read as YAML ({err})") from err
    if not isinstance(config, dict) or "distributed_type" not in config:
        raise LaunchError(f"{CONFIG_FLAG} {path}: expected an accelerate config (a mapping with distributed_type, "
                          "as `accelerate config` writes; e.g. recipes/accelerate/ddp.yaml)")
    kind = config["distributed_type"]
    config["distributed_type"] = "NO" if kind is False else str(kind).upper()
    return config


def parse_num_processes(text: str | None) -> int | None:
    """``--num_processes`` as a count >= 1 (None when not given)."""
    if text is None:
        return None
    if not str(text).isdigit() or int(text) < 1:
        raise LaunchError(f"{PROCESSES_FLAG} takes a whole number of processes >= 1, found {text!r}")
    return int(text)


def _whole_number(flag: str, text: str | None, minimum: int, what: str) -> int | None:
    """``text`` of ``flag`` as a whole number >= ``minimum`` (None when not given)."""
    if text is None:
        return None
    if not str(text).isdigit() or int(text) < minimum:
        raise LaunchError(f"{flag} takes {what} (a whole number >= {minimum}), found {text!r}")
    return int(text)


def _refuse_machine_flags(flags: MachineFlags) -> None:
    """On one machine: a machine's rank or the main machine's address is a mistake (a forgotten ``--num_machines``)."""
    for flag, value in ((RANK_FLAG, flags.machine_rank), (IP_FLAG, flags.main_process_ip)):
        if value is not None:
            raise LaunchError(f"{flag} is for a run over several machines: add {MACHINES_FLAG} M (and the same "
                              f"{MACHINES_FLAG}, {IP_FLAG} and {PROCESSES_FLAG} on every machine)")


def _machine_arguments(flags: MachineFlags, path: Path, config: dict[str, Any], processes: int | None,
                       effective: int) -> tuple[int, list[str]]:
    """The number of machines and the accelerate flags that spread the run over them (``[]`` on one machine unless a
    flag was given); raises :class:`LaunchError` for a set-up that cannot run as asked. ``processes`` is
    ``--num_processes`` (None when not given), ``effective`` the total count that runs."""
    machines_flag = _whole_number(MACHINES_FLAG, flags.num_machines, 1, "the number of machines")
    rank = _whole_number(RANK_FLAG, flags.machine_rank, 0, "this machine's rank, 0 on the machine at "
                         f"{IP_FLAG}")
    port = _whole_number(PORT_FLAG, flags.main_process_port, 0, "the port of the main process")
    if port is not None and port > 65535:
        raise LaunchError(f"{PORT_FLAG} takes a port number up to 65535, found {port}")
    address = flags.main_process_ip
    if address is not None and (not address.strip() or any(char.isspace() for char in address)):
        raise LaunchError(f"{IP_FLAG} takes the IP address (or host name) of the machine of {RANK_FLAG} 0, "
                          f"found {address!r}")
    in_file = _whole_number(f"num_machines of {path}", config.get("num_machines") or 1, 1, "the number of machines")
    machines = machines_flag if machines_flag is not None else in_file
    if machines == 1:
        _refuse_machine_flags(flags)
        return 1, [*([MACHINES_FLAG, "1"] if machines_flag is not None else []),
                   *([PORT_FLAG, str(port)] if port is not None else [])]
    # a config file written for several machines (`accelerate config`) may hold this machine's rank and the address
    from_file = in_file > 1
    if processes is None and not from_file:
        raise LaunchError(f"{MACHINES_FLAG} {machines} needs {PROCESSES_FLAG} N: the total number of processes over "
                          f"all machines, as in accelerate (e.g. {PROCESSES_FLAG} {machines * 8} for {machines} "
                          "machines of 8 GPUs)")
    if address is None and from_file and config.get("main_process_ip"):
        address = str(config["main_process_ip"])
    if address is None:
        raise LaunchError(f"{MACHINES_FLAG} {machines} needs {IP_FLAG}: the address of the machine of {RANK_FLAG} 0, "
                          "the same on every machine")
    others = "1" if machines == 2 else f"1 to {machines - 1}"
    if rank is None and from_file and "machine_rank" in config:
        rank = _whole_number(f"machine_rank of {path}", config["machine_rank"], 0, "a machine rank")
    if rank is None:
        raise LaunchError(f"{MACHINES_FLAG} {machines} needs {RANK_FLAG}: 0 on the machine at {IP_FLAG} {address}, "
                          f"{others} on the other{'s' if machines > 2 else ''} (each its own)")
    if rank >= machines:
        raise LaunchError(f"{RANK_FLAG} {rank} is outside 0..{machines - 1} ({MACHINES_FLAG} {machines}): 0 on the "
                          f"machine at {IP_FLAG} {address}, {others} on the other{'s' if machines > 2 else ''}")
    if effective % machines:
        count = f"{PROCESSES_FLAG} {effective}" if processes is not None else f"num_processes {effective} of {path}"
        raise LaunchError(f"{count} is the total over all machines (as in accelerate), so it must be a multiple of "
                          f"{MACHINES_FLAG} {machines}: the same number of processes on each machine")
    if port == 0:
        raise LaunchError(f"{PORT_FLAG} 0 (any free port) works on one machine only: give the port the machine at "
                          f"{IP_FLAG} {address} listens on, the same on every machine")
    command = [MACHINES_FLAG, str(machines), RANK_FLAG, str(rank), IP_FLAG, address,
               *([PORT_FLAG, str(port)] if port is not None else [])]
    if config["distributed_type"] == "DEEPSPEED":
        launcher = (config.get("deepspeed_config") or {}).get("deepspeed_multinode_launcher")
        if launcher not in (None, ONE_LAUNCHER_A_MACHINE):
            raise LaunchError(f"{CONFIG_FLAG} {path}: deepspeed_multinode_launcher {launcher} starts the other "
                              f"machines from this one, while st-instruct train runs on each machine (accelerate's "
                              f"{ONE_LAUNCHER_A_MACHINE} launcher); remove the key, or run `accelerate launch` "
                              "yourself on machine 0")
        command += [DEEPSPEED_LAUNCHER_FLAG, ONE_LAUNCHER_A_MACHINE]  # accelerate's default, pdsh, needs ssh
    return machines, command


def deepspeed_installed() -> bool:
    """Whether ``deepspeed`` can be imported here (it is never imported: that takes seconds)."""
    return importlib.util.find_spec("deepspeed") is not None


def _check_config(path: Path, config: dict[str, Any], processes: int, environ: Mapping[str, str]) -> None:
    """Refuse what accelerate would silently run differently: a ZeRO-named file without DeepSpeed, DeepSpeed that
    is missing or overridden by ``ACCELERATE_USE_CPU``, one process where several are asked for."""
    kind = config["distributed_type"]
    if path.stem.lower().startswith("zero") and kind != "DEEPSPEED":
        raise LaunchError(f"{CONFIG_FLAG} {path}: named as a DeepSpeed ZeRO config but its distributed_type is "
                          f"{kind}, which runs without ZeRO; set distributed_type: DEEPSPEED (as in "
                          "recipes/accelerate/zero2.yaml)")
    if kind == "DEEPSPEED":
        if not deepspeed_installed():
            raise LaunchError(f"{CONFIG_FLAG} {path} needs DeepSpeed, which is not installed: DS_BUILD_OPS=0 pip "
                              "install deepspeed (scripts/setup.sh does)")
        if environ.get(USE_CPU_ENV, "").strip().lower() in _TRUE:
            raise LaunchError(f"{USE_CPU_ENV}={environ[USE_CPU_ENV]} in the environment makes accelerate drop "
                              f"DeepSpeed ({CONFIG_FLAG} {path}) for plain DDP; unset it (without CUDA the training "
                              "entry puts the processes on the CPU itself)")
    if config.get("use_cpu") is True and (processes > 1 or kind == "DEEPSPEED"):
        raise LaunchError(f"{CONFIG_FLAG} {path}: use_cpu: true makes accelerate run ONE process without DeepSpeed; "
                          "remove it (without CUDA the training entry puts the processes on the CPU itself)")
    if kind == "NO" and processes > 1:
        raise LaunchError(f"{CONFIG_FLAG} {path} has distributed_type NO, which runs one process; {PROCESSES_FLAG} "
                          f"{processes} needs ddp, zero2, zero3 or a file with distributed_type MULTI_GPU / DEEPSPEED")


def _check_devices(processes: int, machines: int = 1) -> None:
    """With CUDA, one process per device at most (NCCL refuses two processes on one GPU) on each of the ``machines``
    (``processes`` is the total); without, CPU processes."""
    import torch  # only here: the launcher stays quick to import for the CLI

    here = processes // machines
    if torch.cuda.is_available() and here > torch.cuda.device_count():
        spread = f" over {MACHINES_FLAG} {machines}, {here} a machine" if machines > 1 else ""
        raise LaunchError(f"{PROCESSES_FLAG} {processes}{spread}, but this machine has {torch.cuda.device_count()} "
                          "CUDA device(s): one process per device")


def accelerate_command(recipe: str, overrides: list[str], num_processes: str | None = None,
                       accelerate_config: str | None = None, overwrite: bool = False,
                       environ: Mapping[str, str] | None = None,
                       machines: MachineFlags | None = None) -> list[str] | None:
    """The ``accelerate launch`` command training ``recipe`` (with its ``overrides`` flags) on ``num_processes``
    processes under ``accelerate_config``, on this machine or, with ``machines``, as this machine's part of a run
    over several; None when nothing beyond one process is asked for (train in this process).

    Without ``num_processes`` the config file's own count applies; without ``accelerate_config``, ``ddp``. Over
    several machines ``num_processes`` is the total, as in accelerate (:func:`_machine_arguments`). Raises
    :class:`LaunchError` for a launch that would silently run otherwise (see :func:`_check_config`). ``environ`` is
    the environment the command will run in (default ``os.environ``).
    """
    machines = machines or MachineFlags()
    processes = parse_num_processes(num_processes)
    count = _whole_number(MACHINES_FLAG, machines.num_machines, 1, "the number of machines")
    if accelerate_config is None and (processes is None or processes == 1) and (count is None or count == 1):
        _refuse_machine_flags(machines)
        if machines.main_process_port is not None:
            raise LaunchError(f"{PORT_FLAG} is for a run over several processes: add {PROCESSES_FLAG} N")
        return None
    path = resolve_accelerate_config(accelerate_config or DEFAULT_CONFIG)
    config = read_accelerate_config(path)
    effective = processes if processes is not None else int(config.get("num_processes", 1))
    count, spread = _machine_arguments(machines, path, config, processes, effective)
    _check_config(path, config, effective, os.environ if environ is None else environ)
    _check_devices(effective, count)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path)]
    if processes is not None:
        command += [PROCESSES_FLAG, str(processes)]
    return [*command, *spread, "-m", "st_instruct.train", recipe, *overrides,
            *([OVERWRITE_FLAG] if overwrite else [])]


def run_accelerate(command: list[str]) -> None:
    """Run an :func:`accelerate_command` (its processes print to this terminal); a failure is a :class:`LaunchError`
    after their output."""
    print(f"launching: {' '.join(command)}", flush=True)
    code = subprocess.run(command).returncode
    if code != 0:
        raise LaunchError(f"accelerate launch exited with status {code} (the processes' output is above)")


def launch_training(recipe: str, overrides: list[str], num_processes: str | None = None,
                    accelerate_config: str | None = None, overwrite: bool = False,
                    machines: MachineFlags | None = None) -> Path:
    """``st-instruct train``: train ``recipe`` in this process, or on several under accelerate, on this machine or
    several (:func:`accelerate_command`); returns the output folder. The recipe is parsed here first either way, so a
    bad key or value is one line rather than one per process."""
    command = accelerate_command(recipe, overrides, num_processes, accelerate_config, overwrite, machines=machines)
    configs = parse_recipe(train_dataclasses(), [recipe, *overrides])
    if command is None:
        return train_and_push(*configs, overwrite=overwrite)
    several_machines = MACHINES_FLAG in command and int(command[command.index(MACHINES_FLAG) + 1]) > 1
    if several_machines and configs[2].save_on_each_node:
        raise LaunchError("save_on_each_node: true makes the main process of every machine write the checkpoints of "
                          f"output_dir {configs[2].output_dir}, which the machines share: they would write the same "
                          "files at once; leave it false (only machine 0's main process writes)")
    run_accelerate(command)
    return Path(configs[2].output_dir)
