"""Tests of galnet.sim.bank: the real background / PSF bank.

Tests marked by the ``shared`` fixture need the real data in ``../shared/data`` (skipped when it
is absent); the others build banks from small synthetic data directories made here.
"""

from __future__ import annotations

from pathlib import Path

import galsim
import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import mad_std

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.psf import psfex_hdu_from_legacypipe
from galnet.sim import bank as bankmod
from galnet.sim.bank import Bank, build_bank, psf_fwhm, real_galaxy_cutouts, resample_psf
from galnet.sim.bank import build as bank_build

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _centroid(img: np.ndarray) -> tuple[float, float]:
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    s = img.sum()
    return float((img * xx).sum() / s), float((img * yy).sum() / s)


def _moffat(fwhm: float, scale: float, size: int, dx: float = 0.0, dy: float = 0.0):
    prof = galsim.Convolve(galsim.Moffat(beta=3.0, fwhm=fwhm), galsim.Pixel(scale))
    return prof.shift(dx, dy).drawImage(nx=size, ny=size, scale=scale, method="no_pixel").array


# ----------------------------------------------------------------------------------------------
# A synthetic data directory (no shared data needed)
# ----------------------------------------------------------------------------------------------
SKY, SIGMA = 100.0, 5.0
BRIGHT = [(60.0, 70.0), (180.0, 120.0), (100.0, 200.0), (200.0, 210.0)]  # (x, y)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("synthdata")
    (d / "frames").mkdir()
    (d / "psf").mkdir()
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:256, :256]
    img = SKY + SIGMA * rng.standard_normal((256, 256))
    for x, y in BRIGHT:  # Gaussian sources, sigma 2 px, peak S/N 40
        img += 40 * SIGMA * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0**2))
    fits.PrimaryHDU(img.astype(np.float32)).writeto(d / "frames/ntt_emmi.fits")
    fits.PrimaryHDU(np.full((256, 256), SIGMA, np.float32)).writeto(d / "frames/ntt_emmi_rms.fits")
    fits.PrimaryHDU(np.full((256, 256), SKY, np.float32)).writeto(d / "frames/ntt_emmi_back.fits")
    cube = np.stack([_moffat(f, 0.168, 31) for f in (0.6, 0.65, 0.7, 0.75, 0.8)])
    fits.PrimaryHDU(cube).writeto(d / "psf/hsc_cosmos_psf_scarlet.fits")
    (d / "README.md").write_text(
        "| path | what | scale | source | licence |\n|---|---|---|---|---|\n"
        "| frames/ntt_emmi*.fits | synthetic | 0.27 | here | TEST-LICENCE-A |\n"
        "| psf/hsc_cosmos_psf_scarlet.fits | synthetic | 0.168 | here | TEST-LICENCE-B |\n")
    return d


