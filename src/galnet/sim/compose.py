"""One chunk of simulated stamps: the random draws of each block and the stamps composed from them.

A *block* of :data:`BLOCK` consecutive stamps is the unit of determinism: :func:`draw_block` draws
everything random about it from the block's own generator (galaxy parameters, PSFs, backgrounds,
neighbours and stars, noise), and :func:`make_chunk` renders and composes each block *on its own*
(analytic PSFs, neighbours and stars, the galaxy, S/N redraws), so that a stamp's pixels depend
only on its block: bitwise the same for any ``chunk`` and ``workers`` of
:func:`galnet.sim.simulate.simulate`. (Rendering a whole chunk at once put stamps of several
blocks into one float32 batch; the rounding of batched float32 kernels depends on the batch's
size and make-up (GEMM blocking, vectorised loop tails), and the stamp's FFT convolution spreads
any such change as noise of a few float32 eps of the galaxy's peak over the whole stamp: up to
2.5e-3 of the sky noise at the edge of a mag 17 galaxy. Rendering per block costs ~20-30% more
simulator time on a 2-core CPU.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from galnet.conventions import mag_to_flux
from galnet.errors import GalnetValueError
from galnet.presets import Preset
from galnet.sim.psfs import analytic_psfs

__all__ = ["BLOCK", "Block", "draw_block", "make_chunk", "compute_chunk", "render_stamps"]

#: Stamps per random-number block (the unit of determinism; chunks are multiples of it).
BLOCK = 64
#: Sérsic radius (pixels) used to render stars: effectively a point source through the PSF.
_STAR_RE_PIX = 0.01
#: Exactly-integrated window (pixels) of the renderer for neighbours and stars (default 4).
_NUISANCE_WINDOW = 2
#: Rounds of redraws allowed for ``snr_min`` before giving up.
_MAX_REDRAW_ROUNDS = 100


# ----------------------------------------------------------------------------------------------
# One block of random draws
# ----------------------------------------------------------------------------------------------
@dataclass
class Block:
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


def draw_block(rng: np.random.Generator, size: int, preset: Preset, bank, bank_fraction: float
                ) -> Block:
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
    return Block(rng, params, psfs, analytic, fwhm, list(source), bg_origin, sky, sky_sigma,
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
# Rendering and composing
# ----------------------------------------------------------------------------------------------
def render_stamps(params: dict[str, np.ndarray], psfs: np.ndarray, shape: tuple[int, int],
                  nuisance: bool = False) -> np.ndarray:
    """Noiseless PSF-convolved Sérsic stamps, float32 (N, H, W).

    ``nuisance`` (neighbours and stars) uses the renderer with a smaller exactly-integrated window
    (``window`` = :data:`_NUISANCE_WINDOW` px): ~2x cheaper, fluxes within a few % for the most
    compact high-n profiles (exact for the simulated galaxy itself).
    """
    if len(psfs) == 0:
        return np.zeros((0, *shape), dtype=np.float32)
    from galnet.profiles.render import DEFAULT_CONFIG, render

    config = (replace(DEFAULT_CONFIG, window=_NUISANCE_WINDOW, edge_tol=None) if nuisance
              else DEFAULT_CONFIG)
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


def _compose_block(b: Block, preset: Preset, snr_min: float | None) -> dict[str, Any]:
    """Render and compose the stamps of one block (its pixels depend on nothing else)."""
    shape = preset.shape
    psfs = b.psfs.copy()
    m = b.analytic["mask"]
    psfs[m] = analytic_psfs(b.analytic["fwhm_pix"][m], b.analytic["beta"][m], b.analytic["kol"][m],
                            b.analytic["g1"][m], b.analytic["g2"][m], size=preset.psf_size)
    params = {k: np.array(v) for k, v in b.params.items()}

    # neighbours and stars: one render call, then summed into their stamps
    others = np.zeros((len(psfs), *shape), dtype=np.float32)
    stamp = b.extra["stamp"]
    if stamp.size:
        import torch

        img = render_stamps(b.extra, psfs[stamp], shape, nuisance=True)
        torch.from_numpy(others).index_add_(0, torch.from_numpy(stamp), torch.from_numpy(img))

    galaxy = render_stamps(params, psfs, shape)
    sigma = _sigma(b.sky_sigma, galaxy + others, preset.gain)
    snr = _snr(galaxy, sigma)

    if snr_min is not None:
        for _ in range(_MAX_REDRAW_ROUNDS):
            bad = np.flatnonzero(snr < snr_min)
            if bad.size == 0:
                break
            new = preset.sample_params(b.rng, bad.size)  # from the block's own generator
            for k in params:
                params[k][bad] = new[k]
            galaxy[bad] = render_stamps({k: v[bad] for k, v in params.items()}, psfs[bad], shape)
            sigma[bad] = _sigma(b.sky_sigma[bad], galaxy[bad] + others[bad], preset.gain)
            snr[bad] = _snr(galaxy[bad], sigma[bad])
        else:
            raise GalnetValueError(
                f"snr_min = {snr_min:g}: {int((snr < snr_min).sum())} stamps still below it after "
                f"{_MAX_REDRAW_ROUNDS} redraws; it is too high for preset {preset.name!r}",
                "snr_min", snr_min)

    model = galaxy + others
    image = model + b.sky + np.sqrt(np.maximum(model, 0) / np.float32(preset.gain)) * b.poisson_z
    params["snr"] = snr
    params["psf_fwhm"] = b.psf_fwhm
    params["psf_fwhm_pix"] = b.psf_fwhm / preset.pixel_scale
    return {"images": image.astype(np.float32, copy=False), "psfs": psfs, "sigma": sigma,
            "params": params}


def make_chunk(blocks: list[Block], preset: Preset, snr_min: float | None) -> dict[str, Any]:
    """Render and compose the stamps of consecutive blocks (each block on its own)."""
    parts = [_compose_block(b, preset, snr_min) for b in blocks]
    return {
        "images": np.concatenate([p["images"] for p in parts]),
        "psfs": np.concatenate([p["psfs"] for p in parts]),
        "sigma": np.concatenate([p["sigma"] for p in parts]),
        "params": _cat(p["params"] for p in parts),
        "psf_source": [s for b in blocks for s in b.psf_source],
        "bg_origin": [s for b in blocks for s in b.bg_origin],
        "n_neighbours": np.concatenate([b.n_neighbours for b in blocks]),
        "n_stars": np.concatenate([b.n_stars for b in blocks]),
    }


def compute_chunk(preset: Preset, bank, fraction: float, snr_min: float | None,
                  seeds: list[np.random.SeedSequence]) -> dict[str, Any]:
    """Draw and render the blocks of one chunk (one SeedSequence per block)."""
    blocks = [draw_block(np.random.Generator(np.random.PCG64(s)), BLOCK, preset, bank, fraction)
              for s in seeds]
    return make_chunk(blocks, preset, snr_min)
