"""AirGPT's gated fusion of a static and a dynamic graph encoder (Li, Chen, Xu, Information Fusion 2025).

On each graph a one-layer graph encoder ``H = LeakyReLU(A X W)``; the two are fused by a gate

    Z = sigma(H_st W1 + H_dy W2),   H = (Z * H_st W1 + (1 - Z) * H_dy W2) W_bar,

so each node decides per feature how much to trust the distance graph (:func:`~st_instruct.data.air_graphs.
static_distance_graph`) against the wind graph (:func:`~st_instruct.data.air_graphs.wind_graph`). The adjacency is
row-normalised before use (each node averages what it receives; the paper leaves the scaling open and raw kernel
sums grow with the station count). ``gate`` forces ``Z`` (1: static graph only, 0: wind graph only), for the tests
and ablations.
"""

from __future__ import annotations

import torch
from torch import nn


def row_normalise(adjacency: torch.Tensor) -> torch.Tensor:
    """``[..., N, N]`` adjacency divided by its row sums (rows summing to 0 stay 0)."""
    return adjacency / adjacency.sum(dim=-1, keepdim=True).clamp(min=1e-12)


class GatedGraphEncoder(nn.Module):
    """``forward(x [B, N, F], static [N, N] or [B, N, N], dynamic [B, N, N]) -> [B, N, out_dim]``."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.static_weight = nn.Linear(in_dim, hidden, bias=False)
        self.dynamic_weight = nn.Linear(in_dim, hidden, bias=False)
        self.w1, self.w2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, out_dim)
        self.act = nn.LeakyReLU(negative_slope)

    def forward(self, x: torch.Tensor, static: torch.Tensor, dynamic: torch.Tensor,
                gate: float | None = None) -> torch.Tensor:
        if x.ndim != 3 or dynamic.shape != (x.shape[0], x.shape[1], x.shape[1]):
            raise ValueError(f"GatedGraphEncoder: x must be [B, N, F] and dynamic [B, N, N], found "
                             f"{tuple(x.shape)} and {tuple(dynamic.shape)}")
        static = static.expand(x.shape[0], -1, -1) if static.ndim == 2 else static
        h_static = self.w1(self.act(row_normalise(static.to(x.dtype)) @ self.static_weight(x)))
        h_dynamic = self.w2(self.act(row_normalise(dynamic.to(x.dtype)) @ self.dynamic_weight(x)))
        z = torch.sigmoid(h_static + h_dynamic) if gate is None else torch.full_like(h_static, float(gate))
        return self.out(z * h_static + (1 - z) * h_dynamic)
