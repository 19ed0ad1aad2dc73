"""Bank of real backgrounds and real PSFs for the simulator (one HDF5 file; see docs/bank.md).

Backgrounds: 61 x 61 cutouts of real ground-based frames at their native pixel scale, sky-
subtracted and divided by the per-pixel noise so that the noise has unit rms ("noise-normalised";
multiply by the target sky sigma). They keep the real correlated noise, the neighbours and the
artefacts, but no source with a peak S/N > :data:`CENTRE_SNR` within :data:`CENTRE_RADIUS` pixels
of the centre (30, 30): the simulated galaxy is the central object.

PSFs: real *effective* PSFs (pixel response included), resampled to each requested pixel scale,
25 x 25, unit sum, first-moment centroid at the central pixel (12, 12).

Build with :func:`build_bank` (``galnet bank build``), read with :class:`Bank`. The frames and PSF
models come from the data directory (``../shared/data``) and are never copied into the project.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import os
import re
import tempfile
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from galnet.errors import GalnetFileError, GalnetValueError

#: Side of a background cutout (pixels); the centre is (30, 30).
STAMP = 61
#: Side of a bank PSF (pixels); the centre is (12, 12).
PSF_SIZE = 25
#: Pixel scales (arcsec/px) of the hsc-r, kids-r and sdss-r presets.
DEFAULT_SCALES = (0.168, 0.2, 0.396)
#: No pixel of a source with peak S/N above CENTRE_SNR within CENTRE_RADIUS px of the centre.
CENTRE_SNR = 5.0
CENTRE_RADIUS = 5.0
#: Detection: Gaussian smoothing FWHM (px), threshold (x the smoothed noise rms), minimum area.
DETECT_FWHM = 3.0
DETECT_NSIGMA = 2.0
DETECT_NPIXELS = 5
#: Source masks used for sky and noise statistics are the detections grown by this many pixels.
MASK_GROW = 4
#: Cutouts whose robust noise rms (after normalising) is outside this range are rejected: the
#: noise varies on scales smaller than the noise map resolves (e.g. KiDS coadd stripes).
RMS_RANGE = (0.8, 1.25)
#: Minimum spacing (Chebyshev, px) between cutout centres of one frame: two cutouts share at
#: most 46 x 61 px (75%) of their area.
MIN_SEPARATION = 15
#: Normalised cutouts are rounded to 1/QUANTUM of the noise rms (adds 0.1% rms; compresses 2x).
QUANTUM = 256.0
#: Sane effective-PSF FWHM range (arcsec) for ground-based seeing.
FWHM_RANGE = (0.3, 4.0)
#: Sample format of the bank file (attribute ``galnet_bank_format``).
FORMAT_VERSION = 1

#: Input PSFs whose negative pixels sum to more than this fraction of their flux are clipped at 0.
NEGATIVE_FLUX_MAX = 0.01

_PSF_FAMILIES = ("hsc", "des_psfex", "decam_psfex", "sdss_psfield", "profit_kids", "profit_sdss")


# ----------------------------------------------------------------------------------------------
# Input description
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Frame:
    """A real frame: image file and HDU, native scale (arcsec/px) and optional noise products."""

    name: str
    band: str
    scale: float
    image: str  # path relative to the data directory
    hdu: int
    noise: str | None = None  # rms map or inverse-variance map
    noise_kind: str | None = None  # "rms" | "invvar"
    dq: str | None = None  # data-quality flags (non-zero = bad)
    back: str | None = None  # background map to subtract


_FIXED_FRAMES = (
    _Frame("kids_r", "r", 0.339, "frames/kids_viking_9band/r.fits", 1),
    _Frame("kids_g", "g", 0.339, "frames/kids_viking_9band/g.fits", 1),
    _Frame("kids_i", "i", 0.339, "frames/kids_viking_9band/i.fits", 1),
    _Frame("vst_r", "r", 0.2, "frames/vst_r_G202627.fits", 0),
    _Frame("ctio_i", "i", 0.26, "frames/ctio_mosaic_i.fits", 0),
    _Frame("ntt_emmi", "R", 0.27, "frames/ntt_emmi.fits", 0, "frames/ntt_emmi_rms.fits", "rms",
           back="frames/ntt_emmi_back.fits"),
    _Frame("decam_520206_S16", "z", 0.262, "frames/decam/decam-520206-S16-image-sub.fits", 1,
           "frames/decam/decam-520206-S16-invvar-sub.fits", "invvar"),
)


@contextmanager
def _quiet_fits() -> Iterator[None]:
    """Silence astropy's warnings about non-standard header cards (the NTT frame's ESO-LOG)."""
    from astropy.io.fits.verify import VerifyWarning
    from astropy.utils.exceptions import AstropyUserWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        warnings.simplefilter("ignore", AstropyUserWarning)
        yield


def _discover_frames(data_dir: Path) -> tuple[list[_Frame], list[str]]:
    """Frames present in ``data_dir`` and notes on skipped ones (missing, smaller than a stamp)."""
    from astropy.io import fits

    frames = [f for f in _FIXED_FRAMES if (data_dir / f.image).is_file()]
    for ooi in sorted((data_dir / "frames/decam").glob("c4d_*_ooi_*.fits")):
        if ooi.name.endswith("-psfex.fits"):
            continue
        m = re.match(r"c4d_(\d+_\d+)_ooi_(\w)_ls9\.(\w+)\.fits", ooi.name)
        if not m:
            continue
        rel = str(ooi.relative_to(data_dir))
        oow, ood = rel.replace("_ooi_", "_oow_"), rel.replace("_ooi_", "_ood_")
        frames.append(_Frame(f"decam_{m[1]}_{m[3]}_{m[2]}", m[2], 0.262, rel, 1,
                             oow if (data_dir / oow).is_file() else None, "invvar",
                             ood if (data_dir / ood).is_file() else None))
    kept, notes = [], []
    for f in frames:
        with _quiet_fits(), fits.open(data_dir / f.image) as h:
            ny, nx = h[f.hdu].shape
        if min(nx, ny) < STAMP:
            notes.append(f"{f.image}: {nx}x{ny} px is smaller than a {STAMP}x{STAMP} cutout; "
                         "skipped")
        else:
            kept.append(f)
    return kept, notes


# ----------------------------------------------------------------------------------------------
# Backgrounds
# ----------------------------------------------------------------------------------------------
@dataclass
class _Normalised:
    """A frame reduced to unit noise: ``norm = (data - sky) / noise`` (``noise`` includes
    ``factor``)."""

    sky_sub: np.ndarray  # data - sky, image units (bad pixels set to 0)
    noise: np.ndarray  # per-pixel 1-sigma noise, image units
    norm: np.ndarray  # sky_sub / noise
    bad: np.ndarray  # bool: flagged, zero-weight or non-finite
    segm: np.ndarray  # int segmentation of the normalised image (0 = sky)
    bright: np.ndarray  # bool: pixels of sources with peak S/N > CENTRE_SNR (or any pixel > it)
    mask: np.ndarray  # bool: bad or within MASK_GROW px of any detection (not sky)
    factor: float  # empirical correction applied to the noise map (MAD of normalised sky)
    method: str  # how the sky and the noise were estimated


def _kw(func, new: str, old: str) -> str:
    """Keyword name ``new`` if ``func`` accepts it, else ``old`` (photutils 3 renamed several)."""
    return new if new in inspect.signature(func).parameters else old


def _cat_attr(cat, new: str, old: str) -> np.ndarray:
    """SourceCatalog column by its photutils >= 3 name, or the older one."""
    return np.asarray(getattr(cat, new if hasattr(type(cat), new) else old), dtype=float)


def _disk(r: float) -> np.ndarray:
    k = int(np.ceil(r))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    return xx**2 + yy**2 <= r * r + 1e-9


def _detect(img: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """Segmentation (int array) of sources in a unit-noise image: smoothed with a Gaussian of
    FWHM :data:`DETECT_FWHM` px, DETECT_NSIGMA x the smoothed rms, DETECT_NPIXELS connected px."""
    from astropy.stats import mad_std
    from photutils.segmentation import detect_sources, make_2dgaussian_kernel
    from scipy.ndimage import convolve

    kernel = make_2dgaussian_kernel(DETECT_FWHM, size=5).array
    work = np.where(ignore, 0.0, img)
    conv = convolve(work, kernel / kernel.sum(), mode="constant", cval=0.0)
    sig = mad_std(conv[~ignore])
    segm = detect_sources(conv, DETECT_NSIGMA * sig, mask=ignore,
                          **{_kw(detect_sources, "n_pixels", "npixels"): DETECT_NPIXELS})
    if segm is None:
        return np.zeros(img.shape, dtype=np.int32)
    return segm.data.astype(np.int32)


def _normalise_frame(data: np.ndarray, noise_in: np.ndarray | None, bad: np.ndarray,
                     back: np.ndarray | None) -> _Normalised:
    """Subtract a smooth sky, divide by the noise, detect sources (see docs/bank.md)."""
    from astropy.stats import SigmaClip, mad_std, sigma_clipped_stats
    from photutils.background import Background2D, MedianBackground, StdBackgroundRMS
    from scipy.ndimage import binary_dilation

    ny, nx = data.shape
    good = ~bad
    filled = np.where(bad, np.median(data[good]), data)
    # 1. rough sky and noise, detection mask
    _, med, std = sigma_clipped_stats(filled[good], sigma=3.0, maxiters=10)
    det = _detect((filled - med) / std, bad)
    mask = binary_dilation(det > 0, _disk(MASK_GROW)) | bad
    # 2. smooth sky (and noise map when none is given)
    if back is not None:
        sky, sky_rms, method = back, None, "sky: given background map"
    elif min(nx, ny) >= 192:
        box = 64
        rms_kw = _kw(Background2D, "bkg_rms_estimator", "bkgrms_estimator")
        bkg = Background2D(filled, box, mask=mask, filter_size=3, sigma_clip=SigmaClip(3.0),
                           bkg_estimator=MedianBackground(), exclude_percentile=50.0,
                           **{rms_kw: StdBackgroundRMS()})
        sky, sky_rms = bkg.background, bkg.background_rms
        method = f"sky: photutils Background2D (box {box} px, 3x3 median filter)"
    else:
        _, m2, s2 = sigma_clipped_stats(filled, mask=mask, sigma=3.0, maxiters=10)
        sky, sky_rms = np.full(data.shape, m2), np.full(data.shape, s2)
        method = "sky: sigma-clipped median of the masked frame"
    if noise_in is not None:
        noise = noise_in
        method += "; noise: given rms / invvar map"
    else:
        if sky_rms is None:  # pragma: no cover - every frame with a back map has an rms map
            sky_rms = np.full(data.shape, mad_std(filled[~mask] - np.asarray(sky)[~mask]))
        noise = np.asarray(sky_rms, dtype=float)
        method += "; noise: local sigma-clipped rms of source-free pixels"
    noise = np.where(bad | ~(noise > 0), np.inf, noise)
    sky_sub = np.where(bad, 0.0, data - sky)
    norm = sky_sub / noise
    # 3. empirical correction: the MAD of the source-free normalised pixels is 1
    factor = float(mad_std(norm[~mask]))
    noise = noise * factor
    norm = norm / factor
    method += f"; scaled by the MAD of normalised sky ({factor:.3f})"
    # 4. detection on the unit-noise image; bright = peak S/N > CENTRE_SNR
    segm = _detect(norm, bad)
    mask = binary_dilation(segm > 0, _disk(MASK_GROW)) | bad
    peak = np.zeros(segm.max() + 1)
    np.maximum.at(peak, segm.ravel(), np.where(bad, 0.0, norm).ravel())
    bright_labels = np.flatnonzero(peak > CENTRE_SNR)
    bright = np.isin(segm, bright_labels[bright_labels > 0]) | (norm > CENTRE_SNR)
    return _Normalised(sky_sub, noise, norm.astype(np.float32), bad, segm, bright, mask, factor,
                       method)


def _load_frame(data_dir: Path, fr: _Frame) -> tuple[np.ndarray, np.ndarray | None, np.ndarray,
                                                      np.ndarray | None]:
    """(data, noise map or None, bad-pixel mask, background map or None) of a frame."""
    from astropy.io import fits

    def read(rel: str, hdu: int) -> np.ndarray:
        with _quiet_fits(), fits.open(data_dir / rel) as h:
            return np.asarray(h[hdu].data, dtype=np.float64)

    data = read(fr.image, fr.hdu)
    bad = ~np.isfinite(data)
    noise = None
    if fr.noise is not None:
        w = read(fr.noise, fr.hdu if fr.noise_kind == "invvar" else 0)
        if fr.noise_kind == "invvar":
            ok = np.isfinite(w) & (w > 0)
            noise = np.where(ok, 1.0 / np.sqrt(np.where(ok, w, 1.0)), np.inf)
        else:
            ok = np.isfinite(w) & (w > 0)
            noise = np.where(ok, w, np.inf)
        bad |= ~ok
    if fr.dq is not None:
        bad |= read(fr.dq, fr.hdu) != 0
    back = read(fr.back, 0) if fr.back is not None else None
    return data, noise, bad, back


def _window_any(mask: np.ndarray, size: int) -> np.ndarray:
    """``out[y, x]`` True where the size x size window centred on (y, x) touches ``mask`` (or the
    edge of the frame)."""
    h = size // 2
    c = np.pad(mask.astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    ny, nx = mask.shape
    out = np.ones((ny, nx), dtype=bool)
    if ny < size or nx < size:
        return out
    s = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    out[h:ny - h, h:nx - h] = s > 0
    return out


def _choose_centres(valid: np.ndarray, n: int, rng: np.random.Generator, min_sep: int,
                    accept=None) -> np.ndarray:
    """Up to ``n`` random (y, x) centres among ``valid`` pixels, at least ``min_sep`` px apart
    (Chebyshev), each passing ``accept(y, x)`` if given; random sequential packing, so frames too
    small for ``n`` give fewer."""
    cand = np.argwhere(valid)
    if len(cand) == 0 or n <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    cand = cand[rng.permutation(len(cand))]
    # occupancy grid with cells of min_sep px: a neighbour can only be in the 5 x 5 cells around
    cell = max(min_sep, 1)
    grid: dict[tuple[int, int], list[tuple[int, int]]] = {}
    out: list[tuple[int, int]] = []
    for y, x in cand:
        cy, cx = y // cell, x // cell
        ok = True
        for gy in range(cy - 1, cy + 2):
            for gx in range(cx - 1, cx + 2):
                for py, px in grid.get((gy, gx), ()):
                    if max(abs(py - y), abs(px - x)) < min_sep:
                        ok = False
                        break
                if not ok:
                    break
            if not ok:
                break
        if ok and (accept is None or accept(int(y), int(x))):
            out.append((int(y), int(x)))
            grid.setdefault((cy, cx), []).append((int(y), int(x)))
            if len(out) >= n:
                break
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def _max_overlap(centres: np.ndarray) -> np.ndarray:
    """Per cutout, the largest fraction of its area shared with another cutout of the frame."""
    n = len(centres)
    if n < 2:
        return np.zeros(n)
    best = np.zeros(n)
    for a in range(0, n, 512):  # blocks keep the pair matrix small
        d = np.abs(centres[a:a + 512, None, :] - centres[None, :, :])
        ov = np.clip(STAMP - d[..., 0], 0, None) * np.clip(STAMP - d[..., 1], 0, None)
        ov = ov.astype(float) / STAMP**2
        ov[np.arange(len(ov)), np.arange(a, a + len(ov))] = 0.0
        best[a:a + 512] = ov.max(axis=1)
    return best


def _noise_stats(cut: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """(robust rms, lag-1 correlation along x, along y) of the unmasked pixels of a cutout."""
    from astropy.stats import mad_std

    good = ~mask
    rms = float(mad_std(cut[good])) if good.sum() > 10 else np.nan
    r = np.where(good, cut - np.median(cut[good]) if good.any() else 0.0, 0.0)
    # clip outliers at 5 sigma so that a residual faint source does not dominate
    r = np.clip(r, -5 * rms, 5 * rms) if np.isfinite(rms) else r

    def corr(a, b, ga, gb):
        g = ga & gb
        if g.sum() < 10:
            return np.nan
        aa, bb = a[g], b[g]
        return float(np.sum(aa * bb) / np.sqrt(np.sum(aa * aa) * np.sum(bb * bb)))

    cx = corr(r[:, 1:], r[:, :-1], good[:, 1:], good[:, :-1])
    cy = corr(r[1:, :], r[:-1, :], good[1:, :], good[:-1, :])
    return rms, cx, cy


def _frame_cutouts(data_dir: Path, fr: _Frame, n: int, rng: np.random.Generator
                   ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Noise-normalised cutouts of one frame: (images (k, 61, 61) float32, per-cutout columns,
    frame summary)."""
    data, noise, bad, back = _load_frame(data_dir, fr)
    nf = _normalise_frame(data, noise, bad, back)
    from scipy.ndimage import binary_dilation

    h = STAMP // 2
    forbidden = binary_dilation(nf.bright, _disk(CENTRE_RADIUS))
    valid = ~_window_any(nf.bad, STAMP) & ~forbidden
    stats: dict[tuple[int, int], tuple[np.ndarray, tuple[float, float, float]]] = {}
    n_rms_rejected = 0

    def accept(y: int, x: int) -> bool:
        nonlocal n_rms_rejected
        sl = (slice(y - h, y + h + 1), slice(x - h, x + h + 1))
        c = np.round(nf.norm[sl] * QUANTUM) / QUANTUM
        st = _noise_stats(c, nf.mask[sl])
        if not RMS_RANGE[0] <= st[0] <= RMS_RANGE[1]:
            n_rms_rejected += 1
            return False
        stats[(y, x)] = (c, st)
        return True

    cen = _choose_centres(valid, n, rng, MIN_SEPARATION, accept)
    k = len(cen)
    cuts = np.empty((k, STAMP, STAMP), dtype=np.float32)
    cols = np.full((3, k), np.nan)
    for i, (y, x) in enumerate(cen):
        cuts[i], cols[:, i] = stats[(int(y), int(x))]
    out = {"rms": cols[0].astype(np.float32), "corr1_x": cols[1].astype(np.float32),
           "corr1_y": cols[2].astype(np.float32), "x": cen[:, 1].astype(np.int32),
           "y": cen[:, 0].astype(np.int32), "max_overlap": _max_overlap(cen).astype(np.float32)}
    ny, nx = data.shape
    summary = {"name": fr.name, "file": fr.image, "band": fr.band, "native_scale": fr.scale,
               "shape": [int(ny), int(nx)], "n_cutouts": int(k), "noise_factor": nf.factor,
               "method": nf.method, "valid_centre_fraction": float(valid.mean()),
               "coverage": float(k * STAMP**2 / (nx * ny)),
               "bad_fraction": float(nf.bad.mean()),
               "rejected_noise_not_uniform": int(n_rms_rejected)}
    return cuts, out, summary


