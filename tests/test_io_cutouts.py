"""galnet.io stamp readers (cutouts, batch, fits, psf, prepare) and catalogue I/O: every input
form, geometry (pad/crop/rebin) with exact transforms, frames, PSFs (image, cube, PSFEx), noise,
header keywords, bad inputs."""

import math
import time

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.table import QTable, Table
from astropy.wcs import WCS

from galnet.errors import GalnetFileError, GalnetPSFError, GalnetValueError
from galnet.flags import Flag
from galnet.io.batch import StampBatch, to_input_coords, to_stamp_coords
from galnet.io.catalog import catalog_format, read_catalog, write_catalog
from galnet.io.cutouts import iter_frame, iter_stamps, load_frame, load_stamps

S, P, C = 61, 25, 30  # stamp side, PSF side, stamp centre


def gauss(size: int, sigma: float = 1.7, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2.0
    return np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * sigma**2))


def noise_stamps(n: int, size: int = S, rms: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, rms, (n, size, size)).astype(np.float32)


@pytest.fixture
def psf() -> np.ndarray:
    return gauss(P)


def write(path, *hdus):
    """Write a FITS file: first array -> primary HDU, then (name, array) image extensions."""
    first, *rest = hdus
    hl = [fits.PrimaryHDU(first)]
    hl += [fits.ImageHDU(a, name=n) for n, a in rest]
    fits.HDUList(hl).writeto(path, overwrite=True)
    return path


# ----------------------------------------------------------------------------------------------
# Stamps: input forms
# ----------------------------------------------------------------------------------------------
def test_cube_file_basic(tmp_path, psf):
    imgs = noise_stamps(7)
    imgs[:, C, C] += 5.0
    path = write(tmp_path / "stamps.fits", imgs)
    write(tmp_path / "psf.fits", psf * 3.0)
    b = load_stamps(path, tmp_path / "psf.fits")
    assert isinstance(b, StampBatch) and len(b) == 7
    assert b.images.shape == b.sigma.shape == b.mask.shape == (7, S, S)
    assert b.images.dtype == b.sigma.dtype == b.psfs.dtype == np.float32
    assert b.mask.dtype == bool and not b.mask.any()
    assert b.psfs.shape == (7, P, P)
    np.testing.assert_allclose(b.psfs.sum(axis=(1, 2)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(b.psfs[3], psf / psf.sum(), rtol=1e-5)
    np.testing.assert_array_equal(b.images, imgs)
    np.testing.assert_array_equal(b.ids, np.arange(7))
    np.testing.assert_array_equal(b.flags, 0)
    np.testing.assert_array_equal(b.rebin, 1)
    np.testing.assert_array_equal(b.x0, 0)
    np.testing.assert_array_equal(b.y0, 0)
    # no sigma map: sigma = robust sky rms, constant per stamp, close to the true 0.1
    np.testing.assert_allclose(b.sky_rms, 0.1, rtol=0.12)
    np.testing.assert_array_equal(b.sigma, b.sky_rms.astype(np.float32)[:, None, None]
                                  * np.ones((1, S, S), np.float32))
    assert b.meta["images"] == str(path) and b.meta["psf"] == str(tmp_path / "psf.fits")
    assert b.pixel_scale == 0.168 and b.zeropoint == 27.0  # hsc-r preset
    assert b.meta["pixel_scale_source"] == "preset hsc-r"


def test_sky_rms_ignores_positive_sources():
    imgs = noise_stamps(20, rms=0.5, seed=3)
    imgs[:, :2, :] += np.random.default_rng(4).exponential(3.0, (20, 2, S))  # a neighbour
    b = load_stamps(imgs, gauss(P))
    np.testing.assert_allclose(np.median(b.sky_rms), 0.5, rtol=0.1)
    assert np.median(np.std(imgs[:, :10], axis=(1, 2))) > 0.6  # a plain rms would not be


def test_two_d_image_and_arrays_match_files(tmp_path, psf):
    img = noise_stamps(1)[0]
    write(tmp_path / "one.fits", img)
    b = load_stamps(tmp_path / "one.fits", psf)
    a = load_stamps(img, psf)
    assert len(b) == 1 and b.images.shape == (1, S, S)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.sigma, b.sigma)
    assert a.meta["images"] == "images"


def test_first_image_hdu_with_data(tmp_path, psf):
    imgs = noise_stamps(2)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(imgs, name="SCI")]).writeto(tmp_path / "e.fits")
    b = load_stamps(tmp_path / "e.fits", psf)
    np.testing.assert_array_equal(b.images, imgs)


