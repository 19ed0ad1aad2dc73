"""The network zooms out (galnet.frame.zoom): a source whose predicted light runs past the network's
reach is re-run rebinned, its stamp smoothed back to the training seeing, its cutout grown; small
sources are untouched. Small synthetic frames (galnet.profiles.render), no ../shared needed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from galnet.flags import Flag
from galnet.frame import zoom
from galnet.presets import get_preset

PRESET = get_preset("hsc-r")


def test_light_radius_and_reach_fraction_agree():
    """r90 of an exponential disc is gammaincinv(2, 0.9) / b_1 re; the reach fraction at the
    radius that holds 90 % is 0.9; rebinning by k is the same as an re k times smaller."""
    b1 = special.gammaincinv(2.0, 0.5)
    r = zoom.light_radius(np.array([10.0]), np.array([1.0]), np.array([1.0]), PRESET)
    assert r[0] == pytest.approx(10.0 * special.gammaincinv(2.0, 0.9) / b1, rel=1e-3)
    re, n, q = np.array([3.0, 8.0, 15.0]), np.array([1.0, 4.0, 4.0]), np.array([0.7, 0.7, 0.7])
    r90 = zoom.light_radius(re, n, q, PRESET)
    frac = zoom.reach_fraction(re * PRESET.containment_radius / r90, n, q, 1, PRESET)
    np.testing.assert_allclose(frac, PRESET.containment, atol=1e-3)
    np.testing.assert_allclose(zoom.reach_fraction(re, n, q, 2, PRESET),
                               zoom.reach_fraction(re / 2, n, q, 1, PRESET))
    assert zoom.reach_fraction([np.nan], [4.0], [0.7], 1, PRESET)[0] > 0.99  # tiny, contained


def _fake_network(true_re, n=4.0, q=0.7):
    """A stand-in network: it sees at most the light inside its reach, so its re is the true re
    capped at the re whose r90 fills the reach at rebin k (the failure the zoom fixes)."""
    calls = []
    cap = PRESET.containment_radius / zoom.light_radius(np.array([1.0]), np.array([n]),
                                                        np.array([q]), PRESET)[0]

    def run(index, rebin):
        calls.append((np.asarray(index).copy(), np.asarray(rebin).copy()))
        re = np.minimum(np.asarray(true_re)[index], 0.97 * cap * np.asarray(rebin))
        m = len(index)
        return ({"re_pix": re, "n": np.full(m, n), "q": np.full(m, q), "x": np.zeros(m)},
                np.zeros(m, np.int64))

    return run, calls


def test_zoom_out_reruns_only_the_sources_that_need_it():
    true_re = np.array([3.0, 15.0, 60.0, 400.0])
    run, calls = _fake_network(true_re)
    nn, flags = run(np.arange(4), np.ones(4, np.int64))
    calls.clear()
    out, fl, k = zoom.zoom_out(run, nn, flags, np.ones(4, np.int64), PRESET)
    assert k[0] == 1 and fl[0] == 0 and out["re_pix"][0] == 3.0   # small: untouched
    assert 0 not in set(np.concatenate([c[0] for c in calls]).tolist())  # never re-run
    assert k[1] >= 2 and out["re_pix"][1] == pytest.approx(15.0)   # one zoom holds it
    assert k[2] == 8 and out["re_pix"][2] > 7 * nn["re_pix"][2]    # zooms round after round
    assert k[3] == 8                                                # capped at MAX_REBIN
    assert np.all(fl[1:] & Flag.REBINNED)
    assert len(calls) <= zoom.ZOOM_ROUNDS
    assert nn["re_pix"][1] < 15.0                                   # inputs not modified


def test_zoom_out_rejects_a_zoom_that_shrinks_re():
    """Seeing more light can only make re larger: a zoomed answer with a smaller re is dropped
    (previous values, factor and flags kept)."""
    nn = {"re_pix": np.array([9.0]), "n": np.array([4.0]), "q": np.array([0.7])}
    calls = []

    def run(index, rebin):
        calls.append(rebin.copy())
        return {"re_pix": np.array([6.0]), "n": np.array([3.0]), "q": np.array([0.7])}, \
            np.zeros(1, np.int64)

    out, fl, k = zoom.zoom_out(run, nn, np.array([8], np.int64), np.ones(1, np.int64), PRESET)
    assert len(calls) == 1 and k[0] == 1 and fl[0] == 8
    assert out["re_pix"][0] == 9.0 and out["n"][0] == 4.0


def test_zoom_out_skips_faint_sources():
    """Below ZOOM_SNR_MIN the first answer is too noisy to zoom on; NaN S/N (a position with no
    detection segment) may zoom."""
    run, calls = _fake_network(np.array([15.0, 15.0, 15.0]))
    nn, flags = run(np.arange(3), np.ones(3, np.int64))
    calls.clear()
    snr = np.array([zoom.ZOOM_SNR_MIN - 1, zoom.ZOOM_SNR_MIN + 1, np.nan])
    _, _, k = zoom.zoom_out(run, nn, flags, np.ones(3, np.int64), PRESET, snr=snr)
    assert k[0] == 1 and k[1] >= 2 and k[2] >= 2
    assert 0 not in set(np.concatenate([c[0] for c in calls]).tolist())


def test_zoom_out_respects_max_rebin_and_rounds():
    run, calls = _fake_network(np.array([400.0]))
    nn, flags = run(np.arange(1), np.ones(1, np.int64))
    calls.clear()
    _, _, k = zoom.zoom_out(run, nn, flags, np.ones(1, np.int64), PRESET, max_rebin=3)
    assert k[0] == 3 and [int(c[1][0]) for c in calls] == [2, 3]   # 2k, then capped at 3
    calls.clear()
    _, _, k = zoom.zoom_out(run, nn, flags, np.ones(1, np.int64), PRESET, rounds=1)
    assert len(calls) == 1 and k[0] == 2


def test_plan_sizes_grow_only_large_sources():
    nn = {"re_pix": np.array([3.0, 15.0, 1e4]), "n": np.array([1.0, 4.0, 4.0]),
          "q": np.array([0.8, 0.7, 0.7])}
    size = zoom.plan_sizes(nn, np.array([61, 61, 61]), PRESET)
    assert size[0] == 61
    r90 = zoom.light_radius(nn["re_pix"][1:2], nn["n"][1:2], nn["q"][1:2], PRESET)[0]
    assert size[1] >= 2 * r90 / 0.9 and size[1] % 2 == 1
    assert size[2] == 61 * 8 + 1                                    # capped: the network's view
    assert zoom.plan_sizes(nn, np.array([301, 61, 61]), PRESET)[0] == 301  # never shrinks


def test_match_psf_brings_rebinned_stamps_to_training_seeing():
    from galnet.frame.sources import psf_fwhm_pix
    from galnet.profiles.render import render

    yy, xx = np.mgrid[:25, :25] - 12.0
    psf = np.exp(-(xx**2 + yy**2) / (2 * (1.6 / 2.3548) ** 2))
    psf /= psf.sum()
    gal = render(dict(x=np.array([30.0]), y=np.array([30.0]), flux=np.array([1000.0]),
                      re_pix=np.array([4.0]), n=np.array([1.0]), q=np.array([0.7]),
                      pa_deg=np.array([20.0])), psf, (61, 61))[0]

    noise = np.random.default_rng(1).normal(0.0, 1.0, (61, 61))

    class B:
        images = np.stack([gal, gal, noise]).astype(np.float32)
        sigma = np.ones((3, 61, 61), np.float32)
        mask = np.zeros((3, 61, 61), bool)
        psfs = np.stack([psf, psf, psf]).astype(np.float32)
        rebin = np.array([1, 2, 2])

    b = B()
    b.mask[1, 0:5, :] = True
    done = zoom.match_psf(b, PRESET)
    assert done.tolist() == [False, True, True]
    np.testing.assert_array_equal(b.images[0], gal.astype(np.float32))  # k = 1: untouched
    target = PRESET.seeing.mean / PRESET.pixel_scale
    assert psf_fwhm_pix(b.psfs[1]) == pytest.approx(target, rel=0.15)
    assert b.psfs[1].sum() == pytest.approx(1.0, rel=1e-5)
    assert b.images[1].sum() == pytest.approx(gal.sum(), rel=0.02)      # flux kept
    # the sigma map follows the rms of the smoothed noise
    assert float(b.images[2][10:-10, 10:-10].std()) == pytest.approx(float(b.sigma[2, 0, 0]),
                                                                      rel=0.2)
    assert b.mask[1, 0:5].all() and not b.mask[1, 30, 30]
    # the model stays exact: the smoothed galaxy is the galaxy rendered with the smoothed PSF
    model = render(dict(x=np.array([30.0]), y=np.array([30.0]), flux=np.array([1000.0]),
                        re_pix=np.array([4.0]), n=np.array([1.0]), q=np.array([0.7]),
                        pa_deg=np.array([20.0])), b.psfs[1], (61, 61))[0]
    assert np.abs(b.images[1] - model)[10:50, 10:50].max() < 0.02 * model.max()


#: One large galaxy (re 15 px, n 4, detection S/N ~ 70, 90 % light radius ~ 70 px: past the
#: network's 27 px reach) and two small ones, 400 x 400 px, noise 1.
FRAME = dict(x=np.array([200.3, 80.0, 320.0]), y=np.array([199.6, 90.0, 310.0]),
             flux=np.array([3000.0, 1500.0, 1500.0]), re_pix=np.array([15.0, 3.0, 5.0]),
             n=np.array([4.0, 1.5, 2.5]), q=np.array([0.7, 0.8, 0.6]),
             pa_deg=np.array([30.0, 0.0, 100.0]))


def _run(monkeypatch, enabled: bool):
    from test_frame import make_frame

    from galnet.frame import pipeline, run_frame

    if not enabled:
        monkeypatch.setattr(zoom, "zoom_out", lambda run, nn, fl, k, preset, **kw: (nn, fl, k))
        monkeypatch.setattr(pipeline, "MATCH_PSF", False)
    img, psf, _ = make_frame(5, truth=FRAME, shape=(400, 400))
    t = run_frame(img, psf, sigma=np.ones(img.shape), pixel_scale=0.2, zeropoint=27.0,
                  progress=False)
    x, y = t["x"].value, t["y"].value
    rows = [int(np.argmin((x - a) ** 2 + (y - b) ** 2))
            for a, b in zip(FRAME["x"], FRAME["y"], strict=True)]
    monkeypatch.undo()
    return t[rows]


def test_large_galaxy_zooms_out_small_ones_unchanged(monkeypatch):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    before = _run(monkeypatch, enabled=False)
    after = _run(monkeypatch, enabled=True)
    assert int(before["rebin"][0]) == 1                      # detection alone: not rebinned
    assert int(after["rebin"][0]) >= 2 and after["flags"][0] & Flag.REBINNED
    assert int(after["cutout"][0].value) > int(before["cutout"][0].value)
    for i in (1, 2):                                         # small ones: untouched
        assert int(after["rebin"][i]) == 1 and int(after["cutout"][i].value) == 61
        assert after["re_pix"][i].value == pytest.approx(before["re_pix"][i].value)
    err_before = abs(np.log(before["re_pix"][0].value / 15.0))
    err_after = abs(np.log(after["re_pix"][0].value / 15.0))
    # measured: re 8.5 px without the zoom, 12-13 px with it (truth 15)
    assert err_after < err_before - 0.15
