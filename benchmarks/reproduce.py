"""Before/after numbers of a refactor: renderer vs GalSim, network test-set metrics, fitter results.

Usage::

    .venv/bin/python benchmarks/reproduce.py --json OUT.json --npz OUT.npz \
        [--galsim 100] [--sim 3000] [--fit 200] [--seed 12345] \
        [--keep-testset T.h5 | --testset T.h5]
    .venv/bin/python benchmarks/reproduce.py --compare BEFORE.json AFTER.json

Runs on whichever ``galnet`` is importable (old flat modules or the new packages: each function
is looked up in a list of module paths, then in every module of the package), on one torch thread:

(a) renderer vs GalSim: ``render(mode="exact")`` against ``tests/galsim_reference.py`` on the
    Moffat-PSF draw of ``benchmarks/accuracy_galsim.py --no-real-psfs`` (seeds 1000 + chunk,
    50 profiles per chunk): max |pixel diff| / peak and stamp-flux error.
(b) network: ``simulate("hsc-r", N, seed, synthetic backgrounds)``, then ``predict_arrays`` with
    the shipped weights on the stamps (their sigma maps and PSFs).
    ``--testset`` reads the stamps of another run instead (the network and fitter alone).
(c) fitter: ``fit_files`` (``galnet fit`` defaults: init from the network, neighbour auto-mask)
    on the first ``--fit`` of those stamps.

The metrics (R², NMAD, outlier fractions, same definitions as galnet.evaluate) are computed here,
not imported from galnet, so that both runs use the same code. The arrays (renders, predictions,
fits, truth) go to the .npz; ``--compare`` prints two runs side by side with the largest
absolute differences of their arrays (the .npz next to each .json, same stem).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import pkgutil
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")

# Where each function lived before the layout change, and may live after it (first found wins).
CANDIDATES = {
    "render": ["galnet.profiles.render", "galnet.render", "galnet.profiles"],
    "simulate": ["galnet.sim.simulate", "galnet.simulate", "galnet.sim"],
    "predict_arrays": ["galnet.nn.predict", "galnet.predict", "galnet.nn"],
    "fit_files": ["galnet.fitting.runner", "galnet.fitting.fitter", "galnet.fitting",
                  "galnet.fit", "galnet.runner", "galnet.api"],
}


# ----------------------------------------------------------------------------------------------
# Imports that work on both layouts
# ----------------------------------------------------------------------------------------------
def find(name: str):
    """The galnet function ``name``: from the candidate modules, else any galnet module."""
    for mod in CANDIDATES[name]:
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        f = getattr(m, name, None)
        if callable(f) and not isinstance(f, type(sys)):
            return f
    import galnet

    for info in pkgutil.walk_packages(galnet.__path__, "galnet."):
        if ".translate" in info.name or info.name.endswith(("__main__", "demo")):
            continue
        try:
            m = importlib.import_module(info.name)
        except ImportError:
            continue
        f = getattr(m, name, None)
        if callable(f) and getattr(f, "__module__", "").startswith("galnet"):
            return f
    raise SystemExit(f"reproduce.py: no galnet function {name!r} found")


def where(f) -> str:
    return f"{f.__module__}.{f.__name__}"


def sha(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Metrics (the definitions of galnet.evaluate, re-implemented so both runs share them)
# ----------------------------------------------------------------------------------------------
def nmad(d) -> float:
    d = np.asarray(d, float)
    return float(1.4826 * np.median(np.abs(d - np.median(d)))) if d.size else math.nan


def r2(t, p) -> float:
    t, p = np.asarray(t, float), np.asarray(p, float)
    if t.size < 2:
        return math.nan
    return 1.0 - float(np.sum((p - t) ** 2)) / float(np.sum((t - t.mean()) ** 2))


def metrics(truth: dict, pred: dict, zp: float) -> dict:
    """R² (mag, log re, log n, q), outlier fractions (15% of flux, re, n, q; 1 px; 15 deg) and
    NMAD of the residuals (mag; dex for re, n; q; pix; deg wrapped, true q < 0.8)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        pmag = zp - 2.5 * np.log10(np.where(pred["flux"] > 0, pred["flux"], np.nan))
    tmag = np.asarray(truth["mag"], float)
    ok = np.isfinite(pmag) & (pred["re_pix"] > 0) & (pred["n"] > 0)
    for k in KEYS:
        ok &= np.isfinite(pred[k])
    t = {k: np.asarray(truth[k], float)[ok] for k in KEYS}
    p = {k: np.asarray(pred[k], float)[ok] for k in KEYS}
    dmag = pmag[ok] - tmag[ok]
    out = {"N": int(ok.sum()), "n_failed": int((~ok).sum())}
    if out["N"] < 2:
        return out
    out["mag"] = {"r2": r2(tmag[ok], pmag[ok]), "nmad": nmad(dmag), "bias": float(np.median(dmag)),
                  "outlier_frac": float(np.mean(np.abs(10 ** (-0.4 * dmag) - 1) > 0.15))}
    for k, name in (("re_pix", "re"), ("n", "n")):
        d = np.log10(p[k] / t[k])
        out[name] = {"r2_log": r2(np.log10(t[k]), np.log10(p[k])), "nmad": nmad(d),
                     "bias": float(np.median(d)),
                     "outlier_frac": float(np.mean(np.abs(p[k] - t[k]) / t[k] > 0.15))}
    d = p["q"] - t["q"]
    out["q"] = {"r2": r2(t["q"], p["q"]), "nmad": nmad(d), "bias": float(np.median(d)),
                "outlier_frac": float(np.mean(np.abs(d) / t["q"] > 0.15))}
    for k in ("x", "y"):
        d = p[k] - t[k]
        out[k] = {"r2": r2(t[k], p[k]), "nmad": nmad(d), "bias": float(np.median(d)),
                  "outlier_frac": float(np.mean(np.abs(d) > 1.0))}
    rnd = t["q"] < 0.8
    d = (np.mod(p["pa_deg"] - t["pa_deg"] + 90.0, 180.0) - 90.0)[rnd]
    out["pa_deg"] = {"N": int(rnd.sum()), "nmad": nmad(d), "bias": float(np.median(d)),
                     "outlier_frac": float(np.mean(np.abs(d) > 15.0))}
    return out


