"""Survey-like training stamps: Sérsic galaxies, PSFs, backgrounds and noise, streamed to HDF5.

For each stamp (``preset.stamp`` pixels square, conventions of :mod:`galnet.conventions`):

1. galaxy parameters from the preset's priors (:meth:`galnet.presets.Preset.sample_params`);
2. an *effective* PSF (pixel response included), ``psf_size`` square, unit sum: a real PSF from a
   bank (:class:`galnet.sim.bank.Bank`, share ``preset.psf.bank_fraction``, drawn among the bank PSFs
   whose FWHM lies in the preset's seeing range) or an analytic Moffat /
   Kolmogorov profile with the seeing FWHM and a small shear, integrated over each pixel
   (3 x 3 Gauss-Legendre nodes; agrees with GalSim's ``Convolve(psf, Pixel)`` to ~3e-5 of the peak);
3. the noiseless galaxy rendered with :func:`galnet.profiles.render.render` (float32, batched);
4. a background: with a bank, a real unit-rms cutout times ``sky_rms``; without, Gaussian sky noise
   (optionally correlated), neighbour galaxies and stars (same renderer with a smaller exactly
   integrated window, same PSF);
5. source Poisson noise, Gaussian approximation: variance ``model / gain``.

Stored per stamp: ``images``, ``psfs``, ``sigma`` (per-pixel 1-sigma noise: sky and source Poisson)
and a ``params`` table (see :data:`COLUMNS`) whose ``snr`` is the optimal S/N of the noiseless
galaxy, ``sqrt(sum(model^2 / sigma^2))``.

Determinism: the stamps are generated in blocks of :data:`BLOCK`; block ``b`` draws all its random
numbers from ``Generator(PCG64(SeedSequence(seed).spawn(...)[b]))``, so a file depends only on
(preset, seed, bank, options) and the first ``k`` stamps of a run are the same for any ``n >= k``.
The random draws do not depend on ``chunk``; the pixel values are bitwise identical for the same
``chunk`` (and any ``workers``) and agree to float32 rounding across chunk sizes (batched float32
renders: a few 1e-6 of a stamp's brightest pixel, < 1e-3 of the noise).
Files are written atomically (temporary file in the same directory, renamed at the end).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from galnet import __version__
from galnet.conventions import COLUMN_UNITS, mag_to_flux
from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.files import atomic_write
from galnet.presets import Preset, get_preset

__all__ = [
    "simulate",
    "read_params",
    "check_output_path",
    "analytic_psfs",
    "COLUMNS",
    "BLOCK",
    "FORMAT_VERSION",
]

#: Stamps per random-number block (the unit of determinism; chunks are multiples of it).
BLOCK = 64
#: Version of the HDF5 layout written by :func:`simulate`.
FORMAT_VERSION = 1
#: Gauss-Legendre nodes per pixel axis for the analytic effective PSFs.
_PSF_NODES = 3
#: Sérsic radius (pixels) used to render stars: effectively a point source through the PSF.
_STAR_RE_PIX = 0.01
#: Exactly-integrated window (pixels) of the renderer for neighbours and stars (default 4).
_NUISANCE_WINDOW = 2
#: Rounds of redraws allowed for ``snr_min`` before giving up.
_MAX_REDRAW_ROUNDS = 100
#: Stamps per HDF5 storage chunk (random access for training).
_H5_CHUNK = 32

#: The parameter table: column -> (numpy dtype, unit, description).
COLUMNS: dict[str, tuple[str, str, str]] = {
    "x": ("f8", COLUMN_UNITS["x"], "galaxy centre, 0-based column"),
    "y": ("f8", COLUMN_UNITS["y"], "galaxy centre, 0-based row"),
    "mag": ("f8", COLUMN_UNITS["mag"], "AB magnitude (preset zeropoint)"),
    "flux": ("f8", COLUMN_UNITS["flux"], "total flux, image units"),
    "re_pix": ("f8", COLUMN_UNITS["re_pix"], "semi-major half-light radius"),
    "re_arcsec": ("f8", COLUMN_UNITS["re_arcsec"], "semi-major half-light radius"),
    "n": ("f8", COLUMN_UNITS["n"], "Sérsic index"),
    "q": ("f8", COLUMN_UNITS["q"], "axis ratio b/a"),
    "pa_deg": ("f8", COLUMN_UNITS["pa_deg"], "position angle, CCW from +y, [0, 180)"),
    "snr": ("f8", COLUMN_UNITS["snr"], "optimal S/N of the noiseless galaxy"),
    "psf_fwhm": ("f8", COLUMN_UNITS["psf_fwhm"],
                 "PSF FWHM (analytic: of the profile before the pixel; bank: as the bank gives)"),
    "psf_fwhm_pix": ("f8", COLUMN_UNITS["psf_fwhm_pix"], "psf_fwhm / pixel_scale"),
    "bg_origin": ("i4", "", "index into /bg_origins"),
    "psf_source": ("i4", "", "index into /psf_sources"),
    "n_neighbours": ("i2", "", "synthetic neighbour galaxies in the stamp"),
    "n_stars": ("i2", "", "synthetic stars in the stamp"),
}


# ----------------------------------------------------------------------------------------------
# Analytic effective PSFs (batched, torch, float32)
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _kolmogorov_table(umax: float = 12.0, n: int = 1 << 14) -> tuple[float, np.ndarray]:
    """Kolmogorov profile (unit peak, from GalSim) at ``(r / FWHM)^2 = 0, d, 2d, ..., umax^2``.

    Tabulated in r^2 so that no square root is needed; the profile is smooth in r^2 at the centre.
    Returns (d, values float32).
    """
    import galsim

    k = galsim.Kolmogorov(fwhm=1.0)
    u2 = np.linspace(0.0, umax**2, n + 1)
    v = np.array([k.xValue(galsim.PositionD(float(np.sqrt(x)), 0.0)) for x in u2])
    return float(u2[1]), (v / v[0]).astype(np.float32)


@lru_cache(maxsize=4)
def _psf_grid(size: int):
    """Gauss-Legendre sub-pixel grid of the upper half (rows 0..size//2) of a PSF image.

    Returns (X^2, XY, Y^2) (1, rows*nodes, size*nodes) and the weight matrices Wr (rows,
    rows*nodes), Wc (size*nodes, size) that integrate the nodes into pixels.
    """
    import torch

    t, w = np.polynomial.legendre.leggauss(_PSF_NODES)
    h = size // 2
    sub = ((np.arange(size) - h)[:, None] + 0.5 * t[None, :]).ravel()
    wc = np.kron(np.eye(size), 0.5 * w[None, :]).astype(np.float32)  # (size, size*nodes)
    rows = h + 1
    X = torch.as_tensor(sub, dtype=torch.float32)[None, None, :]
    Y = torch.as_tensor(sub[: rows * _PSF_NODES], dtype=torch.float32)[None, :, None]
    Wr = torch.as_tensor(wc[:rows, : rows * _PSF_NODES])
    return X * X, X * Y, Y * Y, Wr, torch.as_tensor(wc.T.copy())


def analytic_psfs(
    fwhm_pix: np.ndarray,
    beta: np.ndarray,
    kolmogorov: np.ndarray,
    g1: np.ndarray,
    g2: np.ndarray,
    size: int = 25,
    batch: int = 1024,
) -> np.ndarray:
    """Effective (pixel-integrated) Moffat or Kolmogorov PSFs, centred on the central pixel.

    Parameters
    ----------
    fwhm_pix : (N,) FWHM of the profile before the pixel, pixels.
    beta : (N,) Moffat beta (ignored where ``kolmogorov``).
    kolmogorov : (N,) bool, Kolmogorov instead of Moffat.
    g1, g2 : (N,) reduced shear (GalSim convention), ``|g| < 1``.
    size : odd image side (pixels).   batch : PSFs evaluated per torch batch (memory).

    Returns
    -------
    (N, size, size) float32, each normalised to unit sum over the image. Each pixel is the integral
    of the sheared profile over the pixel (3 x 3 Gauss-Legendre nodes per pixel; the image is
    point-symmetric, so only its upper half is evaluated).
    """
    import torch

    fwhm_pix, beta, g1, g2 = (np.asarray(a, dtype=float) for a in (fwhm_pix, beta, g1, g2))
    kolmogorov = np.asarray(kolmogorov, dtype=bool)
    X2, XY, Y2, Wr, Wc = _psf_grid(size)
    d2, table = _kolmogorov_table()
    table_t = torch.as_tensor(table)
    # r^2 of the sheared profile, sheared coordinates S^-1 x with
    # S^-1 = [[1 - g1, -g2], [-g2, 1 + g1]] / sqrt(1 - g^2):  r^2 = A x^2 + B xy + C y^2
    k = 1.0 / (1.0 - g1**2 - g2**2)
    A, B, C = k * ((1 - g1) ** 2 + g2**2), -4.0 * k * g2, k * ((1 + g1) ** 2 + g2**2)
    beta = np.where(kolmogorov, 3.0, beta)  # (unused for Kolmogorov; keeps alpha finite)
    alpha2 = (fwhm_pix / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))) ** 2  # Moffat alpha^2
    scale = np.where(kolmogorov, 1.0 / (fwhm_pix**2 * d2), 1.0 / alpha2)  # r^2 -> table units
    h = size // 2
    out = np.empty((len(fwhm_pix), size, size), dtype=np.float32)
    for s in range(0, len(fwhm_pix), batch):
        sl = slice(s, s + batch)

        def col(a, sl=sl):
            return torch.as_tensor(a[sl].astype(np.float32))[:, None, None]

        u = col(A * scale) * X2 + col(B * scale) * XY + col(C * scale) * Y2  # (m, R, W)
        prof = torch.empty_like(u)
        kol = kolmogorov[sl]
        mi, ki = torch.as_tensor(np.flatnonzero(~kol)), torch.as_tensor(np.flatnonzero(kol))
        if len(mi):  # Moffat: (1 + r^2 / alpha^2)^-beta
            prof[mi] = torch.exp(-col(beta)[mi] * torch.log1p(u[mi]))
        if len(ki):  # Kolmogorov: linear interpolation in the r^2 table
            uk = torch.clamp(u[ki], max=len(table) - 1.0)  # beyond 12 FWHM: last value
            i = torch.clamp(uk.long(), max=len(table) - 2)
            lo = table_t[i]
            prof[ki] = lo + (table_t[i + 1] - lo) * (uk - i)
        half = Wr @ prof @ Wc  # (m, rows, size): pixel integrals of the upper half
        img = torch.cat([half, torch.flip(half[:, :h], dims=(1, 2))], dim=1)
        out[sl] = (img / img.sum((1, 2), keepdim=True)).numpy()
    return out


# ----------------------------------------------------------------------------------------------
# One block of random draws
# ----------------------------------------------------------------------------------------------
@dataclass
class _Block:
    """Everything random about BLOCK consecutive stamps (drawn from the block's generator)."""

    rng: np.random.Generator
    params: dict[str, np.ndarray]
    psfs: np.ndarray  # (B, p, p) float32: bank PSFs filled in, analytic ones still to evaluate
    analytic: dict[str, np.ndarray]  # 'mask' of analytic PSFs and their fwhm_pix, beta, kol, g1, g2
    psf_fwhm: np.ndarray  # arcsec
    psf_source: list[str]
    bg_origin: list[str]
    sky: np.ndarray  # (B, S, S) float32, sky noise in image units (synthetic) or real cutout
    sky_sigma: np.ndarray  # (B,) per-stamp sky noise sigma (image units)
    poisson_z: np.ndarray  # (B, S, S) float32 unit normals for the source Poisson noise
    extra: dict[str, np.ndarray]  # neighbours and stars: params + 'stamp' index within the block
    n_neighbours: np.ndarray
    n_stars: np.ndarray


def _draw_block(rng: np.random.Generator, size: int, preset: Preset, bank, bank_fraction: float
                ) -> _Block:
    """Draw the random content of ``size`` stamps. The order of the draws is part of the format."""
    S, P = preset.stamp, preset.psf_size
    params = preset.sample_params(rng, size)
    fwhm = preset.sample_seeing(rng, size)
    ps = preset.psf
    use_bank = rng.random(size) < bank_fraction if bank is not None else np.zeros(size, bool)
    beta = rng.uniform(ps.moffat_beta[0], ps.moffat_beta[1], size)
    kolmo = rng.random(size) < ps.kolmogorov_fraction
    g = ps.max_shear * np.sqrt(rng.random(size))
    ang = rng.uniform(0.0, 2.0 * np.pi, size)

    psfs = np.zeros((size, P, P), dtype=np.float32)
    analytic = {"mask": ~use_bank, "fwhm_pix": fwhm / preset.pixel_scale, "beta": beta,
                "kol": kolmo, "g1": g * np.cos(ang), "g2": g * np.sin(ang)}
    source = np.where(kolmo, "kolmogorov", "moffat").astype(object)
    if bank is not None:
        nb = int(use_bank.sum())
        if nb:
            bp, bfwhm, bsrc = bank.sample_psfs(rng, nb, preset.pixel_scale,
                                               fwhm_range=(preset.seeing.low, preset.seeing.high))
            psfs[use_bank] = bp
            fwhm[use_bank] = bfwhm
            source[use_bank] = [str(s) for s in bsrc]
        cut, origins = bank.sample_backgrounds(rng, size)
        cut = np.asarray(cut, dtype=np.float32)
        sky_sigma = preset.sky_rms * _robust_std(cut)
        sky = cut * np.float32(preset.sky_rms)
        bg_origin = [str(o) for o in origins]
        extra = _empty_extra()
        n_nb = np.zeros(size, np.int16)
        n_st = np.zeros(size, np.int16)
    else:
        sky = _sky_noise(rng, size, S, preset.background.noise_correlation) * np.float32(
            preset.sky_rms)
        sky_sigma = np.full(size, preset.sky_rms)
        bg_origin = ["synthetic"] * size
        extra, n_nb, n_st = _draw_extras(rng, size, preset)
    poisson_z = rng.standard_normal((size, S, S), dtype=np.float32)
    return _Block(rng, params, psfs, analytic, fwhm, list(source), bg_origin, sky, sky_sigma,
                  poisson_z, extra, n_nb, n_st)


def _sky_noise(rng: np.random.Generator, size: int, S: int, c: float) -> np.ndarray:
    """Unit-rms Gaussian noise (size, S, S), correlated by the separable kernel [c, 1, c]."""
    if c == 0:
        return rng.standard_normal((size, S, S), dtype=np.float32)
    w = rng.standard_normal((size, S + 2, S + 2), dtype=np.float32)
    k = np.float32(1.0 / math.sqrt(1.0 + 2.0 * c * c))
    c32 = np.float32(c)
    w = (w[:, :, 1:-1] + c32 * (w[:, :, :-2] + w[:, :, 2:])) * k
    return (w[:, 1:-1, :] + c32 * (w[:, :-2, :] + w[:, 2:, :])) * k


def _empty_extra() -> dict[str, np.ndarray]:
    keys = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")
    return {**{k: np.empty(0) for k in keys}, "stamp": np.empty(0, dtype=np.int64)}


def _draw_extras(rng: np.random.Generator, size: int, preset: Preset):
    """Neighbour galaxies and stars of ``size`` synthetic stamps (positions avoid the centre)."""
    bg = preset.background
    n_nb = rng.poisson(bg.neighbours, size)
    n_st = rng.poisson(bg.stars, size)
    k_nb, k_st = int(n_nb.sum()), int(n_st.sum())
    nb = preset.sample_params(rng, k_nb)  # structure from the priors
    nb_mag = rng.uniform(bg.neighbour_mag[0], bg.neighbour_mag[1], k_nb)
    st_mag = rng.uniform(bg.star_mag[0], bg.star_mag[1], k_st)
    x, y = _positions(rng, k_nb + k_st, preset.stamp, bg.neighbour_min_dist)
    extra = {
        "x": x,
        "y": y,
        "flux": mag_to_flux(np.concatenate([nb_mag, st_mag]), preset.zeropoint),
        "re_pix": np.concatenate([nb["re_pix"], np.full(k_st, _STAR_RE_PIX)]),
        "n": np.concatenate([nb["n"], np.ones(k_st)]),
        "q": np.concatenate([nb["q"], np.ones(k_st)]),
        "pa_deg": np.concatenate([nb["pa_deg"], np.zeros(k_st)]),
        "stamp": np.concatenate([np.repeat(np.arange(size), n_nb),
                                 np.repeat(np.arange(size), n_st)]),
    }
    return extra, n_nb.astype(np.int16), n_st.astype(np.int16)


def _positions(rng: np.random.Generator, k: int, S: int, min_dist: float):
    """``k`` positions uniform in the stamp [0, S-1]^2 at least ``min_dist`` from its centre."""
    c = (S - 1) / 2.0
    x, y = np.empty(k), np.empty(k)
    todo = np.arange(k)
    while todo.size:
        xt = rng.uniform(0.0, S - 1.0, todo.size)
        yt = rng.uniform(0.0, S - 1.0, todo.size)
        ok = np.hypot(xt - c, yt - c) >= min_dist
        x[todo[ok]], y[todo[ok]] = xt[ok], yt[ok]
        todo = todo[~ok]
    return x, y


def _robust_std(a: np.ndarray) -> np.ndarray:
    """Per-stamp robust standard deviation (1.4826 MAD) of (N, H, W)."""
    flat = a.reshape(len(a), -1)
    med = np.median(flat, axis=1, keepdims=True)
    return 1.4826 * np.median(np.abs(flat - med), axis=1)


# ----------------------------------------------------------------------------------------------
# Rendering a chunk
# ----------------------------------------------------------------------------------------------
def _render(params: dict[str, np.ndarray], psfs: np.ndarray, shape: tuple[int, int],
            nuisance: bool = False) -> np.ndarray:
    """Noiseless PSF-convolved Sérsic stamps, float32 (N, H, W).

    ``nuisance`` (neighbours and stars) uses the renderer with a smaller exactly-integrated window
    (``window`` = :data:`_NUISANCE_WINDOW` px): ~2x cheaper, fluxes within a few % for the most
    compact high-n profiles (exact for the simulated galaxy itself).
    """
    if len(psfs) == 0:
        return np.zeros((0, *shape), dtype=np.float32)
    from galnet.profiles.render import DEFAULT_CONFIG, render

    config = replace(DEFAULT_CONFIG, window=_NUISANCE_WINDOW) if nuisance else DEFAULT_CONFIG
    cols = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")
    return render({k: params[k] for k in cols}, psfs, shape, dtype=np.float32, config=config)


def _cat(dicts: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    dicts = list(dicts)
    return {k: np.concatenate([d[k] for d in dicts]) for k in dicts[0]}


def _snr(model: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Optimal S/N ``sqrt(sum(model^2 / sigma^2))`` per stamp (float64)."""
    return np.sqrt(np.sum((model.astype(np.float64) / sigma) ** 2, axis=(1, 2)))


def _sigma(sky_sigma: np.ndarray, model_total: np.ndarray, gain: float) -> np.ndarray:
    sky2 = (sky_sigma.astype(np.float32) ** 2)[:, None, None]
    var = sky2 + np.maximum(model_total, 0) / np.float32(gain)
    return np.sqrt(var, dtype=np.float32)


def _make_chunk(blocks: list[_Block], preset: Preset, snr_min: float | None) -> dict[str, Any]:
    """Render and compose the stamps of consecutive blocks."""
    shape = preset.shape
    sizes = [len(b.psfs) for b in blocks]
    offsets = np.cumsum([0, *sizes])
    psfs = np.concatenate([b.psfs for b in blocks])
    ana = _cat(b.analytic for b in blocks)
    m = ana["mask"]
    psfs[m] = analytic_psfs(ana["fwhm_pix"][m], ana["beta"][m], ana["kol"][m], ana["g1"][m],
                            ana["g2"][m], size=preset.psf_size)
    params = _cat(b.params for b in blocks)
    sky = np.concatenate([b.sky for b in blocks])
    sky_sigma = np.concatenate([b.sky_sigma for b in blocks])
    z = np.concatenate([b.poisson_z for b in blocks])

    # neighbours and stars: one render call, then summed into their stamps
    extra = _cat([{**b.extra, "stamp": b.extra["stamp"] + o} for b, o in zip(blocks, offsets,
                                                                             strict=False)])
    others = np.zeros((len(psfs), *shape), dtype=np.float32)
    if extra["stamp"].size:
        import torch

        img = _render(extra, psfs[extra["stamp"]], shape, nuisance=True)
        torch.from_numpy(others).index_add_(0, torch.from_numpy(extra["stamp"]),
                                            torch.from_numpy(img))

    galaxy = _render(params, psfs, shape)
    sigma = _sigma(sky_sigma, galaxy + others, preset.gain)
    snr = _snr(galaxy, sigma)

    if snr_min is not None:
        for _ in range(_MAX_REDRAW_ROUNDS):
            bad = np.flatnonzero(snr < snr_min)
            if bad.size == 0:
                break
            # redraw from each block's own generator, in stamp order (independent of chunking)
            for b, o, s in zip(blocks, offsets[:-1], sizes, strict=True):
                idx = bad[(bad >= o) & (bad < o + s)]
                if idx.size:
                    new = preset.sample_params(b.rng, idx.size)
                    for k in params:
                        params[k][idx] = new[k]
            galaxy[bad] = _render({k: v[bad] for k, v in params.items()}, psfs[bad], shape)
            sigma[bad] = _sigma(sky_sigma[bad], galaxy[bad] + others[bad], preset.gain)
            snr[bad] = _snr(galaxy[bad], sigma[bad])
        else:
            raise GalnetValueError(
                f"snr_min = {snr_min:g}: {int((snr < snr_min).sum())} stamps still below it after "
                f"{_MAX_REDRAW_ROUNDS} redraws; it is too high for preset {preset.name!r}",
                "snr_min", snr_min)

    model = galaxy + others
    image = model + sky + np.sqrt(np.maximum(model, 0) / np.float32(preset.gain)) * z
    params["snr"] = snr
    params["psf_fwhm"] = np.concatenate([b.psf_fwhm for b in blocks])
    params["psf_fwhm_pix"] = params["psf_fwhm"] / preset.pixel_scale
    return {
        "images": image.astype(np.float32, copy=False),
        "psfs": psfs,
        "sigma": sigma,
        "params": params,
        "psf_source": [s for b in blocks for s in b.psf_source],
        "bg_origin": [s for b in blocks for s in b.bg_origin],
        "n_neighbours": np.concatenate([b.n_neighbours for b in blocks]),
        "n_stars": np.concatenate([b.n_stars for b in blocks]),
    }


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------
def simulate(
    preset: str | Preset,
    n: int,
    seed: int,
    out: str | os.PathLike,
    bank=None,
    snr_min: float | None = None,
    chunk: int = 4096,
    progress: bool = True,
    bank_psf_fraction: float | None = None,
    threads: int | None = 1,
    workers: int = 1,
) -> Path:
    """Simulate ``n`` survey stamps and write them to the HDF5 file ``out`` (atomically).

    Parameters
    ----------
    preset : preset name (``galnet presets``) or :class:`~galnet.presets.Preset`.
    n : number of stamps (> 0).
    seed : non-negative integer; the output is a deterministic function of it.
    out : output path (.h5); its directory must exist. An existing file is replaced.
    bank : None (synthetic backgrounds, analytic PSFs), a bank file path or a
        :class:`galnet.sim.bank.Bank`: real backgrounds and a mix of real and analytic PSFs.
    snr_min : redraw galaxies whose optimal S/N is below this [default: keep all].
    chunk : stamps rendered and written at once (memory ~ 60 kB x chunk); rounded up to a multiple
        of :data:`BLOCK`. Does not change the result. [default: 4096]
    progress : show a tqdm progress bar on stderr.
    bank_psf_fraction : share of real PSFs when a bank is given [default: the preset's].
    threads : torch intra-op threads while simulating (restored afterwards); None keeps torch's
        setting. [default: 1 -- the batched ops are small, and on a busy 2-core machine two
        threads run up to 6x slower than one (OpenMP barriers stall when a core is taken)]
    workers : processes computing chunks in parallel (each with ``threads`` torch threads); the
        output does not depend on it. A bank must then be a file path (reopened per worker).
        [default: 1]

    Returns
    -------
    Path of the written file. Layout: ``images``, ``sigma`` (N, S, S) float32, image units;
    ``psfs`` (N, P, P) float32, unit sum; ``params`` (N,) compound table, columns :data:`COLUMNS`;
    ``bg_origins`` and ``psf_sources`` (string lists indexed by the table); attributes describe the
    preset (``preset``, ``preset_config`` JSON), ``seed``, ``n``, ``bank``, ``units``, ...
    """
    preset = get_preset(preset)
    n = _check_int(n, "n", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)
    chunk = _check_int(chunk, "chunk", minimum=1)
    if threads is not None:
        threads = _check_int(threads, "threads", minimum=1)
    workers = _check_int(workers, "workers", minimum=1)
    chunk = BLOCK * math.ceil(chunk / BLOCK)
    if snr_min is not None:
        snr_min = _check_float(snr_min, "snr_min")
        if snr_min < 0:
            raise GalnetValueError(f"snr_min must be >= 0, got {snr_min:g}", "snr_min", snr_min)
    out = check_output_path(out)
    bank_obj, bank_info = _open_bank(bank, preset)
    fraction = preset.psf.bank_fraction if bank_psf_fraction is None else _check_float(
        bank_psf_fraction, "bank_psf_fraction")
    if not 0.0 <= fraction <= 1.0:
        raise GalnetValueError(f"bank_psf_fraction must be in [0, 1], got {fraction:g}",
                               "bank_psf_fraction", fraction)

    attrs = {
        "format": "galnet-simulation",
        "format_version": FORMAT_VERSION,
        "preset": preset.name,
        "preset_config": preset.to_json(),
        "seed": seed,
        "n": n,
        "snr_min": "none" if snr_min is None else snr_min,
        "bank": json.dumps(bank_info, sort_keys=True, default=str),
        "background": "synthetic" if bank_obj is None else "bank",
        "bank_psf_fraction": fraction if bank_obj is not None else 0.0,
        "galnet_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "units": json.dumps({**{k: v[1] for k, v in COLUMNS.items()},
                             "images": "image units", "sigma": "image units", "psfs": ""}),
        "columns": json.dumps({k: v[2] for k, v in COLUMNS.items()}),
        "pixel_scale": preset.pixel_scale,
        "zeropoint": preset.zeropoint,
        "gain": preset.gain,
        "sky_rms": preset.sky_rms,
        "block": BLOCK,
    }
    n_blocks = math.ceil(n / BLOCK)
    seeds = np.random.SeedSequence(seed).spawn(n_blocks)
    results = _chunk_results(preset, n, seeds, chunk, bank_obj, fraction, snr_min, workers,
                             threads)
    try:
        with _torch_threads(threads):
            return _write_atomic(out, lambda f: _fill(f, preset, n, results, attrs, progress))
    finally:
        results.close()  # stops worker processes at once if writing failed


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count."""
    if threads is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _compute_chunk(preset: Preset, bank, fraction: float, snr_min: float | None,
                   seeds: list[np.random.SeedSequence]) -> dict[str, Any]:
    """Draw and render the blocks of one chunk (one SeedSequence per block)."""
    blocks = [_draw_block(np.random.Generator(np.random.PCG64(s)), BLOCK, preset, bank, fraction)
              for s in seeds]
    return _make_chunk(blocks, preset, snr_min)


_WORKER_BANKS: dict[str, Any] = {}


def _worker_init(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _worker_chunk(preset: Preset, bank_path: str | None, fraction: float, snr_min: float | None,
                  seeds: list[np.random.SeedSequence]) -> dict[str, Any]:
    """:func:`_compute_chunk` in a worker process (the bank is reopened there, once)."""
    bank = None
    if bank_path is not None:
        if bank_path not in _WORKER_BANKS:
            from galnet.sim.bank import Bank

            _WORKER_BANKS[bank_path] = Bank(bank_path)
        bank = _WORKER_BANKS[bank_path]
    return _compute_chunk(preset, bank, fraction, snr_min, seeds)


def _chunk_results(preset: Preset, n: int, seeds, chunk: int, bank, fraction: float,
                   snr_min: float | None, workers: int, threads: int | None
                   ) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(start, stop, result) of each chunk, in order; computed here or by ``workers`` processes."""
    spans = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]

    def block_seeds(a: int, b: int):
        return seeds[a // BLOCK: math.ceil(b / BLOCK)]

    if workers == 1 or len(spans) == 1:
        for a, b in spans:
            yield a, b, _compute_chunk(preset, bank, fraction, snr_min, block_seeds(a, b))
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    bank_path = None if bank is None else str(bank.path)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads,)) as ex:
        pending: deque = deque()
        todo = iter(spans)
        try:
            for a, b in todo:
                pending.append((a, b, ex.submit(_worker_chunk, preset, bank_path, fraction,
                                                snr_min, block_seeds(a, b))))
                if len(pending) > workers:
                    a0, b0, fut = pending.popleft()
                    yield a0, b0, fut.result()
            while pending:
                a0, b0, fut = pending.popleft()
                yield a0, b0, fut.result()
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise


def _fill(f: h5py.File, preset: Preset, n: int, results, attrs: dict[str, Any],
          progress: bool) -> None:
    """Create the datasets and stream the chunk ``results`` into them."""
    from tqdm.auto import tqdm

    S, P = preset.stamp, preset.psf_size
    hc = min(_H5_CHUNK, n)
    d_img = f.create_dataset("images", (n, S, S), "f4", chunks=(hc, S, S))
    d_sig = f.create_dataset("sigma", (n, S, S), "f4", chunks=(hc, S, S))
    d_psf = f.create_dataset("psfs", (n, P, P), "f4", chunks=(hc, P, P))
    table_dtype = np.dtype([(k, v[0]) for k, v in COLUMNS.items()])
    d_par = f.create_dataset("params", (n,), table_dtype, chunks=(min(4096, n),))
    d_img.attrs["units"] = d_sig.attrs["units"] = "image units (mag = zeropoint - 2.5 log10)"
    d_sig.attrs["description"] = "per-pixel 1-sigma noise: sky and source Poisson"
    d_psf.attrs["description"] = "effective PSF (pixel included), unit sum, centred"
    for k, v in COLUMNS.items():
        d_par.attrs[f"unit_{k}"] = v[1]
    lists: dict[str, dict[str, int]] = {"psf_source": {}, "bg_origin": {}}

    t0 = time.perf_counter()
    with tqdm(total=n, unit="stamp", disable=not progress, desc=f"simulate {preset.name}",
              smoothing=0.1) as bar:
        for start, stop, res in results:
            m = stop - start  # the last block may be partly beyond n
            d_img[start:stop] = res["images"][:m]
            d_sig[start:stop] = res["sigma"][:m]
            d_psf[start:stop] = res["psfs"][:m]
            rows = np.zeros(m, dtype=table_dtype)
            for k in COLUMNS:
                if k in res["params"]:
                    rows[k] = res["params"][k][:m]
            for col in ("psf_source", "bg_origin"):
                index = lists[col]
                rows[col] = [index.setdefault(s, len(index)) for s in res[col][:m]]
            rows["n_neighbours"] = res["n_neighbours"][:m]
            rows["n_stars"] = res["n_stars"][:m]
            d_par[start:stop] = rows
            bar.update(m)
    str_dt = h5py.string_dtype()
    f.create_dataset("psf_sources", data=np.array(list(lists["psf_source"]), dtype=object),
                     dtype=str_dt)
    f.create_dataset("bg_origins", data=np.array(list(lists["bg_origin"]), dtype=object),
                     dtype=str_dt)
    attrs["elapsed_s"] = round(time.perf_counter() - t0, 3)
    f.attrs.update(attrs)


def _write_atomic(out: Path, fill: Callable[[h5py.File], None]) -> Path:
    """Write through ``fill`` into a temporary file beside ``out``, then rename it to ``out``."""

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            fill(f)

    return atomic_write(out, write)


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------
def _check_int(v: Any, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        raise GalnetValueError(f"{name} must be an integer, got {v!r}", name, v)
    if v < minimum:
        raise GalnetValueError(f"{name} must be >= {minimum}, got {v}", name, v)
    return int(v)


def _check_float(v: Any, name: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError) as err:
        raise GalnetValueError(f"{name} must be a number, got {v!r}", name, v) from err
    if not math.isfinite(x):
        raise GalnetValueError(f"{name} must be finite, got {v!r}", name, v)
    return x


def check_output_path(out: str | os.PathLike) -> Path:
    """``out`` as a Path, after checking that it can be written: not a directory, and its
    directory exists and is writable. Raises :class:`GalnetFileError`."""
    p = Path(out)
    if p.is_dir():
        raise GalnetFileError(f"output {str(p)!r} is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise GalnetFileError(f"cannot write {str(p)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GalnetFileError(f"cannot write {str(p)!r}: directory {str(parent)!r} is not writable")
    return p


def _open_bank(bank, preset: Preset):
    """(Bank or None, provenance dict or "synthetic"). Checks the preset's pixel scale is banked."""
    if bank is None:
        return None, "synthetic"
    if isinstance(bank, str | os.PathLike):
        if not Path(bank).is_file():
            raise GalnetFileError(f"bank file {str(bank)!r} does not exist "
                                  "(build one with `galnet bank build`)")
        from galnet.sim.bank import Bank

        bank = Bank(bank)
    scales = [float(s) for s in getattr(bank, "pixel_scales", ())]
    if not any(math.isclose(s, preset.pixel_scale, rel_tol=1e-6) for s in scales):
        raise GalnetValueError(
            f"bank {str(getattr(bank, 'path', bank))!r} has no PSFs at pixel scale "
            f"{preset.pixel_scale} (preset {preset.name!r}; bank has {scales})",
            "pixel_scale", preset.pixel_scale)
    info = {"path": str(getattr(bank, "path", "")), **dict(getattr(bank, "provenance", {}))}
    return bank, info


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
def read_params(path: str | os.PathLike):
    """The parameter table of a simulated file as an astropy ``QTable`` with units;
    ``psf_source`` and ``bg_origin`` decoded to strings. Metadata (file attributes) in ``.meta``."""
    from astropy import units as u
    from astropy.table import QTable

    try:
        with h5py.File(path, "r") as f:
            rows = f["params"][:]
            psf_sources = np.array([s.decode() if isinstance(s, bytes) else s
                                    for s in f["psf_sources"][:]], dtype=object)
            bg_origins = np.array([s.decode() if isinstance(s, bytes) else s
                                   for s in f["bg_origins"][:]], dtype=object)
            meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    except (OSError, KeyError) as err:
        raise GalnetFileError(f"cannot read simulation file {str(path)!r}: {err}") from err
    t = QTable(meta=meta)
    for k in rows.dtype.names:
        unit = COLUMNS.get(k, ("", "", ""))[1]
        col = rows[k]
        if k == "psf_source":
            col = psf_sources[col].astype(str)
        elif k == "bg_origin":
            col = bg_origins[col].astype(str)
        t[k] = col * u.Unit(unit) if unit else col
    return t
