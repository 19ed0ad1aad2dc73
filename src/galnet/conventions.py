"""The one source of truth for galnet's parameter conventions (a contract; see docs/conventions.md).

- ``x``, ``y``: 0-based pixel coordinates of the profile centre; pixel centres are at integers
  (numpy/astropy/photutils). ``image[iy, ix]``. The centre of a 61x61 stamp is (30, 30).
- ``mag``: AB magnitude, ``zeropoint - 2.5 log10(flux)``; ``flux`` is the total flux integrated
  to infinity, in image units (counts).
- ``re_pix``: half-light radius along the semi-major axis, pixels; ``re_arcsec = re_pix * scale``.
- ``n``: Sérsic index.  ``q = b/a`` in (0, 1].
- ``pa_deg``: position angle of the major axis in [0, 180), degrees counter-clockwise from the
  +y axis of the image (GALFIT / Imfit convention). The major axis points along
  ``(-sin pa, cos pa)`` in (x, y).
"""

from __future__ import annotations

import numpy as np

from galnet.params import SERSIC, ParamSpec, column_units

#: The seven Sérsic parameters in the order the network and the fitter use them, from the
#: parameter table (:mod:`galnet.params`, the one source of truth). Survey priors (narrower)
#: live in the presets file (galnet/data/presets.toml).
PARAMS: tuple[ParamSpec, ...] = SERSIC.params

PARAM_NAMES: tuple[str, ...] = SERSIC.names
SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMS}

#: Units of every catalogue column galnet writes (used to attach astropy units).
COLUMN_UNITS: dict[str, str] = column_units(SERSIC)


