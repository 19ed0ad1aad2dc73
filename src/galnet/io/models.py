"""Data, model, residual and mask of every fitted stamp (``--save-models``): ONE multi-extension
FITS file, written atomically.

Layout of the file (``GNMODELS = 2`` in the primary header):

- primary HDU: no data; ``GNMETA`` = the run's meta as JSON (e.g. :func:`galnet.io.catalog.
  provenance`), ``NOBJ`` = number of objects, ``NGROUP`` = number of stamp sizes.
- one set of image cubes per stamp size ``(ny, nx)`` ("group" g = 1, 2, ..., in order of first
  appearance), each cube of shape ``(n_g, ny, nx)`` with ``EXTVER = g``:

  - ``DATA``: float32, the pixels that were fitted (image units, the output stamp pixels:
    rebinned stamps are at their rebinned pixels; masked pixels as the stamp had them).
  - ``MODEL``: float32, the PSF-convolved model (for the frame pipeline: target + modelled
    neighbours; NaN for a stamp that was not fitted).
  - ``RESIDUAL``: float32, ``DATA - MODEL``, NaN at masked pixels.
  - ``MASK``: uint8, 1 = pixel ignored by the fit.
  - ``SIGMA`` (when the caller gave the noise): float32 1-sigma noise per pixel (NaN unknown).

- ``OBJECTS``: binary table, one row per object in the order they were added: ``id``, ``group``
  (EXTVER of its cubes), ``plane`` (index in them), ``ny``, ``nx``, ``x0``, ``y0`` (input/frame
  pixel offsets of the stamp), ``rebin`` (k), ``input_x``, ``input_y``; stamp pixel ``(x, y)``
  is input pixel ``(x0 + k x + (k - 1)/2, y0 + k y + (k - 1)/2)`` (:mod:`galnet.io.batch`). When
  the input had a celestial WCS, the table header carries that WCS (linear part and PV
  distortion; SIP is not carried) and the columns ``CRPIX1``, ``CRPIX2``, ``CDELT1``, ``CDELT2``
  give each stamp's own WCS (:func:`object_wcs`).

Files of the first layout (``MODEL``, ``RESIDUAL``, ``OBJECTS`` only, one stamp size) are still
read: their data is ``MODEL + RESIDUAL`` and their mask the NaN pixels of ``RESIDUAL``.

Nothing appears under the final name until every plane is written (:func:`galnet.io.files.
atomic_write`): an exception or Ctrl-C inside a ``with ModelWriter(...)`` block, or during the
write, leaves no file and no temporary file. Planes are kept in memory until :meth:`ModelWriter.
close` (about 4 x 4 x S x S bytes per object: 60 MB per 1000 stamps of 61 x 61).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.files import atomic_write, check_writable, jsonable

__all__ = ["ModelWriter", "ModelsFile", "ObjectPlanes", "write_models", "read_models",
           "object_wcs", "LAYOUT_VERSION"]

#: ``GNMODELS`` keyword of the primary header: the layout of the file.
LAYOUT_VERSION = 2
#: Per-object WCS keywords (columns of OBJECTS); the rest of the WCS is in the OBJECTS header.
_OBJECT_WCS = ("CRPIX1", "CRPIX2", "CDELT1", "CDELT2")
_COMMENTS = {"DATA": "pixels that were fitted (image units)",
             "MODEL": "PSF-convolved model of each stamp (image units)",
             "RESIDUAL": "DATA - MODEL; NaN at masked pixels",
             "MASK": "1 = pixel ignored by the fit",
             "SIGMA": "1-sigma noise per pixel (image units; NaN unknown)"}


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


def _planes(a, what: str, n: int, dtype) -> list[np.ndarray]:
    """``n`` 2-D planes of a (n, ny, nx) array or a sequence of 2-D arrays (sizes may differ)."""
    planes = [np.asarray(p, dtype=dtype) for p in a]
    if len(planes) != n or any(p.ndim != 2 for p in planes):
        raise GalnetValueError(f"{what}: expected {n} 2-D planes", what)
    return planes


class ModelWriter:
    """Collect data/model/mask planes chunk by chunk; :meth:`close` writes the file atomically.

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
        self._planes: list[tuple] = []  # (data, model, mask, sigma or None) per object
        self._cols: dict[str, list[np.ndarray]] = {}
        self._with_wcs: list[bool] = []
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
        return len(self._planes)

    def add(self, stamps, models, start: int = 0, *, data=None, mask=None, sigma=None) -> None:
        """Add the models of stamps ``start : start + len(models)`` of a StampBatch ``stamps``.

        ``models`` (n, S, S) image units (NaN for stamps not fitted). ``data``, ``mask``,
        ``sigma`` [default: ``stamps.images``, ``stamps.mask``, ``stamps.sigma``]: the pixels,
        mask (True = ignored) and noise the fit used, either for the same n stamps as ``models``
        or for the whole batch (then sliced like it)."""
        models = np.asarray(models, dtype=np.float32)
        n = len(models)
        sl = slice(start, start + n)

        def pick(a, default):
            if a is None:
                return np.asarray(default[sl])
            a = np.asarray(a)
            return a if len(a) == n else a[sl]

        data = pick(data, stamps.images)
        if models.ndim != 3 or models.shape != data.shape:
            raise GalnetValueError(f"models: expected shape {data.shape}, got {models.shape}",
                                   "models")
        self.add_arrays(ids=np.asarray(stamps.ids[sl]), data=data, model=models,
                        mask=pick(mask, stamps.mask), sigma=pick(sigma, stamps.sigma),
                        x0=stamps.x0[sl], y0=stamps.y0[sl], rebin=stamps.rebin[sl],
                        input_x=stamps.input_x[sl], input_y=stamps.input_y[sl],
                        wcs=getattr(stamps, "wcs", None))

    def add_arrays(self, *, ids, data, model, mask, x0, y0, rebin, input_x, input_y,
                   wcs=None, sigma=None) -> None:
        """Add objects from the caller's own arrays (e.g. the frame pipeline: model = target +
        modelled neighbours). ``data``, ``model``, ``mask`` (True/nonzero = ignored) and
        ``sigma`` (optional, 1-sigma noise): (n, ny, nx) arrays or sequences of n 2-D arrays of
        any sizes (object i's planes share one size); ``x0, y0, rebin, input_x, input_y``: (n,)
        stamp-to-input transform (:mod:`galnet.io.batch`); ``wcs``: the input's celestial WCS
        (one per file) or None."""
        if self._closed:
            raise GalnetValueError(f"{self.path}: model writer already closed", "models")
        ids = np.atleast_1d(np.asarray(ids))
        n = len(ids)
        d = _planes(data, "data", n, np.float32)
        m = _planes(model, "model", n, np.float32)
        k = _planes(mask, "mask", n, bool)
        s = [None] * n if sigma is None else _planes(sigma, "sigma", n, np.float32)
        for i in range(n):
            shapes = {p.shape for p in (d[i], m[i], k[i], s[i]) if p is not None}
            if len(shapes) != 1:
                raise GalnetValueError(f"object {ids[i]}: data, model, mask and sigma differ in "
                                       f"shape ({', '.join(map(str, sorted(shapes)))})", "model")
        cols = {"id": ids}
        for name, v, dt in (("x0", x0, np.float64), ("y0", y0, np.float64),
                            ("rebin", rebin, np.int64), ("input_x", input_x, np.float64),
                            ("input_y", input_y, np.float64)):
            v = np.broadcast_to(np.asarray(v, dtype=dt), (n,)).copy()
            cols[name] = v
        if wcs is not None:
            self._wcs = wcs if self._wcs is None else self._wcs
            cols.update(_object_wcs_columns(wcs, cols["x0"], cols["y0"],
                                            cols["rebin"].astype(np.float64)))
        for name, v in cols.items():
            self._cols.setdefault(name, []).append(v)
        self._with_wcs.append(wcs is not None)
        self._planes.extend(zip(d, m, k, s, strict=True))

    def _hdul(self):
        from astropy.io import fits
        from astropy.table import Table

        n = len(self)
        if not n:
            raise GalnetValueError(f"{self.path}: no models to write", "models")
        if len(set(self._with_wcs)) > 1:
            raise GalnetValueError(f"{self.path}: some stamps have a WCS and others not", "wcs")
        shapes = list(dict.fromkeys(p[0].shape for p in self._planes))  # first-seen order
        group = np.array([shapes.index(p[0].shape) + 1 for p in self._planes], np.int64)
        plane = np.zeros(n, np.int64)
        prim = fits.PrimaryHDU()
        prim.header["GNMODELS"] = (LAYOUT_VERSION, "galnet models file layout")
        prim.header["NOBJ"] = (n, "number of objects (rows of OBJECTS)")
        prim.header["NGROUP"] = (len(shapes), "stamp sizes (EXTVER of DATA, MODEL...)")
        if self.meta:
            prim.header["GNMETA"] = (json.dumps(jsonable(self.meta), separators=(",", ":")),
                                     "galnet run meta (JSON)")
        hdus = [prim]
        with_sigma = any(p[3] is not None for p in self._planes)
        for g, shape in enumerate(shapes, start=1):
            rows = np.flatnonzero(group == g)
            plane[rows] = np.arange(len(rows))
            sel = [self._planes[i] for i in rows]
            data = np.stack([p[0] for p in sel])
            model = np.stack([p[1] for p in sel])
            mask = np.stack([p[2] for p in sel])
            cubes = {"DATA": data, "MODEL": model,
                     "RESIDUAL": np.where(mask, np.nan, data - model).astype(np.float32),
                     "MASK": mask.astype(np.uint8)}
            if with_sigma:
                nan = np.full(shape, np.nan, np.float32)
                cubes["SIGMA"] = np.stack([nan if p[3] is None else p[3] for p in sel])
            for name, cube in cubes.items():
                h = fits.ImageHDU(cube, name=name, ver=g)
                h.header["COMMENT"] = _COMMENTS[name]
                hdus.append(h)
        cols = {k: np.concatenate(v) for k, v in self._cols.items()}
        cols = {"id": cols.pop("id"), "group": group, "plane": plane,
                "ny": np.array([p[0].shape[0] for p in self._planes], np.int64),
                "nx": np.array([p[0].shape[1] for p in self._planes], np.int64), **cols}
        objects = fits.table_to_hdu(Table(cols))
        objects.name = "OBJECTS"
        objects.header["COMMENT"] = "planes: extensions with EXTVER = group, index plane"
        objects.header["COMMENT"] = "stamp pixel x -> input pixel x0 + rebin * x + (rebin - 1)/2"
        if self._wcs is not None:
            for card in _wcs_header(self._wcs).cards:
                if card.keyword not in _OBJECT_WCS:
                    objects.header.append(card)
        return fits.HDUList([*hdus, objects])

    def close(self) -> Path | None:
        """Write the file (atomically) and return its path; nothing is written for no models."""
        if self._closed:
            return self.path
        try:
            if not self._planes:
                return None
            hdul = self._hdul()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # long comments, HIERARCH cards
                atomic_write(self.path, lambda tmp: hdul.writeto(tmp, overwrite=True))
            return self.path
        finally:
            self.abort()

    def abort(self) -> None:
        """Discard everything; nothing is written."""
        self._closed = True
        self._planes, self._cols, self._with_wcs = [], {}, []


