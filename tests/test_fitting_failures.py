"""The fitter's failures are clean: unfittable stamps are flagged rows, non-finite results are
flagged, model images are written atomically, outputs are checked first, the bounds and first
guesses come from the parameter table (issue 12)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from psf_helpers import moffat

from galnet.cli import main
from galnet.errors import GalnetFileError
from galnet.flags import Flag
from galnet.params import SERSIC
from galnet.profiles.render import render

KEYS = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """5 noisy 61x61 stamps, a PSF, a sigma map with stamp 2 at sigma = 0, a mask with stamp 3
    fully masked, and a copy of the stamps with stamp 4 all NaN."""
    d = tmp_path_factory.mktemp("fitfail")
    rng = np.random.default_rng(7)
    n = 5
    p = dict(x=30 + rng.uniform(-1, 1, n), y=30 + rng.uniform(-1, 1, n),
             flux=np.full(n, 4000.0), re_pix=rng.uniform(2, 5, n), n=rng.uniform(0.8, 3, n),
             q=rng.uniform(0.4, 0.9, n), pa_deg=rng.uniform(0, 180, n))
    img = (render(p, moffat(), (61, 61)) + rng.normal(0, 1, (n, 61, 61))).astype(np.float32)
    fits.writeto(d / "stamps.fits", img)
    fits.writeto(d / "psf.fits", moffat())
    sig = np.ones_like(img)
    sig[2] = 0.0
    fits.writeto(d / "sigma.fits", sig)
    m = np.zeros(img.shape, np.uint8)
    m[3] = 1
    fits.writeto(d / "mask.fits", m)
    bad = img.copy()
    bad[4] = np.nan
    fits.writeto(d / "nan.fits", bad)
    return d


def _fit(d, out, *extra):
    return main(["fit", "--psf", str(d / "psf.fits"), "--out", str(out), "-q",
                 "--zeropoint", "27", *extra])


@pytest.mark.parametrize("init", ["moments", "nn"])
def test_unfittable_stamps_are_flagged_rows_not_a_crash(files, tmp_path, capsys, init):
    """Before: photutils' ValueError ("mask must not be True for every pixel") -> traceback,
    the whole run lost."""
    d = files
    out = tmp_path / "cat.ecsv"
    rc = _fit(d, out, "--images", str(d / "nan.fits"), "--sigma", str(d / "sigma.fits"),
              "--mask", str(d / "mask.fits"), "--init", init)
    assert rc == 0, capsys.readouterr().err
    t = Table.read(out)
    flags = np.asarray(t["flags"])
    for i in (2, 3, 4):  # sigma = 0, fully masked, all NaN
        assert flags[i] & Flag.NONFINITE and flags[i] & Flag.MASKED_CENTRE, (i, flags[i])
        assert all(math.isnan(float(t[k][i])) for k in KEYS)
        assert not t["converged"][i]
    for i in (0, 1):  # the others are fitted
        assert t["converged"][i] and not flags[i] & Flag.NONFINITE
        assert all(np.isfinite(float(t[k][i])) for k in KEYS)
    prov = t.meta["provenance"]
    assert prov["inputs"]["mask"].endswith("mask.fits") and prov["options"]["init"] == init
    if init == "nn":  # the shipped weights, named and hashed
        assert prov["weights"]["name"].endswith(".safetensors")
        assert len(prov["weights"]["sha256"]) == 64


def test_fit_arrays_still_refuses_a_stamp_without_pixels():
    from galnet.errors import GalnetValueError
    from galnet.fitting.lm import fit_arrays

    with pytest.raises(GalnetValueError, match="stamp 0 has no usable pixel"):
        fit_arrays(np.ones((1, 61, 61)), moffat(), sigma=np.zeros((1, 61, 61)))


def test_moments_init_and_auto_mask_survive_empty_stamps():
    from galnet.fitting.init import auto_mask, moments_init

    img = np.random.default_rng(0).normal(0, 1, (2, 61, 61))
    img[1] = np.nan
    m = moments_init(img, moffat())
    assert all(np.isfinite(m[k][0]) for k in KEYS)
    assert all(np.isnan(m[k][1]) for k in KEYS)
    # a NaN centre (no first guess) falls back to the stamp centre
    am = auto_mask(img, np.ones_like(img), centre=(np.array([30.0, np.nan]),
                                                    np.array([30.0, np.nan])))
    assert am[1].all() and am.shape == img.shape


def test_nonfinite_fit_results_are_flagged(files, monkeypatch):
    """A fitted value or error that is not finite raises NONFINITE (before: no flag)."""
    import galnet.fitting.runner as runner
    from galnet.io.cutouts import load_stamps

    real = runner.fit_arrays

    def broken(*a, **kw):
        r = real(*a, **kw)
        r["re_pix_err"][0] = np.inf
        r["q"][1] = np.nan
        return r

    monkeypatch.setattr(runner, "fit_arrays", broken)
    stamps = load_stamps(files / "stamps.fits", files / "psf.fits", zeropoint=27.0)
    t = runner.fit(stamps, init="moments")
    flags = np.asarray(t["flags"])
    assert flags[0] & Flag.NONFINITE and flags[1] & Flag.NONFINITE
    assert not (flags[2:] & Flag.NONFINITE).any()
    assert runner.nonfinite_rows({k: np.asarray(t[k]) for k in t.colnames}).tolist() == \
        [True, True, False, False, False]


def test_save_models_is_one_atomic_file(files, tmp_path, monkeypatch):
    import galnet.fitting.runner as runner
    from galnet.io.models import read_models

    d = files
    out, mod = tmp_path / "cat.ecsv", tmp_path / "models.fits"
    t = runner.fit_files(out, images=d / "stamps.fits", psf=d / "psf.fits", zeropoint=27.0,
                         init="moments", chunk=2, save_models=mod, progress=False)
    mf = read_models(mod)
    models, resid, objects, meta = mf.cube("model"), mf.cube("residual"), mf.objects, mf.meta
    assert models.shape == resid.shape == (5, 61, 61)
    assert list(objects["id"]) == list(t["id"])
    img = fits.getdata(d / "stamps.fits")
    used = ~mf.cube("mask")  # the mask the fit used (auto-masked neighbours too): resid NaN there
    np.testing.assert_allclose(resid[used], (img - models)[used], atol=1e-3)
    assert np.isnan(resid[~used]).all()
    assert np.abs(resid[used]).std() < 1.5  # the models fit: residuals are noise (sigma = 1)
    assert meta["provenance"]["options"]["save_models"] == str(mod)
    # an interruption after the first chunk: nothing under either name, no temporary files
    calls = []
    real = runner.fit

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(runner, "fit", interrupted)
    out2, mod2 = tmp_path / "cat2.ecsv", tmp_path / "models2.fits"
    with pytest.raises(KeyboardInterrupt):
        runner.fit_files(out2, images=d / "stamps.fits", psf=d / "psf.fits", zeropoint=27.0,
                         init="moments", chunk=2, save_models=mod2, progress=False)
    assert len(calls) == 2
    assert not out2.exists() and not mod2.exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_outputs_are_checked_before_any_work(files, tmp_path, monkeypatch):
    import galnet.fitting.runner as runner

    def never(*a, **kw):
        raise AssertionError("fitted before checking the output")

    monkeypatch.setattr(runner, "fit", never)
    out = tmp_path / "cat.ecsv"
    out.write_text("old")
    kw = dict(images=files / "stamps.fits", psf=files / "psf.fits", init="moments")
    with pytest.raises(GalnetFileError, match="exists"):
        runner.fit_files(out, **kw)
    with pytest.raises(GalnetFileError, match="does not exist"):
        runner.fit_files(tmp_path / "nowhere" / "cat.ecsv", **kw)
    with pytest.raises(GalnetFileError, match="exists"):
        runner.fit_files(tmp_path / "new.ecsv", save_models=out, **kw)
    assert out.read_text() == "old"


def test_provenance_in_the_catalogue(files, tmp_path):
    from galnet.fitting.runner import fit_files

    t = fit_files(tmp_path / "cat.fits", images=files / "stamps.fits", psf=files / "psf.fits",
                  init="moments", progress=False)
    prov = Table.read(tmp_path / "cat.fits").meta.get("provenance") or t.meta["provenance"]
    assert prov["inputs"]["images"].endswith("stamps.fits")
    assert prov["options"]["init"] == "moments"
    assert prov["sources"]["zeropoint"].startswith("preset")
    assert "galnet_version" in prov


def test_bounds_and_guesses_come_from_the_parameter_table():
    from galnet.fitting.init import moments_init
    from galnet.fitting.problem import fit_bounds, internal_bounds

    b = fit_bounds((61, 81))
    assert b["x"] == (-0.5, 80.5) and b["y"] == (-0.5, 60.5)
    assert b["n"] == SERSIC["n"].fit and b["q"] == SERSIC["q"].fit
    assert b["re_pix"] == (SERSIC["re_pix"].fit[0], 2.0 * 81)
    assert fit_bounds((10000, 10000))["re_pix"][1] == SERSIC["re_pix"].fit[1]
    lo, hi, emax = internal_bounds((61, 81))
    assert math.exp(lo[4]) == pytest.approx(SERSIC["n"].fit[0])
    assert emax == pytest.approx((1 - SERSIC["q"].fit[0]) / (1 + SERSIC["q"].fit[0]))
    # first guesses: a very flat, very concentrated source and a disk stay in the guess ranges
    p = dict(x=[30.0, 30.0], y=[30.0, 30.0], flux=[5e4, 5e4], re_pix=[12.0, 3.0], n=[9.0, 0.3],
             q=[0.03, 1.0], pa_deg=[10.0, 0.0])
    img = render({k: np.array(v) for k, v in p.items()}, moffat(), (61, 61))
    m = moments_init(img + np.random.default_rng(1).normal(0, 1, img.shape), moffat())
    for k in ("n", "q"):
        lo_g, hi_g = SERSIC[k].guess
        assert np.all((m[k] >= lo_g) & (m[k] <= hi_g)), (k, m[k])
    assert np.all((m["pa_deg"] >= 0) & (m["pa_deg"] < SERSIC["pa_deg"].cyclic))
