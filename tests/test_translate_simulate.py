"""Paired multi-band simulation (galnet.translate.simulate): photometry, rendering, files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from galnet.errors import GalnetFileError, GalnetPresetError, GalnetValueError
from galnet.presets import point_source_depth
from galnet.translate import population as tp
from galnet.translate import simulate as ts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.h5"
    ts.simulate_pairs(path, 6, chunk=3, seed=5, progress=False)
    return path


@pytest.mark.parametrize("name", ts.list_domains())
def test_domain_sky_matches_depth(name):
    d = ts.get_domain(name)
    depth = point_source_depth(d.sky_rms, np.asarray(d.seeing_mean), d.pixel_scale, ts.ZEROPOINT)
    np.testing.assert_allclose(depth, d.depth_5sigma, atol=1e-9)
    assert (d.gain > 0).all() and d.psf_size % 2 == 1


def test_unknown_domain():
    with pytest.raises(GalnetPresetError, match="unknown translation domain 'hst'"):
        ts.get_domain("hst")


def test_component_mags_k_correction():
    # at z -> 0 in the reference filter, m = M + DM exactly (no K-correction, no colour)
    z = np.array([0.02, 0.02])
    m = ts.component_mags(np.array([-21.0, -21.0]), z, np.array(["E", "Im"]),
                          np.array([1.0, 0.5]), [tp.REFERENCE_FILTER])[:, 0]
    dm = tp._cosmology().distmod(z).value
    # at z = 0.02 the K-correction of r is a few hundredths of a magnitude
    assert abs(m[0] - (-21.0 + dm[0])) < 0.05
    # E is redder than Im in g - r, and both redden with redshift
    gr = {}
    for t in ("E", "Im"):
        mm = ts.component_mags(np.full(2, -21.0), np.array([0.05, 0.3]), np.array([t, t]),
                               np.ones(2), ["sdss2010-g", "sdss2010-r"])
        gr[t] = mm[:, 0] - mm[:, 1]
    assert (gr["E"] > gr["Im"] + 0.3).all()
    assert gr["E"][1] > gr["E"][0]
    # the light fraction is a pure magnitude offset
    a = ts.component_mags(np.array([-20.0]), np.array([0.1]), np.array(["Sbc"]), np.array([1.0]),
                          ["sdss2010-u", "sdss2010-z"])
    b = ts.component_mags(np.array([-20.0]), np.array([0.1]), np.array(["Sbc"]), np.array([0.1]),
                          ["sdss2010-u", "sdss2010-z"])
    np.testing.assert_allclose(b - a, 2.5)


def test_point_sources_flux_and_position():
    from galnet.sim.psfs import analytic_psfs

    psf = analytic_psfs(np.array([3.0]), np.array([3.0]), np.array([False]), np.zeros(1),
                        np.zeros(1), size=25)[None]  # (1, 1, 25, 25)
    x, y = np.array([[20.3]]), np.array([[31.6]])
    img = ts._point_sources(psf, x, y, np.array([[[2.0]]]), 64)[0, 0]
    assert img.sum() == pytest.approx(2.0, rel=1e-6)
    yy, xx = np.mgrid[:64, :64]
    assert (img * xx).sum() / img.sum() == pytest.approx(20.3, abs=1e-3)
    assert (img * yy).sum() / img.sum() == pytest.approx(31.6, abs=1e-3)


def test_population_selection():
    cat = ts.sample_population(np.random.default_rng(3), 300)
    lo, hi = ts.population_config()["mag_limit"]
    assert ((cat["mag_r_sdss"] > lo) & (cat["mag_r_sdss"] < hi)).all()
    zlo, zhi = ts.population_config()["z_range"]
    assert ((cat["z"] >= zlo) & (cat["z"] <= zhi)).all()
    assert (cat["re_disk"] >= 0.1).all() and (cat["q_disk"] >= 0.15 - 1e-12).all()
    assert set(np.unique(cat["morph"])) <= set(ts.population_config()["classes"])


def test_pairs_file(tiny):
    p = ts.read_pairs(tiny)
    assert len(p) == 6
    assert p.source.shape == (6, 5, 64, 64) and p.target.shape == (6, 5, 136, 136)
    assert p.source_psf.shape == (6, 5, 25, 25) and p.target_psf.shape == (6, 5, 33, 33)
    np.testing.assert_allclose(p.target_psf.sum((2, 3)), 1.0, atol=1e-5)
    for role, truth in (("source", p.source_truth), ("target", p.target_truth)):
        total = sum(np.asarray(p.catalog[f"{role}_flux_{c}"]) for c in ts.COMPONENTS)
        frac = truth.sum((2, 3)) / total
        assert np.median(frac) > 0.98 and frac.max() < 1.001, role
    # noise: the difference image has the domain's sky rms where there is no galaxy light
    for img, truth, sky in ((p.source, p.source_truth, p.source_sky),
                            (p.target, p.target_truth, p.target_sky)):
        d = (img - truth)[:, :, :6, :6]
        np.testing.assert_allclose(d.std(axis=(0, 2, 3)), sky, rtol=0.15)
    # the same point of the sky in both domains: light-weighted centres agree (arcsec)
    # (knots make the light centre differ from the profile centre dx, dy, in both alike)
    cx = []
    for a, s, scale in ((p.source_truth, 64, p.source_scale), (p.target_truth, 136,
                                                               p.target_scale)):
        yy, xx = np.mgrid[:s, :s]
        w = a[:, 2] * (np.hypot(xx - (s - 1) / 2, yy - (s - 1) / 2) * scale < 8.0)
        cx.append(((w * xx).sum((1, 2)) / w.sum((1, 2)) - (s - 1) / 2) * scale)
    np.testing.assert_allclose(cx[0], cx[1], atol=0.03)
    # the CFHT images are sharper: higher peak surface brightness in r
    sb_src = p.source_truth[:, 2].max((1, 2)) / p.source_scale**2
    sb_tgt = p.target_truth[:, 2].max((1, 2)) / p.target_scale**2
    assert (sb_tgt > sb_src).all()
    assert p.subset(slice(0, 2)).target.shape[0] == 2


def test_resume_gives_the_same_file(tiny, tmp_path, monkeypatch):
    out = tmp_path / "resumed.h5"
    real = ts._make_chunk
    calls = []

    def failing(seed, idx, n, src, tgt):
        calls.append(idx)
        if idx == 1:
            raise KeyboardInterrupt
        return real(seed, idx, n, src, tgt)

    monkeypatch.setattr(ts, "_make_chunk", failing)
    with pytest.raises(KeyboardInterrupt):
        ts.simulate_pairs(out, 6, chunk=3, seed=5, progress=False)
    assert not out.exists() and (tmp_path / "resumed.h5.partial").exists()
    monkeypatch.setattr(ts, "_make_chunk", real)
    ts.simulate_pairs(out, 6, chunk=3, seed=5, progress=False)
    with h5py.File(out) as a, h5py.File(tiny) as b:
        np.testing.assert_array_equal(a["target/images"][:], b["target/images"][:])
        np.testing.assert_array_equal(a["catalog/z"][:], b["catalog/z"][:])


def test_bad_inputs(tmp_path):
    with pytest.raises(GalnetValueError, match="positive integer"):
        ts.simulate_pairs(tmp_path / "x.h5", 0)
    with pytest.raises(GalnetValueError, match="different bands"):
        ts.simulate_pairs(tmp_path / "x.h5", 2, source="sdss", target="kids-r")
    with pytest.raises(GalnetFileError, match="no such file"):
        ts.read_pairs(tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["x"] = 1
    with pytest.raises(GalnetFileError, match="not a galnet translate simulate file"):
        ts.read_pairs(bad)
    with pytest.raises(GalnetFileError, match="directory does not exist"):
        ts.simulate_pairs(tmp_path / "nope" / "x.h5", 2)
