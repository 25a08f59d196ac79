"""Issue 21: ``predict`` / ``forecast()``, ``render``, ``--json`` and ``evaluate`` lose nothing and never answer
garbage with exit 0.

Every output is staged and an existing one is refused unless ``--overwrite`` (a killed write leaves the old file
intact); output paths are checked before any slow work; new values are checked where they enter (a history with too
little observed, values far outside the training range, an irregular clock, channel names the model does not know);
channel names put channels in the model's order; the zero-shot routing is said. The model is the smoke recipe on the
tiny Llama of ``tiny_backbone_dir`` (its forecasts are not good; what is tested is what reaches them).
"""

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_check import assert_clean_failure
from tiny import train_smoke

from st_instruct import load_forecaster
from st_instruct.data.loaders import get_dataset

ROOT = Path(__file__).resolve().parents[2]
START = "2024-02-24"  # the clock of the input below: the last 48 steps of synthetic-small
CLOCK = ["--series-start", START, "--freq", "1h"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_backbone_dir):
    """Smoke recipe (node prompts, scaling: train) on synthetic-small, 2 steps, no checkpoints."""
    return train_smoke(tmp_path_factory, tiny_backbone_dir)


@pytest.fixture(scope="module")
def series():
    """``(values [48, 12, 2], timestamps)``: the last 48 hours of synthetic-small (inflow, outflow)."""
    data = get_dataset("synthetic-small")
    times = data.time_index()[-48:]
    assert str(times[0].date()) == START
    return data.values[-48:].copy(), times


def npz(path: Path, values: np.ndarray) -> Path:
    np.savez(path, data=values)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary siblings of staged writes (``.NAME.partial-HOST-PID``)."""
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def predict(cli, model_dir, values_file, output, *flags):
    return cli("predict", "--model", model_dir, "--input", values_file, *CLOCK, "--output", output, "--quiet", *flags)


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` refuses new files for the block: chmod 555, and where that does not bind (root) the immutable
    attribute (``chattr +i``); skipped when neither can be had here."""
    folder.chmod(0o555)
    immutable = False
    probe = folder / "probe"
    try:
        probe.touch()
        probe.unlink()
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if not immutable:
            pytest.skip("cannot make a folder read-only here (root without chattr)")
    except PermissionError:
        pass
    try:
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


# ------------------------------------------------------------------ outputs: staged, refused, checked first


def test_predict_refuses_an_existing_output_and_overwrite_replaces_it(cli, model_dir, series, tmp_path):
    """An existing ``--output`` is refused (exit 2, the path and --overwrite named, the file byte-identical, no
    temporary sibling left); with ``--overwrite`` it is replaced by a complete forecast."""
    values_file = npz(tmp_path / "new.npz", series[0])
    out = tmp_path / "forecast.csv"
    out.write_text("precious,table\n1,2\n")
    before = digest(out)
    result = predict(cli, model_dir, values_file, out)
    assert_clean_failure(result, str(out), "--overwrite", "already exists")
    assert digest(out) == before and leftovers(tmp_path) == []
    replaced = predict(cli, model_dir, values_file, out, "--overwrite")
    assert replaced.code == 0, replaced.err
    table = pd.read_csv(out)
    assert len(table) == 12 * 12 and list(table.columns[-2:]) == ["inflow", "outflow"] and leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["folder", "under_a_file", "no_suffix"])
def test_predict_checks_the_output_path_before_loading_the_model(cli, series, tmp_path, case):
    """A bad ``--output`` is named before any slow work: the model named here does not exist, so an answer about the
    output proves it was checked first."""
    values_file = npz(tmp_path / "new.npz", series[0])
    (tmp_path / "afile.csv").write_text("x\n")
    (tmp_path / "adir.csv").mkdir()
    output, culprits = {"folder": (tmp_path / "adir.csv", ["adir.csv", "is a folder"]),
                        "under_a_file": (tmp_path / "afile.csv" / "f.csv", ["afile.csv is a file"]),
                        "no_suffix": (tmp_path / "forecast", [".csv or .npz"])}[case]
    result = predict(cli, tmp_path / "no-such-model", values_file, output)
    assert_clean_failure(result, *culprits)


