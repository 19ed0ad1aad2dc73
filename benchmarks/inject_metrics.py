"""Matching and metrics shared by benchmarks/inject_frames.py and benchmarks/stress_stamps.py.

A truth table is a dict of (N,) arrays: ``kind`` (0 galaxy, 1 star), ``x``, ``y``, ``re_pix``,
``n``, ``q``, ``snr``, ``regime``, ``det`` (detected), and per run (prefix ``net_`` network,
``ref_`` refine) the matched measurements ``{p}re_pix``, ``{p}n``, ``{p}q``, ``{p}chi2nu``,
``{p}chi2nu_nn``, ``{p}flags``, ``{p}rebin`` (NaN / 0 where unmatched). Statistics from
:mod:`galnet.stats` (R2, the 15 % outlier limit); catalogue columns read with
:func:`galnet.evaluate.matching.column_values` (units stripped, masked -> NaN).

:func:`summarise`: completeness vs S/N; per regime (S/N > 20), for the network and the refine,
R2 of log re, log n, q, outliers (|rel err| > 15 %), catastrophic (|dre|/re > 50 %; a non-finite
measurement counts as one), catastrophic among objects without a problem flag
(:data:`PROBLEM`), the fraction of catastrophic cases flagged, refine chi2nu <= network chi2nu
(the refine's ``chi2nu_nn`` column when it has one, else the network run's chi2nu), the fraction
the frame mode rebinned; stars with S/N > 50 flagged POINT_SOURCE; galaxies with
re >= FWHM / 2 flagged POINT_SOURCE; the same R2 / outliers on the rows whose re is measured
(``res_``: not flagged UNRESOLVED / POINT_SOURCE, whose re_pix is a 95 % upper limit), how often
such a limit is >= the true re, and the MISFIT rate (every injected galaxy is one Sérsic).
"""

from __future__ import annotations

import math

import numpy as np

from galnet.flags import Flag
from galnet.stats import OUTLIER_REL, r2_score

#: Flags that say "do not trust this measurement" (REBINNED, PADDED, REVERTED only inform).
PROBLEM = int(sum(f for f in Flag if f not in (Flag.REBINNED, Flag.PADDED, Flag.REVERTED)))
#: Rows whose re_pix is an upper limit, not a measurement.
UPPER = int(Flag.UNRESOLVED | Flag.POINT_SOURCE)
#: Completeness bins of S/N.
SNR_BINS = (10, 20, 50, 100, 200, 500)
#: |dre| / re above this is catastrophic.
CATASTROPHIC = 0.5


def _col(cat, name: str) -> np.ndarray:
    from galnet.evaluate.matching import column_values

    if name not in cat.colnames:
        return np.full(len(cat), np.nan)
    return column_values(cat, name, "catalogue")


def match(tx, ty, cx, cy, radius: float) -> np.ndarray:
    """Index into the catalogue of each truth object's detection (-1: none), greedy nearest
    pairs first, one detection per object, within ``radius`` px."""
    idx = np.full(len(tx), -1)
    if len(cx) == 0 or len(tx) == 0:
        return idx
    d = np.hypot(tx[:, None] - cx[None], ty[:, None] - cy[None])
    used = np.zeros(len(cx), bool)
    for flat in np.argsort(d, axis=None):
        i, j = np.unravel_index(flat, d.shape)
        if d[i, j] > radius:
            break
        if idx[i] < 0 and not used[j]:
            idx[i], used[j] = j, True
    return idx


def measured(cat, idx: np.ndarray, prefix: str) -> dict:
    """Catalogue values of the matched rows (NaN / 0 flags where unmatched)."""
    ok = idx >= 0
    out = {}
    for k in ("x", "y", "re_pix", "n", "q", "chi2nu", "chi2nu_nn", "flags", "rebin"):
        v = np.full(len(idx), np.nan)
        v[ok] = _col(cat, k)[idx[ok]]
        out[f"{prefix}{k}"] = v
    out[f"{prefix}flags"] = np.nan_to_num(out[f"{prefix}flags"]).astype(np.int64)
    return out


def spurious(cat, idx, real_cat, radius: float) -> int:
    """Detections matching neither an injection nor a source of the un-injected catalogue."""
    free = np.setdiff1d(np.arange(len(cat)), idx[idx >= 0])
    if len(free) == 0:
        return 0
    rx, ry = _col(real_cat, "x"), _col(real_cat, "y")
    cx, cy = _col(cat, "x")[free], _col(cat, "y")[free]
    if len(rx) == 0:
        return len(free)
    return int(np.sum(np.min(np.hypot(cx[:, None] - rx, cy[:, None] - ry), axis=1) > radius))


