"""The model part of a recipe: one dataclass per concern, each both what the recipe sets and what the module reads.

A setting is declared once, in its concern, under its recipe key (``st_encoder_dim``, ``se_pairs``, ...), and the
module that uses it reads that same object (as PEFT's ``LoraConfig`` is both what a user writes and
``adapter_config.json``): :class:`STEncoderConfig` (:func:`~st_instruct.models.st_encoders.build_st_encoder`),
:class:`HeadConfig` (projector, RevIN and regression head), :class:`SEAttentionConfig`
(:mod:`~st_instruct.models.se_attention`), :class:`MemoryConfig` (:mod:`~st_instruct.models.mrffn`),
:class:`FusionConfig` (:mod:`~st_instruct.models.fusion`), :class:`GraphConfig`
(:mod:`~st_instruct.models.graph_encoders`), :class:`PromptConfig` (:mod:`~st_instruct.models.memory_prompts`),
:class:`SoftPromptConfig` (:mod:`~st_instruct.models.soft_prompts`) and :class:`FreezeConfig`
(:mod:`~st_instruct.training.freeze`).
A saved forecaster's ``st_forecaster_config.json`` is the data's shapes plus these objects
(:class:`~st_instruct.models.forecaster.STForecasterConfig`).

:class:`ModelConfig` is every concern at once -- it inherits them, so the recipe stays one flat YAML whose keys TRL's
parser reads -- plus what belongs to the training run (backbone, learning rates, loss weights, the encoder to start
from, the control). :func:`part` takes one concern out of it; nothing is copied by hand. A new option of, say, the
encoder is one field of :class:`STEncoderConfig` and its use in the module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from st_instruct.configs.checks import RecipeError, check_choice, check_fields, check_size
from st_instruct.configs.pretrain import MASK_FAMILY_NAMES

# mirrored from st_instruct.training.freeze.FREEZE_PLANS and st_instruct.models.st_encoders.ENCODERS (a test checks
# they agree) so reading a recipe imports neither torch-heavy module
FREEZE_PLAN_NAMES = ("frozen", "lora", "pfa", "full", "qlora", "prompt")
ST_ENCODER_NAMES = ("patch", "tcn", "grid_patch")
CONTROLS = ("none", "no_llm", "random_llm")
HEAD_SKIP_INITS = ("closed", "readout")
MRFFN_INITS = ("kmeans", "random")
# mirrored from st_instruct.data.air_graphs.GRAPH_KINDS (a test checks they agree)
ST_GRAPH_NAMES = ("none", "static", "static_wind")
VISION_TOWER_TRAINING = ("frozen", "lora", "full")
# mirrored from st_instruct.models.llm4hrs.FORECASTER / ARCHITECTURE (a test checks they agree)
ARCHITECTURES = ("forecaster", "llm4hrs")
# the ModelConfig keys of the forecaster's own parts besides its concerns: not read by architecture llm4hrs
FORECASTER_KEYS = ("model_load_in_4bit", "prompt_learning_rate", "st_encoder_init", "st_encoder_freeze",
                   "base_forecaster")

Concern = TypeVar("Concern")


def part(config: Any, concern: type[Concern]) -> Concern:
    """The ``concern`` (one of the dataclasses below) of ``config`` -- a :class:`ModelConfig`, or anything holding
    its fields -- as its own object: the same field values, no copy by hand."""
    return concern(**{f.name: getattr(config, f.name) for f in dataclasses.fields(concern)})


@dataclass
class STEncoderConfig:
    """The ST encoder: each node's history (with time of day, day of week and its coordinates) as one vector
    (UrbanGPT, ST-LLM, STID). What a pretrained encoder is checked against (:mod:`st_instruct.pretraining`)."""

    st_encoder: str = field(default="patch", metadata={
        "help": "ST encoder: patch (ST-LLM linear patch embedding) | tcn (UrbanGPT gated dilated convolutions) | "
                "grid_patch (UniST 3-D patches of a grid; coordinates: grid)"})
    st_encoder_dim: int = field(default=64, metadata={
        "help": "width of each of the encoder's four parts (its output is 4x this)"})
    st_encoder_steps_per_day: int = field(default=288, metadata={
        "help": "rows of the encoder's time-of-day table (288 = 5-minute resolution; coarser data is mapped onto "
                "it)"})
    st_encoder_patch_time: int = field(default=2, metadata={
        "help": "grid_patch encoder: steps per 3-D patch (UniST's t; the history is padded at its start to a "
                "multiple)"})
    st_encoder_patch_space: int = field(default=2, metadata={
        "help": "grid_patch encoder: rows and columns per 3-D patch (UniST's p; the grid is padded to a multiple)"})
    st_encoder_tcn_layers: int = field(default=3, metadata={
        "help": "tcn encoder: gated dilated convolution layers (dilations 1, 2, 4, ...)"})
    st_encoder_tcn_kernel_size: int = field(default=2, metadata={"help": "tcn encoder: temporal kernel size"})
    st_encoder_mlp_layers: int = field(default=0, metadata={
        "help": "STID fusion: residual MLP blocks over the encoder's concatenated [history, time of day, day of week, "
                "space] features (0 = none; with a linear readout the encoder is then STID)"})
    st_encoder_mlp_dropout: float = field(default=0.0, metadata={
        "help": "dropout inside the fusion blocks (0 as this harness's STID baseline; the STID paper uses 0.15)"})

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("st_encoder", self.st_encoder, ST_ENCODER_NAMES)
        for key in ("st_encoder_dim", "st_encoder_steps_per_day", "st_encoder_tcn_layers",
                    "st_encoder_tcn_kernel_size", "st_encoder_mlp_layers", "st_encoder_patch_time",
                    "st_encoder_patch_space"):
            check_size(key, getattr(self, key))
        if not 0 <= self.st_encoder_mlp_dropout < 1:
            raise RecipeError(f"st_encoder_mlp_dropout must be in [0, 1), found {self.st_encoder_mlp_dropout}")


@dataclass
class HeadConfig:
    """The parts around the backbone: the projector of the encoder's vectors into it, the regression head reading it
    at the ``<st_pre>`` tokens (UrbanGPT) with its skip path, and RevIN around both."""

    st_projector_layers: int = field(default=1, metadata={
        "help": "ST -> text projector: 1 = linear (UrbanGPT), 2 = MLP"})
    head_dim: int = field(default=128, metadata={"help": "width of the regression head's W1 / W2"})
    head_skip: bool = field(default=False, metadata={
        "help": "gated skip path: the head also reads the ST encoder's per-node features through a linear map, "
                "scaled by a learned gate that starts at 0 (so training starts from the plain head's forecast)"})
    head_skip_init: str = field(default="closed", metadata={
        "help": "closed: the skip path starts shut (gate 0) | readout: it starts as the forecast readout pretrained "
                "with the encoder of st_encoder_init (gate 1) and the head's LLM path at zero, so training starts "
                "from the pretrained encoder's forecast and the LLM path learns what it adds"})
    revin: bool = field(default=False, metadata={
        "help": "RevIN: normalise each node's history by its own mean/std (learnable affine), de-normalise the "
                "forecast"})
    reconstruction_head: bool = field(default=False, metadata={
        "help": "a second head reading the same hidden states that reconstructs the history from a masked copy of "
                "it: the reconstruction path test-time adaptation tunes on (train it with reconstruction_weight > 0)"})

    def __post_init__(self) -> None:
        check_fields(self)
        check_size("st_projector_layers", self.st_projector_layers)
        check_size("head_dim", self.head_dim)
        check_choice("head_skip_init", self.head_skip_init, HEAD_SKIP_INITS)


@dataclass
class SEAttentionConfig:
    """ST-LINK's SE-Attention (Jeon et al., CIKM 2025): rotary attention also rotated by the node coordinates."""

    se_attention: bool = field(default=False, metadata={
        "help": "ST-LINK SE-Attention: also rotate q/k of the ST tokens by angles from the node coordinates"})
    se_pairs: int = field(default=8, metadata={
        "help": "SE-Attention: how many rotary frequency pairs carry the spatial angle (the lowest-frequency ones "
                "unless se_pair_indices names them)"})
    se_pair_indices: list[int] | None = field(default=None, metadata={
        "help": "SE-Attention: the se_pairs rotary frequency pairs (indices in [0, head_dim / 2)) that carry the "
                "spatial angle; null = the lowest-frequency ones"})
    se_learned_scale: bool = field(default=True, metadata={"help": "SE-Attention: a learned angle scale per head"})
    se_init_scale: float = field(default=0.1, metadata={
        "help": "SE-Attention: initial size of the spatial angles (1 = unit-variance angles per unit coordinate)"})

    def __post_init__(self) -> None:
        check_fields(self)
        check_size("se_pairs", self.se_pairs)
        if self.se_pair_indices is not None:
            for index in self.se_pair_indices:
                check_size("se_pair_indices", index, "se_pair_index")
            if len(set(self.se_pair_indices)) != len(self.se_pair_indices) or \
                    len(self.se_pair_indices) != self.se_pairs:
                raise RecipeError(f"se_pair_indices must name se_pairs = {self.se_pairs} distinct pairs, found "
                                  f"{self.se_pair_indices}")


