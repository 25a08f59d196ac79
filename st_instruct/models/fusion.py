"""Attention-aware early fusion of the ST tokens with the image and text tokens of a vision-language model.

ST-VLM (Zhao et al., AAAI 2026) fuses its three modalities -- the rendered image of a window, the text, and the
time-series (ST) tokens -- with an attention-aware mechanism in the first layer of the VLM, so every later layer
reads ST tokens that have already looked at the picture. Its code is not public; this is the documented form built
here, in the spirit of Flamingo's gated cross-attention (Alayrac et al., NeurIPS 2022), whose zero-initialised tanh
gate lets a pretrained model start exactly as it was:

    h_q <- h_q + tanh(g) * MHA(LN_q(h_q), LN_kv(h), LN_kv(h))   for every ST token q (each node's <st_his> / <st_pre>)

where ``h`` [B, S, H] is the residual stream entering the language model's first decoder layer (the VLM has placed
the image-patch features in it already), the keys / values are the image-patch and text tokens at or before the
query's own position (causal, so a prompt's ST tokens never read the answer and generation stays valid), padding
excluded, and ``g`` is one learned scalar starting at 0: with the gate closed the model's outputs equal the same model
without fusion (a test checks it). Every other token is left as it was.

The fusion reaches the model through :func:`~st_instruct.models.patching.add_language_model_input_hook` (docs/design.md
§4): a hook on the language model's input, outside every decoder layer, so activation checkpointing recomputes the
layers from the already-fused input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from st_instruct.models import patching


class STFusion(nn.Module):
    """Gated cross-attention from the ST tokens to the image and text tokens (module docstring)."""

    def __init__(self, hidden_size: int, num_heads: int = 4) -> None:
        super().__init__()
        if num_heads < 1 or hidden_size % num_heads:
            raise ValueError(f"fusion_heads must divide the language model's hidden size {hidden_size}, found "
                             f"{num_heads}")
        self.query_norm = nn.LayerNorm(hidden_size)
        self.context_norm = nn.LayerNorm(hidden_size)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, hidden: torch.Tensor, query_positions: torch.Tensor, query_mask: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """``hidden`` [B, S, H], ``query_positions`` / ``query_mask`` [B, Q] (the ST tokens; False on padded nodes),
        ``attention_mask`` [B, S] (1 on real tokens) -> [B, S, H], changed at the real queries' positions only."""
        batch, length, _ = hidden.shape
        queries = torch.gather(hidden, 1, query_positions[..., None].expand(-1, -1, hidden.shape[-1]))
        keys = torch.arange(length, device=hidden.device)
        allowed = (keys[None, None, :] <= query_positions[:, :, None]) & attention_mask.bool()[:, None, :]
        blocked = (~allowed).repeat_interleave(self.attention.num_heads, dim=0)  # [B * heads, Q, S]
        context = self.context_norm(hidden)
        fused, _ = self.attention(self.query_norm(queries), context, context, attn_mask=blocked, need_weights=False)
        delta = torch.tanh(self.gate).to(hidden.dtype) * fused.to(hidden.dtype)
        batch_index, query_index = query_mask.nonzero(as_tuple=True)
        rows = query_positions[batch_index, query_index]
        return hidden.index_put((batch_index, rows), hidden[batch_index, rows] + delta[batch_index, query_index])


@contextlib.contextmanager
def fusion_context(backbone: nn.Module, fusion: STFusion, query_positions: torch.Tensor, query_mask: torch.Tensor,
                   attention_mask: torch.Tensor) -> Iterator[None]:
    """While open, the VLM ``backbone``'s language model reads its input fused by ``fusion`` at the ST tokens
    ``query_positions`` / ``query_mask`` [B, Q] of a batch whose ``attention_mask`` is [B, S]; inputs of another
    length (generation steps after the prompt) pass unchanged."""
    length = attention_mask.shape[1]

    def edit(embeds: torch.Tensor) -> torch.Tensor:
        if embeds.shape[1] != length:
            return embeds
        return fusion(embeds, query_positions, query_mask, attention_mask)

    handle = patching.add_language_model_input_hook(backbone, edit)
    try:
        yield
    finally:
        handle.remove()
