"""AirGPT's gated fusion of a static and a dynamic graph encoder (Li, Chen, Xu, Information Fusion 2025).

On each graph a one-layer graph encoder ``H = LeakyReLU(A X W)``; the two are fused by a gate

    Z = sigma(H_st W1 + H_dy W2),   H = (Z * H_st W1 + (1 - Z) * H_dy W2) W_bar,

so each node decides per feature how much to trust the distance graph (:func:`~st_instruct.data.air_graphs.
static_distance_graph`) against the wind graph (:func:`~st_instruct.data.air_graphs.wind_graph`). The adjacency is
row-normalised before use (each node averages what it receives; the paper leaves the scaling open and raw kernel
sums grow with the station count). ``gate`` forces ``Z`` (1: static graph only, 0: wind graph only), for the tests
and ablations. Built with ``dynamic=False`` the encoder has no wind branch at all: ``H = (H_st W1) W_bar``, the
static-graph model of the ablation (no parameter left unused, as DDP requires).

In the forecaster (:class:`~st_instruct.models.forecaster.STForecaster` with ``graph``) it reads the ST encoder's
per-station tokens and its output is *added* to them: a residual, so a station's own history is not averaged away
with its neighbours' (the paper feeds ``H`` on as the ST-token embedding; with row normalisation over 12 stations a
station's own row weight would be about 1/12).
"""

from __future__ import annotations

import torch
from torch import nn


def row_normalise(adjacency: torch.Tensor) -> torch.Tensor:
    """``[..., N, N]`` adjacency divided by its row sums (rows summing to 0 stay 0)."""
    return adjacency / adjacency.sum(dim=-1, keepdim=True).clamp(min=1e-12)


class GatedGraphEncoder(nn.Module):
    """``forward(x [B, N, F], static [N, N] or [B, N, N], dynamic [B, N, N] or None) -> [B, N, out_dim]``; rows of
    an adjacency are receivers (``H_i`` aggregates ``A_ij X_j``)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, negative_slope: float = 0.01,
                 dynamic: bool = True) -> None:
        super().__init__()
        self.static_weight = nn.Linear(in_dim, hidden, bias=False)
        self.w1 = nn.Linear(hidden, hidden)
        self.dynamic_weight = nn.Linear(in_dim, hidden, bias=False) if dynamic else None
        self.w2 = nn.Linear(hidden, hidden) if dynamic else None
        self.out = nn.Linear(hidden, out_dim)
        self.act = nn.LeakyReLU(negative_slope)

    def forward(self, x: torch.Tensor, static: torch.Tensor, dynamic: torch.Tensor | None = None,
                gate: float | None = None) -> torch.Tensor:
        if (dynamic is None) != (self.dynamic_weight is None):
            raise ValueError("GatedGraphEncoder: " + ("the batch has no wind graph, but this encoder fuses one"
                                                      if dynamic is None else
                                                      "this encoder was built without a wind branch (static graph "
                                                      "only), but a wind graph was given"))
        nodes = x.shape[1] if x.ndim == 3 else -1
        if x.ndim != 3 or static.shape[-2:] != (nodes, nodes) or (
                dynamic is not None and dynamic.shape != (x.shape[0], nodes, nodes)):
            raise ValueError(f"GatedGraphEncoder: x must be [B, N, F], static [N, N] or [B, N, N] and dynamic "
                             f"[B, N, N], found {tuple(x.shape)}, {tuple(static.shape)} and "
                             f"{None if dynamic is None else tuple(dynamic.shape)}")
        static = static.expand(x.shape[0], -1, -1) if static.ndim == 2 else static
        h_static = self.w1(self.act(row_normalise(static.to(x.dtype)) @ self.static_weight(x)))
        if dynamic is None:
            return self.out(h_static)
        h_dynamic = self.w2(self.act(row_normalise(dynamic.to(x.dtype)) @ self.dynamic_weight(x)))
        z = torch.sigmoid(h_static + h_dynamic) if gate is None else torch.full_like(h_static, float(gate))
        return self.out(z * h_static + (1 - z) * h_dynamic)
