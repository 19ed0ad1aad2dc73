"""Imfit: configuration files of one object, their parser, best-fit files read back, and the
parameter limits (:class:`ImfitLimits`) shared by the Imfit configs, the GALFIT constraint files
and :func:`galnet.interop.pyimfit_runner.imfit_fit`.

Every conversion goes through :mod:`galnet.conventions` (``to_imfit`` / ``from_imfit``:
``X0 = x + 1``, ``ell = 1 - q``, ``I_e`` at r_e with Imfit's b_n); see docs/conventions.md and
docs/export.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from galnet.conventions import IMFIT_KEYS, from_imfit, to_imfit
from galnet.errors import GalnetFileError, GalnetValueError
from galnet.params import SERSIC

__all__ = [
    "ImfitLimits",
    "DEFAULT_LIMITS",
    "imfit_config",
    "parse_imfit_config",
    "read_imfit_bestfit",
]

#: Side (pixels) of the smallest fitting box around an object of a frame: galnet's stamp size.
MIN_BOX = 61

#: The Sersic parameters of Imfit, in the order Imfit reads them (it ignores their names).
IMFIT_SERSIC = ("PA", "ell", "n", "I_e", "r_e")

#: A number as Imfit and GALFIT write it (also nan, inf).
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"


@dataclass(frozen=True)
class ImfitLimits:
    """Parameter limits written into Imfit configurations (and GALFIT constraint files) and used
    by :func:`galnet.interop.pyimfit_runner.imfit_fit`. Initial values outside them are moved
    onto them.

    Attributes
    ----------
    xy : centre, pixels either side of the initial position [default: 3].
    pa_half : PA, degrees either side of the initial PA [default: 180]: effectively free (Imfit's
        DE solver needs bounds). Not 90: a fit through ``ell < 0`` turns the PA by 90 degrees,
        and bounds at +-90 then stopped fits short of the truth.
    ell : ellipticity ``1 - q`` range [default: (-1, 0.95)]: q >= 0.05, below the q >= 0.1 of
        every training prior (galnet/data/presets.toml) and above ``SERSIC['q'].lower`` (0.02,
        checked on construction); ``ell < 0`` (Imfit's q up to 2: the
        major axis along the other axis, folded back by :func:`from_imfit`) lets a fit pass
        through round instead of sticking on an ``ell = 0`` bound (docs/export.md; GALFIT
        constraint: ``q 0.05 to 2``).
    ell_start : smallest initial ellipticity [default: 0.1]: at ``ell = 0`` the model does not
        depend on the PA and Imfit's LM then never moves the PA, so a round start (q = 1)
        begins at q = 0.9.
    n : Sérsic index range [default: (0.3, 8)], the training priors of every preset; narrower
        than the fitter's ``SERSIC['n'].fit`` (0.2, 10), which spans the renderer's whole
        validity range: a reference fit is kept where galnet is trained and compared, and must
        lie inside the table's range (checked on construction).
    re_min : smallest r_e, pixels [default: 0.05]: far below the PSF, a point source (at least
        ``SERSIC['re_pix'].lower``).
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
        size = MIN_BOX if size is None else size
        return self.re_min, max(self.re_max_factor * size, self.re_max_init * re0)

    def __post_init__(self):
        """Check the limits against the parameter table :data:`galnet.params.SERSIC`: a fit
        inside them must give a catalogue value galnet accepts (n within ``SERSIC['n'].fit``,
        ``q = 1 - ell >= SERSIC['q'].lower``, ``r_e >= SERSIC['re_pix'].lower``)."""
        n_lo, n_hi = SERSIC["n"].fit
        if not (n_lo <= self.n[0] < self.n[1] <= n_hi):
            raise GalnetValueError(f"ImfitLimits: n range {self.n} must be increasing and lie "
                                   f"within galnet's [{n_lo:g}, {n_hi:g}]", "n", self.n)
        q_lo = SERSIC["q"].lower
        if not (-1.0 <= self.ell[0] < self.ell[1] <= 1.0 - q_lo):
            raise GalnetValueError(f"ImfitLimits: ell range {self.ell} must be increasing within "
                                   f"[-1, {1.0 - q_lo:g}] (q = 1 - ell >= {q_lo:g})",
                                   "ell", self.ell)
        if not self.re_min >= SERSIC["re_pix"].lower:
            raise GalnetValueError(f"ImfitLimits: re_min {self.re_min} is below galnet's "
                                   f"{SERSIC['re_pix'].lower:g} pix", "re_min", self.re_min)

    @property
    def q_range(self) -> tuple[float, float]:
        """Axis-ratio range ``(1 - ell[1], 1 - ell[0])`` (q > 1: major axis turned by 90 deg)."""
        return 1.0 - self.ell[1], 1.0 - self.ell[0]


DEFAULT_LIMITS = ImfitLimits()


def exact(v: float) -> str:
    """A float written so that it reads back exactly."""
    return repr(float(v))


def apply_limits(m: dict, size, limits: ImfitLimits) -> dict[str, tuple[float, float, float]]:
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
    lim = apply_limits(m, size, limits)
    lines = [f"# {h}".rstrip() for h in header.splitlines()]

    def par(k: str, comment: str) -> str:
        v, lo, hi = lim[k]
        return f"{k:<6s}{exact(v):<24s}{exact(lo)},{exact(hi)}    # {comment}"

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


# ---------------------------------------------------------------------------------------------
# Reading results back
# ---------------------------------------------------------------------------------------------
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
        m = re.search(r"reduced\s+chi\^?2[^=]*=\s*(" + NUMBER + ")", comment, re.IGNORECASE)
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
        em = re.search(r"\+/-\s*(" + NUMBER + ")", comment)
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


def read_text(path, what: str) -> str:
    """Text of the file ``path`` (one-line GalnetFileError naming it and ``what`` it is)."""
    p = Path(path)
    if not p.is_file():
        raise GalnetFileError(f"{path}: no such file ({what})")
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise GalnetFileError(f"{path}: cannot read {what} ({err})") from err


def errors_from_imfit(vals: dict, errs: dict, out: dict) -> dict:
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
    try:
        cfg = parse_imfit_config(read_text(path, "Imfit parameter file"))
    except GalnetValueError as err:
        raise GalnetValueError(f"{path}: {err}", err.name, err.value) from err
    for fs in cfg["function_sets"]:
        for fn in fs["functions"]:
            if fn["name"] != "Sersic":
                continue
            if len(fn["params"]) != len(IMFIT_SERSIC) or fs["Y0"] is None:
                raise GalnetValueError(f"{path}: the Sersic function has "
                                       f"{len(fn['params'])} parameters, expected 5", "config")
            ps = {"X0": fs["X0"], "Y0": fs["Y0"],
                  **{k: p for k, (_, p) in zip(IMFIT_SERSIC, fn["params"], strict=True)}}
            vals = {k: ps[k]["value"] for k in IMFIT_KEYS}
            errs = {k: ps[k]["error"] for k in IMFIT_KEYS}
            try:
                out = {k: float(v) for k, v in from_imfit(vals, zeropoint=zeropoint).items()}
            except GalnetValueError as err:
                raise GalnetValueError(f"{path}: {err}", err.name, err.value) from err
            out.update(errors_from_imfit(vals, errs, out))
            out["chi2nu"] = cfg["chi2nu"]
            for other in fs["functions"]:
                if other["name"] == "FlatSky" and other["params"]:
                    out["sky"] = other["params"][0][1]["value"]
            return out
    raise GalnetValueError(f"{path}: no Sersic function", "config")
