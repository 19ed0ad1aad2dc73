"""The frame refine fits a flat local sky with each source (galnet.frame.pipeline.LOCAL_SKY):
a pedestal left under a galaxy goes into ``sky``, not into its wings."""

import numpy as np
import pytest
from test_frame import gaussian_psf  # noqa: I001

from galnet.frame.measure import local_sky


def test_local_sky_is_the_weighted_mean_residual():
    rng = np.random.default_rng(1)
    data = rng.normal(0.0, 1.0, (2, 21, 21)) + np.array([3.0, -1.0])[:, None, None]
    own = np.zeros_like(data)
    own[:, 10, 10] = 5.0
    data[:, 10, 10] += 5.0
    sigma = np.ones_like(data)
    sigma[:, :, :5] = 1e6  # effectively no weight
    mask = np.zeros(data.shape, bool)
    mask[1, :, 15:] = True
    sky = local_sky(data, sigma, mask, own, np.zeros_like(data))
    for i in range(2):
        w = np.where(mask[i], 0.0, 1.0 / sigma[i] ** 2)
        assert sky[i] == pytest.approx((w * (data[i] - own[i])).sum() / w.sum())
    assert sky[0] == pytest.approx(3.0, abs=0.15) and sky[1] == pytest.approx(-1.0, abs=0.15)


def test_pedestal_under_a_galaxy_goes_into_sky(monkeypatch):
    """A galaxy on a local pedestal (a broad, faint source under it, partly taken by the frame's
    Background2D) in a frame: the refine reports what is left of it in ``sky``, the radius is
    closer to the truth than without the local sky, chi2nu <= the network's."""
    import galnet.frame.pipeline as pipeline
    from galnet.frame import run_frame
    from galnet.profiles.render import render

    truth = dict(x=np.array([80.2]), y=np.array([79.7]), flux=np.array([4000.0]),
                 re_pix=np.array([5.0]), n=np.array([2.0]), q=np.array([0.7]),
                 pa_deg=np.array([40.0]))
    psf = gaussian_psf()
    img = render(truth, psf, (160, 160)).sum(axis=0)
    yy, xx = np.mgrid[:160, :160]
    img = img + 0.6 * np.exp(-((xx - 80) ** 2 + (yy - 80) ** 2) / (2 * 60.0**2))
    img = img + np.random.default_rng(2).normal(0.0, 1.0, img.shape)
    def run():
        t = run_frame(img.astype(np.float32), psf, sigma=np.ones(img.shape), pixel_scale=0.2,
                      zeropoint=27.0, refine=True, progress=False)
        return t, int(np.argmin(np.hypot(t["x"].value - 80.2, t["y"].value - 79.7)))

    t, i = run()
    assert "sky" in t.colnames and np.isfinite(t["sky"][i])
    assert 0.05 < float(t["sky"][i]) < 0.6, float(t["sky"][i])
    err = abs(float(t["re_pix"].value[i]) / 5.0 - 1)
    assert float(t["chi2nu"][i]) <= float(t["chi2nu_nn"][i]) * (1 + 1e-6)
    monkeypatch.setattr(pipeline, "LOCAL_SKY", False)
    t0, i0 = run()
    assert "sky" not in t0.colnames
    err0 = abs(float(t0["re_pix"].value[i0]) / 5.0 - 1)
    assert err < err0, (err, err0)


def test_sky_prior_holds_the_flat_sky_near_zero():
    """FitConfig.sky_prior: a Gaussian prior on the fitted flat sky (units of the stamp's
    median noise); without it the sky follows a pedestal, with a tight one it stays near 0."""
    from dataclasses import replace

    from galnet.fitting.lm import fit_arrays
    from galnet.fitting.problem import DEFAULT_FIT
    from galnet.profiles.render import render

    truth = dict(x=np.array([30.0]), y=np.array([30.0]), flux=np.array([3000.0]),
                 re_pix=np.array([4.0]), n=np.array([1.5]), q=np.array([0.8]),
                 pa_deg=np.array([20.0]))
    psf = gaussian_psf()
    img = render(truth, psf, (61, 61)) + 0.5
    img = img + np.random.default_rng(5).normal(0.0, 1.0, img.shape)
    init = {k: v * (1.1 if k == "re_pix" else 1.0) for k, v in truth.items()}
    free = fit_arrays(img, psf, sigma=np.ones(img.shape), init=init, sky="flat")
    held = fit_arrays(img, psf, sigma=np.ones(img.shape), init=init, sky="flat",
                      config=replace(DEFAULT_FIT, sky_prior=0.002))
    assert abs(free["sky"][0] - 0.5) < 0.1
    assert abs(held["sky"][0]) < 0.2 * abs(free["sky"][0])
