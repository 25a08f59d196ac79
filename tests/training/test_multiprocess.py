"""Real multi-process training on the CPU (docs/design.md §8): ``accelerate launch`` with
recipes/accelerate/{ddp,zero2,zero3} .yaml runs 2 processes of the real training entry (a few steps of the smoke recipe
on a tiny Llama backbone).

Each process runs a small wrapper of ``scripts/sft.py`` (written by the test) that, after ``train``, writes
``rank{R}.json``: the world size, the step reached and a digest of every trainable parameter (gathered under ZeRO-3).
The tests assert world size 2 on both ranks, identical parameters across ranks, and the saved checkpoints and
final forecaster (DeepSpeed's ``global_stepN/`` under ZeRO; the output reloads with ``load_forecaster``).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from st_instruct.models.saving import load_forecaster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "recipes" / "smoke_sft.yaml"
ACCELERATE = Path(sys.executable).with_name("accelerate")

WRAPPER = textwrap.dedent('''
    """scripts/sft.py plus a report of this rank's trainable parameters after training (written by the test)."""
    import hashlib
    import json
    import sys
    from pathlib import Path

    import torch

    from st_instruct.configs import parse_recipe, train_dataclasses
    from st_instruct.training import trainer as trainer_module
    from st_instruct.training.run import train

    trainers = []
    original_init = trainer_module.STSFTTrainer.__init__


    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        trainers.append(self)


    trainer_module.STSFTTrainer.__init__ = recording_init
    data_config, model_config, sft_config = parse_recipe(train_dataclasses(), sys.argv[1:])
    output = train(data_config, model_config, sft_config)
    trainer = trainers[-1]
    named = [(name, p) for name, p in trainer.model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    if getattr(trainer, "is_deepspeed_enabled", False) and any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    else:
        import contextlib

        gathered = contextlib.nullcontext()
    digests = {}
    with gathered:
        for name, p in named:
            values = p.detach().cpu().to(torch.float64)
            digests[name] = {"sha256": hashlib.sha256(values.numpy().tobytes()).hexdigest(),
                             "sum": values.sum().item(), "numel": values.numel()}
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    report = {"rank": rank, "process_index": sft_config.process_index,
              "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
              "args_world_size": sft_config.world_size, "global_step": trainer.state.global_step,
              "deepspeed": bool(getattr(trainer, "is_deepspeed_enabled", False)), "params": digests}
    Path(output, f"rank{rank}.json").write_text(json.dumps(report))
''')


@pytest.fixture(scope="module")
def tiny_dir(tiny_backbone_dir):
    return tiny_backbone_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(config: str, tiny_dir: Path, tmp_path: Path, recipe: Path = SMOKE,
           extra: tuple[str, ...] = ()) -> tuple[Path, list[dict]]:
    """``accelerate launch --config_file recipes/accelerate/CONFIG.yaml --num_processes 2`` of the wrapper on
    ``recipe`` (the smoke recipe; 2 steps, a checkpoint at step 2) with ``extra`` flags; returns the output folder and
    the two rank reports."""
    wrapper = tmp_path / "sft_report.py"
    wrapper.write_text(WRAPPER)
    output = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)  # under DeepSpeed it silently falls back to DDP (recipes/accelerate/*.yaml)
    command = [str(ACCELERATE), "launch", "--config_file", str(ROOT / "recipes" / "accelerate" / f"{config}.yaml"),
               "--num_processes", "2", "--main_process_port", str(free_port()), str(wrapper), str(recipe),
               "--model_name_or_path", str(tiny_dir), "--output_dir", str(output),
               "--dataset_cache_dir", str(tmp_path / "built"), "--report_to", "none",
               "--max_steps", "2", "--save_steps", "2", "--per_device_train_batch_size", "2", *extra]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    reports = [json.loads(path.read_text()) for path in sorted(output.glob("rank*.json"))]
    assert len(reports) == 2, (sorted(p.name for p in output.iterdir()), result.stderr[-4000:])
    return output, reports


def check_ranks(reports: list[dict], deepspeed: bool) -> None:
    """Two distinct ranks in a world of 2, both at step 2, with the same trainable parameters."""
    assert sorted(r["rank"] for r in reports) == [0, 1]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [r["args_world_size"] for r in reports] == [2, 2]
    assert [r["global_step"] for r in reports] == [2, 2]
    assert [r["deepspeed"] for r in reports] == [deepspeed, deepspeed]
    first, second = (r["params"] for r in reports)
    assert first and first.keys() == second.keys()
    assert any("lora_" in name for name in first) and any("st_" in name or "head" in name for name in first)
    assert all(p["numel"] > 0 for p in first.values())  # gathered, not ZeRO-3's empty local shards
    assert first == second


def check_saved(folder: Path, report: dict) -> None:
    """``folder`` (the final output, or the step-2 checkpoint) reloads with ``load_forecaster`` to every trained
    parameter of the run (under ZeRO-3: the gathered weights, not a rank's shard)."""
    model, _ = load_forecaster(folder)
    loaded = dict(model.named_parameters())
    assert set(report["params"]) <= set(loaded), sorted(set(report["params"]) - set(loaded))[:5]
    for name in report["params"]:
        expected = report["params"][name]["sum"]
        actual = loaded[name].detach().to(torch.float64).sum().item()
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-6), name


def test_ddp_two_processes(tiny_dir, tmp_path):
    output, reports = launch("ddp", tiny_dir, tmp_path)
    check_ranks(reports, deepspeed=False)
    checkpoint = output / "checkpoint-2"
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "st_modules.safetensors").is_file()
    check_saved(output, reports[0])
    check_saved(checkpoint, reports[0])  # the last step's checkpoint holds the same weights


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_two_processes(stage, tiny_dir, tmp_path):
    output, reports = launch(f"zero{stage}", tiny_dir, tmp_path)
    check_ranks(reports, deepspeed=True)
    checkpoint = output / "checkpoint-2"
    assert (checkpoint / "global_step2").is_dir(), sorted(p.name for p in checkpoint.iterdir())
    assert not (checkpoint / "optimizer.pt").exists()  # DeepSpeed's own optimizer state, not DDP's
    assert (checkpoint / "st_modules.safetensors").is_file()
    check_saved(output, reports[0])
    check_saved(checkpoint, reports[0])  # the last step's checkpoint holds the same weights


def test_ddp_two_processes_of_the_stvlm_recipe(tmp_path):
    """recipes/stvlm_sft.yaml (rendered images, fusion, the vision tower trained) on 2 processes, with a tiny LLaVA
    in place of the embedded VLM and the small synthetic city in place of nyc-taxi."""
    from test_vlm_training import save_tiny_vlm

    vlm_dir = save_tiny_vlm("llava", tmp_path / "tiny_llava")
    extra = ("--dataset_names", "synthetic-small", "--dataset_start", "null", "--dataset_end", "null",
             "--coordinate_dim", "8", "--window_sample", "4", "--image_size", "32", "--model_num_layers", "null",
             "--st_encoder_init", "null", "--st_encoder_freeze", "false", "--head_skip_init", "closed",
             "--st_fusion_heads", "2")
    output, reports = launch("ddp", vlm_dir, tmp_path, ROOT / "recipes" / "stvlm_sft.yaml", extra)
    check_ranks(reports, deepspeed=False)
    trained = reports[0]["params"]
    assert any(name.startswith("st_fusion.") for name in trained)
    assert any(".vision_tower." in name for name in trained)  # vision_tower_train: full
    check_saved(output, reports[0])
