"""STID baseline: Shao et al., "Spatial-Temporal Identity: A Simple yet Effective Baseline for Multivariate Time
Series Forecasting", CIKM 2022.

STID shows that a plain MLP matches far heavier ST graph models once every sample carries its *identity*: which
node it is (a learned node embedding) and when it is (learned time-of-day and day-of-week embeddings of the last
history step). Trained here on CPU with a masked MAE and early stopping on the validation split. With
``--no-calendar`` it runs without its time embeddings (node identity only; the report says so); an unknown
calendar never reaches it (windows refuse one).
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from st_instruct.data.windows import STWindows
from st_instruct.models.st_encoders import ResidualMLP


class STIDModel(nn.Module):
    """STID (Shao et al., CIKM 2022): node, time-of-day and day-of-week identity embeddings plus an MLP.

    Per node the ``L x C`` scaled history is flattened and projected to ``embed_dim`` (the paper's 1x1 convolution
    is this per-node linear map), concatenated with the node embedding and, when the data has a calendar, the
    time-of-day and day-of-week embeddings of the last history step, passed through ``num_layers`` residual MLP
    blocks and regressed to ``P x C`` outputs.

    Shapes: ``forward(x [B, N, L*C], tod [B], dow [B]) -> [B, N, P*C]`` (scaled units).
    """

    def __init__(self, num_nodes: int, history: int, horizon: int, channels: int, steps_per_day: int,
                 use_calendar: bool, embed_dim: int = 32, node_dim: int = 32, tod_dim: int = 32, dow_dim: int = 32,
                 num_layers: int = 3, dropout: float = 0.15) -> None:
        super().__init__()
        self.use_calendar = use_calendar
        self.input_proj = nn.Linear(history * channels, embed_dim)
        self.node_emb = nn.Parameter(torch.empty(num_nodes, node_dim))
        nn.init.xavier_uniform_(self.node_emb)
        hidden = embed_dim + node_dim
        if use_calendar:
            self.tod_emb = nn.Parameter(torch.empty(steps_per_day, tod_dim))
            self.dow_emb = nn.Parameter(torch.empty(7, dow_dim))
            nn.init.xavier_uniform_(self.tod_emb)
            nn.init.xavier_uniform_(self.dow_emb)
            hidden += tod_dim + dow_dim
        self.encoder = nn.Sequential(*[ResidualMLP(hidden, dropout) for _ in range(num_layers)])
        self.head = nn.Linear(hidden, horizon * channels)

    def forward(self, x: torch.Tensor, tod: torch.Tensor, dow: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        parts = [self.input_proj(x), self.node_emb.expand(B, N, -1)]
        if self.use_calendar:
            parts.append(self.tod_emb[tod][:, None].expand(B, N, -1))
            parts.append(self.dow_emb[dow][:, None].expand(B, N, -1))
        return self.head(self.encoder(torch.cat(parts, dim=-1)))


def _masked_mae(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (torch.abs(pred - target) * mask).sum() / mask.sum().clamp(min=1.0)


class STIDBaseline:
    """Fit / predict wrapper of :class:`STIDModel` for the baseline harness.

    Training: masked MAE on scaled targets (unobserved targets excluded), Adam with weight decay and a cosine
    learning-rate decay over ``max_epochs``, minibatches of ``batch_size`` windows x all nodes, early stopping on
    the validation masked MAE with ``patience`` epochs and optionally ``max_seconds`` of wall time; the weights of
    the best validation epoch are restored. Without validation windows it trains ``max_epochs`` and keeps the
    last weights. ``history`` records ``{"epoch", "train_loss", "val_loss"}`` per epoch. Deterministic given
    ``seed``.

    Defaults are the paper's architecture (32-dim input, node, time-of-day and day-of-week embeddings, 3 residual
    layers) with a CPU budget: dropout 0 instead of 0.15, because drawing the dropout masks costs half of every
    training step on CPU and did not lower the validation MAE within this budget (nyc-taxi), and 10 epochs of a
    cosine schedule from lr 4e-3, which reach the validation MAE of ~20 constant-lr epochs (nyc-taxi 2019: test
    MAE 20.4 in ~22 s on 2 cores; 15 epochs from 3e-3 give 20.2 in ~33 s).
    """

    name = "stid"
    reads = "train"

    def __init__(self, embed_dim: int = 32, num_layers: int = 3, dropout: float = 0.0, lr: float = 4e-3,
                 weight_decay: float = 1e-4, batch_size: int = 64, max_epochs: int = 10, patience: int = 5,
                 max_seconds: float | None = None, seed: int = 0, progress: bool = True) -> None:
        self.embed_dim = embed_dim
        self.num_layers = num_layers
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.max_seconds = max_seconds
        self.seed = seed
        self.progress = progress
        self.model: STIDModel | None = None
        self.history: list[dict[str, float]] = []
        self.best_epoch: int | None = None

    def is_applicable(self, windows: STWindows) -> bool:
        return True

    @staticmethod
    def _tensors(windows: STWindows, split: str) -> dict[str, torch.Tensor]:
        """All windows of ``split`` as model tensors: x ``[B, N, L*C]``, y / mask ``[B, N, P*C]`` (scaled), tod /
        dow ``[B]`` of the last history step."""
        batch = windows.batch(split)
        B, L, N, C = batch["x"].shape
        y = np.where(batch["y_mask"], windows.scaler.transform(np.nan_to_num(batch["y"])), 0.0)
        return {
            "x": torch.from_numpy(np.ascontiguousarray(batch["x"].transpose(0, 2, 1, 3).reshape(B, N, L * C))),
            "y": torch.from_numpy(y.transpose(0, 2, 1, 3).reshape(B, N, -1).astype(np.float32)),
            "mask": torch.from_numpy(batch["y_mask"].transpose(0, 2, 1, 3).reshape(B, N, -1).astype(np.float32)),
            "tod": torch.from_numpy(batch["x_tod"][:, -1].copy()),
            "dow": torch.from_numpy(batch["x_dow"][:, -1].copy()),
        }

    def _forward_all(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eval-mode forward over all windows in chunks -> ``[B, N, P*C]`` scaled."""
        self.model.eval()
        chunk = 4 * self.batch_size
        with torch.no_grad():
            return torch.cat([self.model(data["x"][i:i + chunk], data["tod"][i:i + chunk], data["dow"][i:i + chunk])
                              for i in range(0, len(data["x"]), chunk)])

    def fit(self, windows: STWindows) -> None:
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        data = windows.data
        self.model = STIDModel(data.num_nodes, windows.history, windows.horizon, data.num_channels,
                               windows.steps_per_day if windows.has_calendar else 1, windows.has_calendar,
                               embed_dim=self.embed_dim,
                               node_dim=self.embed_dim, tod_dim=self.embed_dim, dow_dim=self.embed_dim,
                               num_layers=self.num_layers, dropout=self.dropout)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.max_epochs)
        train = self._tensors(windows, "train")
        val = self._tensors(windows, "validation") if windows.num_windows("validation") else None
        num_train = len(train["x"])
        steps = math.ceil(num_train / self.batch_size)
        self.history, self.best_epoch = [], None
        best_loss, best_state, bad_epochs = math.inf, None, 0
        tic = time.perf_counter()
        bar = tqdm(range(1, self.max_epochs + 1), desc="stid", unit="epoch", disable=not self.progress)
        for epoch in bar:
            self.model.train()
            order = torch.randperm(num_train, generator=generator)
            total = 0.0
            for i in range(steps):
                idx = order[i * self.batch_size:(i + 1) * self.batch_size]
                pred = self.model(train["x"][idx], train["tod"][idx], train["dow"][idx])
                loss = _masked_mae(pred, train["y"][idx], train["mask"][idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
            schedule.step()
            train_loss = total / steps
            val_loss = float(_masked_mae(self._forward_all(val), val["y"], val["mask"])) if val else math.nan
            self.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
            if val is not None:
                if val_loss < best_loss:
                    best_loss, bad_epochs, self.best_epoch = val_loss, 0, epoch
                    best_state = copy.deepcopy(self.model.state_dict())
                else:
                    bad_epochs += 1
                    if bad_epochs >= self.patience:
                        break
            if self.max_seconds is not None and time.perf_counter() - tic > self.max_seconds:
                break
        bar.close()
        if best_state is not None:
            self.model.load_state_dict(best_state)
        else:
            self.best_epoch = len(self.history)

    def predict(self, windows: STWindows, split: str) -> np.ndarray:
        """``[B, P, N, C]`` forecasts for every window of ``split``, original units."""
        if self.model is None:
            raise RuntimeError("stid: call fit(windows) before predict")
        data = self._tensors(windows, split)
        B, N = data["x"].shape[:2]
        scaled = self._forward_all(data).numpy().reshape(B, N, windows.horizon, -1).transpose(0, 2, 1, 3)
        return windows.scaler.inverse_transform(scaled).astype(np.float32)