@pytest.mark.parametrize("where", ["extension", "file", "array"])
def test_sigma_ivar_mask_inputs(tmp_path, psf, where):
    imgs = noise_stamps(3)
    sig = np.full_like(imgs, 0.25)
    sig[1] = 0.5
    ivar = 1.0 / sig**2
    ivar[2, 5, 7] = 0.0  # zero weight -> masked
    mask = np.zeros(imgs.shape, np.uint8)
    mask[0, 10, 11] = 3
    if where == "extension":
        write(tmp_path / "s.fits", imgs, ("SIGMA", sig), ("MASK", mask))
        write(tmp_path / "i.fits", imgs, ("IVAR", ivar), ("MASK", mask))
        bs = load_stamps(tmp_path / "s.fits", psf)
        bi = load_stamps(tmp_path / "i.fits", psf)
        assert bs.meta["sigma"] == f"{tmp_path / 's.fits'}[SIGMA]"
    elif where == "file":
        write(tmp_path / "img.fits", imgs)
        write(tmp_path / "sig.fits", sig)
        write(tmp_path / "ivar.fits", ivar)
        write(tmp_path / "mask.fits", mask)
        bs = load_stamps(tmp_path / "img.fits", psf, sigma=tmp_path / "sig.fits",
                         mask=tmp_path / "mask.fits")
        bi = load_stamps(tmp_path / "img.fits", psf, ivar=tmp_path / "ivar.fits",
                         mask=tmp_path / "mask.fits")
    else:
        bs = load_stamps(imgs, psf, sigma=sig, mask=mask)
        bi = load_stamps(imgs, psf, ivar=ivar, mask=mask)
    for b in (bs, bi):
        assert b.mask[0, 10, 11] and b.images[0, 10, 11] == 0.0
        assert b.mask.sum() == 1 + (b is bi)
        np.testing.assert_allclose(b.sigma[1, 0, 0], 0.5, rtol=1e-6)
        np.testing.assert_allclose(b.sigma[0, 3, 3], 0.25, rtol=1e-6)
        np.testing.assert_allclose(b.sky_rms, [0.25, 0.5, 0.25], rtol=1e-5)
        assert np.isfinite(b.sigma).all() and (b.sigma > 0).all()
    assert bi.mask[2, 5, 7] and bi.sigma[2, 5, 7] == pytest.approx(bi.sky_rms[2])
    np.testing.assert_array_equal(bs.flags, 0)


def test_explicit_argument_beats_extension(tmp_path, psf):
    imgs = noise_stamps(2)
    write(tmp_path / "s.fits", imgs, ("SIGMA", np.full_like(imgs, 9.0)))
    b = load_stamps(tmp_path / "s.fits", psf, sigma=np.full_like(imgs, 0.3))
    np.testing.assert_allclose(b.sigma, 0.3)
    b = load_stamps(tmp_path / "s.fits", psf, ivar=np.full_like(imgs, 4.0))
    np.testing.assert_allclose(b.sigma, 0.5)


def test_nonfinite_pixels_and_masked_centre(psf):
    imgs = noise_stamps(3)
    imgs[0, 4, 4] = np.nan
    imgs[1, C - 1:C + 2, C - 1:C + 2] = np.inf
    imgs[2, C - 1:C + 2, C - 1:C + 1] = np.nan  # one central pixel left
    b = load_stamps(imgs, psf)
    assert b.flags[0] == Flag.NONFINITE
    assert b.flags[1] == Flag.NONFINITE | Flag.MASKED_CENTRE
    assert b.flags[2] == Flag.NONFINITE
    assert b.mask[0, 4, 4] and b.images[0, 4, 4] == 0 and b.mask[0].sum() == 1
    assert np.isfinite(b.images).all() and np.isfinite(b.sigma).all()
    mask = np.zeros(imgs.shape, bool)
    mask[0, 4, 4] = True  # a NaN the mask already covers is not news
    assert load_stamps(imgs[:1], psf, mask=mask[:1]).flags[0] == 0


def test_nan_only_stamp_is_flagged_in_a_cube_and_an_error_alone(tmp_path, psf):
    imgs = noise_stamps(2)
    imgs[1] = np.nan
    b = load_stamps(imgs, psf)
    assert b.flags[1] == Flag.NONFINITE | Flag.MASKED_CENTRE and b.mask[1].all()
    assert np.isnan(b.sky_rms[1]) and (b.sigma[1] == 1.0).all()
    write(tmp_path / "nan.fits", np.full((S, S), np.nan, np.float32))
    with pytest.raises(GalnetValueError, match=r"nan\.fits: the stamp has no finite, unmasked"):
        load_stamps(tmp_path / "nan.fits", psf)
    with pytest.raises(GalnetValueError, match="none of the 2 stamps"):
        load_stamps(np.full((2, S, S), np.nan), psf)


def test_iter_stamps_chunks_equal_load(tmp_path, psf):
    imgs = noise_stamps(10)
    imgs[4, 2, 2] = np.nan
    path = write(tmp_path / "c.fits", imgs)
    it = iter_stamps(path, psf, chunk=3, ids=np.arange(10) + 100)
    assert len(it) == 10 and it.n_batches == 4
    batches = list(it)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    whole = load_stamps(path, psf, ids=np.arange(10) + 100)
    joined = StampBatch.concatenate(batches)
    for name in StampBatch._PER_STAMP:
        np.testing.assert_array_equal(getattr(joined, name), getattr(whole, name), err_msg=name)
    np.testing.assert_array_equal(whole.ids, np.arange(100, 110))
    with iter_stamps(path, psf, chunk=4) as it:  # stopping early closes the files
        assert len(next(it)) == 4
    with pytest.raises(StopIteration):
        next(it)
    sub = whole.select(slice(2, 5))
    assert len(sub) == 3 and sub.ids[0] == 102 and sub.flags[2] == Flag.NONFINITE


