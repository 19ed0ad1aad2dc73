"""Survey presets: pixel scale, photometry, noise, seeing and simulation priors.

All values live in one data file, ``galnet/data/presets.toml`` (documented there); this module only
loads, validates and samples them. A :class:`Preset` is frozen; ``Preset.config`` keeps the preset's
TOML table as a plain dict (written into every simulated file).

Sampling follows galnet's conventions (:mod:`galnet.conventions`): ``x``, ``y`` 0-based pixels of
the profile centre, ``mag`` AB with the preset's zeropoint, ``flux`` total image units, ``re_pix`` /
``re_arcsec`` semi-major half-light radius, ``n``, ``q = b/a``, ``pa_deg`` in [0, 180) CCW from +y.
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy import special

from galnet.conventions import flux_to_mag, mag_to_flux, stamp_centre
from galnet.errors import GalnetFileError, GalnetPresetError, GalnetValueError
from galnet.params import SERSIC

__all__ = [
    "Distribution",
    "PSFModel",
    "Background",
    "Preset",
    "get_preset",
    "list_presets",
    "load_presets",
    "default_preset_name",
    "point_source_depth",
]

#: Gauss-Legendre nodes on [0, pi/2] used for the light-in-circle integral (containment rule).
_N_PHI = 24
#: Rejection rounds before sample_params gives up (the acceptance is checked at load time).
_MAX_ROUNDS = 200
#: Sigma of a Gaussian of unit FWHM: FWHM = 2 sqrt(2 ln 2) sigma.
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
#: Allowed disagreement between the tabulated depth and the one implied by sky_rms (mag).
_DEPTH_TOLERANCE = 0.1


# ----------------------------------------------------------------------------------------------
# Distributions
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Distribution:
    """A 1-D prior: ``uniform`` / ``loguniform`` on [low, high] or ``truncnormal`` (mean, std)
    truncated to [low, high]."""

    dist: str
    low: float
    high: float
    mean: float = math.nan
    std: float = math.nan

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` float64 draws."""
        if self.dist == "uniform":
            return rng.uniform(self.low, self.high, n)
        if self.dist == "loguniform":
            return 10.0 ** rng.uniform(math.log10(self.low), math.log10(self.high), n)
        # truncnormal by inverting the normal CDF between the truncation points
        a = special.ndtr((self.low - self.mean) / self.std)
        b = special.ndtr((self.high - self.mean) / self.std)
        x = self.mean + self.std * special.ndtri(rng.uniform(a, b, n))
        return np.clip(x, self.low, self.high)

    def describe(self) -> str:
        """Short text, e.g. ``loguniform[0.1, 4]``."""
        if self.dist == "truncnormal":
            return f"N({self.mean:g}, {self.std:g}) in [{self.low:g}, {self.high:g}]"
        return f"{self.dist}[{self.low:g}, {self.high:g}]"


def _check_render_range(dist, bounds: tuple[float, float], where: str, name: str) -> None:
    """A prior must lie inside the renderer's range ``bounds`` (galnet.params, ``render``):
    inclusive, except that a lower bound of 0 is exclusive; an infinite upper bound is open."""
    lo, hi = bounds
    ok = (dist.low > lo if lo == 0 else dist.low >= lo) and dist.high <= hi
    if ok:
        return
    if math.isinf(hi):
        raise GalnetValueError(f"{where} must be > {lo:g}", name)
    left = "(" if lo == 0 else "["
    raise GalnetValueError(f"{where} must lie in {left}{lo:g}, {hi:g}] (renderer limits)", name)


def _distribution(d: Any, where: str) -> Distribution:
    if not isinstance(d, dict) or "dist" not in d:
        raise GalnetValueError(f"{where}: expected a table with 'dist', got {d!r}", where, d)
    kind = d["dist"]
    need = {"uniform": ("low", "high"), "loguniform": ("low", "high"),
            "truncnormal": ("mean", "std", "low", "high")}
    if kind not in need:
        raise GalnetValueError(f"{where}: unknown distribution {kind!r} (known: {', '.join(need)})",
                               where, kind)
    extra = set(d) - {"dist", *need[kind]}
    if extra:
        raise GalnetValueError(f"{where}: unexpected keys {sorted(extra)} for {kind!r}", where)
    vals = {k: _number(d.get(k), f"{where}.{k}") for k in need[kind]}
    if not vals["low"] < vals["high"]:
        raise GalnetValueError(f"{where}: low must be < high, got {vals['low']} and {vals['high']}",
                               where)
    if kind == "loguniform" and vals["low"] <= 0:
        raise GalnetValueError(f"{where}: loguniform needs low > 0, got {vals['low']}", where)
    if kind == "truncnormal" and vals["std"] <= 0:
        raise GalnetValueError(f"{where}: std must be > 0, got {vals['std']}", where)
    return Distribution(kind, **vals)


