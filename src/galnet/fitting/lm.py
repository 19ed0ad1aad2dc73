"""Batched Levenberg-Marquardt fit of PSF-convolved Sérsic profiles (the GALFIT job), CPU or GPU.

:func:`fit_arrays` fits stamps of any size (N, H, W) -- 61x61 cutouts or one large image at
native resolution -- with a Levenberg-Marquardt loop run for all stamps at once on the renderer of
:mod:`galnet.profiles.render` (the exact model: Sérsic x effective PSF, sampled at pixel centres).
The internal coordinates, bounds and the Jacobian are in :mod:`galnet.fitting.problem`.

The problem
-----------
Minimise ``chi2 = sum_pixels w (D - M(theta) - sky)^2`` over unmasked pixels, ``w = 1/sigma^2``,
in the internal coordinates ``u = (x, y, ln flux, ln re, ln n, e1, e2[, sky])``. Bounds:
:func:`galnet.fitting.problem.fit_bounds` (``x, y`` within the stamp; ``re_pix``, ``n``, ``q``
within :data:`galnet.params.SERSIC`, ``re_pix`` at most twice the stamp size), intersected with
per-stamp bounds (``lo``, ``hi``: e.g. a box around the network's centre); a step that leaves
them is projected back; a parameter that ends on a bound is reported (``bound``, ``n_bound``,
``re_upper``). Data, sigma and neighbours are divided by each stamp's median sigma first, so
nothing depends on the image units. With a ``reference`` (the network's parameters) and
``guard``, a fit that ends with a higher chi2 than the reference is replaced by it, and so is a
fit that ran to a bound (centre, flux, re, n) or beyond a quarter of the stamp in re: such a
value is not a measurement (its flags ``BOUND_HIT`` / ``N_AT_BOUND`` / ``RE_UNCONSTRAINED`` stay
with ``REVERTED`` to say why).

The loop (per stamp, batched)
-----------------------------
Step ``(J^T W J + lambda diag(J^T W J)) du = J^T W r``; a step is kept if chi2 falls (lambda / 3),
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

import numpy as np
import torch

from galnet.errors import GalnetValueError
from galnet.fitting.init import moments_init
from galnet.fitting.problem import (
    DEFAULT_FIT,
    FIT_KEYS,
    NPAR,
    FitConfig,
    Problem,
    as_array3,
    check_psfs,
    e_of_q,
    geometry,
    internal_bounds,
    noise_weights,
    project,
    stamp_bounds,
    stamp_scale,
    subtract_neighbours,
    to_internal,
)
from galnet.params import SERSIC
from galnet.runner import chunks, resolve_device, run_chunks

__all__ = ["fit_arrays", "fisher_errors", "empty_result"]

_PA_PERIOD = SERSIC["pa_deg"].cyclic  # 180 deg


def _solve(A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Batched solve of small SPD systems, falling back to least squares when singular."""
    L, info = torch.linalg.cholesky_ex(A)
    x = torch.cholesky_solve(g[..., None], L)[..., 0]
    bad = info != 0
    if bool(bad.any()):
        x[bad] = torch.linalg.lstsq(A[bad], g[bad][..., None]).solution[..., 0]
    return x


