"""Injection-recovery on real frames: GalSim Sérsic galaxies and stars injected into the frames of
../shared/data, recovered by galnet's frame mode (issue 13, "Benchmarks").

Usage::

    .venv/bin/python benchmarks/inject_frames.py [--data ../shared/data] [--quick]
        [--n-galaxies 1000] [--frames vst_r kids_r kids_i ctio_i decam_z] [--seed 0]
        [--out-json inject.json] [--out-md inject.md]

Frames (:data:`FRAMES`): VST r (WCS, 0.2"/px), KiDS r and i (HDU 1, 0.339"/px per the data
README; random 700 x 700 windows of the 2600 x 2600 field), CTIO Mosaic i (TPV WCS), DECam z
c4d_170316 N2 (the only DECam cutout larger than 51 x 41 px) with its ``oow`` inverse-variance
weight and PSFEx model. Everything is injected into the frame as it is (sky left in CTIO/DECam).

- PSF: DECam: the PSFEx model (``galsim.des.DES_PSFEx`` on the legacypipe table converted by
  :func:`galnet.io.psf.psfex_hdu_from_legacypipe`), drawn at each injected position; the others:
  a PSF estimated here from bright isolated unsaturated stars of the frame (:func:`star_psf`:
  median of centred, unit-sum 25 x 25 cutouts), handed to galnet as the same FITS image. GalSim
  renders with **that same PSF image** as ``galsim.InterpolatedImage``
  (``galsim_testset.galsim_stamp``: ``Convolve(Sersic, InterpolatedImage(psf))``, no_pixel,
  ``accuracy="injection"`` gsparams: < 1e-4 of the peak from the reference settings).
- Galaxies: re 0.15-3" (log-uniform, along the major axis), n 0.5-6, q 0.2-1, PA uniform,
  S/N 10-500 (log-uniform; S/N = matched-filter S/N against the frame's sky noise,
  ``flux * sqrt(sum(m^2 / sigma^2))`` for the unit-flux model m); stars: the PSF only, S/N
  20-2000. A third of the objects are placed 1 FWHM to 3 re from a real source (photutils
  detection of the un-injected frame), the rest at random; injected objects are spaced so they do
  not overlap (centre distance >= the sum of 3 re + 1.5 FWHM + 5 px of both).
- Source Poisson noise: ``poisson(model * gain) / gain``; gain from the header (GAINA for DECam)
  when consistent with the sky (sky / rms^2 within x3 of it), else sky / rms^2 for a frame with
  a sky left in (CTIO), else ASSUMED ``sqrt(1000) / rms`` (a sky of 1000 e-/px; VST, whose
  GAIN 1.59 does not fit its rescaled units, and KiDS). The weight map is not updated; the frame
  mode is given that gain (``run_frame(gain=)``, as a user who knows it) unless ``--no-gain``.
- Regimes (truth): ``large`` = the galaxy's 90 % light diameter + FWHM exceeds the 61 px network
  stamp (the frame mode must rebin it); ``neighbour`` = a real source within 3 re, or the centre
  inside a real source's segment, or on a real source's outskirts (:func:`pedestal`: median real
  light > 0.5 sigma within max(3 re, 5 px)); ``isolated``.
- Matching: nearest detection within max(1.5 px, 0.5 FWHM); detections that match a source of
  the catalogue of the un-injected frame (same frame mode) and no injection are dropped.

Metrics: :func:`inject_metrics.summarise`. The frame mode is
:func:`galnet.frame.pipeline.run_frame` (``--detect``); where it cannot be imported the fallback
is photutils detection + ``galnet predict --frame --positions [--refine]`` (JSON ``mode``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inject_metrics as im  # noqa: E402
from galsim_testset import galsim_stamp  # noqa: E402
from inject_metrics import _col, markdown, match, measured, spurious, summarise  # noqa: E402

#: name: (file under data dir, HDU, pixel scale or None = WCS, crop side or None, weight, PSFEx)
FRAMES = {
    "vst_r": ("frames/vst_r_G202627.fits", 0, None, None, None, None),
    "kids_r": ("frames/kids_viking_9band/r.fits", 1, 0.339, 700, None, None),
    "kids_i": ("frames/kids_viking_9band/i.fits", 1, 0.339, 700, None, None),
    "ctio_i": ("frames/ctio_mosaic_i.fits", 0, None, None, None, None),
    "decam_z": ("frames/decam/c4d_170316_062107_ooi_z_ls9.N2.fits", 1, None, None,
                "frames/decam/c4d_170316_062107_oow_z_ls9.N2.fits",
                "frames/decam/c4d_170316_062107_ooi_z_ls9-psfex.fits"),
}
STAMP = 61
PSF_SIZE = 25
#: "auto": run_frame, the fallback when it cannot be imported; "frame"; "fallback".
MODE = {"use": "auto", "why": ""}
#: Hand the injection gain to the frame mode (``run_frame(gain=)``, as a user who knows it);
#: ``--no-gain``: the frame's sky-only noise map (MISFIT and chi2nu then see the source noise).
GAIN = {"pass": True}


@dataclass
class Frame:
    """One frame (or window) ready for injection: ``data`` as read (sky left in), ``sigma``
    1-sigma map, ``bad`` unusable pixels, ``psf`` (25 x 25 unit sum) or ``psfex`` model."""

    name: str
    data: np.ndarray
    sigma: np.ndarray
    bad: np.ndarray
    scale: float
    gain: float
    gain_source: str
    header: object = None
    weight: np.ndarray | None = None
    psf: np.ndarray | None = None
    psfex: object = None
    psfex_path: str | None = None
    fwhm: float = math.nan
    real: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    seg: np.ndarray | None = None
    sky: np.ndarray | None = None

    def psf_at(self, x: float, y: float) -> np.ndarray:
        if self.psfex is None:
            return self.psf
        import galsim

        img = self.psfex.getPSF(galsim.PositionD(x + 1.0, y + 1.0)).drawImage(
            nx=PSF_SIZE, ny=PSF_SIZE, scale=1.0, method="no_pixel").array
        return img / img.sum()


# ------------------------------------------------------------------------------ frames, PSFs
def detect_real(data: np.ndarray, sigma: np.ndarray, bad: np.ndarray, fwhm: float = 3.0,
                nsigma: float = 2.0, deblend: bool = True):
    """photutils detection (+ deblending) on ``data`` minus a Background2D sky: astropy table
    (x, y, flux, snr, fwhm, peak, label), the segmentation array and the sky map.

    The sky is made in two passes: a first Background2D (boxes of 16-64 px) finds the sources;
    the second (boxes of 32-128 px) masks them, grown by 5 px, so that the outskirts of a large
    galaxy stay in the image (a real pedestal for what is injected on it) rather than in the
    sky."""
    from astropy.convolution import Gaussian2DKernel, convolve
    from photutils.background import Background2D
    from photutils.segmentation import SourceCatalog, deblend_sources, detect_sources
    from scipy.ndimage import binary_dilation

    k = Gaussian2DKernel(max(fwhm, 1.0) / 2.355, x_size=9, y_size=9)
    k.normalize()
    box = int(max(16, min(64, min(data.shape) // 4)))
    sky = Background2D(data, box, mask=bad, filter_size=3).background
    thr = nsigma * np.where(bad, np.inf, sigma)
    seg = detect_sources(convolve(np.where(bad, 0.0, data - sky), k), thr, n_pixels=5, mask=bad)
    if seg is not None:
        box2 = int(max(32, min(128, min(data.shape) // 4)))
        grown = binary_dilation(seg.data != 0, iterations=5)
        sky = Background2D(data, box2, mask=bad | grown, filter_size=3,
                           exclude_percentile=50.0).background
    img = np.where(bad, 0.0, data - sky)
    sm = convolve(img, k)
    seg = detect_sources(sm, thr, n_pixels=5, mask=bad)
    if seg is None:
        from astropy.table import Table

        return Table(names=("x", "y", "flux", "snr", "fwhm", "peak", "label")), np.zeros(
            data.shape, int), sky
    if deblend:
        seg = deblend_sources(sm, seg, n_pixels=5, progress_bar=False, n_levels=16,
                              contrast=0.005)
    cat = SourceCatalog(img, seg, error=np.where(bad, 1e30, sigma), mask=bad)
    t = cat.to_table(columns=["x_centroid", "y_centroid", "segment_flux", "segment_flux_err",
                              "fwhm", "max_value", "label"])
    t.rename_columns(["x_centroid", "y_centroid", "segment_flux", "max_value"],
                     ["x", "y", "flux", "peak"])
    t["snr"] = np.asarray(t["flux"]) / np.asarray(t["segment_flux_err"])
    t["fwhm"] = np.asarray(getattr(t["fwhm"], "value", t["fwhm"]), float)
    ok = np.isfinite(np.asarray(t["x"], float)) & np.isfinite(np.asarray(t["y"], float))
    return t[ok], np.asarray(seg.data), sky


def star_psf(data, sky, seg, cat, saturate: float | None, size: int = PSF_SIZE) -> np.ndarray:
    """PSF from bright isolated unsaturated stars: sources with S/N > 50 and a FWHM within
    15 % of the 20th percentile of theirs (the compact locus; second try: S/N > 20, 30 %),
    alone in their 25 x 25 window, peak < 0.5 saturate (or below the 90th percentile of peaks
    when saturate is unknown); each cutout recentred (cubic shift of the first moment), unit
    sum; median; negative pixels clipped; unit sum. Raises ValueError with fewer than 3 stars."""
    from scipy.ndimage import shift

    h = size // 2
    H, W = data.shape
    snr = np.asarray(cat["snr"])
    fw, pk = np.asarray(cat["fwhm"], float), np.asarray(cat["peak"], float)
    for snr_min, tol in ((50, 0.15), (20, 0.3)):
        sel = snr > snr_min
        if sel.sum() < 3:
            continue
        ref = np.nanpercentile(fw[sel], 20)
        sel &= np.abs(fw - ref) < tol * ref
        sel &= pk < (0.5 * saturate if saturate else np.nanpercentile(pk[sel], 90))
        stack = []
        for r in np.flatnonzero(sel):
            x, y, lab = float(cat["x"][r]), float(cat["y"][r]), int(cat["label"][r])
            ix, iy = int(round(x)), int(round(y))
            if not (h + 2 <= ix < W - h - 2 and h + 2 <= iy < H - h - 2):
                continue
            win = seg[iy - h:iy + h + 1, ix - h:ix + h + 1]
            if np.any((win != 0) & (win != lab)):
                continue
            cut = (data - sky)[iy - h - 2:iy + h + 3, ix - h - 2:ix + h + 3].astype(float)
            cut = shift(cut, (iy - y, ix - x), order=3, mode="nearest")[2:-2, 2:-2]
            if cut.sum() > 0:
                stack.append(cut / cut.sum())
        if len(stack) >= 3:
            psf = np.clip(np.median(stack, axis=0), 0.0, None)
            return psf / psf.sum()
    raise ValueError("fewer than 3 isolated unsaturated stars")


def _gain(header, sky: float, rms: float) -> tuple[float, str]:
    g = None
    for k in ("GAIN", "GAINA"):
        if header is not None and header.get(k):
            g = float(header[k])
            break
    est = sky / rms**2 if sky > 5 * rms else None
    if g and est and est / 3 < g < 3 * est:
        return g, "header"
    if est:
        return est, "sky/rms^2"
    return math.sqrt(1000.0) / rms, "assumed: sky of 1000 e-/px"


def load_frame(data_dir: Path, name: str, rng: np.random.Generator) -> Frame:
    """Read one frame of :data:`FRAMES` (a random window of it when it is cropped), estimate its
    noise, gain, PSF (stars or PSFEx) and detect its real sources."""
    from astropy.io import fits
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    rel, hdu, scale, crop, wrel, prel = FRAMES[name]
    with fits.open(data_dir / rel) as h:
        data, header = h[hdu].data.astype(np.float64), h[hdu].header.copy()
    weight = fits.getdata(data_dir / wrel, 1).astype(np.float64) if wrel else None
    if crop:
        y0, x0 = (int(rng.integers(0, s - crop)) for s in data.shape)
        data, header = data[y0:y0 + crop, x0:x0 + crop], None
    if scale is None:
        scale = float(np.mean(proj_plane_pixel_scales(WCS(header).celestial)) * 3600.0)
    bad = ~np.isfinite(data)
    if weight is not None:
        bad |= ~(weight > 0)
    data = np.where(bad, 0.0, data)
    good = data[~bad]
    med = float(np.median(good))
    rms = float(1.4826 * np.median(np.abs(good - med)))
    sigma = (np.where(bad, np.inf, 1.0 / np.sqrt(np.where(weight > 0, weight, 1.0)))
             if weight is not None else np.full(data.shape, rms))
    cat, seg, sky = detect_real(data, sigma, bad)
    sky_ok = ~bad & (seg == 0)
    rms = float(1.4826 * np.median(np.abs((data - sky)[sky_ok] -
                                          np.median((data - sky)[sky_ok]))))
    if weight is None:
        sigma = np.full(data.shape, rms)
    gain, gsrc = _gain(header, float(np.median(sky)), rms)
    fr = Frame(name, data, sigma, bad, scale, gain, gsrc, header, weight,
               real=np.c_[np.asarray(cat["x"], float), np.asarray(cat["y"], float)], seg=seg,
               sky=sky)
    if prel:
        import galsim.des

        from galnet.io.psf import psfex_hdu_from_legacypipe

        fr.psfex = galsim.des.DES_PSFEx(psfex_hdu_from_legacypipe(data_dir / prel))
        fr.psfex_path = str(data_dir / prel)
        psf0 = fr.psf_at(data.shape[1] / 2, data.shape[0] / 2)
    else:
        sat = None if header is None else header.get("SATURATE")
        fr.psf = psf0 = star_psf(data, sky, seg, cat, sat)
    from galnet.sim.bank.psf_inputs import psf_fwhm

    fr.fwhm = psf_fwhm(psf0, 1.0)
    return fr


# ------------------------------------------------------------------------------ injections
def r90(re: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Radius holding 90 % of a Sérsic's light (same units as re)."""
    from scipy.special import gammaincinv

    return re * (gammaincinv(2 * n, 0.9) / gammaincinv(2 * n, 0.5)) ** n


