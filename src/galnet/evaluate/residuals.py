"""Residuals of one parameter and their metrics (bias, NMAD, R², outliers, calibration).

Definitions (galnet.evaluate.metrics docstring, docs/evaluate.md): with ``t`` the truth and ``p``
the prediction, the residual ``d`` of a parameter is ``p - t`` in its unit, ``log10(p / t)`` (dex)
for the log-scaled ones (``galnet.params.SERSIC.log_names``: re_pix, n), and for an angle
(pa_deg) ``p - t`` folded into [-period/2, period/2) by :func:`galnet.params.fold_diff`.
Which parameter is log-scaled, cyclic or a position is read from the parameter table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from galnet.conventions import mag_to_flux
from galnet.params import SERSIC, fold_diff
from galnet.stats import OUTLIER_REL, nmad, r2_score

__all__ = [
    "METRIC_KEYS", "LOG_KEYS", "OUTLIER_POS_PIX", "OUTLIER_PA_DEG", "PA_Q_MAX",
    "Residuals", "residuals", "param_metrics",
]

#: Metric key of each evaluated catalogue column, in report order (the keys of metrics.json).
METRIC_KEYS: dict[str, str] = {
    "mag": "mag", "re_pix": "re", "n": "n", "q": "q", "x": "x", "y": "y", "pa_deg": "pa_deg",
}
#: Metric keys of the log-scaled parameters (residuals in dex, ``r2_log``): from the table.
LOG_KEYS: tuple[str, ...] = tuple(METRIC_KEYS[c] for c in SERSIC.log_names)
#: Outlier threshold of the positions x and y (pixels).
OUTLIER_POS_PIX = 1.0
#: Outlier threshold of the folded PA difference (degrees).
OUTLIER_PA_DEG = 15.0
#: PA metrics use only galaxies with true q below this (the PA of round ones is undefined).
PA_Q_MAX = 0.8


@dataclass
class Residuals:
    """Per-row residuals of one parameter over the evaluated rows (NaN where undefined)."""

    key: str  # metric key (METRIC_KEYS)
    column: str  # catalogue column
    log: bool  # log-scaled parameter: d in dex, R² of log10 values
    true: np.ndarray
    pred: np.ndarray
    defined: np.ndarray  # rows where this parameter is evaluated (pa: true q < PA_Q_MAX)
    d: np.ndarray
    outlier: np.ndarray
    r2_true: np.ndarray | None  # transformed values for R² (None: no R²)
    r2_pred: np.ndarray | None
    rel: np.ndarray | None  # (p - t) / t for the log-scaled parameters
    z: np.ndarray | None  # (p - t) / err; NaN where err is unusable


def residuals(column: str, t: np.ndarray, p: np.ndarray, err: np.ndarray | None = None,
              true_q: np.ndarray | None = None) -> Residuals:
    """Residuals of catalogue column ``column`` (a :data:`galnet.params.SERSIC` parameter).

    ``t``, ``p``: true and predicted values (float arrays, the column's unit); ``err``: predicted
    1-sigma errors (for ``z``); ``true_q``: true axis ratios (an angle is evaluated only where
    ``true_q < PA_Q_MAX``).
    """
    spec = SERSIC[column]
    defined = np.ones(t.size, bool)
    rel = None
    if spec.role == "mag":
        d = p - t
        lin = d
        # relative flux error: flux ratio 10^(-0.4 d) through the one mag <-> flux converter
        outlier = np.abs(mag_to_flux(d, 0.0) - 1.0) > OUTLIER_REL
        r2t, r2p = t, p
    elif spec.log:
        d = np.log10(p / t)
        lin = p - t
        rel = lin / t
        outlier = np.abs(rel) > OUTLIER_REL
        r2t, r2p = np.log10(t), np.log10(p)
    elif spec.cyclic:
        d = lin = fold_diff(column, p, t)
        outlier = np.abs(d) > OUTLIER_PA_DEG
        r2t = r2p = None
        if true_q is not None:
            defined = true_q < PA_Q_MAX
    elif spec.role in ("x", "y"):
        d = lin = p - t
        outlier = np.abs(d) > OUTLIER_POS_PIX
        r2t, r2p = t, p
    else:  # a bounded ratio (q): relative outliers
        d = lin = p - t
        outlier = np.abs(d) / t > OUTLIER_REL
        r2t, r2p = t, p
    z = None
    if err is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(np.isfinite(err) & (err > 0), lin / err, np.nan)
    return Residuals(METRIC_KEYS[column], column, spec.log, t, p, defined, d, outlier, r2t, r2p,
                     rel, z)


def param_metrics(r: Residuals, rows: np.ndarray | None = None) -> dict[str, Any]:
    """The metrics of one parameter over ``rows`` (boolean mask; all rows when None)."""
    m = r.defined if rows is None else (r.defined & rows)
    d = r.d[m]
    n = int(d.size)
    out: dict[str, Any] = {"N": n}
    if r.column in SERSIC.cyclic_names:
        out["n_round_excluded"] = int(np.sum(~r.defined if rows is None else (~r.defined & rows)))
    if r.r2_true is not None:
        name = "r2_log" if r.log else "r2"
        out[name] = r2_score(r.r2_true[m], r.r2_pred[m])
        if r.log:
            out["r2"] = r2_score(r.true[m], r.pred[m])
    out["bias"] = float(np.median(d)) if n else math.nan
    out["nmad"] = nmad(d)
    out["mean"] = float(np.mean(d)) if n else math.nan
    out["rms"] = float(np.sqrt(np.mean(d**2))) if n else math.nan
    n_out = int(np.sum(r.outlier[m]))
    out["n_outliers"] = n_out
    out["outlier_frac"] = n_out / n if n else math.nan
    if r.rel is not None:
        out["bias_rel"] = float(np.median(r.rel[m])) if n else math.nan
        out["nmad_rel"] = nmad(r.rel[m])
    if r.z is not None:
        z = r.z[m]
        z = z[np.isfinite(z)]
        out["calib_N"] = int(z.size)
        out["calib_frac_1sigma"] = float(np.mean(np.abs(z) < 1.0)) if z.size else math.nan
        out["calib_z_nmad"] = nmad(z)
        out["calib_z_median"] = float(np.median(z)) if z.size else math.nan
    return out
