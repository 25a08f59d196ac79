"""Freeze plans: which parameters of an :class:`~st_instruct.models.forecaster.STForecaster` train.

Every plan trains the ST modules (``st_encoder``, ``st_projector``, ``regression_head``), which are siblings of the
backbone and never wrapped by PEFT, and decides what of the backbone trains:

``frozen``
    nothing: UrbanGPT (Li et al., "UrbanGPT: Spatio-Temporal Large Language Models", KDD 2024) keeps the LLM
    frozen and trains the ST dependency encoder, the projector and the regression head.
``lora``
    low-rank adapters on the attention projections of every decoder layer, the base weights frozen: LoRA (Hu et al.,
    "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022) through ``peft``; ``model.backbone`` becomes a
    ``PeftModel``.
``pfa``
    partially frozen attention: ST-LLM (Liu et al., "Spatial-Temporal Large Language Model for Traffic
    Prediction", MDM 2024) trains every LayerNorm / RMSNorm (final norm included) and the whole attention block of
    the last ``U`` decoder layers; feed-forward blocks, embeddings, earlier attention and the LM head stay frozen.
    (ST-LLM's code only sets flags inside the blocks, which leaves GPT-2's position embeddings and final norm
    trainable by default; the final norm is trained here, the position embeddings are not, as the paper describes.)
``full``
    every parameter.
``qlora``
    LoRA on a backbone whose linear layers were quantised to 4-bit NF4 while loading: QLoRA (Dettmers et al.,
    "QLoRA: Efficient Finetuning of Quantized LLMs", NeurIPS 2023), through bitsandbytes
    (``get_backbone(..., load_in_4bit=True)``) and ``peft.prepare_model_for_kbit_training``. Works on the CPU.
``prompt``
    prompt tuning on a trained forecaster: PromptST (Zhang et al., "PromptST: Prompt-Enhanced Spatio-Temporal
    Multi-Attribute Prediction", CIKM 2023) pretrains one model on every attribute of a dataset, then tunes, for one
    attribute, only light prompt tokens and a fresh head on the frozen shared model. Here exactly two things train:
    the soft prompt (``st_soft_prompt``, :mod:`~st_instruct.models.soft_prompts`) and the regression head's output
    layer (``regression_head.out``, re-initialised by :func:`reset_head_output`: the fresh head). Nothing else does:
    not the backbone, not a LoRA adapter the base carries (it stays, frozen), not the encoder, projector, the rest
    of the head or any other ST module -- the one exception to "the ST modules always train". The training run
    loads the model from ``base_forecaster`` (:mod:`st_instruct.training.run`) and saves the two as a small
    attribute adapter that names its base (:mod:`st_instruct.models.saving`).

:func:`apply_freeze_plan` sets ``requires_grad`` in place and returns a :class:`FreezeReport`.

``frozen_blocks`` (:func:`apply_frozen_blocks_plan`, for the LLM4HRS imputer,
:class:`~st_instruct.models.llm4hrs.LLM4HRSImputer`; not a recipe plan of :data:`FREEZE_PLANS`: the recipe key
``architecture: llm4hrs`` implies it)
    LLM4HRS (Wang et al., IEEE TGRS 2025) and GPT4TS: every attention and feed-forward weight of the backbone frozen
    (and its token embeddings and LM head, which the imputer does not read); its norms (LayerNorm / RMSNorm, final
    norm included) and learned position embeddings (GPT-2's ``wpe``) train, and so do all of the imputer's own
    layers (input / output layers, its position table).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, PeftModel, TrainableTokensConfig, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from st_instruct.configs import FreezeConfig
from st_instruct.models.forecaster import ST_MODULE_NAMES, VISION_MODULE_NAMES, STForecaster
from st_instruct.models.llm4hrs import LLM4HRSImputer
from st_instruct.models.mrffn import MEMORY_MODULE_NAME, is_memory_parameter
from st_instruct.models.patching import (
    attention_module,
    attention_projection_names,
    decoder_layers,
    feed_forward_projection_names,
    input_embeddings,
    is_loaded_in_4bit,
    is_vision_language,
    language_model_path,
    layer_norms,
    unwrap,
    vision_module_path,
    vision_projector,
)
from st_instruct.models.soft_prompts import PROMPT_TUNED_MODULES

FREEZE_PLANS = ("frozen", "lora", "pfa", "full", "qlora", "prompt")
FROZEN_BLOCKS_PLAN = "frozen_blocks"  # the LLM4HRS imputer's plan (apply_frozen_blocks_plan)
PROMPT_PLAN_MODULES = PROMPT_TUNED_MODULES  # what freeze plan prompt trains: the soft prompt, the head's output layer
# recipe-friendly names in lora_target_modules, expanded per architecture (st_instruct.models.patching)
LORA_TARGET_ALIASES = {"attention": attention_projection_names, "mlp": feed_forward_projection_names}
MEMORY_GROUP = MEMORY_MODULE_NAME  # MRFFN memories inside the backbone: ST weights, trained in every plan
ADAPTER_GROUP = "adapter"  # PEFT adapter weights: saved by the PeftModel's save_pretrained
BACKBONE_GROUP = "backbone"  # trained base weights of the backbone: saved with the backbone itself


@dataclass(frozen=True)
class FreezeReport:
    """What a freeze plan left trainable.

    ``groups`` maps ``st_encoder`` / ``st_projector`` / ``regression_head`` / ``adapter`` (PEFT adapter weights) /
    ``backbone`` (trained base weights) to the names (as in ``model.named_parameters()``) of its trainable
    parameters; empty groups are left out. Counts are numbers of weights; a 4-bit weight counts as one, not half
    a byte.
    """

    plan: str
    groups: dict[str, list[str]]
    group_counts: dict[str, int]
    trainable: int
    total: int

    @property
    def trainable_names(self) -> list[str]:
        return [name for names in self.groups.values() for name in names]

    def summary(self) -> str:
        """One line for the log, e.g. ``freeze plan 'pfa': 14,632 of 81,448 parameters trainable (17.96%) --
        st_encoder 5,648, st_projector 2,080, regression_head 3,672, backbone 3,232``."""
        share = 100 * self.trainable / max(self.total, 1)
        parts = ", ".join(f"{group} {count:,}" for group, count in self.group_counts.items())
        return (f"freeze plan {self.plan!r}: {self.trainable:,} of {self.total:,} parameters trainable "
                f"({share:.2f}%) -- {parts}")


def apply_freeze_plan(model: STForecaster, freeze: FreezeConfig, frozen_st_modules: Sequence[str] = ()
                      ) -> FreezeReport:
    """Set which parameters of ``model`` train, in place, following the recipe's ``freeze`` concern
    (:class:`~st_instruct.configs.FreezeConfig`: its ``freeze_plan`` is one of :data:`FREEZE_PLANS`).

    For ``lora`` / ``qlora`` (and ``train_st_token_embeddings``) ``model.backbone`` is replaced by a ``PeftModel``
    around it. Applying a plan again is idempotent: a backbone that already carries the adapter the call asks for
    (this function's own, or one loaded with ``PeftModel.from_pretrained``) is kept and only the flags are set;
    one that carries another adapter is refused.

    What each key does:

    - ``freeze_plan``: ``frozen``, ``lora``, ``pfa``, ``full`` or ``qlora`` (see the module docstring); the ST
      modules always train.
    - ``lora_r``, ``lora_alpha``, ``lora_dropout``: rank, scaling numerator and dropout of the LoRA adapters.
    - ``lora_target_modules``: PEFT ``target_modules`` (names matched as suffixes of module paths); the aliases
      ``attention`` and ``mlp`` stand for the attention / feed-forward projections of the backbone's family.
      ``None``: the attention projections (``q_proj``/``k_proj``/``v_proj``/``o_proj``; GPT-2 ``attn.c_attn``,
      ``attn.c_proj``).
    - ``pfa_last_layers``: ``U`` of PFA, the number of last decoder layers whose attention trains (0: norms only).
    - ``train_st_token_embeddings``: also train the input embedding row of ``<st_pre>``, the token whose hidden
      states the regression head reads, as UrbanGPT lets its ST token embeddings learn. (``<st_his>`` rows are
      replaced by the projector's output, so they have nothing to learn; UrbanGPT also trains its start / end
      tokens, whose ids ``STForecasterConfig`` does not hold.) Done by a PEFT trainable-tokens delta on that one
      row, so the backbone becomes a ``PeftModel`` under every plan.
    - ``vision_tower_train: lora`` (a VLM under ``lora`` / ``qlora``): LoRA adapters on the vision tower's attention
      projections too. On a VLM the language model's LoRA targets are matched inside the language model only (the
      vision tower's layers have projections of the same names).

    ``frozen_st_modules``: ST modules (names of ``model.st_modules()``) that stay frozen in every plan: a pretrained
    ``st_encoder`` with ``st_encoder_freeze: true``, a VLM's ``st_vision_tower`` with ``vision_tower_train: frozen``
    (or ``lora``, where its adapters train).

    ``prompt`` (:func:`apply_prompt_plan`) trains the soft prompt and the head's output layer only, and keeps an
    adapter the backbone carries (frozen); ``frozen_st_modules`` does not apply to it.

    Returns a :class:`FreezeReport`. Raises ``ValueError``: ``pfa_last_layers`` beyond the backbone's layers,
    ``qlora`` on a backbone not loaded in 4-bit (``lora`` / ``pfa`` / ``full`` on one that is), a backbone already
    carrying another adapter.
    """
    plan, pfa_last_layers = freeze.freeze_plan, freeze.pfa_last_layers
    if plan == "prompt":
        return apply_prompt_plan(model)
    vision_lora = freeze.vision_tower_train == "lora"
    backbone = model.backbone
    quantised = is_loaded_in_4bit(backbone)
    if plan == "qlora" and not quantised:
        raise ValueError("plan 'qlora' needs a backbone loaded in 4-bit: set model_load_in_4bit: true in the recipe "
                         "(get_backbone(..., load_in_4bit=True)), or use plan 'lora' on a full-precision backbone")
    if quantised and plan not in ("qlora", "frozen"):
        raise ValueError(f"the backbone is loaded in 4-bit, whose weights cannot train: plan {plan!r} does not fit "
                         "it; use plan 'qlora' (LoRA on the 4-bit base) or 'frozen', or load the backbone in full "
                         "precision")
    if plan == "pfa" and not 0 <= pfa_last_layers <= len(decoder_layers(backbone)):
        raise ValueError(f"pfa_last_layers must be between 0 and the backbone's {len(decoder_layers(backbone))} "
                         f"decoder layers, found {pfa_last_layers}")

    if vision_lora and plan not in ("lora", "qlora"):
        raise ValueError(f"vision_tower_train: lora puts LoRA adapters on the vision tower, which needs freeze_plan "
                         f"lora or qlora, found {plan!r}")
    wanted = _peft_config(model, freeze)
    if _is_peft_model(backbone):
        _check_same_adapter(backbone, wanted, plan)
    elif wanted is not None:
        if plan == "qlora":
            # freezes the base, upcasts fp16/bf16 leftovers to fp32; gradient checkpointing is the trainer's switch
            backbone = prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)
        model.backbone = backbone = get_peft_model(backbone, wanted)

    adapter = adapter_parameters(backbone)
    base_trainable = _base_trainable(backbone, plan, pfa_last_layers)
    for parameter in backbone.parameters():
        parameter.requires_grad_(id(parameter) in adapter or id(parameter) in base_trainable)
    modules = model.st_modules()
    unknown = sorted(set(frozen_st_modules) - set(modules))
    if unknown:
        raise ValueError(f"frozen_st_modules names {unknown}, not ST modules of this model ({sorted(modules)})")
    for name, module in modules.items():  # incl. MRFFN memories inside the backbone, a VLM's vision parts
        module.requires_grad_(name not in frozen_st_modules)
    for parameter in backbone.parameters():  # adapters inside a frozen ST module (a VLM's vision tower) train
        if id(parameter) in adapter:
            parameter.requires_grad_(True)
    if is_vision_language(backbone):  # ST-VLM's adaptive fine-tuning always trains the projector (even inside a
        vision_projector(backbone).requires_grad_(True)  # frozen tower, as Qwen2-VL's merger is)
    return _report(model, plan, adapter)


def apply_prompt_plan(model: STForecaster) -> FreezeReport:
    """Freeze plan ``prompt`` (module docstring): every parameter of ``model`` frozen -- backbone, adapters, ST
    modules -- but the soft prompt's and the regression head's output layer's (:data:`PROMPT_PLAN_MODULES`). Works
    without a backbone too (the no-LLM control). ``ValueError`` when the model has no soft prompt."""
    if model.st_soft_prompt is None:
        raise ValueError("freeze plan 'prompt' trains the soft prompt, but this forecaster has none: build it with "
                         "soft_prompt_tokens > 0")
    model.requires_grad_(False)
    for name in PROMPT_PLAN_MODULES:
        model.get_submodule(name).requires_grad_(True)
    return _report(model, "prompt", adapter_parameters(model.backbone) if model.backbone is not None else set())


def reset_head_output(model: STForecaster, seed: int | None = None) -> None:
    """Give ``model`` a fresh head for freeze plan ``prompt``: the regression head's output layer ``W3``
    (``regression_head.out``) re-initialised as ``nn.Linear`` initialises itself, from torch's global generator
    (seeded with ``seed`` first when given); the rest of the head keeps the base's weights."""
    if seed is not None:
        torch.manual_seed(seed)
    model.regression_head.out.reset_parameters()


def _peft_config(model: STForecaster, freeze: FreezeConfig) -> Any:
    """The PEFT config the plan asks for (LoRA, trainable tokens, or ``None``)."""
    plan = freeze.freeze_plan
    tokens = [model.st_config.pre_token_id] if freeze.train_st_token_embeddings else None
    rows = input_embeddings(model.backbone).weight.shape[0]
    if tokens is not None and tokens[0] >= rows:
        raise ValueError(f"<st_pre> has id {tokens[0]}, outside the backbone's {rows} embedding rows; add the ST "
                         "tokens to the model with add_st_tokens(tokenizer, backbone)")
    if plan in ("lora", "qlora"):
        return LoraConfig(r=freeze.lora_r, lora_alpha=freeze.lora_alpha, lora_dropout=freeze.lora_dropout,
                          task_type="CAUSAL_LM", trainable_token_indices=tokens,
                          target_modules=_lora_targets(model.backbone, freeze.lora_target_modules,
                                                       freeze.vision_tower_train == "lora"))
    if tokens is not None:
        embedding = next(name for name, module in unwrap(model.backbone).named_modules()
                         if module is input_embeddings(model.backbone))
        return TrainableTokensConfig(target_modules=[embedding.rsplit(".", 1)[-1]], token_indices=tokens)
    return None


def _lora_targets(backbone: nn.Module, targets: Sequence[str] | None, vision_lora: bool = False) -> list[str] | str:
    """PEFT ``target_modules``: suffixes of module paths; for a VLM one regular expression (PEFT matches a string
    against the whole path) that keeps them inside the language model's decoder layers, plus, with
    ``vision_lora``, the vision tower's attention projections."""
    names: list[str] = []
    for target in targets if targets is not None else ["attention"]:
        expanded = LORA_TARGET_ALIASES[target](backbone) if target in LORA_TARGET_ALIASES else [target]
        names.extend(name for name in expanded if name not in names)
    if not names:
        raise ValueError("lora_target_modules is empty; leave it unset for the attention projections")
    if not is_vision_language(backbone):
        return names
    language = re.escape(language_model_path(backbone))
    pattern = rf"{language}\.layers\.\d+\.(?:{'|'.join(re.escape(name) for name in names)})"
    if vision_lora:
        vision = re.escape(vision_module_path(backbone))
        pattern += rf"|{vision}\..*\.(?:q_proj|k_proj|v_proj|qkv)"
    return pattern


def _is_peft_model(module: nn.Module) -> bool:
    return isinstance(module, PeftModel)


# the settings that define an adapter; PEFT fills in others (e.g. fan_in_fan_out for GPT-2's Conv1D) by itself
_ADAPTER_FIELDS = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "trainable_token_indices",
                   "token_indices")