def test_load_speed_vectorised(tmp_path, psf):
    """The common path (cube of 61x61 stamps, one PSF) is vectorised: 4096 stamps read, masked,
    noise-estimated in well under a second (generous bound for a loaded 2-core machine)."""
    path = write(tmp_path / "big.fits", noise_stamps(4096))
    load_stamps(path, psf)
    t = time.perf_counter()
    b = load_stamps(path, psf)
    assert len(b) == 4096
    assert time.perf_counter() - t < 1.5


# ----------------------------------------------------------------------------------------------
# Geometry: padding, cropping, rebinning
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("H, x0", [(41, -10), (81, 10), (61, 0)])
def test_pad_crop_keeps_the_centre(psf, H, x0):
    imgs = noise_stamps(2, H, rms=0.01)
    c = (H - 1) // 2
    imgs[:, c, c] = 100.0
    imgs[1, c + 3, c - 5] = 50.0  # an off-centre point
    b = load_stamps(imgs, psf)
    assert np.unravel_index(b.images[0].argmax(), (S, S)) == (C, C)
    assert b.images[1, C + 3, C - 5] == 50.0
    np.testing.assert_array_equal(b.rebin, 1)
    np.testing.assert_array_equal(b.x0, x0)
    np.testing.assert_array_equal(b.y0, x0)
    back = to_input_coords({"x": [30.0, 25.0], "y": [30.0, 33.0]}, b)
    np.testing.assert_array_equal(back["x"], [c, c - 5])
    np.testing.assert_array_equal(back["y"], [c, c + 3])
    padded = H < S
    assert (b.flags == (Flag.PADDED if padded else 0)).all()
    assert b.mask[0].sum() == (S * S - H * H if padded else 0)
    if padded:
        assert b.mask[0, 0, 0] and not b.mask[0, C, C] and b.images[0, 0, 0] == 0


def test_even_sized_stamp_centre(psf):
    imgs = noise_stamps(1, 60, rms=0.01)
    b = load_stamps(imgs, psf)
    assert b.x0[0] == 0 and b.flags[0] == Flag.PADDED
    assert b.input_x[0] == 29.5
    # the input centre (29.5, 29.5) maps to output (29.5, 29.5)
    np.testing.assert_allclose(to_stamp_coords([29.5], [29.5], b), [[29.5], [29.5]])


@pytest.mark.parametrize("k", [2, 3])
def test_forced_rebin_flux_transform_and_noise(psf, k):
    H = S * k  # the k*61 box is the input: no block partly outside, nothing masked by padding
    rng = np.random.default_rng(5)
    coarse = rng.uniform(0.5, 2.0, (S, S)) + 30.0 * gauss(S, sigma=2.0, dx=3.0, dy=-2.0)
    fine = np.kron(coarse, np.ones((k, k))) / k**2  # constant inside each k x k block
    imgs = np.stack([fine, fine]).astype(np.float32)
    imgs[1, 7, 100] += 1000.0  # a point source
    sig = np.full(imgs.shape, 0.7, np.float32)
    mask = np.zeros(imgs.shape, bool)
    mask[1, 40, 41] = True
    b = load_stamps(imgs, psf, sigma=sig, mask=mask, rebin=k)
    assert (b.rebin == k).all() and (b.flags == Flag.REBINNED).all()
    assert not b.mask[0].any()
    # block sums: flux kept, each output pixel is its block
    np.testing.assert_allclose(b.images[0], coarse, rtol=2e-6)
    np.testing.assert_allclose(b.images[0].sum(dtype=np.float64), imgs[0].sum(dtype=np.float64),
                               rtol=1e-6)
    # the transform is exact: the flux-weighted centre in input pixels is recovered
    yy, xx = np.mgrid[:S, :S].astype(float)
    out = to_input_coords({"x": xx.ravel(), "y": yy.ravel()},
                          {"rebin": np.full(S * S, k), "x0": np.full(S * S, b.x0[0]),
                           "y0": np.full(S * S, b.y0[0])})
    w = coarse.ravel()
    yi, xi = np.mgrid[:H, :H].astype(float)
    wi = fine.ravel()
    np.testing.assert_allclose((w * out["x"]).sum() / w.sum(), (wi * xi.ravel()).sum() / wi.sum(),
                               rtol=1e-12)
    np.testing.assert_allclose((w * out["y"]).sum() / w.sum(), (wi * yi.ravel()).sum() / wi.sum(),
                               rtol=1e-12)
    # the point source lands in the output pixel whose block holds it
    xo, yo = to_stamp_coords([100.0], [7.0], b.select(1))
    iy, ix = int(round(yo[0])), int(round(xo[0]))
    assert b.images[1, iy, ix] > 1000.0 and abs(xo[0] - ix) <= 0.5 - 0.5 / k + 1e-12
    # sigma in quadrature, mask OR (the masked input pixel masks its block)
    np.testing.assert_allclose(b.sigma[0], 0.7 * k, rtol=1e-6)
    xo, yo = to_stamp_coords([41.0], [40.0], b.select(1))
    assert b.mask[1, int(round(yo[0])), int(round(xo[0]))] and b.mask[1].sum() == 1
    # the input centre lands at the stamp centre
    xc, yc = to_stamp_coords([(H - 1) / 2], [(H - 1) / 2], b.select(0))
    assert xc[0] == yc[0] == 30.0