def _number(v: Any, where: str, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise GalnetValueError(f"{where} must be a finite number, got {v!r}", where, v)
    if positive and v <= 0:
        raise GalnetValueError(f"{where} must be > 0, got {v!r}", where, v)
    return float(v)


def _pair(v: Any, where: str) -> tuple[float, float]:
    if not isinstance(v, list) or len(v) != 2:
        raise GalnetValueError(f"{where} must be [low, high], got {v!r}", where, v)
    lo, hi = _number(v[0], where), _number(v[1], where)
    if not lo <= hi:
        raise GalnetValueError(f"{where}: low must be <= high, got {v!r}", where, v)
    return lo, hi


# ----------------------------------------------------------------------------------------------
# Preset parts
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PSFModel:
    """Analytic PSF family of a preset (see presets.toml, table ``psf``).

    moffat_beta : (low, high) of the uniform Moffat beta.
    kolmogorov_fraction : probability that an analytic PSF is Kolmogorov rather than Moffat.
    max_shear : largest |g| of the PSF shear (uniform in the disc |g| <= max_shear).
    bank_fraction : share of stamps with a real (bank) PSF when a bank is used.
    """

    moffat_beta: tuple[float, float]
    kolmogorov_fraction: float
    max_shear: float
    bank_fraction: float


@dataclass(frozen=True)
class Background:
    """Synthetic-background settings (see presets.toml, table ``background``).

    noise_correlation : nearest-neighbour kernel weight c of the sky noise ([c, 1, c] per axis).
    neighbours, stars : Poisson means per stamp.
    neighbour_mag, star_mag : (low, high) uniform AB magnitudes.
    neighbour_min_dist : minimum distance of a neighbour centre from the stamp centre (pixels).
    """

    noise_correlation: float
    neighbours: float
    neighbour_mag: tuple[float, float]
    neighbour_min_dist: float
    stars: float
    star_mag: tuple[float, float]


_PRIOR_KEYS = ("mag", "re_arcsec", "n", "q", "pa_deg", "offset_pix")


@dataclass(frozen=True)
class Preset:
    """A survey configuration; every number comes from ``presets.toml``.

    Attributes
    ----------
    name : preset name, e.g. ``"hsc-r"``.       description : one line.
    pixel_scale : arcsec / pixel.               zeropoint : AB mag of one image unit.
    stamp : stamp side (pixels, odd).           psf_size : PSF image side (pixels, odd).
    sky_rms : sky noise (image units / pixel).  gain : electrons per image unit.
    depth_5sigma : 5-sigma point-source depth (AB mag, optimal aperture) at ``depth_seeing``
        (FWHM, arcsec).
    seeing : PSF FWHM distribution (arcsec).    psf : analytic PSF family, :class:`PSFModel`.
    priors : mapping name -> :class:`Distribution` for mag, re_arcsec, n, q, pa_deg, offset_pix.
    containment : minimum fraction of the PSF-free light inside the stamp (see
        :meth:`light_in_stamp`).
    background : synthetic-background settings, :class:`Background`.
    config : the preset's TOML table as a plain dict (read-only view).
    """

    name: str
    description: str
    pixel_scale: float
    zeropoint: float
    stamp: int
    psf_size: int
    sky_rms: float
    depth_5sigma: float
    depth_seeing: float
    gain: float
    seeing: Distribution
    psf: PSFModel
    priors: MappingProxyType
    containment: float
    background: Background
    config: MappingProxyType = field(repr=False, compare=False)

    def __reduce__(self):  # picklable (MappingProxyType is not): rebuilt from its TOML table
        return (_build, (self.name, _thaw(self.config)))

    # -- derived quantities ----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """Stamp shape (ny, nx)."""
        return (self.stamp, self.stamp)

    @property
    def containment_radius(self) -> float:
        """Radius (pixels) of the circle that must hold ``containment`` of the light:
        ``(stamp - 1) / 2 - max |offset|``."""
        off = self.priors["offset_pix"]
        return (self.stamp - 1) / 2.0 - max(abs(off.low), abs(off.high))

    def depth(self, fwhm_arcsec: float | np.ndarray | None = None) -> float | np.ndarray:
        """5-sigma point-source depth (AB mag) implied by ``sky_rms`` at a seeing FWHM (arcsec)
        [default: ``depth_seeing``]; see :func:`point_source_depth`."""
        fwhm = self.depth_seeing if fwhm_arcsec is None else fwhm_arcsec
        return point_source_depth(self.sky_rms, fwhm, self.pixel_scale, self.zeropoint)

    def to_json(self) -> str:
        """The preset's full TOML content (plus its name) as JSON."""
        return json.dumps({"name": self.name, **_thaw(self.config)}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Preset:
        """The preset written by :meth:`to_json` (e.g. a simulation file's ``preset_config``),
        validated as when loaded from TOML."""
        cfg = json.loads(text)
        return _build(str(cfg.pop("name")), cfg)

    def light_in_stamp(self, re_pix, n, q, radius: float | None = None) -> np.ndarray:
        """Fraction of the (PSF-free) light of a Sérsic profile inside a circle of ``radius``
        pixels around its centre [default: :attr:`containment_radius`].

        In coordinates where the profile is circular (minor axis stretched by 1/q) the circle is an
        ellipse of radius ``t(phi) = R / sqrt(cos^2 phi + q^2 sin^2 phi)``, and the fraction is
        ``(2/pi) int_0^(pi/2) P(2n, b_n (t/r_e)^(1/n)) dphi`` (Gauss-Legendre, 24 nodes).
        """
        R = self.containment_radius if radius is None else float(radius)
        re_pix, n, q = (np.asarray(v, dtype=float)[..., None] for v in (re_pix, n, q))
        phi, w = _phi_nodes()
        t = R / np.sqrt(np.cos(phi) ** 2 + (q * np.sin(phi)) ** 2)
        bn = special.gammaincinv(2.0 * n, 0.5)
        frac = special.gammainc(2.0 * n, bn * (t / re_pix) ** (1.0 / n))
        return (frac * w).sum(-1) * (2.0 / np.pi)

    # -- sampling --------------------------------------------------------------------------------
    def sample_seeing(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` PSF FWHMs (arcsec) from the seeing distribution."""
        return self.seeing.sample(rng, _count(n))

    def sample_params(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """Draw ``n`` galaxies from the priors.

        ``mag``, ``q``, ``pa_deg`` and the centre offsets are drawn from their marginals;
        ``(re, n)`` pairs whose light fraction inside the stamp (:meth:`light_in_stamp`) is below
        ``containment`` are redrawn. Deterministic for a given generator state.

        Returns
        -------
        dict of float64 arrays (n,): x, y (pixels), mag (AB), flux (image units), re_pix (pixels),
        re_arcsec, n, q, pa_deg (degrees, [0, 180)).
        """
        n = _count(n)
        p = self.priors
        mag = p["mag"].sample(rng, n)
        q = p["q"].sample(rng, n)
        pa = SERSIC["pa_deg"].wrap(p["pa_deg"].sample(rng, n))
        cx, cy = stamp_centre(self.shape)
        x = cx + p["offset_pix"].sample(rng, n)
        y = cy + p["offset_pix"].sample(rng, n)
        re_arcsec = np.empty(n)
        sersic_n = np.empty(n)
        todo = np.arange(n)
        for _ in range(_MAX_ROUNDS):
            m = todo.size
            r_try = p["re_arcsec"].sample(rng, m)
            n_try = p["n"].sample(rng, m)
            ok = self.light_in_stamp(r_try / self.pixel_scale, n_try, q[todo]) >= self.containment
            re_arcsec[todo[ok]] = r_try[ok]
            sersic_n[todo[ok]] = n_try[ok]
            todo = todo[~ok]
            if todo.size == 0:
                break
        else:  # pragma: no cover - load-time validation makes this unreachable for shipped presets
            raise GalnetValueError(
                f"preset {self.name!r}: could not draw (re, n) inside the stamp after "
                f"{_MAX_ROUNDS} rounds; widen the priors or lower 'containment'", "containment")
        return {
            "x": x,
            "y": y,
            "mag": mag,
            "flux": mag_to_flux(mag, self.zeropoint),
            "re_pix": re_arcsec / self.pixel_scale,
            "re_arcsec": re_arcsec,
            "n": sersic_n,
            "q": q,
            "pa_deg": pa,
        }


def point_source_depth(sky_rms, fwhm_arcsec, pixel_scale: float, zeropoint: float):
    """5-sigma depth (AB mag) of a point source in an optimal (PSF-weighted) aperture.

    For a Gaussian PSF of width ``s = FWHM / 2.3548 / pixel_scale`` pixels on a sky of rms
    ``sky_rms`` per pixel, the noise of the optimal flux estimate is ``sky_rms sqrt(4 pi s^2)``,
    so ``depth = zeropoint - 2.5 log10(5 sky_rms sqrt(4 pi) s)``.
    """
    s = np.asarray(fwhm_arcsec, dtype=float) * _FWHM_TO_SIGMA / pixel_scale
    return flux_to_mag(5.0 * sky_rms * np.sqrt(4.0 * np.pi) * s, zeropoint)


@lru_cache(maxsize=1)
def _phi_nodes() -> tuple[np.ndarray, np.ndarray]:
    t, w = np.polynomial.legendre.leggauss(_N_PHI)
    return (t + 1.0) * np.pi / 4.0, w * np.pi / 4.0


def _count(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise GalnetValueError(f"n must be a non-negative integer, got {n!r}", "n", n)
    return int(n)


def _freeze(d: Any) -> Any:
    if isinstance(d, dict):
        return MappingProxyType({k: _freeze(v) for k, v in d.items()})
    if isinstance(d, list):
        return tuple(_freeze(v) for v in d)
    return d


def _thaw(d: Any) -> Any:
    if isinstance(d, MappingProxyType | dict):
        return {k: _thaw(v) for k, v in d.items()}
    if isinstance(d, tuple | list):
        return [_thaw(v) for v in d]
    return d


# ----------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------
_TOP_KEYS = {"description", "pixel_scale", "zeropoint", "stamp", "psf_size", "sky_rms",
             "depth_5sigma", "depth_seeing", "gain", "seeing", "psf", "priors", "background"}


def _table(t: dict, key: str, where: str) -> dict:
    v = t[key]
    if not isinstance(v, dict):
        raise GalnetValueError(f"{where}.{key} must be a table", key)
    return v


def _build(name: str, t: dict) -> Preset:
    where = f"preset {name!r}"
    missing = _TOP_KEYS - set(t)
    if missing:
        raise GalnetValueError(f"{where}: missing keys {sorted(missing)}", name)
    extra = set(t) - _TOP_KEYS
    if extra:
        raise GalnetValueError(f"{where}: unknown keys {sorted(extra)}", name)
    num = {k: _number(t[k], f"{where}.{k}", positive=k != "zeropoint" and k != "depth_5sigma")
           for k in ("pixel_scale", "zeropoint", "sky_rms", "depth_5sigma", "depth_seeing", "gain")}
    sizes = {}
    for k in ("stamp", "psf_size"):
        v = t[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 3 or v % 2 == 0:
            raise GalnetValueError(f"{where}.{k} must be an odd integer >= 3, got {v!r}", k, v)
        sizes[k] = v

    pr = _table(t, "priors", where)
    unknown = set(pr) - {*_PRIOR_KEYS, "containment"}
    if unknown:
        raise GalnetValueError(f"{where}.priors: unknown keys {sorted(unknown)}", "priors")
    priors = {}
    for k in _PRIOR_KEYS:
        if k not in pr:
            raise GalnetValueError(f"{where}.priors: missing {k!r}", k)
        priors[k] = _distribution(pr[k], f"{where}.priors.{k}")
    containment = _number(pr.get("containment"), f"{where}.priors.containment")
    if not 0 < containment < 1:
        raise GalnetValueError(f"{where}.priors.containment must be in (0, 1)", "containment")
    for k, spec in (("q", "q"), ("n", "n"), ("re_arcsec", "re_pix")):
        _check_render_range(priors[k], SERSIC[spec].render, f"{where}.priors.{k}", k)
    period = SERSIC["pa_deg"].cyclic
    if priors["pa_deg"].low < 0 or priors["pa_deg"].high > period:
        raise GalnetValueError(f"{where}.priors.pa_deg must lie in [0, {period:g}]", "pa_deg")
    off = priors["offset_pix"]
    if max(abs(off.low), abs(off.high)) >= (sizes["stamp"] - 1) / 4:
        raise GalnetValueError(f"{where}.priors.offset_pix is too wide for the stamp", "offset_pix")

    seeing = _distribution(t["seeing"], f"{where}.seeing")
    if seeing.low <= 0:
        raise GalnetValueError(f"{where}.seeing must be > 0 arcsec", "seeing")

    ps = _table(t, "psf", where)
    psf = PSFModel(
        moffat_beta=_pair(ps.get("moffat_beta"), f"{where}.psf.moffat_beta"),
        **{k: _number(ps.get(k), f"{where}.psf.{k}")
           for k in ("kolmogorov_fraction", "max_shear", "bank_fraction")},
    )
    if psf.moffat_beta[0] <= 1.5:
        raise GalnetValueError(f"{where}.psf.moffat_beta must be > 1.5 (finite FWHM/flux)", "psf")
    for k in ("kolmogorov_fraction", "bank_fraction"):
        if not 0 <= getattr(psf, k) <= 1:
            raise GalnetValueError(f"{where}.psf.{k} must be in [0, 1]", k)
    if not 0 <= psf.max_shear < 0.5:
        raise GalnetValueError(f"{where}.psf.max_shear must be in [0, 0.5)", "max_shear")

    bg = _table(t, "background", where)
    background = Background(
        **{k: _number(bg.get(k), f"{where}.background.{k}")
           for k in ("noise_correlation", "neighbours", "neighbour_min_dist", "stars")},
        **{k: _pair(bg.get(k), f"{where}.background.{k}") for k in ("neighbour_mag", "star_mag")},
    )
    if not 0 <= background.noise_correlation < 1:
        raise GalnetValueError(f"{where}.background.noise_correlation must be in [0, 1)",
                               "background")
    if background.neighbours < 0 or background.stars < 0:
        raise GalnetValueError(f"{where}.background: Poisson means must be >= 0", "background")
    if not 0 <= background.neighbour_min_dist < (sizes["stamp"] - 1) / 2:
        raise GalnetValueError(f"{where}.background.neighbour_min_dist must lie inside the stamp",
                               "background")

    preset = Preset(
        name=name,
        description=str(t["description"]),
        stamp=sizes["stamp"],
        psf_size=sizes["psf_size"],
        seeing=seeing,
        psf=psf,
        priors=MappingProxyType(priors),
        containment=containment,
        background=background,
        config=_freeze(copy.deepcopy(t)),
        **num,
    )
    # one source of truth, checked: the tabulated depth must follow from sky_rms
    implied = float(preset.depth())
    if abs(implied - preset.depth_5sigma) > _DEPTH_TOLERANCE:
        raise GalnetValueError(
            f"{where}: depth_5sigma = {preset.depth_5sigma} disagrees with sky_rms = "
            f"{preset.sky_rms} (implies {implied:.2f} at {preset.depth_seeing}\" seeing)",
            "depth_5sigma")
    # the containment rule must be satisfiable at the smallest radius and the largest n
    worst = preset.light_in_stamp(priors["re_arcsec"].low / preset.pixel_scale, priors["n"].high,
                                  priors["q"].high)
    if worst < containment:
        raise GalnetValueError(
            f"{where}: the smallest re with the largest n does not satisfy containment "
            f"({float(worst):.3f} < {containment})", "containment")
    return preset


def load_presets(path: str | Path | None = None) -> tuple[dict[str, Preset], str]:
    """Load and validate a presets file [default: the packaged ``galnet/data/presets.toml``].

    Returns
    -------
    (presets by name, default preset name)
    """
    where = "galnet/data/presets.toml" if path is None else str(path)
    try:
        if path is None:
            text = resources.files("galnet").joinpath("data/presets.toml").read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        raw = tomllib.loads(text)
    except OSError as err:
        raise GalnetFileError(f"cannot read presets file {where!r}: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise GalnetFileError(f"presets file {where!r} is not valid TOML: {err}") from err
    default = raw.get("default")
    tables = {k: v for k, v in raw.items() if isinstance(v, dict)}
    if not tables:
        raise GalnetFileError(f"presets file {where!r} defines no presets")
    presets = {name: _build(name, t) for name, t in tables.items()}
    if default not in presets:
        raise GalnetFileError(
            f"presets file {where!r}: 'default' must name one of {sorted(presets)}")
    return presets, default


@lru_cache(maxsize=1)
def _packaged() -> tuple[dict[str, Preset], str]:
    return load_presets()


def list_presets() -> list[str]:
    """Names of the packaged presets, default first."""
    presets, default = _packaged()
    return [default, *sorted(k for k in presets if k != default)]


def default_preset_name() -> str:
    """Name of the default preset (``default`` in presets.toml)."""
    return _packaged()[1]


def get_preset(name: str | Preset | None = None) -> Preset:
    """The packaged preset ``name`` [default: the default preset]; a :class:`Preset` passes through.

    Raises
    ------
    GalnetPresetError : unknown name.
    """
    if isinstance(name, Preset):
        return name
    presets, default = _packaged()
    if name is None:
        name = default
    if name not in presets:
        raise GalnetPresetError(f"unknown preset {name!r} (known: {', '.join(list_presets())})")
    return presets[name]
