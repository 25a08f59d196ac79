"""``st-instruct <verb>``: the command-line face of the package.

Verbs: ``demo`` (the README's main job), ``data list | inspect | download``, ``baselines``, ``build-data``,
``train``, ``pretrain`` (the ST encoder alone), ``evaluate``, ``predict`` (forecast new values), ``explain``,
``render``, ``recipes``, ``push``.
Errors caused by the user's input (unknown dataset, bad file, bad split) are printed as one clear line with
exit code 2 instead of a traceback.

Each verb imports what it uses inside its ``_cmd_*`` function: the package's modules pull in torch, transformers and
datasets (seconds), which ``st-instruct recipes`` or ``data list`` never need, so the face stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from st_instruct.console import run_reporting_input_errors


def _add_window_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--history", type=int, default=12, help="history length L in steps (default 12)")
    parser.add_argument("--horizon", type=int, default=12, help="forecast horizon P in steps (default 12)")
    parser.add_argument("--split", default="7:1:2", help="chronological train:validation:test ratios")
    parser.add_argument("--channels", nargs="+", default=None, help="channel names or indices to keep")
    parser.add_argument("--start", default=None, help="keep steps from this date on (e.g. 2019-01-01)")
    parser.add_argument("--end", default=None, help="keep steps before this date (e.g. 2020-01-01)")


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="folder holding the named dataset's files")


def _add_dataset_spec_args(parser: argparse.ArgumentParser) -> None:
    """The dataset specification flags (``st_instruct.data.loaders.DATASET_SPEC_KEYS``), the same in every verb;
    ``build-data`` / ``train`` take them too, as the recipe keys ``dataset_<key>``
    (:func:`st_instruct.configs.dataset_flags_as_recipe_keys`)."""
    group = parser.add_argument_group("dataset specification (for a series file; applies on top of a named one)")
    group.add_argument("--adjacency", default=None, help="N x N matrix (.csv/.npy/.npz) or from,to[,cost] edge list")
    group.add_argument("--freq", default=None, help="the step of a series without timestamps, e.g. 15min, 1h, 1D")
    group.add_argument("--series-start", default=None,
                       help="timestamp of the first step of a series without timestamps, e.g. 2024-03-04")
    group.add_argument("--null-value", default=None,
                       help="value meaning 'not observed' besides NaN, e.g. 0 (nan: none); default the dataset's")
    group.add_argument("--channel-names", nargs="+", default=None, help="one name per channel (default ch0 ...)")
    group.add_argument("--nodes", default=None, help="nodes .csv: a name column, optionally latitude,longitude or "
                       "x,y; one row per node in node order")
    group.add_argument("--no-calendar", action="store_true", help="run without a calendar: time features zero, "
                       "calendar baselines skipped (without it an unknown calendar is refused, never assumed)")


def _spec_kwargs(args: argparse.Namespace) -> dict:
    """The dataset specification flags given, as ``get_dataset`` keywords."""
    from st_instruct.configs import DATASET_SPEC_KEYS

    values = {key: getattr(args, key, None) for key in DATASET_SPEC_KEYS}
    return {key: value for key, value in values.items() if value is not None and value is not False}


def _cmd_data_list(args: argparse.Namespace) -> None:
    from st_instruct.data.loaders import list_datasets

    rows = list_datasets()
    keys = ["name", "shape", "freq", "city", "where"]
    for r in rows:
        if r.get("where") is None:
            r["where"] = f"not here: st-instruct data download {r['name']}"
    table = [[str(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(keys, *table, strict=True)]
    for cells in [keys, *table]:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))


def _cmd_data_inspect(args: argparse.Namespace) -> None:
    from st_instruct.data.loaders import get_dataset

    data = get_dataset(args.dataset, data_dir=args.data_dir, **_spec_kwargs(args))
    print(json.dumps(data.summary(), indent=2, default=str))


def _cmd_data_download(args: argparse.Namespace) -> None:
    from st_instruct.data.registry import download_dataset

    path = download_dataset(args.name, cache_dir=args.cache_dir, expected_sha256=args.sha256,
                            allow_unverified=args.allow_unverified)
    print(f"{args.name}: ready in {path}")


def _check_json_output(args: argparse.Namespace) -> None:
    """``--json FILE`` can be written (a new file, or ``--overwrite``): checked before the slow work."""
    if args.json:
        from st_instruct.outputs import check_output_file

        check_output_file(args.json, args.overwrite)


def _run_baselines(dataset: str, args: argparse.Namespace) -> dict:
    from st_instruct.evaluation.report import write_results_json
    from st_instruct.protocols.baselines import baseline_report, prepare_windows

    _check_json_output(args)
    started = time.perf_counter()
    windows = prepare_windows(dataset, args.history, args.horizon, args.split, args.channels, args.start, args.end,
                              data_dir=getattr(args, "data_dir", None), spec=_spec_kwargs(args))
    report = baseline_report(windows, args.models, progress=not args.quiet, seed=args.seed)
    report["wall_seconds"] = round(time.perf_counter() - started, 2)
    _print_report(report)
    print(f"wall time {report['wall_seconds']:.1f} s")
    if args.json:
        print(f"wrote {write_results_json(report, args.json, args.overwrite)}")
    return report


def _print_report(report: dict) -> None:
    """The setup line, the results table (best MAE first) and the skipped baselines of a results report."""
    from st_instruct.evaluation.report import format_results_table, undefined_lines
    from st_instruct.tasks import report_task

    counts = ", ".join(f"{k} {v}" for k, v in report["windows"].items())
    protocol = f", {report['protocol']}" if report.get("protocol") else ""
    print(f"\n{report['dataset']} ({report['city']}){protocol}: {report['history']} -> {report['horizon']} steps, "
          f"split {report['split']} ({counts} windows), channels {report['channels']}")
    if report.get("calendar"):
        print(f"calendar: {report['calendar']}")
    print(format_results_table(report["results"], metrics=report_task(report).metrics))
    for line in undefined_lines(report["results"]):
        print(f"n/a {line.removeprefix('- ')}")
    for name, reason in report["skipped"].items():
        print(f"skipped {name}: {reason}")


def _cmd_baselines(args: argparse.Namespace) -> None:
    _run_baselines(args.dataset, args)


def _split_pretrain_flags(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Demo flags -> (those of the pretraining recipe: ``--pretrain_*`` with their values, the rest)."""
    pretrain, rest, i = [], [], 0
    while i < len(overrides):
        flag = overrides[i]
        takes_value = "=" not in flag and i + 1 < len(overrides) and not overrides[i + 1].startswith("--")
        group = overrides[i:i + 2] if takes_value else overrides[i:i + 1]
        (pretrain if flag.startswith("--pretrain_") else rest).extend(group)
        i += len(group)
    return pretrain, rest


