"""The fitting problem: knobs, internal coordinates, bounds, weights and the model's Jacobian.

The fit works in internal coordinates that keep the problem well conditioned::

    u = (x, y, ln flux, ln re, ln n, e1, e2[, sky])
    e = (1 - q) / (1 + q),   e1 = e cos 2 pa,   e2 = e sin 2 pa

(round galaxies are interior points, PA wraps by itself). Bounds (:func:`fit_bounds`) come from
the parameter table :data:`galnet.params.SERSIC` (``SERSIC[p].fit`` for ``re_pix``, ``n``,
``q``; ``re_pix`` at most twice the fitted image) and the image (``x, y`` within it).

The Jacobian ``J = dM/du`` is taken by forward differences on the renderer
(:mod:`galnet.profiles.render`; ``d/d ln flux = M`` and ``d/d sky = 1`` exactly); the
integration windows of the renderer are held fixed while the parameters are perturbed (a window
that changed between two renders would be a jump), and the centre step is taken away from the
half-pixel where the window moves.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from galnet.errors import GalnetValueError
from galnet.params import SERSIC
from galnet.profiles.render import (
    DEFAULT_CONFIG,
    RenderConfig,
    psf_transform,
    render_grouped,
    window_sizes,
)

__all__ = ["FitConfig", "DEFAULT_FIT", "FIT_KEYS", "NPAR", "fit_bounds", "internal_bounds",
           "to_internal", "geometry", "project", "e_of_q", "as_array3", "check_psfs",
           "subtract_neighbours", "noise_weights", "stamp_scale", "stamp_bounds", "Problem"]

#: The fitted Sérsic parameters, in the conventions of :mod:`galnet.conventions`.
FIT_KEYS: tuple[str, ...] = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")

#: Internal parameters without a sky: x, y, ln F, ln re, ln n, e1, e2.
NPAR = 7


@dataclass(frozen=True)
class FitConfig:
    """Knobs of the Levenberg-Marquardt fit.

    Attributes
    ----------
    max_iter : most LM iterations (accepted or rejected steps) per stamp. [default: 60]
    dchi2 : converged when the Gauss-Newton step would lower chi2 by less than this (the
        parameters are then within ~sqrt(dchi2) sigma of the minimum), or a nearly undamped
        accepted step (lambda < 1) lowered it by less. [1e-2]
    ftol : or when an accepted step lowers chi2 by less than this fraction (Imfit's). [1e-8]
    lam0 : initial damping. [1e-3]
    fd_step : forward-difference steps (x, y in pixels; ln re, ln n, e1, e2), for float64;
        float32 uses ``fd_step32``.
    scale_errors : multiply the covariance errors by sqrt(chi2nu). [default: False]
    batch : stamps fitted together (bounds memory). [default: 256]
    dtype : "float32" (default: renders ~2x faster on CPU, docs/benchmarks.md) or "float64".
        In float32 chi2 is known to ~5e-7 of itself, so very bright sources (chi2 >~ 1e5) stop a
        fraction of a sigma from the float64 minimum (benchmarks/gama_galaxies.py): use float64
        for them.
    prior_scale : width of a prior (``fit_arrays(prior=...)``) in units of its given errors
        (the network's errors are calibrated on its training set; 1 measured better than 2 on
        GalSim stamps in real backgrounds, docs/fit.md). [default: 1]
    sky_prior : with ``sky="flat"``: width of a Gaussian prior on the sky around 0, in units of
        the stamp's median noise (a pedestal the frame's sky estimate can have left is small;
        a free sky trades against the wings of a high-n profile). [default: None, no prior]
    render : renderer accuracy for the model. [default: exact]
    jac_render : cheaper renderer for the finite-difference Jacobian (it steers the steps and
        gives the errors, not the minimum) [default: windows 2-9 px]; None: render.
    """

    max_iter: int = 60
    dchi2: float = 1e-2
    ftol: float = 1e-8
    lam0: float = 1e-3
    fd_step: tuple[float, ...] = (1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5)
    fd_step32: tuple[float, ...] = (2e-3, 2e-3, 2e-3, 2e-3, 2e-3, 2e-3)
    scale_errors: bool = False
    batch: int = 256
    dtype: str = "float32"
    prior_scale: float = 1.0
    sky_prior: float | None = None
    render: RenderConfig = field(default=DEFAULT_CONFIG)
    jac_render: RenderConfig | None = field(
        default=RenderConfig(window=2, windows=(4, 9), edge_tol=None))


DEFAULT_FIT = FitConfig()


# ----------------------------------------------------------------------------------------------
# Parameters <-> internal coordinates, bounds
# ----------------------------------------------------------------------------------------------
def e_of_q(q):
    """Ellipticity ``e = (1 - q) / (1 + q)`` of an axis ratio."""
    return (1.0 - q) / (1.0 + q)


def to_internal(p: dict[str, np.ndarray]) -> np.ndarray:
    """(N, 7) internal parameters ``u`` of catalogue parameters ``p`` (stamp pixels)."""
    e = e_of_q(np.asarray(p["q"], float))
    t = 2 * np.deg2rad(np.asarray(p["pa_deg"], float))
    return np.stack([p["x"], p["y"], np.log(p["flux"]), np.log(p["re_pix"]), np.log(p["n"]),
                     e * np.cos(t), e * np.sin(t)], axis=1).astype(float)


def geometry(u: torch.Tensor):
    """(x, y, flux, re, n, q, pa in radians) tensors from internal parameters (B, >=7)."""
    e = torch.sqrt(u[:, 5] ** 2 + u[:, 6] ** 2)
    q = (1.0 - e) / (1.0 + e)
    pa = 0.5 * torch.atan2(u[:, 6], u[:, 5])
    return u[:, 0], u[:, 1], torch.exp(u[:, 2]), torch.exp(u[:, 3]), torch.exp(u[:, 4]), q, pa


def fit_bounds(shape: tuple[int, int], model=SERSIC) -> dict[str, tuple[float, float]]:
    """The bounds (inclusive, catalogue units, stamp pixels) the fitter keeps each bounded
    parameter within, for an image of ``shape = (H, W)``: ``x, y`` within the image (pixel
    edges), ``re_pix``, ``n``, ``q`` within ``model[p].fit``, ``re_pix`` at most ``2 max(H, W)``.
    ``flux`` and ``pa_deg`` are free (PA wraps)."""
    H, W = shape
    re_lo, re_hi = model["re_pix"].fit
    return {"x": (-0.5, W - 0.5), "y": (-0.5, H - 0.5),
            "re_pix": (re_lo, min(re_hi, 2.0 * max(H, W))),
            "n": model["n"].fit, "q": model["q"].fit}


def internal_bounds(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Lower/upper bounds of u[:5] and the largest |e| (from the lowest q) of :func:`fit_bounds`."""
    b = fit_bounds(shape)
    lo = np.array([b["x"][0], b["y"][0], -np.inf, math.log(b["re_pix"][0]),
                   math.log(b["n"][0])])
    hi = np.array([b["x"][1], b["y"][1], np.inf, math.log(b["re_pix"][1]), math.log(b["n"][1])])
    return lo, hi, float(e_of_q(b["q"][0]))


