"""Evaluate a trained LLM forecaster beside the baselines on the same test windows (``st-instruct evaluate``).

The forecaster directory (a training output or a ``checkpoint-N`` folder with a ``recipe.yaml`` beside or in it)
gives the model, its tokenizer and the resolved recipe. The recipe's windowing (history, horizon, split, stride),
prompt (template, granularity, values in text) and coordinates are kept; the dataset is replaced by the one to
evaluate on, with every node. Protocol: ``"in-domain"`` when the dataset was among the training datasets, else
``"zero-shot (trained on X)"``; ``report["protocol_version"]`` (:data:`PROTOCOL_VERSION`) names the rules below.

Zero-shot, version 2 (version 1: UrbanGPT, Li et al., KDD 2024, whose baseline rows were not labelled):

- scaling: strict by default, ``scaling: window`` -- every sample is z-scored with the statistics of its own
  history window (:mod:`st_instruct.samples.builder`), so no value outside the input window is read; or ``train``,
  the target's train-split statistics (the transductive variant). ``report["scaling"]`` says which.
- three kinds of reference rows, each row's ``"kind"`` in the report
  (:data:`~st_instruct.evaluation.baselines.ROW_KINDS`): *input-only* (``window_last_value``, ``window_mean``,
  ``window_linear_trend``: what a user with no target data beyond the input can run), *source-fitted* (rows
  ``NAME@source``: fitted on the forecaster's training datasets, each with the recipe's windowing, then applied
  to the target's test windows, :func:`~st_instruct.evaluation.baselines.run_source_baselines`;
  ``global_ridge@source`` fits every source at once, the per-node ones need the one source's node set and are
  otherwise skipped with the reason) and *target-fitted* (rows ``NAME`` fitted on the target's train split: an
  oracle with data zero-shot does not have). ``report["baselines_fitted_on"]`` maps every fitted baseline row to
  the dataset(s) it was fitted on. Baselines always read raw values and fit their own scaler.

The forecaster predicts every (window, node) sample of the test split in one teacher-forced forward pass per
batch (no generation); its ``[P, N', C]`` forecasts are scattered into ``[B, P, N, C]`` by ``window_start`` and
``node_index``, aligned with :func:`~st_instruct.protocols.baselines.prepare_windows`'s test windows. The
baselines are fitted as in ``st-instruct baselines`` and scored on exactly the same windows, targets and masks.

Controls (Tan et al., NeurIPS 2024, "Are Language Models Actually Useful for Time Series Forecasting?"): folders
trained from the same recipe with ``control: no_llm`` / ``control: random_llm`` (:func:`read_control`) predict the
very same tokenised samples and are reported as ``st_forecaster_no_llm`` / ``st_forecaster_random_llm``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from st_instruct.configs import DATASET_SPEC_KEYS, DataConfig
from st_instruct.data.loaders import dataset_spec
from st_instruct.data.profile import read_data_profiles
from st_instruct.evaluation.baselines import SOURCE_SUFFIX, run_baselines, run_source_baselines
from st_instruct.evaluation.plots import window_times
from st_instruct.evaluation.predict import scatter_predictions
from st_instruct.model_dir import (
    GENERATED_ROW,
    MODEL_ROW,
    TTA_ROW_SEPARATOR,
    read_few_shot,
    trained_data_config,
    tta_row,
)
from st_instruct.models.collators import build_collator
from st_instruct.models.forecaster import STForecasterConfig
from st_instruct.models.rationale import generate_forecast
from st_instruct.models.saving import load_forecaster, load_model_config, read_backbone_source
from st_instruct.protocols.baselines import make_report, prepare_windows, row_kind
from st_instruct.protocols.controls import read_control
from st_instruct.protocols.imputation import (
    MAE_ENCODER_ROW,
    imputation_baselines,
    imputation_target,
    pretrained_encoder_rows,
    readable_windows,
)
from st_instruct.samples.builder import build_dataset, series_hidden
from st_instruct.tasks import Task, get_task
from st_instruct.training.tta import TestTimeAdapter, TTASettings, adaptation_config

# bump a protocol's version when what it fits, scales or scores changes
PROTOCOL_VERSION = {"in-domain": "in-domain/1", "zero-shot": "zero-shot/2", "few-shot": "few-shot/2"}


def require_rationale_training(model_dir: str | Path, config: DataConfig, flag: str) -> None:
    """Refuse ``flag`` -- a rationale asked of the forecaster in ``model_dir``, trained with the recipe ``config`` --
    when that recipe trained no rationales: what such a model generates after its prompt is no rationale."""
    if config.rationale_teacher == "none":
        raise ValueError(f"{flag} needs a rationale-trained forecaster (an AirGPT student, recipes/airgpt_cot.yaml): "
                         f"the one in {model_dir} was not trained with rationales (its recipe has rationale_teacher: "
                         "none), so the text it would generate is no rationale")


def _same_dataset(a: str, b: str) -> bool:
    """Same registered name, or two spellings (relative / absolute) of the same existing file."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_file() and pb.is_file() and pa.resolve() == pb.resolve()