def metric_sets(truth: dict, pred: dict, zp: float) -> dict:
    """:func:`metrics` overall and for true S/N > 20 and 10 < S/N <= 20 (as galnet.evaluate)."""
    snr = np.asarray(truth["snr"], float)
    out = {"overall": metrics(truth, pred, zp)}
    for name, rows in (("snr>20", snr > 20), ("10<snr<=20", (snr > 10) & (snr <= 20))):
        out[name] = metrics({k: np.asarray(v)[rows] for k, v in truth.items()},
                            {k: np.asarray(v)[rows] for k, v in pred.items()}, zp)
    return out


# ----------------------------------------------------------------------------------------------
# (a) renderer vs GalSim
# ----------------------------------------------------------------------------------------------
def part_galsim(n: int, arrays: dict) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from galsim_reference import accuracy_cases, galsim_reference

    render = find("render")
    rows, imgs, skipped = [], [], 0
    t0 = time.perf_counter()
    per_chunk = 50
    for chunk in range(math.ceil(n / per_chunk)):
        for p, _, psf in accuracy_cases(chunk, [], min(per_chunk, n - chunk * per_chunk)):
            img = np.asarray(render(p, psf)[0], float)
            try:
                ref = galsim_reference(p, psf)
            except (RuntimeError, ValueError):  # GalSim cannot draw it (as in accuracy_galsim)
                skipped += 1
                continue
            imgs.append(img)
            rows.append((p["n"], p["re_pix"], p["q"], np.abs(img - ref).max() / ref.max(),
                         img.sum() / ref.sum() - 1))
    a = np.array(rows)
    nn, err, dflux = a[:, 0], a[:, 3], a[:, 4]
    arrays["galsim_rows"] = a  # n, re_pix, q, max|d|/peak, flux error
    arrays["galsim_renders"] = np.array(imgs)
    tol = np.where(nn <= 4, 0.005, 0.01)
    lo = nn <= 4
    return {
        "render": where(render), "profiles": len(a), "galsim_failed": skipped,
        "max_abs_diff_over_peak": {"max": float(err.max()), "median": float(np.median(err)),
                                   "max_n_le_4": float(err[lo].max()),
                                   "max_n_gt_4": float(err[~lo].max()) if (~lo).any() else None},
        "flux_err": {"max_abs": float(np.abs(dflux).max()),
                     "median": float(np.median(dflux))},
        "fails_tolerance": int(np.sum((err > tol) | (np.abs(dflux) > 0.002))),
        "renders_sha256": sha(np.array(imgs)),
        "seconds": round(time.perf_counter() - t0, 1),
    }


