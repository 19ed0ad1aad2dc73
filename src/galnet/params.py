"""The parameter tables: one source of truth for every model galnet measures.

A :class:`ModelTable` lists, for one model (the single Sérsic today), each parameter's name, unit,
physical bounds, renderer bounds, fitter bounds, the range of first guesses, whether it is
log-scaled or cyclic, and a one-line description. Everything that names, bounds, scales or wraps
a parameter reads it: the renderer's checks, the simulator's priors, the network's targets and
output squashing, the fitter's internal transform and bounds, the moment guesses, the
GALFIT/Imfit export limits, the catalogue columns and units, the evaluation's log/angle handling
and the flags. ``tests/test_params.py`` checks that they agree.

A new model (a bulge + disk, per-band fluxes) is a new :class:`ModelTable` registered in
:data:`MODELS`, not a new code path: its parameters carry a component prefix (``bulge_re_pix``)
and a ``role`` that says which Sérsic quantity they are.

Conventions (a contract; docs/conventions.md): ``x``, ``y`` 0-based pixel centres at integers;
``mag = zeropoint - 2.5 log10(flux)``; ``re_pix`` semi-major half-light radius in pixels;
``q = b/a`` in (0, 1]; ``pa_deg`` in [0, 180), counter-clockwise from +y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ParamSpec", "ModelTable", "SERSIC", "MODELS", "get_model", "DERIVED_COLUMNS",
    "column_units", "column_descriptions", "wrap", "fold_diff",
]

INF = math.inf


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a model.

    Attributes
    ----------
    name : column name in catalogues, HDF5 files and parameter mappings.
    unit : astropy unit string ("" for dimensionless).
    lower, upper : physical bounds, inclusive. A catalogue value outside them is not a galaxy.
    render : (lo, hi) the renderer accepts (inclusive); None: any finite value.
    fit : (lo, hi) the fitter keeps the parameter within (inclusive); None: unbounded.
    guess : (lo, hi) first guesses (moments, network starts) are clipped into; None: no clip.
    log : whether the quantity is log-scaled (network targets, priors, fitter, metrics in dex).
    cyclic : period if the parameter is an angle (wrapped into [0, cyclic)), else None.
    role : which Sérsic quantity it is ("x", "y", "mag", "re", "n", "q", "pa"); the metric key.
    doc : one-line description.
    """

    name: str
    unit: str
    lower: float
    upper: float
    render: tuple[float, float] | None = None
    fit: tuple[float, float] | None = None
    guess: tuple[float, float] | None = None
    log: bool = False
    cyclic: float | None = None
    role: str = ""
    doc: str = ""

    def wrap(self, values):
        """Values wrapped into [0, cyclic) for an angle; otherwise returned as float arrays."""
        v = np.asarray(values, dtype=float)
        return np.mod(v, self.cyclic) if self.cyclic else v

    def clip_guess(self, values):
        """First guesses clipped into :attr:`guess` (unchanged when None)."""
        v = np.asarray(values, dtype=float)
        return np.clip(v, *self.guess) if self.guess else v

    def in_bounds(self, values) -> np.ndarray:
        """Boolean mask: finite and within the physical bounds."""
        v = np.asarray(values, dtype=float)
        return np.isfinite(v) & (v >= self.lower) & (v <= self.upper)


@dataclass(frozen=True)
class ModelTable:
    """The parameters of one model, in the order the network and the fitter use them."""

    name: str
    params: tuple[ParamSpec, ...]
    doc: str = ""

    def __getitem__(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"model {self.name!r} has no parameter {name!r}")

    def __iter__(self):
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def log_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.log)

    @property
    def cyclic_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.cyclic)

    def by_role(self, role: str) -> ParamSpec:
        for p in self.params:
            if p.role == role:
                return p
        raise KeyError(f"model {self.name!r} has no parameter of role {role!r}")


