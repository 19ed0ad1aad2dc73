"""galnet's renderer and converters against the reference codes GalSim and (Py)Imfit.

- The Imfit converters are checked exactly (to 1e-10 of the peak) against PyImfit without pixel
  sub-sampling, with a PSF: this pins X0/Y0 (1-based), PA, ell, I_e and Imfit's PSF centring.
- ``render(mode="exact")`` must match GalSim's Sérsic convolved with the Quintic-interpolated PSF
  image, sampled at pixel centres (0.5% of the peak, stamp fluxes 0.2%).
- ``galnet.profiles.imfit.imfit_T`` emulates Imfit's pixel sub-sampling (``Sersic::GetValue`` and
  ``CalculateSubsamples``) exactly: with Imfit's ``b_n`` it reproduces PyImfit's model image, after
  the same PSF convolution, to rounding error (1e-10 of the peak; measured ~1e-14), small ``r_e``,
  symmetric set-ups on the sub-sample count boundaries and off-stamp centres included. With galnet's
  exact ``b_n`` (what ``render(mode="imfit")`` uses) the difference is the ``b_n`` error alone:
  measured 2.0e-4 of the peak at n = 0.5, < 4e-5 for n >= 0.7 (asserted < 1e-3).
- ``render(mode="imfit")`` must match PyImfit's model image with the same PSF (1e-3 of the peak).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve

from galnet.conventions import galsim_sersic, imfit_bn, imfit_model_dict, to_imfit
from galnet.profiles.imfit import imfit_T, subsample_counts

galsim = pytest.importorskip("galsim")
pyimfit = pytest.importorskip("pyimfit")

try:
    from galnet.profiles.render import render
except ImportError:  # the renderer is not there yet
    render = None

needs_render = pytest.mark.skipif(render is None, reason="galnet.profiles.render is not importable")

SHAPE = (61, 61)
PSF_SIZE = 25
#: High-accuracy GalSim settings for the reference images.
GSP = dict(folding_threshold=1e-4, maxk_threshold=1e-5, kvalue_accuracy=1e-7,
           xvalue_accuracy=1e-7, maximum_fft_size=32768)

#: (n, re_pix, q, pa_deg, psf_fwhm_pix): a dozen profiles across the range galnet cares about.
CASES = [
    (0.5, 3.0, 0.5, 10.0, 3.0),
    (1.0, 5.0, 0.7, 45.0, 3.5),
    (1.5, 8.0, 0.3, 100.0, 4.0),
    (2.0, 2.0, 0.9, 170.0, 3.0),
    (4.0, 4.0, 0.6, 60.0, 3.5),
    (6.0, 1.5, 0.8, 135.0, 4.0),
    (4.0, 15.0, 0.4, 30.0, 3.0),
    (0.7, 1.0, 1.0, 0.0, 3.5),
    (3.0, 10.0, 0.5, 90.0, 4.0),
    (2.5, 6.0, 0.35, 75.0, 3.0),
    (5.0, 3.0, 0.7, 155.0, 3.5),
    (1.0, 12.0, 0.3, 120.0, 4.0),
]


def moffat_psf(fwhm: float) -> np.ndarray:
    """Moffat (beta = 3) effective PSF, 25x25, pixel-integrated by GalSim, unit sum."""
    img = galsim.Moffat(beta=3.0, fwhm=fwhm).drawImage(
        nx=PSF_SIZE, ny=PSF_SIZE, scale=1.0, method="auto", dtype=np.float64).array
    return img / img.sum()


@pytest.fixture(scope="module")
def cases():
    """Parameters (arrays of length 12, sub-pixel offsets) and the PSF cube (12, 25, 25)."""
    rng = np.random.default_rng(7)
    cx, cy = (SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2
    k = len(CASES)
    n, re, q, pa, fwhm = (np.array(c, dtype=float) for c in zip(*CASES, strict=True))
    params = {"x": cx + rng.uniform(-0.5, 0.5, k), "y": cy + rng.uniform(-0.5, 0.5, k),
              "flux": 10.0 ** rng.uniform(2, 4, k), "re_pix": re, "n": n, "q": q, "pa_deg": pa}
    psfs = np.stack([moffat_psf(f) for f in fwhm])
    return params, psfs


def one(params: dict, i: int) -> dict:
    return {k: float(v[i]) for k, v in params.items()}


def galsim_reference(p: dict, psf: np.ndarray, shape=SHAPE) -> np.ndarray:
    gsp = galsim.GSParams(**GSP)
    psf_obj = galsim.InterpolatedImage(galsim.Image(psf, scale=1.0), gsparams=gsp)
    obj = galsim.Convolve(galsim_sersic(p, shape, gsparams=gsp), psf_obj, gsparams=gsp)
    return obj.drawImage(nx=shape[1], ny=shape[0], scale=1.0, method="no_pixel",
                         dtype=np.float64).array


def pyimfit_image(p: dict, psf: np.ndarray, shape=SHAPE, subsampling: bool = True) -> np.ndarray:
    md = pyimfit.ModelDescription.dict_to_ModelDescription(imfit_model_dict(to_imfit(p)))
    return pyimfit.Imfit(md, psf=psf, subsampling=subsampling).getModelImage(shape=shape)


def imfit_profile_sampled(p: dict, shape, pad: int) -> np.ndarray:
    """Imfit's Sérsic (its b_n, 1-based X0/Y0, PA from +y) at pixel centres, padded by ``pad``."""
    m = to_imfit(p)
    ny, nx = shape
    yy, xx = np.mgrid[-pad:ny + pad, -pad:nx + pad].astype(float)
    dx, dy = xx + 1.0 - m["X0"], yy + 1.0 - m["Y0"]  # 1-based pixel coordinates
    t = np.radians(m["PA"] + 90.0)
    xp = dx * np.cos(t) + dy * np.sin(t)
    yp = (-dx * np.sin(t) + dy * np.cos(t)) / (1.0 - m["ell"])
    r = np.hypot(xp, yp)
    return m["I_e"] * np.exp(-imfit_bn(m["n"]) * ((r / m["r_e"]) ** (1.0 / m["n"]) - 1.0))


