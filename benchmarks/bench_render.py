"""Renderer throughput: 61x61 PSF-convolved Sérsic stamps per second, galnet vs GalSim, same run.

Usage::

    .venv/bin/python benchmarks/bench_render.py [--n 4000] [--n-galsim 40] [--device cpu|cuda]

Profiles vary per stamp (n in [0.5, 6], re 0.6-24 px log-uniform, q 0.1-1, any PA, sub-pixel
centres), each with its own 25x25 Moffat PSF (FWHM 3-6 px). GalSim draws
``Convolve(Sersic, InterpolatedImage(psf)).drawImage(method="no_pixel")`` with default gsparams
(the way most users call it); galnet renders in batches. Prints stamps/s and the ratio.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch


def make_inputs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = dict(
        x=30 + rng.uniform(-3, 3, n),
        y=30 + rng.uniform(-3, 3, n),
        flux=np.full(n, 1000.0),
        re_pix=np.exp(rng.uniform(np.log(0.6), np.log(24), n)),
        n=rng.uniform(0.5, 6.0, n),
        q=rng.uniform(0.1, 1.0, n),
        pa_deg=rng.uniform(0, 180, n),
    )
    # Moffat(beta=3) effective PSFs, 5x5 sub-sampled over the pixel
    fwhm = rng.uniform(3, 6, n)
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / 3) - 1))
    sub = (np.arange(5) - 2) / 5.0
    g = np.arange(25) - 12.0
    xx = (g[None, :, None] + sub[None, None, :]).reshape(1, 1, 25, 5)
    r2 = xx.reshape(1, 25, 1, 5, 1) ** 2 + xx.reshape(1, 1, 25, 1, 5) ** 2
    psf = ((1 + r2 / alpha[:, None, None, None, None] ** 2) ** -3).mean(axis=(3, 4))
    psf /= psf.sum(axis=(1, 2), keepdims=True)
    return p, psf


def bench_galnet(p, psf, device: str, dtype, repeat: int = 2) -> float:
    from galnet.profiles.render import render

    tp = {k: torch.as_tensor(v, dtype=dtype, device=device) for k, v in p.items()}
    tpsf = torch.as_tensor(psf, dtype=dtype, device=device)
    sl = {k: v[:64] for k, v in tp.items()}
    render(sl, tpsf[:64])  # warm-up
    best = np.inf
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            render(tp, tpsf)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return len(p["x"]) / best


def bench_galsim(p, psf, n: int) -> float:
    import galsim

    t = time.perf_counter()
    for i in range(n):
        q = p["q"][i]
        s = galsim.Sersic(
            n=p["n"][i], half_light_radius=p["re_pix"][i] * np.sqrt(q), flux=p["flux"][i]
        )
        s = s.shear(q=q, beta=(p["pa_deg"][i] + 90) * galsim.degrees).shift(
            p["x"][i] - 30, p["y"][i] - 30
        )
        ii = galsim.InterpolatedImage(galsim.Image(psf[i], scale=1.0))
        galsim.Convolve(s, ii).drawImage(nx=61, ny=61, scale=1.0, method="no_pixel")
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="stamps rendered by galnet")
    ap.add_argument("--n-galsim", type=int, default=40, help="stamps drawn by GalSim")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p, psf = make_inputs(args.n)
    print(f"# command: {' '.join(sys.argv)}")
    print(
        f"# machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
    )
    gs = bench_galsim(p, psf, args.n_galsim)
    print(f"GalSim           : {gs:10.1f} stamps/s  ({1 / gs:.3f} s/stamp)")
    for dtype in (torch.float32, torch.float64):
        r = bench_galnet(p, psf, args.device, dtype)
        print(f"galnet {str(dtype)[6:]:9s} : {r:10.1f} stamps/s  ({r / gs:7.0f} x GalSim)")


if __name__ == "__main__":
    main()
