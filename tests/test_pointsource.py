"""Point sources (issue 13 item 4): the shifted PSF, the PSF fit, the FWHM, the decision, the
upper limit on re, and the one helper the pipelines call."""

from __future__ import annotations

import numpy as np
import pytest

from galnet.errors import GalnetValueError
from galnet.fitting.lm import fit_arrays
from galnet.fitting.pointsource import (
    classify,
    fit_psf,
    point_source_columns,
    point_source_test,
    psf_fwhm,
    psf_model,
    re_upper_profile,
    upper_limit,
)
from galnet.profiles.render import render

S = 41


def moffat(size: int = 25, fwhm: float = 3.5, beta: float = 3.0, e: float = 0.0) -> np.ndarray:
    c = (size - 1) / 2
    y, x = np.mgrid[:size, :size] - c
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    p = (1 + (x**2 * (1 + e) + y**2 * (1 - e)) / alpha**2) ** -beta
    return p / p.sum()


def gaussian(size: int = 25, fwhm: float = 4.0) -> np.ndarray:
    c = (size - 1) / 2
    y, x = np.mgrid[:size, :size] - c
    s = fwhm / 2.3548
    p = np.exp(-0.5 * (x**2 + y**2) / s**2)
    return p / p.sum()


def sersic(x, y, re, n=1.0, q=1.0, pa=30.0, flux=1.0) -> dict:
    x, y, re = np.atleast_1d(x), np.atleast_1d(y), np.atleast_1d(re)
    N = max(len(x), len(re))
    x, y, re = (np.broadcast_to(v, (N,)).copy() for v in (x, y, re))
    return dict(x=x, y=y, re_pix=re,
                n=np.full(N, n), q=np.full(N, q), pa_deg=np.full(N, pa), flux=np.full(N, flux))


# ----------------------------------------------------------------------------------------------
def test_psf_model_equals_renderer_of_a_tiny_sersic():
    """The PSF model shifts the PSF as the renderer does: a Sérsic with re -> 0 (0.001 px)."""
    psf = moffat(e=0.2)
    x, y = np.array([20.0, 20.3, 19.71, 21.5, 18.05]), np.array([20.0, 19.6, 20.49, 20.5, 22.9])
    m = psf_model(psf, x, y, (S, S))
    r = render(sersic(x, y, 1e-3), psf, (S, S))
    assert m.shape == (5, S, S)
    assert np.abs(m - r).max() < 1e-3 * m.max()
    np.testing.assert_allclose(m.sum((1, 2)), 1.0, atol=1e-3)
    # a cube of PSFs (one per object) and a non-square stamp
    cube = np.stack([moffat(fwhm=f) for f in (3.0, 3.5, 4.0, 4.5, 5.0)])
    m = psf_model(cube, x, y, (S, S + 6))
    r = render(sersic(x, y, 1e-3), cube, (S, S + 6))
    assert np.abs(m - r).max() < 1e-3 * m.max()
    # the peak moves with (x, y): integer position -> peak pixel there
    assert np.unravel_index(np.argmax(m[0]), m[0].shape) == (20, 20)


def test_psf_fwhm_of_known_profiles():
    assert psf_fwhm(gaussian(fwhm=4.0))[0] == pytest.approx(4.0, rel=0.02)
    f = psf_fwhm(np.stack([moffat(fwhm=3.0), moffat(fwhm=5.0, beta=2.5)]))
    # the Quintic-interpolated samples of a pixel-sampled Moffat: within a few % of its FWHM
    assert f == pytest.approx([3.0, 5.0], rel=0.04)
    assert f[1] > f[0]


def test_fit_psf_recovers_position_and_flux_with_calibrated_errors():
    rng = np.random.default_rng(1)
    N, psf = 120, moffat()
    xs, ys = 20 + rng.uniform(-1, 1, N), 20 + rng.uniform(-1, 1, N)
    img = psf_model(psf, xs, ys, (S, S)) * 500.0 + rng.normal(size=(N, S, S))
    r = fit_psf(img, psf, np.ones_like(img), x0=np.round(xs), y0=np.round(ys))
    assert set(r) >= {"x", "y", "flux", "flux_err", "chi2"}
    assert np.abs(r["x"] - xs).max() < 0.15 and np.abs(r["y"] - ys).max() < 0.15
    pull = (r["flux"] - 500.0) / r["flux_err"]
    assert abs(pull.mean()) < 0.35 and 0.75 < pull.std() < 1.3
    assert np.mean(r["chi2"]) / (S * S - 3) == pytest.approx(1.0, abs=0.03)


