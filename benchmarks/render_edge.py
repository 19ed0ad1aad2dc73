"""The step at the renderer's integration-window edge, against a brute-force T (issue 13 item 7).

Usage::

    .venv/bin/python benchmarks/render_edge.py [--n 200] [--seed 5]

Random profiles (re 0.003-8 px and n 0.2-10, both log-uniform; q 0.1-1; any PA; centres within
half a pixel of the middle of a 25x25 stamp). Outside its window the renderer samples S at pixel
centres; here T = S * K is integrated by brute force there (6 Gauss-Legendre nodes on each unit
cell of the Quintic's support, independent of the renderer's quadrature), the difference T - S is
convolved with Moffat PSFs (beta 3, FWHM 2, 3 and 5 px, 25x25) and divided by the model's peak
pixel. Prints, for the default windows and for those without the edge criterion
(``RenderConfig(edge_tol=None)``), the largest step and how many profiles exceed 1e-5 of the peak.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import signal, special

from galnet.profiles.quadrature import quintic
from galnet.profiles.render import RenderConfig, render, window_sizes

SHAPE, MARGIN = (25, 25), 12


def moffat(fwhm: float, beta: float = 3.0, size: int = 25) -> np.ndarray:
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    x = ((np.arange(size) - size // 2)[:, None] + (np.arange(5) - 2)[None] / 5.0).reshape(-1)
    p = (1 + (x[:, None] ** 2 + x[None, :] ** 2) / alpha**2) ** -beta
    p = p.reshape(size, 5, size, 5).mean(axis=(1, 3))
    return p / p.sum()


def sersic(dx, dy, re, n, q, pa_deg):
    pa = np.deg2rad(pa_deg)
    ux, uy = -np.sin(pa), np.cos(pa)
    rho = np.hypot(dx * ux + dy * uy, (-dx * uy + dy * ux) / q)
    bn = special.gammaincinv(2 * n, 0.5)
    amp = 1.0 / (2 * np.pi * q * re**2 * n * np.exp(special.gammaln(2 * n) - 2 * n * np.log(bn)))
    return amp * np.exp(-bn * (rho / re) ** (1 / n))


def brute_T(cx, cy, x0, y0, re, n, q, pa, ng: int = 6) -> np.ndarray:
    t, w = np.polynomial.legendre.leggauss(ng)
    off = (np.arange(-3, 3)[:, None] + 0.5 * (t + 1)[None]).reshape(-1)
    k = quintic(torch.as_tensor(off)).numpy() * np.tile(0.5 * w, 6)
    return np.array([k @ sersic(a + off[None] - x0, b + off[:, None] - y0, re, n, q, pa) @ k
                     for a, b in zip(cx, cy, strict=True)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    N = args.n
    p = dict(x=12 + rng.uniform(-0.5, 0.5, N), y=12 + rng.uniform(-0.5, 0.5, N),
             flux=np.ones(N), re_pix=np.exp(rng.uniform(np.log(0.003), np.log(8), N)),
             n=np.exp(rng.uniform(np.log(0.2), np.log(10), N)), q=rng.uniform(0.1, 1, N),
             pa_deg=rng.uniform(0, 180, N))
    psfs = [moffat(f) for f in (2.0, 3.0, 5.0)]
    gy, gx = np.mgrid[-MARGIN : SHAPE[0] + MARGIN, -MARGIN : SHAPE[1] + MARGIN].astype(float)
    for name, cfg in (("default", RenderConfig()), ("edge_tol=None", RenderConfig(edge_tol=None))):
        R = window_sizes(p["re_pix"], p["n"], p["q"], cfg)
        peaks = [render(p, psf, SHAPE, config=cfg).max(axis=(1, 2)) for psf in psfs]
        err = np.empty(N)
        for i in range(N):
            x0, y0, re, n, q, pa = (p[k][i] for k in ("x", "y", "re_pix", "n", "q", "pa_deg"))
            cheb = np.maximum(np.abs(gx - round(x0)), np.abs(gy - round(y0)))
            band = (cheb > R[i]) & (cheb <= R[i] + 10)
            dT = np.zeros_like(gx)
            dT[band] = (brute_T(gx[band], gy[band], x0, y0, re, n, q, pa)
                        - sersic(gx[band] - x0, gy[band] - y0, re, n, q, pa))
            err[i] = max(np.abs(signal.fftconvolve(dT, psf, mode="valid")).max() / pk[i]
                         for psf, pk in zip(psfs, peaks, strict=True))
        j = int(np.argmax(err))
        sizes, counts = np.unique(R, return_counts=True)
        print(f"{name:14s} windows " + ", ".join(f"{s}: {c}" for s, c in zip(sizes, counts,
                                                                              strict=True)))
        print(f"{'':14s} max step / peak {err[j]:.1e} (re {p['re_pix'][j]:.3f}, n {p['n'][j]:.2f}, "
              f"q {p['q'][j]:.2f}); > 1e-5: {(err > 1e-5).sum()} of {N}; "
              f"> 5e-5: {(err > 5e-5).sum()}")


if __name__ == "__main__":
    main()
