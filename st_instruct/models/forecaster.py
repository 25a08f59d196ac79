"""The LLM forecaster: a causal-LM backbone with an ST encoder, a projector and a regression head attached.

UrbanGPT (Li et al., "UrbanGPT: Spatio-Temporal Large Language Models", KDD 2024) and ST-LLM (Liu et al.,
"Spatial-Temporal Large Language Model for Traffic Prediction", MDM 2024) in one model:

1. the ST encoder (:mod:`st_instruct.models.st_encoders`) turns each node's history into one vector, the projector
   maps it to the backbone's width, and it replaces the word embedding of that node's ``<st_his>`` token (through a
   hook on the backbone's input embeddings, :func:`~st_instruct.models.patching.replace_input_embeddings`: the
   backbone still reads ``input_ids``, so a vision-language backbone places its image features itself);
2. one forward pass of the backbone (teacher-forced: the answer, with its ``<st_pre>`` tokens, is part of the
   input; no text is generated);
3. the regression head (:mod:`st_instruct.models.regression_head`) reads the last hidden states at each node's
   ``<st_his>`` and ``<st_pre>`` tokens and returns the forecast ``[B, P, N, C]`` in scaled units.

A vision-language backbone (ST-VLM, Zhao et al., AAAI 2026; :data:`~st_instruct.models.patching.VISION_LANGUAGE`)
takes the same ST parts on its language model and reads the batch's ``pixel_values`` (and ``image_grid_thw`` /
``pixel_attention_mask``) besides; ``fusion`` adds the gated cross-attention of the ST tokens to the image and text
tokens before its first decoder layer (:mod:`st_instruct.models.fusion`, gate closed at initialisation). Its vision
tower and projector count as ST modules (``st_vision_tower`` / ``st_vision_projector``): saved with them, since
the embedded VLM's tower is trained here and no pretrained copy of it exists.

The ST parts are named submodules (``st_encoder``, ``st_projector``, ``regression_head``) beside ``backbone``
(docs/design.md §4), saved on their own by :func:`save_st_modules`; the backbone (or its PEFT adapter) is saved by
transformers / PEFT. The trainer's loss is ``λ_reg · the task's loss + λ_lm · LM loss`` (:mod:`st_instruct.tasks`).

``backbone=None`` is the no-LLM control of Tan et al. (NeurIPS 2024, "Are Language Models Actually Useful for Time
Series Forecasting?"): the same encoder, projector (to ``STForecasterConfig.hidden_size``, the removed backbone's
width) and head, the head reading each node's projected features as both ``H_his`` and ``H_pre``; the prompt's
tokens are not read. The random-LLM control is a backbone built with random weights
(:func:`~st_instruct.models.backbones.get_backbone`'s ``random_init_seed``), not a different model.

``head_skip`` adds the head's gated skip path (:class:`RegressionHead`, closed at initialisation): it reads the ST
encoder's per-node output ``[B, N, 4 * encoder_dim]``, before the projector, because the projector's job is to map
into the backbone's embedding space and the encoder's own features are the narrower, backbone-independent ones.
The no-LLM control keeps it too: the control is the forecaster with the backbone removed, so it must have the same
head (there the head's main path reads the projected features, and the skip adds a linear path from the encoder's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DynamicCache, PretrainedConfig
from transformers.utils import ModelOutput

from st_instruct.configs import (
    FusionConfig,
    GraphConfig,
    HeadConfig,
    MemoryConfig,
    PromptConfig,
    SEAttentionConfig,
    SoftPromptConfig,
    STEncoderConfig,
    check_size,
    part,
)
from st_instruct.model_dir import COPY_AGAIN, ST_CONFIG_FILE, ST_MODULES_FILE, read_json_file
from st_instruct.models.fusion import STFusion, fusion_context
from st_instruct.models.graph_encoders import GatedGraphEncoder
from st_instruct.models.memory_prompts import PRIOR_KEYS, UniSTPrompt
from st_instruct.models.mrffn import memory_layers, memory_modules, wrap_mlps
from st_instruct.models.patching import (
    VISION_INPUTS,
    attention_geometry,
    cache_argument,
    hidden_size,
    input_embeddings,
    is_vision_language,
    replace_input_embeddings,
    returned_cache,
    unwrap,
    vision_projector,
    vision_tower,
)
from st_instruct.models.regression_head import RegressionHead
from st_instruct.models.se_attention import (
    apply_se_attention,
    build_spatial_rotation,
    normalize_coords,
    se_attention_enabled,
    spatial_context,
    token_coords,
)
from st_instruct.models.soft_prompts import build_soft_prompt
from st_instruct.models.st_encoders import EncoderSpec, RevIN, STProjector, build_st_encoder

# the ST modules held by the forecaster itself; optional ones are None when the config switches them off. MRFFN
# memories live inside the backbone's decoder layers and are listed by st_modules() as "st_memory.layers.<i>".
ST_MODULE_NAMES = ("st_encoder", "st_graph", "st_prompt", "st_projector", "regression_head", "st_reconstruction",
                   "st_revin", "st_node_table", "st_spatial", "st_fusion", "st_soft_prompt")
# a VLM backbone's vision parts, listed among the ST modules (saved with them; trained or frozen per recipe); a
# projector inside the tower (Qwen2-VL's patch merger) is saved as part of the tower
VISION_MODULE_NAMES = ("st_vision_tower", "st_vision_projector")


# the model's concerns a saved forecaster holds, by the name they have in st_forecaster_config.json
PARTS: dict[str, type] = {"encoder": STEncoderConfig, "head": HeadConfig, "se": SEAttentionConfig,
                          "memory": MemoryConfig, "fusion": FusionConfig, "graph": GraphConfig,
                          "prompt": PromptConfig, "soft_prompt": SoftPromptConfig}
# st_forecaster_config.json before its concerns were the recipe's objects (one flat object): its keys -> (part, key)
LEGACY_KEYS: dict[str, tuple[str, str]] = {
    "encoder": ("encoder", "st_encoder"), "encoder_dim": ("encoder", "st_encoder_dim"),
    "steps_per_day": ("encoder", "st_encoder_steps_per_day"), "tcn_layers": ("encoder", "st_encoder_tcn_layers"),
    "tcn_kernel_size": ("encoder", "st_encoder_tcn_kernel_size"),
    "encoder_mlp_layers": ("encoder", "st_encoder_mlp_layers"),
    "encoder_mlp_dropout": ("encoder", "st_encoder_mlp_dropout"),
    "projector_layers": ("head", "st_projector_layers"),
    "head_dim": ("head", "head_dim"), "head_skip": ("head", "head_skip"), "revin": ("head", "revin"),
    "se_attention": ("se", "se_attention"), "se_pairs": ("se", "se_pairs"),
    "se_learned_scale": ("se", "se_learned_scale"), "se_init_scale": ("se", "se_init_scale"),
    "mrffn_slots": ("memory", "mrffn_slots"), "mrffn_key_dim": ("memory", "mrffn_key_dim"),
    "mrffn_top_k": ("memory", "mrffn_top_k"), "fusion": ("fusion", "st_fusion"),
    "fusion_heads": ("fusion", "st_fusion_heads"), "graph": ("graph", "st_graph"),
    "graph_sigma0_km": ("graph", "st_graph_sigma0_km"), "graph_alpha_km": ("graph", "st_graph_alpha_km"),
}


@dataclass
class STForecasterConfig:
    """What the ST parts of an :class:`STForecaster` are: the data's shapes and the model's concerns, the very
    objects a recipe sets (:mod:`st_instruct.configs.model`), saved nested as ``st_forecaster_config.json``.

    Shapes: ``history`` / ``horizon`` / ``channels`` / ``coord_dim`` are ``L`` / ``P`` / ``C`` / ``K`` of the data;
    ``his_token_id`` / ``pre_token_id`` the ids of ``<st_his>`` / ``<st_pre>`` in the tokenizer
    (``st_token_ids(tokenizer)``); ``hidden_size`` the width the projector maps to and the head reads when there is
    no backbone (the no-LLM control: the removed backbone's hidden size; ``None`` with a backbone, whose own width is
    used); ``node_table_size`` > 0 replaces the data's coordinates by a learned ``[node_table_size, coord_dim]`` table
    indexed by node id (``coordinates: learned``; ties the model to one node set).

    Concerns (:data:`PARTS`): ``encoder`` (:class:`~st_instruct.configs.STEncoderConfig`: the ST encoder), ``head``
    (the projector into the backbone, the regression head and its skip path, RevIN), ``se`` (ST-LINK's SE-Attention),
    ``memory`` (ST-LINK's MRFFN), ``fusion`` (ST-VLM's early fusion, vision-language backbones only) and ``graph``
    (AirGPT's graph encoder; the batch carries the graphs, :class:`~st_instruct.data.air_graphs.WindowGraphs`, built
    from the wind reach the config records, so a loaded model rebuilds the same graphs) and ``prompt`` (UniST's
    memory prompts; the batch carries their priors, :class:`~st_instruct.data.prompt_context.WindowPriors`) and
    ``soft_prompt`` (PromptST's prompt tuning, :mod:`~st_instruct.models.soft_prompts`; a file saved before it has
    none and loads with it off).
    """

    history: int
    horizon: int
    channels: int
    coord_dim: int
    his_token_id: int
    pre_token_id: int
    hidden_size: int | None = None
    node_table_size: int = 0
    encoder: STEncoderConfig = field(default_factory=STEncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    se: SEAttentionConfig = field(default_factory=SEAttentionConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    soft_prompt: SoftPromptConfig = field(default_factory=SoftPromptConfig)

    def __post_init__(self) -> None:
        """The shapes' types and ranges (:data:`~st_instruct.configs.SIZE_BOUNDS`; the concerns check their own), so
        a config -- built by training or read from an edited file -- never reaches a module constructor with a size
        it cannot allocate."""
        for key in ("history", "horizon", "channels", "coord_dim", "his_token_id", "pre_token_id",
                    "node_table_size"):
            check_size(key, getattr(self, key))
        check_size("hidden_size", self.hidden_size, nullable=True)
        for name, concern in PARTS.items():
            if not isinstance(getattr(self, name), concern):
                raise ValueError(f"{name} must be a {concern.__name__}, found {getattr(self, name)!r}")

    @classmethod
    def of_recipe(cls, model_config: Any, **shapes: Any) -> STForecasterConfig:
        """The config of a recipe's forecaster: ``shapes`` (the fields above it that come from the data and the
        tokenizer) and every concern taken out of ``model_config`` (:func:`~st_instruct.configs.part`)."""
        return cls(**shapes, **{name: part(model_config, concern) for name, concern in PARTS.items()})

    def encoder_spec(self) -> EncoderSpec:
        """The :class:`~st_instruct.models.st_encoders.EncoderSpec` of this forecaster's encoder."""
        return EncoderSpec(self.encoder, self.history, self.channels, self.coord_dim)

    def save(self, directory: str | Path) -> None:
        Path(directory, ST_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> STForecasterConfig:
        """The config saved in ``directory`` (today's nested file, or a legacy flat one: :data:`LEGACY_KEYS`); a
        ValueError naming the file and the key when it is not one this version wrote (unknown or missing keys, a
        type or size out of :data:`~st_instruct.configs.SIZE_BOUNDS`)."""
        path = Path(directory, ST_CONFIG_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{directory} holds no {ST_CONFIG_FILE}; it is written by save_st_modules")
        values = read_json_file(path)
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a JSON object of the ST configuration, found {type(values).__name__}")
        if not any(isinstance(values.get(name), dict) for name in PARTS):
            values = _from_legacy(values)
        shape_keys = {f.name for f in dataclasses.fields(cls)} - set(PARTS)
        unknown = sorted(set(values) - shape_keys - set(PARTS))
        unknown += sorted(f"{name}.{key}" for name, concern in PARTS.items() if isinstance(values.get(name), dict)
                          for key in set(values[name]) - {f.name for f in dataclasses.fields(concern)})
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; it was written by another version of st_instruct")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in values]
        if missing:
            raise ValueError(f"{path} lacks the keys {missing}: it was edited or damaged; {COPY_AGAIN}")
        try:
            parts = {name: concern(**values[name]) for name, concern in PARTS.items() if name in values}
            return cls(**{**values, **parts})
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}: it was edited or damaged; {COPY_AGAIN}") from err


def _from_legacy(values: dict[str, Any]) -> dict[str, Any]:
    """A legacy flat ``st_forecaster_config.json`` as today's nested one (:data:`LEGACY_KEYS`; its ``mrffn_layers``,
    null when off, becomes ``memory.mrffn`` and the layers). Unknown keys stay, for :meth:`STForecasterConfig.load`
    to name."""
    nested: dict[str, Any] = {name: {} for name in PARTS}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in LEGACY_KEYS:
            name, new = LEGACY_KEYS[key]
            nested[name][new] = value
        elif key == "mrffn_layers":
            nested["memory"].update(mrffn=value is not None, **({"mrffn_layers": value} if value else {}))
        else:
            out[key] = value
    return {**out, **nested}


def check_st_weights(directory: str | Path, config: STForecasterConfig) -> None:
    """Compare the tensor shapes of ``directory``'s ``st_modules.safetensors`` (read from its header, nothing
    loaded) with those ``config`` builds, so a config edited against its weights is one error naming both files
    before the model is built at the edited sizes.

    The ST modules that do not depend on the backbone's layers are built on the meta device (no memory): encoder,
    graph encoder, projector, head, RevIN, node table, at the width ``hidden_size`` or, with a backbone, the one the
    saved head reads (the backbone's own width is checked against it when the weights are loaded). SE-Attention,
    MRFFN memories, fusion and a VLM's vision parts need the backbone; :func:`load_st_modules` checks those."""
    directory = Path(directory)
    path = directory / ST_MODULES_FILE
    try:
        with safe_open(str(path), framework="pt") as saved_file:
            saved = {key: list(saved_file.get_slice(key).get_shape()) for key in saved_file.keys()}
    except SafetensorError as err:
        raise ValueError(f"{path} is corrupt or truncated ({err}); copy the model folder again (completely) or "
                         "re-train") from err
    width = config.hidden_size or saved.get("regression_head.his.weight", [0, 1])[1]  # lacking: reported below
    twin = dataclasses.replace(config, hidden_size=width, se=SEAttentionConfig(), memory=MemoryConfig(),
                               fusion=FusionConfig(), soft_prompt=SoftPromptConfig())  # its shape: the backbone's
    with torch.device("meta"):
        built = build_st_forecaster(None, twin).st_modules()
    expected = {f"{name}.{key}": list(value.shape) for name, module in built.items()
                for key, value in module.state_dict().items()}
    for key, shape in expected.items():
        if saved.get(key) != shape:
            found = f"has {key} of shape {saved[key]}" if key in saved else f"lacks {key}"
            raise ValueError(f"{path} {found}, but {directory / ST_CONFIG_FILE} gives it shape {shape}: the two files "
                             f"do not belong together (one was edited or damaged); {COPY_AGAIN}")
    extra = sorted(key for key in saved if key.split(".")[0] in built and key not in expected)
    if extra:
        raise ValueError(f"{path} holds {extra[:3]}, which {directory / ST_CONFIG_FILE} does not build: the two "
                         f"files do not belong together (one was edited or damaged); {COPY_AGAIN}")


@dataclass
class STForecasterOutput(ModelOutput):
    """``loss`` LM loss (when labels are given), ``logits`` [B, S or logits_to_keep, V], ``predictions``
    [B, P, N, C] scaled, ``hidden_states`` the backbone's per-layer states when asked for, ``reconstruction``
    [B, L, N, C] scaled: the history as the reconstruction head reads it back (``reconstruction_head`` only)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    reconstruction: torch.Tensor | None = None


def draw_seed() -> int:
    """A seed drawn from torch's global generator: the ST modules that initialise from a generator of their own
    (SE-Attention's angle projection, the MRFFN memories) take it from here, so a run's ``set_seed(seed)`` reaches
    them like every other initialisation."""
    return int(torch.randint(2**31 - 1, ()))


def apply_memories(backbone: nn.Module, memory: MemoryConfig) -> None:
    """Wrap the MLPs of ``memory.mrffn_layers`` with MRFFN memories, in place (idempotent; nothing when ``mrffn`` is
    off), initialised with a seed from :func:`draw_seed`. Must run before a PEFT adapter is applied or loaded: LoRA
    target names then include the wrapped MLP (``mlp.base.*``)."""
    if not memory.mrffn:
        return
    if unwrap(backbone) is not backbone and not memory_modules(backbone):
        raise ValueError("MRFFN memories must be added before the PEFT adapter (its LoRA target names include the "
                         "wrapped MLP); build the forecaster on the plain backbone")
    wrap_mlps(backbone, memory.mrffn_layers, memory.mrffn_slots, memory.mrffn_key_dim, memory.mrffn_top_k,
              seed=draw_seed())


class STForecaster(nn.Module):
    """A causal-LM backbone (plain or PEFT-wrapped) plus ``st_encoder``, ``st_projector`` and ``regression_head``.

    Node-count agnostic: ``N`` may differ between batches (and between the data it was trained and tested on).
    Every random initialisation draws from torch's global generator (seed it with ``transformers.set_seed``).
    """

    def __init__(self, backbone: nn.Module | None, config: STForecasterConfig, *, encoder: nn.Module,
                 projector: nn.Module, head: nn.Module, graph: nn.Module | None = None, revin: nn.Module | None = None,
                 node_table: nn.Module | None = None, spatial: nn.Module | None = None,
                 fusion: nn.Module | None = None, prompt: nn.Module | None = None,
                 reconstruction: nn.Module | None = None, soft_prompt: nn.Module | None = None) -> None:
        """Hold the parts :func:`build_st_forecaster` built (or any that fit ``config``): ``encoder``, ``projector``,
        ``head`` and the optional ``graph`` encoder, ``revin``, learned ``node_table``, SE-Attention's ``spatial``
        rotation (already applied to ``backbone``: :func:`~st_instruct.models.se_attention.apply_se_attention`),
        ``fusion``, UniST's memory ``prompt``, the history's ``reconstruction`` head and PromptST's
        ``soft_prompt``. Builds nothing and changes nothing of ``backbone``."""
        super().__init__()
        self.backbone = backbone
        self.st_config = config  # not `config`: HF trainers read model.config as a transformers config
        if backbone is None:
            self._plain_config = PretrainedConfig(hidden_size=config.hidden_size)  # what trainers read as model.config
        self.st_encoder, self.st_projector, self.regression_head = encoder, projector, head
        self.st_graph, self.st_revin, self.st_node_table = graph, revin, node_table
        self.st_spatial, self.st_fusion, self.st_prompt = spatial, fusion, prompt
        self.st_reconstruction = reconstruction
        self.st_soft_prompt = soft_prompt

    def st_modules(self) -> dict[str, nn.Module]:
        """Every ST module that is on, by name: the forecaster's own (:data:`ST_MODULE_NAMES`), a VLM backbone's
        vision tower and projector (:data:`VISION_MODULE_NAMES`) and the MRFFN memory of each wrapped decoder layer
        (``st_memory.layers.<i>``). They train in every freeze plan (unless the recipe freezes one) and are saved in
        ``st_modules.safetensors``."""
        modules = {name: getattr(self, name) for name in ST_MODULE_NAMES if getattr(self, name) is not None}
        if self.backbone is not None and is_vision_language(self.backbone):
            tower, projector = vision_tower(self.backbone), vision_projector(self.backbone)
            modules["st_vision_tower"] = tower
            if not any(module is projector for module in tower.modules()):  # Qwen2-VL's merger is in its tower
                modules["st_vision_projector"] = projector
        for index, mlp in (memory_layers(self.backbone) if self.backbone is not None else {}).items():
            modules[f"st_memory.layers.{index}"] = mlp.st_memory
        return modules

    # What the HF / TRL trainers read from the model they train, delegated to the transformers backbone.
    @property
    def config(self) -> Any:
        """The backbone's transformers config (trainers set ``use_cache`` and special token ids on it); without a
        backbone a plain ``PretrainedConfig`` holding ``hidden_size``."""
        return self._plain_config if self.backbone is None else unwrap(self.backbone).config

    def add_model_tags(self, tags: list[str] | str) -> None:
        """Hub tags, kept on the backbone (``SFTTrainer`` adds its own); without one there is nowhere to keep them."""
        if self.backbone is not None:
            unwrap(self.backbone).add_model_tags(tags)

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """Recompute the backbone's layer activations in the backward pass (``Trainer`` calls this when
        ``activation_checkpointing`` / ``gradient_checkpointing`` is on); without a backbone there are no layers to
        recompute."""
        if self.backbone is not None:
            unwrap(self.backbone).activation_checkpointing_enable(**kwargs)

    def st_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, his_positions: torch.Tensor,
                  pre_positions: torch.Tensor, node_mask: torch.Tensor,
                  node_embeddings: torch.Tensor) -> contextlib.ExitStack:
        """The context in which the backbone's word embedding of each real node's ``<st_his>`` token (positions
        [B, N], ``node_mask`` [B, N]) is ``node_embeddings`` [B, N, H] for a pass over ``input_ids`` [B, S], and,
        with ``fusion``, the ST tokens attend to the image and text tokens before the first decoder layer. Padded
        nodes (whose position is 0, a real token) never write anything."""
        batch_index, node_index = node_mask.nonzero(as_tuple=True)
        stack = contextlib.ExitStack()
        handle = replace_input_embeddings(self.backbone, batch_index, his_positions[batch_index, node_index],
                                          node_embeddings[batch_index, node_index], input_ids.shape[1])
        stack.callback(handle.remove)
        if self.st_fusion is not None:
            stack.enter_context(fusion_context(self.backbone, self.st_fusion,
                                               torch.cat((his_positions, pre_positions), dim=1),
                                               torch.cat((node_mask, node_mask), dim=1), attention_mask))
        return stack

    def node_coordinates(self, coords: torch.Tensor, node_mask: torch.Tensor,
                         node_index: torch.Tensor | None) -> torch.Tensor:
        """``coords`` [B, N, K] of the batch, or with a learned node table its rows at ``node_index`` [B, N]."""
        if self.st_node_table is None:
            return coords
        size = self.st_node_table.num_embeddings
        if node_index is None:
            raise ValueError("coordinates: learned needs the batch's node_index (STDataCollator adds it)")
        index = node_index.long() * node_mask.long()  # padded nodes read row 0, then are zeroed by the encoder
        if int(index.max()) >= size:
            raise ValueError(f"node index {int(index.max())} is beyond the learned node table of {size} nodes: "
                             "'coordinates: learned' ties a model to the node set it was trained on; use laplacian, "
                             "geo or grid coordinates to run on other graphs")
        return self.st_node_table(index)

    def spatial_context(self, coords: torch.Tensor, positions: list[torch.Tensor], node_mask: torch.Tensor,
                        length: int) -> contextlib.AbstractContextManager:
        """With SE-Attention: the context in which the backbone's ST tokens at ``positions`` (each [B, N]: every
        node's ``<st_his>`` and ``<st_pre>``, or only the first in a prompt) are rotated by their node's coordinates,
        centred and scaled per sample (:func:`normalize_coords`: spatial offsets, not absolute positions, matter);
        text tokens are not rotated. Without it, a context that does nothing."""
        if self.st_spatial is None:
            return contextlib.nullcontext()
        if not se_attention_enabled(self.backbone):
            raise ValueError("this forecaster has SE-Attention, but its backbone no longer runs it (its attention "
                             "implementation was changed after build_st_forecaster applied it); rebuild the model")
        token_coordinates, st_mask = token_coords(normalize_coords(coords, node_mask), positions, node_mask, length)
        return spatial_context(self.backbone, self.st_spatial, token_coordinates, st_mask)

    def node_tokens(self, history: torch.Tensor, history_mask: torch.Tensor, history_tod: torch.Tensor,
                    history_dow: torch.Tensor, coords: torch.Tensor, node_mask: torch.Tensor,
                    steps_per_day: torch.Tensor | None, batch: dict[str, Any]
                    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """``(coords [B, N, K], node tokens [B, N, 4 * encoder_dim], RevIN statistics or None)``: the encoder path
        of :meth:`forward` (node coordinates or the learned table, RevIN, the ST encoder, the graph encoder, UniST's
        memory prompt), before the projector. ``batch``: the other batch keys (``node_index``, the graphs, the
        priors)."""
        coords = self.node_coordinates(coords, node_mask, batch.get("node_index"))
        stats, encoded = None, history
        if self.st_revin is not None:
            encoded, stats = self.st_revin.normalise(history, history_mask)
        nodes = self.st_encoder(encoded, history_mask, history_tod, history_dow, coords, node_mask, steps_per_day)
        if self.st_graph is not None:
            nodes = nodes + self.graph_tokens(nodes, node_mask, batch)
        if self.st_prompt is not None:
            nodes = nodes + self.prompt_tokens(history, node_mask, batch)  # the priors' scale: the sample's
        return coords, nodes, stats

    def prompt_tokens(self, history: torch.Tensor, node_mask: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """UniST's memory prompt [B, N, F] of every node, added to its token (:mod:`~st_instruct.models.
        memory_prompts`), from ``history`` and the batch's priors; zero on padded nodes."""
        missing = [key for key in PRIOR_KEYS if batch.get(key) is None]
        if missing:
            raise ValueError(f"this forecaster's UniST memory prompts (unist_prompts: true) need the batch's "
                             f"{', '.join(missing)}; batch with build_collator(...), which adds them "
                             "(st_instruct.data.prompt_context.WindowPriors)")
        device = history.device
        out = self.st_prompt(history, *(batch[key].to(device) for key in PRIOR_KEYS))
        return out * node_mask[..., None].to(out.dtype)

    def graph_tokens(self, nodes: torch.Tensor, node_mask: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The graph encoder's [B, N, F] addition to the ST encoder's tokens ``nodes``, from the batch's
        ``static_graph`` / ``wind_graph`` [B, N, N]; zero on padded nodes."""
        wanted = ["static_graph"] + (["wind_graph"] if self.st_config.graph.st_graph == "static_wind" else [])
        missing = [key for key in wanted if batch.get(key) is None]
        if missing:
            raise ValueError(f"this forecaster's graph encoder (st_graph: {self.st_config.graph.st_graph}) needs the "
                             f"batch's {' and '.join(missing)}; batch with build_collator(...), which adds them "
                             "(st_instruct.data.air_graphs.WindowGraphs)")
        dynamic = batch.get("wind_graph") if self.st_config.graph.st_graph == "static_wind" else None
        device = nodes.device
        out = self.st_graph(nodes, batch["static_graph"].to(device),
                            None if dynamic is None else dynamic.to(device))
        return out * node_mask[..., None].to(out.dtype)

    def _check_positions(self, input_ids: torch.Tensor, his_positions: torch.Tensor, pre_positions: torch.Tensor,
                         node_mask: torch.Tensor) -> None:
        """Every real node's positions must hold ``<st_his>`` / ``<st_pre>``: otherwise the encoder would overwrite,
        and the head read, arbitrary tokens without any error."""
        batch_index, node_index = node_mask.nonzero(as_tuple=True)
        checks = [("his", his_positions, self.st_config.his_token_id)]
        node_as_token = torch.equal(pre_positions, his_positions) and \
            not bool((input_ids == self.st_config.pre_token_id).any())  # the head reads each <st_his> itself
        if not node_as_token:
            checks.append(("pre", pre_positions, self.st_config.pre_token_id))
        for kind, positions, token_id in checks:
            found = input_ids[batch_index, positions[batch_index, node_index]]
            if not bool((found == token_id).all()):
                raise ValueError(f"{kind}_positions point at tokens {sorted(set(found.tolist()) - {token_id})}, not "
                                 f"at <st_{kind}> (id {token_id}); the data was tokenised with another tokenizer than "
                                 "the one this model's config was built with")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, his_positions: torch.Tensor,
                pre_positions: torch.Tensor, node_mask: torch.Tensor, history: torch.Tensor,
                history_mask: torch.Tensor, history_tod: torch.Tensor, history_dow: torch.Tensor,
                coords: torch.Tensor, labels: torch.Tensor | None = None, steps_per_day: torch.Tensor | None = None,
                output_hidden_states: bool = False, logits_to_keep: int | torch.Tensor = 0,
                reuse_prefix: bool = False, **unused: Any) -> STForecasterOutput:
        """One teacher-forced pass. Shapes as ``STDataCollator`` gives them: ``input_ids`` / ``attention_mask`` /
        ``labels`` [B, S], positions and ``node_mask`` [B, N], ``history`` / ``history_mask`` [B, L, N, C],
        ``history_tod`` / ``history_dow`` [B, L], ``coords`` [B, N, K], ``steps_per_day`` [B]; for a
        vision-language backbone also the processor's image inputs (:data:`~st_instruct.models.patching.VISION_INPUTS`:
        ``pixel_values`` and, by family, ``image_grid_thw`` / ``pixel_attention_mask``), none for a text-only batch.

        Other batch keys (``target``, ``scaler_*``, ...) are accepted and ignored, so ``model(**batch)`` works.
        ``logits_to_keep=1`` (without ``labels``) skips the vocabulary projection for all but the last token:
        the forecast needs no logits, and on a real vocabulary they dominate the cost of a pass. A 1-D tensor of
        positions keeps the logits there only (``STSFTTrainer`` computes the LM loss at the labelled ones).
        Without a backbone (the no-LLM control) only ``predictions`` is set: there is no LM to score the text.

        ``reuse_prefix`` (prediction: :meth:`predict` sets it) passes only what can change a forecast: the tokens
        after every node's last ST token are cut (causal attention: they cannot reach an earlier hidden state), and
        the text before the first ``<st_his>``, when it is the same in every row, comes from a key/value cache
        computed once per prefix and weights (:meth:`prediction_span`); the hidden states are then those of the
        remaining tokens. Forecasts equal the full pass's (a test checks it).
        """
        if labels is not None and (torch.is_tensor(logits_to_keep) or logits_to_keep):
            raise ValueError("logits_to_keep drops the logits the LM loss needs; pass labels=None with it")
        self._check_positions(input_ids, his_positions, pre_positions, node_mask)
        coords, nodes, stats = self.node_tokens(history, history_mask, history_tod, history_dow, coords, node_mask,
                                                steps_per_day, unused)
        skip = nodes if self.st_config.head.head_skip else None
        if self.backbone is None:  # the no-LLM control: the head reads each node's projected features directly
            features = self.st_projector(nodes)
            if self.st_soft_prompt is not None:  # no sequence to prepend to: one vector added to every node's
                features = self.st_soft_prompt(features)
            node_weight = node_mask[:, None, :, None].to(features.dtype)
            predictions, reconstruction = (
                None if head is None else self._denormalised(head(features, features, skip) * node_weight, stats)
                for head in (self.regression_head, self.st_reconstruction))
            return STForecasterOutput(predictions=predictions, reconstruction=reconstruction)
        vision = {key: unused[key] for key in VISION_INPUTS if unused.get(key) is not None}
        if vision and not is_vision_language(self.backbone):
            raise ValueError(f"the batch carries image inputs ({', '.join(vision)}) but the backbone "
                             f"{type(unwrap(self.backbone)).__name__} is a text-only model; batch it with "
                             "STDataCollator, or use a vision-language backbone")
        shift = 0 if self.st_soft_prompt is None else self.st_soft_prompt.tokens  # the soft prompt's virtual tokens
        start, end = 0, input_ids.shape[1]
        if reuse_prefix and labels is None and not vision and shift == 0 and self.st_fusion is None:
            start, end = self.prediction_span(input_ids, attention_mask, his_positions, pre_positions, node_mask)
        past = self.prefix_cache(input_ids[0, :start]) if start else None
        his, pre = (his_positions - start).clamp(min=0), (pre_positions - start).clamp(min=0)
        with (self.st_inputs(input_ids[:, start:end], attention_mask, his, pre, node_mask, self.st_projector(nodes)),
              self.spatial_context(coords, [his_positions + shift, pre_positions + shift], node_mask, end + shift)):
            out = self.backbone_pass(input_ids[:, start:end], attention_mask[:, :end], labels, logits_to_keep, vision,
                                     past)
        # hidden_states[-1] is after the final norm: what the LM head reads
        predictions, reconstruction = (
            None if head is None else self._denormalised(
                head.from_hidden_states(out.hidden_states[-1], his, pre, node_mask, skip), stats)
            for head in (self.regression_head, self.st_reconstruction))
        return STForecasterOutput(loss=out.loss, logits=out.logits, predictions=predictions,
                                  hidden_states=out.hidden_states if output_hidden_states else None,
                                  reconstruction=reconstruction)

    def prediction_bytes(self, tokens: int) -> int:
        """An upper estimate of the memory one sample of ``tokens`` tokens takes in :meth:`predict`: every layer's
        hidden states (kept for the head), the key/value cache, and the largest transient of one layer (the
        attention scores of every head, the MLP's two intermediate activations); the encoder's and the head's are
        small beside them."""
        weight = next(self.parameters())
        width = weight.element_size()
        if self.backbone is None:
            return max(tokens, 1) * self.st_config.hidden_size * 8 * width
        config = unwrap(self.backbone).config.get_text_config()
        layers, hidden = int(config.num_hidden_layers), int(config.hidden_size)
        heads, kv_heads, head_dim = attention_geometry(self.backbone)
        inner = int(getattr(config, "intermediate_size", None) or 4 * hidden)
        kept = (layers + 1) * tokens * hidden + 2 * layers * tokens * kv_heads * head_dim
        transient = max(heads * tokens * tokens * 4 // width, 3 * tokens * inner)  # scores are float32
        return int((kept + transient) * width)

    def prediction_span(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, his_positions: torch.Tensor,
                        pre_positions: torch.Tensor, node_mask: torch.Tensor) -> tuple[int, int]:
        """``(start, end)``: tokens ``[0, start)`` are the same text in every row of ``input_ids`` [B, S], none
        padded, before any node's ``<st_his>`` (``start`` 0 when the rows differ there); no forecast depends on a
        token at or after ``end``, one past the last real node's ``<st_pre>`` (causal attention)."""
        length = input_ids.shape[1]
        start = int(his_positions.masked_fill(~node_mask, length).min())
        end = int(pre_positions.masked_fill(~node_mask, -1).max()) + 1
        if not 0 < start < length or not bool(attention_mask[:, :start].all()) or \
                not bool((input_ids[:, :start] == input_ids[:1, :start]).all()):
            start = 0
        return start, max(end, start + 1)

    def prefix_cache(self, prefix_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per decoder layer, the keys and values [1, Hkv, T, D] of the text ``prefix_ids`` [T]: computed by one pass
        of the backbone (no ST token in it, so nothing of a window enters) and kept until the prefix, the weights
        (any in-place update bumps a parameter's version) or their device / dtype change."""
        weights = list(self.parameters())
        stamp = (tuple(prefix_ids.tolist()), sum(p._version for p in weights), weights[0].data_ptr(),
                 weights[0].device, weights[0].dtype)
        cached = getattr(self, "_prefix_kv", None)
        if cached is None or cached[0] != stamp:
            out = self.backbone(input_ids=prefix_ids[None], attention_mask=torch.ones_like(prefix_ids[None]),
                                use_cache=True, logits_to_keep=1)
            layers = [(layer.keys, layer.values) for layer in returned_cache(out).layers]
            cached = self._prefix_kv = (stamp, layers)
        return cached[1]

    def backbone_pass(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None,
                      logits_to_keep: int | torch.Tensor, vision: dict[str, Any],
                      past: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Any:
        """The backbone's pass over ``input_ids`` [B, S] (every layer's hidden states, no cache). With a soft prompt
        (:mod:`~st_instruct.models.soft_prompts`) its ``T`` virtual tokens go first: the input embeddings are taken
        here from the backbone's embedding module (so the ST vectors of :meth:`st_inputs` are written in by its
        hook), the prompt prepended to them, the mask and ``labels`` extended, ``logits_to_keep`` positions shifted,
        deep prompts on; the virtual positions are cut off the hidden states and the logits again, so the output
        reads as one over ``input_ids`` (the head at ``<st_pre>``, the LM loss' positions unchanged)."""
        prompt = self.st_soft_prompt
        if past is not None:  # the keys / values of a prefix shared by every row (prediction_span), for this batch
            batch = input_ids.shape[0]
            cache = DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in past],
                                 config=unwrap(self.backbone).config)
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                                 use_cache=True, logits_to_keep=logits_to_keep, **cache_argument(self.backbone, cache))
        if prompt is None:
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                 output_hidden_states=True, use_cache=False, logits_to_keep=logits_to_keep, **vision)
        embeddings, attention_mask, labels = prompt.prepend(input_embeddings(self.backbone)(input_ids),
                                                            attention_mask, labels)
        keep = logits_to_keep + prompt.tokens if torch.is_tensor(logits_to_keep) else logits_to_keep
        with prompt.deep_prompts(self.backbone):
            out = self.backbone(inputs_embeds=embeddings, attention_mask=attention_mask, labels=labels,
                                output_hidden_states=True, use_cache=False, logits_to_keep=keep)
        out.hidden_states = tuple(hidden[:, prompt.tokens:] for hidden in out.hidden_states)
        if not torch.is_tensor(logits_to_keep) and logits_to_keep == 0:  # all of them: the prompt's too
            out.logits = out.logits[:, prompt.tokens:]
        return out

    def _denormalised(self, scaled: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """A head's output [B, T, N, C] in the batch's scale: RevIN's normalisation undone when it is on."""
        return scaled if stats is None else self.st_revin.denormalise(scaled, stats)

    def predict(self, batch: dict[str, Any], reuse_prefix: bool = True) -> torch.Tensor:
        """Forecasts [B, P, N, C] in original units (``scaled * scaler_std + scaler_mean``), one pass in eval mode
        without gradients; zero on padded nodes. ``batch`` is an ``STDataCollator`` batch on any device.
        ``reuse_prefix``: the shortened pass of :meth:`forward` (the same forecasts); False runs every token (a
        caller that records the layers' inputs at the batch's positions needs that)."""
        device = self.regression_head.out.weight.device
        inputs = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                  for key, value in batch.items() if key != "labels"}
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                scaled = self(**inputs, logits_to_keep=1, reuse_prefix=reuse_prefix).predictions
        finally:
            self.train(was_training)
        return inverse_scale(scaled, inputs["scaler_mean"], inputs["scaler_std"]) * inputs["node_mask"][
            :, None, :, None]


def build_st_forecaster(backbone: nn.Module | None, config: STForecasterConfig,
                        encoder: nn.Module | None = None) -> STForecaster:
    """The :class:`STForecaster` ``config`` describes on ``backbone``: every ST part built here (random weights;
    ``encoder`` given: e.g. a pretrained one, :mod:`st_instruct.pretraining`) and the backbone edits applied
    explicitly -- SE-Attention (:func:`~st_instruct.models.se_attention.apply_se_attention`) and the MRFFN memories
    (:func:`apply_memories`). The one builder of training, pretraining's readout, few-shot, controls and loading.
    Every random initialisation draws from torch's global generator (seed it with ``transformers.set_seed``).

    ``backbone=None`` is the no-LLM control: the parts are built at ``config.hidden_size`` (the removed backbone's
    width) on the default device (the CPU, or the meta device where :func:`check_st_weights` builds a memory-free
    twin); the options that live inside a backbone are refused."""
    if encoder is not None and (encoder.history, encoder.channels) != (config.history, config.channels):
        raise ValueError(f"the encoder given reads history {encoder.history} x channels {encoder.channels}, the "
                         f"config says {config.history} x {config.channels}")
    if backbone is None:
        width, device = _width_without_backbone(config), torch.get_default_device()
    else:
        if config.hidden_size is not None:
            raise ValueError(f"hidden_size ({config.hidden_size}) is only for a forecaster without a backbone; "
                             "with one, its own width is used: leave hidden_size unset")
        width = hidden_size(unwrap(backbone).config)
        device = input_embeddings(backbone).weight.device
    encoder = encoder if encoder is not None else build_st_encoder(config.encoder_spec())
    graph = None
    if config.graph.st_graph != "none":
        dim = encoder.out_dim
        graph = GatedGraphEncoder(dim, dim, dim, dynamic=config.graph.st_graph == "static_wind")
    projector = STProjector(encoder.out_dim, width, config.head.st_projector_layers)
    head = RegressionHead(width, config.horizon, config.channels, config.head.head_dim,
                          skip_dim=encoder.out_dim if config.head.head_skip else None)
    revin = RevIN(config.channels) if config.head.revin else None
    reconstruction = None
    if config.head.reconstruction_head:  # the same head's shape, reading back the L history steps
        reconstruction = RegressionHead(width, config.history, config.channels, config.head.head_dim,
                                        skip_dim=encoder.out_dim if config.head.head_skip else None)
    node_table = None
    if config.node_table_size:
        node_table = nn.Embedding(config.node_table_size, config.coord_dim)
        nn.init.normal_(node_table.weight, std=0.1)
    spatial = None
    if config.se.se_attention:
        if config.coord_dim < 1:
            raise ValueError("se_attention rotates by node coordinates, but coord_dim is 0 (coordinates: none); "
                             "use laplacian, geo, grid or learned coordinates")
        spatial = build_spatial_rotation(backbone, config.coord_dim, config.se.se_pairs, config.se.se_learned_scale,
                                         pair_indices=config.se.se_pair_indices, seed=draw_seed())
        with torch.no_grad():
            spatial.weight.mul_(config.se.se_init_scale)
        apply_se_attention(backbone, spatial)
    fusion = None
    if config.fusion.st_fusion:
        if backbone is None or not is_vision_language(backbone):
            name = type(unwrap(backbone)).__name__ if backbone is not None else "none"
            raise ValueError("fusion joins the ST tokens with a vision-language model's image tokens; this backbone "
                             f"({name}) is not one: set st_fusion false or use a VLM backbone")
        fusion = STFusion(width, config.fusion.st_fusion_heads)
    prompt = None
    if config.prompt.unist_prompts:
        prompt = UniSTPrompt(config.history, config.horizon, config.channels, encoder.out_dim, config.prompt)
    soft_prompt = _soft_prompt(backbone, width, config.soft_prompt)
    if backbone is not None:
        apply_memories(backbone, config.memory)
    model = STForecaster(backbone, config, encoder=encoder, projector=projector, head=head, graph=graph,
                         revin=revin, node_table=node_table, spatial=spatial, fusion=fusion, prompt=prompt,
                         reconstruction=reconstruction, soft_prompt=soft_prompt)
    for module in model.st_modules().values():
        module.to(device)
    return model


def _soft_prompt(backbone: nn.Module | None, width: int, config: SoftPromptConfig) -> nn.Module | None:
    """The soft prompt ``config`` asks for on ``backbone``
    (:func:`~st_instruct.models.soft_prompts.build_soft_prompt`), ``None`` with none; a vision-language backbone
    refused."""
    if not config.soft_prompt_tokens:
        return None
    if backbone is not None and is_vision_language(backbone):
        raise ValueError("soft prompts are prepended to a text backbone's input embeddings; a vision-language "
                         "backbone places its image features from input_ids itself: set soft_prompt_tokens 0")
    return build_soft_prompt(backbone, width, config.soft_prompt_tokens, config.soft_prompt_deep)


def apply_soft_prompt(model: STForecaster, config: SoftPromptConfig) -> STForecaster:
    """Give the trained ``model`` (without a soft prompt) a fresh one of ``config``, in place, as
    :func:`build_st_forecaster` would have built it, and record it in ``model.st_config``: where prompt tuning starts
    on a base forecaster (freeze plan ``prompt``), and what an attribute adapter's weights are loaded into. Returns
    ``model``."""
    if model.st_soft_prompt is not None:
        raise ValueError("this forecaster has a soft prompt already (soft_prompt_tokens "
                         f"{model.st_config.soft_prompt.soft_prompt_tokens}); prompt tuning adds a fresh one to a "
                         "forecaster trained without one")
    width = model.st_config.hidden_size if model.backbone is None else hidden_size(unwrap(model.backbone).config)
    prompt = _soft_prompt(model.backbone, width, config)
    model.st_soft_prompt = None if prompt is None else prompt.to(model.regression_head.out.weight.device)
    model.st_config = dataclasses.replace(model.st_config, soft_prompt=config)
    return model


def _width_without_backbone(config: STForecasterConfig) -> int:
    """The width of a forecaster without a backbone; refuses the options that live inside one."""
    if config.hidden_size is None or config.hidden_size < 1:
        raise ValueError("a forecaster without a backbone (the no-LLM control) needs hidden_size >= 1 in its "
                         f"config (the removed backbone's width), found {config.hidden_size}")
    inside = [name for name, on in (("se_attention", config.se.se_attention), ("mrffn", config.memory.mrffn),
                                     ("st_fusion", config.fusion.st_fusion)) if on]
    if inside:
        raise ValueError(f"{' and '.join(inside)} modify the backbone's layers, but this forecaster has no "
                         "backbone (the no-LLM control); switch them off for it")
    return config.hidden_size


def inverse_scale(scaled: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[B, P, N, C] scaled values and per-sample z-score statistics [B, C] -> original units."""
    return scaled * std[:, None, None, :].to(scaled.dtype) + mean[:, None, None, :].to(scaled.dtype)


def regression_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, P, N, C] bool: observed target entries of real nodes (``target_mask & node_mask``)."""
    return batch["target_mask"].bool() & batch["node_mask"].bool()[:, None, :, None]


def st_state_dict(model: STForecaster, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The weights of the ST modules (:meth:`STForecaster.st_modules`), keyed ``<module name>.<parameter name>``, on
    the CPU. From the live modules, or picked out of ``state_dict`` (the whole forecaster's, keyed as
    ``model.state_dict()``; what a trainer gathers under ZeRO-3)."""
    modules = model.st_modules()
    if state_dict is None:
        return {f"{name}.{key}": value.detach().cpu().contiguous()
                for name, module in modules.items() for key, value in module.state_dict().items()}
    path_of = {id(module): path for path, module in model.named_modules()}
    prefixes = {f"{path_of[id(module)]}.": name for name, module in modules.items()}
    picked = {}
    for key, value in state_dict.items():
        for prefix, name in prefixes.items():
            if key.startswith(prefix):
                picked[f"{name}.{key[len(prefix):]}"] = value.detach().cpu().contiguous()
    return picked


def save_st_modules(model: STForecaster, directory: str | Path) -> None:
    """Write ``st_modules.safetensors`` (encoder, projector, head and the optional ST modules) and
    ``st_forecaster_config.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(st_state_dict(model), str(directory / ST_MODULES_FILE), metadata={"format": "pt"})
    model.st_config.save(directory)


def load_st_modules(model: STForecaster, directory: str | Path) -> STForecaster:
    """Load what :func:`save_st_modules` wrote into ``model`` (whose config must match); returns ``model``."""
    directory = Path(directory)
    missing = [name for name in (ST_CONFIG_FILE, ST_MODULES_FILE) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}: not a directory written by "
                                "save_st_modules (or an incomplete copy of one)")
    saved, current = _flat(STForecasterConfig.load(directory)), _flat(model.st_config)
    differ = [f"{key}: saved {saved[key]!r}, model {current[key]!r}" for key in saved if saved[key] != current[key]]
    if differ:
        raise ValueError(f"the ST modules in {directory} were saved for another configuration ({'; '.join(differ)}); "
                         "build the model with STForecasterConfig.load(directory) or use load_st_forecaster")
    try:
        state = load_file(str(directory / ST_MODULES_FILE))
    except SafetensorError as err:
        raise ValueError(f"{directory / ST_MODULES_FILE} is corrupt or truncated ({err}); copy the model folder "
                         "again (completely) or re-train") from err
    for name, module in model.st_modules().items():
        prefix = f"{name}."
        part = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as err:  # a backbone of another width, or a file from another version
            raise ValueError(f"{directory / ST_MODULES_FILE} does not fit this model's {name}: {err}") from err
    return model


def _flat(config: STForecasterConfig) -> dict[str, Any]:
    """``config``'s values by key, a concern's as ``part.key`` (``head.head_skip``)."""
    out = {}
    for key, value in dataclasses.asdict(config).items():
        if isinstance(value, dict):
            out.update({f"{key}.{inner}": item for inner, item in value.items()})
        else:
            out[key] = value
    return out


def load_st_forecaster(backbone: nn.Module, directory: str | Path) -> STForecaster:
    """An :class:`STForecaster` on ``backbone`` with the config and ST weights saved in ``directory``."""
    config = STForecasterConfig.load(directory)
    check_st_weights(directory, config)
    return load_st_modules(build_st_forecaster(backbone, config), directory)