# ----------------------------------------------------------------------------------------------
# PSFs
# ----------------------------------------------------------------------------------------------
@dataclass
class _PSFInput:
    """One real effective PSF image before resampling."""

    family: str
    band: str
    file: str
    image: np.ndarray
    sample_scale: float  # arcsec per pixel of ``image``
    pixel_scale: float  # arcsec, size of the pixel response contained in ``image``
    x: float = np.nan  # CCD position where a spatially varying model was evaluated (PSFEx x,
    y: float = np.nan  # y; SDSS col, row); NaN for fixed images


def _first_moment(img: np.ndarray) -> tuple[float, float]:
    """Unweighted first moment (x, y) of an image relative to its central pixel (pixels)."""
    ny, nx = img.shape
    s = img.sum()
    yy, xx = np.mgrid[:ny, :nx]
    return float((img * xx).sum() / s - (nx - 1) / 2), float((img * yy).sum() / s - (ny - 1) / 2)


def psf_fwhm(image: np.ndarray, scale: float, oversample: int = 5) -> float:
    """FWHM (arcsec) of an effective PSF image: the PSF is interpolated (GalSim Quintic), drawn
    ``oversample`` times finer without a further pixel, and ``FWHM = 2 sqrt(A / pi)`` where ``A``
    is the area above half the peak (the geometric mean of the major and minor FWHM for an
    elliptical PSF)."""
    import galsim

    img = np.asarray(image, dtype=float)
    ii = galsim.InterpolatedImage(galsim.Image(img / img.sum(), scale=scale))
    ny, nx = img.shape
    fine = scale / oversample
    arr = ii.drawImage(nx=nx * oversample, ny=ny * oversample, scale=fine,
                       method="no_pixel").array
    area = np.count_nonzero(arr >= 0.5 * arr.max()) * fine**2
    return float(2.0 * np.sqrt(area / np.pi))