def mag_to_flux(mag, zeropoint: float):
    """Total flux (image units) of an AB magnitude: ``10 ** (-0.4 (mag - zeropoint))``."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - zeropoint))


def flux_to_mag(flux, zeropoint: float):
    """AB magnitude of a total flux (image units): ``zeropoint - 2.5 log10(flux)``."""
    return zeropoint - 2.5 * np.log10(np.asarray(flux, dtype=float))


def magnitudes(flux, flux_err, zeropoint: float) -> tuple[np.ndarray, np.ndarray]:
    """``(mag, mag_err)`` of total fluxes and their 1-sigma errors (image units): NaN where the
    flux is not positive; ``mag_err = 2.5 / ln(10) * flux_err / flux``."""
    f = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = flux_to_mag(np.where(f > 0, f, np.nan), zeropoint)
        mag_err = 2.5 / np.log(10.0) * np.asarray(flux_err, dtype=float) / f
    return mag, mag_err


def wrap_pa(pa_deg):
    """Wrap position angles (degrees) into [0, 180)."""
    return SPECS["pa_deg"].wrap(pa_deg)


def stamp_centre(shape: tuple[int, int]) -> tuple[float, float]:
    """(x, y) of the centre of a stamp of ``shape = (ny, nx)``: ((nx-1)/2, (ny-1)/2)."""
    ny, nx = shape
    return (nx - 1) / 2.0, (ny - 1) / 2.0


# ---------------------------------------------------------------------------------------------
# Converters to and from other codes (GALFIT, Imfit/PyImfit, GalSim).  See docs/conventions.md.
#
# All converters are vectorised: parameter values may be scalars or numpy arrays that broadcast
# together; mappings and astropy Tables are accepted as input.  They are exact (no fitting).
# ---------------------------------------------------------------------------------------------

#: Keys of the GALFIT dictionaries: the names GALFIT uses in its output header for component
#: ``k`` (``k_XC``, ``k_YC``, ``k_MAG``, ``k_RE``, ``k_N``, ``k_AR``, ``k_PA``) without the prefix.
GALFIT_KEYS: tuple[str, ...] = ("XC", "YC", "MAG", "RE", "N", "AR", "PA")

#: Keys of the Imfit dictionaries: Imfit's own names (``X0``, ``Y0`` of the function set and the
#: ``Sersic`` function parameters).
IMFIT_KEYS: tuple[str, ...] = ("X0", "Y0", "PA", "ell", "n", "I_e", "r_e")

#: Keys of the GalSim dictionaries (``offset`` is a pair ``(dx, dy)``).
GALSIM_KEYS: tuple[str, ...] = ("n", "half_light_radius", "q", "beta_deg", "flux", "offset")

_SHAPE_KEYS = ("x", "y", "re_pix", "n", "q", "pa_deg")


def _colnames(params) -> tuple[str, ...]:
    """Names of the columns of a mapping or an astropy Table."""
    names = getattr(params, "colnames", None)
    return tuple(names) if names is not None else tuple(params.keys())


def _col(params, name: str) -> np.ndarray:
    """One column as a float array (astropy units, if any, are dropped)."""
    value = params[name]
    value = getattr(value, "value", value)  # astropy Quantity -> plain values
    return np.asarray(value, dtype=float)


def _require(params, names, where: str) -> None:
    """Raise GalnetValueError naming the first missing key."""
    from galnet.errors import GalnetValueError

    have = set(_colnames(params))
    for name in names:
        if name not in have:
            raise GalnetValueError(f"{where}: missing parameter '{name}'", name=name)


def _check(cond, where: str, name: str, what: str, value) -> None:
    """Raise GalnetValueError unless ``cond`` holds everywhere."""
    from galnet.errors import GalnetValueError

    if not np.all(cond):
        raise GalnetValueError(f"{where}: {name} {what}", name=name, value=value)


def _galnet_shape(params, where: str) -> dict[str, np.ndarray]:
    """Validated x, y, re_pix, n, q, pa_deg of galnet parameters."""
    _require(params, _SHAPE_KEYS, where)
    p = {k: _col(params, k) for k in _SHAPE_KEYS}
    for k, v in p.items():
        _check(np.isfinite(v), where, k, "must be finite", v)
    _check(p["re_pix"] > 0, where, "re_pix", "must be > 0", p["re_pix"])
    _check(p["n"] > 0, where, "n", "must be > 0", p["n"])
    _check((p["q"] > 0) & (p["q"] <= 1), where, "q", "must be in (0, 1]", p["q"])
    return p


def _galnet_flux(params, zeropoint: float | None, where: str) -> np.ndarray:
    """Total flux of galnet parameters: ``flux`` if given, else from ``mag`` and ``zeropoint``."""
    from galnet.errors import GalnetValueError

    names = _colnames(params)
    if "flux" in names:
        flux = _col(params, "flux")
    elif "mag" in names:
        if zeropoint is None:
            raise GalnetValueError(f"{where}: 'mag' given without a zeropoint", name="zeropoint")
        flux = mag_to_flux(_col(params, "mag"), zeropoint)
    else:
        raise GalnetValueError(f"{where}: missing parameter 'flux' (or 'mag')", name="flux")
    _check(np.isfinite(flux) & (flux > 0), where, "flux", "must be finite and > 0", flux)
    return flux


def _galnet_out(x, y, flux, re_pix, n, q, pa_deg, zeropoint: float | None) -> dict:
    """galnet parameter dict; ``mag`` only when a zeropoint is known."""
    out = {"x": x, "y": y, "flux": flux}
    if zeropoint is not None:
        out["mag"] = flux_to_mag(flux, zeropoint)
    out.update(re_pix=re_pix, n=n, q=q, pa_deg=pa_deg)
    return out


def _major_axis(re, q, pa_deg):
    """Make ``q <= 1``: a profile with ``q = b/a > 1`` has its major axis along b.

    The semi-major half-light radius is then ``re * q``, the axis ratio ``1/q`` and the PA
    ``pa + 90``.  Returns ``(re_pix, q, pa_deg)`` with ``pa_deg`` wrapped into [0, 180).
    """
    flip = q > 1.0
    re_pix = np.where(flip, re * q, re)
    pa = np.where(flip, pa_deg + 90.0, pa_deg)
    q_out = np.where(flip, 1.0 / q, q)
    return re_pix, q_out, wrap_pa(pa)


def _scalar_if_0d(d: dict) -> dict:
    """Turn 0-d arrays into numpy scalars (so scalar inputs give scalar outputs)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, tuple):
            out[k] = tuple(e[()] if isinstance(e, np.ndarray) and e.ndim == 0 else e for e in v)
        else:
            out[k] = v[()] if isinstance(v, np.ndarray) and v.ndim == 0 else v
    return out


