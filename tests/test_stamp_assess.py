"""Point sources and MISFIT in the stamp path (issue 13 items 4, 5; galnet.fitting.assess):
galnet.predict, galnet.predict(refine=True), galnet.fit and ``galnet predict --refine``."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from psf_helpers import moffat

import galnet
from galnet.cli import main
from galnet.fitting.assess import ASSESS_COLUMNS, assess_stamps, point_and_misfit
from galnet.flags import Flag
from galnet.profiles.render import render

S, FWHM, ZP = 61, 3.5, 27.0
PSF = moffat(25, FWHM)
POINT = int(Flag.POINT_SOURCE)
UNRES = int(Flag.UNRESOLVED)
MISFIT = int(Flag.MISFIT)


def _profile(re, n=1.0, q=0.7):
    p = dict(x=np.r_[30.2], y=np.r_[29.7], re_pix=np.r_[re], n=np.r_[n], q=np.r_[q],
             pa_deg=np.r_[30.0], flux=np.r_[1.0])
    return render(p, PSF, (S, S))[0]


@pytest.fixture(scope="module")
def stamps():
    """A star (S/N 500), a resolved galaxy (re = 2 FWHM, S/N 200), an unresolved one
    (re = 0.1 FWHM, S/N 200); sigma = 1. Returns (images, sigma, true fluxes, true re)."""
    shapes = [_profile(1e-3, q=1.0), _profile(2 * FWHM), _profile(0.1 * FWHM)]
    snr = np.array([500.0, 200.0, 200.0])
    flux = snr / np.array([np.sqrt((s**2).sum()) for s in shapes])
    clean = np.stack([f * s for f, s in zip(flux, shapes, strict=True)])
    images = clean + np.random.default_rng(3).normal(size=clean.shape)
    return images, np.ones_like(images), flux, np.array([0.0, 2 * FWHM, 0.1 * FWHM])


def _check(t, flux, re_true, *, resolved_clean: bool):
    assert all(k in t.colnames for k in ASSESS_COLUMNS)
    assert str(t["psf_mag"].unit) == "mag"
    f = np.asarray(t["flags"])
    # the star: POINT_SOURCE, psf_mag within 0.02 mag of the truth
    assert f[0] & POINT and f[0] & UNRES
    assert abs(t["psf_mag"].value[0] - (ZP - 2.5 * np.log10(flux[0]))) < 0.02
    # the resolved galaxy: neither point source nor unresolved (and no MISFIT after a fit)
    assert not f[1] & (POINT | UNRES)
    if resolved_clean:
        assert not f[1] & MISFIT
    assert np.isfinite(t["rff"][1]) and np.isfinite(t["asym"][1])
    # the unresolved galaxy: UNRESOLVED, re_pix an upper limit at or above the truth
    assert f[2] & UNRES
    assert t["re_pix"].value[2] >= re_true[2]


def test_predict_flags_and_columns(stamps, tiny_model_or_default):
    images, sigma, flux, re = stamps
    t = galnet.predict(images, PSF, sigma=sigma, zeropoint=ZP, pixel_scale=0.2,
                       model=tiny_model_or_default)
    _check(t, flux, re, resolved_clean=False)
    assert not np.any(np.asarray(t["flags"]) & MISFIT)  # MISFIT only after a fit
    off = galnet.predict(images, PSF, sigma=sigma, zeropoint=ZP, pixel_scale=0.2,
                         model=tiny_model_or_default, point_test=False)
    assert not np.any(np.asarray(off["flags"]) & (POINT | UNRES))
    assert np.all(np.isnan(off["psf_mag"].value)) and np.all(np.isfinite(off["rff"]))


def test_refine_and_fit_flags_and_columns(stamps, tiny_model_or_default):
    images, sigma, flux, re = stamps
    t = galnet.predict(images, PSF, sigma=sigma, zeropoint=ZP, pixel_scale=0.2,
                       model=tiny_model_or_default, refine=True)
    _check(t, flux, re, resolved_clean=True)
    assert t.meta["fit"]["point_test"] is True
    t = galnet.fit(images, PSF, sigma=sigma, zeropoint=ZP, pixel_scale=0.2, init="moments")
    _check(t, flux, re, resolved_clean=True)


@pytest.fixture(scope="module")
def tiny_model_or_default():
    """The shipped weights (the point test needs a sensible first guess)."""
    from galnet.nn.model import DEFAULT_WEIGHTS

    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("shipped weights absent")
    return None


def test_misfit_flags_a_two_component_galaxy():
    """A bulge + disk with different radii fitted by a single Sérsic: MISFIT; the same data
    with the true model: not flagged (the core, with a noise map that holds the source noise)."""
    rng = np.random.default_rng(5)
    disk = 4000 * _profile(10.0, n=1.0, q=0.5)
    bulge = 4000 * _profile(1.5, n=4.0, q=0.9)
    sig = np.ones((2, S, S))
    data = np.stack([disk + bulge, disk]) + rng.normal(size=sig.shape)
    wrong = 8000 * _profile(4.0, n=2.0, q=0.6)  # a poor single Sérsic of the bulge + disk
    own = np.stack([wrong, disk])
    p = {k: np.r_[v, v] for k, v in dict(x=30.2, y=29.7, re_pix=10.0, re_pix_err=0.1, n=1.0,
                                         q=0.5, pa_deg=30.0, chi2nu=1.0, snr=300.0).items()}
    out = point_and_misfit(data, sig, np.zeros(sig.shape, bool), own, None, PSF, p, fwhm=FWHM,
                           zeropoint=ZP)
    assert out["misfit"].tolist() == [True, False]
    assert out["rff"][0] > 5 * out["rff_err"][0]


class _Batch:  # the StampBatch attributes assess_stamps reads
    def __init__(self, images, sigma, meta):
        self.images, self.sigma, self.meta = images, sigma, meta
        self.mask = np.zeros(images.shape, bool)
        self.psfs, self.zeropoint = PSF[None], ZP


def test_misfit_noise_rule_for_stamps():
    """Bright single Sérsics (S/N ~ 700) with source noise: a sky-only sigma gets the allowance
    of galnet.quality.assumed_gain (not flagged; flagged without it), and a map that holds a
    larger source noise (a low gain) is kept as it is (not flagged)."""
    rng = np.random.default_rng(7)
    n = 6
    model = np.repeat(20000 * _profile(4.0, n=1.5)[None], n, 0)
    res = {k: np.full(n, v) for k, v in dict(x=30.2, y=29.7, re_pix=4.0, re_pix_err=0.05,
                                             n=1.5, q=0.7, pa_deg=30.0, chi2nu=1.0).items()}
    res["snr"] = np.full(n, np.sqrt((model[0] ** 2).sum()))

    def flagged(gain_true, sigma, meta, **kw):
        data = model + rng.normal(size=model.shape) * np.sqrt(1 + model / gain_true)
        f = np.zeros(n, np.int64)
        out = assess_stamps(_Batch(data, sigma, meta), dict(res), f, model, point_test=False)
        return int((f & MISFIT != 0).sum()), out

    one = np.ones(model.shape)
    assert flagged(30.0, one, {})[0] == 0  # sky rms only: the allowance (G = 15)
    data = model + rng.normal(size=model.shape) * np.sqrt(1 + model / 30.0)
    bare = point_and_misfit(data, one, np.zeros(model.shape, bool), model, None, PSF, res,
                            fwhm=FWHM, zeropoint=ZP, point_test=False)  # no allowance
    assert bare["misfit"].sum() >= n - 1
    full = np.sqrt(1 + model / 3.0)  # a complete map, gain 3 (more than the allowance)
    assert flagged(3.0, full, {"sigma": "map"})[0] == 0
    assert flagged(3.0, one, {})[0] >= n - 1  # the same data, sky-only sigma: not enough


def test_cli_predict_refine_writes_columns(stamps, tmp_path, tiny_model_or_default):
    images, sigma, flux, re = stamps
    fits.writeto(tmp_path / "stamps.fits", images.astype(np.float32))
    fits.writeto(tmp_path / "sigma.fits", sigma.astype(np.float32))
    fits.writeto(tmp_path / "psf.fits", PSF.astype(np.float32))
    out = tmp_path / "cat.ecsv"
    base = ["predict", "--images", str(tmp_path / "stamps.fits"), "--psf",
            str(tmp_path / "psf.fits"), "--sigma", str(tmp_path / "sigma.fits"),
            "--zeropoint", str(ZP), "--pixel-scale", "0.2", "-q"]
    assert main([*base, "--refine", "--out", str(out)]) == 0
    t = Table.read(out)
    assert all(k in t.colnames for k in ASSESS_COLUMNS)
    assert t["flags"][0] & POINT and t["flags"][2] & UNRES
    assert t.meta["provenance"]["options"]["point_test"] is True
    out2 = tmp_path / "cat2.ecsv"
    assert main([*base, "--no-point-test", "--out", str(out2)]) == 0
    t2 = Table.read(out2)
    assert all(k in t2.colnames for k in ASSESS_COLUMNS)
    assert not np.any(np.asarray(t2["flags"]) & POINT)
    assert t2.meta["provenance"]["options"]["point_test"] is False
