"""Named missing-value patterns for imputation: which observed entries of a series ``[T, N, C]`` to hide and score.

A pattern is written ``name:rate`` (``point:0.5``) or, for the presets of a published protocol, ``name`` alone;
``rate`` is the fraction in (0, 1) of the *observed* entries to hide. Entries that are truly missing are never
hidden, and the same seed always hides the same entries.

- ``point``: observed entries hidden uniformly at random, exactly ``round(rate * #observed)`` of them -- the random
  hold-out of BRITS (Cao et al., NeurIPS 2018) and SAITS (Du, Cote and Liu, Expert Systems with Applications 2023),
  drawn by PyGrinder's ``rdo`` (randomly drop observations).
- ``sequence``: sensor outages, PyGrinder's "subsequence missing" (``seq_missing``) without its overlaps: each
  (node, channel) series loses ``round(rate * #observed)`` of its observed entries in non-overlapping gaps of
  12..48 observed steps (1 to 4 hours at 5 minutes, SPIN/GRIN's fault lengths) placed at random. Lengths count
  observed steps, so a gap runs on across a stretch that was already missing, and the count is exact per series.
- ``node``: whole-node outages, a failed station: gaps as in ``sequence``, drawn per node over the steps at which it
  observes anything, each hiding every channel of the node at once -- PyGrinder's ``block_missing`` (a span of
  adjacent features) with the block being one node's channels. About ``rate`` of the observed entries (exactly, when
  a node observes all its channels or none at each step).
- ``spin_point``: the "point missing" setting of GRIN (Cini, Marisca and Alippi, ICLR 2022) and SPIN (Marisca, Cini
  and Alippi, NeurIPS 2022): 25 % of the observed values dropped at random (``point`` at 0.25; their tsl draws each
  entry with probability 0.25, which differs only in the variance of the count).
- ``spin_block``: their "block missing", tsl's ``sample_mask(shape, p=0.0015, p_noise=0.05, min_seq=12, max_seq=48)``:
  in each (node, channel) series a failure starts at each step with probability 0.0015 and lasts one length drawn
  for the series, uniform in 12..47 steps (tsl's ``min_seq + randint(max_seq - min_seq)``); on top, 5 % of the
  entries at random. The draws follow tsl's order, so for C = 1 an integer seed gives tsl's mask for that
  seed (then limited to the observed entries).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from pygrinder import rdo

PATTERNS: tuple[str, ...] = ("point", "sequence", "node", "spin_point", "spin_block")
PRESETS: frozenset[str] = frozenset({"spin_point", "spin_block"})  # fixed settings of SPIN/GRIN; no rate of their own
MIN_GAP, MAX_GAP = 12, 48  # outage lengths in steps (``sequence``, ``node``; tsl's min_seq / max_seq for spin_block)
SPIN_POINT_RATE = 0.25
SPIN_FAULT_P, SPIN_NOISE_P = 0.0015, 0.05
HISTORY_FILLS: tuple[str, ...] = ("none", "forward")  # what a forecaster reads for an entry it lacks (forward_fill)


@dataclass(frozen=True)
class MissingPattern:
    """A named missing pattern (see the module docstring); ``rate`` in (0, 1), None for the presets."""

    name: str
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.name not in PATTERNS:
            raise ValueError(f"unknown missing pattern {self.name!r}; expected one of {', '.join(PATTERNS)}")
        if self.name in PRESETS:
            if self.rate is not None:
                raise ValueError(f"missing pattern {self.name!r} has a fixed rate; write {self.name!r} without one")
        elif self.rate is None:
            raise ValueError(f"missing pattern {self.name!r} needs a rate in (0, 1), e.g. '{self.name}:0.5'")
        elif isinstance(self.rate, bool) or not isinstance(self.rate, int | float) or not 0 < self.rate < 1:
            raise ValueError(f"missing rate must be in (0, 1), found {self.rate!r}")

    @classmethod
    def parse(cls, text: str) -> MissingPattern:
        """``"point:0.5"``, ``"sequence:0.8"``, ``"node:0.2"``, ``"spin_point"``, ``"spin_block"``."""
        name, colon, rate_text = text.strip().partition(":")
        if not colon:
            return cls(name)
        try:
            rate: float | str = float(rate_text)
        except ValueError:
            rate = rate_text  # not a number: the constructor says what is wrong with it
        return cls(name, rate)

    def __str__(self) -> str:
        return self.name if self.rate is None else f"{self.name}:{self.rate}"

    def describe(self) -> str:
        """The pattern in words, for a prompt (``missing_text``): ``"50% of the readings hidden at random"``."""
        if self.name == "spin_point":
            return f"{SPIN_POINT_RATE:.0%} of the readings hidden at random"
        if self.name == "spin_block":
            return (f"sensor failures of {MIN_GAP} to {MAX_GAP - 1} steps and {SPIN_NOISE_P:.0%} of the readings at "
                    "random hidden")
        where = {"point": "at random", "sequence": f"in outages of {MIN_GAP} to {MAX_GAP} steps",
                 "node": f"in whole-location outages of {MIN_GAP} to {MAX_GAP} steps"}[self.name]
        return f"{self.rate:.0%} of the readings hidden {where}"


def hide(observed: np.ndarray, pattern: MissingPattern, seed: int | Sequence[int]) -> np.ndarray:
    """Entries of a whole series to hide under ``pattern``: ``observed`` bool [T, N, C] (False = truly missing) ->
    hidden bool [T, N, C], ``hidden <= observed``, the same for the same ``seed`` (an int or a sequence of ints)."""
    if not (isinstance(observed, np.ndarray) and observed.dtype == bool and observed.ndim == 3):
        found = f"{observed.dtype} {observed.shape}" if isinstance(observed, np.ndarray) else type(observed).__name__
        raise ValueError(f"observed must be a bool array [T, N, C] (True = observed), found {found}")
    hidden = np.zeros_like(observed)
    if not observed.any():  # pygrinder's rdo fails on an array with nothing observed
        return hidden
    if pattern.name in ("point", "spin_point"):
        with _seeded_global_rng(seed):
            rate = SPIN_POINT_RATE if pattern.name == "spin_point" else pattern.rate
            values = rdo(np.where(observed, np.float32(0), np.float32(np.nan)), rate)
        return np.isnan(values) & observed
    rng = np.random.default_rng(seed)
    if pattern.name == "spin_block":
        return _tsl_block_mask(rng, observed.shape) & observed
    # Not pygrinder's seq_missing / block_missing: they draw fixed-length gaps at independent starts, blind to what is
    # already missing, so gaps overlap and the rate falls short (seq_len 30 on [2000, 20]: p=0.8 hides 55 %, 0.95 60 %)
    if pattern.name == "sequence":
        for node, channel in np.ndindex(observed.shape[1:]):
            steps = np.flatnonzero(observed[:, node, channel])
            hidden[steps[_gaps(rng, len(steps), pattern.rate)], node, channel] = True
    else:  # node
        for node in range(observed.shape[1]):
            steps = np.flatnonzero(observed[:, node].any(axis=1))
            down = steps[_gaps(rng, len(steps), pattern.rate)]
            hidden[down, node] = observed[down, node]
    return hidden


def forward_fill(values: np.ndarray, readable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Last observation carried forward along time: ``values`` [T, ...] and ``readable`` bool of the same shape ->
    ``(filled, available)``: each entry the value of its series' last readable entry at or before its step (itself
    when readable), ``available`` False before a series' first readable entry (``filled`` there is
    ``values``' own entry, for the caller to mask). Causal: no entry takes a value from a later step, so a window's
    history filled this way never reads past its end."""
    if values.shape != readable.shape:
        raise ValueError(f"values {values.shape} and readable {readable.shape} must have the same shape")
    steps = np.arange(len(values)).reshape(-1, *([1] * (values.ndim - 1)))
    last = np.maximum.accumulate(np.where(readable, steps, -1), axis=0)
    available = last >= 0
    filled = np.take_along_axis(values, np.where(available, last, steps), axis=0)
    return filled, available


