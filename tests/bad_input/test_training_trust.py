"""A training run can be trusted: learning rates that cannot train are refused up front, a run that diverges stops
at once and saves no inf / nan weights, and a run stopped mid-training (SIGTERM, SIGKILL) leaves no TensorBoard log
that blocks or mixes into the next run.

Training cases use the smoke recipe on the tiny Llama of ``tiny_backbone_dir`` (seconds each); the stopped runs are
``python -m st_instruct.cli train`` subprocesses.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_check import assert_clean_failure
from safetensors.torch import load_file, save_file

from st_instruct import outputs

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "recipes" / "smoke_sft.yaml"
MAE = ROOT / "recipes" / "pretrain_mae.yaml"


@pytest.fixture(scope="module")
def flags(tiny_backbone_dir, tmp_path_factory):
    """The smoke recipe's backbone and a dataset cache shared by the module; report_to is left to each test."""
    return ["--model_name_or_path", str(tiny_backbone_dir), "--dataset_cache_dir",
            str(tmp_path_factory.mktemp("built"))]


def non_finite_tensors(folder: Path) -> list[str]:
    """``FILE:KEY`` of every tensor holding an inf or nan in the safetensors files under ``folder``."""
    return [f"{path.relative_to(folder)}:{key}" for path in sorted(folder.rglob("*.safetensors"))
            for key, value in load_file(path).items() if value.is_floating_point() and not value.isfinite().all()]


@pytest.mark.parametrize("verb, key, value", [
    ("train", "learning_rate", "nan"),
    ("train", "learning_rate", "inf"),
    ("train", "learning_rate", "0"),
    ("train", "st_learning_rate", "inf"),
    ("train", "loss_lm_weight", "nan"),
    ("pretrain", "pretrain_learning_rate", "nan"),
    ("pretrain", "pretrain_learning_rate", "inf"),
    ("pretrain", "pretrain_weight_decay", "inf"),
])
def test_a_rate_or_weight_that_cannot_train_is_one_line_naming_its_key_before_any_work(verb, key, value, cli,
                                                                                      tiny_backbone_dir, tmp_path):
    """An inf, nan or (learning rate) non-positive value given as a flag is refused with one line naming the key and
    the value, before the dataset is built or any output is written."""
    output, built = tmp_path / "out", tmp_path / "built"
    if verb == "train":
        result = cli("train", SMOKE, "--model_name_or_path", tiny_backbone_dir, "--report_to", "none",
                     "--dataset_cache_dir", built, "--output_dir", output, f"--{key}", value)
    else:
        result = cli("pretrain", MAE, "--pretrain_output_dir", output, "--pretrain_steps", "2", f"--{key}", value)
    line = assert_clean_failure(result, key, f"found {float(value)}")
    assert f"--{key}" in line
    assert not output.exists() and not built.exists()


def test_a_non_finite_learning_rate_in_a_recipe_file_is_one_line(cli, tmp_path):
    """``learning_rate: .inf`` in a recipe file (a YAML float, not a flag's text) is refused the same way."""
    values = yaml.safe_load(SMOKE.read_text()) | {"learning_rate": float("inf"), "output_dir": str(tmp_path / "out")}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values, sort_keys=False))
    assert_clean_failure(cli("train", recipe), "learning_rate must be a finite number, found inf")
    assert not (tmp_path / "out").exists()


def test_a_diverging_train_stops_at_its_first_non_finite_loss_and_saves_no_non_finite_weights(cli, flags, tmp_path):
    """A finite but huge learning rate makes the loss nan at step 2: the run stops there with one line naming the
    step, the loss parts and the learning rate; the checkpoint saved before holds finite weights and is kept without
    offering to resume it; there is no final model."""
    out = tmp_path / "out"
    result = cli("train", SMOKE, *flags, "--report_to", "none", "--output_dir", out, "--learning_rate", "1e30",
                 "--max_steps", "4", "--save_steps", "1")
    assert_clean_failure(result, "loss is nan at step 2 (loss_reg nan, loss_lm nan)", "learning_rate 1e+30",
                         "train again from the start")
    assert f"kept checkpoint-1 in {out}: they predate the divergence, but resuming would repeat it" in result.err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1"]
    assert non_finite_tensors(out) == []


def test_weights_a_step_turns_non_finite_are_never_saved(cli, flags, tmp_path):
    """A learning rate so large that the first step's update overflows to inf: its checkpoint is refused with one
    line, and the run, holding no checkpoint, leaves no folder."""
    out = tmp_path / "out"
    result = cli("train", SMOKE, *flags, "--report_to", "none", "--output_dir", out, "--learning_rate", "1e38",
                 "--max_steps", "2", "--save_steps", "1")
    assert_clean_failure(result, "the weights turned inf or nan at step 1 (they were not saved)",
                         "learning_rate 1e+38")
    assert not out.exists()