def test_predict_into_a_read_only_folder_is_refused_before_loading_the_model(cli, series, tmp_path):
    """An output folder that does not accept files is named before the model is loaded (it does not exist here)."""
    values_file = npz(tmp_path / "new.npz", series[0])
    folder = tmp_path / "locked"
    folder.mkdir()
    with read_only(folder):
        result = predict(cli, tmp_path / "no-such-model", values_file, folder / "f.csv")
    assert_clean_failure(result, str(folder / "f.csv"), "cannot be written", "does not accept new files")


SLOW_WRITER = textwrap.dedent("""
    # predict, with pandas' CSV writer slowed down: it writes the first half of the table, then waits to be killed
    import sys, time
    import pandas as pd

    to_csv = pd.DataFrame.to_csv

    def slow_to_csv(self, path, **kwargs):
        text = to_csv(self, None, **kwargs)
        with open(path, "w") as file:
            file.write(text[: len(text) // 2])
            file.flush()
            print("HALF WRITTEN", flush=True)
            time.sleep(120)
            file.write(text[len(text) // 2:])

    pd.DataFrame.to_csv = slow_to_csv
    from st_instruct.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("existing", [False, True], ids=["over-nothing", "overwrite-existing"])
def test_predict_killed_while_writing_leaves_no_partial_output_and_the_old_file_intact(model_dir, series, tmp_path,
                                                                                        existing):
    """SIGKILL while ``predict`` writes its CSV (pandas' writer is slowed in the child so the kill lands mid-write:
    half the table is on disk): over nothing, no output file appears; with ``--overwrite`` over an existing file,
    that file is byte-identical. The killed run's temporary sibling is removed by the next write of the output."""
    values_file = npz(tmp_path / "new.npz", series[0])
    out = tmp_path / "forecast.csv"
    if existing:
        out.write_text("old,forecast\n1,2\n")
    before = digest(out) if existing else None
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, "predict", "--model", str(model_dir), "--input",
                              str(values_file), *CLOCK, "--output", str(out), "--quiet",
                              *(["--overwrite"] if existing else [])],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = iter(child.stdout.readline, "")  # blocks until the writer is half-way (or the child died)
        assert any("HALF WRITTEN" in line for line in lines), child.wait()
        partial = [p for p in tmp_path.iterdir() if p.name.startswith(".forecast.csv.partial-")]
        assert len(partial) == 1 and partial[0].stat().st_size > 0  # the kill lands on a half-written file
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    if existing:
        assert digest(out) == before
    else:
        assert not out.exists()
    # the next write of the same output cleans the dead run's sibling
    assert load_forecaster(model_dir).forecast(*series).save(tmp_path / "forecast.csv", overwrite=True)
    assert leftovers(tmp_path) == []


def test_evaluate_checks_its_outputs_and_the_model_folder_before_the_run(cli, model_dir, tmp_path):
    """``evaluate --json`` onto an existing file, ``--output`` that is a file, and a model folder that cannot take
    the evaluation record are each refused before the evaluation runs (nothing written, files intact)."""
    existing = tmp_path / "results.json"
    existing.write_text('{"keep": true}\n')
    result = cli("evaluate", "--model", model_dir, "--dataset", "synthetic-small", "--json", existing, "--quiet")
    assert_clean_failure(result, str(existing), "--overwrite")
    assert existing.read_text() == '{"keep": true}\n'
    result = cli("evaluate", "--model", model_dir, "--dataset", "synthetic-small", "--output", existing, "--quiet")
    assert_clean_failure(result, str(existing), "is a file")
    records = sorted(p.name for p in model_dir.iterdir())
    with read_only(model_dir):
        result = cli("evaluate", "--model", model_dir, "--dataset", "synthetic-small", "--output",
                     tmp_path / "eval", "--quiet")
    assert_clean_failure(result, str(model_dir), "cannot be written")
    assert sorted(p.name for p in model_dir.iterdir()) == records and not (tmp_path / "eval").exists()