def test_rebin_odd_input_by_two_is_a_quarter_pixel_off(psf):
    b = load_stamps(noise_stamps(1, 121), psf, rebin=2)
    xc, yc = to_stamp_coords([60.0], [60.0], b)
    assert xc[0] == yc[0] == 29.75
    assert b.flags[0] == Flag.REBINNED | Flag.PADDED  # blocks half outside the input: masked
    assert b.mask[0, 60].all() and b.mask[0, :, 60].all() and not b.mask[0, :60, :60].any()


@pytest.mark.parametrize("k", [2, 3])
def test_rebinned_psf_is_the_binned_point_source(k):
    """A point source (the effective PSF sampled on the input pixels) binned by k must look like
    the rebinned PSF returned for that stamp (exact for k = 3, Quintic interpolation for k = 2)."""
    H = 121
    x0 = math.floor((H - 1) / 2 - k * C - (k - 1) / 2 + 0.5)
    s = x0 + k * C + (k - 1) / 2  # input position of the output centre
    yy, xx = np.mgrid[:H, :H].astype(float)
    point = np.exp(-((xx - s) ** 2 + (yy - s) ** 2) / (2 * 2.2**2))
    b = load_stamps(point[None], gauss(P, 2.2), rebin=k)
    assert b.x0[0] == x0
    img = b.images[0].astype(np.float64)
    expect = img[C - 12:C + 13, C - 12:C + 13] / img.sum()
    psf_k = b.psfs[0].astype(np.float64)
    assert np.unravel_index(psf_k.argmax(), psf_k.shape) == (12, 12)
    tol = 1e-6 if k == 3 else 2e-3
    np.testing.assert_allclose(psf_k, expect / expect.sum(), atol=tol * psf_k.max())
    assert not b.flags[0] & Flag.BAD_PSF


def test_auto_rebin_rule(psf):
    H = 151
    yy, xx = np.mgrid[:H, :H]
    r = np.hypot(xx - 75, yy - 75)
    rng = np.random.default_rng(6)

    def disk(re, flux):
        img = np.exp(-1.678 * r / re)
        return flux * img / img.sum() + rng.normal(0, 0.1, (H, H))

    imgs = np.stack([disk(3.0, 2000.0), disk(25.0, 3000.0), disk(25.0, 30.0)]).astype(np.float32)
    b = load_stamps(imgs, psf)
    np.testing.assert_array_equal(b.rebin, [1, 2, 1])  # small; large; large but undetectable
    assert b.flags[0] == 0 and b.flags[1] & Flag.REBINNED and b.flags[2] == 0
    np.testing.assert_allclose(b.sky_rms[[0, 2]], 0.1, rtol=0.15)
    np.testing.assert_allclose(b.sky_rms[1], 0.2, rtol=0.25)  # 4 pixels summed: 2x the rms
    np.testing.assert_allclose(b.psfs.sum(axis=(1, 2)), 1.0, rtol=1e-6)
    assert not np.allclose(b.psfs[0], b.psfs[1])  # the rebinned stamp has the binned PSF
    # stamps no larger than 61 are never rebinned automatically
    small = load_stamps(imgs[:, 45:106, 45:106], psf)
    np.testing.assert_array_equal(small.rebin, 1)


# ----------------------------------------------------------------------------------------------
# PSFs
# ----------------------------------------------------------------------------------------------
def test_psf_cube_sizes_and_recentring(tmp_path):
    imgs = noise_stamps(4)
    cube = np.stack([gauss(31, 1.5), gauss(31, 2.5), gauss(31, 1.5, dx=1, dy=-1),
                     gauss(31, 1.5, dx=4)])
    write(tmp_path / "psfcube.fits", cube)
    b = load_stamps(imgs, tmp_path / "psfcube.fits")
    np.testing.assert_allclose(b.psfs.sum(axis=(1, 2)), 1.0, rtol=1e-6)
    for i in range(4):
        assert np.unravel_index(b.psfs[i].argmax(), (P, P)) == (12, 12)
    np.testing.assert_allclose(b.psfs[0], b.psfs[2], atol=1e-7)  # shifted back by (-1, +1)
    assert b.psfs[1].max() < b.psfs[0].max()
    np.testing.assert_array_equal(b.flags, [0, 0, 0, Flag.BAD_PSF])  # 4 px off: BAD_PSF
    # a flat-topped PSF whose central pixel ties the peak is not moved
    top = np.pad(np.ones((3, 3)), 5)
    np.testing.assert_array_equal(load_stamps(imgs[:1], top).psfs[0], _pad(top / 9.0, P))
    # a small PSF is zero-padded to 25 x 25
    b = load_stamps(imgs, gauss(15, 1.5))
    assert b.psfs[0][0, 0] == 0 and b.psfs[0][12, 12] == pytest.approx(
        1.0 / gauss(15, 1.5).sum(), rel=1e-6)
    # a broad PSF losing > 10% of its flux outside 25 x 25 is flagged
    assert load_stamps(imgs[:1], gauss(61, 8.0)).flags[0] == Flag.BAD_PSF


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    w = (size - a.shape[0]) // 2
    return np.pad(a, w).astype(np.float32)


