"""Model cards and pushes of saved st_instruct forecasters to the Hugging Face Hub.

A saved forecaster is one directory: the PEFT adapter (or backbone weights), the ST encoder / projector / head
weights (safetensors), the tokenizer with its special tokens, the recipe, the data profile and a model card.

The card (``README.md``, :func:`write_model_card`) is built with ``huggingface_hub``'s ``ModelCard`` /
``ModelCardData``: the base model as a Hub id (:func:`~st_instruct.models.backbones.hub_model_id`), ``library_name``
(``peft`` for an adapter, whose ``base_model_relation`` is ``adapter``; ``st_instruct`` for the other formats),
tags, the training datasets and a ``model-index`` holding the forecaster's metrics of every evaluation recorded in
``st_evaluations.json``. ``st-instruct evaluate`` records its report there (:func:`record_evaluation`) and the card
is rewritten, so its ``model-index`` always equals the ``results.json`` of those evaluations. The body says what
the model is, the evaluation protocol and the controls beside it (every table shows the same model without its LLM
where one was scored), how to use it (a snippet that runs once the folder is on the Hub: a test runs it against the
local Hub stand-in), the training recipe and the full results tables.

``push_to_hub`` uploads the directory as it is, after checking that it is complete; only the card's usage snippet
gets the repo id written in (:data:`REPO_PLACEHOLDER`). A push only reads the directory: whatever fails (no token,
rejected token, no network), nothing there changes. ``push_to_hub: true`` in a recipe pushes through the same
function once the final folder is complete (:func:`st_instruct.training.run.train`), so both push the same files.

The endpoint is ``endpoint=`` if given, else ``$HF_ENDPOINT`` read at call time, else huggingface_hub's
default. ``huggingface_hub`` reads ``HF_ENDPOINT`` once, at import, into ``constants.ENDPOINT``; reading
the variable again here means a value set later (by a test, or a notebook) is honoured.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from st_instruct.evaluation.metrics import METRICS
from st_instruct.evaluation.report import format_results_table, protocol_lines
from st_instruct.model_dir import (
    EVALUATIONS_FILE,
    LOCK_FILE,
    MODEL_ROW,
    read_evaluations,
    read_folder_json,
    read_recipe,
)

# Glob patterns that must each match a file at the top of a saved forecaster directory.
REQUIRED_FILES: tuple[str, ...] = ("README.md", "st_forecaster_config.json", "*.safetensors")
CARD_TAGS = ["time-series-forecasting", "spatio-temporal", "st_instruct"]
REPO_PLACEHOLDER = "<hub-repo-id>"  # in the local card's snippet; a push writes the repo id in its place
USAGE_SNIPPET = """```python
from st_instruct import load_forecaster
from st_instruct.data.loaders import get_dataset

forecaster = load_forecaster("{source}")  # a Hub repo id, or the path of this folder
data = get_dataset("{dataset}")  # {data_note}
last = slice(-forecaster.history, None)  # the last `history` steps: [L, N, C] raw values and their timestamps
times = None if data.time_index() is None else data.time_index()[last]
result = forecaster.forecast(data.values[last], times)
print(result.to_frame().head())  # forecasts in original units: one row per (window, time, node), a column per channel
```"""


class HubError(OSError):
    """A push that could not be made (incomplete directory, no or rejected token, no network); says what to do."""


def record_evaluation(directory: str | Path, report: dict[str, Any]) -> Path:
    """Record ``report`` (``st-instruct evaluate``'s, as written to ``results.json``) in ``directory``'s
    ``st_evaluations.json`` -- replacing an earlier one of the same dataset, split and protocol -- and rewrite the
    model card, whose ``model-index`` then holds it. Returns the card's path.

    Several evaluations of one model may run at once (other datasets, protocols), each ending here: the read, the
    write and the card's rewrite happen under a lock on the folder (:data:`LOCK_FILE`), so none drops another's
    record, and each file is replaced with one rename, so a reader sees the old file or the new, never a part."""
    from filelock import FileLock

    from st_instruct.outputs import write_text_atomic

    directory = Path(directory)
    key = (report.get("dataset"), report.get("split_name", "test"), report.get("protocol_version"))
    with FileLock(directory / LOCK_FILE):
        kept = [r for r in read_evaluations(directory)
                if (r.get("dataset"), r.get("split_name", "test"), r.get("protocol_version")) != key]
        write_text_atomic(directory / EVALUATIONS_FILE, json.dumps([*kept, report], indent=1, allow_nan=False) + "\n")
        return write_model_card(directory)


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not Path(name).expanduser().exists() and not name.startswith((".", "/", "~"))


def write_model_card(directory: str | Path, recipe: dict[str, Any] | None = None) -> Path:
    """Write ``directory/README.md`` (module docstring) from what the folder holds: ``st_backbone.json``,
    ``recipe`` (default: the folder's ``recipe.yaml``, or its parent's for a checkpoint), ``few_shot.json`` and the
    evaluations of ``st_evaluations.json``. Returns the path. The card is replaced with one rename (never seen half
    written); :func:`record_evaluation` holds the folder's lock around it."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from st_instruct.models.backbones import hub_model_id
    from st_instruct.outputs import final_path, write_text_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recipe = recipe if recipe is not None else read_recipe(directory)
    backbone = read_folder_json(directory, "st_backbone.json") or {}
    few_shot = read_folder_json(directory, "few_shot.json")
    evaluations = read_evaluations(directory)
    kind = backbone.get("format")
    name = backbone.get("model_name_or_path") or (recipe or {}).get("model_name_or_path") or ""
    base = hub_model_id(name) if name else ""
    datasets = list((recipe or {}).get("dataset_names") or [])
    if few_shot and few_shot["dataset"] not in datasets:
        datasets.append(few_shot["dataset"])
    control = (recipe or {}).get("control", "none")
    name = final_path(directory).name  # a folder being saved is a staged sibling: the card names the final one
    title = f"{name}: {'the ' + control.replace('_', '-') + ' control of ' if control != 'none' else ''}" \
            f"an st_instruct forecaster on {base or 'no backbone'}"
    results = []
    for report in evaluations:
        row = report.get("results", {}).get(MODEL_ROW, {})
        for metric in METRICS:
            if row.get(metric) is not None:
                results.append(EvalResult(
                    task_type="time-series-forecasting", task_name="spatio-temporal forecasting",
                    dataset_type=report["dataset"], dataset_name=report["dataset"],
                    dataset_split=report.get("split_name", "test"), dataset_config=report.get("protocol_version"),
                    metric_type=metric.lower(), metric_name=metric, metric_value=row[metric]))
    extra = {"base_model_relation": "adapter"} if kind == "adapter" and _is_hub_id(base) else {}
    data = ModelCardData(
        library_name="peft" if kind == "adapter" else "st_instruct",
        base_model=base if _is_hub_id(base) else None, datasets=datasets or None,
        tags=[*CARD_TAGS, *(["lora", "peft"] if kind == "adapter" else [])], pipeline_tag="time-series-forecasting",
        model_name=name if results else None, eval_results=results or None, **extra)
    body = [f"# {title}", "", *_what_section(base, name, datasets, kind, control, recipe, few_shot),
            "## How to use", "", *_usage_section(datasets), "## Evaluation", "", *_evaluation_section(evaluations),
            "## Training recipe", ""]
    if recipe:
        body += ["```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", "",
                 "Reproduce with `st-instruct train recipe.yaml` (several processes: `--num_processes N "
                 "--accelerate_config zero2`).", ""]
    else:
        body += ["(not recorded)", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
    return write_text_atomic(directory / "README.md", str(card))


def _what_section(base: str, name: str, datasets: list[str], kind: str | None, control: str,
                  recipe: dict[str, Any] | None, few_shot: dict[str, Any] | None) -> list[str]:
    embedded = f" (run here as `{name}`, its embedded Q4_1 GGUF copy, dequantised)" if name and name != base else ""
    lines = [f"A spatio-temporal forecaster built with st_instruct on the language model `{base}`{embedded}, trained "
             f"on {', '.join(f'`{d}`' for d in datasets) or 'no named dataset'}. An ST encoder and projector put the "
             "history into the LLM at the `<st_his>` tokens, and a regression head reads the hidden states at the "
             "`<st_pre>` tokens: a forecast is one forward pass, no text generation.", ""]
    if kind == "adapter":
        lines += ["The backbone is stored as a PEFT adapter; it was trained on a backbone that st_instruct changed "
                  "(see `st_backbone.json`: layers kept, ST tokens added), so load it with `st_instruct` as below. "
                  "Plain `AutoPeftModelForCausalLM` refuses it rather than build a different model.", ""]
    if control != "none" and recipe is not None:
        from st_instruct.configs import ModelConfig
        from st_instruct.training.run import control_card_note

        lines += [control_card_note(ModelConfig(model_name_or_path=recipe.get("model_name_or_path"),
                                                control=control), recipe.get("seed", 0)), ""]
    if few_shot:
        lines += [f"Few-shot: fine-tuned from `{few_shot['source_model']}` (pre-trained on "
                  f"{', '.join(few_shot['pretrained_on'])}) on the first {few_shot['train_windows']} training windows "
                  f"({few_shot['fraction']:g}) of `{few_shot['dataset']}` for {few_shot['steps']} steps.", ""]
    if recipe and recipe.get("image_kind", "none") != "none":
        from st_instruct.data.render import describe_images

        lines += ["## What the image shows", "", describe_images(recipe["image_kind"], recipe.get("image_size"),
                                                                 recipe.get("image_panels", 4),
                                                                 recipe.get("image_channel", 0)), ""]
    return lines


def _usage_section(datasets: list[str]) -> list[str]:
    from st_instruct.data.registry import is_registered_name

    dataset = datasets[-1] if datasets else "synthetic"
    note = ("the training dataset here (embedded, or from `st-instruct data download`); any [T, N, C] values with "
            "their timestamps will do" if is_registered_name(dataset) else
            "a stand-in: use your own [T, N, C] values and timestamps (this model was trained on a file)")
    if not is_registered_name(dataset):
        dataset = "synthetic"
    return [USAGE_SNIPPET.format(source=REPO_PLACEHOLDER, dataset=dataset, data_note=note), "",
            "An input with the training dataset's nodes is completed from the folder's data profile "
            "(`st_data_profile.json`: node names, coordinates, graph, units, scaling); another node set is forecast "
            "zero-shot. From the command line: `st-instruct predict --model REPO_OR_DIR --input FILE --output "
            "OUT.csv`.", ""]


def _evaluation_section(evaluations: list[dict[str, Any]]) -> list[str]:
    if not evaluations:
        return ["(not evaluated yet: `st-instruct evaluate --model DIR --dataset NAME --train-controls no_llm` "
                "scores it beside its no-LLM control and the baselines, and records the results here)", ""]
    lines = []
    for report in evaluations:
        rows = report.get("results", {})
        controls = [row for row in rows if row.startswith(f"{MODEL_ROW}_")]
        lines += [f"### `{report.get('dataset')}`, {report.get('split_name', 'test')} split: "
                  f"{report.get('protocol', 'in-domain')}", "",
                  f"History {report.get('history')} -> horizon {report.get('horizon')} steps, "
                  f"{report.get('windows', {}).get(report.get('split_name', 'test'), '?')} windows, channels "
                  f"{report.get('channels')}; lower is better; n/a: nothing observed.", "",
                  *protocol_lines(report),
                  f"- **Controls**: {', '.join(f'`{c}`' for c in controls)} (the same recipe, data and budget, "
                  "only `control` changed)" if controls else
                  "- **Controls**: none scored; the LLM's contribution is unmeasured here "
                  "(`--train-controls no_llm`)", "",
                  _metrics_table(rows), ""]
    return lines


def _metrics_table(results: dict[str, Any]) -> str:
    # format_results_table wants every metric as a float (NaN prints as n/a)
    return format_results_table({model: {**r, **{m: _nan_if_none(r.get(m)) for m in METRICS}}
                                 for model, r in results.items() if "skipped" not in r})


def _nan_if_none(value: Any) -> float:
    return math.nan if value is None else float(value)


def dataset_schema_table() -> str:
    """The sample schema table of :mod:`st_instruct.data.builder`'s docstring (one source for code and cards)."""
    from st_instruct.data import builder

    doc = builder.__doc__ or ""
    start = doc.index("==================")
    end = doc.index("\n\n", doc.rindex("==================  ====="))
    return doc[start:end]


def write_dataset_card(directory: str | Path, config: Any, dataset_dict: Any) -> Path:
    """Write ``directory/README.md`` for an instruction dataset built by ``st-instruct build-data`` (``DatasetCard``):
    the samples per split, the source datasets (shape, step, channels with units), the schema with this build's
    shapes, the scaling -- ``history`` / ``target`` are z-scored, and how to get original units back -- the prompt
    template and its version, and the recipe's data keys. Returns the path."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from st_instruct.data.loaders import load_series
    from st_instruct.data.prompts import load_template

    series = load_series(config)
    template = load_template(config.template)
    sizes = {split: len(ds) for split, ds in dataset_dict.items()}
    channels = series[0].num_channels if series else 0
    nodes = "1 (one node per sample)" if config.granularity == "node" else "the dataset's (sampled) nodes"
    scaling = ("each dataset's **train-split** mean and standard deviation per channel" if config.scaling == "train"
               else "the mean and standard deviation of the sample's **own history window** (strict zero-shot)")
    data = DatasetCardData(pretty_name=f"st_instruct instruction data: {', '.join(config.dataset_names)}",
                           task_categories=["time-series-forecasting"],
                           tags=[*CARD_TAGS, "instruction-tuning", f"granularity-{config.granularity}"],
                           size_categories=[_size_category(sum(sizes.values()))])
    body = [f"# {', '.join(config.dataset_names)}: {config.history} -> {config.horizon} step instruction samples", "",
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
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _size_category(count: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if count < limit:
            return label
    return "n>1M"


# what a training output folder holds besides the model: checkpoints (optimizer states, several times the
# adapter's size), TensorBoard event files and the evaluation lock stay local
PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", "runs/**", LOCK_FILE]


def check_model_dir(directory: str | Path) -> Path:
    """``directory`` as a Path if it holds every ``REQUIRED_FILES`` pattern and no symlink that leaves it
    (:func:`_check_symlinks`); else ``HubError`` naming the gaps or the link."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HubError(f"{directory}: no such directory; pass the output directory of a trained forecaster")
    missing = [pattern for pattern in REQUIRED_FILES if not any(p.is_file() for p in directory.glob(pattern))]
    if missing:
        raise HubError(f"{directory} is not a complete st_instruct model: missing {', '.join(missing)} "
                       f"(expected {', '.join(REQUIRED_FILES)}); nothing was uploaded")
    _check_symlinks(directory)
    return directory


def _check_symlinks(directory: Path) -> None:
    """Refuse a symlink anywhere in ``directory`` that resolves outside it, loops or leads nowhere: a push uploads
    what a file link points to, so a link out of the folder would publish a file from elsewhere on this machine.
    Links that stay inside are allowed: a file link uploads its target's bytes under its own name, and a folder
    link is not descended into (``rglob`` does not follow it), so its files are pushed once, from where they are."""
    root = directory.resolve()
    for link in sorted(p for p in directory.rglob("*") if p.is_symlink()):
        try:
            target = Path(os.path.realpath(link, strict=True))
        except OSError as err:
            problem = ("is a symlink loop" if err.errno == errno.ELOOP else
                       f"is a symlink to {os.readlink(link)}, which does not exist")
            raise HubError(f"{link} {problem}; remove it or replace it by the file it should be; nothing was "
                           "uploaded") from err
        if not target.is_relative_to(root):
            raise HubError(f"{link} is a symlink to {target}, outside the model folder {directory}: a push uploads "
                           "only the folder's own files; replace the link by a copy of its target (cp -L) or remove "
                           "it; nothing was uploaded")


def push_to_hub(directory: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
                endpoint: str | None = None, commit_message: str | None = None) -> str:
    """Upload the saved forecaster in ``directory`` to the Hub model repo ``repo_id``; return the commit URL.

    The repo is created if needed (``repo_id`` without a namespace goes to the token's user); ``checkpoint-N``
    folders and TensorBoard ``runs/`` are not uploaded (:data:`PUSH_IGNORE`), and the card's usage snippet gets
    ``repo_id`` in place of :data:`REPO_PLACEHOLDER`. The token is ``token``, else ``$HF_TOKEN``, else the one saved
    by ``hf auth login``. Files unchanged since the last push are not committed again. Raises ``HubError``
    (incomplete directory, no token, token rejected, Hub unreachable); the directory is only ever read.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
    from huggingface_hub.utils import filter_repo_objects

    directory = check_model_dir(directory)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    token = token or os.environ.get("HF_TOKEN") or get_token()
    unchanged = f"nothing was uploaded and {directory} is unchanged"
    if not token:
        raise HubError(f"no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login`; {unchanged}")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        if "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        api.create_repo(repo_id, private=private, exist_ok=True)
        files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
        operations = []
        for name in filter_repo_objects(files, ignore_patterns=PUSH_IGNORE):
            content: Any = directory / name
            if name == "README.md":
                content = content.read_text().replace(REPO_PLACEHOLDER, repo_id).encode()
            operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
        info = api.create_commit(repo_id=repo_id, operations=operations,
                                 commit_message=commit_message or f"Upload st_instruct forecaster {directory.name}")
    except Exception as err:
        hub_error = _hub_error(err, endpoint, repo_id, f"{directory} is unchanged")
        if hub_error is None:
            raise
        raise hub_error from err
    return str(info.commit_url)


def _hub_error(err: Exception, endpoint: str, repo_id: str, unchanged: str) -> HubError | None:
    """A ``HubError`` for a failure the user can act on (network, offline mode, token, refusal); else None."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    cause: BaseException | None = err
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:  # the upload may wrap the failure of one of its threads
        seen.add(id(cause))
        if isinstance(cause, OfflineModeIsEnabled):
            return HubError(f"cannot reach {endpoint}: offline mode is on (HF_HUB_OFFLINE=1); unset it to push; "
                            f"{unchanged}")
        if isinstance(cause, httpx2.TransportError):
            return HubError(f"cannot reach the Hub at {endpoint} ({type(cause).__name__}: {cause}); check the "
                            f"network or HF_ENDPOINT and push again; {unchanged}")
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            status = cause.response.status_code
            if status in (401, 403):
                return HubError(f"the Hub at {endpoint} rejected the token ({status}) for {repo_id}: use a token "
                                f"with write access to that namespace; {unchanged}")
            return HubError(f"the Hub at {endpoint} refused the push to {repo_id} ({status}): {cause}; {unchanged}")
        cause = cause.__cause__ or cause.__context__
    return None
