"""Point sources and misfits of stamp fits: what ``galnet predict`` / ``galnet fit`` on stamps
add to their catalogue (issue 13, items 4 and 5), as the frame mode does.

After the network (``predict``) or the fit (``predict --refine``, ``fit``), every stamp gets

- the point-source test (:func:`galnet.fitting.pointsource.point_source_test`: a PSF model
  competes with the Sérsic on the central :data:`POINT_TEST_SIZE` px; the upper limit on ``re``
  is ``re + 1.645 re_err`` with the PSF allowance): flags ``POINT_SOURCE`` and ``UNRESOLVED``;
  an unresolved source has its 95% upper limit in ``re_pix`` / ``re_arcsec``; columns
  ``psf_mag, psf_mag_err`` (AB mag of the PSF model; NaN with ``point_test=False`` and for
  sources resolved at many sigma, ``re_pix - 2 re_pix_err > FWHM``, which are not PSF-fitted:
  they can be neither point sources nor unresolved);
- the misfit statistics (:func:`galnet.quality.residual_stats`) and flag
  (:func:`galnet.quality.misfit` -> ``MISFIT``; never on a point source): columns ``rff,
  rff_err, asym, asym_err, chi2nu_in``.

Column names and units are those of the frame catalogue (:mod:`galnet.frame.catalogue`).

Noise (the misfit test needs the source's Poisson noise in ``sigma``; :mod:`galnet.quality`):
with ``gain`` and no sigma / ivar map (``galnet fit --gain``) it is added,
``sigma^2 + max(data, 0) / gain`` (the fit's weights). Otherwise the misfit statistics use
``max(sigma^2, sigma_sky^2 + max(model, 0) / G)`` with ``G`` = :func:`galnet.quality.assumed_gain`
(``sigma_sky`` the stamp's median sigma): the frame mode's rule without a gain for the stamps'
sky rms or a sky-only map, and a map that holds more source noise than that (a low gain) is
kept as it is.

:func:`point_and_misfit` is the shared core (the frame mode's signature, cutouts with
neighbours); :func:`assess_stamps` runs it on a :class:`galnet.io.batch.StampBatch` and
:func:`add_columns` puts the columns in a catalogue.
"""

from __future__ import annotations

import numpy as np

from galnet.flags import Flag
from galnet.quality import ASSUMED_GAIN_SIGMA, assumed_gain

__all__ = ["point_and_misfit", "assess_stamps", "assessor", "add_columns", "columns",
           "stamp_fwhm", "has_noise_map", "ASSESS_COLUMNS", "POINT_TEST_SIZE"]

#: Side (px) of the central crop of a stamp on which the PSF competes with the Sérsic.
POINT_TEST_SIZE = 61

#: The catalogue columns added, in order (units: ``psf_mag*`` mag, the rest dimensionless).
ASSESS_COLUMNS = ("psf_mag", "psf_mag_err", "rff", "rff_err", "asym", "asym_err", "chi2nu_in")

_PSF_KEYS = ("point", "unresolved", "re_upper", "psf_mag", "psf_mag_err", "psf_flux",
             "psf_flux_err", "psf_x", "psf_y", "psf_x_err", "psf_y_err")


def _chi2nu(data, sigma, mask, model) -> np.ndarray:
    w = (~mask).astype(np.float64)
    r = (data - model) / sigma
    npix = w.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(npix > 0, (r * r * w).sum(axis=(1, 2)) / np.maximum(npix - 7, 1.0),
                        np.nan)


