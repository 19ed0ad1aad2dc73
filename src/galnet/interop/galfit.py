"""GALFIT: the feedme of one object, its constraint file, and GALFIT's results read back (a
feedme or ``galfit.NN`` restart file, or the header of the output image block).

Every conversion goes through :mod:`galnet.conventions` (``to_galfit`` / ``from_galfit``,
``galfit_sersic_block``: ``XC = x + 1``, ``RE = re_pix``, ``AR = q``); see docs/conventions.md
and docs/export.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

from galnet.conventions import (
    GALFIT_KEYS,
    from_galfit,
    galfit_sersic_block,
    read_galfit_sersic_block,
    to_galfit,
)
from galnet.errors import GalnetFileError, GalnetValueError
from galnet.interop.imfit import NUMBER, ImfitLimits, exact, read_text

__all__ = ["galfit_feedme", "galfit_constraints", "read_galfit_feedme", "read_galfit_header"]

#: 2.5 / ln(10): d(mag) = MAG_PER_LN_FLUX * d(flux) / flux.
MAG_PER_LN_FLUX = 2.5 / math.log(10.0)


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
        ctl("J", exact(zeropoint), "Magnitude photometric zeropoint"),
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


def galfit_constraints(re_range: tuple[float, float], limits: ImfitLimits) -> str:
    """Text of a GALFIT constraint file: the limits of :class:`ImfitLimits` for component 1,
    with ``re_range`` (pixels) the r_e range of the object (:meth:`ImfitLimits.re_range`)."""
    q_lo, q_hi = limits.q_range
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


def read_galfit_feedme(path, zeropoint: float | None = None, exptime: float = 1.0) -> dict:
    """Read the first ``sersic`` component of a GALFIT feedme (or of GALFIT's restart file
    ``galfit.NN``, which holds the best fit) into galnet conventions.

    ``zeropoint`` defaults to line J of the file. Uses
    :func:`galnet.conventions.read_galfit_sersic_block` and :func:`~galnet.conventions.from_galfit`
    (``x = XC - 1``, ``flux = exptime 10**(-0.4 (MAG - zeropoint))``, ...). Returns a dict of
    floats (x, y, flux, mag, re_pix, n, q, pa_deg) plus ``free`` ({GALFIT key: bool}).
    """
    text = read_text(path, "GALFIT feedme")
    if zeropoint is None:
        m = re.search(r"^\s*J\)\s*(" + NUMBER + ")", text, re.MULTILINE)
        if m is None:
            raise GalnetValueError(f"{path}: no zeropoint (line J); give zeropoint=", "zeropoint")
        zeropoint = float(m.group(1))
    try:
        g = read_galfit_sersic_block(text)
        out = {k: float(v) for k, v in from_galfit(g, zeropoint, exptime).items()}
    except GalnetValueError as err:
        raise GalnetValueError(f"{path}: {err}", err.name, err.value) from err
    except ValueError as err:  # a field that is not a number
        raise GalnetValueError(f"{path}: bad number in the sersic component ({err})",
                               "feedme") from err
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
    where = "GALFIT header"
    if isinstance(header, str | Path):
        from astropy.io import fits

        where = f"{header}: GALFIT header"
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
            raise GalnetValueError(f"{where}: no sersic component", "component")
    zeropoint = header.get("MAGZPT")
    if zeropoint is None:
        raise GalnetValueError(f"{where}: no MAGZPT", "zeropoint")
    exptime = float(header.get("EXPTIME", 1.0)) if exptime is None else exptime
    vals, errs, flagged = {}, {}, False
    for k in GALFIT_KEYS:
        raw = header.get(f"{component}_{k}")
        if raw is None:
            raise GalnetValueError(f"{where}: no {component}_{k}", k)
        s = str(raw)
        flagged |= "*" in s
        nums = re.findall(NUMBER, s.replace("*", " ").replace("[", " ").replace("]", " "))
        if not nums:
            raise GalnetValueError(f"{where}: cannot read {component}_{k} = {s!r}", k)
        vals[k] = float(nums[0])
        errs[k] = float(nums[1]) if len(nums) > 1 else 0.0
    try:
        zeropoint = float(zeropoint)
    except (TypeError, ValueError) as err:
        raise GalnetValueError(f"{where}: MAGZPT = {zeropoint!r} is not a number",
                               "zeropoint") from err
    out = {k: float(v) for k, v in from_galfit(vals, zeropoint, exptime).items()}
    flip = vals["AR"] > 1
    out.update({
        "x_err": errs["XC"], "y_err": errs["YC"],
        "flux_err": out["flux"] * errs["MAG"] / MAG_PER_LN_FLUX, "mag_err": errs["MAG"],
        "re_pix_err": math.hypot(vals["AR"] * errs["RE"], vals["RE"] * errs["AR"])
        if flip else errs["RE"],
        "n_err": errs["N"], "q_err": errs["AR"] * out["q"] ** 2 if flip else errs["AR"],
        "pa_deg_err": errs["PA"],
        "chi2nu": float(header.get("CHI2NU", math.nan)), "galfit_flagged": bool(flagged),
    })
    return out
