"""Fit one PSF-convolved Sérsic to a stamp with PyImfit (the reference fitter).

Needs the ``imfit`` extra (``pip install galnet[imfit]``): PyImfit is imported when
:func:`imfit_fit` is first called, so the rest of galnet works without it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np

from galnet.conventions import IMFIT_KEYS, from_imfit, imfit_model_dict, to_imfit
from galnet.errors import GalnetValueError, optional_import
from galnet.interop.imfit import (
    DEFAULT_LIMITS,
    IMFIT_SERSIC,
    ImfitLimits,
    apply_limits,
    errors_from_imfit,
)

__all__ = ["imfit_fit"]

_SOLVERS = ("LM", "NM", "DE")
_MODES = ("imfit", "sampled")
#: Finite-difference steps of the Jacobian: X0, Y0 (px), PA (deg), ell; then relative steps for
#: n, I_e, r_e. Larger steps (1e-3 px, 1e-2 deg) missed PyImfit's PA error by 8% at n = 4.
_JAC_STEP = (1e-4, 1e-4, 1e-4, 1e-5)
_JAC_REL = 1e-5


def _import_pyimfit():
    return optional_import("pyimfit", "imfit", "galnet.interop.imfit_fit")


def _as_plane(a, name: str, shape=None) -> np.ndarray:
    a = np.asarray(getattr(a, "value", a), dtype=np.float64)
    if shape is not None and a.ndim == 0:
        a = np.full(shape, float(a))
    if a.ndim != 2 or (shape is not None and a.shape != shape):
        want = "a 2-D array" if shape is None else f"shape {shape} (or a scalar)"
        raise GalnetValueError(f"imfit_fit: {name} must be {want}, got shape {a.shape}", name)
    return a


def imfit_fit(image, psf, *, init: Mapping, sigma=None, mask=None, solver: str = "LM",
              mode: str = "imfit", max_threads: int = 1, ftol: float = 1e-8,
              zeropoint: float | None = None, limits: ImfitLimits = DEFAULT_LIMITS,
              flux_err: bool = True) -> dict:
    """Fit one PSF-convolved Sérsic to a stamp with PyImfit, from an initial guess.

    Imfit's model (``mode="imfit"``) integrates the Sérsic over each pixel (sub-sampling near the
    centre) and convolves that image with the PSF image: galnet's ``render(..., mode="imfit")``
    reproduces it (to its exact b_n; docs/conventions.md). With an effective PSF this counts the
    pixel twice; ``mode="sampled"`` samples the profile at pixel centres instead (Imfit's
    ``subsampling=False``), approximate at a cusp.

    Parameters
    ----------
    image : (H, W) stamp, image units; non-finite pixels are masked.
    psf : (h, w) PSF image (normalised by Imfit), centred on its central pixel.
    init : initial galnet parameters (scalars): x, y (0-based pixels of ``image``), re_pix, n,
        q, pa_deg and flux (or mag with ``zeropoint``); moved into ``limits`` if outside.
    sigma : 1-sigma noise, (H, W) or a scalar [default: 1 everywhere, so ``chi2nu`` is the mean
        squared residual]; pixels with sigma <= 0 or non-finite are masked.
    mask : (H, W), nonzero = pixel ignored.
    solver : ``"LM"`` (Levenberg-Marquardt, the only one with errors), ``"NM"`` (Nelder-Mead) or
        ``"DE"`` (differential evolution, inside ``limits``).
    mode : ``"imfit"`` (Imfit's default pixel sub-sampling) or ``"sampled"``.
    max_threads : Imfit threads [default: 1].
    ftol : Imfit's fractional tolerance on chi2 [default: 1e-8, Imfit's].
    zeropoint : for ``mag`` in ``init`` and in the result.
    limits : parameter limits [default: :data:`DEFAULT_LIMITS`].
    flux_err : compute ``flux_err`` (and ``mag_err``) from the covariance of the fit: 8 more model
        images (about a third of the time of a fit); False leaves them NaN.

    Returns
    -------
    dict: x, y, flux, [mag], re_pix, n, q, pa_deg (galnet conventions, :func:`from_imfit`), each
    with ``_err`` (PyImfit's Levenberg-Marquardt errors, i.e. sqrt of the diagonal of
    ``(J^T W J)^-1``, not rescaled by chi2nu; NaN for NM/DE); ``chi2`` and
    ``chi2nu = chi2 / (N_unmasked - 7)``; ``npix``; ``niter``, ``nfev``; ``converged`` (Imfit's
    flag, and finite parameters); ``bound_hit`` (a parameter ended at one of its limits other
    than the PA's); ``time_s`` (the Imfit fit, wall) and ``time_total_s`` (with set-up and
    errors); ``message`` (why a fit failed, else ""). A failed fit returns NaN parameters and
    ``converged = False`` instead of raising; bad inputs raise :class:`GalnetValueError`.
    """
    t_start = time.perf_counter()
    if solver not in _SOLVERS:
        raise GalnetValueError(f"imfit_fit: unknown solver {solver!r} (use {', '.join(_SOLVERS)})",
                               "solver", solver)
    if mode not in _MODES:
        raise GalnetValueError(f"imfit_fit: unknown mode {mode!r} (use {' or '.join(_MODES)})",
                               "mode", mode)
    pyimfit = _import_pyimfit()
    img = _as_plane(image, "image")
    shape = img.shape
    psf_a = _as_plane(psf, "psf")
    if not np.isfinite(psf_a).all() or psf_a.sum() <= 0:
        raise GalnetValueError("imfit_fit: psf must be finite with a positive sum", "psf")
    sig = np.ones(shape) if sigma is None else _as_plane(sigma, "sigma", shape)
    bad = ~np.isfinite(img) | ~np.isfinite(sig) | (sig <= 0)
    if mask is not None:
        bad |= _as_plane(mask, "mask", shape) != 0
    npix = int((~bad).sum())
    if npix <= 7:
        raise GalnetValueError(f"imfit_fit: only {npix} unmasked pixels", "mask", npix)
    img = np.where(bad, 0.0, img)
    sig = np.where(bad, 1.0, sig)

    m0 = to_imfit(init, zeropoint=zeropoint)
    lim = apply_limits(m0, max(shape), limits)
    model = imfit_model_dict({k: lim[k][0] for k in IMFIT_KEYS})
    fset = model["function_sets"][0]
    for k in ("X0", "Y0"):
        fset[k] = [lim[k][0], lim[k][1], lim[k][2]]
    fset["function_list"][0]["parameters"] = {
        k: [lim[k][0], lim[k][1], lim[k][2]] for k in IMFIT_SERSIC}

    out = {k: math.nan for k in ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")}
    if zeropoint is not None:
        out["mag"] = math.nan
    out.update({f"{k}_err": math.nan for k in list(out)})
    out.update(chi2=math.nan, chi2nu=math.nan, npix=npix, niter=0, nfev=0, converged=False,
               bound_hit=False, time_s=math.nan, message="", solver=solver)
    t0 = time.perf_counter()
    try:
        fitter = pyimfit.Imfit(model, psf=psf_a, maxThreads=int(max_threads),
                               subsampling=mode == "imfit")
        fitter.fit(img, error=sig, mask=bad, solver=solver, ftol=ftol)
        out["time_s"] = time.perf_counter() - t0
        best = np.asarray(fitter.getRawParameters(), dtype=float)
        converged = bool(fitter.fitConverged) and np.isfinite(best).all()
        chi2 = float(fitter.fitStatistic)
        out.update(niter=int(fitter.nIter), nfev=int(fitter.nFuncEvals), chi2=chi2,
                   chi2nu=chi2 / (npix - 7))
        # PyImfit's raw vector is X0, Y0, PA, ell, n, I_e, r_e: the order of IMFIT_KEYS
        vals = dict(zip(IMFIT_KEYS, best, strict=True))
        out.update({k: float(v) for k, v in from_imfit(vals, zeropoint=zeropoint).items()})
        perr = fitter.parameterErrors
        if perr is not None:
            errs = dict(zip(IMFIT_KEYS, np.asarray(perr, dtype=float), strict=True))
            out.update(errors_from_imfit(vals, errs, out))
            if flux_err:
                out.update(_flux_error(fitter, best, sig, bad, out, zeropoint))
        # on a limit to 1e-6 of its value or 1e-9 of the range (I_e: a lower limit 0, and
        # values ~1e-13 in images of ~1e-12 units: an absolute tolerance would flag every fit)
        hit = [k for k in IMFIT_KEYS if k != "PA"
               and np.isclose(vals[k], lim[k][1:], rtol=1e-6,
                              atol=1e-9 * (lim[k][2] - lim[k][1])).any()]
        out["bound_hit"] = bool(hit)
        out["converged"] = bool(converged)
        if not converged:
            out["message"] = "Imfit did not converge"
    except Exception as err:  # noqa: BLE001 - PyImfit raises bare Exceptions; a failure is a result
        out["converged"] = False
        out["message"] = f"{type(err).__name__}: {err}"
        if math.isnan(out["time_s"]):
            out["time_s"] = time.perf_counter() - t0
    out["time_total_s"] = time.perf_counter() - t_start
    return out


def _flux_error(fitter, best: np.ndarray, sig: np.ndarray, bad: np.ndarray, out: dict,
                zeropoint: float | None) -> dict:
    """flux_err (and mag_err) from the covariance ``(J^T W J)^-1`` of the 7 parameters.

    J by forward differences of Imfit's model image (the same model it fitted); the flux
    gradient by central differences of :func:`from_imfit`. The diagonal of this covariance
    reproduces PyImfit's parameter errors (to ~1e-4). The columns of J are normalised before
    the inversion: in image units of ~1e-12 the I_e column is ~1e20 times the others, beyond
    the dynamic range of a plain pseudo-inverse."""
    w = (~bad).ravel() / sig.ravel()
    m0 = np.asarray(fitter.getModelImage(newParameters=best), dtype=float).ravel()
    rel = np.abs(best[4:7])
    steps = np.array([*_JAC_STEP, *(_JAC_REL * np.where(rel > 0, rel, 1.0))])
    J = np.empty((m0.size, 7))
    for i in range(7):
        p = best.copy()
        p[i] += steps[i]
        J[:, i] = (np.asarray(fitter.getModelImage(newParameters=p), dtype=float).ravel()
                   - m0) / steps[i] * w
    norm = np.linalg.norm(J, axis=0)
    norm = np.where(norm > 0, norm, 1.0)
    Jn = J / norm
    cov = np.linalg.pinv(Jn.T @ Jn) / np.outer(norm, norm)
    grad = np.zeros(7)
    for i in (3, 4, 5, 6):  # the flux depends on ell, n, I_e, r_e only
        lo, hi = best.copy(), best.copy()
        lo[i] -= steps[i]
        hi[i] += steps[i]
        f = [from_imfit(dict(zip(IMFIT_KEYS, v, strict=True)))["flux"] for v in (lo, hi)]
        grad[i] = (f[1] - f[0]) / (2 * steps[i])
    ferr = float(math.sqrt(max(grad @ cov @ grad, 0.0)))
    res = {"flux_err": ferr}
    if zeropoint is not None:
        res["mag_err"] = 2.5 / math.log(10) * ferr / out["flux"]
    return res