def point_and_misfit(data, sigma, mask, own, others, psfs, stamp_params: dict, *,
                     fwhm, zeropoint, source_noise: bool = True,
                     point_test: bool = True, skip_extended: bool = False,
                     misfit_sigma=None) -> dict[str, np.ndarray]:
    """Point-source test (central :data:`POINT_TEST_SIZE` px) and misfit flag (whole stamp) of
    a group of stamps / cutouts (stamp pixels).

    Parameters
    ----------
    data, sigma, mask, own : (N, H, W) data, 1-sigma noise, mask (True = ignored) and the
        source's own model (plus the fitted sky, if any), image units.
    others : (N, H, W) model of the other sources (subtracted), or None.
    psfs : (P, P) or (N, P, P) effective PSFs.
    stamp_params : the Sérsic values ``x, y, re_pix, re_pix_err, n, q, pa_deg, chi2nu, snr``
        (and optional ``sky``), (N,) arrays, stamp px.
    fwhm : PSF FWHM (px), scalar or (N,).   zeropoint : of ``psf_mag`` (None: NaN).
    source_noise : ``sigma`` holds the sources' Poisson noise; if not, the misfit statistics
        allow for it with :func:`galnet.quality.assumed_gain`.
    point_test : run the point-source test (else ``point``/``unresolved`` False, PSF values NaN).
    misfit_sigma : optional (N, H, W) noise of the misfit statistics instead of ``sigma`` (which
        must then hold the source noise: ``source_noise`` is not used).
    skip_extended : no PSF fit for sources resolved at many sigma (``re - 2 re_err > FWHM``:
        never point sources nor unresolved); their PSF values are NaN (saves its time).

    Returns
    -------
    dict of (N,) arrays: ``point``, ``unresolved``, ``re_upper`` (px, NaN when resolved),
    ``psf_mag``, ``psf_mag_err``, ``psf_flux``, ``psf_flux_err``, ``psf_x``, ``psf_y``,
    ``psf_x_err``, ``psf_y_err`` (the PSF fit, stamp px), the statistics of
    :func:`galnet.quality.residual_stats` and ``misfit``.
    """
    from galnet.fitting.pointsource import point_source_test
    from galnet.quality import misfit, residual_stats

    data = np.asarray(data, np.float64)
    N = data.shape[0]
    m = np.asarray(mask, bool)
    sigma = np.asarray(sigma, np.float64)
    others = np.zeros_like(data) if others is None else np.asarray(others, np.float64)
    own = np.asarray(own, np.float64)
    own = np.where(np.isfinite(own), own, 0.0)
    p = stamp_params
    with np.errstate(invalid="ignore"):
        # a PSF that fits about as well as a poor Sérsic does not make a source resolved at
        # many sigma (re - 2 re_err above the FWHM) a point source
        extended = (np.asarray(p["re_pix"], float) - 2 * np.asarray(p["re_pix_err"], float)
                    > np.asarray(fwhm, float))
    test = ~extended if skip_extended else np.ones(N, bool)
    out = {k: np.full(N, np.nan) for k in _PSF_KEYS}
    out["point"], out["unresolved"] = np.zeros(N, bool), np.zeros(N, bool)
    if point_test and test.any():
        i = np.flatnonzero(test)
        sub = (lambda a: a) if test.all() else (lambda a: a[i])
        ps_all = np.asarray(psfs)
        psf_i = ps_all if ps_all.ndim == 2 or len(ps_all) == 1 else sub(ps_all)
        fw = np.broadcast_to(np.asarray(fwhm, float), (N,))
        data_i, sigma_i, m_i, others_i, own_i = (sub(a) for a in (data, sigma, m, others, own))
        p_i = {k: sub(np.broadcast_to(np.asarray(v, float), (N,))) for k, v in p.items()}
        with np.errstate(divide="ignore"):
            wt = np.where(m_i, 0.0, 1.0 / sigma_i)
        s = data.shape[-1]
        o = max(0, (s - POINT_TEST_SIZE) // 2)  # the test looks at the core: a central crop
        core = (slice(None), slice(o, s - o), slice(o, s - o))
        c2 = _chi2nu(data_i[core] - others_i[core], sigma_i[core], m_i[core], own_i[core]) \
            if o else p_i["chi2nu"]
        ps = point_source_test(data_i[core], psf_i, wt[core],
                               {**p_i, "x": p_i["x"] - o, "y": p_i["y"] - o, "chi2nu": c2},
                               neighbours=others_i[core], mask=m_i[core],
                               psf_fwhm_pix=sub(fw), zeropoint=zeropoint, profile=False)
        for k in _PSF_KEYS:
            out[k][i] = np.asarray(ps[k])
        out["psf_x"][i] += o
        out["psf_y"][i] += o
        out["point"] &= ~extended
        out["unresolved"] &= ~extended
        out["re_upper"] = np.where(out["unresolved"], out["re_upper"], np.nan)
    ok = np.all([np.isfinite(np.asarray(p[k], float)) for k in ("x", "y", "re_pix", "q",
                                                                  "pa_deg")], axis=0)
    safe = {k: np.where(ok, np.asarray(p[k], float), v) for k, v in
            (("x", (data.shape[2] - 1) / 2), ("y", (data.shape[1] - 1) / 2), ("re_pix", 1.0),
             ("q", 1.0), ("pa_deg", 0.0))}
    if misfit_sigma is not None:
        sigma, source_noise = np.asarray(misfit_sigma, np.float64), True
    st = residual_stats(data - others, own, sigma, m, x=safe["x"], y=safe["y"],
                        re=safe["re_pix"], q=safe["q"], pa_deg=safe["pa_deg"],
                        gain=None if source_noise else assumed_gain(sigma, m))
    out.update({k: np.where(ok, np.asarray(v, float), np.nan) for k, v in st.items()})
    out["misfit"] = misfit(st, p["snr"]) & ok & ~out["point"]
    return out


def has_noise_map(stamps) -> bool:
    """Whether the stamps' sigma is a user sigma / ivar map (else each stamp's sky rms)."""
    return any(k in getattr(stamps, "meta", {}) for k in ("sigma", "ivar"))


def stamp_fwhm(psfs) -> np.ndarray:
    """(N,) or (1,) FWHM (stamp px) of the PSFs (:func:`galnet.fitting.pointsource.psf_fwhm`),
    each distinct PSF measured once."""
    from galnet.fitting.pointsource import psf_fwhm

    p = np.asarray(psfs)
    p = p[None] if p.ndim == 2 else p
    uniq, inv = np.unique(p.reshape(len(p), -1), axis=0, return_inverse=True)
    return psf_fwhm(uniq.reshape(-1, *p.shape[1:]))[np.ravel(inv)]


def assess_stamps(stamps, res: dict, flags, models, *, images=None, mask=None,
                  gain: float | None = None, point_test: bool = True,
                  misfit_flag: bool = True) -> dict[str, np.ndarray]:
    """Point-source test and misfit flag of the results ``res`` on a StampBatch.

    Parameters
    ----------
    stamps : :class:`galnet.io.batch.StampBatch` (sigma, psfs, zeropoint; ``meta`` says whether
        sigma is a user map: :func:`has_noise_map`).
    res : stamp-pixel results (``x, y, re_pix, re_pix_err, n, q, pa_deg, chi2nu, snr``, optional
        ``sky``); ``re_pix`` is replaced in place by the upper limit where unresolved.
    flags : (N,) int64 flags, updated in place (``POINT_SOURCE``, ``UNRESOLVED``, ``MISFIT``).
    models : (N, H, W) the models of ``res`` (Sérsic x PSF, plus the sky); NaN rows = not fitted.
    images, mask : the data and mask the results were fitted on [default: the stamps'] (e.g.
        neighbours subtracted, neighbours masked).
    gain : e-/image unit: without a noise map, ``sigma^2 + max(data, 0) / gain`` (the fit's
        weights; module docstring).
    point_test : run the point-source test.
    misfit_flag : raise ``MISFIT`` (the statistics are computed either way). Off for the
        network alone: its parameters are not a best fit, so the residuals of bright galaxies
        show the parameter errors (40 of 211 isolated single-Sérsic GalSim stamps flagged after
        the network, 0 after the refine; benchmarks/stress_stamps.py -n 300).

    Returns
    -------
    dict: the :data:`ASSESS_COLUMNS` (N,) arrays (to :func:`add_columns`) and the rest of
    :func:`point_and_misfit`'s result.
    """
    data = np.asarray(stamps.images if images is None else images, np.float64)
    m = np.asarray(stamps.mask if mask is None else mask, bool)
    sigma = np.asarray(stamps.sigma, np.float64)
    models = np.asarray(models, np.float64)
    m = m | ~np.isfinite(data) | ~np.isfinite(models)
    data = np.where(m, 0.0, data)
    sig_m = None
    if gain is not None and not has_noise_map(stamps):  # the fit's weights
        sigma = np.sqrt(sigma**2 + np.maximum(data, 0.0) / float(gain))
    else:  # at least the source noise of galnet.quality.assumed_gain (module docstring)
        g = assumed_gain(sigma, m)[:, None, None]
        sky = ASSUMED_GAIN_SIGMA / g
        sig_m = np.sqrt(np.maximum(sigma**2, sky**2 + np.maximum(np.nan_to_num(models), 0) / g))
    keys = ("x", "y", "re_pix", "re_pix_err", "n", "q", "pa_deg", "chi2nu", "snr", "sky")
    p = {k: np.asarray(res[k], float) for k in keys if k in res}
    if "sky" in p:
        p["sky"] = np.nan_to_num(p["sky"])
    out = point_and_misfit(data, sigma, m, models, None, stamps.psfs, p,
                           fwhm=stamp_fwhm(stamps.psfs) if point_test else np.nan,
                           zeropoint=getattr(stamps, "zeropoint", None),
                           point_test=point_test, skip_extended=True, misfit_sigma=sig_m)
    f = np.asarray(flags)
    f |= np.where(out["point"], int(Flag.POINT_SOURCE), 0)
    f |= np.where(out["unresolved"], int(Flag.UNRESOLVED), 0)
    if misfit_flag:
        f |= np.where(out["misfit"], int(Flag.MISFIT), 0)
    up = out["unresolved"] & np.isfinite(out["re_upper"])
    res["re_pix"] = np.where(up, out["re_upper"], res["re_pix"])
    return out


_DESC = {"psf_mag": "AB magnitude of the PSF (point-source) model",
         "psf_mag_err": "error of psf_mag",
         "rff": "residual flux fraction in the 2 re ellipse (galnet.quality)",
         "rff_err": "rff's standard deviation under pure noise",
         "asym": "residual asymmetry in the 2 re ellipse (galnet.quality)",
         "asym_err": "asym's standard deviation under pure noise",
         "chi2nu_in": "reduced chi2 inside the 1 re ellipse"}


def columns(out: dict) -> dict:
    """The :data:`ASSESS_COLUMNS` of :func:`assess_stamps`' result as astropy Columns (units:
    ``psf_mag*`` mag; descriptions set)."""
    from astropy import units as u
    from astropy.table import Column

    return {k: Column(np.asarray(out[k], float), name=k, description=_DESC[k],
                      unit=u.mag if k.startswith("psf_mag") else None) for k in ASSESS_COLUMNS}


def add_columns(t, out: dict) -> None:
    """Append the :func:`columns` of :func:`assess_stamps`' result to catalogue ``t``, in place."""
    for k, v in columns(out).items():
        t[k] = v


def assessor(*, point_test: bool = True, gain: float | None = None):
    """The ``assess`` hook of :func:`galnet.nn.predict.predict` / ``predict_files``:
    ``f(stamps, res, flags, models) -> columns`` running :func:`assess_stamps` without the
    ``MISFIT`` flag (a network's parameters are not a fit; the columns are kept); ``f.options``
    (``{"point_test": ...}``) is recorded in the provenance."""
    def run(stamps, res, flags, models):
        return columns(assess_stamps(stamps, res, flags, models, gain=gain,
                                     point_test=point_test, misfit_flag=False))

    run.options = {"point_test": bool(point_test)}
    return run
