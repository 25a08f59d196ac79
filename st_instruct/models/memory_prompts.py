"""UniST's memory prompts (Yuan et al., "UniST: A Prompt-Empowered Universal Model for Urban Spatio-Temporal
Prediction", KDD 2024; tsinghua-fib-lab/UniST, ``src/Prompt_network.py``).

UniST keeps two pools of learned memory slots, one spatial and one temporal (its code: 512 each). Features that
express four priors of ST data query them by attention, and what they return is added to the tokens the model
forecasts from (``x_attn[:, -pred:] += token_prompt`` in its ``model.py``):

- spatial closeness: the mean of the node's neighbours over the history window (UniST: a 3x3 convolution);
- spatial hierarchy: the mean over a wider neighbourhood (UniST: 5x5 and larger kernels, i.e. a coarser grid);
- temporal closeness: the latest steps of the node's own history;
- temporal period: the values at the forecast's own times one day and one week earlier (extra history).

Both spatial priors query the spatial pool, both temporal ones the temporal pool (as in UniST, where the scales
share one memory). The four answers are summed and mapped to the ST token's width by a bias-free linear map, and
added to the ST encoder's token of each node, before the projector: the prompt reaches the backbone inside the
node's ``<st_his>`` embedding, the head's skip path, and -- the same modules -- the no-LLM control. A memory of
zeros answers zero, so zeroed memories leave the forecast exactly as without the prompt (tests check it).

The priors come with the batch (``prompt_neighbours`` / ``prompt_region`` [B, L, N, C], ``prompt_period``
[B, 2, P, N, C], scaled like ``history``; :class:`~st_instruct.data.prompt_context.WindowPriors`).
"""

from __future__ import annotations

import torch
from torch import nn

from st_instruct.configs import PromptConfig

PRIOR_KEYS = ("prompt_neighbours", "prompt_region", "prompt_period")


class MemoryPool(nn.Module):
    """UniST's ``Memory``: ``slots`` learned values and keys of width ``dim``; a query ``[..., dim]`` reads the
    values weighted by ``softmax(tanh(W q) . keys)``."""

    def __init__(self, slots: int, dim: int) -> None:
        super().__init__()
        self.values = nn.Parameter(torch.empty(slots, dim))
        self.keys = nn.Parameter(torch.empty(slots, dim))
        self.query = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.values, std=0.02)
        nn.init.trunc_normal_(self.keys, std=0.02)
        nn.init.xavier_uniform_(self.query.weight)
        nn.init.zeros_(self.query.bias)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(torch.tanh(self.query(query)) @ self.keys.T, dim=-1)
        return weights @ self.values


class UniSTPrompt(nn.Module):
    """The memory prompt of every node: ``[B, N, out_dim]`` from the history ``[B, L, N, C]`` and the priors."""

    def __init__(self, history: int, horizon: int, channels: int, out_dim: int, config: PromptConfig) -> None:
        super().__init__()
        dim = config.unist_prompt_dim
        self.closeness_steps = min(config.unist_closeness_steps, history)
        self.neighbour_query = nn.Linear(history * channels, dim)
        self.region_query = nn.Linear(history * channels, dim)
        self.closeness_query = nn.Linear(self.closeness_steps * channels, dim)
        self.period_query = nn.Linear(horizon * channels, dim)
        self.spatial = MemoryPool(config.unist_spatial_slots, dim)
        self.temporal = MemoryPool(config.unist_temporal_slots, dim)
        self.out = nn.Linear(dim, out_dim, bias=False)

    @staticmethod
    def _per_node(values: torch.Tensor) -> torch.Tensor:
        """``[B, T, N, C]`` -> ``[B, N, T * C]``."""
        batch, steps, nodes, channels = values.shape
        return values.permute(0, 2, 1, 3).reshape(batch, nodes, steps * channels)

    def forward(self, history: torch.Tensor, neighbours: torch.Tensor, region: torch.Tensor,
                period: torch.Tensor) -> torch.Tensor:
        dtype = self.out.weight.dtype
        spatial = (self.spatial(self.neighbour_query(self._per_node(neighbours.to(dtype))))
                   + self.spatial(self.region_query(self._per_node(region.to(dtype)))))
        closeness = self.temporal(self.closeness_query(self._per_node(history[:, -self.closeness_steps:].to(dtype))))
        periods = [self.temporal(self.period_query(self._per_node(period[:, k].to(dtype))))
                   for k in range(period.shape[1])]
        return self.out(spatial + closeness + torch.stack(periods).mean(dim=0))
