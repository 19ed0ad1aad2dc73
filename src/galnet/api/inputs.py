"""Inputs of the public API as the stamp reader's arguments.

Turns what :func:`galnet.predict` / :func:`galnet.fit` accept -- numpy arrays of any byte order,
2-D stamps or ``(N, H, W)`` cubes, lists of 2-D arrays of different sizes, NDData / CCDData,
Cutout2D, a FITS file name -- into native-endian cubes plus sigma / ivar / mask planes and PSFs
for :func:`galnet.io.cutouts.iter_stamps` (see :mod:`galnet.api` for the rules). Checks the
shapes and the PSF and raises one-line errors naming the argument.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from galnet.errors import GalnetPSFError, GalnetValueError

__all__ = ["Item", "read_inputs", "groups", "describe", "add_positions"]


@dataclass
class Item:
    """One input (a stamp, or a cube of stamps) with what its container told us."""

    data: Any                       # (H, W) / (N, H, W) native-endian array, or a file name
    sigma: Any = None
    ivar: Any = None
    mask: Any = None
    psf: Any = None                 # per-element PSF (lists), else None
    pixel_scale: float | None = None
    pixel_scale_source: str | None = None
    zeropoint: float | None = None
    zeropoint_source: str | None = None
    wcs: Any = None                 # celestial WCS of the stamp (NDData / Cutout2D), else None
    origin: tuple[float, float] | None = None  # Cutout2D.origin_original (x, y)
    kind: str = "array"             # what it came in as, for the provenance
    dtype: str = ""                 # its dtype as given (before the byte-order change)


def _native(a, name: str, *, ndims=(2, 3), dtype_kinds="iuf") -> np.ndarray:
    """``a`` as a native-endian numpy array (a Quantity's unit and a masked array's mask
    dropped: see :func:`_array_item`), ndim and dtype checked."""
    if hasattr(a, "unit") and hasattr(a, "value"):  # astropy Quantity: strip the unit
        a = a.value
    if isinstance(a, np.ma.MaskedArray):
        a = a.data
    try:
        a = np.asarray(a)
    except (TypeError, ValueError) as err:
        raise GalnetValueError(f"{name}: not a numeric array ({err})", name) from err
    if a.dtype.kind not in dtype_kinds:
        raise GalnetValueError(f"{name}: not a numeric array (dtype {a.dtype})", name)
    if a.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise GalnetValueError(f"{name}: expected a {want} array, got shape {a.shape}", name)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def _dtype(a) -> str:
    return str(getattr(getattr(a, "dtype", None), "str", ""))


def _array_item(a, name: str) -> Item:
    """A plain array (or Quantity, or masked array: its mask is used) as an item."""
    item = Item(_native(a, name), dtype=_dtype(a))
    if isinstance(a, np.ma.MaskedArray) and np.ma.getmask(a) is not np.ma.nomask:
        item.mask = np.ma.getmaskarray(a)
    return item


def _header_number(meta, keys) -> tuple[float | None, str | None]:
    for k in keys:
        try:
            v = meta.get(k)
        except AttributeError:
            return None, None
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            return float(v), k
    return None, None


def _celestial(wcs):
    """The celestial FITS WCS of ``wcs`` (astropy WCS), else None."""
    if wcs is None or not getattr(wcs, "has_celestial", False):
        return None
    return wcs.celestial


def _wcs_scale(wcs) -> float | None:
    """arcsec per pixel of a celestial WCS: sqrt(|det CD|)."""
    if wcs is None:
        return None
    det = abs(float(np.linalg.det(wcs.pixel_scale_matrix)))
    return math.sqrt(det) * 3600.0 if math.isfinite(det) and det > 0 else None


def _from_nddata(obj, name: str) -> Item:
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    from galnet.io.fits import PIXSCALE_KEYS, ZEROPOINT_KEYS

    item = Item(_native(obj.data, name), kind=type(obj).__name__, dtype=_dtype(obj.data))
    unc = obj.uncertainty
    if unc is not None and unc.array is not None:
        arr = _native(unc.array, f"{name}.uncertainty")
        if isinstance(unc, StdDevUncertainty):
            item.sigma = arr
        elif isinstance(unc, InverseVariance):
            item.ivar = arr
        elif isinstance(unc, VarianceUncertainty):
            with np.errstate(invalid="ignore"):
                item.sigma = np.sqrt(arr)
        else:
            raise GalnetValueError(f"{name}: uncertainty {type(unc).__name__} is not supported "
                                   "(use StdDev, Variance or InverseVariance)", "uncertainty")
    if obj.mask is not None:
        item.mask = _native(obj.mask, f"{name}.mask", dtype_kinds="biuf")
    meta = obj.meta or {}
    wcs = _celestial(obj.wcs) if hasattr(obj.wcs, "has_celestial") else None
    item.wcs = wcs
    item.pixel_scale, key = _header_number(meta, PIXSCALE_KEYS)
    if item.pixel_scale is not None and item.pixel_scale > 0:
        item.pixel_scale_source = f"{name} meta {key}"
    else:
        item.pixel_scale = _wcs_scale(wcs)
        item.pixel_scale_source = None if item.pixel_scale is None else f"{name} WCS"
    item.zeropoint, key = _header_number(meta, ZEROPOINT_KEYS)
    item.zeropoint_source = None if key is None else f"{name} meta {key}"
    return item


def _unpack(obj, name: str, *, in_list: bool) -> Item:
    """One element of ``images``: an array, NDData/CCDData, Cutout2D or (alone) a file name."""
    from astropy.nddata import Cutout2D, NDData

    if isinstance(obj, str | os.PathLike):
        if in_list:
            raise GalnetValueError(f"{name}: file names cannot be mixed into a list of images "
                                   "(give one file name, or arrays)", "images")
        return Item(obj)
    if isinstance(obj, Cutout2D):
        item = Item(_native(obj.data, name, ndims=(2,)), kind="Cutout2D", dtype=_dtype(obj.data))
        item.origin = tuple(float(v) for v in obj.origin_original)
        item.wcs = _celestial(obj.wcs)
        item.pixel_scale = _wcs_scale(item.wcs)
        item.pixel_scale_source = None if item.pixel_scale is None else f"{name} WCS"
        return item
    if isinstance(obj, NDData):
        item = _from_nddata(obj, name)
    else:
        item = _array_item(obj, name)
    if in_list and item.data.ndim != 2:
        raise GalnetValueError(f"{name}: a list of images takes 2-D stamps, got shape "
                               f"{item.data.shape}", "images")
    return item


def _per_item(value, n: int, name: str, in_list: bool) -> list:
    """An explicit sigma/ivar/mask/psf argument split per element of a list of images."""
    if value is None:
        return [None] * n
    if not in_list:
        return [value]
    if isinstance(value, list | tuple):
        if len(value) != n:
            raise GalnetValueError(f"{name}: expected {n} elements (one per image), got "
                                   f"{len(value)}", name)
        return list(value)
    if name == "psf":
        return [None] * n  # one PSF for all: given to every group as is
    raise GalnetValueError(f"{name}: give a list of {n} arrays for a list of images", name)


def _check_psf(psf, n: int | None) -> Any:
    """A PSF argument: file names as they are; arrays (h, w) or (n, h, w), finite."""
    if psf is None:
        raise GalnetPSFError("psf: a PSF is required ((h, w) or (N, h, w) array, or a file)",
                             "psf")
    if isinstance(psf, str | os.PathLike) or type(psf).__name__ == "DES_PSFEx":
        return psf
    p = _native(psf, "psf")
    if not np.isfinite(p).all():
        raise GalnetPSFError(f"psf: contains non-finite values (shape {p.shape})", "psf")
    if p.ndim == 3 and n is not None and p.shape[0] != n:
        raise GalnetPSFError(f"psf: a cube of {p.shape[0]} PSFs for {n} stamps", "psf")
    return p


def _check_plane(a, ref: np.ndarray, name: str) -> np.ndarray | None:
    if a is None:
        return None
    a = _native(a, name, dtype_kinds="biuf" if name.startswith("mask") else "iuf")
    if a.shape != ref.shape:
        raise GalnetValueError(f"{name}: shape {a.shape} does not match the images' {ref.shape}",
                               name)
    return a


def read_inputs(images, psf, sigma, ivar, mask) -> tuple[list[Item], Any, bool]:
    """The inputs as items (explicit planes merged in), the shared PSF, and whether the input
    was a list."""
    in_list = isinstance(images, list | tuple)
    elements = list(images) if in_list else [images]
    if not elements:
        raise GalnetValueError("images: an empty list", "images")
    n = len(elements)
    items = [_unpack(obj, f"images[{i}]" if in_list else "images", in_list=in_list)
             for i, obj in enumerate(elements)]
    planes = {k: _per_item(v, n, k, in_list) for k, v in
              (("sigma", sigma), ("ivar", ivar), ("mask", mask))}
    psfs = _per_item(psf, n, "psf", in_list) if in_list else [None]
    shared_psf = None
    if in_list and isinstance(psf, list | tuple):
        for i, (it, p) in enumerate(zip(items, psfs, strict=True)):
            it.psf = _check_psf(p, None)
            if not isinstance(it.psf, np.ndarray) or it.psf.ndim != 2:
                raise GalnetPSFError(f"psf[{i}]: a list of PSFs takes 2-D arrays, got "
                                     f"{getattr(it.psf, 'shape', type(it.psf).__name__)}", "psf")
    else:
        n_stamps = None
        if not isinstance(items[0].data, str | os.PathLike):
            n_stamps = n if in_list else (1 if items[0].data.ndim == 2 else items[0].data.shape[0])
        shared_psf = _check_psf(psf, n_stamps)
    for i, it in enumerate(items):
        for k, vals in planes.items():
            v = vals[i]
            if v is None:
                continue
            if isinstance(it.data, str | os.PathLike):
                setattr(it, k, v)  # a file: io checks it
                continue
            name = f"{k}[{i}]" if in_list else k
            setattr(it, k, _check_plane(v, it.data, name))
            if k == "sigma":
                it.ivar = None  # an explicit sigma wins over an NDData InverseVariance
            if k == "ivar":
                it.sigma = None
    return items, shared_psf, in_list


def groups(items: list[Item], shared_psf, in_list: bool) -> list[tuple[np.ndarray, dict]]:
    """Items of the same kind (shape, planes, PSF, pixel scale, zeropoint) stacked into cubes:
    (rows, keyword arguments of the stamp reader)."""
    if not in_list:
        it = items[0]
        return [(None, dict(images=it.data, psf=shared_psf, sigma=it.sigma, ivar=it.ivar,
                            mask=it.mask))]
    keys: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        key = (it.data.shape, it.sigma is None, it.ivar is None, it.mask is None,
               None if it.psf is None else it.psf.shape, it.pixel_scale, it.zeropoint)
        keys.setdefault(key, []).append(i)
    out = []
    for rows in keys.values():
        sel = [items[i] for i in rows]

        def stack(attr, sel=sel):
            v = [getattr(s, attr) for s in sel]
            return None if v[0] is None else np.stack(v)

        psf = shared_psf
        if sel[0].psf is not None:
            psf = stack("psf")
        elif isinstance(shared_psf, np.ndarray) and shared_psf.ndim == 3:
            psf = shared_psf[rows]
        out.append((np.asarray(rows), dict(images=stack("data"), psf=psf, sigma=stack("sigma"),
                                           ivar=stack("ivar"), mask=stack("mask"))))
    return out


def describe(obj) -> str:
    """An input (an :class:`Item`, an array or a file name) as words for the provenance: the file
    name, or the kind, shape and dtype (as given) of an array."""
    if isinstance(obj, list | tuple):
        return f"list of {len(obj)}"
    if not isinstance(obj, Item):
        obj = Item(obj, dtype=_dtype(obj))
    if not isinstance(obj.data, np.ndarray) and not hasattr(obj.data, "shape"):
        return str(obj.data)
    where = "" if obj.origin is None else f" at origin {tuple(int(v) for v in obj.origin)}"
    dtype = obj.dtype or _dtype(obj.data)
    return f"{obj.kind} {tuple(obj.data.shape)} {dtype}{where}"


def add_positions(t, items: list[Item]) -> None:
    """``x_original, y_original`` (Cutout2D parent pixels) and ``ra, dec`` (celestial WCS) per
    row, where the inputs give them."""
    from astropy import units as u

    x = np.asarray(t["x"].to_value(u.pix))
    y = np.asarray(t["y"].to_value(u.pix))
    if any(it.origin is not None for it in items):
        ox = np.array([np.nan if it.origin is None else it.origin[0] for it in items])
        oy = np.array([np.nan if it.origin is None else it.origin[1] for it in items])
        t["x_original"] = (x + ox) * u.pix
        t["y_original"] = (y + oy) * u.pix
    if "ra" not in t.colnames and any(it.wcs is not None for it in items):
        ra = np.full(len(t), np.nan)
        dec = np.full(len(t), np.nan)
        for i, it in enumerate(items):
            if it.wcs is not None:
                ra[i], dec[i] = it.wcs.wcs_pix2world([[x[i], y[i]]], 0)[0]
        t["ra"] = ra * u.deg
        t["dec"] = dec * u.deg
