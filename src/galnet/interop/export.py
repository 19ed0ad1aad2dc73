"""Interop with GALFIT and Imfit: export catalogues, read their fits back, fit with PyImfit.

- :func:`export_catalog` writes one GALFIT feedme (``<name>.feedme`` and ``<name>.constraints``)
  or one Imfit configuration (``<name>.imfit.conf``) per catalogue row, started from the row's
  parameters; ``<name>`` is the row's ``id`` (characters other than letters, digits and
  ``._+-`` replaced by ``_``), or ``row<k>`` without an ``id`` column.
- :func:`read_imfit_bestfit` reads what ``imfit --save-params`` (or PyImfit's
  ``saveCurrentModelToFile``) writes; :func:`read_galfit_feedme` reads a feedme or GALFIT's
  ``galfit.NN`` restart file; :func:`read_galfit_header` reads the best fit (with errors) from the
  header of GALFIT's output image block. All return galnet's conventions.
- :func:`imfit_fit` fits one PSF-convolved Sérsic to a stamp with PyImfit.

Every conversion goes through :mod:`galnet.conventions` (``to_galfit`` / ``from_galfit``,
``to_imfit`` / ``from_imfit``); see docs/conventions.md and docs/export.md.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from galnet.conventions import (
    GALFIT_KEYS,
    IMFIT_KEYS,
    from_galfit,
    from_imfit,
    galfit_sersic_block,
    imfit_model_dict,
    read_galfit_sersic_block,
    to_galfit,
    to_imfit,
)
from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.files import atomic_write

__all__ = [
    "FORMATS",
    "ImfitLimits",
    "DEFAULT_LIMITS",
    "Exported",
    "export_catalog",
    "imfit_config",
    "galfit_feedme",
    "read_imfit_bestfit",
    "parse_imfit_config",
    "read_galfit_feedme",
    "read_galfit_header",
    "imfit_fit",
]

#: Export formats and the suffix of the file written per object.
FORMATS: dict[str, str] = {"galfit": ".feedme", "imfit": ".imfit.conf"}

#: The catalogue columns an export needs (plus ``flux``, or ``mag`` with a zeropoint).
_SHAPE = ("x", "y", "re_pix", "n", "q", "pa_deg")

#: Side (pixels) of the smallest fitting box around an object of a frame: galnet's stamp size.
_MIN_BOX = 61

#: The Sersic parameters of Imfit, in the order Imfit reads them (it ignores their names).
_IMFIT_SERSIC = ("PA", "ell", "n", "I_e", "r_e")


@dataclass(frozen=True)
class ImfitLimits:
    """Parameter limits written into Imfit configurations (and GALFIT constraint files) and used
    by :func:`imfit_fit`. Initial values outside them are moved onto them.

    Attributes
    ----------
    xy : centre, pixels either side of the initial position [default: 3].
    pa_half : PA, degrees either side of the initial PA [default: 180]: effectively free (Imfit's
        DE solver needs bounds). Not 90: a fit through ``ell < 0`` turns the PA by 90 degrees,
        and bounds at +-90 then stopped fits short of the truth.
    ell : ellipticity ``1 - q`` range [default: (-1, 0.95)]: q >= 0.05, below the q >= 0.1 of
        every training prior (galnet/data/presets.toml); ``ell < 0`` (Imfit's q up to 2: the
        major axis along the other axis, folded back by :func:`from_imfit`) lets a fit pass
        through round instead of sticking on an ``ell = 0`` bound (docs/export.md; GALFIT
        constraint: ``q 0.05 to 2``).
    ell_start : smallest initial ellipticity [default: 0.1]: at ``ell = 0`` the model does not
        depend on the PA and Imfit's LM then never moves the PA, so a round start (q = 1)
        begins at q = 0.9.
    n : Sérsic index range [default: (0.3, 8)], the training priors of every preset.
    re_min : smallest r_e, pixels [default: 0.05]: far below the PSF, a point source.
    re_max_factor, re_max_init : the largest r_e is ``max(re_max_factor * S, re_max_init *
        r_e0)`` for an image (or fitting box) of larger side S pixels [default: 1 and 5]: a
        radius beyond the stamp is not measured by it (:meth:`re_range`).
    ie_factor : I_e in ``[0, ie_factor * I_e0]`` [default: 1e4]: I_e at fixed flux moves with
        r_e^-2, so this leaves r_e free over a factor 100.
    """

    xy: float = 3.0
    pa_half: float = 180.0
    ell: tuple[float, float] = (-1.0, 0.95)
    ell_start: float = 0.1
    n: tuple[float, float] = (0.3, 8.0)
    re_min: float = 0.05
    re_max_factor: float = 1.0
    re_max_init: float = 5.0
    ie_factor: float = 1e4

    def re_range(self, re0: float, size: float | None) -> tuple[float, float]:
        """r_e range for initial ``re0`` in an image (or box) of larger side ``size`` pixels:
        ``[re_min, max(re_max_factor * size, re_max_init * re0)]`` (``size`` unknown: 61)."""
        size = _MIN_BOX if size is None else size
        return self.re_min, max(self.re_max_factor * size, self.re_max_init * re0)


DEFAULT_LIMITS = ImfitLimits()


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
    from galnet.io.stamps import _first_image_hdu, _named_hdu, _open_fits

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
    hdul = _open_fits(spec, what, stack)
    hdu = _first_image_hdu(hdul, spec)
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
            h = _named_hdu(hdul, name)
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


def _value(v) -> float:
    return float(getattr(v, "value", v))


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


def _good_rows(catalog, zeropoint: float | None) -> tuple[np.ndarray, dict]:
    """(mask of usable rows, columns as float arrays with ``flux``)."""
    from galnet.conventions import mag_to_flux

    cols = getattr(catalog, "colnames", None) or list(catalog.keys())
    missing = [c for c in _SHAPE if c not in cols]
    if missing:
        raise GalnetValueError(f"catalogue is missing column(s) {', '.join(missing)}", missing[0])
    p = {c: np.asarray(getattr(catalog[c], "value", catalog[c]), dtype=float) for c in _SHAPE}
    if "flux" in cols:
        p["flux"] = np.asarray(getattr(catalog["flux"], "value", catalog["flux"]), dtype=float)
    elif "mag" in cols:
        if zeropoint is None:
            raise GalnetValueError("catalogue has 'mag' but no 'flux' and no zeropoint (give "
                                   "zeropoint= / --zeropoint)", "zeropoint")
        p["flux"] = mag_to_flux(np.asarray(getattr(catalog["mag"], "value", catalog["mag"])),
                                zeropoint)
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
    side = box if box is not None else max(_MIN_BOX, 2 * math.ceil(6.0 * re_pix) + 1)
    half = side // 2
    cx, cy = round(x) + 1, round(y) + 1
    x1, x2, y1, y2 = cx - half, cx - half + side - 1, cy - half, cy - half + side - 1
    x1, y1 = max(x1, 1), max(y1, 1)
    if shape is not None:
        x2, y2 = min(x2, shape[1]), min(y2, shape[0])
    return x1, x2, y1, y2


def _f(v: float) -> str:
    """A float written so that it reads back exactly."""
    return repr(float(v))


# ---------------------------------------------------------------------------------------------
# File texts
# ---------------------------------------------------------------------------------------------
def _imfit_limits(m: dict, size, limits: ImfitLimits) -> dict[str, tuple[float, float, float]]:
    """Imfit parameter -> (initial value moved into its limits, lower, upper)."""
    lo_re, hi_re = limits.re_range(float(m["r_e"]), size)
    out = {
        "X0": (m["X0"], m["X0"] - limits.xy, m["X0"] + limits.xy),
        "Y0": (m["Y0"], m["Y0"] - limits.xy, m["Y0"] + limits.xy),
        "PA": (m["PA"], m["PA"] - limits.pa_half, m["PA"] + limits.pa_half),
        "ell": (max(m["ell"], limits.ell_start), *limits.ell),
        "n": (m["n"], *limits.n),
        "I_e": (m["I_e"], 0.0, limits.ie_factor * m["I_e"]),
        "r_e": (m["r_e"], lo_re, hi_re),
    }
    return {k: (float(min(max(v, lo), hi)), float(lo), float(hi)) for k, (v, lo, hi) in out.items()}


def imfit_config(params: Mapping, *, zeropoint: float | None = None, size: float | None = None,
                 limits: ImfitLimits = DEFAULT_LIMITS, sky: bool = False,
                 header: str = "") -> str:
    """Text of an Imfit configuration file for one object (one function block, one ``Sersic``).

    Parameters
    ----------
    params : one object's galnet parameters (scalars): x, y, re_pix, n, q, pa_deg and flux
        (or mag with ``zeropoint``).
    zeropoint : mag zeropoint, to turn ``mag`` into flux.
    size : larger side of the fitted image, pixels (sets the largest r_e; see
        :class:`ImfitLimits`) [default: 61].
    limits : parameter limits [default: :data:`DEFAULT_LIMITS`]; initial values outside them are
        moved onto them.
    sky : add a free ``FlatSky`` (``I_sky``, image units per pixel) to the block.
    header : comment lines to put first (each line is prefixed with ``# ``).

    Values are converted by :func:`galnet.conventions.to_imfit` (``X0 = x + 1``,
    ``ell = 1 - q``, ``I_e`` at r_e with Imfit's b_n) and written with 17 significant digits.
    """
    m = to_imfit(params, zeropoint=zeropoint)
    lim = _imfit_limits(m, size, limits)
    lines = [f"# {h}".rstrip() for h in header.splitlines()]

    def par(k: str, comment: str) -> str:
        v, lo, hi = lim[k]
        return f"{k:<6s}{_f(v):<24s}{_f(lo)},{_f(hi)}    # {comment}"

    lines += [
        par("X0", "x + 1: column, 1-based [pix]"),
        par("Y0", "y + 1: row, 1-based [pix]"),
        "FUNCTION Sersic",
        par("PA", "major-axis PA, CCW from +y [deg]"),
        par("ell", "1 - q"),
        par("n", "Sersic index"),
        par("I_e", "surface brightness at r_e [image units / pix]"),
        par("r_e", "semi-major half-light radius [pix]"),
    ]
    if sky:
        lines += ["FUNCTION FlatSky", f"{'I_sky':<6s}{'0.0':<24s}    # [image units / pix]"]
    return "\n".join(lines) + "\n"


def galfit_feedme(params: Mapping, *, zeropoint: float, image: str, output: str,
                  region: tuple[int, int, int, int], sigma: str | None = None,
                  psf: str | None = None, mask: str | None = None,
                  constraints: str | None = None, pixel_scale: float | None = None,
                  exptime: float = 1.0, sky: bool = False, header: str = "") -> str:
    """Text of a GALFIT feedme for one object: control lines A-P, one ``sersic`` component
    (:func:`galnet.conventions.galfit_sersic_block`) and optionally a free ``sky``.

    Parameters
    ----------
    params : one object's galnet parameters (scalars), with flux or mag.
    zeropoint : magnitude zeropoint (line J), mag; ``MAG = zeropoint - 2.5 log10(flux / exptime)``.
    image, output : input image (A) and output image block (B) file names.
    region : fitting region (H) ``(x1, x2, y1, y2)``, 1-based inclusive; the convolution box (I)
        is the region's size.
    sigma, psf, mask, constraints : files for lines C, D, F, G [default: ``none``].
    pixel_scale : arcsec / pixel (line K) [default: 1, i.e. unknown].
    exptime : the EXPTIME GALFIT will read from the image header, s [default: 1].
    sky : add a free ``sky`` component (initial 0).
    header : comment lines to put first.
    """
    g = to_galfit(params, zeropoint, exptime=exptime)
    x1, x2, y1, y2 = region
    scale = 1.0 if pixel_scale is None else float(pixel_scale)
    lines = [f"# {h}".rstrip() for h in header.splitlines()]

    def ctl(key: str, value: str, comment: str) -> str:
        return f"{key}) {value}".ljust(40) + f" # {comment}"

    lines += [
        "",
        "# IMAGE and GALFIT CONTROL PARAMETERS",
        ctl("A", image, "Input data image (FITS file)"),
        ctl("B", output, "Output data image block"),
        ctl("C", sigma or "none", "Sigma image name (made from data if blank or \"none\")"),
        ctl("D", psf or "none", "Input PSF image and (optional) diffusion kernel"),
        ctl("E", "1", "PSF fine sampling factor relative to data"),
        ctl("F", mask or "none", "Bad pixel mask (FITS image or ASCII coord list)"),
        ctl("G", constraints or "none", "File with parameter constraints (ASCII file)"),
        ctl("H", f"{x1} {x2} {y1} {y2}", "Image region to fit (xmin xmax ymin ymax)"),
        ctl("I", f"{x2 - x1 + 1} {y2 - y1 + 1}", "Size of the convolution box (x y)"),
        ctl("J", _f(zeropoint), "Magnitude photometric zeropoint"),
        ctl("K", f"{scale:.6g} {scale:.6g}", "Plate scale (dx dy)   [arcsec per pixel]"
            + ("" if pixel_scale is not None else " (unknown)")),
        ctl("O", "regular", "Display type (regular, curses, both)"),
        ctl("P", "0", "Choose: 0=optimize, 1=model, 2=imgblock, 3=subcomps"),
        "",
        "# INITIAL FITTING PARAMETERS (galnet: XC = x + 1, YC = y + 1, RE = re_pix, AR = q)",
        "",
        galfit_sersic_block(g, number=1),
    ]
    if sky:
        lines += [
            "# Component number: 2",
            f" 0) {'sky':<28s} #  Component type",
            " 1) 0.0 1".ljust(32) + " #  Sky background at center of fitting region [ADUs]",
            " 2) 0.0 0".ljust(32) + " #  dsky/dx (sky gradient in x)     [ADUs/pix]",
            " 3) 0.0 0".ljust(32) + " #  dsky/dy (sky gradient in y)     [ADUs/pix]",
            " Z) 0".ljust(32) + " #  Skip this model in output image?  (yes=1, no=0)",
            "",
        ]
    lines.append("================================================================================")
    return "\n".join(lines) + "\n"


def _galfit_constraints(re_range: tuple[float, float], limits: ImfitLimits) -> str:
    """GALFIT constraint file: the limits of :class:`ImfitLimits` for component 1."""
    q_lo, q_hi = 1.0 - limits.ell[1], 1.0 - limits.ell[0]
    rows = [
        ("x", f"{-limits.xy:g} {limits.xy:g}", f"within +-{limits.xy:g} px of the input value"),
        ("y", f"{-limits.xy:g} {limits.xy:g}", ""),
        ("re", f"{re_range[0]:g} to {re_range[1]:g}", "absolute range [pix]"),
        ("n", f"{limits.n[0]:g} to {limits.n[1]:g}", "absolute range"),
        ("q", f"{q_lo:g} to {q_hi:g}", "absolute range (b/a)"),
    ]
    lines = ["# galnet: parameter constraints (GALFIT syntax: component, parameter, range)",
             "# Component   parameter   constraint        Comment"]
    lines += [f"    1          {p:<10s}  {c:<16s}  # {d}".rstrip(" #") for p, c, d in rows]
    return "\n".join(lines) + "\n"


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
    catalog : a catalogue path (ECSV/FITS/Parquet/CSV, read by :func:`galnet.io.stamps.read_catalog`)
        or an astropy Table / mapping with columns x, y (0-based pixels of the input image),
        re_pix, n, q, pa_deg, flux or mag, and optionally ``id`` (the file names).
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
    from galnet.io.stamps import read_catalog

    if to not in FORMATS:
        raise GalnetValueError(f"unknown export format {to!r} (use {' or '.join(FORMATS)})",
                               "to", to)
    if box is not None and (int(box) != box or box < 3):
        raise GalnetValueError(f"box must be an integer >= 3, got {box!r}", "box", box)
    if isinstance(catalog, str | Path):
        catalog = read_catalog(catalog)
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
                    + (f" mag={zeropoint - 2.5 * math.log10(p['flux']):.4f}"
                       if zeropoint is not None else "")
                    + f" re_pix={p['re_pix']:.4f} n={p['n']:.4f} q={p['q']:.4f} "
                    f"pa_deg={p['pa_deg']:.3f}")
            if to == "galfit":
                lim = _imfit_limits(to_imfit(p), size, limits)
                p_lim = _clip_galnet(p, lim)
                cons = f"{name}.constraints"
                exptime = img.exptime if img.kind == "file" and img.exptime else 1.0
                text = galfit_feedme(
                    p_lim, zeropoint=zeropoint, image=files["image"],
                    output=f"{name}.galfit.fits", region=region, sigma=files["sigma"],
                    psf=files["psf"], mask=files["mask"], constraints=cons,
                    pixel_scale=pixel_scale, exptime=exptime, sky=sky,
                    header=head + f"\nrun from this folder: galfit {name}.feedme")
                written.append(_write_text(directory / cons, _galfit_constraints(
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
                                    + "\nread back: galnet.interop.export.read_imfit_bestfit("
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


# ---------------------------------------------------------------------------------------------
# Reading results back
# ---------------------------------------------------------------------------------------------
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"


def parse_imfit_config(text: str) -> dict:
    """Parse Imfit configuration text (or a best-fit parameter file).

    Returns ``{"options": {NAME: value}, "function_sets": [...], "chi2nu": float}`` where each
    function set is ``{"X0": p, "Y0": p, "functions": [{"name": str, "params": [(name, p)]}]}``
    and each ``p`` is ``{"value", "error", "fixed", "limits"}`` (error from a ``# +/- e``
    comment, NaN if absent; limits None if absent). ``chi2nu`` is read from a
    ``Reduced Chi^2 = v`` comment (imfit's header), NaN if absent.
    """
    options: dict[str, float] = {}
    sets: list[dict] = []
    chi2nu = math.nan
    for lineno, raw in enumerate(text.splitlines(), 1):
        body, _, comment = raw.partition("#")
        m = re.search(r"reduced\s+chi\^?2[^=]*=\s*(" + _NUM + ")", comment, re.IGNORECASE)
        if m and not body.strip():
            chi2nu = float(m.group(1))
        fields = body.split()
        if not fields:
            continue
        key = fields[0]
        if key == "FUNCTION":
            if not sets:
                raise GalnetValueError(f"line {lineno}: FUNCTION before X0/Y0", "config")
            if len(fields) < 2:
                raise GalnetValueError(f"line {lineno}: FUNCTION without a name", "config")
            sets[-1]["functions"].append({"name": fields[1], "params": []})
            continue
        if len(fields) < 2:
            raise GalnetValueError(f"line {lineno}: no value in {raw.strip()!r}", "config")
        try:
            value = float(fields[1])
        except ValueError as err:
            raise GalnetValueError(f"line {lineno}: bad value in {raw.strip()!r}",
                                   "config") from err
        em = re.search(r"\+/-\s*(" + _NUM + ")", comment)
        p = {"value": value, "error": float(em.group(1)) if em else math.nan,
             "fixed": len(fields) > 2 and fields[2].lower() == "fixed", "limits": None}
        if len(fields) > 2 and "," in fields[2]:
            try:
                lo, hi = (float(s) for s in fields[2].split(","))
                p["limits"] = (lo, hi)
            except ValueError as err:
                raise GalnetValueError(f"line {lineno}: bad limits in {raw.strip()!r}",
                                       "config") from err
        if key == "X0":
            sets.append({"X0": p, "Y0": None, "functions": []})
        elif key == "Y0":
            if not sets or sets[-1]["Y0"] is not None:
                raise GalnetValueError(f"line {lineno}: Y0 without X0", "config")
            sets[-1]["Y0"] = p
        elif sets and sets[-1]["functions"]:
            sets[-1]["functions"][-1]["params"].append((key, p))
        elif sets:
            raise GalnetValueError(f"line {lineno}: parameter {key} before FUNCTION", "config")
        else:
            options[key] = value  # GAIN, READNOISE, ORIGINAL_SKY, ...
    return {"options": options, "function_sets": sets, "chi2nu": chi2nu}


def _read_text(path, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise GalnetFileError(f"{path}: no such file ({what})")
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise GalnetFileError(f"{path}: cannot read {what} ({err})") from err


def _galnet_errors(vals: dict, errs: dict, out: dict) -> dict:
    """1-sigma errors of the galnet parameters from marginal Imfit errors (no covariances):
    ``flux_err`` and ``mag_err`` need the covariance of I_e, r_e, n, ell and are NaN."""
    flipped = vals["ell"] < 0  # from_imfit folded q > 1: q = 1/(1 - ell), re = r_e (1 - ell)
    q_err = errs["ell"] * out["q"] ** 2 if flipped else errs["ell"]
    re_err = (math.hypot((1 - vals["ell"]) * errs["r_e"], vals["r_e"] * errs["ell"])
              if flipped else errs["r_e"])
    res = {"x_err": errs["X0"], "y_err": errs["Y0"], "flux_err": math.nan,
           "re_pix_err": re_err, "n_err": errs["n"], "q_err": q_err, "pa_deg_err": errs["PA"]}
    if "mag" in out:
        res["mag_err"] = math.nan
    return res


def read_imfit_bestfit(path, zeropoint: float | None = None) -> dict:
    """Read an Imfit best-fit parameter file (``imfit --save-params``, PyImfit's
    ``saveCurrentModelToFile``; also any Imfit configuration) into galnet conventions.

    The first ``Sersic`` function of the file is read, its parameters by position
    (PA, ell, n, I_e, r_e: Imfit ignores the names), through
    :func:`galnet.conventions.from_imfit`: ``x = X0 - 1``, ``y = Y0 - 1``, ``q = 1 - ell``,
    ``pa_deg`` in [0, 180), ``flux`` Imfit's total flux of (I_e, r_e, n, q), ``mag`` when
    ``zeropoint`` is given.

    Returns
    -------
    dict of floats: x, y, flux, [mag], re_pix, n, q, pa_deg, each with ``_err`` (from the
    ``# +/- e`` comments Imfit writes after a Levenberg-Marquardt fit; NaN without them;
    ``flux_err`` / ``mag_err`` are always NaN: the file has no covariances, and the flux error
    depends on those of I_e, r_e and n), ``chi2nu`` (from the header, NaN if absent) and
    ``sky`` (the ``I_sky`` of a ``FlatSky`` in the same block, if any).
    """
    cfg = parse_imfit_config(_read_text(path, "Imfit parameter file"))
    for fs in cfg["function_sets"]:
        for fn in fs["functions"]:
            if fn["name"] != "Sersic":
                continue
            if len(fn["params"]) != len(_IMFIT_SERSIC) or fs["Y0"] is None:
                raise GalnetValueError(f"{path}: the Sersic function has "
                                       f"{len(fn['params'])} parameters, expected 5", "config")
            ps = {"X0": fs["X0"], "Y0": fs["Y0"],
                  **{k: p for k, (_, p) in zip(_IMFIT_SERSIC, fn["params"], strict=True)}}
            vals = {k: ps[k]["value"] for k in IMFIT_KEYS}
            errs = {k: ps[k]["error"] for k in IMFIT_KEYS}
            try:
                out = {k: float(v) for k, v in from_imfit(vals, zeropoint=zeropoint).items()}
            except GalnetValueError as err:
                raise GalnetValueError(f"{path}: {err}", err.name, err.value) from err
            out.update(_galnet_errors(vals, errs, out))
            out["chi2nu"] = cfg["chi2nu"]
            for other in fs["functions"]:
                if other["name"] == "FlatSky" and other["params"]:
                    out["sky"] = other["params"][0][1]["value"]
            return out
    raise GalnetValueError(f"{path}: no Sersic function", "config")


def read_galfit_feedme(path, zeropoint: float | None = None, exptime: float = 1.0) -> dict:
    """Read the first ``sersic`` component of a GALFIT feedme (or of GALFIT's restart file
    ``galfit.NN``, which holds the best fit) into galnet conventions.

    ``zeropoint`` defaults to line J of the file. Uses
    :func:`galnet.conventions.read_galfit_sersic_block` and :func:`~galnet.conventions.from_galfit`
    (``x = XC - 1``, ``flux = exptime 10**(-0.4 (MAG - zeropoint))``, ...). Returns a dict of
    floats (x, y, flux, mag, re_pix, n, q, pa_deg) plus ``free`` ({GALFIT key: bool}).
    """
    text = _read_text(path, "GALFIT feedme")
    if zeropoint is None:
        m = re.search(r"^\s*J\)\s*(" + _NUM + ")", text, re.MULTILINE)
        if m is None:
            raise GalnetValueError(f"{path}: no zeropoint (line J); give zeropoint=", "zeropoint")
        zeropoint = float(m.group(1))
    try:
        g = read_galfit_sersic_block(text)
        out = {k: float(v) for k, v in from_galfit(g, zeropoint, exptime).items()}
    except GalnetValueError as err:
        raise GalnetValueError(f"{path}: {err}", err.name, err.value) from err
    out["free"] = g["free"]
    return out


def read_galfit_header(header, component: int | None = None, exptime: float | None = None
                       ) -> dict:
    """The best fit of a ``sersic`` component from the header of GALFIT's output image block
    (extension 2, the model), in galnet conventions, with GALFIT's errors.

    Parameters
    ----------
    header : an astropy ``Header``, or the path of the image block (extension 2 is read).
    component : component number [default: the first ``COMP_k = 'sersic'``].
    exptime : exposure time [default: header EXPTIME, else 1].

    GALFIT writes ``k_XC = '31.30 +/- 0.01'``; a value in ``*...*`` is flagged as problematic,
    in ``[...]`` held fixed. Returns x, y, flux, mag, re_pix, n, q, pa_deg with ``_err``
    (``flux_err = flux mag_err / 1.0857``), ``chi2nu`` (``CHI2NU``), and ``galfit_flagged``
    (True when GALFIT marked a value with ``*``).
    """
    if isinstance(header, str | Path):
        from astropy.io import fits

        try:
            with fits.open(header) as hdul:
                header = hdul[2].header.copy() if len(hdul) > 2 else hdul[-1].header.copy()
        except (OSError, ValueError) as err:
            raise GalnetFileError(f"{header}: cannot read GALFIT image block ({err})") from err
    if component is None:
        component = next((int(m.group(1)) for key in header
                          if (m := re.fullmatch(r"COMP_(\d+)", key))
                          and str(header[key]).strip() == "sersic"), None)
        if component is None:
            raise GalnetValueError("GALFIT header: no sersic component", "component")
    zeropoint = header.get("MAGZPT")
    if zeropoint is None:
        raise GalnetValueError("GALFIT header: no MAGZPT", "zeropoint")
    exptime = float(header.get("EXPTIME", 1.0)) if exptime is None else exptime
    vals, errs, flagged = {}, {}, False
    for k in GALFIT_KEYS:
        raw = header.get(f"{component}_{k}")
        if raw is None:
            raise GalnetValueError(f"GALFIT header: no {component}_{k}", k)
        s = str(raw)
        flagged |= "*" in s
        nums = re.findall(_NUM, s.replace("*", " ").replace("[", " ").replace("]", " "))
        if not nums:
            raise GalnetValueError(f"GALFIT header: cannot read {component}_{k} = {s!r}", k)
        vals[k] = float(nums[0])
        errs[k] = float(nums[1]) if len(nums) > 1 else 0.0
    out = {k: float(v) for k, v in from_galfit(vals, float(zeropoint), exptime).items()}
    flip = vals["AR"] > 1
    out.update({
        "x_err": errs["XC"], "y_err": errs["YC"],
        "flux_err": out["flux"] * errs["MAG"] / 1.0857362047581294, "mag_err": errs["MAG"],
        "re_pix_err": math.hypot(vals["AR"] * errs["RE"], vals["RE"] * errs["AR"])
        if flip else errs["RE"],
        "n_err": errs["N"], "q_err": errs["AR"] * out["q"] ** 2 if flip else errs["AR"],
        "pa_deg_err": errs["PA"],
        "chi2nu": float(header.get("CHI2NU", math.nan)), "galfit_flagged": bool(flagged),
    })
    return out


# ---------------------------------------------------------------------------------------------
# PyImfit
# ---------------------------------------------------------------------------------------------
_SOLVERS = ("LM", "NM", "DE")
_MODES = ("imfit", "sampled")
#: Finite-difference steps of the Jacobian: X0, Y0 (px), PA (deg), ell; then relative steps for
#: n, I_e, r_e. Larger steps (1e-3 px, 1e-2 deg) missed PyImfit's PA error by 8% at n = 4.
_JAC_STEP = (1e-4, 1e-4, 1e-4, 1e-5)
_JAC_REL = 1e-5


def _import_pyimfit():
    try:
        import pyimfit
    except ImportError as err:
        raise ImportError("galnet.interop.export.imfit_fit needs PyImfit: pip install pyimfit "
                          "(or galnet[test])") from err
    return pyimfit


def _as_plane(a, name: str, shape=None) -> np.ndarray:
    a = np.asarray(getattr(a, "value", a), dtype=np.float64)
    if shape is not None and a.ndim == 0:
        a = np.full(shape, float(a))
    if a.ndim != 2 or (shape is not None and a.shape != shape):
        want = "a 2-D array" if shape is None else f"shape {shape} (or a scalar)"
        raise GalnetValueError(f"imfit_fit: {name} must be {want}, got shape {a.shape}", name)
    return a


def imfit_fit(image, psf, *, init: Mapping, sigma=None, mask=None, solver: str = "LM",
              mode: str = "imfit", max_threads: int = 1, ftol: float = 1e-8,
              zeropoint: float | None = None, limits: ImfitLimits = DEFAULT_LIMITS,
              flux_err: bool = True) -> dict:
    """Fit one PSF-convolved Sérsic to a stamp with PyImfit, from an initial guess.

    Imfit's model (``mode="imfit"``) integrates the Sérsic over each pixel (sub-sampling near the
    centre) and convolves that image with the PSF image: galnet's ``render(..., mode="imfit")``
    reproduces it (to its exact b_n; docs/conventions.md). With an effective PSF this counts the
    pixel twice; ``mode="sampled"`` samples the profile at pixel centres instead (Imfit's
    ``subsampling=False``), approximate at a cusp.

    Parameters
    ----------
    image : (H, W) stamp, image units; non-finite pixels are masked.
    psf : (h, w) PSF image (normalised by Imfit), centred on its central pixel.
    init : initial galnet parameters (scalars): x, y (0-based pixels of ``image``), re_pix, n,
        q, pa_deg and flux (or mag with ``zeropoint``); moved into ``limits`` if outside.
    sigma : 1-sigma noise, (H, W) or a scalar [default: 1 everywhere, so ``chi2nu`` is the mean
        squared residual]; pixels with sigma <= 0 or non-finite are masked.
    mask : (H, W), nonzero = pixel ignored.
    solver : ``"LM"`` (Levenberg-Marquardt, the only one with errors), ``"NM"`` (Nelder-Mead) or
        ``"DE"`` (differential evolution, inside ``limits``).
    mode : ``"imfit"`` (Imfit's default pixel sub-sampling) or ``"sampled"``.
    max_threads : Imfit threads [default: 1].
    ftol : Imfit's fractional tolerance on chi2 [default: 1e-8, Imfit's].
    zeropoint : for ``mag`` in ``init`` and in the result.
    limits : parameter limits [default: :data:`DEFAULT_LIMITS`].
    flux_err : compute ``flux_err`` (and ``mag_err``) from the covariance of the fit: 8 more model
        images (about a third of the time of a fit); False leaves them NaN.

    Returns
    -------
    dict: x, y, flux, [mag], re_pix, n, q, pa_deg (galnet conventions, :func:`from_imfit`), each
    with ``_err`` (PyImfit's Levenberg-Marquardt errors, i.e. sqrt of the diagonal of
    ``(J^T W J)^-1``, not rescaled by chi2nu; NaN for NM/DE); ``chi2`` and
    ``chi2nu = chi2 / (N_unmasked - 7)``; ``npix``; ``niter``, ``nfev``; ``converged`` (Imfit's
    flag, and finite parameters); ``bound_hit`` (a parameter ended at one of its limits other
    than the PA's); ``time_s`` (the Imfit fit, wall) and ``time_total_s`` (with set-up and
    errors); ``message`` (why a fit failed, else ""). A failed fit returns NaN parameters and
    ``converged = False`` instead of raising; bad inputs raise :class:`GalnetValueError`.
    """
    t_start = time.perf_counter()
    if solver not in _SOLVERS:
        raise GalnetValueError(f"imfit_fit: unknown solver {solver!r} (use {', '.join(_SOLVERS)})",
                               "solver", solver)
    if mode not in _MODES:
        raise GalnetValueError(f"imfit_fit: unknown mode {mode!r} (use {' or '.join(_MODES)})",
                               "mode", mode)
    pyimfit = _import_pyimfit()
    img = _as_plane(image, "image")
    shape = img.shape
    psf_a = _as_plane(psf, "psf")
    if not np.isfinite(psf_a).all() or psf_a.sum() <= 0:
        raise GalnetValueError("imfit_fit: psf must be finite with a positive sum", "psf")
    sig = np.ones(shape) if sigma is None else _as_plane(sigma, "sigma", shape)
    bad = ~np.isfinite(img) | ~np.isfinite(sig) | (sig <= 0)
    if mask is not None:
        bad |= _as_plane(mask, "mask", shape) != 0
    npix = int((~bad).sum())
    if npix <= 7:
        raise GalnetValueError(f"imfit_fit: only {npix} unmasked pixels", "mask", npix)
    img = np.where(bad, 0.0, img)
    sig = np.where(bad, 1.0, sig)

    m0 = to_imfit(init, zeropoint=zeropoint)
    lim = _imfit_limits(m0, max(shape), limits)
    model = imfit_model_dict({k: lim[k][0] for k in IMFIT_KEYS})
    fset = model["function_sets"][0]
    for k in ("X0", "Y0"):
        fset[k] = [lim[k][0], lim[k][1], lim[k][2]]
    fset["function_list"][0]["parameters"] = {
        k: [lim[k][0], lim[k][1], lim[k][2]] for k in _IMFIT_SERSIC}

    out = {k: math.nan for k in ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")}
    if zeropoint is not None:
        out["mag"] = math.nan
    out.update({f"{k}_err": math.nan for k in list(out)})
    out.update(chi2=math.nan, chi2nu=math.nan, npix=npix, niter=0, nfev=0, converged=False,
               bound_hit=False, time_s=math.nan, message="", solver=solver)
    t0 = time.perf_counter()
    try:
        fitter = pyimfit.Imfit(model, psf=psf_a, maxThreads=int(max_threads),
                               subsampling=mode == "imfit")
        fitter.fit(img, error=sig, mask=bad, solver=solver, ftol=ftol)
        out["time_s"] = time.perf_counter() - t0
        best = np.asarray(fitter.getRawParameters(), dtype=float)
        converged = bool(fitter.fitConverged) and np.isfinite(best).all()
        chi2 = float(fitter.fitStatistic)
        out.update(niter=int(fitter.nIter), nfev=int(fitter.nFuncEvals), chi2=chi2,
                   chi2nu=chi2 / (npix - 7))
        # PyImfit's raw vector is X0, Y0, PA, ell, n, I_e, r_e: the order of IMFIT_KEYS
        vals = dict(zip(IMFIT_KEYS, best, strict=True))
        out.update({k: float(v) for k, v in from_imfit(vals, zeropoint=zeropoint).items()})
        perr = fitter.parameterErrors
        if perr is not None:
            errs = dict(zip(IMFIT_KEYS, np.asarray(perr, dtype=float), strict=True))
            out.update(_galnet_errors(vals, errs, out))
            if flux_err:
                out.update(_flux_error(fitter, best, sig, bad, out, zeropoint))
        # on a limit to 1e-6 of its value or 1e-9 of the range (I_e: a lower limit 0, and
        # values ~1e-13 in images of ~1e-12 units: an absolute tolerance would flag every fit)
        hit = [k for k in IMFIT_KEYS if k != "PA"
               and np.isclose(vals[k], lim[k][1:], rtol=1e-6,
                              atol=1e-9 * (lim[k][2] - lim[k][1])).any()]
        out["bound_hit"] = bool(hit)
        out["converged"] = bool(converged)
        if not converged:
            out["message"] = "Imfit did not converge"
    except Exception as err:  # noqa: BLE001 - PyImfit raises bare Exceptions; a failure is a result
        out["converged"] = False
        out["message"] = f"{type(err).__name__}: {err}"
        if math.isnan(out["time_s"]):
            out["time_s"] = time.perf_counter() - t0
    out["time_total_s"] = time.perf_counter() - t_start
    return out


def _flux_error(fitter, best: np.ndarray, sig: np.ndarray, bad: np.ndarray, out: dict,
                zeropoint: float | None) -> dict:
    """flux_err (and mag_err) from the covariance ``(J^T W J)^-1`` of the 7 parameters.

    J by forward differences of Imfit's model image (the same model it fitted); the flux
    gradient by central differences of :func:`from_imfit`. The diagonal of this covariance
    reproduces PyImfit's parameter errors (to ~1e-4). The columns of J are normalised before
    the inversion: in image units of ~1e-12 the I_e column is ~1e20 times the others, beyond
    the dynamic range of a plain pseudo-inverse."""
    w = (~bad).ravel() / sig.ravel()
    m0 = np.asarray(fitter.getModelImage(newParameters=best), dtype=float).ravel()
    rel = np.abs(best[4:7])
    steps = np.array([*_JAC_STEP, *(_JAC_REL * np.where(rel > 0, rel, 1.0))])
    J = np.empty((m0.size, 7))
    for i in range(7):
        p = best.copy()
        p[i] += steps[i]
        J[:, i] = (np.asarray(fitter.getModelImage(newParameters=p), dtype=float).ravel()
                   - m0) / steps[i] * w
    norm = np.linalg.norm(J, axis=0)
    norm = np.where(norm > 0, norm, 1.0)
    Jn = J / norm
    cov = np.linalg.pinv(Jn.T @ Jn) / np.outer(norm, norm)
    grad = np.zeros(7)
    for i in (3, 4, 5, 6):  # the flux depends on ell, n, I_e, r_e only
        lo, hi = best.copy(), best.copy()
        lo[i] -= steps[i]
        hi[i] += steps[i]
        f = [from_imfit(dict(zip(IMFIT_KEYS, v, strict=True)))["flux"] for v in (lo, hi)]
        grad[i] = (f[1] - f[0]) / (2 * steps[i])
    ferr = float(math.sqrt(max(grad @ cov @ grad, 0.0)))
    res = {"flux_err": ferr}
    if zeropoint is not None:
        res["mag_err"] = 2.5 / math.log(10) * ferr / out["flux"]
    return res
