"""What a real ``st-instruct`` process prints besides its output: no library noise our runs cause, and with
``--quiet`` no progress bar at all (ours, the trainer's, transformers' and datasets')."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import train_smoke

# the messages of the libraries that every run printed (st_instruct.console drops them)
NOISE = ("Setting accelerator to CPU", "Failed to load CPU gemm_4bit_forward", "is_gradient_checkpointing")
TQDM_BAR = re.compile(r"\d{1,3}%\|")  # "100%|██████████| 24/24 [...]"
PYTHON_WARNING = re.compile(r"^\S+:\d+: \w*Warning: ", re.MULTILINE)  # how the warnings module prints one


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_backbone_dir):
    """A LoRA forecaster trained for 1 step by the smoke recipe on a tiny Llama (synthetic-small)."""
    return train_smoke(tmp_path_factory, tiny_backbone_dir, steps=1)


def evaluate(model_dir: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    """``python -m st_instruct.cli evaluate`` with a few-shot fine-tuning first (a trainer: accelerate imports
    DeepSpeed), in a fresh process outside the repository, Python's default warning filters."""
    argv = [sys.executable, "-m", "st_instruct.cli", "evaluate", "--model", str(model_dir), "--dataset",
            "synthetic-small", "--max-windows", "2", "--models", "last_value", "--few-shot", "0.01",
            "--few-shot-steps", "1", "--few-shot-output", str(tmp_path / "tuned"), "--output", str(tmp_path / "eval"),
            *flags]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_quiet_evaluate_prints_no_library_noise_and_no_progress_bar(model_dir, tmp_path):
    done = evaluate(model_dir, tmp_path, "--quiet")
    printed = done.stdout + done.stderr
    for message in NOISE:
        assert message not in printed, message
    assert not PYTHON_WARNING.search(done.stderr), done.stderr
    assert not TQDM_BAR.search(printed), printed
    assert "{'loss'" not in done.stdout and "few-shot: fine-tuning" not in done.stdout  # the trainer's log lines
    assert "| st_forecaster " in done.stdout  # the results table is the output, quiet or not


def test_evaluate_shows_the_progress_bars_without_quiet(model_dir, tmp_path):
    done = evaluate(model_dir, tmp_path)
    for message in NOISE:
        assert message not in done.stdout + done.stderr, message
    assert TQDM_BAR.search(done.stderr)
    assert "predicting (st_forecaster)" in done.stderr  # our bar of the forecaster's predictions
    assert "few-shot: fine-tuning" in done.stdout
