"""LLM4HRS: an imputer of missing spatio-temporal values on a frozen LLM's decoder stack.

Wang et al., "LLM4HRS", IEEE TGRS 63:4204117 (2025); code: ``ssyuwang/LLM4HRS-master``, ``models/LLM4HRSI.py``.
What the original does (GPT-2, windows ``[B, L, M]`` of the ``M`` pixels of a chlorophyll-a grid, ``m`` the visible
mask):

1. input ``x ⊙ m`` (hidden entries zeroed) and the mask side by side: ``[x ⊙ m ‖ m]``;
2. *forward in time*: one token per step, ``Linear(2M -> d)`` of that step's ``[x ⊙ m ‖ m]``, through GPT-2
   (``inputs_embeds``, so GPT-2 adds its learned position embeddings ``wpe``); *time-reversed*: the same tokens in
   reverse order through the same GPT-2, the hidden states flipped back;
3. the two passes combined by concatenation: ``Linear(2d -> M)(LayerNorm(2d)([h_fwd ‖ h_rev]))``, the temporal
   estimate ``T``;
4. *across locations*: one token per pixel, ``Linear(2L -> d)`` of that pixel's ``[T ‖ m]`` over the window, through
   the same GPT-2; ``Linear(d -> L)(LayerNorm(d)(h))``, the spatial estimate ``S`` (the locations pass reads the
   temporal estimate, not the input: the passes run in sequence);
5. the output ``Linear(2M -> M)([T ‖ S])``, an estimate of every entry;
6. GPT-2 truncated to its first ``gpt_layers`` blocks (6 by default, 1 in the published script); only its LayerNorms
   (``ln_1``, ``ln_2``, ``ln_f``) and ``wpe`` train, attention and MLP stay frozen (``--mlp 1`` would train the MLPs;
   default 0); the loss is L1 on the held-out entries only (observed, but hidden from the input).

Deviations here, all forced by the ``[B, L, N, C]`` layout (nodes with channels) or by backbones other than GPT-2:

- each node is its own sequence: a time token is ``Linear(2C -> d)`` of one node's step, not ``Linear(2M -> d)`` of
  the whole frame (which ties the model to one grid size), and the output fusion is ``Linear(2C -> C)`` per node and
  step, not ``Linear(2M -> M)`` across all locations; a location token is ``Linear(2LC -> d)`` of one node's whole
  window (the original's ``Linear(2L -> d)`` at ``C = 1``). The model is thereby independent of ``N``.
- any HF causal LM: its body (:func:`~st_instruct.models.patching.base_model`) reads ``inputs_embeds``. A family
  without absolute position embeddings (Llama / SmolLM2 / Qwen: RoPE) gets a learned table of its own, added to the
  tokens and shared by the passes as GPT-2's ``wpe`` is (``max(L, max_nodes)`` rows; GPT-2 keeps its own ``wpe``).
- ``passes`` may drop passes (an ablation); without a temporal pass the locations pass reads ``x ⊙ m`` itself.
- the original flips the batch dimension together with time (``flip(dims=(0, 1))``) and flips both back: only the
  time reversal remains, which is what is done here. Its unused modules (``mlp``, ``drop``, patching arguments) are
  left out.

The locations pass is *not* equivariant to a permutation of the nodes, in the original as here: the decoder is
causal (node ``k`` attends to nodes ``0..k``) and positions (``wpe``, RoPE, the table) tell the nodes apart. Only the
no-LLM control, whose tokens never meet, is equivariant.

Controls (Tan et al., NeurIPS 2024), as :mod:`~st_instruct.models.forecaster` has them: ``no_llm`` removes the backbone
(each pass's input embedding goes straight to its output layers; no position embedding, the parts keep the removed
backbone's width); ``random_llm`` keeps the architecture (truncated depth included) with freshly initialised weights
(``AutoModelForCausalLM.from_config`` under ``random_init_seed``, as
:func:`~st_instruct.models.backbones.get_backbone`'s ``random_init_seed`` builds one). Which backbone weights train is
the freeze plan ``frozen_blocks`` (:func:`st_instruct.training.freeze.apply_frozen_blocks_plan`;
:meth:`LLM4HRSImputer.trained_modules`).

A trained imputer (recipe key ``architecture: llm4hrs``, :mod:`st_instruct.training.run`) is saved in the layout of a
forecaster's folder (:mod:`st_instruct.models.saving`), holding only what training changed: ``st_modules.safetensors``
the weights of :meth:`~LLM4HRSImputer.trained_modules` (its own layers, the backbone's norms and position tables;
:func:`save_llm4hrs`) and ``st_forecaster_config.json`` its :class:`LLM4HRSConfig` marked ``"architecture":
"llm4hrs"`` (:func:`saved_architecture`); the frozen backbone is rebuilt from ``st_backbone.json`` as training built
it, and the ``random_llm`` control's random one from ``random_init_seed`` again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig

from st_instruct.configs import check_size
from st_instruct.model_dir import COPY_AGAIN, ST_CONFIG_FILE, ST_MODULES_FILE, read_json_file
from st_instruct.models.forecaster import inverse_scale
from st_instruct.models.patching import base_model, hidden_size, input_embeddings, layer_norms, unwrap

PASSES = ("time", "reversed", "locations")
TEMPORAL_PASSES = ("time", "reversed")
CONTROLS = (None, "no_llm", "random_llm")
ARCHITECTURE = "llm4hrs"  # the recipe's `architecture` value, and the mark of a saved imputer's config
FORECASTER = "forecaster"  # what a config without the mark is (every folder written before the imputer)


@dataclass
class LLM4HRSConfig:
    """What an :class:`LLM4HRSImputer` is besides its backbone: the data's shapes (``window`` L, ``channels`` C) and
    the constructor's settings. Saved as ``st_forecaster_config.json`` with ``"architecture": "llm4hrs"``
    (:meth:`save`), the file where a forecaster keeps its
    :class:`~st_instruct.models.forecaster.STForecasterConfig`, so every saved folder has the same files."""

    window: int
    channels: int
    passes: list[str] = field(default_factory=lambda: list(PASSES))
    control: str | None = None
    max_nodes: int = 1024
    random_init_seed: int = 0

    def __post_init__(self) -> None:
        check_size("window", self.window, "history")
        check_size("channels", self.channels)
        check_size("max_nodes", self.max_nodes, "history")
        check_size("random_init_seed", self.random_init_seed)
        passes = self.passes
        if not isinstance(passes, list) or not passes or len(set(passes)) != len(passes) \
                or not set(passes) <= set(PASSES):
            raise ValueError(f"passes must be a list of distinct names out of {list(PASSES)}, found {passes!r}")
        if self.control not in CONTROLS:
            raise ValueError(f"control must be one of {list(CONTROLS)}, found {self.control!r}")

    @property
    def horizon(self) -> int:
        """The steps a prediction holds (``P`` of :func:`~st_instruct.evaluation.predict.scatter_predictions`): the
        whole window."""
        return self.window

    def save(self, directory: str | Path) -> None:
        record = {"architecture": ARCHITECTURE, **dataclasses.asdict(self)}
        Path(directory, ST_CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> LLM4HRSConfig:
        """The config :meth:`save` wrote in ``directory``; a ValueError naming the file and the key when it is not
        one (another architecture, unknown or missing keys, a size or name out of range)."""
        path = Path(directory, ST_CONFIG_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{directory} holds no {ST_CONFIG_FILE}; it is written by save_llm4hrs")
        values = read_json_file(path)
        if not isinstance(values, dict) or values.get("architecture") != ARCHITECTURE:
            found = values.get("architecture", FORECASTER) if isinstance(values, dict) else type(values).__name__
            raise ValueError(f"{path} is not the config of an LLM4HRS imputer (architecture {found!r})")
        values = {key: value for key, value in values.items() if key != "architecture"}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(values) - names), sorted({"window", "channels"} - set(values))
        if unknown or missing:
            raise ValueError(f"{path}: unknown keys {unknown}, missing keys {missing}: it was written by another "
                             f"version of st_instruct, or edited; {COPY_AGAIN}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}: it was edited or damaged; {COPY_AGAIN}") from err


def saved_architecture(directory: str | Path) -> str:
    """The architecture of the model saved in ``directory``: ``"llm4hrs"`` when its ``st_forecaster_config.json``
    says so, else ``"forecaster"`` (also when the file is missing or unreadable: the forecaster's loader names
    the problem)."""
    path = Path(directory, ST_CONFIG_FILE)
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return FORECASTER
    return ARCHITECTURE if isinstance(values, dict) and values.get("architecture") == ARCHITECTURE else FORECASTER


def masked_l1(estimate: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of ``estimate`` against ``target`` (both [B, L, N, C]) over the ``mask`` entries only;
    0, with a gradient, when there is none. What stands in ``target`` elsewhere (NaN included) does not count."""
    if target.shape != estimate.shape or mask.shape != estimate.shape:
        raise ValueError(f"target {tuple(target.shape)} and its mask {tuple(mask.shape)} must have the shape of the "
                         f"estimate {tuple(estimate.shape)}")
    mask = mask.bool()
    error = torch.where(mask, estimate - torch.where(mask, target, 0).to(estimate.dtype), 0).abs()
    return error.sum() / mask.sum().clamp(min=1)