def _synthetic_psfex(path, x_zero=100.0, x_scale=200.0, y_zero=80.0, y_scale=150.0):
    """A tiny PSFEx file (degree-1 polynomial in X_IMAGE, Y_IMAGE; PSF_SAMP = 1)."""
    yy, xx = np.mgrid[:P, :P] - (P - 1) / 2.0
    elongated = np.exp(-xx**2 / (2 * 1.6**2) - yy**2 / (2 * 2.2**2))
    basis = np.stack([gauss(P, 1.6), gauss(P, 2.4) - gauss(P, 1.6),
                      elongated - gauss(P, 1.6)]).astype(np.float32)
    col = fits.Column(name="PSF_MASK", format=f"{basis.size}E", dim=f"({P},{P},3)",
                      array=basis[None])
    hdu = fits.BinTableHDU.from_columns([col], name="PSF_DATA")
    for key, v in dict(POLNAXIS=2, POLGRP1=1, POLNAME1="X_IMAGE", POLZERO1=x_zero,
                       POLSCAL1=x_scale, POLGRP2=1, POLNAME2="Y_IMAGE", POLZERO2=y_zero,
                       POLSCAL2=y_scale, POLNGRP=1, POLDEG1=1, PSFNAXIS=3, PSFAXIS1=P,
                       PSFAXIS2=P, PSFAXIS3=3, PSF_SAMP=1.0, PSF_FWHM=4.0).items():
        hdu.header[key] = v
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return basis


def test_psfex_synthetic_positions_are_one_based(tmp_path):
    basis = _synthetic_psfex(tmp_path / "m.psf")
    pos = np.array([[99.0, 79.0], [299.0, 79.0], [99.0, 229.0]])  # 0-based frame positions
    b = load_stamps(noise_stamps(3), tmp_path / "m.psf", psf_positions=pos)
    for i, (x, y) in enumerate(pos):
        u_, v_ = (x + 1 - 100.0) / 200.0, (y + 1 - 80.0) / 150.0  # GalSim / PSFEx: 1-based
        expect = basis[0] + u_ * basis[1] + v_ * basis[2]
        np.testing.assert_allclose(b.psfs[i], expect / expect.sum(), atol=2e-6)
    assert b.psfs[1].max() < b.psfs[0].max()
    with pytest.raises(GalnetPSFError, match=r"m\.psf: a PSFEx model needs"):
        load_stamps(noise_stamps(3), tmp_path / "m.psf")


def test_psfex_real_des_file(shared_data):
    path = shared_data / "psf" / "des_DECam_00154912_12_psfex.psf"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    import galsim
    import galsim.des

    pos = np.array([[500.0, 1000.0], [1500.0, 3000.0]])
    b = load_stamps(noise_stamps(2), path, psf_positions=pos)
    model = galsim.des.DES_PSFEx(str(path))
    for i, (x, y) in enumerate(pos):
        ref = model.getPSF(galsim.PositionD(x + 1, y + 1)).drawImage(
            nx=P, ny=P, scale=1.0, method="no_pixel").array
        np.testing.assert_allclose(b.psfs[i], ref / ref.sum(), atol=1e-6)
        assert np.unravel_index(b.psfs[i].argmax(), (P, P)) == (12, 12)
    assert not np.allclose(b.psfs[0], b.psfs[1], atol=1e-5)


def test_real_decam_frame_with_legacypipe_psfex(shared_data):
    d = shared_data / "frames" / "decam"
    stem = "c4d_140818_232043"
    frame, psf = d / f"{stem}_ooi_z_ls9.N12.fits", d / f"{stem}_ooi_z_ls9-N12-psfex.fits"
    if not (frame.is_file() and psf.is_file()):
        pytest.skip("DECam test frame absent")
    b = load_frame(frame, np.array([[40.0, 30.0], [2.0, 2.0]]), psf,
                   ivar=d / f"{stem}_oow_z_ls9.N12.fits")
    np.testing.assert_allclose(b.psfs.sum(axis=(1, 2)), 1.0, rtol=1e-6)
    assert np.isfinite(b.sigma).all() and b.wcs is not None
    assert b.flags[1] & Flag.EDGE
    assert b.meta["pixel_scale_source"].endswith("PIXSCAL1")