def test_baselines_json_onto_an_existing_file_is_refused_before_the_run(cli, tmp_path):
    """``baselines --json F`` with ``F`` present: refused naming F and --overwrite, F intact; with --overwrite the
    results replace it."""
    existing = tmp_path / "r.json"
    existing.write_text("{}\n")
    assert_clean_failure(cli("baselines", "--dataset", "synthetic-small", "--models", "last_value", "--json",
                             existing, "--quiet"), str(existing), "--overwrite")
    assert existing.read_text() == "{}\n"
    ok = cli("baselines", "--dataset", "synthetic-small", "--models", "last_value", "--json", existing, "--quiet",
             "--overwrite")
    assert ok.code == 0, ok.err
    assert "last_value" in existing.read_text() and leftovers(tmp_path) == []


def test_render_refuses_existing_images_a_file_as_folder_and_a_huge_size(cli, tmp_path):
    """``render --out`` onto existing images is refused (images intact) unless --overwrite; ``--out`` naming a file
    is refused; ``--size 100000`` is refused before anything is drawn (it asked for 23 GB)."""
    flags = ["render", "synthetic-small", "--window", "0", "--out", tmp_path / "img"]
    first = cli(*flags)
    assert first.code == 0, first.err
    png = tmp_path / "img" / "synthetic-small-test-0-map.png"
    before = digest(png)
    assert_clean_failure(cli(*flags), str(png), "--overwrite")
    assert digest(png) == before
    assert cli(*flags, "--overwrite").code == 0
    (tmp_path / "afile").write_text("x")
    assert_clean_failure(cli("render", "synthetic-small", "--window", "0", "--out", tmp_path / "afile"),
                         "afile is a file")
    result = cli("render", "synthetic-small", "--window", "0", "--size", "100000", "--out", tmp_path / "big")
    assert_clean_failure(result, "image size 100000", "2048")
    assert not (tmp_path / "big").exists() or not any((tmp_path / "big").iterdir())


# ------------------------------------------------------------------ new values: checked where they enter


@pytest.mark.parametrize("case", ["all_nan", "last_history_nan"])
def test_a_history_with_nothing_observed_is_refused(cli, model_dir, series, tmp_path, case):
    """All-NaN input, or NaN in exactly the history the forecast reads: refused (it forecast a plausible 46 trips/h
    from nothing), nothing written."""
    values = series[0].copy()
    values[-12 if case == "last_history_nan" else 0:] = np.nan
    out = tmp_path / "f.csv"
    result = predict(cli, model_dir, npz(tmp_path / "new.npz", values), out)
    assert_clean_failure(result, "0% of their values observed", "--min-observed")
    assert not out.exists() and leftovers(tmp_path) == []


def test_every_window_withholds_windows_with_too_little_observed_and_says_so(model_dir, series, tmp_path, cli):
    """With ``--every-window``, windows with less than a quarter of their history observed (not NaN, not the null 0)
    get NaN (listed in ``withheld``, said on stdout) while the others are forecast as without the missing part."""
    values, times = series
    holed = values.copy()
    holed[:10] = np.nan  # the first window (steps 0..11) keeps at most 2 of its 12 steps
    seen = (np.isfinite(holed) & (holed != 0)).reshape(48, -1).mean(axis=1)
    share = np.array([seen[w:w + 12].mean() for w in range(37)])
    expected = [w for w in range(37) if share[w] < 0.25]
    assert expected and expected == list(range(len(expected)))
    forecaster = load_forecaster(model_dir)
    result = forecaster.forecast(holed, times, every_window=True)
    whole = forecaster.forecast(values, times, every_window=True)
    assert result.withheld == expected
    np.testing.assert_allclose(result.observed, share, atol=1e-6)
    assert np.isnan(result.values[expected]).all() and np.isfinite(result.values[len(expected):]).all()
    np.testing.assert_allclose(result.values[12:], whole.values[12:], rtol=1e-5, atol=1e-4)  # untouched windows
    cli_result = predict(cli, model_dir, npz(tmp_path / "holed.npz", holed), tmp_path / "f.csv", "--every-window")
    assert cli_result.code == 0, cli_result.err
    assert f"withheld {len(expected)} of 37 window(s)" in cli_result.out
    assert f"{share[0]:.0%} observed" in cli_result.out
    table = pd.read_csv(tmp_path / "f.csv")
    assert table[table["window"].isin(expected)][["inflow", "outflow"]].isna().all().all()
    assert table[~table["window"].isin(expected)][["inflow", "outflow"]].notna().all().all()


