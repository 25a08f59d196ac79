"""Issue 9: nothing is overwritten unasked, a failed or killed run leaves no partial output, resume is honest.

Training cases use the smoke recipe on the tiny Llama of ``tiny_backbone_dir`` (seconds each); one integration test
SIGKILLs ``python -m st_instruct.cli train`` after a checkpoint and resumes it to the uninterrupted weights.
"""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_check import assert_clean_failure
from safetensors.torch import load_file

from st_instruct import outputs
from st_instruct.model_dir import checkpoint_missing
from st_instruct.training import trainer as trainer_module

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "recipes" / "smoke_sft.yaml"


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".replaced-" in p.name)


@pytest.fixture(scope="module")
def flags(tiny_backbone_dir, tmp_path_factory):
    return ["--model_name_or_path", str(tiny_backbone_dir), "--dataset_cache_dir",
            str(tmp_path_factory.mktemp("built")), "--report_to", "none"]


@pytest.fixture(scope="module")
def trained(flags, tmp_path_factory):
    """A finished run of 4 steps: checkpoint-2, checkpoint-4 and the final model in one folder."""
    from st_instruct.cli import main

    output = tmp_path_factory.mktemp("runs") / "trained"
    assert main(["train", str(SMOKE), *flags, "--output_dir", str(output), "--max_steps", "4", "--save_steps", "2"]
                ) == 0
    assert (output / "checkpoint-2").is_dir() and (output / "checkpoint-4").is_dir()
    return output


def copy(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "out"))


def test_training_into_a_nonempty_model_folder_is_refused_and_leaves_it_byte_identical(cli, flags, trained,
                                                                                        tmp_path):
    out = copy(trained, tmp_path)
    before = digest(out)
    result = cli("train", SMOKE, *flags, "--output_dir", out, "--max_steps", "2")
    line = assert_clean_failure(result, str(out), "--overwrite", "a trained model", "checkpoint-4")
    assert "resume_from_checkpoint" in line
    assert digest(out) == before and hidden(tmp_path) == []


def test_overwrite_replaces_the_old_run_only_once_the_new_one_is_saved(cli, flags, trained, tmp_path, monkeypatch):
    out = copy(trained, tmp_path)
    before = digest(out)
    # a failing overwriting run (a bad value that only fails once training starts) leaves the old folder intact
    failed = cli("train", SMOKE, *flags, "--output_dir", out, "--overwrite", "--max_steps", "2",
                 "--lr_scheduler_type", "cosine_with_min_lr")
    assert_clean_failure(failed, "min_lr")
    assert digest(out) == before and hidden(tmp_path) == []
    ok = cli("train", SMOKE, *flags, "--output_dir", out, "--overwrite", "--max_steps", "2",
             "--save_steps", "2", "--save_total_limit", "1")
    assert ok.code == 0, ok.err
    # the new run's rotation never saw the old checkpoints: they went with the old folder, as a whole
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (out / "st_backbone.json").is_file() and digest(out) != before and hidden(tmp_path) == []
    assert "max_steps: 2" in (out / "recipe.yaml").read_text() and f"output_dir: {out}" in (out / "recipe.yaml"
                                                                                          ).read_text()


def test_resume_from_a_final_model_folder_names_the_missing_training_state(cli, flags, trained, tmp_path):
    result = cli("train", SMOKE, *flags, "--output_dir", tmp_path / "x", "--resume_from_checkpoint", trained)
    line = assert_clean_failure(result, str(trained), "optimizer.pt", "scheduler.pt", "rng_state.pth")
    assert "st_modules" not in line and "output directory" not in line  # never suggests a final folder
    assert not (tmp_path / "x").exists()


def test_resume_from_a_checkpoint_without_its_optimizer_state_is_refused(cli, flags, trained, tmp_path):
    checkpoint = Path(shutil.copytree(trained / "checkpoint-2", tmp_path / "checkpoint-2"))
    (checkpoint / "optimizer.pt").unlink()
    result = cli("train", SMOKE, *flags, "--output_dir", tmp_path / "x", "--resume_from_checkpoint", checkpoint)
    line = assert_clean_failure(result, str(checkpoint), "lacks optimizer.pt:")
    assert "scheduler.pt" not in line and checkpoint_missing(trained / "checkpoint-2") == []


