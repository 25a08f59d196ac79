"""Building a rationale per window: cached teacher generation, validation, fallback, and a report.

AirGPT (Li, Chen, Xu, Information Fusion 2025) keeps only the teacher rationales that arrive at the label. Here
:func:`build_rationales` asks the teacher only for the windows its cache lacks, validates every text
(:func:`~st_instruct.samples.rationales.validate.validate_rationale`), and replaces a rejected one with the fallback
teacher's (by default the analytic teacher, which is always valid), so the dataset keeps every window; with
``fallback=None`` a rejected window's text is ``None``.

Cache (:class:`RationaleCache`): one JSONL file per teacher identity in ``cache_dir`` (default
``$ST_INSTRUCT_CACHE/rationales``, else ``~/.cache/st_instruct/rationales``, beside ``data`` and ``built``), one line
``{"key", "text"}`` per generated window, the raw teacher output before validation (a tolerance change needs no new
generation). ``key`` is the sha256 of the teacher identity and the window's content: the rendered prompt for an
:class:`~st_instruct.samples.rationales.teachers.LLMTeacher` (what determines its output), else the facts' canonical
JSON. Lines are appended and flushed (``fsync``) after every generated batch, so an interrupted build loses nothing
it completed; a truncated last line (a kill during the write) is skipped when read and ended before the next append.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from st_instruct.data.registry import cache_dir
from st_instruct.samples.rationales.facts import WindowFacts
from st_instruct.samples.rationales.teachers import AnalyticTeacher
from st_instruct.samples.rationales.validate import REJECTION_REASONS, Tolerance, validate_rationale

ANALYTIC = AnalyticTeacher()  # the default fallback (stateless)
DEFAULT_TOLERANCE = Tolerance()


def default_rationale_cache_dir() -> Path:
    """Where rationales are cached by default: :func:`~st_instruct.data.registry.cache_dir` ``("rationales")``."""
    return cache_dir("rationales")


def cache_key(teacher: Any, facts: WindowFacts) -> str:
    """sha256 hex of the teacher's identity and the window's content (``teacher.cache_content`` when it has one,
    else ``facts.content()``)."""
    content = teacher.cache_content(facts) if hasattr(teacher, "cache_content") else facts.content()
    return hashlib.sha256(f"{teacher.identity}\n{content}".encode()).hexdigest()


class RationaleCache:
    """Generated texts of one teacher identity, ``{key: text}``, in ``<cache_dir>/<identity slug>-<hash>.jsonl``."""

    def __init__(self, identity: str, cache_dir: str | os.PathLike | None = None):
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_rationale_cache_dir()
        slug = re.sub(r"[^A-Za-z0-9.@-]+", "_", identity)[:60].strip("_")
        self.path = root / f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.jsonl"
        self.texts: dict[str, str] = {}
        if self.path.is_file():
            with self.path.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                        self.texts[str(record["key"])] = str(record["text"])
                    except (ValueError, KeyError, TypeError):  # a truncated or foreign line
                        continue

    def __contains__(self, key: str) -> bool:
        return key in self.texts

    def __len__(self) -> int:
        return len(self.texts)

    def get(self, key: str) -> str | None:
        return self.texts.get(key)

    def add(self, items: Sequence[tuple[str, str]]) -> None:
        """Append ``(key, text)`` pairs and flush them to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # end a truncated last line, never glue a record to it
                    handle.write(b"\n")
            for key, text in items:
                handle.write((json.dumps({"key": key, "text": text}, ensure_ascii=False) + "\n").encode())
                self.texts[key] = text
            handle.flush()
            os.fsync(handle.fileno())