# ----------------------------------------------------------------------------------- GALFIT


def galfit_pa(pa_deg):
    """PA (deg, CCW from +y) in GALFIT's reporting range (-90, 90]: ``90 - mod(90 - pa, 180)``."""
    return 90.0 - np.mod(90.0 - np.asarray(pa_deg, dtype=float), 180.0)


def to_galfit(params, zeropoint: float, exptime: float = 1.0) -> dict:
    """galnet parameters -> GALFIT ``sersic`` component parameters.

    Parameters
    ----------
    params : mapping or astropy Table with x, y, re_pix, n, q, pa_deg and ``flux`` (image units)
        or ``mag`` (then ``zeropoint`` converts it: flux = 10**(-0.4 (mag - zeropoint))).
    zeropoint : GALFIT's magnitude zeropoint ``magzpt`` (feedme line J), mag.
    exptime : GALFIT's exposure time (header EXPTIME), s [default: 1].

    Returns
    -------
    dict with GALFIT's header names (:data:`GALFIT_KEYS`):

    - ``XC, YC = x + 1, y + 1``: GALFIT pixels are 1-based (first pixel centre at (1, 1)).
    - ``MAG = zeropoint - 2.5 log10(flux / exptime)``: GALFIT's integrated magnitude.
    - ``RE = re_pix``: half-light radius along the semi-major axis, pixels.
    - ``N = n``; ``AR = q`` (b/a).
    - ``PA``: degrees CCW from +y ("up = 0, left = 90"), in GALFIT's range (-90, 90].
    """
    where = "to_galfit"
    p = _galnet_shape(params, where)
    flux = _galnet_flux(params, zeropoint, where)
    _check(np.asarray(exptime) > 0, where, "exptime", "must be > 0", exptime)
    out = {
        "XC": p["x"] + 1.0,
        "YC": p["y"] + 1.0,
        "MAG": zeropoint - 2.5 * np.log10(flux / exptime),
        "RE": p["re_pix"] * 1.0,
        "N": p["n"] * 1.0,
        "AR": p["q"] * 1.0,
        "PA": galfit_pa(p["pa_deg"]),
    }
    return _scalar_if_0d(out)


def from_galfit(galfit: dict, zeropoint: float, exptime: float = 1.0) -> dict:
    """GALFIT ``sersic`` parameters (:data:`GALFIT_KEYS`) -> galnet parameters.

    Inverse of :func:`to_galfit`: ``x = XC - 1``, ``y = YC - 1``,
    ``flux = exptime * 10**(-0.4 (MAG - zeropoint))`` (image units), ``mag = zeropoint -
    2.5 log10(flux)`` (galnet's magnitude of the image flux), ``re_pix = RE``, ``n = N``,
    ``q = AR``, ``pa_deg = PA`` wrapped into [0, 180).  An axis ratio AR > 1 (allowed by GALFIT)
    is folded to ``q = 1/AR``, ``re_pix = RE * AR``, ``pa_deg = PA + 90``.
    """
    where = "from_galfit"
    _require(galfit, GALFIT_KEYS, where)
    g = {k: _col(galfit, k) for k in GALFIT_KEYS}
    _check((g["AR"] > 0) & (g["RE"] > 0), where, "AR/RE", "must be > 0", (g["AR"], g["RE"]))
    flux = exptime * 10.0 ** (-0.4 * (g["MAG"] - zeropoint))
    re_pix, q, pa = _major_axis(g["RE"], g["AR"], g["PA"])
    out = _galnet_out(g["XC"] - 1.0, g["YC"] - 1.0, flux, re_pix, g["N"] * 1.0, q, pa, zeropoint)
    return _scalar_if_0d(out)