#: The single Sérsic profile: seven parameters. The physical bounds of ``re_pix``, ``n`` and ``q``
#: are the renderer's validity range; the fitter keeps n and q inside the same range and re_pix at
#: most twice the fitted image (set by the fitter per image); first guesses stay in the bulk of
#: every training prior (q >= 0.1, 0.5 <= n <= 6) so that a poor moment guess cannot start a fit
#: on a bound.
SERSIC = ModelTable("sersic", (
    ParamSpec("x", "pix", -INF, INF, role="x",
              doc="profile centre, 0-based column, pixel centres at integers"),
    ParamSpec("y", "pix", -INF, INF, role="y",
              doc="profile centre, 0-based row, pixel centres at integers"),
    ParamSpec("mag", "mag", -INF, INF, role="mag",
              doc="AB magnitude of the total flux: zeropoint - 2.5 log10(flux)"),
    ParamSpec("re_pix", "pix", 1e-3, 1e4, render=(0.0, INF), fit=(1e-3, 1e4), log=True,
              role="re", doc="half-light radius along the semi-major axis"),
    ParamSpec("n", "", 0.2, 10.0, render=(0.2, 10.0), fit=(0.2, 10.0), guess=(0.5, 6.0),
              log=True, role="n", doc="Sérsic index"),
    ParamSpec("q", "", 0.02, 1.0, render=(0.0, 1.0), fit=(0.02, 1.0), guess=(0.1, 1.0),
              role="q", doc="axis ratio b/a"),
    ParamSpec("pa_deg", "deg", 0.0, 180.0, cyclic=180.0, role="pa",
              doc="major-axis position angle, counter-clockwise from +y, in [0, 180)"),
), doc="single Sérsic profile convolved with the effective PSF")

#: Every registered model by name. Add a bulge + disk or a per-band table here.
MODELS: dict[str, ModelTable] = {SERSIC.name: SERSIC}


def get_model(name: str = "sersic") -> ModelTable:
    """The :class:`ModelTable` named ``name`` (a one-line error for an unknown name)."""
    try:
        return MODELS[name]
    except KeyError:
        from galnet.errors import GalnetValueError

        raise GalnetValueError(f"unknown model {name!r}; known: {sorted(MODELS)}",
                               "model", name) from None


#: Columns derived from the parameters, written beside them: name -> (unit, description).
DERIVED_COLUMNS: dict[str, tuple[str, str]] = {
    "flux": ("", "total flux integrated to infinity, image units (counts)"),
    "re_arcsec": ("arcsec", "half-light radius along the semi-major axis"),
    "ra": ("deg", "right ascension of the centre (ICRS), from the WCS"),
    "dec": ("deg", "declination of the centre (ICRS), from the WCS"),
    "snr": ("", "signal-to-noise ratio of the galaxy"),
    "psf_fwhm": ("arcsec", "FWHM of the PSF"),
    "psf_fwhm_pix": ("pix", "FWHM of the PSF in pixels"),
    "chi2nu": ("", "reduced chi^2 of the model over the unmasked pixels"),
    "flags": ("", "quality flags (galnet.flags.Flag bits)"),
}


def column_units(model: ModelTable = SERSIC) -> dict[str, str]:
    """Unit of every catalogue column: the parameters, their ``_err`` and the derived columns."""
    units = {p.name: p.unit for p in model}
    units.update({f"{p.name}_err": p.unit for p in model})
    units.update({k: u for k, (u, _) in DERIVED_COLUMNS.items()})
    units["flux_err"] = units["flux"]
    units["re_arcsec_err"] = units["re_arcsec"]
    return units


def column_descriptions(model: ModelTable = SERSIC) -> dict[str, str]:
    """One-line description of every catalogue column (same keys as :func:`column_units`)."""
    desc = {p.name: p.doc for p in model}
    desc.update({f"{p.name}_err": f"1-sigma uncertainty of {p.name}" for p in model})
    desc.update({k: d for k, (_, d) in DERIVED_COLUMNS.items()})
    desc["flux_err"] = "1-sigma uncertainty of flux"
    desc["re_arcsec_err"] = "1-sigma uncertainty of re_arcsec"
    return desc


def wrap(name: str, values, model: ModelTable = SERSIC):
    """Wrap ``values`` of parameter ``name`` into its period (no-op for non-angles)."""
    return model[name].wrap(values)


def fold_diff(name: str, pred, true, model: ModelTable = SERSIC):
    """``pred - true`` for parameter ``name``; for an angle folded into [-period/2, period/2)."""
    p, t = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    period = model[name].cyclic
    d = p - t
    return np.mod(d + period / 2, period) - period / 2 if period else d
