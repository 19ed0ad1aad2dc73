"""galnet.io.background: frame noise from weight / variance / sigma maps or Background2D, a sky
left in the image found and removed with a warning, a sky-subtracted frame left alone."""

import logging
import re

import numpy as np
import pytest
from astropy.io import fits

from galnet.errors import GalnetValueError
from galnet.io.background import SKY_TOLERANCE, FrameNoise, frame_noise


def blobs(shape=(200, 200), seed=0) -> np.ndarray:
    """A few Gaussian sources (peak 20-200), noise-free."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = np.zeros(shape)
    for _ in range(12):
        x, y = rng.uniform(10, shape[1] - 10), rng.uniform(10, shape[0] - 10)
        s, a = rng.uniform(1.5, 6.0), rng.uniform(20, 200)
        img += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
    return img


def test_sky_left_in_the_image_is_removed_with_a_warning(caplog):
    rng = np.random.default_rng(1)
    clean = blobs() + rng.normal(0.0, 1.0, (200, 200))
    with caplog.at_level(logging.WARNING, logger="galnet.io.background"):
        n = frame_noise(clean + 50.0, name="raw.fits")
    assert isinstance(n, FrameNoise) and n.sky_removed and n.source == "Background2D"
    assert n.sky_level == pytest.approx(50.0, abs=0.15)
    assert n.rms == pytest.approx(1.0, rel=0.06)
    np.testing.assert_allclose(n.sky, 50.0, atol=0.3)
    msg = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msg) == 1 and msg[0].startswith("raw.fits: a sky of ")
    assert float(re.search(r"sky of ([-\d.e+]+)", msg[0]).group(1)) == pytest.approx(50.0, abs=0.2)
    sub = n.subtracted(clean + 50.0)
    assert abs(np.median(sub - clean)) < 0.3
    # the same frame sky-subtracted: nothing removed, no warning, sky stays 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="galnet.io.background"):
        m = frame_noise(clean, name="sub.fits")
    assert not m.sky_removed and not caplog.records
    assert (m.sky == 0).all() and abs(m.sky_level) < SKY_TOLERANCE * m.rms
    assert m.subtracted(clean) is clean


def test_background2d_noise_follows_the_frame():
    """No map: the Background2D rms map, per region (left half rms 1, right half rms 3)."""
    rng = np.random.default_rng(2)
    noise = np.ones((256, 256))
    noise[:, 128:] = 3.0
    n = frame_noise(blobs((256, 256)) + rng.normal(0.0, 1.0, (256, 256)) * noise)
    assert np.median(n.sigma[:, 10:100]) == pytest.approx(1.0, rel=0.08)
    assert np.median(n.sigma[:, 160:250]) == pytest.approx(3.0, rel=0.08)
    assert n.sigma.dtype == np.float64 and n.sigma.shape == (256, 256)
    assert not n.mask.any() and np.isfinite(n.sigma).all()


@pytest.mark.parametrize("kind", ["weight", "variance", "sigma"])
def test_noise_maps_are_honoured(kind):
    rng = np.random.default_rng(3)
    sig = np.full((120, 150), 2.0)
    sig[:, :50] = 0.5
    data = blobs((120, 150)) + rng.normal(0.0, 1.0, sig.shape) * sig
    data[5, 7] = np.nan
    m = {"weight": 1.0 / sig**2, "variance": sig**2, "sigma": sig.copy()}[kind]
    m[60:70, 100:110] = 0.0  # zero weight / variance / sigma: unusable
    user = np.zeros(sig.shape, np.uint8)
    user[0, 0] = 1
    n = frame_noise(data, mask=user, name="f.fits", **{kind: m})
    assert n.source == f"{kind} map"
    good = n.mask.copy()
    good[60:70, 100:110] = good[5, 7] = good[0, 0] = False
    assert not good.any()
    assert n.mask[60:70, 100:110].all() and n.mask[5, 7] and n.mask[0, 0]
    assert np.isinf(n.sigma[n.mask]).all()
    np.testing.assert_allclose(n.sigma[~n.mask], sig[~n.mask], rtol=1e-12)
    assert not n.sky_removed and n.rms == pytest.approx(2.0)


def test_weight_map_with_a_raw_sky():
    """A raw frame (sky 3000, noise from an inverse-variance map): the sky is found from the data
    and removed; the noise is the map's."""
    rng = np.random.default_rng(4)
    sig = np.full((100, 100), 30.0)
    data = 3000.0 + 10 * blobs((100, 100)) + rng.normal(0.0, 30.0, sig.shape)
    n = frame_noise(data, weight=1.0 / sig**2)
    assert n.sky_removed and n.sky_level == pytest.approx(3000.0, abs=5.0)
    assert n.rms == pytest.approx(30.0) and n.source == "weight map"


def test_errors():
    d = np.zeros((50, 50))
    with pytest.raises(GalnetValueError, match="give one of weight, variance, sigma"):
        frame_noise(d, weight=np.ones((50, 50)), sigma=np.ones((50, 50)))
    with pytest.raises(GalnetValueError, match=r"f\.fits: weight shape \(5, 5\) does not match"):
        frame_noise(d, weight=np.ones((5, 5)), name="f.fits")
    with pytest.raises(GalnetValueError, match="2-D image"):
        frame_noise(np.zeros((2, 5, 5)))
    with pytest.raises(GalnetValueError, match="no usable pixel"):
        frame_noise(np.full((20, 20), np.nan))


def test_real_decam_raw_frame_sky_removed(shared_data):
    d = shared_data / "frames" / "decam"
    img, wt = d / "c4d_170316_062107_ooi_z_ls9.N2.fits", d / "c4d_170316_062107_oow_z_ls9.N2.fits"
    if not (img.is_file() and wt.is_file()):
        pytest.skip("DECam raw ooi/oow frame absent")
    n = frame_noise(fits.getdata(img, 1), weight=fits.getdata(wt, 1), name=str(img))
    assert n.sky_removed and n.sky_level == pytest.approx(3170.0, rel=0.02)
    assert n.source == "weight map" and 10.0 < n.rms < 100.0


def test_real_vst_frame_is_sky_subtracted(shared_data):
    path = shared_data / "frames" / "vst_r_G202627.fits"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    n = frame_noise(fits.getdata(path), name=str(path))
    assert not n.sky_removed and (n.sky == 0).all() and n.rms > 0
