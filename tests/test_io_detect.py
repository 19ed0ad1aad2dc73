"""galnet.io.detect and adaptive frame cutouts: detection and deblending of rendered Sérsic
galaxies on a synthetic frame with a sky left in it, cutouts sized to each source, block-averaged
(flux kept, PSF binned to the same pixels) for a galaxy beyond the network's 61 x 61 reach."""

import math
import time

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from galnet.errors import GalnetValueError
from galnet.flags import Flag
from galnet.io.background import frame_noise
from galnet.io.batch import StampBatch, to_input_coords, to_stamp_coords
from galnet.io.cutouts import iter_frame, load_frame, load_stamps
from galnet.io.detect import REACH, cutout_plan, detect
from galnet.io.fits import scale_and_zeropoint
from galnet.io.prepare import MAX_REBIN
from galnet.presets import get_preset
from galnet.profiles.render import render

S, C, P = 61, 30, 25
PSF_SIGMA = 1.3
FWHM = 2.3548 * PSF_SIGMA
SKY = 50.0
# x, y, re_pix, n, q, pa_deg, flux: isolated, isolated, a touching pair, one large galaxy, a star
GALAXIES = np.array([
    [40.3, 220.7, 3.0, 1.0, 0.7, 30.0, 2000.0],
    [220.2, 230.4, 2.0, 2.5, 0.9, 0.0, 1500.0],
    [30.6, 40.2, 2.5, 1.0, 0.8, 100.0, 1500.0],
    [40.4, 46.1, 2.5, 1.0, 0.6, 20.0, 1000.0],
    [130.0, 130.0, 25.0, 1.0, 0.8, 60.0, 1.0e5],
    [220.0, 40.0, 0.05, 1.0, 1.0, 0.0, 3000.0],
])
BIG, PAIR = 4, (2, 3)


def gauss_psf(size: int = P, sigma: float = PSF_SIGMA) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2.0
    return np.exp(-(xx**2 + yy**2) / (2 * sigma**2))


@pytest.fixture(scope="module")
def frame():
    """(model without noise, frame = model + sky + noise (rms 1)), 260 x 260."""
    g = GALAXIES
    params = {"x": g[:, 0], "y": g[:, 1], "re_pix": g[:, 2], "n": g[:, 3], "q": g[:, 4],
              "pa_deg": g[:, 5], "flux": g[:, 6]}
    model = render(params, gauss_psf(), shape=(260, 260)).sum(axis=0)
    rng = np.random.default_rng(11)
    return model, model + SKY + rng.normal(0.0, 1.0, model.shape)


@pytest.fixture(scope="module")
def detected(frame):
    _, data = frame
    noise = frame_noise(data, name="synthetic.fits")
    import photutils.segmentation  # noqa: F401 - imports (seconds on a loaded machine) untimed

    t0 = time.perf_counter()
    table, labels = detect(noise.subtracted(data), noise.sigma, noise.mask, psf_fwhm_pix=FWHM)
    return noise, table, labels, time.perf_counter() - t0


def nearest(table, x, y):
    d = np.hypot(table["x"] - x, table["y"] - y)
    i = int(np.argmin(d))
    return i, float(d[i])


def test_detection_finds_every_source_within_a_pixel(detected):
    noise, t, labels, dt = detected
    assert noise.sky_removed and noise.sky_level == pytest.approx(SKY, abs=0.3)
    rows = []
    for x, y, *_ in GALAXIES:
        i, d = nearest(t, x, y)
        assert d < 1.0, (x, y, d)
        rows.append(i)
    assert len(set(rows)) == len(GALAXIES)
    # at most an island of the large galaxy's outer isophote (no SExtractor CLEAN step): faint
    extra = np.setdiff1d(np.arange(len(t)), rows)
    assert len(extra) <= 2 and (t["snr"][extra] < 10).all() and (t["snr"][rows] > 50).all()
    assert t.colnames[:3] == ["id", "x", "y"]
    for c in ("flux", "snr", "area", "a", "b", "theta_deg", "kron_radius", "r_extent", "peak",
              "bbox_xmin", "bbox_xmax", "bbox_ymin", "bbox_ymax", "star_like"):
        assert c in t.colnames
    # ids are the segment labels; the segment of each source holds its position
    for r in t:
        assert labels[int(round(r["y"])), int(round(r["x"]))] == r["id"]
    big = t[rows[BIG]]
    assert big["flux"] == pytest.approx(1.0e5, rel=0.1) and big["snr"] > 100
    assert t["star_like"][rows[5]] and not t["star_like"][rows[BIG]]
    assert (t["theta_deg"] >= 0).all() and (t["theta_deg"] < 180).all()
    for g in (0, BIG):  # theta from +x = galnet's pa_deg (from +y) + 90
        dth = (t["theta_deg"][rows[g]] - (GALAXIES[g, 5] + 90.0)) % 180.0
        assert min(dth, 180.0 - dth) < 10.0
    assert dt < 2.0  # 260 x 260: 0.1 s on one core