# ----------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------
def _frame(tmp_path, with_wcs=True, shape=(150, 200)):
    rng = np.random.default_rng(7)
    data = rng.normal(0.0, 0.05, shape).astype(np.float32)
    hdr = fits.Header()
    if with_wcs:
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [150.0, 2.0]
        w.wcs.crpix = [100.0, 75.0]
        w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
        hdr = w.to_header()
    hdr["MAGZP"] = 30.0
    path = tmp_path / "frame.fits"
    fits.PrimaryHDU(data, hdr).writeto(path, overwrite=True)
    return path, data


POSITIONS = np.array([[100.0, 75.0], [10.4, 20.0], [195.5, 140.6], [60.5, 130.2]])


def test_frame_cutouts_match_cutout2d(tmp_path, psf):
    path, data = _frame(tmp_path)
    b = load_frame(path, POSITIONS, psf)
    assert len(b) == 4
    for i, (x, y) in enumerate(POSITIONS):
        cut = Cutout2D(data, (x, y), S, mode="partial", fill_value=np.nan)
        np.testing.assert_array_equal(b.mask[i], np.isnan(cut.data))
        np.testing.assert_array_equal(b.images[i][~b.mask[i]], cut.data[~np.isnan(cut.data)])
        # stamp pixel (0, 0) is Cutout2D's (0, 0) in the frame
        xy = to_input_coords({"x": [0.0], "y": [0.0]}, b.select(i))
        (sy, sx), (cy, cx) = cut.slices_original, cut.slices_cutout
        assert (xy["x"][0], xy["y"][0]) == (sx.start - cx.start, sy.start - cy.start)
    np.testing.assert_array_equal(b.flags, [0, Flag.EDGE, Flag.EDGE, Flag.EDGE])
    np.testing.assert_array_equal(b.input_x, POSITIONS[:, 0])
    assert b.zeropoint == 30.0 and b.meta["zeropoint_source"].endswith("MAGZP")
    assert b.pixel_scale == pytest.approx(0.2, rel=1e-9)  # from the WCS
    # stamp centre -> the pixel holding the position (Cutout2D rounding: 60.5 -> 60)
    back = to_input_coords({"x": [30.0] * 4, "y": [30.0] * 4}, b)
    np.testing.assert_array_equal(back["x"], [100, 10, 195, 60])
    np.testing.assert_array_equal(back["y"], [75, 20, 141, 130])


def test_frame_radec_positions_and_catalogue_files(tmp_path, psf):
    path, _ = _frame(tmp_path)
    w = WCS(fits.getheader(path))
    pos = POSITIONS + 0.1  # away from the half-pixel rounding edge (ra/dec round trips)
    ra, dec = w.all_pix2world(pos[:, 0], pos[:, 1], 0)
    t = QTable({"id": np.array([11, 12, 13, 14]), "ra": ra * u.deg, "dec": dec * u.deg})
    t.write(tmp_path / "pos.ecsv")
    Table({"X": pos[:, 0], "Y": pos[:, 1]}).write(tmp_path / "pos.csv")
    by_xy = load_frame(path, pos, psf)
    by_radec = load_frame(path, tmp_path / "pos.ecsv", psf)
    by_csv = load_frame(path, tmp_path / "pos.csv", psf)
    for b in (by_radec, by_csv):
        np.testing.assert_array_equal(b.images, by_xy.images)
        np.testing.assert_array_equal(b.x0, by_xy.x0)
    np.testing.assert_array_equal(by_radec.ids, [11, 12, 13, 14])
    xs, ys = to_stamp_coords(pos[:, 0], pos[:, 1], by_radec)
    back = to_input_coords({"x": xs, "y": ys}, by_radec)
    np.testing.assert_allclose(back["ra"], ra, atol=1e-9)
    np.testing.assert_allclose(back["dec"], dec, atol=1e-9)


def test_frame_noise_extensions_and_chunks(tmp_path, psf):
    data = np.random.default_rng(8).normal(0, 0.3, (120, 120)).astype(np.float32)
    ivar = np.full(data.shape, 1 / 0.3**2, np.float32)
    mask = np.zeros(data.shape, np.int16)
    mask[50, 50] = 1
    data[70, 70] = np.nan
    write(tmp_path / "f.fits", data, ("IVAR", ivar), ("MASK", mask))
    pos = np.array([[50.0, 50.0], [70.0, 70.0], [-100.0, -100.0]])
    it = iter_frame(tmp_path / "f.fits", pos, psf, chunk=2)
    b = StampBatch.concatenate(list(it))
    assert b.mask[0, C, C] and b.mask[1, C, C]
    np.testing.assert_allclose(b.sky_rms[:2], 0.3, rtol=1e-5)
    np.testing.assert_array_equal(b.flags[:2], Flag.NONFINITE)  # the NaN is in both cutouts
    assert b.mask[0, 50, 50] and b.images[1, 30, 30] == 0
    assert b.flags[2] == Flag.EDGE | Flag.MASKED_CENTRE and b.mask[2].all()  # wholly outside