def evaluation_config(trained: DataConfig, dataset: str, data_dir: str | None = None,
                      channels: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                      max_windows: int | None = None, spec: dict[str, Any] | None = None,
                      zero_shot_scaling: str | None = None, max_nodes: int | None = None) -> tuple[DataConfig, str]:
    """``(config, protocol)``: the trained recipe's data config pointed at ``dataset`` (at most ``max_windows``
    windows per split and ``max_nodes`` nodes -- series, for a channel-independent model -- seeded as the builder
    samples them; default all).

    ``zero_shot_scaling`` (``window`` / ``train``) sets ``scaling`` when ``dataset`` is not a training dataset;
    None keeps the recipe's. In-domain the recipe's scaling always applies.

    In-domain, the recipe's data folder, channels, time range and dataset specification (``dataset_freq``,
    ``dataset_series_start``, ``dataset_adjacency``, ...) apply unless given; zero-shot, only the given ones.
    ``spec`` holds the given specification as :func:`~st_instruct.data.loaders.get_dataset` keywords. The recipe's
    rationale teacher is dropped: the scored splits are direct samples either way.
    """
    corpus = trained.corpus()  # what the forecaster was trained on: leave_out is not in it
    entry = next((e for e in corpus if _same_dataset(dataset, e.name)), None)
    in_domain = entry is not None
    protocol = "in-domain" if in_domain else f"zero-shot (trained on {', '.join(e.name for e in corpus)})"
    spec = spec or {}
    unknown = sorted(set(spec) - set(DATASET_SPEC_KEYS))
    if unknown:
        raise ValueError(f"unknown dataset specification keys {unknown}; known: {', '.join(DATASET_SPEC_KEYS)}")
    defaults = DataConfig()
    spec_fields = {f"dataset_{key}": spec[key] if key in spec else (
        getattr(trained, f"dataset_{key}") if in_domain else getattr(defaults, f"dataset_{key}"))
        for key in DATASET_SPEC_KEYS}
    for flag, count in (("--max-windows", max_windows), ("--max-nodes", max_nodes)):
        if count is not None and count < 1:
            raise ValueError(f"{flag} must be >= 1, found {count}")
    # the builder's samples: a count > 1, or a fraction; a tiny fraction keeps exactly one
    window_sample = None if max_windows is None else (float(max_windows) if max_windows > 1 else 1e-9)
    node_sample = None if max_nodes is None else (float(max_nodes) if max_nodes > 1 else 1e-9)
    trained_channels = (entry.channels or trained.dataset_channels) if in_domain else None
    config = trained.for_one_dataset(
        dataset,
        dataset_dir=data_dir if data_dir is not None else (trained.dataset_dir if in_domain else None),
        dataset_channels=list(channels) if channels else trained_channels,
        dataset_start=start if start is not None else (trained.dataset_start if in_domain else None),
        dataset_end=end if end is not None else (trained.dataset_end if in_domain else None),
        node_sample=node_sample, window_sample=window_sample, streaming=False,
        rationale_teacher="none",  # only training answers carry rationales; the scored splits never do
        scaling=zero_shot_scaling if zero_shot_scaling is not None and not in_domain else trained.scaling,
        **spec_fields)
    return config, protocol


def report_rows(task: Task, models: Sequence[str] | None, control_rows: Sequence[str] = (),
                generate_rationales: bool = False, zero_shot: bool = False,
                pretrained_encoder: bool = False) -> list[str]:
    """The rows an evaluation reports: the forecaster, its generated-rationale forecast, its controls
    (``control_rows``, as :func:`read_control` names them), the baselines ``models`` (default every one ``task``
    offers), with ``pretrained_encoder`` the imputation row :data:`~st_instruct.protocols.imputation.MAE_ENCODER_ROW`
    and, zero-shot, the same baselines fitted on the source (``NAME@source``); a baseline that cannot run is reported
    skipped."""
    baselines = list(task.baselines) if models is None else list(models)
    return [MODEL_ROW, *([GENERATED_ROW] if generate_rationales else []), *control_rows, *baselines,
            *([MAE_ENCODER_ROW] if pretrained_encoder else []),
            *([f"{name}{SOURCE_SUFFIX}" for name in baselines] if zero_shot else [])]


def check_plot_models(plot_models: Sequence[str], rows: Sequence[str]) -> None:
    """``ValueError`` (one line naming the known ``rows``) for a name of ``plot_models`` not among ``rows``."""
    unknown = [name for name in plot_models if name not in rows]
    if unknown:
        raise ValueError(f"--plot-models {' '.join(unknown)}: not a row of this evaluation; known: {', '.join(rows)}")


