"""Compare predicted Sérsic parameters with the truth: metrics, a Markdown report and plots.

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
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galnet.conventions import SPECS
from galnet.stats import OUTLIER_REL, nmad, r2_score  # noqa: F401 (re-exported)
from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.files import atomic_write
from galnet.io.files import jsonable as _jsonable

__all__ = [
    "evaluate",
    "read_table",
    "match_rows",
    "param_metrics",
    "nmad",
    "r2_score",
    "wrap_pa_diff",
    "gallery_from_simulation",
    "METRIC_KEYS",
    "TARGETS",
]

#: Metric key of each evaluated catalogue column, in report order.
METRIC_KEYS: dict[str, str] = {
    "mag": "mag", "re_pix": "re", "n": "n", "q": "q", "x": "x", "y": "y", "pa_deg": "pa_deg",
}
#: Relative-error outlier threshold (mag: of the flux; re, n, q: of the value).
#: Outlier threshold of x and y (pixels).
OUTLIER_POS_PIX = 1.0
#: Outlier threshold of the wrapped PA difference (degrees).
OUTLIER_PA_DEG = 15.0
#: PA metrics use only galaxies with true q below this (the PA of round ones is undefined).
PA_Q_MAX = 0.8
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
#: Stamps shown in the residual gallery.
GALLERY_STAMPS = 8
_LOG_KEYS = ("re", "n")
_H5_SUFFIXES = (".h5", ".hdf5", ".hdf")


# ----------------------------------------------------------------------------------------------
# Basic statistics
# ----------------------------------------------------------------------------------------------
def wrap_pa_diff(pred_deg, true_deg):
    """Position-angle difference ``pred - true`` (degrees) wrapped into [-90, 90)."""
    d = np.asarray(pred_deg, dtype=float) - np.asarray(true_deg, dtype=float)
    return np.mod(d + 90.0, 180.0) - 90.0


# ----------------------------------------------------------------------------------------------
# Reading and matching
# ----------------------------------------------------------------------------------------------
def read_table(source, role: str = "catalogue"):
    """An astropy Table from a path (ECSV, FITS, Parquet, CSV...; HDF5 from ``galnet simulate``
    through :func:`galnet.sim.simulate.read_params`) or a Table passed through.

    ``role`` names the table in error messages ("pred", "truth"). Raises
    :class:`GalnetFileError` for a missing or unreadable file.
    """
    from astropy.table import Table

    if isinstance(source, Table):
        return source
    if not isinstance(source, str | os.PathLike):
        raise GalnetValueError(f"{role} must be a file path or an astropy Table, "
                               f"got {type(source).__name__}", role, source)
    path = Path(source)
    if not path.exists():
        raise GalnetFileError(f"{role} file {str(path)!r} does not exist")
    if path.is_dir():
        raise GalnetFileError(f"{role} file {str(path)!r} is a directory")
    if path.suffix.lower() in _H5_SUFFIXES:
        from galnet.sim.simulate import read_params

        t = read_params(path)
        t.meta["galnet_h5"] = str(path)
        return t
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown FITS units etc.: units are stripped anyway
            if path.suffix.lower() in (".parquet", ".pq"):
                return _read_parquet(path)
            return Table.read(path)
    except Exception as err:  # astropy raises many kinds for unreadable files
        msg = " ".join(str(err).split())
        raise GalnetFileError(f"cannot read {role} catalogue {str(path)!r}: {msg}") from err


def _read_parquet(path: Path):
    """A Parquet file as a Table: astropy's reader (units kept), else pyarrow alone (astropy
    needs pandas for some files; units are then lost, which evaluate does not need)."""
    from astropy.table import Table

    try:
        return Table.read(path, format="parquet")
    except ImportError:
        import pyarrow.parquet as pq

        data = pq.read_table(path)
        return Table({name: data.column(name).to_numpy() for name in data.column_names})


def _label(source, role: str) -> str:
    return str(source) if isinstance(source, str | os.PathLike) else f"<{role} table>"


def _column(t, name: str, label: str) -> np.ndarray:
    """Column ``name`` of table ``t`` as float64 values, units stripped, masked -> NaN."""
    from astropy import units as u

    if name not in t.colnames:
        raise GalnetValueError(f"{label} has no column {name!r}", name)
    col = t[name]
    unit = getattr(col, "unit", None)
    if isinstance(col, u.Quantity):
        raw = col.unmasked.value if hasattr(col, "unmasked") else col.value
    else:
        raw = np.ma.getdata(col)
    try:
        v = np.array(raw, dtype=float).reshape(-1)
    except (TypeError, ValueError) as err:
        raise GalnetValueError(f"column {name!r} of {label} is not numeric", name) from err
    if v.size != len(t):
        raise GalnetValueError(f"column {name!r} of {label} is not one value per row", name)
    mask = getattr(col, "mask", None)
    if mask is not None:
        v[np.broadcast_to(np.asarray(mask, dtype=bool).reshape(-1), v.shape)] = np.nan
    if unit is not None and name.startswith("pa_deg"):
        try:
            if u.Unit(unit).physical_type == "angle":
                v = v * u.Unit(unit).to(u.deg)
        except (ValueError, TypeError):
            pass
    return v


def _ids(t) -> np.ndarray | None:
    if "id" not in t.colnames:
        return None
    col = t["id"]
    return np.asarray(np.ma.getdata(getattr(col, "value", col))).reshape(-1)


def _id_index(pid: np.ndarray, tid: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Indices into ``tid`` of each ``pid`` (None and the reason when not consistent)."""
    if pid.dtype.kind != tid.dtype.kind and not (pid.dtype.kind in "iuf"
                                                 and tid.dtype.kind in "iuf"):
        pid, tid = pid.astype(str), tid.astype(str)
    if len(np.unique(tid)) != len(tid):
        return None, "truth ids are not unique"
    if len(np.unique(pid)) != len(pid):
        return None, "pred ids are not unique"
    order = np.argsort(tid, kind="stable")
    ts = tid[order]
    pos = np.clip(np.searchsorted(ts, pid), 0, max(len(ts) - 1, 0))
    found = ts[pos] == pid if len(ts) else np.zeros(len(pid), bool)
    if not np.all(found):
        return None, f"{int(np.sum(~found))} pred ids are not in the truth"
    return order[pos], ""


