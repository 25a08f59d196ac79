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
the freeze plan ``frozen_blocks`` (:func:`st_instruct.training.freeze.apply_frozen_blocks_plan`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from st_instruct.models.patching import base_model, hidden_size, input_embeddings, unwrap

PASSES = ("time", "reversed", "locations")
TEMPORAL_PASSES = ("time", "reversed")
CONTROLS = (None, "no_llm", "random_llm")


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
        self.temporal = tuple(name for name in TEMPORAL_PASSES if name in passes)
        width = hidden_size(unwrap(backbone).config)
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
            tokens = tokens + self.position.weight[:length]
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
        ones, as the original's ``L1Loss(outputs[eval_mask], x[eval_mask])``); 0, with a gradient, when there is
        none. What stands in ``target`` elsewhere (NaN included) does not count."""
        if target.shape != values.shape or target_mask.shape != values.shape:
            raise ValueError(f"target {tuple(target.shape)} and target_mask {tuple(target_mask.shape)} must have the "
                             f"shape of values {tuple(values.shape)}")
        estimate = self(values, visible)
        mask = target_mask.bool()
        error = torch.where(mask, estimate - torch.where(mask, target, 0).to(estimate.dtype), 0).abs()
        return error.sum() / mask.sum().clamp(min=1)

    def _check(self, values: torch.Tensor, visible: torch.Tensor) -> None:
        if values.dim() != 4 or values.shape[1] != self.window or values.shape[3] != self.channels:
            raise ValueError(f"values must be [B, L={self.window}, N, C={self.channels}], found "
                             f"{tuple(values.shape)}")
        if visible.shape != values.shape or visible.dtype != torch.bool:
            raise ValueError(f"visible must be a bool tensor of the shape of values {tuple(values.shape)}, found "
                             f"{visible.dtype} {tuple(visible.shape)}")