# ----------------------------------------------------------------------------------------------
# (b) network on a simulated test set, (c) fitter on its first stamps
# ----------------------------------------------------------------------------------------------
def read_h5(path: Path) -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        d = {k: f[k][:] for k in ("images", "sigma", "psfs")}
        params = f["params"][:]
        d["zeropoint"] = float(f.attrs["zeropoint"])
        d["pixel_scale"] = float(f.attrs["pixel_scale"])
    d["truth"] = {k: np.asarray(params[k], float) for k in params.dtype.names}
    return d


def part_network(n: int, seed: int, tmp: Path, arrays: dict, testset: Path | None = None,
                 keep: Path | None = None) -> tuple[dict, dict]:
    predict_arrays = find("predict_arrays")
    t0 = time.perf_counter()
    if testset is None:
        simulate = find("simulate")
        h5 = simulate("hsc-r", n, seed, tmp / "test.h5", progress=False, threads=1)
        if keep is not None:
            shutil.copyfile(h5, keep)
    else:  # stamps simulated by another run: the network and fitter on the same inputs
        simulate, h5 = None, testset
    t_sim = time.perf_counter() - t0
    d = read_h5(Path(h5))
    n = len(d["images"])
    truth = d["truth"]
    for k, v in truth.items():
        arrays[f"truth_{k}"] = v
    t0 = time.perf_counter()
    res = predict_arrays(d["images"], d["psfs"], sigma=d["sigma"], device="cpu")
    t_pred = time.perf_counter() - t0
    for k, v in res.items():
        arrays[f"nn_{k}"] = np.asarray(v, float)
    pred = np.stack([res[k] for k in KEYS], 1)
    out = {
        "simulate": where(simulate) if simulate else f"read from {testset}",
        "predict_arrays": where(predict_arrays),
        "stamps": n, "seed": seed,
        "sim_sha256": {"images": sha(d["images"]), "sigma": sha(d["sigma"]),
                       "psfs": sha(d["psfs"]),
                       "params": sha(np.stack([truth[k] for k in sorted(truth)], 1))},
        "metrics": metric_sets(truth, res, d["zeropoint"]),
        "chi2nu_median": float(np.nanmedian(res["chi2nu"])),
        "pred_sha256": sha(pred), "pred_sum": float(np.sum(pred)),
        "seconds": {"simulate": round(t_sim, 1), "predict": round(t_pred, 1)},
    }
    return out, d


def part_fit(d: dict, m: int, tmp: Path, arrays: dict) -> dict:
    fit_files = find("fit_files")
    t0 = time.perf_counter()
    t = fit_files(tmp / "fit.fits", images=d["images"][:m], psf=d["psfs"][:m],
                  sigma=d["sigma"][:m], pixel_scale=d["pixel_scale"], zeropoint=d["zeropoint"],
                  preset="hsc-r", progress=False)
    dt = time.perf_counter() - t0
    res = {}
    for c in t.colnames:
        v = np.asarray(getattr(t[c], "value", t[c]))
        if v.dtype.kind in "fiub":
            res[c] = v.astype(float)
            arrays[f"fit_{c}"] = res[c]
    truth = {k: v[:m] for k, v in d["truth"].items()}
    arrays["fit_images_first"] = d["images"][:m]
    pred = np.stack([res[k] for k in KEYS], 1)
    return {
        "fit_files": where(fit_files), "stamps": m, "options": "defaults (init='nn', auto-mask)",
        "metrics": metric_sets(truth, res, d["zeropoint"]),
        "chi2nu_median": float(np.nanmedian(res["chi2nu"])),
        "converged_frac": float(np.mean(res["converged"])) if "converged" in res else None,
        "niter_median": float(np.median(res["niter"])) if "niter" in res else None,
        "flags_sum": int(np.sum(res["flags"])) if "flags" in res else None,
        "pred_sha256": sha(pred), "pred_sum": float(np.nansum(pred)),
        "seconds": round(dt, 1),
    }


