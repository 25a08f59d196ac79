"""Spatio-temporal encoders that turn each node's history into one token for the LLM, and the projector to its width.

Three encoders, each ending in the same time and space context (:class:`TimeSpaceEmbedding`):

- :class:`PatchEmbeddingEncoder` (ST-LLM: Liu et al., "Spatial-Temporal Large Language Model for Traffic
  Prediction", MDM 2024): one linear "patch" embedding of a node's whole history.
- :class:`DilatedTCNEncoder` (UrbanGPT: Li et al., "UrbanGPT: Spatio-Temporal Large Language Models", KDD 2024):
  gated dilated temporal convolutions over a node's history.
- :class:`GridPatchEncoder` (UniST: Yuan et al., KDD 2024): 3-D patches (time x rows x columns) of a grid, for
  grid data (``coordinates: grid``).

Each may end in STID's fusion (Shao et al., "Spatial-Temporal Identity", CIKM 2022): ``mlp_layers`` residual
MLP blocks (:class:`ResidualMLP`) over the concatenated ``[history, time of day, day of week, space]`` vector, so
that the encoder with a linear readout *is* STID (with coordinates in place of STID's node-id table). Without them
the encoder is linear in the history plus additive embeddings, and a linear readout of it cannot model how the
time of day changes a node's dynamics (issue 10: on the synthetic city, 30 epochs of forecast pretraining with 32
Laplacian coordinates reach a test MAE of 35.4 without the blocks, 21.8 with 2 and 21.4 with 3).

All are node-count agnostic: nothing is indexed by node id. Where ST-LLM learns one embedding per node, the
spatial embedding here is a linear map of the node's coordinates (Laplacian eigenvectors, geo or grid position),
so a model trained on 69 zones runs on 207 sensors. :class:`STProjector` maps encoder outputs to the backbone's
hidden size; those vectors replace the word embeddings at the ``<st_his>`` positions.

Batch inputs (from ``STDataCollator``; ``B`` samples, ``L`` history, ``N`` nodes, ``C`` channels, ``K`` coords):
``history`` [B, L, N, C] scaled, ``history_mask`` [B, L, N, C] bool, ``history_tod`` / ``history_dow`` [B, L],
``coords`` [B, N, K], ``node_mask`` [B, N] bool, optionally ``steps_per_day`` [B]. Output [B, N, out_dim], zero on
padded nodes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from st_instruct.configs import STEncoderConfig

DAYS_PER_WEEK = 7


class TimeSpaceEmbedding(nn.Module):
    """Time-of-day, day-of-week (of the last history step) and coordinate embeddings, after ST-LLM (MDM 2024).

    The time of day is looked up in a table of ``steps_per_day`` rows (default 288: 5-minute resolution). When the
    batch says how many steps its data has per day, the step is rescaled to the table's resolution, so 17:00 is the
    same row for hourly taxi flows and 5-minute loop speeds (zero-shot across frequencies); otherwise the raw step
    is used modulo the table size.
    """

    def __init__(self, dim: int, coord_dim: int, steps_per_day: int) -> None:
        super().__init__()
        self.steps_per_day = steps_per_day
        self.time_of_day = nn.Embedding(steps_per_day, dim)
        self.day_of_week = nn.Embedding(DAYS_PER_WEEK, dim)
        self.coord_dim = coord_dim
        # K = 0 ("coordinates: none") has no spatial signal; a constant zero part keeps out_dim fixed
        self.space = nn.Linear(coord_dim, dim) if coord_dim > 0 else None
        self.dim = dim

    def forward(self, history_tod: torch.Tensor, history_dow: torch.Tensor, coords: torch.Tensor,
                num_nodes: int, steps_per_day: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] tod, [B, L] dow, [B, N, K] coords -> [B, N, 3 * dim] (time of day, day of week, space)."""
        if coords.shape[-1] != self.coord_dim:
            raise ValueError(f"coords have {coords.shape[-1]} values per node (shape {tuple(coords.shape)}) but the "
                             f"ST encoder was built for coord_dim={self.coord_dim}; build the data with the same "
                             "coordinates / coordinate_dim as the model was trained on")
        tod = history_tod[:, -1].long()
        if steps_per_day is not None:
            tod = tod * self.steps_per_day // steps_per_day.long().clamp(min=1)
        tod = tod.remainder(self.steps_per_day)
        dow = history_dow[:, -1].long().remainder(DAYS_PER_WEEK)
        batch = tod.shape[0]
        time = torch.cat([self.time_of_day(tod), self.day_of_week(dow)], dim=-1)[:, None].expand(-1, num_nodes, -1)
        if self.space is None:
            space = time.new_zeros(batch, num_nodes, self.dim)
        else:
            space = self.space(coords.to(time.dtype))
        return torch.cat([time, space], dim=-1)


