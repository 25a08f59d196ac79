"""UniST's memory prompts (issue 23): the priors the collator makes per batch, and the prompt they query."""

import numpy as np
import pytest
import torch
from tiny import build_tiny_forecaster, st_sample

from st_instruct.data.prompt_context import WindowPriors, dataset_priors, neighbourhoods
from st_instruct.data.stdata import STData
from st_instruct.samples.collator import STDataCollator
from st_instruct.samples.tokenize import tokenize_messages

PROMPT = dict(unist_prompts=True, unist_spatial_slots=16, unist_temporal_slots=16, unist_prompt_dim=8)
L, P = 12, 12


def grid_data(steps: int = 24 * 9, height: int = 3, width: int = 4, channels: int = 2, seed: int = 0) -> STData:
    values = np.random.default_rng(seed).normal(10, 3, size=(steps, height * width, channels)).astype(np.float32)
    values[5, 1, 0] = np.nan
    return STData(values=values, name="grid", freq="1h", start="2020-01-01", channels=["in", "out"][:channels],
                  units=[""] * channels, grid_shape=(height, width))


def priors_of(data: STData, as_series: bool = False) -> WindowPriors:
    return WindowPriors({data.name: dataset_priors(data, P, as_series)}, L, P)


def sample_at(start: int, nodes: list[int], channels: int = 2, mean: float = 0.0, std: float = 1.0) -> dict:
    return {"dataset": "grid", "window_start": start, "node_index": np.asarray(nodes),
            "scaler_mean": np.full(channels, mean, np.float32), "scaler_std": np.full(channels, std, np.float32)}


def test_grid_neighbourhoods_are_unists_3x3_and_5x5_kernels_without_the_cell_itself():
    near = neighbourhoods(grid_data(height=5, width=5))
    centre = 12  # row 2, col 2
    assert sorted(near["neighbours"][[centre]].nonzero()[1]) == [6, 7, 8, 11, 13, 16, 17, 18]
    assert near["region"][[centre]].sum() == 24  # every other cell of the 5x5 grid
    assert near["neighbours"][[0]].sum() == 3  # a corner


def test_priors_are_the_neighbours_mean_and_the_period_values_in_the_samples_scale():
    data = grid_data()
    start, node, mean, std = 7 * 24 + 3, 5, 2.0, 4.0  # a week of history before the window
    out = priors_of(data).batch([sample_at(start, [node], mean=mean, std=std)], nodes=2)
    values, observed = np.nan_to_num(data.values), data.mask()
    neighbours = [n for n in neighbourhoods(data)["neighbours"][[node]].nonzero()[1]]
    steps = np.arange(start, start + L)
    seen = observed[steps][:, neighbours]
    expected = (values[steps][:, neighbours] * seen).sum(1) / seen.sum(1)
    np.testing.assert_allclose(out["prompt_neighbours"][0, :, 0], (expected - mean) / std, rtol=1e-5)
    future = np.arange(start + L, start + L + P)
    np.testing.assert_allclose(out["prompt_period"][0, 0, :, 0], (values[future - 24, node] - mean) / std, rtol=1e-5)
    np.testing.assert_allclose(out["prompt_period"][0, 1, :, 0], (values[future - 168, node] - mean) / std,
                               rtol=1e-5)
    assert not out["prompt_neighbours"][0, :, 1].any() and not out["prompt_period"][0, :, :, 1].any()  # padding


def test_no_prior_reads_a_value_after_the_last_history_step():
    data = grid_data()
    start = 7 * 24 + 3
    before = priors_of(data).batch([sample_at(start, [0, 5, 11])], nodes=3)
    changed = data.values.copy()
    changed[start + L:] = np.random.default_rng(1).normal(size=changed[start + L:].shape) * 1e3
    after = priors_of(STData(values=changed, name="grid", freq="1h", start="2020-01-01", channels=["in", "out"],
                             units=["", ""], grid_shape=(3, 4))).batch([sample_at(start, [0, 5, 11])], nodes=3)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])


