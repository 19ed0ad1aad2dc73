"""Basic statistics of the evaluation, shared by training (validation metrics) and
:mod:`galnet.evaluate`: NMAD, R^2 and the outlier fraction (relative error > 15 %)."""

from __future__ import annotations

import math

import numpy as np

#: A parameter is an outlier when its relative error exceeds this (x, y: absolute, in pixels).
OUTLIER_REL = 0.15


def nmad(d) -> float:
    """Normalised median absolute deviation ``1.4826 median(|d - median(d)|)`` (NaN if empty)."""
    d = np.asarray(d, dtype=float)
    if d.size == 0:
        return math.nan
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


def r2_score(true, pred) -> float:
    """Coefficient of determination ``1 - sum((p - t)^2) / sum((t - mean t)^2)`` (NaN when
    fewer than 2 rows or the truth is constant)."""
    t = np.asarray(true, dtype=float)
    p = np.asarray(pred, dtype=float)
    if t.size < 2:
        return math.nan
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot == 0.0:
        return math.nan
    return 1.0 - float(np.sum((p - t) ** 2)) / ss_tot


def outlier_fraction(true, pred, rel: float = OUTLIER_REL) -> float:
    """Fraction of rows with ``|pred / true - 1| > rel`` (NaN if empty)."""
    t = np.asarray(true, dtype=float)
    p = np.asarray(pred, dtype=float)
    if t.size == 0:
        return math.nan
    return float(np.mean(np.abs(p / t - 1.0) > rel))