def realised_rate(observed: np.ndarray, hidden: np.ndarray) -> float:
    """The fraction of the observed entries that ``hidden`` hides (0 when nothing is observed)."""
    count = int(observed.sum())
    return int((hidden & observed).sum()) / count if count else 0.0


@contextmanager
def _seeded_global_rng(seed: int | Sequence[int]) -> Iterator[None]:
    """Seed numpy's global RNG (which pygrinder draws from) for the block, then put its state back."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        yield
    finally:
        np.random.set_state(state)


def _gaps(rng: np.random.Generator, steps: int, rate: float) -> np.ndarray:
    """bool [steps]: ``round(rate * steps)`` True in non-overlapping gaps of MIN_GAP..MAX_GAP (one gap shorter when
    the total is below MIN_GAP; the lengths uniform but for the last few, which make the total) at random places."""
    total = round(rate * steps)
    lengths, left = [], total
    while left > MAX_GAP:  # keep what is left >= MIN_GAP, so that it makes one last gap
        lengths.append(int(rng.integers(MIN_GAP, min(MAX_GAP, left - MIN_GAP) + 1)))
        left -= lengths[-1]
    lengths = rng.permutation([*lengths, left])
    # the steps left visible split into len(lengths) + 1 runs around the gaps; gap i starts at cuts[i] + its offset
    cuts = np.sort(rng.integers(0, steps - total + 1, size=len(lengths)))
    mask = np.zeros(steps, dtype=bool)
    mask[np.arange(total) + np.repeat(cuts, lengths)] = True
    return mask


def _tsl_block_mask(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """tsl's ``sample_mask(shape, p=0.0015, p_noise=0.05, min_seq=12, max_seq=48, rng)`` for a series [T, N, C]."""
    faults = rng.random(shape) < SPIN_FAULT_P
    for node, channel in np.ndindex(shape[1:]):
        starts = np.flatnonzero(faults[:, node, channel])
        if len(starts):
            length = MIN_GAP + int(rng.integers(MAX_GAP - MIN_GAP))
            faults[np.minimum(starts[:, None] + np.arange(length), shape[0] - 1).ravel(), node, channel] = True
    return faults | (rng.random(shape) < SPIN_NOISE_P)