def test_touching_pair_is_deblended(frame, detected):
    _, data = frame
    noise, t, labels, _ = detected
    a, b = (nearest(t, *GALAXIES[i, :2])[0] for i in PAIR)
    assert a != b
    # without deblending the pair is one segment
    t1, _ = detect(noise.subtracted(data), noise.sigma, noise.mask, psf_fwhm_pix=FWHM,
                   deblend=False, snr_min=10.0)
    assert len(t1) == len(GALAXIES) - 1
    mid = GALAXIES[list(PAIR), :2].mean(axis=0)
    i, d = nearest(t1, *mid)
    assert d < 4.0


def test_mask_sigma_and_snr_min_are_honoured(frame, detected):
    _, data = frame
    noise, t, _, _ = detected
    img = noise.subtracted(data)
    mask = np.zeros(img.shape, bool)
    mask[200:240, 20:60] = True  # hides the first galaxy
    t2, lab2 = detect(img, noise.sigma, mask, psf_fwhm_pix=FWHM)
    assert nearest(t2, *GALAXIES[0, :2])[1] > 5 and (lab2[mask] == 0).all()
    sig = noise.sigma.copy()
    sig[205:255, 195:245] *= 1000.0  # so noisy there that the second galaxy is not significant
    t3, _ = detect(img, sig, None, psf_fwhm_pix=FWHM, snr_min=10.0)
    assert nearest(t3, *GALAXIES[1, :2])[1] > 5 and len(t3) == len(GALAXIES) - 1
    t4, lab4 = detect(img, noise.sigma, psf_fwhm_pix=FWHM, snr_min=float(np.sort(t["snr"])[2]))
    assert len(t4) == len(t) - 2 and lab4.max() == labels_max(t)
    assert (t4["snr"] >= np.sort(t["snr"])[2]).all()
    with pytest.raises(GalnetValueError, match="psf_fwhm_pix must be"):
        detect(img, noise.sigma, psf_fwhm_pix=0.0)
    with pytest.raises(GalnetValueError, match=r"sigma shape \(3, 3\)"):
        detect(img, np.ones((3, 3)), psf_fwhm_pix=FWHM)
    empty, lab = detect(np.zeros((50, 50)), 1.0, psf_fwhm_pix=FWHM)
    assert len(empty) == 0 and "r_extent" in empty.colnames and not lab.any()


def labels_max(t) -> int:
    return int(np.max(t["id"]))


def test_cutout_plan(detected):
    _, t, _, _ = detected
    size, k = cutout_plan(t)
    assert size.dtype == k.dtype == np.int64
    assert (size % 2 == 1).all() and (size >= S).all()
    assert ((S * (k - 1) < size) | (k == 1)).all() and (S * k >= size).all()
    big = nearest(t, *GALAXIES[BIG, :2])[0]
    assert k[big] >= 2
    small = [nearest(t, *GALAXIES[i, :2])[0] for i in (0, 1, 5)]
    np.testing.assert_array_equal(k[small], 1)
    np.testing.assert_array_equal(size[small], S)
    # the rule: r_extent within REACH of the half-side; capped at max_rebin
    s2, k2 = cutout_plan({"r_extent": [0.0, 27.0, 27.1, 60.0, 1000.0, np.nan]})
    np.testing.assert_array_equal(s2[:4], [61, 61, 63, 135])
    np.testing.assert_array_equal(k2, [1, 1, 2, 3, MAX_REBIN, 1])
    assert s2[4] == 2 * math.ceil(1000.0 / REACH) + 1 > S * MAX_REBIN
    assert cutout_plan({"r_extent": [1000.0]}, max_rebin=3)[1][0] == 3


