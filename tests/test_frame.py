"""The frame pipeline (galnet.frame.run_frame) on small synthetic frames: detection, positions in
frame pixels, the neighbours modelled jointly (better than masking them), rebinning of a large
galaxy, point sources, masks of unmodelled sources, the models file; real frames skip without
../shared/data."""

from __future__ import annotations

import numpy as np
import pytest

from galnet.flags import Flag

#: 4 galaxies (ids 1, 2 overlap: 12.5 px apart) and a star (re ~ 0), 160 x 160 px.
TRUTH = dict(x=np.array([40.3, 100.2, 108.7, 60.0, 130.5]),
             y=np.array([45.1, 90.4, 99.6, 125.2, 30.3]),
             flux=np.array([3000.0, 2500.0, 1500.0, 2000.0, 1500.0]),
             re_pix=np.array([5.0, 6.0, 3.5, 4.0, 0.01]), n=np.array([1.5, 1.0, 2.5, 4.0, 1.0]),
             q=np.array([0.6, 0.5, 0.8, 0.9, 1.0]), pa_deg=np.array([30.0, 120.0, 60.0, 10.0, 0.0]))
STAR = 4
PAIR = (1, 2)


def gaussian_psf(fwhm: float = 3.0, size: int = 25) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    p = np.exp(-(xx**2 + yy**2) / (2 * (fwhm / 2.3548) ** 2))
    return p / p.sum()


def make_frame(seed: int = 0, truth=TRUTH, shape=(160, 160), noise: float = 1.0):
    """(frame float32, psf, truth) with Gaussian noise of rms ``noise``."""
    from galnet.profiles.render import render

    psf = gaussian_psf()
    img = render(truth, psf, shape).sum(axis=0)
    rng = np.random.default_rng(seed)
    return (img + rng.normal(0.0, noise, shape)).astype(np.float32), psf, truth


def write_frame(path, seed: int = 0, wcs: bool = True):
    """The synthetic frame as a FITS file (TAN WCS, 0.2"/px, MAGZERO 27) and its PSF file."""
    from astropy.io import fits

    frame, psf, _ = make_frame(seed)
    h = fits.Header()
    if wcs:
        h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRPIX1=80.0, CRPIX2=80.0,
                 CRVAL1=150.0, CRVAL2=2.0, CD1_1=-0.2 / 3600, CD1_2=0.0, CD2_1=0.0,
                 CD2_2=0.2 / 3600)
    h["MAGZERO"] = 27.0
    fits.writeto(path / "frame.fits", frame, h, overwrite=True)
    fits.writeto(path / "sigma.fits", np.ones_like(frame), overwrite=True)
    fits.writeto(path / "psf.fits", psf.astype(np.float32), overwrite=True)
    return path / "frame.fits", path / "psf.fits", path / "sigma.fits"


def match(t, truth=TRUTH) -> np.ndarray:
    """Row of ``t`` nearest to each true position."""
    x, y = np.asarray(t["x"].value), np.asarray(t["y"].value)
    return np.array([int(np.argmin((x - a) ** 2 + (y - b) ** 2))
                     for a, b in zip(truth["x"], truth["y"], strict=True)])


@pytest.fixture(scope="module")
def frame():
    return make_frame(0)


@pytest.fixture(scope="module")
def network_cat(frame):
    from galnet.frame import run_frame

    img, psf, _ = frame
    return run_frame(img, psf, sigma=np.ones(img.shape), pixel_scale=0.2, zeropoint=27.0,
                     progress=False)


@pytest.fixture(scope="module")
def refine_cat(frame):
    from galnet.frame import run_frame

    img, psf, _ = frame
    return run_frame(img, psf, sigma=np.ones(img.shape), pixel_scale=0.2, zeropoint=27.0,
                     refine=True, progress=False)


def test_detect_finds_every_source_in_frame_pixels(network_cat, refine_cat):
    for t, tol in ((network_cat, 2.0), (refine_cat, 0.5)):
        assert len(t) == 5
        rows = match(t)
        assert len(set(rows.tolist())) == 5
        dx = np.asarray(t["x"].value)[rows] - TRUTH["x"]
        dy = np.asarray(t["y"].value)[rows] - TRUTH["y"]
        iso = [0, 3, STAR]  # bright, isolated: within half a pixel
        assert np.all(np.hypot(dx, dy)[iso] < 0.5), (dx, dy)
        assert np.all(np.hypot(dx, dy) < tol), (dx, dy)  # the network on a blend: ~1.6 px