def resample_psf(image: np.ndarray, scale_in: float, scale_out: float, size: int = PSF_SIZE,
                 pixel_in: float | None = None, recentre: bool = True) -> tuple[np.ndarray, float]:
    """Resample an effective PSF image to another pixel scale.

    The image (pixel scale ``scale_in`` arcsec, containing a pixel response of ``pixel_in``
    arcsec [default: ``scale_in``]) is interpolated with GalSim's Quintic kernel, the input pixel
    is deconvolved and the target pixel convolved, i.e.
    ``Convolve(InterpolatedImage, Deconvolve(Pixel(pixel_in)), Pixel(scale_out))`` drawn with
    ``method='no_pixel'`` on ``size x size`` pixels of ``scale_out`` arcsec. With ``recentre``
    the profile is shifted until the first moment of the stamp is within 0.005 px of the central
    pixel. Returns (image normalised to unit sum, float64; flux fraction inside the stamp).
    """
    import galsim

    img = np.asarray(image, dtype=float)
    s = img.sum()
    if not np.all(np.isfinite(img)) or not s > 0:
        raise GalnetValueError("PSF image must be finite with a positive sum", "image")
    ii = galsim.InterpolatedImage(galsim.Image(img / s, scale=scale_in))
    prof = galsim.Convolve(ii, galsim.Deconvolve(galsim.Pixel(pixel_in or scale_in)),
                           galsim.Pixel(scale_out))
    dx = dy = 0.0
    for _ in range(6):
        arr = prof.shift(-dx * scale_out, -dy * scale_out).drawImage(
            nx=size, ny=size, scale=scale_out, method="no_pixel").array.astype(np.float64)
        if not recentre:
            break
        mx, my = _first_moment(arr)
        if abs(mx) < 0.005 and abs(my) < 0.005:
            break
        dx, dy = dx + mx, dy + my
    flux = float(arr.sum())
    return arr / flux, flux