def _check_same_adapter(backbone: nn.Module, wanted: Any, plan: str) -> None:
    """Refuse a PEFT-wrapped backbone whose active adapter is not the one ``plan`` would create."""
    existing = backbone.peft_config[backbone.active_adapter]
    if wanted is None:
        raise ValueError(f"the backbone already carries a PEFT {existing.peft_type.value} adapter, which plan "
                         f"{plan!r} does not use; build the model again from the plain backbone (or "
                         "merge_and_unload() it first)")
    differ = [f"{key}: has {getattr(existing, key, None)!r}, asked {getattr(wanted, key, None)!r}"
              for key in _ADAPTER_FIELDS if _normalised(getattr(existing, key, None))
              != _normalised(getattr(wanted, key, None))]
    if differ:
        raise ValueError(f"the backbone already carries a PEFT adapter that differs from what plan {plan!r} asks for "
                         f"({'; '.join(differ)}); build the model again from the plain backbone to change it")


def _normalised(value: Any) -> Any:
    if isinstance(value, (list, tuple, set)):
        return sorted(value)
    return value


def adapter_parameters(backbone: nn.Module) -> set[int]:
    """``id`` of every PEFT adapter parameter (LoRA A/B, trainable-token deltas) in ``backbone``."""
    if not _is_peft_model(backbone):
        return set()
    ids = set()
    for module in backbone.modules():
        if isinstance(module, BaseTunerLayer):
            for attribute in module.adapter_layer_names:
                ids.update(id(parameter) for parameter in getattr(module, attribute).parameters())
    return ids


