"""No visible integration-window edge in the models of bright point-like sources (issue 13 item 7).

Inside the window the renderer integrates ``T = S * K`` (the Sérsic smoothed by the Quintic);
outside it samples ``S``. Where ``S`` is not smooth on the pixel scale the two differ and the
model shows a square step at the window's edge. A source whose peak pixel has S/N 1e4 must show
it at < 0.5 sigma anywhere.
"""

import numpy as np
import pytest
from scipy import special

from galnet.profiles.quadrature import quintic, sampling_error
from galnet.profiles.render import RenderConfig, render, window_sizes

SHAPE = (25, 25)
SNR = 1e4  # peak pixel / sigma
#: reference: the quadrature over the whole stamp and PSF margin (no sampled pixels)
FULL = RenderConfig(window=24, windows=())


def moffat(fwhm: float = 3.0, beta: float = 3.0, size: int = 25) -> np.ndarray:
    """Effective Moffat PSF (5x5 sub-sampled over each pixel), unit sum."""
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    x = ((np.arange(size) - size // 2)[:, None] + (np.arange(5) - 2)[None] / 5.0).reshape(-1)
    p = (1 + (x[:, None] ** 2 + x[None, :] ** 2) / alpha**2) ** -beta
    p = p.reshape(size, 5, size, 5).mean(axis=(1, 3))
    return p / p.sum()


def params(re, n, q, x=12.3, y=11.8, pa=30.0):
    return dict(x=x, y=y, flux=1.0, re_pix=re, n=n, q=q, pa_deg=pa)


def chebyshev(shape, x, y):
    gy, gx = np.mgrid[: shape[0], : shape[1]]
    return np.maximum(np.abs(gx - round(x)), np.abs(gy - round(y)))


# point-like (re 0.02-0.3 px, n up to the fit bound 10, q 0.3-1) and the flat-topped n < 0.5 discs
# a star's fit can end at when its PSF is too narrow (those stepped by up to 6e-4 of the peak)
CASES = [
    (0.02, 10.0, 1.0), (0.02, 4.0, 0.3), (0.1, 6.0, 1.0), (0.3, 4.0, 1.0), (0.3, 10.0, 0.3),
    (0.3, 0.5, 1.0), (0.3, 1.0, 0.5), (1.0, 0.4, 1.0), (2.0, 0.2, 1.0), (2.0, 0.3, 1.0),
]


@pytest.mark.parametrize("re,n,q", CASES)
def test_no_window_edge_at_snr_1e4(re, n, q):
    p = params(re, n, q)
    psf = moffat()
    img = render(p, psf, SHAPE)[0]
    ref = render(p, psf, SHAPE, config=FULL)[0]
    sigma = ref.max() / SNR
    d = (img - ref) / sigma
    assert np.abs(d).max() < 0.5
    # no step across the window's boundary: pixels just inside vs just outside
    R = int(window_sizes(re, n, q))
    cheb = chebyshev(SHAPE, p["x"], p["y"])
    if R + 1 <= cheb.max():
        step = np.abs(d[cheb == R + 1]).max() - np.abs(d[cheb == R]).max()
        assert abs(step) < 0.25


def test_old_windows_showed_the_edge():
    """Without the edge criterion (the windows before issue 13) the same test fails: it can fail."""
    p = params(2.0, 0.2, 1.0)
    psf = moffat()
    old = RenderConfig(edge_tol=None)
    img = render(p, psf, SHAPE, config=old)[0]
    ref = render(p, psf, SHAPE, config=FULL)[0]
    assert np.abs(img - ref).max() / (ref.max() / SNR) > 2.0
    assert window_sizes(2.0, 0.2, 1.0, old) < window_sizes(2.0, 0.2, 1.0)


def _sersic(dx, dy, re, n, q, pa_deg):
    pa = np.deg2rad(pa_deg)
    ux, uy = -np.sin(pa), np.cos(pa)
    rho = np.hypot(dx * ux + dy * uy, (-dx * uy + dy * ux) / q)
    bn = special.gammaincinv(2 * n, 0.5)
    amp = 1.0 / (2 * np.pi * q * re**2 * n * np.exp(special.gammaln(2 * n) - 2 * n * np.log(bn)))
    return amp * np.exp(-bn * (rho / re) ** (1 / n))


def _brute_T(cx, cy, p, ng=8):
    """T = S * K at pixel centres by Gauss-Legendre on the 36 unit cells of the Quintic's support
    (independent of the renderer's quadrature; accurate where S is smooth, i.e. outside the
    window)."""
    import torch

    t, w = np.polynomial.legendre.leggauss(ng)
    off = (np.arange(-3, 3)[:, None] + 0.5 * (t + 1)[None]).reshape(-1)
    k = quintic(torch.as_tensor(off)).numpy() * np.tile(0.5 * w, 6)
    return np.array([
        k @ _sersic(a + off[None] - p["x"], b + off[:, None] - p["y"], p["re_pix"], p["n"],
                    p["q"], p["pa_deg"]) @ k
        for a, b in zip(cx, cy, strict=True)
    ])


@pytest.mark.parametrize("re,n,q", [(0.3, 10.0, 1.0), (1.0, 0.4, 1.0), (1.0, 1.0, 1.0),
                                    (2.0, 0.2, 0.6)])
def test_sampled_pixels_match_brute_force_T(re, n, q):
    """Outside the window the sampled profile is T to 1e-5 of the model's peak pixel (PSF
    convolved), against a brute-force integral that does not use the renderer's quadrature."""
    p = params(re, n, q)
    psf = moffat()
    peak = render(p, psf, SHAPE)[0].max()
    T = render(p, None, SHAPE)[0]
    R = int(window_sizes(re, n, q))
    cheb = chebyshev(SHAPE, p["x"], p["y"])
    band = (cheb > R) & (cheb <= R + 3)
    gy, gx = np.nonzero(band)
    Tb = _brute_T(gx.astype(float), gy.astype(float), p)
    assert np.abs(T[band] - Tb).max() < 1e-5 * peak


def test_sampling_error_decreases_with_window():
    re, n, q = np.array([0.3, 2.0, 1.0]), np.array([10.0, 0.2, 1.0]), np.array([1.0, 1.0, 0.5])
    e = np.stack([sampling_error(re, n, q, R) for R in (4, 6, 9, 13)])
    assert np.all(np.isfinite(e)) and np.all(e >= 0)
    assert np.all(e[1:] <= e[:-1] * 1.0001)
    assert e[0, 1] > 1e-5  # the n = 0.2 disc needs more than the smallest window


@pytest.mark.parametrize("x,y", [(2.3, 12.2), (-1.6, 23.4), (26.2, -2.7)])
def test_window_cut_by_the_grid_edge_is_applied(x, y):
    """A source at (or beyond) the stamp's edge whose window does not fit in the grid still gets
    its integrated centre (before issue 13 the whole window was skipped: 38% of the peak)."""
    psf = moffat(size=11)
    cfg = RenderConfig(window=13, windows=())
    small = render(params(0.3, 4.0, 1.0, x=x, y=y), psf, SHAPE, config=cfg)[0]
    big = render(params(0.3, 4.0, 1.0, x=x + 20, y=y + 20), psf, (65, 65), config=cfg)[0]
    big = big[20:45, 20:45]
    assert np.abs(small - big).max() < 1e-9 * big.max() + 1e-12
