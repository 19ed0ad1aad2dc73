"""Point sources: a PSF model competes with the Sérsic for every object (issue 13, item 4).

The PSF model of a source at ``(x, y)`` (0-based stamp pixels, centres at integers) is the
effective PSF shifted exactly as :mod:`galnet.profiles.render` shifts a profile: with ``P_j`` the
PSF samples (offsets ``j`` from its central pixel) and ``k`` GalSim's Quintic kernel,

    M(c) = F sum_j P_j k(c_x - x - j_x) k(c_y - y - j_y)

which is what the renderer gives for a Sérsic with ``re -> 0`` (``T = S * K -> F K(c - x)``).
The kernel is separable, so a batch of shifted PSFs is two small matrix products per stamp.

- :func:`fit_psf`: position (Gauss-Newton on ``x, y``) and flux (linear, closed form) of the PSF
  model, weights ``wt = 1/sigma``, optional neighbours' model subtracted.
- :func:`psf_fwhm`: FWHM of PSF images from the area above half maximum (Quintic-interpolated
  on a 1/8 px grid): ``FWHM = 2 sqrt(area / pi)``.
- :func:`classify`: point source or not, unresolved or not, and the 95% upper limit on ``re``.
- :func:`point_source_test`: all of the above for a batch of Sérsic fits (what ``fit`` and the
  frame pipeline call); :func:`re_upper_profile`: the profile-likelihood upper limit on ``re``.

The decision rule and its calibration (``scripts/calibrate_pointsource.py``) are described in
docs/fit.md, "Point sources".
"""

from __future__ import annotations

import math

import numpy as np
import torch

from galnet.conventions import magnitudes
from galnet.errors import GalnetValueError
from galnet.fitting.problem import as_array3, check_psfs, subtract_neighbours
from galnet.profiles.quadrature import quintic
from galnet.profiles.render import render

__all__ = ["psf_model", "fit_psf", "psf_fwhm", "classify", "re_upper_profile",
           "upper_limit", "point_source_columns", "point_source_test", "POINT_RULE"]

#: The calibrated decision rule (docs/fit.md "Point sources"; scripts/calibrate_pointsource.py).
#: Point source: the Sérsic's radius is small next to the PSF, ``re_pix < re_max * FWHM``
#: (stars fitted with a PSF 5% too narrow reach 0.27 FWHM, galaxies with re >= FWHM/2 fitted
#: with one 5% too wide stay above 0.41 FWHM but for ~2%), or the PSF fits nearly as well,
#: ``chi2_psf - chi2_sersic < dchi2_max`` (the Sérsic has 4 more parameters: 9.49 is the 95%
#: point of chi2(4)). Unresolved: point sources, and sources with ``re_pix < re_unres * FWHM``
#: measured at less than ``z_unres`` sigma. Their 95% upper limit on ``re`` adds in quadrature
#: ``re_sys * FWHM``, what a PSF whose FWHM is off by 5% can hide.
POINT_RULE: dict[str, float] = {"re_max": 0.33, "dchi2_max": 9.49, "re_unres": 0.5,
                                "z_unres": 2.0, "re_sys": 0.3}

_DCHI2_UPPER = 2.71  # one-sided 95% upper limit: chi2 rises by 2.71 (x chi2nu) from its minimum


