"""The renderer's central quadrature: where its errors come from and what the defaults cost.

Usage::

    .venv/bin/python benchmarks/render_quadrature.py [--n 1500] [--seed 7]

No GalSim here (benchmarks/accuracy_galsim.py compares with GalSim); this checks galnet against
itself and against exact integrals. Prints, with the command:

1. ``square_flux`` (exact flux inside a square about the centre) with 8-32 Gauss-Legendre nodes
   per edge against 400 nodes, over random profiles (q >= 0.05) and squares.
2. Ring by ring, for thin galaxies: the 2x2-node quadrature's flux in each square ring of cells
   against the exact ring flux (what ``RenderConfig.ring_extent`` corrects).
3. Convergence: the default configuration, and ``h_max`` = 1/4 px, against a quadrature 2-4x
   finer everywhere, over random profiles (n 0.3-8, re 0.3-40 px, q 0.1-1, Moffat PSF).
4. What the ring correction changes: default vs ``ring_extent=0``, by regime.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from galsim_reference import moffat_psf, random_params  # noqa: E402

from galnet.profiles.quadrature import graded_nodes, square_flux  # noqa: E402
from galnet.profiles.render import DEFAULT_CONFIG, render  # noqa: E402
from galnet.profiles.sersic import sersic_bn  # noqa: E402

FINE = replace(DEFAULT_CONFIG, h_core=1 / 32, h_max=1 / 8, growth=1.25)


def _t(v) -> torch.Tensor:
    return torch.as_tensor(np.atleast_1d(v), dtype=torch.float64)


def square_flux_nodes(rng: np.random.Generator, n_profiles: int = 500) -> None:
    re = np.exp(rng.uniform(np.log(0.1), np.log(40), n_profiles))
    n = rng.uniform(0.3, 8, n_profiles)
    q = rng.uniform(0.05, 1, n_profiles)
    pa = rng.uniform(0, np.pi, n_profiles)
    s = _t(np.exp(np.linspace(np.log(0.05), np.log(25), 12)))
    args = (_t(re), _t(n), _t(q), _t(-np.sin(pa)), _t(np.cos(pa)), sersic_bn(_t(n)))
    ref = square_flux(s, *args, 400)
    print(f"\n1. square_flux: max |error| (fraction of the total flux), {n_profiles} profiles x "
          "12 squares (0.05-25 px), q 0.05-1, n 0.3-8, re 0.1-40 px, vs 400 nodes per edge")
    for m in (8, 12, 16, 24, 32):
        print(f"   {m:2d} nodes: {float((square_flux(s, *args, m) - ref).abs().max()):.1e}")


def ring_errors(cases) -> None:
    print("\n2. quadrature flux per square ring of cells / exact - 1 (no ring correction), "
          "rings 2-5 (outer half-sizes in px)")
    c = DEFAULT_CONFIG
    nodes, wts, _, bounds = graded_nodes(c.h_core, c.growth, c.h_max, 7.5, torch.float64, "cpu")
    x, w = nodes.numpy(), wts.numpy()
    ring = np.abs(np.arange(len(x)) // 2 - (len(x) // 2 - 1) // 2)  # Chebyshev ring per node
    ring2 = np.maximum(ring[:, None], ring[None, :])
    print("   " + " ".join(f"{b:7.3f}" for b in bounds[2:6]))
    for re, n, q, pa_deg in cases:
        pa = math.radians(pa_deg)
        ux, uy = -math.sin(pa), math.cos(pa)
        bn = float(sersic_bn(n))
        a = x[None, :] * ux + x[:, None] * uy
        b = (-x[None, :] * uy + x[:, None] * ux) / q
        norm = 2 * math.pi * q * re**2 * n * math.exp(math.lgamma(2 * n) - 2 * n * math.log(bn))
        S = np.exp(-bn * (np.hypot(a, b) / re) ** (1 / n)) / norm * w[:, None] * w[None, :]
        G = square_flux(_t(bounds[1:6]), _t(re), _t(n), _t(q), _t(ux), _t(uy), _t(bn), 24)[0]
        exact = (G[1:] - G[:-1]).numpy()
        quad = np.array([S[ring2 == k].sum() for k in range(2, 6)])
        print("   " + " ".join(f"{v:+7.3f}" for v in quad / exact - 1)
              + f"   re {re} n {n} q {q} pa {pa_deg}")


def convergence(P: dict, psf: np.ndarray) -> None:
    print(f"\n3. against a quadrature 2-4x finer everywhere ({len(P['n'])} profiles): "
          "max |pixel difference| / peak and |stamp flux ratio - 1|")
    fine = render(P, psf, config=FINE)
    for name, cfg in (("default (h_max 1/2)", DEFAULT_CONFIG),
                      ("h_max 1/4", replace(DEFAULT_CONFIG, h_max=0.25))):
        img = render(P, psf, config=cfg)
        err = np.abs(img - fine).max((1, 2)) / fine.max((1, 2))
        df = np.abs(img.sum((1, 2)) / fine.sum((1, 2)) - 1)
        print(f"   {name:20s} pixels p50 {np.median(err):.1e} p99 {np.quantile(err, 0.99):.1e} "
              f"max {err.max():.1e}; flux max {df.max():.1e}")


def ring_effect(P: dict, psf: np.ndarray) -> None:
    print("\n4. default vs ring_extent=0: max |pixel difference| / peak, by regime")
    a = render(P, psf)
    b = render(P, psf, config=replace(DEFAULT_CONFIG, ring_extent=0.0))
    d = np.abs(a - b).max((1, 2)) / a.max((1, 2))
    n, re, q = P["n"], P["re_pix"], P["q"]
    resolved = (re >= 1) & (q * re >= 0.3)
    for label, m in (("resolved, n <= 2", resolved & (n <= 2)),
                     ("resolved, 2 < n <= 4", resolved & (n > 2) & (n <= 4)),
                     ("resolved, n > 4", resolved & (n > 4)),
                     ("resolved, q > 0.7", resolved & (q > 0.7)),
                     ("q re < 0.2 px (needles)", q * re < 0.2)):
        if m.any():
            print(f"   {label:24s} N {m.sum():4d}  median {np.median(d[m]):.1e}  "
                  f"max {d[m].max():.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1500, help="random profiles for 3 and 4")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    print(f"# command: {' '.join(sys.argv)}")
    rng = np.random.default_rng(args.seed)
    square_flux_nodes(rng)
    ring_errors([(0.74, 1.63, 0.13, 3.2), (0.597, 5.72, 0.179, 2.0), (1.058, 5.35, 0.115, 100.1),
                 (0.5, 0.3, 0.1, 45.0), (4.0, 2.0, 0.6, 35.0)])
    ps = [random_params(rng, n_range=(0.3, 8.0), re_range=(0.3, 40.0)) for _ in range(args.n)]
    P = {k: np.array([p[k] for p in ps]) for k in ps[0]}
    psf = moffat_psf(rng)
    convergence(P, psf)
    ring_effect(P, psf)


if __name__ == "__main__":
    main()