class ResidualMLP(nn.Module):
    """``h + Linear(Dropout(ReLU(Linear(h))))``: the encoder block of STID (Shao et al., CIKM 2022), used by the STID
    baseline and by the encoders' fusion."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.drop(torch.relu(self.fc1(h))))


def fusion_blocks(dim: int, layers: int, dropout: float) -> nn.Sequential:
    """``layers`` :class:`ResidualMLP` blocks of width ``dim`` (0 layers: an empty ``Sequential``, the identity,
    with no parameters)."""
    if layers < 0:
        raise ValueError(f"mlp_layers must be >= 0, found {layers}")
    return nn.Sequential(*[ResidualMLP(dim, dropout) for _ in range(layers)])


def encoder_tail(dim: int, coord_dim: int, steps_per_day: int, mlp_layers: int, mlp_dropout: float
                 ) -> tuple[TimeSpaceEmbedding, int, nn.Sequential]:
    """``(context, out_dim, fusion)`` every encoder ends in: its :class:`TimeSpaceEmbedding`, the width ``4 * dim``
    of its output, and the fusion blocks over it (:func:`fuse`)."""
    return TimeSpaceEmbedding(dim, coord_dim, steps_per_day), 4 * dim, fusion_blocks(4 * dim, mlp_layers, mlp_dropout)


def fuse(fusion: nn.Module, tokens: torch.Tensor, context: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
    """The encoders' last step: ``[tokens, context]`` [B, N, 4 * dim] through the fusion blocks, zero on padded
    nodes."""
    return fusion(torch.cat([tokens, context], dim=-1)) * node_mask[..., None].to(tokens.dtype)


def _check_history(history: torch.Tensor, history_mask: torch.Tensor, length: int, channels: int) -> None:
    if history.ndim != 4 or history.shape[1] != length or history.shape[3] != channels:
        raise ValueError(f"history must be [B, L={length}, N, C={channels}] for this ST encoder, found "
                         f"{tuple(history.shape)}; the data's history length or channels differ from the model's")
    if history_mask.shape != history.shape:
        raise ValueError(f"history_mask {tuple(history_mask.shape)} must have the shape of history "
                         f"{tuple(history.shape)}")


def _masked_inputs(history: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
    """[B, L, N, C] values and mask -> [B, N, L, 2C]: missing values zeroed, the mask fed as extra channels so the
    encoder can tell a true zero from a gap."""
    mask = history_mask.to(history.dtype)
    return torch.cat([history * mask, mask], dim=-1).permute(0, 2, 1, 3)


class PatchEmbeddingEncoder(nn.Module):
    """ST-LLM's spatial-temporal embedding (Liu et al., MDM 2024): one token per node.

    ``Linear(L * 2C -> dim)`` over the node's whole history (values with missing entries zeroed, plus the mask),
    concatenated with :class:`TimeSpaceEmbedding` -> ``out_dim = 4 * dim``. ST-LLM fuses these by concatenation and
    a 1x1 convolution to the LLM width; here the fusion is :class:`STProjector`.
    """

    def __init__(self, history: int, channels: int, coord_dim: int, dim: int = 64, steps_per_day: int = 288,
                 mlp_layers: int = 0, mlp_dropout: float = 0.0) -> None:
        super().__init__()
        self.history, self.channels = history, channels
        self.patch = nn.Linear(history * 2 * channels, dim)
        self.context, self.out_dim, self.fusion = encoder_tail(dim, coord_dim, steps_per_day, mlp_layers, mlp_dropout)

    def forward(self, history: torch.Tensor, history_mask: torch.Tensor, history_tod: torch.Tensor,
                history_dow: torch.Tensor, coords: torch.Tensor, node_mask: torch.Tensor,
                steps_per_day: torch.Tensor | None = None) -> torch.Tensor:
        """Shapes in the module docstring; returns [B, N, 4 * dim]."""
        _check_history(history, history_mask, self.history, self.channels)
        x = _masked_inputs(history.to(self.patch.weight.dtype), history_mask)  # [B, N, L, 2C]
        tokens = self.patch(x.flatten(2))  # [B, N, dim]
        context = self.context(history_tod, history_dow, coords, history.shape[2], steps_per_day)
        return fuse(self.fusion, tokens, context, node_mask)


class GatedDilatedBlock(nn.Module):
    """One gated dilated causal convolution with a residual connection (UrbanGPT, KDD 2024; after WaveNet):
    ``x + W_o * (tanh(W_f *_d x) ⊙ sigmoid(W_g *_d x))`` over time, ``*_d`` a convolution with dilation ``d``."""

    def __init__(self, dim: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.pad = (kernel_size - 1) * dilation  # left padding only: step t never sees later steps
        self.filter_gate = nn.Conv1d(dim, 2 * dim, kernel_size, dilation=dilation)
        self.out = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[M, dim, L] -> [M, dim, L]."""
        filt, gate = self.filter_gate(nn.functional.pad(x, (self.pad, 0))).chunk(2, dim=1)
        return x + self.out(torch.tanh(filt) * torch.sigmoid(gate))


