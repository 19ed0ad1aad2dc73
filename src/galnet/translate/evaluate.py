"""Probes of a survey-to-survey translation: photo-z, colour, structure and pixel metrics.

Every function takes numpy arrays (images in nanomaggies per pixel, AB zeropoint 22.5, shaped
``(N, C, H, W)`` with ``C`` bands ordered by wavelength) and returns plain numbers, arrays, dicts
or astropy Tables. :func:`evaluate_translation` gathers them into one JSON-ready record for a
set of translated images and its :class:`galnet.translate.simulate.PairSet`.

Conventions (docs/conventions.md): 0-based pixel coordinates, pixel centres on integers,
``image[y, x]``; the stamp centre is ``(S - 1) / 2``; position angles counted counter-clockwise
from +y, the major axis along ``(-sin pa, cos pa)`` in ``(x, y)``.

Definitions
-----------
Photo-z (:func:`photoz_metrics`), with ``dz = (z_phot - z_true) / (1 + z_true)``:
``sigma_mad = 1.4826 median(|dz - median(dz)|)``, ``bias = mean(dz)``, ``outlier`` = fraction of
``|dz| > 0.05``, ``pz_width`` = mean of the reported widths.

Preservation (:func:`preservation`): ``P = (s_src - s_tr) / (s_src - s_tgt)`` for a metric ``s``
(lower is better) measured on the regridded source (``s_src``), the translation (``s_tr``) and
real target images (``s_tgt``): 0 = no better than the regridded source, 1 = as good as the real
target. :func:`preservation_gain` = ``P_model / P_baseline - 1``.

Lupton asinh magnitudes (:func:`asinh_mag`; finite for zero and negative fluxes)::

    mu_b(f) = -(2.5 / ln 10) (asinh(f / (2 b_b)) + ln b_b)

with softening ``b_b`` (flux units) = the target's per-pixel sky rms of band ``b`` for pixels,
``b_b sqrt(npix)`` for a sum of ``npix`` pixels. ``mu ~ -2.5 log10 f`` for ``f >> b`` (the
zeropoint is left out: it cancels in colours). Colours are adjacent-band differences
``c_b = mu_b - mu_{b+1}``, ``b = 0 .. C-2``.

- :func:`pixel_colour_error`: per galaxy, ``sum w |c_b(pred) - c_b(truth)| / sum w`` over the
  pixels and colours with ``w = max(min(truth_b / sky_b, truth_{b+1} / sky_{b+1}), 0) >= 3``.
- :func:`colour_profile`: colours of the aperture fluxes of elliptical annuli (the disk's
  ``q_disk``, ``pa_deg``, centre ``(S - 1) / 2 + (dx, dy) / scale``) in units of ``re_disk``.
- :func:`colour_gradient_error`: ``grad = c(r < 0.5 re_disk) - c(1 <= r < 2 re_disk)`` per
  colour; the error is ``mean_b |grad_b(pred) - grad_b(truth)|`` per galaxy.

Structure (:func:`structure_fits`, :func:`structure_deltas`): single-Sérsic forward-model fits
(:func:`galnet.fitting.lm.fit_arrays`, moments initialisation, ``sigma`` = the sky rms
everywhere) of the r band; ``d_re = median |re / re_ref - 1|``, ``d_n = median |n - n_ref|``,
``d_mag = median |mag - mag_ref|``.

Pixels (:func:`pixel_metrics`): ``mse = mean(((pred - target) / sky_b)^2)`` (target sky-rms
units); ``ssim`` = mean over galaxies and bands of scikit-image's ``structural_similarity`` of
``asinh(f / (2 sky_b))`` images, ``data_range`` = the range of the target's stretched image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from astropy.table import Table
from numpy.typing import ArrayLike

from galnet.errors import GalnetValueError
from galnet.translate.simulate import ZEROPOINT

if TYPE_CHECKING:
    from galnet.fitting.problem import FitConfig
    from galnet.translate.simulate import PairSet

__all__ = [
    "OUTLIER_DZ",
    "MIN_COLOUR_SNR",
    "PROFILE_RADII",
    "photoz_metrics",
    "preservation",
    "preservation_gain",
    "regrid",
    "asinh_mag",
    "pixel_colour_error",
    "colour_profile",
    "colour_gradient_error",
    "structure_fits",
    "structure_deltas",
    "structure_reference",
    "pixel_metrics",
    "evaluate_translation",
    "RECORD_KEYS",
    "flux_metrics",
]

#: Photo-z outlier threshold on ``|dz| = |z_phot - z_true| / (1 + z_true)``.
OUTLIER_DZ = 0.05
#: Pixels count in :func:`pixel_colour_error` when both bands of a colour reach this S/N.
MIN_COLOUR_SNR = 3.0
#: Default annulus edges of :func:`colour_profile`, in units of the disk half-light radius.
PROFILE_RADII = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
#: Apertures of the colour gradient: inner disk ``r < 0.5`` and outer annulus ``1 <= r < 2``.
_GRADIENT_RADII = (0.0, 0.5, 1.0, 2.0)
#: Keys of the record of :func:`evaluate_translation`, in order.
RECORD_KEYS = ("n", "sigma_mad", "bias", "outlier", "pz_width", "colour_err", "colour_grad_err",
               "d_re", "d_n", "d_mag", "n_structure", "mse", "ssim", "flux_err",
               "total_colour_err", "sky_rms")
_CHUNK = 64  # galaxies per block in the pixel-level metrics (bounds memory)


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------
def _images(a: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 4:
        raise GalnetValueError(f"{name} must be (N, C, H, W), got shape {a.shape}", name)
    return a


def _same_shape(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise GalnetValueError(f"{na} has shape {a.shape} but {nb} has shape {b.shape}", na)


def _sky(sky: ArrayLike, C: int) -> np.ndarray:
    s = np.asarray(sky, dtype=float).reshape(-1)
    if s.shape != (C,) or not (np.isfinite(s) & (s > 0)).all():
        raise GalnetValueError(f"sky must be {C} positive finite values (one per band), got "
                               f"{np.asarray(sky).tolist()}", "sky")
    return s


def _col(catalog: Any, name: str, N: int) -> np.ndarray:
    try:
        v = catalog[name]
    except (KeyError, ValueError) as err:
        raise GalnetValueError(f"catalog has no column {name!r}", "catalog") from err
    v = np.asarray(getattr(v, "value", v), dtype=float).reshape(-1)
    if len(v) != N:
        raise GalnetValueError(f"catalog column {name!r} has {len(v)} rows for {N} images",
                               "catalog")
    return v


# ----------------------------------------------------------------------------------------------
# Photo-z and preservation
# ----------------------------------------------------------------------------------------------
def photoz_metrics(z_true: ArrayLike, z_phot: ArrayLike, width: ArrayLike) -> dict[str, float]:
    """Photo-z quality of point estimates ``z_phot`` against ``z_true`` (arrays of length N).

    With ``dz = (z_phot - z_true) / (1 + z_true)``: ``sigma_mad = 1.4826 median(|dz -
    median(dz)|)``; ``bias = mean(dz)`` (the mean, not the median); ``outlier`` = fraction of
    galaxies with ``|dz| > 0.05``; ``pz_width`` = ``mean(width)`` (the probe's reported width,
    in z). Rows with a non-finite ``z_phot`` or ``z_true`` are left out; ``n`` counts the rows
    used (all metrics NaN when none).
    """
    zt = np.asarray(z_true, dtype=float).reshape(-1)
    zp = np.asarray(z_phot, dtype=float).reshape(-1)
    w = np.asarray(width, dtype=float).reshape(-1)
    if not len(zt) == len(zp) == len(w):
        raise GalnetValueError(f"z_true, z_phot and width have different lengths "
                               f"({len(zt)}, {len(zp)}, {len(w)})", "z_phot")
    ok = np.isfinite(zt) & np.isfinite(zp)
    if not ok.any():
        return {"n": 0, "sigma_mad": math.nan, "bias": math.nan, "outlier": math.nan,
                "pz_width": math.nan}
    dz = (zp[ok] - zt[ok]) / (1.0 + zt[ok])
    return {"n": int(ok.sum()),
            "sigma_mad": float(1.4826 * np.median(np.abs(dz - np.median(dz)))),
            "bias": float(np.mean(dz)),
            "outlier": float(np.mean(np.abs(dz) > OUTLIER_DZ)),
            "pz_width": float(np.nanmean(w[ok])) if np.isfinite(w[ok]).any() else math.nan}


def preservation(sigma_translated: float, sigma_source: float, sigma_target: float) -> float:
    """``(sigma_source - sigma_translated) / (sigma_source - sigma_target)`` for a metric that
    is lower when better (e.g. the photo-z ``sigma_mad``), measured on the regridded source, the
    translation and the real target images: 0 = no better than the regridded source, 1 = as
    good as real target images (below 0: worse than the source; above 1: better than the
    target). NaN when ``sigma_source == sigma_target`` (nothing to recover)."""
    den = float(sigma_source) - float(sigma_target)
    if den == 0.0 or not math.isfinite(den):
        return math.nan
    return (float(sigma_source) - float(sigma_translated)) / den


def preservation_gain(p_model: float, p_baseline: float) -> float:
    """``p_model / p_baseline - 1``: the relative improvement of a model's preservation over
    that of the pixel-loss baseline (0.5 = recovers 50% more of the gap). NaN when
    ``p_baseline <= 0``: a baseline no better than the source gives no scale to compare with
    (the ratio would blow up or change sign)."""
    pb = float(p_baseline)
    if not pb > 0:  # also NaN
        return math.nan
    return float(p_model) / pb - 1.0


# ----------------------------------------------------------------------------------------------
# Regridding (the no-learning baseline)
# ----------------------------------------------------------------------------------------------
def regrid(images: ArrayLike, from_scale: float, to_scale: float, out_size: int) -> np.ndarray:
    """Resample ``images`` (N, C, S, S) with pixels of ``from_scale`` arcsec onto a grid of
    ``out_size`` x ``out_size`` pixels of ``to_scale`` arcsec with the same sky centre (pixel
    ``(S - 1) / 2`` maps to ``(out_size - 1) / 2``).

    Output pixel ``j`` sits at source coordinate ``(j - (out_size - 1) / 2) to_scale /
    from_scale + (S - 1) / 2``; the surface brightness there is interpolated bicubically
    (``torch.nn.functional.grid_sample``, ``align_corners=True``; edge pixels repeated beyond
    the source field) and multiplied by the pixel-area ratio ``(to_scale / from_scale)^2``, so
    that fluxes are conserved. Returns float32 (float64 for float64 input), (N, C, out, out).
    """
    a = _images(images, "images")
    N, C, H, W = a.shape
    if not (from_scale > 0 and to_scale > 0):
        raise GalnetValueError(f"pixel scales must be > 0, got {from_scale} and {to_scale}",
                               "scale")
    if not (isinstance(out_size, int | np.integer) and out_size >= 1):
        raise GalnetValueError(f"out_size must be a positive integer, got {out_size!r}",
                               "out_size", out_size)
    k = float(to_scale) / float(from_scale)
    j = (torch.arange(out_size, dtype=torch.float64) - (out_size - 1) / 2.0) * k
    gx = 2.0 * (j + (W - 1) / 2.0) / max(W - 1, 1) - 1.0  # align_corners: -1, 1 = pixel centres
    gy = 2.0 * (j + (H - 1) / 2.0) / max(H - 1, 1) - 1.0
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)  # (out, out, [x, y])
    dtype = np.float64 if a.dtype == np.float64 else np.float32
    out = np.empty((N, C, out_size, out_size), dtype=dtype)
    for s in range(0, N, _CHUNK):
        x = torch.as_tensor(np.ascontiguousarray(a[s:s + _CHUNK], dtype=np.float64))
        g = grid.expand(len(x), -1, -1, -1)
        r = torch.nn.functional.grid_sample(x, g, mode="bicubic", padding_mode="border",
                                            align_corners=True)
        out[s:s + _CHUNK] = (r * k**2).numpy()
    return out


# ----------------------------------------------------------------------------------------------
# Colours
# ----------------------------------------------------------------------------------------------
def asinh_mag(flux: ArrayLike, softening: ArrayLike) -> np.ndarray:
    """Lupton asinh magnitude ``-(2.5 / ln 10) (asinh(f / (2 b)) + ln b)`` of fluxes ``f``
    (nanomaggies) with softening ``b`` (nanomaggies, > 0; broadcast), without the zeropoint:
    ``~ -2.5 log10 f`` for ``f >> b``, finite for zero and negative fluxes."""
    f = np.asarray(flux, dtype=float)
    b = np.asarray(softening, dtype=float)
    return -(2.5 / math.log(10.0)) * (np.arcsinh(f / (2.0 * b)) + np.log(b))


def _pixel_colours(img: np.ndarray, sky: np.ndarray) -> np.ndarray:
    """Per-pixel adjacent-band colours (n, C-1, H, W) of images (n, C, H, W)."""
    mu = asinh_mag(img, sky[None, :, None, None])
    return mu[:, :-1] - mu[:, 1:]


def pixel_colour_error(pred: ArrayLike, truth: ArrayLike, sky: ArrayLike) -> np.ndarray:
    """Per-galaxy S/N-weighted mean error of the per-pixel colours, (N,) magnitudes.

    ``pred``, ``truth``: (N, C, H, W) nanomaggies (``truth`` noiseless); ``sky``: (C,) per-pixel
    sky rms (the asinh softening). For colour ``b`` (bands ``b, b+1``) and pixel ``p`` the
    weight is ``w = max(min(truth_b / sky_b, truth_{b+1} / sky_{b+1}), 0)``; only pixels with
    ``w >= 3`` (galaxy light, not sky) count, and the error is ``sum w |c_b(pred) -
    c_b(truth)| / sum w`` over those pixels and all ``C - 1`` colours. NaN for a galaxy without
    such a pixel (callers take the median of the finite values).
    """
    p = _images(pred, "pred")
    t = _images(truth, "truth")
    _same_shape(p, t, "pred", "truth")
    N, C = t.shape[:2]
    if C < 2:
        raise GalnetValueError(f"colours need at least 2 bands, got {C}", "pred")
    s = _sky(sky, C)
    out = np.full(N, np.nan)
    for i in range(0, N, _CHUNK):
        pc = p[i:i + _CHUNK].astype(float)
        tc = t[i:i + _CHUNK].astype(float)
        snr = tc / s[None, :, None, None]
        w = np.maximum(np.minimum(snr[:, :-1], snr[:, 1:]), 0.0)
        w = np.where(w >= MIN_COLOUR_SNR, w, 0.0)
        d = np.abs(_pixel_colours(pc, s) - _pixel_colours(tc, s))
        num = (w * d).sum(axis=(1, 2, 3))
        den = w.sum(axis=(1, 2, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i:i + _CHUNK] = np.where(den > 0, num / den, np.nan)
    return out


def _elliptical_radius(catalog: Any, shape: tuple[int, ...], scale: float,
                       rows: slice) -> np.ndarray:
    """Elliptical radius (n, H, W) of every pixel in units of ``re_disk``, for ``rows``."""
    N, _, H, W = shape
    q = _col(catalog, "q_disk", N)[rows]
    pa = np.deg2rad(_col(catalog, "pa_deg", N)[rows])
    re = _col(catalog, "re_disk", N)[rows] / scale  # pixels
    x0 = (W - 1) / 2.0 + _col(catalog, "dx", N)[rows] / scale
    y0 = (H - 1) / 2.0 + _col(catalog, "dy", N)[rows] / scale
    yy, xx = np.mgrid[:H, :W].astype(float)
    dx = xx[None] - x0[:, None, None]
    dy = yy[None] - y0[:, None, None]
    s, c = np.sin(pa)[:, None, None], np.cos(pa)[:, None, None]
    a = -dx * s + dy * c  # along the major axis (-sin pa, cos pa)
    b = dx * c + dy * s  # along the minor axis (cos pa, sin pa)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(a**2 + (b / q[:, None, None]) ** 2) / re[:, None, None]


def colour_profile(images: ArrayLike, sky: ArrayLike, catalog: Any, scale: float,
                   radii: Sequence[float] = PROFILE_RADII) -> np.ndarray:
    """Colours in elliptical annuli, (N, C-1, R) magnitudes with ``R = len(radii) - 1``.

    ``images`` (N, C, H, W) nanomaggies with pixels of ``scale`` arcsec; ``sky`` (C,) per-pixel
    sky rms; ``catalog`` (astropy Table or mapping, N rows) gives the ellipse: centre
    ``((W - 1) / 2 + dx / scale, (H - 1) / 2 + dy / scale)`` (``dx``, ``dy`` in arcsec), axis
    ratio ``q_disk``, position angle ``pa_deg`` and the unit of radius ``re_disk`` (arcsec,
    semi-major half-light radius of the disk). A pixel's elliptical radius is
    ``sqrt(a^2 + (b / q)^2) / re`` with ``a``, ``b`` its offsets along the major and minor axes;
    annulus ``k`` holds the pixels with ``radii[k] <= r < radii[k+1]``. Per annulus and band
    the flux ``F_b`` is the sum over its ``npix`` pixels, and the colour ``mu_b - mu_{b+1}`` of
    those sums uses the softening ``sky_b sqrt(npix)``. NaN for an empty annulus.
    """
    a = _images(images, "images")
    N, C = a.shape[:2]
    s = _sky(sky, C)
    edges = np.asarray(radii, dtype=float)
    if edges.ndim != 1 or len(edges) < 2 or not (np.diff(edges) > 0).all():
        raise GalnetValueError(f"radii must be increasing edges (at least 2), got {radii!r}",
                               "radii")
    out = np.full((N, C - 1, len(edges) - 1), np.nan)
    for i in range(0, N, _CHUNK):
        rows = slice(i, min(i + _CHUNK, N))
        r = _elliptical_radius(catalog, a.shape, float(scale), rows)
        img = a[rows].astype(float)
        for k in range(len(edges) - 1):
            m = (r >= edges[k]) & (r < edges[k + 1])  # (n, H, W)
            npix = m.sum(axis=(1, 2)).astype(float)
            flux = np.einsum("nchw,nhw->nc", img, m.astype(float))
            with np.errstate(divide="ignore", invalid="ignore"):
                mu = asinh_mag(flux, s[None, :] * np.sqrt(npix)[:, None])
            col = mu[:, :-1] - mu[:, 1:]
            out[rows, :, k] = np.where(npix[:, None] > 0, col, np.nan)
    return out


def colour_gradient_error(pred: ArrayLike, truth: ArrayLike, sky: ArrayLike, catalog: Any,
                          scale: float) -> np.ndarray:
    """Per-galaxy error of the bulge-vs-disk colour gradient, (N,) magnitudes.

    ``grad_b = c_b(r < 0.5) - c_b(1 <= r < 2)`` per adjacent-band colour ``b``, radii in units
    of ``re_disk`` (apertures and colours of :func:`colour_profile`); the error is ``mean_b
    |grad_b(pred) - grad_b(truth)|``. NaN when an aperture holds no pixel.
    """
    p = _images(pred, "pred")
    t = _images(truth, "truth")
    _same_shape(p, t, "pred", "truth")

    def grad(img):
        prof = colour_profile(img, sky, catalog, scale, _GRADIENT_RADII)
        return prof[..., 0] - prof[..., 2]

    return np.mean(np.abs(grad(p) - grad(t)), axis=1)


# ----------------------------------------------------------------------------------------------
# Structure
# ----------------------------------------------------------------------------------------------
def structure_fits(images_r: ArrayLike, psfs_r: ArrayLike, sky_r: float, scale: float, *,
                   device: str | torch.device | None = "cpu",
                   config: FitConfig | None = None) -> Table:
    """Single-Sérsic fits of one band: an astropy Table, one row per stamp.

    ``images_r`` (N, H, W) nanomaggies (any stamp size), ``psfs_r`` (N, h, w) or (h, w)
    effective PSFs, ``sky_r`` the per-pixel sky rms (nanomaggies; the fit's ``sigma`` is this
    constant map: no Poisson term), ``scale`` arcsec/px.
    :func:`galnet.fitting.lm.fit_arrays` with its moments initialisation
    (:func:`galnet.fitting.init.moments_init`) and ``config`` (default
    :class:`galnet.fitting.problem.FitConfig`).

    Columns: ``x``, ``y`` (pixels), ``re`` (arcsec, semi-major half-light radius), ``n``,
    ``mag`` (AB, ``22.5 - 2.5 log10 flux``; NaN for flux <= 0), ``q``, ``pa_deg``, ``chi2nu``,
    ``converged`` and ``flags`` (:class:`galnet.flags.Flag`: ``FIT_NOT_CONVERGED``,
    ``BOUND_HIT``).
    """
    from galnet.fitting.lm import fit_arrays
    from galnet.fitting.problem import DEFAULT_FIT
    from galnet.flags import Flag

    img = np.asarray(images_r, dtype=float)
    if img.ndim != 3:
        raise GalnetValueError(f"images_r must be (N, H, W), got shape {img.shape}", "images_r")
    if not (float(sky_r) > 0 and float(scale) > 0):
        raise GalnetValueError(f"sky_r and scale must be > 0, got {sky_r} and {scale}", "sky_r")
    sigma = np.full(img.shape, float(sky_r))
    r = fit_arrays(img, psfs_r, sigma=sigma, init=None, device=device,
                   config=config or DEFAULT_FIT)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(r["flux"] > 0, ZEROPOINT - 2.5 * np.log10(r["flux"]), np.nan)
    flags = (np.where(r["converged"], 0, int(Flag.FIT_NOT_CONVERGED))
             | np.where(r["bound"], int(Flag.BOUND_HIT), 0)).astype(np.int64)
    t = Table({"x": r["x"], "y": r["y"], "re": r["re_pix"] * float(scale), "n": r["n"],
               "mag": mag, "q": r["q"], "pa_deg": r["pa_deg"], "chi2nu": r["chi2nu"],
               "converged": r["converged"], "flags": flags})
    t["re"].unit = "arcsec"
    t["mag"].unit = "mag"
    t["pa_deg"].unit = "deg"
    return t


def structure_deltas(fit: Table | Mapping, reference: Table | Mapping, *,
                     drop_flagged_fit: bool = False) -> dict[str, float]:
    """Median structural differences of row-matched fits (:func:`structure_fits`).

    ``d_re = median |re / re_ref - 1|``, ``d_n = median |n - n_ref|``, ``d_mag = median |mag -
    mag_ref|`` over the rows kept; ``n`` counts them (all NaN when none). Excluded: rows where
    either fit has a non-finite ``re``, ``n`` or ``mag`` or ``re <= 0``, and rows whose
    *reference* fit is flagged (not converged or a parameter on a bound: the galaxy has no
    well-defined single-Sérsic structure). Flagged rows of ``fit`` are kept by default -- a
    translation that makes the fit fail is penalised, and every model is scored on the same
    galaxies; ``drop_flagged_fit=True`` drops them too.
    """
    n = len(reference["re"])
    if len(fit["re"]) != n:
        raise GalnetValueError(f"fit has {len(fit['re'])} rows but reference has {n}", "fit")

    def cols(t):
        return [np.asarray(getattr(t[k], "value", t[k]), dtype=float) for k in ("re", "n", "mag")]

    re, nn, mag = cols(fit)
    re0, n0, mag0 = cols(reference)
    ok = np.isfinite(np.c_[re, nn, mag, re0, n0, mag0]).all(axis=1) & (re > 0) & (re0 > 0)
    ok &= np.asarray(reference["flags"]) == 0
    if drop_flagged_fit:
        ok &= np.asarray(fit["flags"]) == 0
    if not ok.any():
        return {"d_re": math.nan, "d_n": math.nan, "d_mag": math.nan, "n": 0}
    return {"d_re": float(np.median(np.abs(re[ok] / re0[ok] - 1.0))),
            "d_n": float(np.median(np.abs(nn[ok] - n0[ok]))),
            "d_mag": float(np.median(np.abs(mag[ok] - mag0[ok]))),
            "n": int(ok.sum())}


def _band_index(pairs: PairSet, band: str = "r") -> int:
    try:
        return list(pairs.bands).index(band)
    except ValueError as err:
        raise GalnetValueError(f"the pairs have no {band!r} band (bands: "
                               f"{''.join(pairs.bands)})", "band") from err


def _structure_rows(rows: int | None, N: int) -> int:
    if rows is None:
        return N
    if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or rows < 0:
        raise GalnetValueError(f"structure_rows must be None or an integer >= 0, got {rows!r}",
                               "structure_rows", rows)
    return min(int(rows), N)


def structure_reference(pairs: PairSet, rows: int | None = 200, *,
                        device: str | torch.device | None = "cpu") -> Table:
    """The reference of the structure probe: :func:`structure_fits` of the noiseless target
    truth, r band, of the first ``rows`` galaxies (None: all), with the target PSF and sky rms.
    Compute it once per test set and pass it to :func:`evaluate_translation`."""
    k = _structure_rows(rows, len(pairs))
    b = _band_index(pairs)
    return structure_fits(pairs.target_truth[:k, b], pairs.target_psf[:k, b],
                          float(pairs.target_sky[b]), pairs.target_scale, device=device)


# ----------------------------------------------------------------------------------------------
# Pixels
# ----------------------------------------------------------------------------------------------
def pixel_metrics(pred: ArrayLike, target: ArrayLike, sky: ArrayLike) -> dict[str, float]:
    """Pixel-level agreement of ``pred`` with ``target`` (N, C, H, W), ``sky`` (C,) rms.

    ``mse = mean(((pred - target) / sky_b)^2)`` over all galaxies, bands and pixels (target
    sky-rms units). ``ssim`` = mean over galaxies and bands of
    ``skimage.metrics.structural_similarity`` (defaults: 7x7 uniform window) of the stretched
    images ``asinh(f / (2 sky_b))``, with ``data_range`` = max - min of the target's stretched
    image (a constant target image gives NaN, left out of the mean).
    """
    from skimage.metrics import structural_similarity

    p = _images(pred, "pred")
    t = _images(target, "target")
    _same_shape(p, t, "pred", "target")
    N, C = t.shape[:2]
    s = _sky(sky, C)[None, :, None, None]
    se, ss = 0.0, []
    for i in range(0, N, _CHUNK):
        pc, tc = p[i:i + _CHUNK].astype(float), t[i:i + _CHUNK].astype(float)
        se += float((((pc - tc) / s) ** 2).sum())
        ps, ts = np.arcsinh(pc / (2 * s)), np.arcsinh(tc / (2 * s))
        for g in range(len(pc)):
            for b in range(C):
                dr = float(ts[g, b].max() - ts[g, b].min())
                ss.append(structural_similarity(ps[g, b], ts[g, b], data_range=dr)
                          if dr > 0 else math.nan)
    ssim = float(np.nanmean(ss)) if np.isfinite(ss).any() else math.nan
    return {"mse": se / t.size if t.size else math.nan, "ssim": ssim}


def flux_metrics(pred: ArrayLike, truth: ArrayLike, sky: ArrayLike) -> dict[str, float]:
    """Integrated photometry and background of ``pred`` against the noiseless ``truth``.

    ``flux_err`` = median over galaxies and bands of ``|F_pred / F_truth - 1|`` (``F`` the sum
    of the stamp); ``total_colour_err`` = median over galaxies of the mean over adjacent-band
    colours of ``|c(F_pred) - c(F_truth)|`` (asinh magnitudes, softening ``sky_b sqrt(H W)``);
    ``sky_rms`` = rms of ``(pred - truth) / sky_b`` over the pixels where the truth is below
    0.1 sky rms in that band (the background a translation leaves: 1 for real target noise,
    0 for a noiseless translation).
    """
    p = _images(pred, "pred")
    t = _images(truth, "truth")
    _same_shape(p, t, "pred", "truth")
    N, C, H, W = t.shape
    s = _sky(sky, C)
    fp, ft = p.sum((2, 3), dtype=float), t.sum((2, 3), dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ferr = np.abs(fp / ft - 1.0)
    soft = s * math.sqrt(H * W)
    cp, ct = asinh_mag(fp, soft[None, :]), asinh_mag(ft, soft[None, :])
    cerr = np.abs((cp[:, :-1] - cp[:, 1:]) - (ct[:, :-1] - ct[:, 1:])).mean(1) if C > 1 else \
        np.full(N, math.nan)
    sq, n = 0.0, 0
    for i in range(0, N, _CHUNK):
        d = (p[i:i + _CHUNK] - t[i:i + _CHUNK]) / s[None, :, None, None]
        m = t[i:i + _CHUNK] < 0.1 * s[None, :, None, None]
        sq += float((d[m].astype(float) ** 2).sum())
        n += int(m.sum())
    return {"flux_err": _nanmedian(ferr), "total_colour_err": _nanmedian(cerr),
            "sky_rms": math.sqrt(sq / n) if n else math.nan}


# ----------------------------------------------------------------------------------------------
# Everything at once
# ----------------------------------------------------------------------------------------------
def _nanmedian(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=float)
    return float(np.median(a[np.isfinite(a)])) if np.isfinite(a).any() else math.nan


def evaluate_translation(pred: ArrayLike, pairs: PairSet, photoz: Mapping | None = None, *,
                         structure_rows: int | None = 200, reference_fit: Table | None = None,
                         device: str | torch.device | None = "cpu") -> dict[str, Any]:
    """All probes of translated images ``pred`` (the shape of ``pairs.target``) in one record.

    Keys (:data:`RECORD_KEYS`; plain Python floats and ints, NaN where undefined):

    - ``n``: galaxies. ``sigma_mad``, ``bias``, ``outlier``, ``pz_width``:
      :func:`photoz_metrics` of ``photoz["z_mean"]`` and ``photoz["width"]`` (arrays of length
      N, e.g. the photo-z probe run on ``pred``) against ``pairs.catalog["z"]``; NaN when
      ``photoz`` is None.
    - ``colour_err``: median over galaxies (finite values) of :func:`pixel_colour_error` of
      ``pred`` against ``pairs.target_truth``, softening ``pairs.target_sky``.
    - ``colour_grad_err``: median (finite values) of :func:`colour_gradient_error` against
      ``pairs.target_truth``.
    - ``d_re``, ``d_n``, ``d_mag``, ``n_structure`` (rows used): :func:`structure_deltas` of
      :func:`structure_fits` of ``pred``'s r band, target PSF and sky, for the first
      ``structure_rows`` galaxies (None: all; 0: skip, NaN) against ``reference_fit`` -- by
      default :func:`structure_reference` (the noiseless target truth), computed here; pass it
      to avoid refitting the reference for every model.
    - ``mse``, ``ssim``: :func:`pixel_metrics` against the *noiseless* ``pairs.target_truth``
      (no noise floor: a perfect translation scores mse 0).
    - ``flux_err``, ``total_colour_err``, ``sky_rms``: :func:`flux_metrics` against the truth.
    """
    p = _images(pred, "pred")
    if p.shape != pairs.target.shape:
        raise GalnetValueError(f"pred has shape {p.shape} but pairs.target has shape "
                               f"{pairs.target.shape}", "pred")
    N = len(p)
    sky = pairs.target_sky
    rec: dict[str, Any] = {"n": N}
    if photoz is None:
        rec.update(sigma_mad=math.nan, bias=math.nan, outlier=math.nan, pz_width=math.nan)
    else:
        for k in ("z_mean", "width"):
            if k not in photoz or len(np.asarray(photoz[k]).reshape(-1)) != N:
                raise GalnetValueError(f"photoz[{k!r}] must be an array of length {N}", "photoz")
        m = photoz_metrics(_col(pairs.catalog, "z", N), photoz["z_mean"], photoz["width"])
        rec.update({k: m[k] for k in ("sigma_mad", "bias", "outlier", "pz_width")})
    truth = pairs.target_truth
    rec["colour_err"] = _nanmedian(pixel_colour_error(p, truth, sky))
    rec["colour_grad_err"] = _nanmedian(colour_gradient_error(p, truth, sky, pairs.catalog,
                                                              pairs.target_scale))
    k = _structure_rows(structure_rows, N)
    if reference_fit is not None and len(reference_fit) != k:
        raise GalnetValueError(f"reference_fit has {len(reference_fit)} rows but "
                               f"structure_rows gives {k}", "reference_fit")
    if k == 0:
        rec.update(d_re=math.nan, d_n=math.nan, d_mag=math.nan, n_structure=0)
    else:
        b = _band_index(pairs)
        ref = reference_fit if reference_fit is not None else structure_reference(
            pairs, k, device=device)
        fit = structure_fits(p[:k, b], pairs.target_psf[:k, b], float(sky[b]),
                             pairs.target_scale, device=device)
        d = structure_deltas(fit, ref)
        rec.update(d_re=d["d_re"], d_n=d["d_n"], d_mag=d["d_mag"], n_structure=d["n"])
    rec.update(pixel_metrics(p, truth, sky))
    rec.update(flux_metrics(p, truth, sky))
    return {key: rec[key] for key in RECORD_KEYS}
