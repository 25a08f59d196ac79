"""An ST encoder with a light head for pretraining: a linear readout to the forecast (UrbanGPT) or a linear decoder
back to the history (masked autoencoder: UniST, UrbanMind).

UrbanGPT (Li et al., "UrbanGPT: Spatio-Temporal Large Language Models", KDD 2024) pretrains its ST dependency
encoder on the forecast task before instruction tuning; UniST (Yuan et al., KDD 2024) and UrbanMind (KDD 2025)
pretrain theirs by reconstructing masked ST data. The encoder is built outside (``build_st_encoder``) and passed
in, so the same module is later handed to ``build_st_forecaster(backbone, config, encoder=...)``.

Hidden entries reach the encoder as gaps: their value zeroed **and** their observed flag cleared, exactly as a
missing value does (the encoders read the values with gaps zeroed plus the mask), so no learned mask token is
needed and the encoder learns what it meets downstream: incomplete histories.

Shapes (``B`` windows, ``L`` history, ``P`` horizon, ``N`` nodes, ``C`` channels, ``K`` coordinates): ``history`` /
``history_mask`` [B, L, N, C], ``history_tod`` / ``history_dow`` [B, L], ``coords`` [B, N, K], ``node_mask`` [B, N],
``steps_per_day`` [B].
"""

from __future__ import annotations

import torch
from torch import nn

from st_instruct.tasks.base import masked_mae_loss

HEAD_FILE = {"forecast": "readout.safetensors", "mae": "decoder.safetensors"}


class PretrainModel(nn.Module):
    """``encoder`` (any ST encoder with ``out_dim``) and ``head``: ``Linear(out_dim -> steps * C)`` per node, where
    ``steps`` is the horizon ``P`` (``objective="forecast"``) or the history ``L`` (``"mae"``)."""

    def __init__(self, encoder: nn.Module, objective: str, steps: int, channels: int) -> None:
        super().__init__()
        if objective not in HEAD_FILE:
            raise ValueError(f"objective must be one of {sorted(HEAD_FILE)}, found {objective!r}")
        self.encoder, self.objective, self.steps, self.channels = encoder, objective, steps, channels
        self.head = nn.Linear(encoder.out_dim, steps * channels)

    def forward(self, history: torch.Tensor, history_mask: torch.Tensor, history_tod: torch.Tensor,
                history_dow: torch.Tensor, coords: torch.Tensor, node_mask: torch.Tensor,
                steps_per_day: torch.Tensor | None = None, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """-> [B, steps, N, C] in scaled units. ``hidden`` [B, L, N, C] bool (True = hidden by the mask): those
        entries are zeroed and marked unobserved before encoding."""
        if hidden is not None:
            history = history.masked_fill(hidden, 0.0)
            history_mask = history_mask & ~hidden
        features = self.encoder(history, history_mask, history_tod, history_dow, coords, node_mask, steps_per_day)
        batch, nodes, _ = features.shape
        out = self.head(features).reshape(batch, nodes, self.steps, self.channels)
        return out.permute(0, 2, 1, 3)


def reconstruction_loss(prediction: torch.Tensor, history: torch.Tensor, observed: torch.Tensor,
                        hidden: torch.Tensor) -> torch.Tensor:
    """MAE of the masked autoencoder: over the entries that were hidden and are observed only (all [B, L, N, C]);
    what the encoder could see is not scored (MAE's loss on masked patches)."""
    return masked_mae_loss(prediction, history, hidden & observed)


def forecast_loss(prediction: torch.Tensor, target: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Masked MAE of the forecast readout over the observed target entries (all [B, P, N, C], scaled units)."""
    return masked_mae_loss(prediction, target, target_mask)