class DilatedTCNEncoder(nn.Module):
    """UrbanGPT's spatio-temporal dependency encoder (Li et al., KDD 2024): gated dilated temporal convolutions.

    Per node: a 1x1 convolution lifts ``2C`` input channels (values with gaps zeroed, plus the mask) to ``dim``;
    ``layers`` :class:`GatedDilatedBlock` s with dilations 1, 2, 4, ... (receptive field
    ``1 + (kernel_size - 1)(2^layers - 1)`` steps) mix the history; the ``[dim, L]`` result is flattened and mapped
    to ``dim`` (UrbanGPT reads the whole encoded sequence, not only its last step). Concatenated with
    :class:`TimeSpaceEmbedding` -> ``out_dim = 4 * dim``.
    """

    def __init__(self, history: int, channels: int, coord_dim: int, dim: int = 64, steps_per_day: int = 288,
                 layers: int = 3, kernel_size: int = 2, mlp_layers: int = 0, mlp_dropout: float = 0.0) -> None:
        super().__init__()
        self.history, self.channels = history, channels
        self.lift = nn.Conv1d(2 * channels, dim, 1)
        self.blocks = nn.ModuleList(GatedDilatedBlock(dim, kernel_size, 2**i) for i in range(layers))
        self.readout = nn.Linear(history * dim, dim)
        self.context, self.out_dim, self.fusion = encoder_tail(dim, coord_dim, steps_per_day, mlp_layers, mlp_dropout)

    def forward(self, history: torch.Tensor, history_mask: torch.Tensor, history_tod: torch.Tensor,
                history_dow: torch.Tensor, coords: torch.Tensor, node_mask: torch.Tensor,
                steps_per_day: torch.Tensor | None = None) -> torch.Tensor:
        """Shapes in the module docstring; returns [B, N, 4 * dim]."""
        _check_history(history, history_mask, self.history, self.channels)
        batch, _, nodes, _ = history.shape
        x = _masked_inputs(history.to(self.lift.weight.dtype), history_mask)  # [B, N, L, 2C]
        x = self.lift(x.reshape(batch * nodes, self.history, -1).transpose(1, 2))  # [B*N, dim, L]
        for block in self.blocks:
            x = block(x)
        tokens = self.readout(x.flatten(1)).reshape(batch, nodes, -1)  # [B, N, dim]
        context = self.context(history_tod, history_dow, coords, nodes, steps_per_day)
        return fuse(self.fusion, tokens, context, node_mask)


