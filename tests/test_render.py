"""Renderer behaviour: types, batching, gradients, conservation, errors, and the n > 6.2 cusp
against direct adaptive integration (scipy). GalSim comparisons are in test_render_galsim.py."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from galnet.errors import GalnetPSFError, GalnetValueError
from galnet.profiles.quadrature import quintic
from galnet.profiles.render import RenderConfig, render
from galnet.profiles.sersic import sersic_bn


def gaussian_psf(fwhm=3.5, size=25):
    g = np.arange(size) - size // 2
    s = fwhm / 2.3548
    p = np.exp(-(g[:, None] ** 2 + g[None, :] ** 2) / (2 * s * s))
    return p / p.sum()


PARAMS = dict(x=30.2, y=29.7, flux=500.0, re_pix=4.0, n=2.0, q=0.6, pa_deg=35.0)


def test_numpy_in_numpy_out_and_tensor_in_tensor_out():
    img = render(PARAMS, gaussian_psf())
    assert isinstance(img, np.ndarray) and img.shape == (1, 61, 61) and img.dtype == np.float64
    t = render(
        {k: torch.tensor([v], dtype=torch.float64) for k, v in PARAMS.items()},
        torch.tensor(gaussian_psf()),
    )
    assert isinstance(t, torch.Tensor) and t.shape == (1, 61, 61)
    np.testing.assert_allclose(t.numpy(), img, rtol=1e-6, atol=1e-9)


def test_float32_close_to_float64():
    a = render(PARAMS, gaussian_psf(), dtype=np.float32)
    b = render(PARAMS, gaussian_psf())
    assert a.dtype == np.float32
    assert np.abs(a - b).max() < 1e-5 * b.max()


def test_mag_with_zeropoint_equals_flux():
    p = dict(PARAMS)
    p.pop("flux")
    p["mag"] = 20.0
    a = render(p, gaussian_psf(), zeropoint=27.0)
    b = render({**PARAMS, "flux": 10 ** (-0.4 * (20.0 - 27.0))}, gaussian_psf())
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_astropy_table_input():
    from astropy.table import Table

    t = Table({k: [v, v] for k, v in PARAMS.items()})
    img = render(t, gaussian_psf())
    assert img.shape == (2, 61, 61)


def test_batch_equals_individual_and_psf_cube():
    rng = np.random.default_rng(3)
    N = 7
    p = dict(
        x=30 + rng.uniform(-3, 3, N),
        y=30 + rng.uniform(-3, 3, N),
        flux=rng.uniform(10, 100, N),
        re_pix=rng.uniform(0.5, 10, N),
        n=rng.uniform(0.5, 8, N),
        q=rng.uniform(0.1, 1, N),
        pa_deg=rng.uniform(0, 180, N),
    )
    psfs = np.stack([gaussian_psf(f) for f in rng.uniform(3, 6, N)])
    batch = render(p, psfs, config=RenderConfig(chunk=3))
    for i in range(N):
        one = render({k: v[i] for k, v in p.items()}, psfs[i])
        np.testing.assert_allclose(batch[i], one[0], rtol=1e-10, atol=1e-12)


def test_psf_is_normalised_and_flux_conserved_for_contained_galaxy():
    img = render({**PARAMS, "re_pix": 2.0, "n": 1.0}, 7.0 * gaussian_psf())
    np.testing.assert_allclose(img.sum(), PARAMS["flux"], rtol=2e-4)


def test_non_square_stamp_and_centre_convention():
    # a round Gaussian-like profile centred at (x, y) must peak at pixel (round(y), round(x))
    img = render(
        {**PARAMS, "x": 12.0, "y": 20.0, "q": 1.0, "n": 0.5}, gaussian_psf(), shape=(41, 25)
    )[0]
    assert img.shape == (41, 25)
    iy, ix = np.unravel_index(np.argmax(img), img.shape)
    assert (ix, iy) == (12, 20)


def test_pa_zero_is_elongated_along_y():
    img = render({**PARAMS, "pa_deg": 0.0, "q": 0.3, "x": 30.0, "y": 30.0}, None)[0]
    yy, xx = np.mgrid[:61, :61] - 30.0
    assert (img * yy**2).sum() > 5 * (img * xx**2).sum()
    img90 = render({**PARAMS, "pa_deg": 90.0, "q": 0.3, "x": 30.0, "y": 30.0}, None)[0]
    assert (img90 * xx**2).sum() > 5 * (img90 * yy**2).sum()


def test_gradients_finite_and_match_finite_differences():
    names = ["x", "y", "flux", "re_pix", "n", "q", "pa_deg"]
    t = {k: torch.tensor([PARAMS[k]], dtype=torch.float64, requires_grad=True) for k in names}
    psf = torch.tensor(gaussian_psf())
    w = torch.tensor(np.random.default_rng(0).normal(size=(61, 61)))
    loss = (render(t, psf)[0] * w).sum()
    loss.backward()
    for k in names:
        h = 1e-5 * max(1.0, abs(PARAMS[k]))
        up = {
            kk: torch.tensor([PARAMS[kk] + (h if kk == k else 0.0)], dtype=torch.float64)
            for kk in names
        }
        dn = {
            kk: torch.tensor([PARAMS[kk] - (h if kk == k else 0.0)], dtype=torch.float64)
            for kk in names
        }
        fd = ((render(up, psf)[0] * w).sum() - (render(dn, psf)[0] * w).sum()) / (2 * h)
        np.testing.assert_allclose(
            t[k].grad.item(), fd.item(), rtol=2e-3, atol=1e-6 * abs(fd.item()) + 1e-9
        )


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"re_pix": -1.0}, "re_pix"),
        ({"n": np.nan}, "not finite"),
        ({"q": 1.5}, "'q'"),
        ({"flux": 0.0}, "'flux'"),
        ({"x": np.inf}, "not finite"),
    ],
)
def test_bad_parameters(bad, match):
    with pytest.raises(GalnetValueError, match=match):
        render({**PARAMS, **bad}, gaussian_psf())


@pytest.mark.parametrize(
    "psf, match",
    [
        (np.ones((24, 25)), "odd"),
        (np.ones(25), "2-D"),
        (np.zeros((25, 25)), "positive"),
        (np.full((25, 25), np.nan), "non-finite"),
        (np.ones((3, 25, 25)), "3 images"),
    ],
)
def test_bad_psf(psf, match):
    with pytest.raises(GalnetPSFError, match=match):
        render(PARAMS, psf)


def test_missing_column_and_mag_without_zeropoint():
    with pytest.raises(GalnetValueError, match="missing"):
        render({"x": 1.0}, gaussian_psf())
    p = {k: v for k, v in PARAMS.items() if k != "flux"}
    with pytest.raises(GalnetValueError, match="zeropoint"):
        render({**p, "mag": 20.0}, gaussian_psf())
    with pytest.raises(GalnetValueError, match="mode"):
        render(PARAMS, gaussian_psf(), mode="galfit")


# ---- 6.2 < n <= 8: against direct adaptive integration ----------------------------------
# In the mass coordinate w = P(2n, b (rho/re)^(1/n)) (the flux fraction inside the ellipse rho) and
# the eccentric angle phi, the flux element is dF = F/(2 pi) dw dphi, so
#     T(c) = int S(x) K(c - x) d^2x = F/(2 pi) int_0^1 dw int_0^2pi dphi K(c - x(w, phi)),
# an integrand free of the cusp that scipy's adaptive dblquad handles directly.
def _mapping(n, re, q, pa_deg, x0, y0):
    from scipy.special import gammaincinv

    bn = float(sersic_bn(n))
    pa = np.deg2rad(pa_deg)
    ux, uy = -np.sin(pa), np.cos(pa)

    def xy(w, phi):
        rho = re * (gammaincinv(2 * n, w) / bn) ** n
        a, b = rho * np.cos(phi), q * rho * np.sin(phi)
        return x0 + a * ux - b * uy, y0 + a * uy + b * ux

    return xy


def _k(d: float) -> float:
    """GalSim's Quintic kernel in plain Python (scipy calls it many times)."""
    x = abs(d)
    if x <= 1:
        return 1 + x**3 * (-95 / 12 + x * (23 / 2 + x * (-55 / 12)))
    if x <= 2:
        return (x - 1) * (x - 2) * (-23 / 4 + x * (29 / 2 + x * (-83 / 8 + x * 55 / 24)))
    if x < 3:
        return (x - 2) * (x - 3) ** 2 * (-9 / 4 + x * (25 / 12 + x * (-11 / 24)))
    return 0.0


