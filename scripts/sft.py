"""Train the LLM forecaster of a recipe, on one process or many.

    accelerate launch [--config_file recipes/accelerate/zero2.yaml] scripts/sft.py recipes/stlink_sft.yaml [--k v]
        [--overwrite]

accelerate runs this file on every process; the recipe (``st_instruct.configs.train_dataclasses()``: DataConfig,
ModelConfig and TRL's SFTConfig in one flat YAML) says what to train, the accelerate config how to spread it. The
same command runs on CPU-only machines: without CUDA the recipe's ``use_cpu`` defaults to true (gloo; see
recipes/accelerate/*.yaml).
"""

from __future__ import annotations

import sys

from st_instruct.configs import RecipeError, parse_recipe, train_dataclasses
from st_instruct.training.run import OVERWRITE_FLAG, train


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overwrite = OVERWRITE_FLAG in argv  # as `st-instruct train --overwrite`: a flag, never a recipe key
    try:
        configs = parse_recipe(train_dataclasses(), [arg for arg in argv if arg != OVERWRITE_FLAG])
    except RecipeError as err:
        print(f"scripts/sft.py: error: {err}", file=sys.stderr)
        return 2
    train(*configs, overwrite_output_dir=overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