# ------------------------------------------------------------------------------ metrics
def _frac(mask) -> float:
    mask = np.asarray(mask, bool)
    return float(mask.mean()) if mask.size else math.nan


def param_metrics(t: dict, sel: np.ndarray, p: str) -> dict:
    """R2 (log re, log n, q), outlier and catastrophic fractions for rows ``sel`` and the
    measurement prefix ``p`` ("net_"/"ref_"); rows with a non-finite measurement count as
    catastrophic outliers and are left out of R2."""
    re_t, re_m = t["re_pix"][sel], t[f"{p}re_pix"][sel]
    fin = np.isfinite(re_m) & (re_m > 0) & np.isfinite(t[f"{p}n"][sel]) & np.isfinite(
        t[f"{p}q"][sel])
    rel = np.where(fin, np.abs(re_m / re_t - 1), np.inf)
    cat = rel > CATASTROPHIC
    problem = (t[f"{p}flags"][sel] & PROBLEM) != 0
    out = {"N": int(sel.sum()), "nonfinite": int((~fin).sum())}
    for k, log in (("re_pix", True), ("n", True), ("q", False)):
        a, b = t[k][sel][fin], t[f"{p}{k}"][sel][fin]
        out[f"r2_{'log_' if log else ''}{k.split('_')[0]}"] = (
            r2_score(np.log10(a), np.log10(b)) if log else r2_score(a, b))
        err = np.where(fin, np.abs(t[f"{p}{k}"][sel] / t[k][sel] - 1), np.inf)
        out[f"outlier_{k.split('_')[0]}"] = _frac(err > OUTLIER_REL)
    out.update(catastrophic=_frac(cat), catastrophic_unflagged=_frac(cat[~problem]),
               flagged=_frac(problem), n_catastrophic=int(cat.sum()),
               flags_catch_catastrophic=_frac(problem[cat]))
    # re measured (not an upper limit): R2 and outliers on those rows; upper limits checked
    flags = t[f"{p}flags"][sel]
    upper = (flags & UPPER) != 0
    res = fin & ~upper
    out["upper_limit"] = _frac(upper)
    out["upper_limit_ok"] = _frac(re_m[upper & fin] >= re_t[upper & fin])
    out["N_resolved"] = int(res.sum())
    for k, log in (("re_pix", True), ("n", True), ("q", False)):
        a, b = t[k][sel][res], t[f"{p}{k}"][sel][res]
        out[f"res_r2_{'log_' if log else ''}{k.split('_')[0]}"] = (
            r2_score(np.log10(a), np.log10(b)) if log else r2_score(a, b)) if res.sum() > 1 \
            else math.nan
        out[f"res_outlier_{k.split('_')[0]}"] = _frac(np.abs(b / a - 1) > OUTLIER_REL)
    out["res_catastrophic"] = _frac(cat[res])
    out["misfit"] = _frac((flags & int(Flag.MISFIT)) != 0)
    return out


def summarise(t: dict, fwhm: np.ndarray, snr_cut: float = 20.0) -> dict:
    """All metrics of a concatenated truth+measurement table (module docstring)."""
    gal, star = t["kind"] == 0, t["kind"] == 1
    det = t["det"]
    comp = {}
    for a, b in zip(SNR_BINS[:-1], SNR_BINS[1:], strict=True):
        s = gal & (t["snr"] >= a) & (t["snr"] < b)
        comp[f"{a}-{b}"] = {"N": int(s.sum()), "completeness": _frac(det[s])}
    out = {"completeness_galaxies": comp, "completeness_stars": _frac(det[star]),
           "regimes": {}}
    base = gal & det & (t["snr"] > snr_cut)
    for reg in ("all", "isolated", "neighbour", "large"):
        sel = base if reg == "all" else base & (t["regime"] == reg)
        r = {p: param_metrics(t, sel, p) for p in ("net_", "ref_")}
        c_nn = np.where(np.isfinite(t["ref_chi2nu_nn"]), t["ref_chi2nu_nn"], t["net_chi2nu"])
        ok = sel & np.isfinite(c_nn) & np.isfinite(t["ref_chi2nu"])
        r["refine_chi2nu_le_network"] = _frac(t["ref_chi2nu"][ok] <= c_nn[ok] * (1 + 1e-6))
        r["rebinned"] = _frac(np.nan_to_num(t["net_rebin"][sel], nan=1.0) > 1)
        out["regimes"][reg] = r
    ps = int(Flag.POINT_SOURCE)
    for p in ("net_", "ref_"):
        s50 = star & det & (t["snr"] > 50)
        resolved = gal & det & (t["re_pix"] >= fwhm / 2)
        out[f"{p}stars_snr50_point_source"] = _frac((t[f"{p}flags"][s50] & ps) != 0)
        out[f"{p}galaxies_resolved_point_source"] = _frac((t[f"{p}flags"][resolved] & ps) != 0)
    out["N_galaxies"], out["N_stars"] = int(gal.sum()), int(star.sum())
    return out


