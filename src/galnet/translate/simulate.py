"""Paired multi-band simulation: the same galaxies seen by two survey domains.

Each galaxy is a bulge (Sérsic) + an exponential disk + unresolved star-forming knots, each
component with its own SED (GalSim's CWW templates, ``galsim/share/SEDs/CWW_*_ext.sed``), so the
colours change with radius (red bulge, blue disk, bluer knots) and with redshift. Per domain and
band, the component fluxes are the redshifted SEDs integrated through that domain's real filter
curves (``speclite``: SDSS 2010 and CFHT MegaCam), and every component is convolved with the
band's PSF. The two domains see the same sky (same centre, same field of view) with independent
noise. Domains and the galaxy population are data: ``galnet/data/translation.toml``.

Photometry (exact, per component with template T and rest-frame r light fraction w)::

    m_b = M_r + DM(z) + A_T(b, z) - A_T(r, 0) - 2.5 log10(w)
    A_T(b, z) = AB magnitude through filter b of  f_lambda(lambda) = T(lambda / (1 + z)) / (1 + z)

(``DM`` the distance modulus of the cosmology; ``A_T(b, z) - A_T(r, 0)`` is the K-correction
plus the colour). Images are in nanomaggies per pixel (AB zeropoint 22.5).

Rendering: bulge and disk with galnet's exact renderer (:func:`galnet.profiles.render.render`,
effective PSF sampled at pixel centres); knots as point sources placed by a Fourier shift of the
same effective PSF. Noise: Gaussian sky of the domain's rms plus the sources' Poisson noise
(``max(model, 0) / gain``, Gaussian approximation); the noiseless images are kept as truth.

Sizes: rest-frame r absolute magnitude from a Schechter function, redshift from the comoving
volume, kept when ``mag_limit[0] < r_SDSS < mag_limit[1]``; half-light radii from the Shen et al.
(2003) size-luminosity relations (kpc, converted with the angular-diameter distance).

The HDF5 file (``galnet translate simulate``)::

    source/{images,truth}  (N, C, S, S) float32    source/psf (N, C, P, P) float32 (unit sum)
    target/{images,truth}  (N, C, S', S') float32  target/psf (N, C, P', P') float32
    catalog/<column>       one dataset per catalogue column (first axis N)
    attrs: source_domain, target_domain, config (JSON: domains, population, seed), n_done
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from astropy.table import Table

from galnet.errors import GalnetFileError, GalnetPresetError, GalnetValueError
from galnet.profiles.render import RenderConfig, render
from galnet.runner import chunks, progress_enabled
from galnet.sim.psfs import analytic_psfs
from galnet.translate.population import (
    COMPONENTS,
    ZEROPOINT,
    _config,
    component_mags,
    population_config,
    sample_population,
)

__all__ = [
    "Domain",
    "PairSet",
    "get_domain",
    "list_domains",
    "population_config",
    "sample_population",
    "component_mags",
    "render_domain",
    "simulate_pairs",
    "read_pairs",
    "ZEROPOINT",
    "COMPONENTS",
]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
#: Renderer accuracy for the simulation: a coarser central grid than galnet's default, 1.7x
#: faster; on 128 galaxies in both domains the largest difference from the default renderer was
#: 0.46% of a stamp's peak (0.07% of the brightest peak) -- far below the noise of either domain.
SIM_RENDER = RenderConfig(window=2, windows=(4, 9), h_core=1 / 8, h_max=0.5, edge_nodes=6,
                          chunk=256, edge_tol=None)


# ----------------------------------------------------------------------------------------------
# Domains and population (data in galnet/data/translation.toml)
# ----------------------------------------------------------------------------------------------
def list_domains() -> list[str]:
    """Names of the known domains."""
    return list(_config()["domains"])


@dataclass(frozen=True)
class Domain:
    """One survey's view: pixels, bands (real filter curves), PSF and depth (see the TOML)."""

    name: str
    description: str
    filters: tuple[str, ...]
    bands: tuple[str, ...]
    pixel_scale: float  # arcsec / pixel
    stamp: int  # image side, pixels
    psf_size: int  # PSF side, pixels (odd)
    seeing_mean: tuple[float, ...]  # FWHM per band, arcsec
    seeing_std: float  # relative scatter of the per-galaxy seeing factor
    moffat_beta: tuple[float, float]
    kolmogorov_fraction: float
    depth_5sigma: tuple[float, ...]  # AB, optimal aperture, per band
    sky_mag: tuple[float, ...]  # AB mag / arcsec^2, per band
    config: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    @property
    def sky_rms(self) -> np.ndarray:
        """Per-pixel sky rms per band (nanomaggies), from the 5-sigma depth at the mean seeing."""
        s = np.asarray(self.seeing_mean) * _FWHM_TO_SIGMA / self.pixel_scale
        f5 = 10.0 ** (-0.4 * (np.asarray(self.depth_5sigma) - ZEROPOINT))
        return f5 / (5.0 * math.sqrt(4.0 * math.pi) * s)

    @property
    def gain(self) -> np.ndarray:
        """Effective gain per band (e- per nanomaggy): sky per pixel / sky_rms^2."""
        sky = 10.0 ** (-0.4 * (np.asarray(self.sky_mag) - ZEROPOINT)) * self.pixel_scale**2
        return sky / self.sky_rms**2

    @property
    def centre(self) -> float:
        """Pixel coordinate of the stamp centre, ``(stamp - 1) / 2`` (0-based pixel centres)."""
        return (self.stamp - 1) / 2.0


