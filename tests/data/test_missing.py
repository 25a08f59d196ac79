"""Named missing patterns for imputation (point, sequence, node, SPIN/GRIN presets): rates, structure, determinism,
never hiding a truly missing entry, clear errors."""

import numpy as np
import pytest

from st_instruct.data.missing import (
    MAX_GAP,
    MIN_GAP,
    PATTERNS,
    MissingPattern,
    hide,
    realised_rate,
)

SHAPE = (2000, 20, 1)  # T, N, C
RATES = (0.1, 0.5, 0.8, 0.95)
TOLERANCE = 0.03  # |realised - rate| for the gap patterns
EVERY = ("point:0.3", "sequence:0.3", "node:0.3", "spin_point", "spin_block")


def fully_observed(shape=SHAPE):
    return np.ones(shape, dtype=bool)


def partly_observed(shape=SHAPE, missing=0.2, seed=99):
    """About ``missing`` of the entries truly missing, at random."""
    return np.random.default_rng(seed).random(shape) >= missing


def runs(series):
    """Lengths of the runs of True in a 1-D bool array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], series.astype(np.int8), [0]])))
    return edges[1::2] - edges[::2]


@pytest.mark.parametrize("observed", [fully_observed(), partly_observed()], ids=["full", "partial"])
@pytest.mark.parametrize("rate", RATES)
def test_point_hides_exactly_its_share_of_the_observed_entries(observed, rate):
    hidden = hide(observed, MissingPattern("point", rate), seed=0)
    assert hidden.sum() == round(rate * observed.sum())
    assert not (hidden & ~observed).any()


@pytest.mark.parametrize("observed", [fully_observed(), partly_observed()], ids=["full", "partial"])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", ["sequence", "node"])
def test_gap_patterns_hide_about_their_rate(name, rate, observed):
    hidden = hide(observed, MissingPattern(name, rate), seed=1)
    assert abs(realised_rate(observed, hidden) - rate) <= TOLERANCE


def test_sequence_hides_the_exact_count_of_each_series():
    observed = partly_observed((600, 6, 2))
    hidden = hide(observed, MissingPattern("sequence", 0.4), seed=2)
    np.testing.assert_array_equal(hidden.sum(axis=0), np.round(0.4 * observed.sum(axis=0)))


@pytest.mark.parametrize("rate", RATES)
def test_sequence_gaps_are_contiguous_runs_of_at_least_min_gap(rate):
    observed = fully_observed()
    hidden = hide(observed, MissingPattern("sequence", rate), seed=3)
    for node in range(SHAPE[1]):
        lengths = runs(hidden[:, node, 0])
        assert lengths.min() >= MIN_GAP
        if rate <= 0.5:  # scattered outages, not one long block (adjacent gaps may merge at high rates)
            assert len(lengths) >= round(rate * SHAPE[0]) / MAX_GAP / 2


def test_sequence_gaps_are_contiguous_over_the_observed_steps():
    """A truly missing entry may split a gap in time; along the observed steps every run is still >= MIN_GAP."""
    observed = partly_observed()
    hidden = hide(observed, MissingPattern("sequence", 0.5), seed=4)
    for node in range(SHAPE[1]):
        assert runs(hidden[observed[:, node, 0], node, 0]).min() >= MIN_GAP


def test_node_hides_every_channel_of_a_node_together():
    observed = fully_observed((2000, 20, 3))
    hidden = hide(observed, MissingPattern("node", 0.5), seed=5)
    np.testing.assert_array_equal(hidden.all(axis=2), hidden.any(axis=2))
    assert abs(realised_rate(observed, hidden) - 0.5) <= TOLERANCE
    for node in range(20):
        assert runs(hidden[:, node, 0]).min() >= MIN_GAP


def test_node_hides_every_observed_channel_where_channels_are_partly_observed():
    observed = partly_observed((2000, 20, 3))
    hidden = hide(observed, MissingPattern("node", 0.5), seed=6)
    down = hidden.any(axis=2)  # [T, N] steps at which a node is out
    np.testing.assert_array_equal(hidden[down], observed[down])
    assert abs(realised_rate(observed, hidden) - 0.5) <= TOLERANCE


@pytest.mark.parametrize("observed", [fully_observed(), partly_observed()], ids=["full", "partial"])
def test_spin_point_is_point_at_a_quarter(observed):
    hidden = hide(observed, MissingPattern.parse("spin_point"), seed=7)
    assert hidden.sum() == round(0.25 * observed.sum())
    np.testing.assert_array_equal(hidden, hide(observed, MissingPattern("point", 0.25), seed=7))


def test_spin_block_hides_noise_plus_failures_at_their_expected_rate():
    steps, nodes = 2000, 100
    observed = fully_observed((steps, nodes, 1))
    hidden = hide(observed, MissingPattern.parse("spin_block"), seed=8)
    # SPIN/GRIN's protocol: failures start with probability 0.0015 at each step and last one length per series,
    # uniform in 12..47 (tsl's max_seq=48 is exclusive); a step is covered when a failure started within that length
    lengths = np.arange(12, 48)[:, None]
    window = np.minimum(lengths, np.arange(1, steps + 1)[None, :])
    coverage = float(np.mean(1 - (1 - 0.0015) ** window))
    expected = 1 - (1 - 0.05) * (1 - coverage)  # plus 5 % noise
    assert 0.08 < expected < 0.11
    assert abs(realised_rate(observed, hidden) - expected) < 0.012
    # the failures are the runs of >= 12 steps (5 % noise makes such a run with probability 0.05 ** 12)
    in_failures = sum(int(r[r >= MIN_GAP].sum()) for r in (runs(hidden[:, node, 0]) for node in range(nodes)))
    assert abs(in_failures / hidden.size - coverage) < 0.012


@pytest.mark.parametrize("text", EVERY)
def test_never_hides_a_truly_missing_entry(text):
    observed = partly_observed((1000, 10, 3))
    hidden = hide(observed, MissingPattern.parse(text), seed=9)
    assert hidden.dtype == bool and hidden.shape == observed.shape
    assert hidden.any()
    assert not (hidden & ~observed).any()


@pytest.mark.parametrize("text", EVERY)
def test_same_seed_same_mask_other_seed_other_mask(text):
    observed = partly_observed((1000, 10, 2))
    pattern = MissingPattern.parse(text)
    np.testing.assert_array_equal(hide(observed, pattern, seed=10), hide(observed, pattern, seed=10))
    assert (hide(observed, pattern, seed=10) != hide(observed, pattern, seed=11)).any()
    np.testing.assert_array_equal(hide(observed, pattern, seed=(3, 1)), hide(observed, pattern, seed=[3, 1]))
    assert (hide(observed, pattern, seed=(3, 1)) != hide(observed, pattern, seed=(3, 2))).any()


@pytest.mark.parametrize("text", EVERY)
def test_global_numpy_rng_is_left_as_it_was(text):
    np.random.seed(1234)
    expected = np.random.random(4)
    np.random.seed(1234)
    hide(partly_observed((500, 4, 2)), MissingPattern.parse(text), seed=12)
    np.testing.assert_array_equal(np.random.random(4), expected)


@pytest.mark.parametrize("text", EVERY)
def test_nothing_observed_hides_nothing(text):
    observed = np.zeros((300, 4, 2), dtype=bool)
    hidden = hide(observed, MissingPattern.parse(text), seed=13)
    assert hidden.shape == observed.shape and not hidden.any()
    assert realised_rate(observed, hidden) == 0.0


@pytest.mark.parametrize("rate", [0, 1, -0.1, 1.5, "abc", True, float("nan")])
def test_rate_outside_the_open_unit_interval_is_refused(rate):
    with pytest.raises(ValueError, match=r"\(0, 1\)") as error:
        MissingPattern("sequence", rate)
    assert "\n" not in str(error.value)
    if not isinstance(rate, bool):
        with pytest.raises(ValueError, match=r"\(0, 1\)") as error:
            MissingPattern.parse(f"point:{rate}")
        assert "\n" not in str(error.value)


def test_unknown_pattern_lists_the_patterns():
    for make in (lambda: MissingPattern("blocks", 0.5), lambda: MissingPattern.parse("blocks:0.5")):
        with pytest.raises(ValueError, match="blocks") as error:
            make()
        message = str(error.value)
        assert "\n" not in message and all(name in message for name in PATTERNS)


@pytest.mark.parametrize(
    "make",
    [
        lambda: MissingPattern.parse("point"),
        lambda: MissingPattern("node"),
        lambda: MissingPattern.parse("spin_point:0.3"),
        lambda: MissingPattern("spin_block", 0.1),
        lambda: MissingPattern.parse("spin_block:abc"),
    ],
    ids=["point-without-rate", "node-without-rate", "spin_point-with-rate", "spin_block-with-rate", "preset-junk"],
)
def test_rate_required_exactly_for_the_non_presets(make):
    with pytest.raises(ValueError) as error:
        make()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text", [*EVERY, "point:0.05", "sequence:0.95", "node:0.123"])
def test_parse_and_str_round_trip(text):
    pattern = MissingPattern.parse(text)
    assert str(pattern) == text
    assert MissingPattern.parse(str(pattern)) == pattern


@pytest.mark.parametrize(
    "observed", [np.ones((10, 2, 1)), np.ones((10, 2), dtype=bool), [[[True]]]], ids=["float", "2-D", "list"]
)
def test_observed_must_be_a_bool_array_t_n_c(observed):
    with pytest.raises(ValueError, match=r"bool array \[T, N, C\]"):
        hide(observed, MissingPattern("point", 0.5), seed=0)


def test_realised_rate():
    observed = np.array([True, True, True, False]).reshape(4, 1, 1)
    hidden = np.array([True, False, False, False]).reshape(4, 1, 1)
    assert realised_rate(observed, hidden) == pytest.approx(1 / 3)
