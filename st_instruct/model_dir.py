"""A trained forecaster's folder: every file name in it, where each is found, and reading its records.

``st-instruct train`` writes one folder (its ``checkpoint-N`` folders hold the same plus the training state):

==========================  ===========================================================================
``st_backbone.json``        where the backbone came from and how its weights are stored (``format``)
adapter / ``model*.st..``   the backbone's weights: a PEFT adapter (``adapter_config.json``,
                            ``adapter_model.safetensors``) or a whole transformers model
``st_forecaster_config``    the ST modules' configuration (``.json``) and weights (``st_modules.safetensors``)
tokenizer files             the tokenizer with the ST tokens (``tokenizer.json``, ``tokenizer_config.json``)
``recipe.yaml``             every resolved recipe value (it trains again as it is)
``prompt_template.jinja``   the template the model was trained with (its sha256 is in the recipe)
``st_data_profile.json``    what forecasting new values of the training data needs (:mod:`.data.profile`)
``st_evaluations.json``     the evaluation reports recorded by ``st-instruct evaluate``
``few_shot.json``           for a few-shot folder: its source model, fraction and target
``README.md``               the model card
``trainer_state.json``      the trainer's log history (a checkpoint's: also its step)
``runs/``                   TensorBoard logs (never pushed)
==========================  ===========================================================================

A ``checkpoint-N`` folder has no recipe, profile or records of its own: they are read from its parent
(:func:`find_in_folder`). Every module that needs one of these files takes its name and its lookup from here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from st_instruct.configs import DataConfig, load_recipe_file, train_dataclasses
from st_instruct.shipped import (
    TemplateError,
    file_sha256,
    is_trusted_template,
    names_a_path,
    resolve_template,
    trusted_template_dirs,
)

BACKBONE_FILE = "st_backbone.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ST_CONFIG_FILE = "st_forecaster_config.json"
ST_MODULES_FILE = "st_modules.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # what save_pretrained writes and loading reads
RECIPE_FILE = "recipe.yaml"
TEMPLATE_COPY_FILE = "prompt_template.jinja"
PROFILE_FILE = "st_data_profile.json"
EVALUATIONS_FILE = "st_evaluations.json"
FEW_SHOT_FILE = "few_shot.json"
CARD_FILE = "README.md"
TRAINER_STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE, SCHEDULER_FILE = "optimizer.pt", "scheduler.pt"  # as transformers.Trainer names them
# the lock record_evaluation holds on a model folder; it stays there (unlinking a lock file lets two processes lock
# different files of the same name) and is never pushed
LOCK_FILE = ".st_instruct.lock"
# the forecaster's row in an evaluation report (results.json, st_evaluations.json)
MODEL_ROW = "st_forecaster"
GENERATED_ROW = "st_forecaster_generated"  # the same model's forecast read after the rationale it generates
TTA_ROW_SEPARATOR = "+tta-"  # "st_forecaster+tta-reset": a row's forecasts with test-time adaptation in that mode


def tta_row(row: str, mode: str) -> str:
    """The report row of ``row``'s forecasts under test-time adaptation ``mode``."""
    return f"{row}{TTA_ROW_SEPARATOR}{mode}"


# what to do about a file of a saved forecaster that fails its checks
COPY_AGAIN = "copy the model folder again or re-train"


def find_in_folder(directory: str | Path, name: str) -> Path | None:
    """``directory/name``, else -- for a ``checkpoint-N`` folder -- its parent's ``name``; ``None`` when neither
    exists."""
    directory = Path(directory)
    return next((path for path in (directory / name, directory.parent / name) if path.is_file()), None)


def find_recipe(directory: str | Path) -> Path:
    """``recipe.yaml`` of a saved forecaster (:func:`find_in_folder`); ``FileNotFoundError`` naming the folder."""
    found = find_in_folder(directory, RECIPE_FILE)
    if found is None:
        raise FileNotFoundError(f"{directory} has no {RECIPE_FILE} (nor its parent folder): the evaluation needs the "
                                "recipe the forecaster was trained with (written by `st-instruct train`)")
    return found


def read_recipe(directory: str | Path) -> dict[str, Any] | None:
    """The folder's ``recipe.yaml`` (:func:`find_recipe`) as a mapping; ``None`` when it has none."""
    found = find_in_folder(directory, RECIPE_FILE)
    return None if found is None else yaml.safe_load(found.read_text())