def get_domain(name: str) -> Domain:
    """The domain ``name`` of ``translation.toml``; unknown names raise GalnetPresetError."""
    domains = _config()["domains"]
    if name not in domains:
        known = ", ".join(domains)
        raise GalnetPresetError(f"unknown translation domain {name!r} (known: {known})")
    d = domains[name]
    tup = {k: tuple(d[k]) for k in ("filters", "bands", "seeing_mean", "moffat_beta",
                                     "depth_5sigma", "sky_mag")}
    nb = len(tup["bands"])
    if any(len(tup[k]) != nb for k in ("filters", "seeing_mean", "depth_5sigma", "sky_mag")):
        raise GalnetValueError(f"translation domain {name!r}: per-band lists differ in length")
    return Domain(name=name, description=d["description"], pixel_scale=float(d["pixel_scale"]),
                  stamp=int(d["stamp"]), psf_size=int(d["psf_size"]),
                  seeing_std=float(d["seeing_std"]),
                  kolmogorov_fraction=float(d["kolmogorov_fraction"]), config=dict(d), **tup)


def _fluxes(cat: dict, domain: Domain) -> dict[str, np.ndarray]:
    """Observed component fluxes (N, C) in nanomaggies through the domain's filters."""
    fr = {"bulge": cat["bt"], "disk": (1 - cat["bt"]) * (1 - cat["knot_frac"]),
          "knots": (1 - cat["bt"]) * cat["knot_frac"]}
    out = {}
    for k in COMPONENTS:
        mags = component_mags(cat["abs_mag_r"], cat["z"], cat[f"sed_{k}"], fr[k], domain.filters)
        out[k] = 10 ** (-0.4 * (mags - ZEROPOINT))
    return out