def galfit_sersic_block(galfit: dict, number: int = 1, free: bool | dict = True,
                        skip: bool = False) -> str:
    """Text of one GALFIT feedme ``sersic`` component (lines 0, 1, 3, 4, 5, 9, 10, Z).

    Parameters
    ----------
    galfit : one object's GALFIT parameters (scalars), e.g. from :func:`to_galfit`.
    number : component number written in the header comment.
    free : True (all parameters free), False (all fixed), or a dict {GALFIT key: bool};
        missing keys are free.
    skip : write ``Z) 1`` (leave this component out of the output model image).

    Values are written with 12 significant digits; lines 6-8 (unused for ``sersic``) are left out.
    """
    from galnet.errors import GalnetValueError

    _require(galfit, GALFIT_KEYS, "galfit_sersic_block")
    vals = {}
    for k in GALFIT_KEYS:
        v = _col(galfit, k)
        if v.size != 1:
            raise GalnetValueError(
                f"galfit_sersic_block: {k} must be a scalar, got shape {v.shape}", name=k)
        vals[k] = float(v.reshape(()))
    if isinstance(free, dict):
        unknown = set(free) - set(GALFIT_KEYS)
        if unknown:
            raise GalnetValueError(
                f"galfit_sersic_block: unknown key(s) in free: {sorted(unknown)}", name="free")
        fl = {k: int(bool(free.get(k, True))) for k in GALFIT_KEYS}
    else:
        fl = dict.fromkeys(GALFIT_KEYS, int(bool(free)))

    def f(v: float) -> str:
        return f"{v:.12g}"

    lines = [
        f"# Component number: {number}",
        f" 0) {'sersic':<28s} #  Component type",
        f" 1) {f(vals['XC'])} {f(vals['YC'])} {fl['XC']} {fl['YC']}".ljust(32)
        + " #  Position x, y",
        f" 3) {f(vals['MAG'])} {fl['MAG']}".ljust(32) + " #  Integrated magnitude",
        f" 4) {f(vals['RE'])} {fl['RE']}".ljust(32) + " #  R_e (effective radius)   [pix]",
        f" 5) {f(vals['N'])} {fl['N']}".ljust(32) + " #  Sersic index n (de Vaucouleurs n=4)",
        f" 9) {f(vals['AR'])} {fl['AR']}".ljust(32) + " #  Axis ratio (b/a)",
        f"10) {f(vals['PA'])} {fl['PA']}".ljust(32)
        + " #  Position angle (PA) [deg: Up=0, Left=90]",
        f" Z) {int(bool(skip))}".ljust(32) + " #  Skip this model in output image?  (yes=1, no=0)",
    ]
    return "\n".join(lines) + "\n"


def read_galfit_sersic_block(text: str) -> dict:
    """Parse the first ``sersic`` component of feedme text into GALFIT parameters.

    Returns the :data:`GALFIT_KEYS` values (floats) plus ``free``: {key: bool}.  Parameters
    absent from the block get GALFIT's defaults (n = 4, b/a = 1, PA = 0, fixed).
    """
    from galnet.errors import GalnetValueError

    vals = {"N": 4.0, "AR": 1.0, "PA": 0.0}
    free = {"N": False, "AR": False, "PA": False}
    in_sersic = False
    item = {"3": "MAG", "4": "RE", "5": "N", "9": "AR", "10": "PA"}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if ")" not in line:
            continue
        key, _, rest = line.partition(")")
        key, fields = key.strip(), rest.split()
        if key == "0":
            if in_sersic:
                break  # next component
            in_sersic = bool(fields) and fields[0] == "sersic"
        elif not in_sersic:
            continue
        elif key == "1":
            vals["XC"], vals["YC"] = float(fields[0]), float(fields[1])
            free["XC"] = free["YC"] = True
            if len(fields) >= 4:
                free["XC"], free["YC"] = fields[2] == "1", fields[3] == "1"
        elif key in item:
            vals[item[key]] = float(fields[0])
            free[item[key]] = len(fields) < 2 or fields[1] == "1"
    missing = [k for k in ("XC", "YC", "MAG", "RE") if k not in vals]
    if missing:
        raise GalnetValueError(f"read_galfit_sersic_block: no sersic component with {missing}",
                               name=missing[0])
    return {**{k: vals[k] for k in GALFIT_KEYS}, "free": free}


