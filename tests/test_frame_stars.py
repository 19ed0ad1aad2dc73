"""Bright stars in frame mode: flagged POINT_SOURCE, reported from the PSF fit (position, flux,
magnitude and errors; ``re_pix`` an upper limit, UNRESOLVED), never NONFINITE when the PSF fit
is finite, and the galaxies of the frame untouched by that logic."""

from __future__ import annotations

import numpy as np
import pytest
from test_frame import gaussian_psf

from galnet.flags import Flag

ZP = 27.0
#: 2 galaxies (S/N ~ 100-200) and 2 bright stars (S/N 2000 each on a unit-sigma sky).
GAL = dict(x=np.array([40.3, 110.6]), y=np.array([45.1, 100.4]), flux=np.array([3000.0, 4000.0]),
           re_pix=np.array([5.0, 4.0]), n=np.array([1.5, 2.5]), q=np.array([0.6, 0.8]),
           pa_deg=np.array([30.0, 120.0]))
STARS = np.array([[120.0, 35.0], [45.0, 120.0]])  # integer pixels: the PSF is placed exactly


@pytest.fixture(scope="module")
def star_frame():
    from galnet.profiles.render import render

    psf = gaussian_psf()
    img = render(GAL, psf, (160, 160)).sum(axis=0)
    flux = 2000.0 / np.sqrt((psf**2).sum())  # S/N 2000 with sigma 1
    h = psf.shape[0] // 2
    for x, y in STARS.astype(int):
        img[y - h:y + h + 1, x - h:x + h + 1] += flux * psf
    rng = np.random.default_rng(5)
    img = (img + rng.normal(0.0, 1.0, img.shape)).astype(np.float32)
    return img, psf, flux


@pytest.fixture(scope="module")
def star_cat(star_frame):
    from galnet.frame import run_frame

    img, psf, _ = star_frame
    return run_frame(img, psf, sigma=np.ones(img.shape), pixel_scale=0.2, zeropoint=ZP,
                     refine=True, progress=False)


def _row(t, x, y) -> int:
    d = np.hypot(np.asarray(t["x"].value) - x, np.asarray(t["y"].value) - y)
    assert d.min() < 1.0, (x, y, d.min())
    return int(np.argmin(d))


def test_stars_reported_from_psf_fit(star_cat, star_frame):
    t = star_cat
    _, _, flux = star_frame
    assert "PSF fit" in t["mag"].info.description
    assert "upper limit" in t["re_pix"].info.description
    mag_true = ZP - 2.5 * np.log10(flux)
    for x, y in STARS:
        i = _row(t, x, y)
        f = int(t["flags"][i])
        assert f & Flag.POINT_SOURCE and f & Flag.UNRESOLVED, Flag(f)
        assert not f & Flag.NONFINITE, Flag(f)
        for c in ("x", "y", "mag", "flux", "re_pix"):
            assert np.isfinite(t[c][i].value) and np.isfinite(t[f"{c}_err"][i].value) or \
                c == "re_pix", c
        assert abs(t["mag"][i].value - mag_true) < 0.02, (t["mag"][i], mag_true)
        assert t["mag"][i].value == pytest.approx(t["psf_mag"][i].value, abs=1e-9)
        assert 0 < t["mag_err"][i].value < 0.01
        assert abs(t["x"][i].value - x) < 0.05 and abs(t["y"][i].value - y) < 0.05
        assert 0 < t["x_err"][i].value < 0.05
        # re_pix is the upper limit: finite, below the PSF's FWHM (3 px)
        assert 0 < t["re_pix"][i].value < 3.0
        for c in ("n", "q", "pa_deg"):  # the Sérsic's, kept (meaningless for a star)
            assert np.isfinite(t[c][i])


def test_galaxies_not_touched(star_cat):
    t = star_cat
    for k in range(2):
        i = _row(t, GAL["x"][k], GAL["y"][k])
        f = int(t["flags"][i])
        assert not f & (Flag.POINT_SOURCE | Flag.NONFINITE), Flag(f)
        assert abs(t["re_pix"][i].value / GAL["re_pix"][k] - 1) < 0.1
        mag_true = ZP - 2.5 * np.log10(GAL["flux"][k])
        assert abs(t["mag"][i].value - mag_true) < 0.05
        # the galaxy's mag is the Sérsic's, not the PSF model's (which misses light)
        assert t["psf_mag"][i].value > t["mag"][i].value + 0.1


def test_use_point_fits_unit():
    """Rows flagged POINT_SOURCE with a finite PSF fit take its values; a star whose PSF fit
    failed keeps the Sérsic's (and may be NONFINITE); the upper limit falls back to the
    point-source radius bound when the test gave none."""
    from galnet.fitting.pointsource import POINT_RULE
    from galnet.frame.catalogue import use_point_fits

    n = 3
    res = {k: np.full(n, 1.0) for k in ("x", "y", "flux", "re_pix")}
    res.update({f"{k}_err": np.full(n, np.nan) for k in ("x", "y", "flux", "re_pix")})
    flags = np.array([int(Flag.POINT_SOURCE), int(Flag.POINT_SOURCE), 0], np.int64)
    m = dict(psf_x=np.array([5.0, np.nan, 7.0]), psf_y=np.array([6.0, 1.0, 8.0]),
             psf_flux=np.array([100.0, 100.0, 100.0]), psf_x_err=np.full(n, 0.01),
             psf_y_err=np.full(n, 0.01), psf_flux_err=np.full(n, 1.0),
             re_upper=np.array([np.inf, 0.7, np.nan]))
    ok = use_point_fits(res, flags, m, fwhm=3.0)
    assert ok.tolist() == [True, False, False]
    assert res["x"][0] == 5.0 and res["flux"][0] == 100.0 and res["x_err"][0] == 0.01
    assert res["re_pix"][0] == pytest.approx(np.hypot(POINT_RULE["re_max"],
                                                      POINT_RULE["re_sys"]) * 3.0)
    assert res["x"][1] == 1.0 and res["x"][2] == 1.0 and np.isnan(res["flux_err"][2])
    assert flags[0] & Flag.UNRESOLVED and not flags[2] & Flag.UNRESOLVED


def test_no_light_no_star():
    """A source whose fits went to zero flux fits a PSF "as well" as its Sérsic: not a star."""
    from galnet.fitting.pointsource import classify

    sersic = dict(re_pix=np.array([6.5, 0.3]), re_pix_err=np.array([1.0, 0.1]),
                  chi2nu=np.array([1.0, 1.0]))
    psf = dict(chi2=np.array([993.0, 993.0]), flux=np.array([-3.0, 50.0]))
    c = classify(sersic, psf, nfree=1000, psf_fwhm_pix=3.0)
    assert c["point"].tolist() == [False, True]
    assert classify(sersic, {"chi2": psf["chi2"]}, nfree=1000, psf_fwhm_pix=3.0)["point"][0]