def read_json_file(path: Path) -> Any:
    """The JSON in ``path``; a ValueError naming the file when it is not valid JSON (a truncated copy, an edit)."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): the file is corrupt or truncated; {COPY_AGAIN}") from err


def read_folder_json(directory: str | Path, name: str) -> Any:
    """The JSON file ``name`` of the folder itself (not its parent's), or ``None`` when it has none."""
    path = Path(directory) / name
    return read_json_file(path) if path.is_file() else None


def read_few_shot(directory: str | Path) -> dict[str, Any] | None:
    """The ``few_shot.json`` of a forecaster folder (or of a checkpoint's parent), or None for a plain model."""
    found = find_in_folder(directory, FEW_SHOT_FILE)
    return None if found is None else read_json_file(found)


def read_evaluations(directory: str | Path) -> list[dict[str, Any]]:
    """The evaluation reports recorded in ``directory/st_evaluations.json`` (``[]`` when none)."""
    found = read_folder_json(directory, EVALUATIONS_FILE)
    if found is not None and not isinstance(found, list):
        raise ValueError(f"{Path(directory) / EVALUATIONS_FILE} must hold a JSON list of evaluation reports")
    return found or []


def control_dir(model_dir: str | Path, kind: str) -> Path:
    """Where the ``kind`` control (``no_llm`` / ``random_llm``) of the forecaster in ``model_dir`` is trained: the
    sibling ``MODEL-no-llm`` / ``MODEL-random-llm``."""
    model_dir = Path(model_dir)
    return model_dir.parent / f"{model_dir.name}-{kind.replace('_', '-')}"


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, newest (highest N) first."""
    output_dir = Path(output_dir)
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name[len("checkpoint-"):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len("checkpoint-"):]), reverse=True)


def checkpoint_missing(folder: str | Path) -> list[str]:
    """The files ``folder`` lacks to resume training exactly: the forecaster's weights (as
    :func:`~st_instruct.models.saving.save_forecaster` writes them), the optimizer and scheduler states
    (``optimizer.pt`` / ``scheduler.pt``, or DeepSpeed's ``global_stepN/``), the RNG state (``rng_state.pth``,
    ``rng_state_<rank>.pth`` on several processes) and a readable ``trainer_state.json``. Empty for a complete
    ``checkpoint-N`` folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder.name}/ (no such folder)"]
    missing = [name for name in (BACKBONE_FILE, ST_CONFIG_FILE, ST_MODULES_FILE) if not (folder / name).is_file()]
    try:
        kind = json.loads((folder / BACKBONE_FILE).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind == "adapter":
        missing += [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    elif kind == "full" and not list(folder.glob("model*.safetensors")):
        missing.append("model.safetensors")
    deepspeed = any(path.is_dir() for path in folder.glob("global_step*"))
    if not deepspeed:
        missing += [name for name in (OPTIMIZER_FILE, SCHEDULER_FILE) if not (folder / name).is_file()]
    if not list(folder.glob("rng_state*.pth")):
        missing.append("rng_state.pth")
    try:
        int(json.loads((folder / TRAINER_STATE_FILE).read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        missing.append(TRAINER_STATE_FILE)
    return missing


def trained_data_config(directory: str | Path) -> DataConfig:
    """The :class:`DataConfig` of the recipe a forecaster was trained with (keys checked as ``train`` does).

    Its ``template`` is the file the folder may render: the trusted template or the folder's own copy whose sha256
    is the recipe's ``template_sha256`` (:func:`model_template`; raises otherwise).
    """
    recipe = find_recipe(directory)
    values = load_recipe_file(recipe, train_dataclasses())
    names = {f.name for f in dataclasses.fields(DataConfig)}
    config = DataConfig(**{key: value for key, value in values.items() if key in names})
    return dataclasses.replace(config, template=str(model_template(recipe, config.template, config.template_sha256)))


def save_template_copy(output_dir: str | os.PathLike, data_config: Any) -> Path:
    """Copy the template of ``data_config`` into a forecaster folder as :data:`TEMPLATE_COPY_FILE` and record its
    sha256 in ``data_config.template_sha256`` (in place, so the ``recipe.yaml`` written next carries it); returns
    the copy. Loading the folder later renders only this copy or a trusted template with the same checksum
    (:func:`model_template`)."""
    source = resolve_template(data_config.template)
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if data_config.template_sha256 not in (None, digest):
        raise TemplateError(f"prompt template {source} has sha256 {digest}, but template_sha256 is "
                            f"{data_config.template_sha256}: the file changed since the recipe was written")
    target = Path(output_dir) / TEMPLATE_COPY_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    partial.write_bytes(data)
    os.replace(partial, target)
    data_config.template_sha256 = digest
    return target


def _trusted_by_sha(digest: str, preferred: Path | None) -> Path | None:
    """A template in :func:`trusted_template_dirs` whose sha256 is ``digest`` (``preferred`` first), or None."""
    candidates = [preferred] if preferred is not None else []
    for root in trusted_template_dirs():
        if root.is_dir():
            candidates += sorted(root.glob("*.jinja"))
    return next((path for path in candidates if path.is_file() and file_sha256(path) == digest), None)


def model_template(recipe_path: str | os.PathLike, spec: str, sha256: str | None) -> Path:
    """The template file a saved forecaster may render: the ``recipe.yaml`` at ``recipe_path`` names ``spec`` with
    checksum ``sha256``; returns the trusted template with that checksum (the one ``spec`` names when it is trusted),
    else the folder's own copy (:data:`TEMPLATE_COPY_FILE`, beside the recipe) when its checksum matches.

    Raises :class:`TemplateError` when the recipe has no checksum (a folder saved before checksums were recorded)
    or when neither file matches it; nothing is rendered then.
    """
    recipe_path = Path(recipe_path)
    folder = recipe_path.parent
    named = None
    if not names_a_path(spec) or is_trusted_template(spec):
        try:
            named = resolve_template(spec).resolve()
        except TemplateError:
            named = None
    if not sha256:
        how = "check the template it was trained with, then add `template_sha256: <sha256 of that file>` to it"
        if named is not None and is_trusted_template(named):
            how += f" (the shipped {named.name} has sha256 {file_sha256(named)})"
        raise TemplateError(f"{recipe_path} names the template {spec!r} without template_sha256 (saved by an older "
                            f"st_instruct), so it is not rendered: {how}; or re-train the model")
    trusted = _trusted_by_sha(sha256, named if named is not None and is_trusted_template(named) else None)
    if trusted is not None:
        return trusted
    copy = folder / TEMPLATE_COPY_FILE
    if copy.is_file() and file_sha256(copy) == sha256:
        return copy
    found = f"its {copy.name} has sha256 {file_sha256(copy)}" if copy.is_file() else f"it has no {copy.name}"
    raise TemplateError(f"{folder}: the recipe's template {spec!r} must have template_sha256 {sha256}, but {found} "
                        "and no template in prompts/ has it; the folder was altered or copied incompletely: "
                        "copy it again from where it was trained, or re-train")