# ----------------------------------------------------------------------------------------------
# The shifted PSF
# ----------------------------------------------------------------------------------------------
def _kernel_matrix(n_out: int, pos: torch.Tensor, half: int, deriv: bool = False):
    """(B, n_out, 2 half + 1) matrix ``k(c - pos - j)`` (and its derivative in ``pos``).

    The Quintic has support ``|d| < 3``: only the 6 taps ``c - j - floor(pos) in [-2, 3]`` are
    non-zero; they are evaluated (B, 6) and scattered."""
    B = len(pos)
    ip = torch.floor(pos)
    t = torch.arange(-2, 4, dtype=pos.dtype, device=pos.device)
    d = t[None, :] - (pos - ip)[:, None]  # (B, 6): c - j - pos
    vals = quintic(d)
    j = torch.arange(-half, half + 1, device=pos.device)
    c = ip.long()[:, None, None] + t.long()[None, :, None] + j[None, None, :]  # (B, 6, 2h+1)
    ok = (c >= 0) & (c < n_out)
    b = torch.arange(B, device=pos.device)[:, None, None]
    nj = 2 * half + 1
    # one flat index per tap; taps off the stamp go to a clamped place with the value 0
    flat = ((b * n_out + c.clamp(0, n_out - 1)) * nj + (j + half)[None, None, :]).reshape(-1)

    def scatter(v):
        K = torch.zeros(B * n_out * nj, dtype=pos.dtype, device=pos.device)
        K.index_put_((flat,), (v[:, :, None] * ok).reshape(-1), accumulate=True)
        return K.view(B, n_out, nj)

    if not deriv:
        return scatter(vals), None
    h = 1e-4  # d k(c - pos - j) / d pos = -k': central difference on the 6 taps
    dv = -(quintic(d + h) - quintic(d - h)) / (2 * h)
    return scatter(vals), scatter(dv)


def _shifted(psf: torch.Tensor, x: torch.Tensor, y: torch.Tensor, shape, deriv: bool = False):
    """Unit-flux PSF models (B, H, W) at (x, y) and, with ``deriv``, d/dx and d/dy."""
    H, W = shape
    ph, pw = psf.shape[-2] // 2, psf.shape[-1] // 2
    Kx, dKx = _kernel_matrix(W, x, pw, deriv)
    Ky, dKy = _kernel_matrix(H, y, ph, deriv)
    P = psf.expand(len(x), -1, -1)
    PKx = torch.bmm(P, Kx.transpose(1, 2))  # (B, h, W)
    m = torch.bmm(Ky, PKx)
    if not deriv:
        return m, None, None
    return m, torch.bmm(Ky, torch.bmm(P, dKx.transpose(1, 2))), torch.bmm(dKy, PKx)


def psf_model(psfs, x, y, shape: tuple[int, int] = (61, 61)) -> np.ndarray:
    """Unit-flux PSF models ``(N, H, W)`` centred at ``(x, y)`` (0-based stamp pixels).

    ``psfs`` (h, w) or (N, h, w), odd sizes, normalised here; the shift is the renderer's
    (Quintic-interpolated effective PSF, sampled at pixel centres)."""
    x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
    N = max(len(x), len(y))
    p = torch.as_tensor(check_psfs(psfs, N))
    xt, yt = (torch.as_tensor(np.broadcast_to(v, (N,)).copy()) for v in (x, y))
    return _shifted(p, xt, yt, shape)[0].numpy()


# ----------------------------------------------------------------------------------------------
# The PSF fit
# ----------------------------------------------------------------------------------------------
def _linear_flux(d, w2, m):
    """Closed-form flux of model shape ``m`` in data ``d`` with weights ``w2 = 1/sigma^2``."""
    a = (w2 * m * m).sum((1, 2))
    f = (w2 * d * m).sum((1, 2)) / a.clamp_min(1e-300)
    return f, a


def _chi2(d, w2, m, f):
    return (w2 * (d - f[:, None, None] * m) ** 2).sum((1, 2))


