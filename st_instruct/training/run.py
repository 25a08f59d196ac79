"""The training job of a recipe: data -> forecaster -> freeze plan -> :class:`STSFTTrainer` -> saved directory.

``accelerate launch [--config_file recipes/accelerate/X.yaml] scripts/sft.py RECIPE.yaml`` and
``st-instruct train RECIPE.yaml`` both call :func:`train` with the parsed recipe (``configs.train_dataclasses()``).
"""

from __future__ import annotations

import contextlib
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
    learned = data_config.coordinates == "learned"
    st_config = STForecasterConfig(
        history=data_config.history, horizon=data_config.horizon, channels=channels or len(sample["scaler_mean"]),
        coord_dim=data_config.coordinate_dim if learned else len(sample["coords"][0]), his_token_id=ids.his,
        pre_token_id=ids.pre, encoder=model_config.st_encoder, encoder_dim=model_config.st_encoder_dim,
        projector_layers=model_config.st_projector_layers, head_dim=model_config.head_dim, revin=model_config.revin,
        node_table_size=learned_node_table_size(data_config) if learned else 0,
        se_attention=model_config.se_attention, se_pairs=model_config.se_pairs,
        se_learned_scale=model_config.se_learned_scale, se_init_scale=model_config.se_init_scale,
        mrffn_layers=list(model_config.mrffn_layers) if model_config.mrffn else None,
        mrffn_slots=model_config.mrffn_slots, mrffn_key_dim=model_config.mrffn_key_dim,
        mrffn_top_k=model_config.mrffn_top_k)
    set_seed(seed)
    model = STForecaster(backbone, st_config)
    if model_config.mrffn and model_config.mrffn_init == "kmeans":
        init_memories_from_data(model, dataset["train"], tokenizer, seed=seed)
    report = apply_freeze_plan(model, model_config.freeze_plan, lora_r=model_config.lora_r,
                               lora_alpha=model_config.lora_alpha, lora_dropout=model_config.lora_dropout,
                               lora_target_modules=model_config.lora_target_modules,
                               pfa_last_layers=model_config.pfa_last_layers)
    return model, tokenizer, dataset, report


def learned_node_table_size(data_config: DataConfig) -> int:
    """Rows of the learned node table of ``coordinates: learned``: the node count of the one training dataset."""
    from st_instruct.data.builder import load_series

    series = load_series(data_config)
    if len(series) != 1:
        raise RecipeError(f"coordinates: learned gives every node id of one dataset its own trained row; with "
                          f"{len(series)} datasets ({', '.join(data_config.dataset_names)}) the ids collide: use "
                          "laplacian, geo or grid coordinates")
    return series[0].num_nodes


def init_memories_from_data(model: Any, train_dataset: Any, tokenizer: Any, patterns_per_slot: int = 16,
                            batch_size: int = 8, seed: int = 0) -> None:
    """Initialise every MRFFN memory from "key historical patterns" (ST-LINK): the k-means centroids of what its
    wrapped MLP reads at the ``<st_his>`` tokens of training samples -- history windows encoded by the (freshly
    built) model -- with ``patterns_per_slot`` times as many patterns as slots, samples drawn with ``seed``."""
    import numpy as np
    import torch

    from st_instruct.models.mrffn import init_memory_from_patterns, memory_modules, recorded_inputs
    from st_instruct.models.regression_head import gather_positions
    from st_instruct.training.collator import STDataCollator

    wrappers = memory_modules(model.backbone)
    wanted = patterns_per_slot * max(w.st_memory.slots for w in wrappers)
    order = np.random.default_rng(seed).permutation(len(train_dataset))
    collator = STDataCollator(tokenizer)
    patterns: list[list[torch.Tensor]] = [[] for _ in wrappers]
    found = 0
    for lo in range(0, len(order), batch_size):
        batch = collator([train_dataset[int(i)] for i in order[lo:lo + batch_size]])
        records = []
        with contextlib.ExitStack() as stack:
            records = [stack.enter_context(recorded_inputs(w)) for w in wrappers]
            model.predict(batch)
        mask = batch["node_mask"]
        for rows, record in zip(patterns, records, strict=True):
            hidden = record[0]
            rows.append(gather_positions(hidden, batch["his_positions"].to(hidden.device))[mask.to(hidden.device)]
                        .float().cpu())
        found += int(mask.sum())
        if found >= wanted:
            break
    slots = max(w.st_memory.slots for w in wrappers)
    if found < slots:
        raise RecipeError(f"mrffn_init: kmeans needs at least mrffn_slots = {slots} encoded history windows, the "
                          f"training split gives {found}; lower mrffn_slots or use mrffn_init: random")
    for wrapper, rows in zip(wrappers, patterns, strict=True):
        init_memory_from_patterns(wrapper, torch.cat(rows), seed=seed)


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