def _lm(prob: Problem, u0: torch.Tensor, lo, hi, emax: float):
    """Levenberg-Marquardt for all stamps of ``prob`` within the per-stamp bounds ``lo``, ``hi``
    (B, 5) on u[:5]; returns u, A = J^T W J, chi2, niter, converged (tensors on the problem's
    device)."""
    cfg = prob.cfg
    B, k = u0.shape
    dev, dt = u0.device, u0.dtype
    u = project(u0, lo, hi, emax)
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
        held = (((ua[:, :5] <= lo5[ia]) & (ga[:, :5] < 0))
                | ((ua[:, :5] >= hi5[ia]) & (ga[:, :5] > 0)))
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
        ut = project((ua + step).to(dt), lo[ia], hi[ia], emax)
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
    neighbours=None,
    lo=None,
    hi=None,
    reference: dict | None = None,
    guard: bool = False,
    device: str | torch.device | None = "cpu",
    config: FitConfig = DEFAULT_FIT,
    progress: bool = False,
    models: bool = False,
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
        pixels) [default: :func:`galnet.fitting.init.moments_init`].
    sky : ``"none"`` or ``"flat"`` (fit a constant background too).
    prior : optional Gaussian prior (a MAP fit): ``re_pix, n, q`` and their ``_err`` arrays,
        e.g. the network's predictions, optionally ``pa_deg`` and ``x, y`` with ``x_err,
        y_err``; it acts on ``ln re``, ``ln n``, ``(e1, e2)`` (and ``x, y``) with widths
        ``FitConfig.prior_scale`` x the given errors. ``chi2nu`` stays that of the data; the
        errors become the posterior's.
    neighbours : (N, H, W) model of the *other* sources in each stamp (image units), subtracted
        from ``images`` before anything else (non-finite values count as 0).
    lo, hi : per-stamp bounds, (N, 5) or (5,) arrays on ``(x, y, flux, re_pix, n)`` (stamp
        pixels, image units), intersected with :func:`galnet.fitting.problem.fit_bounds`; NaN
        = no extra bound (e.g. a box around a known centre).
    reference : parameters (``FIT_KEYS`` arrays, stamp pixels) of a reference solution, e.g.
        the network's: ``chi2nu_ref`` is its chi2nu on the same pixels, weights, renderer and
        neighbours (with ``sky="flat"``, at its best flat sky).
    guard : with ``reference``: accept or revert -- where the fit's chi2 exceeds the
        reference's by more than 1e-6 of it, or where the fit ran to a bound (``bound``,
        ``n_bound``, ``re_upper``, or re beyond a quarter of the stamp's smaller side), the
        reference is reported instead (``reverted``; the bound flags stay), with errors from
        the Fisher matrix there (plus the prior's).
    device : torch device (:func:`galnet.runner.resolve_device`: "cpu", "cuda", "auto", ...).
    config : :class:`galnet.fitting.problem.FitConfig`.
    progress : a progress bar (on a terminal only).
    models : also return ``model``, the fitted models (N, H, W): Sérsic x PSF plus the sky.

    Data, sigma and neighbours are divided internally by each stamp's median sigma (flux and
    sky scaled back), so the fit and its errors do not depend on the image units.

    Returns
    -------
    dict of (N,) arrays: ``x, y, flux, re_pix, n, q, pa_deg`` and their ``_err``, ``sky``,
    ``sky_err``, ``chi2nu`` (over unmasked pixels, dof = N_pix - N_par), ``snr`` (the model's
    optimal S/N), ``niter``, ``converged`` (bool), ``bound`` (bool: ``x, y``, ``flux``, ``q``
    or the lower ``re_pix`` on a bound), ``n_bound`` (``n`` within 1e-3 of a bound, relative),
    ``re_upper`` (``re_pix`` within 1e-3 of its upper bound), ``chi2nu_ref`` (NaN without
    ``reference``), ``reverted`` (bool).
    """
    if sky not in ("none", "flat"):
        raise GalnetValueError(f"sky must be 'none' or 'flat', got {sky!r}", "sky", sky)
    images = as_array3(images, "images")
    N, H, W = images.shape
    if neighbours is not None:
        images = subtract_neighbours(images, neighbours)[0]
    psfs = check_psfs(psfs, N)
    data, wt = noise_weights(images, sigma, mask, gain)
    if init is None:
        init = moments_init(data, psfs, mask=wt == 0, sigma=np.where(wt > 0, 1 / np.maximum(
            wt, 1e-300), np.inf))
    init = {k: np.broadcast_to(np.asarray(getattr(init[k], "value", init[k]), float), (N,))
            for k in FIT_KEYS}
    _check_init(init)
    scale = stamp_scale(wt)  # image units -> internal units ~ 1 sigma
    data, wt = data / scale[:, None, None], wt * scale[:, None, None]
    init = {**init, "flux": init["flux"] / scale}
    dev = resolve_device(device)
    dt = {"float64": torch.float64, "float32": torch.float32}[config.dtype]
    lo_np, hi_np, emax = stamp_bounds((H, W), N, lo, hi, scale)
    lo_t = torch.as_tensor(lo_np, dtype=dt, device=dev)
    hi_t = torch.as_tensor(hi_np, dtype=dt, device=dev)
    u0_all = to_internal(init)
    u0_all[:, :5] = np.clip(u0_all[:, :5], lo_np, hi_np)
    ref_all = None
    if reference is not None:
        ref = {k: np.broadcast_to(np.asarray(getattr(reference[k], "value", reference[k]),
                                             float), (N,)) for k in FIT_KEYS}
        with np.errstate(all="ignore"):
            ref_all = to_internal({**ref, "flux": ref["flux"] / scale})
    fitsky = sky == "flat"
    npar = NPAR + int(fitsky)
    out = empty_result(N)
    if models:
        out["model"] = np.full((N, H, W), np.nan)

    def tt(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=dev)

    def one(chunk: slice) -> None:
        s, e = chunk.start, chunk.stop
        ps = psfs if psfs.shape[0] == 1 else psfs[s:e]
        pr = None if prior is None else _prior_arrays(prior, slice(s, e), npar, dev,
                                                      config.prior_scale)
        if fitsky and config.sky_prior:  # internal units: the stamp's median noise
            if pr is None:
                z = torch.zeros((e - s, npar), dtype=torch.float64, device=dev)
                pr = (z, z.clone())
            pr[0][:, 7] = 0.0
            pr[1][:, 7] = 1.0 / float(config.sky_prior) ** 2
        prob = Problem(tt(data[s:e]), tt(wt[s:e]), tt(ps), (H, W), fitsky, config, pr)
        u0 = u0_all[s:e]
        if fitsky:
            u0 = np.c_[u0, np.zeros(e - s)]
        lo_c, hi_c = lo_t[s:e], hi_t[s:e]
        u, A, chi2, niter, conv = _lm(prob, tt(u0), lo_c, hi_c, emax)
        nfree = (wt[s:e] > 0).sum(axis=(1, 2))
        dof = np.maximum(nfree - npar, 1)
        if ref_all is not None:
            chi2_ref, rev = _guard(prob, tt(ref_all[s:e]), u, A, chi2, guard)
            out["chi2nu_ref"][s:e] = chi2_ref.cpu().numpy() / dof
            out["reverted"][s:e] = rev.cpu().numpy()
        _collect(out, slice(s, e), u, A, chi2, niter, conv, nfree, npar, lo_c, hi_c, emax, prob,
                 config)
        if ref_all is not None and guard:  # a fit that ran to a bound is not a measurement
            sl = slice(s, e)
            stuck = {k: out[k][sl].copy() for k in ("bound", "n_bound", "re_upper")}
            runaway = out["re_pix"][sl] > min(H, W) / 4
            force = stuck["bound"] | stuck["n_bound"] | stuck["re_upper"] | runaway
            if force.any():
                _, rev2 = _guard(prob, tt(ref_all[s:e]), u, A, chi2, guard,
                                 force=torch.as_tensor(force, device=dev))
                rev2 = rev2.cpu().numpy()
                if rev2.any():
                    out["reverted"][sl] |= rev2
                    _collect(out, sl, u, A, chi2, niter, conv, nfree, npar, lo_c, hi_c, emax,
                             prob, config)
                    for k, v in stuck.items():  # say why it was reverted
                        out[k][sl] |= v & rev2

    run_chunks(one, N, config.batch, progress=progress, desc="fit", option="batch")
    for k in ("flux", "flux_err", "sky", "sky_err"):
        out[k] *= scale
    if models:
        out["model"] *= scale[:, None, None]
    return out


def _guard(prob: Problem, ur: torch.Tensor, u, A, chi2, guard: bool, force=None):
    """chi2 of the reference ``ur`` (B, 7; its best flat sky appended when the problem fits a
    sky) on the problem's pixels, and (guard) the stamps whose fit ended worse, or that are
    in ``force`` (B, bool: e.g. the fit ran to a bound): there ``u``, ``A`` (Fisher matrix at
    the reference, plus the prior's) and ``chi2`` are replaced in place. Reference rows that
    are not finite are never reverted to."""
    B = len(ur)
    dev = ur.device
    idx = torch.arange(B, device=dev)
    ok = torch.isfinite(ur).all(1)
    ur = torch.where(ok[:, None], ur, u[:, :NPAR])  # placeholders: never used
    win = prob.windows(ur)
    m = prob.model(ur, idx, win)
    res = prob.data - m
    if prob.sky:
        w2 = prob.wt**2
        sky = (w2 * res).sum((1, 2)) / w2.sum((1, 2)).clamp_min(1e-30)
        ur = torch.cat([ur, sky[:, None].to(ur.dtype)], 1)
        res = res - sky[:, None, None]
    c2 = ((res * prob.wt).double() ** 2).sum((1, 2))
    c2 = torch.where(ok, c2, torch.full_like(c2, float("nan")))
    rev = torch.zeros(B, dtype=torch.bool, device=dev)
    if guard:
        worse = ~torch.isfinite(chi2) | (chi2 > c2 * (1 + 1e-6))
        rev = ok & torch.isfinite(c2) & (worse if force is None else force)
    if bool(rev.any()):
        j = torch.nonzero(rev)[:, 0]
        jn = j.cpu().numpy()
        J = prob.jacobian(ur[j], j, win[jn], m[j])
        Aj = torch.bmm(J.transpose(1, 2), J).double()
        if prob.prior is not None:
            Aj = Aj + torch.diag_embed(prob.prior[1][j])
        u[j], A[j], chi2[j] = ur[j].to(u.dtype), Aj, c2[j]
    return c2, rev


def _prior_arrays(prior: dict, sl: slice, npar: int, dev, prior_scale: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, 1/sigma^2) of a Gaussian prior in internal coordinates for the stamps ``sl``; the
    prior's ``q`` is clipped into the fitter's q range (``SERSIC['q'].fit``)."""
    def col(k):
        return np.asarray(getattr(prior[k], "value", prior[k]), float)[sl]

    scale = prior_scale if "scale" not in prior else float(prior["scale"])
    re, n, q = col("re_pix"), col("n"), np.clip(col("q"), *SERSIC["q"].fit)
    B = len(re)
    mu = np.zeros((B, npar))
    ivar = np.zeros((B, npar))
    mu[:, 3], mu[:, 4] = np.log(re), np.log(n)
    e = e_of_q(q)
    t = 2 * np.deg2rad(col("pa_deg")) if "pa_deg" in prior else np.zeros(B)
    mu[:, 5], mu[:, 6] = e * np.cos(t), e * np.sin(t)
    s_re = scale * col("re_pix_err") / re
    s_n = scale * col("n_err") / n
    s_e = scale * 2 * col("q_err") / (1 + q) ** 2
    pairs = [(3, s_re), (4, s_n), (5, s_e), (6, s_e)]
    for j, k in ((0, "x"), (1, "y")):  # the centre, when given with its errors
        if k in prior and f"{k}_err" in prior:
            mu[:, j] = col(k)
            pairs.append((j, scale * col(f"{k}_err")))
    for j, sg in pairs:
        ok = np.isfinite(sg) & (sg > 0)
        ivar[:, j] = np.where(ok, 1.0 / np.where(ok, sg, 1.0) ** 2, 0.0)
        mu[:, j] = np.where(np.isfinite(mu[:, j]), mu[:, j], 0.0)
    return (torch.as_tensor(mu, dtype=torch.float64, device=dev),
            torch.as_tensor(ivar, dtype=torch.float64, device=dev))


def empty_result(N: int) -> dict[str, np.ndarray]:
    """The result arrays of :func:`fit_arrays` for N stamps, before any fit (NaN, 0, False)."""
    out = {k: np.full(N, np.nan) for k in (*FIT_KEYS, *(f"{k}_err" for k in FIT_KEYS), "sky",
                                            "sky_err", "chi2nu", "snr", "chi2nu_ref")}
    out.update(niter=np.zeros(N, np.int64), converged=np.zeros(N, bool), bound=np.zeros(N, bool),
               n_bound=np.zeros(N, bool), re_upper=np.zeros(N, bool),
               reverted=np.zeros(N, bool))
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
    x, y, f, re, n, q, pa = (t.double() for t in geometry(u))
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
            "pa_deg": (torch.rad2deg(pa) % _PA_PERIOD,
                       pa_var.sqrt().clamp_max(_PA_PERIOD / 2))}
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
    if "model" in out:  # the fitted models, sky included
        out["model"][sl] = m.double().cpu().numpy() + out["sky"][sl, None, None]
    out["niter"][sl] = niter.cpu().numpy()
    out["converged"][sl] = conv.cpu().numpy()
    tol = 1e-6 if u.dtype == torch.float64 else 1e-5
    lod, hid = lo.double(), hi.double()
    at = (ud[:, :5] <= lod + tol) | (ud[:, :5] >= hid - tol)
    near = 1e-3  # n, re: within 1e-3 of the bound (relative; ln n, ln re are internal)
    out["n_bound"][sl] = ((ud[:, 4] <= lod[..., 4] + near) | (ud[:, 4] >= hid[..., 4] - near)
                          ).cpu().numpy()
    out["re_upper"][sl] = (ud[:, 3] >= hid[..., 3] - near).cpu().numpy()
    bound = at[:, :3].any(1) | (ud[:, 3] <= lod[..., 3] + tol)  # x, y, flux, re's lower
    bound |= torch.sqrt(e1**2 + e2**2) >= emax * (1 - tol)
    out["bound"][sl] = bound.cpu().numpy()