def fit_psf(images, psfs, wt, *, x0, y0, neighbours=None, mask=None, n_iter: int = 6,
            max_shift: float = 2.0, batch: int = 512) -> dict[str, np.ndarray]:
    """Fit the PSF model (position and flux) to each stamp.

    Parameters
    ----------
    images : (N, H, W) stamps, image units (sky-subtracted).
    psfs : (h, w) or (N, h, w) effective PSFs, odd sizes (normalised here).
    wt : (N, H, W) weights ``1/sigma`` (0 = pixel ignored; non-finite -> 0).
    x0, y0 : (N,) starting position, 0-based stamp pixels (e.g. the Sérsic fit's).
    neighbours : optional (N, H, W) model of the other sources, subtracted from the data.
    mask : optional (N, H, W), nonzero = pixel ignored.
    n_iter : Gauss-Newton steps on (x, y) (each accepted only if chi2 falls). [6]
    max_shift : the position stays within this many pixels of ``(x0, y0)``. [2]
    batch : stamps per batch (bounds memory).

    Returns
    -------
    dict of (N,) arrays: ``x, y`` (stamp px) and ``x_err, y_err``, ``flux`` and ``flux_err``
    (image units; errors from the (x, y, flux) covariance), ``chi2`` (over the used pixels),
    ``npix`` (used pixels).
    """
    d = as_array3(images, "images")
    N, H, W = d.shape
    w = as_array3(wt, "wt")
    if w.shape != d.shape:
        raise GalnetValueError(f"wt must have the shape of the images {d.shape}, got {w.shape}",
                               "wt")
    w = np.where(np.isfinite(w) & np.isfinite(d), w, 0.0)
    if mask is not None:
        w = np.where(as_array3(mask, "mask") != 0, 0.0, w)
    if neighbours is not None:
        d = subtract_neighbours(d, neighbours)[0]
    d = np.where(w > 0, d, 0.0)
    p = check_psfs(psfs, N)
    xs0 = np.broadcast_to(np.asarray(x0, float), (N,))
    ys0 = np.broadcast_to(np.asarray(y0, float), (N,))
    out = {k: np.full(N, np.nan) for k in ("x", "y", "flux", "flux_err", "chi2", "x_err",
                                           "y_err")}
    out["npix"] = (w > 0).sum((1, 2))
    # the model lives within R px of the start: fit on that box, add the chi2 of the rest
    R = max(p.shape[1], p.shape[2]) // 2 + 3 + math.ceil(max_shift)
    for s in range(0, N, batch):
        e = min(s + batch, N)
        ps = torch.as_tensor(p if p.shape[0] == 1 else p[s:e])
        db, wb, xb, yb, rest = _crop(d[s:e], w[s:e], xs0[s:e], ys0[s:e], R)
        res = _fit_batch(torch.as_tensor(db), torch.as_tensor(wb) ** 2, ps,
                         torch.as_tensor(xb), torch.as_tensor(yb), n_iter, max_shift)
        res["x"] = res["x"] + torch.as_tensor(xs0[s:e] - xb)
        res["y"] = res["y"] + torch.as_tensor(ys0[s:e] - yb)
        res["chi2"] = res["chi2"] + torch.as_tensor(rest)
        for k, v in res.items():
            out[k][s:e] = v.numpy()
    return out


def _crop(d, w, x0, y0, R):
    """Boxes of side 2R+1 around the rounded start (the whole stamp when it is not larger):
    data, weights, start in box pixels, and the chi2 of the data outside the box (no model)."""
    B, H, W = d.shape
    if 2 * R + 1 >= min(H, W):
        return d, w, x0.copy(), y0.copy(), np.zeros(B)
    # the box's first column in padded pixels is the rounded start in stamp pixels
    ix = np.clip(np.round(x0).astype(int), 0, W - 1)
    iy = np.clip(np.round(y0).astype(int), 0, H - 1)
    pad = ((0, 0), (R, R), (R, R))
    dp, wp = np.pad(d, pad), np.pad(w, pad)
    k = np.arange(2 * R + 1)
    b = np.arange(B)[:, None, None]
    rows, cols = (iy[:, None] + k)[:, :, None], (ix[:, None] + k)[:, None, :]
    db, wb = dp[b, rows, cols], wp[b, rows, cols]
    rest = (w**2 * d**2).sum((1, 2)) - (wb**2 * db**2).sum((1, 2))
    off_x, off_y = ix - R, iy - R  # stamp pixel of the box's first column / row
    return db, wb, x0 - off_x, y0 - off_y, np.maximum(rest, 0.0)


