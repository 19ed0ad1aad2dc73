"""Compare predicted Sérsic parameters with the truth: metrics, a Markdown report and plots.

This module holds :func:`evaluate` (subsets, bins, targets, files); the package splits the rest
by job: :mod:`~galnet.evaluate.matching` (reading tables, matching rows),
:mod:`~galnet.evaluate.residuals` (per-parameter residuals and metrics),
:mod:`~galnet.evaluate.report` (``report.md``) and :mod:`~galnet.evaluate.plots` (figures).

``evaluate(pred, truth, out_dir)`` matches the rows of a predicted catalogue (``galnet predict``,
``galnet fit``) with a truth table (a catalogue, or an HDF5 file from ``galnet simulate``), and
returns (and writes to ``out_dir/metrics.json``) the metrics below, overall, for the named
subsets ``"snr>20"`` and ``"10<snr<=20"`` (top-level keys), and in bins of true S/N and true n.

Matching. Rows are matched by ``id`` when both tables have one, the ids are unique in each and
every predicted id is in the truth (the prediction may cover a subset of the truth). A simulated
HDF5 truth file has no ``id`` column: its ids are the 0-based row indices. Otherwise the rows are
matched in order, which needs equal lengths (``GalnetValueError`` if not; a warning when both
tables had explicit ids that do not match).

Failed and invalid rows. A predicted row with a non-finite value (NaN) in any evaluated
parameter, or ``re_pix <= 0`` or ``n <= 0``, counts as failed (``n_failed``) and is left out of
every metric; so is a row whose *truth* is invalid in the same way (``n_truth_invalid``).

Metrics per parameter (key in ``metrics["overall"]``; the same keys in subsets and bins). With
``t`` the truth, ``p`` the prediction and ``d`` the residual defined per parameter:

- ``R²`` = ``1 - sum((p - t)^2) / sum((t - mean(t))^2)`` of the (transformed) values below.
- ``bias`` = ``median(d)``; ``nmad`` = ``1.4826 median(|d - median(d)|)``; ``mean`` = ``mean(d)``;
  ``rms`` = ``sqrt(mean(d^2))``; ``N`` the rows used; ``outlier_frac`` = outliers / N.

- ``mag`` (column ``mag``): ``d = p - t`` (mag); ``r2`` on mag; outlier when the relative flux
  error ``|Δflux|/flux = |10^(-0.4 d) - 1| > 0.15``.
- ``re`` (column ``re_pix``): ``d = log10(p / t)`` (dex); ``r2_log`` on log10 re (linear ``r2``
  too); outlier when ``|p - t| / t > 0.15``.
- ``n``: as ``re``: ``d = log10(p / t)``, ``r2_log`` on log10 n, outlier ``|p - t| / t > 0.15``.
- ``q``: ``d = p - t``; ``r2`` on q; outlier when ``|p - t| / t > 0.15``.
- ``x``, ``y``: ``d = p - t`` (pix); ``r2``; outlier when ``|d| > 1`` pix.
- ``pa_deg``: ``d = p - t`` wrapped to [-90, 90) (deg; pred 179, true 1 gives -2); no R²;
  outlier when ``|d| > 15`` deg; only rows with true ``q < 0.8`` (the PA of round galaxies is
  undefined; ``n_round_excluded`` counts the others).

For ``re`` and ``n`` also ``nmad_rel`` and ``bias_rel``: NMAD and median of ``(p - t) / t``.
Targets of the network issue (overall and in the subsets): ``mag.r2 >= 0.995``,
``re.r2_log >= 0.99``, ``n.r2_log >= 0.95``, ``q.r2 >= 0.98``, ``re.outlier_frac <= 0.02``,
``n.outlier_frac <= 0.10``, and calibration ``0.63 <= calib_frac_1sigma <= 0.73``
(``metrics["targets"]``).

Uncertainty calibration, when the prediction has ``<column>_err`` columns (1-sigma): ``z = r / err``
with ``r = p - t`` in the parameter's own unit (mag, pixels, linear re_pix and n, q, and the
wrapped PA difference in degrees), rows with a finite positive error only. Per parameter:
``calib_frac_1sigma`` (fraction of ``|z| < 1``, 0.683 for calibrated Gaussian errors),
``calib_z_nmad`` (1 when calibrated), ``calib_z_median`` and ``calib_N``.

Bins: true ``snr`` (edges ``snr_bins``) and true ``n`` (edges ``n_bins``), each bin
``lo <= v < hi`` (the last bin includes a finite ``hi``). Subsets ``"snr>20"`` (``snr > 20``)
and ``"10<snr<=20"``. Without a ``snr`` column in the truth the S/N bins and subsets are empty.

Files written to ``out_dir`` (each atomically): ``metrics.json`` (this dict, NaN/inf as null),
``report.md``, ``pred_vs_true.png``, ``residuals_vs_snr.png`` (with true S/N),
``calibration.png`` (with ``_err`` columns) and ``gallery.png`` (image / model / residual, asinh
stretch) when a gallery is given, or rendered from the predictions for an HDF5 truth file.
Units of astropy columns are stripped (angles of ``pa_deg`` converted to degrees first).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.evaluate.matching import column_values, match_rows, read_table, table_label
from galnet.evaluate.plots import gallery_input, write_plots
from galnet.evaluate.report import definitions, report_markdown
from galnet.evaluate.residuals import METRIC_KEYS, Residuals, param_metrics, residuals
from galnet.io.files import atomic_write, jsonable
from galnet.params import SERSIC

__all__ = ["evaluate", "METRIC_KEYS", "TARGETS", "CALIB_TARGET", "SNR_SUBSETS"]

#: Targets of the network issue: (metric key, field, "min" or "max", value).
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("mag", "r2", "min", 0.995),
    ("re", "r2_log", "min", 0.99),
    ("n", "r2_log", "min", 0.95),
    ("q", "r2", "min", 0.98),
    ("re", "outlier_frac", "max", 0.02),
    ("n", "outlier_frac", "max", 0.10),
)
#: Calibration target: fraction of |error| / sigma < 1 (Gaussian 0.683) and its tolerance.
CALIB_TARGET = (0.68, 0.05)
#: Named S/N subsets at the top level of the metrics: name -> (lo, hi), lo < snr <= hi.
SNR_SUBSETS: dict[str, tuple[float, float]] = {"snr>20": (20.0, math.inf),
                                               "10<snr<=20": (10.0, 20.0)}
#: Parameters whose rows must be positive to be evaluated (re_pix, n, q: a positive lower
#: bound in the parameter table).
_POSITIVE = tuple(p.name for p in SERSIC if p.lower > 0)


def _subset_metrics(res: list[Residuals], rows: np.ndarray | None) -> dict[str, Any]:
    return {r.key: param_metrics(r, rows) for r in res}


def _bin_edges(edges, name: str) -> list[float]:
    try:
        e = [float(v) for v in edges]
    except (TypeError, ValueError) as err:
        raise GalnetValueError(f"{name} must be a sequence of numbers, got {edges!r}",
                               name, edges) from err
    if len(e) < 2 or any(math.isnan(v) for v in e) or any(b <= a for a, b in zip(e, e[1:],
                                                                                  strict=False)):
        raise GalnetValueError(f"{name} must be at least 2 increasing edges, got {edges!r}",
                               name, edges)
    return e


def _fmt_edge(v: float) -> str:
    return f"{v:g}"


def _binned(res: list[Residuals], values: np.ndarray | None, edges: list[float],
            var: str) -> dict[str, Any]:
    out: dict[str, Any] = {"column": var, "edges": edges, "bins": []}
    if values is None:
        out["note"] = f"truth has no {var!r} column"
        return out
    for i, (lo, hi) in enumerate(zip(edges, edges[1:], strict=False)):
        last = i == len(edges) - 2
        rows = (values >= lo) & ((values <= hi) if (last and math.isfinite(hi)) else (values < hi))
        if math.isinf(hi):
            label = f"{var}>={_fmt_edge(lo)}"
        else:
            label = f"{_fmt_edge(lo)}<={var}{'<=' if last else '<'}{_fmt_edge(hi)}"
        out["bins"].append({"label": label, "lo": lo, "hi": hi, "n_rows": int(np.sum(rows)),
                            "metrics": _subset_metrics(res, rows)})
    return out


def _targets(metrics: dict[str, Any], scopes: Sequence[str]) -> list[dict[str, Any]]:
    """The issue's targets, checked in each scope (overall and the named subsets)."""
    out = []
    checks = [(k, f, s, v) for k, f, s, v in TARGETS]
    keys_with_calib = [k for k, m in metrics["overall"].items() if "calib_frac_1sigma" in m]
    lo, hi = CALIB_TARGET[0] - CALIB_TARGET[1], CALIB_TARGET[0] + CALIB_TARGET[1]
    for key, field, sense, value in checks + [(k, "calib_frac_1sigma", "range", (lo, hi))
                                               for k in keys_with_calib]:
        if key not in metrics["overall"]:
            continue
        item: dict[str, Any] = {"param": key, "metric": field}
        if sense == "range":
            item["target"] = f"{lo:.2f}..{hi:.2f}"
        else:
            item["target"] = f"{'>=' if sense == 'min' else '<='} {value:g}"
        for scope in scopes:
            v = metrics[scope].get(key, {}).get(field, math.nan)
            if v is None or not math.isfinite(v):
                ok = None
            elif sense == "min":
                ok = v >= value
            elif sense == "max":
                ok = v <= value
            else:
                ok = value[0] <= v <= value[1]
            item[scope] = {"value": v, "pass": ok}
        out.append(item)
    return out


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------
def evaluate(
    pred,
    truth,
    out_dir: str | os.PathLike | None = None,
    *,
    snr_bins: Sequence[float] = (0, 10, 20, 50, 100, math.inf),
    n_bins: Sequence[float] = (0.3, 1, 2, 4, 8.0),
    gallery: Mapping[str, Any] | bool | None = None,
    params: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics of predicted Sérsic parameters against the truth (definitions: module docstring).

    Parameters
    ----------
    pred : path or astropy Table
        Predicted catalogue (``galnet predict`` / ``fit``): columns ``x, y, mag, re_pix, n, q,
        pa_deg`` (units optional, stripped), optionally ``id`` and ``<column>_err`` (1 sigma).
    truth : path or astropy Table
        True parameters: a catalogue, or an HDF5 file from ``galnet simulate``. ``snr`` (optimal
        S/N) is needed for the S/N bins and subsets; ``q`` for the PA metrics.
    out_dir : directory for ``metrics.json``, ``report.md`` and the PNGs (created if needed);
        None writes nothing. [default: None]
    snr_bins, n_bins : increasing bin edges of true S/N and true n (``lo <= v < hi``).
    gallery : mapping with ``images``, ``models`` (N, H, W) and optionally ``sigma`` (N, H, W),
        ``labels`` (N strings): drawn as image / model / residual for up to 8 stamps. None: for an
        HDF5 truth file, models rendered from the predictions; False: no gallery. [default: None]
    params : catalogue columns to evaluate [default: all of x, y, mag, re_pix, n, q, pa_deg].

    Returns
    -------
    dict, JSON-ready: ``n_rows, n_failed, n_truth_invalid, n_evaluated, matched_by``,
    ``overall`` ({key: metrics}), ``"snr>20"``, ``"10<snr<=20"`` (same shape), ``by_snr``,
    ``by_n`` (``bins``: list of ``{label, lo, hi, n_rows, metrics}``), ``targets``,
    ``definitions`` and ``files`` (names written in ``out_dir``).

    Raises
    ------
    GalnetFileError : missing or unreadable file; output directory not writable.
    GalnetValueError : missing column (named), rows that cannot be matched, bad bins.
    """
    snr_edges = _bin_edges(snr_bins, "snr_bins")
    n_edges = _bin_edges(n_bins, "n_bins")
    columns = _check_params(params)
    out_path = _check_out_dir(out_dir) if out_dir is not None else None

    pl, tl = table_label(pred, "pred"), table_label(truth, "truth")
    pt = read_table(pred, "pred")
    tt = read_table(truth, "truth")
    p_lab, t_lab = f"pred {pl!r}", f"truth {tl!r}"
    if pl.startswith("<"):
        p_lab = "pred table"
    if tl.startswith("<"):
        t_lab = "truth table"
    for c in columns:  # name every missing column before anything else
        if c not in pt.colnames:
            raise GalnetValueError(f"{p_lab} has no column {c!r}", c)
        if c not in tt.colnames:
            raise GalnetValueError(f"{t_lab} has no column {c!r}", c)
    if "pa_deg" in columns and "q" not in tt.colnames:
        raise GalnetValueError(f"{t_lab} has no column 'q' (needed for the PA metrics)", "q")

    p_idx, t_idx, matched_by = match_rows(pt, tt, p_lab, t_lab)
    P = {c: column_values(pt, c, p_lab)[p_idx] for c in columns}
    T = {c: column_values(tt, c, t_lab)[t_idx] for c in columns}
    E = {c: column_values(pt, f"{c}_err", p_lab)[p_idx] for c in columns
         if f"{c}_err" in pt.colnames}
    true_q = column_values(tt, "q", t_lab)[t_idx] if "q" in tt.colnames else None
    snr = column_values(tt, "snr", t_lab)[t_idx] if "snr" in tt.colnames else None
    true_n = column_values(tt, "n", t_lab)[t_idx] if "n" in tt.colnames else None

    pred_ok = _valid(P)
    truth_ok = _valid(T) & (np.isfinite(true_q) if true_q is not None else True)
    ok = pred_ok & truth_ok
    n_rows = int(p_idx.size)

    res = [residuals(c, T[c][ok], P[c][ok], E[c][ok] if c in E else None,
                     true_q[ok] if true_q is not None else None) for c in columns]
    snr_ok = snr[ok] if snr is not None else None
    n_ok = true_n[ok] if true_n is not None else None

    metrics: dict[str, Any] = {
        "pred": pl,
        "truth": tl,
        "matched_by": matched_by,
        "n_rows": n_rows,
        "n_truth_rows": len(tt),
        "n_failed": int(np.sum(~pred_ok)),
        "failed_frac": float(np.mean(~pred_ok)) if n_rows else math.nan,
        "n_truth_invalid": int(np.sum(pred_ok & ~truth_ok)),
        "n_evaluated": int(np.sum(ok)),
        "definitions": definitions(),
        "overall": _subset_metrics(res, None),
    }
    scopes = ["overall"]
    for name, (lo, hi) in SNR_SUBSETS.items():
        rows = (snr_ok > lo) & (snr_ok <= hi) if snr_ok is not None else np.zeros(ok.sum(), bool)
        metrics[name] = _subset_metrics(res, rows)
        scopes.append(name)
    metrics["by_snr"] = _binned(res, snr_ok, snr_edges, "snr")
    metrics["by_n"] = _binned(res, n_ok, n_edges, "n")
    metrics["targets"] = _targets(metrics, scopes)
    metrics["files"] = []

    if out_path is not None:
        gal = gallery_input(gallery, tt, pt, p_idx, t_idx, ok, snr)
        files = write_plots(out_path, res, snr_ok, gal)
        files.insert(0, "report.md")
        files.insert(0, "metrics.json")
        metrics["files"] = files
        report = report_markdown(metrics, list(SNR_SUBSETS))
        atomic_write(out_path / "report.md", lambda f: f.write_text(report))
        text = json.dumps(jsonable(metrics), indent=1, allow_nan=False)
        atomic_write(out_path / "metrics.json", lambda f: f.write_text(text + "\n"))
    return metrics


def _check_params(params) -> list[str]:
    if params is None:
        return list(METRIC_KEYS)
    if isinstance(params, str):
        params = [params]
    if not isinstance(params, Sequence | set | frozenset) or isinstance(params, bytes):
        raise GalnetValueError(f"params must be a parameter name or a list of names, got "
                               f"{type(params).__name__}", "params", params)
    inverse = {v: k for k, v in METRIC_KEYS.items()}
    out = []
    for p in params:
        c = p if p in METRIC_KEYS else inverse.get(p)
        if c is None:
            raise GalnetValueError(f"unknown parameter {p!r} (use {', '.join(METRIC_KEYS)})",
                                   "params", p)
        if c not in out:
            out.append(c)
    if not out:
        raise GalnetValueError("params is empty", "params", params)
    return [c for c in METRIC_KEYS if c in out]


def _valid(values: dict[str, np.ndarray]) -> np.ndarray:
    """Rows with finite values everywhere and positive re_pix, n and q."""
    ok = np.ones(next(iter(values.values())).size, bool)
    for c, v in values.items():
        ok &= np.isfinite(v)
        if c in _POSITIVE:
            with np.errstate(invalid="ignore"):
                ok &= v > 0
    return ok


# ----------------------------------------------------------------------------------------------
# Output files
# ----------------------------------------------------------------------------------------------
def _check_out_dir(out_dir) -> Path:
    p = Path(out_dir)
    if p.exists() and not p.is_dir():
        raise GalnetFileError(f"output directory {str(p)!r} is a file")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GalnetFileError(f"cannot create output directory {str(p)!r}: "
                              f"{err.strerror or err}") from err
    if not os.access(p, os.W_OK | os.X_OK):
        raise GalnetFileError(f"output directory {str(p)!r} is not writable")
    return p


