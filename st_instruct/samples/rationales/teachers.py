"""Rationale teachers: a deterministic analytic one, and any local causal LM prompted with a versioned template.

AirGPT (Li, Chen, Xu, Information Fusion 2025) distils a teacher's label-constrained chain of thought (the teacher
sees the history and the true future) into a student LLM. Two teachers here, both writing the five stages of
:mod:`~st_instruct.samples.rationales.stages`:

- :class:`AnalyticTeacher` (``name = "analytic"``): writes the history facts into stages 1-4 by fixed rules and the
  label's conclusion into stage 5; deterministic, instant, always valid. It is the fallback of a build and a
  baseline rationale in its own right. Its factor rules (stage 4) are those usual for particulate matter in Beijing
  (meant for PM2.5 / PM10; applied unchanged to other targets): a rising / falling 6-h trend (beyond 1 unit per
  hour), weak wind (< 1.5 m/s: poor dispersion) / strong wind (>= 3 m/s), wind from the south (SE..SW: regional
  transport) / from the north (WNW..NNE: clean continental air), humid air (>= 70 %: hygroscopic growth) / dry
  air (<= 40 %), rain (>= 0.5 mm: wet deposition) and upwind stations above / below the city (by 20 %). The text is
  kept short (about 320 SmolLM2 tokens for 12 stations, 117 of them the conclusion line: SmolLM2 writes every digit
  as a token) because the student
  learns to generate it on a CPU; units are plain ASCII (``ug/m3``).
- :class:`LLMTeacher`: a local Hugging Face causal LM (by default the offline SmolLM2-135M-Instruct), prompted with
  ``prompts/airgpt_teacher.v<N>.jinja`` (the facts, the context and the true conclusion line, asking for the five
  labelled stages; v1 pre-fills the first heading, v2 (the default, highest) stage 1 and the heading of stage 2,
  because SmolLM2-135M echoed v1's list of headings), greedy decoding in left-padded batches
  with the KV cache. The model loads on the first :meth:`LLMTeacher.generate` (through the ``load`` it is given), so
  a build served from the cache never loads it.

A teacher is any object with ``name``, ``identity`` (for cache keys) and ``generate(facts) -> list[str]``; optional:
``batch_size``, ``tokens_generated``, ``generation_seconds`` and ``cache_content(facts) -> str``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from st_instruct.samples.prompts import load_template
from st_instruct.samples.rationales.facts import CITY_MEAN, WindowFacts
from st_instruct.samples.rationales.stages import STAGE_TITLES, format_rationale, stage_heading
from st_instruct.samples.rationales.validate import format_conclusion

ANALYTIC_VERSION = 1  # bump when the analytic text changes: it is part of the teacher's identity (cache keys)
NORTHERLY = {"WNW", "NW", "NNW", "N", "NNE"}
SOUTHERLY = {"SE", "SSE", "S", "SSW", "SW"}
STAGE5_SHARE = 0.55  # of max_new_tokens in stagewise generation: 176 of 320, the synthesis + the ~117-token conclusion
_OPEN_HEADING = re.compile(r"^### (\d+)\. ", re.MULTILINE)  # the stage headings a pre-filled answer ends with


def fmt(value: float | None, decimals: int = 0) -> str:
    """``value`` rounded to ``decimals`` places, ``"NA"`` when missing."""
    if value is None or not math.isfinite(value):
        return "NA"
    return f"{round(value, decimals) + 0.0:.{decimals}f}"  # + 0.0: no "-0.0"


def conclusion_line(facts: WindowFacts) -> str:
    """The true stage-5 line of ``facts`` (:func:`~st_instruct.samples.rationales.validate.format_conclusion`)."""
    return format_conclusion(facts.conclusion_numbers(), facts.target_channel, facts.horizon_steps, facts.unit)


def factors(facts: WindowFacts) -> tuple[list[str], list[str]]:
    """``(raising, lowering)``: short phrases of the history facts that push the target up / down (rules: module
    docstring)."""
    raising, lowering = [], []
    if math.isfinite(facts.city_trend) and facts.city_trend > 1.0:
        raising.append("rising trend")
    elif math.isfinite(facts.city_trend) and facts.city_trend < -1.0:
        lowering.append("falling trend")
    if facts.wind_speed is not None:
        if facts.wind_speed < 1.5:
            raising.append("weak wind")
        elif facts.wind_speed >= 3.0:
            lowering.append("strong wind")
    if facts.wind_from in SOUTHERLY:
        raising.append("southerly wind")
    elif facts.wind_from in NORTHERLY:
        lowering.append("northerly wind")
    if facts.humidity is not None:
        if facts.humidity >= 70.0:
            raising.append("humid air")
        elif facts.humidity <= 40.0:
            lowering.append("dry air")
    if facts.rain is not None and facts.rain >= 0.5:
        lowering.append("rain")
    if math.isfinite(facts.upwind_last) and math.isfinite(facts.city_last) and facts.city_last > 0:
        if facts.upwind_last > 1.2 * facts.city_last:
            raising.append("higher upwind")
        elif facts.upwind_last < 0.8 * facts.city_last:
            lowering.append("cleaner upwind")
    return raising, lowering


def _hour(hour: int | None) -> str:
    return "NA" if hour is None else f"{hour}h"


class AnalyticTeacher:
    """Deterministic teacher: the history facts in stages 1-4, the label's conclusion in stage 5 (module docstring).
    """

    name = "analytic"
    batch_size = 256

    @property
    def identity(self) -> str:
        return f"analytic@{ANALYTIC_VERSION}"

    def cache_content(self, facts: WindowFacts) -> str:
        return facts.content()

    def stages(self, facts: WindowFacts) -> list[str]:
        """The five stage bodies of one window."""
        n = len(facts.station_names)
        where = f"{facts.city} " if facts.city else ""
        problem = (f"{facts.target_channel} at {n} {where}station{'s' if n > 1 else ''}, next {facts.horizon_steps} h "
                   f"from {facts.target_start}.")

        weather = []
        if facts.wind_from is not None:
            weather.append("calm wind" if facts.wind_from == "calm"
                           else f"wind {facts.wind_from} {fmt(facts.wind_speed, 1)} m/s")
        if facts.humidity is not None:
            weather.append(f"humidity {fmt(facts.humidity)}%")
        if facts.rain is not None:
            weather.append("no rain" if facts.rain < 0.05 else f"rain {fmt(facts.rain, 1)} mm")
        if facts.temperature is not None:
            weather.append(f"{fmt(facts.temperature)} degC")
        trend = facts.city_trend
        moved = "NA" if not math.isfinite(trend) else f"{'+' if trend >= 0 else '-'}{fmt(abs(trend), 1)}/h"
        pattern = f"Peak {_hour(facts.city_peak_hour)}, low {_hour(facts.city_trough_hour)}, 6-h trend {moved}."
        extrapolation = (", ".join(weather) + ". " if weather else "") + pattern
        extrapolation = extrapolation[0].upper() + extrapolation[1:]

        key = [f"City now {fmt(facts.city_last)}, mean {fmt(facts.city_mean)}, range "
               f"{fmt(facts.city_min)}-{fmt(facts.city_max)}"]
        observed = [s for s in facts.stations if math.isfinite(s.last)]
        if len(observed) > 1:
            high = max(observed, key=lambda s: s.last)
            low = min(observed, key=lambda s: s.last)
            key.append(f"high {high.name} {fmt(high.last)}, low {low.name} {fmt(low.last)}")
        if facts.upwind_stations and math.isfinite(facts.upwind_last):
            key.append(f"upwind {fmt(facts.upwind_last)}")

        raising, lowering = factors(facts)
        influence = f"Up: {', '.join(raising) or 'none'}. Down: {', '.join(lowering) or 'none'}."

        truth = facts.conclusion_numbers()
        balance = ("Up factors prevail" if len(raising) > len(lowering) else
                   "Down factors prevail" if len(lowering) > len(raising) else "Factors balance")
        if CITY_MEAN in truth:
            synthesis = f"{balance}; city mean {fmt(facts.city_last)} -> {fmt(truth[CITY_MEAN])}."
        else:
            synthesis = f"{balance}; no station has an observed future value."
        return [problem, extrapolation, "; ".join(key) + ".", influence, f"{synthesis}\n{conclusion_line(facts)}"]

    def generate(self, facts: Sequence[WindowFacts]) -> list[str]:
        return [format_rationale(self.stages(f)) for f in facts]


class LLMTeacher:
    """A causal LM writing the five stages from the facts and the true conclusion (module docstring).

    Args:
        model_name_or_path: ``"smollm2-135m"`` (offline SmolLM2-135M-Instruct), a folder or a hub id (local hub cache
            only when ``HF_HUB_OFFLINE`` is set): the teacher's name, and what ``load`` loads.
        template: the prompt template spec (``prompts/README.md``); ``"airgpt_teacher"`` is its highest version.
        batch_size: windows per ``model.generate`` call.
        max_new_tokens: generation budget per window (the analytic text of 12 stations is about 320 tokens).
        model / tokenizer: the loaded model (tests give tiny ones); the tokenizer needs a chat template.
        load: ``() -> (model, tokenizer)``, called on the first :meth:`generate` when they were not given, so a build
            served from the cache never loads the model (:func:`st_instruct.models.backbones.build_teacher` passes
            one that loads ``model_name_or_path``).

    After :meth:`generate`: ``tokens_generated`` (new tokens up to and including the end-of-turn token, all calls)
    and ``generation_seconds`` (wall time in ``model.generate``, all calls).
    """

    def __init__(self, model_name_or_path: str = "smollm2-135m", template: str = "airgpt_teacher", batch_size: int = 8,
                 max_new_tokens: int = 320, model: Any = None, tokenizer: Any = None, stagewise: bool = True,
                 load: Callable[[], tuple[Any, Any]] | None = None):
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1, found {batch_size} and {max_new_tokens}")
        self.model_name_or_path = model_name_or_path
        self.template = load_template(template)
        self.template_sha256 = hashlib.sha256(self.template.source.encode()).hexdigest()
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.stagewise = stagewise
        self.model, self.tokenizer, self.load = model, tokenizer, load
        self.tokens_generated = 0
        self.generation_seconds = 0.0

    @property
    def name(self) -> str:
        return f"llm:{self.model_name_or_path}"

    @property
    def identity(self) -> str:
        return (f"llm:{self.model_name_or_path}|template={self.template.spec}|sha256={self.template_sha256[:16]}|"
                f"greedy|max_new_tokens={self.max_new_tokens}" + ("|stagewise" if self.stagewise else ""))

    def context(self, facts: WindowFacts) -> dict[str, Any]:
        """The template variables of one window: the facts as display strings (``fmt``: integers, trends and weather
        to one decimal, ``"NA"`` missing), ``stations`` (one dict per station), the ``raising`` / ``lowering``
        factor phrases of :func:`factors`, the five ``stage_headings`` and the true ``conclusion_line``."""
        stations = [{"name": s.name, "last": fmt(s.last), "mean": fmt(s.mean), "min": fmt(s.min), "max": fmt(s.max),
                     "trend": fmt(s.trend, 1), "peak": _hour(s.peak_hour), "trough": _hour(s.trough_hour),
                     "neighbours": fmt(s.neighbour_last), "upwind": s.upwind, "upwind_last": fmt(s.upwind_last)}
                    for s in facts.stations]
        raising, lowering = factors(facts)
        return {
            "dataset": facts.dataset, "city": facts.city, "target_channel": facts.target_channel,
            "unit": facts.unit, "history_steps": facts.history_steps, "horizon_steps": facts.horizon_steps,
            "history_period": facts.history_period, "target_period": facts.target_period,
            "num_stations": len(facts.station_names), "stations": stations,
            "city_last": fmt(facts.city_last), "city_mean": fmt(facts.city_mean), "city_min": fmt(facts.city_min),
            "city_max": fmt(facts.city_max), "city_trend": fmt(facts.city_trend, 1),
            "city_peak": _hour(facts.city_peak_hour), "city_trough": _hour(facts.city_trough_hour),
            "wind_from": facts.wind_from or "", "wind_speed": fmt(facts.wind_speed, 1),
            "humidity": fmt(facts.humidity), "rain": fmt(facts.rain, 1), "temperature": fmt(facts.temperature, 1),
            "upwind_stations": ", ".join(facts.upwind_stations), "upwind_last": fmt(facts.upwind_last),
            "raising": raising, "lowering": lowering,
            "stage_headings": [stage_heading(i + 1) for i in range(len(STAGE_TITLES))],
            "conclusion_line": conclusion_line(facts),
        }

    def prompt(self, facts: WindowFacts) -> list[dict[str, str]]:
        """Chat messages ``[system, user, assistant]`` of one window; the assistant turn is the text generation
        continues (the first stage heading)."""
        return self.template.render(self.context(facts))

    def cache_content(self, facts: WindowFacts) -> str:
        return json.dumps(self.prompt(facts), sort_keys=True)

    def _load(self) -> None:
        if self.model is not None and self.tokenizer is not None:
            return
        if self.load is None:
            raise ValueError(f"the teacher {self.name} was given no model and no way to load one: build it with "
                             "st_instruct.models.backbones.build_teacher, or pass model= and tokenizer=")
        model, tokenizer = self.load()
        self.model = self.model if self.model is not None else model
        self.tokenizer = self.tokenizer if self.tokenizer is not None else tokenizer

    def generate(self, facts: Sequence[WindowFacts]) -> list[str]:
        """One rationale text per window (the pre-filled start plus the continuation, special tokens dropped),
        greedy, in batches of ``batch_size`` left-padded prompts.

        ``stagewise`` (the default): the model writes one stage at a time; each stage's text ends at a blank line or
        a heading (stage 5 only at a heading or the end of turn), then the next heading is appended and generation
        continues, so the five headings are there by construction and the model's text fills them (what it writes
        is still validated). Stage 5 is written in two parts: the synthesis (one line), then the teacher
        appends the conclusion line's header (``Conclusion (mean PM2.5 over the next 24 h, ug/m3):``) and the model
        writes the numbers, which it must copy from its prompt within the tolerance. Stage 5 gets 55 % of
        ``max_new_tokens`` (176 of 320: the conclusion line alone is ~117; a quarter for the synthesis), the stages
        before it share the rest (a pre-filled one gets none). Otherwise one
        continuation of ``max_new_tokens``, the model writing the headings itself."""
        self._load()
        self.model.eval()
        texts: list[str] = []
        for lo in range(0, len(facts), self.batch_size):
            chats, written = [], []
            for f in facts[lo:lo + self.batch_size]:
                messages = self.prompt(f)
                written.append(messages[-1]["content"] + "\n")
                chats.append(self.tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True,
                                                                tokenize=False))
            if not self.stagewise:
                texts += [text + more for text, more in zip(written, self._continue(
                    [c + w for c, w in zip(chats, written, strict=True)], self.max_new_tokens, ()), strict=True)]
                continue
            chunk = facts[lo:lo + self.batch_size]
            numbers = [int(found[-1]) if (found := _OPEN_HEADING.findall(text)) else 1 for text in written]
            stage5 = max(2, round(self.max_new_tokens * STAGE5_SHARE))
            open_stages = max(1, len(STAGE_TITLES) - min(numbers))  # before stage 5
            for stage in range(min(numbers), len(STAGE_TITLES)):
                active = [i for i, number in enumerate(numbers) if number <= stage]
                bodies = self._continue([chats[i] + written[i] for i in active],
                                        max(1, (self.max_new_tokens - stage5) // open_stages), ("\n\n", "\n###"))
                for i, body in zip(active, bodies, strict=True):
                    written[i] += body.strip() + f"\n\n{stage_heading(stage + 1)}\n"
            # stage 5: the synthesis (one paragraph), then the conclusion line's header, whose numbers the model
            # must write (copied from its prompt; validated)
            synthesis = self._continue([c + w for c, w in zip(chats, written, strict=True)], stage5 // 4,
                                       ("\n",))
            written = [w + body.strip() + "\n" + conclusion_line(f).split(":")[0] + ":"
                       for w, body, f in zip(written, synthesis, chunk, strict=True)]
            numbers_text = self._continue([c + w for c, w in zip(chats, written, strict=True)],
                                          stage5 - stage5 // 4, ("\n",))
            texts += [w + body.rstrip() for w, body in zip(written, numbers_text, strict=True)]
        return [text.strip() for text in texts]

    def _continue(self, prompts: list[str], max_new_tokens: int, stops: tuple[str, ...]) -> list[str]:
        """Greedy continuations of ``prompts`` (one batch, left-padded), each cut at the end of turn and at the first
        of ``stops`` (generation stops there too); counts ``tokens_generated`` (up to the end of turn or the stop,
        padding not counted) and ``generation_seconds``."""
        tokenizer = self.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        stop_ids = {tokenizer.eos_token_id}
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
            stop_ids.add(im_end)
        stop_ids.discard(None)
        side, tokenizer.padding_side = tokenizer.padding_side, "left"  # prompts end where generation starts
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        tokenizer.padding_side = side
        extra = {"stop_strings": list(stops), "tokenizer": tokenizer} if stops else {}
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens, use_cache=True,
                                      pad_token_id=pad_id, eos_token_id=sorted(stop_ids), temperature=None,
                                      top_p=None, top_k=None, **extra)
        self.generation_seconds += time.perf_counter() - started
        texts = []
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))
            text = tokenizer.decode(row[:end], skip_special_tokens=True)
            self.tokens_generated += sum(1 for t in row[:end] if t != pad_id or t in stop_ids)
            texts.append(text[:min((text.find(stop) for stop in stops if stop in text), default=len(text))])
        return texts
