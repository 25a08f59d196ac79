"""The dataset card of an instruction dataset built by ``st-instruct build-data`` (``README.md``, ``DatasetCard``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import DatasetCard, DatasetCardData

from st_instruct.data.loaders import load_series
from st_instruct.samples import builder
from st_instruct.samples.prompts import load_template

CARD_TAGS = ["time-series-forecasting", "spatio-temporal", "st_instruct"]  # of model and dataset cards alike


def dataset_schema_table() -> str:
    """The sample schema table of :mod:`st_instruct.samples.builder`'s docstring (one source for code and cards)."""
    doc = builder.__doc__ or ""
    start = doc.index("==================")
    end = doc.index("\n\n", doc.rindex("==================  ====="))
    return doc[start:end]


def write_dataset_card(directory: str | Path, config: Any, dataset_dict: Any) -> Path:
    """Write ``directory/README.md`` for an instruction dataset built by ``st-instruct build-data`` (``DatasetCard``):
    the samples per split, the source datasets (shape, step, channels with units), the schema with this build's
    shapes, the scaling -- ``history`` / ``target`` are z-scored, and how to get original units back -- the prompt
    template and its version, and the recipe's data keys. Returns the path."""
    series = load_series(config)
    template = load_template(config.template)
    sizes = {split: len(ds) for split, ds in dataset_dict.items()}
    channels = series[0].num_channels if series else 0
    nodes = "1 (one node per sample)" if config.granularity == "node" else "the dataset's (sampled) nodes"
    scaling = ("each dataset's **train-split** mean and standard deviation per channel" if config.scaling == "train"
               else "the mean and standard deviation of the sample's **own history window** (strict zero-shot)")
    names = ", ".join(entry.name for entry in config.corpus())
    data = DatasetCardData(pretty_name=f"st_instruct instruction data: {names}",
                           task_categories=["time-series-forecasting"],
                           tags=[*CARD_TAGS, "instruction-tuning", f"granularity-{config.granularity}"],
                           size_categories=[_size_category(sum(sizes.values()))])
    body = [f"# {names}: {config.history} -> {config.horizon} step instruction samples", "",
            "Chat samples with spatio-temporal arrays, built by `st-instruct build-data` (st_instruct). Each sample "
            "is one forecasting window: a prompt naming the dataset, city, period and nodes, with a `<st_his>` token "
            "per node where a forecaster puts its ST encoder's embedding of the history, and an answer with one "
            "`<st_pre>` token per node whose hidden state its regression head reads.", "",
            "## Splits", "", *(f"- `{split}`: {count} samples" for split, count in sizes.items()), "",
            "## Source data", ""]
    for data_ in series:
        units = ", ".join(f"{c} ({u})" if u else c for c, u in zip(data_.channels, data_.units, strict=True))
        body.append(f"- `{data_.name}` ({data_.city or 'no city given'}): [T, N, C] = {list(data_.values.shape)}, "
                    f"step {data_.freq or 'unknown'}, channels {units}")
    body += ["", "## Scaling", "",
             f"`history` and `target` are **z-scored**, not in original units: scaled with {scaling}, missing values "
             "0 (see `history_mask` / `target_mask`). Original units: `value = scaled * scaler_std + scaler_mean` "
             "(per sample, per channel).", "",
             "## Schema", "",
             f"In this build: L = {config.history} history steps, P = {config.horizon} horizon steps, C = {channels} "
             f"channel(s), N' = {nodes}, coordinates `{config.coordinates}`"
             f"{f' (K = {config.coordinate_dim})' if config.coordinates == 'laplacian' else ''}.", "",
             "```", dataset_schema_table(), "```", "",
             "## Prompt template", "",
             f"`{template.spec}` (name `{template.name}`, version {template.version}); the rendered turns are in "
             "`messages`. Released templates are never edited: a change is a new version.", "",
             "## Recipe (data keys)", "",
             "```yaml", yaml.safe_dump(_recipe_data_keys(config), sort_keys=False).rstrip(), "```", ""]
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
    path = Path(directory) / "README.md"
    card.save(path)
    return path


def _recipe_data_keys(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _size_category(count: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if count < limit:
            return label
    return "n>1M"
