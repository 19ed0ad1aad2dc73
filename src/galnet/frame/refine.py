"""The guarded refine of one group of native cutouts, neighbours subtracted.

:func:`fit_cutouts` builds a :class:`galnet.io.batch.StampBatch` of the cutouts at native pixels
(``rebin = 1``; cutout origin = frame offset, so the fitter's catalogue comes back in frame
pixels) and calls :func:`galnet.fitting.runner.fit` started from the network's values (frame
pixels, with errors) with ``neighbours`` = the other sources' model in each cutout, the
network's prior, the centre bound and accept-or-revert (``guard``): see docs/fit.md. No
automatic neighbour mask: neighbours are modelled; the cutout masks hold only the frame mask,
the pixels off the frame and the segments of sources that are not modelled.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from galnet.fitting.problem import DEFAULT_FIT
from galnet.flags import Flag

__all__ = ["fit_cutouts", "FIT_COLUMNS"]

#: Parameters handed between the network, the fit and the canvas (frame pixels).
FIT_COLUMNS = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")


def _batch(fd, cut, psfs, ids, flags):
    from galnet.io.batch import StampBatch

    n = len(cut.index)
    good = ~cut.mask
    rms = np.array([np.median(s[g]) if g.any() else np.nan for s, g in zip(cut.sigma, good,
                                                                              strict=True)])
    return StampBatch(cut.data, cut.sigma, cut.mask, psfs, np.asarray(flags, np.int64), ids,
                      np.ones(n, np.int64), cut.x0.astype(np.float64),
                      cut.y0.astype(np.float64), np.zeros(n), np.zeros(n), rms,
                      fd.pixel_scale, fd.zeropoint, {"frame": fd.name, "sigma": "frame noise"},
                      None)


#: The frame refine's fit configuration: a local flat sky (``sky="flat"``) with a weak Gaussian
#: prior of 0.1 x the noise per pixel around 0. Weak: a 61 px cutout measures a flat sky to
#: ~0.02 sigma, so it only bites on small or heavily masked cutouts; it does not stop the sky
#: trading against the wings of high-n galaxies (VST frame: skies of -0.9 sigma with n -> 7).
FRAME_FIT = replace(DEFAULT_FIT, sky_prior=0.1)


def fit_cutouts(fd, cut, psfs, start: dict, others: np.ndarray, *, ids, flags, model=None,
                device="cpu", sky: str = "none") -> dict[str, np.ndarray]:
    """Fit the cutouts ``cut`` (:class:`galnet.frame.stamps.Cutouts`) from ``start`` (frame-pixel
    network values and ``_err``, arrays of the group's length) with ``others`` subtracted;
    ``sky``: ``"flat"`` fits a constant local sky with each source.

    Returns frame-pixel ``x, y, flux, re_pix, n, q, pa_deg`` and ``_err``, ``flags`` (the fit's,
    with the input ``flags``), ``niter``, ``converged``, ``chi2nu_nn`` (NaN when the fitter does
    not report it).
    """
    from astropy.table import Table

    from galnet.fitting.runner import fit

    b = _batch(fd, cut, psfs, ids, flags)
    b.input_x = np.asarray(start["x"], float).copy()
    b.input_y = np.asarray(start["y"], float).copy()
    init = Table({"id": np.asarray(ids), **{k: np.asarray(start[k], float)
                                             for k in FIT_COLUMNS},
                  **{f"{k}_err": np.asarray(start[f"{k}_err"], float) for k in FIT_COLUMNS}},
                 meta={"first_guess": "nn (frame)"})
    t = fit(b, init=init, auto_mask_neighbours=False, model=model, device=device,
            neighbours=others, guard=True, prior=True, assess=False, sky=sky,
            config=FRAME_FIT)
    out = {}
    for k in FIT_COLUMNS:
        for c in (k, f"{k}_err"):
            v = t[c]
            out[c] = np.asarray(getattr(v, "value", v), dtype=np.float64)
    out["flags"] = np.asarray(t["flags"], np.int64) | np.asarray(flags, np.int64)
    out["niter"] = np.asarray(t["niter"]) if "niter" in t.colnames else np.zeros(len(t), int)
    out["converged"] = (np.asarray(t["converged"], bool) if "converged" in t.colnames
                        else np.ones(len(t), bool))
    out["chi2nu_nn"] = (np.asarray(t["chi2nu_nn"], float) if "chi2nu_nn" in t.colnames
                        else np.full(len(t), np.nan))
    # rows the fitter could not fit keep the network's values (and say so)
    bad = ~np.all([np.isfinite(out[k]) for k in FIT_COLUMNS], axis=0)
    if bad.any():
        for k in FIT_COLUMNS:
            out[k][bad] = np.asarray(start[k], float)[bad]
            out[f"{k}_err"][bad] = np.asarray(start[f"{k}_err"], float)[bad]
        out["flags"][bad] |= int(Flag.REVERTED)
        out["flags"][bad] &= ~np.int64(Flag.NONFINITE)  # re-checked on the reported values
    return out