def test_values_far_outside_the_training_range_are_refused_naming_the_value(cli, model_dir, series, tmp_path):
    """A value of 1e30 is refused naming it, its row, node and channel and the accepted range (training mean ± 100
    standard deviations); the same value given zero-shot (another node set) is refused by the input's own spread."""
    values = series[0].copy()
    values[5, 3, 0] = 1e30
    result = predict(cli, model_dir, npz(tmp_path / "new.npz", values), tmp_path / "f.csv")
    assert_clean_failure(result, "1e+30", "row 6", "channel 'inflow'", "100 standard deviations")
    with pytest.raises(ValueError, match=r"value 1e\+30 at row 6.*median"):
        load_forecaster(model_dir).forecast(values[:, :5], series[1])


def test_an_irregular_clock_is_refused_naming_the_gap_or_filled_on_request(cli, model_dir, series, tmp_path):
    """A timestamped input with a missing row is refused naming the first gap (it was forecast as if regular);
    ``fill_gaps`` inserts the step as unobserved, which forecasts exactly what the input with a NaN row does."""
    values, times = series
    frame = pd.DataFrame(values.reshape(48, -1), index=times,
                         columns=pd.MultiIndex.from_product([[f"Zone {i}" for i in range(12)], ["inflow", "outflow"]]))
    gappy = frame.drop(times[40])
    forecaster = load_forecaster(model_dir)
    with pytest.raises(ValueError, match=r"irregular: row 40 \(2024-02-25 15:00:00\) is followed by row 41 .*2h "):
        forecaster.forecast(gappy)
    filled = forecaster.forecast(gappy, fill_gaps=True)
    holed = frame.copy()
    holed.loc[times[40]] = np.nan
    np.testing.assert_array_equal(filled.values, forecaster.forecast(holed).values)
    csv = tmp_path / "gappy.csv"  # the same through predict: a one-channel csv with a time column
    pd.DataFrame(values[:, :, 0], index=times).drop(times[40]).rename_axis("time").to_csv(csv)
    assert_clean_failure(cli("predict", "--model", model_dir, "--input", csv, "--output", tmp_path / "f.csv"),
                         "row 40", "--fill-gaps")


def test_channel_names_put_channels_in_the_models_order(cli, model_dir, series, tmp_path):
    """``--channel-names outflow inflow`` on data stored in that order forecasts what the data in the model's order
    does (it used to relabel only: outflow off by up to 54); an unknown name is refused."""
    values_file = npz(tmp_path / "right.npz", series[0])
    swapped_file = npz(tmp_path / "swapped.npz", series[0][:, :, ::-1])
    assert predict(cli, model_dir, values_file, tmp_path / "right.csv").code == 0
    swapped = predict(cli, model_dir, swapped_file, tmp_path / "swapped.csv", "--channel-names", "outflow", "inflow")
    assert swapped.code == 0, swapped.err
    right, named = pd.read_csv(tmp_path / "right.csv"), pd.read_csv(tmp_path / "swapped.csv")
    pd.testing.assert_frame_equal(right[["inflow", "outflow"]], named[["inflow", "outflow"]])
    unread = predict(cli, model_dir, swapped_file, tmp_path / "wrong.csv")  # unnamed: read by position, differs
    assert unread.code == 0 and not np.allclose(pd.read_csv(tmp_path / "wrong.csv")["outflow"], right["outflow"])
    result = predict(cli, model_dir, swapped_file, tmp_path / "x.csv", "--channel-names", "outflow", "speed")
    assert_clean_failure(result, "'speed'", "inflow, outflow")