def draw_objects(rng: np.random.Generator, n_gal: int, n_star: int, scale: float) -> dict:
    """Random truth parameters (frame px): kind (0 galaxy, 1 star), re_pix, n, q, pa_deg, snr."""
    k = np.r_[np.zeros(n_gal, int), np.ones(n_star, int)]
    m = len(k)
    re = np.exp(rng.uniform(np.log(0.15), np.log(3.0), m)) / scale
    snr = np.where(k == 0, np.exp(rng.uniform(np.log(10), np.log(500), m)),
                   np.exp(rng.uniform(np.log(20), np.log(2000), m)))
    return {"kind": k, "re_pix": np.where(k == 0, re, 0.0), "n": rng.uniform(0.5, 6.0, m),
            "q": rng.uniform(0.2, 1.0, m), "pa_deg": rng.uniform(0, 180, m), "snr": snr}


def place(rng, fr: Frame, obj: dict, near: float = 1 / 3, tries: int = 300) -> np.ndarray:
    """Frame positions (m, 2) of the objects, NaN where no spot was found (module docstring)."""
    (H, W), f = fr.data.shape, fr.fwhm
    excl = np.where(obj["kind"] == 0, 3 * obj["re_pix"] + 1.5 * f + 5, 3 * f + 5)
    pos = np.full((len(excl), 2), np.nan)
    real = fr.real
    for i in np.argsort(-excl):
        for _ in range(tries):
            if len(real) and rng.uniform() < near:
                c = real[rng.integers(len(real))]
                re = max(obj["re_pix"][i], f)
                d = rng.uniform(f, max(3 * re, 1.5 * f))
                a = rng.uniform(0, 2 * np.pi)
                p = c + d * np.array([np.cos(a), np.sin(a)])
            else:
                p = rng.uniform([0, 0], [W - 1, H - 1])
            m = max(8.0, 1.5 * f)
            if not (m <= p[0] <= W - 1 - m and m <= p[1] <= H - 1 - m):
                continue
            if fr.bad[int(round(p[1])), int(round(p[0]))]:
                continue
            if len(real) and np.min(np.hypot(*(real - p).T)) < max(3.0, f):
                continue
            done = np.isfinite(pos[:, 0])
            if done.any() and np.any(np.hypot(*(pos[done] - p).T) < excl[done] + excl[i]):
                continue
            pos[i] = p
            break
    return pos


