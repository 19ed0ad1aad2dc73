"""Export a catalogue to GALFIT or Imfit: one feedme (``<name>.feedme`` and
``<name>.constraints``) or one Imfit configuration (``<name>.imfit.conf``) per catalogue row,
started from the row's parameters; ``<name>`` is the row's ``id`` (characters other than letters,
digits and ``._+-`` replaced by ``_``), or ``row<k>`` without an ``id`` column.

The texts are written by :mod:`galnet.interop.galfit` and :mod:`galnet.interop.imfit`; the
stamps, PSFs, sigma and mask planes a row needs are written beside them (docs/export.md).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from galnet.conventions import flux_to_mag, mag_to_flux, to_imfit
from galnet.errors import GalnetFileError, GalnetValueError
from galnet.interop.galfit import galfit_constraints, galfit_feedme
from galnet.interop.imfit import (
    DEFAULT_LIMITS,
    MIN_BOX,
    ImfitLimits,
    apply_limits,
    imfit_config,
)
from galnet.io.catalog import read_catalog
from galnet.io.files import atomic_write
from galnet.io.fits import first_image_hdu, named_hdu, open_fits
from galnet.params import SERSIC

__all__ = ["FORMATS", "Exported", "export_catalog"]

#: Export formats and the suffix of the file written per object.
FORMATS: dict[str, str] = {"galfit": ".feedme", "imfit": ".imfit.conf"}

#: The catalogue columns an export needs (plus ``flux``, or ``mag`` with a zeropoint).
_SHAPE = tuple(p.name for p in SERSIC if p.role != "mag")


class Exported(NamedTuple):
    """What :func:`export_catalog` did: the files written and the rows it skipped."""

    files: list[Path]
    skipped: list[str]


# ---------------------------------------------------------------------------------------------
# Inputs of an export: images, PSF, sigma and mask, each one of
#   None               nothing (GALFIT: "none"; images: a placeholder <name>.fits in DIR),
#   "pattern{id}"      a file per object: {id} is the object's name, {index} its row (0-based),
#   a 2-D FITS file    one image for every row (a frame, or a single stamp, or one PSF),
#   an (N, H, W) cube  plane k for row k: written into DIR as <name><suffix>.fits.
# ---------------------------------------------------------------------------------------------
@dataclass
class _Input:
    what: str
    kind: str  # "none", "pattern", "file", "cube"
    spec: str = ""
    ref: str = ""  # what a config file names (absolute path, with [HDU] when not the primary)
    shape: tuple[int, int] | None = None  # (ny, nx) of the 2-D image or of a cube's planes
    exptime: float | None = None  # EXPTIME of the header (GALFIT divides fluxes by it)
    data: object = None  # the cube (memory-mapped)
    header: object = None
    stamps: bool = False  # one image per object (cube planes, pattern files)
    extra: dict = field(default_factory=dict)  # SIGMA / MASK cubes of an images cube


def _open_input(spec, what: str, n_rows: int, stack: contextlib.ExitStack,
                ext: bool = False) -> _Input:
    """Classify ``spec`` (see the comment above); ``ext``: also take SIGMA/MASK extensions."""
    if spec is None:
        return _Input(what, "none", stamps=True)
    spec = str(spec)
    if "{" in spec:
        try:
            spec.format(id="x", index=0)
        except (KeyError, IndexError, ValueError) as err:
            raise GalnetValueError(f"{what}: bad file name pattern {spec!r} (use {{id}} and "
                                   f"{{index}} only)", what, spec) from err
        return _Input(what, "pattern", spec, stamps=True)
    hdul = open_fits(spec, what, stack)
    hdu = first_image_hdu(hdul, spec)
    data = hdu.data
    index = hdul.index_of(hdu)
    ref = str(Path(spec).resolve()) + (f"[{index}]" if index else "")
    exptime = hdu.header.get("EXPTIME", hdul[0].header.get("EXPTIME"))
    try:
        exptime = None if exptime is None else float(exptime)
    except (TypeError, ValueError):
        exptime = None
    if data.ndim == 2:
        return _Input(what, "file", spec, ref, tuple(data.shape), exptime, header=hdu.header)
    if data.ndim != 3:
        raise GalnetValueError(f"{spec}: {what}: expected a 2-D image or an (N, H, W) cube, "
                               f"got shape {data.shape}", what)
    if data.shape[0] != n_rows:
        raise GalnetValueError(f"{spec}: {what} cube has {data.shape[0]} planes but the catalogue "
                               f"{n_rows} rows (plane k is row k)", what)
    extra = {}
    if ext:
        for name in ("SIGMA", "MASK"):
            h = named_hdu(hdul, name)
            if h is not None and h.data.shape == data.shape:
                extra[name] = h.data
    return _Input(what, "cube", spec, ref, tuple(data.shape[1:]), exptime, data, hdu.header,
                  stamps=True, extra=extra)


def _write_fits(path: Path, data, header=None, exptime: float | None = None) -> Path:
    """One 2-D FITS image, atomically (``EXPTIME`` set when given)."""
    from astropy.io import fits

    hdu = fits.PrimaryHDU(np.asarray(data))
    if header is not None:
        for key in ("BUNIT", "MAGZERO", "PIXSCALE", "GAIN"):
            if key in header:
                hdu.header[key] = header[key]
    if exptime is not None:
        hdu.header["EXPTIME"] = (exptime, "s; GALFIT magnitudes use flux / EXPTIME")
    return atomic_write(path, lambda tmp: hdu.writeto(tmp, overwrite=True))


def _row_file(inp: _Input, k: int, name: str, directory: Path, suffix: str,
              plane=None) -> str | None:
    """The file a row's config names for ``inp`` (writing the cube plane when needed)."""
    if inp.kind == "none":
        return None
    if inp.kind == "pattern":
        return inp.spec.format(id=name, index=k)
    if inp.kind == "file":
        return inp.ref
    fname = f"{name}{suffix}.fits"
    data = inp.data[k] if plane is None else plane
    exptime = 1.0 if inp.what == "images" else None
    _write_fits(directory / fname, data, inp.header, exptime)
    return fname


