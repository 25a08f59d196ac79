"""``STSFTTrainer``: TRL's ``SFTTrainer`` training an :class:`STForecaster` on the regression + LM loss.

UrbanGPT (Li et al., "UrbanGPT: Spatio-Temporal Large Language Models", KDD 2024) trains the LLM on
``λ_reg · MAE(Ŷ, Y) + λ_lm · CE(answer text)``; here the MAE is masked (missing targets and padded nodes do not
count, :func:`regression_mask`) and computed in scaled units. Both come out of ONE forward pass:

- the forecast ``Ŷ`` from the regression head at the ``<st_pre>`` tokens;
- the LM cross-entropy from logits computed only at the positions whose next token carries a label (the answer is
  a few tokens out of hundreds; on a 49k vocabulary the full logits would cost more than the backbone's layers). It
  equals the backbone's own ``labels=`` loss (a test checks it).

``st_learning_rate`` gives the ST modules trained from scratch (:meth:`STForecaster.st_modules`) a learning rate of
their own beside the adapters' / backbone's ``learning_rate`` (the stock optimizer's groups, each split in two).

Everything else is the stock trainer: the optimizer, schedules, gradient accumulation, TensorBoard and progress
bars, ``accelerate`` / DeepSpeed. The dataset arrives tokenised by :func:`st_instruct.samples.builder.build_dataset`,
so TRL's own preparation is switched off and :class:`STDataCollator` batches it. Checkpoints are saved by
:func:`save_forecaster` (adapter or backbone, ST modules, tokenizer) beside the trainer's optimizer, scheduler and
RNG states, and :func:`load_forecaster_weights` restores them, so ``resume_from_checkpoint`` continues to the same
weights as an uninterrupted run.

The LLM4HRS imputer (:class:`~st_instruct.models.llm4hrs.LLM4HRSImputer`, recipe key ``architecture: llm4hrs``)
trains in the same trainer on :func:`imputer_loss` instead: its batches carry the builder's arrays only, and saving
and restoring go through the same two functions, which know it.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from trl import SFTConfig, SFTTrainer

from st_instruct.configs import AdaptationConfig, TrainingDivergedError
from st_instruct.models.backbones import BackboneSource
from st_instruct.models.card import write_model_card
from st_instruct.models.forecaster import STForecaster, regression_mask
from st_instruct.models.llm4hrs import LLM4HRSImputer, masked_l1
from st_instruct.models.saving import load_forecaster_weights, save_forecaster
from st_instruct.samples.collator import STDataCollator
from st_instruct.samples.tokenize import IGNORE_INDEX
from st_instruct.tasks import Task
from st_instruct.training.reconstruction import reconstruction_loss, require_reconstruction_path

TRAINING_ARGS_NAME = "training_args.bin"  # as transformers.Trainer names it


def lm_loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[K]`` positions ``k`` whose next token ``labels[:, k + 1]`` is labelled in any row of ``labels`` [B, S]."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)


def forecaster_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor], task: Task, loss_reg_weight: float,
                    loss_lm_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """``(loss, regression loss, LM loss, outputs)`` of one ``STDataCollator`` batch in one forward pass:
    ``loss_reg_weight · task.loss + loss_lm_weight · LM loss`` (the logits are computed at the labelled positions
    only, and not at all when ``loss_lm_weight`` is 0)."""
    labels = inputs["labels"]
    features = {key: value for key, value in inputs.items() if key != "labels"}
    if loss_lm_weight > 0:
        positions = lm_loss_positions(labels)
        outputs = model(**features, logits_to_keep=positions)
        targets = labels[:, positions + 1]
        count = (targets != IGNORE_INDEX).sum()
        lm_loss = F.cross_entropy(outputs.logits.float().flatten(0, 1), targets.flatten(),
                                  ignore_index=IGNORE_INDEX, reduction="sum") / count.clamp(min=1)
    else:  # skip the vocabulary projection altogether
        outputs = model(**features, logits_to_keep=1)
        lm_loss = outputs.predictions.new_zeros(())
    reg_loss = task.loss(outputs.predictions, inputs["target"], regression_mask(inputs))
    return loss_reg_weight * reg_loss + loss_lm_weight * lm_loss, reg_loss, lm_loss, outputs


def imputer_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor], loss_reg_weight: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, L1, 0, estimate)`` of one batch for the LLM4HRS imputer: its estimate [B, L, N, C] of every entry
    from the visible ``history`` (through ``model``'s forward, so a DDP wrapper syncs the gradients), and
    ``loss_reg_weight ·`` the L1 over the hidden entries whose truth is known, of real nodes
    (:func:`~st_instruct.models.llm4hrs.masked_l1` on ``target_mask & node_mask``; LLM4HRS's loss). Padded nodes
    stand after the real ones, so the causal locations pass never lets them reach a real node."""
    estimate = model(inputs["history"], inputs["history_mask"].bool())
    reg_loss = masked_l1(estimate, inputs["target"], regression_mask(inputs))
    return loss_reg_weight * reg_loss, reg_loss, reg_loss.new_zeros(()), estimate


