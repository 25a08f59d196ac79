"""Train the LLM forecaster of a recipe, on one process or many: the training entry point.

    python -m st_instruct.train RECIPE [--k v] [--overwrite]
    accelerate launch [--config_file recipes/accelerate/zero2.yaml] -m st_instruct.train RECIPE [--k v]

``RECIPE`` is a recipe file or a shipped recipe's name (``smoke_sft``; ``st-instruct recipes`` lists them).
accelerate runs this module on every process; the recipe (``st_instruct.configs.train_dataclasses()``: DataConfig,
ModelConfig and TRL's SFTConfig in one flat YAML) says what to train, the accelerate config how to spread it.
``st-instruct train RECIPE --num_processes N [--accelerate_config zero2]`` builds that accelerate command
(``st_instruct.launch``). The same command runs on CPU-only machines: without CUDA the recipe's ``use_cpu`` defaults
to true (gloo; see recipes/accelerate/*.yaml). Bad input (a recipe key, a dataset, a file) is one line and exit
status 2, as in ``st-instruct train``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from st_instruct.configs import RecipeError, parse_recipe, train_dataclasses
from st_instruct.console import run_reporting_input_errors
from st_instruct.hub import HubError, push_to_hub
from st_instruct.training.run import OVERWRITE_FLAG, train


def train_and_push(data_config: Any, model_config: Any, sft_config: Any, overwrite: bool = False) -> Path:
    """Train a parsed recipe (:func:`~st_instruct.training.run.train`); with ``push_to_hub: true`` the main process
    then pushes the complete final folder, exactly as ``st-instruct push`` pushes it (checkpoints stay local whatever
    ``hub_strategy`` says). Returns the folder.

    An attribute adapter (``freeze_plan: prompt``) of a local ``base_forecaster`` is refused with ``push_to_hub``
    before any training: its push needs the base's Hub repo id, which no recipe key holds (``st-instruct push DIR
    --base-repo ID`` after training)."""
    base = model_config.base_forecaster
    if sft_config.push_to_hub and model_config.freeze_plan == "prompt" and base and Path(base).expanduser().exists():
        raise RecipeError(f"push_to_hub with freeze_plan: prompt on the local base_forecaster {base}: the pushed "
                          "adapter must name its base's Hub repo, which no recipe key holds; train without "
                          "push_to_hub, then `st-instruct push OUTPUT_DIR --repo-id ID --base-repo BASE_ID` (push "
                          "the base first), or set base_forecaster to the base's Hub repo id")
    output = train(data_config, model_config, sft_config, overwrite_output_dir=overwrite)
    if sft_config.process_index != 0 or not sft_config.push_to_hub:
        return output
    repo_id = sft_config.hub_model_id or output.name
    try:
        url = push_to_hub(output, repo_id, token=sft_config.hub_token, private=bool(sft_config.hub_private_repo))
    except HubError as err:
        raise HubError(f"{err}. The trained model is saved in {output}: push it with `st-instruct push {output} "
                       f"--repo-id {repo_id}`") from err
    print(f"pushed {output} to the Hub: {url} (push_to_hub pushes the final folder; checkpoints stay local whatever "
          "hub_strategy says)")
    return output


def main(argv: list[str] | None = None, prog: str = "python -m st_instruct.train") -> int:
    """Parse ``RECIPE [--k v] [--overwrite]`` and train; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overwrite = OVERWRITE_FLAG in argv  # as `st-instruct train --overwrite`: a flag, never a recipe key
    def run() -> None:
        configs = parse_recipe(train_dataclasses(), [arg for arg in argv if arg != OVERWRITE_FLAG])
        train_and_push(*configs, overwrite=overwrite)

    return run_reporting_input_errors(prog, run)


if __name__ == "__main__":
    sys.exit(main())
