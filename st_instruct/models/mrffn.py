"""The memory retrieval feed-forward network (MRFFN) of ST-LINK (Jeon et al., "ST-LINK: Spatially-Aware Large
Language Models for Spatio-Temporal Forecasting", CIKM 2025, arXiv 2509.13753): a decoder layer's feed-forward
block that also "retrieves key historical patterns" from a learned memory and adds them, to stabilise long-horizon
forecasts.

The paper does not publish its formulas; this is a faithful, documented reading. The decoder layer's existing MLP
is wrapped (``layer.mlp = MemoryFFN(base=layer.mlp, ...)``, docs/design.md §4), and for every token ``x`` [H]

    q = W_q · x                                   W_q: [d_k, H]
    s_i = (q · k_i + b_i) / √d_k                  M key slots k_i [d_k], slot biases b_i
    out = base(x) + g · Σ_{i ∈ top-k(s)} softmax_{top-k}(s)_i · v_i      value slots v_i [H], gate g

* **Retrieval** is per token (``x`` [B, S, H] -> [B, S, H]) and never mixes positions, so it is causal by
  construction. ``top_k=None`` is soft retrieval over all ``M`` slots; ``top_k=k`` takes the softmax over the
  ``k`` best-scoring slots only (the others get weight 0 and no gradient in that step).
* **Slot bias** ``b_i``, initialised to ``-½‖k_i‖²``: then ``q · k_i + b_i = -½‖q - k_i‖² + ½‖q‖²``, and as the last
  term is the same for every slot, the best slots are the keys *nearest* to the query, not merely the longest
  ones. A memory initialised from k-means centroids therefore gives each centroid its own slot. ``b`` trains.
* **Gate** ``g`` is one learnable scalar, initialised to 0, so a freshly wrapped model computes exactly what the
  plain one does. A scalar rather than a per-channel vector: the value slots already set the per-channel scale,
  and one number reads as "how much memory the layer uses". With ``g = 0`` the memory parameters get no gradient
  at first (``∂out/∂v = g · weights``), but the gate does (``∂out/∂g`` = the retrieval), so the first optimiser
  step opens it and the memory trains from then on. The value slots must therefore never start all zero (the
  retrieval, and with it the gate's gradient, would be zero forever): from scratch they start small and random.
* **Initialisation**: from scratch (:meth:`MemoryBank.reset_parameters`, seeded) or from the training data
  (:func:`init_memory_from_patterns`: k-means centroids of encoded history windows become the value slots, their
  queries ``W_q · c`` the key slots).

All memory parameters are plain ``nn.Parameter`` s of one child named ``st_memory`` (:data:`MEMORY_MODULE_NAME`):
anything whose name contains ``.st_memory.`` is an ST parameter (trained in every freeze plan, saved with the ST
modules by :func:`memory_state_dict`). They hold no ``nn.Linear``, so neither PEFT nor
``patching.feed_forward_projection_names`` ever takes ``W_q`` for a LoRA target. The pretrained MLP stays the
child ``base``: its weights are untouched and PEFT target names still match by suffix (``gate_proj``,
``up_proj``, ``down_proj``; ``c_fc``, ``c_proj``), but block-prefixed paths become ``mlp.base.gate_proj``
(``feed_forward_projection_names`` gives those when it runs after wrapping). Wrap before applying LoRA (or
loading an adapter), so adapter keys are the same at save and at load.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from st_instruct.models.patching import (
    FEED_FORWARD_NAME,
    decoder_layers,
    feed_forward_module,
    hidden_size,
    input_embeddings,
    unwrap,
)

MEMORY_MODULE_NAME = "st_memory"


def is_memory_parameter(name: str) -> bool:
    """Whether the parameter ``name`` (as in ``named_parameters()``, PEFT-wrapped or not) belongs to a memory."""
    return MEMORY_MODULE_NAME in name.split(".")


class MemoryBank(nn.Module):
    """The memory of one :class:`MemoryFFN`: query projection, key and value slots, slot biases and gate.

    Args:
        hidden_size: width ``H`` of the residual stream (the MLP's input and output).
        slots: number of memory slots ``M``.
        key_dim: width ``d_k`` of queries and keys.
        top_k: retrieve from the ``k`` best slots (``1 <= k <= M``), or from all of them (``None``, soft).
        seed: seed of the from-scratch initialisation (independent of the global RNG;
            :class:`~st_instruct.models.forecaster.STForecaster` passes one drawn from it, so a run's seed reaches
            the memory).
    """

    def __init__(self, hidden_size: int, slots: int, key_dim: int, top_k: int | None = None, seed: int = 0) -> None:
        super().__init__()
        for key, value in (("hidden_size", hidden_size), ("slots", slots), ("key_dim", key_dim)):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, found {value}")
        if top_k is not None and not 1 <= top_k <= slots:
            raise ValueError(f"top_k must be between 1 and slots={slots} (or None for soft retrieval over all "
                             f"slots), found {top_k}")
        self.hidden_size, self.slots, self.key_dim, self.top_k = hidden_size, slots, key_dim, top_k
        self.query = nn.Parameter(torch.empty(key_dim, hidden_size))  # W_q
        self.keys = nn.Parameter(torch.empty(slots, key_dim))
        self.values = nn.Parameter(torch.empty(slots, hidden_size))
        self.slot_bias = nn.Parameter(torch.empty(slots))
        self.gate = nn.Parameter(torch.zeros(()))
        self.reset_parameters(seed)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, slots={self.slots}, key_dim={self.key_dim}, top_k={self.top_k}"

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """From-scratch initialisation, deterministic per ``seed``: ``W_q`` ~ N(0, 1/H) (unit-variance queries for
        a normalised input), keys ~ N(0, 1), values ~ N(0, 0.02²) (small, not zero: see the module docstring),
        slot biases ``-½‖k_i‖²``, gate 0."""
        generator = torch.Generator().manual_seed(seed)
        for parameter, std in ((self.query, self.hidden_size ** -0.5), (self.keys, 1.0), (self.values, 0.02)):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
        self.reset_slot_bias()
        self.gate.zero_()

    @torch.no_grad()
    def reset_slot_bias(self) -> None:
        """``b_i = -½‖k_i‖²``: retrieval by nearest key (module docstring)."""
        self.slot_bias.copy_(-0.5 * self.keys.float().pow(2).sum(-1))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Retrieval weights [..., M] of the tokens ``x`` [..., H]: softmax over the top-k scores, 0 elsewhere."""
        scores = (x.to(self.query.dtype) @ self.query.T @ self.keys.T + self.slot_bias) / math.sqrt(self.key_dim)
        scores = scores.float()  # a bf16 softmax over many slots loses the small weights
        if self.top_k is None or self.top_k == self.slots:
            return scores.softmax(-1)
        best, index = scores.topk(self.top_k, dim=-1)
        return torch.zeros_like(scores).scatter(-1, index, best.softmax(-1))

    def retrieve(self, x: torch.Tensor) -> torch.Tensor:
        """``Σ_i weight_i · v_i`` for every token of ``x`` [..., H] -> [..., H], before the gate."""
        return self.weights(x).to(self.values.dtype) @ self.values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The gated retrieval ``g · retrieve(x)`` [..., H] that :class:`MemoryFFN` adds to the MLP's output."""
        return self.gate * self.retrieve(x)


class MemoryFFN(nn.Module):
    """A decoder layer's MLP plus a :class:`MemoryBank`: ``base(x) + st_memory(x)`` for ``x`` [B, S, H] (module
    docstring). ``base`` is the wrapped MLP itself (pretrained weights, PEFT target names); ``st_memory`` holds
    every new parameter. Arguments after ``base`` as in :class:`MemoryBank`."""

    def __init__(self, base: nn.Module, hidden_size: int, slots: int, key_dim: int, top_k: int | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.base = base
        self.st_memory = MemoryBank(hidden_size, slots, key_dim, top_k, seed)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base(x, *args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"MemoryFFN wraps MLPs that return one tensor; {type(self.base).__name__} returned a "
                            f"{type(out).__name__}")
        return out + self.st_memory(x).to(out.dtype)


class LayerIndexError(ValueError, IndexError):
    """A decoder layer index beyond the backbone (a ValueError: bad recipe input, reported as one line)."""


def _layer_indices(layers: Sequence[int], count: int) -> list[int]:
    """``layers`` (negative indices count from the end) as indices ``0 <= i < count``, checked."""
    if not layers:
        raise ValueError("name at least one decoder layer to wrap (e.g. [-1] for the last)")
    bad = [index for index in layers if not -count <= index < count]
    if bad:
        raise LayerIndexError(f"mrffn_layers {list(layers)}: memory layer indices {bad} are out of range: the "
                              f"backbone has {count} decoder layers (after any model_num_layers truncation); use "
                              f"0..{count - 1}, or -{count}..-1 counted from the end")
    indices = [index % count for index in layers]
    if len(set(indices)) != len(indices):
        raise ValueError(f"memory layers {list(layers)} name the same decoder layer twice (as {indices})")
    return indices


def wrap_mlps(backbone: nn.Module, layers: Sequence[int], slots: int, key_dim: int, top_k: int | None,
              seed: int = 0) -> list[MemoryFFN]:
    """Wrap the ``mlp`` of each decoder layer in ``layers`` (negative: from the end) in a :class:`MemoryFFN`, in
    place; returns the wrappers in the order of ``layers``.

    ``backbone`` is a transformers causal LM (a ``PeftModel`` is unwrapped; wrap before applying LoRA). Memory
    parameters take the dtype of the input embeddings and the device of the wrapped MLP; layer ``i`` is initialised
    with seed ``seed + i``. Idempotent: a layer already wrapped with the same sizes keeps its wrapper (and its
    trained memory); one wrapped with other sizes is an error.
    """
    all_layers = decoder_layers(backbone)
    indices = _layer_indices(layers, len(all_layers))
    dtype = input_embeddings(backbone).weight.dtype
    width = hidden_size(unwrap(backbone).config)
    mlps = [feed_forward_module(all_layers[index]) for index in indices]
    for index, mlp in zip(indices, mlps, strict=True):  # check everything before touching anything
        if isinstance(mlp, MemoryFFN):
            bank = mlp.st_memory
            if (bank.slots, bank.key_dim, bank.top_k) != (slots, key_dim, top_k):
                raise ValueError(f"decoder layer {index} already carries a memory with slots={bank.slots}, "
                                 f"key_dim={bank.key_dim}, top_k={bank.top_k}, not slots={slots}, key_dim={key_dim}, "
                                 f"top_k={top_k}; build the backbone again to change it")
    before = len(memory_modules(backbone))
    wrappers, added = [], 0
    for index, mlp in zip(indices, mlps, strict=True):
        if isinstance(mlp, MemoryFFN):
            wrappers.append(mlp)
            continue
        wrapper = MemoryFFN(mlp, width, slots, key_dim, top_k, seed + index)
        wrapper.st_memory.to(device=next(mlp.parameters()).device, dtype=dtype)
        setattr(all_layers[index], FEED_FORWARD_NAME, wrapper)
        wrappers.append(wrapper)
        added += 1
    assert len(memory_modules(backbone)) == before + added, "wrap_mlps touched another number of layers than asked"
    return wrappers


def memory_modules(backbone: nn.Module) -> list[MemoryFFN]:
    """The :class:`MemoryFFN` s of ``backbone`` (plain or PEFT-wrapped), first decoder layer to last."""
    return [mlp for mlp in map(feed_forward_module, decoder_layers(backbone)) if isinstance(mlp, MemoryFFN)]


def memory_layers(backbone: nn.Module) -> dict[int, MemoryFFN]:
    """``{decoder layer index: its MemoryFFN}`` of ``backbone`` (plain or PEFT-wrapped)."""
    return {index: mlp for index, mlp in enumerate(map(feed_forward_module, decoder_layers(backbone)))
            if isinstance(mlp, MemoryFFN)}


def memory_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The memory weights of ``backbone``, keyed ``layers.<decoder layer>.<parameter>`` (the same with or without a
    PEFT wrapper), on the CPU: for the ST modules' safetensors file."""
    return {f"layers.{index}.{key}": value.detach().cpu().contiguous()
            for index, mlp in memory_layers(backbone).items() for key, value in mlp.st_memory.state_dict().items()}


def load_memory_state_dict(backbone: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what :func:`memory_state_dict` returned into ``backbone``, whose memories must sit on the same layers
    with the same sizes (wrap it with the saved settings first)."""
    wrapped = memory_layers(backbone)
    saved = sorted({int(key.split(".")[1]) for key in state})
    if saved != sorted(wrapped):
        raise ValueError(f"the saved memories sit on decoder layers {saved}, the backbone's on {sorted(wrapped)}; "
                         "wrap_mlps the backbone with the settings it was trained with before loading")
    for index, mlp in wrapped.items():
        prefix = f"layers.{index}."
        part = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        try:
            mlp.st_memory.load_state_dict(part, strict=True)
        except RuntimeError as err:
            raise ValueError(f"the saved memory of decoder layer {index} does not fit this backbone's: {err}") from err


@contextmanager
def plain_mlps(backbone: nn.Module) -> Iterator[nn.Module]:
    """Put the original MLPs back for the duration of the block (the memories are restored afterwards): a
    ``save_pretrained`` of a fully fine-tuned backbone then writes the standard checkpoint layout, which a plain
    ``from_pretrained`` loads; save the memories with :func:`memory_state_dict`."""
    wrapped = memory_layers(backbone)
    layers = decoder_layers(backbone)
    for index, mlp in wrapped.items():
        setattr(layers[index], FEED_FORWARD_NAME, mlp.base)
    try:
        yield backbone
    finally:
        for index, mlp in wrapped.items():
            setattr(layers[index], FEED_FORWARD_NAME, mlp)


def kmeans(x: torch.Tensor, k: int, iters: int = 50, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means of the rows of ``x`` [n, d] with k-means++ seeding -> centroids [k, d] (dtype of ``x``).

    Deterministic per ``seed`` (its own generator; computed in float64 on the CPU). Stops early once no row
    changes cluster. A cluster that runs empty takes the row farthest from its centroid. Fewer distinct rows than
    ``k`` give repeated centroids.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans needs a 2-D tensor [n, d], found shape {tuple(x.shape)}")
    n = x.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, found {k}")
    if n < k:
        raise ValueError(f"kmeans cannot find {k} centroids in {n} rows: pass at least k rows (more history "
                         "windows) or fewer memory slots")
    data = x.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(data).all()):
        raise ValueError("kmeans input holds NaN or inf")
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = (data - data[chosen[0]]).pow(2).sum(-1)
    for _ in range(1, k):
        if float(nearest.sum()) > 0:
            index = int(torch.multinomial(nearest, 1, generator=generator))
        else:  # every row equals a chosen centroid
            index = int(torch.randint(n, (1,), generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, (data - data[index]).pow(2).sum(-1))
    centroids = data[chosen].clone()
    assignment = None
    for _ in range(iters):
        distances = torch.cdist(data, centroids)
        new = distances.argmin(-1)
        if assignment is not None and torch.equal(new, assignment):
            break
        assignment = new
        counts = torch.bincount(assignment, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, data)
        centroids = sums / counts.clamp(min=1)[:, None].to(data.dtype)
        for empty in (counts == 0).nonzero().flatten().tolist():
            far = int(distances.gather(1, assignment[:, None]).squeeze(1).argmax())
            centroids[empty] = data[far]
            distances[far] = 0  # not picked again for the next empty cluster
    return centroids.to(x.dtype)


@torch.no_grad()
def init_memory_from_patterns(module: MemoryFFN, patterns: torch.Tensor, iters: int = 50,
                              seed: int = 0) -> torch.Tensor:
    """Initialise the memory of ``module`` from "key historical patterns": the ``M`` k-means centroids ``c_i`` of
    ``patterns`` [n, H] (n >= M) become the value slots, their queries ``W_q · c_i`` the key slots, and the slot
    biases ``-½‖k_i‖²``, so each centroid retrieves its own slot and a pattern the slot of the nearest key. The
    gate is left as it is (0 on a fresh wrapper), so the model's output does not change. Returns the centroids.

    ``patterns`` are hidden-size vectors of encoded training history windows: the ST encoder + projector outputs
    (what the LLM reads at ``<st_his>``), or, closer to what the memory's queries see, the wrapped MLP's inputs at
    the ``<st_his>`` positions (:func:`recorded_inputs`).
    """
    bank = module.st_memory
    if patterns.ndim != 2 or patterns.shape[1] != bank.hidden_size:
        raise ValueError(f"patterns must be [n, {bank.hidden_size}] (hidden-size vectors), found shape "
                         f"{tuple(patterns.shape)}")
    centroids = kmeans(patterns.float(), bank.slots, iters, seed).to(device=bank.values.device)
    bank.values.copy_(centroids.to(bank.values.dtype))
    bank.keys.copy_((centroids @ bank.query.float().T).to(bank.keys.dtype))
    bank.reset_slot_bias()
    return centroids


@contextmanager
def recorded_inputs(module: MemoryFFN) -> Iterator[list[torch.Tensor]]:
    """Collect the inputs [B, S, H] that ``module`` reads (detached) while the block runs forward passes: the
    vectors its queries are computed from. Gather the ``<st_his>`` rows (``regression_head.gather_positions``,
    real nodes only) as patterns for :func:`init_memory_from_patterns`."""
    inputs: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _, args: inputs.append(args[0].detach()))
    try:
        yield inputs
    finally:
        handle.remove()