class STSFTTrainer(SFTTrainer):
    """Train an :class:`STForecaster` on ``loss_reg_weight · masked MAE + loss_lm_weight · LM loss``.

    Args:
        model: the forecaster, its freeze plan already applied (``apply_freeze_plan``); or an LLM4HRS imputer under
            ``apply_frozen_blocks_plan``, trained on :func:`imputer_loss` (``loss_lm_weight`` 0).
        args: TRL ``SFTConfig``; ``remove_unused_columns`` is forced off (the ST columns must reach the collator) and
            dataset preparation skipped (the builder tokenised the data). Packing and padding-free batches do not
            apply to ST samples and are refused.
        train_dataset / eval_dataset: splits of ``build_dataset(data_config, tokenizer)``.
        processing_class: the tokenizer with the ST tokens (saved with every checkpoint).
        backbone_source: how the base backbone is rebuilt when loading a checkpoint (written to it).
        task: the recipe's task (:mod:`st_instruct.tasks`), whose loss is the regression loss.
        loss_reg_weight / loss_lm_weight: λ_reg and λ_lm (λ_lm must be 0 for a forecaster without a backbone).
        broadcast_channels: train a ``C``-channel model on one-channel data (``STDataCollator``'s option).
        data_collator: batches the samples instead of ``STDataCollator`` (a VLM backbone's
            :class:`~st_instruct.samples.vision_collator.STVisionCollator`, which takes ``broadcast_channels``
            itself).
        st_learning_rate: learning rate of the ST modules' parameters (:meth:`STForecaster.st_modules`: encoder,
            projector, head with its skip path, RevIN, node table, SE rotation, MRFFN memories); the others (adapters
            or backbone) keep ``args.learning_rate``. ``None``: ``args.learning_rate`` for all.
        module_learning_rates: ST module name -> its own learning rate instead (UniST's memory prompt,
            ``st_prompt``, trained from scratch beside a pretrained encoder).
        adaptation: the recipe's :class:`~st_instruct.configs.AdaptationConfig`; with ``reconstruction_weight`` > 0
            each step adds ``λ_rec · `` the masked reconstruction loss of the batch's history, a second pass
            (:func:`~st_instruct.training.reconstruction.reconstruction_loss`; masks drawn from a generator seeded
            by ``args.seed`` and the process index).

    Logs ``loss_reg`` and ``loss_lm`` (unweighted, averaged over the logging interval) beside ``loss``, and
    ``loss_rec`` with the reconstruction loss.
    """

    # compute_loss returns the mean over one micro-batch; Trainer divides it by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, model: STForecaster, args: SFTConfig, train_dataset: Any, processing_class: Any,
                 backbone_source: BackboneSource, task: Task, loss_reg_weight: float = 1.0,
                 loss_lm_weight: float = 0.1,
                 eval_dataset: Any = None, callbacks: list | None = None,
                 broadcast_channels: int | None = None, st_learning_rate: float | None = None,
                 data_collator: Any = None, module_learning_rates: dict[str, float] | None = None,
                 adaptation: AdaptationConfig | None = None) -> None:
        if args.packing or args.padding_free:
            raise ValueError("packing / padding_free concatenate samples, but each ST sample carries its own arrays "
                             "and token positions; set packing: false and padding_free: false")
        if loss_reg_weight < 0 or loss_lm_weight < 0 or loss_reg_weight + loss_lm_weight == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, found {loss_reg_weight}, {loss_lm_weight}")
        self.imputer = isinstance(model, LLM4HRSImputer)
        if (model.backbone is None or self.imputer) and (loss_lm_weight > 0 or loss_reg_weight == 0):
            what = "the LLM4HRS imputer" if self.imputer else "a forecaster without a backbone (the no-LLM control)"
            raise ValueError(f"{what} has no LM loss: train it with loss_lm_weight 0 and loss_reg_weight > 0, found "
                             f"{loss_lm_weight}, {loss_reg_weight}")
        args.remove_unused_columns = False
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        self.backbone_source = backbone_source
        self.task = task
        self.loss_reg_weight = float(loss_reg_weight)
        self.loss_lm_weight = float(loss_lm_weight)
        if st_learning_rate is not None and not st_learning_rate > 0:
            raise ValueError(f"st_learning_rate must be > 0 (or None for learning_rate), found {st_learning_rate}")
        self.st_learning_rate = st_learning_rate
        self.module_learning_rates = {name: lr for name, lr in (module_learning_rates or {}).items()
                                      if lr is not None}
        if any(not lr > 0 for lr in self.module_learning_rates.values()):
            raise ValueError(f"module learning rates must be > 0, found {self.module_learning_rates}")
        self.adaptation = adaptation if adaptation is not None and adaptation.reconstruction_weight > 0 else None
        if self.adaptation is not None:
            require_reconstruction_path(model, "reconstruction_weight > 0")
        collator = data_collator or STDataCollator(processing_class, broadcast_channels=broadcast_channels)
        super().__init__(model=model, args=args, data_collator=collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processing_class,
                         callbacks=callbacks)
        # SFTTrainer patches a fused LM head onto the model's forward; it only acts on `fused_lm_head=True`, which
        # this trainer never passes, so drop it and keep the forecaster's forward as written.
        vars(self.model).pop("forward", None)
        self.mask_generator = torch.Generator().manual_seed(args.seed * 1000 + self.accelerator.process_index)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The stock optimizer (its weight-decay groups, optimizer class and arguments); with ``st_learning_rate``
        each of its groups split into the non-ST parameters (``learning_rate``) and the ST modules' parameters
        (``st_learning_rate``). Done before any step, so there is no optimizer state to move; the scheduler, built
        afterwards, scales every group's own rate by the same factor. ``module_learning_rates`` split the ST
        modules they name off again, at their own rates. The split is deterministic, so a checkpoint's
        optimizer state loads back into the same groups on resume."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if (self.st_learning_rate is None and not self.module_learning_rates) or not fresh:
            return optimizer
        opt_model = self.model if model is None else model
        modules = opt_model.st_modules()
        rate_of: dict[int, float] = {}  # parameter id -> its rate; absent: the group's own (learning_rate)
        for name, module in modules.items():
            rate = self.module_learning_rates.get(name, self.st_learning_rate)
            if rate is not None:
                rate_of.update({id(p): rate for p in module.parameters()})
        rates = sorted(set(rate_of.values()))
        groups = []
        for group in optimizer.param_groups:
            groups.append({**group, "params": [p for p in group["params"] if id(p) not in rate_of]})
            groups += [{**group, "params": [p for p in group["params"] if rate_of.get(id(p)) == rate], "lr": rate}
                       for rate in rates]
        optimizer.param_groups = groups
        return optimizer

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """``λ_reg · masked MAE + λ_lm · LM loss`` of one micro-batch (an ``STDataCollator`` batch), one forward.

        A training loss that is inf or nan on any process stops training with :class:`TrainingDivergedError` here,
        before its backward pass and optimizer step: the weights stay as the last finite step left them (every
        process sees the same gathered parts, so all of them stop). At the first step no update is to blame, and the
        message says so."""
        mode = "train" if model.training else "eval"
        if self.imputer:
            loss, reg_loss, lm_loss, outputs = imputer_loss(model, inputs, self.loss_reg_weight)
        else:
            loss, reg_loss, lm_loss, outputs = forecaster_loss(model, inputs, self.task, self.loss_reg_weight,
                                                               self.loss_lm_weight)
        rec = None
        if self.adaptation is not None:
            rec_loss = reconstruction_loss(model, inputs, self.adaptation.reconstruction_mask,
                                           self.adaptation.reconstruction_ratio, self.mask_generator)
            loss = loss + self.adaptation.reconstruction_weight * rec_loss
            rec = self.accelerator.gather_for_metrics(rec_loss.detach()[None]).mean().item()
        parts = self.accelerator.gather_for_metrics(torch.stack([loss, reg_loss, lm_loss]).detach()[None]).mean(0)
        total, reg, lm = parts.tolist()
        if model.training and not parts.isfinite().all():
            where = f"loss is {total:g} at step {self.state.global_step + 1} (loss_reg {reg:g}, loss_lm {lm:g})"
            if self.state.global_step == 0:
                raise TrainingDivergedError(
                    f"{where}, before any step changed the weights: the backbone or the data give inf / nan, not the "
                    "learning rate; check the backbone's weights, its precision (bf16 / fp16) and the dataset")
            raise TrainingDivergedError(
                f"{where}: training diverged and was stopped before this step changed the weights; lower the "
                f"learning rate ({self._learning_rates()}) or add warmup_steps, and train again from the start")
        self._metrics[mode]["loss_reg"].append(reg)
        self._metrics[mode]["loss_lm"].append(lm)
        if rec is not None:
            self._metrics[mode]["loss_rec"].append(rec)
        return (loss, outputs) if return_outputs else loss

    def _learning_rates(self) -> str:
        """The recipe's learning rates, as the keys that set them (for the message of a diverged run)."""
        rates = f"learning_rate {self.args.learning_rate:g}"
        return rates if self.st_learning_rate is None else f"{rates}, st_learning_rate {self.st_learning_rate:g}"

    def prediction_step(self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[torch.Tensor, None, None]:
        """Evaluation reports the loss only: forecasts are scored by ``st_instruct.evaluation`` in original units."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # what every saved folder's model card shows as its recipe (st_instruct.models.card.write_model_card); set by the
    # training entry, None: no card (a few-shot run writes its own at the end)
    card_recipe: Any = None

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """No TRL model card: every save writes st_instruct's (``st_instruct.models.card.write_model_card``)."""

    def init_hf_repo(self, *args: Any, **kwargs: Any) -> None:
        """No repo is made at start: with ``push_to_hub`` the training entry pushes the final folder once it is
        complete, through ``st_instruct.hub.push_to_hub`` (the same files as ``st-instruct push``)."""

    def push_to_hub(self, *args: Any, **kwargs: Any) -> None:
        """Nothing is pushed from inside the trainer (see :meth:`init_hf_repo`): TRL's push would upload PEFT's card
        and TensorBoard files without the recipe."""

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Checkpoints stay local (:meth:`init_hf_repo`)."""

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Checkpoint / final weights as :func:`save_forecaster` writes them, the training arguments and the
        project's model card (:attr:`card_recipe`). Weights that turned inf or nan (a finite loss can still step
        into them) are never written: :class:`TrainingDivergedError` instead, so no checkpoint or final folder of a
        diverged run exists to be resumed or loaded. Every process raises it together (one all-reduce: under ZeRO-3
        only the main process holds the gathered ``state_dict``, and a process left alone would wait forever)."""
        weights = state_dict.values() if state_dict is not None else \
            (p for p in self.model.parameters() if p.requires_grad)
        non_finite = not all(w.isfinite().all() for w in weights if w.is_floating_point())
        if self.accelerator.reduce(torch.tensor(int(non_finite), device=self.accelerator.device), "max").item():
            raise TrainingDivergedError(
                f"the weights turned inf or nan at step {self.state.global_step} (they were not saved): training "
                f"diverged; lower the learning rate ({self._learning_rates()}) or add warmup_steps, and train again "
                "from the start")
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        save_forecaster(self.model, output_dir, self.backbone_source, self.processing_class, state_dict=state_dict)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        if self.card_recipe is not None:
            write_model_card(output_dir, recipe=self.card_recipe() if callable(self.card_recipe) else self.card_recipe)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        load_forecaster_weights(model if model is not None else self.model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        load_forecaster_weights(self.model, self.state.best_model_checkpoint)
