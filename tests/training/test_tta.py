"""Issue 24: the reconstruction path (``reconstruction_head``, ``reconstruction_weight``) and test-time adaptation
(``st-instruct evaluate --tta STEPS --tta-mode reset|carry|matured``): no adaptation step reads a target in
``reset`` / ``carry``, ``reset`` restores every weight, ``matured`` uses only labels that have arrived, the report
says what ran."""

import numpy as np
import pytest
import torch
from cli_check import assert_clean_failure
from tiny import train_smoke

from st_instruct.configs import ModelConfig, RecipeError
from st_instruct.model_dir import trained_data_config
from st_instruct.models.collators import build_collator
from st_instruct.models.saving import load_forecaster, read_backbone_source
from st_instruct.protocols.baselines import prepare_windows
from st_instruct.protocols.evaluate import evaluate_forecaster, evaluation_config
from st_instruct.samples.builder import build_dataset
from st_instruct.training.reconstruction import reconstruction_loss
from st_instruct.training.tta import TestTimeAdapter, TTASettings, adaptation_config, tta_parameters

RECONSTRUCTION = ("--reconstruction_head", "true", "--reconstruction_weight", "0.5", "--reconstruction_mask",
                  "random", "--tta_parameters", "norms", "lora", "--tta_learning_rate", "0.01")


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory, tiny_backbone_dir):
    """A smoke forecaster trained 2 steps with the reconstruction loss beside the forecast."""
    return train_smoke(tmp_path_factory, tiny_backbone_dir, *RECONSTRUCTION, steps=2)


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny_backbone_dir):
    """The smoke forecaster without a reconstruction path."""
    return train_smoke(tmp_path_factory, tiny_backbone_dir, steps=1)


def _test_batches(folder, windows=6, batch_size=4):
    """``(model, batches in time order (each with its window_start), step times)`` of the test split of
    synthetic-small, batched as the evaluation batches it."""
    config, _ = evaluation_config(trained_data_config(folder), "synthetic-small", max_windows=windows)
    model, tokenizer = load_forecaster(folder)
    samples = build_dataset(config, tokenizer)["test"]
    samples = samples.select(np.argsort(np.asarray(samples["window_start"]), kind="stable"))
    collator = build_collator(config, model, tokenizer, read_backbone_source(folder)[0].model_name_or_path)
    batches = []
    for lo in range(0, len(samples), batch_size):
        rows = [samples[i] for i in range(lo, min(lo + batch_size, len(samples)))]
        batch = collator(rows)
        batch["window_start"] = torch.tensor([int(row["window_start"]) for row in rows])
        batches.append(batch)
    index = prepare_windows("synthetic-small", config.history, config.horizon, config.split).data.time_index()
    return model, batches, (lambda steps: np.asarray(index.values)[steps]), config


def _weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_the_recipe_keys_go_together():
    with pytest.raises(RecipeError, match="reconstruction_head: true and reconstruction_weight > 0 go together"):
        ModelConfig(reconstruction_head=True)
    with pytest.raises(RecipeError, match="reconstruction_head: true and reconstruction_weight > 0 go together"):
        ModelConfig(reconstruction_weight=0.5)
    with pytest.raises(RecipeError, match="UniST's priors are made from the unmasked history"):
        ModelConfig(reconstruction_head=True, reconstruction_weight=0.5, unist_prompts=True)
    with pytest.raises(RecipeError, match="reconstruction_ratio must be in"):
        ModelConfig(reconstruction_ratio=1.0)


def test_the_reconstruction_loss_reads_no_target_and_trains_the_reconstruction_head(adaptive):
    model, batches, _, _ = _test_batches(adaptive)
    batch = batches[0]
    poisoned = {**batch, "target": torch.full_like(batch["target"], float("nan"))}
    losses = []
    for inputs in (batch, poisoned):
        model.zero_grad()
        loss = reconstruction_loss(model, inputs, "random", 0.25, torch.Generator().manual_seed(3))
        loss.backward()
        losses.append(loss.detach())
    assert torch.isfinite(losses[0]) and torch.equal(losses[0], losses[1])
    assert model.st_reconstruction.out.weight.grad.abs().sum() > 0
    assert adaptation_config(adaptive).reconstruction_weight == 0.5  # read back from the folder's recipe


@pytest.mark.parametrize("mode", ["reset", "carry"])
def test_an_adaptation_step_never_reads_the_target(adaptive, mode):
    """Targets replaced by NaN give identical adapted weights and forecasts (carry: the weights after the
    sequence; reset: the forecasts, made with the adapted weights before they are restored)."""
    outcomes = []
    for poison in (False, True):
        model, batches, step_time, config = _test_batches(adaptive)
        adapter = TestTimeAdapter(model, adaptation_config(adaptive), TTASettings(3, mode), config.history,
                                  config.horizon, step_time=step_time, seed=0)
        forecasts = []
        for batch in batches:
            if poison:
                batch = {**batch, "target": torch.full_like(batch["target"], float("nan"))}
            forecasts.append(adapter.predict(batch))
        adapter.close()
        outcomes.append((forecasts, _weights(model)))
    (plain_forecasts, plain_weights), (poisoned_forecasts, poisoned_weights) = outcomes
    for a, b in zip(plain_forecasts, poisoned_forecasts, strict=True):
        assert torch.equal(a, b)
    assert all(torch.equal(plain_weights[name], poisoned_weights[name]) for name in plain_weights)


