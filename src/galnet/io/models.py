"""Model and residual images (``--save-models``): ONE multi-extension FITS file, written atomically.

Layout of the file:

- primary HDU: no data; ``GNMETA`` = the run's meta as JSON (e.g. :func:`galnet.io.catalog.
  provenance`), ``NOBJ`` = number of objects.
- ``MODEL``: float32 cube ``(N, S, S)``, the PSF-convolved model of each stamp (image units, the
  output stamp pixels: rebinned stamps are at their rebinned pixels).
- ``RESIDUAL``: float32 cube ``(N, S, S)``, stamp - model, NaN at masked pixels.
- ``OBJECTS``: binary table, one row per plane in the same order: ``id``, ``x0``, ``y0``
  (input/frame pixel offsets of the stamp), ``rebin`` (k), ``input_x``, ``input_y``; stamp pixel
  ``(x, y)`` is input pixel ``(x0 + k x + (k - 1)/2, y0 + k y + (k - 1)/2)``
  (:mod:`galnet.io.batch`). When the input had a celestial WCS, the table header carries that
  WCS (linear part and PV distortion; SIP is not carried) and the columns ``CRPIX1``,
  ``CRPIX2``, ``CDELT1``, ``CDELT2`` give each stamp's own WCS (:func:`object_wcs`).

Nothing appears under the final name until every plane is written (:func:`galnet.io.files.
atomic_write`): an exception or Ctrl-C inside a ``with ModelWriter(...)`` block, or during the
write, leaves no file and no temporary file. Planes are kept in memory until :meth:`ModelWriter.
close` (2 x N x S x S x 4 bytes: 30 MB per 1000 stamps of 61 x 61).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.files import atomic_write, check_writable, jsonable

__all__ = ["ModelWriter", "write_models", "read_models", "object_wcs"]

#: Per-object WCS keywords (columns of OBJECTS); the rest of the WCS is in the OBJECTS header.
_OBJECT_WCS = ("CRPIX1", "CRPIX2", "CDELT1", "CDELT2")


def _object_wcs_columns(wcs, x0, y0, k) -> dict[str, np.ndarray]:
    """CRPIXi, CDELTi of each stamp's WCS (FITS 1-based pixels): the stamp pixel X (0-based) is
    input pixel ``x0 + k X + (k - 1)/2``, so ``CRPIX' = (CRPIX - 1 - x0 - (k - 1)/2) / k + 1``
    and ``CDELT' = k CDELT``."""
    hdr = _wcs_header(wcs)
    return {"CRPIX1": (hdr["CRPIX1"] - 1 - x0 - (k - 1) / 2) / k + 1,
            "CRPIX2": (hdr["CRPIX2"] - 1 - y0 - (k - 1) / 2) / k + 1,
            "CDELT1": hdr.get("CDELT1", 1.0) * k, "CDELT2": hdr.get("CDELT2", 1.0) * k}


