"""Chat messages with ST tokens -> token ids, answer-only labels and the positions of ``<st_his>`` / ``<st_pre>``.

The conversation is rendered once with the tokenizer's chat template and tokenised once (fast tokenizer, batched,
with character offsets). The answer is located in the text, not in the ids:

- every assistant turn's prompt, rendered with ``add_generation_prompt=True``, must be a prefix of the full
  rendering, and no token may straddle the end of that prompt; so the prompt's tokens are exactly the first tokens
  of the conversation, as they will be at inference;
- the tokens overlapping the assistant's text carry labels, plus the token right after it when it is a special
  token (the template's end of turn, such as ``<|im_end|>``), so the model learns to stop; everything else
  (system, user, role headers, the newline after ``<|im_end|>``, padding) is ``-100``.

``his_positions`` / ``pre_positions`` are the indices of the ``<st_his>`` / ``<st_pre>`` tokens in ``input_ids`` in
order: the ST encoder's node embeddings replace the word embeddings at the first, the regression head reads the
hidden states at the second (UrbanGPT, Li et al., KDD 2024). A sample of ``N'`` nodes must carry ``N'`` of each, or
``N'`` ``<st_his>`` and no ``<st_pre>`` (node-as-token, ST-LLM: ``pre_positions`` are then the ``<st_his>`` ones).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from functools import partial
from operator import itemgetter
from typing import Any

from datasets import IterableDataset, IterableDatasetDict

from st_instruct.samples.st_tokens import STTokenIds, st_token_ids

IGNORE_INDEX = -100
# transformers stores "no limit" as int(1e30); any model_max_length this large is not a real context length
_NO_LIMIT = int(1e9)

_start, _end = itemgetter(0), itemgetter(1)

TOKENIZED_COLUMNS = ("input_ids", "labels", "his_positions", "pre_positions")


class TokenizationError(ValueError):
    """A sample cannot be tokenised for training; the message names the sample, the template and what to do."""


def context_length(tokenizer: Any, max_length: int | None = None) -> int | None:
    """The longest sequence allowed: ``max_length`` if given, else the tokenizer's ``model_max_length`` if real."""
    if max_length is not None:
        return int(max_length)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit is not None and limit < _NO_LIMIT else None


def tokenize_messages(
    messages: Sequence[dict[str, Any]],
    tokenizer: Any,
    max_length: int | None = None,
    template_name: str | None = None,
    sample_id: str | None = None,
    num_nodes: int | None = None,
) -> dict[str, list[int]]:
    """Tokenise one chat sample.

    Args:
        messages: ``[{"role", "content"}, ...]`` with at least one assistant turn; every assistant turn is labelled.
        tokenizer: a fast Hugging Face tokenizer with a chat template and the ST tokens (see ``add_st_tokens``).
        max_length: context length of the backbone; default ``tokenizer.model_max_length`` when it is real.
        template_name, sample_id: only for error messages.
        num_nodes: ``N'``; when given, the sample must carry exactly that many ``<st_his>`` and ``<st_pre>``.

    Returns:
        ``input_ids`` [S], ``labels`` [S] (``-100`` except the answer tokens), ``his_positions`` [N'] and
        ``pre_positions`` [N'] (indices into ``input_ids``).
    """
    rows = _tokenize_batch(
        [messages], tokenizer, context_length(tokenizer, max_length), st_token_ids(tokenizer),
        [sample_id], [template_name], None if num_nodes is None else [num_nodes],
    )
    return {key: values[0] for key, values in rows.items()}


def tokenize_dataset(dataset_dict: Any, tokenizer: Any, max_length: int | None = None, num_proc: int | None = None):
    """Add ``input_ids``, ``labels``, ``his_positions``, ``pre_positions`` to every split (or to one dataset).

    Works on ``Dataset``, ``DatasetDict``, ``IterableDataset`` and ``IterableDatasetDict`` (lazily for the last two;
    ``num_proc`` is ignored there). Reads the ``messages`` column, and for error messages and checks ``sample_id``,
    ``template`` and ``node_index`` (its length is ``N'``) when present; every other column is kept unchanged.
    """
    function = partial(
        _tokenize_columns, tokenizer=tokenizer, limit=context_length(tokenizer, max_length),
        ids=st_token_ids(tokenizer),
    )
    if isinstance(dataset_dict, IterableDataset | IterableDatasetDict):
        return dataset_dict.map(function, batched=True)
    return dataset_dict.map(function, batched=True, num_proc=num_proc, desc="tokenising")


def _tokenize_columns(batch: Any, tokenizer: Any, limit: int | None, ids: STTokenIds) -> dict[str, list[list[int]]]:
    if "messages" not in batch:
        raise TokenizationError(f"the dataset has no 'messages' column (columns: {sorted(batch.keys())}); build it "
                                "with st_instruct.samples.builder")
    messages = batch["messages"]
    sample_ids = batch["sample_id"] if "sample_id" in batch else [None] * len(messages)
    templates = batch["template"] if "template" in batch else [None] * len(messages)
    nodes = [len(index) for index in batch["node_index"]] if "node_index" in batch else None
    return _tokenize_batch(messages, tokenizer, limit, ids, sample_ids, templates, nodes)


def _describe(sample_id: Any, index: int, template: Any) -> str:
    name = repr(sample_id) if sample_id is not None else f"#{index} of its batch"
    rendered = f"template {template!r}" if template is not None else "an unnamed template"
    return f"sample {name} rendered with {rendered}"