def match_rows(pred, truth, pred_label: str = "pred", truth_label: str = "truth"
               ) -> tuple[np.ndarray, np.ndarray, str]:
    """Match the rows of two tables: ``(pred_index, truth_index, "id" or "row")``.

    By ``id`` when both have one (an HDF5 truth's ids are its row indices), unique and every pred
    id is in the truth; else by row order, which needs equal lengths (:class:`GalnetValueError`).
    """
    n_p, n_t = len(pred), len(truth)
    pid = _ids(pred)
    tid = _ids(truth)
    explicit_truth_ids = tid is not None
    if tid is None and "galnet_h5" in getattr(truth, "meta", {}):
        tid = np.arange(n_t)
    reason = ""
    if pid is not None and tid is not None:
        idx, reason = _id_index(pid, tid)
        if idx is not None:
            return np.arange(n_p), idx, "id"
    if n_p != n_t:
        why = f" and ids do not match ({reason})" if reason else ""
        raise GalnetValueError(
            f"{pred_label} has {n_p} rows but {truth_label} has {n_t}{why}: cannot match rows "
            "(give both an 'id' column, or the same rows in the same order)", "pred", n_p)
    if reason and explicit_truth_ids:
        warnings.warn(f"{pred_label} and {truth_label}: ids do not match ({reason}); "
                      "matching rows by order", UserWarning, stacklevel=3)
    return np.arange(n_p), np.arange(n_t), "row"


# ----------------------------------------------------------------------------------------------
# Residuals and metrics
# ----------------------------------------------------------------------------------------------
@dataclass
class _Residuals:
    """Per-row residuals of one parameter over the evaluated rows (NaN where undefined)."""

    key: str
    column: str
    true: np.ndarray
    pred: np.ndarray
    defined: np.ndarray  # rows where this parameter is evaluated (pa: true q < PA_Q_MAX)
    d: np.ndarray
    outlier: np.ndarray
    r2_true: np.ndarray | None  # transformed values for R² (None: no R²)
    r2_pred: np.ndarray | None
    rel: np.ndarray | None  # (p - t) / t for re and n
    z: np.ndarray | None  # (p - t) / err; NaN where err is unusable