def render(p: dict, psf: np.ndarray, half: int, star: bool) -> np.ndarray:
    """Unit-flux noiseless stamp (2 half + 1)^2 by GalSim, centred on pixel (half, half) + the
    sub-pixel offset (p["x"], p["y"] are stamp coordinates)."""
    import galsim

    S = 2 * half + 1
    if star:
        ii = galsim.InterpolatedImage(galsim.Image(psf / psf.sum(), scale=1.0))
        return ii.shift(p["x"] - half, p["y"] - half).drawImage(
            nx=S, ny=S, scale=1.0, method="no_pixel").array
    return galsim_stamp({**p, "flux": 1.0}, psf, (S, S), accuracy="injection")[0]


def inject(rng, fr: Frame, obj: dict, pos: np.ndarray) -> tuple[np.ndarray, dict]:
    """The frame with the objects added (source Poisson noise), and the truth table (dict of
    arrays: kind, x, y, flux, re_pix, n, q, pa_deg, snr, regime)."""
    img, (H, W) = fr.data.copy(), fr.data.shape
    keep = np.isfinite(pos[:, 0])
    t = {k: np.asarray(v)[keep] for k, v in obj.items()}
    t["x"], t["y"] = pos[keep, 0], pos[keep, 1]
    t["flux"] = np.zeros(len(t["x"]))
    for i in range(len(t["x"])):
        x, y = t["x"][i], t["y"][i]
        star = t["kind"][i] == 1
        half = int(np.clip(np.ceil(3 * fr.fwhm if star else 8 * t["re_pix"][i] + 3 * fr.fwhm),
                           12, 150))
        ix, iy = int(round(x)), int(round(y))
        p = {"x": x - ix + half, "y": y - iy + half, "re_pix": t["re_pix"][i], "n": t["n"][i],
             "q": t["q"][i], "pa_deg": t["pa_deg"][i]}
        m = render(p, fr.psf_at(x, y), half, star)
        ya, yb, xa, xb = iy - half, iy + half + 1, ix - half, ix + half + 1
        sl = np.s_[max(ya, 0):min(yb, H), max(xa, 0):min(xb, W)]
        ms = m[max(ya, 0) - ya:m.shape[0] - (yb - min(yb, H)),
               max(xa, 0) - xa:m.shape[1] - (xb - min(xb, W))]
        sig = fr.sigma[sl]
        unit_snr = math.sqrt(float(np.sum(np.where(np.isfinite(sig), ms**2 / sig**2, 0.0))))
        flux = t["snr"][i] / unit_snr
        e = np.clip(ms * flux, 0, None) * fr.gain
        img[sl] += rng.poisson(e) / fr.gain
        t["flux"][i] = flux
    d_real = (np.min(np.hypot(t["x"][:, None] - fr.real[:, 0], t["y"][:, None] - fr.real[:, 1]),
                     axis=1) if len(fr.real) else np.full(len(t["x"]), np.inf))
    on_real = fr.seg[np.round(t["y"]).astype(int), np.round(t["x"]).astype(int)] != 0
    on_real |= pedestal(fr, t["x"], t["y"], t["re_pix"])
    large = 2 * r90(t["re_pix"], t["n"]) + fr.fwhm > STAMP
    t["regime"] = np.where(t["kind"] == 1, "star", np.where(large, "large", np.where(
        (d_real <= 3 * t["re_pix"]) | on_real, "neighbour", "isolated")))
    return img, t


