"""The dataclass schema of every recipe: the only config system (DESIGN.md §3).

``recipe YAML -> TrlParser (HfArgumentParser) -> dataclasses -> plain builder functions``. Precedence: dataclass
default < YAML < command-line flag. An unknown key in a recipe is an error that names the key. Field names are
unique across all recipe dataclasses (TRL's ``SFTConfig`` included), so one flat YAML feeds them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import re
import sys
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from st_instruct.shipped import (
    PROMPTS_ENV,
    file_sha256,
    is_trusted_template,
    names_a_path,
    resolve_template,
    shipped_recipes,
)

GRANULARITIES = ("node", "graph")
SCALINGS = ("train", "window")
COORDINATE_KINDS = ("laplacian", "geo", "grid", "learned", "none")
MRFFN_INITS = ("kmeans", "random")
# mirrored from st_instruct.training.freeze.FREEZE_PLANS and st_instruct.models.st_encoders.ENCODERS (a test checks
# they agree) so reading a recipe imports neither torch-heavy module
FREEZE_PLAN_NAMES = ("frozen", "lora", "pfa", "full", "qlora")
ST_ENCODER_NAMES = ("patch", "tcn")
CONTROLS = ("none", "no_llm", "random_llm")
HEAD_SKIP_INITS = ("closed", "readout")
# mirrored from st_instruct.samples.render.IMAGE_KINDS (a test checks they agree) plus "none"
IMAGE_KIND_NAMES = ("none", "map", "multiview")
# mirrored from st_instruct.data.air_graphs.GRAPH_KINDS (a test checks they agree)
ST_GRAPH_NAMES = ("none", "static", "static_wind")
VISION_TOWER_TRAINING = ("frozen", "lora", "full")


class RecipeError(ValueError):
    """A recipe file or flag is wrong; the message names the file and key."""


class TrainingDivergedError(ValueError):
    """Training stopped because its loss or weights turned inf or nan (most often: too high a learning rate); the
    message names the step, the loss and the recipe keys to change, and nothing non-finite was saved. Here, beside
    :class:`RecipeError`, so the SFT trainer and the pretraining loop raise the same error without importing each
    other."""


def check_finite_numbers(config: Any) -> None:
    """Refuse an inf or nan in any float field of a recipe dataclass (a :class:`RecipeError` naming the key): no key
    means anything by one, and a range check such as ``x <= 0`` lets nan through."""
    for f in fields(config):
        value = getattr(config, f.name, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise RecipeError(f"{f.name} must be a finite number, found {value}; set it in the recipe or with "
                              f"--{f.name}")


def check_training_arguments(args: Any) -> None:
    """What ``TrainingArguments`` (TRL's ``SFTConfig``) itself lets through and training cannot use: an inf or nan
    value, or a ``learning_rate`` <= 0 (the adapters / backbone would not learn, or climb the loss)."""
    check_finite_numbers(args)
    if not args.learning_rate > 0:
        raise RecipeError(f"learning_rate must be > 0, found {args.learning_rate}; set it in the recipe or with "
                          "--learning_rate")


DATASET_SPEC_KEYS = ("adjacency", "freq", "series_start", "null_value", "channel_names", "nodes", "no_calendar")
"""What a user can say about a dataset where it is used: the keyword arguments of
:func:`~st_instruct.data.loaders.get_dataset`, the CLI flags ``--adjacency --freq --series-start --null-value
--channel-names --nodes --no-calendar`` of every verb that reads a dataset, and the recipe keys ``dataset_<key>`` of
:class:`DataConfig`."""


@dataclass
class DataConfig:
    """What goes into the instruction dataset: which series, how it is windowed, which template renders it.

    Sampling fields accept a fraction (``0 < x <= 1``) or a count (``x > 1``); ``None`` keeps everything.
    """

    dataset_names: list[str] = field(default_factory=lambda: ["synthetic"], metadata={
        "help": "registered dataset names (see `st-instruct data list`) or paths to series files"})
    dataset_dir: str | None = field(default=None, metadata={"help": "folder holding the named datasets' files"})
    dataset_channels: list[str] | None = field(default=None, metadata={"help": "channels to keep (default all)"})
    dataset_start: str | None = field(default=None, metadata={"help": "keep steps from this date on"})
    dataset_end: str | None = field(default=None, metadata={"help": "keep steps before this date"})
    # The dataset specification (DATASET_SPEC_KEYS; CLI flags --adjacency, --freq, ...).
    # It applies to EACH dataset of dataset_names: several path datasets needing different specs are not supported.
    dataset_adjacency: str | None = field(default=None, metadata={
        "help": "adjacency file replacing the graph: N x N matrix (.csv/.npy/.npz) or from,to[,cost] edge list"})
    dataset_freq: str | None = field(default=None, metadata={
        "help": "the step of a series without timestamps, e.g. 15min, 1h, 1D"})
    dataset_series_start: str | None = field(default=None, metadata={
        "help": "timestamp of the first step of a series without timestamps, e.g. 2024-03-04"})
    dataset_null_value: str | None = field(default=None, metadata={
        "help": "value meaning 'not observed' besides NaN (e.g. 0); nan declares none; default the dataset's own"})
    dataset_channel_names: list[str] | None = field(default=None, metadata={
        "help": "one name per channel of a series file (default ch0, ch1, ...)"})
    dataset_nodes: str | None = field(default=None, metadata={
        "help": "nodes .csv: a name column, optionally latitude,longitude or x,y; one row per node in node order"})
    dataset_no_calendar: bool = field(default=False, metadata={
        "help": "run without a calendar: time features zero, calendar baselines skipped (else an unknown "
                "calendar is refused)"})
    history: int = field(default=12, metadata={"help": "history length L in steps"})
    horizon: int = field(default=12, metadata={"help": "forecast horizon P in steps"})
    split: str = field(default="7:1:2", metadata={"help": "chronological train:validation:test ratios"})
    stride: int = field(default=1, metadata={"help": "steps between consecutive windows"})
    scaling: str = field(default="train", metadata={
        "help": "statistics the samples are scaled with: 'train' (per channel, the dataset's train split) or "
                "'window' (from each sample's own history window only: strict zero-shot)"})
    template: str = field(default="forecast_node", metadata={
        "help": "prompt template in prompts/ (latest version), 'name@N' to pin version N, or a .jinja path (a path "
                "outside prompts/ and $ST_INSTRUCT_PROMPTS only as a --template flag)"})
    template_sha256: str | None = field(default=None, metadata={
        "help": "sha256 of the template file; recorded by training, checked whenever it is set"})
    granularity: str = field(default="node", metadata={
        "help": "'node': one region/sensor per sample (UrbanGPT); 'graph': all nodes of a window (ST-LLM)"})
    values_in_text: bool = field(default=False, metadata={"help": "also write the history values into the text"})
    values_decimals: int = field(default=1, metadata={"help": "decimals of values written into the text"})
    node_sample: float | None = field(default=None, metadata={"help": "nodes to keep: fraction or count"})
    window_sample: float | None = field(default=None, metadata={
        "help": "windows to keep per split: fraction or count"})
    sample_seed: int = field(default=0, metadata={"help": "seed of node/window sampling"})
    coordinates: str = field(default="laplacian", metadata={
        "help": "spatial coordinates per node: laplacian | geo | grid | learned (a trained table per node id: "
                "not transferable to other node sets) | none"})
    coordinate_dim: int = field(default=8, metadata={
        "help": "number of Laplacian eigenvectors / width of the learned node table"})
    dataset_cache_dir: str | None = field(default=None, metadata={
        "help": "where built datasets are cached by fingerprint (default: the user cache)"})
    streaming: bool = field(default=False, metadata={"help": "build an IterableDataset instead of Arrow tables"})
    image_kind: str = field(default="none", metadata={
        "help": "ST-VLM: the image of each window a vision-language backbone reads (st_instruct.samples.render): map "
                "(history steps as map / heat-map panels) | multiview (temporal, spatial, correlation and map "
                "views) | none (text and ST tokens only)"})
    image_size: int | None = field(default=None, metadata={
        "help": "image side in pixels (default: the vision tower's image size, 224 for towers of any size)"})
    image_panels: int = field(default=4, metadata={"help": "history steps tiled into one map image"})
    image_channel: int = field(default=0, metadata={"help": "the channel an image colours (index)"})
    rationale_teacher: str = field(default="none", metadata={
        "help": "AirGPT: training answers start with a five-stage rationale written by this teacher under the true "
                "label: none | analytic (deterministic, from the window's facts) | a causal LM (smollm2-135m, a "
                "folder or a hub id; rejected texts replaced by the analytic teacher's; cached by content hash)"})
    rationale_fraction: float = field(default=0.5, metadata={
        "help": "share of the training samples that get a rationale (the rest keep the direct answer, so the "
                "single-pass forecast stays trained)"})

    def __post_init__(self) -> None:
        check_finite_numbers(self)
        if self.image_kind not in IMAGE_KIND_NAMES:
            raise RecipeError(f"image_kind must be one of {IMAGE_KIND_NAMES}, found {self.image_kind!r}")
        if self.image_size is not None and self.image_size < 32:
            raise RecipeError(f"image_size must be >= 32 pixels (or null for the vision tower's), found "
                              f"{self.image_size}")
        if not 0 < self.rationale_fraction <= 1:
            raise RecipeError(f"rationale_fraction must be in (0, 1], found {self.rationale_fraction}")
        if self.rationale_teacher != "none" and self.streaming:
            raise RecipeError("rationale_teacher adds the teacher's rationales to a built dataset; it cannot stream: "
                              "set streaming: false")
        if self.image_panels < 1 or self.image_channel < 0:
            raise RecipeError(f"image_panels must be >= 1 and image_channel >= 0, found {self.image_panels}, "
                              f"{self.image_channel}")
        if isinstance(self.dataset_names, str):
            self.dataset_names = [self.dataset_names]
        if not self.dataset_names:
            raise RecipeError("dataset_names must name at least one dataset")
        if self.granularity not in GRANULARITIES:
            raise RecipeError(f"granularity must be one of {GRANULARITIES}, found {self.granularity!r}")
        if self.scaling not in SCALINGS:
            raise RecipeError(f"scaling must be one of {SCALINGS}, found {self.scaling!r}")
        if self.coordinates not in COORDINATE_KINDS:
            raise RecipeError(f"coordinates must be one of {COORDINATE_KINDS}, found {self.coordinates!r}")
        for key in ("node_sample", "window_sample"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise RecipeError(f"{key} must be a fraction in (0, 1] or a count > 1, found {value}")
        if self.history < 1 or self.horizon < 1 or self.stride < 1:
            raise RecipeError(f"history, horizon and stride must be >= 1, found {self.history}, {self.horizon}, "
                              f"{self.stride}")


@dataclass
class ModelConfig:
    """The forecaster: backbone, which of its parameters train (freeze plan), the ST modules and the loss weights.

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
    freeze_plan: str = field(default="lora", metadata={
        "help": "which backbone parameters train: frozen (UrbanGPT) | lora | pfa (ST-LLM) | full | qlora; the ST "
                "encoder, projector and head always train"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA branch"})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "module names LoRA adapts (default: the attention and feed-forward projections)"})
    pfa_last_layers: int = field(default=2, metadata={
        "help": "PFA: attention trains in the last U layers (LayerNorms train everywhere)"})
    st_encoder: str = field(default="patch", metadata={
        "help": "ST encoder: patch (ST-LLM linear patch embedding) | tcn (UrbanGPT gated dilated convolutions)"})
    st_encoder_dim: int = field(default=64, metadata={
        "help": "width of each of the encoder's four parts (its output is 4x this)"})
    st_encoder_mlp_layers: int = field(default=0, metadata={
        "help": "STID fusion: residual MLP blocks over the encoder's concatenated [history, time of day, day of week, "
                "space] features (0 = none; with a linear readout the encoder is then STID)"})
    st_encoder_mlp_dropout: float = field(default=0.0, metadata={
        "help": "dropout inside the fusion blocks (0 as this harness's STID baseline; the STID paper uses 0.15)"})
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
    st_learning_rate: float | None = field(default=None, metadata={
        "help": "learning rate of the ST modules trained from scratch (encoder, projector, head, RevIN, node table, "
                "SE rotation, MRFFN memories); the adapters / backbone keep learning_rate. null = learning_rate for "
                "all. Both follow the same schedule"})
    loss_reg_weight: float = field(default=1.0, metadata={"help": "lambda_reg: weight of the masked MAE"})
    loss_lm_weight: float = field(default=0.1, metadata={
        "help": "lambda_lm: weight of the LM loss on the answer text (0 skips the LM head)"})
    revin: bool = field(default=False, metadata={
        "help": "RevIN: normalise each node's history by its own mean/std (learnable affine), de-normalise the "
                "forecast"})
    se_attention: bool = field(default=False, metadata={
        "help": "ST-LINK SE-Attention: also rotate q/k of the ST tokens by angles from the node coordinates"})
    se_pairs: int = field(default=8, metadata={
        "help": "SE-Attention: how many rotary frequency pairs (the lowest-frequency ones) carry the spatial angle"})
    se_learned_scale: bool = field(default=True, metadata={"help": "SE-Attention: a learned angle scale per head"})
    se_init_scale: float = field(default=0.1, metadata={
        "help": "SE-Attention: initial size of the spatial angles (1 = unit-variance angles per unit coordinate)"})
    mrffn: bool = field(default=False, metadata={
        "help": "ST-LINK MRFFN: memory-retrieval feed-forward in the decoder layers of mrffn_layers"})
    mrffn_layers: list[int] = field(default_factory=lambda: [-1], metadata={
        "help": "MRFFN: decoder layers whose MLP gets a memory (negative counts from the last)"})
    mrffn_slots: int = field(default=64, metadata={"help": "MRFFN: memory slots M"})
    mrffn_key_dim: int = field(default=64, metadata={"help": "MRFFN: width of the memory keys"})
    mrffn_top_k: int | None = field(default=4, metadata={"help": "MRFFN: slots retrieved per token (null = all)"})
    mrffn_init: str = field(default="kmeans", metadata={
        "help": "MRFFN memory init: kmeans (of encoded training history windows) | random"})
    st_encoder_init: str | None = field(default=None, metadata={
        "help": "start the ST encoder from a folder written by `st-instruct pretrain` (its encoder kind, width, "
                "history, channels and coordinates must match this recipe's)"})
    st_encoder_freeze: bool = field(default=False, metadata={
        "help": "with st_encoder_init: keep the pretrained encoder frozen (false: it trains on)"})
    st_fusion: bool = field(default=False, metadata={
        "help": "ST-VLM (vision-language backbones): gated cross-attention of the ST tokens to the image and text "
                "tokens before the first decoder layer, gate starting at 0 (st_instruct.models.fusion)"})
    st_fusion_heads: int = field(default=4, metadata={"help": "heads of the fusion's cross-attention"})
    st_graph: str = field(default="none", metadata={
        "help": "AirGPT graph encoder on the ST tokens (stations with lat/lon): none | static (distance graph "
                "exp(-d^2 / 2 sigma^2)) | static_wind (gated fusion with the wind graph; needs wind speed and "
                "direction channels in the dataset, read even when dataset_channels leaves them out)"})
    st_graph_sigma0_km: float = field(default=10.0, metadata={
        "help": "wind graph: reach of calm air, km (sigma0 in exp(-d^2 / 2 (sigma0 + alpha v)^2))"})
    st_graph_alpha_km: float = field(default=5.0, metadata={
        "help": "wind graph: extra reach per m/s of wind speed, km (alpha)"})
    vision_tower_train: str = field(default="full", metadata={
        "help": "ST-VLM adaptive fine-tuning of the vision tower: frozen | lora (LoRA on its attention, with the "
                "freeze plan's rank) | full (every weight; the embedded VLM's tower is trained here). The "
                "projector and the fusion always train"})
    control: str = field(default="none", metadata={
        "help": "train a control of this recipe instead of the forecaster (Tan et al., NeurIPS 2024): none | "
                "no_llm (the same ST encoder, projector and head, the backbone removed; the head reads the projected "
                "node features; regression loss only) | random_llm (the same backbone architecture with randomly "
                "initialised weights, seeded by seed)"})

    def __post_init__(self) -> None:
        check_finite_numbers(self)
        if self.freeze_plan not in FREEZE_PLAN_NAMES:
            raise RecipeError(f"freeze_plan must be one of {FREEZE_PLAN_NAMES}, found {self.freeze_plan!r}")
        if self.st_encoder not in ST_ENCODER_NAMES:
            raise RecipeError(f"st_encoder must be one of {ST_ENCODER_NAMES}, found {self.st_encoder!r}")
        if self.model_num_layers is not None and self.model_num_layers < 1:
            raise RecipeError(f"model_num_layers must be >= 1 (or null for all), found {self.model_num_layers}")
        if self.loss_reg_weight < 0 or self.loss_lm_weight < 0 or self.loss_reg_weight + self.loss_lm_weight == 0:
            raise RecipeError(f"loss weights must be >= 0 and not both 0, found loss_reg_weight "
                              f"{self.loss_reg_weight}, loss_lm_weight {self.loss_lm_weight}")
        if self.mrffn and not self.mrffn_layers:
            raise RecipeError("mrffn: true needs at least one layer in mrffn_layers")
        if self.vision_tower_train not in VISION_TOWER_TRAINING:
            raise RecipeError(f"vision_tower_train must be one of {VISION_TOWER_TRAINING}, found "
                              f"{self.vision_tower_train!r}")
        if self.st_graph not in ST_GRAPH_NAMES:
            raise RecipeError(f"st_graph must be one of {ST_GRAPH_NAMES}, found {self.st_graph!r}")
        if not self.st_graph_sigma0_km > 0 or self.st_graph_alpha_km < 0:
            raise RecipeError(f"st_graph_sigma0_km must be > 0 and st_graph_alpha_km >= 0, found "
                              f"{self.st_graph_sigma0_km}, {self.st_graph_alpha_km}")
        if self.st_fusion_heads < 1:
            raise RecipeError(f"st_fusion_heads must be >= 1, found {self.st_fusion_heads}")
        if self.control not in CONTROLS:
            raise RecipeError(f"control must be one of {CONTROLS}, found {self.control!r}")
        if self.mrffn_init not in MRFFN_INITS:
            raise RecipeError(f"mrffn_init must be one of {MRFFN_INITS}, found {self.mrffn_init!r}")
        for key in ("se_pairs", "mrffn_slots", "mrffn_key_dim", "head_dim", "st_encoder_dim", "lora_r",
                    "lora_alpha"):
            if getattr(self, key) < 1:
                raise RecipeError(f"{key} must be >= 1, found {getattr(self, key)}")
        if self.st_encoder_mlp_layers < 0:
            raise RecipeError(f"st_encoder_mlp_layers must be >= 0, found {self.st_encoder_mlp_layers}")
        if not 0 <= self.st_encoder_mlp_dropout < 1:
            raise RecipeError(f"st_encoder_mlp_dropout must be in [0, 1), found {self.st_encoder_mlp_dropout}")
        if self.st_projector_layers not in (1, 2):
            raise RecipeError(f"st_projector_layers must be 1 (linear) or 2 (MLP), found {self.st_projector_layers}")
        if not 0 <= self.lora_dropout < 1:
            raise RecipeError(f"lora_dropout must be in [0, 1), found {self.lora_dropout}")
        if self.st_learning_rate is not None and not self.st_learning_rate > 0:
            raise RecipeError(f"st_learning_rate must be > 0 (or null for learning_rate), found "
                              f"{self.st_learning_rate}")
        if self.pfa_last_layers < 0:
            raise RecipeError(f"pfa_last_layers must be >= 0, found {self.pfa_last_layers}")
        if self.model_max_length is not None and self.model_max_length < 1:
            raise RecipeError(f"model_max_length must be >= 1 (or null for the tokenizer's), found "
                              f"{self.model_max_length}")
        if self.mrffn_top_k is not None and not 1 <= self.mrffn_top_k <= self.mrffn_slots:
            raise RecipeError(f"mrffn_top_k must be in 1 .. mrffn_slots ({self.mrffn_slots}) or null, found "
                              f"{self.mrffn_top_k}")
        if self.st_encoder_freeze and not self.st_encoder_init:
            raise RecipeError("st_encoder_freeze: true freezes a pretrained encoder, but st_encoder_init names none; "
                              "set st_encoder_init: DIR (a folder of `st-instruct pretrain`) or drop "
                              "st_encoder_freeze")
        if self.head_skip_init not in HEAD_SKIP_INITS:
            raise RecipeError(f"head_skip_init must be one of {HEAD_SKIP_INITS}, found {self.head_skip_init!r}")
        if self.head_skip_init == "readout" and not (self.head_skip and self.st_encoder_init):
            raise RecipeError("head_skip_init: readout starts the head's skip path from the forecast readout "
                              "pretrained with the encoder, and needs head_skip: true and st_encoder_init: DIR (a "
                              f"folder of `st-instruct pretrain` with pretrain_objective: forecast); found head_skip "
                              f"{self.head_skip}, st_encoder_init {self.st_encoder_init!r}")
        if self.freeze_plan == "qlora" and not self.model_load_in_4bit:
            self.model_load_in_4bit = True  # QLoRA is LoRA on a 4-bit backbone by definition


PRETRAIN_OBJECTIVES = ("forecast", "mae")
PRETRAIN_LR_SCHEDULERS = ("cosine", "constant")
# mirrored from st_instruct.data.masks.MASK_FAMILIES (a test checks they agree) plus draw_mask's "mix"
MASK_FAMILY_NAMES = ("random", "tube", "block", "temporal", "channel_temporal", "channel_spatial", "agnostic", "mix")


@dataclass
class PretrainConfig:
    """ST-encoder pretraining (``st-instruct pretrain``), no LLM involved; the data come from ``DataConfig`` (every
    node and every train window of each dataset: its sampling and prompt keys do not apply) and the encoder from
    ``ModelConfig``'s ``st_encoder`` / ``st_encoder_dim``.

    ``forecast``: the encoder and a linear readout trained on the forecast windows with masked MAE (UrbanGPT, KDD
    2024, pretrains its ST dependency encoder so). ``mae``: masked-autoencoder pretraining (UniST, KDD 2024;
    UrbanMind, KDD 2025): each step hides entries of the history with one family of ``pretrain_mask_families``
    (drawn per step), the encoder reads them as gaps, and a linear decoder reconstructs them; MAE on the hidden,
    observed entries only.
    """

    pretrain_objective: str = field(default="mae", metadata={"help": "forecast | mae (masked autoencoder)"})
    pretrain_mask_families: list[str] = field(default_factory=lambda: [
        "random", "tube", "block", "temporal", "channel_temporal", "channel_spatial", "agnostic"], metadata={
        "help": "mae: mask families, one drawn per step (st_instruct.data.masks; 'mix' draws among all); block is "
                "skipped for a dataset without a graph or grid"})
    pretrain_mask_ratio: float = field(default=0.5, metadata={"help": "mae: fraction in (0, 1) a mask hides"})
    pretrain_steps: int = field(default=200, metadata={"help": "optimizer steps"})
    pretrain_batch_size: int = field(default=16, metadata={"help": "windows per step (of one dataset)"})
    pretrain_learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    pretrain_weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    pretrain_lr_scheduler: str = field(default="cosine", metadata={
        "help": "cosine (decay to 0 over pretrain_steps) | constant"})
    pretrain_output_dir: str = field(default="outputs/pretrain", metadata={
        "help": "folder of the pretrained encoder (refused when not empty unless --overwrite)"})
    pretrain_seed: int = field(default=0, metadata={"help": "seed of the initialisation, batches and masks"})

    def __post_init__(self) -> None:
        check_finite_numbers(self)
        if isinstance(self.pretrain_mask_families, str):
            self.pretrain_mask_families = [self.pretrain_mask_families]
        if self.pretrain_objective not in PRETRAIN_OBJECTIVES:
            raise RecipeError(f"pretrain_objective must be one of {PRETRAIN_OBJECTIVES}, found "
                              f"{self.pretrain_objective!r}")
        unknown = [name for name in self.pretrain_mask_families if name not in MASK_FAMILY_NAMES]
        if unknown or not self.pretrain_mask_families:
            raise RecipeError(f"pretrain_mask_families must list some of {MASK_FAMILY_NAMES}, found "
                              f"{self.pretrain_mask_families}")
        if not 0 < self.pretrain_mask_ratio < 1:
            raise RecipeError(f"pretrain_mask_ratio must be in (0, 1), found {self.pretrain_mask_ratio}")
        if self.pretrain_lr_scheduler not in PRETRAIN_LR_SCHEDULERS:
            raise RecipeError(f"pretrain_lr_scheduler must be one of {PRETRAIN_LR_SCHEDULERS}, found "
                              f"{self.pretrain_lr_scheduler!r}")
        for key in ("pretrain_steps", "pretrain_batch_size"):
            if getattr(self, key) < 1:
                raise RecipeError(f"{key} must be >= 1, found {getattr(self, key)}")
        if self.pretrain_learning_rate <= 0 or self.pretrain_weight_decay < 0:
            raise RecipeError(f"pretrain_learning_rate must be > 0 and pretrain_weight_decay >= 0, found "
                              f"{self.pretrain_learning_rate}, {self.pretrain_weight_decay}")


RECIPE_DATACLASSES: tuple[type, ...] = (DataConfig, ModelConfig)
PRETRAIN_DATACLASSES: tuple[type, ...] = (DataConfig, ModelConfig, PretrainConfig)


def check_recipe_consistency(data_config: DataConfig, model_config: ModelConfig) -> None:
    """Refuse settings of the data and the model that are each valid but do not work together (a
    :class:`RecipeError`): SE-Attention rotates by a node's coordinates centred per sample, and a node-granularity
    prompt holds one node, whose centred coordinates are 0: the rotation would silently do nothing."""
    if model_config.se_attention and data_config.granularity == "node":
        raise RecipeError("se_attention: true does nothing with granularity: node (a prompt of one node, whose "
                          "coordinates centred per sample are 0, is rotated by a zero angle); use granularity: graph "
                          "(e.g. with template: forecast_graph) or se_attention: false")


def train_dataclasses() -> tuple[type, ...]:
    """``(DataConfig, ModelConfig, trl.SFTConfig)``: the schema of a training recipe, one flat YAML.

    A function, not a constant, so importing this module does not import TRL (seconds). ``st-instruct build-data``
    parses with it too and ignores the ``SFTConfig``, so a training recipe also builds its own dataset.
    """
    from trl import SFTConfig

    return (DataConfig, ModelConfig, SFTConfig)


def _known_keys(dataclass_types: tuple[type, ...]) -> list[str]:
    return [f.name for cls in dataclass_types for f in fields(cls)]


def check_unique_fields(dataclass_types: tuple[type, ...]) -> None:
    """Raise if two recipe dataclasses share a field name (a flat YAML could not say which one it sets)."""
    seen: dict[str, str] = {}
    for cls in dataclass_types:
        for f in fields(cls):
            if f.name in seen:
                raise RecipeError(f"field {f.name!r} is declared by both {seen[f.name]} and {cls.__name__}")
            seen[f.name] = cls.__name__


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: ``name_or_path`` itself when it exists (or looks like a path), else the shipped recipe of that
    name (``smoke_sft`` -> ``recipes/smoke_sft.yaml``). An unknown name is a :class:`RecipeError` listing the
    shipped ones."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    shipped = shipped_recipes()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise RecipeError(f"recipe {name_or_path!r} is neither a file nor a shipped recipe; shipped: "
                      f"{', '.join(shipped)} (`st-instruct recipes` lists them)")


def load_recipe_file(path: str | Path, dataclass_types: tuple[type, ...]) -> dict[str, Any]:
    """Read a recipe YAML mapping and check every key against ``dataclass_types`` (close names suggested)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise RecipeError(f"cannot read recipe {path}: {err.strerror or err}") from err
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise RecipeError(f"recipe {path} must be a YAML mapping of keys to values, found {type(config).__name__}")
    known = _known_keys(dataclass_types)
    for key in config:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise RecipeError(f"recipe {path}: unknown key {key!r}{hint} Known keys: {', '.join(sorted(known))}")
    return config


def cpu_training_defaults(given: set[str]) -> dict[str, Any]:
    """Defaults of ``SFTConfig`` fields for a machine without CUDA, for the keys a recipe and its flags left unset.

    TRL turns bf16 and activation (gradient) checkpointing on by default, and ``TrainingArguments`` refuses bf16
    without a GPU; multi-process runs on CPU need ``use_cpu`` (DESIGN.md §8). Deriving these from the hardware keeps
    the recipe the same on a laptop, on 2 CPU processes and on 8 GPUs. Empty when CUDA is available.
    """
    import torch  # here, not at the top: every verb imports configs, and torch takes seconds

    if torch.cuda.is_available():
        return {}
    defaults: dict[str, Any] = {"bf16": False, "use_cpu": True}
    if not {"activation_checkpointing", "gradient_checkpointing"} & given:
        defaults["activation_checkpointing"] = False
    return {key: value for key, value in defaults.items() if key not in given}


class _ParserError(Exception):
    """argparse's complaint about one value (raised instead of printing the usage and exiting)."""


def _value_kind(action: Any) -> str | None:
    """What a flag's value must be, in words, from its argparse ``type`` (None when any value is accepted)."""
    if _is_bool_type(action.type):
        return "true or false"
    return {int: "an integer", float: "a number", str: "a string"}.get(action.type)


def _is_bool_type(kind: Any) -> bool:
    """HfArgumentParser's ``string_to_bool`` (TRL and transformers each have a copy)."""
    return getattr(kind, "__name__", None) == "string_to_bool"


def _check_recipe_types(path: str, config: dict[str, Any], actions: dict[str, Any],
                        dataclass_types: tuple[type, ...]) -> None:
    """Raise a :class:`RecipeError` naming ``path``, the key, the value and the expected type for a recipe value
    argparse would pass through unchecked (a list for a number, ``1.5`` for an integer, null for a required key);
    a string is left to argparse's own conversion (reported by :func:`parse_recipe`)."""
    # the declared annotations: HfArgumentParser rewrites the fields' .type in place
    annotations = {name: str(hint) for cls in dataclass_types for klass in reversed(cls.__mro__)
                   for name, hint in vars(klass).get("__annotations__", {}).items()}
    optional = {f.name: "None" in annotations.get(f.name, "") or "Optional" in annotations.get(f.name, "")
                or f.default is None for cls in dataclass_types for f in fields(cls)}
    for key, value in config.items():
        action = actions.get(key)
        kind = _value_kind(action) if action is not None else None
        many = action is not None and action.nargs in ("+", "*")
        if kind is None or (not many and any(word in annotations.get(key, "") for word in ("list", "dict"))):
            continue  # e.g. TRL's report_to: str | list[str]
        expected = f"a list of {kind.removeprefix('an ').removeprefix('a ')}s" if many else kind
        if value is None:
            if optional.get(key, True):
                continue
            bad = True
        elif many:
            items = value if isinstance(value, list) else [value] if action.type is str else None
            # argparse converts a string default, never the strings inside a list default: check those here
            bad = items is None or any(not _fits(item, action.type) or not _converts(item, action.type)
                                       for item in items)
        else:
            bad = not _fits(value, action.type)
        if bad:
            raise RecipeError(f"recipe {path}: key {key!r} must be {expected}, found {value!r} "
                              f"({type(value).__name__}); fix the value in the recipe (or override it with --{key})")


def _fits(value: Any, kind: Any) -> bool:
    """Whether a YAML value can fill an argparse value of ``kind`` (strings: argparse converts and checks them)."""
    if isinstance(value, str):
        return True
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if _is_bool_type(kind):
        return isinstance(value, bool)
    return not isinstance(value, (list, dict))  # str: a scalar (YAML dates and numbers read as text)


def _converts(item: Any, kind: Any) -> bool:
    """Whether a string item of a list converts with ``kind`` (``int("last")`` does not); non-strings: True."""
    if not isinstance(item, str):
        return True
    try:
        kind(item)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        return False
    return True


def _check_recipe_template(path: str, config: dict[str, Any]) -> None:
    """A recipe file may only name templates in the trusted folders (prompts/, $ST_INSTRUCT_PROMPTS): a shared
    recipe (or model folder) must not make this machine render a file of its choosing."""
    value = config.get("template")
    if isinstance(value, str) and names_a_path(value) and not is_trusted_template(value):
        raise RecipeError(f"recipe {path}: key 'template' names {value}, a file outside prompts/ and "
                          f"${PROMPTS_ENV}, which a recipe file may not do; name a shipped template (e.g. "
                          f"forecast_node), put the file in the folder ${PROMPTS_ENV} names, or pass --template "
                          f"{value} on the command line if you trust it")


def _check_flags(args: list[str], known: list[str]) -> None:
    """Every ``--key`` flag names a recipe key (``--no_<key>`` negates a boolean); close names suggested."""
    for arg in args:
        if not arg.startswith("--") or arg in ("--config", "--help"):  # --help: argparse prints every key
            continue
        name = arg[2:].split("=")[0].replace("-", "_")
        if name in known or (name.startswith("no_") and name[3:] in known):
            continue
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join('--' + c for c in close)}?" if close else ""
        raise RecipeError(f"unknown flag --{name}{hint} Any recipe key can be given as a flag (see the recipe's "
                          "keys or `--help`)")


def _check_template_sha256(configs: tuple[Any, ...]) -> None:
    for config in configs:
        if isinstance(config, DataConfig) and config.template_sha256:
            path = resolve_template(config.template)
            digest = file_sha256(path)
            if digest != config.template_sha256:
                raise RecipeError(f"template_sha256 is {config.template_sha256}, but the template {path} has sha256 "
                                  f"{digest}: the file changed since the recipe was written; restore it, or drop "
                                  "template_sha256 to accept the new text")


def dataset_flags_as_recipe_keys(args: list[str]) -> list[str]:
    """The dataset flags of the other verbs (``--freq 15min``, ``--series-start``, ``--no-calendar``, ``--start``,
    ``--channels``, ...; :data:`DATASET_SPEC_KEYS` and the slicing flags) written as their
    ``DataConfig`` recipe keys (``--dataset_freq 15min``), so ``train`` / ``build-data`` / ``scripts/sft.py`` take the
    same names as ``baselines`` and ``evaluate``. They apply to every dataset of ``dataset_names``."""
    keys = (*DATASET_SPEC_KEYS, "start", "end", "channels")
    flags = {f"--{key.replace('_', '-')}": f"--dataset_{key}" for key in keys}
    out = []
    for arg in args:
        name, eq, value = arg.partition("=")
        if name == "--no-calendar":
            out += ["--dataset_no_calendar", value if eq else "true"]
        elif name in flags:
            out.append(f"{flags[name]}{eq}{value}")
        else:
            out.append(arg)
    return out


def parse_recipe(dataclass_types: tuple[type, ...], args: list[str] | None = None) -> tuple[Any, ...]:
    """``[RECIPE.yaml] [--key value ...]`` -> one instance per dataclass type.

    The recipe may be given as the first positional argument or with ``--config``; flags override it, the dataset
    flags of the other verbs among them (:func:`dataset_flags_as_recipe_keys`). Built on
    TRL's ``TrlParser`` so training recipes include ``SFTConfig`` fields unchanged; with ``SFTConfig`` among the
    types, :func:`cpu_training_defaults` apply under the recipe on a machine without CUDA.

    Every mistake is one :class:`RecipeError` line naming the recipe (or flag), the key, the value and what is
    expected -- never argparse's usage text; an inf or nan value and a ``learning_rate`` <= 0 among them
    (:func:`check_finite_numbers`, :func:`check_training_arguments`). A recipe file may only name templates in
    ``prompts/`` or ``$ST_INSTRUCT_PROMPTS`` (a ``--template`` flag may name any file); a set ``template_sha256``
    must match the template's file.
    """
    # here, not at the top: every verb imports configs, and TRL / transformers take seconds
    from transformers import TrainingArguments
    from trl import TrlParser

    class RecipeParser(TrlParser):
        def error(self, message: str):  # argparse would print the usage and exit
            raise _ParserError(message)

    check_unique_fields(dataclass_types)
    args = list(sys.argv[1:] if args is None else args)
    if args and not args[0].startswith("-"):
        args = ["--config", args[0], *args[1:]]
    if DataConfig in dataclass_types:
        args = dataset_flags_as_recipe_keys(args)
    flags = {arg[2:].split("=")[0].replace("-", "_") for arg in args if arg.startswith("--")} - {"config"}
    _check_flags(args, _known_keys(dataclass_types))
    recipe, config = None, {}
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise RecipeError("--config needs a recipe path")
        recipe = args[i + 1] = str(resolve_recipe(args[i + 1]))
        config = load_recipe_file(recipe, dataclass_types)  # names the offending key before TRL sees it
    parser = RecipeParser(dataclass_types)
    actions = {action.dest: action for action in parser._actions if action.option_strings
               and not action.option_strings[0].startswith("--no_")}
    if recipe is not None:
        from_file = {key: value for key, value in config.items() if key not in flags}
        _check_recipe_types(recipe, from_file, actions, dataclass_types)
        _check_recipe_template(recipe, from_file)
    if any(cls.__name__ == "SFTConfig" for cls in dataclass_types):
        parser.set_defaults_with_config(**cpu_training_defaults(flags | set(config)))
    try:
        parsed = tuple(parser.parse_args_and_config(args))
    except _ParserError as err:
        raise RecipeError(_parser_message(str(err), recipe, set(config) - flags)) from None
    except RecipeError:
        raise
    except ValueError as err:  # a dataclass's own check (TrainingArguments: bf16 without a GPU, ...)
        raise RecipeError(f"recipe {recipe or '(none)'}: {err}") from err
    parsed = tuple(_null_flags(config, flags) for config in parsed)
    for config in parsed:
        if isinstance(config, TrainingArguments):
            check_training_arguments(config)
    _check_template_sha256(parsed)
    data = [config for config in parsed if isinstance(config, DataConfig)]
    model = [config for config in parsed if isinstance(config, ModelConfig)]
    if data and model:
        try:
            check_recipe_consistency(data[0], model[0])
        except RecipeError as err:
            raise RecipeError(f"recipe {recipe or '(flags)'}: {err}") from None
    return parsed


def _null_flags(config: Any, flags: set[str]) -> Any:
    """``config`` with every optional ``DataConfig`` / ``ModelConfig`` key given as ``--key null`` (or ``none``)
    on the command line set to ``None`` (argparse reads the word as a string), checked again."""
    if not isinstance(config, (DataConfig, ModelConfig)):
        return config
    # (HfArgumentParser rewrites field types in place, dropping "| None": an optional key is one defaulting to None)
    nulled = {f.name: None for f in dataclasses.fields(config) if f.name in flags and f.default is None
              and isinstance(getattr(config, f.name), str) and getattr(config, f.name).lower() in ("null", "none")}
    return dataclasses.replace(config, **nulled) if nulled else config


def _parser_message(message: str, recipe: str | None, file_keys: set[str]) -> str:
    """argparse's ``argument --history/--history: invalid int value: 'abc'`` as a line naming where it came from."""
    match = re.match(r"argument (--[\w-]+)(?:/--[\w-]+)*: (.*)", message)
    if match is None:
        return f"{message} (see `st-instruct VERB --help`)"
    key, problem = match[1][2:].replace("-", "_"), match[2]
    for argparse_word, kind in (("int", "an integer"), ("float", "a number"), ("string_to_bool", "true or false")):
        problem = re.sub(rf"invalid {argparse_word} value: (.*)", rf"must be {kind}, found \1", problem)
    if recipe is not None and key in file_keys:
        return f"recipe {recipe}: key {key!r}: {problem}; fix the value in the recipe (or override it with --{key})"
    return f"flag --{key}: {problem}"


def recipe_dict(*configs: Any) -> dict[str, Any]:
    """The resolved values of parsed recipe dataclasses as one flat mapping that :func:`parse_recipe` reads back.

    Every field of our dataclasses. Of ``TrainingArguments`` (hundreds of fields): those that differ from a default
    instance on this machine, plus the precision and device choices (``bf16``, ``use_cpu``,
    ``activation_checkpointing``) whatever they are; never ``hub_token``.
    """
    out: dict[str, Any] = {}
    for config in configs:
        if not hasattr(config, "to_dict"):
            out.update({f.name: _plain(getattr(config, f.name)) for f in fields(config)})
            continue
        reference = _default_training_values(type(config))
        values = config.to_dict()  # resolved and serialisable; hides every *_token value
        always = {"bf16", "use_cpu", "activation_checkpointing"}
        for f in fields(config):
            name = f.name
            if not f.init or name in ("hub_token", "gradient_checkpointing") or name not in values:
                continue
            if name in always or values[name] != reference.get(name):
                out[name] = _plain(getattr(config, name) if name.endswith("_token") else values[name])
    return out


@functools.cache
def _default_training_values(cls: type) -> dict[str, Any]:
    """``cls()``'s resolved values (with the CPU defaults), made once per class: building ``TrainingArguments`` resets
    accelerate's state, so it must not happen again once a trainer runs (a checkpoint's card reads the recipe)."""
    return cls(**cpu_training_defaults(set())).to_dict()


def _plain(value: Any) -> Any:
    """YAML-safe form of a config value (enums by value, tuples as lists)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