def test_plain_quintic_matches_renderer_kernel():
    d = np.linspace(-3.5, 3.5, 301)
    np.testing.assert_allclose([_k(v) for v in d], quintic(torch.tensor(d)).numpy(), atol=1e-14)


@pytest.mark.parametrize("n, re, q", [(8.0, 3.0, 0.7), (7.0, 0.8, 0.4), (6.5, 10.0, 0.25)])
def test_high_n_central_pixels_against_scipy(n, re, q):
    x0, y0, flux, pa = 30.3, 29.8, 100.0, 20.0
    T = render(dict(x=x0, y=y0, flux=flux, re_pix=re, n=n, q=q, pa_deg=pa), None)[0]
    xy = _mapping(n, re, q, pa, x0, y0)
    # K vanishes beyond 3 px: integrate w up to the ellipse that contains the kernel's support
    rho_max = (3.0 + 2.0) / q
    w_max = float(integrate_wmax(n, rho_max / re))
    for cx, cy in [(30, 30), (31, 30), (30, 28)]:

        def f(phi, w, cx=cx, cy=cy):
            x, y = xy(w, phi)
            return _k(cx - x) * _k(cy - y)

        v, _ = integrate.dblquad(f, 0.0, w_max, 0.0, 2 * np.pi, epsabs=1e-6, epsrel=1e-6)
        np.testing.assert_allclose(
            T[cy, cx], flux / (2 * np.pi) * v, rtol=2e-3, atol=1e-3 * T.max()
        )