def test_fit_psf_subtracts_neighbours_and_ignores_masked_pixels():
    rng = np.random.default_rng(2)
    psf = moffat()
    target = psf_model(psf, 20.2, 19.8, (S, S))[0] * 300.0
    nb = psf_model(psf, 27.0, 21.0, (S, S))[0] * 3000.0
    noise = rng.normal(size=(S, S))
    img = (target + nb + noise)[None]
    bad = fit_psf(img, psf, np.ones_like(img), x0=[20.0], y0=[20.0])
    good = fit_psf(img, psf, np.ones_like(img), x0=[20.0], y0=[20.0], neighbours=nb[None])
    assert abs(good["flux"][0] - 300.0) < 3 * good["flux_err"][0]
    assert abs(bad["flux"][0] - 300.0) > 3 * bad["flux_err"][0]  # the neighbour biases it
    # a neighbour further out, masked instead (wt = 0 there, or mask=)
    img = (target + np.roll(nb, 6, axis=1) + noise)[None]  # neighbour at (33, 21)
    mask = np.zeros((1, S, S), bool)
    mask[0, 14:29, 28:39] = True
    m1 = fit_psf(img, psf, np.ones_like(img), x0=[20.0], y0=[20.0], mask=mask)
    m2 = fit_psf(img, psf, np.where(mask, 0.0, 1.0), x0=[20.0], y0=[20.0])
    assert abs(m1["flux"][0] - 300.0) < 3 * m1["flux_err"][0]
    assert m1["flux"][0] == pytest.approx(m2["flux"][0])
    assert m1["npix"][0] == S * S - mask.sum()


def test_fit_psf_bad_shapes_raise_one_line_errors():
    img = np.zeros((2, S, S))
    with pytest.raises(GalnetValueError, match="wt must have the shape"):
        fit_psf(img, moffat(), np.ones((2, S, S - 1)), x0=[20, 20], y0=[20, 20])
    with pytest.raises(GalnetValueError, match="neighbours"):
        fit_psf(img, moffat(), np.ones_like(img), x0=[20, 20], y0=[20, 20],
                neighbours=np.zeros((1, 5, 5)))


def test_classify_rule_and_upper_limits():
    """FWHM 4 px: point below re 1.32 px (0.33 FWHM) or when the PSF fits as well; unresolved
    below 2 px (FWHM/2) when re is not measured at 2 sigma."""
    sers = {"re_pix": np.array([0.2, 1.2, 4.0, 4.0, 1.6, 1.6, 3.0]),
            "re_pix_err": np.array([0.1, 0.05, 0.2, 0.2, 1.0, 0.5, 2.0]),
            "chi2nu": np.full(7, 1.0)}
    nfree = np.full(7, 1007)
    psf = {"chi2": np.array([1200.0, 5000.0, 5000.0, 1002.0, 1100.0, 1100.0, 1100.0])}
    c = classify(sers, psf, nfree=nfree, psf_fwhm_pix=4.0)
    assert c["point"].tolist() == [True, True, False, True, False, False, False]
    assert c["unresolved"].tolist() == [True, True, False, True, True, False, False]
    assert c["dchi2"][3] == pytest.approx(2.0)
    assert np.isnan(c["re_upper"][[2, 5, 6]]).all()
    assert np.isfinite(c["re_upper"][[0, 1, 3, 4]]).all()
    assert c["re_upper"][4] == pytest.approx(np.hypot(1.6 + 1.645 * 1.0, 0.3 * 4.0))
    # a statistical limit given from outside (the profile) replaces re + 1.645 re_err
    c2 = classify(sers, psf, nfree=nfree, psf_fwhm_pix=4.0, re_upper=np.full(7, 2.0))
    assert c2["re_upper"][0] == pytest.approx(np.hypot(2.0, 1.2))
    # a stricter rule flags fewer
    c3 = classify(sers, psf, nfree=nfree, psf_fwhm_pix=4.0, rule={"re_max": 0.1})
    assert c3["point"].tolist() == [True, False, False, True, False, False, False]
    mag, err = point_source_columns({"flux": np.array([100.0, -1.0]),
                                     "flux_err": np.array([1.0, 1.0])}, 27.0)
    assert mag[0] == pytest.approx(22.0) and err[0] == pytest.approx(2.5 / np.log(10) / 100)
    assert np.isnan(mag[1])
    assert np.isnan(point_source_columns({"flux": [1.0], "flux_err": [0.1]}, None)[0]).all()