def test_catalogue_columns_and_units(network_cat, refine_cat):
    from astropy import units as u

    for t in (network_cat, refine_cat):
        for c in ("id", "x", "y", "mag", "flux", "re_pix", "re_arcsec", "n", "q", "pa_deg",
                  "chi2nu", "snr", "flags", "psf_mag", "psf_mag_err", "rff", "asym",
                  "n_neighbours", "cutout", "rebin"):
            assert c in t.colnames, c
        assert t["x"].unit == u.pix and t["re_arcsec"].unit == u.arcsec
        assert t["psf_mag"].unit == u.mag and t["cutout"].unit == u.pix
        assert "provenance" in t.meta
    assert {"niter", "converged", "chi2nu_nn"} <= set(refine_cat.colnames)
    rows = match(refine_cat)
    nb = np.asarray(refine_cat["n_neighbours"])[rows]
    assert nb[PAIR[0]] >= 1 and nb[PAIR[1]] >= 1 and nb[0] == 0


def test_refine_chi2_and_star(refine_cat):
    t = refine_cat
    rows = match(t)
    chi = np.asarray(t["chi2nu"])[rows]
    gal = [0, 1, 2, 3]
    assert np.all(chi[gal] < 1.3), chi  # neighbours subtracted: the pair fits to the noise
    flags = np.asarray(t["flags"])[rows]
    assert flags[STAR] & Flag.POINT_SOURCE
    assert not np.any(flags[gal] & Flag.POINT_SOURCE)
    # the refine is never worse than the network on the same pixels
    c_nn = np.asarray(t["chi2nu_nn"])
    ok = np.isfinite(c_nn)
    assert np.all(np.asarray(t["chi2nu"])[ok] <= c_nn[ok] * (1 + 1e-3) + 1e-6)


def test_joint_neighbour_fit_beats_masking():
    """The overlapped pair: the joint (neighbours modelled) refine recovers both fluxes better
    than today's fit of frame cutouts with the neighbours masked."""
    from galnet.frame import run_frame

    err_joint, err_mask = [], []
    for seed in (1, 2):
        img, psf, truth = make_frame(seed)
        sig = np.ones(img.shape, np.float32)
        tj = run_frame(img, psf, sigma=sig, pixel_scale=0.2, zeropoint=27.0, refine=True,
                       progress=False)
        tm = _masked(img, psf, sig, truth)
        for t, err in ((tj, err_joint), (tm, err_mask)):
            rows = match(t)
            f = np.asarray(getattr(t["flux"], "value", t["flux"]))[rows]
            err.append(np.abs(f[list(PAIR)] / truth["flux"][list(PAIR)] - 1).sum())
    assert np.mean(err_joint) < np.mean(err_mask), (err_joint, err_mask)
    assert np.mean(err_joint) < 0.15


def _masked(img, psf, sig, truth):
    """Today's habit: 61 x 61 cutouts at the true positions, neighbours masked, fitted alone."""
    from galnet.fitting.runner import fit
    from galnet.io.cutouts import load_frame

    b = load_frame(img, np.c_[truth["x"], truth["y"]], psf, sigma=sig, pixel_scale=0.2,
                   zeropoint=27.0)
    return fit(b, auto_mask_neighbours=True)


def test_large_galaxy_is_rebinned_and_measured():
    """A galaxy far larger than the 61 x 61 reach: block-averaged for the network (REBINNED,
    rebin >= 2), its cutout holds it, and the catalogue is in frame pixels."""
    from galnet.frame import run_frame

    big = dict(x=np.array([130.2, 40.0]), y=np.array([128.7, 220.0]),
               flux=np.array([4e4, 2000.0]), re_pix=np.array([22.0, 3.0]),
               n=np.array([1.0, 1.5]), q=np.array([0.7, 0.8]), pa_deg=np.array([40.0, 0.0]))
    img, psf, _ = make_frame(3, truth=big, shape=(260, 260))
    t = run_frame(img, psf, sigma=np.ones(img.shape), pixel_scale=0.2, zeropoint=27.0,
                  progress=False)
    i = match(t, big)[0]
    assert int(t["rebin"][i]) >= 2
    assert t["flags"][i] & Flag.REBINNED
    assert int(t["cutout"][i].value) > 61
    assert abs(t["x"][i].value - 130.2) < 1.0 and abs(t["y"][i].value - 128.7) < 1.0
    assert 0.6 < t["re_pix"][i].value / 22.0 < 1.6