def test_a_backbone_giving_nan_from_the_start_is_blamed_instead_of_the_learning_rate(cli, flags, tiny_backbone_dir,
                                                                                    tmp_path):
    """A backbone folder with a nan weight makes the loss nan before any update: the line says the backbone or the
    data give it (not the learning rate), and nothing is saved."""
    backbone = Path(shutil.copytree(tiny_backbone_dir, tmp_path / "backbone"))
    weights = load_file(backbone / "model.safetensors")
    weights["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(weights, backbone / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    result = cli("train", SMOKE, *flags, "--model_name_or_path", backbone, "--report_to", "none", "--output_dir", out)
    line = assert_clean_failure(result, "loss is nan at step 1", "before any step changed the weights",
                                "the backbone or the data")
    assert "lower the learning rate" not in line
    assert not out.exists()


@pytest.mark.parametrize("extra, culprit", [
    (["--pretrain_learning_rate", "1e30", "--pretrain_steps", "3"], "the mae loss is nan at step 2 of 3"),
    # one step, finite loss; the decoupled weight decay (1 - lr * decay) sends the weights to inf
    (["--pretrain_learning_rate", "1e30", "--pretrain_weight_decay", "1e10", "--pretrain_steps", "1"],
     "the weights turned inf or nan at step 1 of 1"),
    # AdamW's first step size, lr / (1 - 0.9), is beyond float32: torch raised a RuntimeError (a traceback)
    (["--pretrain_learning_rate", "1e38", "--pretrain_steps", "2"], "the optimizer step overflowed"),
], ids=["loss", "last-step-weights", "step-overflow"])
def test_a_diverging_pretrain_stops_and_saves_nothing(extra, culprit, cli, tmp_path):
    """Pretraining whose loss turns nan, whose last step leaves inf weights, or whose optimizer step overflows
    float32 stops with one line naming the step and pretrain_learning_rate, and writes no folder."""
    output = tmp_path / "enc"
    result = cli("pretrain", MAE, "--pretrain_output_dir", output, *extra)
    assert_clean_failure(result, culprit, "nothing was saved", "pretrain_learning_rate (now 1e+")
    assert not output.exists()


@pytest.mark.integration
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_run_stopped_mid_training_leaves_no_runs_folder_and_the_same_command_trains(stop, cli, flags, tmp_path):
    """``st-instruct train`` stopped once training (and its TensorBoard log) started: SIGTERM runs the failed-run
    cleanup (exit 143, the folder it created removed), SIGKILL leaves only the log's staging sibling; either way
    there is no ``runs/`` in the output, the same command then trains without --overwrite, and the completed
    folder's ``runs/`` holds that one run's log."""
    out = tmp_path / "out"
    args = ["train", str(SMOKE), *flags, "--report_to", "tensorboard", "--output_dir", str(out), "--max_steps",
            "30", "--save_strategy", "no", "--disable_tqdm", "true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.Popen([sys.executable, "-m", "st_instruct.cli", *args], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".runs.partial-*/*/events.out.tfevents.*")):
            assert child.poll() is None and time.monotonic() < deadline, "the run ended before training started"
            time.sleep(0.02)
        assert child.poll() is None, "the run ended before it was stopped"
        child.send_signal(stop)
        code = child.wait(timeout=60)
    finally:
        child.kill()
        child.wait()
    if stop == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM
        assert not out.exists()
    else:
        assert [p.name for p in out.iterdir()] == [f".runs.partial-{outputs._HOST}-{child.pid}"]
    result = cli(*args)
    assert result.code == 0, result.err
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    (log,) = (out / "runs").iterdir()
    assert list(log.glob("events.out.tfevents.*"))


def test_a_resumed_run_keeps_the_earlier_complete_runs_log_beside_its_own(cli, flags, tmp_path):
    """A run resumed into a completed folder (more steps from its last checkpoint) ends with both runs' logs in
    ``runs/``, and no staging sibling."""
    out = tmp_path / "out"
    common = ["train", SMOKE, *flags, "--report_to", "tensorboard", "--output_dir", out, "--save_steps", "2"]
    assert cli(*common, "--max_steps", "2").code == 0
    (first,) = (out / "runs").iterdir()
    time.sleep(1)  # TensorBoard names a run's log folder to the second
    resumed = cli(*common, "--max_steps", "4", "--resume_from_checkpoint", "true")
    assert resumed.code == 0, resumed.err
    logs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(logs) == 2 and first.name in logs
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
