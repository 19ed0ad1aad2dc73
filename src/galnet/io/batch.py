"""The stamp batch: what the network and the fitter take, and its map back to the input pixels.

A :class:`StampBatch` holds N ``S x S`` stamps (``S = preset.stamp`` = 61), noise maps, masks and
``P x P`` unit-sum PSFs (``P = preset.psf_size`` = 25), the flags raised while reading them and
the transform of every stamp to its input (stamp or frame) pixels. The readers of
:mod:`galnet.io.cutouts` yield batches through a :class:`StampIterator`.

Geometry (pixel conventions of :mod:`galnet.conventions`: 0-based, pixel centres at integers)
---------------------------------------------------------------------------------------------
Each output stamp pixel ``(x, y)`` maps to input (stamp or frame) pixel coordinates by::

    x_in = x0 + k * x + (k - 1) / 2          y_in = y0 + k * y + (k - 1) / 2

``k`` (``StampBatch.rebin``) is the rebinning factor (1 .. 8), ``x0``, ``y0`` integers (the input
coordinate of the first input pixel of output pixel 0). Lengths scale by ``k``
(``re_in = k * re_pix``). :func:`to_input_coords` applies this to catalogue columns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from galnet.errors import GalnetValueError

__all__ = ["StampBatch", "StampIterator", "collect", "to_input_coords", "to_stamp_coords"]


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
    rebin : (N,) int64 rebinning factor k (1 .. 8).
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


def collect(it: StampIterator) -> StampBatch:
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
