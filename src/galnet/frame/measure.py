"""What is measured on each source's final model, on its native cutout: goodness of fit, S/N, the
point-source test (:func:`galnet.fitting.pointsource.point_source_test`) and the misfit statistics
(:func:`galnet.quality.residual_stats`, :func:`galnet.quality.misfit`).

Every quantity compares the *data minus the modelled neighbours* with the source's own model on
the unmasked pixels of its cutout (stamp pixels; ``sigma`` the frame's noise map):
``chi2nu = sum(((d - others - own) / sigma)^2) / (N_pix - 7)``, ``snr = sqrt(sum((own /
sigma)^2))`` (the model's optimal S/N).
"""

from __future__ import annotations

import numpy as np

from galnet.params import SERSIC

__all__ = ["fit_stats", "local_sky", "point_and_misfit", "POINT_TEST_SIZE"]

#: Side (px) of the central crop of a cutout on which the PSF competes with the Sérsic.
POINT_TEST_SIZE = 61


def fit_stats(data, sigma, mask, own, others) -> tuple[np.ndarray, np.ndarray]:
    """(chi2nu, snr) per cutout (module docstring); NaN where no pixel is usable."""
    w = (~np.asarray(mask, bool)).astype(np.float64)
    sig = np.asarray(sigma, np.float64)
    r = (np.asarray(data, np.float64) - others - own) / sig
    npix = w.sum(axis=(1, 2))
    dof = np.maximum(npix - len(SERSIC), 1.0)
    chi2nu = (r * r * w).sum(axis=(1, 2)) / dof
    snr = np.sqrt(((own / sig) ** 2 * w).sum(axis=(1, 2)))
    bad = npix == 0
    chi2nu[bad] = np.nan
    snr[bad] = np.nan
    return chi2nu, snr


def local_sky(data, sigma, mask, own, others) -> np.ndarray:
    """(N,) the best flat sky under each cutout's model: the ``1/sigma^2``-weighted mean of
    ``data - others - own`` over its unmasked pixels (0 where none). The refine fits this
    pedestal with each source (``sky="flat"``, as GALFIT users do); every later comparison on
    the cutout (the frame-level guard, chi2nu, the point and misfit tests) subtracts it, for the
    fitted and for the network's model alike."""
    w = np.where(np.asarray(mask, bool), 0.0, 1.0 / np.asarray(sigma, np.float64) ** 2)
    r = np.asarray(data, np.float64) - others - own
    den = w.sum(axis=(1, 2))
    return np.where(den > 0, (w * r).sum(axis=(1, 2)) / np.where(den > 0, den, 1.0), 0.0)


def point_and_misfit(data, sigma, mask, own, others, psfs, stamp_params: dict, *,
                     fwhm: float, zeropoint: float,
                     source_noise: bool = True) -> dict[str, np.ndarray]:
    """Point-source test (on the central :data:`POINT_TEST_SIZE` px; the upper limit on ``re``
    is ``re + 1.645 re_err``, not the profile likelihood: 4x cheaper) and misfit flag (whole
    cutout) of one group of cutouts.

    ``stamp_params``: the Sérsic values in cutout pixels (``x, y, re_pix, re_pix_err, n, q,
    pa_deg, chi2nu``, and ``snr``). ``source_noise``: ``sigma`` holds the sources' Poisson
    noise; if not, the misfit statistics allow for it with
    :func:`galnet.quality.assumed_gain`. Returns (N,) arrays ``point``, ``unresolved``,
    ``re_upper`` (px, NaN when resolved), ``psf_mag``, ``psf_mag_err``, ``psf_flux``,
    ``psf_flux_err``, ``psf_x``, ``psf_y``, ``psf_x_err``, ``psf_y_err`` (the PSF fit, cutout
    px), the statistics of :func:`galnet.quality.residual_stats` and ``misfit``.
    """
    from galnet.fitting.pointsource import point_source_test
    from galnet.quality import assumed_gain, misfit, residual_stats

    m = np.asarray(mask, bool)
    wt = np.where(m, 0.0, 1.0 / np.asarray(sigma, np.float64))
    s = data.shape[-1]
    o = max(0, (s - POINT_TEST_SIZE) // 2)  # the test looks at the core: a central crop
    core = (slice(None), slice(o, s - o), slice(o, s - o))
    c2_core = fit_stats(data[core], sigma[core], m[core], own[core], others[core])[0]
    ps = point_source_test(data[core], psfs, wt[core],
                           {**stamp_params, "x": stamp_params["x"] - o,
                            "y": stamp_params["y"] - o, "chi2nu": c2_core},
                           neighbours=others[core], mask=m[core], psf_fwhm_pix=fwhm,
                           zeropoint=zeropoint, profile=False)
    p = stamp_params
    ok = np.all([np.isfinite(p[k]) for k in ("x", "y", "re_pix", "q", "pa_deg")], axis=0)
    safe = {k: np.where(ok, p[k], v) for k, v in
            (("x", (data.shape[2] - 1) / 2), ("y", (data.shape[1] - 1) / 2), ("re_pix", 1.0),
             ("q", 1.0), ("pa_deg", 0.0))}
    st = residual_stats(np.asarray(data, np.float64) - others, own, sigma, m, x=safe["x"],
                        y=safe["y"], re=safe["re_pix"], q=safe["q"], pa_deg=safe["pa_deg"],
                        gain=None if source_noise else assumed_gain(sigma, m))
    bad = misfit(st, p["snr"]) & ok
    out = {k: np.asarray(ps[k]) for k in ("point", "unresolved", "re_upper", "psf_mag",
                                          "psf_mag_err", "psf_flux", "psf_flux_err",
                                          "psf_x_err", "psf_y_err")}
    out["psf_x"], out["psf_y"] = np.asarray(ps["psf_x"]) + o, np.asarray(ps["psf_y"]) + o
    # a PSF that fits about as well as a poor Sérsic does not make a source resolved at many
    # sigma (re - 2 re_err above the FWHM) a point source
    with np.errstate(invalid="ignore"):
        extended = (np.asarray(p["re_pix"], float) - 2 * np.asarray(p["re_pix_err"], float)
                    > fwhm)
    out["point"] = out["point"] & ~extended
    out["unresolved"] = out["unresolved"] & ~extended
    out["re_upper"] = np.where(out["unresolved"], out["re_upper"], np.nan)
    out.update({k: np.where(ok, np.asarray(v, float), np.nan) for k, v in st.items()})
    out["misfit"] = bad & ~out["point"]
    return out
