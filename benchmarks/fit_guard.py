"""The guarded refine against the network on stamps of a ``galnet simulate``-layout file.

Usage::

    .venv/bin/python benchmarks/fit_guard.py --in test_galsim.h5 -n 558 --out-dir /tmp/guard \\
        [--variant default|unguarded] [--prior-scale 1] [--predict]

Writes the stamps, sigma maps and PSFs of the first ``n`` rows as FITS files, runs
``galnet.fitting.runner.fit_files`` (``init="nn"``: ``predict --refine``) on them, and prints
(and writes ``out.json``) the R² of log re, log n and q against the true ``params``, the
catastrophic radius fraction (``|Δre|/re > 50 %``), the n outlier fraction (``|Δlog n| >
log 1.25``), the fraction of rows with ``chi2nu <= chi2nu_nn`` (the fit no worse than the
network on the same pixels) and the fractions of the fit's flags. ``--variant unguarded``: no
prior, no centre bound, no accept-or-revert (the refine before issue 13, but with its neighbour
mask). ``--predict`` also scores the network alone (``predict_files``). One torch thread.
GalSim stamps: ``benchmarks/galsim_testset.py`` (numbers in docs/fit.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def r2(pred: np.ndarray, true: np.ndarray) -> float:
    ok = np.isfinite(pred) & np.isfinite(true)
    p, t = pred[ok], true[ok]
    return float(1 - np.sum((p - t) ** 2) / np.sum((t - t.mean()) ** 2))


def scores(t, par) -> dict[str, float]:
    """R² (log re, log n, q), catastrophic radius and n outlier fractions of a catalogue."""
    re, n = np.asarray(t["re_pix"], float), np.asarray(t["n"], float)
    return {"R2_log_re": r2(np.log10(re), np.log10(par["re_pix"])),
            "R2_log_n": r2(np.log10(n), np.log10(par["n"])),
            "R2_q": r2(np.asarray(t["q"], float), par["q"]),
            "catastrophic_re": float(np.mean(np.abs(re - par["re_pix"]) / par["re_pix"] > 0.5)),
            "outlier_n": float(np.mean(np.abs(np.log10(n / par["n"])) > np.log10(1.25)))}


def main() -> None:
    import h5py
    import torch
    from astropy.io import fits

    from galnet.fitting.problem import FitConfig
    from galnet.fitting.runner import fit_files
    from galnet.flags import Flag
    from galnet.nn.predict import predict_files

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--in", dest="inp", required=True, help="galnet simulate layout HDF5")
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--variant", choices=("default", "unguarded"), default="default")
    ap.add_argument("--prior-scale", type=float, default=None)
    ap.add_argument("--predict", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = Path(a.out_dir)
    d.mkdir(parents=True, exist_ok=True)
    with h5py.File(a.inp) as f:
        par = f["params"][: a.n]
        fits.writeto(d / "img.fits", f["images"][: a.n].astype(np.float32), overwrite=True)
        fits.writeto(d / "sig.fits", f["sigma"][: a.n], overwrite=True)
        fits.writeto(d / "psf.fits", f["psfs"][: a.n], overwrite=True)
        zp, ps = float(f.attrs["zeropoint"]), float(f.attrs["pixel_scale"])
    inp = dict(images=d / "img.fits", sigma=d / "sig.fits", psf=d / "psf.fits", zeropoint=zp,
               pixel_scale=ps, progress=False, overwrite=True)
    kw: dict = {}
    if a.variant == "unguarded":
        kw = dict(guard=False, prior=False, centre_radius=np.inf)
    if a.prior_scale is not None:
        kw["config"] = FitConfig(prior_scale=a.prior_scale)
    out: dict = {"command": vars(a), "n": int(len(par))}
    if a.predict:
        out["nn"] = scores(predict_files(d / "nn.fits", **inp), par)
    t0 = time.perf_counter()
    t = fit_files(d / "fit.fits", init="nn", **inp, **kw)
    out["fit_wall_s"] = time.perf_counter() - t0
    out["fit"] = scores(t, par)
    c, cn = np.asarray(t["chi2nu"], float), np.asarray(t["chi2nu_nn"], float)
    out["frac_chi2nu_le_nn"] = float(np.mean(c <= cn * (1 + 1e-6)))
    fl = np.asarray(t["flags"])
    for name in ("REVERTED", "BOUND_HIT", "N_AT_BOUND", "RE_UNCONSTRAINED", "FIT_NOT_CONVERGED"):
        out[f"frac_{name}"] = float(np.mean(fl & int(Flag[name]) > 0))
    print(json.dumps(out, indent=1))
    (d / "out.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
