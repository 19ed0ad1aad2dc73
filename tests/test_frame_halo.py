"""Models enter the frame model image on boxes that hold their light down to 0.1 sigma of the
local noise (frame.neighbours.box_sides, frame.pipeline._Frame): no step at a box edge."""

from __future__ import annotations

import numpy as np
from psf_helpers import moffat

from galnet.frame.inputs import read_frame
from galnet.frame.neighbours import BOX_CAP, LIGHT_SIGMA, box_sides, light_radius, safe_params
from galnet.frame.pipeline import _Frame
from galnet.frame.sources import find_sources
from galnet.presets import get_preset
from galnet.profiles.render import render

PSF = moffat(25, 3.5)
S = 401
# a bright galaxy (its cutout is far smaller than its light) and a faint neighbour
TRUTH = {"x": np.array([200.0, 246.0]), "y": np.array([200.0, 221.0]),
         "flux": np.array([4e5, 3e3]), "re_pix": np.array([6.0, 2.0]),
         "n": np.array([4.0, 1.0]), "q": np.array([0.7, 0.8]), "pa_deg": np.array([20.0, 70.0])}


def _params(**kw):
    p = {k: np.array([v]) for k, v in dict(x=0.0, y=0.0, flux=1e4, re_pix=3.0, n=2.0, q=0.8,
                                            pa_deg=0.0).items()}
    p.update({k: np.array([v], float) for k, v in kw.items()})
    return safe_params(p, np.arange(1))


def test_light_radius_and_box_sides():
    lo, hi = light_radius(_params(flux=1e3), 1.0, PSF), light_radius(_params(flux=1e6), 1.0, PSF)
    assert 0 < lo[0] < hi[0]
    # a point source's reach is the PSF's: at most its half-diagonal
    pt = light_radius(_params(re_pix=0.02, n=1.0, q=1.0, flux=1e9), 1.0, PSF)
    assert 0 < pt[0] <= 12 * np.sqrt(2) + 1.0  # (+ the tiny Sérsic core)
    assert light_radius(_params(flux=1e-3), 1.0, PSF)[0] == 0.0
    assert box_sides(_params(flux=1e-3), 1.0, PSF, 61)[0] == 61          # faint: the cutout
    big = box_sides(_params(flux=1e6, n=4.0), 1.0, PSF, 61)[0]
    assert 61 < big <= BOX_CAP * 61 + 1 and big % 2 == 1
    assert box_sides(_params(flux=1e12, n=8.0), 1.0, PSF, 61)[0] == BOX_CAP * 61 + 1  # capped


def _frame():
    img = np.asarray(render(TRUTH, PSF, (S, S)), np.float64).sum(axis=0)
    img += np.random.default_rng(3).normal(0.0, 1.0, img.shape)
    fd = read_frame(img, sigma=np.ones((S, S)), pixel_scale=0.2, zeropoint=25.0)
    src = find_sources(fd, fwhm=3.5, stamp=61)
    # cutouts smaller than the bright galaxy's light (detection would give it 221 px): its
    # model must still not stop at a visible edge in the frame model image
    src.size = np.full(len(src), 81)
    return fd, src


def _order(src):
    """Index of each detected source in TRUTH."""
    return [int(np.argmin(np.hypot(TRUTH["x"] - x, TRUTH["y"] - y)))
            for x, y in zip(src.x, src.y, strict=True)]


def test_bright_model_has_no_step_at_its_box_edge():
    fd, src = _frame()
    assert len(src) == 2
    # the sources' own truth, in the frame's source order
    j = _order(src)
    params = {k: v[j] for k, v in TRUTH.items()}
    st = _Frame(fd, src, PSF, get_preset("hsc-r"))
    st.paint(params)
    bright = int(np.argmax(params["flux"]))
    gi = next(i for i, g in enumerate(st.groups) if bright in g.index)
    g = st.groups[gi]
    row = int(np.flatnonzero(g.index == bright)[0])
    m, bx, by = st.boxes[gi][row]
    B = m.shape[0]
    # the old 16 px halo would leave a step above 0.2 sigma: the test can fail
    h = 16
    o = (B - (g.size + 2 * h)) // 2
    assert o > 0, "precondition: the box is larger than the cutout + 16 px"
    old = m[o:o + g.size + 2 * h, o:o + g.size + 2 * h]
    old_edge = np.concatenate([old[0], old[-1], old[:, 0], old[:, -1]])
    assert old_edge.max() > 0.2
    # the box's border, where the model image steps to 0, inside the frame: below 0.2 sigma
    yy, xx = np.mgrid[by:by + B, bx:bx + B]
    border = np.zeros((B, B), bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    inside = (xx >= 0) & (xx < S) & (yy >= 0) & (yy < S)
    assert (border & inside).any()
    assert np.abs(m[border & inside]).max() < 0.2
    # canvas = sum of the boxes; own models are the boxes' centres
    assert np.allclose(st.canvas.image.sum(), sum(b[0].sum() for grp in st.boxes for b in grp))
    c = (B - g.size) // 2
    assert np.array_equal(st.own[gi][row], m[c:c + g.size, c:c + g.size])
    # the local level is 0.1 sigma of the cutout's noise (1 here)
    assert np.allclose(st.level[gi], LIGHT_SIGMA)


def test_replace_keeps_the_canvas_consistent():
    fd, src = _frame()
    j = _order(src)
    params = {k: v[j].copy() for k, v in TRUTH.items()}
    st = _Frame(fd, src, PSF, get_preset("hsc-r"))
    st.paint(params)
    bright = int(np.argmax(params["flux"]))
    gi = next(i for i, g in enumerate(st.groups) if bright in g.index)
    row = int(np.flatnonzero(st.groups[gi].index == bright)[0])
    side0 = st.boxes[gi][row][0].shape[0]
    params["flux"][bright] /= 1000.0          # a fainter model needs a smaller box
    st.replace(gi, params, np.array([row]))
    assert st.boxes[gi][row][0].shape[0] < side0
    fresh = _Frame(fd, src, PSF, get_preset("hsc-r"))
    fresh.paint(params)
    assert np.allclose(st.canvas.image, fresh.canvas.image, atol=1e-4)
