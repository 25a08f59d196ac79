"""Pretrain the ST encoder of a recipe (forecast or masked-autoencoder objective; no LLM).

    accelerate launch scripts/pretrain.py recipes/pretrain_mae.yaml [--key value ...] [--overwrite]
    (the same as: st-instruct pretrain recipes/pretrain_mae.yaml)

The recipe (``st_instruct.configs.PRETRAIN_DATACLASSES``: DataConfig, ModelConfig's ``st_encoder`` /
``st_encoder_dim`` and PretrainConfig's ``pretrain_*`` keys in one flat YAML) says what to pretrain. The loop is a
plain single-process torch loop sized for the CPU: under accelerate with several processes only the main process
runs it (the encoder is small; the others would only repeat it).
"""

from __future__ import annotations

import os
import sys

from st_instruct.configs import PRETRAIN_DATACLASSES, RecipeError, parse_recipe
from st_instruct.pretraining.run import pretrain

OVERWRITE_FLAG = "--overwrite"  # as `st-instruct pretrain --overwrite`: a flag, never a recipe key


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overwrite = OVERWRITE_FLAG in argv
    try:
        configs = parse_recipe(PRETRAIN_DATACLASSES, [arg for arg in argv if arg != OVERWRITE_FLAG])
    except RecipeError as err:
        print(f"scripts/pretrain.py: error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    try:
        pretrain(*configs, overwrite=overwrite)
    except (ValueError, OSError) as err:  # bad input: a recipe that does not fit the data, an existing folder
        print(f"scripts/pretrain.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