@dataclass
class MemoryConfig:
    """ST-LINK's MRFFN: a memory of key historical patterns retrieved inside the decoder layers' feed-forward."""

    mrffn: bool = field(default=False, metadata={
        "help": "ST-LINK MRFFN: memory-retrieval feed-forward in the decoder layers of mrffn_layers"})
    mrffn_layers: list[int] = field(default_factory=lambda: [-1], metadata={
        "help": "MRFFN: decoder layers whose MLP gets a memory (negative counts from the last)"})
    mrffn_slots: int = field(default=64, metadata={"help": "MRFFN: memory slots M"})
    mrffn_key_dim: int = field(default=64, metadata={"help": "MRFFN: width of the memory keys"})
    mrffn_top_k: int | None = field(default=4, metadata={"help": "MRFFN: slots retrieved per token (null = all)"})
    mrffn_init: str = field(default="kmeans", metadata={
        "help": "MRFFN memory init: kmeans (of encoded training history windows) | random"})

    def __post_init__(self) -> None:
        check_fields(self)
        if not isinstance(self.mrffn_layers, list):
            raise RecipeError(f"mrffn_layers must be a list of decoder layer indices, found {self.mrffn_layers!r}")
        if self.mrffn and not self.mrffn_layers:
            raise RecipeError("mrffn: true needs at least one layer in mrffn_layers")
        for index in self.mrffn_layers:
            check_size("mrffn_layers", index, "decoder_layer")
        for key in ("mrffn_slots", "mrffn_key_dim"):
            check_size(key, getattr(self, key))
        check_size("mrffn_top_k", self.mrffn_top_k, nullable=True)
        if self.mrffn_top_k is not None and self.mrffn_top_k > self.mrffn_slots:
            raise RecipeError(f"mrffn_top_k must be in 1 .. mrffn_slots ({self.mrffn_slots}) or null, found "
                              f"{self.mrffn_top_k}")
        check_choice("mrffn_init", self.mrffn_init, MRFFN_INITS)


