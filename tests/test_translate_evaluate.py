"""Tests of galnet.translate.evaluate: photo-z, preservation, regridding, colour, structure and
pixel probes of a translation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.table import Table

from galnet.errors import GalnetValueError
from galnet.translate.evaluate import (
    RECORD_KEYS,
    asinh_mag,
    colour_gradient_error,
    colour_profile,
    evaluate_translation,
    photoz_metrics,
    pixel_colour_error,
    pixel_metrics,
    preservation,
    preservation_gain,
    regrid,
    structure_deltas,
    structure_fits,
    structure_reference,
)


def _gauss(S: int, x0: float, y0: float, sigma: float, flux: float = 1.0) -> np.ndarray:
    yy, xx = np.mgrid[:S, :S].astype(float)
    g = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    return flux * g / (2 * math.pi * sigma**2)


def _centroid(img: np.ndarray) -> tuple[float, float]:
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    return float((img * xx).sum() / img.sum()), float((img * yy).sum() / img.sum())


# ---- photo-z and preservation ----------------------------------------------------------------
def test_photoz_metrics_hand_made():
    dz = np.array([0.0, 0.0, 0.01, -0.01, 0.2])
    z_true = np.ones(5)
    z_phot = z_true + dz * (1 + z_true)  # dz is normalised by 1 + z_true
    m = photoz_metrics(z_true, z_phot, np.array([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert m["n"] == 5
    assert m["sigma_mad"] == pytest.approx(1.4826 * 0.01)  # median |dz - 0| = 0.01
    assert m["bias"] == pytest.approx(0.04)  # mean, not median
    assert m["outlier"] == pytest.approx(0.2)  # one of five with |dz| > 0.05
    assert m["pz_width"] == pytest.approx(0.3)
    m = photoz_metrics([0.5, 0.5], [np.nan, 0.5], [0.1, 0.1])
    assert m["n"] == 1 and m["sigma_mad"] == 0.0
    with pytest.raises(GalnetValueError, match="different lengths"):
        photoz_metrics([0.1], [0.1, 0.2], [0.1])


def test_preservation_and_gain():
    assert preservation(0.02, 0.05, 0.02) == pytest.approx(1.0)
    assert preservation(0.05, 0.05, 0.02) == pytest.approx(0.0)
    assert preservation(0.035, 0.05, 0.02) == pytest.approx(0.5)
    assert math.isnan(preservation(0.03, 0.05, 0.05))
    assert preservation_gain(0.6, 0.4) == pytest.approx(0.5)
    assert math.isnan(preservation_gain(0.6, 0.0))
    assert math.isnan(preservation_gain(0.6, -0.1))


# ---- regridding ------------------------------------------------------------------------------
def test_regrid_centre_alignment_and_flux():
    S, out, fs, ts = 64, 136, 0.396, 0.187
    c = (S - 1) / 2
    imgs = np.stack([_gauss(S, c, c, 1.0, 100.0),  # point-like at the centre
                     _gauss(S, c, c, 4.0, 100.0),  # smooth blob
                     _gauss(S, c + 5, c - 3, 3.0, 100.0)])[:, None].astype(np.float32)
    r = regrid(imgs, fs, ts, out)
    assert r.shape == (3, 1, out, out) and r.dtype == np.float32
    x, y = _centroid(r[0, 0])
    assert x == pytest.approx((out - 1) / 2, abs=0.02)
    assert y == pytest.approx((out - 1) / 2, abs=0.02)
    assert r[1, 0].sum() == pytest.approx(100.0, rel=0.01)
    # an offset source lands at the same sky position: offsets scale by fs / ts, x and y kept
    x, y = _centroid(r[2, 0])
    assert x == pytest.approx((out - 1) / 2 + 5 * fs / ts, abs=0.05)
    assert y == pytest.approx((out - 1) / 2 - 3 * fs / ts, abs=0.05)
    assert r[2, 0].sum() == pytest.approx(100.0, rel=0.01)
    with pytest.raises(GalnetValueError, match="N, C, H, W"):
        regrid(imgs[0], fs, ts, out)


# ---- colours ---------------------------------------------------------------------------------
def test_asinh_mag_finite_and_logarithmic():
    m = asinh_mag(np.array([-5.0, 0.0, 1e4]), 0.1)
    assert np.isfinite(m).all()
    assert m[2] == pytest.approx(-2.5 * math.log10(1e4), abs=1e-6)


def _blob_galaxies(N: int = 2, C: int = 3, S: int = 33) -> np.ndarray:
    """Gaussian galaxies with different band fluxes; outskirts exactly 0 or negative."""
    c = (S - 1) / 2
    prof = _gauss(S, c, c, 3.0, 1.0)
    fluxes = np.array([[200.0, 300.0, 400.0], [50.0, 120.0, 90.0]])[:N, :C]
    img = fluxes[:, :, None, None] * prof[None, None]
    img[:, :, :3, :] = 0.0
    img[:, :, -3:, :] = -0.5
    return img


def test_pixel_colour_error():
    sky = np.array([0.05, 0.05, 0.08])
    truth = _blob_galaxies()
    assert np.allclose(pixel_colour_error(truth, truth, sky), 0.0)
    noisy = truth + np.random.default_rng(0).normal(0, 0.05, truth.shape)
    noisy[0, :, 5, :] = 0.0
    noisy[0, :, 6, :] = -1.0
    e_noise = pixel_colour_error(noisy, truth, sky)
    assert np.isfinite(e_noise).all() and (e_noise > 0).all()
    shifted = noisy.copy()
    shifted[:, 0] *= 1.3  # band 0 brighter: colour 0 off by 2.5 log10 1.3 = 0.28 mag
    e_shift = pixel_colour_error(shifted, truth, sky)
    assert (e_shift > e_noise + 0.05).all()
    empty = np.zeros_like(truth)  # no pixel with S/N >= 3: NaN
    assert np.isnan(pixel_colour_error(empty, empty, sky)).all()
    with pytest.raises(GalnetValueError, match="pred has shape"):
        pixel_colour_error(truth[:1], truth, sky)


def _catalog(N: int, re: float, q: float = 1.0, pa: float = 0.0, dx: float = 0.0,
             dy: float = 0.0) -> Table:
    return Table({"re_disk": np.full(N, re), "q_disk": np.full(N, q), "pa_deg": np.full(N, pa),
                  "dx": np.full(N, dx), "dy": np.full(N, dy)})


def test_colour_profile_geometry():
    """Ellipse conventions: PA CCW from +y (major axis along (-sin pa, cos pa)), centre offset
    by (dx, dy) / scale from (S - 1) / 2, radius in units of re_disk."""
    S, scale = 41, 0.2
    cx, cy = 20 + 2, 20 - 3  # dx = 2 px, dy = -3 px
    img = np.zeros((1, 2, S, S))
    img[0, :, cy, cx - 7] = (100.0, 10.0)  # 7 px along -x
    img[0, :, cy + 7, cx] = (10.0, 100.0)  # 7 px along +y
    sky = np.array([1e-3, 1e-3])
    edges = (0.0, 1.0, 2.0)
    # pa = 90: major axis along -x; re = 10 px, q = 0.5: r = 0.7 (x pixel), 1.4 (y pixel)
    cat = _catalog(1, 10 * scale, q=0.5, pa=90.0, dx=2 * scale, dy=-3 * scale)
    prof = colour_profile(img, sky, cat, scale, edges)
    assert prof.shape == (1, 1, 2)
    assert prof[0, 0] == pytest.approx([-2.5, 2.5], abs=1e-3)
    cat["pa_deg"] = 0.0  # major axis along +y: the two pixels swap annuli
    assert colour_profile(img, sky, cat, scale, edges)[0, 0] == pytest.approx([2.5, -2.5],
                                                                               abs=1e-3)
    cat["re_disk"] = 0.01 * scale  # only the (empty) centre pixel in r < 1; 1 <= r < 2 empty
    prof = colour_profile(img, sky, cat, scale, edges)[0, 0]
    assert prof[0] == pytest.approx(0.0) and np.isnan(prof[1])


def _two_component(S: int = 65, scale: float = 0.2):
    """A red compact bulge plus a blue extended disk (3 bands), and a catalogue."""
    c = (S - 1) / 2
    yy, xx = np.mgrid[:S, :S].astype(float)
    r = np.hypot(xx - c, yy - c)
    re = 8.0  # disk half-light radius, pixels
    bulge = _gauss(S, c, c, 1.5)
    disk = np.exp(-1.678 * r / re)
    disk /= disk.sum()
    red, blue = np.array([20.0, 60.0, 120.0]), np.array([150.0, 120.0, 90.0])
    truth = red[:, None, None] * bulge + blue[:, None, None] * disk
    return truth[None], _catalog(1, re * scale), scale


def test_colour_gradient_error_detects_flat_and_flipped_gradient():
    truth, cat, scale = _two_component()
    sky = np.array([0.01, 0.01, 0.01])
    prof = colour_profile(truth, sky, cat, scale, (0.0, 0.5, 1.0, 2.0))[0]
    grad = prof[:, 0] - prof[:, 2]  # inner minus outer colour: red centre -> positive
    assert (grad > 0.3).all()
    assert np.allclose(colour_gradient_error(truth, truth, sky, cat, scale), 0.0)
    # uniform colour (the total SED everywhere, the r-band shape): error ~ the true gradient
    shape = truth[0, 1] / truth[0, 1].sum()
    flat = truth.sum(axis=(2, 3))[:, :, None, None] * shape[None, None]
    err = colour_gradient_error(flat, truth, sky, cat, scale)
    assert err[0] == pytest.approx(np.mean(np.abs(grad)), rel=0.05)
    # flipped gradient (blue centre, red outskirts): about twice the true gradient
    flipped = truth[:, ::-1].copy()
    err = colour_gradient_error(flipped, truth, sky, cat, scale)
    assert err[0] == pytest.approx(2 * np.mean(np.abs(grad)), rel=0.05)


# ---- structure -------------------------------------------------------------------------------
def test_structure_fits_recovers_sersic_and_deltas():
    from galnet.profiles.render import render
    from galnet.sim.psfs import analytic_psfs

    N, S, scale, sky = 4, 136, 0.187, 0.01
    psf = analytic_psfs(np.full(N, 4.0), np.full(N, 3.0), np.zeros(N, bool), np.zeros(N),
                        np.zeros(N), size=33)
    p = {"x": np.array([67.5, 68.2, 66.9, 67.5]), "y": np.array([67.5, 67.0, 68.3, 67.8]),
         "flux": np.array([300.0, 500.0, 200.0, 400.0]), "re_pix": np.array([6.0, 10.0, 15.0, 8.0]),
         "n": np.array([1.0, 2.0, 4.0, 1.5]), "q": np.array([0.8, 0.5, 0.7, 0.9]),
         "pa_deg": np.array([10.0, 60.0, 120.0, 170.0])}
    img = render(p, psf, (S, S)) + np.random.default_rng(1).normal(0, sky, (N, S, S))
    t = structure_fits(img, psf, sky, scale)
    assert set(t.colnames) >= {"re", "n", "mag", "q", "flags"}
    assert np.allclose(t["re"] / (p["re_pix"] * scale), 1.0, atol=0.02)
    assert np.allclose(t["n"], p["n"], rtol=0.03)
    assert np.allclose(t["mag"], 22.5 - 2.5 * np.log10(p["flux"]), atol=0.02)
    assert (t["flags"] == 0).all()
    d = structure_deltas(t, t)
    assert d == {"d_re": 0.0, "d_n": 0.0, "d_mag": 0.0, "n": 4}
    bad = t.copy()
    bad["re"][0] = np.nan
    bad["flags"][1] = 1 << 8  # BOUND_HIT in the reference: excluded
    assert structure_deltas(t, bad)["n"] == 2
    assert structure_deltas(bad, t)["n"] == 3  # a flagged fit is kept by default
    assert structure_deltas(bad, t, drop_flagged_fit=True)["n"] == 2


# ---- pixels ----------------------------------------------------------------------------------
def test_pixel_metrics():
    truth = _blob_galaxies()
    sky = np.array([0.05, 0.05, 0.08])
    m = pixel_metrics(truth, truth, sky)
    assert m["mse"] == 0.0 and m["ssim"] == pytest.approx(1.0)
    m = pixel_metrics(truth + sky[None, :, None, None], truth, sky)
    assert m["mse"] == pytest.approx(1.0) and m["ssim"] < 1.0
    with pytest.raises(GalnetValueError, match="target has shape"):
        pixel_metrics(truth, truth[:, :2], sky)


# ---- everything at once ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    from galnet.translate.simulate import read_pairs, simulate_pairs

    path = tmp_path_factory.mktemp("pairs") / "pairs.h5"
    return read_pairs(simulate_pairs(path, 8, chunk=8, progress=False))


def test_evaluate_translation(pairs):
    N = len(pairs)
    pred = regrid(pairs.source, pairs.source_scale, pairs.target_scale,
                  pairs.target.shape[-1])
    z = np.asarray(pairs.catalog["z"])
    photoz = {"z_mean": z + 0.01, "width": np.full(N, 0.05)}
    ref = structure_reference(pairs, 3)
    rec = evaluate_translation(pred, pairs, photoz, structure_rows=3, reference_fit=ref)
    assert tuple(rec) == RECORD_KEYS
    assert all(isinstance(v, int | float) for v in rec.values())
    assert all(math.isfinite(v) for v in rec.values()), rec
    assert rec["n"] == N and rec["n_structure"] <= 3
    assert rec["pz_width"] == pytest.approx(0.05)
    # the perfect translation: the noiseless target itself
    best = evaluate_translation(pairs.target_truth, pairs, None, structure_rows=3,
                                reference_fit=ref)
    assert best["colour_err"] == 0.0 and best["colour_grad_err"] == 0.0
    assert best["mse"] == 0.0 and best["ssim"] == pytest.approx(1.0)
    assert best["d_re"] == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(best["sigma_mad"])
    assert rec["colour_err"] > best["colour_err"] and rec["mse"] > 1.0
    skip = evaluate_translation(pred, pairs, photoz, structure_rows=0)
    assert math.isnan(skip["d_re"]) and skip["n_structure"] == 0
    with pytest.raises(GalnetValueError, match=r"pred has shape \(8, 5, 64, 64\) but "
                                                r"pairs.target has shape \(8, 5, 136, 136\)"):
        evaluate_translation(pairs.source, pairs, photoz)
    with pytest.raises(GalnetValueError, match="reference_fit has 3 rows"):
        evaluate_translation(pred, pairs, photoz, structure_rows=4, reference_fit=ref)


def test_flux_metrics():
    from galnet.translate.evaluate import flux_metrics

    rng = np.random.default_rng(0)
    truth = np.zeros((3, 2, 20, 20))
    truth[:, :, 8:12, 8:12] = 5.0
    sky = np.array([1.0, 2.0])
    m = flux_metrics(truth, truth, sky)
    assert m["flux_err"] == 0 and m["total_colour_err"] == 0 and m["sky_rms"] == 0
    noisy = truth + sky[None, :, None, None] * rng.standard_normal(truth.shape)
    assert flux_metrics(noisy, truth, sky)["sky_rms"] == pytest.approx(1.0, rel=0.1)
    scaled = truth.copy()
    scaled[:, 0] *= 1.2  # band 0 20% too bright: flux error 0.2 in half the bands
    m = flux_metrics(scaled, truth, sky)
    assert m["flux_err"] == pytest.approx(0.1, abs=0.1 + 1e-9)
    assert m["total_colour_err"] > 0.15
