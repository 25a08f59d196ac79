"""Evaluation records (``st_instruct.protocols.records.record_evaluation``) under the model folder's lock: evaluations
recorded by several processes at once are all kept, card included; a reader never sees a part of a file; the lock file
is not pushed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file

from st_instruct.hub import push_to_hub
from st_instruct.model_dir import EVALUATIONS_FILE, LOCK_FILE, read_evaluations
from st_instruct.protocols.records import record_evaluation

PROCESSES, RECORDS = 2, 40
# One process's share: wait until every process is ready (a file each in the barrier folder), then record RECORDS
# evaluations, each of its own dataset, so every one must be kept.
WORKER = """
import sys, time
from pathlib import Path
from test_evaluation_records import report
from st_instruct.protocols.records import record_evaluation

folder, barrier, tag, processes, records = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:])
(barrier / tag).touch()
while len(list(barrier.iterdir())) < processes:
    time.sleep(0.001)
for index in range(records):
    record_evaluation(folder, report(f"{tag}-{index}"))
"""


def report(dataset: str) -> dict:
    """A report as ``st-instruct evaluate`` records it, of ``dataset``."""
    return {"dataset": dataset, "history": 12, "horizon": 12, "split_name": "test", "protocol": "in-domain",
            "protocol_version": "in-domain/1", "windows": {"test": 3}, "channels": ["a"],
            "results": {"st_forecaster": {"MAE": 3.25, "RMSE": 5.5, "MAPE": 0.21, "WAPE": 0.2}}}


def test_concurrent_records_are_all_kept_and_never_seen_half_written(tmp_path):
    """Two processes record 40 evaluations each into one folder, started together: all 80 are in
    st_evaluations.json and in the card's model-index, and every read of either file meanwhile was complete."""
    folder, barrier = tmp_path / "model", tmp_path / "barrier"
    folder.mkdir()
    barrier.mkdir()
    tags = [f"p{i}" for i in range(PROCESSES)]
    logs = {tag: (tmp_path / f"{tag}.log").open("w") for tag in tags}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(folder), str(barrier), tag, str(PROCESSES),
                                 str(RECORDS)], cwd=Path(__file__).parent, stderr=logs[tag]) for tag in tags]
    reads = 0
    while any(worker.poll() is None for worker in workers):
        if (folder / EVALUATIONS_FILE).is_file():
            assert isinstance(json.loads((folder / EVALUATIONS_FILE).read_text()), list)
            reads += 1
        if (folder / "README.md").is_file():
            card = (folder / "README.md").read_text()
            assert card.endswith("## Training recipe\n\n(not recorded)\n"), card[-200:]  # its last section
            reads += 1
        time.sleep(0.001)
    for tag, worker in zip(tags, workers, strict=True):
        logs[tag].close()
        assert worker.returncode == 0, (tmp_path / f"{tag}.log").read_text()
    assert reads > 0

    expected = {f"{tag}-{index}" for tag in tags for index in range(RECORDS)}
    assert {r["dataset"] for r in read_evaluations(folder)} == expected
    assert len(read_evaluations(folder)) == PROCESSES * RECORDS
    card = ModelCard.load(folder / "README.md")
    assert {result.dataset_name for result in card.data.eval_results} == expected
    assert len(card.data.eval_results) == PROCESSES * RECORDS * 4  # MAE, RMSE, MAPE, WAPE of each


def test_the_lock_file_stays_local(tmp_path, hub_server):
    """The lock file a record leaves in the folder is not pushed; the card and the records are."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "st_forecaster_config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(folder / "st_modules.safetensors"))
    record_evaluation(folder, report("synthetic-small"))
    assert (folder / LOCK_FILE).is_file()

    push_to_hub(folder, "user/recorded", token=hub_server.token)
    pushed = hub_server.repo_files("user/recorded")
    assert LOCK_FILE not in pushed
    assert {"README.md", EVALUATIONS_FILE, "st_modules.safetensors"} <= set(pushed)