def test_a_lag_shorter_than_the_horizon_and_steps_before_the_series_are_left_out():
    data = grid_data()
    out = priors_of(data).batch([sample_at(12, [0])], nodes=1)  # the day before exists, the week before does not
    assert out["prompt_period"][0, 0].any() and not out["prompt_period"][0, 1].any()
    daily = STData(values=data.values, name="grid", freq="1D", start="2020-01-01", channels=["in", "out"],
                   units=["", ""], grid_shape=(3, 4))
    assert dataset_priors(daily, P, False).lags == (0, 0)  # 1 and 7 steps < a 12-step horizon: the future


def test_a_series_view_gets_the_same_channel_at_the_neighbouring_nodes():
    data = grid_data()
    nodes_priors, series_priors = priors_of(data), priors_of(data, as_series=True)
    start = 7 * 24
    by_node = nodes_priors.batch([sample_at(start, [5])], nodes=1)
    by_series = series_priors.batch([sample_at(start, [5 * 2 + 1], channels=1)], nodes=1)  # node 5, channel 1
    for key in by_node:
        np.testing.assert_array_equal(by_series[key][..., 0], by_node[key][..., 1])


def prompt_batch(tokenizer, nodes: int = 3) -> dict:
    samples = []
    for i in range(2):
        sample = st_sample(f"s{i}", num_nodes=nodes, seed=i)
        sample.update(tokenize_messages(sample["messages"], tokenizer, num_nodes=nodes))
        samples.append(sample)
    batch = STDataCollator(tokenizer)(samples)
    generator = torch.Generator().manual_seed(0)
    batch["prompt_neighbours"] = torch.randn(2, L, nodes, 2, generator=generator)
    batch["prompt_region"] = torch.randn(2, L, nodes, 2, generator=generator)
    batch["prompt_period"] = torch.randn(2, 2, P, nodes, 2, generator=generator)
    return batch


@pytest.mark.parametrize("backbone", [True, False], ids=["llm", "no-llm"])
def test_zeroed_memories_leave_the_forecast_unchanged(st_tok, backbone):
    """The prompt is a residual: memories of zeros answer zero, so the forecaster with them predicts exactly what
    the same weights without the prompt predict; trained (non-zero) memories change it."""
    from st_instruct.models.forecaster import build_st_forecaster

    batch = prompt_batch(st_tok)
    if backbone:
        with_prompt = build_tiny_forecaster(st_tok, coord_dim=4, **PROMPT)
        without = build_tiny_forecaster(st_tok, coord_dim=4)
    else:
        import dataclasses

        config = dataclasses.replace(build_tiny_forecaster(st_tok, coord_dim=4, **PROMPT).st_config, hidden_size=32)
        torch.manual_seed(1)
        with_prompt = build_st_forecaster(None, config)
        torch.manual_seed(1)
        without = build_st_forecaster(None, dataclasses.replace(config, prompt=type(config.prompt)()))
    without.load_state_dict(with_prompt.state_dict(), strict=False)
    assert not torch.equal(with_prompt.predict(batch), without.predict(batch))
    with torch.no_grad():
        with_prompt.st_prompt.spatial.values.zero_()
        with_prompt.st_prompt.temporal.values.zero_()
    assert torch.equal(with_prompt.predict(batch), without.predict(batch))


def test_each_prior_reaches_the_forecast_and_missing_priors_are_named(st_tok):
    model = build_tiny_forecaster(st_tok, coord_dim=4, **PROMPT)
    batch = prompt_batch(st_tok)
    first = model.predict(batch)
    for key in ("prompt_neighbours", "prompt_region", "prompt_period"):
        assert not torch.equal(first, model.predict(dict(batch, **{key: batch[key] + 1.0}))), key
    assert "st_prompt" in model.st_modules()
    with pytest.raises(ValueError, match="need the batch's prompt_period; batch with build_collator"):
        model.predict({key: value for key, value in batch.items() if key != "prompt_period"})