def _cmd_demo(args: argparse.Namespace) -> None:
    from st_instruct.configs import parse_recipe, train_dataclasses
    from st_instruct.shipped import shipped_dir

    recipes = shipped_dir("recipes")
    print("st-instruct demo: pretrain the ST encoder of the embedded synthetic city (demo_pretrain.yaml: STID's "
          "fusion blocks, forecast objective, no LLM, ~20 s), train the LLM forecaster of demo_sft.yaml from it "
          "(SmolLM2 on the CPU, a few minutes) and its no-LLM control (the same encoder and head, the backbone "
          "removed, the same budget), then evaluate both beside every baseline on the same test windows.", flush=True)
    started = time.perf_counter()
    _check_json_output(args)
    pretrain_flags, recipe_flags = _split_pretrain_flags(args.overrides)
    if args.quiet:  # the training bars too: _cmd_train records disable_tqdm: true in the models' recipe.yaml
        from st_instruct.console import disable_library_progress_bars

        disable_library_progress_bars()
    output_dir = parse_recipe(train_dataclasses(), [str(recipes / "demo_sft.yaml"), *recipe_flags])[2].output_dir
    args.recipe, args.overrides = str(recipes / "demo_pretrain.yaml"), [
        *pretrain_flags, "--pretrain_output_dir", f"{output_dir}-pretrain"]
    encoder = _cmd_pretrain(args)
    args.recipe = str(recipes / "demo_sft.yaml")
    recipe_flags = [*recipe_flags, "--st_encoder_init", str(encoder)]
    args.overrides = recipe_flags
    args.model, args.dataset = _cmd_train(args), "synthetic"
    args.train_controls = ["no_llm"]
    _cmd_evaluate(args)
    print(f"demo done in {time.perf_counter() - started:.0f} s")