def test_timestamps_as_numbers_and_frames_with_text_are_refused(model_dir, series):
    """Integer timestamps (read by pandas as nanoseconds: 'step is 1ns') and a DataFrame cell holding text (pandas'
    raw conversion error) are refused naming the culprit."""
    values, times = series
    forecaster = load_forecaster(model_dir)
    with pytest.raises(ValueError, match="timestamps must be dates and times, found int64 numbers"):
        forecaster.forecast(values, np.arange(48))
    frame = pd.DataFrame(values[:, :, 0], index=times, columns=[f"n{i}" for i in range(12)]).astype(object)
    frame.iloc[7, 2] = "12,5"
    with pytest.raises(ValueError, match=r"cell at row Timestamp\('2024-02-24 07:00:00'\), column 'n2' is '12,5'"):
        forecaster.forecast(frame)


def test_the_routing_is_said(cli, model_dir, series, tmp_path):
    """``predict`` prints which profile it used and why; a misspelt ``--name`` is forecast zero-shot and says so,
    with the name it probably meant."""
    values_file = npz(tmp_path / "new.npz", series[0])
    result = predict(cli, model_dir, values_file, tmp_path / "a.csv")
    assert "input: the profile of the training dataset 'synthetic-small' (the input has its 12 nodes and 2 " \
           "channel(s)), values z-scored with its train-split statistics" in result.out
    typo = predict(cli, model_dir, values_file, tmp_path / "b.csv", "--name", "synthtic-small")
    assert typo.code == 0
    assert "input: zero-shot, each window z-scored with its own history's statistics: 'synthtic-small' is not a " \
           "training dataset of this forecaster (synthetic-small); did you mean 'synthetic-small'?" in typo.out
    routed = load_forecaster(model_dir).forecast(series[0][:, :5], series[1])
    assert routed.profile is None and routed.routing.startswith("zero-shot") and "5 nodes" in routed.routing


def test_rationales_are_refused_for_a_model_trained_without_them(cli, model_dir, series, tmp_path):
    """``predict --rationale``, ``explain`` and ``evaluate --generate-rationales`` on a model whose recipe trained
    no rationales are refused (they printed generated gibberish as the model's rationale)."""
    values_file = npz(tmp_path / "new.npz", series[0])
    assert_clean_failure(predict(cli, model_dir, values_file, tmp_path / "f.csv", "--rationale"),
                         "--rationale", "not trained with rationales")
    assert_clean_failure(cli("explain", "--model", model_dir, "--dataset", "synthetic-small", "--window", "0",
                             "--node", "0"), "explain", "rationale_teacher: none")
    assert_clean_failure(cli("evaluate", "--model", model_dir, "--dataset", "synthetic-small", "--output",
                             tmp_path / "eval", "--generate-rationales", "--quiet"), "--generate-rationales")
    assert not (tmp_path / "f.csv").exists() and not (tmp_path / "eval").exists()


def test_symlink_loops_are_named(cli, model_dir, series, tmp_path):
    """A model folder or an input file that is a symlink loop is named as such (it read as 'no such file')."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    result = cli("predict", "--model", loop, "--input", npz(tmp_path / "n.npz", series[0]), *CLOCK, "--output",
                 tmp_path / "f.csv")
    assert_clean_failure(result, str(loop), "symbolic link", "loop")
    looped = tmp_path / "loop.npz"
    looped.symlink_to(looped)
    assert_clean_failure(predict(cli, model_dir, looped, tmp_path / "f.csv"), "loop.npz", "symbolic link", "loop")


def test_the_model_card_names_the_final_folder_not_its_staging_sibling(model_dir):
    """Training saves through a temporary sibling; the card it writes there names the final folder (it was titled
    '.final.partial-HOST-PID')."""
    card = (model_dir / "README.md").read_text()
    assert f"\n# {model_dir.name}: an st_instruct forecaster" in card and ".partial-" not in card
