"""The dataclass schema of every recipe: the only config system (docs/design.md §3).

``recipe YAML -> TrlParser (HfArgumentParser) -> dataclasses -> plain builder functions``. The data part
(:mod:`.data`), the model's concerns (:mod:`.model`: one dataclass each, what the recipe sets and what the module
reads), pretraining (:mod:`.pretrain`), the checks every one of them uses (:mod:`.checks`) and the reading of recipe
files and flags (:mod:`.recipes`). This face hands their names on.
"""

from st_instruct.configs.checks import (
    SIZE_BOUNDS,
    RecipeError,
    TrainingDivergedError,
    check_choice,
    check_fields,
    check_finite,
    check_size,
)
from st_instruct.configs.data import (
    COORDINATE_KINDS,
    DATASET_SPEC_KEYS,
    GRANULARITIES,
    IMAGE_KIND_NAMES,
    SCALINGS,
    TASK_NAMES,
    CorpusEntry,
    DataConfig,
    corpus_names,
    parse_dataset_entry,
)
from st_instruct.configs.model import (
    CONCERNS,
    CONTROLS,
    FREEZE_PLAN_NAMES,
    HEAD_SKIP_INITS,
    MRFFN_INITS,
    ST_ENCODER_NAMES,
    ST_GRAPH_NAMES,
    VISION_TOWER_TRAINING,
    AdaptationConfig,
    FreezeConfig,
    FusionConfig,
    GraphConfig,
    HeadConfig,
    MemoryConfig,
    ModelConfig,
    PromptConfig,
    SEAttentionConfig,
    SoftPromptConfig,
    STEncoderConfig,
    part,
)
from st_instruct.configs.pretrain import (
    MASK_FAMILY_NAMES,
    PRETRAIN_LR_SCHEDULERS,
    PRETRAIN_OBJECTIVES,
    PretrainConfig,
)
from st_instruct.configs.recipes import (
    PRETRAIN_DATACLASSES,
    RECIPE_DATACLASSES,
    check_recipe_consistency,
    check_training_arguments,
    check_unique_fields,
    cpu_training_defaults,
    dataset_flags_as_recipe_keys,
    load_recipe_file,
    parse_recipe,
    recipe_dict,
    resolve_recipe,
    train_dataclasses,
)

__all__ = [
    "CONCERNS", "CONTROLS", "COORDINATE_KINDS", "DATASET_SPEC_KEYS", "FREEZE_PLAN_NAMES", "GRANULARITIES",
    "HEAD_SKIP_INITS", "IMAGE_KIND_NAMES", "MASK_FAMILY_NAMES", "MRFFN_INITS", "PRETRAIN_DATACLASSES",
    "PRETRAIN_LR_SCHEDULERS", "PRETRAIN_OBJECTIVES", "RECIPE_DATACLASSES", "SCALINGS", "TASK_NAMES", "SIZE_BOUNDS",
    "ST_ENCODER_NAMES", "ST_GRAPH_NAMES", "VISION_TOWER_TRAINING", "CorpusEntry", "DataConfig", "FreezeConfig",
    "FusionConfig", "AdaptationConfig", "GraphConfig", "HeadConfig", "MemoryConfig", "ModelConfig",
    "PretrainConfig", "PromptConfig", "RecipeError", "SEAttentionConfig", "SoftPromptConfig",
    "STEncoderConfig", "TrainingDivergedError", "check_choice", "check_fields", "check_finite",
    "check_recipe_consistency", "check_size", "check_training_arguments", "check_unique_fields",
    "corpus_names", "cpu_training_defaults", "dataset_flags_as_recipe_keys", "load_recipe_file", "parse_dataset_entry",
    "parse_recipe", "part",
    "recipe_dict", "resolve_recipe", "train_dataclasses",
]