def write_models(path, batch, models, *, data=None, mask=None, sigma=None,
                 overwrite: bool = False, meta: dict | None = None) -> Path:
    """Write the models of every stamp of ``batch`` in one go (see :meth:`ModelWriter.add`)."""
    w = ModelWriter(path, overwrite=overwrite, meta=meta)
    with w:
        w.add(batch, models, data=data, mask=mask, sigma=sigma)
    return w.path


@dataclass
class ObjectPlanes:
    """One object of a models file: its planes (stamp pixels, image units) and geometry.

    ``mask`` True = ignored; ``residual`` NaN there; ``sigma`` None when the file has none;
    ``wcs`` the stamp's celestial WCS (astropy) or None."""

    id: Any
    data: np.ndarray
    model: np.ndarray
    residual: np.ndarray
    mask: np.ndarray
    sigma: np.ndarray | None
    x0: float
    y0: float
    rebin: int
    input_x: float
    input_y: float
    wcs: Any


class ModelsFile:
    """A models file opened by :func:`read_models`: ``objects`` (OBJECTS QTable, header WCS in
    its meta), ``meta`` (run meta dict), ``ids``; ``mf[id]`` -> :class:`ObjectPlanes` (the first
    row with that id; ``"12"`` also finds the integer id 12), ``mf.row(i)`` by row, iteration
    in file order. Planes are read on demand from the memory-mapped file; :meth:`close` (or a
    ``with`` block) releases it."""

    def __init__(self, path):
        from astropy.table import QTable

        from galnet.io.fits import open_fits

        self.path = Path(path)
        self._hdul = open_fits(path, "models")
        try:
            names = {h.name for h in self._hdul}
            missing = [n for n in ("MODEL", "RESIDUAL", "OBJECTS") if n not in names]
            if missing:
                raise GalnetFileError(f"{path}: not a galnet models file (no "
                                      f"{', '.join(missing)} extension)")
            hdu = self._hdul["OBJECTS"]
            self.objects = QTable(hdu.data)
            self.objects.meta.update({c.keyword: c.value for c in hdu.header.cards
                                      if c.keyword not in ("COMMENT", "HISTORY", "")})
            raw = self._hdul[0].header.get("GNMETA")
            self.meta = json.loads(raw) if raw else {}
            self.version = int(self._hdul[0].header.get("GNMODELS", 1))
            if "group" not in self.objects.colnames:  # first layout: one cube, row = plane
                n = len(self.objects)
                self.objects["group"] = np.ones(n, np.int64)
                self.objects["plane"] = np.arange(n)
            self._row: dict = {}
            self._text: dict[str, int] = {}
            for i, v in enumerate(self.objects["id"]):
                self._row.setdefault(_key(v), i)
                self._text.setdefault(str(_key(v)), i)
        except BaseException:
            self._hdul.close()
            raise

    def __enter__(self) -> ModelsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._hdul.close()

    def __len__(self) -> int:
        return len(self.objects)

    @property
    def ids(self) -> list:
        return [_key(v) for v in self.objects["id"]]

    def _find(self, id_) -> int | None:
        i = self._row.get(_key(id_))
        return self._text.get(str(_key(id_))) if i is None else i

    def __contains__(self, id_) -> bool:
        return self._find(id_) is not None

    def __getitem__(self, id_) -> ObjectPlanes:
        i = self._find(id_)
        if i is None:
            raise KeyError(f"{self.path}: no object with id {id_!r}")
        return self.row(i)

    def __iter__(self):
        return (self.row(i) for i in range(len(self)))

    def _plane(self, name: str, group: int, plane: int) -> np.ndarray | None:
        try:
            hdu = self._hdul[name, group] if self.version >= 2 else self._hdul[name]
        except KeyError:
            return None
        return np.array(hdu.data[plane])

    def row(self, i: int) -> ObjectPlanes:
        """Object of OBJECTS row ``i``."""
        o = self.objects[i]
        g, p = int(o["group"]), int(o["plane"])
        model = self._plane("MODEL", g, p).astype(np.float32)
        resid = self._plane("RESIDUAL", g, p).astype(np.float32)
        data, mask = self._plane("DATA", g, p), self._plane("MASK", g, p)
        if data is None:  # first layout: data = model + residual, NaN (masked) where unknown
            data = model + resid
        mask = np.isnan(resid) if mask is None else mask.astype(bool)
        sigma = self._plane("SIGMA", g, p)
        return ObjectPlanes(id=_key(o["id"]), data=data.astype(np.float32), model=model,
                            residual=resid, mask=mask,
                            sigma=None if sigma is None else sigma.astype(np.float32),
                            x0=float(o["x0"]), y0=float(o["y0"]), rebin=int(o["rebin"]),
                            input_x=float(o["input_x"]), input_y=float(o["input_y"]),
                            wcs=object_wcs(self.objects, i))

    def cube(self, name: str) -> np.ndarray:
        """(N, S, S) stack of one plane kind (``"data"``, ``"model"``, ``"residual"``,
        ``"mask"``, ``"sigma"``) of every object in file order; all stamps must share a size."""
        if len({(int(a), int(b)) for a, b in zip(self._sizes("ny"), self._sizes("nx"),
                                                  strict=True)}) > 1:
            raise GalnetValueError(f"{self.path}: stamps of several sizes; read them per object",
                                   "models")
        return np.stack([getattr(o, name.lower()) for o in self])

    def _sizes(self, col: str):
        if col in self.objects.colnames:
            return self.objects[col]
        return np.zeros(len(self), int)


def _key(v):
    """A plain Python id (numpy scalars and bytes made comparable with user input)."""
    if isinstance(v, bytes | np.bytes_):
        v = v.decode()
    return v.item() if isinstance(v, np.generic) else v


def read_models(path) -> ModelsFile:
    """Open a models file (:class:`ModelsFile`; both layouts). One-line GalnetFileError naming
    the file if it is missing or not one."""
    return ModelsFile(path)


def object_wcs(objects, i: int):
    """The celestial WCS of object ``i``'s stamps (astropy WCS, stamp pixels) from the OBJECTS
    table of :func:`read_models`; None if the input had no WCS."""
    from astropy.io import fits
    from astropy.wcs import WCS

    if "CRPIX1" not in objects.colnames:
        return None
    hdr = fits.Header()
    skip = {"XTENSION", "BITPIX", "PCOUNT", "GCOUNT", "TFIELDS", "EXTNAME", "EXTVER"}
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
