"""The misfit flag without the gain: false positives and detections with a sky-only sigma and an
assumed ``gain x sigma_sky`` (:data:`galnet.quality.ASSUMED_GAIN_SIGMA`), the numbers in
``galnet/quality.py``'s docstring.

Usage::

    python scripts/calibrate_misfit_skyonly.py simulate --seed 1 --out cal1.npy \
        [--n 300 150 120 120]
    python scripts/calibrate_misfit_skyonly.py rates cal1.npy [cal2.npy ...]

``simulate``: the galaxies of ``scripts/calibrate_misfit.py`` (galnet- and GalSim-rendered single
Sérsics, two-component and clumpy galaxies; ``--n`` of each, in that order), observed with sky
and source noise (true ``gain x sigma_sky`` 10-1000), fitted by ``fit_arrays`` with the sky-only
sigma, then tested by :func:`galnet.quality.misfit` with no gain, G = 10, 12, 15, 20, 30 and the
true gain. ``rates``: % flagged at S/N >= 20 (single Sérsics, by S/N bin; two-component; clumpy;
all misfits) per assumed G.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
#: Assumed ``gain x sigma_sky`` values tried (None: no source noise allowed).
G0 = (None, 10, 12, 15, 20, 30)
#: S/N bins of the single-Sérsic rates.
BINS = (20, 50, 100, 300, 1001)


def simulate(a) -> None:
    import calibrate_misfit as cm
    import torch

    from galnet.fitting.lm import fit_arrays
    from galnet.quality import misfit, residual_stats

    torch.set_num_threads(1)
    rng = np.random.default_rng(a.seed)
    out, t0 = {}, time.time()
    for cls, n in zip(("galnet", "galsim", "twocomp", "clumpy"), a.n, strict=True):
        if cls in ("galnet", "galsim"):
            img, p, psf = cm.singles(rng, n, cls)
        else:
            img, p, psf, _ = cm.composites(rng, n, cls)
        data, sigma, flux, g, _ = cm.observe(rng, img, n)
        sky = np.ones_like(sigma)  # the sky-only sigma (sky noise = 1)
        res = fit_arrays(data, psf["fit"], sigma=sky, init=cm.jitter(rng, p, flux), models=True)
        snr = np.asarray(res["snr"])
        rows = {"snr": snr, "g": g}
        for G in (*G0, "true"):
            gain = None if G is None else (g if G == "true" else np.full(n, float(G)))
            st = residual_stats(data, res["model"], sky, None, x=res["x"], y=res["y"],
                                re=res["re_pix"], q=res["q"], pa_deg=res["pa_deg"], gain=gain)
            rows[str(G)] = misfit(st, snr)
        out[cls] = rows
        print(f"{cls}: {n} in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    np.save(a.out, out, allow_pickle=True)


def rates(a) -> None:
    for f in a.files:
        d = np.load(f, allow_pickle=True).item()
        print(f"{f}\nG       singles %  (S/N 20-49/50-99/100-299/300+)  two-comp %  clumpy %  "
              "misfits %")
        for k in (k for k in d["galnet"] if k not in ("snr", "g")):
            fl = {c: d[c][k] & (d[c]["snr"] >= 20) for c in d}
            use = {c: d[c]["snr"] >= 20 for c in d}
            sf = np.r_[fl["galnet"], fl["galsim"]]
            su = np.r_[use["galnet"], use["galsim"]]
            ssnr = np.r_[d["galnet"]["snr"], d["galsim"]["snr"]]
            bins = " ".join(f"{100 * sf[(ssnr >= lo) & (ssnr < hi)].mean():4.1f}"
                            for lo, hi in zip(BINS[:-1], BINS[1:], strict=True))
            tc = 100 * fl["twocomp"][use["twocomp"]].mean()
            cl = 100 * fl["clumpy"][use["clumpy"]].mean()
            mis = 100 * np.r_[fl["twocomp"][use["twocomp"]], fl["clumpy"][use["clumpy"]]].mean()
            print(f"{k:6s}  {100 * sf[su].mean():5.2f} of {su.sum()}  ({bins})  {tc:5.1f}  "
                  f"{cl:5.1f}  {mis:5.1f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("simulate")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--n", type=int, nargs=4, default=[300, 150, 120, 120],
                   help="galnet singles, GalSim singles, two-component, clumpy")
    s.add_argument("--out", required=True)
    r = sub.add_parser("rates")
    r.add_argument("files", nargs="+")
    a = ap.parse_args(argv)
    (simulate if a.cmd == "simulate" else rates)(a)


if __name__ == "__main__":
    main()