def test_frame_errors(tmp_path, psf):
    path, _ = _frame(tmp_path, with_wcs=False)
    with pytest.raises(GalnetValueError,
                       match=r"frame\.fits: no celestial WCS, cannot use ra/dec positions"):
        load_frame(path, {"ra": [150.0], "dec": [2.0]}, psf)
    with pytest.raises(GalnetValueError, match="needs columns x, y"):
        load_frame(path, {"a": [1.0], "b": [2.0]}, psf)
    with pytest.raises(GalnetValueError, match="non-finite positions"):
        load_frame(path, np.array([[1.0, np.nan]]), psf)
    with pytest.raises(GalnetValueError, match="frame must be a 2-D image"):
        load_frame(np.zeros((2, 70, 70)), POSITIONS, psf)
    with pytest.raises(GalnetPSFError, match=r"PSF cube has 2 PSFs for 4 stamps"):
        load_frame(path, POSITIONS, np.stack([psf, psf]))
    with pytest.raises(GalnetValueError, match="size must be an odd"):
        load_frame(path, POSITIONS, psf, size=60)


def test_frame_with_psfex(tmp_path):
    path, _ = _frame(tmp_path)
    basis = _synthetic_psfex(tmp_path / "m.psf")
    b = load_frame(path, POSITIONS[:2], tmp_path / "m.psf")
    x, y = POSITIONS[1]
    u_, v_ = (x + 1 - 100.0) / 200.0, (y + 1 - 80.0) / 150.0
    expect = basis[0] + u_ * basis[1] + v_ * basis[2]
    np.testing.assert_allclose(b.psfs[1], expect / expect.sum(), atol=2e-6)


# ----------------------------------------------------------------------------------------------
# Header keywords
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cards, scale, zp", [
    ({"PIXSCALE": 0.2, "MAGZERO": 30.0}, 0.2, 30.0),
    ({"PIXSCAL1": 0.262, "MAGZP": 22.5}, 0.262, 22.5),
    ({"ZEROPNT": 25.0}, 0.168, 25.0),
    ({"ZP": 24.0, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CD1_1": -0.396 / 3600,
      "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 0.396 / 3600}, 0.396, 24.0),
    ({}, 0.168, 27.0),
])
def test_header_keywords(tmp_path, psf, cards, scale, zp):
    hdr = fits.Header()
    for k, v in cards.items():
        hdr[k] = v
    fits.PrimaryHDU(noise_stamps(1)[0], hdr).writeto(tmp_path / "h.fits")
    b = load_stamps(tmp_path / "h.fits", psf)
    assert b.pixel_scale == pytest.approx(scale, rel=1e-9) and b.zeropoint == zp
    b = load_stamps(tmp_path / "h.fits", psf, pixel_scale=0.5, zeropoint=31.0)
    assert (b.pixel_scale, b.zeropoint) == (0.5, 31.0)
    assert b.meta["pixel_scale_source"] == b.meta["zeropoint_source"] == "argument"
    assert load_stamps(tmp_path / "h.fits", psf, preset="sdss-r").pixel_scale == pytest.approx(
        scale if cards.get("PIXSCALE") or cards.get("PIXSCAL1") or "CD1_1" in cards else 0.396)


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------
def test_bad_psfs(tmp_path, psf):
    imgs = noise_stamps(3)
    write(tmp_path / "even.fits", gauss(24))
    with pytest.raises(GalnetPSFError, match=r"even\.fits: PSF must have odd sizes.*24x24"):
        load_stamps(imgs, tmp_path / "even.fits")
    write(tmp_path / "zero.fits", np.zeros((25, 25)))
    with pytest.raises(GalnetPSFError, match=r"zero\.fits: PSF has a non-positive sum"):
        load_stamps(imgs, tmp_path / "zero.fits")
    cube = np.stack([psf, -psf, psf])
    with pytest.raises(GalnetPSFError, match=r"psf: PSF 1 has a non-positive sum"):
        load_stamps(imgs, cube)
    bad = psf.copy()
    bad[0, 0] = np.nan
    with pytest.raises(GalnetPSFError, match="non-finite"):
        load_stamps(imgs, bad)
    write(tmp_path / "cube2.fits", np.stack([psf, psf]))
    with pytest.raises(GalnetPSFError, match=r"cube2\.fits: PSF cube has 2 PSFs for 3 stamps"):
        load_stamps(imgs, tmp_path / "cube2.fits")
    with pytest.raises(GalnetPSFError, match="2-D image or an"):
        load_stamps(imgs, np.ones((1, 1, 5, 5)))