def _fit_batch(d, w2, psf, x0, y0, n_iter, max_shift):
    shape = d.shape[1:]
    x, y = x0.clone(), y0.clone()
    m, mx, my = _shifted(psf, x, y, shape, deriv=True)
    f, _ = _linear_flux(d, w2, m)
    chi2 = _chi2(d, w2, m, f)
    for _ in range(n_iter):
        # Gauss-Newton on (flux, x, y): J = [m, f dm/dx, f dm/dy]
        J = torch.stack([m, f[:, None, None] * mx, f[:, None, None] * my], 1).flatten(2)
        r = (d - f[:, None, None] * m).flatten(1)
        wf = w2.flatten(1)
        A = torch.einsum("bip,bjp->bij", J * wf[:, None], J)
        g = torch.einsum("bip,bp->bi", J * wf[:, None], r)
        A = A + 1e-9 * torch.diag_embed(torch.diagonal(A, dim1=1, dim2=2)) + 1e-300
        step = torch.linalg.lstsq(A, g[..., None]).solution[..., 0]
        dx = step[:, 1].clamp(-0.5, 0.5).nan_to_num(0.0)
        dy = step[:, 2].clamp(-0.5, 0.5).nan_to_num(0.0)
        xn = torch.minimum(torch.maximum(x + dx, x0 - max_shift), x0 + max_shift)
        yn = torch.minimum(torch.maximum(y + dy, y0 - max_shift), y0 + max_shift)
        mn, mxn, myn = _shifted(psf, xn, yn, shape, deriv=True)
        fn, _ = _linear_flux(d, w2, mn)
        cn = _chi2(d, w2, mn, fn)
        ok = cn < chi2
        if not bool(ok.any()):
            break
        sel = ok[:, None, None]
        x, y, f, chi2 = (torch.where(ok, a, b) for a, b in ((xn, x), (yn, y), (fn, f), (cn, chi2)))
        m, mx, my = (torch.where(sel, a, b) for a, b in ((mn, m), (mxn, mx), (myn, my)))
    # covariance of (flux, x, y) at the solution
    J = torch.stack([m, f[:, None, None] * mx, f[:, None, None] * my], 1).flatten(2)
    A = torch.einsum("bip,bjp->bij", J * w2.flatten(1)[:, None], J)
    cov = torch.linalg.pinv(A)
    err = torch.diagonal(cov, dim1=1, dim2=2).clamp_min(0).sqrt()
    return {"x": x, "y": y, "flux": f, "flux_err": err[:, 0], "chi2": chi2, "x_err": err[:, 1],
            "y_err": err[:, 2]}


# ----------------------------------------------------------------------------------------------
# PSF size
# ----------------------------------------------------------------------------------------------
def psf_fwhm(psfs, *, oversample: int = 8) -> np.ndarray:
    """FWHM (pixels) of PSF images ``(h, w)`` or ``(N, h, w)``: ``2 sqrt(A / pi)`` with ``A`` the
    area above half the peak of the Quintic-interpolated PSF (sampled every 1/``oversample`` px
    within 8 px of the centre), i.e. the FWHM of a round PSF and the geometric mean of the two
    FWHMs of an elliptical one."""
    p = torch.as_tensor(check_psfs(psfs, 1 if np.ndim(psfs) == 2 else np.shape(psfs)[0]))
    h, w = p.shape[-2:]
    out = np.empty(p.shape[0])
    for i in range(p.shape[0]):
        iy, ix = np.unravel_index(int(torch.argmax(p[i])), (h, w))
        R = min(8.0, (min(h, w) - 1) / 2)
        s = torch.arange(-R, R + 1e-9, 1.0 / oversample, dtype=p.dtype)
        Ky = quintic(s[:, None] + iy - torch.arange(h, dtype=p.dtype)[None, :])
        Kx = quintic(s[:, None] + ix - torch.arange(w, dtype=p.dtype)[None, :])
        fine = Ky @ p[i] @ Kx.T
        area = float((fine >= 0.5 * fine.max()).sum()) / oversample**2
        out[i] = 2.0 * math.sqrt(area / math.pi)
    return out


# ----------------------------------------------------------------------------------------------
# The decision
# ----------------------------------------------------------------------------------------------
def _arr(d: dict, k: str, N: int | None = None) -> np.ndarray:
    v = np.asarray(getattr(d[k], "value", d[k]), float)
    return v if N is None else np.broadcast_to(v, (N,))


