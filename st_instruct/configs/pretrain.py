"""The pretraining part of a recipe: how ``st-instruct pretrain`` trains the ST encoder alone
(:class:`PretrainConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from st_instruct.configs.checks import RecipeError, check_fields

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
        check_fields(self)
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
