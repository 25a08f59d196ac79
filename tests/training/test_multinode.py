"""Two "machines" on loopback: ``st-instruct train smoke_sft --num_processes 2 --num_machines 2 --machine_rank R
--main_process_ip 127.0.0.1 --main_process_port P`` run concurrently as two subprocesses (R = 0 and 1), one process
each, under recipes/accelerate/ddp.yaml (DDP) and zero2.yaml (DeepSpeed ZeRO-2 on the CPU, as in
test_multiprocess.py), a few steps of the smoke recipe on a tiny Llama backbone.

What is real: the user's command, two separate ``accelerate launch`` -> torchrun agents with ``--nnodes 2
--node_rank R`` (static rendezvous at the main machine's address, which node 0 hosts), one training process under
each, joined in one gloo process group of world size 2 over TCP; the output folder and dataset cache shared by both,
as on a cluster with a shared filesystem, so machine 1's local main process (local rank 0, global rank 1) would
clobber machine 0's files if it wrote any. What is not: two hosts (both are 127.0.0.1, one filesystem, one clock),
a network between them, GPUs/NCCL, more than one process a machine, and storage that is NOT shared.

Each training process reports its trainable parameters after ``trainer.train`` the way test_multiprocess.py's wrapper
does (same report, same :func:`check_ranks`), through a ``sitecustomize`` put on ``PYTHONPATH`` for the test only:
``st-instruct train`` launches ``-m st_instruct.train``, which a wrapper script cannot replace, so the hook wraps
``STSFTTrainer.train`` when that module is imported. It adds torchrun's ``GROUP_RANK`` (the machine), ``LOCAL_RANK``
and the trainer's ``should_save`` to the report: both machines' checkpoints would hold the same bytes, so the shared
folder alone cannot show that machine 1 did not write it too (with ``save_on_each_node: true`` it does, and the
folder looks the same), while ``should_save`` on rank 1 can.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_multiprocess import check_ranks, check_saved, free_port

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

ROOT = Path(__file__).resolve().parents[2]
ST_INSTRUCT = Path(sys.executable).with_name("st-instruct")
REPORTS_ENV = "ST_TEST_RANK_REPORTS"
TIMEOUT_S = 480

SITECUSTOMIZE = textwrap.dedent('''
    """Test hook (tests/training/test_multinode.py): with $ST_TEST_RANK_REPORTS set, every process that imports
    st_instruct.training.trainer writes rank{R}.json there after STSFTTrainer.train: its ranks and a digest of each
    trainable parameter (the report of test_multiprocess.py's wrapper)."""
    import os
    import sys

    TARGET = "st_instruct.training.trainer"


    def _report(trainer):
        import hashlib
        import json
        from pathlib import Path

        import torch

        named = [(name, p) for name, p in trainer.model.named_parameters() if p.requires_grad]
        if any(hasattr(p, "ds_id") for _, p in named):
            raise RuntimeError("ZeRO-3 shards: this hook does not gather them")
        digests = {}
        for name, p in named:
            values = p.detach().cpu().to(torch.float64)
            digests[name] = {"sha256": hashlib.sha256(values.numpy().tobytes()).hexdigest(),
                             "sum": values.sum().item(), "numel": values.numel()}
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        report = {"rank": rank, "process_index": trainer.args.process_index,
                  "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
                  "args_world_size": trainer.args.world_size, "global_step": trainer.state.global_step,
                  "deepspeed": bool(getattr(trainer, "is_deepspeed_enabled", False)),
                  "should_save": trainer.args.should_save,
                  "group_rank": os.environ.get("GROUP_RANK"), "local_rank": os.environ.get("LOCAL_RANK"),
                  "local_world_size": os.environ.get("LOCAL_WORLD_SIZE"), "params": digests}
        Path(os.environ["ST_TEST_RANK_REPORTS"], f"rank{rank}.json").write_text(json.dumps(report))


    def _patch(module):
        original = module.STSFTTrainer.train

        def train(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            _report(self)
            return result

        module.STSFTTrainer.train = train


    class _Hook:
        def find_spec(self, name, path=None, target=None):
            if name != TARGET:
                return None
            sys.meta_path.remove(self)
            import importlib.util

            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _patch(module)

            spec.loader.exec_module = exec_module
            return spec


    if os.environ.get("ST_TEST_RANK_REPORTS"):
        sys.meta_path.insert(0, _Hook())
''')


def machine_command(rank: int, config: str, port: int, tiny_dir: Path, output: Path, cache: Path) -> list[str]:
    """Machine ``rank``'s command: the same on both machines but for ``--machine_rank``."""
    return [str(ST_INSTRUCT), "train", "smoke_sft", "--accelerate_config", config, "--num_processes", "2",
            "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(port), "--model_name_or_path", str(tiny_dir), "--output_dir", str(output),
            "--dataset_cache_dir", str(cache), "--report_to", "none", "--max_steps", "2", "--save_steps", "2",
            "--per_device_train_batch_size", "2", "--quiet"]


def run_two_machines(config: str, tiny_dir: Path, tmp_path: Path) -> tuple[Path, list[dict], list[str]]:
    """Both machines' commands at once; returns the shared output folder, the two rank reports and each machine's
    output. When one machine fails the other (which would wait for it) is stopped."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    reports = tmp_path / "reports"
    reports.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           REPORTS_ENV: str(reports),
           "PYTHONPATH": os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("ACCELERATE_USE_CPU", None)  # under DeepSpeed it silently falls back to DDP (recipes/accelerate/*.yaml)
    port = free_port()
    output, cache = tmp_path / "shared" / "model", tmp_path / "shared" / "built"
    logs = [tmp_path / f"machine{rank}.log" for rank in (0, 1)]
    machines = []
    for rank, log in enumerate(logs):
        with log.open("w") as sink:  # the child keeps its own descriptor
            machines.append(subprocess.Popen(machine_command(rank, config, port, tiny_dir, output, cache), cwd=ROOT,
                                             env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(m.poll() is None for m in machines) and time.monotonic() < deadline:
            if any(m.poll() not in (None, 0) for m in machines):
                break  # the other machine would wait for its peer until the rendezvous times out
            time.sleep(0.5)
    finally:
        for machine in machines:
            if machine.poll() is None:
                os.killpg(machine.pid, signal.SIGTERM)  # its own session: the launcher, torchrun and the worker
                machine.wait(timeout=30)
    texts = [log.read_text() for log in logs]
    for rank, (machine, text) in enumerate(zip(machines, texts, strict=True)):
        assert machine.returncode == 0, f"machine {rank} exited {machine.returncode}\n{text[-6000:]}"
    found = [json.loads(path.read_text()) for path in sorted(reports.glob("rank*.json"))]
    assert len(found) == 2, (sorted(p.name for p in reports.iterdir()), texts[1][-3000:])
    return output, found, texts


def check_two_machines(reports: list[dict], texts: list[str], config: str, output: Path) -> None:
    """Each rank ran alone on its own "machine" (torchrun node), the main process's only; the shared folder holds
    one complete run and no leftovers."""
    by_rank = sorted(reports, key=lambda r: r["rank"])
    assert [r["group_rank"] for r in by_rank] == ["0", "1"]  # node 0 runs global rank 0, node 1 global rank 1
    assert [r["local_rank"] for r in by_rank] == ["0", "0"]  # both local main processes of their machine
    assert [r["local_world_size"] for r in by_rank] == ["1", "1"]
    assert [r["should_save"] for r in by_rank] == [True, False]  # the trainer's checkpoints: machine 0's main only
    for rank, text in enumerate(texts):
        assert "-m accelerate.commands.launch --config_file" in text
        assert f"--num_machines 2 --machine_rank {rank} --main_process_ip 127.0.0.1" in text
        assert ("--deepspeed_multinode_launcher standard" in text) == (config == "zero2")
    assert f"saved the forecaster to {output}" in texts[0]
    assert "saved the forecaster" not in texts[1]  # only the global main process writes the final folder
    assert sorted(p.name for p in output.parent.iterdir()) == ["built", "model"]  # no .model.partial-* siblings
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["epoch"] == pytest.approx(0.5)  # 16 samples / (2 ranks x 2) a step
    assert (output / "st_backbone.json").is_file() and (output / "recipe.yaml").is_file()


@pytest.mark.parametrize("config", ["ddp", "zero2"])
def test_two_machines_on_loopback(config, tiny_backbone_dir, tmp_path):
    started = time.perf_counter()
    output, reports, texts = run_two_machines(config, tiny_backbone_dir, tmp_path)
    deepspeed = config == "zero2"
    check_ranks(reports, deepspeed=deepspeed)  # world size 2, step 2, identical trainable parameters on both ranks
    check_two_machines(reports, texts, config, output)
    checkpoint = output / "checkpoint-2"
    files = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= files  # each rank its own, side by side in the shared folder
    if deepspeed:  # DeepSpeed's own state: one optimizer shard a rank, the model states once
        shards = sorted(name for name in files if name.startswith("global_step2/") and "optim_states" in name)
        assert len(shards) == 2 and "_rank_0_" in shards[0] and "_rank_1_" in shards[1], sorted(files)
        assert "global_step2/mp_rank_00_model_states.pt" in files and "optimizer.pt" not in files
    else:
        assert "optimizer.pt" in files
    check_saved(output, reports[0])  # the final folder and the checkpoint reload to the trained weights
    check_saved(checkpoint, reports[0])
    print(f"two machines on loopback, {config}: {time.perf_counter() - started:.1f} s")