# --------------------------------------------------------------------- converters vs Imfit


def test_imfit_converters_exact(cases):
    """PyImfit (no sub-sampling) = our reading of Imfit's conventions, to rounding error."""
    params, psfs = cases
    pad = PSF_SIZE // 2
    for i in range(len(CASES)):
        p = one(params, i)
        got = pyimfit_image(p, psfs[i], subsampling=False)
        want = fftconvolve(imfit_profile_sampled(p, SHAPE, pad), psfs[i], mode="valid")
        assert got.shape == want.shape == SHAPE
        assert np.abs(got - want).max() < 1e-10 * want.max(), CASES[i]


def test_imfit_converters_asymmetric_psf_non_square():
    """Non-square stamp, lopsided PSF: Imfit convolves (not correlates) about the PSF centre."""
    p = {"x": 40.3, "y": 12.7, "flux": 500.0, "re_pix": 4.0, "n": 2.0, "q": 0.5, "pa_deg": 140.0}
    shape = (31, 64)
    psf = galsim.Moffat(beta=3.0, fwhm=3.0).shear(g1=0.2, g2=0.1).shift(0.8, -0.5).drawImage(
        nx=15, ny=15, scale=1.0, method="auto", dtype=np.float64).array
    psf /= psf.sum()
    got = pyimfit_image(p, psf, shape, subsampling=False)
    model = imfit_profile_sampled(p, shape, 7)
    want = fftconvolve(model, psf, mode="valid")
    assert np.abs(got - want).max() < 1e-10 * want.max()
    flipped = fftconvolve(model, psf[::-1, ::-1], mode="valid")
    assert np.abs(got - flipped).max() > 1e-2 * want.max()


# ------------------------------------------------------ Imfit's sub-sampling (imfit_T) vs Imfit


def imfit_T_images(params: dict, psfs: np.ndarray, shape=SHAPE, **kw) -> np.ndarray:
    """imfit_T on the stamp plus the PSF margin, then Imfit's discrete convolution ('valid')."""
    ph, pw = psfs.shape[-2] // 2, psfs.shape[-1] // 2
    t = {k: torch.as_tensor(np.atleast_1d(v), dtype=torch.float64) for k, v in params.items()}
    gy = torch.arange(-ph, shape[0] + ph, dtype=torch.float64)
    gx = torch.arange(-pw, shape[1] + pw, dtype=torch.float64)
    T = imfit_T(t["x"], t["y"], t["flux"], t["re_pix"], t["n"], t["q"],
                torch.deg2rad(t["pa_deg"]), gx, gy, **kw).numpy()
    psfs = np.broadcast_to(psfs, (len(T), *psfs.shape[-2:]))
    return np.stack([fftconvolve(Ti, pi, mode="valid") for Ti, pi in zip(T, psfs, strict=True)])