# ---------------------------------------------------------------------------------------------
# Names, rows and regions
# ---------------------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def _names(catalog, n: int) -> list[str]:
    """File-name-safe names of the rows: the ``id`` column, else ``row<k>``; unique."""
    cols = getattr(catalog, "colnames", None) or list(catalog.keys())
    if "id" in cols:
        ids = np.asarray(getattr(catalog["id"], "value", catalog["id"]))
        ids = [i.decode() if isinstance(i, bytes) else i for i in ids.tolist()]
        names = [_UNSAFE.sub("_", str(i)).lstrip(".") or f"row{k}" for k, i in enumerate(ids)]
    else:
        names = [f"row{k}" for k in range(n)]
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        if name in seen:
            raise GalnetValueError(f"catalogue ids are not unique as file names: rows {seen[name]} "
                                   f"and {k} are both {name!r}", "id", name)
        seen[name] = k
    return names


def _meta_number(catalog, keys: tuple[str, ...]) -> float | None:
    meta = getattr(catalog, "meta", None) or {}
    for k in keys:
        for kk in (k, k.upper()):
            if kk in meta:
                try:
                    v = float(meta[kk])
                except (TypeError, ValueError):
                    continue
                if math.isfinite(v):
                    return v
    return None


def _option_number(value, name: str, positive: bool = False) -> float | None:
    """``value`` as a finite float (None passes); one-line GalnetValueError naming ``name``."""
    if value is None:
        return None
    try:
        v = float(getattr(value, "value", value))
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or (positive and v <= 0):
        want = "a finite number > 0" if positive else "a finite number"
        raise GalnetValueError(f"{name} must be {want}, got {value!r}", name, value)
    return v


def _numeric(catalog, name: str) -> np.ndarray:
    """Column ``name`` as float values (an angle with a unit in degrees; other units stripped);
    one-line GalnetValueError naming a column that is not numeric."""
    col = catalog[name]
    unit = getattr(col, "unit", None)
    if unit is not None and name in SERSIC.names and SERSIC[name].cyclic:
        from astropy import units as u

        with contextlib.suppress(u.UnitsError, ValueError, TypeError):
            col = u.Quantity(col).to(u.deg)
    try:
        return np.asarray(getattr(col, "value", col), dtype=float).reshape(-1)
    except (TypeError, ValueError) as err:
        raise GalnetValueError(f"catalogue column {name!r} is not numeric", name) from err