def test_adaptive_cutouts_with_frame_noise(frame, detected):
    model, data = frame
    noise, t, _, _ = detected
    size, k = cutout_plan(t)
    pos = Table({"id": t["id"], "x": t["x"], "y": t["y"]})
    b = load_frame(data, pos, gauss_psf(), size=size, rebin=k, noise=noise)
    assert len(b) == len(t)
    np.testing.assert_array_equal(b.ids, t["id"])
    np.testing.assert_array_equal(b.rebin, k)
    np.testing.assert_array_equal(b.flags & Flag.REBINNED != 0, k > 1)
    assert b.meta["noise"] == "Background2D" and b.meta["sky_removed"]
    big = nearest(t, *GALAXIES[BIG, :2])[0]
    kb = int(k[big])
    # flux kept: the block sums are the sky-subtracted frame over the S k box
    x0, y0 = int(b.x0[big]), int(b.y0[big])
    box = noise.subtracted(data)[y0:y0 + S * kb, x0:x0 + S * kb]
    assert box.shape == (S * kb, S * kb) and not b.mask[big].any()
    assert b.images[big].sum(dtype=np.float64) == pytest.approx(box.sum(), rel=1e-5)
    # the model galaxy's light (no noise) sits inside the cutout: > 95 % of its flux
    assert model[y0:y0 + S * kb, x0:x0 + S * kb].sum() > 0.95 * (model.sum() - 6500.0)
    # stamp noise from the frame's map: block sums add k^2 pixels in quadrature -> k x rms
    assert np.median(b.sigma[big]) == pytest.approx(kb * noise.rms, rel=0.1)
    for i in range(len(b)):
        assert np.median(b.sigma[i]) == pytest.approx(k[i] * noise.rms, rel=0.1)
    # the detected centre maps to the stamp centre (within the k x k block)
    xs, ys = to_stamp_coords(t["x"], t["y"], b)
    assert (np.abs(xs - C) <= 0.5 + 1e-9).all() and (np.abs(ys - C) <= 0.5 + 1e-9).all()
    back = to_input_coords({"x": xs, "y": ys}, b)
    np.testing.assert_allclose(back["x"], t["x"], atol=1e-9)
    # PSF binned to the same pixels: unit sum, centred, narrower than the native one
    np.testing.assert_allclose(b.psfs.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert np.unravel_index(b.psfs[big].argmax(), (P, P)) == (12, 12)
    assert b.psfs[big].max() > b.psfs[0].max() * 1.5
    # batches keep the input order whatever the sizes; chunking changes nothing
    parts = list(iter_frame(data, pos, gauss_psf(), size=size, rebin=k, noise=noise, chunk=2))
    joined = StampBatch.concatenate(parts)
    for name in StampBatch._PER_STAMP:
        np.testing.assert_array_equal(getattr(joined, name), getattr(b, name), err_msg=name)
    # without frame noise the stamps keep the sky (the border estimate cannot remove it)
    raw = load_frame(data, pos, gauss_psf(), size=size, rebin=k)
    assert np.median(raw.images[0]) > 40.0 and abs(np.median(b.images[0])) < 1.0


@pytest.mark.parametrize("k", [2, 4, 5, 8])
def test_forced_rebin_per_position_even_and_odd(frame, k):
    """rebin given per position: the S k box (S k + 1 read for even k) is block-summed, flux
    kept, no padding inside the frame, the position inside the central output pixel's block."""
    _, data = frame
    pos = np.array([[130.0, 130.0], [129.6, 131.4]])
    big = np.zeros((700, 700))
    big[220:480, 220:480] = data - SKY  # room for S k = 488 px
    pos = pos + 220.0
    b = load_frame(big, pos, gauss_psf(), rebin=np.array([k, 1]))
    np.testing.assert_array_equal(b.rebin, [k, 1])
    assert b.flags[0] == Flag.REBINNED and b.flags[1] == 0 and not b.mask.any()
    x0, y0 = int(b.x0[0]), int(b.y0[0])
    box = big[y0:y0 + S * k, x0:x0 + S * k]
    assert box.shape == (S * k, S * k)
    assert b.images[0].sum(dtype=np.float64) == pytest.approx(box.sum(), rel=1e-4, abs=1e-3)
    np.testing.assert_allclose(b.images[0, C, C], box[C * k:C * k + k, C * k:C * k + k].sum(),
                               rtol=1e-5)
    xs, ys = to_stamp_coords(pos[:, 0], pos[:, 1], b)
    assert abs(xs[0] - C) <= 0.5 and abs(ys[0] - C) <= 0.5
    assert b.psfs[0].sum() == pytest.approx(1.0, abs=1e-6)


def test_frame_noise_masks_zero_weight_pixels(frame):
    _, data = frame
    w = np.ones(data.shape)
    w[216:227, 35:46] = 0.0  # the centre of the first galaxy
    d = data.copy()
    d[10, 10] = np.nan
    n = frame_noise(d, weight=w)
    b = load_frame(d, np.array([[40.3, 220.7], [12.0, 12.0]]), gauss_psf(), noise=n)
    assert b.mask[0, C - 5:C + 6, C - 5:C + 6].all() and b.flags[0] & Flag.MASKED_CENTRE
    assert not b.flags[0] & Flag.NONFINITE  # zero weight is not a non-finite pixel
    assert b.flags[1] & Flag.NONFINITE and b.mask[1, C - 2, C - 2]  # the NaN still is
    assert np.isfinite(b.sigma).all() and (b.sigma > 0).all()
    with pytest.raises(GalnetValueError, match="noise must be a FrameNoise"):
        load_frame(d[:50, :50], np.array([[10.0, 10.0]]), gauss_psf(), noise=n)
    with pytest.raises(GalnetValueError, match="rebin: expected"):
        load_frame(d, np.array([[10.0, 10.0]]), gauss_psf(), rebin=np.array([1, 2]))
    with pytest.raises(GalnetValueError, match="rebin: expected"):
        load_frame(d, np.array([[10.0, 10.0]]), gauss_psf(), rebin=np.array([9]))
    with pytest.raises(GalnetValueError, match="size must be an odd"):
        load_frame(d, np.array([[10.0, 10.0]]), gauss_psf(), size=np.array([60]))


@pytest.mark.parametrize("k", [4, 5, 6, 7, 8])
def test_rebinned_psf_up_to_max_rebin(k):
    """The binned PSF for k = 4..8 is the block-summed point source, unit sum, centred."""
    H = S * k + 1 - (S * k) % 2
    x0 = math.floor((H - 1) / 2 - k * C - (k - 1) / 2 + 0.5)
    s = x0 + k * C + (k - 1) / 2  # input position of the output centre
    yy, xx = np.mgrid[:H, :H].astype(float)
    sp = 6.0
    point = np.exp(-((xx - s) ** 2 + (yy - s) ** 2) / (2 * sp**2))
    b = load_stamps(point[None], gauss_psf(61, sp), rebin=k)
    assert b.rebin[0] == k and b.flags[0] == Flag.REBINNED
    img = b.images[0].astype(np.float64)
    expect = img[C - 12:C + 13, C - 12:C + 13]
    psf_k = b.psfs[0].astype(np.float64)
    assert psf_k.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.unravel_index(psf_k.argmax(), psf_k.shape) == (12, 12)
    np.testing.assert_allclose(psf_k, expect / expect.sum(), atol=2e-4 * psf_k.max())


def test_pixel_scale_from_the_wcs():
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cd = [[-0.2 / 3600 * 0.6, 0.2 / 3600 * 0.8], [0.2 / 3600 * 0.8, 0.2 / 3600 * 0.6]]
    ps, _, meta = scale_and_zeropoint(None, None, [w.to_header()], get_preset("hsc-r"), "f.fits")
    assert ps == pytest.approx(0.2, rel=1e-9) and meta["pixel_scale_source"] == "f.fits WCS"


# ----------------------------------------------------------------------------------------------
# Real frame (skips without ../shared/data)
# ----------------------------------------------------------------------------------------------
def test_real_vst_frame(shared_data):
    path = shared_data / "frames" / "vst_r_G202627.fits"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    data = fits.getdata(path)
    hdr = fits.getheader(path)
    ps, _, meta = scale_and_zeropoint(None, None, [hdr], get_preset("kids-r"), str(path))
    assert ps == pytest.approx(0.2, rel=1e-3) and meta["pixel_scale_source"].endswith("WCS")
    noise = frame_noise(data, name=str(path))
    t, _ = detect(noise.subtracted(data), noise.sigma, noise.mask, psf_fwhm_pix=0.7 / ps)
    assert len(t) > 50
    size, k = cutout_plan(t)
    near = np.hypot(t["x"] - 300.0, t["y"] - 300.0) < 40.0
    assert near.any()
    big = np.flatnonzero(near)[np.argmax(t["flux"][near])]
    assert k[big] >= 3
