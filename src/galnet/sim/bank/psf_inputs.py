"""Real effective PSFs for the bank: reading each PSF family (HSC images, PSFEx models, SDSS
psField, ProFit images), measuring FWHMs and resampling to the bank's pixel scales.

Bank PSFs are 25 x 25 (:data:`PSF_SIZE`), unit sum, first-moment centroid at the central pixel.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galnet.errors import GalnetValueError
from galnet.io.psf import psfex_hdu_from_legacypipe

__all__ = ["PSF_SIZE", "FWHM_RANGE", "PSF_FAMILIES", "PSFInput",
           "psf_fwhm", "resample_psf", "psf_inputs", "finish_psf"]

#: Side of a bank PSF (pixels); the centre is (12, 12).
PSF_SIZE = 25

#: Sane effective-PSF FWHM range (arcsec) for ground-based seeing.
FWHM_RANGE = (0.3, 4.0)

#: Input PSFs whose negative pixels sum to more than this fraction of their flux are clipped at 0.
NEGATIVE_FLUX_MAX = 0.01

PSF_FAMILIES = ("hsc", "des_psfex", "decam_psfex", "sdss_psfield", "profit_kids", "profit_sdss")


# ----------------------------------------------------------------------------------------------
# PSFs
# ----------------------------------------------------------------------------------------------
@dataclass
class PSFInput:
    """One real effective PSF image before resampling."""

    family: str
    band: str
    file: str
    image: np.ndarray
    sample_scale: float  # arcsec per pixel of ``image``
    pixel_scale: float  # arcsec, size of the pixel response contained in ``image``
    x: float = np.nan  # CCD position where a spatially varying model was evaluated (PSFEx x,
    y: float = np.nan  # y; SDSS col, row); NaN for fixed images


def _first_moment(img: np.ndarray) -> tuple[float, float]:
    """Unweighted first moment (x, y) of an image relative to its central pixel (pixels)."""
    ny, nx = img.shape
    s = img.sum()
    yy, xx = np.mgrid[:ny, :nx]
    return float((img * xx).sum() / s - (nx - 1) / 2), float((img * yy).sum() / s - (ny - 1) / 2)


def psf_fwhm(image: np.ndarray, scale: float, oversample: int = 5) -> float:
    """FWHM (arcsec) of an effective PSF image: the PSF is interpolated (GalSim Quintic), drawn
    ``oversample`` times finer without a further pixel, and ``FWHM = 2 sqrt(A / pi)`` where ``A``
    is the area above half the peak (the geometric mean of the major and minor FWHM for an
    elliptical PSF)."""
    import galsim

    img = np.asarray(image, dtype=float)
    ii = galsim.InterpolatedImage(galsim.Image(img / img.sum(), scale=scale))
    ny, nx = img.shape
    fine = scale / oversample
    arr = ii.drawImage(nx=nx * oversample, ny=ny * oversample, scale=fine,
                       method="no_pixel").array
    area = np.count_nonzero(arr >= 0.5 * arr.max()) * fine**2
    return float(2.0 * np.sqrt(area / np.pi))


def resample_psf(image: np.ndarray, scale_in: float, scale_out: float, size: int = PSF_SIZE,
                 pixel_in: float | None = None, recentre: bool = True) -> tuple[np.ndarray, float]:
    """Resample an effective PSF image to another pixel scale.

    The image (pixel scale ``scale_in`` arcsec, containing a pixel response of ``pixel_in``
    arcsec [default: ``scale_in``]) is interpolated with GalSim's Quintic kernel, the input pixel
    is deconvolved and the target pixel convolved, i.e.
    ``Convolve(InterpolatedImage, Deconvolve(Pixel(pixel_in)), Pixel(scale_out))`` drawn with
    ``method='no_pixel'`` on ``size x size`` pixels of ``scale_out`` arcsec. With ``recentre``
    the profile is shifted until the first moment of the stamp is within 0.005 px of the central
    pixel. Returns (image normalised to unit sum, float64; flux fraction inside the stamp).
    """
    import galsim

    img = np.asarray(image, dtype=float)
    s = img.sum()
    if not np.all(np.isfinite(img)) or not s > 0:
        raise GalnetValueError("PSF image must be finite with a positive sum", "image")
    ii = galsim.InterpolatedImage(galsim.Image(img / s, scale=scale_in))
    prof = galsim.Convolve(ii, galsim.Deconvolve(galsim.Pixel(pixel_in or scale_in)),
                           galsim.Pixel(scale_out))
    dx = dy = 0.0
    for _ in range(6):
        arr = prof.shift(-dx * scale_out, -dy * scale_out).drawImage(
            nx=size, ny=size, scale=scale_out, method="no_pixel").array.astype(np.float64)
        if not recentre:
            break
        mx, my = _first_moment(arr)
        if abs(mx) < 0.005 and abs(my) < 0.005:
            break
        dx, dy = dx + mx, dy + my
    flux = float(arr.sum())
    return arr / flux, flux


def _psfex_inputs(family: str, rel: str, model, band: str, pixel_scale: float, n: int,
                  rng: np.random.Generator) -> Iterator[PSFInput]:
    """``n`` PSFs of a PSFEx model (galsim.des.DES_PSFEx) at random positions of its fit range."""
    import galsim

    u = rng.uniform(-0.5, 0.5, size=(n, 2))
    for ux, uy in u:
        x = model.x_zero + ux * model.x_scale
        y = model.y_zero + uy * model.y_scale
        arr = np.asarray(model.getPSFArray(galsim.PositionD(x, y)), dtype=float)
        yield PSFInput(family, band, rel, arr, pixel_scale * model.sample_scale, pixel_scale,
                        float(x), float(y))


def _sdss_psfield(table, row: float, col: float) -> np.ndarray:
    """SDSS KL-basis PSF at (row, col): ``sum_k a_k RROWS_k`` with
    ``a_k = sum_ij (0.001 row)^i (0.001 col)^j C_k[i, j]`` (photoop ``sdss_psf_recon``)."""
    img = None
    for k in range(len(table)):
        nr, nc = int(table["nrow_b"][k]), int(table["ncol_b"][k])
        c = np.asarray(table["c"][k], dtype=float)[:nr, :nc]
        i = np.arange(nr)[:, None]
        j = np.arange(nc)[None, :]
        a = float(np.sum((1e-3 * row) ** i * (1e-3 * col) ** j * c))
        basis = np.asarray(table["RROWS"][k], dtype=float).reshape(
            int(table["RNROW"][k]), int(table["RNCOL"][k]))
        img = a * basis if img is None else img + a * basis
    return img


def psf_inputs(data_dir: Path, family: str, n_model: int, rng: np.random.Generator
                ) -> tuple[list[PSFInput], list[str]]:
    """Input PSFs of one family and the files they came from."""
    from astropy.io import fits

    out: list[PSFInput] = []
    files: list[str] = []
    if family == "hsc":
        rel = "psf/hsc_cosmos_psf_scarlet.fits"
        if (data_dir / rel).is_file():
            cube = fits.getdata(data_dir / rel).astype(float)
            for band, img in zip("grizy", cube, strict=False):
                out.append(PSFInput(family, band, rel, img, 0.168, 0.168))
            files.append(rel)
    elif family == "des_psfex":
        import galsim.des

        rel = "psf/des_DECam_00154912_12_psfex.psf"
        if (data_dir / rel).is_file():
            model = galsim.des.DES_PSFEx(str(data_dir / rel))
            out += _psfex_inputs(family, rel, model, "r", 0.263, n_model, rng)
            files.append(rel)
    elif family == "decam_psfex":
        import galsim.des

        for p in sorted((data_dir / "frames/decam").glob("*psfex.fits")):
            rel = str(p.relative_to(data_dir))
            try:
                if p.name.startswith("c4d_"):
                    band = re.search(r"_ooi_(\w)_", p.name)[1]
                    model = galsim.des.DES_PSFEx(psfex_hdu_from_legacypipe(p))
                else:
                    band = "z"
                    model = galsim.des.DES_PSFEx(str(p))
            except (OSError, KeyError, TypeError, ValueError) as exc:
                warnings.warn(f"{rel}: unreadable PSFEx model ({exc}); skipped", stacklevel=2)
                continue
            out += _psfex_inputs(family, rel, model, band, 0.262, n_model, rng)
            files.append(rel)
    elif family == "sdss_psfield":
        rel = "psf/sdss_psField-001000-1-0100.fit"
        if (data_dir / rel).is_file():
            with fits.open(data_dir / rel) as h:
                for band, hdu in zip("ugriz", range(1, 6), strict=True):
                    table = h[hdu].data
                    rows = rng.uniform(0, 1489, n_model)
                    cols = rng.uniform(0, 2048, n_model)
                    for r, c in zip(rows, cols, strict=True):
                        out.append(PSFInput(family, band, rel, _sdss_psfield(table, r, c),
                                             0.396, 0.396, float(c), float(r)))
            files.append(rel)
    elif family in ("profit_kids", "profit_sdss"):
        sub, scale = ("KiDS", 0.2) if family == "profit_kids" else ("SDSS", 0.339)
        for p in sorted((data_dir / "galaxies/profit_gama_kids_sdss" / sub).glob("*psfim.fits")):
            rel = str(p.relative_to(data_dir))
            out.append(PSFInput(family, "r", rel, fits.getdata(p).astype(float), scale, scale))
            files.append(rel)
    return out, files


def finish_psf(inp: PSFInput, scale_out: float) -> dict[str, Any] | None:
    """Resample one input PSF; None if it is not usable (non-finite, FWHM not sane, off-centre)."""
    if not np.all(np.isfinite(inp.image)) or not inp.image.sum() > 0:
        return None
    image = inp.image
    # Stacked-star PSFs with over-subtracted backgrounds (the ProFit KiDS PSFs: negative pixels
    # worth 11-25 % of the flux) would print dark holes around bright simulated galaxies: clip
    # negative pixels when they hold more than NEGATIVE_FLUX_MAX of the flux.
    if -image[image < 0].sum() > NEGATIVE_FLUX_MAX * image.sum():
        image = np.clip(image, 0.0, None)
    img, flux = resample_psf(image, inp.sample_scale, scale_out, PSF_SIZE, inp.pixel_scale)
    if not np.all(np.isfinite(img)):
        return None
    c = PSF_SIZE // 2
    iy, ix = np.unravel_index(np.argmax(img), img.shape)
    if abs(iy - c) > 2 or abs(ix - c) > 2:
        return None
    fwhm = psf_fwhm(img, scale_out)
    if not FWHM_RANGE[0] <= fwhm <= FWHM_RANGE[1]:
        return None
    return {"image": img.astype(np.float32), "fwhm_arcsec": fwhm, "flux_in_stamp": flux}