# ----------------------------------------------------------------------------------------------
# Comparison of two runs
# ----------------------------------------------------------------------------------------------
def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def compare(a_json: Path, b_json: Path) -> dict:
    a = flatten(json.loads(Path(a_json).read_text()))
    b = flatten(json.loads(Path(b_json).read_text()))
    print(f"{'key':60s} {'A':>22s} {'B':>22s} {'B - A':>11s}")
    diffs = {}
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "-"), b.get(k, "-")
        delta = ""
        if isinstance(va, int | float) and isinstance(vb, int | float) and not isinstance(
                va, bool) and va is not None and vb is not None:
            delta = f"{vb - va:+.3g}"
            diffs[k] = vb - va
        mark = "" if va == vb or "seconds" in k or k.startswith("env.") else "  <--"
        sa, sb = (f"{v:.12g}" if isinstance(v, float) else str(v) for v in (va, vb))
        print(f"{k:60s} {sa:>22.22s} {sb:>22.22s} {delta:>11s}{mark}")
    za = np.load(Path(a_json).with_suffix(".npz"))
    zb = np.load(Path(b_json).with_suffix(".npz"))
    print(f"\n{'array':32s} {'shape':>16s} {'max |B - A|':>12s} {'NaN mismatch':>13s}")
    arr = {}
    for k in sorted(set(za.files) | set(zb.files)):
        if k not in za.files or k not in zb.files:
            print(f"{k:32s} only in {'A' if k in za.files else 'B'}")
            continue
        x, y = za[k].astype(float), zb[k].astype(float)
        if x.shape != y.shape:
            print(f"{k:32s} shapes differ {x.shape} {y.shape}")
            continue
        both = np.isfinite(x) & np.isfinite(y)
        mx = float(np.max(np.abs(x[both] - y[both]))) if both.any() else 0.0
        nan_mis = int(np.sum(np.isfinite(x) != np.isfinite(y)))
        arr[k] = mx
        print(f"{k:32s} {str(x.shape):>16s} {mx:12.3g} {nan_mis:13d}")
    return {"metric_deltas": diffs, "array_max_abs_diff": arr}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="output JSON")
    ap.add_argument("--npz", type=Path, help="output arrays [default: the JSON's stem + .npz]")
    ap.add_argument("--galsim", type=int, default=100, help="profiles vs GalSim (0: skip)")
    ap.add_argument("--sim", type=int, default=3000, help="simulated test stamps")
    ap.add_argument("--fit", type=int, default=200, help="stamps fitted (0: skip)")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--testset", type=Path,
                    help="use this simulated .h5 (e.g. from --keep-testset of another run) "
                         "instead of simulating: isolates the network and fitter")
    ap.add_argument("--keep-testset", type=Path, help="copy the simulated .h5 here")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"))
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    import torch

    torch.set_num_threads(1)
    import galnet

    t0 = time.perf_counter()
    arrays: dict[str, np.ndarray] = {}
    ref = ROOT / "tests" / "galsim_reference.py"
    out = {"env": {"galnet_file": galnet.__file__, "galnet_version": galnet.__version__,
                   "python": platform.python_version(), "torch": torch.__version__,
                   "numpy": np.__version__, "galsim_reference_sha256": sha(
                       np.frombuffer(ref.read_bytes(), np.uint8)),
                   "command": " ".join(sys.argv)}}
    if args.galsim:
        out["galsim"] = part_galsim(args.galsim, arrays)
        print(json.dumps(out["galsim"], indent=1), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out["network"], d = part_network(args.sim, args.seed, Path(tmp), arrays,
                                              args.testset, args.keep_testset)
        print(json.dumps(out["network"], indent=1), flush=True)
        if args.fit:
            out["fit"] = part_fit(d, args.fit, Path(tmp), arrays)
    out["seconds_total"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=1, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
        np.savez_compressed(args.npz or args.json.with_suffix(".npz"), **arrays)


if __name__ == "__main__":
    main()