# ------------------------------------------------------------------------------------ Imfit

# Ciotti & Bertin (1999) asymptotic series, as coded in Imfit (helper_funcs.cpp, Calculate_bn):
# b_n = 2n - 1/3 + 4/(405 n) + 46/(25515 n^2) + 131/(1148175 n^3) - 2194697/(30690717750 n^4).
IMFIT_BN_CB99 = (0.333333333333333, 0.009876543209876543, 0.0018028610621203215,
                 0.00011409410586365319, 7.1510122958919723e-05)
# MacArthur, Courteau & Holtzman (2003) polynomial used by Imfit for n <= 0.36.
IMFIT_BN_M03 = (0.01945, -0.8902, 10.95, -19.67, 13.43)


def imfit_bn(n):
    """Sérsic b_n exactly as Imfit computes it (``Calculate_bn`` in helper_funcs.cpp).

    For ``n > 0.36`` the Ciotti & Bertin (1999) series
    ``b = 2n - 1/3 + 4/(405n) + 46/(25515n^2) + 131/(1148175n^3) - 2194697/(30690717750n^4)``;
    otherwise the MacArthur, Courteau & Holtzman (2003) polynomial
    ``b = 0.01945 - 0.8902n + 10.95n^2 - 19.67n^3 + 13.43n^4``.
    Relative to the exact ``gammaincinv(2n, 0.5)``: < 4e-4 for n >= 0.5, < 1e-4 for n >= 0.72,
    < 1.3e-6 for n >= 2.  Only the Imfit converters use it; galnet uses the exact b_n.
    """
    n = np.asarray(n, dtype=float)
    n2 = n * n
    c, m = IMFIT_BN_CB99, IMFIT_BN_M03
    with np.errstate(divide="ignore", invalid="ignore"):
        cb = 2.0 * n - c[0] + c[1] / n + c[2] / n2 + c[3] / (n2 * n) - c[4] / (n2 * n2)
    m03 = m[0] + m[1] * n + m[2] * n2 + m[3] * n2 * n + m[4] * n2 * n2
    out = np.where(n > 0.36, cb, m03)
    return out[()] if out.ndim == 0 else out


def _imfit_flux_per_ie(re, n, q):
    """Imfit's total flux for I_e = 1: ``2 pi q r_e^2 n e^b b^(-2n) Gamma(2n)``, b = imfit_bn(n).

    Computed in logs (``gammaln``) so that large n does not overflow.
    """
    from scipy.special import gammaln

    b = imfit_bn(n)
    return np.exp(np.log(2.0 * np.pi * q * re * re * n) + b - 2.0 * n * np.log(b) + gammaln(2 * n))


def to_imfit(params, zeropoint: float | None = None) -> dict:
    """galnet parameters -> Imfit ``Sersic`` function (and function-set centre).

    Parameters
    ----------
    params : mapping or astropy Table with x, y, re_pix, n, q, pa_deg and ``flux`` (image units)
        or ``mag`` (then ``zeropoint`` is required).
    zeropoint : mag zeropoint, only used to turn ``mag`` into flux.

    Returns
    -------
    dict with Imfit's names (:data:`IMFIT_KEYS`):

    - ``X0, Y0 = x + 1, y + 1``: Imfit pixels are 1-based (first pixel centre at (1, 1)).
    - ``PA = pa_deg`` (deg CCW from +y, in [0, 180)); ``ell = 1 - q``; ``n = n``;
      ``r_e = re_pix`` (semi-major, pixels).
    - ``I_e``: intensity at r_e (image units per pixel) giving the total ``flux`` *as Imfit
      means it*: ``flux = 2 pi q r_e^2 I_e n e^b b^(-2n) Gamma(2n)`` with Imfit's b_n
      (:func:`imfit_bn`), i.e. the profile Imfit draws is
      ``I_e exp(-b[(r/r_e)^(1/n) - 1])`` with that approximate b.
    """
    where = "to_imfit"
    p = _galnet_shape(params, where)
    flux = _galnet_flux(params, zeropoint, where)
    out = {
        "X0": p["x"] + 1.0,
        "Y0": p["y"] + 1.0,
        "PA": wrap_pa(p["pa_deg"]),
        "ell": 1.0 - p["q"],
        "n": p["n"] * 1.0,
        "I_e": flux / _imfit_flux_per_ie(p["re_pix"], p["n"], p["q"]),
        "r_e": p["re_pix"] * 1.0,
    }
    return _scalar_if_0d(out)