# ---------------------------------------------------------------------------------------------- UniST's grid encoder
# UniST (Yuan et al., KDD 2024; tsinghua-fib-lab/UniST src/Embed.py) cuts [T, C, H, W] grid data into patches of
# t steps x p x p cells (its Conv3d with kernel = stride = (t, p, p)) and embeds each as one token. patchify_3d and
# unpatchify_3d are that cut and its inverse; a grid whose sides (or a history whose length) are not multiples of the
# patch is padded -- time at the start, so the latest steps fill the last patch whole; rows and columns at the end --
# and the padding is cropped off again, so the two invert each other on any size (tested on odd ones).


def patchify_3d(x: torch.Tensor, time: int, space: int) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> ``[B, T', H', W', C * time * space * space]`` with ``T' = ceil(T / time)``, ``H' =
    ceil(H / space)``, ``W' = ceil(W / space)``: zero padding at the start of time and the end of rows and columns."""
    batch, channels, steps, height, width = x.shape
    pad_t, pad_h, pad_w = -steps % time, -height % space, -width % space
    x = F.pad(x, (0, pad_w, 0, pad_h, pad_t, 0))
    nt, nh, nw = x.shape[2] // time, x.shape[3] // space, x.shape[4] // space
    x = x.reshape(batch, channels, nt, time, nh, space, nw, space)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(batch, nt, nh, nw, channels * time * space * space)


def unpatchify_3d(patches: torch.Tensor, channels: int, time: int, space: int,
                  size: tuple[int, int, int]) -> torch.Tensor:
    """The inverse of :func:`patchify_3d`: ``[B, T', H', W', C * time * space * space]`` -> ``[B, C, T, H, W]`` of
    the original ``size = (T, H, W)``, the padding cropped."""
    batch, nt, nh, nw, _ = patches.shape
    steps, height, width = size
    x = patches.reshape(batch, nt, nh, nw, channels, time, space, space).permute(0, 4, 1, 5, 2, 6, 3, 7)
    x = x.reshape(batch, channels, nt * time, nh * space, nw * space)
    return x[:, :, nt * time - steps:, :height, :width]


class GridPatchEncoder(nn.Module):
    """UniST's 3-D patch embedding as an ST encoder (``st_encoder: grid_patch``, with ``coordinates: grid``): one
    token per node like the others.

    The batch's cells are placed on their grid by their ``(row, col)`` coordinates ``coords`` [B, N, 2] (any subset
    of a grid of any size; missing cells are zeros with mask 0); every 3-D patch of the values and the mask is
    embedded (:func:`patchify_3d`), a patch's time slices are mixed into one vector, and each cell gets its patch's
    vector plus a learned embedding of its place inside the patch -- then :class:`TimeSpaceEmbedding` and the fusion
    blocks -> ``out_dim = 4 * dim``. The cells of one patch share what it saw of their neighbours (UniST's spatial
    closeness, inside the encoder).
    """

    def __init__(self, history: int, channels: int, coord_dim: int, dim: int = 64, steps_per_day: int = 288,
                 mlp_layers: int = 0, mlp_dropout: float = 0.0, patch_time: int = 2, patch_space: int = 2) -> None:
        super().__init__()
        if coord_dim != 2:
            raise ValueError(f"st_encoder: grid_patch places nodes by their (row, col) grid coordinates, so it needs "
                             f"coordinates: grid (coord_dim 2), found coord_dim={coord_dim}")
        self.history, self.channels = history, channels
        self.patch_time, self.patch_space = patch_time, patch_space
        slices = -(-history // patch_time)
        self.embed = nn.Linear(2 * channels * patch_time * patch_space ** 2, dim)
        self.mix_time = nn.Linear(slices * dim, dim)
        self.place = nn.Embedding(patch_space ** 2, dim)
        self.context, self.out_dim, self.fusion = encoder_tail(dim, coord_dim, steps_per_day, mlp_layers, mlp_dropout)

    def forward(self, history: torch.Tensor, history_mask: torch.Tensor, history_tod: torch.Tensor,
                history_dow: torch.Tensor, coords: torch.Tensor, node_mask: torch.Tensor,
                steps_per_day: torch.Tensor | None = None) -> torch.Tensor:
        _check_history(history, history_mask, self.history, self.channels)
        batch, steps, nodes, _ = history.shape
        cells = coords.round().long() * node_mask[..., None].long()  # padded nodes: cell (0, 0), zeroed below
        if bool((cells < 0).any()):
            raise ValueError("st_encoder: grid_patch reads coords as (row, col) grid cells, found negative ones; use "
                             "coordinates: grid")
        height, width = int(cells[..., 0].max()) + 1, int(cells[..., 1].max()) + 1
        x = _masked_inputs(history.to(self.embed.weight.dtype), history_mask)  # [B, N, L, 2C]
        x = x * node_mask[:, :, None, None].to(x.dtype)
        flat = cells[..., 0] * width + cells[..., 1]  # [B, N]
        canvas = x.new_zeros(batch, height * width, steps, x.shape[-1])
        canvas = canvas.index_put((torch.arange(batch)[:, None].expand(-1, nodes), flat), x, accumulate=True)
        grid = canvas.reshape(batch, height, width, steps, -1).permute(0, 4, 3, 1, 2)  # [B, 2C, L, H, W]
        tokens = self.embed(patchify_3d(grid, self.patch_time, self.patch_space))  # [B, T', H', W', dim]
        tokens = self.mix_time(tokens.permute(0, 2, 3, 1, 4).flatten(3))  # [B, H', W', dim]
        rows, cols = cells[..., 0], cells[..., 1]
        p = self.patch_space
        per_node = tokens[torch.arange(batch)[:, None], rows // p, cols // p]  # [B, N, dim]
        per_node = per_node + self.place((rows % p) * p + cols % p)
        context = self.context(history_tod, history_dow, coords, nodes, steps_per_day)
        return fuse(self.fusion, per_node, context, node_mask)


class STProjector(nn.Module):
    """Map encoder outputs to the backbone's hidden size (UrbanGPT's linear ST->text projector; ``layers=2`` gives
    an MLP with a GELU, as LLaVA-style projectors use): [B, N, in_dim] -> [B, N, hidden_size]."""

    def __init__(self, in_dim: int, hidden_size: int, layers: int = 1) -> None:
        super().__init__()
        if layers == 1:
            self.net: nn.Module = nn.Linear(in_dim, hidden_size)
        elif layers == 2:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
        else:
            raise ValueError(f"projector layers must be 1 (linear) or 2 (MLP), found {layers}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


ENCODERS: dict[str, type[nn.Module]] = {"patch": PatchEmbeddingEncoder, "tcn": DilatedTCNEncoder,
                                        "grid_patch": GridPatchEncoder}
ENCODER_CONFIG_FILE = "encoder_config.json"
# the legacy encoder_config.json (before the recipe's STEncoderConfig was what the encoder reads): its keys -> today's
LEGACY_ENCODER_KEYS = {"kind": "st_encoder", "dim": "st_encoder_dim", "steps_per_day": "st_encoder_steps_per_day",
                       "tcn_layers": "st_encoder_tcn_layers", "tcn_kernel_size": "st_encoder_tcn_kernel_size",
                       "mlp_layers": "st_encoder_mlp_layers", "mlp_dropout": "st_encoder_mlp_dropout"}


@dataclass
class EncoderSpec:
    """An ST encoder as :func:`build_st_encoder` builds it: the recipe's :class:`~st_instruct.configs.STEncoderConfig`
    and the data it reads (``history`` ``L``, ``channels`` ``C``, ``coord_dim`` ``K``). Saved as
    ``encoder_config.json`` beside a pretrained encoder (:mod:`st_instruct.pretraining`), so the forecaster that
    loads it can check it fits its data."""

    encoder: STEncoderConfig
    history: int
    channels: int
    coord_dim: int

    def save(self, directory: str | Path) -> None:
        Path(directory, ENCODER_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> EncoderSpec:
        """Read ``encoder_config.json`` of ``directory`` (today's, or a legacy flat one); ``ValueError`` (one line)
        when missing or not one."""
        path = Path(directory, ENCODER_CONFIG_FILE)
        if not path.is_file():
            raise ValueError(f"{directory} holds no {ENCODER_CONFIG_FILE}: not a folder written by `st-instruct "
                             "pretrain`")
        try:
            values = json.loads(path.read_text())
            if "encoder" not in values:  # legacy: one flat object
                values = {"history": values.pop("history"), "channels": values.pop("channels"),
                          "coord_dim": values.pop("coord_dim"),
                          "encoder": {LEGACY_ENCODER_KEYS[key]: value for key, value in values.items()}}
            return cls(**{**values, "encoder": STEncoderConfig(**values["encoder"])})
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, AttributeError, ValueError) as err:
            raise ValueError(f"{path} is not an ST encoder configuration ({err}); pretrain the encoder again") from err


def build_st_encoder(spec: EncoderSpec) -> nn.Module:
    """The ST encoder ``spec`` describes (random weights): the one builder the forecaster and the pretraining
    model both take their encoder from (torchtune-style composition, docs/design.md §4a)."""
    config = spec.encoder
    kwargs: dict[str, float] = {"dim": config.st_encoder_dim, "steps_per_day": config.st_encoder_steps_per_day,
                                "mlp_layers": config.st_encoder_mlp_layers,
                                "mlp_dropout": config.st_encoder_mlp_dropout}
    if ENCODERS[config.st_encoder] is DilatedTCNEncoder:
        kwargs.update(layers=config.st_encoder_tcn_layers, kernel_size=config.st_encoder_tcn_kernel_size)
    if ENCODERS[config.st_encoder] is GridPatchEncoder:
        kwargs.update(patch_time=config.st_encoder_patch_time, patch_space=config.st_encoder_patch_space)
    return ENCODERS[config.st_encoder](spec.history, spec.channels, spec.coord_dim, **kwargs)


class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al., "Reversible Instance Normalization for Accurate Time-Series
    Forecasting against Distribution Shift", ICLR 2022), per node and channel, with a learnable affine per channel.

    :meth:`normalise` scales each (sample, node, channel) history by the mean and standard deviation of its own
    observed steps (gaps are ignored; a node with no observed step keeps mean 0, std 1) and applies ``gamma``,
    ``beta``; :meth:`denormalise` inverts that on the forecast. Starting from ``gamma = 1``, ``beta = 0``. Inputs are
    already z-scored by the dataset's train statistics, so this removes each window's own level and spread: the
    encoder sees shapes, and the level comes back at the head.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def normalise(self, history: torch.Tensor, history_mask: torch.Tensor
                  ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """[B, L, N, C] history and mask -> (normalised history (gaps 0), (mean, std) each [B, 1, N, C])."""
        mask = history_mask.to(history.dtype)
        count = mask.sum(dim=1, keepdim=True)
        mean = (history * mask).sum(dim=1, keepdim=True) / count.clamp(min=1)
        var = (((history - mean) * mask) ** 2).sum(dim=1, keepdim=True) / count.clamp(min=1)
        std = torch.where(count > 1, (var + self.eps).sqrt(), torch.ones_like(var))
        normalised = ((history - mean) / std * self.gamma + self.beta) * mask
        return normalised, (mean, std)

    def denormalise(self, forecast: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """[B, P, N, C] forecast in normalised units -> the units the history had before :meth:`normalise`."""
        mean, std = stats
        gamma = torch.where(self.gamma.abs() < self.eps, torch.full_like(self.gamma, self.eps), self.gamma)
        return (forecast - self.beta) / gamma * std + mean