def project(u: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, emax: float) -> torch.Tensor:
    """``u`` moved onto the nearest point within the bounds (|e| scaled down to ``emax``)."""
    u = u.clone()
    u[:, :5] = torch.maximum(torch.minimum(u[:, :5], hi), lo)
    e = torch.sqrt(u[:, 5] ** 2 + u[:, 6] ** 2)
    s = torch.where(e > emax, emax / e.clamp_min(1e-30), torch.ones_like(e))
    u[:, 5] = u[:, 5] * s
    u[:, 6] = u[:, 6] * s
    return u


def stamp_scale(wt: np.ndarray) -> np.ndarray:
    """(N,) median sigma (``1/wt`` over the usable pixels) of each stamp: the internal unit of
    image values (1 where a stamp has no usable pixel)."""
    s = np.where(wt > 0, 1.0 / np.where(wt > 0, wt, 1.0), np.nan).reshape(len(wt), -1)
    with warnings.catch_warnings():  # all-NaN rows: "All-NaN slice encountered"
        warnings.simplefilter("ignore", RuntimeWarning)
        m = np.nanmedian(s, axis=1) if s.size else np.ones(len(wt))
    return np.where(np.isfinite(m) & (m > 0), m, 1.0)


def stamp_bounds(shape: tuple[int, int], N: int, lo=None, hi=None, scale=None
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """(N, 5) internal lower/upper bounds on ``u[:5]`` and the largest ``|e|``: those of
    :func:`galnet.fitting.problem.internal_bounds` intersected with the per-stamp ``lo``,
    ``hi`` ((N, 5) or (5,) on ``x, y, flux, re_pix, n``, catalogue units; NaN = none; the flux
    divided by ``scale``)."""
    lo0, hi0, emax = internal_bounds(shape)
    out = [np.broadcast_to(lo0, (N, 5)).copy(), np.broadcast_to(hi0, (N, 5)).copy()]
    for j, (user, pick) in enumerate(((lo, np.maximum), (hi, np.minimum))):
        if user is None:
            continue
        a = np.broadcast_to(np.asarray(user, float), (N, 5)).copy()
        if scale is not None:
            a[:, 2] = a[:, 2] / scale
        with np.errstate(all="ignore"):
            a[:, 2:] = np.where(a[:, 2:] > 0, np.log(np.where(a[:, 2:] > 0, a[:, 2:], 1.0)),
                                np.where(np.isnan(a[:, 2:]), np.nan, -np.inf))
        out[j] = np.where(np.isnan(a), out[j], pick(out[j], a))
    if (out[0] > out[1]).any():
        i, c = (int(v[0]) for v in np.nonzero(out[0] > out[1]))
        raise GalnetValueError(f"stamp {i}: the bounds on {('x', 'y', 'flux', 're_pix', 'n')[c]}"
                               f" are empty (lo > hi)", "lo")
    return out[0], out[1], emax


# ----------------------------------------------------------------------------------------------
# Inputs: arrays, PSFs, weights
# ----------------------------------------------------------------------------------------------
def as_array3(a, name: str, dtype=np.float64) -> np.ndarray:
    """``a`` (a Quantity's value too) as an (N, H, W) array; a 2-D array becomes (1, H, W)."""
    a = np.asarray(getattr(a, "value", a), dtype=dtype)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise GalnetValueError(f"{name} must be (H, W) or (N, H, W), got shape {a.shape}", name)
    return a


def subtract_neighbours(images: np.ndarray, neighbours, what: str = "images"
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(``images`` minus the neighbours' model, that model with non-finite values as 0);
    GalnetValueError when its shape is not that of ``images`` (named ``what``)."""
    nb = as_array3(neighbours, "neighbours")
    if nb.shape != images.shape:
        raise GalnetValueError(f"neighbours must have the shape of the {what} {images.shape}, "
                               f"got {nb.shape}", "neighbours")
    nb = np.where(np.isfinite(nb), nb, 0.0)
    return images - nb, nb


def check_psfs(psfs, N: int) -> np.ndarray:
    """The PSFs (1 or N, h, w), checked (odd sizes, finite, positive sum) and normalised."""
    p = as_array3(psfs, "psf")
    if p.shape[0] not in (1, N):
        raise GalnetValueError(f"psf cube has {p.shape[0]} images for {N} stamps", "psf")
    h, w = p.shape[1:]
    if h % 2 == 0 or w % 2 == 0:
        raise GalnetValueError(f"psf must have odd sizes (centre on a pixel), got {h}x{w}", "psf")
    if not np.isfinite(p).all():
        raise GalnetValueError("psf has non-finite pixels", "psf")
    s = p.sum(axis=(1, 2), keepdims=True)
    if not (s > 0).all():
        raise GalnetValueError("psf must have a positive sum", "psf")
    return p / s


def noise_weights(images, sigma, mask, gain, *, require: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(data with masked/non-finite pixels zeroed, 1/sigma with 0 at ignored pixels).

    Ignored: masked pixels, non-finite data, and non-finite or non-positive ``sigma``. Without
    ``sigma``: the stamp's sky rms, plus the source's Poisson noise ``max(D, 0) / gain``.
    ``require``: raise if a stamp has no usable pixel (else its weights are all 0)."""
    from galnet.nn.model import sky_rms

    N = images.shape[0]
    ignore = ~np.isfinite(images)
    if mask is not None:
        m = as_array3(mask, "mask", dtype=bool) if np.asarray(mask).dtype == bool else \
            as_array3(mask, "mask") != 0
        if m.shape != images.shape:
            raise GalnetValueError(f"mask must have the shape of the images {images.shape}, got "
                                   f"{m.shape}", "mask")
        ignore |= m
    data = np.where(ignore, 0.0, images)
    if sigma is not None:
        s = as_array3(sigma, "sigma")
        if s.shape != images.shape:
            raise GalnetValueError(f"sigma must have the shape of the images {images.shape}, "
                                   f"got {s.shape}", "sigma")
        ignore |= ~np.isfinite(s) | ~(s > 0)
        var = np.where(ignore, 1.0, s) ** 2
    else:  # GALFIT-like: sky noise from the stamp, plus Poisson noise of the source with a gain
        rms = sky_rms(torch.as_tensor(np.where(ignore, np.nan, images)), nan=True).numpy()
        rms = np.where(np.isfinite(rms) & (rms > 0), rms, 1.0)
        var = np.broadcast_to(rms[:, None, None] ** 2, images.shape).copy()
        if gain is not None:
            var = var + np.maximum(data, 0.0) / float(gain)
    wt = np.where(ignore, 0.0, 1.0 / np.sqrt(var))
    if require and N and not (wt > 0).any(axis=(1, 2)).all():
        i = int(np.flatnonzero(~(wt > 0).any(axis=(1, 2)))[0])
        raise GalnetValueError(f"stamp {i} has no usable pixel (all masked or sigma <= 0)", "mask")
    return data, wt


# ----------------------------------------------------------------------------------------------
# The model and its Jacobian
# ----------------------------------------------------------------------------------------------
class Problem:
    """Data, weights, PSF transforms and render settings of one batch of stamps."""

    def __init__(self, data, wt, psf, shape, sky: bool, cfg: FitConfig, prior=None):
        self.data, self.wt = data, wt  # (B, H, W); wt = 1/sigma, 0 where masked
        self.prior = prior  # None or (mu, ivar): (B, npar) float64 Gaussian prior on u
        self.psf_shape = tuple(psf.shape[-2:])
        self.fft = psf_transform(psf, shape)
        self.shared = psf.shape[0] == 1
        self.shape, self.sky, self.cfg = shape, sky, cfg
        self.npar = NPAR + int(sky)
        steps = cfg.fd_step if data.dtype == torch.float64 else cfg.fd_step32
        self.h = steps

    def psf_fft(self, idx: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return self.fft
        pf = self.fft[idx]
        pf._galnet_lw = self.fft._galnet_lw  # type: ignore[attr-defined]
        return pf

    def windows(self, u: torch.Tensor, rc: RenderConfig | None = None) -> np.ndarray:
        x, y, f, re, n, q, pa = (t.detach().cpu().numpy() for t in geometry(u))
        return window_sizes(re, n, q, rc or self.cfg.render)

    def model(self, u: torch.Tensor, idx: torch.Tensor, win: np.ndarray,
              rc: RenderConfig | None = None) -> torch.Tensor:
        """Sérsic x PSF (no sky) for the stamps ``idx``, parameters ``u`` (len(idx), npar)."""
        return render_grouped(*geometry(u), self.psf_fft(idx), self.psf_shape, self.shape, win,
                              rc or self.cfg.render)

    def residual(self, u, idx, win) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted residuals (B, H*W) and the model."""
        m = self.model(u, idx, win)
        r = self.data[idx] - m
        if self.sky:
            r = r - u[:, 7, None, None]
        return (r * self.wt[idx]).reshape(len(idx), -1), m

    def jacobian(self, u, idx, win, m) -> torch.Tensor:
        """Weighted Jacobian (B, H*W, npar) of the model by forward differences (``win``, ``m``:
        windows and model of the exact renderer, reused when ``jac_render`` is None). The base
        and the six perturbed models are rendered in one call."""
        B = len(idx)
        wt = self.wt[idx].reshape(B, -1)
        rc = self.cfg.jac_render or self.cfg.render
        js = (0, 1, 3, 4, 5, 6)
        ups = []
        dus = []
        for j, h in zip(js, self.h, strict=True):
            du = torch.full((B,), h, dtype=u.dtype, device=u.device)
            if j in (0, 1):  # do not cross the half pixel where the window moves
                du = torch.where(torch.round(u[:, j] + du) != torch.round(u[:, j]), -du, du)
            elif j in (5, 6):  # stay inside |e| < 1
                e = torch.sqrt(u[:, 5] ** 2 + u[:, 6] ** 2)
                du = torch.where(e + h > 0.99, -du * torch.sign(u[:, j] + 1e-30), du)
            up = u.clone()
            up[:, j] = up[:, j] + du
            ups.append(up)
            dus.append(du)
        base = self.cfg.jac_render is not None
        if base:  # the cheaper renderer's own base model and windows
            win = self.windows(u, rc)
            ups.insert(0, u)
        k = len(ups)
        allu = torch.cat(ups)
        allidx = idx.repeat(k)
        models = self.model(allu, allidx, np.tile(win, k), rc).reshape(k, B, -1)
        m0 = models[0] if base else m.reshape(B, -1)
        pert = models[1:] if base else models
        cols = [None] * self.npar
        cols[2] = m.reshape(B, -1) * wt  # d M / d ln F = M (exact model)
        if self.sky:
            cols[7] = wt
        for i, j in enumerate(js):
            cols[j] = ((pert[i] - m0) / dus[i][:, None]) * wt
        return torch.stack(cols, dim=2)