def _psfex_hdu_from_legacypipe(path: Path):
    """A standard PSFEx ``PSF_DATA`` table HDU (readable by galsim.des.DES_PSFEx) from a
    legacypipe "psfex-single" table, whose PSFEx header keywords are stored as columns."""
    from astropy.io import fits

    with fits.open(path) as h:
        t = h[1].data
        basis = np.asarray(t["psf_mask"][0], dtype=np.float32)
        row = {name.upper(): t[name][0] for name in t.columns.names if name != "psf_mask"}
    n3, n2, n1 = basis.shape
    col = fits.Column(name="PSF_MASK", format=f"{basis.size}E", dim=f"({n1},{n2},{n3})",
                      array=basis[None])
    hdu = fits.BinTableHDU.from_columns([col])
    for key in ("POLNAXIS", "POLNAME1", "POLNAME2", "POLZERO1", "POLZERO2", "POLSCAL1",
                "POLSCAL2", "POLNGRP", "POLGRP1", "POLGRP2", "POLDEG1", "PSFNAXIS", "PSFAXIS1",
                "PSFAXIS2", "PSFAXIS3", "PSF_SAMP", "PSF_FWHM"):
        v = row[key]
        hdu.header[key] = v.strip() if isinstance(v, str) else v.item()
    return hdu


def _psfex_inputs(family: str, rel: str, model, band: str, pixel_scale: float, n: int,
                  rng: np.random.Generator) -> Iterator[_PSFInput]:
    """``n`` PSFs of a PSFEx model (galsim.des.DES_PSFEx) at random positions of its fit range."""
    import galsim

    u = rng.uniform(-0.5, 0.5, size=(n, 2))
    for ux, uy in u:
        x = model.x_zero + ux * model.x_scale
        y = model.y_zero + uy * model.y_scale
        arr = np.asarray(model.getPSFArray(galsim.PositionD(x, y)), dtype=float)
        yield _PSFInput(family, band, rel, arr, pixel_scale * model.sample_scale, pixel_scale,
                        float(x), float(y))


def _sdss_psfield(table, row: float, col: float) -> np.ndarray:
    """SDSS KL-basis PSF at (row, col): ``sum_k a_k RROWS_k`` with
    ``a_k = sum_ij (0.001 row)^i (0.001 col)^j C_k[i, j]`` (photoop ``sdss_psf_recon``)."""
    img = None
    for k in range(len(table)):
        nr, nc = int(table["nrow_b"][k]), int(table["ncol_b"][k])
        c = np.asarray(table["c"][k], dtype=float)[:nr, :nc]
        i = np.arange(nr)[:, None]
        j = np.arange(nc)[None, :]
        a = float(np.sum((1e-3 * row) ** i * (1e-3 * col) ** j * c))
        basis = np.asarray(table["RROWS"][k], dtype=float).reshape(
            int(table["RNROW"][k]), int(table["RNCOL"][k]))
        img = a * basis if img is None else img + a * basis
    return img


def _psf_inputs(data_dir: Path, family: str, n_model: int, rng: np.random.Generator
                ) -> tuple[list[_PSFInput], list[str]]:
    """Input PSFs of one family and the files they came from."""
    from astropy.io import fits

    out: list[_PSFInput] = []
    files: list[str] = []
    if family == "hsc":
        rel = "psf/hsc_cosmos_psf_scarlet.fits"
        if (data_dir / rel).is_file():
            cube = fits.getdata(data_dir / rel).astype(float)
            for band, img in zip("grizy", cube, strict=False):
                out.append(_PSFInput(family, band, rel, img, 0.168, 0.168))
            files.append(rel)
    elif family == "des_psfex":
        import galsim.des

        rel = "psf/des_DECam_00154912_12_psfex.psf"
        if (data_dir / rel).is_file():
            model = galsim.des.DES_PSFEx(str(data_dir / rel))
            out += _psfex_inputs(family, rel, model, "r", 0.263, n_model, rng)
            files.append(rel)
    elif family == "decam_psfex":
        import galsim.des

        for p in sorted((data_dir / "frames/decam").glob("*psfex.fits")):
            rel = str(p.relative_to(data_dir))
            try:
                if p.name.startswith("c4d_"):
                    band = re.search(r"_ooi_(\w)_", p.name)[1]
                    model = galsim.des.DES_PSFEx(_psfex_hdu_from_legacypipe(p))
                else:
                    band = "z"
                    model = galsim.des.DES_PSFEx(str(p))
            except (OSError, KeyError, TypeError, ValueError) as exc:
                warnings.warn(f"{rel}: unreadable PSFEx model ({exc}); skipped", stacklevel=2)
                continue
            out += _psfex_inputs(family, rel, model, band, 0.262, n_model, rng)
            files.append(rel)
    elif family == "sdss_psfield":
        rel = "psf/sdss_psField-001000-1-0100.fit"
        if (data_dir / rel).is_file():
            with fits.open(data_dir / rel) as h:
                for band, hdu in zip("ugriz", range(1, 6), strict=True):
                    table = h[hdu].data
                    rows = rng.uniform(0, 1489, n_model)
                    cols = rng.uniform(0, 2048, n_model)
                    for r, c in zip(rows, cols, strict=True):
                        out.append(_PSFInput(family, band, rel, _sdss_psfield(table, r, c),
                                             0.396, 0.396, float(c), float(r)))
            files.append(rel)
    elif family in ("profit_kids", "profit_sdss"):
        sub, scale = ("KiDS", 0.2) if family == "profit_kids" else ("SDSS", 0.339)
        for p in sorted((data_dir / "galaxies/profit_gama_kids_sdss" / sub).glob("*psfim.fits")):
            rel = str(p.relative_to(data_dir))
            out.append(_PSFInput(family, "r", rel, fits.getdata(p).astype(float), scale, scale))
            files.append(rel)
    return out, files


