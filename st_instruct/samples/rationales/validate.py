"""Checks of a teacher's rationale against its window: the stage-5 conclusion and no future value in stages 1-4.

AirGPT (Li, Chen, Xu, Information Fusion 2025) generates rationales with the label in the teacher's prompt (label-
constrained generation) and keeps only rationales that arrive at the label. The paper states no acceptance rule; ours
(:func:`validate_rationale`) gives each text exactly one verdict, checked in this order:

- ``"empty"``: nothing but whitespace.
- ``"unparsable"``: not five stages (:func:`~st_instruct.samples.rationales.stages.parse_rationale`), or stage 5 has no
  conclusion line (:func:`parse_conclusion` finds nothing).
- ``"conclusion_mismatch"``: for every key of ``facts.conclusion_numbers()`` (each station with an observed future,
  and ``"city mean"``) the conclusion must state a number with ``|stated - true| <= max(absolute, relative * |true|)``
  (:class:`Tolerance`, default 10 ug/m3 or 20 %); a key not stated is a mismatch. Stations the conclusion states
  beyond those (one without an observed future) are ignored. Names match case-insensitively.
- ``"uninformative"`` (checked last): stages 2-4 repeat one another, or none of them quotes a number of the window's
  history facts (``facts.stated_numbers()``) other than the task's sizes (history and horizon length, station
  count): a text that reaches the label without reading the window.
- ``"future_leak"``: stages 1-4 are written as if from the history only, so none may quote a future value. Every
  number written there (digits not glued to a letter, so ``PM2.5`` and ``ug/m3`` are no numbers; signs dropped, as
  "fell 3.2 per hour" writes a negative trend unsigned) is compared, at the precision it is written, with the
  future-derived magnitudes (``facts.future_numbers()``: every label value, each station's and the city's label
  mean / min / max) and the known ones (``facts.known_numbers()``: the history facts, lengths, hours, dates). A number
  written with ``d`` decimals matches ``x`` when ``|written - x| <= 0.5 * 10**-d``. It leaks when it matches a future
  number and no known one.

  The false positives go one way: a number the teacher invents (one in none of the facts) that happens to round to a
  label value is called a leak, and with integers and a 24 x 12 label most invented integers in the label's range
  do; an invented number is no better a rationale, so over-rejecting is the safe side. A real leak of a future value
  that equals a known number at the written precision (a future mean of 85 when the history mean was 85 too) passes,
  since the text cannot be told apart from quoting the history.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from st_instruct.samples.rationales.facts import WindowFacts
from st_instruct.samples.rationales.stages import RationaleParseError, parse_rationale

REJECTION_REASONS = ("empty", "unparsable", "conclusion_mismatch", "future_leak", "uninformative")
_NUMBER_RE = re.compile(r"(?<![A-Za-z0-9_.])\d+(?:\.\d+)?(?![A-Za-z0-9_])")
_CONCLUSION_RE = re.compile(r"^[ \t*_]*conclusion\b[^:\n]*:(?P<items>[^\n]*)$", re.IGNORECASE | re.MULTILINE)
_ITEM_RE = re.compile(r"^(?P<name>.*?\S)\s*[:=]?\s*(?P<value>-?\d+(?:\.\d+)?)\s*(?:[A-Za-z/0-9]*)?$")


@dataclass(frozen=True)
class Tolerance:
    """A stated conclusion number agrees with the truth when ``|stated - true| <= max(absolute, relative * |true|)``
    (``absolute`` in the target channel's unit: 10 ug/m3 for PM2.5)."""

    absolute: float = 10.0
    relative: float = 0.2

    def agrees(self, stated: float, true: float) -> bool:
        return abs(stated - true) <= max(self.absolute, self.relative * abs(true))


def format_conclusion(numbers: Mapping[str, float], target_channel: str, horizon_steps: int, unit: str) -> str:
    """The machine-parsable stage-5 line, numbers rounded to integers:
    ``"Conclusion (mean PM2.5 over the next 24 h, ug/m3): Aotizhongxin 85; Changping 60; city mean 72."``"""
    items = "; ".join(f"{name} {value:.0f}" for name, value in numbers.items())
    return f"Conclusion (mean {target_channel} over the next {horizon_steps} h, {unit}): {items}."


def parse_conclusion(text: str) -> dict[str, float]:
    """``{name: number}`` of the last conclusion line in ``text`` (a whole rationale, a stage body or the line).

    Items are ``"<name> <number>"`` separated by ``;`` (a ``:`` or ``=`` between, or a unit after the number, is
    tolerated); an item without a number is skipped. No conclusion line gives ``{}``.
    """
    lines = list(_CONCLUSION_RE.finditer(text or ""))
    if not lines:
        return {}
    numbers: dict[str, float] = {}
    for item in lines[-1]["items"].split(";"):
        match = _ITEM_RE.match(item.strip().rstrip(".").strip())
        if match:
            numbers[" ".join(match["name"].split())] = float(match["value"])
    return numbers


def written_numbers(text: str) -> list[str]:
    """The unsigned numbers written in ``text`` as written (``"85"``, ``"3.2"``); digits glued to a letter (PM2.5,
    ug/m3, NO2) are not numbers."""
    return _NUMBER_RE.findall(text)


def _matches(written: str, candidates: set[float]) -> bool:
    decimals = len(written.partition(".")[2])
    value, half = float(written), 0.5 * 10.0 ** -decimals + 1e-9
    return any(abs(value - c) <= half for c in candidates)


def leaked_numbers(text: str, facts: WindowFacts) -> list[str]:
    """The numbers of ``text`` that match a future-derived number of ``facts`` and no known one (module docstring)."""
    future, known = facts.future_numbers(), facts.known_numbers()
    return [n for n in written_numbers(text) if _matches(n, future) and not _matches(n, known)]


def conclusion_errors(stated: Mapping[str, float], facts: WindowFacts, tolerance: Tolerance = Tolerance()
                      ) -> list[str]:
    """``["Changping: stated 90, true 60.4", "Dongsi: not stated", ...]``: the keys of ``facts.conclusion_numbers()``
    the stated conclusion misses or gets wrong; ``[]`` when it agrees."""
    by_name = {name.casefold(): value for name, value in stated.items()}
    errors = []
    for name, true in facts.conclusion_numbers().items():
        value = by_name.get(name.casefold())
        if value is None:
            errors.append(f"{name}: not stated")
        elif not (math.isfinite(value) and tolerance.agrees(value, true)):
            errors.append(f"{name}: stated {value:g}, true {true:.1f}")
    return errors


def validate_rationale(text: str, facts: WindowFacts, tolerance: Tolerance = Tolerance()) -> str | None:
    """``None`` when ``text`` is an acceptable rationale of ``facts``, else the first failed check of
    :data:`REJECTION_REASONS` (order and rules: module docstring). Never raises on any string."""
    if not isinstance(text, str) or not text.strip():
        return "empty"
    try:
        stages = parse_rationale(text)
    except RationaleParseError:
        return "unparsable"
    stated = parse_conclusion(stages[-1])
    if not stated:
        return "unparsable"
    if conclusion_errors(stated, facts, tolerance):
        return "conclusion_mismatch"
    if leaked_numbers("\n".join(stages[:-1]), facts):
        return "future_leak"
    if uninformative(stages, facts):
        return "uninformative"
    return None


def uninformative(stages: list[str], facts: WindowFacts) -> bool:
    """Whether stages 2-4 (the reasoning from the history) repeat one another or quote no number of the window's
    history facts (the task's sizes aside): a text that arrives at the label without reading the window teaches the
    student nothing (SmolLM2-135M writes "The weather is a forecast based on historical data." under every heading)."""
    reasoning = [" ".join(body.split()).casefold() for body in stages[1:4]]
    if len(set(reasoning)) < len(reasoning):
        return True
    # the task's own sizes (24 hours, 12 stations) are in every prompt: quoting them reads nothing of the window
    sizes = {float(facts.history_steps), float(facts.horizon_steps), float(len(facts.station_names))}
    stated = {abs(value) for value in facts.stated_numbers()}
    return not any(_matches(number, stated) and not _matches(number, sizes)
                   for number in written_numbers(" ".join(stages[1:4])))
