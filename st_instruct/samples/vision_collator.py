"""Batch ST instruction samples for a vision-language backbone: rendered window image + text + ST tokens.

ST-VLM (Zhao et al., AAAI 2026) shows the VLM an image of the window's spatial state beside the prompt. The samples
are the same rows as the text path's (:func:`~st_instruct.samples.builder.build_dataset`: same windows, same splits);
the image is rendered here, per batch, from the sample's dataset and ``window_start``
(:class:`~st_instruct.samples.render.WindowImages`), so no decoded image ever sits in an Arrow row. The image becomes
the first part of the first user turn, and the backbone's own processor tokenises the conversation
(``processor.apply_chat_template(..., tokenize=True, return_dict=True)``), expanding the image placeholder into the
family's image tokens and producing ``pixel_values`` (with ``image_grid_thw`` for Qwen2-VL, ``pixel_attention_mask``
for Idefics3). Then:

- ``labels`` cover the assistant answer only: the conversation rendered up to the answer with the generation prompt
  must tokenise to a prefix of the whole (checked), and the answer runs from there to its end-of-turn token
  (the newline after it, and padding, are ``-100``), as in :mod:`st_instruct.samples.tokenize`;
- ``his_positions`` / ``pre_positions`` are found in the *expanded* ids, so they point past the image tokens; each
  sample must carry one of each per node (``node_index``), else a clear error;
- the ST arrays are batched as :class:`~st_instruct.samples.collator.STDataCollator` batches them.

``images=None`` batches the same conversations without an image (a text-only batch for the same VLM: with it the VLM
forecaster equals the text forecaster on its language model; a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from st_instruct.samples.collator import collate_st_arrays
from st_instruct.samples.st_tokens import st_token_ids
from st_instruct.samples.tokenize import IGNORE_INDEX, TokenizationError, end_of_turn_ids

ImageSource = Callable[[str, int], Any]  # (dataset name, window_start) -> PIL image


def with_image(messages: Sequence[dict[str, Any]], image: Any) -> list[dict[str, Any]]:
    """``messages`` in the processors' content-list form, ``image`` (a PIL image, or ``None`` for none) first in
    the first user turn."""
    out, placed = [], image is None
    for message in messages:
        parts = [{"type": "text", "text": message["content"]}]
        if not placed and message["role"] == "user":
            parts.insert(0, {"type": "image", "image": image})
            placed = True
        out.append({"role": message["role"], "content": parts})
    return out


class STVisionCollator:
    """Turn a list of instruction samples (rows of ``build_dataset``; token columns, if any, are ignored) into a
    batch for an :class:`~st_instruct.models.forecaster.STForecaster` on a vision-language backbone.

    Args:
        processor: the backbone's processor (:func:`~st_instruct.models.backbones.get_processor`) whose tokenizer
            holds the ST tokens; it pads on the right.
        images: the image of each sample, ``images(dataset, window_start)``; ``None`` for text-only batches.
        broadcast_channels, window_inputs: as :class:`~st_instruct.samples.collator.STDataCollator`'s.

    Returns the keys of ``STDataCollator`` plus the processor's image inputs.
    """

    def __init__(self, processor: Any, images: ImageSource | None, broadcast_channels: int | None = None,
                 window_inputs: Sequence[Any] = ()) -> None:
        self.processor, self.images, self.broadcast_channels = processor, images, broadcast_channels
        self.window_inputs = tuple(window_inputs)
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "right"
        self.ids = st_token_ids(tokenizer)
        self.end_of_turn = end_of_turn_ids(tokenizer, self.ids)

    def conversations(self, samples: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """The samples' chat messages with their images (content-list form)."""
        return [with_image(sample["messages"], None if self.images is None else
                           self.images(sample["dataset"], int(sample["window_start"]))) for sample in samples]

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        names = [sample.get("sample_id", f"#{b}") for b, sample in enumerate(samples)]
        conversations = self.conversations(samples)
        for name, conversation in zip(names, conversations, strict=True):
            roles = [message["role"] for message in conversation]
            if roles.count("assistant") != 1 or roles[-1] != "assistant":
                raise TokenizationError(f"sample {name!r}: the vision collator labels one assistant answer at the "
                                        f"end of the conversation, found roles {roles}")
        padded = {"padding": True}
        full = self.processor.apply_chat_template(conversations, tokenize=True, return_dict=True,
                                                  return_tensors="pt", processor_kwargs=padded)
        prompts = self.processor.apply_chat_template([c[:-1] for c in conversations], tokenize=True,
                                                     return_dict=True, add_generation_prompt=True,
                                                     return_tensors="pt", processor_kwargs=padded)
        input_ids, attention_mask = full["input_ids"], full["attention_mask"]
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        his, pre = [], []
        for b, name in enumerate(names):
            length, start = int(attention_mask[b].sum()), int(prompts["attention_mask"][b].sum())
            ids = input_ids[b, :length]
            if not torch.equal(ids[:start], prompts["input_ids"][b, :start]):
                raise TokenizationError(f"sample {name!r}: the processor's chat template renders the prompt (with "
                                        "the generation prompt) differently from the same part of the conversation, "
                                        "so the answer cannot be located; use a template whose generation prompt is "
                                        "a prefix of the conversation")
            ends = [k for k in range(start, length) if int(ids[k]) in self.end_of_turn]
            labels[b, start:(ends[0] + 1 if ends else length)] = ids[start:(ends[0] + 1 if ends else length)]
            his.append((ids == self.ids.his).nonzero().squeeze(1).tolist())
            pre.append((ids == self.ids.pre).nonzero().squeeze(1).tolist())
            nodes = len(samples[b]["node_index"]) if "node_index" in samples[b] else len(his[-1])
            if not len(his[-1]) == len(pre[-1]) == nodes:
                raise TokenizationError(f"sample {name!r} has {len(his[-1])} <st_his> and {len(pre[-1])} <st_pre> "
                                        f"tokens after the processor's expansion but {nodes} nodes; the template "
                                        "must write one history and one prediction slot per node")
        batch = {key: value for key, value in full.items() if key not in ("input_ids", "attention_mask")}
        batch.update(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        batch.update(collate_st_arrays(samples, his, pre, self.broadcast_channels, self.window_inputs))
        return batch