def integrate_wmax(n, rho_over_re):
    from galnet.profiles.sersic import enclosed_fraction

    return enclosed_fraction(rho_over_re, n)


def test_high_n_total_flux_against_scipy():
    """sum_c T(c) = F/(2 pi) int w_x(x) w_y(y) dw dphi, w = sum_c K(c - x) over the stamp."""
    n, re, q, flux, pa = 8.0, 2.0, 0.8, 100.0, 30.0
    shape = (41, 41)
    x0, y0 = 20.2, 19.9
    T = render(dict(x=x0, y=y0, flux=flux, re_pix=re, n=n, q=q, pa_deg=pa), None, shape=shape)[0]
    xy = _mapping(n, re, q, pa, x0, y0)
    cs = np.arange(41.0)

    def wsum(x):
        d = np.abs(cs - x)
        return sum(_k(v) for v in d[d < 3])

    def f(phi, w):
        x, y = xy(w, phi)
        return wsum(x) * wsum(y)

    # beyond rho = 24/q the ellipse has left the stamp and its 3-px kernel margin entirely
    w_max = float(integrate_wmax(n, (24.0 / q) / re))
    v, _ = integrate.dblquad(f, 0.0, w_max, 0.0, 2 * np.pi, epsabs=1e-6, epsrel=1e-6)
    np.testing.assert_allclose(T.sum(), flux / (2 * np.pi) * v, rtol=1e-3)


