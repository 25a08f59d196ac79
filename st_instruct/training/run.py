"""The training job of a recipe: data -> forecaster -> freeze plan -> :class:`STSFTTrainer` -> saved directory.

``accelerate launch [--config_file recipes/accelerate/X.yaml] scripts/sft.py RECIPE.yaml`` and
``st-instruct train RECIPE.yaml`` both call :func:`train` with the parsed recipe (``configs.train_dataclasses()``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from st_instruct.configs import DataConfig, ModelConfig, RecipeError, recipe_dict

RECIPE_FILE = "recipe.yaml"
TRAINER_STATE_FILE = "trainer_state.json"


def build_forecaster(data_config: DataConfig, model_config: ModelConfig, seed: int,
                     channels: int | None = None) -> tuple[Any, Any, Any, Any]:
    """``(model, tokenizer, dataset, freeze report)``: the backbone with the ST tokens, the tokenised dataset, and
    an :class:`STForecaster` sized for it (``C``, ``K`` read from the data; ``channels`` overrides ``C`` for a model
    fed broadcast one-channel data) with the recipe's freeze plan applied.

    ``seed`` seeds the random initialisation of the ST modules and adapters.
    """
    from transformers import set_seed

    from st_instruct.data.builder import build_dataset
    from st_instruct.data.st_tokens import add_st_tokens
    from st_instruct.models.backbones import get_backbone, get_tokenizer
    from st_instruct.models.forecaster import STForecaster, STForecasterConfig
    from st_instruct.training.freeze import apply_freeze_plan

    name = model_config.model_name_or_path
    if not name:
        raise RecipeError("model_name_or_path is empty: training needs a backbone (e.g. smollm2-135m)")
    extra = {"load_in_4bit": True} if model_config.model_load_in_4bit else {}
    backbone = get_backbone(name, num_layers=model_config.model_num_layers, **extra)
    tokenizer = get_tokenizer(name)
    if model_config.model_max_length:
        tokenizer.model_max_length = model_config.model_max_length
    ids = add_st_tokens(tokenizer, backbone)
    dataset = build_dataset(data_config, tokenizer)
    sample = next(iter(dataset["train"]))
    st_config = STForecasterConfig(
        history=data_config.history, horizon=data_config.horizon, channels=channels or len(sample["scaler_mean"]),
        coord_dim=len(sample["coords"][0]), his_token_id=ids.his, pre_token_id=ids.pre,
        encoder=model_config.st_encoder, encoder_dim=model_config.st_encoder_dim,
        projector_layers=model_config.st_projector_layers, head_dim=model_config.head_dim)
    set_seed(seed)
    model = STForecaster(backbone, st_config)
    report = apply_freeze_plan(model, model_config.freeze_plan, lora_r=model_config.lora_r,
                               lora_alpha=model_config.lora_alpha, lora_dropout=model_config.lora_dropout,
                               lora_target_modules=model_config.lora_target_modules,
                               pfa_last_layers=model_config.pfa_last_layers)
    return model, tokenizer, dataset, report


def backbone_source(model_config: ModelConfig) -> Any:
    """The recipe's :class:`BackboneSource`: how a saved forecaster's base backbone is rebuilt."""
    from st_instruct.models.saving import BackboneSource

    return BackboneSource(model_config.model_name_or_path, model_config.model_num_layers,
                          model_config.model_load_in_4bit)


def resolve_resume(value: str | bool | None) -> str | bool | None:
    """``resume_from_checkpoint`` of the recipe: a checkpoint folder (checked now, with a clear error), ``true`` /
    ``last`` for the latest ``checkpoint-N`` in the recipe's ``output_dir``, or nothing."""
    from st_instruct.models.saving import read_backbone_source

    if value in (None, False, "", "false", "none"):
        return None
    if value in (True, "true", "last"):
        return True
    read_backbone_source(value)  # names the missing files
    if not Path(value, TRAINER_STATE_FILE).is_file():
        raise FileNotFoundError(f"{value} lacks {TRAINER_STATE_FILE}: not a checkpoint-N folder of a training run "
                                "(the optimizer and step count are needed to resume)")
    return str(value)


def train(data_config: DataConfig, model_config: ModelConfig, sft_config: Any) -> Path:
    """Train the forecaster of a recipe and save it; returns ``sft_config.output_dir``.

    The output directory holds the backbone's adapter (or weights), ``st_modules.safetensors`` +
    ``st_forecaster_config.json``, the tokenizer, ``recipe.yaml`` (every resolved value; it trains again as it is)
    and a model card (``README.md``); ``checkpoint-N`` folders hold the same plus the optimizer state.
    """
    from st_instruct.hub import write_model_card
    from st_instruct.training.trainer import STSFTTrainer

    resume = resolve_resume(sft_config.resume_from_checkpoint)
    model, tokenizer, dataset, report = build_forecaster(data_config, model_config, sft_config.seed)
    if sft_config.process_index == 0:
        if not torch.cuda.is_available():
            print(f"no CUDA device: training on the CPU (bf16 {sft_config.bf16}, activation checkpointing "
                  f"{sft_config.activation_checkpointing}; see configs.cpu_training_defaults)")
        print(report.summary())
    evaluate = sft_config.eval_strategy != "no"
    trainer = STSFTTrainer(model, sft_config, dataset["train"], tokenizer, backbone_source(model_config),
                           loss_reg_weight=model_config.loss_reg_weight, loss_lm_weight=model_config.loss_lm_weight,
                           eval_dataset=dataset["validation"] if evaluate else None)
    trainer.train(resume_from_checkpoint=resume)
    output = Path(sft_config.output_dir)
    trainer.save_model(str(output))
    trainer.save_state()  # trainer_state.json: the log history
    if trainer.is_world_process_zero():
        recipe = recipe_dict(data_config, model_config, sft_config)
        (output / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False))
        write_model_card(output, base_model=model_config.model_name_or_path, datasets=data_config.dataset_names,
                         metrics=None, recipe=recipe)
        print(f"saved the forecaster to {output}")
    return output