def pedestal(fr: Frame, x, y, re, level: float = 0.5) -> np.ndarray:
    """True where the real frame's light (data - sky, in sky sigma) has a median above ``level``
    within max(3 re, 5 px) of (x, y): the object sits on a real source's outskirts (a galaxy's
    disc, a star's halo) even where no segment is detected there."""
    (H, W), out = fr.data.shape, np.zeros(len(x), bool)
    sky = 0.0 if fr.sky is None else fr.sky
    light = (fr.data - sky) / np.where(np.isfinite(fr.sigma), fr.sigma, np.inf)
    for i in range(len(x)):
        r = max(3.0 * float(re[i]), 5.0)
        ya, yb = max(int(y[i] - r), 0), min(int(y[i] + r) + 1, H)
        xa, xb = max(int(x[i] - r), 0), min(int(x[i] + r) + 1, W)
        yy, xx = np.mgrid[ya:yb, xa:xb]
        win = (np.hypot(xx - x[i], yy - y[i]) <= r) & ~fr.bad[ya:yb, xa:xb]
        out[i] = win.any() and float(np.median(light[ya:yb, xa:xb][win])) > level
    return out


def _write(path: Path, arr: np.ndarray, header=None) -> str:
    from astropy.io import fits

    h = fits.Header() if header is None else fits.Header(
        [c for c in header.cards if c.keyword not in ("XTENSION", "PCOUNT", "GCOUNT", "EXTNAME",
                                                       "INHERIT")])
    fits.PrimaryHDU(arr.astype(np.float32), header=h).writeto(path, overwrite=True)
    return str(path)


