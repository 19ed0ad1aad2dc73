"""Batched forward-model fitting of PSF-convolved Sérsic profiles (the GALFIT job), CPU or GPU.

:func:`fit_arrays` fits stamps of any size (N, H, W) -- 61x61 cutouts or one large image at
native resolution -- with a Levenberg-Marquardt loop run for all stamps at once on the renderer of
:mod:`galnet.profiles.render` (the exact model: Sérsic x effective PSF, sampled at pixel centres).
:func:`fit` does the same for a :class:`galnet.io.stamps.StampBatch` and returns the catalogue of
``galnet fit`` (a contract; ``docs/fit.md``): the columns of ``galnet predict`` plus ``niter``,
``converged`` and the fitted ``sky`` when one is fitted.

The problem
-----------
Minimise ``chi2 = sum_pixels w (D - M(theta) - sky)^2`` over unmasked pixels, ``w = 1/sigma^2``,
with ``theta`` in internal coordinates that keep the problem well conditioned::

    u = (x, y, ln flux, ln re, ln n, e1, e2[, sky])
    e = (1 - q) / (1 + q),   e1 = e cos 2 pa,   e2 = e sin 2 pa

(round galaxies are interior points, PA wraps by itself). Bounds: ``x, y`` within the stamp,
``re_pix``, ``n``, ``q`` within :data:`galnet.conventions.SPECS` (``re_pix`` at most twice the
stamp size); a step that leaves them is projected back; a parameter that ends on a bound raises
``BOUND_HIT``.

The loop (per stamp, batched)
-----------------------------
Jacobian ``J = dM/du`` by forward differences on the renderer (``d/d ln flux = M`` and
``d/d sky = 1`` exactly); the integration windows of the renderer are held fixed while the
parameters are perturbed (a window that changed between two renders would be a jump), and the
centre step is taken away from the half-pixel where the window moves. Step
``(J^T W J + lambda diag(J^T W J)) du = J^T W r``; a step is kept if chi2 falls (lambda / 3),
else lambda x 8 and the same Jacobian is reused. Parameters held on a bound by the gradient are
frozen for the step. A stamp has converged when the Gauss-Newton step would lower chi2 by less
than ``FitConfig.dchi2`` (the Newton decrement ``g^T A^-1 g``: the distance to the minimum is
below ``sqrt(dchi2)`` standard deviations), or an accepted, nearly undamped step lowered chi2
by less than ``dchi2``, or by less than the fraction ``ftol``; the decrement test is never finer
than the rounding of chi2 (``4 eps chi2``). A stamp whose damping blows up (no step lowers chi2)
counts as converged if its decrement is below 1 (within ~1 sigma), else not.

Uncertainties: the covariance ``(J^T W J)^-1`` at the solution, propagated to the catalogue
parameters (``q``, ``pa_deg`` through the Jacobian of the ``e1, e2`` map; ``pa_deg_err`` capped
at 90 deg); ``FitConfig.scale_errors`` multiplies them by ``sqrt(chi2nu)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from galnet.conventions import SPECS
from galnet.errors import GalnetValueError
from galnet.profiles.render import DEFAULT_CONFIG, RenderConfig, psf_transform, render_grouped, window_sizes
from galnet.profiles.sersic import enclosed_fraction

__all__ = ["FitConfig", "fit_arrays", "moments_init", "auto_mask", "fisher_errors", "fit",
           "fit_files", "FIT_KEYS"]

#: The fitted Sérsic parameters, in the conventions of :mod:`galnet.conventions`.
FIT_KEYS: tuple[str, ...] = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")

_NPAR = 7  # x, y, ln F, ln re, ln n, e1, e2


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
        (the network's errors are calibrated on its training set: wide). [default: 2]
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
    prior_scale: float = 2.0
    render: RenderConfig = field(default=DEFAULT_CONFIG)
    jac_render: RenderConfig | None = field(default=RenderConfig(window=2, windows=(4, 9)))


DEFAULT_FIT = FitConfig()


# ----------------------------------------------------------------------------------------------
# Parameters <-> internal coordinates
# ----------------------------------------------------------------------------------------------
def _e_of_q(q):
    return (1.0 - q) / (1.0 + q)


def _to_internal(p: dict[str, np.ndarray]) -> np.ndarray:
    e = _e_of_q(np.asarray(p["q"], float))
    t = 2 * np.deg2rad(np.asarray(p["pa_deg"], float))
    return np.stack([p["x"], p["y"], np.log(p["flux"]), np.log(p["re_pix"]), np.log(p["n"]),
                     e * np.cos(t), e * np.sin(t)], axis=1).astype(float)


def _geometry(u: torch.Tensor):
    """(x, y, flux, re, n, q, pa in radians) tensors from internal parameters (B, >=7)."""
    e = torch.sqrt(u[:, 5] ** 2 + u[:, 6] ** 2)
    q = (1.0 - e) / (1.0 + e)
    pa = 0.5 * torch.atan2(u[:, 6], u[:, 5])
    return u[:, 0], u[:, 1], torch.exp(u[:, 2]), torch.exp(u[:, 3]), torch.exp(u[:, 4]), q, pa


def _bounds(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Lower/upper bounds of u[:5] and the largest |e| (from q >= SPECS['q'].lower)."""
    H, W = shape
    re_hi = min(SPECS["re_pix"].upper, 2.0 * max(H, W))
    lo = np.array([-0.5, -0.5, -np.inf, math.log(SPECS["re_pix"].lower),
                   math.log(SPECS["n"].lower)])
    hi = np.array([W - 0.5, H - 0.5, np.inf, math.log(re_hi), math.log(SPECS["n"].upper)])
    return lo, hi, float(_e_of_q(SPECS["q"].lower))


def _project(u: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, emax: float) -> torch.Tensor:
    u = u.clone()
    u[:, :5] = torch.maximum(torch.minimum(u[:, :5], hi), lo)
    e = torch.sqrt(u[:, 5] ** 2 + u[:, 6] ** 2)
    s = torch.where(e > emax, emax / e.clamp_min(1e-30), torch.ones_like(e))
    u[:, 5] = u[:, 5] * s
    u[:, 6] = u[:, 6] * s
    return u


