"""Stamps in, catalogues out: the input/output layer of ``galnet predict`` and ``galnet fit``.

Turns user images into the fixed-size inputs of the network and the fitter -- a
:class:`StampBatch` of ``S x S`` stamps (``S = preset.stamp`` = 61), noise maps, masks and
``P x P`` unit-sum PSFs (``P = preset.psf_size`` = 25) -- and writes/reads catalogues.

Inputs
------
- **Stamps** (:func:`load_stamps`, :func:`iter_stamps`): a FITS cube ``(N, H, W)`` or one 2-D image
  (the first image HDU with data), or a numpy array. ``SIGMA`` (1-sigma noise), ``IVAR`` (inverse
  variance) and ``MASK`` (nonzero = pixel ignored, the astropy convention) come from extensions of
  that name in the stamps file or from separate files/arrays of the same shape (an explicit
  argument wins over an extension).
- **A frame and positions** (:func:`load_frame`, :func:`iter_frame`): ``S x S`` cutouts of a large
  image around ``x, y`` (0-based pixels) or ``ra, dec`` (degrees, needs a celestial WCS), the same
  pixels as ``astropy.nddata.Cutout2D(frame, (x, y), S, mode='partial')``: centre pixel
  ``ceil(x - 1/2)``; pixels outside the frame are masked and flag ``EDGE``.
- **PSF**: one 2-D image for all stamps, a cube ``(N, h, w)`` (one per stamp), or a PSFEx model
  (``.psf`` / FITS with a ``PSF_DATA`` table, or a legacypipe "psfex-single" table) evaluated at
  each stamp's frame position with ``galsim.des.DES_PSFEx`` (GalSim positions are 1-based: the
  model is evaluated at ``(x + 1, y + 1)``) and drawn on the stamp pixels with
  ``method='no_pixel'`` (PSFEx models are effective PSFs). Sizes must be odd. Every PSF is
  normalised to unit sum, shifted by the integer offset of its peak so the peak is the central
  pixel (no shift when the central pixel ties the peak), then cropped/zero-padded to ``P x P``
  and renormalised. ``BAD_PSF``: the peak was more than 2 px off-centre, or more than 10% of the
  flux fell outside ``P x P``.

Geometry (pixel conventions of :mod:`galnet.conventions`: 0-based, pixel centres at integers)
---------------------------------------------------------------------------------------------
Each output stamp pixel ``(x, y)`` maps to input (stamp or frame) pixel coordinates by::

    x_in = x0 + k * x + (k - 1) / 2          y_in = y0 + k * y + (k - 1) / 2

``k`` (``StampBatch.rebin``) is the rebinning factor (1, 2 or 3), ``x0``, ``y0`` integers (the input
coordinate of the first input pixel of output pixel 0). Lengths scale by ``k``
(``re_in = k * re_pix``). :func:`to_input_coords` applies this to catalogue columns.

- Stamps of another size are cropped or zero-padded around their centre ``((W-1)/2, (H-1)/2)``
  (``x0 = floor((W-1)/2 - (S-1)/2 k - (k-1)/2 + 1/2)``): an odd-sized input keeps its central
  pixel at ``(S-1)/2`` exactly. Padded pixels are masked (flag ``PADDED``).
- Rebinning (flag ``REBINNED``), rule ``rebin="auto"``, only for stamps larger than ``S``: the
  central source is segmented (pixels of the 3x3-box-smoothed, sky-subtracted stamp above
  ``2 sigma`` of the smoothed noise, 8-connected, the segment at the brightest of the 3x3 central
  pixels); if less than ``preset.containment`` (0.9) of its flux lies within
  ``preset.containment_radius`` (27 px: the simulator's containment rule) of the centre, the
  stamp is rebinned by the smallest ``k`` in (2, 3) that puts that fraction within ``27 k`` input
  pixels, at most ``kmax = min(3, ceil(max(H, W) / S))`` (``kmax`` if none does). The segment
  misses the faint wings and what lies outside the input stamp, so the rule is conservative
  (low-surface-brightness galaxies are not rebinned). Rebinning
  block-sums ``k x k`` pixels of the image (flux kept), adds sigma in quadrature, ORs the mask and
  bins the PSF the same way (the binned effective PSF is the PSF convolved with the ``k x k``
  comb of pixel centres, sampled every ``k`` pixels: an exact block-sum for k = 3; for k = 2 the
  PSF is interpolated half a pixel with GalSim's Quintic kernel). For an odd input size and
  k = 2 the input centre lands at ``(S-1)/2 - 1/4`` (no half-pixel resampling of the image).
  ``rebin=1, 2, 3`` forces a factor for every stamp.

Noise and masks
---------------
- Non-finite image pixels (and non-finite sigma/ivar) are set to 0 and masked: flag
  ``NONFINITE`` (not for pixels the mask or the frame edge already masks). Pixels with
  ``sigma <= 0`` or ``ivar <= 0`` are masked.
- ``sky_rms`` (per stamp, on the output stamp): without a sigma/ivar map, ``median - 15.87th
  percentile`` of the unmasked pixels of the stamp's border (``S // 6`` = 10 px wide: pixels at
  least 21 px from the centre), i.e. the lower half of the pixel distribution, which galaxy light
  and neighbours barely touch (precision ~3%; overestimated when a bright galaxy's smooth light
  fills the border, e.g. x4 for re = 10 px at S/N ~ 1000: give a sigma map for such samples);
  with a map, the mean sigma over the same pixels. All unmasked pixels are used when fewer than
  50 remain; NaN when none, or when the estimate is 0.
- Without a sigma/ivar map, ``sigma = sky_rms`` (constant per stamp). Masked pixels carry
  ``sigma = sky_rms`` (1 where ``sky_rms`` is NaN) as a finite placeholder: use ``mask``.
- ``MASKED_CENTRE``: all 3x3 central pixels masked. A stamp with no usable pixel is kept
  (flagged); an input in which no stamp has a usable pixel is an error.

Pixel scale and zeropoint: the argument, else the FITS header (``PIXSCALE``, ``PIXSCAL1``, else
a celestial WCS: ``sqrt(|det CD|)``; ``MAGZERO``, ``MAGZP``, ``ZEROPNT``, ``ZP``, ``MAGZPT``; image
HDU then primary header), else the preset. ``StampBatch.pixel_scale`` is that of the *input* pixels.

Speed: the common path (a cube of ``S x S`` stamps, one PSF) is vectorised numpy; FITS data are
memory-mapped and read ``chunk`` stamps at a time by :func:`iter_stamps`. Per-stamp Python loops
are only used for PSFEx evaluation, rebinned PSFs of PSF cubes and off-centre PSF peaks.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from galnet.errors import GalnetFileError, GalnetPSFError, GalnetValueError
from galnet.flags import Flag
from galnet.presets import Preset, get_preset

__all__ = [
    "StampBatch",
    "load_stamps",
    "iter_stamps",
    "load_frame",
    "iter_frame",
    "StampIterator",
    "to_input_coords",
    "to_stamp_coords",
    "write_catalog",
    "read_catalog",
    "catalog_format",
    "CATALOG_FORMATS",
]

#: Header keywords read for the pixel scale (arcsec/pixel), in order.
PIXSCALE_KEYS: tuple[str, ...] = ("PIXSCALE", "PIXSCAL1")
#: Header keywords read for the zeropoint (AB mag of one image unit), in order.
ZEROPOINT_KEYS: tuple[str, ...] = ("MAGZERO", "MAGZP", "ZEROPNT", "ZP", "MAGZPT")
#: Extension names of the noise and mask planes in a stamps or frame file.
EXTNAMES: tuple[str, ...] = ("SIGMA", "IVAR", "MASK")
#: Catalogue formats by file suffix (astropy format names).
CATALOG_FORMATS: dict[str, str] = {".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits",
                                   ".parquet": "parquet"}

#: A PSF whose peak is farther than this (pixels, per axis) from the centre is flagged BAD_PSF.
PSF_MAX_SHIFT = 2
#: A PSF losing more than this fraction of its flux outside P x P is flagged BAD_PSF.
PSF_MAX_LOST = 0.10
#: Detection threshold of the rebinning rule, in units of the smoothed-noise rms.
REBIN_DETECT_NSIGMA = 2.0
#: Largest rebinning factor.
MAX_REBIN = 3
#: Fewest ring pixels for the sky estimate before all unmasked pixels are used.
_MIN_SKY_PIXELS = 50
#: Stamps per chunk in load_stamps / load_frame (bounded temporaries, cache friendly).
_LOAD_CHUNK = 4096
#: Gaussian quantile at -1 sigma.
_Q16 = 0.15865525393145707


# ----------------------------------------------------------------------------------------------
# The batch
# ----------------------------------------------------------------------------------------------
@dataclass
class StampBatch:
    """Network/fitter inputs for N stamps (see the module docstring for every convention).

    Attributes
    ----------
    images : (N, S, S) float32, image units; masked pixels are 0.
    sigma : (N, S, S) float32, 1-sigma noise (image units), finite and > 0 everywhere.
    mask : (N, S, S) bool, True = pixel ignored.
    psfs : (N, P, P) float32, unit sum, peak on the central pixel ((P-1)/2, (P-1)/2).
    flags : (N,) int64, :class:`galnet.flags.Flag` bits.
    ids : (N,) identifiers (stamp index, or the ``id`` column of the positions).
    rebin : (N,) int64 rebinning factor k (1, 2, 3).
    x0, y0 : (N,) float64 input/frame pixel offsets: ``x_in = x0 + k x + (k - 1)/2``.
    input_x, input_y : (N,) float64 requested centre in input/frame pixels (stamp centre, or the
        catalogue position of a frame cutout).
    sky_rms : (N,) float64 robust sky rms of each output stamp (image units; NaN if unknown).
    pixel_scale : arcsec per *input* pixel.   zeropoint : AB mag of one image unit.
    meta : file names and where the pixel scale / zeropoint came from.
    wcs : celestial WCS of the frame (frame inputs), else None.
    """

    images: np.ndarray
    sigma: np.ndarray
    mask: np.ndarray
    psfs: np.ndarray
    flags: np.ndarray
    ids: np.ndarray
    rebin: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    input_x: np.ndarray
    input_y: np.ndarray
    sky_rms: np.ndarray
    pixel_scale: float
    zeropoint: float
    meta: dict = field(default_factory=dict)
    wcs: Any = None

    _PER_STAMP = ("images", "sigma", "mask", "psfs", "flags", "ids", "rebin", "x0", "y0",
                  "input_x", "input_y", "sky_rms")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def stamp_pixel_scale(self) -> np.ndarray:
        """(N,) arcsec per output pixel: ``pixel_scale * rebin``."""
        return self.pixel_scale * self.rebin.astype(np.float64)

    def select(self, index) -> StampBatch:
        """A new batch with the stamps ``index`` (slice, integer or boolean array)."""
        if isinstance(index, int | np.integer):
            index = slice(int(index), int(index) + 1)
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in self._PER_STAMP:
            kw[name] = kw[name][index]
        return StampBatch(**kw)

    @staticmethod
    def concatenate(batches) -> StampBatch:
        """One batch from several (same pixel scale and zeropoint; meta/wcs of the first)."""
        batches = list(batches)
        if not batches:
            raise GalnetValueError("concatenate: no batches given", "batches")
        first = batches[0]
        for b in batches[1:]:
            if b.pixel_scale != first.pixel_scale or b.zeropoint != first.zeropoint:
                raise GalnetValueError("concatenate: batches differ in pixel scale or zeropoint",
                                       "batches")
        if len(batches) == 1:
            return first
        kw = {f.name: getattr(first, f.name) for f in fields(first)}
        for name in StampBatch._PER_STAMP:
            kw[name] = np.concatenate([getattr(b, name) for b in batches])
        return StampBatch(**kw)


# ----------------------------------------------------------------------------------------------
# Reading FITS / arrays lazily
# ----------------------------------------------------------------------------------------------
def _is_pathlike(obj) -> bool:
    return isinstance(obj, str | os.PathLike)


def _check_file(path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise GalnetFileError(f"{path}: no such file ({what})")
    return p


def _open_fits(path, what: str, stack: contextlib.ExitStack):
    from astropy.io import fits

    p = _check_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(p, memmap=True)
    except (OSError, ValueError, TypeError) as err:
        raise GalnetFileError(f"{path}: not a readable FITS file ({err})") from err
    stack.callback(hdul.close)
    return hdul


def _hdu_name(hdu) -> str:
    return str(hdu.header.get("EXTNAME", hdu.name or "")).strip().upper()


def _image_hdus(hdul) -> list:
    return [h for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2
            and all(h.header.get(f"NAXIS{i}", 0) > 0 for i in range(1, h.header["NAXIS"] + 1))]


def _first_image_hdu(hdul, path, skip: tuple[str, ...] = EXTNAMES):
    for h in _image_hdus(hdul):
        if _hdu_name(h) not in skip:
            return h
    raise GalnetFileError(f"{path}: no image HDU with data")


def _named_hdu(hdul, name: str):
    for h in _image_hdus(hdul):
        if _hdu_name(h) == name:
            return h
    return None


class _Cube:
    """A lazily read stack of 2-D planes ``(N, H, W)`` (a 2-D input is one plane)."""

    def __init__(self, name: str, shape: tuple[int, ...], reader, header=None, primary=None):
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise GalnetValueError(
                f"{name}: expected a 2-D image or an (N, H, W) cube, got shape {tuple(shape)}",
                name)
        self._two_d = len(shape) == 2
        shape = (1, *shape) if self._two_d else shape
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self._reader = reader
        self.headers = [h for h in (header, primary) if h is not None]

    def read(self, i0: int, i1: int) -> np.ndarray:
        a = self._reader(None if self._two_d else slice(i0, i1))
        return a[None] if self._two_d else a

    def plane(self) -> np.ndarray:
        """The whole 2-D image (frames)."""
        return self._reader(None)


def _cube_from_hdu(hdu, name: str, primary=None) -> _Cube:
    from astropy.io import fits

    compressed = isinstance(hdu, fits.CompImageHDU)

    def reader(sl):
        src = hdu.section if compressed else hdu.data
        return np.asarray(src[...] if sl is None else src[sl])

    if compressed:
        shape = tuple(hdu.shape)
    else:
        n = hdu.header["NAXIS"]
        shape = tuple(int(hdu.header[f"NAXIS{i}"]) for i in range(n, 0, -1))
    return _Cube(name, shape, reader, hdu.header, primary)


def _cube_from_array(arr, name: str) -> _Cube:
    try:
        a = np.asarray(arr)
    except (TypeError, ValueError) as err:
        raise GalnetValueError(f"{name}: not a numeric array ({err})", name) from err
    if a.dtype.kind not in "biuf":
        raise GalnetValueError(f"{name}: not a numeric array (dtype {a.dtype})", name)
    return _Cube(name, a.shape, lambda sl: a if sl is None else a[sl])


def _plane_input(obj, what: str, stack, ext_source=None) -> _Cube | None:
    """A sigma/ivar/mask input: explicit array/path, else the extension ``what`` of the main
    file (``ext_source`` = (hdul, path))."""
    if obj is None:
        if ext_source is None:
            return None
        hdul, path = ext_source
        hdu = _named_hdu(hdul, what.upper())
        return None if hdu is None else _cube_from_hdu(hdu, f"{path}[{what.upper()}]")
    if _is_pathlike(obj):
        hdul = _open_fits(obj, what, stack)
        hdu = _named_hdu(hdul, what.upper())
        if hdu is None:
            hdu = _first_image_hdu(hdul, obj, skip=())
        return _cube_from_hdu(hdu, str(obj))
    return _cube_from_array(obj, what)


def _planes(sigma, ivar, mask, ext, stack, ref: _Cube) -> dict[str, _Cube | None]:
    """sigma / ivar / mask inputs, checked against the shape of ``ref``. Without an explicit
    sigma or ivar the SIGMA extension is used, else the IVAR extension; without an explicit mask
    the MASK extension."""
    if sigma is not None and ivar is not None:
        raise GalnetValueError("give sigma or ivar, not both", "sigma")
    noise_ext = ext if sigma is None and ivar is None else None
    planes = {"sigma": _plane_input(sigma, "sigma", stack, noise_ext),
              "ivar": _plane_input(ivar, "ivar", stack, noise_ext),
              "mask": _plane_input(mask, "mask", stack, ext)}
    if planes["sigma"] is not None and planes["ivar"] is not None:
        planes["ivar"] = None  # both extensions present: SIGMA wins
    for w, c in planes.items():
        _check_same_shape(c, ref.shape, ref, w)
    return planes


def _main_input(obj, what: str, stack) -> tuple[_Cube, Any]:
    """The stamps or frame input and (hdul, path) for its extensions (None for arrays)."""
    if _is_pathlike(obj):
        hdul = _open_fits(obj, what, stack)
        hdu = _first_image_hdu(hdul, obj)
        return _cube_from_hdu(hdu, str(obj), hdul[0].header if hdu is not hdul[0] else None), (
            hdul, str(obj))
    return _cube_from_array(obj, what), None


# ----------------------------------------------------------------------------------------------
# Pixel scale and zeropoint
# ----------------------------------------------------------------------------------------------
def _header_number(headers, keys) -> tuple[float | None, str | None]:
    for h in headers:
        for k in keys:
            v = h.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                return float(v), k
    return None, None


def _celestial_wcs(header):
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = WCS(header)
    except Exception:  # noqa: BLE001 - any malformed WCS means "no usable WCS"
        return None
    return w.celestial if w.has_celestial else None


def _wcs_scale(headers) -> float | None:
    for h in headers:
        w = _celestial_wcs(h)
        if w is not None:
            try:
                det = abs(np.linalg.det(w.pixel_scale_matrix))
            except Exception:  # noqa: BLE001
                continue
            if np.isfinite(det) and det > 0:
                return float(np.sqrt(det) * 3600.0)
    return None


def _scale_and_zeropoint(pixel_scale, zeropoint, headers, preset: Preset, name: str
                         ) -> tuple[float, float, dict]:
    meta = {}
    if pixel_scale is not None:
        if not (isinstance(pixel_scale, int | float | np.floating) and np.isfinite(pixel_scale)
                and pixel_scale > 0):
            raise GalnetValueError(f"pixel_scale must be a finite number > 0, got {pixel_scale!r}",
                                   "pixel_scale", pixel_scale)
        ps, meta["pixel_scale_source"] = float(pixel_scale), "argument"
    else:
        ps, key = _header_number(headers, PIXSCALE_KEYS)
        if ps is not None and ps > 0:
            meta["pixel_scale_source"] = f"{name} header {key}"
        else:
            ps = _wcs_scale(headers)
            if ps is not None:
                meta["pixel_scale_source"] = f"{name} WCS"
            else:
                ps, meta["pixel_scale_source"] = preset.pixel_scale, f"preset {preset.name}"
    if zeropoint is not None:
        if not (isinstance(zeropoint, int | float | np.floating) and np.isfinite(zeropoint)):
            raise GalnetValueError(f"zeropoint must be a finite number, got {zeropoint!r}",
                                   "zeropoint", zeropoint)
        zp, meta["zeropoint_source"] = float(zeropoint), "argument"
    else:
        zp, key = _header_number(headers, ZEROPOINT_KEYS)
        if zp is not None:
            meta["zeropoint_source"] = f"{name} header {key}"
        else:
            zp, meta["zeropoint_source"] = preset.zeropoint, f"preset {preset.name}"
    return ps, zp, meta


# ----------------------------------------------------------------------------------------------
# PSFs
# ----------------------------------------------------------------------------------------------
def _shift_int(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` moved by (dy, dx) pixels (content at [i, j] goes to [i + dy, j + dx]), zero fill."""
    out = np.zeros_like(a)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def _prepare_psfs(p: np.ndarray, name: str, first: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate, normalise and recentre PSFs ``(n, h, w)``; returns (float64 unit-sum PSFs,
    bad (n,) = peak moved by more than PSF_MAX_SHIFT). ``first`` = index of p[0] in a cube (None
    for a single image)."""
    n, h, w = p.shape
    if h % 2 == 0 or w % 2 == 0:
        raise GalnetPSFError(f"{name}: PSF must have odd sizes (centre on a pixel), got {h}x{w}",
                             "psf", (h, w))

    def which(i: int) -> str:
        return "PSF" if first is None else f"PSF {first + i}"

    p = np.asarray(p, dtype=np.float64)
    finite = np.isfinite(p).all(axis=(1, 2))
    if not finite.all():
        raise GalnetPSFError(f"{name}: {which(int(np.argmin(finite)))} has non-finite pixels",
                             "psf")
    s = p.sum(axis=(1, 2))
    if not (s > 0).all():
        i = int(np.argmin(s > 0))
        raise GalnetPSFError(f"{name}: {which(i)} has a non-positive sum ({s[i]:.3g})", "psf")
    p = p / s[:, None, None]
    flat = p.reshape(n, -1)
    peak = flat.argmax(axis=1)
    peak[p[:, (h - 1) // 2, (w - 1) // 2] >= flat.max(axis=1) * (1 - 1e-6)] = (h * w - 1) // 2
    dy = (h - 1) // 2 - peak // w  # shift to apply (0 when the central pixel ties the peak)
    dx = (w - 1) // 2 - peak % w
    moved = np.flatnonzero((dy != 0) | (dx != 0))
    if moved.size:
        p = p.copy()
        for i in moved:
            p[i] = _shift_int(p[i], int(dy[i]), int(dx[i]))
        p[moved] /= p[moved].sum(axis=(1, 2))[:, None, None]
    bad = np.maximum(np.abs(dy), np.abs(dx)) > PSF_MAX_SHIFT
    return p, bad


def _centre_crop(a: np.ndarray, size: int) -> np.ndarray:
    """Crop or zero-pad the last two (odd) axes of ``a`` to ``size`` around the central pixel."""
    h, w = a.shape[-2:]
    out = np.zeros((*a.shape[:-2], size, size), dtype=a.dtype)
    c, ch, cw = (size - 1) // 2, (h - 1) // 2, (w - 1) // 2
    ry, rx = min(c, ch), min(c, cw)
    out[..., c - ry:c + ry + 1, c - rx:c + rx + 1] = a[..., ch - ry:ch + ry + 1,
                                                      cw - rx:cw + rx + 1]
    return out


def _finish_psfs(p: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop/pad unit-sum PSFs to ``size``; returns (float32 unit-sum PSFs, lost-flux flag)."""
    out = _centre_crop(p, size)
    s = out.sum(axis=(-2, -1))
    lost = 1.0 - s > PSF_MAX_LOST
    return (out / s[..., None, None]).astype(np.float32), lost


def _bin_profile(prof, k: int, size: int) -> np.ndarray:
    """A GalSim profile (pixel units) convolved with the k x k comb of pixel centres and sampled
    every k pixels on a size x size grid centred on it: the effective PSF of k x k-binned pixels."""
    import galsim

    if k > 1:
        off = np.arange(k) - (k - 1) / 2.0
        prof = galsim.Sum([prof.shift(float(ox), float(oy)) for oy in off for ox in off])
    # no_pixel draws surface brightness x pixel area (k^2): divide it out
    arr = prof.drawImage(nx=size, ny=size, scale=float(k), method="no_pixel").array
    return arr.astype(np.float64) / (k * k)


def _bin_psf_image(p: np.ndarray, k: int, size: int) -> np.ndarray:
    """Bin a unit-sum odd PSF image by k (see :func:`_bin_profile`): an exact block-sum around
    the central pixel for odd k, a Quintic-interpolated one for even k. Returns float64 (size,
    size), not normalised."""
    if k == 1:
        return _centre_crop(p, size)
    if k % 2 == 1:
        h, w = p.shape
        m = max(math.ceil(max(h, w) / k), size)
        m += 1 - m % 2  # odd number of blocks: the central block is centred on the central pixel
        big = _centre_crop(p, m * k)
        return _centre_crop(big.reshape(m, k, m, k).sum(axis=(1, 3)), size)
    import galsim

    ii = galsim.InterpolatedImage(galsim.Image(np.ascontiguousarray(p), scale=1.0),
                                  x_interpolant="quintic", normalization="sb")
    return _bin_profile(ii, k, size)


class _PSFSource:
    """PSFs per stamp from one image, a cube or a PSFEx model."""

    def __init__(self, psf, n_stamps: int, size: int, stamps_name: str,
                 stack: contextlib.ExitStack):
        self.size = size
        self.model = None
        if _is_pathlike(psf):
            self.name = str(psf)
            hdul = _open_fits(psf, "psf", stack)
            hdu = self._psfex_hdu(hdul)
            if hdu is not None:
                self._load_psfex(hdu)
                return
            cube = _cube_from_hdu(_first_image_hdu(hdul, psf, skip=()), self.name)
        elif psf is not None and type(psf).__name__ == "DES_PSFEx":
            self.name, self.kind, self.model = "psf (DES_PSFEx)", "psfex", psf
            return
        else:
            self.name = "psf"
            if psf is None:
                raise GalnetPSFError("psf: a PSF is required (2-D image, cube or PSFEx file)",
                                     "psf")
            try:
                cube = _cube_from_array(psf, "psf")
            except GalnetValueError as err:
                raise GalnetPSFError(str(err), "psf") from err
        n, h, w = cube.shape
        if h % 2 == 0 or w % 2 == 0:
            raise GalnetPSFError(
                f"{self.name}: PSF must have odd sizes (centre on a pixel), got {h}x{w}", "psf",
                (h, w))
        if cube._two_d or n == 1:
            self.kind = "image"
            full, bad = _prepare_psfs(cube.read(0, 1).astype(np.float64), self.name, None)
            self.full, self.bad = full[0], bool(bad[0])
            self._binned: dict[int, tuple[np.ndarray, bool]] = {}
        else:
            if n != n_stamps:
                raise GalnetPSFError(
                    f"{self.name}: PSF cube has {n} PSFs for {n_stamps} stamps ({stamps_name})",
                    "psf", n)
            self.kind, self.cube = "cube", cube

    @staticmethod
    def _psfex_hdu(hdul):
        from astropy.io import fits

        for h in hdul:
            if isinstance(h, fits.BinTableHDU):
                cols = [c.upper() for c in h.columns.names]
                if "PSF_MASK" in cols:
                    return h
        return None

    def _load_psfex(self, hdu) -> None:
        import galsim.des

        self.kind = "psfex"
        try:
            if "PSF_MASK" in hdu.columns.names and "POLNAXIS" in hdu.header:
                self.model = galsim.des.DES_PSFEx(hdu)
            else:  # legacypipe "psfex-single": PSFEx keywords stored as columns
                from galnet.sim.bank import _psfex_hdu_from_legacypipe

                self.model = galsim.des.DES_PSFEx(_psfex_hdu_from_legacypipe(self.name))
        except Exception as err:  # noqa: BLE001 - GalSim raises OSError/KeyError/AssertionError
            raise GalnetPSFError(f"{self.name}: unreadable PSFEx model ({err})", "psf") from err

    def _image_binned(self, k: int) -> tuple[np.ndarray, bool]:
        if k not in self._binned:
            out, lost = _finish_psfs(_bin_psf_image(self.full, k, self.size)[None], self.size)
            self._binned[k] = (out[0], bool(self.bad or lost[0]))
        return self._binned[k]

    def block(self, i0: int, i1: int, k: np.ndarray, pos: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
        """PSFs (n, P, P) float32 and BAD_PSF (n,) for stamps i0:i1 with rebin factors k and
        frame positions pos (n, 2) (0-based x, y; PSFEx only)."""
        n, P = i1 - i0, self.size
        out = np.empty((n, P, P), dtype=np.float32)
        bad = np.zeros(n, dtype=bool)
        if self.kind == "image":
            for kk in np.unique(k):
                img, b = self._image_binned(int(kk))
                sel = k == kk
                out[sel] = img
                bad[sel] = b
            return out, bad
        if self.kind == "cube":
            raw = self.cube.read(i0, i1)
            full, bad = _prepare_psfs(raw, self.name, i0)
            one = k == 1
            if one.any():
                out[one], lost = _finish_psfs(full[one], P)
                bad[one] |= lost
            for i in np.flatnonzero(~one):
                b = _bin_psf_image(full[i], int(k[i]), P)
                out[i], lost = _finish_psfs(b[None], P)
                bad[i] |= lost[0]
            return out, bad
        # PSFEx: evaluated at each frame position (GalSim positions are 1-based)
        import galsim

        if pos is None:
            raise GalnetPSFError(
                f"{self.name}: a PSFEx model needs each stamp's frame position (psf_positions)",
                "psf")
        raw = np.empty((n, P, P))
        for i in range(n):
            prof = self.model.getPSF(galsim.PositionD(float(pos[i, 0]) + 1.0,
                                                      float(pos[i, 1]) + 1.0))
            raw[i] = _bin_profile(prof, int(k[i]), P)
        lost = 1.0 - raw.sum(axis=(1, 2)) > PSF_MAX_LOST
        full, bad = _prepare_psfs(raw, self.name, i0)
        out, lost2 = _finish_psfs(full, P)
        return out, bad | lost | lost2


# ----------------------------------------------------------------------------------------------
# Stamp geometry, noise, rebinning
# ----------------------------------------------------------------------------------------------
def _radius(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    return np.hypot(xx - (w - 1) / 2.0, yy - (h - 1) / 2.0)


def _border(a: np.ndarray, w: int) -> np.ndarray:
    """(n, M) pixels of ``a`` (n, H, W) less than ``w`` pixels from the stamp edge."""
    n, H, W = a.shape
    parts = (a[:, :w], a[:, H - w:], a[:, w:H - w, :w], a[:, w:H - w, W - w:])
    return np.concatenate([p.reshape(n, -1) for p in parts], axis=1)


def _border_width(H: int, W: int) -> int:
    """Width of the sky border: 10 px for 61 x 61 (pixels >= 21 px from the centre)."""
    return max(1, min(H, W) // 6)


def _robust_stats(img: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per stamp (median, median - 15.87th percentile) of the unmasked pixels of the border
    (:func:`_border_width`; all unmasked pixels where fewer than _MIN_SKY_PIXELS remain). NaN
    where no pixel is left or the rms is 0."""
    n, H, W = img.shape
    w = _border_width(H, W)
    v = _border(img, w)
    M = v.shape[1]
    med = np.full(n, np.nan)
    rms = np.full(n, np.nan)
    dirty = _border(mask, w).any(axis=1) if mask.any() else np.zeros(n, dtype=bool)
    if M < _MIN_SKY_PIXELS:
        dirty[:] = True
    clean = np.flatnonzero(~dirty)
    if clean.size:
        k16, k50 = int(round(_Q16 * (M - 1))), (M - 1) // 2
        part = np.partition(v[clean] if clean.size < n else v, k50, axis=1)
        low = np.partition(part[:, :k50], k16, axis=1)[:, k16]  # faster than kth=(k16, k50)
        med[clean] = part[:, k50]
        rms[clean] = part[:, k50] - low
    if dirty.any():
        m = _border(mask, w)
        for i in np.flatnonzero(dirty):
            good = v[i][~m[i]]
            if good.size < _MIN_SKY_PIXELS:
                good = img[i][~mask[i]]
            if good.size == 0:
                continue
            good = np.sort(good)
            nv = good.size
            med[i] = good[(nv - 1) // 2]
            rms[i] = med[i] - good[int(round(_Q16 * (nv - 1)))]
    rms[~(rms > 0)] = np.nan
    return med, rms


def _mean_sigma(sig: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per stamp mean of a sigma map over the unmasked border pixels (all unmasked pixels where
    fewer than _MIN_SKY_PIXELS remain); NaN where none."""
    n, H, W = sig.shape
    w = _border_width(H, W)
    good = ~_border(mask, w)
    cnt = good.sum(axis=1)
    tot = np.where(good, _border(sig, w), 0.0).sum(axis=1, dtype=np.float64)
    few = cnt < _MIN_SKY_PIXELS
    if few.any():
        g = ~mask[few]
        cnt[few] = g.sum(axis=(1, 2))
        tot[few] = np.where(g, sig[few], 0.0).sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = tot / cnt
    out[~(out > 0)] = np.nan
    return out


def _auto_rebin(img: np.ndarray, mask: np.ndarray, kmax: int, preset: Preset) -> np.ndarray:
    """Rebinning factor per stamp (the rule of the module docstring)."""
    from scipy import ndimage

    n, H, W = img.shape
    k = np.ones(n, dtype=np.int64)
    if kmax < 2:
        return k
    r = _radius((H, W))
    med, rms = _robust_stats(img, mask)
    work = np.where(mask, 0.0, img - np.nan_to_num(med)[:, None, None]).astype(np.float32)
    sm = ndimage.uniform_filter(work, size=(1, 3, 3), mode="constant")
    thr = np.where(np.isfinite(rms), REBIN_DETECT_NSIGMA * rms / 3.0, np.inf)
    det = (sm > thr[:, None, None].astype(np.float32)) & ~mask
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    labels, _ = ndimage.label(det, structure=structure)
    cy, cx = (H - 1) // 2, (W - 1) // 2
    cl = labels[:, cy - 1:cy + 2, cx - 1:cx + 2].reshape(n, 9)
    cs = sm[:, cy - 1:cy + 2, cx - 1:cx + 2].reshape(n, 9)
    pick = np.argmax(np.where(cl > 0, cs, -np.inf), axis=1)
    lab = cl[np.arange(n), pick]
    seg = (labels == lab[:, None, None]) & (lab > 0)[:, None, None]
    flux = np.where(seg, work, 0.0)
    total = flux.sum(axis=(1, 2), dtype=np.float64)
    R = preset.containment_radius
    k[:] = kmax  # when no factor up to kmax contains the source
    need = total > 0
    k[~need] = 1
    for kk in range(1, kmax):
        inside = flux[:, r <= R * kk].sum(axis=1, dtype=np.float64)
        ok = need & (inside >= preset.containment * total)
        k[ok] = kk
        need &= ~ok
    return k


@dataclass
class _Block:
    images: np.ndarray
    sigma: np.ndarray
    mask: np.ndarray
    flags: np.ndarray
    rebin: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    sky_rms: np.ndarray


def _offset(n_in: int, S: int, k: int) -> int:
    """Integer input offset of output pixel 0 for an input axis of n_in pixels (module doc)."""
    c_in = (n_in - 1) / 2.0
    return int(math.floor(c_in - k * (S - 1) / 2.0 - (k - 1) / 2.0 + 0.5))


def _place(a: np.ndarray, y0: int, x0: int, B: int, fill) -> tuple[np.ndarray, bool]:
    """The B x B window of ``a`` (n, H, W) starting at (y0, x0), outside filled with ``fill``;
    also whether any pixel was outside."""
    n, H, W = a.shape
    out = np.full((n, B, B), fill, dtype=a.dtype)
    ys, ye = max(0, y0), min(H, y0 + B)
    xs, xe = max(0, x0), min(W, x0 + B)
    if ys < ye and xs < xe:
        out[:, ys - y0:ye - y0, xs - x0:xe - x0] = a[:, ys:ye, xs:xe]
    return out, not (ys == y0 and xs == x0 and ye == y0 + B and xe == x0 + B)


def _process(raw, sig_raw, ivar_raw, mask_raw, outside, *, S: int, rebin, preset: Preset
             ) -> _Block:
    """Stamps ``raw`` (n, H, W) -> S x S output stamps, noise, mask, flags, transform."""
    img = np.array(raw, dtype=np.float32)
    n, H, W = img.shape
    flags = np.zeros(n, dtype=np.int64)
    # masked already: outside the frame, or by the user (NaN there is no news: no NONFINITE)
    mask = np.zeros(img.shape, bool) if outside is None else outside.copy()
    if mask_raw is not None:
        mask |= np.asarray(mask_raw) != 0
    bad = ~np.isfinite(img)
    nonfinite = (bad & ~mask).any(axis=(1, 2))
    mask |= bad
    sig = None
    if sig_raw is not None:
        sig = np.array(sig_raw, dtype=np.float32)
        fin = np.isfinite(sig)
        nonfinite |= (~fin & ~mask).any(axis=(1, 2))
        mask |= ~fin | ~(sig > 0)
    elif ivar_raw is not None:
        iv = np.asarray(ivar_raw, dtype=np.float32)
        fin = np.isfinite(iv)
        nonfinite |= (~fin & ~mask).any(axis=(1, 2))
        good = fin & (iv > 0)
        mask |= ~good
        with np.errstate(divide="ignore", invalid="ignore"):
            sig = np.where(good, 1.0 / np.sqrt(np.where(good, iv, 1.0)), 0.0).astype(np.float32)
    flags[nonfinite] |= Flag.NONFINITE
    np.copyto(img, 0.0, where=mask)
    if sig is not None:
        np.copyto(sig, 0.0, where=mask)

    # rebinning factor per stamp
    if rebin == "auto":
        kmax = min(MAX_REBIN, math.ceil(max(H, W) / S))
        k = _auto_rebin(img, mask, kmax, preset) if max(H, W) > S else np.ones(n, np.int64)
    else:
        k = np.full(n, int(rebin), dtype=np.int64)

    if H == S and W == S and (k == 1).all():  # the common path: nothing to move
        x0 = np.zeros(n)
        y0 = np.zeros(n)
    else:
        out_img = np.empty((n, S, S), np.float32)
        out_mask = np.empty((n, S, S), bool)
        out_sig = None if sig is None else np.empty((n, S, S), np.float32)
        x0 = np.empty(n)
        y0 = np.empty(n)
        for kk in np.unique(k):
            kk = int(kk)
            sel = np.flatnonzero(k == kk)
            B = S * kk
            oy, ox = _offset(H, S, kk), _offset(W, S, kk)
            a, padded = _place(img[sel], oy, ox, B, 0.0)
            m, _ = _place(mask[sel], oy, ox, B, True)
            s = None if sig is None else _place(sig[sel], oy, ox, B, 0.0)[0]
            if kk > 1:
                a = a.reshape(-1, S, kk, S, kk).sum(axis=(2, 4))
                m = m.reshape(-1, S, kk, S, kk).any(axis=(2, 4))
                if s is not None:
                    s = np.sqrt((s.astype(np.float64) ** 2).reshape(-1, S, kk, S, kk).sum(
                        axis=(2, 4))).astype(np.float32)
                flags[sel] |= Flag.REBINNED
            if padded:
                flags[sel] |= Flag.PADDED
            out_img[sel], out_mask[sel] = a, m
            if s is not None:
                out_sig[sel] = s
            x0[sel], y0[sel] = ox, oy
        img, mask, sig = out_img, out_mask, out_sig
        np.copyto(img, 0.0, where=mask)

    # noise
    sky = _robust_stats(img, mask)[1] if sig is None else _mean_sigma(sig, mask)
    fill = np.where(np.isfinite(sky), sky, 1.0).astype(np.float32)
    if sig is None:
        sig = np.empty((n, S, S), np.float32)
        sig[...] = fill[:, None, None]
    else:
        np.copyto(sig, np.broadcast_to(fill[:, None, None], sig.shape), where=mask)
    c = (S - 1) // 2
    flags[mask[:, c - 1:c + 2, c - 1:c + 2].all(axis=(1, 2))] |= Flag.MASKED_CENTRE
    return _Block(img, sig, mask, flags, k, x0, y0, sky)


# ----------------------------------------------------------------------------------------------
# Public loaders
# ----------------------------------------------------------------------------------------------
def _check_rebin(rebin):
    if rebin == "auto" or (isinstance(rebin, int | np.integer) and not isinstance(rebin, bool)
                           and 1 <= rebin <= MAX_REBIN):
        return rebin if rebin == "auto" else int(rebin)
    raise GalnetValueError(f"rebin must be 'auto' or an integer 1..{MAX_REBIN}, got {rebin!r}",
                           "rebin", rebin)


def _check_chunk(chunk) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise GalnetValueError(f"chunk must be a positive integer, got {chunk!r}", "chunk", chunk)
    return int(chunk)


def _check_same_shape(c: _Cube | None, shape, ref: _Cube, what: str) -> None:
    if c is not None and c.shape != tuple(shape):
        raise GalnetValueError(
            f"{c.name}: {what} shape {c.shape} does not match {ref.name}'s {tuple(shape)}", what)


def _ids(ids, n: int, name: str) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    a = np.asarray(ids)
    if a.shape != (n,):
        raise GalnetValueError(f"ids: expected {n} values (one per stamp of {name}), got shape "
                               f"{a.shape}", "ids")
    return a


def _positions_array(pos, n: int, what: str) -> np.ndarray:
    a = np.asarray(pos, dtype=np.float64)
    if a.shape != (n, 2) or not np.isfinite(a).all():
        raise GalnetValueError(f"{what}: expected ({n}, 2) finite frame positions (x, y), got "
                               f"shape {a.shape}", what)
    return a


def iter_stamps(images, psf, sigma=None, ivar=None, mask=None, *, pixel_scale: float | None = None,
                zeropoint: float | None = None, preset: str | Preset = "hsc-r", ids=None,
                psf_positions=None, rebin: str | int = "auto", chunk: int = 4096
                ) -> Iterator[StampBatch]:
    """Read stamps ``chunk`` at a time (bounded memory): yields :class:`StampBatch` es.

    Parameters
    ----------
    images : path of a FITS file (first image HDU: a cube (N, H, W) or one 2-D image; optional
        SIGMA / IVAR / MASK extensions) or an array (N, H, W) / (H, W), image units.
    psf : path (FITS image/cube or PSFEx model), array (h, w) / (N, h, w), or a
        ``galsim.des.DES_PSFEx``; odd sizes, any positive normalisation.
    sigma, ivar, mask : paths or arrays of the stamps' shape [default: the extensions, if any].
        mask nonzero = pixel ignored.
    pixel_scale : arcsec/pixel [default: header, else preset].
    zeropoint : AB mag of one image unit [default: header, else preset].
    preset : survey preset (stamp size, PSF size, containment rule, defaults) [default: hsc-r].
    ids : (N,) identifiers [default: 0..N-1].
    psf_positions : (N, 2) frame positions (0-based x, y) of the stamps, needed by a PSFEx PSF.
    rebin : ``"auto"`` (rule of the module docstring) or a factor 1, 2, 3 for every stamp.
    chunk : stamps per batch.

    Inputs are validated (and files opened) when this is called; a missing file, a shape
    mismatch or a bad PSF raises here, before the first batch.
    """
    preset = get_preset(preset)
    rebin = _check_rebin(rebin)
    chunk = _check_chunk(chunk)
    stack = contextlib.ExitStack()
    try:
        cube, ext = _main_input(images, "images", stack)
        N = cube.shape[0]
        planes = _planes(sigma, ivar, mask, ext, stack, cube)
        psrc = _PSFSource(psf, N, preset.psf_size, cube.name, stack)
        pos = None if psf_positions is None else _positions_array(psf_positions, N,
                                                                   "psf_positions")
        if psrc.kind == "psfex" and pos is None:
            raise GalnetPSFError(f"{psrc.name}: a PSFEx model needs each stamp's frame position "
                                 "(psf_positions)", "psf")
        ps, zp, meta = _scale_and_zeropoint(pixel_scale, zeropoint, cube.headers, preset,
                                            cube.name)
        id_arr = _ids(ids, N, cube.name)
    except BaseException:
        stack.close()
        raise
    meta.update(images=cube.name, psf=psrc.name, preset=preset.name,
                **{w: c.name for w, c in planes.items() if c is not None})
    _, H, W = cube.shape
    S = preset.stamp

    def gen() -> Iterator[StampBatch]:
        usable = 0
        with stack:
            for i0 in range(0, N, chunk):
                i1 = min(N, i0 + chunk)
                blk = _process(cube.read(i0, i1),
                               *(None if planes[w] is None else planes[w].read(i0, i1)
                                 for w in ("sigma", "ivar", "mask")),
                               None, S=S, rebin=rebin, preset=preset)
                psfs, bad = psrc.block(i0, i1, blk.rebin, None if pos is None else pos[i0:i1])
                blk.flags[bad] |= Flag.BAD_PSF
                usable += int((~blk.mask.all(axis=(1, 2))).sum())
                cx = np.full(i1 - i0, (W - 1) / 2.0)  # the input stamp's centre
                cy = np.full(i1 - i0, (H - 1) / 2.0)
                if usable == 0 and i1 == N:
                    _raise_empty(cube.name, N)
                yield StampBatch(blk.images, blk.sigma, blk.mask, psfs, blk.flags,
                                 id_arr[i0:i1], blk.rebin, blk.x0, blk.y0, cx, cy, blk.sky_rms,
                                 ps, zp, dict(meta))

    return StampIterator(gen(), N, chunk, stack)


class StampIterator:
    """Iterator over the :class:`StampBatch` es of an input; ``len()`` is the number of stamps
    (not batches), ``n_batches`` the number of batches. The input files stay open until it is
    exhausted or closed (:meth:`close`, or use it as a context manager)."""

    def __init__(self, gen: Iterator[StampBatch], n: int, chunk: int,
                 stack: contextlib.ExitStack):
        self._gen = gen
        self._stack = stack
        self.n = n
        self.n_batches = -(-n // chunk)

    def __enter__(self) -> StampIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> StampIterator:
        return self

    def __next__(self) -> StampBatch:
        return next(self._gen)

    def __len__(self) -> int:
        return self.n

    def close(self) -> None:
        """Stop early and close the input files."""
        self._gen.close()
        self._stack.close()


def _collect(it: StampIterator) -> StampBatch:
    """All batches of ``it`` in one :class:`StampBatch`, filled into preallocated arrays (peak
    memory: the result plus one chunk)."""
    first = next(it)
    if len(first) == it.n:
        for _ in it:  # runs the end-of-input checks
            pass
        return first
    out = {name: np.empty((it.n, *getattr(first, name).shape[1:]),
                          dtype=getattr(first, name).dtype) for name in StampBatch._PER_STAMP}
    i0 = 0
    for b in (first, *it):
        for name in StampBatch._PER_STAMP:
            out[name][i0:i0 + len(b)] = getattr(b, name)
        i0 += len(b)
    return StampBatch(**out, pixel_scale=first.pixel_scale, zeropoint=first.zeropoint,
                      meta=first.meta, wcs=first.wcs)


def _raise_empty(name: str, n: int) -> None:
    if n == 1:
        raise GalnetValueError(f"{name}: the stamp has no finite, unmasked pixel", "images")
    raise GalnetValueError(f"{name}: none of the {n} stamps has a finite, unmasked pixel",
                           "images")


def load_stamps(images, psf, sigma=None, ivar=None, mask=None, *, pixel_scale: float | None = None,
                zeropoint: float | None = None, preset: str | Preset = "hsc-r", ids=None,
                psf_positions=None, rebin: str | int = "auto") -> StampBatch:
    """All stamps at once (see :func:`iter_stamps` for the parameters).

    Returns
    -------
    :class:`StampBatch` of N stamps.

    Raises
    ------
    GalnetFileError : a missing or unreadable file.
    GalnetPSFError : an even-sized, non-finite or non-positive-sum PSF; a PSF cube whose length
        is not N; a PSFEx model without psf_positions.
    GalnetValueError : shape mismatches, bad arguments, no usable pixel in any stamp.
    """
    it = iter_stamps(images, psf, sigma, ivar, mask, pixel_scale=pixel_scale,
                     zeropoint=zeropoint, preset=preset, ids=ids, psf_positions=psf_positions,
                     rebin=rebin, chunk=_LOAD_CHUNK)
    return _collect(it)


# ----------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------
def _column(t, names: tuple[str, ...]):
    lower = {c.lower(): c for c in t.colnames}
    for n in names:
        if n in lower:
            return t[lower[n]]
    return None


def _values(col, unit: str | None = None) -> np.ndarray:
    if hasattr(col, "unit") and col.unit is not None and unit is not None:
        try:
            return np.asarray(col.to_value(unit) if hasattr(col, "to_value")
                              else col.quantity.to_value(unit), dtype=np.float64)
        except Exception:  # noqa: BLE001 - dimensionless / odd units: take the numbers
            pass
    return np.asarray(getattr(col, "value", col), dtype=np.float64)


def _read_positions(positions, frame_name: str, wcs_headers) -> tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray, Any, str]:
    """(x, y, ids, celestial WCS or None, name) of a positions catalogue."""
    from astropy.table import Table

    if _is_pathlike(positions):
        name = str(positions)
        t = read_catalog(positions)
    elif isinstance(positions, Table):
        name, t = "positions", positions
    elif isinstance(positions, Mapping):
        name, t = "positions", Table({k: np.atleast_1d(v) for k, v in positions.items()})
    else:
        name = "positions"
        a = np.asarray(positions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 2:
            raise GalnetValueError(f"positions: expected a table or an (N, 2) array of x, y, got "
                                   f"shape {a.shape}", "positions")
        t = Table({"x": a[:, 0], "y": a[:, 1]})
    if len(t) == 0:
        raise GalnetValueError(f"{name}: no positions", "positions")
    xc, yc = _column(t, ("x",)), _column(t, ("y",))
    wcs = None
    for h in wcs_headers:
        wcs = _celestial_wcs(h)
        if wcs is not None:
            break
    if xc is not None and yc is not None:
        x, y = _values(xc, "pix"), _values(yc, "pix")
    else:
        rc, dc = _column(t, ("ra",)), _column(t, ("dec",))
        if rc is None or dc is None:
            raise GalnetValueError(f"{name}: needs columns x, y (0-based pixels) or ra, dec "
                                   f"(degrees); has {', '.join(t.colnames)}", "positions")
        if wcs is None:
            raise GalnetValueError(f"{frame_name}: no celestial WCS, cannot use ra/dec positions",
                                   "positions")
        x, y = wcs.all_world2pix(_values(rc, "deg"), _values(dc, "deg"), 0)
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        raise GalnetValueError(f"{name}: {int(bad.sum())} non-finite positions (first row "
                               f"{int(np.argmax(bad))})", "positions")
    idc = _column(t, ("id",))
    ids = np.arange(len(t), dtype=np.int64) if idc is None else np.asarray(idc)
    return x, y, ids, wcs, name


def _gather(data: np.ndarray, ixc: np.ndarray, iyc: np.ndarray, size: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """size x size windows of a 2-D array centred on integer pixels (ixc, iyc); returns (values
    (n, size, size) with outside pixels taken from the nearest edge, outside mask)."""
    H, W = data.shape
    off = np.arange(size) - (size - 1) // 2
    ix = ixc[:, None] + off
    iy = iyc[:, None] + off
    okx = (ix >= 0) & (ix < W)
    oky = (iy >= 0) & (iy < H)
    vals = np.asarray(data[np.clip(iy, 0, H - 1)[:, :, None], np.clip(ix, 0, W - 1)[:, None, :]])
    return vals, ~(oky[:, :, None] & okx[:, None, :])


def iter_frame(frame, positions, psf, sigma=None, ivar=None, mask=None, *,
               pixel_scale: float | None = None, zeropoint: float | None = None,
               preset: str | Preset = "hsc-r", size: int | None = None,
               rebin: str | int = "auto", chunk: int = 4096) -> StampIterator:
    """Cutouts of a frame around catalogue positions, ``chunk`` at a time.

    Parameters
    ----------
    frame : path of a FITS image (first image HDU; optional SIGMA / IVAR / MASK extensions) or a
        2-D array.
    positions : path of a catalogue (ECSV / FITS / CSV / Parquet), an astropy Table, a mapping or
        an (N, 2) array, with columns ``x, y`` (0-based frame pixels; preferred when both are
        present) or ``ra, dec`` (degrees; needs a celestial WCS in the frame header) and
        optionally ``id``.
    psf : as :func:`iter_stamps`; a cube must have one PSF per position; a PSFEx model is
        evaluated at each position.
    sigma, ivar, mask : frame-shaped paths or arrays [default: the frame file's extensions].
    size : cutout side (odd) [default: preset.stamp]; larger cutouts go through the rebinning
        rule, smaller ones are padded.
    Other parameters as :func:`iter_stamps`.

    The transform of each batch maps stamp pixels to *frame* pixels; pixels outside the frame are
    masked and flag EDGE (a position wholly outside the frame gives an all-masked stamp).
    """
    preset = get_preset(preset)
    rebin = _check_rebin(rebin)
    chunk = _check_chunk(chunk)
    S = preset.stamp
    size = S if size is None else size
    if (isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 3
            or size % 2 == 0):
        raise GalnetValueError(f"size must be an odd integer >= 3, got {size!r}", "size", size)
    stack = contextlib.ExitStack()
    try:
        cube, ext = _main_input(frame, "frame", stack)
        if not cube._two_d:
            raise GalnetValueError(f"{cube.name}: a frame must be a 2-D image, got shape "
                                   f"{cube.shape}", "frame")
        planes = _planes(sigma, ivar, mask, ext, stack, cube)
        x, y, ids, wcs, pos_name = _read_positions(positions, cube.name, cube.headers)
        N = x.size
        psrc = _PSFSource(psf, N, preset.psf_size, pos_name, stack)
        ps, zp, meta = _scale_and_zeropoint(pixel_scale, zeropoint, cube.headers, preset,
                                            cube.name)
        data = cube.plane()
        pdata = {w: None if c is None else c.plane() for w, c in planes.items()}
    except BaseException:
        stack.close()
        raise
    meta.update(frame=cube.name, positions=pos_name, psf=psrc.name, preset=preset.name,
                **{w: c.name for w, c in planes.items() if c is not None})
    ixc = np.ceil(x - 0.5).astype(np.int64)  # Cutout2D's centre pixel for an odd size
    iyc = np.ceil(y - 0.5).astype(np.int64)
    h = (size - 1) // 2

    def gen() -> Iterator[StampBatch]:
        usable = 0
        with stack:
            for i0 in range(0, N, chunk):
                i1 = min(N, i0 + chunk)
                sl = slice(i0, i1)
                cut, outside = _gather(data, ixc[sl], iyc[sl], size)
                extra = {w: None if a is None else _gather(a, ixc[sl], iyc[sl], size)[0]
                         for w, a in pdata.items()}
                blk = _process(cut, extra["sigma"], extra["ivar"], extra["mask"], outside,
                               S=S, rebin=rebin, preset=preset)
                blk.flags[outside.any(axis=(1, 2))] |= Flag.EDGE
                p = np.stack([x[sl], y[sl]], axis=1)
                psfs, bad = psrc.block(i0, i1, blk.rebin, p)
                blk.flags[bad] |= Flag.BAD_PSF
                usable += int((~blk.mask.all(axis=(1, 2))).sum())
                if usable == 0 and i1 == N:
                    raise GalnetValueError(f"{pos_name}: none of the {N} cutouts of {cube.name} "
                                           "has a finite, unmasked pixel", "positions")
                yield StampBatch(blk.images, blk.sigma, blk.mask, psfs, blk.flags, ids[sl],
                                 blk.rebin, blk.x0 + (ixc[sl] - h), blk.y0 + (iyc[sl] - h),
                                 x[sl].copy(), y[sl].copy(), blk.sky_rms, ps, zp, dict(meta),
                                 wcs)

    return StampIterator(gen(), N, chunk, stack)


def load_frame(frame, positions, psf, sigma=None, ivar=None, mask=None, *,
               pixel_scale: float | None = None, zeropoint: float | None = None,
               preset: str | Preset = "hsc-r", size: int | None = None,
               rebin: str | int = "auto") -> StampBatch:
    """All cutouts at once (see :func:`iter_frame`). Raises as :func:`load_stamps`, and
    GalnetValueError ``"IMAGE.fits: no celestial WCS, cannot use ra/dec positions"``."""
    it = iter_frame(frame, positions, psf, sigma, ivar, mask, pixel_scale=pixel_scale,
                    zeropoint=zeropoint, preset=preset, size=size, rebin=rebin,
                    chunk=_LOAD_CHUNK)
    return _collect(it)


# ----------------------------------------------------------------------------------------------
# Coordinates
# ----------------------------------------------------------------------------------------------
def _transform(transform) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None, Any]:
    if isinstance(transform, StampBatch):
        return (transform.rebin, transform.x0, transform.y0, transform.pixel_scale,
                transform.wcs)
    try:
        k = np.asarray(transform["rebin"], dtype=np.float64)
        x0 = np.asarray(transform["x0"], dtype=np.float64)
        y0 = np.asarray(transform["y0"], dtype=np.float64)
    except (KeyError, TypeError) as err:
        raise GalnetValueError("transform must be a StampBatch or a mapping with rebin, x0, y0",
                               "transform") from err
    return k, x0, y0, transform.get("pixel_scale"), transform.get("wcs")


def _plain(v) -> np.ndarray:
    return np.asarray(getattr(v, "value", v), dtype=np.float64)


def to_input_coords(params, transform) -> dict[str, np.ndarray]:
    """Map stamp-pixel catalogue columns back to input (stamp or frame) pixels.

    ``x_in = x0 + k x + (k - 1)/2`` (same for y), ``re_pix_in = k re_pix``, errors ``* k``;
    ``re_arcsec`` (and ``_err``) = ``re_pix_in * pixel_scale`` when the pixel scale is known;
    ``ra``, ``dec`` (degrees) from the frame WCS when there is one.

    Parameters
    ----------
    params : mapping or astropy Table with any of x, y, re_pix, x_err, y_err, re_pix_err
        (stamp pixels; Quantity columns are taken in their numbers).
    transform : a :class:`StampBatch`, or a mapping with ``rebin``, ``x0``, ``y0`` (and
        optionally ``pixel_scale``, ``wcs``).

    Returns
    -------
    dict of float64 arrays for the keys present (plus re_arcsec, ra, dec as above).
    """
    k, x0, y0, ps, wcs = _transform(transform)
    names = getattr(params, "colnames", None) or list(params.keys())
    out: dict[str, np.ndarray] = {}
    for key, off in (("x", x0), ("y", y0)):
        if key in names:
            out[key] = off + k * _plain(params[key]) + (k - 1) / 2.0
    for key in ("re_pix", "x_err", "y_err", "re_pix_err"):
        if key in names:
            out[key] = k * _plain(params[key])
    if ps is not None:
        for key in ("re_pix", "re_pix_err"):
            if key in out:
                out[key.replace("pix", "arcsec")] = out[key] * ps
    if wcs is not None and "x" in out and "y" in out:
        ra, dec = wcs.all_pix2world(out["x"], out["y"], 0)
        out["ra"], out["dec"] = np.asarray(ra, np.float64), np.asarray(dec, np.float64)
    return out


def to_stamp_coords(x_in, y_in, transform) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_input_coords` for positions: ``x = (x_in - x0 - (k-1)/2) / k``."""
    k, x0, y0, _, _ = _transform(transform)
    return ((_plain(x_in) - x0 - (k - 1) / 2.0) / k, (_plain(y_in) - y0 - (k - 1) / 2.0) / k)


# ----------------------------------------------------------------------------------------------
# Catalogues
# ----------------------------------------------------------------------------------------------
def _catalog_format(path, read: bool = False) -> str:
    suffix = Path(path).suffix.lower()
    formats = {**CATALOG_FORMATS, ".csv": "ascii.csv"} if read else CATALOG_FORMATS
    if suffix not in formats:
        known = ", ".join(sorted(formats))
        raise GalnetValueError(f"{path}: unknown catalogue format {suffix!r} (use {known})",
                               "path", suffix)
    return formats[suffix]


def catalog_format(path) -> str:
    """The astropy format name of a catalogue path from its suffix (``.ecsv``, ``.fits`` /
    ``.fit``, ``.parquet``); GalnetValueError naming the path for any other suffix (check an
    output path before any work)."""
    return _catalog_format(path)


def write_catalog(table, path) -> Path:
    """Write a catalogue atomically (temporary file in the same directory, then ``os.replace``),
    format from the suffix: ``.ecsv``, ``.fits`` / ``.fit``, ``.parquet``. Units and table meta
    are kept; an existing file is overwritten. Returns the path."""
    from astropy.table import QTable, Table

    fmt = _catalog_format(path)
    p = Path(path)
    if not isinstance(table, Table):
        table = QTable(table)
    if not p.parent.is_dir():
        raise GalnetFileError(f"{path}: directory {str(p.parent)!r} does not exist")
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy: meta keys too long for FITS headers, etc.
            table.write(tmp, format=fmt, overwrite=True)
        os.replace(tmp, p)
    except OSError as err:
        raise GalnetFileError(f"{path}: cannot write catalogue ({err.strerror or err})") from err
    except Exception as err:  # noqa: BLE001 - astropy/yaml/pyarrow serialisation errors
        raise GalnetFileError(f"{path}: cannot write catalogue ({type(err).__name__}: {err})"
                              ) from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def _read_parquet(path):
    """Parquet with pyarrow only (astropy's reader needs pandas): columns, units, meta."""
    import pyarrow.parquet as pq
    from astropy import units as u
    from astropy.table import QTable, meta

    t = pq.read_table(path)
    md = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
    info: dict[str, dict] = {}
    tmeta: dict = {}
    if "table_meta_yaml" in md:
        hdr = meta.get_header_from_yaml(md["table_meta_yaml"].split("\n"))
        info = {d["name"]: dict(d) for d in hdr.get("datatype", [])}
        tmeta = dict(hdr.get("meta", {}))
    for name, ser in tmeta.pop("__serialized_columns__", {}).items():  # Quantity columns
        if isinstance(ser, Mapping) and ser.get("unit") is not None and name in info:
            info[name]["unit"] = str(ser["unit"])
    out = QTable(meta=tmeta)
    for name in t.column_names:
        col = t.column(name)
        try:
            values = col.to_numpy()
        except Exception:  # noqa: BLE001 - nested types: python lists
            values = np.asarray(col.to_pylist(), dtype=object)
        if values.dtype == object and all(isinstance(v, str) for v in values):
            values = values.astype(str)
        unit = info.get(name, {}).get("unit")
        out[name] = values * u.Unit(unit) if unit else values
        if "description" in info.get(name, {}):
            out[name].info.description = info[name]["description"]
    return out


def read_catalog(path):
    """Read a catalogue (``.ecsv``, ``.fits`` / ``.fit``, ``.parquet``, ``.csv``) as an astropy
    QTable with its units."""
    from astropy.table import QTable

    fmt = _catalog_format(path, read=True)
    _check_file(path, "catalogue")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "parquet":
                return _read_parquet(path)
            if fmt == "fits":
                return QTable.read(path, format=fmt, character_as_bytes=False)
            return QTable.read(path, format=fmt)
    except (OSError, ValueError, KeyError) as err:
        raise GalnetFileError(f"{path}: cannot read catalogue ({err})") from err
