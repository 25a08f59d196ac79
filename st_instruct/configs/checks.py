"""What every recipe dataclass checks with: the error types, finite numbers, and the range of every size.

Here, at the bottom of the configs, so the recipe schema (:mod:`.data`, :mod:`.model`, :mod:`.pretrain`), the saved
forecaster's configuration (:mod:`st_instruct.models.forecaster`) and its backbone record check sizes with the same
bounds, written once (:data:`SIZE_BOUNDS`).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

# The range of every integer size of a recipe and of a saved forecaster's st_forecaster_config.json and
# st_backbone.json, inclusive: checked before anything is built, so an edited or damaged size is one line naming its
# key and not an allocation error. Generous: the data and models in use are far inside them.
SIZE_BOUNDS: dict[str, tuple[int, int]] = {
    "history": (1, 100_000), "horizon": (1, 10_000), "channels": (1, 4_096), "coord_dim": (0, 4_096),
    "his_token_id": (0, 2**31 - 1), "pre_token_id": (0, 2**31 - 1), "hidden_size": (1, 65_536),
    "node_table_size": (0, 1_000_000),
    "st_encoder_dim": (1, 65_536), "st_encoder_steps_per_day": (1, 86_400), "st_encoder_tcn_layers": (1, 16),
    "st_encoder_tcn_kernel_size": (1, 64),
    "st_encoder_patch_time": (1, 10_000), "st_encoder_patch_space": (1, 1_024), "st_encoder_mlp_layers": (0, 64),
    "st_projector_layers": (1, 2),
    "head_dim": (1, 65_536), "se_pairs": (1, 4_096), "se_pair_index": (0, 65_535), "mrffn_slots": (1, 65_536),
    "mrffn_key_dim": (1, 65_536), "mrffn_top_k": (1, 65_536), "st_fusion_heads": (1, 1_024),
    "unist_spatial_slots": (1, 65_536), "unist_temporal_slots": (1, 65_536), "unist_prompt_dim": (1, 65_536),
    "unist_closeness_steps": (1, 100_000), "soft_prompt_tokens": (0, 4_096),
    "lora_r": (1, 65_536), "lora_alpha": (1, 65_536), "pfa_last_layers": (0, 1_024),
    # st_backbone.json; a decoder layer index may count from the end (negative)
    "num_layers": (1, 1_024), "base_num_layers": (1, 1_024), "decoder_layer": (-1_024, 1_023),
    "random_init_seed": (0, 2**32 - 1), "token_id": (0, 2**31 - 1),
}


class RecipeError(ValueError):
    """A recipe file or flag is wrong; the message names the file and key."""


class TrainingDivergedError(ValueError):
    """Training stopped because its loss or weights turned inf or nan (most often: too high a learning rate); the
    message names the step, the loss and the recipe keys to change, and nothing non-finite was saved. Here, beside
    :class:`RecipeError`, so the SFT trainer and the pretraining loop raise the same error without importing each
    other."""


def check_finite(config: Any) -> None:
    """Refuse an inf or nan in any float field of ``config`` (a :class:`RecipeError` naming the key): no key means
    anything by one, and a range check such as ``x <= 0`` lets nan through."""
    for f in fields(config):
        value = getattr(config, f.name, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise RecipeError(f"{f.name} must be a finite number, found {value}; set it in the recipe or with "
                              f"--{f.name}")


def check_fields(config: Any) -> None:
    """:func:`check_finite`, and anything but true / false in a bool field of an st_instruct recipe dataclass
    refused (an edited file's ``1`` is no ``true``)."""
    check_finite(config)
    for f in fields(config):
        if f.type in ("bool", bool) and not isinstance(getattr(config, f.name), bool):
            raise RecipeError(f"{f.name} must be true or false, found {getattr(config, f.name)!r}")


def check_size(key: str, value: Any, bounds: str | None = None, nullable: bool = False) -> None:
    """Raise a ValueError naming ``key`` unless ``value`` is an integer (not a bool) within
    ``SIZE_BOUNDS[bounds or key]``, or ``None`` when ``nullable``."""
    low, high = SIZE_BOUNDS[bounds or key]
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(low, "an integer")
        raise ValueError(f"{key} must be {kind}{' or null' if nullable else ''}, found {value!r} (st_instruct reads "
                         f"{low} to {high})")


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise a :class:`RecipeError` naming ``key`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise RecipeError(f"{key} must be one of {list(choices)}, found {value!r}")