def test_reset_restores_every_weight_after_each_batch_and_carry_changes_only_the_named_ones(adaptive):
    model, batches, step_time, config = _test_batches(adaptive)
    before = _weights(model)
    plain = [model.predict(batch) for batch in batches]
    adapter = TestTimeAdapter(model, adaptation_config(adaptive), TTASettings(3, "reset"), config.history,
                              config.horizon, step_time=step_time)
    for batch in batches:
        adapted = adapter.predict(batch)
        assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
    adapter.close()
    assert not torch.equal(adapted, plain[-1])  # the adaptation did change the forecast of the batch

    named = set(tta_parameters(model, ["norms", "lora"]))
    assert any("norm" in name for name in named) and any("lora_" in name for name in named)
    carry = TestTimeAdapter(model, adaptation_config(adaptive), TTASettings(3, "carry"), config.history,
                            config.horizon, step_time=step_time)
    for batch in batches:
        carry.predict(batch)
    carry.close()
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    assert changed and changed <= named
    flags = {name: p.requires_grad for name, p in load_forecaster(adaptive)[0].named_parameters()}
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags  # close() put them back


def test_matured_uses_no_target_later_than_the_issue_time(adaptive):
    """Checked on the timestamps: every label a step used lies at or before the issue time of the batch it adapted
    for, and each sample's labels are used once."""
    model, batches, step_time, config = _test_batches(adaptive, windows=12, batch_size=3)
    adapter = TestTimeAdapter(model, adaptation_config(adaptive), TTASettings(1, "matured"), config.history,
                              config.horizon, step_time=step_time)
    issued = []
    for batch in batches:
        issued.append(step_time(batch["window_start"].numpy() + config.history - 1).min())
        adapter.predict(batch)
    adapter.close()
    assert adapter.matured_log, "no label matured: the test windows are too close together"
    for step in adapter.matured_log:
        assert step["latest_target"] <= step["issue_time"] and step["issue_time"] in issued
    assert sum(step["samples"] for step in adapter.matured_log) <= sum(len(b["window_start"]) for b in batches)


def test_evaluate_reports_the_adapted_rows_beside_the_plain_ones(adaptive):
    """Two modes in one evaluation, each from the trained weights: the carry run's changes do not reach the reset
    run (whose forecasts equal those of a reset-only evaluation)."""
    modes = [TTASettings(2, "carry"), TTASettings(2, "reset")]
    report, arrays = evaluate_forecaster(adaptive, "synthetic-small", max_windows=4, models=["window_mean"],
                                         progress=False, tta=modes)
    rows = report["results"]
    assert {"st_forecaster", "st_forecaster+tta-carry", "st_forecaster+tta-reset"} <= set(rows)
    assert rows["st_forecaster+tta-carry"]["kind"] == "forecaster"
    assert rows["st_forecaster+tta-carry"]["MAE"] != rows["st_forecaster"]["MAE"]
    assert set(report["tta"]) == {"carry", "reset"} and report["tta"]["carry"]["steps"] == 2
    assert report["tta"]["carry"]["trainable"]["st_forecaster+tta-carry"] > 0
    assert "st_forecaster+tta-carry" in report["tta"]["carry"]["seconds_added_per_window"]
    assert "none" in report["tta"]["reset"]["labels"]
    assert arrays["predictions"]["st_forecaster+tta-carry"].shape == arrays["predictions"]["st_forecaster"].shape
    _, alone = evaluate_forecaster(adaptive, "synthetic-small", max_windows=4, models=["window_mean"],
                                   progress=False, tta=modes[1:])
    np.testing.assert_array_equal(alone["predictions"]["st_forecaster+tta-reset"],
                                  arrays["predictions"]["st_forecaster+tta-reset"])


def test_bad_tta_requests_are_one_line(cli, plain, adaptive):
    for steps in ("0", "-2"):
        result = cli("evaluate", "--model", adaptive, "--dataset", "synthetic-small", "--tta", steps, "--quiet")
        assert_clean_failure(result, "--tta", ">= 1")
    result = cli("evaluate", "--model", plain, "--dataset", "synthetic-small", "--tta", "2", "--quiet")
    assert_clean_failure(result, "--tta-mode reset", "no reconstruction path", "reconstruction_head")
    result = cli("evaluate", "--model", adaptive, "--dataset", "synthetic-small", "--tta", "2", "--tta-mode", "reset",
                 "reset", "--quiet")
    assert_clean_failure(result, "--tta-mode", "twice")
    for rate in ("0", "-1e-3", "nan"):
        result = cli("evaluate", "--model", adaptive, "--dataset", "synthetic-small", "--tta", "2", f"--tta-lr={rate}",
                     "--quiet")
        assert_clean_failure(result, "--tta-lr", "positive")
    result = cli("evaluate", "--model", adaptive, "--dataset", "synthetic-small", "--tta-lr", "1e-3", "--quiet")
    assert_clean_failure(result, "--tta-lr", "--tta STEPS")


def test_the_learning_rate_given_replaces_the_recipes(adaptive):
    """``--tta-lr`` reaches the optimiser and the report, and a larger rate moves the carried weights further."""
    recipe_rate = adaptation_config(adaptive).tta_learning_rate
    moved = {}
    for rate in (None, recipe_rate * 100):
        model, batches, step_time, config = _test_batches(adaptive)
        before = _weights(model)
        adapter = TestTimeAdapter(model, adaptation_config(adaptive), TTASettings(2, "carry", rate), config.history,
                                  config.horizon, step_time=step_time)
        assert adapter.optimizer.param_groups[0]["lr"] == (rate or recipe_rate)
        for batch in batches:
            adapter.predict(batch)
        adapter.close()
        moved[rate] = sum(float((p - before[name]).abs().sum()) for name, p in model.named_parameters())
    assert moved[recipe_rate * 100] > moved[None] > 0
    report, _ = evaluate_forecaster(adaptive, "synthetic-small", max_windows=2, models=["window_mean"],
                                    progress=False, tta=[TTASettings(1, "reset", 0.003)])
    assert report["tta"]["reset"]["learning_rate"] == 0.003