def from_imfit(imfit: dict, zeropoint: float | None = None) -> dict:
    """Imfit ``Sersic`` parameters (:data:`IMFIT_KEYS`) -> galnet parameters.

    Inverse of :func:`to_imfit`: ``x = X0 - 1``, ``y = Y0 - 1``, ``q = 1 - ell``,
    ``pa_deg = PA`` wrapped into [0, 180), ``re_pix = r_e``, ``n = n``,
    ``flux = 2 pi q r_e^2 I_e n e^b b^(-2n) Gamma(2n)`` with b = :func:`imfit_bn` (Imfit's own
    total flux); ``mag`` is added when ``zeropoint`` is given.  ``ell < 0`` (q > 1) is folded
    to ``q = 1/(1 - ell)``, ``re_pix = r_e (1 - ell)``, ``pa_deg = PA + 90``.
    """
    where = "from_imfit"
    _require(imfit, IMFIT_KEYS, where)
    m = {k: _col(imfit, k) for k in IMFIT_KEYS}
    q_raw = 1.0 - m["ell"]
    _check((q_raw > 0) & (m["r_e"] > 0) & (m["n"] > 0), where, "ell/r_e/n",
           "must give q > 0, r_e > 0, n > 0", (m["ell"], m["r_e"], m["n"]))
    flux = m["I_e"] * _imfit_flux_per_ie(m["r_e"], m["n"], q_raw)
    re_pix, q, pa = _major_axis(m["r_e"], q_raw, m["PA"])
    out = _galnet_out(m["X0"] - 1.0, m["Y0"] - 1.0, flux, re_pix, m["n"] * 1.0, q, pa, zeropoint)
    return _scalar_if_0d(out)


def imfit_model_dict(imfit: dict) -> dict:
    """One object's Imfit parameters as a PyImfit model dict (one function set, one Sersic).

    Use as ``pyimfit.Imfit(pyimfit.ModelDescription.dict_to_ModelDescription(d), psf=psf)``.
    """
    from galnet.errors import GalnetValueError

    _require(imfit, IMFIT_KEYS, "imfit_model_dict")
    v = {}
    for k in IMFIT_KEYS:
        a = _col(imfit, k)
        if a.size != 1:
            raise GalnetValueError(f"imfit_model_dict: {k} must be a scalar, got shape {a.shape}",
                                   name=k)
        v[k] = float(a.reshape(()))
    sersic = {"name": "Sersic", "label": "galnet",
              "parameters": {k: v[k] for k in ("PA", "ell", "n", "I_e", "r_e")}}
    return {"function_sets": [{"X0": v["X0"], "Y0": v["Y0"], "function_list": [sersic]}]}


# ----------------------------------------------------------------------------------- GalSim


def to_galsim(params, shape: tuple[int, int], zeropoint: float | None = None) -> dict:
    """galnet parameters -> GalSim ``Sersic`` arguments for a stamp of ``shape = (ny, nx)``.

    Returns a dict (:data:`GALSIM_KEYS`), pixel units (``scale = 1``):

    - ``n``; ``flux`` (total, image units).
    - ``half_light_radius = re_pix * sqrt(q)``: GalSim's hlr is that of the circular profile
      before ``shear``, which keeps the area: semi-axes ``hlr / sqrt(q)`` and ``hlr sqrt(q)``.
    - ``q`` and ``beta_deg = pa_deg + 90`` wrapped into [0, 180): GalSim's shear angle is the
      major-axis angle CCW from +x; +x is the column axis, +y the row axis of ``image[iy, ix]``.
    - ``offset = (dx, dy) = (x - (nx-1)/2, y - (ny-1)/2)``: shift from the stamp's true centre
      (GalSim's ``image.true_center``, 1-based ``((nx+1)/2, (ny+1)/2)``, is 0-based
      ``stamp_centre(shape)`` for odd and even sizes), as used by ``drawImage(offset=...)`` or
      ``obj.shift(dx, dy)`` when drawing with ``nx, ny, scale=1``.
    """
    where = "to_galsim"
    p = _galnet_shape(params, where)
    flux = _galnet_flux(params, zeropoint, where)
    cx, cy = stamp_centre(shape)
    out = {
        "n": p["n"] * 1.0,
        "half_light_radius": p["re_pix"] * np.sqrt(p["q"]),
        "q": p["q"] * 1.0,
        "beta_deg": wrap_pa(p["pa_deg"] + 90.0),
        "flux": flux * 1.0,
        "offset": (p["x"] - cx, p["y"] - cy),
    }
    return _scalar_if_0d(out)