def _base_trainable(backbone: nn.Module, plan: str, last_layers: int) -> set[int]:
    """``id`` of every base (non-adapter) backbone parameter that ``plan`` trains."""
    if plan == "full":
        return {id(parameter) for parameter in backbone.parameters()}
    if plan != "pfa":
        return set()
    modules = list(layer_norms(backbone))
    layers = decoder_layers(backbone)
    modules += [attention_module(backbone, layer) for layer in list(layers)[len(layers) - last_layers:]]
    return {id(parameter) for module in modules for parameter in module.parameters()}


def _count(parameter: nn.Parameter) -> int:
    # bitsandbytes packs two 4-bit weights per byte of its storage dtype
    if type(parameter).__name__ == "Params4bit":
        return parameter.numel() * 2 * parameter.element_size()
    return parameter.numel()


def _report(model: STForecaster, plan: str, adapter: set[int]) -> FreezeReport:
    groups: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    trainable = total = 0
    vision = {id(parameter): name for name, module in model.st_modules().items() if name in VISION_MODULE_NAMES
              for parameter in module.parameters()}
    if model.backbone is not None and is_vision_language(model.backbone):
        vision.update((id(parameter), "st_vision_projector") for parameter in
                      vision_projector(model.backbone).parameters())
    for name, parameter in model.named_parameters():
        total += _count(parameter)
        if not parameter.requires_grad:
            continue
        top = name.split(".", 1)[0]
        if top in ST_MODULE_NAMES:
            group = top
        elif is_memory_parameter(name):
            group = MEMORY_GROUP
        elif id(parameter) in vision and id(parameter) not in adapter:
            group = vision[id(parameter)]
        else:
            group = ADAPTER_GROUP if id(parameter) in adapter else BACKBONE_GROUP
        groups.setdefault(group, []).append(name)
        counts[group] = counts.get(group, 0) + _count(parameter)
        trainable += _count(parameter)
    order = [*ST_MODULE_NAMES, *VISION_MODULE_NAMES, MEMORY_GROUP, ADAPTER_GROUP, BACKBONE_GROUP]
    return FreezeReport(plan=plan, groups={group: groups[group] for group in order if group in groups},
                        group_counts={group: counts[group] for group in order if group in counts},
                        trainable=trainable, total=total)