def run_mode(fr: Frame, img: np.ndarray, tmp: Path, tag: str, refine: bool):
    """Run the frame mode on ``img``: (catalogue table, wall seconds, mode name)."""
    frame = _write(tmp / f"{tag}.fits", img, fr.header)
    psf = fr.psfex_path or _write(tmp / "psf.fits", fr.psf)
    weight = _write(tmp / "weight.fits", fr.weight) if fr.weight is not None else None
    out = tmp / f"{tag}_{int(refine)}.ecsv"
    t0 = time.perf_counter()
    if MODE["use"] != "fallback":
        try:  # a missing piece (galnet/frame/ or what it imports) -> the fallback below
            from galnet.frame.pipeline import run_frame

            cat = run_frame(frame, psf, out, detect=True, weight=weight, refine=refine,
                            pixel_scale=fr.scale, zeropoint=0.0, progress=False,
                            overwrite=True, gain=fr.gain if GAIN["pass"] else None)
            return cat, time.perf_counter() - t0, "run_frame --detect"
        except ImportError as err:
            if MODE["use"] == "frame":
                raise
            MODE["why"] = f"{type(err).__name__}: {err}"
            t0 = time.perf_counter()
    # fallback (before galnet/frame/ exists): photutils detection, predict --frame --positions
    from astropy.table import Table

    det, _, sky = detect_real(img, fr.sigma, fr.bad, fr.fwhm, nsigma=1.5)
    det = det[np.asarray(det["snr"]) > 5]
    sub = _write(tmp / f"{tag}_sub.fits", np.where(fr.bad, 0.0, img - sky), fr.header)
    pos = tmp / f"{tag}_pos.ecsv"
    Table({"x": det["x"], "y": det["y"]}).write(pos, overwrite=True)
    kw = dict(frame=sub, positions=str(pos), psf=psf, pixel_scale=fr.scale, zeropoint=0.0,
              progress=False,
              overwrite=True, sigma=_write(tmp / "sigma.fits", np.where(
                  np.isfinite(fr.sigma), fr.sigma, 1e30)))
    if refine:
        from galnet.fitting.runner import fit_files

        cat = fit_files(out, init="nn", **kw)
    else:
        from galnet.nn.predict import predict_files

        cat = predict_files(out, **kw)
    return cat, time.perf_counter() - t0, ("fallback: photutils + predict --frame --positions"
                                           + (f" ({MODE['why']})" if MODE["why"] else ""))