def _finish_psf(inp: _PSFInput, scale_out: float) -> dict[str, Any] | None:
    """Resample one input PSF; None if it is not usable (non-finite, FWHM not sane, off-centre)."""
    if not np.all(np.isfinite(inp.image)) or not inp.image.sum() > 0:
        return None
    image = inp.image
    # Stacked-star PSFs with over-subtracted backgrounds (the ProFit KiDS PSFs: negative pixels
    # worth 11-25 % of the flux) would print dark holes around bright simulated galaxies: clip
    # negative pixels when they hold more than NEGATIVE_FLUX_MAX of the flux.
    if -image[image < 0].sum() > NEGATIVE_FLUX_MAX * image.sum():
        image = np.clip(image, 0.0, None)
    img, flux = resample_psf(image, inp.sample_scale, scale_out, PSF_SIZE, inp.pixel_scale)
    if not np.all(np.isfinite(img)):
        return None
    c = PSF_SIZE // 2
    iy, ix = np.unravel_index(np.argmax(img), img.shape)
    if abs(iy - c) > 2 or abs(ix - c) > 2:
        return None
    fwhm = psf_fwhm(img, scale_out)
    if not FWHM_RANGE[0] <= fwhm <= FWHM_RANGE[1]:
        return None
    return {"image": img.astype(np.float32), "fwhm_arcsec": fwhm, "flux_in_stamp": flux}


# ----------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------
def _readme_rows(data_dir: Path) -> list[tuple[str, str]]:
    """(path pattern, table row) pairs of the data README's file table."""
    readme = data_dir / "README.md"
    if not readme.is_file():
        return []
    rows = []
    for line in readme.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| ") or line.startswith("| path") or line.startswith("|---"):
            continue
        pat = line.split("|")[1].strip()
        # expand {a,b,c} alternatives into fnmatch patterns
        pats = [pat]
        while any("{" in p for p in pats):
            new = []
            for p in pats:
                m = re.search(r"\{([^}]*)\}", p)
                if not m:
                    new.append(p)
                    continue
                new += [p[:m.start()] + alt + p[m.end():] for alt in m[1].split(",")]
            pats = new
        rows += [(p, line) for p in pats]
    return rows


def _provenance(data_dir: Path, files: Sequence[str]) -> dict[str, str]:
    """Per used file, the data README's table row (path, what, scale, source, licence): the most
    specific matching pattern, else the row sharing the longest name prefix (marked)."""
    rows = _readme_rows(data_dir)
    out = {}
    for f in sorted(set(files)):
        hits = [(p.count("*"), -len(p), line) for p, line in rows if fnmatch.fnmatch(f, p)]
        if hits:
            out[f] = min(hits)[2]
            continue
        best, line = max(((len(os.path.commonprefix([f, p])), line) for p, line in rows),
                         default=(0, ""))
        out[f] = (f"(closest README row) {line}" if best > len(os.path.dirname(f)) + 8
                  else "not listed in the data README")
    return out


# ----------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------
def _scale_key(scale: float) -> str:
    return f"{scale:.4f}"


def _check_scales(pixel_scales) -> tuple[float, ...]:
    try:
        scales = tuple(sorted({float(s) for s in np.atleast_1d(pixel_scales)}))
    except (TypeError, ValueError):
        raise GalnetValueError(f"pixel_scales must be numbers, got {pixel_scales!r}",
                               "pixel_scales", pixel_scales) from None
    if not scales or not all(np.isfinite(s) and 0.01 <= s <= 2.0 for s in scales):
        raise GalnetValueError(f"pixel_scales must be in [0.01, 2] arcsec/px, got {scales}",
                               "pixel_scales", pixel_scales)
    return scales


def _str_array(values: Sequence[str]) -> np.ndarray:
    return np.array([v.encode("utf-8") for v in values], dtype=object)