def fisher_errors(params: dict, psfs, sigma, shape: tuple[int, int], *, mask=None,
                  config: FitConfig = DEFAULT_FIT) -> dict[str, np.ndarray]:
    """Cramér-Rao bounds: the ``_err`` that :func:`fit_arrays` reports, evaluated at ``params``
    (the truth) for noise ``sigma`` (N, H, W) -- the smallest standard deviations an unbiased
    estimator can reach. Returns ``{name: (N,) sigma}`` for ``FIT_KEYS``."""
    sig = as_array3(sigma, "sigma")
    N = sig.shape[0]
    psfs = check_psfs(psfs, N)
    p = {k: np.broadcast_to(np.asarray(params[k], float), (N,)) for k in FIT_KEYS}
    _, wt = noise_weights(np.zeros((N, *shape)), sig, mask, None)
    scale = stamp_scale(wt)  # as fit_arrays: internal units ~ 1 sigma
    wt = wt * scale[:, None, None]
    p["flux"] = p["flux"] / scale
    dt = {"float64": torch.float64, "float32": torch.float32}[config.dtype]
    lo_np, hi_np, emax = internal_bounds(shape)
    out = empty_result(N)
    for c in chunks(N, config.batch, "batch"):
        s, e = c.start, c.stop
        tt = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)  # noqa: E731
        ps = psfs if psfs.shape[0] == 1 else psfs[s:e]
        prob = Problem(tt(np.zeros((e - s, *shape))), tt(wt[s:e]), tt(ps), shape, False, config)
        u = tt(to_internal({k: v[s:e] for k, v in p.items()}))
        idx = torch.arange(e - s)
        win = prob.windows(u)
        _, m = prob.residual(u, idx, win)
        J = prob.jacobian(u, idx, win, m)
        A = torch.bmm(J.transpose(1, 2), J).double()
        zeros = torch.zeros(e - s, dtype=torch.long)
        _collect(out, slice(s, e), u, A, torch.zeros(e - s, dtype=torch.float64), zeros,
                 zeros.bool(), np.ones(e - s), NPAR, torch.as_tensor(lo_np, dtype=dt),
                 torch.as_tensor(hi_np, dtype=dt), emax, prob, config)
    out["flux_err"] *= scale
    return {k: out[f"{k}_err"] for k in FIT_KEYS}
