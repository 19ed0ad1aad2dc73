"""``--gain`` in frame mode: the sources' Poisson noise joins the sky noise (GALFIT's sigma
image), so a bright galaxy with source noise gets chi2nu ~ 1 instead of >> 1."""

from __future__ import annotations

import numpy as np
import pytest
from test_frame import gaussian_psf

from galnet.cli import main
from galnet.errors import GalnetValueError

GAIN = 2.0  # e- per image unit
TRUTH = dict(x=np.array([60.2]), y=np.array([59.7]), flux=np.array([2e5]),
             re_pix=np.array([5.0]), n=np.array([1.5]), q=np.array([0.7]),
             pa_deg=np.array([30.0]))


@pytest.fixture(scope="module")
def bright():
    """A bright galaxy (peak ~ 600 x the sky rms) with Poisson noise of gain GAIN."""
    from galnet.profiles.render import render

    psf = gaussian_psf()
    model = render(TRUTH, psf, (121, 121)).sum(axis=0)
    rng = np.random.default_rng(3)
    img = model + rng.normal(0.0, 1.0, model.shape) + (
        rng.poisson(np.maximum(model, 0) * GAIN) / GAIN - np.maximum(model, 0))
    return img.astype(np.float32), psf


def test_add_source_noise_matches_poisson_variance():
    from galnet.frame.inputs import FrameData, add_source_noise

    data = np.zeros((20, 20), np.float32)
    data[5:15, 5:15] = 50.0
    fd = FrameData(data, np.ones_like(data), np.zeros(data.shape, bool), None, 0.2, 27.0)
    out = add_source_noise(fd, 2.0)
    assert out.sigma[10, 10] == pytest.approx(np.sqrt(1.0 + 50.0 / 2.0), rel=1e-6)
    assert out.sigma[0, 0] == pytest.approx(1.0)  # sky only far from the source
    assert out.meta["gain"] == 2.0 and fd.sigma[10, 10] == 1.0  # the input is not changed
    with pytest.raises(GalnetValueError, match="gain must be a positive number"):
        add_source_noise(fd, 0.0)


def test_gain_brings_chi2nu_to_one(bright):
    from galnet.frame import run_frame

    img, psf = bright
    kw = dict(sigma=np.ones(img.shape), pixel_scale=0.2, zeropoint=27.0, progress=False)
    without = run_frame(img, psf, **kw)
    with_gain = run_frame(img, psf, gain=GAIN, **kw)
    i = int(np.argmax(without["snr"]))
    j = int(np.argmax(with_gain["snr"]))
    assert without["chi2nu"][i] > 3.0  # the sky-only noise understates the source's noise
    assert with_gain["chi2nu"][j] < 0.5 * without["chi2nu"][i]
    assert with_gain.meta["provenance"]["options"]["gain"] == GAIN


def test_cli_gain_rules(tmp_path, capsys):
    rc = main(["predict", "--images", str(tmp_path / "x.fits"), "--psf", "p.fits", "--gain", "2",
               "--out", str(tmp_path / "c.ecsv"), "-q"])
    assert rc == 2
    assert "--gain with --frame only" in capsys.readouterr().err
