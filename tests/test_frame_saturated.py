"""Saturated pixels: detection sees them, the fits do not (galnet.frame.inputs.mask_saturated)."""

import numpy as np
from astropy.io import fits

from galnet.frame.inputs import mask_saturated, read_frame


def test_saturated_pixels_leave_the_fits_not_the_detection(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.normal(0.0, 1.0, (80, 80))
    img[38:43, 38:43] = 5000.0  # a clipped star core
    h = fits.Header()
    h["SATURATE"] = 5000.0
    path = tmp_path / "f.fits"
    fits.PrimaryHDU(img.astype(np.float32), header=h).writeto(path)
    fd = read_frame(str(path), pixel_scale=0.2, zeropoint=25.0)
    assert fd.saturated is not None
    assert fd.saturated[40, 40] and fd.saturated[37, 40]  # grown by 1 px
    assert fd.saturated.sum() == 7 * 7 - 4  # 5x5 grown by one (no corners)
    assert not fd.mask[40, 40]  # detection still sees the star
    out = mask_saturated(fd)
    assert out.mask[40, 40] and out.mask[37, 40] and not out.mask[10, 10]
    assert fd.meta["n_saturated"] == 45


def test_no_saturate_keyword_changes_nothing(tmp_path):
    img = np.random.default_rng(4).normal(0.0, 1.0, (40, 40)).astype(np.float32)
    path = tmp_path / "g.fits"
    fits.PrimaryHDU(img).writeto(path)
    fd = read_frame(str(path), pixel_scale=0.2, zeropoint=25.0)
    assert fd.saturated is None and mask_saturated(fd) is fd
