"""``st-instruct train RECIPE --num_processes N [--accelerate_config ddp|zero2|zero3|PATH]``: accelerate, launched for
the user.

The command run is ``python -m accelerate.commands.launch --config_file CONFIG [--num_processes N] -m
st_instruct.train RECIPE [flags]``: the recipe says what to train, the accelerate config (a shipped one of
``recipes/accelerate/``, ``ddp`` when only ``--num_processes`` is given, or the user's file) how to spread it. On a
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
from pathlib import Path
from typing import Any

import yaml

from st_instruct.configs import parse_recipe, train_dataclasses
from st_instruct.shipped import shipped_dir
from st_instruct.train import train_and_push
from st_instruct.training.run import OVERWRITE_FLAG

PROCESSES_FLAG = "--num_processes"
CONFIG_FLAG = "--accelerate_config"
DEFAULT_CONFIG = "ddp"  # several processes and no config named: plain data parallelism
USE_CPU_ENV = "ACCELERATE_USE_CPU"
_TRUE = ("1", "true", "yes", "y", "on", "t")  # what accelerate's str_to_bool reads as true


class LaunchError(ValueError):
    """A launch that cannot run as asked; the message names the flag, file or variable and what to do."""


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


def _check_devices(processes: int) -> None:
    """With CUDA, one process per device at most (NCCL refuses two processes on one GPU); without, CPU processes."""
    import torch  # only here: the launcher stays quick to import for the CLI

    if torch.cuda.is_available() and processes > torch.cuda.device_count():
        raise LaunchError(f"{PROCESSES_FLAG} {processes}, but this machine has {torch.cuda.device_count()} CUDA "
                          "device(s): one process per device")


def accelerate_command(recipe: str, overrides: list[str], num_processes: str | None = None,
                       accelerate_config: str | None = None, overwrite: bool = False,
                       environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The ``accelerate launch`` command training ``recipe`` (with its ``overrides`` flags) on ``num_processes``
    processes under ``accelerate_config``; None when neither is asked for beyond one process (train in this process).

    Without ``num_processes`` the config file's own count applies; without ``accelerate_config``, ``ddp``. Raises
    :class:`LaunchError` for a launch that would silently run otherwise (see :func:`_check_config`). ``environ`` is
    the environment the command will run in (default ``os.environ``).
    """
    processes = parse_num_processes(num_processes)
    if accelerate_config is None and (processes is None or processes == 1):
        return None
    path = resolve_accelerate_config(accelerate_config or DEFAULT_CONFIG)
    config = read_accelerate_config(path)
    effective = processes if processes is not None else int(config.get("num_processes", 1))
    _check_config(path, config, effective, os.environ if environ is None else environ)
    _check_devices(effective)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path)]
    if processes is not None:
        command += [PROCESSES_FLAG, str(processes)]
    return [*command, "-m", "st_instruct.train", recipe, *overrides, *([OVERWRITE_FLAG] if overwrite else [])]


def run_accelerate(command: list[str]) -> None:
    """Run an :func:`accelerate_command` (its processes print to this terminal); a failure is a :class:`LaunchError`
    after their output."""
    print(f"launching: {' '.join(command)}", flush=True)
    code = subprocess.run(command).returncode
    if code != 0:
        raise LaunchError(f"accelerate launch exited with status {code} (the processes' output is above)")


def launch_training(recipe: str, overrides: list[str], num_processes: str | None = None,
                    accelerate_config: str | None = None, overwrite: bool = False) -> Path:
    """``st-instruct train``: train ``recipe`` in this process, or on several under accelerate
    (:func:`accelerate_command`); returns the output folder. The recipe is parsed here first either way, so a bad key
    or value is one line rather than one per process."""
    command = accelerate_command(recipe, overrides, num_processes, accelerate_config, overwrite)
    configs = parse_recipe(train_dataclasses(), [recipe, *overrides])
    if command is None:
        return train_and_push(*configs, overwrite=overwrite)
    run_accelerate(command)
    return Path(configs[2].output_dir)
