"""GalSim reference images for the renderer accuracy tests (helper module, not a test file).

The reference for galnet's ``mode="exact"`` is, as the foundation issue states,
``galsim.Convolve(sersic, galsim.InterpolatedImage(psf_image)).drawImage(method="no_pixel")`` with
high-accuracy gsparams. Large profiles are truncated far outside the rendered region (at
``trunc`` with ``flux_untruncated=True``) only so that GalSim's FFT stays finite; the truncation
radius encloses the stamp plus the PSF margin, so the pixels compared are unaffected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GSPARAMS = dict(
    folding_threshold=1e-4,
    maxk_threshold=1e-5,
    kvalue_accuracy=1e-7,
    xvalue_accuracy=1e-7,
    maximum_fft_size=16384,
)
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def galsim_reference(p: dict, psf: np.ndarray, shape=(61, 61), calculate_maxk=True) -> np.ndarray:
    """Render one profile (galnet conventions, dict of scalars) with GalSim.

    The PSF (InterpolatedImage) and the convolution use GSPARAMS; the Sérsic uses kvalue/xvalue
    accuracy 1e-6 (GalSim's default 1e-5; at 1e-7 its Hankel integrator fails for most n > 4,
    "Roundoff error ... in intGKP"). Where even that fails, the Sérsic's maxk_threshold (which
    only sets its own maxk; the convolution is limited by the PSF's maxk) is relaxed to 1e-3.
    """
    for sersic_gsp in (
        {**GSPARAMS, "kvalue_accuracy": 1e-6, "xvalue_accuracy": 1e-6},
        {**GSPARAMS, "kvalue_accuracy": 1e-6, "xvalue_accuracy": 1e-6, "maxk_threshold": 1e-3},
        {**GSPARAMS, "kvalue_accuracy": 1e-5, "xvalue_accuracy": 1e-5, "maxk_threshold": 1e-3},
    ):
        try:
            return _draw(p, psf, shape, calculate_maxk, sersic_gsp)
        except (RuntimeError, ValueError):  # GalSim: Hankel roundoff, or NaN maxk
            last = sersic_gsp
    return _draw(p, psf, shape, calculate_maxk, last)  # raise the error of the last attempt


def _draw(p, psf, shape, calculate_maxk, sersic_gsparams) -> np.ndarray:
    import galsim

    gsp = galsim.GSParams(**GSPARAMS)
    H, W = shape
    q = float(p["q"])
    # circularised truncation radius that keeps the whole stamp + PSF margin inside the ellipse
    half = 0.5 * np.hypot(H + psf.shape[0], W + psf.shape[1]) + np.hypot(
        p["x"] - (W - 1) / 2, p["y"] - (H - 1) / 2
    )
    trunc = 1.2 * half / np.sqrt(q)
    hlr = float(p["re_pix"]) * np.sqrt(q)
    s = galsim.Sersic(
        n=float(p["n"]),
        half_light_radius=hlr,
        flux=float(p["flux"]),
        trunc=trunc,
        flux_untruncated=True,
        gsparams=galsim.GSParams(**sersic_gsparams),
    )
    s = s.shear(q=q, beta=(float(p["pa_deg"]) + 90.0) * galsim.degrees)
    s = s.shift(float(p["x"]) - (W - 1) / 2, float(p["y"]) - (H - 1) / 2)
    ii = galsim.InterpolatedImage(
        galsim.Image(np.asarray(psf, float), scale=1.0), gsparams=gsp, calculate_maxk=calculate_maxk
    )
    conv = galsim.Convolve(s, ii, gsparams=gsp, propagate_gsparams=False)
    return conv.drawImage(nx=W, ny=H, scale=1.0, method="no_pixel").array


def moffat_psf(rng: np.random.Generator, fwhm_range=(3.0, 6.0), size=25) -> np.ndarray:
    """An effective Moffat PSF (pixel response included, GalSim method='auto'), unit sum."""
    import galsim

    fwhm = rng.uniform(*fwhm_range)
    beta = rng.uniform(2.5, 5.0)
    e = rng.uniform(0, 0.05)
    th = rng.uniform(0, np.pi)
    psf = galsim.Moffat(beta=beta, fwhm=fwhm).shear(g1=e * np.cos(2 * th), g2=e * np.sin(2 * th))
    a = psf.drawImage(nx=size, ny=size, scale=1.0).array
    return a / a.sum()


def real_psfs(size=25) -> list[tuple[str, np.ndarray]]:
    """Real PSF images from ../shared/data, native sampling, cropped to ``size`` ([] if absent)."""
    from astropy.io import fits

    out = []
    if not SHARED.is_dir():
        return out
    f = SHARED / "psf" / "hsc_cosmos_psf_scarlet.fits"
    if f.exists():
        cube = fits.getdata(f)
        for band, img in zip("grizy", cube, strict=False):
            c = img.shape[0] // 2
            out.append(
                (
                    f"hsc-{band}",
                    img[c - size // 2 : c + size // 2 + 1, c - size // 2 : c + size // 2 + 1],
                )
            )
    for survey in ("KiDS", "SDSS"):
        for f in sorted(
            (SHARED / "galaxies" / "profit_gama_kids_sdss" / survey).glob("*psfim.fits")
        )[:3]:
            out.append((f"{survey}-{f.name[:7]}", fits.getdata(f)))
    f = SHARED / "psf" / "des_DECam_00154912_12_psfex.psf"
    if f.exists():
        import galsim.des

        des = galsim.des.DES_PSFEx(str(f))
        for pos in ((500.0, 1000.0), (1500.0, 3000.0)):
            im = des.getPSF(galsim.PositionD(*pos)).drawImage(
                nx=size, ny=size, scale=0.263, method="no_pixel"
            )
            out.append((f"des-{int(pos[0])}", im.array))
    return [(k, np.asarray(v, float) / np.sum(v)) for k, v in out]


def random_params(
    rng: np.random.Generator, n_range=(0.3, 6.2), re_range=(0.5, 40.0), shape=(61, 61)
) -> dict:
    """One random profile over the accuracy-test domain of the foundation issue."""
    H, W = shape
    return dict(
        x=(W - 1) / 2 + rng.uniform(-3, 3),
        y=(H - 1) / 2 + rng.uniform(-3, 3),
        flux=1000.0,
        re_pix=float(np.exp(rng.uniform(np.log(re_range[0]), np.log(re_range[1])))),
        n=rng.uniform(*n_range),
        q=rng.uniform(0.1, 1.0),
        pa_deg=rng.uniform(0, 180),
    )


def accuracy_cases(chunk: int, reals: list, per_chunk: int = 50):
    """The profiles and PSFs of one chunk of the 1000-profile accuracy comparison.

    Yields (params, psf_name, psf): seed 1000 + chunk; every third profile uses a real PSF when
    ``reals`` (from :func:`real_psfs`) is not empty, the others a random Moffat.
    """
    rng = np.random.default_rng(1000 + chunk)
    for i in range(per_chunk):
        p = random_params(rng)
        if reals and i % 3 == 2:
            name, psf = reals[rng.integers(len(reals))]
        else:
            name, psf = "moffat", moffat_psf(rng)
        yield p, name, psf