def test_unmodelled_sources_masked_modelled_neighbours_not(tmp_path, frame):
    """A faint source below snr_min is masked (its segment), a modelled neighbour never is; the
    models file holds data, model (target + neighbours) and mask per id."""
    from galnet.frame import run_frame
    from galnet.io.models import read_models

    img, psf, _ = frame
    t = run_frame(img, psf, sigma=np.ones(img.shape), pixel_scale=0.2, zeropoint=27.0,
                  progress=False, snr_min=120.0, save_models=tmp_path / "m.fits")
    kept = set(np.asarray(t["id"]).tolist())
    assert 0 < len(kept) < 5  # the fainter ones are not modelled
    m = read_models(tmp_path / "m.fits")
    assert set(m.ids) == kept
    masked = 0
    for i in kept:
        obj = m[i]
        assert obj.data.shape == obj.model.shape == obj.mask.shape
        masked += int(obj.mask.any())  # the unmodelled sources' segments
        r = (obj.data - obj.model)[~obj.mask]
        assert np.std(r) < 3.0  # network models of target + modelled neighbours
    assert masked >= 1
    t_all = run_frame(img, psf, sigma=np.ones(img.shape), pixel_scale=0.2, zeropoint=27.0,
                      progress=False, save_models=tmp_path / "all.fits")
    m_all = read_models(tmp_path / "all.fits")
    H, W = img.shape
    for i in np.asarray(t_all["id"]).tolist():
        o = m_all[i]
        s = o.mask.shape[0]
        xs, ys = o.x0 + np.arange(s), o.y0 + np.arange(s)
        off = ~(((ys >= 0) & (ys < H))[:, None] & ((xs >= 0) & (xs < W))[None, :])
        assert np.array_equal(o.mask, off)  # everything modelled: only off-frame pixels masked


def test_positions_instead_of_detection(frame):
    from galnet.frame import run_frame

    img, psf, truth = frame
    pos = np.c_[truth["x"], truth["y"]][[0, 3]]
    t = run_frame(img, psf, positions=pos, detect=False, sigma=np.ones(img.shape),
                  pixel_scale=0.2, zeropoint=27.0, progress=False)
    assert len(t) == 2
    assert np.allclose(t["x"].value, pos[:, 0], atol=0.5)
    assert np.allclose(t["y"].value, pos[:, 1], atol=0.5)


def test_sky_left_in_is_removed(caplog):
    import logging

    from galnet.frame import run_frame

    img, psf, _ = make_frame(4)
    with caplog.at_level(logging.WARNING):
        t = run_frame(img + 20.0, psf, pixel_scale=0.2, zeropoint=27.0, progress=False)
    assert t.meta["frame"]["sky_removed"]
    assert any("sky" in r.getMessage().lower() for r in caplog.records)
    rows = match(t)
    assert abs(t["flux"][rows[0]] / TRUTH["flux"][0] - 1) < 0.2


@pytest.mark.slow
def test_vst_frame_big_galaxy(shared_data, tmp_path):
    """The VST r frame: many sources, the large galaxy rebinned with re of several arcsec."""
    from galnet.frame import run_frame

    frame = shared_data / "frames" / "vst_r_G202627.fits"
    psfs = sorted((shared_data / "galaxies" / "profit_gama_kids_sdss" / "KiDS").glob(
        "*psfim.fits"))
    if not frame.is_file() or not psfs:
        pytest.skip("VST frame or KiDS PSF images absent")
    t = run_frame(frame, psfs[0], progress=False)
    assert len(t) > 50
    big = int(np.argmax(t["cutout"].value))
    assert t["rebin"][big] >= 2
    assert t["re_arcsec"][big].value > 3.0