def test_imfit_T_emulates_pyimfit(cases):
    """Imfit's b_n: PyImfit's model image to rounding error, with and without sub-sampling."""
    params, psfs = cases
    ours = imfit_T_images(params, psfs, bn="imfit")
    flat = imfit_T_images(params, psfs, bn="imfit", subsampling=False)
    for i in range(len(CASES)):
        ref = pyimfit_image(one(params, i), psfs[i])
        assert np.abs(ours[i] - ref).max() < 1e-10 * ref.max(), CASES[i]
        ref = pyimfit_image(one(params, i), psfs[i], subsampling=False)
        assert np.abs(flat[i] - ref).max() < 1e-10 * ref.max(), CASES[i]
        # and the sub-sampling matters at this level (it is what is being tested)
        assert np.abs(flat[i] - ours[i]).max() > 1e-6 * ref.max(), CASES[i]


#: Corner cases: r_e <= 1 (k = int(20/r_e) up to 100 within r <= 1), centres on pixel centres and
#: corners with q = 1 (pixels exactly on r = 4, 5: the count boundaries; at PA = 60, 120 the side
#: they fall on depends on Imfit's rounding of its angle), centres near
#: and outside the stamp edge, a non-square stamp.
EDGE_CASES = [
    dict(x=20.0, y=20.0, re_pix=3.0, n=4.0, q=1.0, pa_deg=0.0),
    dict(x=20.0, y=20.0, re_pix=3.0, n=4.0, q=1.0, pa_deg=90.0),
    dict(x=20.0, y=20.0, re_pix=3.0, n=4.0, q=1.0, pa_deg=60.0),
    dict(x=20.0, y=20.0, re_pix=3.0, n=4.0, q=1.0, pa_deg=120.0),
    dict(x=20.0, y=20.0, re_pix=3.0, n=1.0, q=0.5, pa_deg=90.0),
    dict(x=20.5, y=20.5, re_pix=2.0, n=2.0, q=1.0, pa_deg=45.0),
    dict(x=20.3, y=19.8, re_pix=0.3, n=4.0, q=0.7, pa_deg=30.0),
    dict(x=20.1, y=20.4, re_pix=0.6, n=1.5, q=0.4, pa_deg=120.0),
    dict(x=20.0, y=20.0, re_pix=1.0, n=6.0, q=0.9, pa_deg=10.0),
    dict(x=20.0, y=20.0, re_pix=0.15, n=0.8, q=0.9, pa_deg=10.0),
    dict(x=2.0, y=29.0, re_pix=4.0, n=2.0, q=0.5, pa_deg=10.0),
    dict(x=-5.0, y=35.0, re_pix=4.0, n=2.0, q=0.5, pa_deg=170.0),
]


def test_imfit_T_emulates_pyimfit_corner_cases():
    shape = (33, 41)
    psf = moffat_psf(3.0)
    params = {k: np.array([c[k] for c in EDGE_CASES]) for k in EDGE_CASES[0]}
    params["flux"] = np.full(len(EDGE_CASES), 1e3)
    ours = imfit_T_images(params, psf, shape, bn="imfit")
    for i, c in enumerate(EDGE_CASES):
        ref = pyimfit_image(one(params, i), psf, shape)
        assert np.abs(ours[i] - ref).max() < 1e-10 * ref.max(), c


def test_imfit_subsample_counts():
    """Imfit's rule on a circular profile centred on a pixel: 20 (r <= 4), int(20/r) below 10."""
    g = torch.arange(-12.0, 13.0, dtype=torch.float64)
    one_ = torch.ones(1, dtype=torch.float64)
    k = subsample_counts(0 * one_, 0 * one_, 3 * one_, one_, 0 * one_, g, g)[0]
    at = {(0, 0): 20, (4, 0): 20, (0, -4): 20, (3, 3): 4, (5, 0): 4, (3, 4): 4, (6, 0): 3,
          (0, 7): 2, (9, 4): 2, (10, 0): 1, (7, 7): 2, (8, 7): 1, (12, 12): 1}
    for (dx, dy), want in at.items():
        assert int(k[dy + 12, dx + 12]) == want, (dx, dy)
    assert int((k == 20).sum()) == 49  # pixel centres with r <= 4
    k = subsample_counts(0 * one_, 0 * one_, 0.5 * one_, 0.5 * one_, 0 * one_, g, g)[0]
    # r_e <= 1: int(20/r_e) = 40 within r <= 1: (0, 0) and (0, +-1) (major axis along y, PA = 0)
    assert int(k[12, 12]) == int(k[13, 12]) == int(k[11, 12]) == 40
    assert int(k[12, 13]) == int(k[12, 11]) == 20  # (+-1, 0): r = 1/q = 2