def classify(sersic: dict, psf: dict, *, nfree, psf_fwhm_pix, re_upper=None,
             rule: dict | None = None) -> dict[str, np.ndarray]:
    """Point source / unresolved decision for each object (stamp pixels).

    Parameters
    ----------
    sersic : the Sérsic fit (:func:`galnet.fitting.lm.fit_arrays` result): ``re_pix``,
        ``re_pix_err``, ``chi2nu`` (dof = ``nfree - 7``).
    psf : the PSF fit (:func:`fit_psf` result): ``chi2`` (and ``flux``: a point source needs a
        positive PSF flux).
    nfree : (N,) pixels used by the Sérsic fit (to turn its chi2nu back into chi2).
    psf_fwhm_pix : (N,) or scalar PSF FWHM, stamp pixels (:func:`psf_fwhm`).
    re_upper : optional (N,) statistical 95% upper limits on ``re`` (:func:`re_upper_profile`);
        default ``re_pix + 1.645 re_pix_err``; :func:`upper_limit` adds the PSF allowance.
    rule : :data:`POINT_RULE` by default.

    Returns
    -------
    dict: ``point``, ``unresolved`` (bool (N,)), ``re_upper`` ((N,) stamp px, NaN when resolved),
    ``dchi2`` (chi2_psf - chi2_sersic).
    """
    r = {**POINT_RULE, **(rule or {})}
    re = _arr(sersic, "re_pix")
    N = len(re)
    re_err = _arr(sersic, "re_pix_err", N)
    re_err = np.where(np.isfinite(re_err), re_err, np.inf)
    nfree = np.broadcast_to(np.asarray(nfree, float), (N,))
    chi2_s = _arr(sersic, "chi2nu", N) * np.maximum(nfree - 7, 1)
    dchi2 = _arr(psf, "chi2", N) - chi2_s
    fwhm = np.broadcast_to(np.asarray(psf_fwhm_pix, float), (N,))
    with np.errstate(invalid="ignore"):
        point = ((re < r["re_max"] * fwhm) | (dchi2 < r["dchi2_max"])) & np.isfinite(re)
        if "flux" in psf:  # no light, no star (a fit gone to zero flux fits a PSF "as well")
            point &= _arr(psf, "flux", N) > 0
        unresolved = point | ((re < r["re_unres"] * fwhm) & (re < r["z_unres"] * re_err))
    unresolved &= np.isfinite(re)
    stat = re + 1.645 * re_err if re_upper is None else np.broadcast_to(
        np.asarray(re_upper, float), (N,))
    up = upper_limit(stat, fwhm, r)
    return {"point": point, "unresolved": unresolved,
            "re_upper": np.where(unresolved, up, np.nan), "dchi2": dchi2}


def upper_limit(stat, psf_fwhm_pix, rule: dict | None = None) -> np.ndarray:
    """The reported 95% upper limit on ``re``: the statistical one ``stat`` and the PSF-mismatch
    allowance ``re_sys * FWHM`` in quadrature (stamp px)."""
    r = {**POINT_RULE, **(rule or {})}
    stat = np.asarray(stat, float)
    return np.hypot(stat, r["re_sys"] * np.asarray(psf_fwhm_pix, float))


