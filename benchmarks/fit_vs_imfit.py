"""Head-to-head: galnet (network, fit from moments, network + fit) against PyImfit, same stamps.

    python benchmarks/fit_vs_imfit.py --test test.h5 -n 1000 --out bench_fit/ [--threads 2]
        [--imfit-procs 2] [--dtype float64] [--white]

On the first ``n`` stamps of a simulated test file (real-background hsc-r stamps from
``galnet simulate --bank``: real sky, real correlated noise, neighbours; their sigma maps and
PSFs), all methods get the same inputs: the stamp, its sigma map, its 25x25 PSF and one neighbour
mask (:func:`galnet.fitting.init.auto_mask` around the stamp centre, computed once). Initial
guesses for the fits from moments are :func:`galnet.fitting.init.moments_init` (segment centroid,
second moments minus the PSF's, half-light radius, concentration -> n), as a careful user would
make them.

- ``nn``: GaLNet alone (``galnet.nn.predict.predict_arrays``).
- ``fit(moments)``: galnet's batched Levenberg-Marquardt from the moment guesses.
- ``nn+fit``: the same fit from the network's guesses (``galnet predict --refine``).
- ``nn+fit, nn prior``: the same, a MAP fit with the network's values and errors (x2) as a
  Gaussian prior on re, n and the ellipticity (``galnet fit --nn-prior``).
- ``imfit(moments)``: PyImfit's Levenberg-Marquardt (Imfit's Sérsic: pixel-integrated, convolved
  with the PSF image) from the moment guesses, ``--imfit-procs`` processes of one thread each.

Reported (in the same run, on the same machine): evaluate's metrics (R², outlier fraction,
NMAD) overall and at S/N > 20, catastrophic failures (|Δre|/re > 50%), chi2nu per method and
the fraction of stamps where galnet's chi2nu <= Imfit's x 1.005, throughput (fit time only, and
end to end), and the Cramér-Rao efficiency ``1 / NMAD((fit - truth) / sigma_CRB)`` per parameter
(``sigma_CRB`` from :func:`galnet.fitting.lm.fisher_errors` at the truth with the stamp's sigma map,
PSF and mask). With ``--white`` the same stamps are also re-simulated as model + white Gaussian
noise of the sigma map (no neighbours, no correlated noise): where the model is exactly right.
Writes ``results.json`` and ``report.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from multiprocessing import get_context
from pathlib import Path

import h5py
import numpy as np
import torch

from galnet.evaluate.residuals import param_metrics, residuals
from galnet.fitting.init import auto_mask, moments_init
from galnet.fitting.lm import fisher_errors, fit_arrays
from galnet.fitting.problem import FitConfig
from galnet.nn.predict import predict_arrays
from galnet.profiles.render import render
from galnet.sim.simulate import read_params
from galnet.stats import nmad

PARAMS = ("mag", "re", "n", "q", "pa_deg", "x")
COLS = {"mag": "mag", "re": "re_pix", "n": "n", "q": "q", "pa_deg": "pa_deg", "x": "x"}
CRB_KEYS = ("re_pix", "n", "q", "flux", "x", "pa_deg")


def _imfit_one(args):
    from galnet.interop.pyimfit_runner import imfit_fit

    img, psf, sig, mask, init = args
    try:
        r = imfit_fit(img, psf, init=init, sigma=sig, mask=mask, max_threads=1, flux_err=False)
    except Exception as err:  # noqa: BLE001 - a failed fit is a result, not a crash
        r = {"converged": False, "message": str(err)}
    return r


def run_imfit(images, psfs, sigma, mask, init, procs: int) -> tuple[dict, float]:
    N = len(images)
    jobs = [(images[i].astype(float), psfs[i].astype(float), sigma[i].astype(float), mask[i],
             {k: float(init[k][i]) for k in ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")})
            for i in range(N)]
    t0 = time.perf_counter()
    with get_context("fork").Pool(procs) as pool:
        rows = pool.map(_imfit_one, jobs, chunksize=8)
    dt = time.perf_counter() - t0
    keys = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg", "chi2nu")
    out = {k: np.array([r.get(k, np.nan) for r in rows], float) for k in keys}
    out["converged"] = np.array([bool(r.get("converged", False)) for r in rows])
    out["niter"] = np.array([r.get("niter", -1) or -1 for r in rows])
    return out, dt


def metrics(res: dict, truth, zp: float, rows: np.ndarray) -> dict:
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        pred_mag = zp - 2.5 * np.log10(np.where(res["flux"] > 0, res["flux"], np.nan))
    for p in PARAMS:
        col = COLS[p]
        pv = pred_mag if p == "mag" else np.asarray(res[col], float)
        ok = np.isfinite(pv) & rows
        if p in ("re", "n"):
            ok &= pv > 0
        r = residuals(col, np.asarray(truth[col], float)[ok], pv[ok], None,
                      np.asarray(truth["q"], float)[ok])
        m = param_metrics(r)
        m["n_failed"] = int((rows & ~ok).sum())
        out[p] = m
    re_t = np.asarray(truth["re_pix"], float)
    bad = ~np.isfinite(res["re_pix"]) | (np.abs(res["re_pix"] - re_t) / re_t > 0.5)
    out["catastrophic"] = int((bad & rows).sum())
    out["catastrophic_frac"] = float((bad & rows).sum() / max(rows.sum(), 1))
    return out


def efficiency(res: dict, truth, crb: dict, rows: np.ndarray) -> dict:
    out = {}
    for k in CRB_KEYS:
        d = np.asarray(res[k], float) - np.asarray(truth[k], float)
        if k == "pa_deg":
            d = np.mod(d + 90, 180) - 90
            rows_k = rows & (np.asarray(truth["q"]) < 0.8)
        else:
            rows_k = rows
        z = d / crb[k]
        z = z[rows_k & np.isfinite(z)]
        out[k] = 1.0 / nmad(z) if z.size else math.nan
    return out


def chi2_compare(a: np.ndarray, b: np.ndarray) -> dict:
    ok = np.isfinite(a) & np.isfinite(b)
    return {"N": int(ok.sum()), "frac_le_1.005": float(np.mean(a[ok] <= b[ok] * 1.005)),
            "median_ratio": float(np.median(a[ok] / b[ok]))}


def run_set(name, images, sigma, psfs, truth, zp, args, out_dir) -> dict:
    N = len(images)
    snr = np.asarray(truth["snr"], float)
    subsets = {"all": np.ones(N, bool), "snr>20": snr > 20}
    res, times = {}, {}
    t0 = time.perf_counter()
    mask = auto_mask(images, sigma)
    times["auto_mask"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    init_m = moments_init(images, psfs, mask=mask, sigma=sigma)
    times["moments"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    nn = predict_arrays(images, psfs, sigma=sigma, chi2=False)
    times["nn"] = time.perf_counter() - t0
    res["nn"] = nn
    cfg = FitConfig(dtype=args.dtype)
    for label, init, prior in (("fit(moments)", init_m, None), ("nn+fit", nn, None),
                               ("nn+fit, nn prior", nn, nn)):
        t0 = time.perf_counter()
        res[label] = fit_arrays(images, psfs, sigma=sigma, mask=mask, init=init, prior=prior,
                                config=cfg)
        times[label] = time.perf_counter() - t0
    if not args.no_imfit:
        res["imfit(moments)"], times["imfit(moments)"] = run_imfit(images, psfs, sigma, mask,
                                                                   init_m, args.imfit_procs)
    t0 = time.perf_counter()
    crb = fisher_errors({k: np.asarray(truth[k], float) for k in
                         ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")}, psfs, sigma,
                        images.shape[1:], mask=mask)
    times["crb"] = time.perf_counter() - t0
    report = {"set": name, "N": N, "times_s": times, "methods": {}}
    for label, r in res.items():
        m = {s: metrics(r, truth, zp, rows) for s, rows in subsets.items()}
        m["efficiency_snr>20"] = efficiency(r, truth, crb, subsets["snr>20"])
        if "converged" in r:
            m["converged_frac"] = float(np.mean(r["converged"]))
            m["niter_median"] = float(np.median(r["niter"]))
        if "chi2nu" in r and np.isfinite(r["chi2nu"]).any():
            m["chi2nu_median"] = float(np.nanmedian(r["chi2nu"]))
            m["chi2nu_p90"] = float(np.nanpercentile(r["chi2nu"], 90))
        fit_time = times[label]
        m["fit_seconds"] = fit_time
        m["fit_gal_per_s"] = N / fit_time
        report["methods"][label] = m
    if "imfit(moments)" in res:
        for label in ("fit(moments)", "nn+fit", "nn+fit, nn prior"):
            report["methods"][label]["chi2_vs_imfit"] = chi2_compare(
                res[label]["chi2nu"], res["imfit(moments)"]["chi2nu"])
        ti = times["imfit(moments)"]
        for label in ("fit(moments)", "nn+fit", "nn+fit, nn prior"):
            report["methods"][label]["speedup_vs_imfit"] = ti / times[label]
        e2e = times["auto_mask"] + times["nn"] + times["nn+fit"]
        report["end_to_end"] = {"nn+fit_with_mask_s": e2e, "gal_per_s": N / e2e,
                                "imfit_with_mask_and_moments_s": ti + times["auto_mask"]
                                + times["moments"],
                                "speedup": (ti + times["auto_mask"] + times["moments"]) / e2e}
    return report


def markdown(rep: dict) -> str:
    L = [f"### {rep['set']} ({rep['N']} stamps)", ""]
    methods = list(rep["methods"])
    L.append("| | " + " | ".join(methods) + " |")
    L.append("|---" * (len(methods) + 1) + "|")

    def row(label, fn):
        vals = []
        for m in methods:
            try:
                v = fn(rep["methods"][m])
            except (KeyError, TypeError):
                v = None
            vals.append("-" if v is None or (isinstance(v, float) and not math.isfinite(v))
                        else (f"{v:.4g}" if isinstance(v, float) else str(v)))
        L.append(f"| {label} | " + " | ".join(vals) + " |")

    for s in ("all", "snr>20"):
        row(f"R² mag ({s})", lambda m, s=s: m[s]["mag"]["r2"])
        row(f"R² log re ({s})", lambda m, s=s: m[s]["re"]["r2_log"])
        row(f"R² log n ({s})", lambda m, s=s: m[s]["n"]["r2_log"])
        row(f"R² q ({s})", lambda m, s=s: m[s]["q"]["r2"])
        row(f"outliers re ({s})", lambda m, s=s: m[s]["re"]["outlier_frac"])
        row(f"outliers n ({s})", lambda m, s=s: m[s]["n"]["outlier_frac"])
        row(f"NMAD log re ({s})", lambda m, s=s: m[s]["re"]["nmad"])
        row(f"catastrophic (\\|Δre\\|/re > 50%) ({s})", lambda m, s=s: m[s]["catastrophic"])
    for k in ("re_pix", "n", "q", "flux", "x", "pa_deg"):
        row(f"CRB efficiency {k} (S/N > 20)", lambda m, k=k: m["efficiency_snr>20"][k])
    row("chi2nu median", lambda m: m["chi2nu_median"])
    row("chi2nu 90th percentile", lambda m: m["chi2nu_p90"])
    row("chi2nu <= Imfit's x 1.005 (fraction)", lambda m: m["chi2_vs_imfit"]["frac_le_1.005"])
    row("converged", lambda m: m["converged_frac"])
    row("median iterations", lambda m: m["niter_median"])
    row("time (s)", lambda m: m["fit_seconds"])
    row("galaxies/s", lambda m: m["fit_gal_per_s"])
    row("speed vs Imfit", lambda m: m["speedup_vs_imfit"])
    t = rep["times_s"]
    L += ["", f"Shared inputs: auto-mask {t['auto_mask']:.1f} s, moment guesses "
          f"{t['moments']:.1f} s, Cramér-Rao bounds {t['crb']:.1f} s."]
    if "end_to_end" in rep:
        e = rep["end_to_end"]
        L.append(f"End to end (mask + network + fit): {e['nn+fit_with_mask_s']:.1f} s = "
                 f"{e['gal_per_s']:.1f} galaxies/s; Imfit with mask and moments "
                 f"{e['imfit_with_mask_and_moments_s']:.1f} s: {e['speedup']:.1f}x.")
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test", required=True, type=Path, help="simulated test file (HDF5)")
    ap.add_argument("-n", type=int, default=1000, help="first n stamps [1000]")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=2, help="torch threads [2]")
    ap.add_argument("--imfit-procs", type=int, default=2, help="Imfit processes [2]")
    ap.add_argument("--dtype", default="float32", choices=("float64", "float32"))
    ap.add_argument("--white", action="store_true", help="also the white-noise re-simulation")
    ap.add_argument("--no-imfit", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    with h5py.File(args.test) as f:
        images = f["images"][: args.n].astype(np.float64)
        sigma = f["sigma"][: args.n].astype(np.float64)
        psfs = f["psfs"][: args.n].astype(np.float64)
        zp = float(f.attrs["zeropoint"])
    truth = read_params(args.test)[: args.n]
    reports = [run_set("real backgrounds", images, sigma, psfs, truth, zp, args, args.out)]
    if args.white:
        rng = np.random.default_rng(0)
        model = render({k: np.asarray(truth[k], float) for k in
                        ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")}, psfs, (61, 61))
        white = model + rng.normal(size=model.shape) * sigma
        reports.append(run_set("white noise (model + Gaussian noise of the sigma map)", white,
                               sigma, psfs, truth, zp, args, args.out))
    cmd = (f"python benchmarks/fit_vs_imfit.py --test {args.test.name} -n {args.n} --threads "
           f"{args.threads} --imfit-procs {args.imfit_procs} --dtype {args.dtype}"
           + (" --white" if args.white else ""))
    text = "\n\n".join([f"Command: `{cmd}`", *[markdown(r) for r in reports]])
    (args.out / "results.json").write_text(json.dumps(reports, indent=1, default=float))
    (args.out / "report.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