def test_bad_stamp_inputs(tmp_path, psf):
    imgs = noise_stamps(3)
    with pytest.raises(GalnetValueError, match=r"sigma: sigma shape \(2, 61, 61\) does not match"):
        load_stamps(imgs, psf, sigma=np.ones((2, S, S)))
    write(tmp_path / "m.fits", np.zeros((3, 41, 41), np.uint8))
    with pytest.raises(GalnetValueError, match=r"m\.fits: mask shape \(3, 41, 41\)"):
        load_stamps(imgs, psf, mask=tmp_path / "m.fits")
    with pytest.raises(GalnetFileError, match=r"nowhere\.fits: no such file"):
        load_stamps(tmp_path / "nowhere.fits", psf)
    with pytest.raises(GalnetFileError, match=r"nopsf\.fits: no such file"):
        load_stamps(imgs, tmp_path / "nopsf.fits")
    (tmp_path / "junk.fits").write_text("not a FITS file")
    with pytest.raises(GalnetFileError, match=r"junk\.fits"):
        load_stamps(tmp_path / "junk.fits", psf)
    with pytest.raises(GalnetValueError, match="sigma or ivar, not both"):
        load_stamps(imgs, psf, sigma=np.ones_like(imgs), ivar=np.ones_like(imgs))
    with pytest.raises(GalnetValueError, match="rebin must be"):
        load_stamps(imgs, psf, rebin=9)
    with pytest.raises(GalnetValueError, match="chunk must be"):
        iter_stamps(imgs, psf, chunk=0)
    with pytest.raises(GalnetValueError, match="expected a 2-D image"):
        load_stamps(np.ones(5), psf)
    with pytest.raises(GalnetValueError, match="pixel_scale must be"):
        load_stamps(imgs, psf, pixel_scale=-1.0)
    with pytest.raises(GalnetValueError, match="ids: expected 3"):
        load_stamps(imgs, psf, ids=[1, 2])


# ----------------------------------------------------------------------------------------------
# Coordinates
# ----------------------------------------------------------------------------------------------
def test_to_input_coords_with_errors_and_units():
    tr = {"rebin": np.array([1, 2, 3]), "x0": np.array([10.0, -5.0, 0.0]),
          "y0": np.array([0.0, 3.0, -31.0]), "pixel_scale": 0.2}
    t = QTable({"x": [30.0, 30.0, 30.0] * u.pix, "y": [1.0, 2.0, 30.0] * u.pix,
                "re_pix": [2.0, 2.0, 2.0] * u.pix, "x_err": [0.1] * 3 * u.pix,
                "re_pix_err": [0.5] * 3 * u.pix})
    out = to_input_coords(t, tr)
    np.testing.assert_allclose(out["x"], [40.0, -5 + 60 + 0.5, 90 + 1])
    np.testing.assert_allclose(out["y"], [1.0, 3 + 4 + 0.5, -31 + 90 + 1])
    np.testing.assert_allclose(out["re_pix"], [2.0, 4.0, 6.0])
    np.testing.assert_allclose(out["x_err"], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(out["re_pix_err"], [0.5, 1.0, 1.5])
    np.testing.assert_allclose(out["re_arcsec"], [0.4, 0.8, 1.2])
    assert "y_err" not in out and "ra" not in out
    xs, ys = to_stamp_coords(out["x"], out["y"], tr)
    np.testing.assert_allclose(xs, 30.0)
    np.testing.assert_allclose(ys, [1.0, 2.0, 30.0])
    with pytest.raises(GalnetValueError, match="transform must be"):
        to_input_coords(t, {"x0": 1})


# ----------------------------------------------------------------------------------------------
# Catalogues
# ----------------------------------------------------------------------------------------------
def _catalogue():
    return QTable({"id": np.arange(3), "name": ["a", "bb", "ccc"],
                   "x": [30.0, 31.5, 29.0] * u.pix,
                   "mag": [21.0, 22.5, 23.0] * u.mag, "re_arcsec": [0.5, 1.0, 2.0] * u.arcsec,
                   "n": [1.0, 4.0, 2.5], "flags": np.array([0, 4, 65], np.int64)},
                  meta={"preset": "hsc-r"})


@pytest.mark.parametrize("suffix", [".ecsv", ".fits", ".parquet"])
def test_catalogue_roundtrip(tmp_path, suffix):
    path = tmp_path / f"cat{suffix}"
    path.write_text("old")  # overwrite allowed when asked
    t = _catalogue()
    assert write_catalog(t, path, overwrite=True) == path
    r = read_catalog(path)
    assert isinstance(r, QTable) and r.colnames == t.colnames
    for c in t.colnames:
        assert getattr(r[c], "unit", None) == getattr(t[c], "unit", None), c
        np.testing.assert_array_equal(np.asarray(getattr(r[c], "value", r[c])),
                                      np.asarray(getattr(t[c], "value", t[c])))
    assert r["name"].dtype.kind == "U"
    assert {k.lower(): v for k, v in r.meta.items()}["preset"] == "hsc-r"  # FITS: PRESET
    assert "__serialized_columns__" not in r.meta
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_catalogue_errors(tmp_path):
    assert catalog_format("a/b.FITS") == "fits" and catalog_format("c.parquet") == "parquet"
    with pytest.raises(GalnetValueError, match=r"cat\.txt: unknown catalogue format '\.txt'"):
        write_catalog(_catalogue(), tmp_path / "cat.txt")
    with pytest.raises(GalnetFileError, match="does not exist"):
        write_catalog(_catalogue(), tmp_path / "no" / "cat.ecsv")
    with pytest.raises(GalnetFileError, match=r"missing\.fits: no such file"):
        read_catalog(tmp_path / "missing.fits")
    with pytest.raises(GalnetValueError, match="unknown catalogue format"):
        load_frame(np.zeros((70, 70)), tmp_path / "pos.dat", gauss(P))