def re_upper_profile(images, psfs, wt, sersic: dict, *, neighbours=None, mask=None,
                     re_max=None, n_grid: int = 8, n_fine: int = 6) -> np.ndarray:
    """One-sided 95% upper limits on ``re`` (stamp px) from the profile of chi2 in ``re``.

    ``re`` is stepped (geometric grid of ``n_grid``) from the fitted value up to ``re_max``
    (default 3x the PSF FWHM) with ``x, y, n, q, pa`` held at the fit's values and the flux
    refitted (linear); the step where chi2 has risen by ``2.71 max(1, chi2nu)`` above its minimum
    is then resolved on ``n_fine`` points and interpolated. ``re_max`` if chi2 never rises so."""
    d = as_array3(images, "images")
    N, H, W = d.shape
    w = as_array3(wt, "wt")
    w = np.where(np.isfinite(w), w, 0.0)
    if mask is not None:
        w = np.where(as_array3(mask, "mask") != 0, 0.0, w)
    if neighbours is not None:
        d = d - np.nan_to_num(as_array3(neighbours, "neighbours"))
    d = np.where(w > 0, d, 0.0)
    p = check_psfs(psfs, N)
    re_max = np.broadcast_to(np.asarray(3.0 * psf_fwhm(p) if re_max is None else re_max,
                                        float), (N,))
    re0 = np.minimum(np.clip(_arr(sersic, "re_pix", N), 0.01, None), 0.5 * re_max)
    nfree = (w > 0).sum((1, 2))
    chi2nu = np.nan_to_num(_arr(sersic, "chi2nu", N), nan=1.0)
    shape = {k: _arr(sersic, k, N) for k in ("x", "y", "n", "q", "pa_deg")}
    shape["q"] = np.clip(shape["q"], 0.05, 1.0)
    shape["n"] = np.clip(shape["n"], 0.3, 8.0)
    w2 = w**2
    dd = (w2 * d**2).sum((1, 2))

    def chi2_at(grid):  # (N, G) radii -> (N, G) chi2 with the flux refitted
        G = grid.shape[1]
        rep = {k: np.repeat(v, G) for k, v in shape.items()}
        rep.update(re_pix=grid.ravel(), flux=np.ones(N * G))
        pcube = np.repeat(p, G, 0) if p.shape[0] == N and N > 1 else p[0]
        m = render(rep, pcube, (H, W)).reshape(N, G, H, W)
        a = (w2[:, None] * m**2).sum((2, 3))
        b = (w2[:, None] * d[:, None] * m).sum((2, 3))
        return dd[:, None] - b**2 / np.maximum(a, 1e-300)

    t = np.linspace(0.0, 1.0, n_grid)
    grid = re0[:, None] * (re_max / re0)[:, None] ** t[None, :]
    chi2 = chi2_at(grid)
    cmin = np.minimum(chi2.min(1), chi2nu * np.maximum(nfree - 7, 1))
    thr = cmin + _DCHI2_UPPER * np.maximum(chi2nu, 1.0)
    out = re_max.copy()
    lo, hi = grid[:, 0].copy(), grid[:, 0].copy()
    found = np.zeros(N, bool)
    for i in range(N):
        k0 = int(np.argmin(chi2[i]))
        above = np.flatnonzero(chi2[i, k0:] > thr[i]) + k0
        if len(above):
            found[i] = True
            k = above[0]
            lo[i], hi[i] = grid[i, max(k - 1, 0)], grid[i, k]
    if not found.any():
        return out
    fine = lo[:, None] * (hi / lo)[:, None] ** np.linspace(0.0, 1.0, n_fine)[None, :]
    cf = chi2_at(fine)
    for i in np.flatnonzero(found):
        rise = cf[i] - thr[i]
        k = int(np.argmax(rise > 0))
        if rise[k] <= 0 or k == 0:
            out[i] = fine[i, k]
            continue
        f = rise[k - 1] / (rise[k - 1] - rise[k])
        out[i] = math.exp(math.log(fine[i, k - 1]) + f * math.log(fine[i, k] / fine[i, k - 1]))
    return out


# ----------------------------------------------------------------------------------------------
# Catalogue columns and the one helper the pipelines call
# ----------------------------------------------------------------------------------------------
def point_source_columns(psf: dict, zeropoint: float | None) -> tuple[np.ndarray, np.ndarray]:
    """``(psf_mag, psf_mag_err)`` (AB) of a :func:`fit_psf` result; NaN without a zeropoint or
    where the PSF flux is not positive."""
    f, fe = _arr(psf, "flux"), _arr(psf, "flux_err")
    if zeropoint is None:
        return np.full(len(f), np.nan), np.full(len(f), np.nan)
    return magnitudes(f, fe, float(zeropoint))