def position_embedding_tables(backbone: nn.Module) -> list[nn.Embedding]:
    """The learned absolute position embedding tables of a causal LM's body (GPT-2's ``wpe``): every
    ``nn.Embedding`` in it but the token embeddings; empty for rotary families (Llama, Qwen, SmolLM2)."""
    tokens = input_embeddings(backbone)
    return [module for module in base_model(backbone).modules()
            if isinstance(module, nn.Embedding) and module is not tokens]


def random_backbone(backbone: nn.Module, seed: int) -> nn.Module:
    """The architecture of the causal LM ``backbone`` (its config, truncated depth included) with fresh weights
    drawn from a generator seeded with ``seed`` (the global one is left as it was), in its dtype and on its device."""
    model = unwrap(backbone)
    parameter = next(model.parameters())
    with torch.random.fork_rng(devices=[]):  # built on the CPU: only the CPU generator is drawn from
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(copy.deepcopy(model.config), dtype=parameter.dtype)
    return fresh.to(parameter.device)


class LLM4HRSImputer(nn.Module):
    """LLM4HRS (module docstring) on the decoder stack of ``backbone``, a loaded HF causal LM (truncated with
    :func:`~st_instruct.models.patching.truncate_layers` / ``get_backbone(num_layers=...)`` as the original
    truncates GPT-2).

    Args:
        backbone: the causal LM whose body runs every pass (one backbone shared by all of them).
        channels: ``C``, channels per node.
        window: ``L``, steps per window.
        passes: a non-empty subset of :data:`PASSES`, in any order.
        control: ``None`` (the backbone as given), ``"no_llm"`` or ``"random_llm"`` (module docstring).
        max_nodes: the most nodes a window may hold when the imputer brings its own position table (rotary
            families); a GPT-2 backbone is bounded by its ``wpe`` instead.
        random_init_seed: the seed of the ``random_llm`` control's weights.

    Submodules: ``backbone`` (``None`` for ``no_llm``), ``position`` (the own position table, or ``None``),
    ``time_in`` / ``time_norm`` / ``time_out`` (the temporal passes), ``location_in`` / ``location_norm`` /
    ``location_out`` (the locations pass), ``fusion`` (with both kinds of pass). Built in float32 on the backbone's
    device; the tokens are cast to the backbone's dtype and its hidden states back.
    """

    def __init__(self, backbone: nn.Module, channels: int, window: int, *, passes: Sequence[str] = PASSES,
                 control: str | None = None, max_nodes: int = 1024, random_init_seed: int = 0) -> None:
        super().__init__()
        passes = tuple(passes)
        if not passes or len(set(passes)) != len(passes) or not set(passes) <= set(PASSES):
            raise ValueError(f"passes must be distinct names out of {PASSES}, found {passes}")
        if control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}, found {control!r}")
        if channels < 1 or window < 1 or max_nodes < 1:
            raise ValueError(f"channels, window and max_nodes must be >= 1, found {channels}, {window}, {max_nodes}")
        self.channels, self.window, self.passes, self.control = channels, window, passes, control
        self.max_nodes, self.random_init_seed = max_nodes, random_init_seed
        self.temporal = tuple(name for name in TEMPORAL_PASSES if name in passes)
        width = hidden_size(unwrap(backbone).config)
        self._plain_config = PretrainedConfig(hidden_size=width)  # model.config of the no-LLM control
        device = input_embeddings(backbone).weight.device
        if control == "random_llm":
            backbone = random_backbone(backbone, random_init_seed)
        self.backbone = None if control == "no_llm" else backbone
        self.position = None
        if self.backbone is not None and not position_embedding_tables(self.backbone):
            self.position = nn.Embedding(max(window, max_nodes), width)
            nn.init.normal_(self.position.weight, std=getattr(unwrap(backbone).config, "initializer_range", 0.02))
        self.time_in = self.time_norm = self.time_out = None
        if self.temporal:
            self.time_in = nn.Linear(2 * channels, width)
            self.time_norm = nn.LayerNorm(len(self.temporal) * width)
            self.time_out = nn.Linear(len(self.temporal) * width, channels)
        self.location_in = self.location_norm = self.location_out = None
        if "locations" in passes:
            self.location_in = nn.Linear(2 * window * channels, width)
            self.location_norm = nn.LayerNorm(width)
            self.location_out = nn.Linear(width, window * channels)
        self.fusion = nn.Linear(2 * channels, channels) if self.temporal and "locations" in passes else None
        for module in self.own_modules().values():
            module.to(device)

    def own_modules(self) -> dict[str, nn.Module]:
        """The imputer's own layers by attribute name (everything but the backbone): they always train."""
        names = ("position", "time_in", "time_norm", "time_out", "location_in", "location_norm", "location_out",
                 "fusion")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def trained_modules(self) -> dict[str, nn.Module]:
        """What the freeze plan ``frozen_blocks`` trains, by module path in this imputer: its own layers
        (:meth:`own_modules`) and the backbone's norms (:func:`~st_instruct.models.patching.layer_norms`) and
        learned position tables (:func:`position_embedding_tables`). What :func:`save_llm4hrs` saves."""
        modules = self.own_modules()
        if self.backbone is not None:
            path_of = {id(module): path for path, module in self.named_modules()}
            for module in [*layer_norms(self.backbone), *position_embedding_tables(self.backbone)]:
                modules[path_of[id(module)]] = module
        return modules

    def trained_state_dict(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The weights of :meth:`trained_modules`, keyed as in ``self.state_dict()``, on the CPU; from the live
        modules, or picked out of ``state_dict`` (the whole imputer's, as a trainer gathers it under ZeRO-3)."""
        if state_dict is None:
            return {f"{path}.{key}": value.detach().cpu().contiguous()
                    for path, module in self.trained_modules().items() for key, value in module.state_dict().items()}
        prefixes = tuple(f"{path}." for path in self.trained_modules())
        return {key: value.detach().cpu().contiguous() for key, value in state_dict.items()
                if key.startswith(prefixes)}

    @property
    def st_config(self) -> LLM4HRSConfig:
        """This imputer's :class:`LLM4HRSConfig` (what is saved beside its weights; evaluation reads ``horizon``
        and ``channels`` from it as from a forecaster's)."""
        return LLM4HRSConfig(window=self.window, channels=self.channels, passes=list(self.passes),
                             control=self.control, max_nodes=self.max_nodes, random_init_seed=self.random_init_seed)

    def st_modules(self) -> dict[str, nn.Module]:
        """The layers trained from scratch (:meth:`own_modules`), under the name the trainer gives
        ``st_learning_rate`` to (:meth:`~st_instruct.training.trainer.STSFTTrainer.create_optimizer`); the
        backbone's norms and position tables keep ``learning_rate``."""
        return self.own_modules()

    # What the HF / TRL trainers read from the model they train, delegated to the backbone as STForecaster does.
    @property
    def config(self) -> Any:
        """The backbone's transformers config; without a backbone a plain ``PretrainedConfig`` of its width."""
        return self._plain_config if self.backbone is None else unwrap(self.backbone).config

    def add_model_tags(self, tags: list[str] | str) -> None:
        """Hub tags, kept on the backbone (``SFTTrainer`` adds its own); without one there is nowhere to keep them."""
        if self.backbone is not None:
            unwrap(self.backbone).add_model_tags(tags)

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """Recompute the backbone's layer activations in the backward pass (``Trainer`` calls this when
        ``activation_checkpointing`` is on)."""
        if self.backbone is not None:
            unwrap(self.backbone).activation_checkpointing_enable(**kwargs)

    def body(self, tokens: torch.Tensor) -> torch.Tensor:
        """The shared backbone over sequences of tokens ``[S, T, d]`` -> last hidden states ``[S, T, d]``: the own
        position table added first (rotary families), the identity for the ``no_llm`` control."""
        if self.backbone is None:
            return tokens
        length = tokens.shape[1]
        if self.position is not None:
            if length > self.position.num_embeddings:
                raise ValueError(f"a pass sequence of {length} tokens exceeds the position table's "
                                 f"{self.position.num_embeddings} rows (max(window, max_nodes)); raise max_nodes")
            # through the table's forward, not a slice of its weight: ZeRO-3 gathers a module's weights only there
            tokens = tokens + self.position(torch.arange(length, device=tokens.device))
        else:
            rows = min(table.num_embeddings for table in position_embedding_tables(self.backbone))
            if length > rows:
                raise ValueError(f"a pass sequence of {length} tokens exceeds the backbone's {rows} positions")
        dtype = input_embeddings(self.backbone).weight.dtype
        out = base_model(self.backbone)(inputs_embeds=tokens.to(dtype), use_cache=False)
        return out.last_hidden_state.to(tokens.dtype)

    def pass_hidden(self, name: str, inputs: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The backbone's hidden states of one pass.

        ``time`` / ``reversed``: ``inputs`` [B, L, N, C] as the pass reads them (:meth:`forward` hands it ``x ⊙ m``),
        one sequence of L tokens per node -> [B, L, N, d] in the original time order (the reversed pass runs on the
        flipped sequence and is flipped back). ``locations``: ``inputs`` [B, L, N, C] is the estimate it reads (the
        temporal estimate, or ``x ⊙ m`` without temporal passes), one sequence of N tokens per window -> [B, N, d].
        """
        if name not in self.passes:
            raise ValueError(f"pass {name!r} is not one of this imputer's passes {self.passes}")
        batch, steps, nodes, _ = inputs.shape
        mask = visible.to(inputs.dtype)
        if name == "locations":
            flat = torch.cat([inputs, mask], dim=-1).permute(0, 2, 1, 3)  # [B, N, L, 2C]
            features = torch.cat([flat[..., :self.channels].reshape(batch, nodes, -1),
                                  flat[..., self.channels:].reshape(batch, nodes, -1)], dim=-1)
            return self.body(self.location_in(features))
        tokens = self.time_in(torch.cat([inputs, mask], dim=-1))  # [B, L, N, d]
        sequences = tokens.permute(0, 2, 1, 3).reshape(batch * nodes, steps, -1)
        if name == "reversed":
            hidden = self.body(sequences.flip(1)).flip(1)
        else:
            hidden = self.body(sequences)
        return hidden.reshape(batch, nodes, steps, -1).permute(0, 2, 1, 3)

    def forward(self, values: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """``values`` [B, L, N, C] (scaled; whatever stands at hidden entries is ignored), ``visible`` [B, L, N, C]
        bool -> the estimate of every entry [B, L, N, C] (visible ones included, as in the original)."""
        self._check(values, visible)
        inputs = torch.where(visible, values, torch.zeros((), dtype=values.dtype, device=values.device))
        temporal = spatial = None
        if self.temporal:
            hidden = torch.cat([self.pass_hidden(name, inputs, visible) for name in self.temporal], dim=-1)
            temporal = self.time_out(self.time_norm(hidden))
        if self.location_in is not None:
            batch, steps, nodes, channels = inputs.shape
            hidden = self.pass_hidden("locations", temporal if temporal is not None else inputs, visible)
            spatial = self.location_out(self.location_norm(hidden)).reshape(batch, nodes, steps, channels)
            spatial = spatial.permute(0, 2, 1, 3)
        if temporal is None or spatial is None:
            return temporal if spatial is None else spatial
        return self.fusion(torch.cat([temporal, spatial], dim=-1))

    def complete(self, values: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The imputed window: the visible ``values`` kept, the estimate at the hidden entries."""
        return torch.where(visible, values, self(values, visible))

    def loss(self, values: torch.Tensor, visible: torch.Tensor, target: torch.Tensor,
             target_mask: torch.Tensor) -> torch.Tensor:
        """L1 between the estimate and ``target`` [B, L, N, C] over the ``target_mask`` entries only (the held-out
        ones, as the original's ``L1Loss(outputs[eval_mask], x[eval_mask])``; :func:`masked_l1`)."""
        if target.shape != values.shape or target_mask.shape != values.shape:
            raise ValueError(f"target {tuple(target.shape)} and target_mask {tuple(target_mask.shape)} must have the "
                             f"shape of values {tuple(values.shape)}")
        return masked_l1(self(values, visible), target, target_mask)

    def predict(self, batch: dict[str, Any]) -> torch.Tensor:
        """The imputed windows [B, L, N, C] in original units of a batch of the builder's samples (the collator of
        :func:`~st_instruct.models.collators.build_collator`; any device): ``history`` read where ``history_mask``
        is set and estimated elsewhere (:meth:`complete`), de-scaled with the batch's ``scaler_mean`` /
        ``scaler_std`` as :meth:`STForecaster.predict <st_instruct.models.forecaster.STForecaster.predict>` does;
        zero on padded nodes. One pass in eval mode without gradients."""
        device = next(self.parameters()).device
        values, visible = batch["history"].to(device), batch["history_mask"].to(device).bool()
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                imputed = self.complete(values, visible)
        finally:
            self.train(was_training)
        mean, std = batch["scaler_mean"].to(device), batch["scaler_std"].to(device)
        return inverse_scale(imputed, mean, std) * batch["node_mask"].to(device)[:, None, :, None]

    def _check(self, values: torch.Tensor, visible: torch.Tensor) -> None:
        if values.dim() != 4 or values.shape[1] != self.window or values.shape[3] != self.channels:
            raise ValueError(f"values must be [B, L={self.window}, N, C={self.channels}], found "
                             f"{tuple(values.shape)}")
        if visible.shape != values.shape or visible.dtype != torch.bool:
            raise ValueError(f"visible must be a bool tensor of the shape of values {tuple(values.shape)}, found "
                             f"{visible.dtype} {tuple(visible.shape)}")


def build_llm4hrs_imputer(backbone: nn.Module, config: LLM4HRSConfig) -> LLM4HRSImputer:
    """The :class:`LLM4HRSImputer` ``config`` describes on ``backbone`` (random own layers, from torch's global
    generator): the one builder of training and loading."""
    return LLM4HRSImputer(backbone, config.channels, config.window, passes=config.passes, control=config.control,
                          max_nodes=config.max_nodes, random_init_seed=config.random_init_seed)


def save_llm4hrs(model: LLM4HRSImputer, directory: str | Path,
                 state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``st_modules.safetensors`` (:meth:`LLM4HRSImputer.trained_state_dict`, of ``state_dict`` when given)
    and ``st_forecaster_config.json`` (:class:`LLM4HRSConfig`) into ``directory``: never a frozen weight."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(model.trained_state_dict(state_dict), str(directory / ST_MODULES_FILE), metadata={"format": "pt"})
    model.st_config.save(directory)


def load_llm4hrs_weights(model: LLM4HRSImputer, directory: str | Path) -> LLM4HRSImputer:
    """Copy what :func:`save_llm4hrs` wrote in ``directory`` into ``model`` in place (its config must be the saved
    one, and the file must hold exactly the weights it trains); a ValueError naming the file otherwise. Returns
    ``model``."""
    directory = Path(directory)
    saved, current = dataclasses.asdict(LLM4HRSConfig.load(directory)), dataclasses.asdict(model.st_config)
    differ = [f"{key}: saved {saved[key]!r}, model {current[key]!r}" for key in saved if saved[key] != current[key]]
    if differ:
        raise ValueError(f"the imputer in {directory} was saved for another configuration ({'; '.join(differ)}); "
                         "build the model with LLM4HRSConfig.load(directory)")
    path = directory / ST_MODULES_FILE
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is corrupt, truncated or missing ({err}); {COPY_AGAIN}") from err
    expected = model.trained_state_dict()
    wrong = sorted(set(state) ^ set(expected)) + sorted(
        key for key in set(state) & set(expected) if state[key].shape != expected[key].shape)
    if wrong:
        raise ValueError(f"{path} does not hold the weights this imputer trains: {wrong[:5]} differ (a backbone of "
                         f"another family or depth?); {COPY_AGAIN}")
    model.load_state_dict(state, strict=False)
    return model