@dataclass
class RationaleReport:
    """What :func:`build_rationales` made.

    ``texts`` / ``sources`` / ``reasons`` / ``teacher_texts`` have one entry per window: the final text (``None`` when
    rejected without a fallback), who wrote it (the teacher's ``name``, or the fallback's), the teacher text's
    rejection reason (``None`` = accepted) and the teacher's own text. ``rejected`` counts every reason of
    :data:`REJECTION_REASONS`; ``generated`` is the windows the teacher generated in this run (0 on a cached
    rebuild); ``tokens`` / ``seconds`` are the teacher's generated tokens and generation time in this run.
    """

    texts: list[str | None]
    sources: list[str]
    reasons: list[str | None]
    teacher_texts: list[str]
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTION_REASONS, 0))
    accepted: int = 0
    generated: int = 0
    tokens: int = 0
    seconds: float = 0.0
    teacher: str = ""

    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """Readable multi-line summary: acceptance, each rejection reason with its rate, generation speed."""
        total = max(len(self.texts), 1)
        fallback = sum(s != self.teacher for s in self.sources)
        lines = [f"rationales by {self.teacher}: {len(self.texts)} windows, {self.accepted} accepted "
                 f"({100 * self.accepted / total:.1f}%), {self.generated} generated in this run, "
                 f"{fallback} from the fallback"]
        lines += [f"  rejected {reason}: {count} ({100 * count / total:.1f}%)"
                  for reason, count in self.rejected.items()]
        lines.append(f"  generation: {self.tokens} tokens in {self.seconds:.1f} s ({self.tokens_per_second():.1f} "
                     "tokens/s)")
        return "\n".join(lines)


def build_rationales(facts: Sequence[WindowFacts], teacher: Any, cache_dir: str | os.PathLike | None = None,
                     fallback: Any = ANALYTIC, tolerance: Tolerance = DEFAULT_TOLERANCE, progress: bool = True
                     ) -> RationaleReport:
    """One validated rationale per window of ``facts`` (module docstring).

    The teacher generates only the windows its cache lacks, in batches of ``teacher.batch_size`` (all at once when
    it has none), each batch cached as soon as it returns; an exception from the teacher propagates after the
    completed batches are saved, so the next call resumes. A non-string teacher output counts as empty text.

    Raises:
        ValueError: the teacher returned a different number of texts than it was given windows.
    """
    facts = list(facts)
    cache = RationaleCache(teacher.identity, cache_dir)
    keys = [cache_key(teacher, f) for f in facts]
    missing = [i for i, key in enumerate(keys) if key not in cache]
    unique_missing = list({keys[i]: i for i in reversed(missing)}.values())[::-1]  # one generation per distinct key
    batch_size = max(int(getattr(teacher, "batch_size", 0) or len(unique_missing) or 1), 1)
    tokens_before = int(getattr(teacher, "tokens_generated", 0))
    seconds = 0.0
    with tqdm(total=len(unique_missing), desc=f"rationales ({teacher.name})", disable=not progress or not missing,
              unit="window") as bar:
        for lo in range(0, len(unique_missing), batch_size):
            chunk = unique_missing[lo:lo + batch_size]
            started = time.perf_counter()
            texts = teacher.generate([facts[i] for i in chunk])
            seconds += time.perf_counter() - started
            if len(texts) != len(chunk):
                raise ValueError(f"teacher {teacher.name!r} returned {len(texts)} texts for {len(chunk)} windows")
            cache.add([(keys[i], text if isinstance(text, str) else "") for i, text in zip(chunk, texts, strict=True)])
            bar.update(len(chunk))
    report = RationaleReport(texts=[], sources=[], reasons=[], teacher_texts=[], teacher=teacher.name,
                             generated=len(unique_missing), seconds=seconds,
                             tokens=int(getattr(teacher, "tokens_generated", 0)) - tokens_before)
    rejected_windows = []
    for i, f in enumerate(facts):
        text = cache.get(keys[i]) or ""
        reason = validate_rationale(text, f, tolerance)
        report.teacher_texts.append(text)
        report.reasons.append(reason)
        if reason is None:
            report.accepted += 1
            report.texts.append(text)
            report.sources.append(teacher.name)
        else:
            report.rejected[reason] += 1
            report.texts.append(None)
            report.sources.append(fallback.name if fallback is not None else "rejected")
            rejected_windows.append(i)
    if fallback is not None and rejected_windows:
        for i, text in zip(rejected_windows, fallback.generate([facts[i] for i in rejected_windows]), strict=True):
            report.texts[i] = text
    return report
