"""FITS inputs: opening files with one-line errors, choosing HDUs, lazy cubes, header numbers.

- :func:`open_fits` opens a file memory-mapped and checks it whole (every header readable, no HDU
  cut short): a missing, empty, non-FITS or truncated file is a one-line
  :class:`~galnet.errors.GalnetFileError` naming the file, never an astropy traceback.
- The data of a stamps or frame file is its first image HDU with data (:func:`first_image_hdu`);
  ``SIGMA`` (1-sigma noise), ``IVAR`` (inverse variance) and ``MASK`` (nonzero = pixel ignored,
  the astropy convention) are image extensions of that name (:data:`EXTNAMES`), or separate
  files/arrays of the same shape (an explicit argument wins over an extension:
  :func:`input_planes`).
- :class:`Cube`: a lazily read stack of 2-D planes ``(N, H, W)`` from an HDU or an array.
- Pixel scale and zeropoint (:func:`scale_and_zeropoint`): the argument, else the FITS header
  (:data:`PIXSCALE_KEYS`, else a celestial WCS: ``sqrt(|det CD|)``; :data:`ZEROPOINT_KEYS`; image
  HDU then primary header), else the preset; the returned meta says which
  (``pixel_scale_source``, ``zeropoint_source``).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.presets import Preset

__all__ = [
    "PIXSCALE_KEYS", "ZEROPOINT_KEYS", "ZEROPOINT_RANGE", "EXTNAMES", "is_pathlike",
    "check_file", "open_fits",
    "check_complete", "hdu_name", "image_hdus", "first_image_hdu", "named_hdu", "Cube",
    "cube_from_hdu", "cube_from_array", "plane_input", "input_planes", "main_input",
    "header_number", "celestial_wcs", "wcs_scale", "scale_and_zeropoint", "check_same_shape",
]

#: Header keywords read for the pixel scale (arcsec/pixel), in order.
PIXSCALE_KEYS: tuple[str, ...] = ("PIXSCALE", "PIXSCAL1")
#: Header keywords read for the zeropoint (AB mag of one image unit), in order.
ZEROPOINT_KEYS: tuple[str, ...] = ("MAGZERO", "MAGZP", "ZEROPNT", "ZP", "MAGZPT")
#: Zeropoints accepted (AB mag of one image unit): counts ~20-35, nanomaggies 22.5, Jy 8.9,
#: erg/s/cm^2/Hz -48.6. Anything else is a typo (e.g. 1e30).
ZEROPOINT_RANGE: tuple[float, float] = (-100.0, 100.0)
#: Extension names of the noise and mask planes in a stamps or frame file.
EXTNAMES: tuple[str, ...] = ("SIGMA", "IVAR", "MASK")


def is_pathlike(obj) -> bool:
    """Whether ``obj`` names a file (str or os.PathLike)."""
    return isinstance(obj, str | os.PathLike)


def check_file(path, what: str) -> Path:
    """``path`` as a Path; GalnetFileError ``"PATH: no such file (WHAT)"`` if it is not a file
    (``"PATH: is a directory, not a file (WHAT)"`` for a folder)."""
    p = Path(path)
    if p.is_dir():
        raise GalnetFileError(f"{path}: is a directory, not a file ({what})")
    if not p.is_file():
        raise GalnetFileError(f"{path}: no such file ({what})")
    return p


def _one_line(err) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def check_complete(hdul, path) -> None:
    """GalnetFileError if any HDU of ``hdul`` (opened from ``path``) is cut short by the end of
    the file: a truncated download or copy. The data of an HDU takes
    ``|BITPIX|/8 * GCOUNT * (PCOUNT + NAXIS1 * ... * NAXISn)`` bytes after its header."""
    from astropy.io import fits

    size = Path(path).stat().st_size
    for i, hdu in enumerate(hdul):
        info = hdul.fileinfo(i)
        if info is None:
            continue
        if getattr(info.get("file"), "compression", None):  # .gz/.bz2: sizes are not on disk
            _read_compressed(hdu, path, i)
            continue
        if isinstance(hdu, fits.CompImageHDU):  # stored as a table: its padded span on disk
            need = info["datLoc"] + max(0, info["datSpan"] - 2879)
        else:
            h = hdu.header
            n = int(h.get("NAXIS", 0))
            count = math.prod(int(h.get(f"NAXIS{j}", 0)) for j in range(1, n + 1)) if n else 0
            need = info["datLoc"] + abs(int(h.get("BITPIX", 8))) // 8 * int(
                h.get("GCOUNT", 1)) * (int(h.get("PCOUNT", 0)) + count)
        if need > size:
            raise GalnetFileError(f"{path}: truncated FITS file (HDU {i} needs {need} bytes, "
                                  f"the file has {size})")


def _read_compressed(hdu, path, i: int) -> None:
    """Read the data of HDU ``i`` of a gzip/bzip2 file: a cut stream fails here, not later."""
    try:
        _ = hdu.data
    except (OSError, EOFError, ValueError, TypeError) as err:
        raise GalnetFileError(f"{path}: truncated or corrupt compressed FITS file (HDU {i}: "
                              f"{_one_line(err)})") from None


def open_fits(path, what: str, stack: contextlib.ExitStack | None = None):
    """Open a FITS file memory-mapped, every HDU read and checked (:func:`check_complete`);
    closed by ``stack`` (else the caller closes it). One-line GalnetFileError naming the file for
    a missing, empty, non-FITS, corrupt or truncated file."""
    from astropy.io import fits

    p = check_file(path, what)
    if p.stat().st_size == 0:
        raise GalnetFileError(f"{path}: empty file ({what})")
    hdul = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(p, memmap=True)
            hdul.readall()
        for w in caught:
            msg = str(w.message)
            if "truncated" in msg or "Error validating header" in msg:
                raise GalnetFileError(f"{path}: truncated or corrupt FITS file "
                                      f"({_one_line(msg)})")
        check_complete(hdul, p)
    except GalnetFileError:
        if hdul is not None:
            hdul.close()
        raise
    except Exception as err:  # noqa: BLE001 - astropy raises OSError, ValueError, TypeError...
        if hdul is not None:
            hdul.close()
        raise GalnetFileError(f"{path}: not a readable FITS file ({_one_line(err)})") from err
    if stack is not None:
        stack.callback(hdul.close)
    return hdul


def hdu_name(hdu) -> str:
    return str(hdu.header.get("EXTNAME", hdu.name or "")).strip().upper()


def image_hdus(hdul) -> list:
    return [h for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2
            and all(h.header.get(f"NAXIS{i}", 0) > 0 for i in range(1, h.header["NAXIS"] + 1))]


def first_image_hdu(hdul, path, skip: tuple[str, ...] = EXTNAMES):
    for h in image_hdus(hdul):
        if hdu_name(h) not in skip:
            return h
    raise GalnetFileError(f"{path}: no image HDU with data")


def named_hdu(hdul, name: str):
    for h in image_hdus(hdul):
        if hdu_name(h) == name:
            return h
    return None


class Cube:
    """A lazily read stack of 2-D planes ``(N, H, W)`` (a 2-D input is one plane)."""

    def __init__(self, name: str, shape: tuple[int, ...], reader, header=None, primary=None):
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise GalnetValueError(
                f"{name}: expected a 2-D image or an (N, H, W) cube, got shape {tuple(shape)}",
                name)
        self.two_d = len(shape) == 2
        shape = (1, *shape) if self.two_d else shape
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self._reader = reader
        self.headers = [h for h in (header, primary) if h is not None]

    def read(self, i0: int, i1: int) -> np.ndarray:
        a = self._reader(None if self.two_d else slice(i0, i1))
        return a[None] if self.two_d else a

    def plane(self) -> np.ndarray:
        """The whole 2-D image (frames)."""
        return self._reader(None)


def cube_from_hdu(hdu, name: str, primary=None) -> Cube:
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
    return Cube(name, shape, reader, hdu.header, primary)


def cube_from_array(arr, name: str) -> Cube:
    try:
        a = np.asarray(arr)
    except (TypeError, ValueError) as err:
        raise GalnetValueError(f"{name}: not a numeric array ({err})", name) from err
    if a.dtype.kind not in "biuf":
        raise GalnetValueError(f"{name}: not a numeric array (dtype {a.dtype})", name)
    return Cube(name, a.shape, lambda sl: a if sl is None else a[sl])


def plane_input(obj, what: str, stack, ext_source=None) -> Cube | None:
    """A sigma/ivar/mask input: explicit array/path, else the extension ``what`` of the main
    file (``ext_source`` = (hdul, path))."""
    if obj is None:
        if ext_source is None:
            return None
        hdul, path = ext_source
        hdu = named_hdu(hdul, what.upper())
        return None if hdu is None else cube_from_hdu(hdu, f"{path}[{what.upper()}]")
    if is_pathlike(obj):
        hdul = open_fits(obj, what, stack)
        hdu = named_hdu(hdul, what.upper())
        if hdu is None:
            hdu = first_image_hdu(hdul, obj, skip=())
        return cube_from_hdu(hdu, str(obj))
    return cube_from_array(obj, what)


def input_planes(sigma, ivar, mask, ext, stack, ref: Cube) -> dict[str, Cube | None]:
    """sigma / ivar / mask inputs, checked against the shape of ``ref``. Without an explicit
    sigma or ivar the SIGMA extension is used, else the IVAR extension; without an explicit mask
    the MASK extension."""
    if sigma is not None and ivar is not None:
        raise GalnetValueError("give sigma or ivar, not both", "sigma")
    noise_ext = ext if sigma is None and ivar is None else None
    planes = {"sigma": plane_input(sigma, "sigma", stack, noise_ext),
              "ivar": plane_input(ivar, "ivar", stack, noise_ext),
              "mask": plane_input(mask, "mask", stack, ext)}
    if planes["sigma"] is not None and planes["ivar"] is not None:
        planes["ivar"] = None  # both extensions present: SIGMA wins
    for w, c in planes.items():
        check_same_shape(c, ref.shape, ref, w)
    return planes


def main_input(obj, what: str, stack) -> tuple[Cube, Any]:
    """The stamps or frame input and (hdul, path) for its extensions (None for arrays)."""
    if is_pathlike(obj):
        hdul = open_fits(obj, what, stack)
        hdu = first_image_hdu(hdul, obj)
        return cube_from_hdu(hdu, str(obj), hdul[0].header if hdu is not hdul[0] else None), (
            hdul, str(obj))
    return cube_from_array(obj, what), None


# ----------------------------------------------------------------------------------------------
# Pixel scale and zeropoint
# ----------------------------------------------------------------------------------------------
def header_number(headers, keys) -> tuple[float | None, str | None]:
    for h in headers:
        for k in keys:
            v = h.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                return float(v), k
    return None, None


def celestial_wcs(header):
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = WCS(header)
    except Exception:  # noqa: BLE001 - any malformed WCS means "no usable WCS"
        return None
    return w.celestial if w.has_celestial else None


def wcs_scale(headers) -> float | None:
    for h in headers:
        w = celestial_wcs(h)
        if w is not None:
            try:
                det = abs(np.linalg.det(w.pixel_scale_matrix))
            except Exception:  # noqa: BLE001
                continue
            if np.isfinite(det) and det > 0:
                return float(np.sqrt(det) * 3600.0)
    return None


def _check_zeropoint(zp: float, what: str) -> float:
    lo, hi = ZEROPOINT_RANGE
    if not lo <= zp <= hi:
        raise GalnetValueError(f"{what} must be an AB magnitude in [{lo:g}, {hi:g}] (of one image "
                               f"unit), got {zp!r}", "zeropoint", zp)
    return zp


def scale_and_zeropoint(pixel_scale, zeropoint, headers, preset: Preset, name: str
                        ) -> tuple[float, float, dict]:
    """(pixel scale arcsec/pixel, zeropoint AB mag, meta) from the arguments, else the headers
    (:data:`PIXSCALE_KEYS` / a celestial WCS, :data:`ZEROPOINT_KEYS`), else ``preset``.

    ``meta['pixel_scale_source']`` / ``meta['zeropoint_source']``: ``"argument"``,
    ``"NAME header KEY"``, ``"NAME WCS"`` or ``"preset PRESET"`` (a preset default: callers
    warn). GalnetValueError for a non-positive pixel scale or a zeropoint (argument or header)
    outside :data:`ZEROPOINT_RANGE`."""
    meta = {}
    default = f"preset {preset.name}"
    if pixel_scale is not None:
        if not (isinstance(pixel_scale, int | float | np.floating) and np.isfinite(pixel_scale)
                and pixel_scale > 0):
            raise GalnetValueError(f"pixel_scale must be a finite number > 0, got {pixel_scale!r}",
                                   "pixel_scale", pixel_scale)
        ps, meta["pixel_scale_source"] = float(pixel_scale), "argument"
    else:
        ps, key = header_number(headers, PIXSCALE_KEYS)
        if ps is not None and ps > 0:
            meta["pixel_scale_source"] = f"{name} header {key}"
        else:
            ps = wcs_scale(headers)
            if ps is not None:
                meta["pixel_scale_source"] = f"{name} WCS"
            else:
                ps, meta["pixel_scale_source"] = preset.pixel_scale, default
    if zeropoint is not None:
        if not (isinstance(zeropoint, int | float | np.floating) and np.isfinite(zeropoint)):
            raise GalnetValueError(f"zeropoint must be a finite number, got {zeropoint!r}",
                                   "zeropoint", zeropoint)
        zp, meta["zeropoint_source"] = _check_zeropoint(float(zeropoint), "zeropoint"), "argument"
    else:
        zp, key = header_number(headers, ZEROPOINT_KEYS)
        if zp is not None:
            _check_zeropoint(zp, f"{name} header {key}")
            meta["zeropoint_source"] = f"{name} header {key}"
        else:
            zp, meta["zeropoint_source"] = preset.zeropoint, default
    return ps, zp, meta


def check_same_shape(c: Cube | None, shape, ref: Cube, what: str) -> None:
    """GalnetValueError naming both inputs when ``c`` (if given) does not have ``shape``."""
    if c is not None and c.shape != tuple(shape):
        raise GalnetValueError(
            f"{c.name}: {what} shape {c.shape} does not match {ref.name}'s {tuple(shape)}", what)