def test_stars_and_galaxies_separated_with_psf_off_by_5_percent():
    """Stars (S/N 100-5000) are point sources, galaxies with re >= FWHM/2 are not, with the PSF
    given to the fit right, 5% too narrow and 5% too wide (one batch, a PSF per stamp)."""
    rng = np.random.default_rng(3)
    true = moffat(fwhm=3.5)
    fwhm = psf_fwhm(true)[0]
    ns, ng = 4, 4
    x, y = 20 + rng.uniform(-0.5, 0.5, ns + ng), 20 + rng.uniform(-0.5, 0.5, ns + ng)
    re = np.r_[np.full(ns, 1e-3), fwhm * np.array([0.5, 0.7, 1.0, 2.0])]
    p = sersic(x, y, re, n=1.0, q=0.7)
    p["n"] = np.r_[np.ones(ns), [4.0, 1.0, 2.5, 0.6]]
    unit = render(p, true, (S, S))
    snr = np.r_[[100, 400, 1500, 5000], [60, 200, 800, 1500]]
    flux = snr / np.sqrt((unit**2).sum((1, 2)))
    img = unit * flux[:, None, None] + rng.normal(size=unit.shape)
    scales = np.repeat([0.95, 1.0, 1.05], ns + ng)
    img = np.tile(img, (3, 1, 1))
    given = np.stack([moffat(fwhm=3.5 * s) for s in scales])
    sig = np.ones_like(img)
    init = {k: np.tile(v, 3) for k, v in p.items()}  # near the truth (skips the moments)
    init.update(re_pix=np.maximum(init["re_pix"], 0.5), flux=np.tile(flux, 3))
    ser = fit_arrays(img, given, sigma=sig, init=init)
    out = point_source_test(img, given, 1.0 / sig, ser, psf_fwhm_pix=psf_fwhm(given),
                            zeropoint=25.0)
    star = np.tile(np.arange(ns + ng) < ns, 3)
    assert out["point"][star].all(), out["dchi2"]
    assert not out["point"][~star].any()
    assert out["unresolved"][star].all() and not out["unresolved"][~star].any()
    assert np.isfinite(out["re_upper"][star]).all() and np.isnan(out["re_upper"][~star]).all()
    assert (out["re_upper"][star] < fwhm).all()
    true_mag = np.tile(25.0 - 2.5 * np.log10(flux), 3)
    dmag = np.abs(out["psf_mag"] - true_mag)
    # PSF magnitudes of the stars: right within their errors when the PSF is right, within
    # 0.1 mag when it is 5% off (measured ~0.06)
    right = star & (scales == 1.0)
    assert (dmag[right] < 4 * out["psf_mag_err"][right]).all()
    assert dmag[star].max() < 0.1


def test_re_upper_profile_bounds_a_small_galaxy():
    """An unresolved galaxy (re 0.15 FWHM): the profile limit lies above the fitted re, below the
    end of the scan, tighter at S/N 1000 than at S/N 40; with the PSF allowance the reported limit
    is above the true re."""
    rng = np.random.default_rng(4)
    psf = moffat(fwhm=4.0)
    p = sersic(np.full(2, 20.0), np.full(2, 20.0), 0.6, n=1.0, q=0.8)
    unit = render(p, psf, (S, S))
    flux = np.array([40.0, 1000.0]) / np.sqrt((unit**2).sum((1, 2)))
    img = unit * flux[:, None, None] + rng.normal(size=unit.shape)
    init = {**p, "re_pix": np.full(2, 1.0), "flux": flux}
    ser = fit_arrays(img, psf, sigma=np.ones_like(img), init=init)
    up = re_upper_profile(img, psf, np.ones_like(img), ser, re_max=12.0)
    assert (up > ser["re_pix"]).all() and (up < 12.0).all()
    assert up[1] < up[0]
    assert (upper_limit(up, psf_fwhm(psf)[0]) >= 0.6).all()


def test_point_source_test_keeps_masked_and_nonfinite_objects_sane():
    rng = np.random.default_rng(5)
    psf = moffat()
    img = psf_model(psf, [20.0, 20.0], [20.0, 20.0], (S, S)) * 800 + rng.normal(size=(2, S, S))
    img = img + 5.0  # a flat sky, fitted with the Sérsic: subtracted before the PSF fit
    ser = {"sky": np.array([5.0, 5.0]),
           "x": np.array([20.0, np.nan]), "y": np.array([20.0, np.nan]),
           "re_pix": np.array([0.01, np.nan]), "re_pix_err": np.array([0.5, np.nan]),
           "n": np.array([1.0, np.nan]), "q": np.array([1.0, np.nan]),
           "pa_deg": np.array([0.0, np.nan]), "chi2nu": np.array([1.0, np.nan])}
    out = point_source_test(img, psf, np.ones_like(img), ser, psf_fwhm_pix=3.5, zeropoint=0.0)
    assert out["point"].tolist() == [True, False]
    assert out["unresolved"].tolist() == [True, False]
    assert np.isfinite(out["psf_mag"]).all()  # the PSF fit runs even where the Sérsic failed
    assert abs(out["psf_flux"][0] - 800) < 4 * out["psf_flux_err"][0]


def test_real_hsc_psf_shift_matches_renderer(shared_data):
    from astropy.io import fits

    psf = fits.getdata(shared_data / "psf" / "hsc_cosmos_psf_scarlet.fits")[1].astype(float)
    x, y = np.array([30.4, 29.77]), np.array([30.0, 31.31])
    m = psf_model(psf, x, y, (61, 61))
    r = render(sersic(x, y, 1e-3), psf, (61, 61))
    assert np.abs(m - r).max() < 1e-3 * m.max()
    assert 3.0 < psf_fwhm(psf)[0] < 4.5