def test_imfit_T_exact_bn_vs_pyimfit(cases):
    """galnet's exact b_n (render's choice) vs Imfit's series: only the b_n error remains."""
    params, psfs = cases
    ours = imfit_T_images(params, psfs)
    refs = [pyimfit_image(one(params, i), psfs[i]) for i in range(len(CASES))]
    err = [np.abs(ours[i] - ref).max() / ref.max() for i, ref in enumerate(refs)]
    assert max(err) < 1e-3, err
    assert max(err) > 1e-6, err  # the two b_n do differ (n = 0.5: 3.6e-4 relative)


def test_imfit_T_gradients_and_dtypes():
    g = torch.arange(-3.0, 18.0, dtype=torch.float64)
    # profile 1 centred on a pixel (r = 0 exactly at its centre), profile 2 with r_e < 1
    ps = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in
          ([7.3, 8.0], [7.9, 8.0], [100.0, 50.0], [2.5, 0.7], [2.2, 4.0], [0.6, 0.8], [0.4, 1.0])]
    # full Jacobian, element by element, on the 12x12 pixels about both centres (the sub-sampled
    # core); the whole 21x21 grid (882 rows) took ~16 s of the suite; backward below uses it all
    w = g[5:17]
    assert torch.autograd.gradcheck(lambda *p: imfit_T(*p, w, w), ps, eps=1e-6, atol=1e-5,
                                    rtol=1e-4)
    out = imfit_T(*ps, g, g)
    out.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) and bool((p.grad != 0).any()) for p in ps)
    out32 = imfit_T(*(p.detach().float() for p in ps), g.float(), g.float())
    assert out32.dtype == torch.float32 and out32.shape == (2, 21, 21)
    assert float((out32.double() - out.detach()).abs().max()) < 1e-5 * float(out.max())


# ------------------------------------------------------------------------ renderer vs codes


@needs_render
def test_render_exact_vs_galsim(cases):
    params, psfs = cases
    ours = render(params, psfs, SHAPE, mode="exact")
    assert ours.shape == (len(CASES), *SHAPE)
    peak_err, flux_err = [], []
    for i in range(len(CASES)):
        ref = galsim_reference(one(params, i), psfs[i])
        peak_err.append(np.abs(ours[i] - ref).max() / ref.max())
        flux_err.append(ours[i].sum() / ref.sum() - 1.0)
    report = "\n".join(f"{c}: max|diff|/peak {e:.2e}, flux {f:+.2e}"
                       for c, e, f in zip(CASES, peak_err, flux_err, strict=True))
    assert max(peak_err) < 5e-3, report
    assert max(np.abs(flux_err)) < 2e-3, report


@needs_render
def test_render_imfit_vs_pyimfit(cases):
    params, psfs = cases
    ours = render(params, psfs, SHAPE, mode="imfit")
    peak_err = []
    for i in range(len(CASES)):
        ref = pyimfit_image(one(params, i), psfs[i])
        peak_err.append(np.abs(ours[i] - ref).max() / ref.max())
    report = "\n".join(f"{c}: max|diff|/peak {e:.2e}" for c, e in zip(CASES, peak_err, strict=True))
    assert max(peak_err) < 1e-3, report  # the b_n difference alone: 2.0e-4 (n = 0.5)


@needs_render
@pytest.mark.parametrize("shape", [(45, 64), (64, 45), (60, 60)])
def test_render_non_square_and_even(shape):
    """Centring and axes on non-square and even stamps, both modes."""
    ny, nx = shape
    p = {"x": np.array([nx * 0.4 + 0.3, nx * 0.6 - 0.2]), "y": np.array([ny * 0.55, ny * 0.45]),
         "flux": np.array([1e3, 2e3]), "re_pix": np.array([3.0, 5.0]), "n": np.array([1.0, 3.0]),
         "q": np.array([0.5, 0.7]), "pa_deg": np.array([20.0, 110.0])}
    psf = moffat_psf(3.5)
    exact = render(p, psf, shape, mode="exact")
    imfit = render(p, psf, shape, mode="imfit")
    for i in range(2):
        pi = one(p, i)
        ref = galsim_reference(pi, psf, shape)
        assert np.abs(exact[i] - ref).max() < 5e-3 * ref.max()
        ref = pyimfit_image(pi, psf, shape)
        assert np.abs(imfit[i] - ref).max() < 5e-3 * ref.max()