def _wcs_header(wcs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SIP dropped, non-standard keywords...
        return wcs.to_header()


class ModelWriter:
    """Collect model/residual planes chunk by chunk; :meth:`close` writes the file atomically.

    Parameters
    ----------
    path : output FITS file; checked at once (:func:`galnet.io.files.check_writable`).
    overwrite : replace an existing file [default: refuse, "PATH exists (use --overwrite)"].
    meta : JSON-ready run meta for the primary header (``GNMETA``).

    Use as a context manager: leaving the block normally writes the file, an exception (or
    Ctrl-C) discards everything.
    """

    def __init__(self, path, *, overwrite: bool = False, meta: dict | None = None):
        self.path = check_writable(path, overwrite=overwrite)
        self.meta = dict(meta or {})
        self._models: list[np.ndarray] = []
        self._resid: list[np.ndarray] = []
        self._cols: dict[str, list[np.ndarray]] = {}
        self._wcs = None
        self._closed = False

    def __enter__(self) -> ModelWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __len__(self) -> int:
        return sum(len(m) for m in self._models)

    def add(self, batch, models, residuals=None, start: int = 0) -> None:
        """Add the models of stamps ``start : start + len(models)`` of a StampBatch ``batch``.

        ``models`` (n, S, S) image units; ``residuals`` [default: ``batch.images - models``];
        residuals are NaN where ``batch.mask`` is set."""
        if self._closed:
            raise GalnetValueError(f"{self.path}: model writer already closed", "models")
        models = np.asarray(models, dtype=np.float32)
        n = len(models)
        sl = slice(start, start + n)
        images = np.asarray(batch.images[sl])
        if models.ndim != 3 or models.shape != images.shape:
            raise GalnetValueError(f"models: expected shape {images.shape}, got {models.shape}",
                                   "models")
        res = images - models if residuals is None else np.asarray(residuals)
        res = np.where(np.asarray(batch.mask[sl]), np.nan, res).astype(np.float32)
        self._models.append(models)
        self._resid.append(res)
        k = np.asarray(batch.rebin[sl], dtype=np.int64)
        x0 = np.asarray(batch.x0[sl], dtype=np.float64)
        y0 = np.asarray(batch.y0[sl], dtype=np.float64)
        cols = {"id": np.asarray(batch.ids[sl]), "x0": x0, "y0": y0, "rebin": k,
                "input_x": np.asarray(batch.input_x[sl], dtype=np.float64),
                "input_y": np.asarray(batch.input_y[sl], dtype=np.float64)}
        wcs = getattr(batch, "wcs", None)
        if wcs is not None:
            self._wcs = wcs if self._wcs is None else self._wcs
            cols.update(_object_wcs_columns(wcs, x0, y0, k.astype(np.float64)))
        for name, v in cols.items():
            self._cols.setdefault(name, []).append(v)

    def _hdul(self):
        from astropy.io import fits
        from astropy.table import Table

        n = len(self)
        if not n:
            raise GalnetValueError(f"{self.path}: no models to write", "models")
        if any(len(v) != len(self._models) for v in self._cols.values()):
            raise GalnetValueError(f"{self.path}: some stamps have a WCS and others not", "wcs")
        prim = fits.PrimaryHDU()
        prim.header["NOBJ"] = (n, "number of objects (planes of MODEL, RESIDUAL)")
        if self.meta:
            prim.header["GNMETA"] = (json.dumps(jsonable(self.meta), separators=(",", ":")),
                                     "galnet run meta (JSON)")
        model = fits.ImageHDU(np.concatenate(self._models), name="MODEL")
        model.header["COMMENT"] = "PSF-convolved model of each stamp (image units)"
        resid = fits.ImageHDU(np.concatenate(self._resid), name="RESIDUAL")
        resid.header["COMMENT"] = "stamp - model; NaN at masked pixels"
        objects = fits.table_to_hdu(Table({k: np.concatenate(v) for k, v in self._cols.items()}))
        objects.name = "OBJECTS"
        objects.header["COMMENT"] = "stamp pixel x -> input pixel x0 + rebin * x + (rebin - 1)/2"
        if self._wcs is not None:
            for card in _wcs_header(self._wcs).cards:
                if card.keyword not in _OBJECT_WCS:
                    objects.header.append(card)
        return fits.HDUList([prim, model, resid, objects])

    def close(self) -> Path | None:
        """Write the file (atomically) and return its path; nothing is written for no models."""
        if self._closed:
            return self.path
        try:
            if not self._models:
                return None
            hdul = self._hdul()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # long comments, HIERARCH cards
                atomic_write(self.path, lambda tmp: hdul.writeto(tmp, overwrite=True))
            return self.path
        finally:
            self._closed = True
            self._models, self._resid, self._cols = [], [], {}

    def abort(self) -> None:
        """Discard everything; nothing is written."""
        self._closed = True
        self._models, self._resid, self._cols = [], [], {}


def write_models(path, batch, models, residuals=None, *, overwrite: bool = False,
                 meta: dict | None = None) -> Path:
    """Write the models of every stamp of ``batch`` in one go (see :class:`ModelWriter`)."""
    w = ModelWriter(path, overwrite=overwrite, meta=meta)
    with w:
        w.add(batch, models, residuals)
    return w.path


def read_models(path):
    """(models (N, S, S), residuals (N, S, S), OBJECTS QTable with the header WCS in its meta,
    run meta dict) of a models file. One-line GalnetFileError naming the file if it is not one."""
    from astropy.table import QTable

    from galnet.io.fits import open_fits

    hdul = open_fits(path, "models")
    try:
        names = [h.name for h in hdul]
        missing = [n for n in ("MODEL", "RESIDUAL", "OBJECTS") if n not in names]
        if missing:
            raise GalnetFileError(f"{path}: not a galnet models file (no {', '.join(missing)} "
                                  "extension)")
        models = np.array(hdul["MODEL"].data, dtype=np.float32)
        resid = np.array(hdul["RESIDUAL"].data, dtype=np.float32)
        objects = QTable(hdul["OBJECTS"].data)
        objects.meta.update({c.keyword: c.value for c in hdul["OBJECTS"].header.cards
                             if c.keyword and c.keyword not in ("COMMENT", "HISTORY", "")})
        raw = hdul[0].header.get("GNMETA")
        meta = json.loads(raw) if raw else {}
    finally:
        hdul.close()
    return models, resid, objects, meta


def object_wcs(objects, i: int):
    """The celestial WCS of object ``i``'s stamps (astropy WCS, stamp pixels) from the OBJECTS
    table of :func:`read_models`; None if the input had no WCS."""
    from astropy.io import fits
    from astropy.wcs import WCS

    if "CRPIX1" not in objects.colnames:
        return None
    hdr = fits.Header()
    skip = {"XTENSION", "BITPIX", "PCOUNT", "GCOUNT", "TFIELDS", "EXTNAME"}
    for key, value in objects.meta.items():
        if (key in skip or key.startswith(("NAXIS", "TTYPE", "TFORM", "TUNIT", "TDIM"))
                or isinstance(value, dict | list)):
            continue
        hdr[key] = value
    for key in _OBJECT_WCS:
        hdr[key] = float(objects[key][i])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WCS(hdr)
