"""Train the LLM forecaster of a recipe, on one process or many.

    accelerate launch [--config_file recipes/accelerate/zero2.yaml] scripts/sft.py recipes/stlink_sft.yaml [--k v]

accelerate runs this file on every process; the recipe (``st_instruct.configs.train_dataclasses()``: DataConfig,
ModelConfig and TRL's SFTConfig in one flat YAML) says what to train, the accelerate config how to spread it. The
same command runs on CPU-only machines: without CUDA the recipe's ``use_cpu`` defaults to true (gloo; see
recipes/accelerate/*.yaml).
"""

from __future__ import annotations

import sys

from st_instruct.configs import RecipeError, parse_recipe, train_dataclasses
from st_instruct.training.run import train


def main(argv: list[str] | None = None) -> int:
    try:
        data_config, model_config, sft_config = parse_recipe(train_dataclasses(), argv)
    except RecipeError as err:
        print(f"scripts/sft.py: error: {err}", file=sys.stderr)
        return 2
    train(data_config, model_config, sft_config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