def _tokenize_batch(
    messages_batch: Sequence[Sequence[dict[str, Any]]],
    tokenizer: Any,
    limit: int | None,
    ids: STTokenIds,
    sample_ids: Sequence[Any],
    templates: Sequence[Any],
    num_nodes: Sequence[int] | None,
) -> dict[str, list[list[int]]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TokenizationError(f"{type(tokenizer).__name__} is not a fast tokenizer; load the backbone's tokenizer "
                                "with AutoTokenizer.from_pretrained(...) (a tokenizer.json) to get one")
    if not getattr(tokenizer, "chat_template", None):
        raise TokenizationError(f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; use "
                                "an instruct backbone's tokenizer or set tokenizer.chat_template (a ChatML template "
                                "works for any tokenizer with <|im_start|>/<|im_end|> tokens)")
    turns: list[list[int]] = []  # per sample, indices of its assistant messages
    prefixes: list[list[dict[str, Any]]] = []
    for b, messages in enumerate(messages_batch):
        answer_at = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        if not answer_at or answer_at[0] == 0:
            raise TokenizationError(f"{_describe(sample_ids[b], b, templates[b])} needs a prompt followed by at "
                                    f"least one assistant answer, found roles {[m['role'] for m in messages]}")
        turns.append(answer_at)
        prefixes.extend(list(messages[:i]) for i in answer_at)
    texts = tokenizer.apply_chat_template([list(m) for m in messages_batch], tokenize=False)
    prompts = iter(tokenizer.apply_chat_template(prefixes, tokenize=False, add_generation_prompt=True))
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    end_of_turn = end_of_turn_ids(tokenizer, ids)

    out: dict[str, list[list[int]]] = {key: [] for key in TOKENIZED_COLUMNS}
    for b, (messages, text, encoding) in enumerate(zip(messages_batch, texts, encodings, strict=True)):
        what = _describe(sample_ids[b], b, templates[b])
        input_ids = encoding.ids
        if limit is not None and len(input_ids) > limit:
            raise TokenizationError(
                f"{what} is {len(input_ids)} tokens, longer than the context length {limit} of the tokenizer/backbone "
                "(max_length); shorten the template, sample fewer nodes (node_sample) or raise max_length")
        offsets = encoding.offsets  # character spans [start, end) in text, sorted
        labels = [IGNORE_INDEX] * len(input_ids)
        for i in turns[b]:
            prompt = next(prompts)
            if not text.startswith(prompt):
                raise TokenizationError(
                    f"{what}: the chat template renders the prompt before assistant turn {i} (add_generation_prompt="
                    "True) differently from the same part of the full conversation, so the answer cannot be located; "
                    f"use a template whose generation prompt is a prefix of the conversation.\nprompt ends "
                    f"{prompt[-80:]!r}\nconversation there {text[max(0, len(prompt) - 80):len(prompt)]!r}")
            first = bisect_right(offsets, len(prompt), key=_end)
            if first < len(offsets) and offsets[first][0] < len(prompt):
                raise TokenizationError(
                    f"{what}: a token straddles the end of the prompt before assistant turn {i}, so the prompt's "
                    "token ids are not a prefix of the conversation's; end the template's generation prompt with a "
                    "newline or a special token")
            content = messages[i]["content"]
            if not isinstance(content, str):
                raise TokenizationError(f"{what}: assistant turn {i} must have text content, found "
                                        f"{type(content).__name__}")
            begin = text.find(content, len(prompt))
            if begin < 0:  # templates such as Llama 3's trim the content
                content = content.strip()
                begin = text.find(content, len(prompt))
            if begin < 0:
                raise TokenizationError(f"{what}: the chat template changes the text of assistant turn {i}, so it "
                                        "cannot be found in the rendered conversation to be labelled")
            first = bisect_right(offsets, begin, key=_end)
            stop = bisect_left(offsets, begin + len(content), key=_start)
            if stop < len(input_ids) and input_ids[stop] in end_of_turn:
                stop += 1
            labels[first:stop] = input_ids[first:stop]
        his, pre = _positions(input_ids, ids.his), _positions(input_ids, ids.pre)
        if his and not pre:  # node-as-token: the head reads each node's forecast at its <st_his>
            pre = list(his)
        if num_nodes is not None and not len(his) == len(pre) == num_nodes[b]:
            raise TokenizationError(
                f"{what} has {len(his)} <st_his> and {len(pre)} <st_pre> tokens but {num_nodes[b]} nodes (N' = "
                "len(node_index)); the template must write one history and one prediction slot per node (or one "
                "<st_his> per node and no <st_pre>: node-as-token)")
        out["input_ids"].append(input_ids)
        out["labels"].append(labels)
        out["his_positions"].append(his)
        out["pre_positions"].append(pre)
    return out


def _positions(input_ids: list[int], token: int) -> list[int]:
    """Indices of ``token`` in ``input_ids``, in order (``list.index`` scans in C)."""
    found: list[int] = []
    try:
        while True:
            found.append(input_ids.index(token, found[-1] + 1 if found else 0))
    except ValueError:
        return found


def padding_id(tokenizer: Any) -> int:
    """The id that pads a batch: the pad token, else the eos token (those positions are masked either way)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(pad)


def end_of_turn_ids(tokenizer: Any, ids: STTokenIds) -> set[int]:
    """Special tokens that may close an assistant turn: every special added token except the ST tokens."""
    special = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    if tokenizer.eos_token_id is not None:
        special.add(tokenizer.eos_token_id)
    return special - {ids.his, ids.pre, ids.start, ids.end}
