"""Source detection, deblending and cutout sizing on a frame (photutils segmentation).

:func:`detect` finds the sources of a sky-subtracted frame (:mod:`galnet.io.background` gives the
sky and the noise), :func:`cutout_plan` sizes each one's cutout and chooses the block-averaging
factor that brings it within the network's 61 x 61 reach.

Detection (SExtractor's recipe, with photutils)
-----------------------------------------------
- The image (masked pixels 0) is filtered with a Gaussian of the PSF FWHM (``psf_fwhm_pix``),
  normalised by the filtered mask (masked pixels and frame edges do not dim their neighbours).
- Pixels of the filtered image above ``nsigma`` times the *unfiltered* 1-sigma noise
  (SExtractor's ``DETECT_THRESH``; 1.5 is ~9 sigma of the filtered noise for a 4 px FWHM),
  8-connected, at least ``npixels`` of them [default: the area of a circle of diameter FWHM,
  at least 5], form a segment (photutils ``detect_sources``).
- Deblending (``deblend_sources``, 32 exponential levels, contrast :data:`DEBLEND_CONTRAST`
  0.01; SExtractor's default 0.005 cuts the arms of the large spiral of the VST r frame into
  five pieces, 0.01 into two) splits touching sources; only segments with two or more local
  maxima (5 x 5) above twice the threshold are tried.
- Positions and shapes are moments of the *filtered* image over each segment (photutils
  ``SourceCatalog`` with ``convolved_data``): robust at low S/N, and sizes include the PSF and
  the filter (they size cutouts, they do not measure galaxies).

Conventions: 0-based frame pixels, pixel centres at integers; ``theta_deg`` the major axis from
+x counter-clockwise in [0, 180) (photutils ``orientation``; galnet's ``pa_deg``, from +y, is
``theta_deg - 90`` mod 180); fluxes in image units.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from galnet.errors import GalnetValueError
from galnet.io.prepare import MAX_REBIN

__all__ = ["DEBLEND_CONTRAST", "EXTENT_KRON", "REACH", "detect", "cutout_plan"]

#: photutils deblend_sources contrast (SExtractor DEBLEND_MINCONT).
DEBLEND_CONTRAST = 0.01
#: r_extent = EXTENT_KRON x Kron radius x a (the Kron aperture: ~90-95 % of a galaxy's light).
EXTENT_KRON = 2.5
#: Fraction of the half-stamp that may hold r_extent: the network was trained with 90 % of the
#: light within 27 of the 30 px half-side (preset containment radius, hsc-r).
REACH = 0.9
#: Gaussian FWHM / sigma.
_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _check(a, shape, what: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(shape, float(arr))
    if arr.shape != shape:
        raise GalnetValueError(f"detect: {what} shape {arr.shape} does not match the frame's "
                               f"{shape}", what)
    return arr


def _filtered(work: np.ndarray, good: np.ndarray, fwhm: float) -> np.ndarray:
    """Gaussian-filtered image (FWHM ``fwhm`` px), normalised by the filtered good-pixel mask."""
    from scipy import ndimage

    s = fwhm / _FWHM
    num = ndimage.gaussian_filter(work.astype(np.float32), s, mode="constant", truncate=3.0)
    den = ndimage.gaussian_filter(good.astype(np.float32), s, mode="constant", truncate=3.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(good & (den > 0.1), num / den, 0.0)
    return out.astype(np.float64)


def _multi_peak(conv: np.ndarray, labels: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """Labels of the segments with two or more local maxima (5 x 5) above twice the detection
    threshold: the ones deblending is tried on. A component it could split sits on its
    neighbour's light, well above the threshold; skipping the rest saves most of the time
    (on the KiDS r frame: 134 of 3142 segments tried instead of 3142)."""
    from scipy import ndimage

    peak = (conv == ndimage.maximum_filter(conv, size=5)) & (labels > 0) & (conv > 2.0 * thr)
    count = np.bincount(labels[peak], minlength=int(labels.max()) + 1)
    return np.flatnonzero(count >= 2)


def detect(data, sigma, mask=None, *, psf_fwhm_pix: float, nsigma: float = 1.5,
           npixels: int | None = None, deblend: bool = True, snr_min: float = 0.0,
           contrast: float = DEBLEND_CONTRAST):
    """Detect and deblend the sources of a sky-subtracted frame.

    Parameters
    ----------
    data : (H, W) sky-subtracted frame (image units).
    sigma : (H, W) 1-sigma noise (or a number); inf, NaN or <= 0 = unusable pixel.
    mask : (H, W) nonzero = unusable pixel.
    psf_fwhm_pix : PSF FWHM (frame pixels): width of the detection filter.
    nsigma : threshold on the filtered image, in units of the unfiltered noise.
    npixels : fewest connected pixels of a source [default: max(5, pi FWHM^2 / 4)].
    deblend : split touching sources (photutils deblend_sources).
    snr_min : drop sources below this S/N from the table (their segments stay in the map).
    contrast : deblending contrast (fraction of the blend's flux a component needs).

    Returns
    -------
    (table, labels): astropy Table with one row per source (columns below), sorted by id, and
    the (H, W) int32 segmentation map (0 = sky, else the source's ``id``).

    Columns: ``id`` (segment label), ``x``, ``y`` (centroid, frame px), ``flux`` (sum of the
    unmasked data in the segment, image units), ``snr`` (flux / sqrt(sum sigma^2) over the
    segment), ``area`` (px), ``a``, ``b`` (1-sigma semi-axes of the filtered light, px),
    ``theta_deg``, ``kron_radius`` (photutils: in units of ``a``), ``r_extent`` (px: the larger
    of ``EXTENT_KRON * kron_radius * a`` and the segment's bounding-box half-diagonal: the radius
    that holds the source, for cutout sizing), ``peak`` (largest data value),
    ``bbox_xmin/xmax/ymin/ymax`` (inclusive px), ``star_like`` (hint: S/N >= 20 and the filtered
    FWHM no larger than 1.2 x that of a point source).
    """
    from astropy.table import Table
    from photutils.segmentation import SourceCatalog, deblend_sources, detect_sources
    from photutils.utils.exceptions import NoDetectionsWarning
    from scipy import ndimage

    d = np.asarray(data, dtype=np.float64)
    if d.ndim != 2:
        raise GalnetValueError(f"detect: data must be a 2-D image, got shape {d.shape}", "data")
    if not (isinstance(psf_fwhm_pix, int | float | np.floating) and psf_fwhm_pix > 0):
        raise GalnetValueError(f"detect: psf_fwhm_pix must be a number > 0, got {psf_fwhm_pix!r}",
                               "psf_fwhm_pix")
    fwhm = float(psf_fwhm_pix)
    sig = _check(sigma, d.shape, "sigma")
    good = np.isfinite(d) & np.isfinite(sig) & (sig > 0)
    if mask is not None:
        good &= _check(mask, d.shape, "mask") == 0
    npix = max(5, round(math.pi * fwhm**2 / 4.0)) if npixels is None else int(npixels)
    work = np.where(good, d, 0.0)
    conv = _filtered(work, good, fwhm)
    thr = np.where(good, nsigma * np.where(good, sig, 0.0), np.inf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)
        segm = detect_sources(conv, thr, npix, mask=~good)
    if segm is None:
        return _empty(Table), np.zeros(d.shape, np.int32)
    if deblend and segm.n_labels > 0:
        multi = _multi_peak(conv, segm.data, thr)
        if multi.size:
            segm = deblend_sources(conv, segm, npix, labels=multi, n_levels=32,
                                   contrast=contrast, progress_bar=False)
    labels = segm.data.astype(np.int32, copy=False)
    ids = np.asarray(segm.labels, dtype=np.int64)
    cat = SourceCatalog(work, segm, convolved_data=conv, mask=~good)
    var = np.where(good, sig, 0.0) ** 2
    flux = np.asarray(ndimage.sum_labels(work, labels, ids), dtype=np.float64)
    noise = np.sqrt(np.asarray(ndimage.sum_labels(var, labels, ids), dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(noise > 0, flux / noise, 0.0)
    a = _value(cat.semimajor_axis)
    b = _value(cat.semiminor_axis)
    kron = _value(cat.kron_radius)
    x0, x1 = np.asarray(cat.bbox_xmin), np.asarray(cat.bbox_xmax)
    y0, y1 = np.asarray(cat.bbox_ymin), np.asarray(cat.bbox_ymax)
    half_diag = 0.5 * np.hypot(x1 - x0 + 1, y1 - y0 + 1)
    r_kron = EXTENT_KRON * kron * a
    r_extent = np.fmax(np.where(np.isfinite(r_kron), r_kron, 0.0), half_diag)
    fwhm_conv = _FWHM * np.sqrt(0.5 * (a**2 + b**2))
    star = (snr >= 20.0) & (fwhm_conv <= 1.2 * math.sqrt(2.0) * fwhm)
    t = Table({
        "id": ids, "x": _value(cat.x_centroid), "y": _value(cat.y_centroid), "flux": flux,
        "snr": snr, "area": _value(cat.area).astype(np.int64), "a": a, "b": b,
        "theta_deg": np.mod(_value(cat.orientation), 180.0), "kron_radius": kron,
        "r_extent": r_extent,
        "peak": _value(cat.max_value), "bbox_xmin": x0.astype(np.int64),
        "bbox_xmax": x1.astype(np.int64), "bbox_ymin": y0.astype(np.int64),
        "bbox_ymax": y1.astype(np.int64), "star_like": star,
    })
    if snr_min > 0:
        t = t[t["snr"] >= snr_min]
    t.meta.update(psf_fwhm_pix=fwhm, nsigma=float(nsigma), npixels=int(npix),
                  deblend=bool(deblend))
    return t, labels


def _value(q) -> np.ndarray:
    return np.atleast_1d(np.asarray(getattr(q, "value", q), dtype=np.float64))


_COLUMNS = (("id", np.int64), ("x", float), ("y", float), ("flux", float), ("snr", float),
            ("area", np.int64), ("a", float), ("b", float), ("theta_deg", float),
            ("kron_radius", float), ("r_extent", float), ("peak", float),
            ("bbox_xmin", np.int64), ("bbox_xmax", np.int64), ("bbox_ymin", np.int64),
            ("bbox_ymax", np.int64), ("star_like", bool))


def _empty(Table):
    return Table({name: np.zeros(0, dtype=dt) for name, dt in _COLUMNS})


def cutout_plan(sources, *, stamp: int = 61, max_rebin: int = MAX_REBIN
                ) -> tuple[np.ndarray, np.ndarray]:
    """Cutout side and block-averaging factor per source.

    ``size = odd(max(stamp, 2 ceil(r_extent / REACH) + 1))``: the side (frame px) whose central
    ``REACH`` (0.9, the network's containment rule) holds ``r_extent``; ``rebin`` = the smallest
    ``k`` with ``stamp * k >= size``, at most ``max_rebin`` (a larger source keeps
    ``size > stamp * max_rebin``: the caller flags it). The cutout actually read for factor k is
    ``stamp * k`` px (one more for even k; :func:`galnet.io.cutouts.iter_frame`).

    Parameters
    ----------
    sources : table or mapping with an ``r_extent`` column (px), e.g. from :func:`detect`.
    stamp : the network's stamp side (odd).
    max_rebin : the largest factor.

    Returns
    -------
    (size (N,) odd int64, rebin (N,) int64).
    """
    r = np.asarray(sources["r_extent"], dtype=np.float64).reshape(-1)
    r = np.where(np.isfinite(r), np.maximum(r, 0.0), 0.0)
    half = np.ceil(r / REACH).astype(np.int64)
    size = np.maximum(int(stamp), 2 * half + 1)
    size += 1 - size % 2
    k = np.clip(-(-size // int(stamp)), 1, int(max_rebin)).astype(np.int64)
    return size, k
