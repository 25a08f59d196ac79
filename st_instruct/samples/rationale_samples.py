"""AirGPT's student samples: instruction samples whose answer is a rationale followed by the prediction tokens.

AirGPT (Li, Chen, Xu, Information Fusion 2025) distils a teacher's label-constrained rationale into the student
forecaster: the assistant's answer is the rationale (LM loss) followed by the answer frame ``<st_start><st_pre>...
<st_end>`` (regression loss at the ``<st_pre>`` tokens). :func:`add_rationales` does that to a built dataset
(:func:`~st_instruct.samples.builder.build_dataset` calls it when ``DataConfig.rationale_teacher`` is set):

- only training samples get a rationale, and only ``rationale_fraction`` of them (drawn with ``sample_seed``): the
  others keep the direct answer, so the single-pass forecast without a rationale (validation / test samples are
  direct) stays in distribution;
- the teacher (:mod:`st_instruct.samples.rationales`) reads the window from the dataset with *all* its channels (the
  weather the recipe may leave out of the forecast, e.g. ``dataset_channels: [PM2.5]``); the rationale is about the
  recipe's first channel;
- ``rationale_teacher: analytic`` is the deterministic teacher; any other value names a causal LM (``smollm2-135m``,
  a folder, a Hub id) whose rejected texts are replaced by the analytic teacher's; generations are cached by content
  hash beside the built datasets (``<built cache root>/../rationales``: a rebuild regenerates nothing) and the report
  (acceptance per reason) is printed.

Two columns are added to every split: ``rationale`` (the text, ``""`` for a direct answer) and
``rationale_source`` (the teacher that wrote it: ``analytic``, ``llm:<model>``, ``""``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from datasets import Value

from st_instruct.data.loaders import load_series
from st_instruct.samples.rationales.build import build_rationales
from st_instruct.samples.rationales.facts import window_facts
from st_instruct.samples.rationales.teachers import AnalyticTeacher

RATIONALE_SEPARATOR = "\n"  # between the rationale and the answer frame in the assistant's answer
RATIONALE_COLUMNS = ("rationale", "rationale_source")


def student_answer(rationale: str, answer: str) -> str:
    """The assistant's answer of a student sample: ``rationale``, the separator, then the direct ``answer``."""
    return f"{rationale}{RATIONALE_SEPARATOR}{answer}"


def add_rationales(built: Any, series: list, config: Any, teacher: Any, cache_dir: Path, progress: bool = True
                   ) -> Any:
    """``built`` (a ``DatasetDict`` of :func:`~st_instruct.samples.builder.build_dataset`) with the rationale columns,
    and the answers of the chosen training samples rewritten as :func:`student_answer` (module docstring), written by
    ``teacher`` (the one ``rationale_teacher`` names) and cached in ``cache_dir``. ``series``: the recipe's datasets
    as the builder loaded them (their names and slicing)."""
    if not 0 < config.rationale_fraction <= 1:
        raise ValueError(f"rationale_fraction must be in (0, 1], found {config.rationale_fraction}")
    full = {data.name: data for data in load_series(config, every_channel=True)}
    target = {data.name: data.channels[0] for data in series}
    train = built["train"]
    rng = np.random.default_rng((config.sample_seed, 12))
    chosen = np.sort(rng.choice(len(train), size=int(round(config.rationale_fraction * len(train))), replace=False))
    rows = train.select_columns(["dataset", "window_start", "node_index"]).select(chosen)
    facts = [window_facts(full[row["dataset"]], row["window_start"], config.history, config.horizon,
                          row["node_index"], target[row["dataset"]]) for row in rows]
    report = build_rationales(facts, teacher, cache_dir=cache_dir,
                              fallback=None if isinstance(teacher, AnalyticTeacher) else AnalyticTeacher(),
                              progress=progress)
    print(f"rationales ({teacher.name} teacher, {len(facts)} of {len(train)} training samples): {report.summary()}")
    texts = dict(zip(chosen.tolist(), report.texts, strict=True))
    sources = dict(zip(chosen.tolist(), report.sources, strict=True))

    def rewrite(sample: dict, index: int) -> dict:
        text = texts.get(index)
        if text is None:
            return {**sample, "rationale": "", "rationale_source": ""}
        messages = [dict(turn) for turn in sample["messages"]]
        last = max(i for i, turn in enumerate(messages) if turn["role"] == "assistant")
        messages[last]["content"] = student_answer(text, messages[last]["content"])
        return {**sample, "messages": messages, "rationale": text, "rationale_source": sources[index]}

    def empty(sample: dict) -> dict:
        return {**sample, "rationale": "", "rationale_source": ""}

    features = train.features.copy()
    features.update({column: Value("string") for column in RATIONALE_COLUMNS})
    out = {"train": train.map(rewrite, with_indices=True, features=features, desc="rationales")}
    for split in built:
        if split != "train":
            out[split] = built[split].map(empty, features=features)
    return type(built)(out)