def _show_sample(sample: dict, tokenizer) -> str:
    """The exact text the model reads: the chat template applied when there is a tokenizer, else role headers."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(sample["messages"], tokenize=False)
    return "\n".join(f"[{m['role']}]\n{m['content']}" for m in sample["messages"])


def _cmd_build_data(args: argparse.Namespace) -> None:
    from st_instruct.configs import parse_recipe, train_dataclasses
    from st_instruct.models.backbones import build_teacher, get_tokenizer
    from st_instruct.outputs import check_writable, staged_output
    from st_instruct.samples.builder import build_dataset
    from st_instruct.samples.dataset_card import write_dataset_card
    from st_instruct.samples.st_tokens import add_st_tokens

    # a training recipe builds its own dataset: parse its training arguments too, and ignore them
    data_config, model_config, _ = parse_recipe(train_dataclasses(), [args.recipe, *args.overrides])
    tokenizer = None
    if model_config.model_name_or_path:
        tokenizer = get_tokenizer(model_config.model_name_or_path)
        add_st_tokens(tokenizer)
        if model_config.model_max_length:
            tokenizer.model_max_length = model_config.model_max_length
    output = Path(args.output or Path("outputs") / "data" / Path(args.recipe).stem)
    if not data_config.streaming:
        check_writable(output, args.overwrite, "--overwrite")  # before the build: fail fast
    started = time.perf_counter()
    dataset = build_dataset(data_config, tokenizer, teacher=build_teacher(data_config.rationale_teacher))
    seconds = time.perf_counter() - started
    if data_config.streaming:
        print(f"streaming dataset built in {seconds:.1f} s (an IterableDatasetDict is not saved to disk)")
    else:
        with staged_output(output, overwrite=args.overwrite, flag="--overwrite") as staging:
            dataset.save_to_disk(str(staging))
            write_dataset_card(staging, data_config, dataset)
        sizes = ", ".join(f"{split} {len(ds)}" for split, ds in dataset.items())
        print(f"built {sizes} samples in {seconds:.1f} s; saved to {output}")
    for split in ("train", "validation", "test"):
        if split not in dataset:
            continue
        sample = next(iter(dataset[split]))
        print(f"\n===== {split}: {sample['sample_id']} =====")
        print(_show_sample(sample, tokenizer))


def _cmd_train(args: argparse.Namespace) -> Path:
    from st_instruct.launch import MACHINE_FLAG_NAMES, MachineFlags, launch_training

    # --overwrite is a flag, not a recipe key: recipe.yaml is saved with the model and must not overwrite anything
    # when re-run. The demo trains through here too, in this process (its parser has no launch flags).
    overrides = args.overrides
    if args.quiet:  # the trainer's bar off (disable_tqdm, kept in recipe.yaml), the libraries' bars too
        from st_instruct.console import disable_library_progress_bars

        disable_library_progress_bars()
        overrides = [*overrides, "--disable_tqdm", "true"]
    machines = MachineFlags(*(getattr(args, name, None) for name in MACHINE_FLAG_NAMES))  # the demo has none
    return launch_training(args.recipe, overrides, getattr(args, "num_processes", None),
                           getattr(args, "accelerate_config", None), overwrite=args.overwrite, machines=machines)


def _cmd_pretrain(args: argparse.Namespace) -> Path:
    from st_instruct.configs import PRETRAIN_DATACLASSES, parse_recipe
    from st_instruct.pretraining.run import pretrain

    configs = parse_recipe(PRETRAIN_DATACLASSES, [args.recipe, *args.overrides])
    return pretrain(*configs, overwrite=args.overwrite, progress=not getattr(args, "quiet", False))  # demo --quiet


def _check_task(requested: str | None, trained: str, model: str | Path) -> None:
    """``--task`` of predict / evaluate: None, or the task the model in ``model`` was trained for (one line
    otherwise)."""
    if requested is not None and requested != trained:
        raise ValueError(f"--task {requested}: the model in {model} is trained for {trained}"
                         + ("; fill gaps with an imputation model (recipes/llm4hrs_impute.yaml)"
                            if requested == "imputation" else ""))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from st_instruct.evaluation.report import (
        check_evaluation_folder,
        protocol_lines,
        write_evaluation_outputs,
        write_results_json,
    )
    from st_instruct.model_dir import EVALUATIONS_FILE
    from st_instruct.outputs import check_can_create, check_writable
    from st_instruct.protocols.evaluate import evaluate_forecaster

    started = time.perf_counter()
    model_dir = Path(args.model)
    controls = args.controls or []
    if args.task is not None:
        from st_instruct.model_dir import trained_data_config

        _check_task(args.task, trained_data_config(model_dir).task, model_dir)
    # every output checked before the slow work: the results JSON, the evaluation folder and -- unless a few-shot
    # run makes a new one -- the model folder, where the evaluation is recorded
    _check_json_output(args)
    tta = []
    if args.tta_lr is not None and args.tta is None:
        raise ValueError("--tta-lr sets the test-time adaptation's learning rate; give --tta STEPS with it")
    if args.tta is not None:
        from st_instruct.training.tta import TTASettings

        tta = [TTASettings(args.tta, mode, args.tta_lr) for mode in args.tta_mode]
    if args.few_shot is None:
        if model_dir.is_dir():
            check_can_create(model_dir / EVALUATIONS_FILE)
        check_evaluation_folder(args.output or model_dir / f"eval-{Path(args.dataset).stem}")
    if args.quiet:
        from st_instruct.console import disable_library_progress_bars

        disable_library_progress_bars()
    if args.plot_models:  # before any training: evaluate_forecaster checks again with the protocol known
        from st_instruct.model_dir import MODEL_ROW, trained_data_config
        from st_instruct.protocols.controls import read_control
        from st_instruct.protocols.evaluate import check_plot_models, report_rows
        from st_instruct.tasks import get_task

        rows = [read_control(folder, model_dir) for folder in controls]
        rows += [f"{MODEL_ROW}_{kind}" for kind in args.train_controls or []]
        task = get_task(trained_data_config(model_dir).task)
        check_plot_models(args.plot_models, report_rows(task, args.models, rows, args.generate_rationales,
                                                        zero_shot=True,
                                                        pretrained_encoder=args.pretrained_encoder is not None))
    if args.train_controls:
        from st_instruct.protocols.controls import train_control

        controls += [str(train_control(model_dir, kind, overwrite=args.overwrite)) for kind in args.train_controls]
    if args.few_shot is not None:
        from st_instruct.protocols.controls import read_control
        from st_instruct.protocols.few_shot import few_shot_finetune

        for folder in controls:  # a wrong control is refused before any fine-tuning
            read_control(folder, model_dir)

        plan = "" if args.few_shot_plan == "whole" else f"-{args.few_shot_plan}"
        tuned = args.few_shot_output or model_dir.parent / f"{model_dir.name}-few-shot-{Path(args.dataset).stem}-" \
                                                           f"{args.few_shot:g}{plan}"
        # each control is fine-tuned on the same windows with the same steps, so its row stays a like-for-like one
        sources = [model_dir, *map(Path, controls)]
        outputs = [Path(tuned), *(Path(tuned).parent / f"{Path(tuned).name}-{Path(c).name}" for c in controls)]
        for output in outputs:  # every folder checked before the first fine-tuning
            check_writable(output, args.overwrite, "--overwrite", "an earlier few-shot model")
        tuned_dirs = []
        for source, output in zip(sources, outputs, strict=True):
            if not args.quiet:
                print(f"few-shot: fine-tuning {source} on the first {args.few_shot:g} of {args.dataset}'s train "
                      f"split into {output}", flush=True)
            tuned_dirs.append(few_shot_finetune(source, args.dataset, args.few_shot, output, data_dir=args.data_dir,
                                                channels=args.channels, start=args.start, end=args.end,
                                                steps=args.few_shot_steps, broadcast_channels=args.broadcast_channels,
                                                seed=args.seed, spec=_spec_kwargs(args), progress=not args.quiet,
                                                overwrite=args.overwrite, plan=args.few_shot_plan))
        model_dir, controls = tuned_dirs[0], [str(folder) for folder in tuned_dirs[1:]]
    report, arrays = evaluate_forecaster(model_dir, args.dataset, data_dir=args.data_dir, channels=args.channels,
                                         start=args.start, end=args.end, max_windows=args.max_windows,
                                         max_nodes=args.max_nodes,
                                         batch_size=args.batch_size, split_name=args.split_name, models=args.models,
                                         progress=not args.quiet, seed=args.seed,
                                         broadcast_channels=args.broadcast_channels, spec=_spec_kwargs(args),
                                         controls=controls, zero_shot_scaling=args.zero_shot_scaling,
                                         generate_rationales=args.generate_rationales,
                                         max_new_tokens=args.max_new_tokens, plot_models=args.plot_models,
                                         tta=tta, missing_pattern=args.missing_pattern,
                                         history_fill=args.history_fill, pretrained_encoder=args.pretrained_encoder)
    report["wall_seconds"] = round(time.perf_counter() - started, 2)
    report["split_name"] = args.split_name
    output = Path(args.output or model_dir / f"eval-{Path(args.dataset).stem}")  # model_dir: the few-shot one
    paths = write_evaluation_outputs(report, output, target=arrays["target"], predictions=arrays["predictions"],
                                     mask=arrays["mask"], node_names=arrays["node_names"], times=arrays["times"],
                                     units=arrays["units"], plot_models=args.plot_models)
    _print_report(report)
    for line in protocol_lines(report):
        print(line.removeprefix("- ").replace("**", ""))
    print(f"wall time {report['wall_seconds']:.1f} s; wrote {paths['results']}, {paths['report']} and the figures")
    if args.json:
        print(f"wrote {write_results_json(report, args.json, args.overwrite)}")
    from st_instruct.protocols.records import record_evaluation

    print(f"recorded in the model card {record_evaluation(model_dir, json.loads(paths['results'].read_text()))} "
          "(model-index)")


def _cmd_predict(args: argparse.Namespace) -> None:
    from st_instruct.data.loaders import get_dataset
    from st_instruct.inference import check_forecast_output, load_forecaster

    check_forecast_output(args.output, args.overwrite)  # before the slow work
    if args.quiet:
        from st_instruct.console import disable_library_progress_bars

        disable_library_progress_bars()
    forecaster = load_forecaster(args.model)
    data = get_dataset(args.input, **_spec_kwargs(args))
    _check_task(args.task, forecaster.data_config.task, args.model)
    if forecaster.data_config.task == "imputation":
        batch = {} if args.batch_size is None else {"batch_size": args.batch_size}
        imputed = forecaster.impute_data(data, **batch, progress=not args.quiet,
                                         profile_name=args.name, fill_gaps=args.fill_gaps)
        path = imputed.save(args.output, overwrite=args.overwrite)
        print(f"input: {imputed.routing}")
        if imputed.unfilled_windows:
            print(f"left {len(imputed.unfilled_windows)} window(s) of {forecaster.history} steps unfilled: nothing "
                  f"observed in them (first from step {imputed.unfilled_windows[0]})")
        print(f"filled {int(imputed.filled.sum())} of {int(imputed.missing.sum())} missing value(s), every "
              f"observed one kept as read; wrote {path}")
        return
    result = forecaster.forecast_data(data, every_window=args.every_window, batch_size=args.batch_size,
                                      rationale=args.rationale, max_new_tokens=args.max_new_tokens,
                                      progress=not args.quiet, profile_name=args.name, fill_gaps=args.fill_gaps,
                                      **({} if args.min_observed is None else {"min_observed": args.min_observed}))
    path = result.save(args.output, overwrite=args.overwrite)
    W, P, N, C = result.values.shape
    print(f"input: {result.routing}")
    if result.withheld:
        first = result.withheld[0]
        print(f"withheld {len(result.withheld)} of {W} window(s) (NaN in the output): too little of their history "
              f"observed, below --min-observed {result.min_observed:g} (first: window {first}, issued "
              f"{result.issued[first]}, {result.observed[first]:.0%} observed)")
    print(f"forecast {W - len(result.withheld)} window(s) x {P} steps x {N} nodes x {C} channel(s); wrote {path}")
    for item in result.rationales or []:
        node = "" if item["node"] is None else f", node {result.node_names[item['node']]}"
        print(f"\n===== rationale, window {item['window']}{node} =====\n{item['text']}")


def _cmd_explain(args: argparse.Namespace) -> None:
    from st_instruct.protocols.evaluate import explain_window

    found = explain_window(args.model, args.dataset, args.window, node=args.node, split_name=args.split_name,
                           max_new_tokens=args.max_new_tokens, data_dir=args.data_dir)
    print(f"{found['sample_id']}: the rationale the model generated\n")
    print(found["text"] or "(the model wrote no rationale: it opened the answer frame at once)")
    channels = found["channels"]
    print(f"\nforecast vs truth ({', '.join(channels)}; original units):")
    header = "step".ljust(20) + "".join(f"{name[:14]:>32}" for name in found["nodes"])
    print(header)
    for step, time_value in enumerate(found["times"]):
        cells = "".join(f"{_pair(found['forecast'][step, j], found['truth'][step, j]):>32}"
                        for j in range(len(found["nodes"])))
        print(f"{str(time_value)[:19]:<20}{cells}")


def _pair(forecast, truth) -> str:
    """``forecast / truth`` per channel of one cell of the explain table."""
    return " ".join(f"{f:.1f}/{'NA' if t != t else f'{t:.1f}'}" for f, t in zip(forecast, truth, strict=True))


def _cmd_recipes(args: argparse.Namespace) -> None:
    from st_instruct.shipped import shipped_recipes

    for name, path in shipped_recipes().items():
        lines = [line.lstrip("# ").rstrip() for line in path.read_text().splitlines()[:3] if line.startswith("#")]
        about = next((line for line in lines if not line.startswith(("accelerate ", "st-instruct "))), "")
        print(f"{name:<28} {about[:90]}")


def _cmd_push(args: argparse.Namespace) -> None:
    from st_instruct.hub import push_to_hub

    url = push_to_hub(args.directory, args.repo_id, token=args.token, private=args.private,
                      base_repo=args.base_repo)
    print(f"pushed {args.directory} to {args.repo_id}: {url}")


def _cmd_render(args: argparse.Namespace) -> None:
    from st_instruct.protocols.baselines import prepare_windows
    from st_instruct.samples.render import WindowRenderer, save_window, window_files

    stem = f"{Path(args.dataset).stem}-{args.split_name}-{args.window}"
    window_files(args.out, stem, args.kind, args.overwrite)  # before the slow work
    windows = prepare_windows(args.dataset, args.history, args.horizon, args.split, args.channels, args.start,
                              args.end, data_dir=args.data_dir, spec=_spec_kwargs(args))
    names = windows.data.channels
    channel = int(args.channel) if args.channel.isdigit() else names.index(args.channel) \
        if args.channel in names else None
    if channel is None:
        raise ValueError(f"--channel {args.channel!r} is not a channel of {args.dataset!r} ({', '.join(names)}) "
                         "nor an index")
    renderer = WindowRenderer(windows, args.kind, size=args.size, panels=args.panels, channel=channel)
    png, gif = save_window(renderer, args.split_name, args.window, args.out, stem, args.overwrite)
    print(f"{args.kind} image of {args.dataset} {args.split_name} window {args.window} (channel "
          f"{names[channel] if channel < len(names) else channel}, colours on {renderer.low:g} .. {renderer.high:g} "
          f"from the train split): wrote {png} and {gif}")


def build_parser() -> argparse.ArgumentParser:
    from st_instruct.configs.data import HISTORY_FILL_NAMES, TASK_NAMES  # the recipe's choices, declared once

    parser = argparse.ArgumentParser(prog="st-instruct", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    data = verbs.add_parser("data", help="list, inspect and download datasets")
    data_verbs = data.add_subparsers(dest="data_verb", required=True)
    data_verbs.add_parser("list", help="named datasets and where they are found").set_defaults(func=_cmd_data_list)
    inspect = data_verbs.add_parser("inspect", help="shape, frequency, date range, nulls, graph statistics")
    inspect.add_argument("dataset", help="a registered name (see `data list`) or a path to .npz/.npy/.h5/.csv")
    _add_source_args(inspect)
    _add_dataset_spec_args(inspect)
    inspect.set_defaults(func=_cmd_data_inspect)
    download = data_verbs.add_parser("download", help="fetch a dataset into the user cache, checksum verified")
    download.add_argument("name")
    download.add_argument("--cache-dir", default=None, help="where to put it (default: the user cache)")
    download.add_argument("--sha256", default=None, help="expected checksum where the registry has none")
    download.add_argument("--allow-unverified", action="store_true",
                          help="accept a file whose checksum is unknown (prints the checksum to pin)")
    download.set_defaults(func=_cmd_data_download)

    build = verbs.add_parser("build-data", help="build the instruction dataset of a recipe and show samples",
                             description="Any recipe key can be overridden as a flag, e.g. --history 24. The "
                             "dataset specification flags of the other verbs (--freq, --series-start, --adjacency, "
                             "--null-value, --channel-names, --nodes, --no-calendar) set the recipe keys dataset_freq "
                             "etc. and apply to every dataset of dataset_names.")
    build.add_argument("recipe", help="recipe YAML, or a shipped recipe by name (`st-instruct recipes`)")
    build.add_argument("--output", default=None, help="save_to_disk folder (default outputs/data/<recipe name>)")
    build.add_argument("--overwrite", action="store_true",
                       help="replace a non-empty --output folder (once the new dataset is completely saved)")
    build.set_defaults(func=_cmd_build_data)
    train = verbs.add_parser("train", help="train the LLM forecaster of a recipe, on one process or several",
                             description="Any recipe key can be overridden as a flag, e.g. --max_steps 10 (the "
                             "dataset flags --freq, --series-start, ... too, as in build-data). With "
                             "--num_processes N and/or --accelerate_config it runs `accelerate launch -m "
                             "st_instruct.train` for you (on the CPU when there is no CUDA device); with "
                             "--num_machines M --machine_rank R --main_process_ip IP, this machine's part of a run "
                             "over M machines (run it on each; output_dir on storage they share).")
    train.add_argument("recipe", help="training recipe YAML, or a shipped recipe by name (`st-instruct recipes`)")
    train.add_argument("--num_processes", default=None, metavar="N",
                       help="processes to train on (default 1; several: DDP unless --accelerate_config says so); "
                       "with --num_machines the TOTAL over all machines, as in accelerate (16 = 2 machines x 8)")
    train.add_argument("--accelerate_config", default=None, metavar="ddp|zero2|zero3|single|FILE",
                       help="a shipped accelerate config (recipes/accelerate/NAME.yaml) or an accelerate config file; "
                       "without --num_processes its own num_processes applies")
    train.add_argument("--num_machines", default=None, metavar="M",
                       help="machines to train on: run the same command on each, with its own --machine_rank")
    train.add_argument("--machine_rank", default=None, metavar="R",
                       help="with --num_machines: this machine's rank, 0 on the machine at --main_process_ip, "
                       "1..M-1 on the others")
    train.add_argument("--main_process_ip", default=None, metavar="IP",
                       help="with --num_machines: the address of the machine of --machine_rank 0, reachable from all")
    train.add_argument("--main_process_port", default=None, metavar="PORT",
                       help="the port the main process listens on (default: the accelerate config's, else 29500); "
                       "the same on every machine")
    train.set_defaults(func=_cmd_train)
    pretrain = verbs.add_parser("pretrain", help="pretrain the ST encoder of a recipe (forecast or masked "
                                "autoencoder; no LLM)", description="Any recipe key can be overridden as a flag, "
                                "e.g. --pretrain_steps 10. A forecaster recipe then loads the result with "
                                "st_encoder_init: DIR. See recipes/pretrain_*.yaml")
    pretrain.add_argument("recipe", help="pretraining recipe YAML (see recipes/pretrain_*.yaml)")
    pretrain.add_argument("--overwrite", action="store_true",
                          help="replace a non-empty pretrain_output_dir once the new encoder is completely saved")
    pretrain.set_defaults(func=_cmd_pretrain)
    evaluate = verbs.add_parser("evaluate", help="a trained forecaster beside the baselines on the same test windows",
                                description="In-domain when the dataset was among the training datasets, else "
                                "zero-shot. Windowing, template and coordinates come from the model's recipe.yaml.")
    evaluate.add_argument("--model", required=True, help="the output folder of `st-instruct train` (or a checkpoint)")
    evaluate.add_argument("--dataset", required=True, help="a registered name or a path")
    _add_source_args(evaluate)
    evaluate.add_argument("--channels", nargs="+", default=None, help="channel names or indices to keep")
    evaluate.add_argument("--start", default=None, help="keep steps from this date on (e.g. 2019-01-01)")
    evaluate.add_argument("--end", default=None, help="keep steps before this date (e.g. 2020-01-01)")
    _add_dataset_spec_args(evaluate)
    evaluate.add_argument("--split-name", default="test", help="which split to score (default test)")
    evaluate.add_argument("--batch-size", type=int, default=16, help="samples per forward pass (default 16)")
    evaluate.add_argument("--max-windows", type=int, default=None,
                          help="at most this many windows per split, sampled as the builder samples (default all)")
    evaluate.add_argument("--max-nodes", type=int, default=None,
                          help="score at most this many nodes (series, for a channel-independent model), a seeded "
                               "subset the same for every row (default all; baselines still fit on every node)")
    evaluate.add_argument("--models", nargs="+", default=None, help="subset of baselines (default: all)")
    evaluate.add_argument("--controls", nargs="+", default=None, metavar="DIR",
                          help="trained controls of the model's recipe (`st-instruct train RECIPE --control no_llm` / "
                               "`random_llm`), scored on the same windows as rows st_forecaster_no_llm / "
                               "st_forecaster_random_llm; with --few-shot each is fine-tuned as the model is")
    evaluate.add_argument("--train-controls", nargs="+", default=None, choices=("no_llm", "random_llm"),
                          metavar="KIND", help="first train these controls (no_llm, random_llm) from the model's own "
                          "recipe.yaml, same data, model and budget, into MODEL-no-llm / MODEL-random-llm (a "
                          "complete one there is reused unless --overwrite), then score them as --controls")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --json file and few-shot "
                          "folder, and with --train-controls retrain a control folder that exists")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--zero-shot-scaling", choices=("window", "train"), default="window",
                          help="zero-shot only: scale each sample with its own history window's statistics "
                               "(window, strict: no value outside the input window; default) or with the target's "
                               "train split (train)")
    evaluate.add_argument("--broadcast-channels", action="store_true",
                          help="forecast a one-channel dataset with a multi-channel model: the series fills every "
                          "input channel and the outputs are averaged")
    evaluate.add_argument("--few-shot", type=float, default=None, metavar="FRACTION",
                          help="first fine-tune on this fraction of the dataset's train split (e.g. 0.05), then test")
    evaluate.add_argument("--few-shot-steps", type=int, default=None,
                          help="at most this many optimizer steps of the few-shot fine-tuning (default: 10 passes "
                          "over its samples), stopped early on the target's validation loss")
    evaluate.add_argument("--few-shot-plan", choices=("whole", "prompt", "scratch"), default="whole",
                          help="what the few-shot fine-tuning adapts: whole (every weight the recipe trains, the "
                          "encoder included; default), prompt (PromptST: a fresh soft prompt of 4 tokens and the "
                          "head's output layer on the frozen model, an attribute adapter naming it) or scratch (the "
                          "recipe's model built afresh, no weight of MODEL, trained the same way)")
    evaluate.add_argument("--few-shot-output", default=None, help="folder of the few-shot model (default: beside "
                          "MODEL, named MODEL-few-shot-<dataset>-<fraction>)")
    evaluate.add_argument("--generate-rationales", action="store_true",
                          help="AirGPT students: also score the forecast read after the rationale the model generates "
                          "(row st_forecaster_generated; the single pass without a rationale stays st_forecaster)")
    evaluate.add_argument("--max-new-tokens", type=int, default=384,
                          help="with --generate-rationales: at most this many rationale tokens per sample")
    evaluate.add_argument("--tta", type=int, default=None, metavar="STEPS",
                          help="also score the forecaster and its controls under test-time adaptation: STEPS "
                          "optimiser steps per batch on the parameters the recipe's tta_parameters name (rows "
                          "st_forecaster+tta-MODE beside the plain ones, same windows)")
    evaluate.add_argument("--tta-mode", nargs="+", choices=("reset", "carry", "matured"), default=["reset"],
                          metavar="MODE", help="with --tta, one or more of: reset / carry (masked reconstruction "
                          "of each batch's history, no label; the weights restored after each batch, or carried "
                          "over the test sequence in time order) or matured (ST-TTC: supervised steps on earlier "
                          "test samples whose labels have fully arrived by the batch's issue time); each mode starts "
                          "from the trained weights; default reset")
    evaluate.add_argument("--missing-pattern", default=None, metavar="PATTERN",
                          help="the entries to hide instead of the recipe's missing_pattern -- NAME:RATE (point, "
                          "sequence or node; RATE in (0, 1) of the observed entries) or spin_point / spin_block: an "
                          "imputation model fills and is scored on them; a forecaster reads the history without "
                          "them (sparse-history forecasting; a forecaster trained without one: the baselines fit on "
                          "the full train split as it did, and read the same sparse history)")
    evaluate.add_argument("--task", choices=TASK_NAMES, default=None,
                          help="what the model is evaluated on, checked against its task (default: the model's): "
                          "forecasting scores the horizon after each history, imputation the entries hidden in "
                          "each window")
    evaluate.add_argument("--history-fill", default=None, choices=HISTORY_FILL_NAMES,
                          help="a forecaster: what it and the baselines read for a history entry hidden or missing, "
                          "instead of the recipe's history_fill -- none (forecast directly from the sparse history) "
                          "or forward (impute-then-forecast: the last value read at or before the step)")
    evaluate.add_argument("--pretrained-encoder", default=None, metavar="DIR",
                          help="an imputation model: also score this masked-autoencoder folder of `st-instruct "
                          "pretrain` (pretrain_objective: mae; encoder + decoder alone, no LLM) as the row "
                          "mae_encoder, target-fitted if pretrained on the evaluated dataset, else source-fitted")
    evaluate.add_argument("--tta-lr", type=float, default=None, metavar="LR",
                          help="with --tta, the adaptation's learning rate instead of the recipe's tta_learning_rate")
    evaluate.add_argument("--json", default=None, help="also write the results JSON here")
    evaluate.add_argument("--output", default=None, help="folder for results.json, report.md and the figures "
                          "(default MODEL/eval-<dataset>)")
    evaluate.add_argument("--plot-models", nargs="+", default=None, metavar="NAME",
                          help="rows drawn in the forecast figures, one per channel (default: st_forecaster, its "
                          "controls and the best other row by MAE); the error-per-horizon figure draws every row")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars (nor the libraries': model "
                          "loading, tokenising) and no few-shot status lines")
    evaluate.set_defaults(func=_cmd_evaluate)
    explain = verbs.add_parser("explain", help="the rationale a rationale-trained forecaster (AirGPT) generates for "
                               "one window, beside its forecast and the truth")
    explain.add_argument("--model", required=True, help="the output folder of `st-instruct train`")
    explain.add_argument("--dataset", required=True, help="a registered name or a path")
    explain.add_argument("--window", type=int, required=True, help="window index within the split")
    explain.add_argument("--node", type=int, default=None, help="only this node (index; required for node-level "
                         "recipes)")
    explain.add_argument("--split-name", default="test", choices=("train", "validation", "test"))
    explain.add_argument("--max-new-tokens", type=int, default=384, help="at most this many rationale tokens")
    _add_source_args(explain)
    explain.set_defaults(func=_cmd_explain)
    predict = verbs.add_parser("predict", help="forecast the steps after a file of new values with a trained "
                               "forecaster", description="The input is a series file (.npz/.npy/.h5/.csv, as `data "
                               "inspect` reads) of at least the model's history length. An input with the training "
                               "dataset's nodes and channels is completed from the model's data profile (node names, "
                               "coordinates, graph, units, scaling) and forecast as evaluate forecasts; another node "
                               "set is forecast zero-shot (each window scaled by its own history).")
    predict.add_argument("--model", required=True, help="a trained forecaster folder, or a Hub repo id (USER/NAME)")
    predict.add_argument("--input", required=True, help="series file of new values [T, N, C] with its timestamps")
    predict.add_argument("--output", required=True, help="OUT.csv (a row per window, step and node) or OUT.npz")
    predict.add_argument("--every-window", action="store_true", help="forecast every window of the input (the "
                         "recipe's stride), not only the steps after its end")
    predict.add_argument("--name", default=None, help="the training dataset the input belongs to (default: the one "
                         "with its node and channel counts)")
    predict.add_argument("--task", choices=TASK_NAMES, default=None,
                         help="what to do, checked against the model's task (default: the model's): forecasting "
                         "writes the steps after the input, imputation fills the input's gaps (NaN or --null-value) "
                         "and writes it back in its own layout")
    predict.add_argument("--batch-size", type=int, default=None,
                         help="samples per forward pass (default: a forecaster takes as many as a quarter of the free "
                              "memory holds, an imputer 16)")
    predict.add_argument("--rationale", action="store_true", help="rationale-trained forecasters (AirGPT): write "
                         "the rationale first, read the forecast after it, and print the texts")
    predict.add_argument("--max-new-tokens", type=int, default=384, help="with --rationale: at most this many tokens")
    predict.add_argument("--min-observed", type=float, default=None, metavar="SHARE",
                         help="forecast only windows with at least this share of their history observed (not NaN, "
                         "not the null value; default a quarter, input_checks.DEFAULT_MIN_OBSERVED); the others are "
                         "NaN in the output and listed. A history with nothing observed is never forecast")
    predict.add_argument("--fill-gaps", action="store_true", help="insert steps missing from the input's "
                         "timestamps as unobserved (without it an irregular clock is refused)")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --output file (once the new "
                         "one is complete)")
    predict.add_argument("--quiet", action="store_true", help="no progress bars (nor the libraries')")
    _add_dataset_spec_args(predict)
    predict.set_defaults(func=_cmd_predict)
    recipes = verbs.add_parser("recipes", help="list the shipped recipes; any verb taking a recipe takes one by name")
    recipes.set_defaults(func=_cmd_recipes)
    push = verbs.add_parser("push", help="push a trained forecaster folder to the Hugging Face Hub")
    push.add_argument("directory", help="the output folder of `st-instruct train`")
    push.add_argument("--repo-id", required=True, help="USER/NAME of the model repo (created if needed)")
    push.add_argument("--token", default=None, help="Hub token (default $HF_TOKEN or the saved login)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--base-repo", default=None, metavar="USER/NAME", help="an attribute adapter (freeze_plan "
                      "prompt) of a local base forecaster: the Hub repo id the base was pushed to, which the pushed "
                      "st_backbone.json names instead of the local folder")
    push.set_defaults(func=_cmd_push)

    baselines = verbs.add_parser("baselines", help="run every baseline on one dataset")
    baselines.add_argument("--dataset", required=True, help="a registered name or a path")
    _add_source_args(baselines)
    _add_window_args(baselines)
    _add_dataset_spec_args(baselines)
    baselines.set_defaults(func=_cmd_baselines)
    render = verbs.add_parser("render", help="render a window as the image a VLM forecaster reads (PNG) and every "
                              "step of it as an animated GIF")
    render.add_argument("dataset", help="a registered name or a path")
    render.add_argument("--window", type=int, required=True, help="window index within the split")
    render.add_argument("--split-name", default="test", choices=("train", "validation", "test"))
    render.add_argument("--kind", default="map", help="map (default): history steps as map panels; multiview: "
                        "temporal, spatial and correlation views beside the last step's map")
    render.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    render.add_argument("--panels", type=int, default=4, help="history steps per map image (default 4)")
    render.add_argument("--channel", default="0", help="channel to colour: a name or an index (default 0)")
    render.add_argument("--out", required=True, help="folder for the PNG and the GIF")
    render.add_argument("--overwrite", action="store_true", help="replace the PNG and the GIF if --out holds them")
    _add_source_args(render)
    _add_window_args(render)
    _add_dataset_spec_args(render)
    render.set_defaults(func=_cmd_render)
    demo = verbs.add_parser("demo", help="the main job: train the forecaster on the synthetic city, then evaluate",
                            description="Pretrains recipes/demo_pretrain.yaml into OUTPUT_DIR-pretrain, trains "
                            "recipes/demo_sft.yaml from it into its output_dir (any recipe key can be overridden as a "
                            "flag, e.g. --max_steps 20; --pretrain_* keys go to the pretraining recipe) and its "
                            "no-LLM control (control: no_llm) into OUTPUT_DIR-no-llm, then evaluates both beside the "
                            "baselines on the synthetic test split.")
    demo.add_argument("--max-windows", type=int, default=None, help="at most this many test windows (default all)")
    demo.add_argument("--batch-size", type=int, default=16, help="samples per forward pass (default 16)")
    demo.add_argument("--output", default=None, help="folder for the evaluation (default <output_dir>/eval-synthetic)")
    demo.set_defaults(func=_cmd_demo, data_dir=None, channels=None, start=None, end=None, split_name="test",
                      max_nodes=None, broadcast_channels=False, few_shot=None, few_shot_steps=None,
                      few_shot_output=None, controls=None, zero_shot_scaling="window", generate_rationales=False,
                      max_new_tokens=384, plot_models=None, tta=None, tta_mode=["reset"], tta_lr=None,
                      missing_pattern=None, history_fill=None, few_shot_plan="whole", pretrained_encoder=None,
                      task=None)
    for sub in (baselines, demo):
        sub.add_argument("--models", nargs="+", default=None, help="subset of baselines (default: all)")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--json", default=None, help="write the results JSON here")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--quiet", action="store_true", help="no progress bars (the trainer prints its log lines "
                       "every logging_steps instead)")
    train_overwrite = ("train although output_dir is not empty: the new run trains in a temporary sibling folder "
                       "that replaces output_dir only once its final save is complete (without it, a non-empty "
                       "output_dir is refused unless resume_from_checkpoint resumes from it)")
    train.add_argument("--overwrite", action="store_true", help=train_overwrite)
    demo.add_argument("--overwrite", action="store_true", help=f"{train_overwrite}; also replace an existing --json")
    baselines.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    if overrides and args.verb not in ("build-data", "train", "demo", "pretrain"):
        build_parser().error(f"unrecognized arguments: {' '.join(overrides)}")
    args.overrides = overrides
    return run_reporting_input_errors(f"st-instruct {args.verb}", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
