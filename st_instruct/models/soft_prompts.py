"""Soft prompts: PromptST's prompt tuning on an LLM forecaster, learned virtual tokens before the prompt.

PromptST (Zhang et al., "PromptST: Prompt-Enhanced Spatio-Temporal Multi-Attribute Prediction", CIKM 2023) trains one
model on every attribute of a multi-attribute dataset, then, for one attribute, tunes only light prompt tokens and a
fresh head on the frozen shared model; its deep prompts ``[depth, 2, N, d]`` are appended along time at the input of
every temporal layer and cut off after it. On a decoder-only LLM the analogue is:

- the input prompt (prompt tuning, Lester et al., EMNLP 2021): ``[T, H]`` learned vectors prepended to the LLM's input
  embeddings (:meth:`SoftPrompt.prepend`: the attention mask extended by ``T`` ones, the labels by ``T`` ignored
  positions); the forecaster cuts the ``T`` virtual positions off the hidden states and logits it returns, so
  everything downstream (the regression head at ``<st_pre>``, the LM loss) reads the original positions;
- deep prompts (``soft_prompt_deep``; VPT-deep, Jia et al., ECCV 2022): at the input of every decoder layer after the
  first, the hidden states at the ``T`` virtual positions are overwritten by that layer's own ``[T, H]`` vectors
  (:meth:`SoftPrompt.deep_prompts`, forward pre-hooks on the decoder layers), so what a layer wrote there is dropped
  and the next reads fresh prompts: ``[layers - 1, T, H]`` more parameters.

Initialisation: N(0, σ²) entries, σ the standard deviation of the backbone's input embedding table, so the virtual
tokens start at the scale of word embeddings (deep prompts alike); drawn from torch's global generator.

Without a backbone (the no-LLM control) there is no sequence to prepend to: the prompt is one learned vector ``[H]``
added to every node's projected features before the head (:class:`NodeSoftPrompt`). It starts at zero, so a
control tuned from a base starts as that base.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from st_instruct.models.patching import decoder_layers, input_embeddings
from st_instruct.samples.tokenize import IGNORE_INDEX

# what prompt tuning trains (freeze plan prompt) and an attribute adapter saves: the soft prompt and the regression
# head's output layer (its "fresh head"), as named in the forecaster's parameters
PROMPT_TUNED_MODULES = ("st_soft_prompt", "regression_head.out")


class SoftPrompt(nn.Module):
    """``prompt`` [T, H] learned virtual tokens and, with ``deep_layers`` > 0, ``deep`` [deep_layers, T, H]: the
    virtual tokens of decoder layers 1 .. deep_layers (module docstring).

    Args:
        width: the backbone's hidden size ``H``.
        tokens: ``T`` virtual tokens.
        deep_layers: the backbone's decoder layers minus one for deep prompts; 0: the input prompt only.
        std: standard deviation of the initial entries.
    """

    def __init__(self, width: int, tokens: int, deep_layers: int = 0, std: float = 0.02) -> None:
        super().__init__()
        if tokens < 1:
            raise ValueError(f"a soft prompt needs at least one virtual token, found {tokens}")
        self.tokens = tokens
        self.prompt = nn.Parameter(torch.randn(tokens, width) * std)
        self.deep = nn.Parameter(torch.randn(deep_layers, tokens, width) * std) if deep_layers else None

    def prepend(self, embeddings: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``embeddings`` [B, S, H], ``attention_mask`` [B, S], ``labels`` [B, S] or None -> the same with the ``T``
        virtual tokens first: [B, T + S, H], [B, T + S] (ones on them), [B, T + S]. The labels of the virtual
        positions and of the first real token are ``IGNORE_INDEX``: a causal LM's loss predicts token ``k + 1`` from
        position ``k``, and without the prompt nothing precedes the first token, so the loss stays the one of the
        sequence without it."""
        batch = embeddings.shape[0]
        prompt = self.prompt.to(embeddings.dtype)[None].expand(batch, -1, -1)
        embeddings = torch.cat([prompt, embeddings], dim=1)
        attention_mask = torch.cat([attention_mask.new_ones(batch, self.tokens), attention_mask], dim=1)
        if labels is not None:
            labels = torch.cat([labels.new_full((batch, self.tokens + 1), IGNORE_INDEX), labels[:, 1:]], dim=1)
        return embeddings, attention_mask, labels

    @contextlib.contextmanager
    def deep_prompts(self, backbone: nn.Module) -> Iterator[None]:
        """The context in which every decoder layer of ``backbone`` after the first reads its own virtual tokens at
        positions ``0 .. T-1`` of its input hidden states (forward pre-hooks, removed on exit); nothing without deep
        prompts. Refuses a backbone whose layer count is not the one the prompts were built for."""
        if self.deep is None:
            yield
            return
        layers = decoder_layers(backbone)
        if len(layers) != self.deep.shape[0] + 1:
            raise ValueError(f"the deep soft prompt holds {self.deep.shape[0]} layers' tokens, for a backbone of "
                             f"{self.deep.shape[0] + 1} decoder layers; this one has {len(layers)}")
        handles = [layer.register_forward_pre_hook(self._overwrite_hook(index), with_kwargs=True)
                   for index, layer in enumerate(list(layers)[1:])]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _overwrite_hook(self, index: int) -> Any:
        """A forward pre-hook writing ``deep[index]`` over the virtual positions of its layer's hidden states (the
        first positional argument, or the ``hidden_states`` keyword); out of place, for autograd."""

        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
            hidden = args[0] if args else kwargs["hidden_states"]
            prompt = self.deep[index].to(hidden.dtype)[None].expand(hidden.shape[0], -1, -1)
            hidden = torch.cat([prompt, hidden[:, self.tokens:]], dim=1)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook


class NodeSoftPrompt(nn.Module):
    """The soft prompt of a forecaster without a backbone (the no-LLM control, module docstring): ``vector`` [H],
    added to every node's projected features; zero at the start."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.vector = nn.Parameter(torch.zeros(width))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` [B, N, H] -> [B, N, H] with the vector added to every node's."""
        return features + self.vector.to(features.dtype)


def build_soft_prompt(backbone: nn.Module | None, width: int, tokens: int, deep: bool) -> nn.Module:
    """The soft prompt of ``tokens`` virtual tokens (with ``deep``: per decoder layer too) for ``backbone``
    (:class:`SoftPrompt`, initialised at the scale of its input embeddings), or for a forecaster without one
    (:class:`NodeSoftPrompt` of ``width``; ``deep`` refused: there are no layers)."""
    if backbone is None:
        if deep:
            raise ValueError("soft_prompt_deep gives each decoder layer its own virtual tokens, but this forecaster "
                             "has no backbone (the no-LLM control); set soft_prompt_deep: false for it")
        return NodeSoftPrompt(width)
    layers = len(decoder_layers(backbone))
    if deep and layers < 2:
        raise ValueError("soft_prompt_deep gives the decoder layers after the first their own virtual tokens, but "
                         "the backbone has one layer; set soft_prompt_deep: false or keep more layers")
    std = float(input_embeddings(backbone).weight.detach().float().std())
    deep_layers = layers - 1 if deep else 0
    return SoftPrompt(width, tokens, deep_layers, std=std)
