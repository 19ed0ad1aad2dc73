"""The guarded refine (issue 13): neighbours subtracted, per-stamp centre bounds, the network
prior by default, accept-or-revert against the network, the N_AT_BOUND / RE_UNCONSTRAINED /
REVERTED flags, errors independent of the image units, native-pixel fits of large inputs, and
a neighbour mask that never goes beyond the other sources' segments."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from psf_helpers import moffat

from galnet.cli import main
from galnet.errors import GalnetValueError
from galnet.fitting.init import auto_mask
from galnet.fitting.lm import fisher_errors, fit_arrays
from galnet.fitting.problem import FitConfig, stamp_bounds
from galnet.fitting.runner import centre_bounds, fit_files
from galnet.flags import Flag
from galnet.profiles.render import render

KEYS = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")


def gal(count: int = 1, **kw) -> dict[str, np.ndarray]:
    p = dict(x=30.2, y=29.7, flux=5000.0, re_pix=4.0, n=1.5, q=0.6, pa_deg=40.0) | kw
    return {k: np.full(count, float(v)) for k, v in p.items()}


def noisy(p, seed, shape=(61, 61), sigma=1.0):
    img = render(p, moffat(), shape)
    return img + np.random.default_rng(seed).normal(0, sigma, img.shape)


@pytest.fixture(scope="module")
def stamps(tmp_path_factory):
    """6 noisy 61x61 stamps and a PSF as files."""
    d = tmp_path_factory.mktemp("guard")
    rng = np.random.default_rng(5)
    n = 6
    p = dict(x=30 + rng.uniform(-1, 1, n), y=30 + rng.uniform(-1, 1, n),
             flux=10 ** rng.uniform(3.4, 4, n), re_pix=rng.uniform(2, 6, n),
             n=rng.uniform(0.8, 3, n), q=rng.uniform(0.4, 0.9, n), pa_deg=rng.uniform(0, 180, n))
    fits.writeto(d / "stamps.fits", noisy(p, 1).astype(np.float32))
    fits.writeto(d / "psf.fits", moffat())
    return d, p


def test_neighbours_are_subtracted():
    target = gal()
    other = gal(x=40.0, y=36.0, flux=20000.0, re_pix=3.0, n=1.0, q=0.9, pa_deg=0.0)
    nb = render(other, moffat(), (61, 61))
    img = noisy(target, 2) + nb
    sig = np.ones_like(img)
    init = {k: v * 1.05 if k in ("flux", "re_pix") else v for k, v in target.items()}
    with_nb = fit_arrays(img, moffat(), sigma=sig, init=init, neighbours=nb)
    without = fit_arrays(img, moffat(), sigma=sig, init=init)
    for k in ("x", "y", "re_pix", "n"):  # the truth, within the errors, once subtracted
        assert abs(with_nb[k][0] - target[k][0]) < 4 * with_nb[f"{k}_err"][0], k
    assert abs(without["re_pix"][0] - 4.0) > 5 * with_nb["re_pix_err"][0]  # else biased
    with pytest.raises(GalnetValueError, match="neighbours"):
        fit_arrays(img, moffat(), sigma=sig, init=init, neighbours=nb[:, :30])


def test_per_stamp_bounds_hold_the_centre():
    p = gal(2)
    img = noisy(p, 3)
    init = dict(p, x=p["x"] + np.array([0.0, 0.0]))
    lo = np.full((2, 5), np.nan)
    hi = np.full((2, 5), np.nan)
    lo[1, 0], hi[1, 0] = 31.0, 32.0  # stamp 1: x held in [31, 32], the truth (30.2) outside
    r = fit_arrays(img, moffat(), sigma=np.ones_like(img), init=init, lo=lo, hi=hi)
    assert abs(r["x"][0] - 30.2) < 0.1 and not r["bound"][0]
    assert 31.0 - 1e-4 <= r["x"][1] <= 31.0 + 1e-3 and r["bound"][1]  # on its own bound
    with pytest.raises(GalnetValueError, match="empty"):
        stamp_bounds((61, 61), 2, lo=lo, hi=np.where(np.isnan(hi), np.nan, 30.0))


def test_centre_bound_follows_the_network_error():
    start = {"x": np.array([30.0, 30.0, -3.0]), "y": np.array([20.0, 20.0, 20.0]),
             "x_err": np.array([0.1, 2.0, np.nan]), "y_err": np.array([0.1, 0.1, 0.1])}
    lo, hi = centre_bounds(start, (61, 61))
    assert np.allclose(hi[:, 0] - lo[:, 0], 2 * np.array([1.5, 6.0, 1.5]))  # max(1.5, 3 err)
    assert lo[2, 0] == -2.0  # a start off the stamp: the box around its nearest stamp point
    lo, hi = centre_bounds(start, (61, 61), radius=5.0)
    assert np.allclose(hi[:, 1] - lo[:, 1], 10.0) and np.isnan(lo[:, 2:]).all()


def test_guard_reverts_to_a_better_reference():
    p = gal(2)
    img = noisy(p, 4)
    sig = np.ones_like(img)
    bad = dict(p, re_pix=np.array([12.0, 4.3]), n=np.array([4.0, 1.5]))
    cfg = FitConfig(max_iter=1, dtype="float64")  # stamp 0 cannot reach the minimum in 1 step
    r = fit_arrays(img, moffat(), sigma=sig, init=bad, reference=p, guard=True, config=cfg)
    assert r["reverted"][0]
    for k in KEYS:
        assert np.isclose(r[k][0], p[k][0], rtol=1e-6, atol=1e-6), k
    assert r["chi2nu"][0] == pytest.approx(r["chi2nu_ref"][0], rel=1e-9)
    crb = fisher_errors(p, moffat(), sig, (61, 61), config=cfg)
    for k in ("x", "re_pix", "n", "q", "flux"):  # errors from the Fisher matrix there
        assert r[f"{k}_err"][0] == pytest.approx(crb[k][0], rel=2e-2), k
    # without the guard the same fit is kept, and worse than the reference
    r2 = fit_arrays(img, moffat(), sigma=sig, init=bad, reference=p, guard=False, config=cfg)
    assert not r2["reverted"].any() and r2["chi2nu"][0] > r2["chi2nu_ref"][0]


def test_guard_keeps_a_better_fit():
    p = gal(3, re_pix=5.0)
    img = noisy(p, 6)
    ref = dict(p, re_pix=p["re_pix"] * 1.3, n=p["n"] * 0.7)
    r = fit_arrays(img, moffat(), sigma=np.ones_like(img), init=ref, reference=ref, guard=True)
    assert not r["reverted"].any()
    assert np.all(r["chi2nu"] < r["chi2nu_ref"])
    assert np.all(np.abs(r["re_pix"] - 5.0) < 4 * r["re_pix_err"])


def test_n_and_re_bound_flags():
    p = gal(n=4.0)
    img = noisy(p, 7)
    hi = np.array([np.nan, np.nan, np.nan, np.nan, 2.0])  # n held at 2 (< 4): at its bound
    r = fit_arrays(img, moffat(), sigma=np.ones_like(img), init=dict(p, n=p["n"] / 2.5), hi=hi)
    assert r["n_bound"][0] and not r["bound"][0] and not r["re_upper"][0]
    assert r["n"][0] == pytest.approx(2.0, rel=1e-3)
    big = gal(flux=3e5, re_pix=300.0, n=0.5, q=0.9)  # flat over the stamp: re unconstrained
    img = noisy(big, 8)
    r = fit_arrays(img, moffat(), sigma=np.ones_like(img), init=dict(big, re_pix=[40.0]))
    assert r["re_upper"][0] or r["re_pix"][0] > 61 / 4


def test_errors_do_not_depend_on_the_units(tmp_path):
    p = gal(2, flux=3000.0)
    img = noisy(p, 9) + 5.0  # a flat sky too
    sig = np.ones_like(img)
    kw = dict(sky="flat", init=dict(p, flux=p["flux"] * 1.1))
    a = fit_arrays(img, moffat(), sigma=sig, **kw)
    s = 1e-11
    b = fit_arrays(img * s, moffat(), sigma=sig * s,
                   **dict(kw, init=dict(kw["init"], flux=kw["init"]["flux"] * s)))
    for k in ("x", "y", "re_pix", "n", "q", "pa_deg"):
        assert np.allclose(b[k], a[k], rtol=1e-4, atol=1e-4), k
        assert np.allclose(b[f"{k}_err"], a[f"{k}_err"], rtol=1e-3), k
    for k in ("flux", "sky"):
        assert np.allclose(b[k], a[k] * s, rtol=1e-4), k
        assert np.allclose(b[f"{k}_err"] / s, a[f"{k}_err"], rtol=1e-3), k
    assert np.allclose(b["chi2nu"], a["chi2nu"], rtol=1e-4)
    # the CLI case of the issue: galnet fit --native --sky flat on an image in physical units
    big = noisy(gal(x=45.3, y=40.2, re_pix=9.0), 10, shape=(81, 91))[0] + 2.0
    for name, f in (("one", 1.0), ("small", s)):
        fits.writeto(tmp_path / f"{name}.fits", (big * f).astype(np.float32))
        fits.writeto(tmp_path / f"{name}_sig.fits", np.full(big.shape, f, np.float32))
    fits.writeto(tmp_path / "psf.fits", moffat())
    t = {}
    for name in ("one", "small"):
        rc = main(["fit", "--native", "--sky", "flat", "--init", "moments", "--images",
                   str(tmp_path / f"{name}.fits"), "--sigma", str(tmp_path / f"{name}_sig.fits"),
                   "--psf", str(tmp_path / "psf.fits"), "--out", str(tmp_path / f"{name}.ecsv"),
                   "-q", "--zeropoint", "27"])
        assert rc == 0
        t[name] = Table.read(tmp_path / f"{name}.ecsv")
    for k in ("re_pix", "n", "q"):
        assert t["small"][k][0] == pytest.approx(t["one"][k][0], rel=1e-3), k
        assert t["small"][f"{k}_err"][0] == pytest.approx(t["one"][f"{k}_err"][0], rel=1e-3), k
    rel = t["small"]["flux_err"][0] / t["small"]["flux"][0]
    assert rel == pytest.approx(t["one"]["flux_err"][0] / t["one"]["flux"][0], rel=1e-3)
    assert rel > 1e-4  # a real error, not ~1e-24


def test_refine_is_guarded_by_default(stamps, tmp_path):
    d, p = stamps
    kw = dict(images=d / "stamps.fits", psf=d / "psf.fits", zeropoint=27.0, progress=False)
    t = fit_files(tmp_path / "g.ecsv", **kw)
    meta = t.meta["fit"]
    assert meta["prior"] and meta["guard"] and meta["centre_radius"] == 1.5
    c, cn = np.asarray(t["chi2nu"]), np.asarray(t["chi2nu_nn"])
    assert np.isfinite(cn).all() and np.all(c <= cn * (1 + 1e-6))  # never worse than the network
    rev = (np.asarray(t["flags"]) & int(Flag.REVERTED)) > 0
    assert np.allclose(c[rev], cn[rev])
    nn = Table.read(tmp_path / "g.ecsv")  # the centre stays within its bound of the network's
    assert "chi2nu_nn" in nn.colnames
    # the old, unguarded refine: no prior, no centre bound; two starts then give one minimum
    plain = fit_files(tmp_path / "p.ecsv", prior=False, guard=False, centre_radius=np.inf, **kw)
    assert not plain.meta["fit"]["prior"]
    mom = fit_files(tmp_path / "m.ecsv", init="moments", **kw)
    assert np.isnan(mom["chi2nu_nn"]).all()
    ok = ~((np.asarray(plain["flags"]) | np.asarray(mom["flags"])) & int(Flag.BOUND_HIT) > 0)
    assert np.all(np.abs(plain["re_pix"] - mom["re_pix"])[ok] < 0.2 * mom["re_pix_err"][ok])


def test_cli_prior_switches(stamps, tmp_path, capsys):
    d, _ = stamps
    args = ["fit", "--images", str(d / "stamps.fits"), "--psf", str(d / "psf.fits"), "-q"]
    assert main(args + ["--no-prior", "--out", str(tmp_path / "a.ecsv")]) == 0
    assert not Table.read(tmp_path / "a.ecsv").meta["fit"]["prior"]
    assert main(args + ["--nn-prior", "--out", str(tmp_path / "b.ecsv")]) == 0
    assert Table.read(tmp_path / "b.ecsv").meta["fit"]["prior"]
    assert main(args + ["--nn-prior", "--no-prior", "--out", str(tmp_path / "c.ecsv")]) == 2
    assert "--no-prior" in capsys.readouterr().err


def test_inputs_larger_than_the_stamp_are_fitted_at_native_pixels(tmp_path):
    p = dict(x=70.4, y=64.8, flux=4e4, re_pix=24.0, n=1.0, q=0.7, pa_deg=30.0)
    img = noisy({k: np.array([v]) for k, v in p.items()}, 11, shape=(131, 141))[0]
    fits.writeto(tmp_path / "big.fits", img.astype(np.float32))
    fits.writeto(tmp_path / "psf.fits", moffat())
    kw = dict(images=tmp_path / "big.fits", psf=tmp_path / "psf.fits", init="moments",
              zeropoint=27.0, progress=False)
    t = fit_files(tmp_path / "auto.ecsv", **kw)  # native="auto": the default
    assert t.meta["provenance"]["options"]["native"] is True
    assert not (int(t["flags"][0]) & int(Flag.REBINNED))
    for k in ("x", "y", "re_pix", "n", "q"):
        assert abs(np.asarray(t[k])[0] - p[k]) < 5 * np.asarray(t[f"{k}_err"])[0], k
    t1 = fit_files(tmp_path / "stamp.ecsv", native=False, **kw)  # the old way: rebinned stamp
    assert t1.meta["provenance"]["options"]["native"] is False
    assert int(t1["flags"][0]) & int(Flag.REBINNED)


def test_auto_mask_stays_within_the_other_segments():
    target = gal()
    other = gal(x=48.0, y=44.0, flux=8000.0, re_pix=2.5, n=1.0, q=0.8, pa_deg=0.0)
    img = noisy(target, 12) + render(other, moffat(), (61, 61))
    sig = np.ones_like(img)
    m0 = auto_mask(img, sig)
    m2 = auto_mask(img, sig, grow=2)
    assert m0.any() and m0.sum() < m2.sum() and not (m0 & ~m2).any()
    yy, xx = np.mgrid[:61, :61]
    assert not m0[0][np.hypot(xx - 30.2, yy - 29.7) < 6].any()  # never the target
    assert m0[0][44, 48]  # the neighbour is masked
    from scipy import ndimage  # masked pixels are detection pixels (3x3 mean > 1.5 sigma/3)
    sm = ndimage.uniform_filter(img[0], 3)
    assert np.all(sm[m0[0]] > 1.5 / 3)