def _named_rng(seed: int, name: str) -> np.random.Generator:
    """Generator for one frame or PSF family: depends on (seed, name) only, not on which other
    frames or families are built."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]))


def _add_psfs(psf_out: dict[float, dict[str, list]], inputs: Sequence[_PSFInput],
              scales: Sequence[float]) -> int:
    """Resample ``inputs`` to every scale and append them to ``psf_out``; returns the number of
    rejected (PSF, scale) pairs."""
    n_rej = 0
    for inp in inputs:
        native = None
        for s in scales:
            res = _finish_psf(inp, s)
            if res is None:
                n_rej += 1
                continue
            if native is None:
                native = psf_fwhm(inp.image, inp.sample_scale)
            d = psf_out[s]
            for key, val in (("image", res["image"]), ("fwhm_arcsec", res["fwhm_arcsec"]),
                             ("flux_in_stamp", res["flux_in_stamp"]),
                             ("native_fwhm_arcsec", native), ("source", inp.family),
                             ("band", inp.band), ("file", inp.file),
                             ("native_scale", inp.sample_scale), ("x", inp.x), ("y", inp.y)):
                d.setdefault(key, []).append(val)
    return n_rej


def build_bank(data_dir: str | os.PathLike, out: str | os.PathLike,
               pixel_scales: Sequence[float] = DEFAULT_SCALES, n_per_frame: int = 600,
               seed: int = 0, progress: bool = True, *, frames: Sequence[str] | None = None,
               psf_sources: Sequence[str] | None = None, n_psf_per_model: int = 20) -> Path:
    """Build the background/PSF bank from the real data in ``data_dir`` into the HDF5 file ``out``.

    Parameters
    ----------
    data_dir : the shared data directory (``../shared/data``; see its README.md).
    out : output file; written to a temporary file in the same directory and renamed at the end,
        so ``out`` never holds a partial bank.
    pixel_scales : arcsec/px at which PSFs are stored [default: 0.168, 0.2, 0.396].
    n_per_frame : maximum number of background cutouts per frame [default: 600]; small frames give
        fewer (centres at least :data:`MIN_SEPARATION` px apart, clean centre, no bad pixel).
    seed : seed of the cutout positions and PSF positions.
    progress : show a tqdm progress bar.
    frames : frame names to use (e.g. ``"kids_r"``, ``"ntt_emmi"``) [default: all found].
    psf_sources : PSF families to use, among ``hsc``, ``des_psfex``, ``decam_psfex``,
        ``sdss_psfield``, ``profit_kids``, ``profit_sdss`` [default: all].
    n_psf_per_model : PSFs drawn at random positions of each spatially varying model (PSFEx,
        SDSS psField band) [default: 20].

    Returns the path of the bank. Raises :class:`GalnetFileError` if ``data_dir`` is missing or
    holds none of the expected files, or if ``out`` cannot be written.
    """
    import h5py
    from tqdm.auto import tqdm

    import galnet

    t0 = time.time()
    data_dir = Path(data_dir).expanduser()
    out = Path(out).expanduser()
    scales = _check_scales(pixel_scales)
    if int(n_per_frame) < 1 or int(n_psf_per_model) < 1:
        raise GalnetValueError("n_per_frame and n_psf_per_model must be >= 1", "n_per_frame",
                               n_per_frame)
    if not data_dir.is_dir():
        raise GalnetFileError(f"data directory {str(data_dir)!r} not found")
    all_frames, skipped = _discover_frames(data_dir)
    if frames is not None:
        unknown = set(frames) - {f.name for f in all_frames}
        if unknown:
            raise GalnetValueError(f"unknown or unusable frames {sorted(unknown)}; available: "
                                   f"{[f.name for f in all_frames]}", "frames", frames)
        all_frames = [f for f in all_frames if f.name in set(frames)]
    families = tuple(_PSF_FAMILIES if psf_sources is None else psf_sources)
    if set(families) - set(_PSF_FAMILIES):
        raise GalnetValueError(f"unknown psf_sources {sorted(set(families) - set(_PSF_FAMILIES))}"
                               f"; known: {list(_PSF_FAMILIES)}", "psf_sources", psf_sources)
    if not all_frames and not any((data_dir / p).exists() for p in ("psf", "galaxies")):
        raise GalnetFileError(f"data directory {str(data_dir)!r} holds none of the expected files "
                              "(frames/*.fits, psf/, galaxies/; see its README.md)")
    if out.is_dir():
        raise GalnetFileError(f"bank output {str(out)!r} is a directory")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GalnetFileError(f"cannot create directory {str(parent)!r} for the bank: "
                              f"{exc.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GalnetFileError(f"cannot write bank {str(out)!r}: directory {str(parent)!r} is "
                              "not writable")

    bar = tqdm(total=len(all_frames) + len(families), desc="galnet bank", unit="step",
               disable=not progress)
    try:
        cut_list, meta_cols, frame_summaries, used_files = [], [], [], []
        for fr in all_frames:  # ---- backgrounds
            bar.set_postfix_str(fr.name)
            cuts, cols, summary = _frame_cutouts(data_dir, fr, int(n_per_frame),
                                                 _named_rng(seed, fr.name))
            cut_list.append(cuts)
            cols["frame"] = np.array([fr.name] * len(cuts), dtype=object)
            cols["native_scale"] = np.full(len(cuts), fr.scale, dtype=np.float32)
            meta_cols.append(cols)
            frame_summaries.append(summary)
            used_files += [p for p in (fr.image, fr.noise, fr.dq, fr.back) if p]
            bar.update(1)
        psf_out: dict[float, dict[str, list]] = {s: {} for s in scales}
        psf_notes: list[str] = []
        for fam in families:  # ---- PSFs
            bar.set_postfix_str(fam)
            inputs, files = _psf_inputs(data_dir, fam, int(n_psf_per_model),
                                        _named_rng(seed, fam))
            used_files += files
            n_rej = _add_psfs(psf_out, inputs, scales)
            if n_rej:
                psf_notes.append(f"{fam}: {n_rej} (PSF, scale) pairs rejected (FWHM outside "
                                 f"{FWHM_RANGE} arcsec, non-finite or off-centre)")
            bar.update(1)
    finally:
        bar.close()

    n_bg = sum(len(c) for c in cut_list)
    n_psf = sum(len(d.get("image", ())) for d in psf_out.values())
    if n_bg == 0 and n_psf == 0:
        raise GalnetFileError(f"data directory {str(data_dir)!r}: no usable frame or PSF found")

    provenance = {
        "galnet_version": galnet.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": str(data_dir.resolve()),
        "seed": int(seed),
        "n_per_frame": int(n_per_frame),
        "n_psf_per_model": int(n_psf_per_model),
        "files": _provenance(data_dir, used_files),
        "frames": frame_summaries,
        "notes": skipped + psf_notes + [
            "No HSC-SSP frame larger than 69x57 px is available: HSC-like simulations use these "
            "other ground-based frames with their noise rescaled to the target depth."],
        "build_seconds": round(time.time() - t0, 1),
    }

    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["galnet_bank_format"] = FORMAT_VERSION
            f.attrs["galnet_version"] = galnet.__version__
            f.attrs["created"] = provenance["created"]
            f.attrs["data_dir"] = provenance["data_dir"]
            # README rows are stored once, files point to them (keeps the attribute small)
            rows = sorted(set(provenance["files"].values()))
            packed = {**provenance, "readme_rows": rows,
                      "files": {k: rows.index(v) for k, v in provenance["files"].items()}}
            f.attrs["provenance"] = json.dumps(packed)
            bg = np.concatenate(cut_list) if cut_list else np.zeros((0, STAMP, STAMP), np.float32)
            f.create_dataset("backgrounds", data=bg, dtype="f4", chunks=(1, STAMP, STAMP)
                             if len(bg) else None, compression="gzip" if len(bg) else None,
                             shuffle=bool(len(bg)))
            g = f.create_group("background_meta")
            for key in ("x", "y", "native_scale", "rms", "corr1_x", "corr1_y", "max_overlap"):
                g.create_dataset(key, data=np.concatenate([c[key] for c in meta_cols])
                                 if meta_cols else np.zeros(0))
            g.create_dataset("frame", data=_str_array(
                [s for c in meta_cols for s in c["frame"]]), dtype=h5py.string_dtype())
            pg = f.create_group("psfs")
            for s in scales:
                d = psf_out[s]
                sg = pg.create_group(_scale_key(s))
                sg.attrs["pixel_scale"] = s
                imgs = np.array(d.get("image", []), dtype=np.float32).reshape(
                    -1, PSF_SIZE, PSF_SIZE)
                sg.create_dataset("images", data=imgs)
                for key in ("fwhm_arcsec", "native_fwhm_arcsec", "flux_in_stamp",
                            "native_scale", "x", "y"):
                    sg.create_dataset(key, data=np.asarray(d.get(key, []), dtype=np.float64))
                for key in ("source", "band", "file"):
                    sg.create_dataset(key, data=_str_array(d.get(key, [])),
                                      dtype=h5py.string_dtype())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return out


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
class Bank:
    """A background/PSF bank built by :func:`build_bank`, loaded into memory once.

    Attributes: ``path``; ``n_backgrounds``; ``pixel_scales`` (arcsec/px, sorted);
    ``background_meta`` (astropy Table: frame, x, y (cutout centre in the frame, 0-based px),
    native_scale, rms, corr1_x, corr1_y, corr1, max_overlap); ``psf_meta(scale)``;
    ``provenance`` (dict).
    """

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise GalnetFileError(f"bank file {str(self.path)!r} not found")
        try:
            f = h5py.File(self.path, "r")
        except OSError:
            raise GalnetFileError(f"{str(self.path)!r} is not a galnet bank "
                                  "(not an HDF5 file)") from None
        with f:
            if "galnet_bank_format" not in f.attrs or "backgrounds" not in f or "psfs" not in f:
                raise GalnetFileError(f"{str(self.path)!r} is not a galnet bank")
            if int(f.attrs["galnet_bank_format"]) > FORMAT_VERSION:
                raise GalnetFileError(f"{str(self.path)!r}: bank format "
                                      f"{int(f.attrs['galnet_bank_format'])} is newer than this "
                                      f"galnet reads ({FORMAT_VERSION})")
            prov = json.loads(f.attrs["provenance"])
            rows = prov.pop("readme_rows", None)
            if rows is not None:
                prov["files"] = {k: rows[i] for k, i in prov["files"].items()}
            self.provenance: dict = prov
            self._bg = np.asarray(f["backgrounds"][...], dtype=np.float32)
            bm = f["background_meta"]
            self._bg_meta = {k: bm[k][...] for k in bm}
            self._bg_meta["frame"] = np.array(
                [v.decode() if isinstance(v, bytes) else str(v) for v in self._bg_meta["frame"]])
            self._psf: dict[float, dict[str, np.ndarray]] = {}
            for key, sg in f["psfs"].items():
                d = {k: sg[k][...] for k in sg}
                for k in ("source", "band", "file"):
                    d[k] = np.array([v.decode() if isinstance(v, bytes) else str(v)
                                     for v in d[k]])
                d["images"] = np.asarray(d["images"], dtype=np.float32)
                self._psf[float(sg.attrs.get("pixel_scale", float(key)))] = d
        m = self._bg_meta
        self._origin = np.array([f"{fr}:{x},{y}" for fr, x, y in zip(m["frame"], m["x"], m["y"],
                                                                     strict=True)])

    def __repr__(self) -> str:
        counts = {s: len(d["images"]) for s, d in self._psf.items()}
        return f"Bank({str(self.path)!r}, backgrounds={self.n_backgrounds}, psfs={counts})"

    @property
    def n_backgrounds(self) -> int:
        return int(len(self._bg))

    @property
    def pixel_scales(self) -> tuple[float, ...]:
        return tuple(sorted(s for s, d in self._psf.items() if len(d["images"])))

    @property
    def background_meta(self):
        from astropy.table import Table

        m = self._bg_meta
        t = Table({k: m[k] for k in ("frame", "x", "y", "native_scale", "rms", "corr1_x",
                                     "corr1_y", "max_overlap")})
        t["corr1"] = 0.5 * (t["corr1_x"] + t["corr1_y"])
        t["native_scale"].unit = "arcsec/pix"
        return t

    def _scale(self, pixel_scale: float) -> float:
        for s in self._psf:
            if abs(s - float(pixel_scale)) <= 1e-6 * max(1.0, abs(s)) and len(
                    self._psf[s]["images"]):
                return s
        raise GalnetValueError(f"bank {str(self.path)!r} has no PSFs at pixel scale "
                               f"{pixel_scale} arcsec/px; available: {list(self.pixel_scales)}",
                               "pixel_scale", pixel_scale)

    def psf_meta(self, pixel_scale: float):
        """Astropy Table of the PSFs at ``pixel_scale``: source (family), band, file, x, y
        (model position, NaN for fixed images), native_scale, native_fwhm_arcsec, fwhm_arcsec,
        flux_in_stamp (fraction of the PSF flux inside the 25 x 25 stamp before normalising)."""
        from astropy.table import Table

        d = self._psf[self._scale(pixel_scale)]
        return Table({k: d[k] for k in ("source", "band", "file", "x", "y", "native_scale",
                                        "native_fwhm_arcsec", "fwhm_arcsec", "flux_in_stamp")})

    def psf_images(self, pixel_scale: float) -> np.ndarray:
        """All PSFs at ``pixel_scale``, (M, 25, 25) float32, unit sum (read-only view)."""
        v = self._psf[self._scale(pixel_scale)]["images"].view()
        v.flags.writeable = False
        return v

    def sample_backgrounds(self, rng: np.random.Generator, n: int, *, augment: bool = True,
                           frames: Sequence[str] | None = None,
                           native_scale: tuple[float, float] | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random noise-normalised background cutouts (with replacement).

        Returns (images (n, 61, 61) float32, unit noise rms; origins (n,) str
        ``"frame:x,y"``). With ``augment`` each cutout is also given one of the 8 flips/90-degree
        rotations at random (noise statistics are unchanged; x and y correlations swap).
        ``frames`` restricts the draw to those frame names, ``native_scale`` (min, max) to frames
        with a native pixel scale (arcsec/px) in that range.
        """
        n = int(n)
        if n < 0:
            raise GalnetValueError(f"n must be >= 0, got {n}", "n", n)
        pool = None
        if frames is not None or native_scale is not None:
            keep = np.ones(self.n_backgrounds, dtype=bool)
            if frames is not None:
                keep &= np.isin(self._bg_meta["frame"], list(frames))
            if native_scale is not None:
                lo, hi = (float(v) for v in native_scale)
                ns = self._bg_meta["native_scale"]
                keep &= (ns >= lo - 1e-6) & (ns <= hi + 1e-6)
            pool = np.flatnonzero(keep)
            if len(pool) == 0:
                raise GalnetValueError(f"no background cutouts with frames={frames} and "
                                       f"native_scale={native_scale}; bank has "
                                       f"{sorted(set(self._bg_meta['frame']))}", "frames", frames)
        if self.n_backgrounds == 0:
            raise GalnetValueError(f"bank {str(self.path)!r} has no background cutouts", "n", n)
        idx = rng.integers(0, self.n_backgrounds, n) if pool is None else pool[
            rng.integers(0, len(pool), n)]
        out = self._bg[idx]
        if augment and n:
            t = rng.integers(0, 8, n)
            for k in range(1, 8):
                sel = np.flatnonzero(t == k)
                if len(sel) == 0:
                    continue
                a = out[sel]
                if k >= 4:
                    a = a[:, :, ::-1]
                out[sel] = np.rot90(a, k % 4, axes=(1, 2))
        return out, self._origin[idx]

    def sample_psfs(self, rng: np.random.Generator, n: int, pixel_scale: float, *,
                    sources: Sequence[str] | None = None,
                    fwhm_range: tuple[float, float] | None = None,
                    weighting: str = "family") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` random bank PSFs at ``pixel_scale`` arcsec/px (with replacement).

        Returns (images (n, 25, 25) float32, unit sum, centred on (12, 12); fwhm_arcsec (n,);
        sources (n,) str ``"family:band"``, e.g. ``"hsc:r"``). ``weighting="family"`` gives each
        PSF family (hsc, des_psfex, decam_psfex, sdss_psfield, profit_kids, profit_sdss) the same
        share, ``"uniform"`` each PSF. ``sources`` keeps only those families; ``fwhm_range``
        (arcsec) only PSFs with a FWHM inside it. Raises :class:`GalnetValueError` if the bank has
        no PSFs at this scale (the message lists those it has) or none pass the filters.
        """
        d = self._psf[self._scale(pixel_scale)]
        n = int(n)
        if n < 0:
            raise GalnetValueError(f"n must be >= 0, got {n}", "n", n)
        keep = np.ones(len(d["images"]), dtype=bool)
        if sources is not None:
            keep &= np.isin(d["source"], list(sources))
        if fwhm_range is not None:
            lo, hi = (float(v) for v in fwhm_range)
            keep &= (d["fwhm_arcsec"] >= lo) & (d["fwhm_arcsec"] <= hi)
        pool = np.flatnonzero(keep)
        if len(pool) == 0:
            raise GalnetValueError(f"no bank PSFs at {pixel_scale} arcsec/px with sources="
                                   f"{sources} and fwhm_range={fwhm_range}", "sources", sources)
        if weighting == "family":
            fam = d["source"][pool]
            _, inv, counts = np.unique(fam, return_inverse=True, return_counts=True)
            p = 1.0 / counts[inv]
            idx = pool[rng.choice(len(pool), size=n, p=p / p.sum())]
        elif weighting == "uniform":
            idx = pool[rng.integers(0, len(pool), n)]
        else:
            raise GalnetValueError(f"weighting must be 'family' or 'uniform', got {weighting!r}",
                                   "weighting", weighting)
        labels = np.char.add(np.char.add(d["source"][idx].astype(str), ":"),
                             d["band"][idx].astype(str))
        return d["images"][idx].copy(), d["fwhm_arcsec"][idx].astype(np.float64), labels


# ----------------------------------------------------------------------------------------------
# Real galaxies for galleries
# ----------------------------------------------------------------------------------------------
_GALLERY_FRAMES = ("kids_r", "vst_r", "ctio_i", "ntt_emmi", "decam_170316_062107_N2_z")


def real_galaxy_cutouts(data_dir: str | os.PathLike, n: int, seed: int = 0, *,
                        min_snr: float = 30.0, frames: Sequence[str] = _GALLERY_FRAMES
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` 61 x 61 cutouts of real, isolated, extended sources (galaxies) at the centre.

    Sources are detected on the noise-normalised frames (as for the bank) and measured with
    photutils ``SourceCatalog``. Kept: S/N = flux / (sigma sqrt(area)) > ``min_snr``; extended
    (peak / flux below half that of the most compact bright sources, i.e. not stars); footprint
    smaller than 45 px; brightest pixel within 2.5 px of the centroid (no merged pairs); no other
    source brighter than a third of its flux within 20 px; no bad
    pixel; at least 30 px from the edges. Drawn at random (``seed``) across frames.

    Returns (images (k, 61, 61) float32, sky-subtracted, in the frames' own units, centred on the
    source's nearest pixel; noise_rms (k,) float64, median 1-sigma sky noise of each cutout, same
    units), k <= n.
    """
    from photutils.segmentation import SegmentationImage, SourceCatalog

    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise GalnetFileError(f"data directory {str(data_dir)!r} not found")
    use = [f for f in _discover_frames(data_dir)[0] if f.name in set(frames)]
    if not use:
        raise GalnetFileError(f"data directory {str(data_dir)!r} holds none of the frames "
                              f"{list(frames)}")
    h = STAMP // 2
    cands: list[tuple[np.ndarray, float]] = []
    for fr in use:
        nf = _normalise_frame(*_load_frame(data_dir, fr))
        if nf.segm.max() == 0:
            continue
        cat = SourceCatalog(np.where(nf.bad, 0.0, nf.norm).astype(float),
                            SegmentationImage(nf.segm))
        flux = np.asarray(cat.segment_flux, dtype=float)
        area = np.asarray(cat.area.value, dtype=float)
        peak = np.asarray(cat.max_value, dtype=float)
        xc = _cat_attr(cat, "x_centroid", "xcentroid")
        yc = _cat_attr(cat, "y_centroid", "ycentroid")
        off = np.hypot(_cat_attr(cat, "max_value_xindex", "maxval_xindex") - xc,
                       _cat_attr(cat, "max_value_yindex", "maxval_yindex") - yc)
        bb = cat.bbox
        size = np.array([max(b.ixmax - b.ixmin, b.iymax - b.iymin) for b in bb])
        snr = flux / np.sqrt(np.maximum(area, 1.0))
        conc = peak / np.maximum(flux, 1e-30)
        bright = snr > 50
        star_conc = np.percentile(conc[bright], 90) if bright.sum() >= 5 else np.inf
        ny, nx = nf.norm.shape
        ok = ((snr > min_snr) & (conc < 0.5 * star_conc) & (size < 45) & (off < 2.5)
              & (xc > h) & (xc < nx - h - 1) & (yc > h) & (yc < ny - h - 1))
        for i in np.flatnonzero(ok):
            near = (np.hypot(xc - xc[i], yc - yc[i]) < 20) & (flux > flux[i] / 3)
            near[i] = False
            if near.any():
                continue
            x, y = int(round(xc[i])), int(round(yc[i]))
            sl = (slice(y - h, y + h + 1), slice(x - h, x + h + 1))
            if nf.bad[sl].any():
                continue
            cands.append((nf.sky_sub[sl].astype(np.float32), float(np.median(nf.noise[sl]))))
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(cands))[: max(int(n), 0)]
    if len(pick) == 0:
        return np.zeros((0, STAMP, STAMP), np.float32), np.zeros(0)
    return (np.stack([cands[i][0] for i in pick]), np.array([cands[i][1] for i in pick]))
