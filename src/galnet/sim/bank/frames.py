"""Background cutouts for the bank: the real frames, their noise normalisation, source detection
and the choice of clean, well-separated cutout centres (see docs/bank.md).

A cutout is 61 x 61 (:data:`STAMP`), sky-subtracted and divided by the per-pixel noise (unit rms),
with no source of peak S/N > :data:`CENTRE_SNR` within :data:`CENTRE_RADIUS` px of its centre.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["STAMP", "Frame", "discover_frames",
           "load_frame", "normalise_frame", "frame_cutouts", "cat_attr"]

#: Side of a background cutout (pixels); the centre is (30, 30).
STAMP = 61

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


# ----------------------------------------------------------------------------------------------
# Input description
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
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
    Frame("kids_r", "r", 0.339, "frames/kids_viking_9band/r.fits", 1),
    Frame("kids_g", "g", 0.339, "frames/kids_viking_9band/g.fits", 1),
    Frame("kids_i", "i", 0.339, "frames/kids_viking_9band/i.fits", 1),
    Frame("vst_r", "r", 0.2, "frames/vst_r_G202627.fits", 0),
    Frame("ctio_i", "i", 0.26, "frames/ctio_mosaic_i.fits", 0),
    Frame("ntt_emmi", "R", 0.27, "frames/ntt_emmi.fits", 0, "frames/ntt_emmi_rms.fits", "rms",
           back="frames/ntt_emmi_back.fits"),
    Frame("decam_520206_S16", "z", 0.262, "frames/decam/decam-520206-S16-image-sub.fits", 1,
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


def discover_frames(data_dir: Path) -> tuple[list[Frame], list[str]]:
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
        frames.append(Frame(f"decam_{m[1]}_{m[3]}_{m[2]}", m[2], 0.262, rel, 1,
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


def cat_attr(cat, new: str, old: str) -> np.ndarray:
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


def normalise_frame(data: np.ndarray, noise_in: np.ndarray | None, bad: np.ndarray,
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


def load_frame(data_dir: Path, fr: Frame) -> tuple[np.ndarray, np.ndarray | None, np.ndarray,
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


def frame_cutouts(data_dir: Path, fr: Frame, n: int, rng: np.random.Generator
                   ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Noise-normalised cutouts of one frame: (images (k, 61, 61) float32, per-cutout columns,
    frame summary)."""
    data, noise, bad, back = load_frame(data_dir, fr)
    nf = normalise_frame(data, noise, bad, back)
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
