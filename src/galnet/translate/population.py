"""The galaxy population of the paired simulation, and its photometry.

Rest-frame physics only (no survey domain): redshifts from the comoving volume, absolute r
magnitudes from a Schechter function, bulge/disk/knot light fractions and SEDs per morphological
class, Shen et al. (2003) sizes; observed component magnitudes through any speclite filter from
GalSim's CWW templates (exact K-corrections tabulated on a redshift grid). The tables are data:
``galnet/data/translation.toml`` (``[population]``). See :mod:`galnet.translate.simulate` for
the formulas and the rendering.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from galnet.errors import optional_import

__all__ = ["ZEROPOINT", "COMPONENTS", "REFERENCE_FILTER", "population_config",
           "component_mags", "sample_population"]

#: AB zeropoint of the images: 1 image unit = 1 nanomaggy = 3.631 microJy.
ZEROPOINT = 22.5
#: Components of every galaxy, in the order of the catalogue's flux columns.
COMPONENTS = ("bulge", "disk", "knots")
#: The filter that defines the rest-frame absolute magnitude M_r and the r < 20 selection.
REFERENCE_FILTER = "sdss2010-r"
#: Redshift grid of the tabulated K-corrections (linear interpolation in between).
_Z_GRID = np.linspace(0.0, 0.6, 241)
_TEMPLATES = ("E", "Sbc", "Scd", "Im")


@lru_cache(maxsize=1)
def _config() -> dict[str, Any]:
    text = resources.files("galnet").joinpath("data/translation.toml").read_text()
    return tomllib.loads(text)


def population_config() -> dict[str, Any]:
    """The galaxy population table of ``translation.toml`` (a copy)."""
    return json.loads(json.dumps(_config()["population"]))


# ----------------------------------------------------------------------------------------------
# SEDs, filters and K-corrections
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _templates() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import galsim

    out = {}
    for t in _TEMPLATES:
        path = os.path.join(galsim.meta_data.share_dir, "SEDs", f"CWW_{t}_ext.sed")
        wave, flam = np.loadtxt(path, unpack=True)  # Angstrom, f_lambda (arbitrary units)
        out[t] = (wave, flam)
    return out


@lru_cache(maxsize=16)
def _ab_table(filters: tuple[str, ...]) -> np.ndarray:
    """``A_T(b, z) - A_T(r_ref, 0)`` for templates T, filters b, z in _Z_GRID: (T, B, Z)."""
    import astropy.units as u
    sf = optional_import("speclite.filters", "translate", "the paired simulation's filter curves")

    flam_unit = u.erg / (u.cm**2 * u.s * u.AA)
    lam = np.geomspace(900.0, 25000.0, 6000)  # observed-frame grid, Angstrom
    filt = [sf.load_filter(f) for f in (*filters, REFERENCE_FILTER)]
    out = np.empty((len(_TEMPLATES), len(filters), len(_Z_GRID)))
    for i, t in enumerate(_TEMPLATES):
        wave, flam = _templates()[t]
        # f_lambda observed at redshift z: T(lambda / (1 + z)) / (1 + z), for every z at once
        rest = lam[None, :] / (1.0 + _Z_GRID[:, None])
        spec = np.interp(rest, wave, flam, left=0.0, right=0.0) / (1.0 + _Z_GRID[:, None])
        ref0 = filt[-1].get_ab_magnitude(spec[0] * flam_unit, lam * u.AA)
        for b, f in enumerate(filt[:-1]):
            mags = [f.get_ab_magnitude(s * flam_unit, lam * u.AA) for s in spec]
            out[i, b] = np.asarray(mags) - ref0
    return out


def component_mags(abs_mag_r, z, template, light_fraction, filters, cosmology=None) -> np.ndarray:
    """Observed AB magnitudes (N, B) of galaxy components.

    Parameters
    ----------
    abs_mag_r : (N,) rest-frame absolute magnitude of the whole galaxy in ``REFERENCE_FILTER``.
    z : (N,) redshift.   template : (N,) template names ("E", "Sbc", "Scd", "Im").
    light_fraction : (N,) the component's fraction of the rest-frame r light (0 gives +inf).
    filters : speclite filter names (the bands).
    """
    cosmo = cosmology or _cosmology()
    z = np.asarray(z, dtype=float)
    tab = _ab_table(tuple(filters))
    ti = np.array([_TEMPLATES.index(t) for t in np.asarray(template)])
    # linear interpolation of tab[ti, b, :] at z for every galaxy and band
    pos = np.clip(np.interp(z, _Z_GRID, np.arange(len(_Z_GRID))), 0, len(_Z_GRID) - 1.000001)
    i0 = pos.astype(int)
    w = pos - i0
    k = tab[ti, :, i0] * (1.0 - w)[:, None] + tab[ti, :, i0 + 1] * w[:, None]  # (N, B)
    dm = cosmo.distmod(z).value
    with np.errstate(divide="ignore"):
        lf = -2.5 * np.log10(np.asarray(light_fraction, dtype=float))
    return np.asarray(abs_mag_r)[:, None] + dm[:, None] + k + lf[:, None]


@lru_cache(maxsize=1)
def _cosmology():
    import astropy.cosmology

    return getattr(astropy.cosmology, _config()["population"]["cosmology"])


# ----------------------------------------------------------------------------------------------
# Population
# ----------------------------------------------------------------------------------------------
def _shen_log_re(M: np.ndarray, early: np.ndarray, pop: dict) -> tuple[np.ndarray, np.ndarray]:
    """Shen et al. (2003) log10 R50 (kpc) and its ln-scatter for absolute r magnitudes M."""
    L, E, S = pop["shen_late"], pop["shen_early"], pop["shen_scatter"]
    late = (-0.4 * L["a"] * M + (L["b"] - L["a"]) * np.log10(1 + 10 ** (-0.4 * (M - L["M0"])))
            + L["g"])
    logr = np.where(early, -0.4 * E["a"] * M + E["b"], late)
    sig = S["s2"] + (S["s1"] - S["s2"]) / (1 + 10 ** (-0.8 * (M - S["M0"])))
    return logr, sig


def _draw_z_mag(rng: np.random.Generator, n: int, pop: dict) -> tuple[np.ndarray, np.ndarray]:
    """Redshifts from dV/dz and absolute magnitudes from the Schechter function (unselected)."""
    cosmo = _cosmology()
    zg = np.linspace(*pop["z_range"], 400)
    cdf = np.cumsum(cosmo.differential_comoving_volume(zg).value)
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    z = np.interp(rng.uniform(size=n), cdf, zg)
    Mg = np.linspace(*pop["abs_mag_range"], 800)
    x = 10 ** (-0.4 * (Mg - pop["schechter_mstar"]))
    phi = x ** (pop["schechter_alpha"] + 1) * np.exp(-x)
    cdfm = np.cumsum(phi)
    cdfm = (cdfm - cdfm[0]) / (cdfm[-1] - cdfm[0])
    M = np.interp(rng.uniform(size=n), cdfm, Mg)
    return z, M


def sample_population(rng: np.random.Generator, n: int, pop: dict | None = None) -> dict:
    """Draw ``n`` galaxies (rest-frame physics only; no domain). Columns (arrays of length n):
    ``z``, ``abs_mag_r``, ``morph`` (class name), ``bt``, ``knot_frac``, ``n_knots``, ``bulge_n``,
    ``re_bulge``/``re_disk`` (arcsec, semi-major half-light), ``re_disk_kpc``, ``q_bulge``,
    ``q_disk``, ``pa_deg`` (CCW from +y), ``dx``/``dy`` (arcsec offsets), ``sed_bulge``,
    ``sed_disk``, ``sed_knots``, ``mag_r_sdss`` (observed total)."""
    pop = pop or population_config()
    classes = pop["classes"]
    names = list(classes)
    probs = np.array([classes[c]["p"] for c in names], dtype=float)
    probs /= probs.sum()
    out: dict[str, list] = {}
    got = 0
    while got < n:
        m = max(4 * (n - got), 256)
        z, M = _draw_z_mag(rng, m, pop)
        cls = rng.choice(len(names), size=m, p=probs)
        c = {k: np.array([classes[names[i]][k] for i in cls], dtype=object) for k in
             ("bt", "bulge_n", "knots", "n_knots", "bulge_sed", "disk_sed")}

        def uni(key, c=c, m=m):
            lo = np.array([v[0] for v in c[key]], dtype=float)
            hi = np.array([v[1] for v in c[key]], dtype=float)
            return lo + (hi - lo) * rng.uniform(size=m)

        bt = uni("bt")
        kf = uni("knots")
        nk = np.array([rng.integers(v[0], v[1] + 1) for v in c["n_knots"]])
        kf = np.where(nk > 0, kf, 0.0)
        sed_b = np.array([rng.choice(v) for v in c["bulge_sed"]])
        sed_d = np.array([rng.choice(v) for v in c["disk_sed"]])
        early = np.array([names[i] == "elliptical" for i in cls])
        logr, sig = _shen_log_re(M, early, pop)
        r_main = 10 ** (logr + rng.normal(size=m) * sig / math.log(10))  # kpc
        # disk-dominated: the relation gives the disk; bulges 0.15-0.5 of it.
        # ellipticals: the relation gives the bulge; their faint disks 1.5-2.5 times larger.
        re_d_kpc = np.where(early, r_main * rng.uniform(1.5, 2.5, m), r_main)
        re_b_kpc = np.where(early, r_main, r_main * rng.uniform(0.15, 0.5, m))
        kpc_per_arcsec = _cosmology().angular_diameter_distance(z).to_value("kpc") / 206264.806
        fractions = {"bulge": bt, "disk": (1 - bt) * (1 - kf), "knots": (1 - bt) * kf}
        seds = {"bulge": sed_b, "disk": sed_d, "knots": np.full(m, "Im")}
        flux_r = sum(
            10 ** (-0.4 * (component_mags(M, z, seds[k], fractions[k], [REFERENCE_FILTER])[:, 0]
                           - ZEROPOINT))
            for k in COMPONENTS
        )
        mag_r = ZEROPOINT - 2.5 * np.log10(flux_r)
        keep = (mag_r > pop["mag_limit"][0]) & (mag_r < pop["mag_limit"][1])
        cos_i = rng.uniform(size=m)
        q0 = pop["disk_q0"]
        cols = {
            "z": z, "abs_mag_r": M, "morph": np.array([names[i] for i in cls]), "bt": bt,
            "knot_frac": kf, "n_knots": nk, "bulge_n": uni("bulge_n"),
            "re_bulge": np.clip(re_b_kpc / kpc_per_arcsec, 0.1, pop["max_re_arcsec"]),
            "re_disk": np.clip(re_d_kpc / kpc_per_arcsec, 0.1, pop["max_re_arcsec"]),
            "re_disk_kpc": re_d_kpc, "q_bulge": rng.uniform(0.6, 1.0, m),
            "q_disk": np.sqrt(cos_i**2 * (1 - q0**2) + q0**2),
            "pa_deg": rng.uniform(0.0, 180.0, m),
            "dx": rng.uniform(-1, 1, m) * pop["offset_arcsec"],
            "dy": rng.uniform(-1, 1, m) * pop["offset_arcsec"],
            "sed_bulge": sed_b, "sed_disk": sed_d, "sed_knots": seds["knots"], "mag_r_sdss": mag_r,
        }
        for k, v in cols.items():
            out.setdefault(k, []).append(v[keep])
        got += int(keep.sum())
    return {k: np.concatenate(v)[:n] for k, v in out.items()}
