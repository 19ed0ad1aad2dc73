"""The misfit statistics and flag (galnet.quality): exact values on noise-free residuals, noise
normalisation, masks, the decision rule, the fitter end to end, speed, the calibration record."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import numpy as np
import pytest

import galnet
from galnet.errors import GalnetValueError
from galnet.quality import MISFIT_THRESHOLDS, STAT_KEYS, misfit, residual_stats

ROOT = Path(__file__).resolve().parents[1]
_r = np.arange(25) - 12.0
PSF = np.exp(-(_r[None, :] ** 2 + _r[:, None] ** 2) / (2 * 1.5**2))
PSF /= PSF.sum()


def _params(rng, N, **fixed):
    p = dict(x=30 + rng.uniform(-1.5, 1.5, N), y=30 + rng.uniform(-1.5, 1.5, N),
             flux=np.full(N, 1000.0), re_pix=rng.uniform(2, 8, N), n=rng.uniform(0.6, 4, N),
             q=rng.uniform(0.3, 1, N), pa_deg=rng.uniform(0, 180, N))
    p.update({k: np.broadcast_to(np.asarray(v, float), (N,)).copy() for k, v in fixed.items()})
    return p


def _stats(data, model, sigma, p, mask=None):
    return residual_stats(data, model, sigma, mask, x=p["x"], y=p["y"], re=p["re_pix"], q=p["q"],
                          pa_deg=p["pa_deg"])


def test_noise_only_residuals_are_normalised():
    """A perfect model: rff and asym are ~N(0, err) at any S/N, and almost nothing is flagged."""
    rng = np.random.default_rng(0)
    p = _params(rng, 300)
    model = galnet.render(p, PSF, (61, 61))
    sig = rng.uniform(0.2, 3.0, 300)[:, None, None] * np.ones(model.shape)
    data = model + rng.normal(size=model.shape) * sig
    st = _stats(data, model, sig, p)
    assert set(STAT_KEYS) <= set(st)
    for k in ("rff", "asym"):
        z = st[k] / st[f"{k}_err"]
        assert abs(z.mean()) < 0.2 and 0.8 < z.std() < 1.2, (k, z.mean(), z.std())
    assert 0.8 < np.median(st["chi2nu_in"]) < 1.2
    assert misfit(st, np.full(300, 100.0)).mean() <= 0.02  # ~3-sigma tests: ~0.3% expected


def test_exact_values_without_noise():
    """rff of a model 10% too faint is 0.1/0.9; a clump adds its flux / F to rff and asym; a
    point-symmetric residual (wrong n, centred on a half pixel) has no asymmetry."""
    p = _params(np.random.default_rng(1), 1, x=30.5, y=29.5, re_pix=5.0, q=0.6, pa_deg=30.0,
                n=1.0)
    model = galnet.render(p, PSF, (61, 61))
    sig = np.full(model.shape, 1e-9)
    st = _stats(model, 0.9 * model, sig, p)
    assert st["rff"][0] == pytest.approx(0.1 / 0.9, rel=1e-3)
    assert abs(st["asym"][0]) < 1e-4  # 0.1 D is symmetric about the centre

    other = galnet.render({**p, "n": np.array([2.5])}, PSF, (61, 61))  # symmetric residual
    st = _stats(other, model, sig, p)
    assert st["rff"][0] > 0.02 and abs(st["asym"][0]) < 1e-4

    clump = np.zeros_like(model)
    clump[0, 33, 27] = 25.0  # inside the 2 re aperture, its twin too
    st = _stats(model + clump, model, sig, p)
    F = model[0][_aperture(p)].sum()
    assert st["rff"][0] == pytest.approx(25.0 / F, rel=1e-3)
    assert st["asym"][0] == pytest.approx(25.0 / F, rel=1e-3)


def _aperture(p):
    """The 2 re elliptical aperture of one galaxy (independent of galnet.quality's code)."""
    yy, xx = np.mgrid[:61, :61]
    dx, dy = xx - p["x"][0], yy - p["y"][0]
    pa = np.deg2rad(p["pa_deg"][0])
    along, across = -np.sin(pa) * dx + np.cos(pa) * dy, np.cos(pa) * dx + np.sin(pa) * dy
    a, b = max(2 * p["re_pix"][0], 4.0), max(2 * p["re_pix"][0] * p["q"][0], 4.0)
    return (along / a) ** 2 + (across / b) ** 2 <= 1


def test_masks_nonfinite_and_empty():
    p = _params(np.random.default_rng(2), 2, x=30.0, y=30.0, re_pix=4.0, q=1.0, pa_deg=0.0)
    model = galnet.render(p, PSF, (61, 61))
    data = model.copy()
    data[:, 33, 27] += 25.0
    sig = np.full(model.shape, 1e-9)
    mask = np.zeros(model.shape, bool)
    mask[0, 33, 27] = True  # the clump masked in stamp 0: its twin has no pair either
    data[1, 10, 10] = np.nan  # outside the aperture: ignored
    st = _stats(data, model, sig, p, mask)
    assert abs(st["asym"][0]) < 1e-5 and abs(st["rff"][0]) < 1e-5
    assert st["asym"][1] > 0.01 and np.isfinite(st["rff"][1])
    assert st["npix"][0] == st["npix"][1] - 1
    sig_bad = np.where(np.arange(2)[:, None, None] == 0, np.inf, sig)  # stamp 0 unusable
    st = _stats(data, model, sig_bad, p)
    assert np.isnan(st["rff"][0]) and np.isnan(st["asym"][0]) and st["npix"][0] == 0
    assert not misfit(st, 1e3)[0]
    with pytest.raises(GalnetValueError, match="model has shape"):
        residual_stats(data, model[:, :60], sig, x=30, y=30, re=4, q=1, pa_deg=0)
    with pytest.raises(GalnetValueError, match="x has 3 values"):
        residual_stats(data, model, sig, x=[1, 2, 3], y=30, re=4, q=1, pa_deg=0)
    one = residual_stats(data[1], model[1], sig[1], x=30, y=30, re=4, q=1, pa_deg=0)
    assert one["rff"].shape == (1,) and one["rff"][0] == pytest.approx(st["rff"][1], rel=1e-6)


def test_misfit_rule():
    t = dict(rff=0.05, asym=0.03, k=3.0, snr_min=20.0)
    st = dict(rff=np.array([0.06, 0.06, 0.0, 0.0, np.nan, 0.06]),
              rff_err=np.array([0.0, 0.01, 0.0, 0.0, np.nan, 0.0]),
              asym=np.array([0.0, 0.0, 0.04, 0.04, np.nan, 0.0]),
              asym_err=np.array([0.0, 0.0, 0.0, 0.01, np.nan, 0.0]))
    snr = np.array([50, 50, 50, 50, 50, 10.0])
    assert misfit(st, snr, t).tolist() == [True, False, True, False, False, False]
    with pytest.raises(GalnetValueError, match="stats lack"):
        misfit({"rff": st["rff"]}, snr)


def test_fitted_clumpy_galaxies_flagged_single_sersic_not():
    """End to end with galnet's fitter: bright disks with three clumps (15% of the flux) are
    flagged MISFIT, the same disks without clumps are not."""
    from galnet.fitting.lm import fit_arrays

    rng = np.random.default_rng(3)
    N = 6
    p = _params(rng, N, n=1.0, re_pix=6.0, flux=5000.0)
    disk = galnet.render(p, PSF, (61, 61))
    clumps = np.zeros_like(disk)
    for i in range(N):
        for _ in range(3):
            cx, cy = p["x"][i] + rng.uniform(-6, 6), p["y"][i] + rng.uniform(-6, 6)
            clumps[i] += galnet.render(dict(x=cx, y=cy, flux=250.0, re_pix=0.5, n=1.0, q=1.0,
                                            pa_deg=0.0), PSF, (61, 61))[0]
    noise = rng.normal(size=disk.shape)
    sig = np.ones(disk.shape)
    for img, want in ((disk + noise, False), (disk + clumps + noise, True)):
        res = fit_arrays(img, PSF, sigma=sig, init={k: v.copy() for k, v in p.items()},
                         models=True)
        st = residual_stats(img, res["model"], sig, None, x=res["x"], y=res["y"],
                            re=res["re_pix"], q=res["q"], pa_deg=res["pa_deg"])
        flags = misfit(st, res["snr"])
        assert (flags == want).all(), (want, st["rff"], st["asym"], res["snr"])


def test_fast_enough():
    """1000 stamps of 61x61 (target 0.1 s on a free core; the bound allows a busy machine)."""
    rng = np.random.default_rng(4)
    N = 1000
    model = rng.uniform(0, 1, (N, 61, 61))
    data = model + rng.normal(size=model.shape)
    sig = np.ones(model.shape)
    p = _params(rng, N)
    _stats(data[:10], model[:10], sig[:10], {k: v[:10] for k, v in p.items()})  # warm up
    t = time.process_time()
    misfit(_stats(data, model, sig, p), 100.0)
    assert time.process_time() - t < 0.6


def test_thresholds_are_those_the_calibration_measured():
    """MISFIT_THRESHOLDS equal the 'chosen' line recorded in scripts/calibrate_misfit.py."""
    doc = ast.get_docstring(ast.parse((ROOT / "scripts" / "calibrate_misfit.py").read_text()))
    line = next(ln for ln in doc.splitlines() if ln.strip().startswith("chosen:"))
    chosen = ast.literal_eval(line.split("chosen:", 1)[1].strip())
    assert chosen == MISFIT_THRESHOLDS


def test_edge_cases_empty_batch_and_galaxy_off_the_stamp():
    z = np.zeros((0, 61, 61))
    st = residual_stats(z, z, z, x=[], y=[], re=[], q=[], pa_deg=[])
    assert all(st[k].shape == (0,) for k in STAT_KEYS) and misfit(st, []).shape == (0,)
    img = np.ones((2, 61, 61))
    st = residual_stats(img, 0.5 * img, img, x=[30, 500], y=[30, -400], re=[3, 3], q=[1, 1],
                        pa_deg=[0, 0])
    assert np.isfinite(st["rff"][0]) and np.isnan(st["rff"][1]) and st["npix"][1] == 0


def test_gain_adds_the_source_noise_to_a_sky_only_sigma():
    """Bright galaxies with photon noise: a sky-only sigma inflates rff; gain= restores rff ~ 0."""
    rng = np.random.default_rng(5)
    N, gain = 200, 2.0
    p = _params(rng, N, flux=2e5)
    model = galnet.render(p, PSF, (61, 61))
    data = model + rng.normal(size=model.shape) * np.sqrt(1.0 + model / gain)
    sky = np.ones(model.shape)
    z_sky = (_stats(data, model, sky, p)["rff"] / _stats(data, model, sky, p)["rff_err"])
    st = residual_stats(data, model, sky, x=p["x"], y=p["y"], re=p["re_pix"], q=p["q"],
                        pa_deg=p["pa_deg"], gain=gain)
    z = st["rff"] / st["rff_err"]
    assert np.median(z_sky) > 10 and abs(np.median(z)) < 0.5
    with pytest.raises(GalnetValueError, match="gain"):
        residual_stats(data, model, sky, x=p["x"], y=p["y"], re=p["re_pix"], q=p["q"],
                       pa_deg=p["pa_deg"], gain=0.0)