def run_realisation(fr: Frame, rng, tmp: Path, tag: str, real_cat, n_gal: int, n_star: int,
                    refine: bool = True) -> tuple[dict, dict]:
    """Inject, run the frame mode (network, and refine with ``refine``), match: (rows, timing)."""
    obj = draw_objects(rng, n_gal, n_star, fr.scale)
    img, t = inject(rng, fr, obj, place(rng, fr, obj))
    radius = max(1.5, 0.5 * fr.fwhm)
    timing = {}
    for p, ref in (("net_", False), ("ref_", True)):
        if ref and not refine:
            t.update(measured(real_cat[:0], np.full(len(t["x"]), -1), p))
            continue
        cat, dt, mode = run_mode(fr, img, tmp, tag, ref)
        idx = match(t["x"], t["y"], _col(cat, "x"), _col(cat, "y"), radius)
        t.update(measured(cat, idx, p))
        if not ref:
            t["det"] = idx >= 0
        timing[p] = {"seconds": dt, "rows": len(cat), "mode": mode,
                     "spurious": spurious(cat, idx, real_cat, radius)}
    t["frame"], t["fwhm"] = np.full(len(t["x"]), fr.name), np.full(len(t["x"]), fr.fwhm)
    return t, timing


def run(data_dir: Path, frames: list[str], n_galaxies: int, seed: int = 0, refine: bool = True,
        per_frame_gal: int | None = None, log=print) -> tuple[dict, dict]:
    """The benchmark: about ``n_galaxies`` galaxies (and a quarter as many stars) spread over
    ``frames`` in realisations of up to ``per_frame_gal`` galaxies (default from the frame area:
    one per 15000 px, 4-40). Returns (concatenated rows, summary)."""
    rng, rows, timings, info = np.random.default_rng(seed), [], [], {}
    per = math.ceil(n_galaxies / len(frames))
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        for name in frames:
            done, k = 0, 0
            while done < per:
                fr = load_frame(data_dir, name, rng)
                if k == 0 or FRAMES[name][3]:  # un-injected catalogue (per window)
                    real_cat, _, _ = run_mode(fr, fr.data, tmp, f"{name}_real", False)
                ng = per_frame_gal or int(np.clip(fr.data.size / 15000, 4, 40))
                ng = min(ng, per - done)
                t, tim = run_realisation(fr, rng, tmp, f"{name}_{k}", real_cat, ng,
                                         max(1, ng // 4), refine)
                rows.append(t)
                timings.append({"frame": name, **tim})
                done += int((t["kind"] == 0).sum()) or ng
                k += 1
                info[name] = {"fwhm_pix": fr.fwhm, "pixel_scale": fr.scale, "gain": fr.gain,
                              "gain_source": fr.gain_source, "realisations": k,
                              "psf": "PSFEx" if fr.psfex else "stars of the frame"}
                log(f"{name} #{k}: {len(t['x'])} injected, net {tim['net_']['seconds']:.1f} s"
                    + (f", refine {tim['ref_']['seconds']:.1f} s" if refine else ""))
    t = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    s = summarise(t, t["fwhm"])
    for p in ("net_", "ref_"):
        tt = [x[p] for x in timings if p in x]
        if tt:
            s[f"{p}objects_per_s"] = sum(x["rows"] for x in tt) / sum(x["seconds"] for x in tt)
            s[f"{p}spurious"] = sum(x["spurious"] for x in tt)
            s["mode"] = tt[0]["mode"]
    s["frames"], s["subsets"] = info, im.subsets(t, {f: t["frame"] == f for f in frames})
    return t, s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).parents[1] / ".." / "shared/data"))
    ap.add_argument("--frames", nargs="+", default=list(FRAMES), choices=list(FRAMES))
    ap.add_argument("--n-galaxies", type=int, default=1000)
    ap.add_argument("--per-frame", type=int, default=None, help="galaxies per realisation")
    ap.add_argument("--quick", action="store_true", help="60 galaxies, 12 per realisation")
    ap.add_argument("--no-refine", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=("auto", "frame", "fallback"), default="auto",
                    help="frame mode: run_frame (fallback if not importable), or force one")
    ap.add_argument("--out-json", default=None)
    ap.add_argument("--out-md", default=None)
    ap.add_argument("--out-rows", default=None, help="per-object truth + measurements (.npz)")
    ap.add_argument("--no-gain", action="store_true",
                    help="do not give the frame mode the injection gain (sky-only noise)")
    a = ap.parse_args(argv)
    GAIN["pass"] = not a.no_gain
    import torch

    torch.set_num_threads(1)
    MODE["use"] = a.mode
    n, per = (60, 12) if a.quick else (a.n_galaxies, a.per_frame)
    t0 = time.perf_counter()
    rows, s = run(Path(a.data), a.frames, n, a.seed, not a.no_refine, per,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    if a.out_rows:
        np.savez(a.out_rows, **rows)
    s["command"], s["wall_s"] = " ".join(sys.argv), time.perf_counter() - t0
    text = json.dumps(s, indent=1, default=float)
    print(f"# {s['command']}\n# mode: {s.get('mode')}; {s['N_galaxies']} galaxies, "
          f"{s['N_stars']} stars; wall {s['wall_s']:.0f} s")
    print(json.dumps(s["frames"], default=float))
    md = markdown(s) + "\n\n" + im.subsets_markdown(s["subsets"])
    print(md)
    if a.out_json:
        Path(a.out_json).write_text(text)
    if a.out_md:
        Path(a.out_md).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
