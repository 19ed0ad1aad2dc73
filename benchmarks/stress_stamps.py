"""Stress stamps: GalSim Sérsic galaxies in 61 x 61 cutouts of real frames, with source Poisson
noise at gains of 30-3000 e-/count and a PSF given to galnet that is off by +-5 % in FWHM
(issue 13, "Benchmarks").

Usage::

    .venv/bin/python benchmarks/stress_stamps.py [--data ../shared/data] [-n 1000] [--quick]
        [--frames vst_r kids_r kids_i ctio_i decam_z] [--sigma sky|source] [--seed 0]
        [--out-json stress.json] [--out-md stress.md]

Each stamp: a random 61 x 61 window of one of the frames of benchmarks/inject_frames.py (cycled;
real neighbours, stars and artefacts included, no cut on what the window holds), its Background2D
sky subtracted and divided by the frame's sky rms, so that the sky noise is 1 count; a galaxy of
:func:`inject_frames.draw_objects` (re 0.15-3", n 0.5-6, q 0.2-1, S/N 10-500) rendered by GalSim
with the frame's PSF at that place (``galsim_testset.galsim_stamp``: ``Convolve(Sersic,
InterpolatedImage(psf))``), centred within +-0.5 px of the stamp centre, with **no containment
cut** (light beyond the stamp is lost, as in a real cutout); source noise
``poisson(model * gain) / gain`` with gain log-uniform in 30-3000 e-/count.

galnet gets: the stamp; sigma = 1 (``--sigma sky``, the sky noise only, as a user with a
sky-noise map) or ``sqrt(1 + model / gain)`` (``--sigma source``); the PSF with its FWHM
times 0.95 or 1.05 (at random; :func:`dilate_psf`): 5 % too narrow or too wide.
``galnet.predict`` and ``galnet.predict(refine=True)`` run on all stamps. Regimes as in
inject_frames (``large``: 90 % light diameter + FWHM > 61 px, here light cut off by the stamp;
``neighbour``: a real source's segment within 3 re of the centre, or a median real light
> 0.5 sigma within max(3 re, 5 px): the galaxy sits on a real source's outskirts). Metrics:
:func:`inject_metrics.summarise` (every stamp is "detected").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inject_frames as inj  # noqa: E402
from galsim_testset import galsim_stamp  # noqa: E402
from inject_metrics import markdown, measured, subsets, subsets_markdown, summarise  # noqa: E402

S = inj.STAMP
GAIN_RANGE = (30.0, 3000.0)
PSF_ERRORS = (0.95, 1.05)


def dilate_psf(psf: np.ndarray, f: float) -> np.ndarray:
    """The PSF image widened by ``f`` (every width, the FWHM included, times ``f``):
    ``InterpolatedImage(psf).dilate(f)`` drawn without a further pixel, unit sum."""
    import galsim

    ii = galsim.InterpolatedImage(galsim.Image(psf / psf.sum(), scale=1.0))
    n = psf.shape[0]
    a = ii.dilate(f).drawImage(nx=n, ny=n, scale=1.0, method="no_pixel").array
    return a / a.sum()


def make_stamps(data_dir: Path, n: int, frames: list[str], rng: np.random.Generator,
                sigma_mode: str = "sky", log=print) -> tuple[dict, dict]:
    """``n`` stress stamps: (arrays dict: images, sigma, psf_true, psf_given (N, ...)), truth)."""
    loaded = {name: inj.load_frame(data_dir, name, rng) for name in frames}
    obj = inj.draw_objects(rng, n, 0, 1.0)  # re in arcsec here: scaled per frame below
    imgs, sigs, pt, pg = (np.zeros((n, S, S)), np.ones((n, S, S)), np.zeros((n, 25, 25)),
                          np.zeros((n, 25, 25)))
    t = {k: np.zeros(n) for k in ("x", "y", "flux", "gain", "psf_scale", "fwhm", "snr")}
    t.update(kind=np.zeros(n, int), re_pix=np.zeros(n), n=obj["n"], q=obj["q"],
             pa_deg=obj["pa_deg"], regime=np.empty(n, "U9"), frame=np.empty(n, "U8"))
    h = S // 2
    for i in range(n):
        fr = loaded[frames[i % len(frames)]]
        H, W = fr.data.shape
        for _ in range(1000):
            X, Y = int(rng.integers(h, W - h)), int(rng.integers(h, H - h))
            win = np.s_[Y - h:Y + h + 1, X - h:X + h + 1]
            if not fr.bad[win].any():
                break
        bg = (fr.data[win] - fr.sky[win]) / np.median(fr.sigma[win])
        re = obj["re_pix"][i] * 1.0 / fr.scale  # draw_objects(scale=1) gave arcsec
        x, y = h + rng.uniform(-0.5, 0.5), h + rng.uniform(-0.5, 0.5)
        psf = fr.psf_at(X, Y)
        m = galsim_stamp({"x": x, "y": y, "flux": 1.0, "re_pix": re, "n": obj["n"][i],
                          "q": obj["q"][i], "pa_deg": obj["pa_deg"][i]}, psf, (S, S),
                         accuracy="injection")[0]
        flux = obj["snr"][i] / math.sqrt(float((m**2).sum()))
        g = math.exp(rng.uniform(*np.log(GAIN_RANGE)))
        model = np.clip(m * flux, 0, None)
        imgs[i] = bg + rng.poisson(model * g) / g
        if sigma_mode == "source":
            sigs[i] = np.sqrt(1.0 + model / g)
        f = PSF_ERRORS[int(rng.integers(2))]
        pt[i], pg[i] = psf, dilate_psf(psf, f)
        seg = fr.seg[win]
        yy, xx = np.mgrid[:S, :S]
        near = np.any((seg != 0) & (np.hypot(xx - x, yy - y) <= max(3 * re, 2.0)))
        near |= float(np.median(bg[np.hypot(xx - x, yy - y) <= max(3 * re, 5.0)])) > 0.5
        large = 2 * inj.r90(np.array([re]), np.array([obj["n"][i]]))[0] + fr.fwhm > S
        t["regime"][i] = "large" if large else ("neighbour" if near else "isolated")
        for k, v in (("x", x), ("y", y), ("flux", flux), ("gain", g), ("psf_scale", f),
                     ("fwhm", fr.fwhm), ("snr", obj["snr"][i]), ("re_pix", re)):
            t[k][i] = v
        t["frame"][i] = fr.name
        if (i + 1) % 100 == 0:
            log(f"{i + 1}/{n} stamps rendered")
    return {"images": imgs, "sigma": sigs, "psf_true": pt, "psf_given": pg}, t


def run(data_dir: Path, n: int, frames: list[str], seed: int = 0, sigma_mode: str = "sky",
        log=print) -> tuple[dict, dict]:
    """Render, predict, refine, summarise: (truth + measurements, summary; ``subsets``: by PSF
    error, by gain below / above 300 e-/count, by frame)."""
    import galnet

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    arr, t = make_stamps(data_dir, n, frames, rng, sigma_mode, log)
    t_render = time.perf_counter() - t0
    t["det"] = np.ones(n, bool)
    s_time = {}
    for p, refine in (("net_", False), ("ref_", True)):
        t1 = time.perf_counter()
        cat = galnet.predict(arr["images"].astype(np.float32),
                             arr["psf_given"].astype(np.float32),
                             sigma=arr["sigma"].astype(np.float32), refine=refine,
                             zeropoint=0.0, pixel_scale=0.2)  # re_pix does not depend on it
        s_time[p] = time.perf_counter() - t1
        t.update(measured(cat, np.arange(n), p))
        log(f"{'refine' if refine else 'network'}: {s_time[p]:.1f} s")
    s = summarise(t, t["fwhm"])
    for p in ("net_", "ref_"):
        s[f"{p}objects_per_s"] = n / s_time[p]
        s[f"{p}spurious"] = 0
    lo = t["gain"] < math.sqrt(GAIN_RANGE[0] * GAIN_RANGE[1])
    s["subsets"] = subsets(t, {**{f"psf x{f}": t["psf_scale"] == f for f in PSF_ERRORS},
                               "gain < 300": lo, "gain >= 300": ~lo,
                               **{f: t["frame"] == f for f in frames}})
    s.update(render_s=t_render, sigma=sigma_mode, frames=frames,
             regime_counts={r: int((t["regime"] == r).sum()) for r in np.unique(t["regime"])})
    return t, s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared"
                                          / "data"))
    ap.add_argument("--frames", nargs="+", default=list(inj.FRAMES), choices=list(inj.FRAMES))
    ap.add_argument("-n", type=int, default=1000, help="stamps [1000]")
    ap.add_argument("--quick", action="store_true", help="100 stamps")
    ap.add_argument("--sigma", choices=("sky", "source"), default="sky")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-json", default=None)
    ap.add_argument("--out-md", default=None)
    ap.add_argument("--out-rows", default=None, help="per-stamp truth + measurements (.npz)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows, s = run(Path(a.data), 100 if a.quick else a.n, a.frames, a.seed, a.sigma,
               log=lambda m: print(m, file=sys.stderr, flush=True))
    s["command"], s["wall_s"] = " ".join(sys.argv), time.perf_counter() - t0
    md = markdown(s) + "\n\n" + subsets_markdown(s["subsets"])
    print(f"# {s['command']}\n# {s['regime_counts']}; render {s['render_s']:.0f} s, wall "
          f"{s['wall_s']:.0f} s")
    print(md)
    if a.out_json:
        Path(a.out_json).write_text(json.dumps(s, indent=1, default=float))
    if a.out_rows:
        np.savez(a.out_rows, **rows)
    if a.out_md:
        Path(a.out_md).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