def _knot_positions(rng: np.random.Generator, cat: dict, kmax: int):
    """Knot offsets (N, K) in arcsec from the galaxy centre, and weights (N, K) summing to 1
    over each galaxy's knots: radii from the disk's exponential profile, projected like it."""
    N = len(cat["z"])
    h = cat["re_disk"] / 1.678  # exponential scale length (semi-major), arcsec
    r = rng.gamma(2.0, 1.0, (N, kmax)) * h[:, None]  # surface density ~ exp(-r / h)
    phi = rng.uniform(0, 2 * math.pi, (N, kmax))
    a, b = r * np.cos(phi), r * np.sin(phi) * cat["q_disk"][:, None]  # major, minor axis
    pa = np.deg2rad(cat["pa_deg"])[:, None]
    # major axis along (-sin pa, cos pa), minor along (cos pa, sin pa)  (docs/conventions.md)
    dx = -a * np.sin(pa) + b * np.cos(pa)
    dy = a * np.cos(pa) + b * np.sin(pa)
    w = rng.gamma(1.0, 1.0, (N, kmax)) * (np.arange(kmax)[None, :] < cat["n_knots"][:, None])
    w = w / np.maximum(w.sum(1, keepdims=True), 1e-300)
    return dx, dy, w


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
def _psfs(rng: np.random.Generator, N: int, domain: Domain) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, P, P) effective PSFs and the per-galaxy seeing factor (N,)."""
    C = domain.n_bands
    fac = np.clip(1.0 + domain.seeing_std * rng.normal(size=N), 0.75, 1.35)
    fwhm = fac[:, None] * np.asarray(domain.seeing_mean)[None, :] / domain.pixel_scale
    beta = np.repeat(rng.uniform(*domain.moffat_beta, N), C)
    kol = np.repeat(rng.uniform(size=N) < domain.kolmogorov_fraction, C)
    g = 0.02 * np.sqrt(rng.uniform(size=N))
    th = rng.uniform(0, 2 * math.pi, N)
    g1, g2 = np.repeat(g * np.cos(2 * th), C), np.repeat(g * np.sin(2 * th), C)
    psf = analytic_psfs(fwhm.reshape(-1), beta, kol, g1, g2, size=domain.psf_size)
    return psf.reshape(N, C, domain.psf_size, domain.psf_size), fac


def _point_sources(psf: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                   S: int) -> np.ndarray:
    """Sum of point sources at 0-based pixel positions (N, K) with fluxes (N, C, K), each the
    effective PSF (N, C, P, P) shifted by the Fourier shift theorem. Returns (N, C, S, S)."""
    N, C, P, _ = psf.shape
    L = 1 << int(math.ceil(math.log2(S + P)))
    pad = torch.zeros((N, C, L, L), dtype=torch.float64)
    pad[..., :P, :P] = torch.as_tensor(psf, dtype=torch.float64)
    pad = torch.roll(pad, shifts=(-(P // 2), -(P // 2)), dims=(-2, -1))  # PSF centre at (0, 0)
    pf = torch.fft.rfft2(pad)  # (N, C, L, L//2+1)
    u = torch.fft.rfftfreq(L, dtype=torch.float64)
    v = torch.fft.fftfreq(L, dtype=torch.float64)
    ex = torch.exp(-2j * math.pi * u[None, None, :] * torch.as_tensor(x)[..., None])  # (N,K,U)
    ey = torch.exp(-2j * math.pi * v[None, None, :] * torch.as_tensor(y)[..., None])  # (N,K,V)
    f = torch.as_tensor(flux, dtype=torch.complex128)
    src = torch.einsum("nck,nkv,nku->ncvu", f, ey, ex)
    img = torch.fft.irfft2(pf * src, s=(L, L))[..., :S, :S]
    return img.numpy()


def render_domain(rng: np.random.Generator, cat: dict, domain: Domain,
                  knots: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """Noiseless and noisy (N, C, S, S) images, PSFs and component fluxes of ``cat`` in
    ``domain``. ``knots`` = (dx, dy, weights) from :func:`_knot_positions` (shared by domains)."""
    N, C, S = len(cat["z"]), domain.n_bands, domain.stamp
    psf, fac = _psfs(rng, N, domain)
    flux = _fluxes(cat, domain)
    x0 = domain.centre + cat["dx"] / domain.pixel_scale
    y0 = domain.centre + cat["dy"] / domain.pixel_scale
    rows = []
    for comp, n, re, q in (("bulge", cat["bulge_n"], cat["re_bulge"], cat["q_bulge"]),
                           ("disk", np.ones(N), cat["re_disk"], cat["q_disk"])):
        f = flux[comp]  # (N, C)
        gi, bi = np.nonzero(f > 0)
        rows.append((gi, bi, {"x": x0[gi], "y": y0[gi], "flux": f[gi, bi],
                              "re_pix": re[gi] / domain.pixel_scale, "n": n[gi], "q": q[gi],
                              "pa_deg": cat["pa_deg"][gi]}))
    truth = np.zeros((N, C, S, S), dtype=np.float64)
    gi = np.concatenate([r[0] for r in rows])
    bi = np.concatenate([r[1] for r in rows])
    params = {k: np.concatenate([r[2][k] for r in rows]) for k in rows[0][2]}
    if len(gi):
        img = render(params, psf[gi, bi], (S, S), dtype=np.float32, config=SIM_RENDER)
        nb = len(rows[0][0])  # (galaxy, band) pairs are unique within each component
        truth[gi[:nb], bi[:nb]] += img[:nb]
        truth[gi[nb:], bi[nb:]] += img[nb:]
    dx, dy, w = knots
    if (cat["n_knots"] > 0).any():
        kx = x0[:, None] + dx / domain.pixel_scale
        ky = y0[:, None] + dy / domain.pixel_scale
        kflux = flux["knots"][:, :, None] * w[:, None, :]  # (N, C, K)
        truth += _point_sources(psf, kx, ky, kflux, S)
    sky, gain = domain.sky_rms, domain.gain
    var = sky[None, :, None, None] ** 2 + np.maximum(truth, 0) / gain[None, :, None, None]
    noisy = truth + np.sqrt(var) * rng.standard_normal(truth.shape, dtype=np.float32)
    return {"images": noisy.astype(np.float32), "truth": truth.astype(np.float32),
            "psf": psf.astype(np.float32), "seeing": fac,
            **{f"flux_{k}": v for k, v in flux.items()}}


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------
_STR_COLS = ("morph", "sed_bulge", "sed_disk", "sed_knots")


def _make_chunk(seed: int, idx: int, n: int, src: Domain, tgt: Domain) -> dict[str, Any]:
    rng = np.random.default_rng([seed, idx])
    cat = sample_population(rng, n)
    kmax = max(int(cat["n_knots"].max()), 1)
    knots = _knot_positions(rng, cat, kmax)
    out = {"catalog": cat}
    for role, dom in (("source", src), ("target", tgt)):
        out[role] = render_domain(rng, cat, dom, knots)
    return out


def simulate_pairs(out: str | os.PathLike, n: int, *, source: str = "sdss",
                   target: str = "cfhtls", seed: int = 0, chunk: int = 128,
                   threads: int | None = None, progress: bool = True) -> Path:
    """Simulate ``n`` galaxies seen by two domains and write them to the HDF5 file ``out``.

    The file is built as ``out + '.partial'`` (resumable: a second call with the same arguments
    continues where the first stopped; chunk ``i`` always uses the random stream (seed, i)) and
    renamed to ``out`` when complete. Returns ``out``.
    """
    from tqdm import tqdm

    if not isinstance(n, int) or n < 1:
        raise GalnetValueError(f"n must be a positive integer, got {n!r}", "n", n)
    src, tgt = get_domain(source), get_domain(target)
    if src.bands != tgt.bands:
        raise GalnetValueError(f"domains {source!r} and {target!r} have different bands "
                               f"({''.join(src.bands)} vs {''.join(tgt.bands)})")
    out = Path(out)
    if not out.parent.is_dir():
        raise GalnetFileError(f"cannot write {str(out)!r}: directory does not exist")
    config = json.dumps({"source": src.config, "target": tgt.config, "n": n, "seed": seed,
                         "chunk": chunk, "population": population_config()}, sort_keys=True)
    part = out.with_name(out.name + ".partial")
    if part.exists():
        try:
            with h5py.File(part, "r") as f:
                same = f.attrs.get("config") == config
        except OSError:
            same = False
        if not same:
            part.unlink()
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with h5py.File(part, "a") as f:
            if "n_done" not in f.attrs:
                _create(f, n, src, tgt, config)
            done = int(f.attrs["n_done"])
            bar = tqdm(total=n, initial=done, unit="gal", disable=not progress_enabled(progress),
                       desc=f"simulate {source}->{target}")
            for i, sl in enumerate(chunks(n, chunk)):  # chunk i: random stream (seed, i)
                if sl.stop <= done:
                    continue
                res = _make_chunk(seed, i, sl.stop - sl.start, src, tgt)
                for role in ("source", "target"):
                    for k in ("images", "truth", "psf"):
                        f[f"{role}/{k}"][sl] = res[role][k]
                    for k in ("seeing", *(f"flux_{c}" for c in COMPONENTS)):
                        f[f"catalog/{role}_{k}"][sl] = res[role][k]
                for k, v in res["catalog"].items():
                    f[f"catalog/{k}"][sl] = v.astype("S12") if k in _STR_COLS else v
                f.attrs["n_done"] = sl.stop
                f.flush()
                bar.update(sl.stop - sl.start)
            bar.close()
    finally:
        torch.set_num_threads(old)
    os.replace(part, out)
    return out


def _create(f: h5py.File, n: int, src: Domain, tgt: Domain, config: str) -> None:
    for role, d in (("source", src), ("target", tgt)):
        C, S, P = d.n_bands, d.stamp, d.psf_size
        for k in ("images", "truth"):
            f.create_dataset(f"{role}/{k}", (n, C, S, S), "f4", chunks=(1, C, S, S))
        f.create_dataset(f"{role}/psf", (n, C, P, P), "f4", chunks=(min(64, n), C, P, P))
        f.create_dataset(f"catalog/{role}_seeing", (n,), "f8")
        for c in COMPONENTS:
            f.create_dataset(f"catalog/{role}_flux_{c}", (n, C), "f8")
    for k in ("z", "abs_mag_r", "bt", "knot_frac", "bulge_n", "re_bulge", "re_disk",
              "re_disk_kpc", "q_bulge", "q_disk", "pa_deg", "dx", "dy", "mag_r_sdss"):
        f.create_dataset(f"catalog/{k}", (n,), "f8")
    f.create_dataset("catalog/n_knots", (n,), "i4")
    for k in _STR_COLS:
        f.create_dataset(f"catalog/{k}", (n,), "S12")
    f.attrs.update(source_domain=src.name, target_domain=tgt.name, config=config, n_done=0)


@dataclass
class PairSet:
    """Paired images read from a ``galnet translate simulate`` file (numpy, nanomaggies/px)."""

    source: np.ndarray  # (N, C, S, S) float32, noisy
    target: np.ndarray  # (N, C, S', S') float32, noisy
    source_truth: np.ndarray  # noiseless
    target_truth: np.ndarray
    source_psf: np.ndarray  # (N, C, P, P), unit sum
    target_psf: np.ndarray
    catalog: Table  # z, abs_mag_r, morph, bt, ..., {source,target}_flux_{bulge,disk,knots}
    source_sky: np.ndarray  # (C,) per-pixel sky rms, nanomaggies
    target_sky: np.ndarray
    source_scale: float  # arcsec / px
    target_scale: float
    bands: tuple[str, ...]
    source_domain: str
    target_domain: str

    def __len__(self) -> int:
        return len(self.source)

    def subset(self, rows) -> PairSet:
        """The pairs ``rows`` (index array or slice)."""
        kw = {k: getattr(self, k)[rows] for k in ("source", "target", "source_truth",
                                                  "target_truth", "source_psf", "target_psf")}
        kw["catalog"] = self.catalog[rows]
        keep = ("source_sky", "target_sky", "source_scale", "target_scale", "bands",
                "source_domain", "target_domain")
        return PairSet(**kw, **{k: getattr(self, k) for k in keep})


def read_pairs(path: str | os.PathLike, rows: slice | np.ndarray | None = None) -> PairSet:
    """Read a paired-simulation file (all rows, or ``rows``); clear errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise GalnetFileError(f"{str(path)!r}: no such file")
    sel = slice(None) if rows is None else rows
    try:
        with h5py.File(path, "r") as f:
            if "source_domain" not in f.attrs or "source/images" not in f:
                raise GalnetFileError(f"{str(path)!r}: not a galnet translate simulate file")
            n = int(f.attrs["n_done"])
            if isinstance(sel, slice):
                sel = slice(*sel.indices(n))
            arr = {f"{role}{suf}": f[f"{role}/{k}"][sel]
                   for role in ("source", "target") for k, suf in
                   (("images", ""), ("truth", "_truth"), ("psf", "_psf"))}
            cat = Table()
            for k in f["catalog"]:
                v = f[f"catalog/{k}"][sel]
                cat[k] = v.astype(str) if v.dtype.kind == "S" else v
            src, tgt = str(f.attrs["source_domain"]), str(f.attrs["target_domain"])
    except OSError as err:
        raise GalnetFileError(f"{str(path)!r}: cannot read ({err})") from err
    except KeyError as err:
        raise GalnetFileError(f"{str(path)!r}: missing dataset {err}") from err
    s, t = get_domain(src), get_domain(tgt)
    for k in cat.colnames:
        if k.startswith(("re_bulge", "re_disk")) and not k.endswith("kpc"):
            cat[k].unit = "arcsec"
    return PairSet(**arr, catalog=cat, source_sky=s.sky_rms, target_sky=t.sky_rms,
                   source_scale=s.pixel_scale, target_scale=t.pixel_scale, bands=s.bands,
                   source_domain=src, target_domain=tgt)
