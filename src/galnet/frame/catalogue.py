"""The frame catalogue: the columns of ``galnet predict`` / ``galnet fit`` in frame pixels, plus
the frame pipeline's own.

Columns (units as ``galnet predict``: pix, mag, arcsec, deg; the rest dimensionless):
``id, x, y`` (0-based frame pixels), ``mag, flux, re_pix,
re_arcsec, n, q, pa_deg`` each with ``_err``, ``chi2nu, snr, flags``, ``ra, dec`` (deg, when the
frame has a celestial WCS), then ``psf_mag, psf_mag_err`` (AB mag of the PSF model),
``rff, rff_err, asym, asym_err, chi2nu_in`` (:mod:`galnet.quality`), ``n_neighbours`` (modelled
sources whose centre lies in the cutout), ``cutout`` (native cutout side, frame px), ``rebin``
(the network's block-averaging factor) and, after a refine, ``niter, converged, chi2nu_nn``.
A source flagged ``UNRESOLVED`` has its 95% upper limit in ``re_pix`` / ``re_arcsec``.

Point sources (``POINT_SOURCE``, always also ``UNRESOLVED``): ``x, y, mag, flux`` and their
errors come from the PSF fit (:func:`use_point_fits`; ``mag`` = ``psf_mag``); ``re_pix`` is the
upper limit; ``n, q, pa_deg`` (and their errors, possibly NaN) are the Sérsic fit's, kept for
reference but meaningless for a star. ``NONFINITE`` is not set for a star whose PSF fit is finite.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

__all__ = ["frame_catalog", "count_neighbours", "use_point_fits"]

_QUALITY = ("rff", "rff_err", "asym", "asym_err", "chi2nu_in")
_FROM_PSF = "POINT_SOURCE rows: from the PSF fit"
#: What the columns hold for point sources (appended to their descriptions).
_POINT_NOTES = {**{c: _FROM_PSF for c in ("x", "y", "mag", "flux", "x_err", "y_err", "mag_err",
                                          "flux_err")},
                "re_pix": "UNRESOLVED rows: 95% upper limit",
                "re_arcsec": "UNRESOLVED rows: 95% upper limit",
                **{c: "POINT_SOURCE rows: the Sérsic fit's, meaningless for a star"
                   for c in ("n", "q", "pa_deg")}}


def count_neighbours(x, y, x0, y0, size) -> np.ndarray:
    """(N,) number of other sources whose centre lies in each source's cutout."""
    from scipy.spatial import cKDTree

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = x.size
    out = np.zeros(n, np.int64)
    if n < 2:
        return out
    tree = cKDTree(np.c_[x, y])
    half = (np.asarray(size) - 1) / 2.0
    for i, near in enumerate(tree.query_ball_point(np.c_[x, y], r=half * np.sqrt(2) + 1)):
        near = np.asarray([j for j in near if j != i], np.int64)
        if near.size:
            inside = ((x[near] >= x0[i] - 0.5) & (x[near] < x0[i] + size[i] - 0.5)
                      & (y[near] >= y0[i] - 0.5) & (y[near] < y0[i] + size[i] - 0.5))
            out[i] = int(inside.sum())
    return out


def use_point_fits(res: dict, flags, m: dict, fwhm: float) -> np.ndarray:
    """Report point sources from their PSF fit, in place (module docstring).

    Parameters
    ----------
    res : frame-pixel results (``x, y, flux, re_pix`` with ``_err``), changed in place.
    flags : (N,) int flags (``POINT_SOURCE`` read, ``UNRESOLVED`` set for the rows used).
    m : the measurements: ``psf_x, psf_y, psf_flux`` with ``_err`` (frame px, image units) and
        ``re_upper`` (px, the point-source test's 95% upper limit on ``re``).
    fwhm : PSF FWHM (px): where the upper limit is not finite (a Sérsic fit with no usable
        ``re`` error), ``hypot(re_max, re_sys) * FWHM`` of
        :data:`galnet.fitting.pointsource.POINT_RULE` (the point-source radius bound plus the
        PSF-mismatch allowance).

    Returns
    -------
    (N,) bool: the rows reported from a finite PSF fit (the caller does not flag them
    ``NONFINITE``).
    """
    from galnet.fitting.pointsource import POINT_RULE
    from galnet.flags import Flag

    flags = np.asarray(flags)
    star = (flags & int(Flag.POINT_SOURCE)) != 0
    cols = {k: np.asarray(m[f"psf_{k}"], float) for k in ("x", "y", "flux")}
    errs = {k: np.asarray(m[f"psf_{k}_err"], float) for k in ("x", "y", "flux")}
    with np.errstate(invalid="ignore"):
        ok = star & np.all([np.isfinite(cols[k]) & np.isfinite(errs[k]) for k in cols], axis=0)
        ok &= cols["flux"] > 0
    for k in cols:
        res[k] = np.where(ok, cols[k], res[k])
        res[f"{k}_err"] = np.where(ok, errs[k], res[f"{k}_err"])
    up = np.asarray(m["re_upper"], float)
    fallback = float(np.hypot(POINT_RULE["re_max"], POINT_RULE["re_sys"]) * fwhm)
    res["re_pix"] = np.where(ok, np.where(np.isfinite(up), up, fallback), res["re_pix"])
    flags |= np.where(ok, int(Flag.UNRESOLVED), 0)
    return ok


def frame_catalog(fd, ids, res: dict, flags, extra: dict, meta: dict):
    """QTable of frame-pixel results ``res`` (``x, y, flux, re_pix, n, q, pa_deg`` with ``_err``,
    ``chi2nu``, ``snr``) and the ``extra`` columns (module docstring order)."""
    from astropy import units as u

    from galnet.io.catalog import stamp_catalog

    n = len(ids)
    geo = SimpleNamespace(rebin=np.ones(n), x0=np.zeros(n), y0=np.zeros(n), ids=np.asarray(ids),
                          zeropoint=fd.zeropoint, pixel_scale=fd.pixel_scale, wcs=fd.wcs)
    t = stamp_catalog(geo, res, flags, meta)
    for c, note in _POINT_NOTES.items():
        if c in t.colnames:
            d = t[c].info.description
            t[c].info.description = f"{d}; {note}" if d else note
    if "psf_mag" in extra:
        t["psf_mag"] = np.asarray(extra["psf_mag"], float) * u.mag
        t["psf_mag_err"] = np.asarray(extra["psf_mag_err"], float) * u.mag
        t["psf_mag"].info.description = "AB magnitude of the PSF (point-source) model"
    for k in _QUALITY:
        if k in extra:
            t[k] = np.asarray(extra[k], float)
    t["n_neighbours"] = np.asarray(extra["n_neighbours"], np.int64)
    t["n_neighbours"].info.description = "modelled sources whose centre lies in the cutout"
    t["cutout"] = np.asarray(extra["cutout"], np.int64) * u.pix
    t["cutout"].info.description = "side of the native cutout (frame pixels)"
    t["rebin"] = np.asarray(extra["rebin"], np.int64)
    t["rebin"].info.description = "block-averaging factor of the network's 61x61 input"
    for k in ("niter", "converged"):
        if k in extra:
            t[k] = np.asarray(extra[k])
    if "sky" in extra:
        t["sky"] = np.asarray(extra["sky"], float)
        t["sky"].info.description = ("local flat sky under the source's cutout fitted with it "
                                     "(image units, on top of the frame's sky)")
    if "chi2nu_nn" in extra:
        t["chi2nu_nn"] = np.asarray(extra["chi2nu_nn"], float)
        t["chi2nu_nn"].info.description = "chi2nu of the network's parameters, same pixels"
    return t