def apply_frozen_blocks_plan(model: LLM4HRSImputer) -> FreezeReport:
    """Freeze plan ``frozen_blocks`` (module docstring) on an LLM4HRS imputer, in place: the backbone frozen but its
    norms (:func:`~st_instruct.models.patching.layer_norms`: GPT-2's ``ln_1`` / ``ln_2`` / ``ln_f``, Llama's
    ``input_layernorm`` / ``post_attention_layernorm`` / ``norm``) and position embedding tables
    (:func:`~st_instruct.models.llm4hrs.position_embedding_tables`), every own layer of the imputer trainable
    (:meth:`~st_instruct.models.llm4hrs.LLM4HRSImputer.trained_modules`, also what is saved). Without a backbone
    (the no-LLM control) everything trains. The report groups the trainable parameters by the imputer's
    own modules (``time_in``, ``location_out``, ``position``, ...) and ``backbone``."""
    model.requires_grad_(False)
    for module in model.trained_modules().values():
        module.requires_grad_(True)
    own = list(model.own_modules())
    groups: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    trainable = total = 0
    for name, parameter in model.named_parameters():
        total += _count(parameter)
        if not parameter.requires_grad:
            continue
        top = name.split(".", 1)[0]
        group = top if top in own else BACKBONE_GROUP
        groups.setdefault(group, []).append(name)
        counts[group] = counts.get(group, 0) + _count(parameter)
        trainable += _count(parameter)
    order = [*own, BACKBONE_GROUP]
    return FreezeReport(plan=FROZEN_BLOCKS_PLAN, groups={group: groups[group] for group in order if group in groups},
                        group_counts={group: counts[group] for group in order if group in counts},
                        trainable=trainable, total=total)