@pytest.mark.parametrize(
    "s, re, n, q, pa", [(0.3, 0.6, 1.5, 0.1, 40.0), (2.0, 1.0, 6.0, 0.15, 95.0)]
)
def test_square_flux_against_scipy(s, re, n, q, pa):
    """The exact flux inside a square about the centre (used to rescale the quadrature rings)."""
    from galnet.profiles.quadrature import square_flux

    bn = float(sersic_bn(n))
    a = np.deg2rad(pa)
    ux, uy = -np.sin(a), np.cos(a)

    def S(y, x):  # unit-flux profile
        rho = np.hypot(x * ux + y * uy, (-x * uy + y * ux) / q)
        norm = 2 * np.pi * q * re**2 * n * np.exp(math.lgamma(2 * n) - 2 * n * np.log(bn))
        return np.exp(-bn * (rho / re) ** (1 / n)) / norm

    # split at the centre (cusp) and integrate each quadrant adaptively
    ref = sum(
        integrate.dblquad(S, x0, x1, y0, y1, epsabs=1e-10, epsrel=1e-9)[0]
        for x0, x1 in ((-s, 0), (0, s))
        for y0, y1 in ((-s, 0), (0, s))
    )
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    got = square_flux(torch.tensor([s], dtype=torch.float64), t(re), t(n), t(q), t(ux), t(uy),
                       t(bn), 24)
    np.testing.assert_allclose(got.item(), ref, rtol=1e-5)


@pytest.mark.parametrize("pa", [2.0, 30.0, 45.0, 77.0, 100.0])
@pytest.mark.parametrize("n, re, q", [(0.5, 0.5, 0.1), (1.6, 0.75, 0.13), (3.0, 0.9, 0.12)])
def test_needles_conserve_flux(n, re, q, pa):
    """Thin, small galaxies (q re_pix ~ 0.05-0.1 px) keep their flux to 1e-4 (was up to 1%).

    The Quintic is a partition of unity, so the sum of T is the integral of the profile over the
    stamp: 1 less the light outside, which is at most that outside the ellipse of semi-major axis
    29 px (inside the 61x61 stamp at any PA).
    """
    from galnet.profiles.sersic import enclosed_fraction

    p = dict(x=30.3, y=29.6, flux=1.0, re_pix=re, n=n, q=q, pa_deg=pa)
    T = render(p, None)[0]
    outside = 1.0 - float(enclosed_fraction(29.0 / re, n))
    assert -outside - 1e-4 < T.sum() - 1.0 < 1e-4
    off = render(p, None, config=RenderConfig(ring_extent=0.0))[0]
    assert np.abs(T - off).max() < 0.05 * T.max()  # the rescaling moves no light far


def test_autograd_and_in_place_paths_agree():
    """Without autograd the renderer computes in place; with it, out of place: same images."""
    p = dict(x=[30.3, 29.8], y=[29.6, 30.1], flux=[1.0, 5.0], re_pix=[0.7, 6.0], n=[1.5, 4.0],
             q=[0.12, 0.7], pa_deg=[33.0, 120.0])
    psf = gaussian_psf()
    plain = render({k: torch.tensor(v, dtype=torch.float64) for k, v in p.items()}, psf)
    tracked = render(
        {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p.items()}, psf
    )
    assert tracked.requires_grad and not plain.requires_grad
    np.testing.assert_allclose(tracked.detach().numpy(), plain.numpy(), rtol=1e-12, atol=1e-15)


def test_default_quadrature_converged():
    """A quadrature 2-4x finer everywhere changes the images by < 1e-3 of the peak."""
    rng = np.random.default_rng(5)
    p = dict(
        x=30 + rng.uniform(-2, 2, 6),
        y=30 + rng.uniform(-2, 2, 6),
        flux=np.ones(6),
        re_pix=np.array([0.4, 0.8, 1.1, 3.0, 12.0, 0.6]),
        n=np.array([0.5, 6.5, 2.5, 4.0, 1.0, 8.0]),
        q=np.array([0.3, 0.1, 0.1, 0.5, 0.9, 0.2]),
        pa_deg=rng.uniform(0, 180, 6),
    )
    psf = gaussian_psf(3.0)
    img = render(p, psf)
    fine = render(p, psf, config=RenderConfig(h_core=1 / 32, h_max=1 / 8, growth=1.25))
    err = np.abs(img - fine).max((1, 2)) / fine.max((1, 2))
    assert err.max() < 1e-3, err
