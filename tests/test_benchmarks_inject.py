"""benchmarks/inject_frames.py and inject_metrics.py on a small synthetic frame (no ../shared)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import inject_frames as inj  # noqa: E402
import inject_metrics as im  # noqa: E402

from galnet.flags import Flag  # noqa: E402

SIG = 1.5  # Gaussian PSF sigma (px): FWHM 3.53 px


def _gauss_psf(size: int = 25) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size // 2
    p = np.exp(-0.5 * (x**2 + y**2) / SIG**2)
    return p / p.sum()


def _frame(rng, shape=(240, 240)) -> tuple[np.ndarray, np.ndarray]:
    """Sky 100 + noise 1 + 12 Gaussian stars (flux 3e3) on a grid; returns (data, star xy)."""
    H, W = shape
    data = 100.0 + rng.normal(0, 1.0, shape)
    yy, xx = np.mgrid[:H, :W]
    xy = np.array([(30 + 60 * i + 0.3 * j, 30 + 60 * j + 0.2 * i) for i in range(4)
                   for j in range(3)])
    for x, y in xy:
        data += 3e3 * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / SIG**2) / (2 * np.pi * SIG**2)
    return data, xy


@pytest.fixture(scope="module")
def synth():
    rng = np.random.default_rng(1)
    data, xy = _frame(rng)
    bad = np.zeros(data.shape, bool)
    sigma = np.ones(data.shape)
    cat, seg, sky = inj.detect_real(data, sigma, bad, fwhm=3.5)
    psf = inj.star_psf(data, sky, seg, cat, saturate=None)
    fr = inj.Frame("synth", data, sigma, bad, 0.2, 1e6, "test", psf=psf, seg=seg,
                   real=np.c_[np.asarray(cat["x"], float), np.asarray(cat["y"], float)])
    from galnet.sim.bank.psf_inputs import psf_fwhm

    fr.fwhm = psf_fwhm(psf, 1.0)
    return fr, xy


def test_detect_and_star_psf(synth):
    fr, xy = synth
    assert len(fr.real) == len(xy)
    d = np.min(np.hypot(fr.real[:, None, 0] - xy[:, 0], fr.real[:, None, 1] - xy[:, 1]), axis=1)
    assert d.max() < 0.1
    assert fr.fwhm == pytest.approx(2.3548 * SIG, rel=0.05)
    assert fr.psf.sum() == pytest.approx(1.0) and fr.psf.argmax() == 12 * 25 + 12


def test_place_and_inject(synth):
    fr, _ = synth
    rng = np.random.default_rng(2)
    obj = inj.draw_objects(rng, 6, 2, fr.scale)
    assert obj["re_pix"][:6].max() <= 3.0 / fr.scale and obj["re_pix"][:6].min() >= 0.15 / 0.2
    obj["re_pix"][:6] = np.clip(obj["re_pix"][:6], 1.0, 3.0)  # small: fast GalSim, fits
    obj["n"][:6] = np.clip(obj["n"][:6], 0.5, 3.0)
    pos = inj.place(rng, fr, obj, near=0.5)
    ok = np.isfinite(pos[:, 0])
    assert ok.sum() >= 6
    excl = np.where(obj["kind"] == 0, 3 * obj["re_pix"] + 1.5 * fr.fwhm + 5, 3 * fr.fwhm + 5)
    for i in np.flatnonzero(ok):
        for j in np.flatnonzero(ok):
            if i < j:
                assert np.hypot(*(pos[i] - pos[j])) >= excl[i] + excl[j]
    img, t = inj.inject(rng, fr, obj, pos)
    assert len(t["x"]) == ok.sum() and set(t["regime"]) <= {"star", "isolated", "neighbour",
                                                           "large"}
    added = img - fr.data
    # gain 1e6: the added light is the noiseless model; its sum is the injected flux (within the
    # light beyond the drawn box and the image)
    assert added.sum() == pytest.approx(t["flux"].sum(), rel=0.03)
    for i in range(len(t["x"])):  # each object's matched-filter S/N is the drawn one
        x, y = int(round(t["x"][i])), int(round(t["y"][i]))
        cut = added[y - 20:y + 21, x - 20:x + 21]
        assert np.sqrt((cut**2).sum()) == pytest.approx(t["snr"][i], rel=0.1)


def test_match_greedy_unique():
    idx = im.match(np.array([0.0, 1.0, 50.0]), np.zeros(3), np.array([0.9, 0.2]), np.zeros(2),
                   1.5)
    assert list(idx) == [1, 0, -1]


def _truth(n=40, seed=3):
    rng = np.random.default_rng(seed)
    t = {"kind": np.r_[np.zeros(n - 4, int), np.ones(4, int)],
         "re_pix": rng.uniform(1, 10, n), "n": rng.uniform(0.5, 6, n), "q": rng.uniform(0.2, 1, n),
         "snr": np.r_[rng.uniform(25, 400, n - 4), [60, 80, 100, 30]], "det": np.ones(n, bool)}
    t["regime"] = np.where(t["kind"] == 1, "star", np.where(np.arange(n) % 2, "isolated",
                                                            "neighbour"))
    for p in ("net_", "ref_"):
        for k in ("re_pix", "n", "q"):
            t[p + k] = t[k].copy()
        t[p + "flags"] = np.zeros(n, np.int64)
        t[p + "chi2nu"] = np.ones(n)
        t[p + "chi2nu_nn"] = np.full(n, np.nan)
        t[p + "rebin"] = np.ones(n)
    t["net_chi2nu"] = np.full(n, 1.1)
    return t


def test_summarise_metrics():
    t = _truth()
    t["ref_re_pix"][:3] *= 2.0  # 3 catastrophic refine radii, 2 of them flagged
    t["ref_flags"][:2] = int(Flag.BOUND_HIT)
    t["ref_flags"][5] = int(Flag.REVERTED)  # informational: not a "problem" flag
    t["net_flags"][-4:-1] = int(Flag.POINT_SOURCE)  # 3 of the 4 stars (S/N 60, 80, 100)
    s = im.summarise(t, np.full(len(t["kind"]), 3.0))
    net, ref = s["regimes"]["all"]["net_"], s["regimes"]["all"]["ref_"]
    assert net["r2_log_re"] == pytest.approx(1.0) and net["catastrophic"] == 0.0
    assert ref["n_catastrophic"] == 3 and ref["catastrophic"] == pytest.approx(3 / 36)
    assert ref["flags_catch_catastrophic"] == pytest.approx(2 / 3)
    assert ref["catastrophic_unflagged"] == pytest.approx(1 / 34)
    assert ref["outlier_re"] == pytest.approx(3 / 36) and ref["r2_log_re"] < 1.0
    assert s["regimes"]["all"]["refine_chi2nu_le_network"] == 1.0
    assert s["net_stars_snr50_point_source"] == 1.0  # the 3 stars with S/N > 50
    assert s["net_galaxies_resolved_point_source"] == 0.0
    assert "| all | ref |" in im.markdown(s)


def test_run_realisation_with_stand_in(synth, monkeypatch, tmp_path):
    """The driver end to end, the frame mode replaced by a stand-in that 'detects' every
    injected object 0.3 px off with the true parameters and one real star."""
    fr, xy = synth
    seen = {}

    def fake_run_mode(fr_, img, tmp, tag, refine):
        truth = seen["t"]
        x = np.r_[truth["x"] + 0.3, xy[0, 0]]
        y = np.r_[truth["y"], xy[0, 1]]
        cat = Table({"x": x, "y": y, "re_pix": np.r_[truth["re_pix"], 0.1],
                     "n": np.r_[truth["n"], 1.0], "q": np.r_[truth["q"], 1.0],
                     "chi2nu": np.ones(len(x)), "flags": np.zeros(len(x), int)})
        return cat, 0.5, "stand-in"

    real_inject = inj.inject

    def spy(*a, **k):
        img, t = real_inject(*a, **k)
        seen["t"] = t
        return img, t

    monkeypatch.setattr(inj, "run_mode", fake_run_mode)
    monkeypatch.setattr(inj, "inject", spy)
    monkeypatch.setattr(inj, "draw_objects", lambda rng, ng, ns, sc: {
        "kind": np.r_[np.zeros(ng, int), np.ones(ns, int)], "re_pix": np.r_[np.full(ng, 2.0),
                                                                         np.zeros(ns)],
        "n": np.full(ng + ns, 1.5), "q": np.full(ng + ns, 0.7), "pa_deg": np.full(ng + ns, 30.0),
        "snr": np.full(ng + ns, 80.0)})
    real_cat = Table({"x": xy[:, 0], "y": xy[:, 1]})
    t, timing = inj.run_realisation(fr, np.random.default_rng(4), tmp_path, "x", real_cat, 4, 1)
    assert t["det"].all()
    s = im.summarise(t, t["fwhm"])
    assert s["regimes"]["all"]["ref_"]["r2_log_n"] is not None
    assert s["regimes"]["all"]["net_"]["catastrophic"] == 0.0
    assert timing["net_"]["spurious"] == 0  # the real star matched the un-injected catalogue


def test_stress_psf_dilation_and_gama_nearest():
    """stress_stamps gives galnet a PSF 5 % wider/narrower; frame_gama picks the central row."""
    import frame_gama
    import stress_stamps

    psf = _gauss_psf()
    yy, xx = np.mgrid[:25, :25] - 12

    def width(p):  # rms radius: exact for a well-sampled Gaussian (FWHM estimates are noisier)
        return np.sqrt((p * (xx**2 + yy**2)).sum() / p.sum())

    for f in stress_stamps.PSF_ERRORS:
        d = stress_stamps.dilate_psf(psf, f)
        assert d.sum() == pytest.approx(1.0, abs=1e-5)
        assert width(d) / width(psf) == pytest.approx(f, abs=0.005)
    cat = Table({"x": [3.0, 50.2, 90.0], "y": [4.0, 49.0, 10.0], "re_arcsec": [1.0, 2.0, 3.0],
                 "n": [1.0, 2.0, 3.0], "q": [0.5, 0.6, 0.7], "pa_deg": [0.0, 10.0, 20.0],
                 "mag": [20.0, 18.0, 19.0], "flags": [0, 4, 0], "chi2nu": [1.0, 1.1, 1.2]})
    row = frame_gama.nearest(cat, 50.0, 50.0)
    assert row["re_arcsec"] == 2.0 and row["flags"] == 4 and row["dist"] == pytest.approx(
        np.hypot(0.2, 1.0)) and np.isnan(row["rebin"])
