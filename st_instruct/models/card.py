"""The model card of a saved forecaster (``README.md``), built with ``huggingface_hub``'s ``ModelCard``.

Its metadata: the base model as a Hub id (:func:`~st_instruct.models.backbones.hub_model_id`), ``library_name``
(``peft`` for an adapter, whose ``base_model_relation`` is ``adapter``; ``st_instruct`` for the other formats), tags,
the training datasets and a ``model-index`` holding the forecaster's metrics of every recorded evaluation. Its body
says what the model is (a control says first which part of the backbone it does not use), how to use it (a snippet
that runs once the folder is on the Hub: a test runs it against the local Hub stand-in), the evaluations with their
protocol and controls, and the training recipe. Every save writes one (training, few-shot); evaluations are rendered
by :mod:`st_instruct.protocols.records` and handed in, so this module knows nothing of training or evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from st_instruct.configs import ModelConfig, corpus_names
from st_instruct.data.registry import is_registered_name
from st_instruct.model_dir import BACKBONE_FILE, CARD_FILE, FEW_SHOT_FILE, read_folder_json, read_recipe
from st_instruct.models.backbones import hub_model_id
from st_instruct.outputs import final_path, write_text_atomic
from st_instruct.samples.dataset_card import CARD_TAGS
from st_instruct.samples.render import describe_images

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
NOT_EVALUATED = ["(not evaluated yet: `st-instruct evaluate --model DIR --dataset NAME --train-controls no_llm` "
                 "scores it beside its no-LLM control and the baselines, and records the results here)", ""]


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not Path(name).expanduser().exists() and not name.startswith((".", "/", "~"))


def write_model_card(directory: str | Path, recipe: dict[str, Any] | None = None,
                     evaluation: list[str] | None = None, eval_results: list[EvalResult] | None = None) -> Path:
    """Write ``directory/README.md`` (module docstring) from what the folder holds -- ``st_backbone.json``,
    ``recipe`` (default: the folder's ``recipe.yaml``, or its parent's for a checkpoint), ``few_shot.json`` -- and
    what it is handed: the ``evaluation`` section's lines and the ``eval_results`` of its model-index
    (:func:`st_instruct.protocols.records.record_evaluation` renders both from ``st_evaluations.json``; without them
    the card says the model is not evaluated yet). Returns the path. The card is replaced with one rename (never
    seen half written)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recipe = recipe if recipe is not None else read_recipe(directory)
    backbone = read_folder_json(directory, BACKBONE_FILE) or {}
    few_shot = read_folder_json(directory, FEW_SHOT_FILE)
    kind = backbone.get("format")
    name = backbone.get("model_name_or_path") or (recipe or {}).get("model_name_or_path") or ""
    base = hub_model_id(name) if name else ""
    datasets = corpus_names((recipe or {}).get("dataset_names") or [], (recipe or {}).get("leave_out"))
    if few_shot and few_shot["dataset"] not in datasets:
        datasets.append(few_shot["dataset"])
    control = (recipe or {}).get("control", "none")
    imputer = (recipe or {}).get("architecture") == "llm4hrs"
    name = final_path(directory).name  # a folder being saved is a staged sibling: the card names the final one
    title = f"{name}: {'the ' + control.replace('_', '-') + ' control of ' if control != 'none' else ''}" \
            f"an st_instruct {'LLM4HRS imputer' if imputer else 'forecaster'} on {base or 'no backbone'}"
    results = eval_results or []
    extra = {"base_model_relation": "adapter"} if kind == "adapter" and _is_hub_id(base) else {}
    data = ModelCardData(
        library_name="peft" if kind == "adapter" else "st_instruct",
        base_model=base if _is_hub_id(base) else None, datasets=datasets or None,
        tags=[*CARD_TAGS, *(["lora", "peft"] if kind == "adapter" else [])], pipeline_tag="time-series-forecasting",
        model_name=name if results else None, eval_results=results or None, **extra)
    body = [f"# {title}", "", *_what_section(base, name, datasets, kind, control, recipe, few_shot),
            "## How to use", "", *_usage_section(datasets), "## Evaluation", "", *(evaluation or NOT_EVALUATED),
            "## Training recipe", ""]
    if recipe:
        body += ["```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", "",
                 "Reproduce with `st-instruct train recipe.yaml` (several processes: `--num_processes N "
                 "--accelerate_config zero2`).", ""]
    else:
        body += ["(not recorded)", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
    return write_text_atomic(directory / CARD_FILE, str(card))


def _what_section(base: str, name: str, datasets: list[str], kind: str | None, control: str,
                  recipe: dict[str, Any] | None, few_shot: dict[str, Any] | None) -> list[str]:
    embedded = f" (run here as `{name}`, its embedded Q4_1 GGUF copy, dequantised)" if name and name != base else ""
    trained_on = ", ".join(f"`{d}`" for d in datasets) or "no named dataset"
    if (recipe or {}).get("architecture") == "llm4hrs":
        return [f"A spatio-temporal imputer (LLM4HRS, Wang et al., IEEE TGRS 2025) built with st_instruct on the "
                f"language model `{base}`{embedded}, trained on {trained_on}: each window's values and observation "
                "mask pass through the frozen attention and MLP blocks forward in time, backward in time and across "
                "locations; only the norms, position embeddings and its own input and output layers were trained. "
                "It returns every entry of a window; `st-instruct predict --task imputation` fills a file's gaps.",
                ""]
    lines = [f"A spatio-temporal forecaster built with st_instruct on the language model `{base}`{embedded}, trained "
             f"on {trained_on}. An ST encoder and projector put the "
             "history into the LLM at the `<st_his>` tokens, and a regression head reads the hidden states at the "
             "`<st_pre>` tokens: a forecast is one forward pass, no text generation.", ""]
    if kind == "attribute":
        lines += ["This is an attribute adapter (PromptST's prompt tuning, Zhang et al., CIKM 2023): it holds only a "
                  "soft prompt and the regression head's output layer, tuned on one attribute over a frozen base "
                  "forecaster that `st_backbone.json` names (`base_forecaster`); `load_forecaster` loads that base "
                  "first (a folder, or the Hub repo it was pushed to).", ""]
    if kind == "adapter":
        lines += ["The backbone is stored as a PEFT adapter; it was trained on a backbone that st_instruct changed "
                  "(see `st_backbone.json`: layers kept, ST tokens added), so load it with `st_instruct` as below. "
                  "Plain `AutoPeftModelForCausalLM` refuses it rather than build a different model.", ""]
    if control != "none" and recipe is not None:
        lines += [control_card_note(ModelConfig(model_name_or_path=recipe.get("model_name_or_path"),
                                                control=control), recipe.get("seed", 0)), ""]
    if few_shot:
        lines += [f"Few-shot: fine-tuned from `{few_shot['source_model']}` (pre-trained on "
                  f"{', '.join(few_shot['pretrained_on'])}) on the first {few_shot['train_windows']} training windows "
                  f"({few_shot['fraction']:g}) of `{few_shot['dataset']}` for {few_shot['steps']} steps.", ""]
    if recipe and recipe.get("image_kind", "none") != "none":
        lines += ["## What the image shows", "", describe_images(recipe["image_kind"], recipe.get("image_size"),
                                                                 recipe.get("image_panels", 4),
                                                                 recipe.get("image_channel", 0)), ""]
    return lines


def _usage_section(datasets: list[str]) -> list[str]:
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


def control_card_note(model_config: ModelConfig, seed: int) -> str:
    """What a control's model card must say first (empty for the forecaster): which part of the named backbone it
    does not use."""
    name = model_config.model_name_or_path
    if model_config.control == "no_llm":
        return (f"**This is the no-LLM control of its recipe** (Tan et al., NeurIPS 2024): `{name}` is *not* part of "
                "this model. Only its hidden size (the projector's width) and its tokenizer (the prompts are "
                "tokenised as the forecaster's, then not read) are taken from it; the forecast comes from the ST "
                "encoder, projector and regression head alone.")
    if model_config.control == "random_llm":
        return (f"**This is the random-LLM control of its recipe** (Tan et al., NeurIPS 2024): the backbone has "
                f"`{name}`'s architecture but randomly initialised weights (drawn with seed {seed}; no pretrained "
                "weight is used), trained with the recipe's freeze plan.")
    return ""