# ----------------------------------------------------------------------------------------------
# The model and its Jacobian
# ----------------------------------------------------------------------------------------------
class _Problem:
    """Data, weights, PSF transforms and render settings of one batch of stamps."""

    def __init__(self, data, wt, psf, shape, sky: bool, cfg: FitConfig, prior=None):
        self.data, self.wt = data, wt  # (B, H, W); wt = 1/sigma, 0 where masked
        self.prior = prior  # None or (mu, ivar): (B, npar) float64 Gaussian prior on u
        self.psf_shape = tuple(psf.shape[-2:])
        self.fft = psf_transform(psf, shape)
        self.shared = psf.shape[0] == 1
        self.shape, self.sky, self.cfg = shape, sky, cfg
        self.npar = _NPAR + int(sky)
        steps = cfg.fd_step if data.dtype == torch.float64 else cfg.fd_step32
        self.h = steps

    def psf_fft(self, idx: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return self.fft
        pf = self.fft[idx]
        pf._galnet_lw = self.fft._galnet_lw  # type: ignore[attr-defined]
        return pf

    def windows(self, u: torch.Tensor, rc: RenderConfig | None = None) -> np.ndarray:
        x, y, f, re, n, q, pa = (t.detach().cpu().numpy() for t in _geometry(u))
        return window_sizes(re, n, q, rc or self.cfg.render)

    def model(self, u: torch.Tensor, idx: torch.Tensor, win: np.ndarray,
              rc: RenderConfig | None = None) -> torch.Tensor:
        """Sérsic x PSF (no sky) for the stamps ``idx``, parameters ``u`` (len(idx), npar)."""
        return render_grouped(*_geometry(u), self.psf_fft(idx), self.psf_shape, self.shape, win,
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


def _solve(A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Batched solve of small SPD systems, falling back to least squares when singular."""
    L, info = torch.linalg.cholesky_ex(A)
    x = torch.cholesky_solve(g[..., None], L)[..., 0]
    bad = info != 0
    if bool(bad.any()):
        x[bad] = torch.linalg.lstsq(A[bad], g[bad][..., None]).solution[..., 0]
    return x


def _lm(prob: _Problem, u0: torch.Tensor, lo, hi, emax: float):
    """Levenberg-Marquardt for all stamps of ``prob``; returns u, A = J^T W J, chi2, niter,
    converged (tensors on the problem's device)."""
    cfg = prob.cfg
    B, k = u0.shape
    dev, dt = u0.device, u0.dtype
    u = _project(u0, lo, hi, emax)
    allidx = torch.arange(B, device=dev)
    win = prob.windows(u)
    r, m = prob.residual(u, allidx, win)
    chi2 = (r.double() ** 2).sum(1)
    J = prob.jacobian(u, allidx, win, m)
    A = torch.bmm(J.transpose(1, 2), J).double()
    g = torch.bmm(J.transpose(1, 2), r[..., None])[..., 0].double()
    mu, ivar = prob.prior if prob.prior is not None else (None, None)

    def penalty(uu: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The prior's chi2 contribution (0 without a prior)."""
        if mu is None:
            return torch.zeros(len(idx), dtype=torch.float64, device=dev)
        return (ivar[idx] * (uu.double() - mu[idx]) ** 2).sum(1)

    lam = torch.full((B,), cfg.lam0, dtype=torch.float64, device=dev)
    niter = torch.zeros(B, dtype=torch.long, device=dev)
    converged = torch.zeros(B, dtype=torch.bool, device=dev)
    active = torch.ones(B, dtype=torch.bool, device=dev)
    lo5, hi5 = lo.double(), hi.double()
    eps = 4 * torch.finfo(dt).eps
    for _ in range(cfg.max_iter):
        ia = torch.nonzero(active)[:, 0]
        if len(ia) == 0:
            break
        Aa, ga, ua = A[ia], g[ia], u[ia].double()
        if mu is not None:  # MAP: the Gaussian prior adds to the normal equations
            Aa = Aa + torch.diag_embed(ivar[ia])
            ga = ga + ivar[ia] * (mu[ia] - ua)
        # freeze parameters held on a bound by the gradient (the descent direction is +g)
        free = torch.ones_like(ga, dtype=torch.bool)
        held = ((ua[:, :5] <= lo5) & (ga[:, :5] < 0)) | ((ua[:, :5] >= hi5) & (ga[:, :5] > 0))
        free[:, :5] = ~held
        e = torch.sqrt(ua[:, 5] ** 2 + ua[:, 6] ** 2)
        out = (e >= emax * (1 - 1e-9)) & ((ua[:, 5] * ga[:, 5] + ua[:, 6] * ga[:, 6]) > 0)
        free[:, 5] &= ~out
        free[:, 6] &= ~out
        ff = free[:, :, None] & free[:, None, :]
        eye = torch.eye(k, dtype=torch.float64, device=dev).expand_as(Aa)
        Af = torch.where(ff, Aa, eye * 1.0)
        gf = torch.where(free, ga, torch.zeros_like(ga))
        d = torch.diagonal(Af, dim1=1, dim2=2).clamp_min(1e-30)
        # convergence test: Newton decrement of the Gauss-Newton step
        dec = (gf * _solve(Af, gf)).sum(1)
        # chi2 itself is only known to ~eps * chi2 (float32: 0.05 at chi2 = 4e5): no finer test
        tol = torch.clamp(eps * chi2[ia], min=cfg.dchi2)
        done = dec < tol
        converged[ia[done]] = True
        active[ia[done]] = False
        keep = ~done
        ia, Af, gf, d, ua = ia[keep], Af[keep], gf[keep], d[keep], ua[keep]
        if len(ia) == 0:
            break
        step = _solve(Af + lam[ia, None, None] * torch.diag_embed(d), gf)
        ut = _project((ua + step).to(dt), lo, hi, emax)
        ia_np = ia.cpu().numpy()
        rt, mt = prob.residual(ut, ia, win[ia_np])
        c2 = (rt.double() ** 2).sum(1)
        obj_old, obj_new = chi2[ia] + penalty(u[ia], ia), c2 + penalty(ut, ia)
        acc = torch.isfinite(c2) & (obj_new < obj_old)
        drop = obj_old - obj_new
        small = acc & ((drop < cfg.ftol * chi2[ia]) | ((drop < cfg.dchi2) & (lam[ia] < 1.0)))
        niter[ia] += 1
        lam[ia] = torch.where(acc, (lam[ia] / 3).clamp_min(1e-9), lam[ia] * 8)
        converged[ia[small]] = True
        stuck = lam[ia] > 1e10  # no step lowers chi2 any more: converged if already close
        converged[ia[stuck & (dec[keep] < 1.0)]] = True
        active[ia[small | stuck]] = False
        if bool(acc.any()):
            ja = ia[acc]
            ja_np = ja.cpu().numpy()
            u[ja] = ut[acc]
            chi2[ja] = c2[acc]
            rj, mj = rt[acc], mt[acc]
            wj = prob.windows(u[ja])
            moved = wj != win[ja_np]
            if moved.any():  # a window changed: render those again (the model jumps slightly)
                win[ja_np] = wj
                mv = torch.as_tensor(np.flatnonzero(moved), device=dev)
                r2, m2 = prob.residual(u[ja[mv]], ja[mv], wj[moved])
                rj, mj = rj.clone(), mj.clone()
                rj[mv], mj[mv] = r2, m2
                chi2[ja[mv]] = (r2.double() ** 2).sum(1)
            Jj = prob.jacobian(u[ja], ja, wj, mj)
            A[ja] = torch.bmm(Jj.transpose(1, 2), Jj).double()
            g[ja] = torch.bmm(Jj.transpose(1, 2), rj[..., None])[..., 0].double()
    if mu is not None:
        A = A + torch.diag_embed(ivar)  # the posterior's curvature: errors include the prior
    return u, A, chi2, niter, converged


# ----------------------------------------------------------------------------------------------
# Public array API
# ----------------------------------------------------------------------------------------------
def _as_array3(a, name: str, dtype=np.float64) -> np.ndarray:
    a = np.asarray(getattr(a, "value", a), dtype=dtype)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise GalnetValueError(f"{name} must be (H, W) or (N, H, W), got shape {a.shape}", name)
    return a


def _check_psfs(psfs, N: int) -> np.ndarray:
    p = _as_array3(psfs, "psf")
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


def _weights(images, sigma, mask, gain) -> tuple[np.ndarray, np.ndarray]:
    """(data with masked/non-finite pixels zeroed, 1/sigma with 0 at ignored pixels)."""
    from galnet.nn.model import sky_rms

    N = images.shape[0]
    ignore = ~np.isfinite(images)
    if mask is not None:
        m = _as_array3(mask, "mask", dtype=bool) if np.asarray(mask).dtype == bool else \
            _as_array3(mask, "mask") != 0
        if m.shape != images.shape:
            raise GalnetValueError(f"mask must have the shape of the images {images.shape}, got "
                                   f"{m.shape}", "mask")
        ignore |= m
    data = np.where(ignore, 0.0, images)
    if sigma is not None:
        s = _as_array3(sigma, "sigma")
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
    if N and not (wt > 0).any(axis=(1, 2)).all():
        i = int(np.flatnonzero(~(wt > 0).any(axis=(1, 2)))[0])
        raise GalnetValueError(f"stamp {i} has no usable pixel (all masked or sigma <= 0)", "mask")
    return data, wt


def fit_arrays(
    images,
    psfs,
    *,
    sigma=None,
    mask=None,
    init: dict | None = None,
    sky: str = "none",
    gain: float | None = None,
    prior: dict | None = None,
    device: str | torch.device | None = "cpu",
    config: FitConfig = DEFAULT_FIT,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Fit one PSF-convolved Sérsic (plus an optional flat sky) to each stamp.

    Parameters
    ----------
    images : (N, H, W) or (H, W) stamps, image units (sky-subtracted unless ``sky="flat"``);
        any size, e.g. one large image at native resolution.
    psfs : (h, w) or (N, h, w) effective PSFs, odd sizes (normalised here).
    sigma : 1-sigma noise map like ``images`` [default: the stamp's sky rms, plus the source's
        Poisson noise ``max(D, 0) / gain`` when ``gain`` (e-/image unit) is given].
    mask : bool/int like ``images``, nonzero = pixel ignored. Non-finite pixels are ignored too.
    init : initial parameters (``x, y, flux, re_pix, n, q, pa_deg`` arrays of length N, stamp
        pixels) [default: :func:`moments_init`].
    sky : ``"none"`` or ``"flat"`` (fit a constant background too).
    prior : optional Gaussian prior (a MAP fit): ``re_pix, n, q`` and their ``_err`` arrays,
        e.g. the network's predictions; it acts on ``ln re``, ``ln n`` and ``(e1, e2)`` with
        widths ``FitConfig.prior_scale`` x the given errors. ``chi2nu`` stays that of the data;
        the errors become the posterior's.
    device : torch device.   config : :class:`FitConfig`.

    Returns
    -------
    dict of (N,) arrays: ``x, y, flux, re_pix, n, q, pa_deg`` and their ``_err``, ``sky``,
    ``sky_err``, ``chi2nu`` (over unmasked pixels, dof = N_pix - N_par), ``snr`` (the model's
    optimal S/N), ``niter``, ``converged`` (bool), ``bound`` (bool: a parameter on its bound).
    """
    from tqdm.auto import tqdm

    if sky not in ("none", "flat"):
        raise GalnetValueError(f"sky must be 'none' or 'flat', got {sky!r}", "sky", sky)
    images = _as_array3(images, "images")
    N, H, W = images.shape
    psfs = _check_psfs(psfs, N)
    data, wt = _weights(images, sigma, mask, gain)
    if init is None:
        init = moments_init(data, psfs, mask=wt == 0, sigma=np.where(wt > 0, 1 / np.maximum(
            wt, 1e-300), np.inf))
    init = {k: np.broadcast_to(np.asarray(getattr(init[k], "value", init[k]), float), (N,))
            for k in FIT_KEYS}
    _check_init(init)
    dev = torch.device("cuda" if device in (None, "auto") and torch.cuda.is_available()
                       else ("cpu" if device in (None, "auto") else device))
    dt = {"float64": torch.float64, "float32": torch.float32}[config.dtype]
    lo_np, hi_np, emax = _bounds((H, W))
    lo = torch.as_tensor(lo_np, dtype=dt, device=dev)
    hi = torch.as_tensor(hi_np, dtype=dt, device=dev)
    u0_all = _to_internal(init)
    u0_all[:, :5] = np.clip(u0_all[:, :5], lo_np, hi_np)
    fitsky = sky == "flat"
    npar = _NPAR + int(fitsky)
    out = _empty_result(N)
    for s in tqdm(range(0, N, config.batch), disable=not progress, desc="fit",
                  unit_scale=config.batch):
        e = min(N, s + config.batch)
        tt = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=dev)  # noqa: E731
        ps = psfs if psfs.shape[0] == 1 else psfs[s:e]
        pr = None if prior is None else _prior_arrays(prior, slice(s, e), npar, dev)
        prob = _Problem(tt(data[s:e]), tt(wt[s:e]), tt(ps), (H, W), fitsky, config, pr)
        u0 = u0_all[s:e]
        if fitsky:
            u0 = np.c_[u0, np.zeros(e - s)]
        u, A, chi2, niter, conv = _lm(prob, tt(u0), lo, hi, emax)
        nfree = (wt[s:e] > 0).sum(axis=(1, 2))
        _collect(out, slice(s, e), u, A, chi2, niter, conv, nfree, npar, lo, hi, emax, prob,
                 config)
    return out


def _prior_arrays(prior: dict, sl: slice, npar: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, 1/sigma^2) of a Gaussian prior in internal coordinates for the stamps ``sl``."""
    def col(k):
        return np.asarray(getattr(prior[k], "value", prior[k]), float)[sl]

    scale = DEFAULT_FIT.prior_scale if "scale" not in prior else float(prior["scale"])
    re, n, q = col("re_pix"), col("n"), np.clip(col("q"), 1e-3, 1.0)
    B = len(re)
    mu = np.zeros((B, npar))
    ivar = np.zeros((B, npar))
    mu[:, 3], mu[:, 4] = np.log(re), np.log(n)
    e = _e_of_q(q)
    t = 2 * np.deg2rad(col("pa_deg")) if "pa_deg" in prior else np.zeros(B)
    mu[:, 5], mu[:, 6] = e * np.cos(t), e * np.sin(t)
    s_re = scale * col("re_pix_err") / re
    s_n = scale * col("n_err") / n
    s_e = scale * 2 * col("q_err") / (1 + q) ** 2
    for j, sg in ((3, s_re), (4, s_n), (5, s_e), (6, s_e)):
        ok = np.isfinite(sg) & (sg > 0)
        ivar[:, j] = np.where(ok, 1.0 / np.where(ok, sg, 1.0) ** 2, 0.0)
        mu[:, j] = np.where(np.isfinite(mu[:, j]), mu[:, j], 0.0)
    return (torch.as_tensor(mu, dtype=torch.float64, device=dev),
            torch.as_tensor(ivar, dtype=torch.float64, device=dev))


def _empty_result(N: int) -> dict[str, np.ndarray]:
    """The result arrays of :func:`fit_arrays` for N stamps, before any fit (NaN, 0, False)."""
    out = {k: np.full(N, np.nan) for k in (*FIT_KEYS, *(f"{k}_err" for k in FIT_KEYS), "sky",
                                            "sky_err", "chi2nu", "snr")}
    out.update(niter=np.zeros(N, np.int64), converged=np.zeros(N, bool), bound=np.zeros(N, bool))
    return out


def _check_init(init: dict[str, np.ndarray]) -> None:
    for k in FIT_KEYS:
        v = init[k]
        if not np.isfinite(v).all():
            raise GalnetValueError(f"initial {k} is not finite (first at index "
                                   f"{int(np.flatnonzero(~np.isfinite(v))[0])})", k)
    for k in ("flux", "re_pix", "n", "q"):
        if not (init[k] > 0).all():
            raise GalnetValueError(f"initial {k} must be > 0", k)


def _collect(out, sl, u, A, chi2, niter, conv, nfree, npar, lo, hi, emax, prob, cfg) -> None:
    """Catalogue values and covariance errors of one batch into ``out``."""
    x, y, f, re, n, q, pa = (t.double() for t in _geometry(u))
    ud = u.double()
    cov = torch.linalg.pinv(A)
    var = torch.diagonal(cov, dim1=1, dim2=2).clamp_min(0)
    # q, pa from (e1, e2): gradients of the map
    e1, e2 = ud[:, 5], ud[:, 6]
    e = torch.sqrt(e1**2 + e2**2).clamp_min(1e-12)
    dq_de = -2.0 / (1.0 + e) ** 2
    Gq = torch.stack([dq_de * e1 / e, dq_de * e2 / e], 1)
    Gp = torch.stack([-0.5 * e2 / e**2, 0.5 * e1 / e**2], 1) * (180.0 / math.pi)
    Ce = cov[:, 5:7, 5:7]
    q_var = (Gq[:, :, None] * Ce * Gq[:, None, :]).sum((1, 2))
    pa_var = (Gp[:, :, None] * Ce * Gp[:, None, :]).sum((1, 2))
    dof = np.maximum(nfree - npar, 1)
    chi2nu = chi2.cpu().numpy() / dof
    scale = np.sqrt(chi2nu) if cfg.scale_errors else 1.0
    vals = {"x": (x, var[:, 0].sqrt()), "y": (y, var[:, 1].sqrt()),
            "flux": (f, f * var[:, 2].sqrt()), "re_pix": (re, re * var[:, 3].sqrt()),
            "n": (n, n * var[:, 4].sqrt()), "q": (q, q_var.sqrt()),
            "pa_deg": (torch.rad2deg(pa) % 180.0, pa_var.sqrt().clamp_max(90.0))}
    for k, (v, err) in vals.items():
        out[k][sl] = v.cpu().numpy()
        out[f"{k}_err"][sl] = err.cpu().numpy() * scale
    if prob.sky:
        out["sky"][sl] = ud[:, 7].cpu().numpy()
        out["sky_err"][sl] = var[:, 7].sqrt().cpu().numpy() * scale
    else:
        out["sky"][sl] = 0.0
        out["sky_err"][sl] = 0.0
    out["chi2nu"][sl] = chi2nu
    idx = torch.arange(len(u), device=u.device)
    m = prob.model(u, idx, prob.windows(u))
    out["snr"][sl] = torch.sqrt(((m * prob.wt) ** 2).sum((1, 2)).double()).cpu().numpy()
    out["niter"][sl] = niter.cpu().numpy()
    out["converged"][sl] = conv.cpu().numpy()
    tol = 1e-6 if u.dtype == torch.float64 else 1e-5
    at = ((ud[:, :5] <= lo.double() + tol) | (ud[:, :5] >= hi.double() - tol)).any(1)
    at |= torch.sqrt(e1**2 + e2**2) >= emax * (1 - tol)
    out["bound"][sl] = at.cpu().numpy()


def fisher_errors(params: dict, psfs, sigma, shape: tuple[int, int], *, mask=None,
                  config: FitConfig = DEFAULT_FIT) -> dict[str, np.ndarray]:
    """Cramér-Rao bounds: the ``_err`` that :func:`fit_arrays` reports, evaluated at ``params``
    (the truth) for noise ``sigma`` (N, H, W) -- the smallest standard deviations an unbiased
    estimator can reach. Returns ``{name: (N,) sigma}`` for ``FIT_KEYS``."""
    sig = _as_array3(sigma, "sigma")
    N = sig.shape[0]
    psfs = _check_psfs(psfs, N)
    p = {k: np.broadcast_to(np.asarray(params[k], float), (N,)) for k in FIT_KEYS}
    _, wt = _weights(np.zeros((N, *shape)), sig, mask, None)
    dt = {"float64": torch.float64, "float32": torch.float32}[config.dtype]
    lo_np, hi_np, emax = _bounds(shape)
    out = _empty_result(N)
    for s in range(0, N, config.batch):
        e = min(N, s + config.batch)
        tt = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)  # noqa: E731
        ps = psfs if psfs.shape[0] == 1 else psfs[s:e]
        prob = _Problem(tt(np.zeros((e - s, *shape))), tt(wt[s:e]), tt(ps), shape, False, config)
        u = tt(_to_internal({k: v[s:e] for k, v in p.items()}))
        idx = torch.arange(e - s)
        win = prob.windows(u)
        _, m = prob.residual(u, idx, win)
        J = prob.jacobian(u, idx, win, m)
        A = torch.bmm(J.transpose(1, 2), J).double()
        zeros = torch.zeros(e - s, dtype=torch.long)
        _collect(out, slice(s, e), u, A, torch.zeros(e - s, dtype=torch.float64), zeros,
                 zeros.bool(), np.ones(e - s), _NPAR, torch.as_tensor(lo_np, dtype=dt),
                 torch.as_tensor(hi_np, dtype=dt), emax, prob, config)
    return {k: out[f"{k}_err"] for k in FIT_KEYS}


# ----------------------------------------------------------------------------------------------
# Initial guesses and masks from the image
# ----------------------------------------------------------------------------------------------
def _segments(image: np.ndarray, sigma: np.ndarray, ignore: np.ndarray, nsigma: float,
              npixels: int, deblend: bool):
    """photutils segmentation of one stamp: (label array or None, the 3x3-box-smoothed stamp)."""
    from photutils.segmentation import deblend_sources, detect_sources
    from scipy import ndimage

    sm = ndimage.uniform_filter(np.where(ignore, 0.0, image), 3)
    noise = np.where(ignore, np.inf, sigma) / 3.0  # rms of a 3x3 mean of white noise
    seg = detect_sources(sm, nsigma * noise, npixels, mask=ignore)
    if seg is None:
        return None, sm
    if deblend and seg.n_labels >= 1:
        H, W = image.shape
        lab = _central_label(seg.data, sm, (W - 1) / 2, (H - 1) / 2)
        if lab:
            try:
                with warnings.catch_warnings():  # "deblending mode changed to linear": benign
                    warnings.simplefilter("ignore")
                    seg = deblend_sources(sm, seg, npixels, labels=[lab], progress_bar=False)
            except ValueError:
                pass
    return seg.data, sm


def _central_label(labels: np.ndarray, sm: np.ndarray, x: float, y: float) -> int:
    """The segment at (x, y), else the one with the brightest pixel within 3 px of it."""
    H, W = labels.shape
    ix, iy = int(round(min(max(x, 0), W - 1))), int(round(min(max(y, 0), H - 1)))
    if labels[iy, ix]:
        return int(labels[iy, ix])
    y0, y1, x0, x1 = max(iy - 3, 0), min(iy + 4, H), max(ix - 3, 0), min(ix + 4, W)
    box = np.where(labels[y0:y1, x0:x1] > 0, sm[y0:y1, x0:x1], -np.inf)
    if not np.isfinite(box).any():
        return 0
    j = np.unravel_index(np.argmax(box), box.shape)
    return int(labels[y0 + j[0], x0 + j[1]])


def auto_mask(images, sigma, mask=None, *, centre=None, nsigma: float = 1.5, npixels: int = 5,
              grow: int = 2) -> np.ndarray:
    """Mask neighbours: photutils detection (``nsigma`` x the noise of a 3x3-smoothed stamp,
    ``npixels`` connected) and deblending of the central source; every segment but the target's
    (the one at ``centre``, default the stamp centre) is masked, grown by ``grow`` pixels.
    Returns the union with ``mask`` (bool, True = ignored)."""
    from scipy import ndimage

    images = _as_array3(images, "images")
    N, H, W = images.shape
    sig = np.broadcast_to(_as_array3(sigma, "sigma"), images.shape)
    ign = np.zeros(images.shape, bool) if mask is None else np.broadcast_to(
        _as_array3(mask, "mask") != 0, images.shape)
    ign = ign | ~np.isfinite(images)
    out = ign.copy()
    cx = np.full(N, (W - 1) / 2) if centre is None else np.broadcast_to(centre[0], (N,))
    cy = np.full(N, (H - 1) / 2) if centre is None else np.broadcast_to(centre[1], (N,))
    st = ndimage.generate_binary_structure(2, 2)
    for i in range(N):
        lab, sm = _segments(images[i], sig[i], ign[i], nsigma, npixels, True)
        if lab is None:
            continue
        t = _central_label(lab, sm, cx[i], cy[i])
        other = (lab > 0) & (lab != t)
        if other.any():
            other = ndimage.binary_dilation(other, st, iterations=grow) & (lab != t)
            out[i] |= other
    return out


# Sérsic concentration r80/r20 as a function of n (circular, no PSF): to invert for an initial n
_N_GRID = np.geomspace(0.3, 8.0, 60)


def _concentration_table() -> np.ndarray:
    from scipy import optimize

    c = []
    for n in _N_GRID:
        r = [optimize.brentq(lambda t, f=f, n=n: float(enclosed_fraction(t, n)) - f, 1e-8, 1e4)
             for f in (0.2, 0.8)]
        c.append(r[1] / r[0])
    return np.array(c)


_C_TABLE: np.ndarray | None = None


def moments_init(images, psfs, *, mask=None, sigma=None, nsigma: float = 1.5) -> dict:
    """Initial guesses from image moments, as a careful user would make them.

    The central source is segmented (photutils, :func:`auto_mask`'s rule); its flux-weighted
    centroid gives ``x, y``; its second moments minus the PSF's give ``q`` and ``pa_deg`` (q = 0.8
    when the corrected size is below 20% of the PSF's: unresolved); the circular radius enclosing
    half its flux, the PSF's removed in quadrature (at least 0.3 px), divided by ``sqrt(q)``,
    gives ``re_pix``; the concentration ``r80/r20`` of a pure Sérsic gives ``n`` (clipped to
    [0.5, 6]); the flux is the segment's sum divided by the Sérsic fraction expected inside it
    (at most 1.5x).
    """
    global _C_TABLE
    if _C_TABLE is None:
        _C_TABLE = _concentration_table()
    images = _as_array3(images, "images")
    N, H, W = images.shape
    psfs = _check_psfs(psfs, N)
    ign = np.zeros(images.shape, bool) if mask is None else np.broadcast_to(
        _as_array3(mask, "mask") != 0, images.shape)
    ign = ign | ~np.isfinite(images)
    if sigma is None:
        from galnet.nn.model import sky_rms

        rms = sky_rms(torch.as_tensor(np.where(ign, np.nan, images)), nan=True).numpy()
        sig = np.broadcast_to(np.where(np.isfinite(rms) & (rms > 0), rms, 1.0)[:, None, None],
                              images.shape)
    else:
        sig = np.broadcast_to(_as_array3(sigma, "sigma"), images.shape)
    # PSF: second moments and circular half-light radius
    ph, pw = psfs.shape[1:]
    py, px = np.mgrid[:ph, :pw]
    pdx, pdy = px - (pw - 1) / 2, py - (ph - 1) / 2
    pxx = (psfs * pdx**2).sum((1, 2))
    pyy = (psfs * pdy**2).sum((1, 2))
    pxy = (psfs * pdx * pdy).sum((1, 2))
    pr = np.hypot(pdx, pdy).ravel()
    po = np.argsort(pr)
    p50 = np.array([np.interp(0.5, np.cumsum(p.ravel()[po]) / p.sum(), pr[po]) for p in psfs])
    yy, xx = np.mgrid[:H, :W].astype(float)
    res = {k: np.empty(N) for k in FIT_KEYS}
    for i in range(N):
        j = min(i, len(psfs) - 1)
        img = np.where(ign[i], 0.0, images[i])
        lab, sm = _segments(img, sig[i], ign[i], nsigma, 5, True)
        near = ~ign[i] & (np.hypot(xx - (W - 1) / 2, yy - (H - 1) / 2) < 5)
        if lab is None:
            sel = near
        else:
            t = _central_label(lab, sm, (W - 1) / 2, (H - 1) / 2)
            sel = lab == t if t else near
        w = np.where(sel, np.maximum(img, 0.0), 0.0)
        tot = w.sum()
        if not tot > 0:
            w, tot = np.where(sel, 1.0, 0.0), max(float(sel.sum()), 1.0)
        x = (w * xx).sum() / tot
        y = (w * yy).sum() / tot
        dx, dy = xx - x, yy - y
        # shape from the PSF-corrected second moments; round when the source is unresolved
        mxx = (w * dx * dx).sum() / tot - pxx[j]
        myy = (w * dy * dy).sum() / tot - pyy[j]
        mxy = (w * dx * dy).sum() / tot - pxy[j]
        tr, det = mxx + myy, mxx * myy - mxy * mxy
        if tr > 0.2 * (pxx[j] + pyy[j]) and det > 0:
            l1 = tr / 2 + math.sqrt(max(tr * tr / 4 - det, 0.0))
            q = float(np.clip(math.sqrt(max(tr - l1, 0.0) / l1), 0.1, 1.0))
            pa = (math.degrees(0.5 * math.atan2(2 * mxy, mxx - myy)) - 90.0) % 180.0
        else:
            q, pa = 0.8, 0.0
        # sizes from the circular curve of growth of the segment, the PSF's removed in quadrature
        r = np.hypot(dx, dy)[w > 0]
        fl = w[w > 0]
        o = np.argsort(r)
        cum = np.cumsum(fl[o]) / fl.sum()
        r20, r50, r80 = (float(np.interp(f, cum, r[o])) for f in (0.2, 0.5, 0.8))
        r50_gal = math.sqrt(max(r50**2 - p50[j] ** 2, 0.3**2))
        re = r50_gal / math.sqrt(q)  # circularised -> semi-major
        n = float(np.clip(np.interp(r80 / max(r20, 1e-3), _C_TABLE, _N_GRID), 0.5, 6.0))
        inside = float(enclosed_fraction(max(r.max(), 1.0) / r50_gal, n)) if r.size else 1.0
        res["x"][i], res["y"][i], res["q"][i], res["pa_deg"][i] = x, y, q, pa
        res["re_pix"][i], res["n"][i] = re, n
        res["flux"][i] = max(fl.sum(), 1e-3 * sig[i].mean()) / min(max(inside, 1 / 1.5), 1.0)
    return res


# ----------------------------------------------------------------------------------------------
# Stamps in, catalogue out (``galnet fit``, ``galnet predict --refine``)
# ----------------------------------------------------------------------------------------------
def _init_from_catalog(cat, stamps) -> dict[str, np.ndarray]:
    """Initial parameters for ``stamps`` from a catalogue in input pixels (matched by ``id``
    when the catalogue has every id of the stamps, else row by row)."""
    from galnet.io.stamps import read_catalog

    t = read_catalog(cat) if not hasattr(cat, "colnames") else cat
    name = cat if isinstance(cat, str) else "init catalogue"

    def col(k):
        v = t[k]
        return np.asarray(getattr(v, "value", v), dtype=float)

    need = [k for k in ("x", "y", "re_pix", "n", "q", "pa_deg") if k not in t.colnames]
    if "flux" not in t.colnames and "mag" not in t.colnames:
        need.append("flux (or mag)")
    if need:
        raise GalnetValueError(f"{name}: missing columns {', '.join(need)}", "init")
    ids = np.asarray(stamps.ids)
    if "id" in t.colnames and set(ids.tolist()) <= set(np.asarray(t["id"]).tolist()):
        where = {v: i for i, v in enumerate(np.asarray(t["id"]).tolist())}
        rows = np.array([where[v] for v in ids.tolist()])
    elif len(t) == len(ids):
        rows = np.arange(len(ids))
    else:
        raise GalnetValueError(f"{name}: {len(t)} rows and no matching id column for "
                               f"{len(ids)} stamps", "init")
    k = np.asarray(stamps.rebin, float)
    flux = (col("flux") if "flux" in t.colnames
            else 10 ** (-0.4 * (col("mag") - float(stamps.zeropoint))))[rows]
    return {"x": (col("x")[rows] - stamps.x0 - (k - 1) / 2) / k,
            "y": (col("y")[rows] - stamps.y0 - (k - 1) / 2) / k,
            "flux": flux, "re_pix": col("re_pix")[rows] / k, "n": col("n")[rows],
            "q": col("q")[rows], "pa_deg": col("pa_deg")[rows]}


def _native_size(images) -> int:
    """Odd side of the square stamp that holds the largest input image whole."""
    import contextlib

    from galnet.io.stamps import _main_input

    with contextlib.ExitStack() as stack:
        cube, _ = _main_input(images, "images", stack)
        return int(max(cube.shape[1:])) | 1


def _first_guess(stamps, init, **kw):
    """Initial parameters of ``stamps`` as a catalogue in input pixels (``init`` nn/moments)."""
    from galnet.nn.predict import catalog_table

    start = _start(stamps, init, kw.get("model"), kw.get("device", "cpu"))[0]
    res = {**{f"{k}_err": np.full(len(stamps), np.nan) for k in FIT_KEYS}, **start,
           "chi2nu": np.full(len(stamps), np.nan), "snr": np.full(len(stamps), np.nan)}
    return catalog_table(stamps, res, np.asarray(stamps.flags), "init")


def _start(stamps, init, model, device) -> tuple[dict[str, np.ndarray], str]:
    """Initial parameters (stamp pixels) and a name for them."""
    from galnet.nn.predict import predict_arrays

    if isinstance(init, str) and init == "nn":
        from galnet.nn.model import GaLNet, load_model

        if not isinstance(model, GaLNet):
            model = load_model(model, device=device)
        p = predict_arrays(stamps.images, stamps.psfs, sigma=stamps.sigma, mask=stamps.mask,
                           model=model, device=device, chi2=False)
        keys = (*FIT_KEYS, *(f"{k}_err" for k in FIT_KEYS))
        return {k: p[k] for k in keys}, f"nn ({model.config.info.get('name', 'galnet')})"
    if isinstance(init, str) and init == "moments":
        return moments_init(stamps.images, stamps.psfs, mask=stamps.mask,
                            sigma=stamps.sigma), "moments"
    return _init_from_catalog(init, stamps), "catalogue"


def fit(stamps, *, init="nn", sky: str = "none", auto_mask_neighbours: bool = True,
        gain: float | None = None, model=None, device="cpu", config: FitConfig = DEFAULT_FIT,
        nn_prior: bool = False, progress: bool = False):
    """The ``galnet fit`` catalogue (QTable with units) of a :class:`galnet.io.stamps.StampBatch`.

    ``init``: ``"nn"`` (GaLNet, the default), ``"moments"`` (:func:`moments_init`), or a
    catalogue (path or table, input pixels). Neighbours are masked with :func:`auto_mask` around
    the initial position unless ``auto_mask_neighbours=False``. ``gain`` (e-/image unit) adds the
    source's Poisson noise to the weights when the stamps have no sigma map. Columns: those of
    ``galnet predict`` (``chi2nu``, ``snr`` of the fitted model), then ``niter``, ``converged``
    and, with ``sky="flat"``, ``sky``, ``sky_err``; flags ``FIT_NOT_CONVERGED``, ``BOUND_HIT``.
    ``nn_prior`` (with ``init="nn"``): a MAP fit, the network's ``re_pix, n, q, pa_deg`` and
    errors as a Gaussian prior (``fit_arrays(prior=...)``).
    """
    from galnet.flags import Flag
    from galnet.nn.predict import LOW_SNR_LIMIT, catalog_table

    has_map = any(k in stamps.meta for k in ("sigma", "ivar"))
    sigma = stamps.sigma if (has_map or gain is None) else None
    start, name = _start(stamps, init, model, device)
    if nn_prior and not name.startswith("nn"):
        raise GalnetValueError("the network prior needs init='nn'", "nn_prior")
    mask = stamps.mask
    if auto_mask_neighbours:
        mask = auto_mask(stamps.images, stamps.sigma, stamps.mask,
                         centre=(start["x"], start["y"]))
    usable = (~mask).any(axis=(1, 2))
    res = _empty_result(len(stamps))
    if usable.any():
        sel = np.flatnonzero(usable)
        psfs = stamps.psfs if len(stamps.psfs) == 1 else stamps.psfs[sel]
        prior = ({k: np.asarray(v)[sel] for k, v in start.items()} if nn_prior else None)
        r = fit_arrays(stamps.images[sel], psfs, sigma=None if sigma is None else sigma[sel],
                       mask=mask[sel], init={k: np.asarray(v)[sel] for k, v in start.items()
                                             if k in FIT_KEYS},
                       sky=sky, gain=gain, prior=prior, device=device, config=config,
                       progress=progress)
        for k, v in r.items():
            res[k][sel] = v
    flags = np.asarray(stamps.flags, dtype=np.int64).copy()
    flags |= np.where(~res["converged"], int(Flag.FIT_NOT_CONVERGED), 0)
    flags |= np.where(res["bound"], int(Flag.BOUND_HIT), 0)
    flags |= np.where(res["snr"] < LOW_SNR_LIMIT, int(Flag.LOW_SNR), 0)
    t = catalog_table(stamps, res, flags, name)
    t["niter"] = res["niter"]
    t["converged"] = res["converged"]
    if sky == "flat":
        t["sky"] = res["sky"]
        t["sky_err"] = res["sky_err"]
    t.meta["fit"] = {"init": name, "sky": sky, "nn_prior": bool(nn_prior),
                     "auto_mask": bool(auto_mask_neighbours),
                     "scale_errors": bool(config.scale_errors), "dtype": config.dtype}
    return t


def fit_files(out, *, images=None, psf=None, sigma=None, ivar=None, mask=None, frame=None,
              positions=None, psf_positions=None, pixel_scale: float | None = None,
              zeropoint: float | None = None, preset: str = "hsc-r", init="nn",
              sky: str = "none", auto_mask_neighbours: bool = True, gain: float | None = None,
              model=None, device: str | None = "cpu", chunk: int = 1024,
              config: FitConfig = DEFAULT_FIT, native: bool = False, nn_prior: bool = False,
              progress: bool = True):
    """``galnet fit`` (and ``galnet predict --refine``): the inputs of ``galnet predict`` ->
    catalogue ``out`` (.ecsv / .fits / .parquet, written atomically), ``chunk`` stamps at a
    time. See :func:`fit` for ``init``, ``sky``, ``auto_mask_neighbours``, ``gain``.
    ``native=True`` (``images`` only) fits each input image whole, at its own pixels (no
    cropping, no rebinning; e.g. a galaxy far bigger than 61x61), started from ``init`` computed
    on the usual stamps. ``nn_prior``: see :func:`fit`. Returns the catalogue (QTable)."""
    from astropy.table import vstack
    from tqdm.auto import tqdm

    from galnet.nn.predict import open_inputs
    from galnet.io.stamps import catalog_format, read_catalog, write_catalog

    catalog_format(out)
    if sky not in ("none", "flat"):
        raise GalnetValueError(f"sky must be 'none' or 'flat', got {sky!r}", "sky", sky)
    if not (isinstance(init, str) and init in ("nn", "moments")) and not hasattr(init, "colnames"):
        init = read_catalog(init)  # a catalogue path: read once, fail early
    inputs = dict(images=images, psf=psf, sigma=sigma, ivar=ivar, mask=mask, frame=frame,
                  positions=positions, psf_positions=psf_positions, pixel_scale=pixel_scale,
                  zeropoint=zeropoint, chunk=chunk)
    if native:
        if frame is not None:
            raise GalnetValueError("native fits take images, not a frame", "frame")
        if not hasattr(init, "colnames"):  # first guesses on the usual stamps
            kw = dict(auto_mask_neighbours=False, model=model, device=device)
            init = vstack([_first_guess(b, init, **kw) for b in open_inputs(preset=preset,
                                                                            **inputs)])
        from galnet.presets import get_preset

        p = get_preset(preset)
        preset = replace(p, stamp=_native_size(images))
        inputs["rebin"] = 1
    batches = open_inputs(preset=preset, **inputs)
    if isinstance(init, str) and init == "nn":
        from galnet.nn.model import GaLNet, load_model

        if not isinstance(model, GaLNet):
            model = load_model(model, device=device)
        model = model.folded()
    tables = []
    bar = tqdm(disable=not progress, desc="fit", unit=" stamps")
    try:
        for b in batches:
            tables.append(fit(b, init=init, sky=sky, auto_mask_neighbours=auto_mask_neighbours,
                              gain=gain, model=model, device=device, config=config,
                              nn_prior=nn_prior))
            bar.update(len(b))
    finally:
        bar.close()
    t = vstack(tables, metadata_conflicts="silent") if len(tables) > 1 else tables[0]
    write_catalog(t, out)
    return t
