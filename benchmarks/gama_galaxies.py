"""Ten real GAMA galaxies seen by KiDS r and SDSS r (ProFit's example data): galnet vs PyImfit.

Usage::

    .venv/bin/python benchmarks/gama_galaxies.py [--data ../shared/data] [--cataid 265911 ...]
        [--survey KiDS SDSS] [--dtype float64 float32] [--no-moments] [--no-imfit]
        [--psf-negative clip|keep] [--threads 1] [--device cpu]

The data live beside the project, never in it (``../shared/data/README.md``):
``galaxies/profit_gama_kids_sdss/{KiDS,SDSS}/G<CATAID>{fitim,sigma,segim,mskim,psfim}.fits`` and
``ExampleInit.tab`` (ICRAR/ProFit ``inst/extdata``, ``data/ExampleInit.tab``; LGPL-3).
This module is for tests and benchmarks only: importable loaders (:func:`load_gama`,
:func:`list_cataids`, :func:`to_sky`, :func:`kids_to_sdss`), single-Sérsic fits of one galaxy by
galnet (:func:`galnet_fit`: :func:`galnet.fitting.lm.fit_arrays` at native resolution) and by
PyImfit (:func:`imfit_gama`: :func:`galnet.interop.imfit_fit`) with the same image, sigma map,
mask and PSF, :func:`fit_all` and :func:`differences`; as a script, every galaxy in both surveys,
printed as tables (galnet vs Imfit, the two galnet starts and dtypes, SDSS vs KiDS, timings).

What the files are (measured on the files; ProFit's sources quoted where they say it)
------------------------------------------------------------------------------------------
- One primary HDU each, no WCS, no GAIN, no other keywords. Images, sigma maps, masks: float32;
  segmentation maps: int32; PSFs: float32 25x25. All image sizes are odd.
- ``fitim``: sky-subtracted image, magnitude zeropoint 0 (``mag = -2.5 log10(flux)``; ProFit's
  ``inst/example/ConvertSDSS.R`` writes SDSS images as ``image * 10^(-0.4*30)``, from zeropoint
  30). Median sky / sigma is within +-0.1 except G278109 (+0.29 KiDS, +0.23 SDSS: its outskirts
  reach the sky pixels).
- ``sigma``: 1-sigma error per pixel, sky + source Poisson (``sigma^2 = a + b * image`` fits it);
  the robust rms of the sky pixels is 0.94-1.09 sigma.
- ``segim``: segmentation, 0 = sky; the target is the segment at the central pixel
  ``((nx-1)/2, (ny-1)/2)`` (ProFit ``profitSetupData``: "The value of the central pixel is used to
  select the segmented pixels of the galaxy we want to fit"); its number varies (1, 4, 6).
  The SDSS target segments were grown by a 21 px disc (``ConvertSDSS.R``).
- ``mskim``: 0 = good; nonzero = mask out (ProFit: "1 means mask out"). Only four KiDS maps have
  masked pixels (G265940, G267199, G267489, G267525), and each masks exactly one whole non-target
  segment, with the segment's number as value (2, 6, 2, 4): stars.
- ``psfim``: 25x25, peak at the central pixel (12, 12), light-weighted centroid within 0.1 px of
  it, not normalised (sums 0.94-1.48 KiDS, 1.50-1.72 SDSS). The KiDS PSFs have a negative ring
  beyond r ~ 5.5 px (about -0.9 % of the peak; -13 % of the positive sum): over-subtracted
  background. ProFit sets ``psf[psf < 0] = 0`` before use and normalises to unit sum; so does
  :func:`load_gama` by default (``psf_negative="clip"``).
- PSF FWHM (:func:`psf_fwhm_pix`, clipped PSFs): KiDS 0.58-0.87", SDSS 1.17-1.27".
- Pixel scales (not in the headers; ../shared/data/README.md): KiDS 0.2", SDSS resampled to 0.339".
  Both views have the same orientation: the light-moment PA of the target segment agrees between
  KiDS and SDSS within 2 deg for all ten galaxies (a flip would give 180 - PA), and ProFit's
  vignette (``ProFit-Galaxy-Fit-Example.Rmd``) uses the same ``ang`` for both, scaling only ``re``
  by 0.2/0.339. Every cutout is centred on the galaxy (its central pixel lies in the target).

ExampleInit.tab (39 GAMA galaxies; the ten here are among them)
---------------------------------------------------------------
"Rough initial 2 component 2D Sersic model parameters ... derived from single Sersic fits taken
from Lange et al 2015" (``man/ExampleInit.Rd``), in **KiDS pixels**. ProFit's
``inst/example/ExtractKiDS.R`` shows how a single-Sérsic catalogue row (``GALXCEN, GALYCEN,
GALMAG, GALRE [arcsec], GALINDEX, GALPA, GALELLIP``) became that bulge + disc start::

    xcen = GALXCEN - 0.5;  mag1 = mag2 = GALMAG + 2.5 log10(2);  re1 = GALRE/2/0.2;
    re2 = GALRE/0.2;  nser1 = 2 GALINDEX;  ang2 = (GALPA + 90) %% 180;  axrat2 = 1 - GALELLIP

and the table obeys it (``re2 = 2 re1`` and ``mag1 = mag2`` in every row, and every ``mag1`` ends
in ``...98916`` = a 4-decimal magnitude + 0.75257498916). The single-Sérsic galaxy is therefore
``mag = mag1 - 2.5 log10(2)``, ``re_pix = re2``, ``n = nser1 / 2``, ``q = axrat2``,
``pa_deg = ang2``. ``mag`` agrees with the summed flux of the target segment to 0.02-0.1 mag
(0.18 for G278109, whose segment misses light).

ProFit's conventions (``man/profitMakeModel.Rd``): "the bottom-left part of the bottom-left pixel
... is c(0,0) and the top-right part of the bottom-left pixel is c(1,1), i.e. the mid-point of
pixels are half integer values", x along FITS axis 1 (numpy columns); ``ang``: "0 = | (vertical),
45 = \\, 90 = - (horizontal), 135 = /" in the plotted image (+y up): counter-clockwise from +y, the
galnet ``pa_deg``; ``axrat`` = minor/major; ``re`` along the major axis. A ProFit centre ``xcen``
is galnet ``x = xcen - 0.5``. BUT the ``xcen, ycen`` of this table sit 0.5 px above and right of
the light: the PyImfit centres (KiDS) are ``xcen - 1`` and ``ycen - 1`` to within 0.13 px for all
ten galaxies (they would be off by ~0.5 px with ``- 0.5``); the table apparently kept 1-based
(GALFIT-like) catalogue centres. :func:`example_init` uses ``x = xcen - 1``
(:data:`INIT_XY_OFFSET`).

How rough the start is (PyImfit single-Sérsic KiDS fits vs ExampleInit): ``re`` within 6 % and ``n``
within 0.3 for eight of the ten, ``PA`` within 1 deg and ``mag`` within 0.06 for nine; ``q`` off by
0.2-0.4 for five (G266033, G266035, G267199, G267525, G279148: the fits agree with the light
moments, not with the table); G266035 ``n`` 1.48 vs 0.78; G278109 off in every parameter (re 2.60"
vs 3.30", q 0.33 vs 0.59, PA 163.8 vs 168.5, mag 15.04 vs 14.85).

For the SDSS view, the KiDS-pixel start is mapped by :func:`kids_to_sdss`: positions relative to
the stamp centre and ``re_pix`` scaled by 0.2/0.339, other parameters unchanged.

Findings (tests/test_gama_galaxies.py checks them; one 2-core CPU, one thread)
-------------------------------------------------------------------------------
- galnet converges on all 20 images in 2-5 iterations from ExampleInit and from
  :func:`galnet.fitting.init.moments_init` (re 0.88-1.27x, n up to 2 off), no bound hit, in
  0.04-0.17 s per fit (float64; 1.6 s for all 20); PyImfit's LM takes 0.16-2.7 s (13 s for all 20).
  Both starts give the same chi2 (|difference| <= 0.013) and parameters within 0.11 sigma.
- float64 is the default here: in float32 the chi2 of these bright galaxies (3e4-4e5 summed
  over 1e4-5e4 pixels) is rounded by ~0.03, above the 0.01 of galnet's convergence test. float32
  fits stop up to 0.3 sigma (chi2 + 0.25, G278109 KiDS) from the float64 minimum, and 2 of the 20
  float32 fits from moments_init (G278109, G279148 KiDS) ended not converged after 21
  iterations (the damping blew up on rejected steps at the minimum).
- galnet vs PyImfit (same pixels, start, PSF): re within 0.4 %, PA 0.05 deg, mag 0.005,
  centres 0.03 px; n lower in galnet by 0-2.5 % (most in SDSS), q higher by 0-0.006: Imfit's
  pixel integration before the PSF counts the pixel twice, so it fits a more concentrated,
  flatter galaxy. Within 2.1 combined formal sigma for the nine good galaxies; G278109 KiDS
  (chi2nu 7.9: not a single Sérsic) 7.7 sigma in n. galnet's chi2nu is lower or equal (within
  0.02 %) for the nine and lower in sum (e.g. G265911 KiDS 1.863 vs 1.886): the PSFs are
  effective PSFs and galnet's model is the right one for them.
- KiDS vs SDSS: PA agrees within 0.5 deg (G278109: 2.3); the rest does not within the formal
  errors, identically for galnet and Imfit: SDSS q lower for all ten (by 0.04-0.14), n higher
  by 0.17-0.77 for seven, re smaller by up to 18 % for eight, 0.03-0.13 mag fainter. Compact
  sources in the SDSS cutouts are 5-15 % narrower than the SDSS PSFs (KiDS: 1-5 % wider than
  the KiDS PSF), and SDSS PSFs narrowed by 6-10 % halve the n differences (q and re move less):
  the SDSS PSFs are too wide, which explains part of it. Keeping the KiDS PSFs' negative ring
  makes every difference larger and chi2 worse. A free flat sky leaves G278109 KiDS at chi2nu
  7.93.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from galnet.conventions import flux_to_mag, mag_to_flux, stamp_centre, wrap_pa
from galnet.errors import GalnetFileError, GalnetValueError

#: Folder of the data below ``../shared/data``.
SUBDIR = Path("galaxies") / "profit_gama_kids_sdss"
#: Pixel scale (arcsec / px) of each survey's images (../shared/data/README.md).
PIXEL_SCALES: dict[str, float] = {"KiDS": 0.2, "SDSS": 0.339}
#: The survey whose pixels ExampleInit.tab is in.
INIT_SURVEY = "KiDS"
#: Magnitude zeropoint of every image (ProFit: magzero 0).
ZEROPOINT = 0.0
#: File kinds of one galaxy: G<CATAID><kind>.fits.
KINDS = ("fitim", "sigma", "segim", "mskim", "psfim")
#: galnet x = ExampleInit xcen - INIT_XY_OFFSET (same for y); see the module docstring: ProFit's
#: convention would be 0.5, the table's centres fit the light with 1.0.
INIT_XY_OFFSET = 1.0
#: ExampleInit columns.
INIT_COLUMNS = ("CATAID", "sersic.xcen1", "sersic.ycen1", "sersic.mag1", "sersic.mag2",
                "sersic.re1", "sersic.re2", "sersic.nser1", "sersic.ang2", "sersic.axrat2")


def gama_dir(data_dir: str | Path) -> Path:
    """The ProFit GAMA folder: ``data_dir`` itself or ``data_dir/galaxies/profit_gama_kids_sdss``.

    Raises GalnetFileError if neither holds ``ExampleInit.tab``.
    """
    data_dir = Path(data_dir)
    for d in (data_dir, data_dir / SUBDIR):
        if (d / "ExampleInit.tab").is_file():
            return d
    raise GalnetFileError(f"no ExampleInit.tab in {data_dir} or {data_dir / SUBDIR}")


def _check_survey(survey: str) -> str:
    if survey not in PIXEL_SCALES:
        raise GalnetValueError(f"survey must be one of {sorted(PIXEL_SCALES)}, got {survey!r}",
                               name="survey", value=survey)
    return survey


def list_cataids(data_dir: str | Path) -> list[int]:
    """GAMA CATAIDs with all five files in both surveys and a row in ExampleInit.tab (sorted)."""
    d = gama_dir(data_dir)
    table = read_example_init(d)
    ids = set(table)
    for survey in PIXEL_SCALES:
        for kind in KINDS:
            ids &= {int(p.name[1:-len(kind) - 5]) for p in (d / survey).glob(f"G*{kind}.fits")}
    return sorted(ids)


def read_example_init(data_dir: str | Path) -> dict[int, dict[str, float]]:
    """ExampleInit.tab as ``{CATAID: {column: value}}``, values as in the file (ProFit, KiDS px)."""
    path = gama_dir(data_dir) / "ExampleInit.tab"
    lines = path.read_text().split("\n")
    header = tuple(h.strip('"') for h in lines[0].split())
    if header != INIT_COLUMNS:
        raise GalnetFileError(f"{path}: unexpected columns {header}")
    out = {}
    for line in lines[1:]:
        if line.strip():
            values = [float(v) for v in line.split()]
            out[int(values[0])] = dict(zip(header[1:], values[1:], strict=True))
    return out


def example_init(row: dict[str, float]) -> dict[str, float]:
    """One ExampleInit.tab row -> single-Sérsic galnet parameters in KiDS pixels.

    ``x, y = xcen1, ycen1 - INIT_XY_OFFSET`` (0-based, pixel centres at integers);
    ``mag = mag1 - 2.5 log10(2)`` (the two equal start components together), ``flux`` from it
    with zeropoint 0; ``re_pix = re2`` (semi-major, KiDS px); ``n = nser1 / 2``; ``q = axrat2``;
    ``pa_deg = ang2`` wrapped to [0, 180). See the module docstring for the evidence.
    """
    mag = row["sersic.mag1"] - 2.5 * math.log10(2.0)
    return {
        "x": row["sersic.xcen1"] - INIT_XY_OFFSET,
        "y": row["sersic.ycen1"] - INIT_XY_OFFSET,
        "flux": float(mag_to_flux(mag, ZEROPOINT)),
        "mag": mag,
        "re_pix": row["sersic.re2"],
        "n": row["sersic.nser1"] / 2.0,
        "q": row["sersic.axrat2"],
        "pa_deg": float(wrap_pa(row["sersic.ang2"])),
    }


def kids_to_sdss(params: dict, kids_shape: tuple[int, int], sdss_shape: tuple[int, int],
                 inverse: bool = False) -> dict:
    """Map galnet parameters between the KiDS and the SDSS stamp of one galaxy.

    Both stamps are centred on the galaxy with the same orientation (module docstring), so
    ``x_sdss - cx_sdss = (x_kids - cx_kids) * 0.2/0.339`` (``c = stamp_centre``; same for y),
    ``re_pix`` scales by 0.2/0.339, and flux, mag, n, q, pa_deg are unchanged (magzero 0 both).
    ``inverse=True`` maps SDSS -> KiDS. Keys other than x, y, re_pix are copied.
    """
    s = PIXEL_SCALES["KiDS"] / PIXEL_SCALES["SDSS"]
    src, dst = (kids_shape, sdss_shape) if not inverse else (sdss_shape, kids_shape)
    if inverse:
        s = 1.0 / s
    (cx0, cy0), (cx1, cy1) = stamp_centre(src), stamp_centre(dst)
    out = dict(params)
    out["x"] = cx1 + (params["x"] - cx0) * s
    out["y"] = cy1 + (params["y"] - cy0) * s
    out["re_pix"] = params["re_pix"] * s
    return out


def to_sky(params: dict, survey: str) -> dict:
    """Survey-independent view of galnet parameters: ``re_arcsec``, ``n``, ``q``, ``pa_deg``,
    ``mag`` (zeropoint 0), for comparing the KiDS and SDSS fits of one galaxy.

    PA is that of the image, valid for both surveys (same orientation; not a sky PA: there is no
    WCS to say where north is).
    """
    scale = PIXEL_SCALES[_check_survey(survey)]
    mag = params["mag"] if "mag" in params else float(flux_to_mag(params["flux"], ZEROPOINT))
    return {"re_arcsec": params["re_pix"] * scale, "n": params["n"], "q": params["q"],
            "pa_deg": float(wrap_pa(params["pa_deg"])), "mag": mag}


def _read(path: Path) -> np.ndarray:
    from astropy.io import fits

    if not path.is_file():
        raise GalnetFileError(f"missing {path}")
    data = fits.getdata(path)
    return np.asarray(data, dtype=np.int64 if data.dtype.kind in "iu" else np.float64)


def load_gama(data_dir: str | Path, cataid: int, survey: str,
              psf_negative: str = "clip") -> dict:
    """One galaxy of one survey, ready for a single-Sérsic fit.

    Parameters
    ----------
    data_dir : ``../shared/data`` or its ``galaxies/profit_gama_kids_sdss`` folder.
    cataid : GAMA CATAID (:func:`list_cataids`).
    survey : ``"KiDS"`` or ``"SDSS"``.
    psf_negative : ``"clip"`` (default, as ProFit: negative PSF pixels set to 0) or ``"keep"``.

    Returns
    -------
    dict with

    - ``image`` (ny, nx) float64: sky-subtracted image, zeropoint 0 (:data:`ZEROPOINT`);
    - ``sigma`` (ny, nx) float64: 1-sigma error per pixel;
    - ``mask`` (ny, nx) bool, True = ignore: ``mskim != 0`` or a pixel of another segment
      (neighbours, stars). Sky (segment 0) and the target segment are kept;
    - ``psf`` (25, 25) float64: odd-sized, centred on its central pixel, unit sum;
    - ``pixel_scale``: arcsec / px;
    - ``init``: single-Sérsic start (x, y, flux, mag, re_pix, n, q, pa_deg) in this survey's
      pixels (:func:`example_init`, mapped by :func:`kids_to_sdss` for SDSS);
    - ``segim`` (int64), ``target`` (the target's segment number), ``cataid``, ``survey``,
      ``zeropoint``.
    """
    _check_survey(survey)
    if psf_negative not in ("clip", "keep"):
        raise GalnetValueError(f"psf_negative must be 'clip' or 'keep', got {psf_negative!r}",
                               name="psf_negative", value=psf_negative)
    d = gama_dir(data_dir)
    table = read_example_init(d)
    if cataid not in table:
        raise GalnetValueError(f"CATAID {cataid} is not in ExampleInit.tab", name="cataid",
                               value=cataid)

    def read(s: str, kind: str) -> np.ndarray:
        return _read(d / s / f"G{cataid}{kind}.fits")

    image, sigma, segim, mskim, psf = (read(survey, k) for k in KINDS)
    ny, nx = image.shape
    if not all(a.shape == image.shape for a in (sigma, segim, mskim)):
        raise GalnetFileError(f"G{cataid} {survey}: image, sigma, segim, mskim shapes differ")
    if psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
        raise GalnetFileError(f"G{cataid} {survey}: PSF shape {psf.shape} is not odd")
    target = int(segim[(ny - 1) // 2, (nx - 1) // 2])
    if target == 0:
        raise GalnetFileError(f"G{cataid} {survey}: central pixel is sky in segim")
    mask = (mskim != 0) | ((segim != 0) & (segim != target)) | ~(sigma > 0)
    if psf_negative == "clip":
        psf = np.clip(psf, 0.0, None)
    psf = psf / psf.sum()

    init = example_init(table[cataid])
    if survey != INIT_SURVEY:
        kids_shape = _read(d / INIT_SURVEY / f"G{cataid}fitim.fits").shape
        init = kids_to_sdss(init, kids_shape, image.shape)
    return {"image": image, "sigma": sigma, "mask": mask, "psf": psf,
            "pixel_scale": PIXEL_SCALES[survey], "init": init, "segim": segim, "target": target,
            "cataid": cataid, "survey": survey, "zeropoint": ZEROPOINT}


# ------------------------------------------------------------------------------------- fits

#: Fit keys of galnet and of :func:`galnet.interop.imfit_fit` (this survey's pixels).
FIT_KEYS = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")
#: Survey-independent quantities compared by :func:`differences`.
COMPARED = ("re", "n", "q", "pa", "mag")


def psf_fwhm_pix(psf: np.ndarray, oversample: int = 8) -> float:
    """PSF FWHM (px): diameter of the circle whose area is that above half maximum, measured on
    the PSF interpolated (cubic spline) onto a grid ``oversample`` times finer."""
    from scipy.ndimage import zoom

    fine = zoom(psf, oversample, order=3)
    area = float((fine >= 0.5 * fine.max()).sum()) / oversample**2
    return 2.0 * math.sqrt(area / math.pi)


def _npix(gal: dict) -> int:
    """Pixels that enter chi2 (the same for galnet and Imfit)."""
    return int((~gal["mask"] & (gal["sigma"] > 0) & np.isfinite(gal["image"])).sum())


def _with_mag(out: dict) -> dict:
    out["mag"] = float(flux_to_mag(out["flux"], ZEROPOINT))
    out["mag_err"] = 2.5 / math.log(10.0) * out["flux_err"] / out["flux"]
    return out


def galnet_fit(gal: dict, start: str | dict = "example", dtype: str = "float32",
               device: str = "cpu") -> dict:
    """galnet's Levenberg-Marquardt fit (:func:`galnet.fitting.lm.fit_arrays`) of one
    :func:`load_gama` galaxy at native resolution: its image, sigma map, mask (other segments
    and ``mskim``) and unit-sum PSF; no sky (the images are sky-subtracted).

    Parameters
    ----------
    start : ``"example"`` (``gal["init"]``: ExampleInit, mapped to SDSS pixels by
        :func:`kids_to_sdss`), ``"moments"`` (:func:`galnet.fitting.init.moments_init` on the
        image with this mask and sigma map), or a dict of galnet parameters.
    dtype : ``"float32"`` (galnet's default) or ``"float64"``.
    device : torch device.

    Returns
    -------
    dict of scalars: x, y, flux, mag, re_pix, n, q, pa_deg and their ``_err`` (covariance, not
    rescaled by chi2nu), ``chi2nu``, ``chi2``, ``npix``, ``snr``, ``niter``, ``converged``,
    ``bound``; ``start`` (the initial parameters), ``time_s`` (the fit, wall) and
    ``time_start_s`` (moments_init); ``survey``, ``shape``, ``code = "galnet"``.
    """
    from galnet.fitting.init import moments_init
    from galnet.fitting.lm import fit_arrays
    from galnet.fitting.problem import FitConfig

    t0 = time.perf_counter()
    if isinstance(start, dict):
        init = {k: float(start[k]) for k in FIT_KEYS}
    elif start == "example":
        init = {k: float(gal["init"][k]) for k in FIT_KEYS}
    elif start == "moments":
        m = moments_init(gal["image"], gal["psf"], mask=gal["mask"], sigma=gal["sigma"])
        init = {k: float(m[k][0]) for k in FIT_KEYS}
    else:
        raise GalnetValueError(f"start must be 'example', 'moments' or a dict, got {start!r}",
                               name="start", value=start)
    t1 = time.perf_counter()
    r = fit_arrays(gal["image"], gal["psf"], sigma=gal["sigma"], mask=gal["mask"], init=init,
                   device=device, config=FitConfig(dtype=dtype))
    t2 = time.perf_counter()
    out = {k: v[0].item() for k, v in r.items()}
    out["converged"], out["bound"] = bool(out["converged"]), bool(out["bound"])
    npix = _npix(gal)
    out.update(npix=npix, chi2=out["chi2nu"] * (npix - len(FIT_KEYS)), start=init,
               time_s=t2 - t1, time_start_s=t1 - t0, survey=gal["survey"],
               shape=gal["image"].shape, code="galnet")
    return _with_mag(out)


def imfit_gama(gal: dict, start: dict | None = None, threads: int = 1) -> dict:
    """PyImfit's Levenberg-Marquardt fit (:func:`galnet.interop.imfit_fit`, Imfit's default
    pixel sub-sampling) of one :func:`load_gama` galaxy, with the inputs of :func:`galnet_fit`,
    from ``start`` [default: ``gal["init"]``] within :data:`galnet.interop.imfit.DEFAULT_LIMITS`.

    Imfit integrates the Sérsic over pixels and then convolves with the PSF image: with an
    effective PSF this counts the pixel twice (docs/conventions.md), adding 1/12 px^2 to the PSF
    variance, a few per cent of its width here.

    Returns :func:`galnet.interop.imfit_fit`'s dict (x, y, flux, re_pix, n, q, pa_deg with
    ``_err``: PyImfit's errors, not rescaled; ``chi2nu`` over the same pixels as galnet's,
    ``converged``, ``bound_hit``, ``niter``, ``time_s``) plus ``mag``, ``mag_err``, ``start``,
    ``survey``, ``shape``, ``code = "imfit"``.
    """
    from galnet.interop.pyimfit_runner import imfit_fit

    init = {k: float((start or gal["init"])[k]) for k in FIT_KEYS}
    out = imfit_fit(gal["image"], gal["psf"], init=init, sigma=gal["sigma"], mask=gal["mask"],
                    max_threads=threads)
    out.update(start=init, survey=gal["survey"], shape=gal["image"].shape, code="imfit")
    return _with_mag(out)


def _pa_diff(a: float, b: float) -> float:
    """a - b folded into [-90, 90) (PA is defined modulo 180)."""
    return (a - b + 90.0) % 180.0 - 90.0


def differences(a: dict, b: dict) -> dict[str, tuple[float, float]]:
    """``a - b`` for two fits (of :func:`galnet_fit` / :func:`imfit_gama`) of one galaxy, in
    the same or in different surveys: ``{name: (difference, combined 1-sigma error)}``.

    ``re``: relative, ``(re_a - re_b) / re_b`` in arcsec; ``n``, ``q``; ``pa`` (deg, folded into
    [-90, 90)); ``mag``; ``dx``, ``dy``: centre offsets from the stamp centres in arcsec. The
    combined error is ``hypot(err_a, err_b)`` of the formal errors (in the difference's units).
    """
    sa, sb = PIXEL_SCALES[a["survey"]], PIXEL_SCALES[b["survey"]]
    re_b = b["re_pix"] * sb
    (cxa, cya), (cxb, cyb) = stamp_centre(a["shape"]), stamp_centre(b["shape"])
    return {
        "re": ((a["re_pix"] * sa - re_b) / re_b,
               math.hypot(a["re_pix_err"] * sa, b["re_pix_err"] * sb) / re_b),
        "n": (a["n"] - b["n"], math.hypot(a["n_err"], b["n_err"])),
        "q": (a["q"] - b["q"], math.hypot(a["q_err"], b["q_err"])),
        "pa": (_pa_diff(a["pa_deg"], b["pa_deg"]), math.hypot(a["pa_deg_err"], b["pa_deg_err"])),
        "mag": (a["mag"] - b["mag"], math.hypot(a["mag_err"], b["mag_err"])),
        "dx": ((a["x"] - cxa) * sa - (b["x"] - cxb) * sb,
               math.hypot(a["x_err"] * sa, b["x_err"] * sb)),
        "dy": ((a["y"] - cya) * sa - (b["y"] - cyb) * sb,
               math.hypot(a["y_err"] * sa, b["y_err"] * sb)),
    }


def fit_all(data_dir: str | Path, ids: list[int], surveys: list[str], *,
            dtypes: tuple[str, ...] = ("float64",), moments: bool = True, imfit: bool = True,
            threads: int = 1, device: str = "cpu", psf_negative: str = "clip",
            progress=None) -> dict[tuple[int, str], dict]:
    """Fit every galaxy of ``ids`` in every survey of ``surveys``.

    Per ``(cataid, survey)``: ``{"galnet": {label: galnet_fit}, "imfit": imfit_gama or None,
    "psf_fwhm_arcsec", "nmask", "shape"}``; galnet labels are ``"example/<dtype>"`` for each of
    ``dtypes`` and ``"moments/<dtypes[0]>"`` (with ``moments``). ``progress(key, entry)`` is
    called after each galaxy.
    """
    out = {}
    for cid in ids:
        for survey in surveys:
            gal = load_gama(data_dir, cid, survey, psf_negative=psf_negative)
            fits = {f"example/{dt}": galnet_fit(gal, "example", dt, device) for dt in dtypes}
            if moments:
                fits[f"moments/{dtypes[0]}"] = galnet_fit(gal, "moments", dtypes[0], device)
            entry = {"galnet": fits, "imfit": imfit_gama(gal, threads=threads) if imfit else None,
                     "psf_fwhm_arcsec": psf_fwhm_pix(gal["psf"]) * gal["pixel_scale"],
                     "nmask": int(gal["mask"].sum()), "shape": gal["image"].shape}
            out[(cid, survey)] = entry
            if progress is not None:
                progress((cid, survey), entry)
    return out


# ------------------------------------------------------------------------------------ report

def _fit_line(cid: int, survey: str, r: dict) -> str:
    sc = PIXEL_SCALES[survey]
    bound = r.get("bound", r.get("bound_hit", False))
    return (f"{cid:>6} {survey:>5} {r['code']:>6} "
            f"{r['re_pix'] * sc:7.3f}±{r['re_pix_err'] * sc:<6.3f}"
            f"{r['n']:6.3f}±{r['n_err']:<6.3f}{r['q']:6.3f}±{r['q_err']:<6.4f}"
            f"{r['pa_deg']:6.1f}±{r['pa_deg_err']:<5.2f}{r['mag']:7.3f}±{r['mag_err']:<6.4f}"
            f"{r['chi2nu']:7.3f} {'y' if r['converged'] else 'n':>4} {r['niter']:>4d} "
            f"{'y' if bound else 'n':>3} {r['time_s']:6.2f}")


def _diff_line(d: dict) -> str:
    def f(k, fmt):
        v, s = d[k]
        return f"{format(v, fmt)} {v / s if s > 0 else math.nan:7.1f}"

    return (f"{f('re', '7.3f')} {f('n', '6.3f')} {f('q', '6.3f')} {f('pa', '6.2f')} "
            f"{f('mag', '6.3f')} {f('dx', '6.3f')} {f('dy', '6.3f')}")


_DIFF_HEAD = (f"{'d_re/re':>7} {'(sig)':>7} {'d_n':>6} {'(sig)':>7} {'d_q':>6} {'(sig)':>7} "
              f"{'d_pa':>6} {'(sig)':>7} {'d_mag':>6} {'(sig)':>7} {'dx_as':>6} {'(sig)':>7} "
              f"{'dy_as':>6} {'(sig)':>7}")


def report(results: dict[tuple[int, str], dict], primary: str) -> str:
    """The tables of :func:`main` for :func:`fit_all`'s ``results``; ``primary``: the galnet
    label compared with Imfit and between surveys."""
    ids = sorted({k[0] for k in results})
    surveys = [s for s in PIXEL_SCALES if any(k[1] == s for k in results)]
    lines = [f"# Fits: galnet ({primary}) and PyImfit (LM, same start, image, sigma, mask, PSF); "
             "errors 1 sigma (covariance, not rescaled); re in arcsec; PA CCW from +y (image)",
             f"{'cataid':>6} {'surv':>5} {'code':>6} {'re_arcsec':>14} {'n':>13} {'q':>13} "
             f"{'pa':>12} {'mag':>14} {'chi2nu':>7} {'conv':>4} {'nit':>4} {'bnd':>3} "
             f"{'t_s':>6}"]
    for cid in ids:
        for s in surveys:
            e = results[(cid, s)]
            lines.append(_fit_line(cid, s, e["galnet"][primary]))
            if e["imfit"] is not None:
                lines.append(_fit_line(cid, s, e["imfit"]))
    if all(e["imfit"] is not None for e in results.values()):
        lines += ["", "# galnet - Imfit: difference and (difference / combined 1-sigma error); "
                  "chi2nu of each on the same pixels",
                  f"{'cataid':>6} {'surv':>5} {_DIFF_HEAD} {'chi2nu_g':>8} {'chi2nu_i':>8}"]
        for cid in ids:
            for s in surveys:
                g, i = results[(cid, s)]["galnet"][primary], results[(cid, s)]["imfit"]
                lines.append(f"{cid:>6} {s:>5} {_diff_line(differences(g, i))} "
                             f"{g['chi2nu']:8.4f} {i['chi2nu']:8.4f}")
    others = [lab for lab in next(iter(results.values()))["galnet"] if lab != primary]
    for lab in others:
        lines += ["", f"# galnet {lab} - galnet {primary}: chi2 difference, largest "
                  "|difference| / galnet error over re, n, q, pa, mag, x, y (and which); "
                  "the start: re0/re, n0 - n, q0 - q, |start - fit| (px)",
                  f"{'cataid':>6} {'surv':>5} {'dchi2':>9} {'max_sig':>8} {'of':>4} "
                  f"{'conv':>4} {'nit':>4} {'t_s':>6} {'t0_s':>5} {'re0/re':>6} {'n0-n':>6} "
                  f"{'q0-q':>6} {'dxy0':>5}"]
        for cid in ids:
            for s in surveys:
                a, b = results[(cid, s)]["galnet"][lab], results[(cid, s)]["galnet"][primary]
                d = differences(a, b)
                sig = {k: abs(d[k][0]) / (d[k][1] / math.sqrt(2)) for k in d}
                worst = max(sig, key=sig.get)
                s0 = a["start"]
                lines.append(f"{cid:>6} {s:>5} {a['chi2'] - b['chi2']:9.3f} {sig[worst]:8.3f} "
                             f"{worst:>4} {'y' if a['converged'] else 'n':>4} {a['niter']:4d} "
                             f"{a['time_s']:6.2f} {a['time_start_s']:5.2f} "
                             f"{s0['re_pix'] / a['re_pix']:6.2f} {s0['n'] - a['n']:6.2f} "
                             f"{s0['q'] - a['q']:6.2f} "
                             f"{math.hypot(s0['x'] - a['x'], s0['y'] - a['y']):5.2f}")
    if len(surveys) == 2:
        for code in ("galnet", "imfit"):
            if code == "imfit" and not all(e["imfit"] is not None for e in results.values()):
                continue
            lines += ["", f"# {code}: SDSS - KiDS, difference and (difference / combined "
                      "1-sigma error)", f"{'cataid':>6} {_DIFF_HEAD}"]
            for cid in ids:
                k, s = (results[(cid, sv)] for sv in surveys)
                fk, fs = ((e["galnet"][primary] if code == "galnet" else e["imfit"])
                          for e in (k, s))
                lines.append(f"{cid:>6} {_diff_line(differences(fs, fk))}")
    lines += ["", "# wall time (s) per fit, sum over galaxies"]
    for s in surveys:
        es = [e for (c, sv), e in results.items() if sv == s]
        t = {lab: sum(e["galnet"][lab]["time_s"] for e in es) for lab in es[0]["galnet"]}
        ti = sum(e["imfit"]["time_s"] for e in es) if es[0]["imfit"] is not None else math.nan
        lines.append(f"{s}: " + ", ".join(f"galnet {lab} {v:.1f}" for lab, v in t.items())
                     + f", imfit {ti:.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data",
                    help="../shared/data or its galaxies/profit_gama_kids_sdss folder")
    ap.add_argument("--cataid", type=int, nargs="*", help="CATAIDs (default: all)")
    ap.add_argument("--survey", nargs="*", default=list(PIXEL_SCALES), choices=list(PIXEL_SCALES))
    ap.add_argument("--dtype", nargs="+", default=["float64", "float32"],
                    choices=["float32", "float64"],
                    help="galnet dtypes; the first is compared with Imfit and between surveys")
    ap.add_argument("--no-moments", action="store_true", help="skip galnet from moments_init")
    ap.add_argument("--no-imfit", action="store_true", help="skip the PyImfit fits")
    ap.add_argument("--psf-negative", default="clip", choices=["clip", "keep"])
    ap.add_argument("--threads", type=int, default=1, help="torch and Imfit threads")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    ids = a.cataid or list_cataids(a.data)

    def progress(key, e):
        g = e["galnet"][f"example/{a.dtype[0]}"]
        print(f"# {key[0]} {key[1]}: galnet {g['time_s']:.2f} s"
              + (f", imfit {e['imfit']['time_s']:.2f} s" if e["imfit"] else ""),
              file=sys.stderr, flush=True)

    results = fit_all(a.data, ids, a.survey, dtypes=tuple(a.dtype), moments=not a.no_moments,
                      imfit=not a.no_imfit, threads=a.threads, device=a.device,
                      psf_negative=a.psf_negative, progress=progress)
    print(report(results, f"example/{a.dtype[0]}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
