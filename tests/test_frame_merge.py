"""Deblended pieces of one galaxy merged back into it (galnet.io.merge), stars and separate
galaxies kept apart; through frame.sources.find_sources; the VST spiral (skips without
../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from psf_helpers import moffat

from galnet.frame.inputs import read_frame
from galnet.frame.sources import find_sources
from galnet.io.detect import detect
from galnet.io.merge import merge_pieces, point_like
from galnet.profiles.render import render

FWHM = 3.5
PSF = moffat(25, FWHM)
S = 201
C = 100.0
VST = Path(__file__).parents[1] / ".." / "shared" / "data" / "frames" / "vst_r_G202627.fits"


def _gal(x, y, flux, re, n=1.0, q=0.8, pa=30.0):
    m = np.asarray(render(dict(x=x, y=y, flux=flux, re_pix=re, n=n, q=q, pa_deg=pa), PSF,
                          (S, S)), np.float64)
    return m.reshape(S, S)


def _noisy(img, seed=1):
    return img + np.random.default_rng(seed).normal(0.0, 1.0, img.shape)


def _disc_with_clumps():
    clumps = ((18, 5), (-12, 16), (-5, -20))
    return _gal(C, C, 2e5, 15.0) + sum(_gal(C + dx, C + dy, 6e3, 2.5, 0.5, 1.0)
                                       for dx, dy in clumps)


def _near(cat, x, y, tol=3.0):
    return np.flatnonzero(np.hypot(np.asarray(cat["x"]) - x, np.asarray(cat["y"]) - y) < tol)


def test_clumps_on_a_disc_merge_into_one_source():
    d = _noisy(_disc_with_clumps())
    cat, lab = detect(d, 1.0, psf_fwhm_pix=FWHM)
    assert len(cat) >= 3, "precondition: the deblender cuts the clumpy disc into pieces"
    out, lab2, merged = merge_pieces(d, 1.0, None, cat, lab, psf_fwhm_pix=FWHM)
    assert len(out) == 1
    host = int(out["id"][0])
    assert set(merged) == {host} and len(merged[host]) == len(cat) - 1
    assert out.meta["merged"] == merged
    # the segmentation holds the host's label only; flux and area are the union's
    assert set(np.unique(lab2)) == {0, host}
    assert out["area"][0] == int((lab > 0).sum())
    assert out["flux"][0] == pytest.approx(float(d[lab > 0].sum()), rel=1e-9)
    # the host's centre (the disc's nucleus) is kept; its extent grows to the whole galaxy
    assert abs(out["x"][0] - C) < 1.5 and abs(out["y"][0] - C) < 1.5
    assert out["r_extent"][0] >= cat["r_extent"][cat["id"] == host][0]


def test_two_touching_galaxies_of_similar_flux_stay_two():
    d = _noisy(_gal(C - 10, C, 5e4, 5.0, 1.5) + _gal(C + 10, C + 2, 4e4, 5.0, 1.5))
    cat, lab = detect(d, 1.0, psf_fwhm_pix=FWHM)
    assert len(cat) == 2
    assert len(np.unique(lab[lab > 0])) == 2
    out, lab2, merged = merge_pieces(d, 1.0, None, cat, lab, psf_fwhm_pix=FWHM)
    assert len(out) == 2 and merged == {}
    assert np.array_equal(lab2, lab)


@pytest.mark.parametrize("n", [1.0, 4.0])
def test_star_on_a_disc_stays_separate(n):
    xs, ys = C + 14, C - 8
    d = _noisy(_gal(C, C, 2e5, 15.0, n) + _gal(xs, ys, 1e4, 0.02, 1.0, 1.0))
    cat, lab = detect(d, 1.0, psf_fwhm_pix=FWHM)
    ls, lc = int(lab[int(ys), int(xs)]), int(lab[int(C), int(C)])
    assert ls > 0 and ls != lc, "precondition: the star is deblended from the disc"
    ids = np.asarray(cat["id"])
    pt = point_like(d, lab, ids, FWHM)
    assert pt[ids == ls][0] and not pt[ids == lc][0]
    out, lab2, merged = merge_pieces(d, 1.0, None, cat, lab, psf_fwhm_pix=FWHM)
    assert {ls, lc} <= set(np.asarray(out["id"]).tolist())
    assert lab2[int(ys), int(xs)] == ls and lab2[int(C), int(C)] == lc
    assert all(ls not in v for v in merged.values())


def test_find_sources_merges_and_can_be_told_not_to():
    fd = read_frame(_noisy(_disc_with_clumps()), sigma=np.ones((S, S)), pixel_scale=0.2,
                    zeropoint=25.0)
    src = find_sources(fd, fwhm=FWHM, stamp=61)
    raw = find_sources(fd, fwhm=FWHM, stamp=61, merge=False)
    assert len(raw) >= 3 and len(src) == 1
    assert src.merged and set(src.merged) == {int(src.ids[0])}
    assert src.size[0] >= raw.size.max()  # the merged galaxy's cutout holds all its pieces
    assert set(np.unique(src.segm)) == {0, int(src.label[0])}


@pytest.mark.skipif(not VST.exists(), reason="needs ../shared/data/frames (real VST r frame)")
def test_vst_spiral_becomes_one_source():
    fd = read_frame(str(VST))
    raw = find_sources(fd, fwhm=3.39, stamp=61, merge=False)
    src = find_sources(fd, fwhm=3.39, stamp=61)
    host = int(src.segm[300, 301])  # the spiral's nucleus (frame px x 301, y 300)
    assert host > 0
    centre = np.flatnonzero(src.label == host)
    assert centre.size == 1
    # its centre is the nucleus, not the centroid of the deblended central piece (304, 306)
    assert np.hypot(src.x[centre[0]] - 301, src.y[centre[0]] - 300) <= 1.5
    pieces = src.merged.get(host, ())
    # the arms (three pieces 60-120 px from the nucleus) join the spiral; the bright star on it
    # (249, 268) stays a source of its own
    assert len(pieces) >= 3
    assert len(src) == len(raw) - sum(len(v) for v in src.merged.values())
    assert _near({"x": src.x, "y": src.y}, 249.3, 267.6, tol=3.0).size == 1
    assert src.size[centre[0]] >= raw.size[np.flatnonzero(raw.label == host)[0]]