@dataclass
class FusionConfig:
    """ST-VLM's early fusion: the ST tokens attend to the image and text tokens before the first decoder layer."""

    st_fusion: bool = field(default=False, metadata={
        "help": "ST-VLM (vision-language backbones): gated cross-attention of the ST tokens to the image and text "
                "tokens before the first decoder layer, gate starting at 0 (st_instruct.models.fusion)"})
    st_fusion_heads: int = field(default=4, metadata={"help": "heads of the fusion's cross-attention"})

    def __post_init__(self) -> None:
        check_fields(self)
        check_size("st_fusion_heads", self.st_fusion_heads)


@dataclass
class GraphConfig:
    """AirGPT's graph encoder (Li, Chen, Xu, Information Fusion 2025): static distance and dynamic wind graphs."""

    st_graph: str = field(default="none", metadata={
        "help": "AirGPT graph encoder on the ST tokens (stations with lat/lon): none | static (distance graph "
                "exp(-d^2 / 2 sigma^2)) | static_wind (gated fusion with the wind graph; needs wind speed and "
                "direction channels in the dataset, read even when dataset_channels leaves them out)"})
    st_graph_sigma0_km: float = field(default=10.0, metadata={
        "help": "wind graph: reach of calm air, km (sigma0 in exp(-d^2 / 2 (sigma0 + alpha v)^2))"})
    st_graph_alpha_km: float = field(default=5.0, metadata={
        "help": "wind graph: extra reach per m/s of wind speed, km (alpha)"})

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("st_graph", self.st_graph, ST_GRAPH_NAMES)
        if not self.st_graph_sigma0_km > 0 or self.st_graph_alpha_km < 0:
            raise RecipeError(f"st_graph_sigma0_km must be > 0 and st_graph_alpha_km >= 0, found "
                              f"{self.st_graph_sigma0_km}, {self.st_graph_alpha_km}")


