"""A forecaster's predictions of every sample of a split, placed in their windows and nodes: what evaluation scores
and what a forecast of new values returns (:mod:`st_instruct.inference`), in one loop."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from st_instruct.samples.collator import mean_over_channels


def scatter_predictions(model: Any, collator: Any, samples: Any, starts: np.ndarray, num_nodes: int,
                        batch_size: int = 16, broadcast_channels: bool = False, predict: Any = None,
                        progress: bool = False, desc: str = "predicting") -> tuple[np.ndarray, np.ndarray, float]:
    """Predict every sample of ``samples`` (a tokenised split), batched by ``collator``
    (:func:`~st_instruct.models.collators.build_collator` built with ``broadcast_channels`` alike), and
    place it in its window and nodes.

    Returns ``(pred [B, P, N, C] float32, covered [B, N] bool, predict seconds)`` with ``B = len(starts)`` the
    windows of the split in ``starts`` order; windows / nodes without a sample stay NaN / False. With
    ``broadcast_channels`` the samples have one channel, fed to every input channel of the model, and the forecast
    is the mean of its outputs (``C = 1``). ``predict(batch) -> [b, P, Nmax, C]`` replaces ``model.predict`` (the
    generated-rationale forecast of :func:`~st_instruct.models.rationale.generate_forecast`, a test-time adapter's);
    the batch it gets carries each sample's ``window_start`` [b] besides the collator's arrays. ``progress`` shows a
    bar named ``desc``, advanced per sample (off by default: a caller with its own bar keeps just that one).
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, found {batch_size}")
    config = model.st_config
    row_of = {int(s): i for i, s in enumerate(starts)}
    channels = 1 if broadcast_channels else config.channels
    pred = np.full((len(starts), config.horizon, num_nodes, channels), np.nan, dtype=np.float32)
    covered = np.zeros((len(starts), num_nodes), dtype=bool)
    seconds = 0.0
    with tqdm(total=len(samples), desc=desc, unit="sample", disable=not progress) as bar:
        for lo in range(0, len(samples), batch_size):
            rows = [samples[i] for i in range(lo, min(lo + batch_size, len(samples)))]
            batch = collator(rows)
            batch["window_start"] = torch.tensor([int(row["window_start"]) for row in rows])  # for a TTA's clock
            tic = time.perf_counter()
            forecast = (predict or model.predict)(batch)  # [b, P, Nmax, C]
            if broadcast_channels:
                forecast = mean_over_channels(forecast)
            out = forecast.float().cpu().numpy()
            seconds += time.perf_counter() - tic
            bar.update(len(rows))
            node_index = batch["node_index"].numpy()
            node_mask = batch["node_mask"].numpy()
            for b, row in enumerate(rows):
                start = int(row["window_start"])
                if start not in row_of:
                    raise ValueError(f"sample {row['sample_id']!r} starts at step {start}, not a test window of "
                                     "the evaluation windows (the data or the split differ from the recipe's)")
                r = row_of[start]
                forecast = node_mask[b] & (node_index[b] >= 0)  # -1: a patch's summary token (never forecast)
                nodes = node_index[b][forecast]
                pred[r][:, nodes] = out[b][:, forecast]
                covered[r, nodes] = True
    return pred, covered, seconds
