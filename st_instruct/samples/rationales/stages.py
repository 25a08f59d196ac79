"""The five labelled stages of an AirGPT rationale, and their one text form.

Stages follow AirGPT (Li, Chen, Xu, Information Fusion 2025): its chain-of-thought answer walks through
(1) the problem definition, (2) weather and pattern extrapolation from the history, (3) a summary of the key
information, (4) the influence of each factor, positive and negative, and (5) the synthesis with the numeric
conclusion. The paper publishes neither prompts nor code, so the text form is ours (version 1):

    ### 1. Problem definition
    <body>

    ### 2. Weather and pattern extrapolation
    ...

:func:`parse_rationale` reads stages by their *number*, not their title (a model that writes "Key info" for
"Key information" still gives stage 3); the numbers must be exactly 1..5, in order, each with a non-empty body.
Text before the first heading (an LLM's "Sure, here is...") is dropped; text after stage 5's heading belongs to it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

STAGE_TITLES: tuple[str, ...] = ("Problem definition", "Weather and pattern extrapolation", "Key information",
                                 "Factor influence", "Synthesis and conclusion")
_HEADING_RE = re.compile(r"^[ \t]*#{1,6}[ \t]*(\d+)[ \t]*[.):][^\n]*$", re.MULTILINE)


class RationaleParseError(ValueError):
    """A text is not a five-stage rationale; the message says which stage is empty, missing or out of order."""


def stage_heading(number: int) -> str:
    """``"### 1. Problem definition"`` for stage ``number`` (1-based)."""
    return f"### {number}. {STAGE_TITLES[number - 1]}"


def format_rationale(stages: Sequence[str]) -> str:
    """Five stage bodies -> one text, each under its :func:`stage_heading`, separated by a blank line."""
    if len(stages) != len(STAGE_TITLES):
        raise ValueError(f"a rationale has {len(STAGE_TITLES)} stages ({', '.join(STAGE_TITLES)}), "
                         f"found {len(stages)}")
    parts = []
    for number, body in enumerate(stages, start=1):
        body = body.strip()
        if not body:
            raise ValueError(f"stage {number} ({STAGE_TITLES[number - 1]}) has an empty body")
        parts.append(f"{stage_heading(number)}\n{body}")
    return "\n\n".join(parts)


def parse_rationale(text: str) -> list[str]:
    """The five stage bodies (stripped) of a :func:`format_rationale` text.

    Raises:
        RationaleParseError: the text is empty, has no stage headings, a stage number is missing, repeated or out of
            order, or a stage body is empty.
    """
    if not text or not text.strip():
        raise RationaleParseError("the rationale is empty")
    headings = list(_HEADING_RE.finditer(text))
    numbers = [int(m[1]) for m in headings]
    expected = list(range(1, len(STAGE_TITLES) + 1))
    if numbers != expected:
        found = ", ".join(map(str, numbers)) if numbers else "none"
        raise RationaleParseError(f"the rationale must have stage headings '### 1.' to '### {len(expected)}.' in "
                                  f"order, found stage numbers: {found}")
    bodies = []
    for i, match in enumerate(headings):
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        body = text[match.end():end].strip()
        if not body:
            raise RationaleParseError(f"stage {i + 1} ({STAGE_TITLES[i]}) is empty")
        bodies.append(body)
    return bodies