@pytest.fixture(scope="module")
def synth_bank(synth_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthbank") / "bank.h5"
    return build_bank(synth_dir, out, pixel_scales=(0.168, 0.396), n_per_frame=40, seed=3,
                      progress=False)


def test_synthetic_bank_backgrounds(synth_bank):
    b = Bank(synth_bank)
    assert b.n_backgrounds >= 20
    meta = b.background_meta
    assert set(meta["frame"]) == {"ntt_emmi"}
    assert np.allclose(meta["native_scale"], 0.27)
    # the noise is known exactly: unit rms after normalisation, uncorrelated
    assert np.all(np.abs(meta["rms"] - 1) < 0.15)
    assert abs(np.median(meta["corr1"])) < 0.05
    # no bright source within CENTRE_RADIUS of a centre (sources have sigma 2 px: the
    # detected footprint extends ~8 px), and the cutout is the normalised frame at (x, y)
    for x, y in zip(meta["x"], meta["y"], strict=True):
        d = np.hypot(np.array([p[0] for p in BRIGHT]) - x, np.array([p[1] for p in BRIGHT]) - y)
        assert d.min() > bankmod.CENTRE_RADIUS + 4
    # centres respect the minimum spacing
    xy = np.stack([meta["x"], meta["y"]], 1)
    dd = np.abs(xy[:, None] - xy[None]).max(-1) + np.eye(len(xy), dtype=int) * 999
    assert dd.min() >= bankmod.MIN_SEPARATION


def test_synthetic_bank_cutouts_match_frame(synth_bank, synth_dir):
    b = Bank(synth_bank)
    frame = (fits.getdata(synth_dir / "frames/ntt_emmi.fits").astype(float) - SKY) / SIGMA
    imgs, origins = b.sample_backgrounds(np.random.default_rng(0), 10, augment=False)
    assert imgs.shape == (10, 61, 61) and imgs.dtype == np.float32
    for img, o in zip(imgs, origins, strict=True):
        name, xy = str(o).split(":")
        x, y = (int(v) for v in xy.split(","))
        assert name == "ntt_emmi"
        ref = frame[y - 30:y + 31, x - 30:x + 31]
        # equal up to the empirical noise factor (~1) and the 1/256 quantisation
        factor = float(np.sum(img * ref) / np.sum(img * img))
        assert 0.9 < factor < 1.1
        assert np.abs(img * factor - ref).max() < 0.005


def test_synthetic_bank_psfs_and_provenance(synth_bank):
    b = Bank(synth_bank)
    assert b.pixel_scales == (0.168, 0.396)
    for s in b.pixel_scales:
        psfs, fwhm, src = b.sample_psfs(np.random.default_rng(0), 50, s)
        assert psfs.shape == (50, 25, 25) and psfs.dtype == np.float32
        assert np.allclose(psfs.astype(np.float64).sum(axis=(1, 2)), 1.0, atol=1e-6)
        assert all(str(x).startswith("hsc:") for x in src)
        # input FWHMs 0.6-0.8 arcsec (Moffat before the pixel); effective PSF slightly wider
        assert 0.55 < fwhm.min() and fwhm.max() < 0.95
    prov = b.provenance
    assert "TEST-LICENCE-A" in prov["files"]["frames/ntt_emmi.fits"]
    assert "TEST-LICENCE-A" in prov["files"]["frames/ntt_emmi_rms.fits"]
    assert "TEST-LICENCE-B" in prov["files"]["psf/hsc_cosmos_psf_scarlet.fits"]
    assert prov["galnet_version"]
    with h5py.File(synth_bank) as f:
        assert f["backgrounds"].shape[1:] == (61, 61)
        assert f["psfs/0.1680/images"].shape == (5, 25, 25)


def test_sampling_is_deterministic_and_augment_keeps_pixels(synth_bank):
    b = Bank(synth_bank)
    a1, o1 = b.sample_backgrounds(np.random.default_rng(7), 30)
    a2, o2 = b.sample_backgrounds(np.random.default_rng(7), 30)
    assert np.array_equal(a1, a2) and list(o1) == list(o2)
    plain, _ = b.sample_backgrounds(np.random.default_rng(7), 30, augment=False)
    assert np.array_equal(np.sort(a1.reshape(30, -1), 1), np.sort(plain.reshape(30, -1), 1))
    assert not np.array_equal(a1, plain)  # 30 draws: some rotated/flipped
    a3, _ = b.sample_backgrounds(np.random.default_rng(7), 5, native_scale=(0.25, 0.3))
    assert a3.shape == (5, 61, 61)
    with pytest.raises(GalnetValueError, match="no background cutouts"):
        b.sample_backgrounds(np.random.default_rng(7), 5, native_scale=(0.1, 0.2))


def test_build_is_atomic(synth_dir, tmp_path, monkeypatch):
    out = tmp_path / "bank.h5"

    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure while building PSFs")

    monkeypatch.setattr(bank_build, "psf_inputs", boom)
    with pytest.raises(RuntimeError, match="simulated failure"):
        build_bank(synth_dir, out, pixel_scales=(0.2,), n_per_frame=5, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []

    # a failure while writing the HDF5 file leaves nothing either
    monkeypatch.undo()
    monkeypatch.setattr(bank_build, "_str_array", boom)
    with pytest.raises(RuntimeError):
        build_bank(synth_dir, out, pixel_scales=(0.2,), n_per_frame=5, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_build_removes_temp_files_of_a_killed_build(synth_dir, tmp_path):
    """The bank is written through galnet.io.files.atomic_write: a temporary file left by a killed
    build (SIGKILL: no cleanup ran) is removed by the next build of the same bank."""
    out = tmp_path / "bank.h5"
    orphan = tmp_path / ".tmp-bank.h5-abcd1234"
    orphan.write_bytes(b"partial")
    build_bank(synth_dir, out, pixel_scales=(0.2,), n_per_frame=5, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.h5"]


def test_build_errors(tmp_path, synth_dir):
    with pytest.raises(GalnetFileError, match="data directory .* not found"):
        build_bank(tmp_path / "nope", tmp_path / "b.h5", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GalnetFileError, match="none of the expected files"):
        build_bank(tmp_path / "empty", tmp_path / "b.h5", progress=False)
    with pytest.raises(GalnetValueError, match="pixel_scales"):
        build_bank(synth_dir, tmp_path / "b.h5", pixel_scales=(-1.0,), progress=False)
    with pytest.raises(GalnetValueError, match="unknown or unusable frames"):
        build_bank(synth_dir, tmp_path / "b.h5", frames=("kids_r",), progress=False)
    with pytest.raises(GalnetFileError, match="is a directory"):
        build_bank(synth_dir, tmp_path, progress=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        import os

        if not os.access(ro, os.W_OK):  # root ignores permissions
            with pytest.raises(GalnetFileError, match="not writable"):
                build_bank(synth_dir, ro / "b.h5", progress=False)
    finally:
        ro.chmod(0o755)


def test_bank_file_errors(tmp_path, synth_bank):
    with pytest.raises(GalnetFileError, match="bank file .* not found"):
        Bank(tmp_path / "missing.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["images"] = np.zeros((2, 3))
    with pytest.raises(GalnetFileError, match="is not a galnet bank"):
        Bank(other)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(GalnetFileError, match="is not a galnet bank"):
        Bank(text)
    b = Bank(synth_bank)
    with pytest.raises(GalnetValueError, match=r"no PSFs at pixel scale 0.2 .*available: "
                                               r"\[0.168, 0.396\]"):
        b.sample_psfs(np.random.default_rng(0), 3, 0.2)
    with pytest.raises(GalnetValueError, match="no bank PSFs"):
        b.sample_psfs(np.random.default_rng(0), 3, 0.168, fwhm_range=(3.0, 4.0))


# ----------------------------------------------------------------------------------------------
# PSF resampling (no shared data)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fwhm,p_in,p_out", [(0.7, 0.168, 0.396), (0.7, 0.168, 0.2),
                                             (1.0, 0.262, 0.168), (1.4, 0.396, 0.2)])
def test_resample_psf_matches_analytic(fwhm, p_in, p_out):
    src = _moffat(fwhm, p_in, 41, dx=0.3 * p_in, dy=-0.2 * p_in)  # off-centre input
    img, flux = resample_psf(src, p_in, p_out)
    truth = _moffat(fwhm, p_out, 25)
    truth /= truth.sum()
    assert img.shape == (25, 25)
    assert abs(img.sum() - 1) < 1e-12
    cx, cy = _centroid(img)
    assert abs(cx - 12) < 0.01 and abs(cy - 12) < 0.01
    assert np.abs(img - truth).max() < 0.02 * truth.max()
    assert 0.9 < flux <= 1.01
    # the input pixel is removed and the output pixel added: the FWHM of the effective PSF
    assert psf_fwhm(img, p_out) == pytest.approx(psf_fwhm(truth, p_out), rel=0.03)


def test_psf_fwhm_of_gaussian():
    for fwhm, scale in [(0.8, 0.2), (1.5, 0.396)]:
        img = galsim.Gaussian(fwhm=fwhm).drawImage(nx=31, ny=31, scale=scale,
                                                   method="no_pixel").array
        assert psf_fwhm(img, scale) == pytest.approx(fwhm, rel=0.03)


def test_resample_psf_rejects_bad_input():
    with pytest.raises(GalnetValueError, match="finite"):
        resample_psf(np.full((5, 5), np.nan), 0.2, 0.2)
    with pytest.raises(GalnetValueError, match="positive sum"):
        resample_psf(np.zeros((5, 5)), 0.2, 0.2)


# ----------------------------------------------------------------------------------------------
# Real data (../shared/data)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared() -> Path:
    if not (SHARED / "README.md").is_file():
        pytest.skip(f"real survey data not found at {SHARED} (only on developer machines / CI)")
    return SHARED


@pytest.fixture(scope="module")
def real_bank(shared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("realbank") / "bank.h5"
    return build_bank(shared, out, pixel_scales=(0.2,), n_per_frame=25, seed=0, progress=False,
                      frames=("ctio_i", "ntt_emmi", "decam_170316_062107_N2_z"),
                      psf_sources=("hsc", "decam_psfex", "sdss_psfield", "profit_kids"),
                      n_psf_per_model=2)


def test_real_bank_backgrounds(real_bank, shared):
    b = Bank(real_bank)
    meta = b.background_meta
    assert b.n_backgrounds == len(meta) >= 40
    assert set(meta["frame"]) == {"ctio_i", "ntt_emmi", "decam_170316_062107_N2_z"}
    imgs, origins = b.sample_backgrounds(np.random.default_rng(1), 200, augment=False)
    assert imgs.shape == (200, 61, 61) and imgs.dtype == np.float32
    assert np.all(np.isfinite(imgs))
    yy, xx = np.mgrid[:61, :61]
    centre = np.hypot(xx - 30, yy - 30) <= bankmod.CENTRE_RADIUS
    for img in imgs:
        # robust noise rms, clipping sources (independent of the stored value)
        rms = mad_std(img[np.abs(img) < 5])
        assert 0.7 < rms < 1.3
        # no bright source at the centre: no pixel above 5 sigma, mean consistent with sky
        assert img[centre].max() <= bankmod.CENTRE_SNR
        assert abs(img[centre].mean()) < 1.0
    assert np.all((meta["rms"] > 0.7) & (meta["rms"] < 1.3))
    # the CTIO cutouts are the real frame at (x, y), up to an affine transform
    raw = fits.getdata(shared / "frames/ctio_mosaic_i.fits").astype(float)
    k = np.flatnonzero(meta["frame"] == "ctio_i")[0]
    x, y = int(meta["x"][k]), int(meta["y"][k])
    img, _ = b.sample_backgrounds(np.random.default_rng(0), 1, augment=False, frames=["ctio_i"])
    ref = raw[y - 30:y + 31, x - 30:x + 31]
    i = np.flatnonzero((meta["frame"] == "ctio_i") & (meta["x"] == x) & (meta["y"] == y))[0]
    cut = b._bg[i]
    assert np.corrcoef(cut.ravel(), ref.ravel())[0, 1] > 0.99
    # neighbours kept: some cutouts contain > 10 sigma pixels away from the centre
    assert (imgs.reshape(200, -1).max(1) > 10).any()
    # provenance: the licence lines of the data README
    files = b.provenance["files"]
    assert "BSD-3" in files["frames/ctio_mosaic_i.fits"]
    assert "MIT/BSD" in files["frames/ntt_emmi_rms.fits"]


def test_real_bank_psfs(real_bank):
    b = Bank(real_bank)
    assert b.pixel_scales == (0.2,)
    meta = b.psf_meta(0.2)
    imgs = b.psf_images(0.2)
    assert imgs.shape[1:] == (25, 25) and imgs.shape[0] == len(meta) >= 40
    assert np.allclose(imgs.astype(np.float64).sum(axis=(1, 2)), 1.0, atol=1e-6)
    assert np.all(np.isfinite(imgs))
    for img in imgs:
        cx, cy = _centroid(img.astype(np.float64))
        assert abs(cx - 12) < 0.1 and abs(cy - 12) < 0.1
    ranges = {"hsc": (0.45, 0.9), "decam_psfex": (0.55, 1.7), "sdss_psfield": (1.0, 3.0),
              "profit_kids": (0.5, 1.0)}
    for fam, (lo, hi) in ranges.items():
        f = meta["fwhm_arcsec"][meta["source"] == fam]
        assert len(f) > 0, fam
        assert lo < f.min() and f.max() < hi, (fam, f.min(), f.max())
    # effective FWHM at 0.2"/px close to the native one (all inputs are 0.168-0.396"/px)
    assert np.all(np.abs(meta["fwhm_arcsec"] / meta["native_fwhm_arcsec"] - 1) < 0.1)
    # DECam PSFEx models evaluated at several positions: distinct PSFs
    dec = imgs[np.asarray(meta["source"]) == "decam_psfex"]
    assert len(np.unique(dec.reshape(len(dec), -1), axis=0)) == len(dec)
    # sampling: family weighting, filters
    rng = np.random.default_rng(0)
    p, fw, src = b.sample_psfs(rng, 400, 0.2)
    fams = {str(s).split(":")[0] for s in src}
    assert fams == {"hsc", "decam_psfex", "sdss_psfield", "profit_kids"}
    share_hsc = np.mean([str(s).startswith("hsc:") for s in src])
    assert 0.15 < share_hsc < 0.35  # 1/4 by family weighting (5 of ~60 PSFs uniformly)
    p, fw, src = b.sample_psfs(rng, 50, 0.2, sources=["hsc"], fwhm_range=(0.5, 0.7))
    assert np.all((fw >= 0.5) & (fw <= 0.7)) and all(str(s).startswith("hsc") for s in src)


def test_real_galaxy_cutouts(shared):
    imgs, rms = real_galaxy_cutouts(shared, 5, seed=1, frames=("vst_r", "ntt_emmi"))
    assert imgs.shape == (5, 61, 61) and rms.shape == (5,)
    assert np.all(rms > 0)
    for img, r in zip(imgs, rms, strict=True):
        # a source at the centre: S/N > 10 in the central 11 x 11 px
        assert img[25:36, 25:36].sum() / (r * 11) > 10
        iy, ix = np.unravel_index(np.argmax(img[20:41, 20:41]), (21, 21))
        assert abs(iy - 10) <= 3 and abs(ix - 10) <= 3
    again, _ = real_galaxy_cutouts(shared, 5, seed=1, frames=("vst_r", "ntt_emmi"))
    assert np.array_equal(imgs, again)


def test_real_data_dir_missing_files(tmp_path):
    (tmp_path / "frames").mkdir()
    with pytest.raises(GalnetFileError, match="none of the frames"):
        real_galaxy_cutouts(tmp_path, 3)
    with pytest.raises(GalnetFileError, match="not found"):
        real_galaxy_cutouts(tmp_path / "nope", 3)


def test_legacypipe_psfex_matches_polynomial(shared):
    import galsim.des

    path = sorted((shared / "frames/decam").glob("c4d_*-psfex.fits"))[0]
    model = galsim.des.DES_PSFEx(psfex_hdu_from_legacypipe(path))
    t = fits.getdata(path, 1)
    basis = t["psf_mask"][0]  # (6, ny, nx): 1, x, x^2, y, xy, y^2 (PSFEx order, degree 2)
    x, y = 800.0, 1500.0
    u = (x - t["polzero1"][0]) / t["polscal1"][0]
    v = (y - t["polzero2"][0]) / t["polscal2"][0]
    expect = np.tensordot([1, u, u * u, v, u * v, v * v], basis, (0, 0))
    got = model.getPSFArray(galsim.PositionD(x, y))
    assert np.allclose(got, expect, rtol=1e-5, atol=1e-7 * np.abs(expect).max())
    assert model.sample_scale == 1.0 and got.shape == basis.shape[1:]


def test_positions_do_not_depend_on_other_frames(real_bank, shared, tmp_path):
    alone = build_bank(shared, tmp_path / "ntt.h5", pixel_scales=(0.2,), n_per_frame=25, seed=0,
                       progress=False, frames=("ntt_emmi",), psf_sources=("hsc",))
    a, b = Bank(alone).background_meta, Bank(real_bank).background_meta
    b = b[b["frame"] == "ntt_emmi"]
    assert len(a) == len(b) > 0
    assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["y"], b["y"])