def _source_baselines(trained: DataConfig, target: Any, models: Sequence[str] | None, split: str, progress: bool,
                      seed: int, task: Task) -> tuple[dict[str, dict], dict[str, Any]]:
    """The baselines fitted on the source datasets of ``trained`` (each windowed as the recipe windows it) and
    scored on ``target`` by ``task`` (:func:`~st_instruct.evaluation.baselines.run_source_baselines`; default the
    baselines it offers); from several sources only the series-agnostic ones fit, the others are skipped with the
    reason."""
    names = list(task.baselines) if models is None else list(models)
    sources = [prepare_windows(entry.name, trained.history, trained.horizon, trained.split,
                               entry.channels or trained.dataset_channels, trained.dataset_start, trained.dataset_end,
                               stride=trained.stride, data_dir=trained.dataset_dir, spec=dataset_spec(trained))
               for entry in trained.corpus()]
    return run_source_baselines(sources, target, names, split=split, progress=progress, seed=seed, task=task)


def unseen_channels(model_dir: str | Path, trained: DataConfig, channels: Sequence[str]) -> list[str]:
    """The ``channels`` of an input that a channel-independent forecaster never trained on: its series are still
    forecast (the identity is the channel's name, its code read from the text), but no learned embedding of that name
    exists. Names compare as the code keys them (stripped, lower-case)."""
    seen = {name.strip().lower() for profile in read_data_profiles(model_dir, trained).values()
            for name in profile.get("node_channels") or profile["channels"]}
    return [name for name in channels if name.strip().lower() not in seen]