def _residuals(key: str, column: str, t: np.ndarray, p: np.ndarray, err: np.ndarray | None,
               true_q: np.ndarray | None) -> _Residuals:
    defined = np.ones(t.size, bool)
    rel = None
    if key == "mag":
        d = p - t
        lin = d
        outlier = np.abs(10.0 ** (-0.4 * d) - 1.0) > OUTLIER_REL
        r2t, r2p = t, p
    elif key in _LOG_KEYS:
        d = np.log10(p / t)
        lin = p - t
        rel = lin / t
        outlier = np.abs(rel) > OUTLIER_REL
        r2t, r2p = np.log10(t), np.log10(p)
    elif key == "q":
        d = lin = p - t
        outlier = np.abs(d) / t > OUTLIER_REL
        r2t, r2p = t, p
    elif key in ("x", "y"):
        d = lin = p - t
        outlier = np.abs(d) > OUTLIER_POS_PIX
        r2t, r2p = t, p
    elif key == "pa_deg":
        d = lin = wrap_pa_diff(p, t)
        outlier = np.abs(d) > OUTLIER_PA_DEG
        r2t = r2p = None
        if true_q is not None:
            defined = true_q < PA_Q_MAX
    else:  # pragma: no cover - METRIC_KEYS is fixed
        raise GalnetValueError(f"unknown parameter {key!r}", "params", key)
    z = None
    if err is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(np.isfinite(err) & (err > 0), lin / err, np.nan)
    return _Residuals(key, column, t, p, defined, d, outlier, r2t, r2p, rel, z)


def param_metrics(r: _Residuals, rows: np.ndarray | None = None) -> dict[str, Any]:
    """The metrics of one parameter over ``rows`` (boolean mask; all rows when None)."""
    m = r.defined if rows is None else (r.defined & rows)
    d = r.d[m]
    n = int(d.size)
    out: dict[str, Any] = {"N": n}
    if r.key == "pa_deg":
        out["n_round_excluded"] = int(np.sum(~r.defined if rows is None else (~r.defined & rows)))
    if r.r2_true is not None:
        name = "r2_log" if r.key in _LOG_KEYS else "r2"
        out[name] = r2_score(r.r2_true[m], r.r2_pred[m])
        if r.key in _LOG_KEYS:
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


def _subset_metrics(res: list[_Residuals], rows: np.ndarray | None) -> dict[str, Any]:
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


