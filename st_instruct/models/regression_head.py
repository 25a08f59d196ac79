"""The regression head read from the prediction tokens, after UrbanGPT (Li et al., "UrbanGPT: Spatio-Temporal Large
Language Models", KDD 2024).

UrbanGPT does not decode numbers as text: it takes the LLM's last hidden states at a node's ``<ST_HIS>`` and
``<ST_PRE>`` tokens and regresses the forecast,

    Ŷ = W3 · [σ(W1 · H_his), σ(W2 · H_pre)],

so prediction is one teacher-forced forward pass. σ is LeakyReLU, as in UrbanGPT's released code (a plain ReLU can
leave units dead from the start, because the hidden states of a pretrained LLM are large and of either sign).

Optionally the head also reads the ST encoder's per-node features ``F`` directly, through a gated skip path
(issue 10),

    Ŷ = W3 · [σ(W1 · H_his), σ(W2 · H_pre)] + g · W_s · F,

with ``g`` a learnable scalar gate that starts at 0: closed, so a head with the skip path computes exactly the
forecast of one without it until training opens the gate. ``W_s`` is linear: the shortest path from the encoder to
the forecast, which the LLM's path then only has to correct.
"""

from __future__ import annotations

import torch
from torch import nn


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows of ``hidden`` [B, S, H] at ``positions`` [B, N] (token indices) -> [B, N, H]."""
    index = positions.long()[..., None].expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, index)


class RegressionHead(nn.Module):
    """UrbanGPT's head: hidden states at ``<st_his>`` and ``<st_pre>`` -> ``[B, P, N, C]`` forecasts (scaled units).

    Args:
        hidden_size: the backbone's hidden size ``H``.
        horizon: forecast steps ``P``.
        channels: channels ``C`` per step.
        dim: width of ``W1`` and ``W2``'s outputs.
        skip_dim: width ``F`` of the per-node features the gated skip path reads (``skip`` = ``W_s``, ``gate`` =
            ``g``, initialised to 0); ``None`` (default): no skip path.
    """

    def __init__(self, hidden_size: int, horizon: int, channels: int, dim: int = 128,
                 skip_dim: int | None = None) -> None:
        super().__init__()
        self.horizon, self.channels = horizon, channels
        self.his = nn.Linear(hidden_size, dim)  # W1
        self.pre = nn.Linear(hidden_size, dim)  # W2
        self.out = nn.Linear(2 * dim, horizon * channels)  # W3
        self.act = nn.LeakyReLU()
        # created after W1..W3, so with the same seed those start the same with and without the skip path
        self.skip = nn.Linear(skip_dim, horizon * channels) if skip_dim is not None else None  # W_s
        self.gate = nn.Parameter(torch.zeros(())) if skip_dim is not None else None  # g, closed

    def start_from_skip(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start the head as the linear forecast ``weight`` [P * C, F], ``bias`` [P * C] of the skip path alone: the
        skip map set to them, the gate open (1) and ``W3`` zero, so the main path (the LLM's) contributes nothing
        until training moves it (zero-initialised residual branch). ``head_skip_init: readout`` passes the
        readout pretrained with the encoder (:mod:`st_instruct.pretraining`)."""
        if self.skip is None:
            raise ValueError("start_from_skip needs a head with a skip path (skip_dim set)")
        if weight.shape != self.skip.weight.shape or bias.shape != self.skip.bias.shape:
            raise ValueError(f"the skip map is {tuple(self.skip.weight.shape)} (horizon x channels = "
                             f"{self.horizon} x {self.channels}, features {self.skip.in_features}), found weight "
                             f"{tuple(weight.shape)}, bias {tuple(bias.shape)}")
        with torch.no_grad():
            self.skip.weight.copy_(weight)
            self.skip.bias.copy_(bias)
            self.gate.fill_(1.0)
            self.out.weight.zero_()
            self.out.bias.zero_()

    def forward(self, his_hidden: torch.Tensor, pre_hidden: torch.Tensor,
                skip_features: torch.Tensor | None = None) -> torch.Tensor:
        """``his_hidden``, ``pre_hidden`` [B, N, H] (one row per node) and, with the skip path, the per-node
        ``skip_features`` [B, N, F] -> [B, P, N, C]."""
        if (skip_features is None) != (self.skip is None):
            raise ValueError("skip_features must be given exactly when the head has a skip path (skip_dim set); "
                             f"the head has {'one' if self.skip is not None else 'none'}")
        features = torch.cat([self.act(self.his(his_hidden)), self.act(self.pre(pre_hidden))], dim=-1)
        batch, nodes, _ = features.shape
        flat = self.out(features)
        if self.skip is not None:
            flat = flat + self.gate * self.skip(skip_features.to(flat.dtype))
        return flat.reshape(batch, nodes, self.horizon, self.channels).transpose(1, 2)

    def from_hidden_states(self, hidden: torch.Tensor, his_positions: torch.Tensor, pre_positions: torch.Tensor,
                           node_mask: torch.Tensor, skip_features: torch.Tensor | None = None) -> torch.Tensor:
        """Last-layer hidden states ``hidden`` [B, S, H], token positions [B, N], ``node_mask`` [B, N] and, with the
        skip path, ``skip_features`` [B, N, F] -> [B, P, N, C], zero on padded nodes (whose positions are padding
        and point at an arbitrary token)."""
        dtype = self.out.weight.dtype  # a bf16 backbone may feed an fp32 head
        prediction = self(gather_positions(hidden, his_positions).to(dtype),
                          gather_positions(hidden, pre_positions).to(dtype), skip_features)
        return prediction * node_mask[:, None, :, None].to(dtype)
