"""The spatio-temporal special tokens of instruction prompts, after UrbanGPT (Li et al., KDD 2024).

UrbanGPT writes ``<ST_HIS>`` tokens where the ST encoder's history embeddings replace the word embeddings, and
``<ST_PRE>`` tokens in the answer whose last-layer hidden states feed the regression head. Here one
``<st_start><st_his><st_end>`` group stands for the history of one node and one ``<st_start><st_pre><st_end>`` group
for its forecast, so a sample with ``N'`` nodes carries ``N'`` of each.

The tokens are added once as special tokens (never split, never normalised, dropped by
``decode(skip_special_tokens=True)``); their new embedding rows start at the mean of the existing rows, which keeps
them inside the distribution the backbone has seen (Hewitt, "Initializing new word embeddings", 2021).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import AddedToken
from transformers.integrations import is_deepspeed_zero3_enabled

ST_HIS = "<st_his>"
ST_PRE = "<st_pre>"
ST_START = "<st_start>"
ST_END = "<st_end>"
ST_TOKENS = (ST_START, ST_HIS, ST_PRE, ST_END)


@dataclass(frozen=True)
class STTokenIds:
    """Token ids of the ST special tokens in one tokenizer."""

    his: int
    pre: int
    start: int
    end: int


def st_token_ids(tokenizer: Any) -> STTokenIds:
    """The ids of the ST tokens in ``tokenizer``; raises if they were never added (call :func:`add_st_tokens`)."""
    added = tokenizer.get_added_vocab()
    missing = [token for token in ST_TOKENS if token not in added]
    if missing:
        raise ValueError(f"the tokenizer lacks the ST special tokens {missing}; call "
                         "st_instruct.samples.st_tokens.add_st_tokens(tokenizer, model) before tokenising ST prompts")
    return STTokenIds(his=added[ST_HIS], pre=added[ST_PRE], start=added[ST_START], end=added[ST_END])


def add_st_tokens(tokenizer: Any, model: torch.nn.Module | None = None) -> STTokenIds:
    """Add the ST tokens to ``tokenizer`` as special tokens and make room for them in ``model``; idempotent.

    With a model, its input embeddings (and its output embeddings when they are not tied) grow to
    ``len(tokenizer)`` rows when they are smaller; every row created here, and every row of a token newly added to
    a model whose padded vocabulary already had room for it, is set to exactly the mean of the rows before it
    (not transformers' ``mean_resizing``, which samples around the mean). Rows of tokens that already existed are
    left alone, so calling this again on a trained model changes nothing.

    Args:
        tokenizer: a Hugging Face tokenizer; changed in place.
        model: a ``PreTrainedModel`` whose embeddings must cover the tokenizer, or ``None``.

    Returns:
        the ids of the four tokens.
    """
    before = set(tokenizer.get_added_vocab())
    new_tokens = [AddedToken(token, special=True, normalized=False) for token in ST_TOKENS if token not in before]
    if new_tokens:
        tokenizer.add_special_tokens({"extra_special_tokens": new_tokens}, replace_extra_special_tokens=False)
    ids = st_token_ids(tokenizer)
    if model is not None:
        new_ids = [tokenizer.convert_tokens_to_ids(token.content) for token in new_tokens]
        grow_embeddings(model, len(tokenizer), new_ids)
    return ids


def grow_embeddings(model: Any, vocab_size: int, new_ids: list[int]) -> None:
    """Resize ``model`` to ``vocab_size`` rows if smaller and mean-initialise the rows that are new to it.

    Under DeepSpeed ZeRO-3 every process holds only a shard of each weight (its ``shape`` is empty): the row count
    is read from the module (``num_embeddings``) and the weights are gathered for the edit, rank 0's edit scattered
    back. Reading the shard's shape once made every row "new" and the mean of no rows, NaN, the whole embedding."""
    rows = model.get_input_embeddings().num_embeddings
    if rows < vocab_size:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
        fresh = list(range(rows, vocab_size))
    elif new_ids:
        fresh = sorted(new_ids)  # a padded vocabulary already had rows for them, never trained
    else:
        return
    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:  # tied: one Parameter (a shard has no data_ptr)
        weights.append(output.weight)
    gathered = contextlib.nullcontext()
    if is_deepspeed_zero3_enabled():
        import deepspeed  # an optional dependency, present under ZeRO-3

        gathered = deepspeed.zero.GatheredParameters(weights, modifier_rank=0)
    with gathered, torch.no_grad():
        for weight in weights:
            weight[fresh] = weight[: fresh[0]].mean(dim=0, dtype=torch.float32).to(weight.dtype)