def _binned(res: list[_Residuals], values: np.ndarray | None, edges: list[float],
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

    pl, tl = _label(pred, "pred"), _label(truth, "truth")
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
    P = {c: _column(pt, c, p_lab)[p_idx] for c in columns}
    T = {c: _column(tt, c, t_lab)[t_idx] for c in columns}
    E = {c: _column(pt, f"{c}_err", p_lab)[p_idx] for c in columns if f"{c}_err" in pt.colnames}
    true_q = _column(tt, "q", t_lab)[t_idx] if "q" in tt.colnames else None
    snr = _column(tt, "snr", t_lab)[t_idx] if "snr" in tt.colnames else None
    true_n = _column(tt, "n", t_lab)[t_idx] if "n" in tt.colnames else None

    pred_ok = _valid(P)
    truth_ok = _valid(T) & (np.isfinite(true_q) if true_q is not None else True)
    ok = pred_ok & truth_ok
    n_rows = int(p_idx.size)

    res = [_residuals(METRIC_KEYS[c], c, T[c][ok], P[c][ok],
                      E[c][ok] if c in E else None,
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
        "definitions": _definitions(),
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
        gal = _gallery_input(gallery, tt, pt, p_idx, t_idx, ok, snr)
        files = _write_plots(out_path, res, snr_ok, gal)
        files.insert(0, "report.md")
        files.insert(0, "metrics.json")
        metrics["files"] = files
        atomic_write(out_path / "report.md", lambda f: f.write_text(_report(metrics)))
        text = json.dumps(_jsonable(metrics), indent=1, allow_nan=False)
        atomic_write(out_path / "metrics.json", lambda f: f.write_text(text + "\n"))
    return metrics


def _check_params(params) -> list[str]:
    if params is None:
        return list(METRIC_KEYS)
    if isinstance(params, str):
        params = [params]
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
        if c in ("re_pix", "n", "q"):
            with np.errstate(invalid="ignore"):
                ok &= v > 0
    return ok


def _definitions() -> dict[str, str]:
    return {
        "r2": "1 - sum((p-t)^2)/sum((t-mean t)^2); r2_log: the same on log10 values",
        "bias": "median(d)",
        "nmad": "1.4826*median(|d-median(d)|)",
        "mean/rms": "mean(d), sqrt(mean(d^2))",
        "d.mag": "p-t (mag); outlier: |10^(-0.4 d)-1| > 0.15 (relative flux error)",
        "d.re": "log10(p/t) (dex); outlier: |p-t|/t > 0.15; *_rel on (p-t)/t",
        "d.n": "log10(p/t) (dex); outlier: |p-t|/t > 0.15; *_rel on (p-t)/t",
        "d.q": "p-t; outlier: |p-t|/t > 0.15",
        "d.x/y": "p-t (pix); outlier: |d| > 1 pix",
        "d.pa_deg": "p-t wrapped to [-90,90) (deg); outlier |d| > 15 deg; rows with true q < 0.8",
        "calib": "z=(p-t)/err in linear units (pa: wrapped); calib_frac_1sigma = mean(|z|<1)",
        "bins": "lo <= v < hi (last bin includes finite hi); snr>20: snr > 20; "
                "10<snr<=20: 10 < snr <= 20",
    }


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))
    finally:
        plt.close(fig)


_AXIS_LABEL = {"mag": "mag", "re": "re_pix [pix]", "n": "n", "q": "q", "x": "x [pix]",
               "y": "y [pix]", "pa_deg": "pa [deg]"}
_D_LABEL = {"mag": "Δmag", "re": "log10(re_p/re_t)", "n": "log10(n_p/n_t)", "q": "Δq",
            "x": "Δx [pix]", "y": "Δy [pix]", "pa_deg": "ΔPA [deg] (true q<0.8)"}


def _grid(plt, k: int, size: float = 3.2):
    cols = min(4, k)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[k:]:
        ax.set_axis_off()
    return fig, list(axes.flat[:k])


def _write_plots(out: Path, res: list[_Residuals], snr: np.ndarray | None,
                 gallery: dict[str, Any] | None) -> list[str]:
    plt = _pyplot()
    files = []
    if res and res[0].true.size:
        _save(_plot_pred_vs_true(plt, res), out / "pred_vs_true.png")
        files.append("pred_vs_true.png")
        if snr is not None and np.any(np.isfinite(snr) & (snr > 0)):
            _save(_plot_residuals_vs_snr(plt, res, snr), out / "residuals_vs_snr.png")
            files.append("residuals_vs_snr.png")
        if any(r.z is not None and np.any(np.isfinite(r.z[r.defined])) for r in res):
            _save(_plot_calibration(plt, res), out / "calibration.png")
            files.append("calibration.png")
    if gallery is not None:
        _save(_plot_gallery(plt, gallery), out / "gallery.png")
        files.append("gallery.png")
    return files


def _plot_pred_vs_true(plt, res: list[_Residuals]):
    fig, axes = _grid(plt, len(res))
    for ax, r in zip(axes, res, strict=True):
        t, p = r.true[r.defined], r.pred[r.defined]
        log = r.key in _LOG_KEYS
        if r.key == "pa_deg":
            p = np.mod(p, 180.0)
        if t.size:
            lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
            if t.size >= 200:
                ax.hexbin(t, p, gridsize=50, bins="log", mincnt=1, cmap="viridis",
                          xscale="log" if log else "linear", yscale="log" if log else "linear",
                          linewidths=0)
            else:
                ax.scatter(t, p, s=6, alpha=0.7)
            ax.plot([lo, hi], [lo, hi], "r-", lw=0.8)
        if log:
            _log_axes(ax)
        m = param_metrics(r)
        r2 = m.get("r2_log", m.get("r2"))
        r2s = f"R²={r2:.4f} " if r2 is not None and math.isfinite(r2) else ""
        ax.set_title(f"{r.key}: {r2s}outl={m['outlier_frac']:.3f}", fontsize=9)
        ax.set_xlabel(f"true {_AXIS_LABEL[r.key]}", fontsize=8)
        ax.set_ylabel(f"pred {_AXIS_LABEL[r.key]}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def _log_axes(ax) -> None:
    """Log x and y axes labelled 0.2, 0.5, 1, 2, 5, ... (plain numbers, no minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis, scale in ((ax.xaxis, ax.set_xscale), (ax.yaxis, ax.set_yscale)):
        scale("log")
        axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def _running(x: np.ndarray, y: np.ndarray, nb: int = 12):
    edges = np.unique(np.quantile(x, np.linspace(0, 1, nb + 1)))
    xs, q16, q50, q84 = [], [], [], []
    for lo, hi in zip(edges, edges[1:], strict=False):
        s = (x >= lo) & (x <= hi)
        if np.sum(s) >= 5:
            xs.append(np.median(x[s]))
            a, b, c = np.percentile(y[s], [16, 50, 84])
            q16.append(a)
            q50.append(b)
            q84.append(c)
    return np.array(xs), np.array(q16), np.array(q50), np.array(q84)


def _plot_residuals_vs_snr(plt, res: list[_Residuals], snr: np.ndarray):
    fig, axes = _grid(plt, len(res))
    for ax, r in zip(axes, res, strict=True):
        s = r.defined & np.isfinite(snr) & (snr > 0)
        x, d = snr[s], r.d[s]
        if x.size:
            ax.scatter(x, d, s=2, alpha=0.3, color="0.5", rasterized=True)
            xs, a, b, c = _running(x, d)
            if xs.size:
                ax.plot(xs, b, "r-", lw=1.2, label="median")
                ax.plot(xs, a, "r--", lw=0.8, label="16/84%")
                ax.plot(xs, c, "r--", lw=0.8)
            lim = np.percentile(np.abs(d), 99) * 1.2 or 1.0
            ax.set_ylim(-lim, lim)
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("true S/N", fontsize=8)
        ax.set_ylabel(_D_LABEL[r.key], fontsize=8)
        ax.tick_params(labelsize=7)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _plot_calibration(plt, res: list[_Residuals]):
    cal = [r for r in res if r.z is not None]
    fig, axes = _grid(plt, len(cal))
    g = np.linspace(-5, 5, 201)
    for ax, r in zip(axes, cal, strict=True):
        z = r.z[r.defined]
        z = z[np.isfinite(z)]
        if z.size:
            ax.hist(np.clip(z, -5, 5), bins=50, range=(-5, 5), density=True, color="C0",
                    alpha=0.7, label="(p - t)/σ")
        ax.plot(g, np.exp(-0.5 * g**2) / math.sqrt(2 * math.pi), "r-", lw=1, label="N(0, 1)")
        f = float(np.mean(np.abs(z) < 1)) if z.size else math.nan
        ax.set_title(f"{r.key}: |z|<1 in {f:.3f} (0.683)", fontsize=9)
        ax.set_xlabel("error / σ (clipped to ±5)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _asinh(a: np.ndarray, scale: float) -> np.ndarray:
    return np.arcsinh(a / scale)


def _plot_gallery(plt, gal: dict[str, Any]):
    images, models, sigma = gal["images"], gal["models"], gal.get("sigma")
    labels = gal.get("labels")
    k = images.shape[0]
    fig, axes = plt.subplots(k, 3, figsize=(6.6, 2.2 * k), squeeze=False)
    for i in range(k):
        img, mod = images[i], models[i]
        if sigma is not None:
            scale = float(np.median(sigma[i]))
        else:
            scale = nmad(img - np.median(img))
        scale = scale if scale > 0 and math.isfinite(scale) else 1.0
        a, b = _asinh(img, 3 * scale), _asinh(mod, 3 * scale)
        lo, hi = np.percentile(a, [1.0, 99.8])
        hi = max(hi, lo + 1e-6)
        resid = (img - mod) / (sigma[i] if sigma is not None else scale)
        for ax, arr, kw in ((axes[i, 0], a, dict(cmap="gray_r", vmin=lo, vmax=hi)),
                            (axes[i, 1], b, dict(cmap="gray_r", vmin=lo, vmax=hi)),
                            (axes[i, 2], _asinh(resid, 1.0),
                             dict(cmap="RdBu_r", vmin=-2.3, vmax=2.3))):
            ax.imshow(arr, origin="lower", interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
        if i == 0:
            axes[i, 0].set_title("image", fontsize=9)
            axes[i, 1].set_title("model", fontsize=9)
            axes[i, 2].set_title("(image-model)/σ, asinh", fontsize=9)
        if labels is not None:
            axes[i, 0].set_ylabel(str(labels[i]), fontsize=6)
    fig.tight_layout()
    return fig


def _check_gallery(gallery: Mapping[str, Any]) -> dict[str, Any]:
    """Validated gallery arrays, at most GALLERY_STAMPS stamps evenly spread over the input."""
    out: dict[str, Any] = {}
    for name in ("images", "models"):
        if name not in gallery:
            raise GalnetValueError(f"gallery has no {name!r} array", f"gallery.{name}")
    images = np.asarray(gallery["images"], dtype=float)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[0] == 0:
        raise GalnetValueError(f"gallery images must be (N, H, W), got shape {images.shape}",
                               "gallery.images")
    take = np.unique(np.linspace(0, images.shape[0] - 1, min(GALLERY_STAMPS, images.shape[0]))
                     .round().astype(int))
    out["images"] = images[take]
    for name in ("models", "sigma"):
        if gallery.get(name) is None:
            continue
        a = np.asarray(gallery[name], dtype=float)
        if a.ndim == 2:
            a = a[None]
        if a.shape != images.shape:
            raise GalnetValueError(f"gallery {name} has shape {a.shape}, images {images.shape}",
                                   f"gallery.{name}")
        out[name] = a[take]
    if gallery.get("labels") is not None:
        labels = list(gallery["labels"])
        if len(labels) != images.shape[0]:
            raise GalnetValueError(f"gallery has {len(labels)} labels for {images.shape[0]} "
                                   "images", "gallery.labels")
        out["labels"] = [labels[i] for i in take]
    return out


def _gallery_input(gallery, tt, pt, p_idx, t_idx, ok, snr) -> dict[str, Any] | None:
    if gallery is False:
        return None
    if isinstance(gallery, Mapping):
        return _check_gallery(gallery)
    if gallery not in (None, True):
        raise GalnetValueError("gallery must be a mapping of arrays, None or False",
                               "gallery", gallery)
    h5 = tt.meta.get("galnet_h5") if hasattr(tt, "meta") else None
    if h5 is None or not np.any(ok):
        return None
    rows = np.flatnonzero(ok)
    if snr is not None:  # spread from faint to bright
        rows = rows[np.argsort(snr[rows], kind="stable")]
    rows = rows[np.unique(np.linspace(0, rows.size - 1, min(GALLERY_STAMPS, rows.size))
                          .round().astype(int))]
    return gallery_from_simulation(pt[p_idx[rows]], h5, t_idx[rows])


def gallery_from_simulation(pred, h5_path: str | os.PathLike, rows) -> dict[str, Any]:
    """Gallery arrays for :func:`evaluate`: stamps ``rows`` of a ``galnet simulate`` file and
    models rendered from the matching predicted rows ``pred`` (Table, same order as ``rows``)
    with the file's PSFs and zeropoint. Predicted shapes are clipped to the renderer's bounds."""
    import h5py

    from galnet.profiles.render import render

    rows = np.asarray(rows, dtype=int)
    order = np.argsort(rows)
    try:
        with h5py.File(h5_path, "r") as f:
            zp = float(f.attrs["zeropoint"])
            srt = rows[order]
            images = np.empty((rows.size, *f["images"].shape[1:]))
            psfs = np.empty((rows.size, *f["psfs"].shape[1:]))
            sigma = np.empty_like(images)
            images[order] = f["images"][srt]
            psfs[order] = f["psfs"][srt]
            sigma[order] = f["sigma"][srt]
    except (OSError, KeyError) as err:
        raise GalnetFileError(f"cannot read stamps of {str(h5_path)!r}: {err}") from err
    label = "pred table"
    params = {c: _column(pred, c, label) for c in ("x", "y", "mag", "re_pix", "n", "q", "pa_deg")}
    for c in ("re_pix", "n", "q"):
        params[c] = np.clip(params[c], SPECS[c].lower, SPECS[c].upper)
    models = render(params, psfs, images.shape[1:], zeropoint=zp)
    labels = [f"#{r} m={m:.1f} re={re:.1f} n={n:.1f}" for r, m, re, n
              in zip(rows, params["mag"], params["re_pix"], params["n"], strict=True)]
    return {"images": images, "models": np.asarray(models), "sigma": sigma, "labels": labels}


# ----------------------------------------------------------------------------------------------
# Markdown report
# ----------------------------------------------------------------------------------------------
def _f(v, fmt: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def _param_table(block: dict[str, Any]) -> list[str]:
    lines = ["| param | N | R² | bias | NMAD | mean | RMS | outlier frac | NMAD rel "
             "| ±1σ frac |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, m in block.items():
        r2 = m.get("r2_log", m.get("r2"))
        r2name = " (log)" if "r2_log" in m else ""
        lines.append(
            f"| {key} | {m['N']} | {_f(r2)}{r2name if r2 is not None else ''} | "
            f"{_f(m['bias'], '.4g')} | {_f(m['nmad'], '.4g')} | {_f(m['mean'], '.4g')} | "
            f"{_f(m['rms'], '.4g')} | {_f(m['outlier_frac'], '.4f')} | "
            f"{_f(m.get('nmad_rel'), '.4g')} | {_f(m.get('calib_frac_1sigma'), '.3f')} |")
    return lines


def _binned_table(binned: dict[str, Any]) -> list[str]:
    if not binned["bins"]:
        return [f"_Not available: {binned.get('note', 'no bins')}._"]
    keys = list(binned["bins"][0]["metrics"])
    head = "| bin | N | " + " | ".join(keys) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(keys)]
    for b in binned["bins"]:
        cells = []
        for k in keys:
            m = b["metrics"][k]
            r2 = m.get("r2_log", m.get("r2"))
            cells.append(f"{_f(r2, '.3f')} / {_f(m['nmad'], '.3g')} / "
                         f"{_f(m['outlier_frac'], '.3f')}")
        lines.append(f"| {b['label']} | {b['n_rows']} | " + " | ".join(cells) + " |")
    return lines


def _report(m: dict[str, Any]) -> str:
    scopes = ["overall", *SNR_SUBSETS]
    L = ["# galnet evaluation", "",
         f"- prediction: `{m['pred']}`", f"- truth: `{m['truth']}`",
         f"- rows: {m['n_rows']} matched by {m['matched_by']} (truth has {m['n_truth_rows']}); "
         f"failed predictions: {m['n_failed']} ({_f(m['failed_frac'], '.2%')}); "
         f"invalid truth: {m['n_truth_invalid']}; evaluated: {m['n_evaluated']}", ""]
    if m["targets"]:
        L += ["## Targets", "", "| param | metric | target | " + " | ".join(scopes) + " |",
              "|---|---|---|" + "---:|" * len(scopes)]
        for t in m["targets"]:
            cells = []
            for s in scopes:
                v = t[s]
                mark = {True: "✓", False: "✗", None: ""}[v["pass"]]
                cells.append(f"{_f(v['value'])} {mark}".strip())
            L.append(f"| {t['param']} | {t['metric']} | {t['target']} | " + " | ".join(cells)
                     + " |")
        L.append("")
    L += ["## Overall", "", *_param_table(m["overall"]), ""]
    for name in SNR_SUBSETS:
        n = max((v["N"] for v in m[name].values()), default=0)
        L += [f"## Subset {name}", "", *(_param_table(m[name]) if n else ["_No rows._"]), ""]
    L += ["## By true S/N", "", "Cells: R² (log for re, n) / NMAD / outlier fraction.", "",
          *_binned_table(m["by_snr"]), "",
          "## By true n", "", "Cells: R² (log for re, n) / NMAD / outlier fraction.", "",
          *_binned_table(m["by_n"]), ""]
    L += ["## Definitions", ""] + [f"- `{k}`: {v}" for k, v in m["definitions"].items()] + [""]
    titles = {"pred_vs_true.png": "Predicted vs true", "residuals_vs_snr.png":
              "Residuals vs true S/N (median, 16/84%)", "calibration.png":
              "Uncertainty calibration: (pred - true)/σ", "gallery.png":
              "Residual gallery (image / model / residual)"}
    pngs = [f for f in m["files"] if f.endswith(".png")]
    if pngs:
        L += ["## Figures", ""]
        for f in pngs:
            L += [f"### {titles.get(f, f)}", "", f"![{titles.get(f, f)}]({f})", ""]
    return "\n".join(L)
