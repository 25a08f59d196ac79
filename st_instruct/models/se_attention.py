"""SE-Attention: rotary position embeddings extended with a rotation by the spatial position of a node.

ST-LINK (Jeon, Lee, Kim and Ko, "ST-LINK: Spatially-Aware Large Language Models for Spatio-Temporal Forecasting",
CIKM 2025, arXiv:2509.13753) makes the LLM's attention spatially aware by rotating queries and keys not only by
their sequence position (RoPE) but also by a spatial quantity of their node, so that the attention score between
two ST tokens depends on their spatial offset the way RoPE makes it depend on their temporal one. The paper's exact
formulas are not public; this module is a faithful, fully specified version of that idea:

**Angles.** Every token ``t`` gets per-pair angles ``phi_t = s_g * (c_t @ W)`` where ``c_t`` [K] are the coordinates
of its node (``<st_his>`` and ``<st_pre>`` tokens carry their node's coordinates; text tokens have ``phi = 0``, the
identity), ``W`` [K, n] is a learnable projection onto ``n`` frequency pairs and ``s_g`` a learnable scale per
key/value head ``g`` (initialised to 1). ``W`` starts as a seeded Gaussian with standard deviation ``1 / sqrt(K)``:
for coordinates whose offsets between nodes are O(1) (see :func:`normalize_coords`), the angle differences are O(1)
too, so the spatial term is neither negligible nor aliased at initialisation. Each pair then carries a random
Fourier feature ``cos(w_j . (c_a - c_b))`` of the offset (Rahimi & Recht), a stationary kernel of the offset that
the training sharpens or widens through ``W`` and ``s``.

**Relative.** Angles are linear in the coordinates, so after rotating query ``a`` by ``phi_a`` and key ``b`` by
``phi_b`` in the same plane, their score sees only ``phi_a - phi_b = s_g (c_a - c_b) @ W``: shifting every ST token's
coordinates by the same vector leaves ST-to-ST scores unchanged. Scores between a text token (identity) and an ST
token see that token's angle itself, like an absolute position embedding; centring the coordinates per sample
(:func:`normalize_coords`) makes those translation invariant as well.

**Planes.** Hugging Face RoPE uses the ``rotate_half`` layout: frequency pair ``j`` is the plane of dims
``(j, j + D/2)`` with frequency ``base^(-2j/D)``, decreasing in ``j``. The spatial rotation acts on ``n`` of those
planes, by default the ``n`` lowest-frequency ones (``j = D/2 - n .. D/2 - 1``): over a few hundred tokens their
temporal angles barely move, so they carry little of the backbone's positional information; any list of pair
indices may be given instead. It is applied after the backbone's RoPE; two rotations of the same plane compose
into a rotation by the sum of the angles and commute, so the score of such a plane sees
``omega_j (p_a - p_b) + (phi_a - phi_b)_j``: both offsets. Without RoPE (GPT-2) the spatial rotation is the only
one, on the same planes.

**Heads.** The scale is per key/value head: under grouped-query attention one key head serves several query heads,
and the score only depends on the offset when a query head and its key head rotate by the same angle, so the query
heads of group ``g`` use ``s_g``. Without GQA that is one scale per head.

**Seam** (docs/design.md §4). An attention function registered in ``transformers.AttentionInterface`` as
:data:`ATTN_IMPLEMENTATION`, with sdpa's mask function registered under the same name in ``AttentionMaskInterface``
(without it transformers builds no mask at all for an unknown name: padding is silently attended to, and causality
rests on sdpa's ``is_causal`` fallback alone). It receives queries / keys after the backbone's RoPE and after
the KV-cache update, rotates them and delegates to transformers' sdpa attention. :func:`apply_se_attention`
switches a backbone to it through ``set_attn_implementation`` (GPT-2 dispatches through the same interface in
transformers 5; GPT-Neo does not and is refused).

**Per-token angles.** :func:`spatial_context` computes ``cos`` / ``sin`` for the whole sequence once and, while it
is open, adds them (with the number of positions already in the KV cache) to the keyword arguments of every
forward call of the backbone's body, which hands them on to the attention function. Keyword arguments rather than
an attribute read at call time because gradient checkpointing recomputes each layer in the backward pass, after
the context has closed, from the layer's saved keyword arguments. Outside a context the function is plain sdpa.
Cached decoding passes only the new tokens' queries but every cached key: queries sit at absolute positions
``past .. past + q_len - 1``, keys at ``0 .. kv_len - 1`` (the last ``kv_len`` positions when a sliding-window
cache dropped older ones); positions at or beyond the length given to the context (generated tokens) are text,
the identity. The cache holds keys without the spatial rotation, so each step rotates all keys again.

**Padding.** Angles are indexed by the absolute index in the padded sequence the context was given, the same index
the cache uses, so left and right padding both work; padded tokens are masked out and get ``st_mask`` False.

**Initial strength.** Angles of O(1) are a real perturbation of a pretrained model from the first step: on
SmolLM2-135M (first 4 layers, 10 ST tokens among 64), head scale 1 moved the next-token distributions after the
first ST token by a mean KL of 0.75 nats (65% argmax agreement); scale 0.1 by 0.01 (93%). The scale is learned, so
training can shrink it; ``head_scale`` may be set lower before training for a gentler start.

Usage (``coords`` [B, S, K] per token, e.g. from :func:`token_coords` of :func:`normalize_coords`'d node
coordinates)::

    rotation = build_spatial_rotation(backbone, coord_dim=K)   # owned by the caller, not the backbone
    apply_se_attention(backbone, rotation)                      # once
    with spatial_context(backbone, rotation, coords, st_mask):   # per forward pass, inside the caller's forward
        out = backbone(inputs_embeds=..., attention_mask=...)
    with spatial_context(backbone, rotation, coords, st_mask):   # generation: coords of the prompt
        ids = backbone.generate(inputs_embeds=..., attention_mask=...)

The rotation (:class:`SpatialRotation`) is not a submodule of the backbone: the forecaster owns it (``st_spatial``),
so it is saved with the ST modules and never mistaken for a backbone weight by PEFT.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from st_instruct.models import patching

ATTN_IMPLEMENTATION = "st_se_attention"
STATE_KWARG = "st_spatial_rotation"  # keyword argument that carries a _SpatialCall to the attention function

# backbone (unwrapped) -> attention implementation before apply_se_attention; bodies with an open spatial_context
_PREVIOUS_IMPLEMENTATION: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
_OPEN_CONTEXTS: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[-x2, x1]`` for ``x = [x1, x2]`` split in halves along the last dim (the HF RoPE layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class SpatialRotation(nn.Module):
    """Per-token spatial rotation angles of SE-Attention (ST-LINK, Jeon et al., CIKM 2025); see the module docs.

    ``coord_dim`` K coordinates per node; ``head_dim`` D, ``num_heads`` / ``num_kv_heads`` the backbone's attention
    geometry (:func:`build_spatial_rotation` reads them from a backbone); ``num_pairs`` n rotated frequency pairs,
    the n lowest-frequency ones unless ``pair_indices`` (n distinct indices in ``[0, D/2)``) names them;
    ``learned_scale`` adds a per-key/value-head scale of the angles (initialised to 1); ``rope`` says whether the
    backbone has RoPE (checked against it by :func:`apply_se_attention`; the rotation is the same either way);
    ``seed`` fixes the initial ``W`` (:class:`~st_instruct.models.forecaster.STForecaster` passes one drawn from
    the global generator, so a run's seed reaches it).

    Parameters: ``weight`` W [K, n] and, with ``learned_scale``, ``head_scale`` [num_kv_heads].
    """

    def __init__(self, coord_dim: int, head_dim: int, num_heads: int, num_kv_heads: int, num_pairs: int = 8,
                 learned_scale: bool = True, rope: bool = True, pair_indices: Sequence[int] | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        if coord_dim < 1:
            raise ValueError(f"coord_dim must be >= 1 (SE-Attention needs node coordinates), found {coord_dim}")
        if head_dim < 2 or head_dim % 2:
            raise ValueError(f"head_dim must be even (RoPE rotates pairs of dims), found {head_dim}")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})")
        half = head_dim // 2
        if not 1 <= num_pairs <= half:
            raise ValueError(f"num_pairs must be between 1 and head_dim / 2 = {half} (the RoPE frequency pairs of a "
                             f"head of {head_dim} dims), found {num_pairs}")
        pairs = list(range(half - num_pairs, half)) if pair_indices is None else [int(j) for j in pair_indices]
        if len(pairs) != num_pairs or len(set(pairs)) != num_pairs or not all(0 <= j < half for j in pairs):
            raise ValueError(f"pair_indices must be {num_pairs} distinct indices in [0, {half}), found {pairs}")
        self.coord_dim, self.head_dim, self.num_heads, self.num_kv_heads = coord_dim, head_dim, num_heads, num_kv_heads
        self.num_pairs, self.rope = num_pairs, rope
        self.pair_indices = pairs
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(coord_dim, num_pairs, generator=generator) / math.sqrt(coord_dim))
        self.register_parameter("head_scale", nn.Parameter(torch.ones(num_kv_heads)) if learned_scale else None)
        self.register_buffer("_pairs", torch.tensor(pairs, dtype=torch.long), persistent=False)

    def extra_repr(self) -> str:
        return (f"coord_dim={self.coord_dim}, head_dim={self.head_dim}, heads={self.num_heads}/{self.num_kv_heads}, "
                f"pairs={self.pair_indices}, learned_scale={self.head_scale is not None}, rope={self.rope}")

    def _check_inputs(self, coords: torch.Tensor, st_mask: torch.Tensor) -> None:
        if coords.dim() != 3 or coords.shape[-1] != self.coord_dim:
            raise ValueError(f"coords must be per-token coordinates [B, S, K={self.coord_dim}], found shape "
                             f"{tuple(coords.shape)}; build them with token_coords(node coords [B, N, K], ...)")
        if st_mask.shape != coords.shape[:2]:
            raise ValueError(f"st_mask must be [B, S] = {list(coords.shape[:2])} like coords' first two dims, found "
                             f"shape {tuple(st_mask.shape)}")

    def angles(self, coords: torch.Tensor, st_mask: torch.Tensor) -> torch.Tensor:
        """Per-token coordinates [B, S, K] and ``st_mask`` [B, S] (True at ST tokens) -> angles
        [B, num_kv_heads, S, n], exactly 0 where ``st_mask`` is False (whatever the coordinates hold there)."""
        self._check_inputs(coords, st_mask)
        mask = st_mask.to(device=coords.device, dtype=torch.bool)[..., None]
        # zeroed before the product too: NaN coordinates at text tokens would otherwise reach W's gradient
        coords = torch.where(mask, coords.to(self.weight.dtype), 0.0)
        theta = torch.where(mask, coords @ self.weight, 0.0)[:, None]  # [B, 1, S, n]
        if self.head_scale is None:
            return theta.expand(-1, self.num_kv_heads, -1, -1)
        return theta * self.head_scale[None, :, None, None]

    def cos_sin(self, coords: torch.Tensor, st_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` [B, num_kv_heads, S, D] in the HF RoPE layout: the angle of pair ``j`` at dims ``j`` and
        ``j + D/2``, angle 0 (cos 1, sin 0: the exact identity) on the pairs that are not rotated."""
        theta = self.angles(coords, st_mask)
        half = theta.new_zeros(*theta.shape[:-1], self.head_dim // 2).index_copy(-1, self._pairs, theta)
        full = torch.cat((half, half), dim=-1)
        return full.cos(), full.sin()


def build_spatial_rotation(backbone: nn.Module, coord_dim: int, num_pairs: int = 8, learned_scale: bool = True,
                           pair_indices: Sequence[int] | None = None, seed: int = 0) -> SpatialRotation:
    """A :class:`SpatialRotation` for ``backbone``'s attention geometry (heads, key/value heads, head width, RoPE),
    on the device of its embeddings."""
    heads, kv_heads, head_dim = patching.attention_geometry(backbone)
    rotation = SpatialRotation(coord_dim, head_dim, heads, kv_heads, num_pairs=num_pairs, learned_scale=learned_scale,
                               rope=patching.uses_rope(backbone), pair_indices=pair_indices, seed=seed)
    return rotation.to(patching.input_embeddings(backbone).weight.device)


@dataclass(frozen=True)
class _SpatialCall:
    """What one forward call of the backbone hands to the attention function: ``cos`` / ``sin`` [B, Hkv, S + 1, D]
    (row S is the identity, for every position at or past S) and the number of positions already cached."""

    cos: torch.Tensor
    sin: torch.Tensor
    past_length: int

    def _at(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        index = positions.clamp(max=self.cos.shape[2] - 1)
        return self.cos[:, :, index].to(dtype), self.sin[:, :, index].to(dtype)

    def rotate(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``query`` [B, H, q_len, D] of the new tokens and ``key`` [B, Hkv, kv_len, D] of every cached position
        -> both rotated by their tokens' spatial angles."""
        batch, kv_heads, _, head_dim = self.cos.shape
        if query.shape[0] != batch or key.shape[1] != kv_heads or query.shape[1] % kv_heads or \
                query.shape[-1] != head_dim:
            raise ValueError(f"SE-Attention got queries {tuple(query.shape)} and keys {tuple(key.shape)} "
                             f"([B, heads, tokens, head_dim]) but its angles are for batch {batch}, {kv_heads} "
                             f"key/value heads and head_dim {head_dim}: the coordinates given to spatial_context "
                             "must cover the batch the backbone runs on (no beam search / num_return_sequences)")
        q_len, kv_len = query.shape[2], key.shape[2]
        end = self.past_length + q_len
        device = self.cos.device
        cos_q, sin_q = self._at(torch.arange(self.past_length, end, device=device), query.dtype)
        # a dynamic cache holds positions 0 .. end-1, a sliding-window one the last kv_len of them, a static one
        # kv_len >= end slots of which those past `end` are empty and masked
        cos_k, sin_k = self._at(torch.arange(kv_len, device=device) + max(end - kv_len, 0), key.dtype)
        groups = query.shape[1] // kv_heads
        grouped = query.unflatten(1, (kv_heads, groups))  # query heads of one key/value head share its angles
        query = (grouped * cos_q[:, :, None] + rotate_half(grouped) * sin_q[:, :, None]).flatten(1, 2)
        key = key * cos_k + rotate_half(key) * sin_k
        return query, key


def se_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """The attention function registered as :data:`ATTN_IMPLEMENTATION`: sdpa attention on queries / keys rotated
    by the spatial angles that :func:`spatial_context` passes as ``kwargs[STATE_KWARG]`` (none: plain sdpa)."""
    call = kwargs.pop(STATE_KWARG, None)
    if call is not None:
        query, key = call.rotate(query, key)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _check_fits(backbone: nn.Module, rotation: SpatialRotation) -> None:
    heads, kv_heads, head_dim = patching.attention_geometry(backbone)
    found = (rotation.num_heads, rotation.num_kv_heads, rotation.head_dim, rotation.rope)
    expected = (heads, kv_heads, head_dim, patching.uses_rope(backbone))
    if found != expected:
        raise ValueError(f"the SpatialRotation was built for (heads, kv_heads, head_dim, rope) = {found} but the "
                         f"backbone has {expected}; build it with build_spatial_rotation(backbone, ...)")


def apply_se_attention(backbone: nn.Module, rotation: SpatialRotation) -> int:
    """Switch every attention module of ``backbone`` (plain or PEFT-wrapped) to SE-Attention; returns how many use it.

    Idempotent. Checks that ``rotation`` fits the backbone. Until a :func:`spatial_context` is open the model computes
    exactly what it computed before (sdpa); :func:`disable_se_attention` restores the previous implementation.
    """
    _check_fits(backbone, rotation)
    AttentionInterface.register(ATTN_IMPLEMENTATION, se_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    model = patching.unwrap(backbone)
    current = patching.attention_implementation(model)
    if current != ATTN_IMPLEMENTATION:
        _PREVIOUS_IMPLEMENTATION[model] = current
    count = patching.set_attention_implementation(model, ATTN_IMPLEMENTATION)
    layers = len(patching.decoder_layers(model))
    if count != layers:
        disable_se_attention(model)
        _PREVIOUS_IMPLEMENTATION.pop(model, None)
        raise patching.UnsupportedArchitectureError(
            f"SE-Attention reached {count} of the {layers} attention modules of {type(model).__name__}: this family "
            "does not dispatch its attention through transformers' AttentionInterface")
    return count


def disable_se_attention(backbone: nn.Module) -> None:
    """Give ``backbone`` back the attention implementation it had before :func:`apply_se_attention` (idempotent)."""
    model = patching.unwrap(backbone)
    if patching.attention_implementation(model) == ATTN_IMPLEMENTATION:
        patching.set_attention_implementation(model, _PREVIOUS_IMPLEMENTATION.pop(model, "sdpa"))


def se_attention_enabled(backbone: nn.Module) -> bool:
    """Whether ``backbone`` currently runs SE-Attention."""
    return patching.attention_implementation(backbone) == ATTN_IMPLEMENTATION


@contextmanager
def spatial_context(backbone: nn.Module, rotation: SpatialRotation, coords: torch.Tensor,
                    st_mask: torch.Tensor) -> Iterator[None]:
    """While open, every forward pass of ``backbone`` (and every step of its ``generate``) rotates the queries and
    keys of the tokens of ``coords`` [B, S, K] where ``st_mask`` [B, S] is True; other tokens and positions >= S
    (generated text) are unrotated. ``S`` is the length of the (padded) input the context is for.

    ``cos`` / ``sin`` are computed once on entry, inside autograd when entered inside the caller's forward, so
    ``rotation``'s parameters get gradients. Contexts on one backbone do not nest.
    """
    if not se_attention_enabled(backbone):
        raise RuntimeError(f"SE-Attention is not enabled on this {type(patching.unwrap(backbone)).__name__} (its "
                           f"attention implementation is {patching.attention_implementation(backbone)!r}); call "
                           "apply_se_attention(backbone, rotation) first")
    _check_fits(backbone, rotation)
    body = patching.base_model(backbone)
    if body in _OPEN_CONTEXTS:
        raise RuntimeError("a spatial_context is already open on this backbone; contexts do not nest")
    cos, sin = rotation.cos_sin(coords, st_mask)
    identity = torch.zeros_like(cos[:, :, :1])
    cos, sin = torch.cat((cos, identity + 1), dim=2), torch.cat((sin, identity), dim=2)
    handle = patching.add_forward_kwargs(backbone, lambda past: {STATE_KWARG: _SpatialCall(cos, sin, past)})
    _OPEN_CONTEXTS.add(body)
    try:
        yield
    finally:
        handle.remove()
        _OPEN_CONTEXTS.discard(body)


def token_coords(coords: torch.Tensor, positions: Sequence[torch.Tensor], node_mask: torch.Tensor,
                 seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Node coordinates [B, N, K] spread onto the tokens: each tensor of ``positions`` [B, N] (e.g.
    ``his_positions`` and ``pre_positions``) gives a token per node that carries that node's coordinates; nodes
    where ``node_mask`` [B, N] is False (padding) are skipped. Returns ``(coords [B, seq_len, K], st_mask
    [B, seq_len])``, zero / False at every other token."""
    if coords.dim() != 3 or node_mask.shape != coords.shape[:2]:
        raise ValueError(f"coords must be [B, N, K] and node_mask [B, N] with the same B, N; found "
                         f"{tuple(coords.shape)} and {tuple(node_mask.shape)}")
    batch, _, dim = coords.shape
    out = coords.new_zeros(batch, seq_len, dim)
    st_mask = torch.zeros(batch, seq_len, dtype=torch.bool, device=coords.device)
    batch_index, node_index = node_mask.nonzero(as_tuple=True)
    for pos in positions:
        if pos.shape != node_mask.shape:
            raise ValueError(f"positions must be [B, N] = {list(node_mask.shape)}, found {tuple(pos.shape)}")
        token_index = pos[batch_index, node_index]
        out = out.index_put((batch_index, token_index), coords[batch_index, node_index])
        st_mask[batch_index, token_index] = True
    return out, st_mask


def normalize_coords(coords: torch.Tensor, node_mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Node coordinates [B, N, K] centred on each sample's mean over its real nodes (``node_mask`` [B, N]) and
    divided by their root-mean-square distance from it: offsets between nodes become O(1) whether the coordinates
    are Laplacian eigenvectors (entries ~ 1/sqrt(N)), degrees or grid cells, which is the scale ``W``'s initialisation
    assumes; one scale for all K dims keeps the geometry. Padded nodes become 0; a one-node sample becomes 0."""
    weight = node_mask.to(coords.dtype)[..., None]
    count = weight.sum(1, keepdim=True).clamp(min=1)
    centred = (coords - (coords * weight).sum(1, keepdim=True) / count) * weight
    rms = (centred.pow(2).sum((1, 2), keepdim=True) / count).sqrt()
    return centred / rms.clamp(min=eps)