def test_resume_true_skips_an_incomplete_newest_checkpoint_and_says_which_it_uses(cli, flags, trained, tmp_path):
    out = copy(trained, tmp_path)
    (out / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')  # killed while writing it
    result = cli("train", SMOKE, *flags, "--output_dir", out, "--max_steps", "4", "--resume_from_checkpoint",
                 "true")
    assert result.code == 0, result.err
    assert f"resuming from {out / 'checkpoint-2'}, the last complete checkpoint (skipping incomplete " \
           "checkpoint-4)" in result.out
    assert checkpoint_missing(out / "checkpoint-4") == []  # saved again by the resumed run


def test_resume_true_without_a_complete_checkpoint_is_one_clear_line(cli, flags, trained, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = cli("train", SMOKE, *flags, "--output_dir", out, "--resume_from_checkpoint", "true")
    assert_clean_failure(result, str(out), "no complete checkpoint", "holds no checkpoint-N folder")
    shutil.copytree(trained / "checkpoint-2", out / "checkpoint-2", ignore=shutil.ignore_patterns("rng_state*"))
    result = cli("train", SMOKE, *flags, "--output_dir", out, "--resume_from_checkpoint", "last")
    assert_clean_failure(result, str(out), "no complete checkpoint", "checkpoint-2 lack files")


def test_a_failed_train_leaves_no_output_folder(cli, flags, tmp_path):
    out = tmp_path / "out"
    # fails in trainer.train() (the scheduler), after the Trainer has created output_dir
    result = cli("train", SMOKE, *flags, "--output_dir", out, "--lr_scheduler_type", "cosine_with_min_lr")
    assert_clean_failure(result, "min_lr")
    assert not out.exists() and hidden(tmp_path) == []


def test_a_train_failing_after_a_checkpoint_keeps_it_and_says_how_to_resume(cli, flags, tmp_path, monkeypatch):
    original = trainer_module.STSFTTrainer.training_step

    def failing_step(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise ValueError("simulated failure at step 3")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.STSFTTrainer, "training_step", failing_step)
    out = tmp_path / "out"
    result = cli("train", SMOKE, *flags, "--output_dir", out, "--max_steps", "4", "--save_steps", "2")
    assert_clean_failure(result, "simulated failure at step 3")
    assert f"kept checkpoint-2 in {out}: resume with --resume_from_checkpoint true" in result.err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2"]  # no final save, no staging folder
    assert checkpoint_missing(out / "checkpoint-2") == []


def test_build_data_into_a_nonempty_output_is_refused_until_overwrite(cli, flags, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = cli("build-data", SMOKE, *flags, "--output", out)
    assert_clean_failure(result, str(out), "--overwrite")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    result = cli("build-data", SMOKE, *flags, "--output", out, "--overwrite")
    assert result.code == 0, result.err
    assert (out / "dataset_dict.json").is_file() and not (out / "notes.txt").exists() and hidden(tmp_path) == []


def test_a_build_failing_while_saving_leaves_no_output_and_no_partial(cli, flags, tmp_path, monkeypatch):
    import datasets

    def half_save(self, path, **kwargs):
        Path(path, "train").mkdir(parents=True)
        Path(path, "train", "data-00000-of-00001.arrow").write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", half_save)
    result = cli("build-data", SMOKE, *flags, "--output", tmp_path / "data")
    assert_clean_failure(result, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_stale_partials_of_dead_runs_are_cleaned_and_live_ones_left(cli, flags, tmp_path):
    host, dead = outputs._HOST, dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    cache = tmp_path / "cache"
    try:
        for folder in (tmp_path / f".data.partial-{host}-{dead}", tmp_path / f".data.partial-{host}-{live.pid}",
                       cache / f"0123abcd.partial-{dead}", cache / f".4567ef.partial-{host}-{dead}"):
            folder.mkdir(parents=True)
            (folder / "dataset_dict.json").write_text("{")
        result = cli("build-data", SMOKE, *flags[:2], "--dataset_cache_dir", cache, "--output", tmp_path / "data")
        assert result.code == 0, result.err
        assert hidden(tmp_path) == [f".data.partial-{host}-{live.pid}"]
        assert hidden(cache) == []  # the builder cache's leftovers too, of any fingerprint, old naming included
    finally:
        live.kill()
        live.wait()


def test_evaluate_json_into_a_folder_and_output_into_a_foreign_folder_are_refused(cli, trained, tmp_path):
    common = ("evaluate", "--model", trained, "--dataset", "synthetic-small", "--max-windows", "2", "--models",
              "last_value", "--quiet")
    (tmp_path / "results").mkdir()
    result = cli(*common, "--output", tmp_path / "eval", "--json", tmp_path / "results")
    assert_clean_failure(result, str(tmp_path / "results"), "is a folder; give a file path")
    assert list((tmp_path / "results").iterdir()) == [] and hidden(tmp_path) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    result = cli(*common, "--output", tmp_path / "mine")
    assert_clean_failure(result, str(tmp_path / "mine"), "thesis.tex")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.tex"]
    assert cli(*common, "--output", tmp_path / "eval").code == 0
    first = (tmp_path / "eval" / "results.json").stat().st_ino
    assert cli(*common, "--output", tmp_path / "eval").code == 0  # an earlier evaluation is replaced whole
    assert (tmp_path / "eval" / "results.json").stat().st_ino != first and hidden(tmp_path) == []


@pytest.mark.integration
def test_a_killed_cli_run_resumes_to_the_uninterrupted_weights(tiny_backbone_dir, tmp_path):
    """``st-instruct train`` SIGKILLed right after its first complete checkpoint, then resumed with
    ``resume_from_checkpoint: true``, ends at exactly the weights of an uninterrupted run with the same seed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    base = [sys.executable, "-m", "st_instruct.cli", "train", str(SMOKE), "--model_name_or_path",
            str(tiny_backbone_dir), "--dataset_cache_dir", str(tmp_path / "built"), "--report_to", "none",
            "--max_steps", "60", "--save_steps", "2", "--save_total_limit", "2", "--lr_scheduler_type", "linear",
            "--lora_dropout", "0.1"]

    def run(output, *more):
        done = subprocess.run([*base, "--output_dir", str(output), *more], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    run(tmp_path / "whole")
    cut = tmp_path / "cut"
    child = subprocess.Popen([*base, "--output_dir", str(cut)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(not checkpoint_missing(p) for p in cut.glob("checkpoint-*")):
            assert child.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert not (cut / "st_modules.safetensors").exists()  # killed mid-run: no final save
    resumed = run(cut, "--resume_from_checkpoint", "true")
    assert "resuming from" in resumed.stdout and "the last complete checkpoint" in resumed.stdout
    for name in ("st_modules.safetensors", "adapter_model.safetensors"):
        expected, got = load_file(tmp_path / "whole" / name), load_file(cut / name)
        assert expected.keys() == got.keys() and expected
        for key in expected:
            assert expected[key].equal(got[key]), (name, key)
