"""A forecaster that explains itself: generate a rationale, append the answer frame, read the head in one more pass.

AirGPT (Li, Chen, Xu, Information Fusion 2025) trains the student LLM to write a staged rationale before its
forecast (:mod:`st_instruct.samples.rationales`: the assistant's answer is ``rationale + "\\n" + <st_start><st_pre>...
<st_end>``). :func:`generate_forecast` does at inference what training teacher-forces:

1. the prompt (the sample's tokens up to its answer) runs through the backbone with the ST embeddings in place and,
   with SE-Attention, the ST tokens rotated (the same contexts as :meth:`STForecaster.forward`: the embedding hook
   only acts on the prompt's length, and the rotation covers the prompt's positions; generated tokens are text and
   never rotated, as in the teacher-forced pass);
2. greedy decoding (key/value cache, left-padded batch) until the model opens the answer frame (``<st_start>``), an
   end-of-turn token, or ``max_new_tokens``;
3. one teacher-forced pass over ``prompt + rationale tokens + the sample's answer frame`` (its ``<st_start>``, one
   ``<st_pre>`` per node, ``<st_end>`` and end of turn) gives the forecast from the head at the ``<st_pre>`` tokens.

``rationales`` forces the text of step 2 (no generation): with the teacher's rationale of a training sample, the
assembled tokens are exactly the sample's and the forecast equals the teacher-forced :meth:`STForecaster.predict`
of it (a test checks it). The tokenizer is an argument: the forecaster does not hold one.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from st_instruct.models.patching import is_vision_language, unwrap
from st_instruct.samples.rationale_samples import RATIONALE_SEPARATOR
from st_instruct.samples.st_tokens import st_token_ids
from st_instruct.samples.tokenize import IGNORE_INDEX, end_of_turn_ids, padding_id


def answer_frame_start(input_ids: list[int], labels: list[int], frame_token: int, sample: str) -> tuple[int, int]:
    """``(answer start, frame start)`` of one tokenised sample: the first labelled token and the first
    ``<st_start>`` at or after it (the answer frame the regression head reads)."""
    labelled = [k for k, label in enumerate(labels) if label != IGNORE_INDEX]
    if not labelled:
        raise ValueError(f"sample {sample!r} has no labelled answer tokens: generate_forecast needs the tokenised "
                         "sample with its answer (build_dataset(config, tokenizer) rows, or their collated batch)")
    start = labelled[0]
    try:
        return start, input_ids.index(frame_token, start)
    except ValueError:
        raise ValueError(f"sample {sample!r} has no <st_start> in its answer: not a forecasting sample") from None


def generate_forecast(model: Any, tokenizer: Any, batch: dict[str, Any], rationales: list[str] | None = None,
                      max_new_tokens: int = 384) -> tuple[list[str], torch.Tensor]:
    """``(texts, predictions)`` for a collated batch (``STDataCollator``): the rationale each sample's forecast rests
    on (generated, or ``rationales`` as given) and the forecasts [B, P, N, C] in original units from the pass over
    prompt + rationale + answer frame (module docstring). Eval mode, no gradients."""
    if model.backbone is None:
        raise ValueError("generate_forecast needs a language model to write the rationale; this forecaster has "
                         "none (the no-LLM control): use predict(batch)")
    if is_vision_language(model.backbone):
        raise ValueError("generate_forecast is implemented for text backbones; a vision-language forecaster "
                         "forecasts in one pass with predict(batch)")
    if model.st_soft_prompt is not None:
        raise ValueError("generate_forecast writes from the backbone's own generate(), which does not read a soft "
                         "prompt's virtual tokens; a prompt-tuned forecaster forecasts in one pass: predict(batch)")
    ids = st_token_ids(tokenizer)
    size = batch["input_ids"].shape[0]
    if rationales is not None and len(rationales) != size:
        raise ValueError(f"rationales has {len(rationales)} texts for a batch of {size} samples")
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    samples = [(batch["input_ids"][b, :lengths[b]].tolist(), batch["labels"][b, :lengths[b]].tolist())
               for b in range(size)]
    starts = [answer_frame_start(tokens, labels, ids.start, f"#{b}") for b, (tokens, labels) in enumerate(samples)]
    prompts = [tokens[:start] for (tokens, _), (start, _) in zip(samples, starts, strict=True)]
    frames = [tokens[frame:] for (tokens, _), (_, frame) in zip(samples, starts, strict=True)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if rationales is None:
                generated = _greedy_rationales(model, tokenizer, ids, batch, prompts, max_new_tokens)
                texts = [tokenizer.decode(tokens, skip_special_tokens=False) for tokens in generated]
            else:
                texts = list(rationales)
                generated = [tokenizer(text + RATIONALE_SEPARATOR, add_special_tokens=False)["input_ids"]
                             for text in texts]
            sequences = [prompt + rationale + frame
                         for prompt, rationale, frame in zip(prompts, generated, frames, strict=True)]
            predictions = model.predict(_with_sequences(batch, sequences, tokenizer, ids))
    finally:
        model.train(was_training)
    return [text.removesuffix(RATIONALE_SEPARATOR).strip() for text in texts], predictions


def _with_sequences(batch: dict[str, Any], sequences: list[list[int]], tokenizer: Any, ids: Any) -> dict[str, Any]:
    """``batch`` with its token ids replaced by ``sequences`` (right-padded) and the ST positions found in them."""
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), padding_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    nodes = batch["his_positions"].shape[1]
    his, pre = torch.zeros((len(sequences), nodes), dtype=torch.long), torch.zeros_like(batch["pre_positions"])
    for b, sequence in enumerate(sequences):
        tokens = torch.as_tensor(sequence, dtype=torch.long)
        input_ids[b, :len(sequence)], attention_mask[b, :len(sequence)] = tokens, 1
        count = int(batch["node_mask"][b].sum())
        for positions, token in ((his, ids.his), (pre, ids.pre)):
            found = (tokens == token).nonzero().squeeze(1)
            if len(found) != count:
                raise ValueError(f"sample #{b}: the generated rationale holds ST tokens ({len(found)} of id {token} "
                                 f"for {count} nodes); generation must stop before the answer frame")
            positions[b, :count] = found
    out = {key: value for key, value in batch.items() if key != "labels"}
    out.update(input_ids=input_ids, attention_mask=attention_mask, his_positions=his, pre_positions=pre)
    return out


def _greedy_rationales(model: Any, tokenizer: Any, ids: Any, batch: dict[str, Any], prompts: list[list[int]],
                       max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation of every prompt (left-padded batch, key/value cache) under the forecaster's ST contexts;
    each sample's new tokens up to (without) the first ``<st_start>`` / end-of-turn token."""
    pad = padding_id(tokenizer)
    width = max(len(prompt) for prompt in prompts)
    device = model.regression_head.out.weight.device
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    offsets = []
    for b, prompt in enumerate(prompts):
        offsets.append(width - len(prompt))
        input_ids[b, offsets[-1]:], attention_mask[b, offsets[-1]:] = torch.as_tensor(prompt), 1
    shift = torch.as_tensor(offsets)[:, None]
    node_mask = batch["node_mask"].bool()
    his = (batch["his_positions"] + shift) * node_mask  # padded nodes keep position 0 (never written)
    pre = torch.zeros_like(his)  # the prompt holds no <st_pre>; the fusion and rotation read his positions only
    inputs = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
    input_ids, attention_mask, his = input_ids.to(device), attention_mask.to(device), his.to(device)
    stops = sorted({ids.start, *end_of_turn_ids(tokenizer, ids)})
    with _prompt_contexts(model, inputs, input_ids, attention_mask, his, pre, node_mask.to(device)):
        out = unwrap(model.backbone).generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=stops, pad_token_id=pad, use_cache=True)
    texts = []
    for row in out[:, width:].tolist():
        stop = next((k for k, token in enumerate(row) if token in stops), len(row))
        texts.append(row[:stop])
    return texts


def _prompt_contexts(model: Any, inputs: dict[str, Any], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     his: torch.Tensor, pre: torch.Tensor, node_mask: torch.Tensor) -> contextlib.ExitStack:
    """The forecaster's ST embeddings and spatial rotation for a prompt-only pass (the contexts of
    :meth:`STForecaster.forward`, the rotation on the ``<st_his>`` tokens only: the prompt holds no ``<st_pre>``)."""
    coords, nodes, _ = model.node_tokens(inputs["history"], inputs["history_mask"], inputs["history_tod"],
                                         inputs["history_dow"], inputs["coords"], node_mask,
                                         inputs.get("steps_per_day"), inputs)
    stack = contextlib.ExitStack()
    stack.enter_context(model.st_inputs(input_ids, attention_mask, his, pre, node_mask, model.st_projector(nodes)))
    stack.enter_context(model.spatial_context(coords, [his], node_mask, input_ids.shape[1]))
    return stack