def _good_rows(catalog, zeropoint: float | None) -> tuple[np.ndarray, dict]:
    """(mask of usable rows, columns as float arrays with ``flux``)."""
    cols = getattr(catalog, "colnames", None) or list(catalog.keys())
    missing = [c for c in _SHAPE if c not in cols]
    if missing:
        raise GalnetValueError(f"catalogue is missing column(s) {', '.join(missing)}", missing[0])
    p = {c: _numeric(catalog, c) for c in _SHAPE}
    if "flux" in cols:
        p["flux"] = _numeric(catalog, "flux")
    elif "mag" in cols:
        if zeropoint is None:
            raise GalnetValueError("catalogue has 'mag' but no 'flux' and no zeropoint (give "
                                   "zeropoint= / --zeropoint)", "zeropoint")
        p["flux"] = mag_to_flux(_numeric(catalog, "mag"), zeropoint)
    else:
        raise GalnetValueError("catalogue has neither 'flux' nor 'mag'", "flux")
    good = np.ones(len(p["x"]), dtype=bool)
    for v in p.values():
        good &= np.isfinite(v)
    good &= (p["re_pix"] > 0) & (p["n"] > 0) & (p["q"] > 0) & (p["q"] <= 1) & (p["flux"] > 0)
    return good, p


def _region(x: float, y: float, re_pix: float, shape, stamp: bool,
            box: int | None) -> tuple[int, int, int, int]:
    """GALFIT fitting region ``(x1, x2, y1, y2)``, 1-based inclusive.

    The whole image for per-object stamps of known shape (and no ``box``); otherwise a square of
    side ``box`` [default: ``max(61, 2 ceil(6 re_pix) + 1)``] centred on the object's pixel,
    clipped to the image (to pixel 1 when the shape is unknown)."""
    if stamp and shape is not None and box is None:
        return 1, shape[1], 1, shape[0]
    side = box if box is not None else max(MIN_BOX, 2 * math.ceil(6.0 * re_pix) + 1)
    half = side // 2
    cx, cy = round(x) + 1, round(y) + 1
    x1, x2, y1, y2 = cx - half, cx - half + side - 1, cy - half, cy - half + side - 1
    x1, y1 = max(x1, 1), max(y1, 1)
    if shape is not None:
        x2, y2 = min(x2, shape[1]), min(y2, shape[0])
    return x1, x2, y1, y2


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def export_catalog(catalog, directory, to: str = "galfit", *, psf=None, images=None, sigma=None,
                   mask=None, zeropoint: float | None = None, pixel_scale: float | None = None,
                   preset: str | None = None, box: int | None = None, sky: bool = False,
                   limits: ImfitLimits = DEFAULT_LIMITS) -> Exported:
    """Write one GALFIT feedme or Imfit configuration per catalogue row, started from its values.

    Parameters
    ----------
    catalog : a catalogue path (ECSV/FITS/Parquet/CSV, read by
        :func:`galnet.io.catalog.read_catalog`) or an astropy Table / mapping with columns x, y
        (0-based pixels of the input image), re_pix, n, q, pa_deg, flux or mag, and optionally
        ``id`` (the file names).
    directory : output folder (created); existing files are replaced.
    to : ``"galfit"`` (``<name>.feedme`` + ``<name>.constraints``) or ``"imfit"``
        (``<name>.imfit.conf``).
    psf, images, sigma, mask : each None, a file-name pattern with ``{id}`` (the row's name) and/or
        ``{index}`` (its row, 0-based), a 2-D FITS image used for every row (a frame, a stamp,
        one PSF), or an (N, H, W) cube whose plane k belongs to row k, written into ``directory``
        as ``<name>.fits``, ``<name>_psf.fits``, ``<name>_sigma.fits``, ``<name>_mask.fits``.
        ``images=None`` names ``<name>.fits`` in ``directory`` (a placeholder to provide).
        An ``images`` cube's SIGMA and MASK extensions are used when ``sigma`` / ``mask`` are not
        given. Masks: nonzero = ignored (as GALFIT and Imfit read them).
    zeropoint, pixel_scale : mag zeropoint and arcsec/pixel [default: the catalogue's meta
        (``zeropoint``, ``pixel_scale``), then ``preset``'s]. GALFIT needs a zeropoint.
    preset : survey preset for the defaults above.
    box : side of the fitting region (GALFIT H), pixels [default: the whole stamp for per-object
        images of known size, else ``max(61, 2 ceil(6 re_pix) + 1)`` around the object].
    sky : add a free sky (GALFIT ``sky``, Imfit ``FlatSky``).
    limits : parameter limits (Imfit limits, GALFIT constraint file).

    Returns
    -------
    :class:`Exported`: the files written (configs and stamp planes) and the names of the rows
    skipped (non-finite or invalid parameters, or a centre outside ``images``).

    Paths to user files are written absolute; files written into ``directory`` by bare name, so
    GALFIT and Imfit are run from ``directory``. GALFIT's magnitudes use ``flux / EXPTIME`` of
    the image header: the EXPTIME of a given 2-D image is used, planes are written with
    ``EXPTIME = 1``. Positions are in the pixels of ``images`` (docs/export.md).
    """
    if to not in FORMATS:
        raise GalnetValueError(f"unknown export format {to!r} (use {' or '.join(FORMATS)})",
                               "to", to)
    if box is not None and not (isinstance(box, int | float | np.number) and not
                                isinstance(box, bool) and float(box).is_integer() and box >= 3):
        raise GalnetValueError(f"box must be an integer >= 3, got {box!r}", "box", box)
    zeropoint = _option_number(zeropoint, "zeropoint")
    pixel_scale = _option_number(pixel_scale, "pixel_scale", positive=True)
    if isinstance(catalog, str | Path):
        catalog = read_catalog(catalog)
    elif not (hasattr(catalog, "colnames") or isinstance(catalog, Mapping)):
        raise GalnetValueError("catalog must be a catalogue path, an astropy Table or a mapping "
                               f"of columns, got {type(catalog).__name__}", "catalog")
    if zeropoint is None:
        zeropoint = _meta_number(catalog, ("zeropoint", "magzero"))
    if pixel_scale is None:
        pixel_scale = _meta_number(catalog, ("pixel_scale", "pixscale"))
    if preset is not None:
        from galnet.presets import get_preset

        pr = get_preset(preset)
        zeropoint = pr.zeropoint if zeropoint is None else zeropoint
        pixel_scale = pr.pixel_scale if pixel_scale is None else pixel_scale
    if to == "galfit" and zeropoint is None:
        raise GalnetValueError("GALFIT needs a magnitude zeropoint: the catalogue meta has none "
                               "(give zeropoint= / --zeropoint, or a preset)", "zeropoint")
    good, cols = _good_rows(catalog, zeropoint)
    n_rows = len(good)
    names = _names(catalog, n_rows)
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GalnetFileError(f"cannot create {str(directory)!r}: {err.strerror or err}") from err

    written: list[Path] = []
    with contextlib.ExitStack() as stack:
        img = _open_input(images, "images", n_rows, stack, ext=True)
        psf_in = _open_input(psf, "psf", n_rows, stack)
        sig_in = _open_input(sigma, "sigma", n_rows, stack)
        msk_in = _open_input(mask, "mask", n_rows, stack)
        if img.shape is not None:  # centres outside the image cannot be fitted there
            ny, nx = img.shape
            good &= ((cols["x"] >= -0.5) & (cols["x"] <= nx - 0.5)
                     & (cols["y"] >= -0.5) & (cols["y"] <= ny - 0.5))
        for k in np.flatnonzero(good):
            name = names[k]
            p = {c: float(v[k]) for c, v in cols.items()}
            files = _row_inputs(k, name, directory, img, psf_in, sig_in, msk_in)
            written += [directory / f for f in files["written"]]
            shape = img.shape
            stamp = img.stamps
            region = _region(p["x"], p["y"], p["re_pix"], shape, stamp, box)
            size = max(region[1] - region[0], region[3] - region[2]) + 1
            where = (f"{'stamp' if stamp else 'image'} {files['image']}" if img.kind != "none"
                     else f"stamp {files['image']} (placeholder: provide it)")
            head = (f"galnet export: object {name} (catalogue row {k}); x, y are 0-based pixels "
                    f"of the {where}\n"
                    f"galnet: x={p['x']:.4f} y={p['y']:.4f} flux={p['flux']:.6g}"
                    + (f" mag={flux_to_mag(p['flux'], zeropoint):.4f}"
                       if zeropoint is not None else "")
                    + f" re_pix={p['re_pix']:.4f} n={p['n']:.4f} q={p['q']:.4f} "
                    f"pa_deg={p['pa_deg']:.3f}")
            if to == "galfit":
                lim = apply_limits(to_imfit(p), size, limits)
                p_lim = _clip_galnet(p, lim)
                cons = f"{name}.constraints"
                exptime = img.exptime if img.kind == "file" and img.exptime else 1.0
                text = galfit_feedme(
                    p_lim, zeropoint=zeropoint, image=files["image"],
                    output=f"{name}.galfit.fits", region=region, sigma=files["sigma"],
                    psf=files["psf"], mask=files["mask"], constraints=cons,
                    pixel_scale=pixel_scale, exptime=exptime, sky=sky,
                    header=head + f"\nrun from this folder: galfit {name}.feedme")
                written.append(_write_text(directory / cons, galfit_constraints(
                    lim["r_e"][1:], limits)))
                written.append(_write_text(directory / f"{name}.feedme", text))
            else:
                section = "" if stamp or img.kind == "none" else "[{}:{},{}:{}]".format(*region)
                cmd = (f"imfit {files['image']}{section} -c {name}.imfit.conf"
                       + (f" --psf {files['psf']}" if files["psf"] else "")
                       + (f" --noise {files['sigma']}{section}" if files["sigma"] else "")
                       + (f" --mask {files['mask']}{section}" if files["mask"] else "")
                       + f" --save-params {name}.imfit.bestfit")
                note = ("X0, Y0 are pixels of the whole image (Imfit keeps them so for an image "
                        "section)\n" if section else "")
                text = imfit_config(p, size=size, limits=limits, sky=sky,
                                    header=head + "\n" + note + "run from this folder: " + cmd
                                    + "\nread back: galnet.interop.read_imfit_bestfit("
                                    f"'{name}.imfit.bestfit', zeropoint=...)")
                written.append(_write_text(directory / f"{name}.imfit.conf", text))
    skipped = [names[k] for k in np.flatnonzero(~good)]
    return Exported(written, skipped)


def _clip_galnet(p: dict, lim: dict) -> dict:
    """galnet parameters with re_pix, n, q moved into the (Imfit-form) limits ``lim``."""
    out = dict(p)
    out["re_pix"] = lim["r_e"][0]
    out["n"] = lim["n"][0]
    out["q"] = 1.0 - lim["ell"][0]
    return out


def _row_inputs(k: int, name: str, directory: Path, img: _Input, psf_in: _Input,
                sig_in: _Input, msk_in: _Input) -> dict:
    """File names a row's config refers to (cube planes are written into ``directory``)."""
    out = {"written": []}
    image = _row_file(img, k, name, directory, "")
    if img.kind == "cube":
        out["written"].append(image)
    out["image"] = image if image is not None else f"{name}.fits"
    for key, inp, suffix in (("psf", psf_in, "_psf"), ("sigma", sig_in, "_sigma"),
                             ("mask", msk_in, "_mask")):
        plane = None
        if inp.kind == "none" and key != "psf" and key.upper() in img.extra:
            plane = img.extra[key.upper()][k]
            inp = _Input(key, "cube", header=img.header)
        out[key] = _row_file(inp, k, name, directory, suffix, plane)
        if inp.kind == "cube":
            out["written"].append(out[key])
    return out


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))
