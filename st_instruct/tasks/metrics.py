"""Masked metrics (docs/design.md §5): MAE, RMSE, MAPE, WAPE, per target step and averaged; a task scores with
them (:meth:`st_instruct.tasks.base.Task.score`).

All functions take predictions and targets in *original units* (inverse-transformed) with a boolean mask of
observed targets. Only masked-in entries count. An average over no entries is NaN (reported as ``null`` in
JSON), never 0: an all-missing horizon must not look like a perfect forecast.

MAPE additionally skips targets with ``|y| <= mape_floor`` (default 1e-6) because the percentage error of a
zero target is undefined; with a declared null of 0 (flows) this changes nothing. WAPE of a series whose observed
truth sums to 0 (an all-zero series) is NaN too, never infinite: :func:`horizon_metrics` then states why under
``"undefined"`` (``{"WAPE": "the sum of |truth| over the observed entries is 0"}``), and reports write ``null``.
"""

from __future__ import annotations

import numpy as np

METRICS = ("MAE", "RMSE", "MAPE", "WAPE")


def _check(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if pred.shape != target.shape or mask.shape != target.shape:
        raise ValueError(f"pred {pred.shape}, target {target.shape} and mask {mask.shape} must have the same shape")
    if np.isnan(pred[mask]).any():
        raise ValueError("predictions contain NaN at observed target positions")
    return mask & ~np.isnan(target)


def masked_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, mape_floor: float = 1e-6,
                   axis: tuple[int, ...] | int | None = None) -> dict[str, np.ndarray | float]:
    """MAE, RMSE, MAPE (percent) and WAPE (percent) over the masked-in entries, reduced over ``axis``.

    Shapes: ``pred``, ``target`` and ``mask`` all equal (any rank). ``axis=None`` reduces everything to
    floats; otherwise arrays over the remaining axes.
    """
    mask = _check(pred, target, mask)
    err = np.where(mask, np.abs(np.nan_to_num(pred) - np.nan_to_num(target)), 0.0).astype(np.float64)
    y = np.where(mask, np.abs(np.nan_to_num(target)), 0.0).astype(np.float64)
    count = mask.sum(axis=axis)
    mape_mask = mask & (y > mape_floor)
    mape_count = mape_mask.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = err.sum(axis=axis) / count
        rmse = np.sqrt((err**2).sum(axis=axis) / count)
        mape = 100.0 * np.where(mape_mask, err / np.where(mape_mask, y, 1.0), 0.0).sum(axis=axis) / mape_count
        total = y.sum(axis=axis)
        wape = np.where(total > 0, 100.0 * err.sum(axis=axis) / np.where(total > 0, total, 1.0), np.nan)
    out = {"MAE": mae, "RMSE": rmse, "MAPE": mape, "WAPE": wape}
    if axis is None:
        out = {k: float(v) for k, v in out.items()}
    return out


def undefined_reasons(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, mape_floor: float = 1e-6
                      ) -> dict[str, str]:
    """``{metric: why it is undefined}`` for the metrics :func:`masked_metrics` cannot compute over all entries
    (NaN there); empty when every metric is defined."""
    mask = _check(pred, target, mask)
    y = np.abs(np.nan_to_num(target))[mask]
    if y.size == 0:
        return {metric: "no observed target entries" for metric in METRICS}
    reasons = {}
    if not (y > mape_floor).any():
        reasons["MAPE"] = f"no observed target has |truth| > {mape_floor:g}"
    if y.sum() == 0:
        reasons["WAPE"] = "the sum of |truth| over the observed entries is 0"
    return reasons


def horizon_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, mape_floor: float = 1e-6) -> dict:
    """Averaged and per-horizon metrics for ``[B, P, N, C]`` arrays.

    Returns ``{"MAE", "RMSE", "MAPE", "WAPE": float, "per_horizon": {"1": {...}, ..., "P": {...}}}``, plus
    ``"undefined": {metric: reason}`` when an averaged metric is NaN (:func:`undefined_reasons`). The
    averaged figures pool all entries (the convention of the field's masked metrics); ``per_horizon[h]``
    pools the entries of horizon step ``h`` (1-based).
    """
    if pred.ndim != 4:
        raise ValueError(f"expected [B, P, N, C] arrays, found shape {pred.shape}")
    overall = masked_metrics(pred, target, mask, mape_floor)
    per_step = masked_metrics(pred, target, mask, mape_floor, axis=(0, 2, 3))
    per_horizon = {str(h + 1): {k: float(per_step[k][h]) for k in METRICS} for h in range(pred.shape[1])}
    undefined = undefined_reasons(pred, target, mask, mape_floor)
    return {**overall, "per_horizon": per_horizon, **({"undefined": undefined} if undefined else {})}