def markdown(s: dict) -> str:
    """Markdown tables of :func:`summarise`'s output."""
    keys = ("N", "r2_log_re", "r2_log_n", "r2_q", "outlier_re", "outlier_n", "outlier_q",
            "catastrophic", "catastrophic_unflagged", "flags_catch_catastrophic")
    lines = ["| regime | run | " + " | ".join(keys) + " | chi2nu ref<=net |",
             "|---" * (len(keys) + 3) + "|"]
    for reg, r in s["regimes"].items():
        for p in ("net_", "ref_"):
            v = [f"{r[p][k]:.3f}" if isinstance(r[p][k], float) else str(r[p][k]) for k in keys]
            lines.append(f"| {reg} | {p[:-1]} | " + " | ".join(v) +
                         f" | {r['refine_chi2nu_le_network']:.3f} |")
    keys = ("N_resolved", "res_r2_log_re", "res_r2_log_n", "res_r2_q", "res_outlier_re",
            "res_outlier_n", "res_outlier_q", "res_catastrophic", "upper_limit", "upper_limit_ok",
            "misfit")
    lines += ["", "re measured (rows not flagged UNRESOLVED / POINT_SOURCE, whose re_pix is an "
              "upper limit); upper_limit_ok: the limit >= the true re; misfit: MISFIT raised on "
              "these single-Sersic galaxies", "",
              "| regime | run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for reg, r in s["regimes"].items():
        for p in ("net_", "ref_"):
            v = [f"{r[p][k]:.3f}" if isinstance(r[p][k], float) else str(r[p][k]) for k in keys]
            lines.append(f"| {reg} | {p[:-1]} | " + " | ".join(v) + " |")
    lines += ["", "| regime | rebinned by the frame mode |", "|---|---|"]
    lines += [f"| {k} | {r['rebinned']:.3f} |" for k, r in s["regimes"].items()]
    lines += ["", "| quantity | network | refine |", "|---|---|---|"]
    for k in ("stars_snr50_point_source", "galaxies_resolved_point_source", "objects_per_s",
              "spurious"):
        v = [s.get(f"{p}{k}", math.nan) for p in ("net_", "ref_")]
        lines.append(f"| {k} | {v[0]:.3f} | {v[1]:.3f} |")
    lines += ["", f"stars detected: {s['completeness_stars']:.3f}", "",
              "| S/N | N | completeness |", "|---|---|---|"]
    lines += [f"| {k} | {v['N']} | {v['completeness']:.3f} |"
              for k, v in s["completeness_galaxies"].items()]
    return "\n".join(lines)


def subsets(t: dict, groups: dict[str, np.ndarray]) -> dict:
    """Network and refine metrics of the "all" regime (S/N > 20) within each boolean subset."""
    out = {}
    for name, sel in groups.items():
        sub = {k: v[sel] for k, v in t.items()}
        out[name] = {p: summarise(sub, sub["fwhm"])["regimes"]["all"][p] for p in ("net_", "ref_")}
    return out


def subsets_markdown(sub: dict) -> str:
    """A markdown table of :func:`subsets`."""
    keys = ("N", "r2_log_re", "r2_log_n", "r2_q", "outlier_re", "outlier_n", "catastrophic")
    lines = ["| subset | run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for name, r in sub.items():
        for p in ("net_", "ref_"):
            v = [f"{r[p][k]:.3f}" if isinstance(r[p][k], float) else str(r[p][k]) for k in keys]
            lines.append(f"| {name} | {p[:-1]} | " + " | ".join(v) + " |")
    return "\n".join(lines)
