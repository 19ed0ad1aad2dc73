"""Which gain the frame pipeline uses (galnet.frame.inputs.frame_gain): the argument always wins;
a header GAIN (or DECam's GAINA / GAINB) only when it agrees with the sky's level / variance;
else that estimate; else none, and the misfit test then assumes a sky-limited source noise
(galnet.quality.assumed_gain). The provenance says which gain was used and where it came from."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from test_frame import gaussian_psf

from galnet.frame.inputs import FrameData, frame_gain, header_gain


def _fd(sky_removed: bool, sky: float, rms: float, **meta) -> FrameData:
    noise = SimpleNamespace(sky_removed=sky_removed, sky_level=sky, rms=rms)
    z = np.zeros((4, 4), np.float32)
    return FrameData(z, z + rms, z.astype(bool), noise, 0.2, 27.0, name="f.fits",
                     meta={"header_gain": None, "header_gain_key": None, "header_sky": None,
                           **meta})


def test_header_gain_keywords():
    assert header_gain([fits.Header({"GAIN": 2.5})])["header_gain"] == 2.5
    h = header_gain([fits.Header({"GAINA": 4.0, "GAINB": 4.2, "AVSKY": 267.0})])
    assert h["header_gain"] == pytest.approx(4.1) and h["header_gain_key"] == "GAINA/GAINB"
    assert h["header_sky"] == 267.0
    # extension first, then the primary; non-numbers and zeros are ignored
    h = header_gain([fits.Header({"GAIN": "n/a"}), None, fits.Header({"GAIN": 0.0}),
                     fits.Header({"GAIN": 3.0})])
    assert h["header_gain"] == 3.0
    assert header_gain([fits.Header()])["header_gain"] is None


def test_frame_gain_rules(caplog):
    # sky 1000 ADU left in, rms 20 -> sky / variance = 2.5 e-/ADU
    assert frame_gain(_fd(True, 1000.0, 20.0, header_gain=2.0), 7.0) == (7.0, "argument")
    g, src = frame_gain(_fd(True, 1000.0, 20.0, header_gain=2.0, header_gain_key="GAIN"))
    assert g == 2.0 and src.startswith("header GAIN")
    with caplog.at_level(logging.INFO, logger="galnet.frame.inputs"):
        g, src = frame_gain(_fd(True, 1000.0, 20.0, header_gain=10.0, header_gain_key="GAIN"))
    assert g == pytest.approx(2.5) and src.startswith("estimated") and "disagrees" in src
    assert "gain 2.5" in caplog.text
    g, src = frame_gain(_fd(True, 1000.0, 20.0))
    assert g == pytest.approx(2.5) and src.startswith("estimated")
    # the sky was subtracted before: a header sky level still checks the header gain
    g, src = frame_gain(_fd(False, 0.0, 20.0, header_gain=2.2, header_gain_key="GAINA/GAINB",
                            header_sky=1000.0))
    assert g == 2.2 and "header's sky level" in src
    # nothing to check it against (e.g. a VST frame in physical units keeping GAIN = 1.59)
    g, src = frame_gain(_fd(False, 1e-14, 3e-12, header_gain=1.59, header_gain_key="GAIN"))
    assert g is None and src.startswith("none") and "not used" in src
    g, src = frame_gain(_fd(False, 0.0, 1.0))
    assert g is None and src.startswith("none")
    # a sky too faint to measure a gain
    assert frame_gain(_fd(True, 50.0, 20.0, header_gain=2.0))[0] is None


@pytest.fixture(scope="module")
def sky_frame(tmp_path_factory):
    """A frame in ADU with its sky (1000 ADU) left in and Poisson noise of gain 2 e-/ADU;
    header GAIN given as ``gain_hdr``."""
    from galnet.profiles.render import render

    psf = gaussian_psf()
    t = dict(x=np.array([40.3, 90.0]), y=np.array([45.1, 80.0]), flux=np.array([3e4, 2e4]),
             re_pix=np.array([5.0, 3.0]), n=np.array([1.5, 3.0]), q=np.array([0.6, 0.8]),
             pa_deg=np.array([30.0, 100.0]))
    model = render(t, psf, (128, 128)).sum(axis=0) + 1000.0
    rng = np.random.default_rng(2)
    img = (rng.poisson(model * 2.0) / 2.0).astype(np.float32)
    d = tmp_path_factory.mktemp("gain")

    def write(gain_hdr):
        p = d / f"f{gain_hdr}.fits"
        h = fits.Header({"MAGZERO": 27.0, "PIXSCALE": 0.2})
        if gain_hdr is not None:
            h["GAIN"] = gain_hdr
        fits.writeto(p, img, h, overwrite=True)
        return str(p)

    return write, psf


def test_run_frame_gain_provenance(sky_frame):
    from galnet.frame import run_frame

    write, psf = sky_frame
    t = run_frame(write(2.0), psf, progress=False)
    prov = t.meta["provenance"]
    assert prov["options"]["gain"] == 2.0
    assert prov["sources"]["gain"].startswith("header GAIN")
    assert t.meta["frame"]["gain"] == 2.0
    t = run_frame(write(40.0), psf, progress=False)  # an inconsistent header gain
    g = t.meta["provenance"]["options"]["gain"]
    assert 1.4 < g < 2.6, g  # sky / variance, ~2 (Background2D's rms)
    assert t.meta["provenance"]["sources"]["gain"].startswith("estimated")
    t = run_frame(write(None), psf, gain=3.0, progress=False)  # the argument wins
    assert t.meta["provenance"]["options"]["gain"] == 3.0
    assert t.meta["provenance"]["sources"]["gain"] == "argument"


def test_misfit_without_gain_is_robust():
    """A bright single Sérsic with source noise not in sigma: the sky-only test flags it, the
    assumed gain does not; a clumpy galaxy stays flagged."""
    from galnet.profiles.render import render
    from galnet.quality import assumed_gain, misfit, residual_stats

    psf = gaussian_psf()
    p = dict(x=np.array([30.2]), y=np.array([29.7]), flux=np.array([5e4]),
             re_pix=np.array([5.0]), n=np.array([1.5]), q=np.array([0.7]),
             pa_deg=np.array([30.0]))
    model = render(p, psf, (61, 61))
    g = 50.0  # gain x sigma_sky = 50 (sky of 2500 e-/px), sigma_sky = 1
    rng = np.random.default_rng(0)
    data = model + rng.normal(size=model.shape) * np.sqrt(1.0 + model / g)
    sky = np.ones_like(model)
    kw = dict(x=p["x"], y=p["y"], re=p["re_pix"], q=p["q"], pa_deg=p["pa_deg"])
    snr = float(np.sqrt((model**2).sum()))
    assert snr > 300
    assert misfit(residual_stats(data, model, sky, **kw), snr)[0]  # the problem
    ga = assumed_gain(sky)
    assert ga == pytest.approx(15.0)
    assert not misfit(residual_stats(data, model, sky, gain=ga, **kw), snr)[0]
    clumps = np.zeros_like(model)
    clumps[0, 34, 33] = clumps[0, 25, 28] = clumps[0, 31, 24] = 0.04 * p["flux"][0]
    from scipy.ndimage import gaussian_filter

    data_c = data + gaussian_filter(clumps, (0, 1.3, 1.3))
    assert misfit(residual_stats(data_c, model, sky, gain=ga, **kw), snr)[0]
    # sigma in other units: the assumed gain follows the sky noise
    assert assumed_gain(4.0 * sky, np.zeros(sky.shape, bool))[0] == pytest.approx(15.0 / 4.0)