@dataclass
class PromptConfig:
    """UniST's memory prompts (Yuan et al., KDD 2024): spatial and temporal memory pools queried by the window's
    four priors (:mod:`~st_instruct.models.memory_prompts`; the batch carries the priors,
    :class:`~st_instruct.data.prompt_context.WindowPriors`)."""

    unist_prompts: bool = field(default=False, metadata={
        "help": "add UniST's memory prompt to each ST token: spatial closeness (neighbour mean), spatial hierarchy "
                "(the mean over a wider neighbourhood), temporal closeness (the latest steps) and temporal period "
                "(the forecast steps' values one day and one week earlier: the model reads a week of history)"})
    unist_spatial_slots: int = field(default=512, metadata={"help": "slots of the spatial memory pool"})
    unist_temporal_slots: int = field(default=512, metadata={"help": "slots of the temporal memory pool"})
    unist_prompt_dim: int = field(default=64, metadata={"help": "width of the memory slots and their queries"})
    unist_closeness_steps: int = field(default=3, metadata={
        "help": "temporal closeness: the latest steps of the history that query the temporal memory"})

    def __post_init__(self) -> None:
        check_fields(self)
        for key in ("unist_spatial_slots", "unist_temporal_slots", "unist_prompt_dim", "unist_closeness_steps"):
            check_size(key, getattr(self, key))


@dataclass
class SoftPromptConfig:
    """PromptST's prompt tuning (Zhang et al., "PromptST: Prompt-Enhanced Spatio-Temporal Multi-Attribute
    Prediction", CIKM 2023) on an LLM: learned virtual tokens before the prompt (Lester et al., EMNLP 2021), and with
    ``soft_prompt_deep`` per-layer ones (VPT-deep, PromptST's prompts at every temporal layer)
    (:mod:`~st_instruct.models.soft_prompts`; trained alone with ``freeze_plan: prompt``)."""

    soft_prompt_tokens: int = field(default=0, metadata={
        "help": "learned virtual tokens prepended to the LLM's input sequence (0 = none); without a backbone (the "
                "no-LLM control) one learned vector added to every node's projected features"})
    soft_prompt_deep: bool = field(default=False, metadata={
        "help": "deep prompts: at the input of every decoder layer after the first, the virtual positions are "
                "overwritten by that layer's own learned vectors (PromptST's prompts at every temporal layer)"})

    def __post_init__(self) -> None:
        check_fields(self)
        check_size("soft_prompt_tokens", self.soft_prompt_tokens)
        if self.soft_prompt_deep and not self.soft_prompt_tokens:
            raise RecipeError("soft_prompt_deep: true gives each decoder layer its own virtual tokens, but "
                              "soft_prompt_tokens is 0: set soft_prompt_tokens > 0 or soft_prompt_deep: false")


