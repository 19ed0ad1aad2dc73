"""benchmarks/gama_galaxies.py: loader of ProFit's ten GAMA galaxies (KiDS r and SDSS r).

Needs ../shared/data (skipped without it).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from galnet.errors import GalnetFileError, GalnetValueError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gama_galaxies as gg  # noqa: E402

CATAIDS = [265911, 265940, 266033, 266035, 266662, 267199, 267489, 267525, 278109, 279148]


def _moments_pa(image: np.ndarray, sel: np.ndarray) -> float:
    """Light-moment major-axis PA (deg CCW from +y) of the selected pixels."""
    yy, xx = np.indices(image.shape)
    w = np.where(sel, np.clip(image, 0, None), 0.0)
    f = w.sum()
    x, y = (w * xx).sum() / f, (w * yy).sum() / f
    cxx, cyy = (w * (xx - x) ** 2).sum() / f, (w * (yy - y) ** 2).sum() / f
    cxy = (w * (xx - x) * (yy - y)).sum() / f
    major = np.linalg.eigh([[cxx, cxy], [cxy, cyy]])[1][:, 1]
    return math.degrees(math.atan2(-major[0], major[1])) % 180.0


def test_list_cataids(shared_data):
    assert gg.list_cataids(shared_data) == CATAIDS
    assert gg.gama_dir(shared_data / gg.SUBDIR) == gg.gama_dir(shared_data)


@pytest.mark.parametrize("survey", ["KiDS", "SDSS"])
def test_load_gama(shared_data, survey):
    for cid in CATAIDS:
        g = gg.load_gama(shared_data, cid, survey)
        image, mask, segim, psf = g["image"], g["mask"], g["segim"], g["psf"]
        assert image.dtype == np.float64 and mask.dtype == bool
        assert g["sigma"].shape == image.shape and np.all(g["sigma"] > 0)
        ny, nx = image.shape
        assert segim[(ny - 1) // 2, (nx - 1) // 2] == g["target"] != 0
        # the mask is exactly the other segments (mskim only masks whole non-target segments)
        np.testing.assert_array_equal(mask, (segim != 0) & (segim != g["target"]))
        assert psf.shape == (25, 25) and psf.min() >= 0 and psf.sum() == pytest.approx(1.0)
        assert np.unravel_index(psf.argmax(), psf.shape) == (12, 12)
        assert g["pixel_scale"] == gg.PIXEL_SCALES[survey]
        init = g["init"]
        # the start sits on the brightest target pixel: within 1.2 px (KiDS); 2 px in SDSS, where
        # the start is mapped from KiDS and the two cutouts' centres differ by up to 0.35"
        iy, ix = np.unravel_index(np.where(segim == g["target"], image, -np.inf).argmax(),
                                  image.shape)
        tol = 1.2 if survey == "KiDS" else 2.0
        assert math.hypot(init["x"] - ix, init["y"] - iy) < tol, (cid, survey)
        # ExampleInit's PA is the image PA, CCW from +y, in both surveys (moments: within 7 deg,
        # 13.5 for G278109, whose PyImfit PA is 168.5 (KiDS), 170.8 (SDSS), start 163.8)
        d = (init["pa_deg"] - _moments_pa(image, segim == g["target"]) + 90) % 180 - 90
        assert abs(d) < 15, (cid, survey, d)
        assert init["mag"] == pytest.approx(-2.5 * math.log10(init["flux"]))


def test_masked_star_segments(shared_data):
    """The four KiDS mskim maps with masked pixels mask one whole neighbour segment each."""
    g = gg.load_gama(shared_data, 265940, "KiDS")
    assert g["mask"].sum() == ((g["segim"] != 0) & (g["segim"] != g["target"])).sum() > 300


def test_frames_and_sky(shared_data):
    kids = gg.load_gama(shared_data, 265911, "KiDS")
    sdss = gg.load_gama(shared_data, 265911, "SDSS")
    k, s = kids["image"].shape, sdss["image"].shape
    mapped = gg.kids_to_sdss(kids["init"], k, s)
    for key in ("x", "y", "re_pix"):
        assert mapped[key] == pytest.approx(sdss["init"][key])
    back = gg.kids_to_sdss(mapped, k, s, inverse=True)
    for key in kids["init"]:
        assert back[key] == pytest.approx(kids["init"][key])
    a, b = gg.to_sky(kids["init"], "KiDS"), gg.to_sky(sdss["init"], "SDSS")
    for key in a:
        assert a[key] == pytest.approx(b[key])


def test_errors(shared_data, tmp_path):
    with pytest.raises(GalnetValueError, match="survey must be one of"):
        gg.load_gama(shared_data, 265911, "HSC")
    with pytest.raises(GalnetValueError, match="not in ExampleInit"):
        gg.load_gama(shared_data, 1, "KiDS")
    with pytest.raises(GalnetFileError, match="no ExampleInit.tab"):
        gg.gama_dir(tmp_path)


# ------------------------------------------------------------------------ galnet and PyImfit

#: The problem galaxy: not a single Sérsic (galnet and Imfit chi2nu 7.9 in KiDS, 1.8 in SDSS; a
#: free flat sky does not lower it), its outskirts reach the sky pixels (module docstring), and
#: its SDSS fit has a flat minimum (Imfit: n 4.008 or 4.001 from two starts, 24 iterations).
PROBLEM = 278109
WELL_BEHAVED = [c for c in CATAIDS if c != PROBLEM]
SURVEYS = ["KiDS", "SDSS"]


@pytest.fixture(scope="module")
def gama_fits(shared_data):
    """galnet (float64; from ExampleInit and from moments_init) and PyImfit fits of the ten
    galaxies in both surveys, same image, sigma, mask and PSF (~25 s on one core)."""
    pytest.importorskip("pyimfit")
    return gg.fit_all(shared_data, CATAIDS, SURVEYS, dtypes=("float64",), moments=True)


def test_galnet_fits_converge(gama_fits):
    """Every fit converges in a few iterations, off the bounds, from both starts; chi2nu is that
    of a good model except for G278109 in KiDS. float64: in float32 the chi2 of these bright
    galaxies (~3e4-4e5) is rounded by ~0.03, above the convergence test's 0.01, and 2 of the 20
    fits from moments_init ended FIT_NOT_CONVERGED at the minimum (benchmarks/gama_galaxies.py).
    """
    for (cid, survey), e in gama_fits.items():
        for label, r in e["galnet"].items():
            assert r["converged"] and not r["bound"], (cid, survey, label)
            assert r["niter"] <= 10, (cid, survey, label, r["niter"])  # measured 2-5
            assert r["chi2nu"] < (9.0 if (cid, survey) == (PROBLEM, "KiDS") else 2.1)
        i = e["imfit"]
        assert i["converged"] and not i["bound_hit"], (cid, survey, i["message"])
        assert i["npix"] == e["galnet"]["example/float64"]["npix"]  # the same pixels


def test_galnet_starts_reach_the_same_minimum(gama_fits):
    """From ExampleInit and from moments_init (re 0.88-1.27x, n up to 2 off, centres up to
    1.1 px apart): the same chi2 (each fit stops within dchi2 = 0.01 of the minimum: measured
    |difference| <= 0.013) and parameters within 0.25 sigma (measured <= 0.11)."""
    for (cid, survey), e in gama_fits.items():
        a, b = e["galnet"]["moments/float64"], e["galnet"]["example/float64"]
        assert abs(a["chi2"] - b["chi2"]) < 0.05, (cid, survey)
        for k, (d, sig) in gg.differences(a, b).items():
            assert abs(d) < 0.25 * sig / math.sqrt(2), (cid, survey, k, d, sig)


def test_galnet_agrees_with_imfit(gama_fits):
    """galnet and PyImfit on the same pixels, sigma, mask, PSF and start.

    The models differ: Imfit integrates the Sérsic over each pixel and then convolves with the
    (effective) PSF, counting the pixel twice; galnet samples the PSF-convolved Sérsic at pixel
    centres. Imfit's effective PSF is wider by 1/12 px^2 in variance, so it fits a more
    concentrated, flatter galaxy: n higher in all 20 fits (by 0-2.5 %, most in SDSS, whose
    galaxies are 6-14 px), q lower by 0-0.006, 0.000-0.005 mag brighter. Tolerances from the
    20 measured differences with a margin (measured maxima in brackets):
    |dre|/re < 1 % (0.4 %), dn/n in (-4 %, +0.5 %) (-2.5 %, 0), dq in (-0.002, 0.01) (0, 0.006),
    |dPA| < 0.2 deg (0.05), |dmag| < 0.01 (0.005), centres < 0.05 px (0.03).
    In units of the combined formal errors, which are tiny (S/N of hundreds to thousands): within
    3 sigma for the well-behaved nine (measured <= 2.1, n); G278109 in KiDS is off by 7.7 sigma
    in n and 4.1 in mag: where the single Sérsic is a poor model the two models' differences
    move the minimum by more than the formal errors.
    chi2nu: galnet's model fits at least as well (within 0.1 %) for the nine, and better in
    sum (by ~1000 in chi2, e.g. G265911 KiDS 1.863 vs 1.886): the PSFs are effective PSFs.
    """
    chi2_g = chi2_i = 0.0
    for (cid, survey), e in gama_fits.items():
        g, i = e["galnet"]["example/float64"], e["imfit"]
        d = gg.differences(g, i)
        tag = (cid, survey)
        assert abs(d["re"][0]) < 0.01, tag
        assert -0.04 < (g["n"] - i["n"]) / i["n"] < 0.005, tag
        assert -0.002 < d["q"][0] < 0.01, tag
        assert abs(d["pa"][0]) < 0.2, tag
        assert abs(d["mag"][0]) < 0.01, tag
        assert math.hypot(g["x"] - i["x"], g["y"] - i["y"]) < 0.05, tag
        if cid == PROBLEM:
            assert g["chi2nu"] < 1.01 * i["chi2nu"], tag  # measured 1.0072 (KiDS)
            continue
        for k in gg.COMPARED:
            assert abs(d[k][0]) < 3 * d[k][1], (tag, k, d[k])
        assert g["chi2nu"] < 1.001 * i["chi2nu"], tag  # measured <= 1.0002
        chi2_g += g["chi2"]
        chi2_i += i["chi2nu"] * (i["npix"] - 7)
    assert chi2_g < chi2_i - 500  # measured: ~1000 lower


def test_kids_and_sdss_views(gama_fits):
    """The same galaxy in KiDS (0.2", PSF 0.6-0.9") and SDSS (0.339", 1.2-1.3").

    PA agrees (within 0.5 deg for the nine, 2.3 for G278109), but re, n, q and mag do not within
    their formal errors (5-80 sigma): SDSS gives a flatter galaxy for all ten (q lower by
    0.036-0.141), more concentrated (n higher by 0.17-0.77 for seven), smaller (re up to 18 %
    smaller for eight) and fainter (0.03-0.13 mag; the two r filters and calibrations differ).
    The cause is in the data, not the fitter: PyImfit finds the same differences (checked
    below). The stars in the SDSS cutouts are 5-15 % narrower than the SDSS PSFs, and SDSS
    PSFs narrowed by 6-10 % halve the n differences (q and re move much less); keeping the
    negative ring of the KiDS PSFs instead of clipping it makes them all larger. The limits are
    therefore the measured spread with a margin, not the formal errors.
    """
    for cid in CATAIDS:
        k, s = (gama_fits[(cid, sv)] for sv in SURVEYS)
        d = gg.differences(s["galnet"]["example/float64"], k["galnet"]["example/float64"])
        di = gg.differences(s["imfit"], k["imfit"])
        loose = cid == PROBLEM
        assert abs(d["pa"][0]) < (3.0 if loose else 1.0), (cid, d["pa"])
        assert abs(d["re"][0]) < 0.2, (cid, d["re"])
        assert -0.16 < d["q"][0] < 0.0, (cid, d["q"])
        assert abs(d["n"][0]) < (1.6 if loose else 0.8), (cid, d["n"])
        assert 0.0 < d["mag"][0] < 0.15 or loose, (cid, d["mag"])
        # galnet and Imfit see the same KiDS-SDSS differences (measured: within 0.065 in n,
        # 0.006 in q, 0.005 in re/re, 0.06 deg in PA)
        assert abs(d["n"][0] - di["n"][0]) < 0.1, cid
        assert abs(d["q"][0] - di["q"][0]) < 0.01, cid
        assert abs(d["re"][0] - di["re"][0]) < 0.01, cid
        assert abs(d["pa"][0] - di["pa"][0]) < 0.2, cid


def test_differences_and_start_errors():
    """:func:`differences` in survey-independent units; a bad start is refused."""
    a = {"survey": "KiDS", "shape": (101, 101), "x": 50.0, "y": 51.0, "re_pix": 10.0,
         "n": 2.0, "q": 0.5, "pa_deg": 179.0, "mag": 16.0, **dict.fromkeys(
             ("x_err", "y_err", "re_pix_err", "n_err", "q_err", "pa_deg_err", "mag_err"), 0.1)}
    b = {**a, "survey": "SDSS", "shape": (61, 61), "x": 30.0, "y": 30.0, "re_pix": 5.0,
         "pa_deg": 1.0, "mag": 16.5}
    d = gg.differences(b, a)
    assert d["re"][0] == pytest.approx(5.0 * 0.339 / 2.0 - 1.0)
    assert d["pa"][0] == pytest.approx(2.0) and d["mag"][0] == pytest.approx(0.5)
    assert d["dx"][0] == pytest.approx(0.0) and d["dy"][0] == pytest.approx(-0.2)
    assert d["n"] == (0.0, pytest.approx(0.1 * math.sqrt(2)))
    with pytest.raises(GalnetValueError, match="start must be"):
        gg.galnet_fit({}, "nn")
