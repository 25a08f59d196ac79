"""The training job of a recipe: data -> forecaster -> freeze plan -> :class:`STSFTTrainer` -> saved directory.

``accelerate launch [--config_file recipes/accelerate/X.yaml] scripts/sft.py RECIPE.yaml`` and
``st-instruct train RECIPE.yaml`` both call :func:`train` with the parsed recipe (``configs.train_dataclasses()``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from tqdm.auto import tqdm
from transformers import set_seed
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir

from st_instruct.configs import (
    AdaptationConfig,
    DataConfig,
    FreezeConfig,
    ModelConfig,
    RecipeError,
    SoftPromptConfig,
    TrainingDivergedError,
    check_recipe_consistency,
    part,
    recipe_dict,
)
from st_instruct.configs.model import check_architecture
from st_instruct.data.loaders import load_series
from st_instruct.data.profile import write_data_profiles
from st_instruct.model_dir import (
    BACKBONE_FILE,
    RECIPE_FILE,
    TRAINER_STATE_FILE,
    checkpoint_folders,
    checkpoint_missing,
    read_recipe,
    save_template_copy,
)
from st_instruct.models.backbones import (
    BackboneSource,
    build_base_backbone,
    build_teacher,
    get_backbone,
    get_tokenizer,
)
from st_instruct.models.collators import build_collator
from st_instruct.models.forecaster import STForecasterConfig, build_st_forecaster
from st_instruct.models.llm4hrs import ARCHITECTURE as LLM4HRS
from st_instruct.models.llm4hrs import LLM4HRSConfig, LLM4HRSImputer, build_llm4hrs_imputer
from st_instruct.models.mrffn import init_memory_from_patterns, memory_modules, recorded_inputs
from st_instruct.models.patching import hidden_size, is_vision_language
from st_instruct.models.regression_head import gather_positions
from st_instruct.models.saving import load_base_forecaster, read_backbone_source
from st_instruct.outputs import check_writable, clean_stale_siblings, commit, is_nonempty, sibling, staged_into
from st_instruct.pretraining.run import get_pretrained_encoder, load_readout_into_skip
from st_instruct.samples.builder import build_dataset
from st_instruct.samples.collator import STDataCollator
from st_instruct.samples.st_tokens import add_st_tokens
from st_instruct.tasks import get_task
from st_instruct.training.freeze import FreezeReport, apply_freeze_plan, apply_frozen_blocks_plan, reset_head_output
from st_instruct.training.trainer import STSFTTrainer

OVERWRITE_FLAG = "--overwrite"  # of `st-instruct train` / `demo` and scripts/sft.py; not a recipe key (see train)


def build_forecaster(data_config: DataConfig, model_config: ModelConfig, seed: int,
                     channels: int | None = None, load_pretrained: bool = True,
                     make_samples: Callable[[Any], Any] | None = None) -> tuple[Any, Any, Any, Any]:
    """``(model, tokenizer, dataset, freeze report)``: the backbone with the ST tokens, the tokenised dataset, and
    an :class:`STForecaster` sized for it (``C``, ``K`` read from the data; ``channels`` overrides ``C`` for a model
    fed broadcast one-channel data) with the recipe's freeze plan applied.

    ``seed`` seeds every random initialisation of the ST modules (SE-Attention's angles and the MRFFN memories
    included: :class:`STForecaster` draws their seeds from the global generator) and of the adapters.

    ``model_config.control`` builds a control of the recipe instead (Tan et al., NeurIPS 2024): ``random_llm`` the same
    backbone architecture, truncation and freeze plan with random weights drawn under ``seed`` (``get_backbone(...,
    random_init_seed=seed)``); ``no_llm`` no backbone at all (``build_st_forecaster(None, ...)``: the same encoder,
    projector to the backbone's width and head; the freeze plan has nothing to act on). The backbone is still loaded
    for its width and tokenizer, so the control is tokenised and sized exactly as the forecaster.

    ``model_config.st_encoder_init`` passes the encoder pretrained in that folder (``st-instruct pretrain``) to the
    forecaster instead of a fresh one (:func:`~st_instruct.pretraining.run.get_pretrained_encoder` refuses one that
    does not fit the recipe); ``st_encoder_freeze`` keeps it frozen (left out of the report's trainable groups);
    ``head_skip_init: readout`` starts the head as that folder's forecast readout
    (:func:`~st_instruct.pretraining.run.load_readout_into_skip`). ``load_pretrained=False`` skips both (the
    freeze still applies): for a caller that loads every weight from a trained folder next (few-shot), which then
    does not need the pretrained folder to exist any more. ``make_samples(tokenizer)``: the tokenised dataset,
    instead of every window of ``build_dataset(data_config)`` (few-shot builds only the windows it reads).

    ``freeze_plan: prompt`` tunes a soft prompt on the trained forecaster of ``base_forecaster`` instead
    (:func:`build_prompt_tuning`); ``architecture: llm4hrs`` builds the LLM4HRS imputer (:func:`build_llm4hrs`).
    """
    check_recipe_consistency(data_config, model_config)
    if model_config.freeze_plan == "prompt":
        return build_prompt_tuning(data_config, model_config, seed, make_samples)
    name = model_config.model_name_or_path
    if not name:
        raise RecipeError("model_name_or_path is empty: training needs a backbone (e.g. smollm2-135m)")
    if model_config.architecture == LLM4HRS:
        return build_llm4hrs(data_config, model_config, seed, make_samples)
    extra = {"load_in_4bit": True} if model_config.model_load_in_4bit else {}
    control = model_config.control
    backbone = get_backbone(name, num_layers=model_config.model_num_layers,
                            random_init_seed=seed if control == "random_llm" else None, **extra)
    width = hidden_size(backbone.config) if control == "no_llm" else None
    if control == "no_llm":
        backbone = None
    tokenizer = get_tokenizer(name)
    if model_config.model_max_length:
        tokenizer.model_max_length = model_config.model_max_length
    ids = add_st_tokens(tokenizer, backbone)
    if make_samples is not None:
        dataset = make_samples(tokenizer)
    else:
        dataset = build_dataset(data_config, tokenizer, teacher=build_teacher(data_config.rationale_teacher))
    sample = next(iter(dataset["train"]))
    learned = data_config.coordinates == "learned"
    st_config = STForecasterConfig.of_recipe(
        model_config, history=data_config.history,
        horizon=get_task(data_config.task).target_length(data_config.history, data_config.horizon),
        channels=channels or len(sample["scaler_mean"]),
        coord_dim=data_config.coordinate_dim if learned else len(sample["coords"][0]), his_token_id=ids.his,
        pre_token_id=ids.pre, hidden_size=width,
        node_table_size=learned_node_table_size(data_config) if learned else 0)
    if control == "no_llm":  # the fusion joins a backbone's image tokens: without a backbone there is none
        st_config = dataclasses.replace(st_config, fusion=dataclasses.replace(st_config.fusion, st_fusion=False))
    encoder = None
    if model_config.st_encoder_init and load_pretrained:
        encoder = get_pretrained_encoder(model_config.st_encoder_init, st_config.encoder_spec())
    frozen = ["st_encoder"] if model_config.st_encoder_freeze else []
    if backbone is not None and is_vision_language(backbone) and model_config.vision_tower_train != "full":
        frozen.append("st_vision_tower")  # frozen, or its base frozen under LoRA
    set_seed(seed)
    model = build_st_forecaster(backbone, st_config, encoder=encoder)
    if model_config.head_skip_init == "readout" and load_pretrained:
        if model_config.revin:
            raise RecipeError("head_skip_init: readout starts from a readout pretrained without RevIN; with revin: "
                              "true it would read normalised features in other units: drop one of them")
        load_readout_into_skip(model_config.st_encoder_init, model.regression_head)
    if model_config.mrffn and model_config.mrffn_init == "kmeans" and load_pretrained:
        # not for a caller that loads every weight next (few-shot): the trained memories replace the centroids
        init_memories_from_data(model, dataset["train"], tokenizer, seed=seed)
    if backbone is None:
        return model, tokenizer, dataset, no_backbone_report(model, frozen)
    report = apply_freeze_plan(model, part(model_config, FreezeConfig), frozen_st_modules=frozen)
    return model, tokenizer, dataset, report


def build_prompt_tuning(data_config: DataConfig, model_config: ModelConfig, seed: int,
                        make_samples: Callable[[Any], Any] | None = None) -> tuple[Any, Any, Any, Any]:
    """PromptST's prompt tuning (Zhang et al., CIKM 2023; ``freeze_plan: prompt``): ``(model, tokenizer, dataset,
    freeze report)`` of :func:`build_forecaster` for the forecaster saved in ``base_forecaster`` -- its backbone,
    adapter and ST modules as trained, all frozen -- with a fresh soft prompt of ``soft_prompt_tokens`` (and
    ``soft_prompt_deep``) and a fresh head output layer (:func:`~st_instruct.training.freeze.reset_head_output`), the
    only parts that train, both drawn under ``seed``. The recipe's dataset (one attribute: a ``NAME[channel]`` entry
    for a universal base) is tokenised with the base's tokenizer and must have the base's shapes (history, horizon,
    channels, coordinates); the model keys the base fixes (backbone, encoder, head, ...) are not read from the
    recipe. Saved, it is an attribute adapter naming the base (:func:`backbone_source`)."""
    base = model_config.base_forecaster
    try:
        read_backbone_source(base)
    except (OSError, ValueError) as err:
        raise RecipeError(f"base_forecaster {base} is not a trained forecaster folder ({err}); set it to the output "
                          "folder of `st-instruct train`") from err
    base_control = (read_recipe(base) or {}).get("control", "none")
    if base_control != model_config.control:
        raise RecipeError(f"control {model_config.control!r}, but base_forecaster {base} was trained with control "
                          f"{base_control!r}: an attribute adapter is the kind of model its base is; set control: "
                          f"{base_control}")
    set_seed(seed)
    model, tokenizer, _ = load_base_forecaster(base, part(model_config, SoftPromptConfig))
    reset_head_output(model)
    if model_config.model_max_length:
        tokenizer.model_max_length = model_config.model_max_length
    if make_samples is not None:
        dataset = make_samples(tokenizer)
    else:
        dataset = build_dataset(data_config, tokenizer, teacher=build_teacher(data_config.rationale_teacher))
    sample = next(iter(dataset["train"]))
    config = model.st_config
    shapes = {"history": data_config.history,
              "horizon": get_task(data_config.task).target_length(data_config.history, data_config.horizon),
              "channels": len(sample["scaler_mean"]), "coord_dim": len(sample["coords"][0])}
    differ = [f"{key} {value} (the base's: {getattr(config, key)})" for key, value in shapes.items()
              if value != getattr(config, key)]
    if differ:
        raise RecipeError(f"the recipe's data does not fit the base forecaster {base}: {', '.join(differ)}; prompt "
                          "tuning keeps the base's model, so window and channel the attribute as the base's recipe "
                          "did")
    return model, tokenizer, dataset, apply_freeze_plan(model, part(model_config, FreezeConfig))


def build_llm4hrs(data_config: DataConfig, model_config: ModelConfig, seed: int,
                  make_samples: Callable[[Any], Any] | None = None) -> tuple[Any, Any, Any, Any]:
    """``architecture: llm4hrs``: ``(imputer, tokenizer, dataset, freeze report)`` of :func:`build_forecaster` for
    the LLM4HRS imputer (:mod:`st_instruct.models.llm4hrs`; the recipe must impute graph samples,
    :func:`~st_instruct.configs.model.check_architecture`).

    The backbone (``model_name_or_path`` cut to ``model_num_layers``) and the tokenizer are built exactly as a saved
    folder rebuilds them (:func:`~st_instruct.models.backbones.build_base_backbone` of :func:`backbone_source`), so
    the frozen weights -- the ``random_llm`` control's random ones, drawn by the imputer under ``seed``, included --
    need not be saved. The samples are not tokenised (``make_samples(tokenizer)`` replaces them): the imputer reads
    the arrays only. It is sized by the data (``window`` = ``history``, ``C``), its own layers drawn under ``seed``,
    with ``control`` (no_llm / random_llm) as its controls, under the freeze plan ``frozen_blocks``."""
    check_architecture(data_config, model_config)
    backbone, tokenizer = build_base_backbone(backbone_source(model_config, seed))
    dataset = make_samples(tokenizer) if make_samples is not None else build_dataset(data_config)
    sample = next(iter(dataset["train"]))
    control = None if model_config.control == "none" else model_config.control
    config = LLM4HRSConfig(window=data_config.history, channels=len(sample["scaler_mean"]), control=control,
                           random_init_seed=seed if control == "random_llm" else 0)
    set_seed(seed)
    model = build_llm4hrs_imputer(backbone, config)
    return model, tokenizer, dataset, apply_frozen_blocks_plan(model)


def no_backbone_report(model: Any, frozen_st_modules: list[str] | None = None) -> Any:
    """The :class:`FreezeReport` of a forecaster without a backbone (the no-LLM control): every ST module trains but
    those of ``frozen_st_modules`` (e.g. a frozen pretrained ``st_encoder``), whose parameters it freezes."""
    frozen = set(frozen_st_modules or [])
    for name, module in model.st_modules().items():
        module.requires_grad_(name not in frozen)
    modules = {name: module for name, module in model.st_modules().items() if name not in frozen}
    groups = {name: [f"{name}.{key}" for key, _ in module.named_parameters()] for name, module in modules.items()}
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
    total = sum(p.numel() for p in model.parameters())
    return FreezeReport(plan="none (no backbone: control no_llm)", groups=groups, group_counts=counts,
                        trainable=sum(counts.values()), total=total)


def learned_node_table_size(data_config: DataConfig) -> int:
    """Rows of the learned node table of ``coordinates: learned``: the node count of the one training dataset."""
    series = load_series(data_config)
    if len(series) != 1:
        raise RecipeError(f"coordinates: learned gives every node id of one dataset its own trained row; with "
                          f"{len(series)} datasets ({', '.join(data.name for data in series)}) the ids collide: use "
                          "laplacian, geo or grid coordinates")
    return series[0].num_nodes


def init_memories_from_data(model: Any, train_dataset: Any, tokenizer: Any, patterns_per_slot: int = 16,
                            batch_size: int = 8, seed: int = 0, progress: bool = True) -> None:
    """Initialise every MRFFN memory from "key historical patterns" (ST-LINK): the k-means centroids of what its
    wrapped MLP reads at the ``<st_his>`` tokens of training samples -- history windows encoded by the (freshly
    built) model -- with ``patterns_per_slot`` times as many patterns as slots, samples drawn with ``seed``.
    ``progress`` shows a bar of the patterns encoded (one forward pass per ``batch_size`` samples)."""
    wrappers = memory_modules(model.backbone)
    wanted = patterns_per_slot * max(w.st_memory.slots for w in wrappers)
    order = np.random.default_rng(seed).permutation(len(train_dataset))
    collator = STDataCollator(tokenizer)
    patterns: list[list[torch.Tensor]] = [[] for _ in wrappers]
    found = 0
    with tqdm(total=wanted, desc="k-means memory patterns", unit="pattern", disable=not progress) as bar:
        for lo in range(0, len(order), batch_size):
            batch = collator([train_dataset[int(i)] for i in order[lo:lo + batch_size]])
            records = []
            with contextlib.ExitStack() as stack:
                records = [stack.enter_context(recorded_inputs(w)) for w in wrappers]
                model.predict(batch, reuse_prefix=False)  # every token: the records are read at his_positions
            mask = batch["node_mask"]
            for rows, record in zip(patterns, records, strict=True):
                hidden = record[0]
                rows.append(gather_positions(hidden, batch["his_positions"].to(hidden.device))[mask.to(hidden.device)]
                            .float().cpu())
            bar.update(min(int(mask.sum()), wanted - found))
            found += int(mask.sum())
            if found >= wanted:
                break
    slots = max(w.st_memory.slots for w in wrappers)
    if found < slots:
        raise RecipeError(f"mrffn_init: kmeans needs at least mrffn_slots = {slots} encoded history windows, the "
                          f"training split gives {found}; lower mrffn_slots or use mrffn_init: random")
    for wrapper, rows in zip(wrappers, patterns, strict=True):
        init_memory_from_patterns(wrapper, torch.cat(rows), seed=seed)


def backbone_source(model_config: ModelConfig, seed: int | None = None) -> Any:
    """The recipe's :class:`BackboneSource`: how a saved forecaster's base backbone is rebuilt. The ``random_llm``
    control needs the ``seed`` its random backbone was drawn with (:func:`build_forecaster`); the LLM4HRS imputer's
    draws its random backbone from the pretrained one itself (:class:`~st_instruct.models.llm4hrs.LLM4HRSConfig`
    records the seed), so its source is always the pretrained base."""
    if model_config.freeze_plan == "prompt":  # an attribute adapter: its base's backbone, and the base named
        source, _ = read_backbone_source(model_config.base_forecaster)
        return dataclasses.replace(source, base_forecaster=model_config.base_forecaster)
    random_init_seed = None
    if model_config.control == "random_llm" and model_config.architecture != LLM4HRS:
        if seed is None:
            raise RecipeError("control: random_llm rebuilds its random backbone from the seed it was drawn with, "
                              "and none was given (a bug of the caller: pass the training run's seed, or the "
                              "random_init_seed of the folder's st_backbone.json)")
        random_init_seed = seed
    return BackboneSource(model_config.model_name_or_path, model_config.model_num_layers,
                          model_config.model_load_in_4bit, random_init_seed)


def build_trainer(model: Any, data_config: DataConfig, model_config: ModelConfig, sft_config: Any,
                  train_dataset: Any, tokenizer: Any, backbone_seed: int | None,
                  broadcast_channels: int | None = None, **extra: Any) -> Any:
    """The :class:`STSFTTrainer` of a recipe: its collator (:func:`~st_instruct.samples.vision_collator.
    build_collator`: rendered images for a VLM backbone), its loss weights (the no-LLM control has no LM to score
    the answer text, so it trains on the regression loss alone, as the LLM4HRS imputer does), its ST modules'
    learning rate, and the :func:`backbone_source` saved with the model (``backbone_seed``: the seed a random_llm
    control's backbone was drawn with). ``extra``: further ``STSFTTrainer`` keywords."""
    no_lm = model_config.control == "no_llm" or model.backbone is None or isinstance(model, LLM4HRSImputer)
    lm_weight = 0.0 if no_lm else model_config.loss_lm_weight
    collator = build_collator(data_config, model, tokenizer, model_config.model_name_or_path, broadcast_channels)
    return STSFTTrainer(model, sft_config, train_dataset, tokenizer, backbone_source(model_config, backbone_seed),
                        task=get_task(data_config.task), loss_reg_weight=model_config.loss_reg_weight,
                        loss_lm_weight=lm_weight,
                        st_learning_rate=model_config.st_learning_rate, data_collator=collator,
                        module_learning_rates={"st_prompt": model_config.prompt_learning_rate},
                        adaptation=part(model_config, AdaptationConfig), **extra)


def resolve_resume(value: str | bool | None, output_dir: str | Path, announce: bool = True) -> str | None:
    """The checkpoint folder ``resume_from_checkpoint`` resumes from, or ``None``.

    A path must hold the full training state (:func:`checkpoint_missing`), else ``FileNotFoundError`` naming what is
    missing. ``true`` / ``last`` picks the last *complete* ``checkpoint-N`` of ``output_dir`` (newer incomplete ones,
    from a run killed while saving, are skipped) and, with ``announce``, prints which one.
    """
    if value in (None, False, "", "false", "none"):
        return None
    if value in (True, "true", "last"):
        checkpoints = checkpoint_folders(output_dir)
        for checkpoint in checkpoints:
            if not checkpoint_missing(checkpoint):
                skipped = [p.name for p in checkpoints[:checkpoints.index(checkpoint)]]
                if announce:
                    note = f" (skipping incomplete {', '.join(skipped)})" if skipped else ""
                    print(f"resuming from {checkpoint}, the last complete checkpoint{note}")
                return str(checkpoint)
        found = (f"its {', '.join(p.name for p in checkpoints)} lack files (was the run killed while saving?)"
                 if checkpoints else "it holds no checkpoint-N folder")
        raise FileNotFoundError(f"resume_from_checkpoint: {value} found no complete checkpoint in {output_dir}: "
                                f"{found}; train without resume_from_checkpoint (into a new output_dir)")
    missing = checkpoint_missing(value)
    if missing:
        raise FileNotFoundError(f"resume_from_checkpoint {value} lacks {', '.join(missing)}: resuming needs a "
                                "complete checkpoint-N folder of a training run (weights, optimizer, scheduler, RNG "
                                "and trainer state); pass one, or resume_from_checkpoint: true for the last complete "
                                "one in output_dir")
    return str(value)


def describe_output(output: Path) -> str:
    """What a non-empty training output folder holds, for the refusal to train into it."""
    checkpoints = ", ".join(p.name for p in checkpoint_folders(output))
    resume = f"{checkpoints}: to continue from them, pass --resume_from_checkpoint true" if checkpoints else ""
    if (output / BACKBONE_FILE).is_file():
        return "a trained model" + (f" and {resume}" if resume else "")
    return resume or f"{len(list(output.iterdir()))} entries"


def _same_on_every_process(value: str) -> str:
    """``value`` of the main process on every process of a distributed run."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def discard_failed_run(run_dir: Path, created: bool, diverged: bool) -> None:
    """After a failed run: keep ``run_dir`` if it holds complete checkpoints (work to resume from; says how), else
    remove it if this run created it, or what this run put into it (it was empty). After a run that ``diverged``
    (:class:`~st_instruct.configs.TrainingDivergedError`) the checkpoints are kept as what was learnt before, but
    resuming is not offered: it restores the learning rate with the optimizer state and repeats the divergence."""
    checkpoints = [p for p in checkpoint_folders(run_dir) if not checkpoint_missing(p)]
    if checkpoints:
        advice = (f"they predate the divergence, but resuming would repeat it: train again with a lower learning rate "
                  f"(with {OVERWRITE_FLAG} to replace this folder)" if diverged
                  else "resume with --resume_from_checkpoint true")
        print(f"training failed; kept {', '.join(p.name for p in checkpoints)} in {run_dir}: {advice}",
              file=sys.stderr)
    elif created:
        shutil.rmtree(run_dir, ignore_errors=True)
    elif run_dir.is_dir():
        for entry in run_dir.iterdir():
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While the block runs, SIGTERM (a scheduler's or ``kill``'s stop) raises ``SystemExit(143)`` in the main
    thread instead of ending the process at once, so the block's cleanup (``except`` / ``finally``) runs as on
    Ctrl-C; the previous handler is restored afterwards. As with Ctrl-C, the exception arrives when the main thread
    next runs Python code (one blocked inside a collective waits for it to return; SIGKILL still ends it at once).
    Elsewhere than the main thread Python cannot install a handler, and the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def stage_tensorboard_logs(trainer: Any, staged: Path) -> None:
    """Point the trainer's TensorBoard callback (``report_to: tensorboard``) at a folder inside ``staged`` instead
    of ``OUTPUT/runs/`` (unless ``$TENSORBOARD_LOGGING_DIR`` chose the place). A killed run then leaves its log only
    in ``staged``, a temporary sibling removed once its process is dead, not a ``runs/`` that makes the folder look
    used and mixes into the next run's; :func:`collect_tensorboard_logs` moves a complete run's log into the final
    save."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(staged / Path(default_logdir()).name)


def collect_tensorboard_logs(staged: Path, earlier: Path, staging: Path) -> None:
    """Put ``staging/runs/`` together for the final save, when this run logged into ``staged``
    (:func:`stage_tensorboard_logs`): the ``earlier`` complete runs' logs (``OUTPUT/runs/`` of a resumed run; copied,
    so an interrupted save leaves them as they were) plus this run's, moved; ``staged`` is removed."""
    if not staged.is_dir():
        return
    runs = staging / "runs"
    if earlier.is_dir():
        shutil.copytree(earlier, runs)
    runs.mkdir(exist_ok=True)
    for log in staged.iterdir():
        os.replace(log, runs / log.name)
    staged.rmdir()


def train(data_config: DataConfig, model_config: ModelConfig, sft_config: Any,
          overwrite_output_dir: bool = False) -> Path:
    """Train the forecaster of a recipe and save it; returns ``sft_config.output_dir``.

    The output directory holds the backbone's adapter (or weights), ``st_modules.safetensors`` +
    ``st_forecaster_config.json``, the tokenizer, ``recipe.yaml`` (every resolved value; it trains again as it is)
    and a model card (``README.md``); ``checkpoint-N`` folders hold the same plus the optimizer state. An LLM4HRS
    imputer's (``architecture: llm4hrs``) holds its trained weights and config in place of the ST modules' and no
    backbone weights or tokenizer (:mod:`st_instruct.models.saving`).

    Nothing is overwritten unasked: a non-empty ``output_dir`` is refused unless the run resumes from one of its
    checkpoints (``resume_from_checkpoint``) or ``overwrite_output_dir`` is set. With ``overwrite_output_dir`` the
    new run trains in a temporary sibling (``.NAME.partial-HOST-PID``: checkpoint rotation never sees the old run's
    checkpoints) that replaces the old folder only once its final save is complete; a failed or killed overwriting
    run leaves the old folder as it was (and its own checkpoints are discarded). The final save is staged and moved
    in with ``st_backbone.json`` last (:func:`st_instruct.outputs.staged_into`), the run's TensorBoard log among
    it as ``runs/NAME`` (written to a temporary sibling until then: :func:`stage_tensorboard_logs`). A run that
    fails before its first checkpoint removes the folder it created; one that fails later keeps its checkpoints
    (:func:`discard_failed_run`); SIGTERM counts as a failure (:func:`sigterm_as_exit`). A run whose loss or weights
    turn inf or nan stops before they are applied or saved (:class:`~st_instruct.configs.TrainingDivergedError`).
    Only the main process writes and moves.
    """
    output = Path(sft_config.output_dir)
    main = sft_config.process_index == 0
    if main:
        clean_stale_siblings(output.parent, output.name)
        clean_stale_siblings(output, "final")
        clean_stale_siblings(output, "runs")  # a killed run's TensorBoard log: alone, it leaves the folder empty
    resume = resolve_resume(sft_config.resume_from_checkpoint, output, announce=main)
    replacing = resume is None and is_nonempty(output)
    if replacing:
        check_writable(output, overwrite_output_dir, OVERWRITE_FLAG, describe_output(output))
    run_dir = Path(_same_on_every_process(str(sibling(output)))) if replacing else output
    created = not run_dir.exists()
    staged_logs = sibling(run_dir / "runs")
    sft_config.output_dir = str(run_dir)
    with sigterm_as_exit():
        try:
            model, tokenizer, dataset, report = build_forecaster(data_config, model_config, sft_config.seed)
            if main:
                if not torch.cuda.is_available():
                    print(f"no CUDA device: training on the CPU (bf16 {sft_config.bf16}, activation checkpointing "
                          f"{sft_config.activation_checkpointing}; see configs.cpu_training_defaults)")
                print(report.summary())
            recipe_dict(data_config, model_config, sft_config)  # its TrainingArguments defaults, before the trainer
            evaluate = sft_config.eval_strategy != "no"
            trainer = build_trainer(model, data_config, model_config, sft_config, dataset["train"], tokenizer,
                                    sft_config.seed,
                                    eval_dataset=dataset["validation"] if evaluate else None)
            if main:
                stage_tensorboard_logs(trainer, staged_logs)
            # every checkpoint's card and the final one show the recipe as recipe.yaml will record it
            trainer.card_recipe = lambda: {**recipe_dict(data_config, model_config, sft_config),
                                           "output_dir": str(output)}
            trainer.train(resume_from_checkpoint=resume)
            sft_config.output_dir = str(output)  # what recipe.yaml records
            if not main:
                trainer.save_model(str(run_dir))  # joins the collective gathers (ZeRO-3); only the main process writes
            else:
                with staged_into(run_dir, last=BACKBONE_FILE) as staging:
                    trainer.save_model(str(staging))
                    trainer.state.save_to_json(str(staging / TRAINER_STATE_FILE))  # the log history
                    save_template_copy(staging, data_config)  # records template_sha256 for the recipe
                    write_data_profiles(staging, data_config)  # what forecasting new values needs (inference)
                    recipe = recipe_dict(data_config, model_config, sft_config)
                    (staging / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False))
                    collect_tensorboard_logs(staged_logs, run_dir / "runs", staging)
                if replacing:
                    commit(run_dir, output, overwrite=True)
                what = "LLM4HRS imputer" if model_config.architecture == LLM4HRS else "forecaster"
                what = what if model_config.control == "none" else f"{model_config.control} control"
                print(f"saved the {what} to {output}")
        except BaseException as err:
            sft_config.output_dir = str(output)
            if main and replacing:
                shutil.rmtree(run_dir, ignore_errors=True)
            elif main:
                shutil.rmtree(staged_logs, ignore_errors=True)  # an unfinished run's log joins no folder
                discard_failed_run(run_dir, created, diverged=isinstance(err, TrainingDivergedError))
            raise
    trainer.accelerator.wait_for_everyone()
    return output