@dataclass
class AdaptationConfig:
    """UrbanMind's (Liu et al., KDD 2025) masked reconstruction beside the forecast, and the test-time adaptation
    that tunes a small named part of the model on it (:mod:`~st_instruct.training.tta`; ``st-instruct evaluate
    --tta STEPS``). Training-run keys, read back from a model folder's recipe by the evaluation."""

    reconstruction_weight: float = field(default=0.0, metadata={
        "help": "lambda_rec: weight of the masked reconstruction loss of the history, a second pass per step on a "
                "masked copy of the batch's history (needs reconstruction_head: true); 0 = no second pass"})
    reconstruction_mask: str = field(default="mix", metadata={
        "help": "mask family hiding the history for reconstruction, in training and in test-time adaptation "
                "(st_instruct.data.masks; mix draws one per step among those the batch's shape allows)"})
    reconstruction_ratio: float = field(default=0.25, metadata={
        "help": "fraction in (0, 1) of the history the reconstruction mask hides"})
    tta_parameters: list[str] = field(default_factory=lambda: ["norms"], metadata={
        "help": "what test-time adaptation tunes: norms (every LayerNorm / RMSNorm of the backbone and the ST "
                "modules, RevIN), lora (the backbone's adapter weights), prompts (UniST's memory prompt, soft "
                "prompts), or the name of an ST module (st_encoder, st_projector, ...)"})
    tta_learning_rate: float = field(default=1e-4, metadata={"help": "Adam learning rate of test-time adaptation"})

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("reconstruction_mask", self.reconstruction_mask, MASK_FAMILY_NAMES)
        if not 0 < self.reconstruction_ratio < 1:
            raise RecipeError(f"reconstruction_ratio must be in (0, 1), found {self.reconstruction_ratio}")
        if self.reconstruction_weight < 0:
            raise RecipeError(f"reconstruction_weight must be >= 0, found {self.reconstruction_weight}")
        if not self.tta_learning_rate > 0:
            raise RecipeError(f"tta_learning_rate must be > 0, found {self.tta_learning_rate}")
        if not isinstance(self.tta_parameters, list) or not self.tta_parameters:
            raise RecipeError(f"tta_parameters must list what test-time adaptation tunes (norms, lora, prompts or "
                              f"ST module names), found {self.tta_parameters!r}")


