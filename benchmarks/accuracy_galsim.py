"""Renderer accuracy against GalSim: the distribution behind tests/test_render_galsim.py.

Usage::

    .venv/bin/python benchmarks/accuracy_galsim.py [--chunks 20] [--per-chunk 50] [--no-real-psfs]

Draws the same random profiles and PSFs as the test (seeds 1000 + chunk) and prints, per regime,
the max |pixel difference| / peak and the stamp-flux error of render(mode="exact") against
``Convolve(Sersic, InterpolatedImage(psf)).drawImage(method="no_pixel")`` (high-accuracy gsparams).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from galsim_reference import accuracy_cases, galsim_reference, real_psfs  # noqa: E402

from galnet.profiles.render import render  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--per-chunk", type=int, default=50)
    ap.add_argument("--no-real-psfs", action="store_true",
                    help="Moffat PSFs only: the test's draw of profiles without ../shared/data")
    args = ap.parse_args()
    reals = [] if args.no_real_psfs else real_psfs()
    rows = []
    t0 = time.time()
    for chunk in range(args.chunks):
        for p, name, psf in accuracy_cases(chunk, reals, args.per_chunk):
            img = render(p, psf)[0]
            try:
                ref = galsim_reference(p, psf)
            except (RuntimeError, ValueError):  # GalSim: Hankel roundoff, or NaN maxk
                print(f"GalSim cannot draw n={p['n']:.3f} re={p['re_pix']:.3f} q={p['q']:.3f}")
                continue
            err = np.abs(img - ref).max() / ref.max()
            if err > (0.005 if p["n"] <= 4 else 0.01):
                exact = galsim_reference(p, psf, calculate_maxk=False)
                print(f"out of tolerance: n={p['n']:.3f} re={p['re_pix']:.3f} q={p['q']:.3f} "
                      f"psf={name}: galnet vs default {err:.5f}; galnet vs untruncated "
                      f"{np.abs(img - exact).max() / exact.max():.5f}; default vs untruncated "
                      f"{np.abs(ref - exact).max() / exact.max():.5f}", flush=True)
            rows.append((p["n"], p["re_pix"], p["q"], err, img.sum() / ref.sum() - 1,
                         name != "moffat"))
    a = np.array(rows)
    n, re, q, err, dflux, real = a.T
    print(f"# command: {' '.join(sys.argv)}   ({len(a)} profiles, {time.time() - t0:.0f} s)")
    print("# regime                         N   max|d|/peak p50    p99     max   flux |err| max  "
          "fails")
    regimes = [
        ("n <= 4 (tol 0.5%)", n <= 4, 0.005),
        ("4 < n <= 6.2 (tol 1%)", n > 4, 0.01),
        ("n <= 4, re >= 1 px, q*re >= 0.3", (n <= 4) & (re >= 1) & (q * re >= 0.3), 0.005),
        ("n <= 4, re < 1 px", (n <= 4) & (re < 1), 0.005),
        ("q*re < 0.3 px (needles)", q * re < 0.3, None),
        ("real PSFs", real.astype(bool), None),
    ]
    for label, m, tol in regimes:
        if not m.any():
            continue
        tol_m = np.where(n[m] <= 4, 0.005, 0.01) if tol is None else tol
        fails = np.sum((err[m] > tol_m) | (np.abs(dflux[m]) > 0.002))
        print(f"{label:32s} {m.sum():4d}  {np.median(err[m]):.5f} {np.quantile(err[m], 0.99):.5f} "
              f"{err[m].max():.5f}   {np.abs(dflux[m]).max():.5f}     {fails}")
    worst = np.argsort(-np.maximum(err / np.where(n <= 4, 0.005, 0.01), np.abs(dflux) / 0.002))[:8]
    print("# worst (n, re_pix, q, max|d|/peak, dflux, real PSF):")
    for i in worst:
        print("  " + "  ".join(f"{v:.4f}" for v in a[i][:5]) + f"  {bool(a[i][5])}")


if __name__ == "__main__":
    main()