def point_source_test(images, psfs, wt, sersic_result: dict, *, neighbours=None, mask=None,
                      psf_fwhm_pix=None, zeropoint: float | None = None,
                      profile: bool = True) -> dict[str, np.ndarray]:
    """PSF fit, point-source decision and upper limits for a batch of Sérsic fits.

    Parameters
    ----------
    images, psfs, wt, neighbours, mask : as for :func:`fit_psf` (the same pixels and weights as
        the Sérsic fit; ``wt = 1/sigma``, 0 = ignored).
    sersic_result : the Sérsic fit in stamp pixels (``x, y, re_pix, re_pix_err, n, q, pa_deg,
        chi2nu``, optional ``sky``: subtracted), e.g. :func:`galnet.fitting.lm.fit_arrays`'
        result.
    psf_fwhm_pix : (N,) or scalar PSF FWHM in stamp px [default: :func:`psf_fwhm` of ``psfs``].
    zeropoint : magnitude zeropoint of ``psf_mag`` (NaN without one).
    profile : upper limits from :func:`re_upper_profile` (else ``re + 1.645 re_err``).

    Returns
    -------
    dict of (N,) arrays: ``psf_mag``, ``psf_mag_err``, ``psf_flux``, ``psf_flux_err``, ``point``
    (-> ``Flag.POINT_SOURCE``), ``unresolved`` (-> ``Flag.UNRESOLVED``), ``re_upper`` (stamp px,
    NaN when resolved; the caller reports it as ``re_pix``), ``chi2_psf``, ``dchi2``, and the
    PSF fit's position ``psf_x, psf_y``, ``psf_x_err, psf_y_err`` (stamp px).
    """
    d = as_array3(images, "images")
    N = d.shape[0]
    w = as_array3(wt, "wt")
    if mask is not None:
        w = np.where(as_array3(mask, "mask") != 0, 0.0, w)
    w = np.where(np.isfinite(w) & np.isfinite(d), w, 0.0)
    if "sky" in sersic_result:  # a flat sky fitted with the Sérsic is not part of the PSF model
        sky = np.nan_to_num(_arr(sersic_result, "sky", N))
        d = d - sky[:, None, None]
    x0, y0 = _arr(sersic_result, "x", N), _arr(sersic_result, "y", N)
    x0 = np.where(np.isfinite(x0), x0, (d.shape[2] - 1) / 2)
    y0 = np.where(np.isfinite(y0), y0, (d.shape[1] - 1) / 2)
    pf = fit_psf(d, psfs, w, x0=x0, y0=y0, neighbours=neighbours)
    fwhm = psf_fwhm(psfs) if psf_fwhm_pix is None else psf_fwhm_pix
    fwhm = np.broadcast_to(np.asarray(fwhm, float), (N,))
    nfree = (w > 0).sum((1, 2))
    cls = classify(sersic_result, pf, nfree=nfree, psf_fwhm_pix=fwhm)
    if profile and cls["unresolved"].any():
        i = np.flatnonzero(cls["unresolved"])
        sub = {k: _arr(sersic_result, k, N)[i] for k in
               ("x", "y", "re_pix", "n", "q", "pa_deg", "chi2nu")}
        ps = as_array3(psfs, "psfs")
        ps = ps[i] if ps.shape[0] == N and N > 1 else ps
        nb = None if neighbours is None else as_array3(neighbours, "neighbours")[i]
        ok = np.isfinite(sub["x"]) & np.isfinite(sub["re_pix"])
        up = np.full(len(i), np.nan)
        if ok.any():
            up[ok] = re_upper_profile(d[i][ok], ps[ok] if ps.shape[0] == len(i) and
                                      len(i) > 1 else ps, w[i][ok],
                                      {k: v[ok] for k, v in sub.items()},
                                      neighbours=None if nb is None else nb[ok],
                                      re_max=3.0 * fwhm[i][ok])
        cls["re_upper"][i] = np.where(np.isfinite(up), upper_limit(
            np.maximum(up, sub["re_pix"]), fwhm[i]), cls["re_upper"][i])
    mag, mag_err = point_source_columns(pf, zeropoint)
    return {"psf_mag": mag, "psf_mag_err": mag_err, "psf_flux": pf["flux"],
            "psf_flux_err": pf["flux_err"], "point": cls["point"],
            "unresolved": cls["unresolved"], "re_upper": cls["re_upper"],
            "chi2_psf": pf["chi2"], "dchi2": cls["dchi2"], "psf_x": pf["x"], "psf_y": pf["y"],
            "psf_x_err": pf["x_err"], "psf_y_err": pf["y_err"]}
