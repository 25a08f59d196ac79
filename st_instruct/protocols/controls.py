"""Controls (Tan et al., NeurIPS 2024: an LLM's contribution is what it adds over the same model without it): train a
forecaster's ``no_llm`` / ``random_llm`` control from its own recipe, and check that a control folder is one.

A control is the forecaster's recipe with only ``control`` changed -- the same data, model keys and training budget --
so its row in an evaluation (``st_forecaster_no_llm`` / ``st_forecaster_random_llm``) is a like-for-like comparison.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from st_instruct.configs import DataConfig, ModelConfig, load_recipe_file, parse_recipe, train_dataclasses
from st_instruct.model_dir import MODEL_ROW, TRAINER_STATE_FILE, control_dir, find_recipe
from st_instruct.models.saving import read_backbone_source
from st_instruct.training.run import train

CONTROL_KINDS = ("no_llm", "random_llm")  # ModelConfig.control values other than "none"; row f"{MODEL_ROW}_{kind}"
# what a control must share with the forecaster it controls besides the data and model keys: the training budget
BUDGET_KEYS = ("max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
               "learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "weight_decay", "seed")
# recipe keys that may differ between a forecaster and its control: where each was written, and the switch itself
UNSHARED_KEYS = ("control", "dataset_cache_dir", "output_dir", "base_forecaster")  # a control's adapter: its base's


def train_control(model_dir: str | Path, kind: str, overwrite: bool = False) -> Path:
    """Train the ``kind`` control (``no_llm`` / ``random_llm``) of the forecaster in ``model_dir`` from the
    ``recipe.yaml`` saved with it (the same data, model keys and budget; ``st_encoder_init`` included) into
    :func:`control_dir`; returns that folder. A complete control already there is reused unless ``overwrite``
    (``evaluate --controls`` checks that it is a control of the same recipe)."""
    folder = control_dir(model_dir, kind)
    if not overwrite and (folder / TRAINER_STATE_FILE).is_file():
        print(f"{kind} control: reusing {folder}")
        return folder
    configs = parse_recipe(train_dataclasses(), [str(find_recipe(model_dir)), "--control", kind, "--output_dir",
                                                 str(folder)])
    return train(*configs, overwrite_output_dir=overwrite)


def read_control(control_dir: str | Path, model_dir: str | Path) -> str:
    """The row name of the control in ``control_dir`` (``st_forecaster_no_llm`` / ``st_forecaster_random_llm``),
    after checking that it was trained from the recipe of the forecaster in ``model_dir`` with only ``control``
    changed: the same data, model keys and budget (:data:`BUDGET_KEYS`); ``ValueError`` naming the keys otherwise."""
    read_backbone_source(control_dir)  # names the missing files before anything slow
    control = load_recipe_file(find_recipe(control_dir), train_dataclasses())
    kind = control.get("control", "none")
    if kind not in CONTROL_KINDS:
        raise ValueError(f"--controls {control_dir}: its recipe.yaml says control: {kind}, not one of "
                         f"{', '.join(CONTROL_KINDS)}; train a control with `st-instruct train RECIPE --control "
                         "no_llm` (or random_llm)")
    trained = load_recipe_file(find_recipe(model_dir), train_dataclasses())
    # a key a recipe.yaml lacks was written before the key existed: it holds the key's default
    defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                for config in (DataConfig, ModelConfig) for f in dataclasses.fields(config)}
    keys = list(defaults) + list(BUDGET_KEYS)
    pairs = {key: (control.get(key, defaults.get(key)), trained.get(key, defaults.get(key))) for key in keys
             if key not in UNSHARED_KEYS}
    differ = [f"{key}: control {ours!r}, forecaster {theirs!r}" for key, (ours, theirs) in pairs.items()
              if ours != theirs]
    if differ:
        raise ValueError(f"--controls {control_dir} was not trained from the recipe of {model_dir} with only "
                         f"control changed ({'; '.join(differ)}); train the control from the same recipe and budget")
    return f"{MODEL_ROW}_{kind}"
