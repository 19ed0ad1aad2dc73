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
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

__all__ = ["frame_catalog", "count_neighbours"]

_QUALITY = ("rff", "rff_err", "asym", "asym_err", "chi2nu_in")


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


def frame_catalog(fd, ids, res: dict, flags, extra: dict, meta: dict):
    """QTable of frame-pixel results ``res`` (``x, y, flux, re_pix, n, q, pa_deg`` with ``_err``,
    ``chi2nu``, ``snr``) and the ``extra`` columns (module docstring order)."""
    from astropy import units as u

    from galnet.io.catalog import stamp_catalog

    n = len(ids)
    geo = SimpleNamespace(rebin=np.ones(n), x0=np.zeros(n), y0=np.zeros(n), ids=np.asarray(ids),
                          zeropoint=fd.zeropoint, pixel_scale=fd.pixel_scale, wcs=fd.wcs)
    t = stamp_catalog(geo, res, flags, meta)
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
    if "chi2nu_nn" in extra:
        t["chi2nu_nn"] = np.asarray(extra["chi2nu_nn"], float)
        t["chi2nu_nn"].info.description = "chi2nu of the network's parameters, same pixels"
    return t