def _per_channel(pred: np.ndarray, covered: np.ndarray, series_per_node: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pred [B, P, N, C], covered [B, N, C])`` from :func:`scatter_predictions`' ``[B, P, N', C']`` and
    ``[B, N']``: a channel-independent model's series ``n * C + c`` (``series_per_node`` = C, ``C'`` = 1) back at
    node ``n``, channel ``c``; otherwise every channel of a covered node is covered."""
    batch, steps, nodes, channels = pred.shape
    if series_per_node == 1:
        return pred, np.repeat(covered[:, :, None], channels, axis=2)
    return (pred.reshape(batch, steps, nodes // series_per_node, series_per_node),
            covered.reshape(batch, nodes // series_per_node, series_per_node))


def _generated_forecasts(model: Any, tokenizer: Any, collator: Any, samples: Any, starts: np.ndarray,
                         num_nodes: int, batch_size: int, broadcast_channels: bool, max_new_tokens: int,
                         progress: bool = True) -> dict[str, Any]:
    """:func:`scatter_predictions` of the forecasts read after a generated rationale (progress bar per sample),
    with the first three texts."""
    examples: list[dict[str, Any]] = []

    def predict(batch: dict[str, Any]) -> Any:
        texts, forecast = generate_forecast(model, tokenizer, batch, max_new_tokens=max_new_tokens)
        examples.extend({"text": text} for text in texts[:max(0, 3 - len(examples))])
        return forecast

    pred, covered, seconds = scatter_predictions(model, collator, samples, starts, num_nodes, batch_size,
                                                 broadcast_channels, predict=predict, progress=progress,
                                                 desc="generating rationales")
    for example, sample in zip(examples, samples, strict=False):
        example.update(sample_id=sample["sample_id"], window_start=int(sample["window_start"]))
    return {"pred": pred, "covered": covered, "seconds": seconds, "examples": examples}


def evaluate_forecaster(model_dir: str | Path, dataset: str, data_dir: str | None = None,
                        channels: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                        max_windows: int | None = None, max_nodes: int | None = None, batch_size: int = 16,
                        split_name: str = "test",
                        models: Sequence[str] | None = None, progress: bool = True, seed: int = 0,
                        broadcast_channels: bool = False, spec: dict[str, Any] | None = None,
                        controls: Sequence[str | Path] = (), zero_shot_scaling: str = "window",
                        generate_rationales: bool = False, max_new_tokens: int = 384,
                        plot_models: Sequence[str] | None = None, missing_pattern: str | None = None,
                        tta: Sequence[TTASettings] = (), pretrained_encoder: str | Path | None = None,
                        history_fill: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score the forecaster in ``model_dir`` and the baselines ``models`` (default all) on the same windows.

    ``max_windows`` / ``max_nodes``: score a seeded subset of the split's windows / of the nodes (series, for a
    channel-independent model); every row is scored on exactly the covered (window, node) pairs, and the baselines
    are still fitted on every node.

    ``controls``: folders of controls of the forecaster's recipe (:func:`read_control`; at most one of each kind),
    which predict exactly the forecaster's samples and are reported as ``st_forecaster_no_llm`` /
    ``st_forecaster_random_llm``; ``report["controls"]`` maps each row to its folder.

    ``zero_shot_scaling``: ``window`` (strict zero-shot) or ``train`` (the target's train split), for a dataset
    the forecaster was not trained on (module docstring); a few-shot folder on its target keeps its recipe's.

    ``generate_rationales`` (AirGPT students): also score the forecast read after a rationale the model generates
    itself (:func:`~st_instruct.models.rationale.generate_forecast`, at most ``max_new_tokens``) as
    ``st_forecaster_generated``; ``report["generated_rationales"]`` keeps the first three texts with their windows.

    ``tta``: also score the forecaster and each control under test-time adaptation, once per settings given
    (:mod:`st_instruct.training.tta`: ``steps`` steps per batch in ``mode``, the recipe's ``tta_parameters``; each
    run starts from the trained weights), the test samples in time order, as rows ``st_forecaster+tta-<mode>``
    (:func:`~st_instruct.model_dir.tta_row`) beside the plain ones, on the same windows; ``report["tta"]`` says per
    mode what ran, what it tuned and the seconds it adds per window.

    ``missing_pattern`` / ``history_fill``: the recipe's keys of those names for this evaluation. On a forecaster
    (sparse-history forecasting) the pattern hides entries of every history it reads; the targets are scored on
    everything observed. The baselines fit on the series as the forecaster was trained -- with the pattern's gaps
    where its recipe had one, else the full train split (the gaps only outside it) -- and read the same sparse
    histories; ``history_fill: forward`` fills them for the forecaster and the baselines alike
    (:meth:`~st_instruct.data.windows.STWindows.forward_filled`: impute-then-forecast). ``report["missing_pattern"]``
    and ``report["history_fill"]`` say so.

    ``pretrained_encoder`` (imputation): also score a masked-autoencoder folder of ``st-instruct pretrain``
    (encoder + decoder alone, no LLM) as the row ``mae_encoder``
    (:func:`~st_instruct.protocols.imputation.pretrained_encoder_rows`; skipped with the reason where it cannot fill
    the windows); target-fitted when pretrained on this dataset's train split, else source-fitted.

    ``plot_models``: the models the forecast figures will draw
    (:func:`~st_instruct.evaluation.report.write_evaluation_outputs`), checked against the rows this evaluation
    reports (:func:`report_rows`) before any slow work; ``ValueError`` naming those rows otherwise.

    ``progress``: bars for the predictions of the forecaster and of each control, the generated rationales and
    the baselines.

    ``spec``: the dataset specification given for this evaluation (``get_dataset`` keywords such as ``freq``,
    ``series_start``); in-domain the recipe's own specification fills the rest (:func:`evaluation_config`).

    ``broadcast_channels`` lets a multi-channel model forecast a one-channel dataset (zero-shot across modes, e.g.
    taxi pickups/drop-offs -> loop speeds): the series fills every input channel and the outputs are averaged. A
    few-shot folder (``few_shot.json``, :mod:`st_instruct.protocols.few_shot`) evaluated on its target dataset is
    reported as few-shot, with the baselines fitted on the same few-shot train windows.

    Returns ``(report, arrays)``: the report of :func:`~st_instruct.protocols.baselines.make_report` with the
    forecaster as ``"st_forecaster"`` and ``report["protocol"]``; ``arrays`` holds ``target``, ``mask``,
    ``predictions`` (``{model: [B, P, N, C]}``), ``starts`` (each window's first history step), ``times``,
    ``node_names`` and ``units`` (one per channel) for
    :func:`~st_instruct.evaluation.report.write_evaluation_outputs`.
    """
    read_backbone_source(model_dir)  # names the missing files before anything slow
    control_rows = {read_control(folder, model_dir): Path(folder) for folder in controls}
    if len(control_rows) < len(controls):
        raise ValueError(f"--controls holds two folders of the same control kind ({', '.join(map(str, controls))}); "
                         "pass at most one no_llm and one random_llm control")
    trained = trained_data_config(model_dir)
    if generate_rationales:
        require_rationale_training(model_dir, trained, "--generate-rationales")
    modes = [settings.mode for settings in tta]
    if len(set(modes)) < len(modes):
        raise ValueError(f"--tta-mode names a mode twice ({' '.join(modes)}); name each at most once")
    unsupervised = [mode for mode in modes if mode != "matured"]
    saved = load_model_config(model_dir)
    if unsupervised and not (isinstance(saved, STForecasterConfig) and saved.head.reconstruction_head):
        raise ValueError(f"--tta-mode {unsupervised[0]} adapts by masked reconstruction, and the forecaster in "
                         f"{model_dir} has no reconstruction path: train it with reconstruction_head: true and "
                         "reconstruction_weight > 0 (recipes/urbanmind_tta.yaml), or use --tta-mode matured")
    config, protocol = evaluation_config(trained, dataset, data_dir, channels, start, end, max_windows, spec,
                                         zero_shot_scaling, max_nodes)
    if missing_pattern is not None:
        config = dataclasses.replace(config, missing_pattern=missing_pattern)
    imputing = config.task == "imputation"
    if history_fill is not None and history_fill != "none" and imputing:
        raise ValueError(f"--history-fill fills a forecaster's history, but the model in {model_dir} imputes "
                         "(task: imputation): drop the flag")
    if history_fill is not None:
        config = dataclasses.replace(config, history_fill=history_fill)
    if pretrained_encoder is not None and not imputing:
        raise ValueError(f"--pretrained-encoder adds an imputation row, but the model in {model_dir} forecasts "
                         f"(task: {config.task}); drop the flag or evaluate an imputation model")
    kind = "zero-shot" if protocol.startswith("zero-shot") else "in-domain"
    few_shot = read_few_shot(model_dir)
    if few_shot is not None and few_shot["dataset"] == dataset:
        kind, config = "few-shot", dataclasses.replace(config, scaling=trained.scaling)
        adapted = {"whole": "", "prompt": "; prompt tuning only (soft prompt and head output)",
                   "scratch": "; trained from scratch on them"}[few_shot.get("plan", "whole")]
        protocol = (f"few-shot ({few_shot['fraction']:g} of the train split: the first {few_shot['train_windows']} "
                    f"windows; pre-trained on {', '.join(few_shot['pretrained_on'])}{adapted})")
    task = get_task(config.task)
    if plot_models is not None:
        check_plot_models(plot_models, report_rows(task, models, list(control_rows), generate_rationales,
                                                   zero_shot=kind == "zero-shot" and not imputing,
                                                   pretrained_encoder=pretrained_encoder is not None))
    windows = prepare_windows(dataset, config.history, config.horizon, config.split, config.dataset_channels,
                              config.dataset_start, config.dataset_end, stride=config.stride,
                              data_dir=config.dataset_dir, spec=dataset_spec(config))
    if split_name not in windows.starts:
        raise ValueError(f"unknown split {split_name!r}; the splits are {sorted(windows.starts)}")
    data = windows.data
    trained_channels = saved.channels  # checked before the (slow) model load
    # a universal forecaster reads every channel of every node as a one-channel series: any channel count
    series_per_node = data.num_channels if config.channel_independent else 1
    if broadcast_channels and config.channel_independent:
        raise ValueError(f"--broadcast-channels feeds one channel to a multi-channel model, but the forecaster in "
                         f"{model_dir} reads every channel as its own series (channel_independent): drop the flag")
    if broadcast_channels and data.num_channels != 1:
        raise ValueError(f"--broadcast-channels feeds a one-channel dataset to the model, but {dataset!r} has "
                         f"{data.num_channels} channels {data.channels}; pick one with --channels")
    if data.num_channels // series_per_node != trained_channels and not broadcast_channels:
        raise ValueError(f"dataset {dataset!r} has {data.num_channels} channel(s) {data.channels}, but the forecaster "
                         f"in {model_dir} was trained on {trained_channels}; pick a dataset (or --channels) "
                         "with as many channels as the model, or --broadcast-channels for a one-channel dataset")
    if windows.num_windows(split_name) == 0:
        lo, hi = windows.borders[split_name]
        raise ValueError(f"dataset {dataset!r} has no {split_name} window: the {split_name} split has {hi - lo} "
                         f"steps ({lo}..{hi}) and a window needs {config.history} + {config.horizon}; choose another "
                         "--split-name, or a recipe split with a longer one")
    model, tokenizer = load_forecaster(model_dir)
    samples = build_dataset(config, tokenizer)[split_name]
    starts = windows.starts[split_name]
    backbone_name = read_backbone_source(model_dir)[0].model_name_or_path
    broadcast = trained_channels if broadcast_channels else None
    num_series = data.num_nodes * series_per_node  # the nodes of the samples: series n * C + c in a universal one
    pred, covered, predict_seconds = scatter_predictions(
        model, build_collator(config, model, tokenizer, backbone_name, broadcast), samples, starts, num_series,
        batch_size, broadcast_channels, progress=progress, desc=f"predicting ({MODEL_ROW})")
    pred, covered = _per_channel(pred, covered, series_per_node)
    generated: dict[str, Any] = {}
    if generate_rationales:
        generated = _generated_forecasts(model, tokenizer, build_collator(config, model, tokenizer, backbone_name,
                                                                          broadcast),
                                         samples, starts, num_series, batch_size, broadcast_channels,
                                         max_new_tokens, progress)
        generated["pred"], generated["covered"] = _per_channel(generated["pred"], generated["covered"],
                                                               series_per_node)
        if not np.array_equal(generated["covered"], covered):
            raise RuntimeError("the generated forecasts covered other (window, node) pairs than the single pass")
    rows = np.flatnonzero(covered.any(axis=(1, 2)))  # the evaluated windows
    hidden = series_hidden(windows, config.missing_pattern, config.sample_seed)
    if imputing:
        readable, _ = readable_windows(windows, split_name, hidden)
        unreadable = int(len(rows) - np.isin(rows, readable).sum())
        rows = rows[np.isin(rows, readable)]
        target = imputation_target(windows, split_name, rows, hidden)
    else:
        target = windows.batch(split_name, rows)
    mask = target["y_mask"] & covered[rows][:, None]
    pred = np.nan_to_num(pred[rows])  # uncovered nodes are masked out
    control_preds, control_seconds = {}, {}
    for name, folder in control_rows.items():
        control, control_tokenizer = load_forecaster(folder)
        if control_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"--controls {folder} has another tokenizer than {model_dir}, so it cannot read the same "
                             "samples; train the control from the same recipe")
        found, control_covered, control_seconds[name] = scatter_predictions(
            control, build_collator(config, control, tokenizer, backbone_name, broadcast), samples, starts,
            num_series, batch_size, broadcast_channels, progress=progress, desc=f"predicting ({name})")
        found, control_covered = _per_channel(found, control_covered, series_per_node)
        if not np.array_equal(control_covered, covered):  # the same samples: cannot differ unless the code is wrong
            raise RuntimeError(f"the control {folder} covered other (window, node) pairs than the forecaster")
        control_preds[name] = np.nan_to_num(found[rows])
    adapted: dict[str, dict[str, Any]] = {}
    for settings in tta:
        for name, folder in {MODEL_ROW: Path(model_dir), **control_rows}.items():
            adapting = load_forecaster(folder)[0]  # each mode from the trained weights (carry changes them)
            found = adapted[tta_row(name, settings.mode)] = _adapted_forecasts(
                adapting, folder, settings, build_collator(config, adapting, tokenizer, backbone_name, broadcast),
                samples, starts, num_series, batch_size, broadcast_channels, windows, seed, progress)
            if "pred" in found:
                found["pred"], found_covered = _per_channel(found["pred"], found["covered"], series_per_node)
                if not np.array_equal(found_covered, covered):
                    raise RuntimeError(f"the adapted {name} covered other (window, node) pairs than the forecaster")
                found["pred"] = np.nan_to_num(found["pred"][rows])
    # sparse-history forecasting: the baselines fit on and read the series as sparse as the forecaster's; every row
    # is scored on the truly observed targets (target, above, from the full series)
    sparse = windows
    if not imputing:
        if trained.missing_pattern is None:  # trained on the full series: the gaps only where it did not train
            hidden = hidden & ~windows.split_steps("train")
        sparse = windows.hiding(hidden)
        if config.history_fill == "forward":
            sparse = sparse.forward_filled()
    fit_windows = sparse
    if protocol.startswith("few-shot"):
        fit_windows = fit_windows.first_train_windows(few_shot["train_windows"])
    offered = list(task.baselines) if models is None else models
    if imputing:  # fitted on the train split's readable entries; their predictions already of the rows
        baseline_results = imputation_baselines(fit_windows, split_name, rows, hidden, offered, seed)
        if pretrained_encoder is not None:
            baseline_results.update(pretrained_encoder_rows(pretrained_encoder, windows, split_name, rows, hidden))
        baseline_preds = {name: found["pred"] for name, found in baseline_results.items() if "pred" in found}
    else:
        # scored on the evaluated windows only: all of a split's of 8,600 sensors would be gigabytes
        baseline_results, baseline_preds = run_baselines(fit_windows.keeping_windows(split_name, rows), offered,
                                                         split=split_name, progress=progress, seed=seed,
                                                         return_predictions=True, task=task)
    fitted_on = {name: found.get("fitted_on", data.name) for name, found in baseline_results.items()}
    if kind == "zero-shot" and not imputing:
        source_results, source_preds = _source_baselines(trained, sparse.keeping_windows(split_name, rows), models,
                                                         split_name, progress, seed, task)
        baseline_results.update(source_results)
        baseline_preds.update(source_preds)
        fitted_on.update({name: ", ".join(e.name for e in trained.corpus()) for name in source_results})
    results: dict[str, dict] = {MODEL_ROW: {**task.score(pred, target["y"], mask), "fit_seconds": 0.0,
                                             "predict_seconds": predict_seconds}}
    predictions = {MODEL_ROW: pred}
    if generated:
        predictions[GENERATED_ROW] = np.nan_to_num(generated["pred"][rows])
        results[GENERATED_ROW] = {**task.score(predictions[GENERATED_ROW], target["y"], mask),
                                   "fit_seconds": 0.0, "predict_seconds": generated["seconds"]}
    for name, found in control_preds.items():
        results[name] = {**task.score(found, target["y"], mask), "fit_seconds": 0.0,
                         "predict_seconds": control_seconds[name]}
        predictions[name] = found
    plain_seconds = {MODEL_ROW: predict_seconds, **control_seconds}
    for name, found in adapted.items():
        if "skipped" in found:
            results[name] = {"skipped": found["skipped"]}
            continue
        results[name] = {**task.score(found["pred"], target["y"], mask), "fit_seconds": 0.0,
                         "predict_seconds": found["seconds"]}
        predictions[name] = found["pred"]
    for name, result in baseline_results.items():
        if "skipped" in result:
            results[name] = result
            continue
        predictions[name] = baseline_preds[name]
        results[name] = {**task.score(predictions[name], target["y"], mask),
                         "fit_seconds": result["fit_seconds"], "predict_seconds": result["predict_seconds"]}
    report = make_report(windows, results, task)
    for name, found in baseline_results.items():  # a pretrained row's kind depends on its corpus, not its name
        if "kind" in found and name in report["results"]:
            report["results"][name]["kind"] = found["kind"]
    report["windows"][split_name] = int(len(rows))
    report["protocol"] = protocol
    report["protocol_version"] = PROTOCOL_VERSION[kind]
    report["scaling"] = config.scaling
    report["baselines_fitted_on"] = {name: fitted_on[name] for name, result in baseline_results.items()
                                     if "skipped" not in result and row_kind(name) != "input-only"}
    report["model"] = str(model_dir)
    report["trained_on"] = [entry.name for entry in trained.corpus()]
    if config.missing_pattern is not None:
        report["missing_pattern"] = config.missing_pattern
        report["scored_entries"] = int(mask.sum())
    if not imputing and (config.missing_pattern is not None or config.history_fill != "none"):
        report["history_fill"] = config.history_fill
    if imputing:
        report["windows_skipped"] = {"nothing left to read": unreadable}
        if kind == "zero-shot":
            report["source_fitted"] = "not run for imputation: each baseline fits on the target's train split"
    if generated:
        report["generated_rationales"] = generated["examples"]
    if control_rows:
        report["controls"] = {name: str(folder) for name, folder in control_rows.items()}
    if tta:
        report["tta"] = {settings.mode: tta_report(settings, {name: found for name, found in adapted.items()
                                                              if name.endswith(TTA_ROW_SEPARATOR + settings.mode)},
                                                    plain_seconds, len(rows)) for settings in tta}
    if protocol.startswith("few-shot"):
        report["few_shot"] = few_shot
        report["windows"]["train"] = few_shot["train_windows"]
    if config.channel_independent:
        report["channels_unseen"] = unseen_channels(model_dir, trained, data.channels)
    if broadcast_channels:
        report["broadcast_channels"] = f"one channel fed to the model's {trained_channels} and its outputs averaged"
    arrays = {"target": target["y"], "mask": mask, "predictions": predictions, "starts": starts[rows],
              "times": window_times(windows, split_name, task)[rows], "node_names": data.node_names,
              "units": list(data.units)}
    return report, arrays


def _adapted_forecasts(model: Any, folder: Path, tta: TTASettings, collator: Any, samples: Any, starts: np.ndarray,
                       num_series: int, batch_size: int, broadcast_channels: bool, windows: Any, seed: int,
                       progress: bool) -> dict[str, Any]:
    """``model``'s forecasts of ``samples`` under test-time adaptation (``folder``'s recipe says what it tunes),
    the samples in time order: ``{"pred", "covered", "seconds", "trainable", "matured_log"}`` as
    :func:`scatter_predictions` gives them, or ``{"skipped": reason}`` when the recipe's ``tta_parameters`` select
    nothing of this model (a control without a backbone has no backbone norms or adapter)."""
    index = windows.data.time_index()
    step_time = (lambda steps: np.asarray(index.values)[steps]) if index is not None else (lambda steps: steps)
    try:
        adapter = TestTimeAdapter(model, adaptation_config(folder), tta, windows.history, windows.horizon,
                                  step_time=step_time, seed=seed)
    except ValueError as err:
        if model.backbone is None:
            return {"skipped": str(err)}
        raise
    order = np.argsort(np.asarray(samples["window_start"]), kind="stable")  # carry / matured: time order
    try:
        pred, covered, seconds = scatter_predictions(
            model, collator, samples.select(order), starts, num_series, batch_size, broadcast_channels,
            predict=adapter.predict, progress=progress, desc=f"predicting with test-time adaptation ({tta.mode})")
    finally:
        adapter.close()
    return {"pred": pred, "covered": covered, "seconds": seconds, "trainable": adapter.trainable,
            "learning_rate": adapter.learning_rate, "matured_log": adapter.matured_log}


def tta_report(tta: TTASettings, adapted: dict[str, dict[str, Any]], plain_seconds: dict[str, float],
               windows: int) -> dict[str, Any]:
    """``report["tta"][mode]``: the steps, what each adapted row of ``tta.mode`` tuned, the seconds adaptation adds
    per window beside its plain row's, and for ``matured`` the labels it used."""
    base = {name: name.split(TTA_ROW_SEPARATOR)[0] for name in adapted}
    done = {name: found for name, found in adapted.items() if "skipped" not in found}
    out: dict[str, Any] = {
        "steps": tta.steps,
        "learning_rate": next((found["learning_rate"] for found in done.values()), tta.learning_rate),
        "labels": ("targets of earlier test samples whose every step lies at or before the batch's issue time"
                   if tta.mode == "matured" else "none: masked reconstruction of each batch's own history"),
        "trainable": {name: found["trainable"] for name, found in done.items()},
        "seconds_added_per_window": {name: (found["seconds"] - plain_seconds[base[name]]) / max(windows, 1)
                                     for name, found in done.items()}}
    if tta.mode == "matured":
        out["matured_samples"] = {name: sum(step["samples"] for step in found["matured_log"])
                                  for name, found in done.items()}
    return out


def explain_window(model_dir: str | Path, dataset: str, window: int, node: int | None = None,
                   split_name: str = "test", max_new_tokens: int = 384, data_dir: str | None = None
                   ) -> dict[str, Any]:
    """The rationale the forecaster in ``model_dir`` generates for window ``window`` (index within ``split_name``)
    of ``dataset``, beside its forecast and the truth (``st-instruct explain``).

    Returns ``text``, ``nodes`` (the names of the sample's nodes; with ``node`` only that one), ``channels``,
    ``forecast`` / ``truth`` ``[P, N', C]`` in original units (truth NaN where missing), ``times`` (each horizon
    step's timestamp, or step numbers) and ``sample_id``. A node-level recipe needs ``node`` (its sample is one
    node's)."""
    read_backbone_source(model_dir)
    trained = trained_data_config(model_dir)
    require_rationale_training(model_dir, trained, "explain")
    config, _ = evaluation_config(trained, dataset, data_dir)
    windows = prepare_windows(dataset, config.history, config.horizon, config.split, config.dataset_channels,
                              config.dataset_start, config.dataset_end, stride=config.stride,
                              data_dir=config.dataset_dir, spec=dataset_spec(config))
    if split_name not in windows.starts:
        raise ValueError(f"unknown split {split_name!r}; the splits are {sorted(windows.starts)}")
    count = windows.num_windows(split_name)
    if not 0 <= window < count:
        raise ValueError(f"--window {window} is outside the {count} {split_name} windows of {dataset!r} (0 .. "
                         f"{count - 1})")
    start = int(windows.starts[split_name][window])
    names = windows.data.node_names or [str(i) for i in range(windows.data.num_nodes)]
    if node is not None and not 0 <= node < windows.data.num_nodes:
        raise ValueError(f"--node {node} is outside the {windows.data.num_nodes} nodes of {dataset!r}")
    model, tokenizer = load_forecaster(model_dir)
    samples = build_dataset(config, tokenizer)[split_name]
    starts = np.asarray(samples["window_start"])
    candidates = [int(i) for i in np.flatnonzero(starts == start)]
    if config.granularity == "node":
        if node is None:
            raise ValueError("this forecaster reads one node per sample (granularity: node): pass --node K")
        candidates = [i for i in candidates if int(samples[i]["node_index"][0]) == node]
    if not candidates:
        raise ValueError(f"no {split_name} sample of {dataset!r} starts at window {window} (step {start})")
    sample = samples[candidates[0]]
    backbone_name = read_backbone_source(model_dir)[0].model_name_or_path
    batch = build_collator(config, model, tokenizer, backbone_name)([sample])
    texts, forecast = generate_forecast(model, tokenizer, batch, max_new_tokens=max_new_tokens)
    index = np.asarray(sample["node_index"])
    truth = windows.batch(split_name, np.array([window]))
    values = np.where(truth["y_mask"][0], truth["y"][0], np.nan)[:, index]  # [P, N', C]
    if node is not None and node not in index:
        raise ValueError(f"node {node} is not in the sample of window {window} (its nodes: {index.tolist()})")
    keep = slice(None) if node is None else [int(np.flatnonzero(index == node)[0])]
    return {"text": texts[0], "sample_id": sample["sample_id"], "nodes": [names[i] for i in index[keep]],
            "channels": list(windows.data.channels), "forecast": forecast[0].numpy()[:, keep],
            "truth": values[:, keep], "times": window_times(windows, split_name)[window]}
