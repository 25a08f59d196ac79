"""The GPU path (scripts/bench_gpu.sh, scripts/gpu_bundle.py, scripts/bench_gpu_steps.py): its planner, its tables,
the GGUF cut, and -- where the bundle and the real data are here -- the whole dry run on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_gpu_steps as steps  # noqa: E402
import gpu_bundle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_peak_table_reads_the_card_name():
    assert steps.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert steps.peak_tflops("NVIDIA H200") == 989.4
    assert steps.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert steps.peak_tflops("NVIDIA H100 NVL") == 835.0
    assert steps.peak_tflops("CPU") is None


def test_plan_caps_at_the_epochs_and_fits_the_time():
    costs = steps.Costs(llm_step=0.05, cheap_step=0.01, run_overhead=10, evaluation=5, stid=10)
    runs, n = steps.plan(10_000, costs, batch=16, train_windows=6109, max_epochs=50, min_steps=100)
    assert runs == list(steps.RUNS) and n == 50 * 382  # capped: 50 epochs of 382 batches
    runs, n = steps.plan(300, costs, batch=16, train_windows=6109, max_epochs=50, min_steps=100)
    assert n >= 100 and steps.planned_seconds(runs, n, costs) <= 300
    assert steps.planned_seconds(runs, n + 1, costs) > 300 or n == 50 * 382


def test_plan_drops_seed_one_first_and_never_keeps_an_orphan_control():
    costs = steps.Costs(llm_step=0.5, cheap_step=0.01, run_overhead=10, evaluation=5, stid=10)
    runs, n = steps.plan(400, costs, batch=16, train_windows=6109, max_epochs=50, min_steps=100)
    assert n >= 100 and runs == list(steps.RUNS[:len(runs)]) and len(runs) < len(steps.RUNS)
    assert all(r.seed == 0 for r in runs)
    for run in runs:
        assert not run.control or steps.Run(run.variant, run.seed) in runs
    assert steps.plan(5, costs, 16, 6109, 50, 100) == ([], 0)
    assert steps.complete([steps.Run("plain", 1, "no_llm")]) == []


def test_each_model_is_scored_with_its_seeds_controls_and_stid_once():
    evaluations = steps.evaluations(list(steps.RUNS))
    first, *rest = evaluations
    assert first[0] == steps.Run("plain", 0)
    assert first[1] == [steps.Run("plain", 0, "no_llm"), steps.Run("plain", 0, "random_llm")]
    assert "stid" in first[2] and all("stid" not in baselines for _, _, baselines in rest)
    plain_1 = next(e for e in rest if e[0] == steps.Run("plain", 1))
    assert plain_1[1] == [steps.Run("plain", 1, "no_llm")]
    assert len(evaluations) == 8  # 4 variants x 2 seeds


def test_tables_print_every_figure():
    result = {"MAE": 19.7, "RMSE": 36.3, "MAPE": 34.7, "MAE_h1": 15.0, "MAE_last": 20.6}
    plain, control = steps.Run("plain", 0), steps.Run("plain", 0, "no_llm")
    bench = {"environment": {"device": "NVIDIA H100 80GB HBM3", "peak_tflops": 989.4, "matmul_tflops": 790.0,
                             "versions": {"torch": "2.11.0"}},
             "mfu": {"model": "stlink", "attention": "sdpa", "precision": "bf16", "compiled_layers": False,
                     "batches": [{"batch": 2, "tokens_per_step": 1262, "step_ms_median": 20.0,
                                  "forward_tflop_counted": 0.1, "forward_tflop_analytic": 0.1,
                                  "model_tflops_per_s": 15.0, "mfu": 0.015, "of_measured_matmul": 0.019,
                                  "executed_tflops_per_s": 12.0, "samples_per_s": 100.0, "collate_ms": 3.0}]},
             "plan": {"steps": 400, "batch": 16, "epochs": 1.05, "train_windows": 6109, "runs": [], "dropped": []},
             "runs": {plain.slug: {"steps": 400, "train_runtime_seconds": 20.0, "seconds_per_step": 0.05,
                                   "wall_seconds": 30.0}},
             "evaluations": {plain.slug: {"windows": 500, "rows": {"st_forecaster": result,
                                                                  "st_forecaster_no_llm": result}}},
             "skipped": [], "wall_seconds": 400.0, "budget_seconds": 420.0}
    text = steps.tables(bench)
    assert "| 2 | 1262 | 20.0 |" in text and "1.50" in text  # MFU in %
    assert "| st_forecaster | 19.700 |" in text and "| st_forecaster_no_llm | 19.700 |" in text
    assert "| plain | 19.700 | 20.60 | not run |" in text
    assert control.slug == "plain_no_llm_seed0" and steps.Run("ST-LINK (both)", 1).slug == "st_link_both_model_seed1"


def test_the_header_names_the_device_call():
    header = (ROOT / "scripts/bench_gpu.sh").read_text()
    assert 'run(command="bash scripts/bench_gpu.sh", carry=[".gpu_bundle"], timeout_s=480)' in header
    assert os.access(ROOT / "scripts/bench_gpu.sh", os.X_OK)


def test_a_gguf_cut_keeps_the_first_blocks_byte_for_byte(tmp_path):
    gguf = pytest.importorskip("gguf")
    source, target = tmp_path / "full.gguf", tmp_path / "cut.gguf"
    writer = gguf.GGUFWriter(str(source), arch="llama")
    writer.add_block_count(3)
    writer.add_context_length(64)
    writer.add_token_list(["<a>", "<b>", "c"])
    rng = np.random.default_rng(0)
    arrays = {"token_embd.weight": rng.standard_normal((3, 8), dtype=np.float32),
              "output_norm.weight": rng.standard_normal(8, dtype=np.float32)}
    arrays.update({f"blk.{i}.attn_q.weight": rng.standard_normal((8, 8), dtype=np.float32) for i in range(3)})
    for name, array in arrays.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = gpu_bundle.truncate_gguf(source, target, keep=2)
    assert info["source_blocks"] == 3 and info["kept_blocks"] == 2 and info["tensors"] == 4
    reader = gguf.GGUFReader(target)
    assert reader.fields["llama.block_count"].contents() == 2
    assert reader.fields["tokenizer.ggml.tokens"].contents() == ["<a>", "<b>", "c"]
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert sorted(tensors) == sorted(n for n in arrays if not n.startswith("blk.2"))
    for name, data in tensors.items():
        np.testing.assert_array_equal(data.reshape(arrays[name].shape), arrays[name])


def test_wheel_tags_for_the_device():
    assert gpu_bundle.wheel_tag_ok(Path("trl-1.16.0-py3-none-any.whl"))
    assert gpu_bundle.wheel_tag_ok(Path("multiprocess-0.70.19-py312-none-any.whl"))
    assert gpu_bundle.wheel_tag_ok(Path("xxhash-3.5.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"))
    assert not gpu_bundle.wheel_tag_ok(Path("xxhash-3.5.0-cp311-cp311-manylinux_2_17_x86_64.whl"))
    assert not gpu_bundle.wheel_tag_ok(Path("xxhash-3.5.0-cp312-cp312-macosx_11_0_arm64.whl"))


def test_the_dry_run_runs_every_stage(tmp_path):
    """``scripts/bench_gpu.sh --dry-run``: the bundle's checks, its backbone against the recipe's, its data against
    ../shared/data, and every stage of the device run once on the CPU (measured: see docs/results.md)."""
    from real_data import require_real_data

    require_real_data("nyc-taxi")
    if not (ROOT / ".gpu_bundle" / "manifest.json").is_file():
        pytest.skip(reason="no .gpu_bundle here: `scripts/bench_gpu.sh --prepare` builds it (pip download needs the "
                    "network, and pretraining the encoder a CPU minute), too slow for a test to build")
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    tic = time.perf_counter()
    done = subprocess.run(["bash", str(ROOT / "scripts/bench_gpu.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - tic
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    bench = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert bench["checks"]["backbone"]["ok"] and bench["checks"]["data"]["ok"]
    assert bench["mfu"]["batches"][0]["forward_tflop_counted"] > 0
    assert all(r["steps"] == 1 for r in bench["runs"].values()) and len(bench["runs"]) == 4
    assert len(bench["evaluations"]) == 2
    assert "st_forecaster_no_llm" in bench["evaluations"][steps.Run("plain", 0).slug]["rows"]
    assert all(plan["fits"] for plan in bench["plan"]["device_plans"])
    print(f"dry run: {seconds:.1f} s")


def _fake_schedule(runs, deadline_seconds, fail=(), costs=None, stid=True):
    """``schedule`` with stand-ins for training and scoring: ``(bench, trained, scored)``."""
    trained, scored = [], []

    def train_fn(run):
        trained.append(run)
        if run in fail:
            raise RuntimeError("boom")
        return {"steps": 10, "train_runtime_seconds": 1.0, "seconds_per_step": 0.1, "wall_seconds": 2.0,
                "overhead_seconds": 1.0}

    def eval_fn(run, controls, baselines):
        scored.append((run, list(controls), list(baselines)))
        if "stid" in baselines and "stid" in fail:
            raise RuntimeError("stid broke")
        rows = {"st_forecaster": {"MAE": 1.0, "RMSE": 2.0, "MAPE": 3.0, "MAE_h1": 1.0, "MAE_last": 1.0}}
        return {"rows": rows, "windows": 5, "seconds": 1.0}

    bench = {"runs": {}, "evaluations": {}, "skipped": []}
    costs = costs or steps.Costs(llm_step=0.01, cheap_step=0.01, run_overhead=1, evaluation=1, stid=1)
    steps.schedule(list(runs), 10, costs, time.monotonic() + deadline_seconds, bench, train_fn, eval_fn,
                   adapt=True, stid=stid, until=[0.0], hit={"hit": False}, strict=False)
    return bench, trained, scored


def test_schedule_trains_in_order_and_scores_each_model_with_its_controls():
    bench, trained, scored = _fake_schedule(steps.RUNS, 1000)
    assert trained == list(steps.RUNS) and not bench["skipped"]
    assert scored[0] == (steps.Run("plain", 0), [steps.Run("plain", 0, "no_llm"), steps.Run("plain", 0, "random_llm")],
                         ["historical_average", "stid"])
    assert len(scored) == 8 and len(bench["evaluations"]) == 8


def test_schedule_drops_from_the_end_when_time_runs_short():
    costs = steps.Costs(llm_step=1.0, cheap_step=0.01, run_overhead=5, evaluation=2, stid=2)
    bench, trained, scored = _fake_schedule(steps.RUNS, 80, costs=costs)
    assert trained == list(steps.RUNS[:len(trained)]) and 0 < len(trained) < len(steps.RUNS)
    assert len(bench["skipped"]) == len(steps.RUNS) - len(trained)
    assert all(run in trained for run, _, _ in scored)


def test_schedule_survives_failures():
    plain, no_llm = steps.Run("plain", 0), steps.Run("plain", 0, "no_llm")
    bench, trained, scored = _fake_schedule(steps.RUNS[:3], 1000, fail=(no_llm, "stid"))
    assert "error" in bench["runs"][no_llm.slug]
    assert scored[-1] == (plain, [steps.Run("plain", 0, "random_llm")], ["historical_average"])  # again without STID
    assert plain.slug in bench["evaluations"]
    bench, trained, scored = _fake_schedule(steps.RUNS[:3], 1000, fail=(plain,))
    assert trained == [plain] and not scored and len(bench["skipped"]) == 2  # its controls are not trained