def from_galsim(galsim_args: dict, shape: tuple[int, int], zeropoint: float | None = None) -> dict:
    """GalSim ``Sersic`` arguments (:data:`GALSIM_KEYS`) -> galnet parameters.

    Inverse of :func:`to_galsim`: ``re_pix = half_light_radius / sqrt(q)``,
    ``pa_deg = beta_deg - 90`` wrapped into [0, 180), ``(x, y) = stamp_centre(shape) + offset``;
    ``mag`` is added when ``zeropoint`` is given.
    """
    where = "from_galsim"
    _require(galsim_args, GALSIM_KEYS, where)
    g = {k: _col(galsim_args, k) for k in GALSIM_KEYS if k != "offset"}
    dx, dy = (np.asarray(v, dtype=float) for v in galsim_args["offset"])
    _check((g["q"] > 0) & (g["q"] <= 1), where, "q", "must be in (0, 1]", g["q"])
    cx, cy = stamp_centre(shape)
    out = _galnet_out(cx + dx, cy + dy, g["flux"] * 1.0, g["half_light_radius"] / np.sqrt(g["q"]),
                      g["n"] * 1.0, g["q"] * 1.0, wrap_pa(g["beta_deg"] - 90.0), zeropoint)
    return _scalar_if_0d(out)


def galsim_sersic(params, shape: tuple[int, int], gsparams=None, zeropoint: float | None = None):
    """The ``galsim.Sersic`` of one object, sheared and shifted, in pixel units (scale = 1).

    Drawn with ``obj.drawImage(nx=shape[1], ny=shape[0], scale=1.0, ...)`` (no offset) its
    centre lands at 0-based ``(x, y)`` and its major axis along ``(-sin pa, cos pa)``.
    ``Sersic(n, half_light_radius=re_pix sqrt(q), flux).shear(q=q, beta=pa + 90 deg)
    .shift(x - (nx-1)/2, y - (ny-1)/2)``; see :func:`to_galsim`.  GalSim accepts
    0.3 <= n <= 6.2 only.
    """
    import galsim

    from galnet.errors import GalnetValueError

    g = to_galsim(params, shape, zeropoint=zeropoint)
    sizes = {np.size(v) for k, v in g.items() if k != "offset"} | {np.size(v) for v in g["offset"]}
    if sizes != {1}:
        raise GalnetValueError("galsim_sersic: params must describe one object (scalars)",
                               name="params")
    s = {k: float(np.reshape(v, ())) for k, v in g.items() if k != "offset"}
    dx, dy = (float(np.reshape(v, ())) for v in g["offset"])
    if not galsim.Sersic._minimum_n <= s["n"] <= galsim.Sersic._maximum_n:
        raise GalnetValueError(
            f"galsim_sersic: n={s['n']} outside GalSim's range "
            f"[{galsim.Sersic._minimum_n}, {galsim.Sersic._maximum_n}]", name="n", value=s["n"])
    obj = galsim.Sersic(n=s["n"], half_light_radius=s["half_light_radius"], flux=s["flux"],
                        gsparams=gsparams)
    return obj.shear(q=s["q"], beta=s["beta_deg"] * galsim.degrees).shift(dx, dy)