@dataclass
class FreezeConfig:
    """Which backbone parameters train (:func:`~st_instruct.training.freeze.apply_freeze_plan`)."""

    freeze_plan: str = field(default="lora", metadata={
        "help": "which backbone parameters train: frozen (UrbanGPT) | lora | pfa (ST-LLM) | full | qlora; the ST "
                "encoder, projector and head always train. prompt (PromptST): only the soft prompt and the head's "
                "output layer train, on the model of base_forecaster"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA branch"})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "module names LoRA adapts (default: the attention and feed-forward projections)"})
    pfa_last_layers: int = field(default=2, metadata={
        "help": "PFA: attention trains in the last U layers (LayerNorms train everywhere)"})
    train_st_token_embeddings: bool = field(default=False, metadata={
        "help": "also train the input embedding row of <st_pre> (the token whose hidden state the head reads) "
                "under a frozen or adapted backbone"})
    vision_tower_train: str = field(default="full", metadata={
        "help": "ST-VLM adaptive fine-tuning of the vision tower: frozen | lora (LoRA on its attention, with the "
                "freeze plan's rank) | full (every weight; the embedded VLM's tower is trained here). The "
                "projector and the fusion always train"})

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("freeze_plan", self.freeze_plan, FREEZE_PLAN_NAMES)
        check_choice("vision_tower_train", self.vision_tower_train, VISION_TOWER_TRAINING)
        for key in ("lora_r", "lora_alpha", "pfa_last_layers"):
            check_size(key, getattr(self, key))
        if not 0 <= self.lora_dropout < 1:
            raise RecipeError(f"lora_dropout must be in [0, 1), found {self.lora_dropout}")
        if self.freeze_plan == "full" and self.train_st_token_embeddings:
            raise RecipeError("freeze_plan 'full' trains every embedding row already; drop train_st_token_embeddings")
        if self.freeze_plan == "prompt" and self.train_st_token_embeddings:
            raise RecipeError("freeze_plan 'prompt' trains the soft prompt and the head's output layer only; drop "
                              "train_st_token_embeddings")


CONCERNS = (STEncoderConfig, HeadConfig, SEAttentionConfig, MemoryConfig, FusionConfig, GraphConfig, PromptConfig,
            SoftPromptConfig, AdaptationConfig, FreezeConfig)


# the bases in reverse: a dataclass lists the fields of its last base first, so they come in the order of CONCERNS
@dataclass
class ModelConfig(FreezeConfig, AdaptationConfig, SoftPromptConfig, PromptConfig, GraphConfig, FusionConfig,
                  MemoryConfig, SEAttentionConfig, HeadConfig, STEncoderConfig):
    """The forecaster: every concern above (inherited: one flat recipe), plus the backbone, the learning rates, the
    loss weights, the pretrained encoder to start from and the control.

    The backbone's tokenizer is also what the dataset is tokenised with. The loss is
    ``loss_reg_weight * masked MAE + loss_lm_weight * LM cross-entropy on the answer`` (UrbanGPT).
    """

    model_name_or_path: str | None = field(default="smollm2-135m", metadata={
        "help": "backbone: a registered name (smollm2-135m), a local folder or a hub id; none = no tokenisation"})
    model_max_length: int | None = field(default=None, metadata={
        "help": "context length; default the tokenizer's model_max_length"})
    model_num_layers: int | None = field(default=None, metadata={
        "help": "keep only the first K decoder layers (ST-LLM / GPT4TS); default all"})
    model_load_in_4bit: bool = field(default=False, metadata={
        "help": "load the backbone in 4 bits with bitsandbytes (with freeze_plan: qlora)"})
    st_learning_rate: float | None = field(default=None, metadata={
        "help": "learning rate of the ST modules trained from scratch (encoder, projector, head, RevIN, node table, "
                "SE rotation, MRFFN memories); the adapters / backbone keep learning_rate. null = learning_rate for "
                "all. Both follow the same schedule"})
    prompt_learning_rate: float | None = field(default=None, metadata={
        "help": "learning rate of UniST's memory prompt (unist_prompts), which always starts from scratch, even "
                "where the encoder is pretrained and trains slowly at st_learning_rate; null = st_learning_rate"})
    loss_reg_weight: float = field(default=1.0, metadata={"help": "lambda_reg: weight of the masked MAE"})
    loss_lm_weight: float = field(default=0.1, metadata={
        "help": "lambda_lm: weight of the LM loss on the answer text (0 skips the LM head)"})
    st_encoder_init: str | None = field(default=None, metadata={
        "help": "start the ST encoder from a folder written by `st-instruct pretrain` (its encoder kind, width, "
                "history, channels and coordinates must match this recipe's)"})
    st_encoder_freeze: bool = field(default=False, metadata={
        "help": "with st_encoder_init: keep the pretrained encoder frozen (false: it trains on)"})
    architecture: str = field(default="forecaster", metadata={
        "help": "forecaster: the ST forecaster (prompt with ST tokens through the LLM, regression head) | llm4hrs: "
                "the LLM4HRS imputer (Wang et al., TGRS 2025; st_instruct.models.llm4hrs) on the decoder stack of "
                "model_name_or_path cut to model_num_layers, for task: imputation with granularity: graph. Its "
                "freeze plan is LLM4HRS's own (frozen_blocks: attention and MLP frozen; norms, position embeddings "
                "and its own layers train), so freeze_plan and the other keys of the forecaster's parts stay unset; "
                "loss: loss_reg_weight x the L1 of the hidden entries; control builds its no_llm / random_llm "
                "controls"})
    control: str = field(default="none", metadata={
        "help": "train a control of this recipe instead of the forecaster (Tan et al., NeurIPS 2024): none | "
                "no_llm (the same ST encoder, projector and head, the backbone removed; the head reads the projected "
                "node features; regression loss only) | random_llm (the same backbone architecture with randomly "
                "initialised weights, seeded by seed)"})
    base_forecaster: str | None = field(default=None, metadata={
        "help": "freeze_plan prompt (PromptST): the folder of the trained (shared) forecaster whose model is tuned; "
                "the run adds the soft prompt of soft_prompt_tokens and a fresh head output layer, trains only "
                "those on this recipe's data (one attribute) and saves them as a small attribute adapter that "
                "names this folder"})

    def __post_init__(self) -> None:
        for concern in CONCERNS:  # each checks every field's type too (check_fields), ModelConfig's own included
            concern.__post_init__(self)
        if self.model_num_layers is not None and self.model_num_layers < 1:
            raise RecipeError(f"model_num_layers must be >= 1 (or null for all), found {self.model_num_layers}")
        if self.loss_reg_weight < 0 or self.loss_lm_weight < 0 or self.loss_reg_weight + self.loss_lm_weight == 0:
            raise RecipeError(f"loss weights must be >= 0 and not both 0, found loss_reg_weight "
                              f"{self.loss_reg_weight}, loss_lm_weight {self.loss_lm_weight}")
        check_choice("control", self.control, CONTROLS)
        for key in ("st_learning_rate", "prompt_learning_rate"):
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                raise RecipeError(f"{key} must be > 0 (or null), found {getattr(self, key)}")
        if self.model_max_length is not None and self.model_max_length < 1:
            raise RecipeError(f"model_max_length must be >= 1 (or null for the tokenizer's), found "
                              f"{self.model_max_length}")
        if self.st_encoder_freeze and not self.st_encoder_init:
            raise RecipeError("st_encoder_freeze: true freezes a pretrained encoder, but st_encoder_init names none; "
                              "set st_encoder_init: DIR (a folder of `st-instruct pretrain`) or drop "
                              "st_encoder_freeze")
        if self.head_skip_init == "readout" and not (self.head_skip and self.st_encoder_init):
            raise RecipeError("head_skip_init: readout starts the head's skip path from the forecast readout "
                              "pretrained with the encoder, and needs head_skip: true and st_encoder_init: DIR (a "
                              f"folder of `st-instruct pretrain` with pretrain_objective: forecast); found head_skip "
                              f"{self.head_skip}, st_encoder_init {self.st_encoder_init!r}")
        if (self.reconstruction_weight > 0) != self.reconstruction_head:
            raise RecipeError("reconstruction_head: true and reconstruction_weight > 0 go together (a head never "
                              "trained reconstructs nothing; a weight without the head has nothing to train); found "
                              f"reconstruction_head {self.reconstruction_head}, reconstruction_weight "
                              f"{self.reconstruction_weight}")
        if self.reconstruction_head and self.unist_prompts:
            raise RecipeError("reconstruction_head with unist_prompts: UniST's priors are made from the unmasked "
                              "history, so a masked reconstruction would read what it hides; switch one off")
        if self.freeze_plan == "prompt" and not self.base_forecaster:
            raise RecipeError("freeze_plan: prompt tunes a soft prompt on a trained forecaster, but base_forecaster "
                              "names none; set base_forecaster: DIR (the output folder of `st-instruct train`)")
        if self.freeze_plan == "prompt" and not self.soft_prompt_tokens:
            raise RecipeError("freeze_plan: prompt trains the soft prompt, but soft_prompt_tokens is 0; set "
                              "soft_prompt_tokens > 0 (e.g. 4)")
        if self.base_forecaster and self.freeze_plan != "prompt":
            raise RecipeError(f"base_forecaster is read by freeze_plan: prompt only, found freeze_plan "
                              f"{self.freeze_plan!r}; set freeze_plan: prompt or drop base_forecaster")
        if self.freeze_plan == "qlora" and not self.model_load_in_4bit:
            self.model_load_in_4bit = True  # QLoRA is LoRA on a 4-bit backbone by definition
        check_choice("architecture", self.architecture, ARCHITECTURES)
        if self.architecture == "llm4hrs":
            forecaster_keys = forecaster_keys_set(self)
            if forecaster_keys:
                raise RecipeError(f"architecture: llm4hrs is the LLM4HRS imputer, which has no ST encoder, prompt or "
                                  f"regression head and freezes its backbone by its own plan (frozen_blocks), but "
                                  f"the recipe sets the forecaster's keys {', '.join(forecaster_keys)}; drop them")


def forecaster_keys_set(config: ModelConfig) -> list[str]:
    """The keys of ``config`` that configure the forecaster's parts (every concern of :data:`CONCERNS`, freeze plan
    included, and :data:`FORECASTER_KEYS`) and differ from their defaults: what ``architecture: llm4hrs`` does not
    read."""
    names = [f.name for concern in CONCERNS for f in dataclasses.fields(concern)] + list(FORECASTER_KEYS)
    defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(ModelConfig)}
    return [name for name in names if getattr(config, name) != defaults[name]]


def check_architecture(data_config: Any, model_config: ModelConfig) -> None:
    """Refuse an architecture the recipe's data does not fit (a :class:`RecipeError`): ``llm4hrs`` reads a window
    of every node with entries hidden and estimates all of it, so it needs ``task: imputation`` and
    ``granularity: graph``."""
    if model_config.architecture != "llm4hrs":
        return
    if (data_config.task, data_config.granularity) != ("imputation", "graph"):
        raise RecipeError(f"architecture: llm4hrs imputes the hidden entries of a window of every node, so it needs "
                          f"task: imputation and granularity: graph, found task: {data_config.task}, granularity: "
                          f"{data_config.granularity}; set them (with horizon: 0 and a missing_pattern) or use "
                          "architecture: forecaster")
