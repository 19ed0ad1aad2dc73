"""Conventions and exact converters to GALFIT, Imfit and GalSim (galnet.conventions)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from scipy.special import gammaincinv

from galnet.conventions import (
    GALFIT_KEYS,
    IMFIT_KEYS,
    from_galfit,
    from_galsim,
    from_imfit,
    galfit_pa,
    galfit_sersic_block,
    galsim_sersic,
    imfit_bn,
    imfit_model_dict,
    read_galfit_sersic_block,
    stamp_centre,
    to_galfit,
    to_galsim,
    to_imfit,
    wrap_pa,
)
from galnet.errors import GalnetValueError

ZP = 27.0
N_RANDOM = 2000


@pytest.fixture(scope="module")
def random_params() -> dict[str, np.ndarray]:
    """Random galnet parameters covering the hard bounds of PARAMS."""
    rng = np.random.default_rng(20240501)
    return {
        "x": rng.uniform(-10.0, 80.0, N_RANDOM),
        "y": rng.uniform(-10.0, 80.0, N_RANDOM),
        "flux": 10.0 ** rng.uniform(-2.0, 6.0, N_RANDOM),
        "re_pix": 10.0 ** rng.uniform(-2.0, 3.0, N_RANDOM),
        "n": 10.0 ** rng.uniform(np.log10(0.2), 1.0, N_RANDOM),
        "q": rng.uniform(0.02, 1.0, N_RANDOM),
        "pa_deg": rng.uniform(0.0, 180.0, N_RANDOM),
    }


def pa_diff(a, b):
    """Smallest difference of two axis angles (mod 180), degrees."""
    d = np.mod(np.asarray(a) - np.asarray(b), 180.0)
    return np.minimum(d, 180.0 - d)


def assert_same_params(got: dict, want: dict, tol: float = 1e-10) -> None:
    for k in ("x", "y"):
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=tol * 100, err_msg=k)
    for k in ("flux", "re_pix", "n", "q"):
        np.testing.assert_allclose(got[k], want[k], rtol=tol, atol=0, err_msg=k)
    assert np.all(pa_diff(got["pa_deg"], want["pa_deg"]) < tol * 180)
    assert np.all((got["pa_deg"] >= 0) & (got["pa_deg"] < 180))


def moments(image: np.ndarray) -> tuple[float, float, float, float, float]:
    """Centroid (x, y) and second moments (Mxx, Myy, Mxy) of an image[iy, ix]."""
    ny, nx = image.shape
    yy, xx = np.mgrid[:ny, :nx]
    w = image / image.sum()
    mx, my = (w * xx).sum(), (w * yy).sum()
    return (mx, my, (w * (xx - mx) ** 2).sum(), (w * (yy - my) ** 2).sum(),
            (w * (xx - mx) * (yy - my)).sum())


def major_axis_pa(mxx: float, myy: float, mxy: float) -> float:
    """PA (deg CCW from +y, [0, 180)) of the major axis of second moments."""
    theta = 0.5 * np.degrees(np.arctan2(2 * mxy, mxx - myy))  # from +x
    return float(wrap_pa(theta - 90.0))


# ----------------------------------------------------------------------------- round trips


def test_galfit_round_trip(random_params):
    for exptime in (1.0, 37.5):
        g = to_galfit(random_params, ZP, exptime=exptime)
        assert set(g) == set(GALFIT_KEYS)
        assert np.all((g["PA"] > -90) & (g["PA"] <= 90))
        back = from_galfit(g, ZP, exptime=exptime)
        assert_same_params(back, random_params)
        np.testing.assert_allclose(back["mag"], ZP - 2.5 * np.log10(random_params["flux"]),
                                   atol=1e-10)


def test_imfit_round_trip(random_params):
    m = to_imfit(random_params)
    assert set(m) == set(IMFIT_KEYS)
    back = from_imfit(m, zeropoint=ZP)
    assert_same_params(back, random_params)
    np.testing.assert_allclose(back["mag"], ZP - 2.5 * np.log10(random_params["flux"]),
                               atol=1e-10)


def test_galsim_round_trip(random_params):
    for shape in ((61, 61), (60, 60), (41, 64)):
        g = to_galsim(random_params, shape)
        back = from_galsim(g, shape)
        assert_same_params(back, random_params)
        assert np.all((g["beta_deg"] >= 0) & (g["beta_deg"] < 180))


def test_mag_input_with_zeropoint(random_params):
    p = {k: v for k, v in random_params.items() if k != "flux"}
    p["mag"] = ZP - 2.5 * np.log10(random_params["flux"])
    g = to_galfit(p, ZP, exptime=10.0)
    np.testing.assert_allclose(g["MAG"], p["mag"] + 2.5, atol=1e-10)  # 2.5 log10(10)
    m = to_imfit(p, zeropoint=ZP)
    np.testing.assert_allclose(from_imfit(m)["flux"], random_params["flux"], rtol=1e-10)
    np.testing.assert_allclose(to_galsim(p, (61, 61), zeropoint=ZP)["flux"],
                               random_params["flux"], rtol=1e-10)


def test_astropy_table_and_scalars(random_params):
    t = Table({k: v[:5] for k, v in random_params.items()})
    g = to_galfit(t, ZP)
    assert g["XC"].shape == (5,)
    np.testing.assert_allclose(g["XC"], t["x"] + 1.0)
    one = {k: float(v[0]) for k, v in random_params.items()}
    m = to_imfit(one)
    assert all(np.ndim(v) == 0 for v in m.values())
    s = to_galsim(one, (61, 61))
    assert np.ndim(s["offset"][0]) == 0 and np.ndim(s["flux"]) == 0


# ------------------------------------------------------------------------ fixed known cases


def test_fixed_values():
    p = {"x": 30.0, "y": 30.0, "flux": 1000.0, "re_pix": 4.0, "n": 1.0, "q": 0.25,
         "pa_deg": 120.0}
    g = to_galfit(p, 25.0)
    assert (g["XC"], g["YC"], g["PA"]) == (31.0, 31.0, -60.0)
    assert g["MAG"] == pytest.approx(17.5, abs=1e-12)
    assert (g["RE"], g["N"], g["AR"]) == (4.0, 1.0, 0.25)
    m = to_imfit(p)
    assert (m["X0"], m["Y0"], m["PA"], m["ell"], m["r_e"]) == (31.0, 31.0, 120.0, 0.75, 4.0)
    s = to_galsim(p, (61, 61))
    assert s["offset"] == (0.0, 0.0)
    assert s["half_light_radius"] == pytest.approx(2.0)  # 4 * sqrt(0.25)
    assert s["beta_deg"] == pytest.approx(30.0)  # 120 + 90 - 180
    assert to_galsim(p, (60, 60))["offset"] == (0.5, 0.5)
    assert stamp_centre((61, 61)) == (30.0, 30.0)
    assert stamp_centre((40, 61)) == (30.0, 19.5)


def test_pa_wrapping():
    np.testing.assert_allclose(wrap_pa([-10.0, 0.0, 180.0, 190.0, 359.0, -180.0]),
                               [170.0, 0.0, 0.0, 10.0, 179.0, 0.0])
    np.testing.assert_allclose(galfit_pa([0.0, 45.0, 90.0, 91.0, 179.0, -90.0, 270.0, 450.0]),
                               [0.0, 45.0, 90.0, -89.0, -1.0, 90.0, 90.0, 90.0])
    base = {"XC": 1.0, "YC": 1.0, "MAG": 20.0, "RE": 2.0, "N": 1.0, "AR": 0.5}
    pas = from_galfit({**base, "PA": np.array([-60.0, -90.0, 90.0, 0.0, 200.0])}, ZP)["pa_deg"]
    np.testing.assert_allclose(pas, [120.0, 90.0, 90.0, 0.0, 20.0])


def test_axis_ratio_above_one_is_folded():
    """GALFIT AR > 1 / Imfit ell < 0: the b axis is the major axis."""
    g = from_galfit({"XC": 1.0, "YC": 1.0, "MAG": 20.0, "RE": 3.0, "N": 2.0, "AR": 2.0,
                     "PA": 10.0}, ZP)
    assert (g["q"], g["re_pix"], g["pa_deg"]) == (0.5, 6.0, 100.0)
    m = from_imfit({"X0": 1.0, "Y0": 1.0, "PA": 170.0, "ell": -1.0, "n": 2.0, "I_e": 1.0,
                    "r_e": 3.0})
    assert (m["q"], m["re_pix"], m["pa_deg"]) == (0.5, 6.0, 80.0)
    # same profile, described the normal way: same total flux
    m2 = from_imfit({"X0": 1.0, "Y0": 1.0, "PA": 80.0, "ell": 0.5, "n": 2.0, "I_e": 1.0,
                     "r_e": 6.0})
    assert m["flux"] == pytest.approx(m2["flux"], rel=1e-12)


@pytest.mark.parametrize("shape", [(61, 61), (60, 60), (41, 60), (60, 41)])
def test_galsim_centring(shape):
    """galsim_sersic drawn on an image of ``shape`` is centred at 0-based (x, y)."""
    cx, cy = stamp_centre(shape)
    p = {"x": cx + 0.37, "y": cy - 0.21, "flux": 10.0, "re_pix": 2.0, "n": 0.5, "q": 0.6,
         "pa_deg": 20.0}
    img = galsim_sersic(p, shape).drawImage(nx=shape[1], ny=shape[0], scale=1.0,
                                            method="no_pixel", dtype=np.float64).array
    mx, my, *_ = moments(img)
    assert mx == pytest.approx(p["x"], abs=1e-6)
    assert my == pytest.approx(p["y"], abs=1e-6)
    assert img.sum() == pytest.approx(10.0, rel=1e-6)


@pytest.mark.parametrize("pa", [0.0, 30.0, 90.0, 135.0, 160.0])
def test_galsim_pa_direction(pa):
    """pa = 0 is elongated along y (rows); the moments' major axis has the requested PA."""
    p = {"x": 30.0, "y": 30.0, "flux": 1.0, "re_pix": 6.0, "n": 0.5, "q": 0.4, "pa_deg": pa}
    img = galsim_sersic(p, (61, 61)).drawImage(nx=61, ny=61, scale=1.0, method="no_pixel",
                                               dtype=np.float64).array
    _, _, mxx, myy, mxy = moments(img)
    if pa == 0.0:
        assert myy > 5 * mxx and abs(mxy) < 1e-6 * myy
    if pa == 90.0:
        assert mxx > 5 * myy and abs(mxy) < 1e-6 * mxx
    if pa == 30.0:  # major axis (-0.5, 0.87): x decreases as y increases
        assert mxy < 0
    assert pa_diff(major_axis_pa(mxx, myy, mxy), pa) < 1e-3
    # axis ratio from moments of a Gaussian (n = 0.5): sqrt(lambda_min / lambda_max) = q
    lam = np.linalg.eigvalsh([[mxx, mxy], [mxy, myy]])
    assert np.sqrt(lam[0] / lam[1]) == pytest.approx(0.4, rel=1e-4)


@pytest.mark.parametrize("pa", [0.0, 30.0, 90.0, 135.0])
def test_imfit_pa_and_centre(pa):
    """PyImfit draws to_imfit parameters centred at (x, y) with the requested PA."""
    pyimfit = pytest.importorskip("pyimfit")
    p = {"x": 30.3, "y": 28.8, "flux": 100.0, "re_pix": 6.0, "n": 0.5, "q": 0.4, "pa_deg": pa}
    md = pyimfit.ModelDescription.dict_to_ModelDescription(imfit_model_dict(to_imfit(p)))
    img = pyimfit.Imfit(md, subsampling=False).getModelImage(shape=(61, 61))
    mx, my, mxx, myy, mxy = moments(img)
    assert (mx, my) == (pytest.approx(30.3, abs=1e-6), pytest.approx(28.8, abs=1e-6))
    assert pa_diff(major_axis_pa(mxx, myy, mxy), pa) < 1e-3
    assert img.sum() == pytest.approx(100.0, rel=1e-7)  # well sampled Gaussian: sum = flux


# --------------------------------------------------------------------- Imfit b_n and I_e


def test_imfit_bn_vs_exact():
    n = np.linspace(0.5, 8.0, 2001)
    rel = np.abs(imfit_bn(n) / gammaincinv(2 * n, 0.5) - 1)
    assert rel.max() < 4e-4  # Ciotti & Bertin (1999) is worst near n = 0.5 (3.6e-4)
    assert rel[n >= 0.75].max() < 1e-4
    assert rel[n >= 2.0].max() < 1.3e-6
    assert rel[n >= 0.75].max() > 1e-6  # it is an approximation: not the exact b_n


def test_imfit_bn_branches():
    # Imfit (helper_funcs.cpp): MacArthur+2003 polynomial for n <= 0.36, Ciotti & Bertin above
    for n in (0.2, 0.3, 0.36):
        poly = 0.01945 - 0.8902 * n + 10.95 * n**2 - 19.67 * n**3 + 13.43 * n**4
        assert imfit_bn(n) == pytest.approx(poly, rel=1e-14)
    for n in (0.37, 1.0, 4.0):
        cb = (2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n**2) + 131 / (1148175 * n**3)
              - 2194697 / (30690717750 * n**4))
        assert imfit_bn(n) == pytest.approx(cb, rel=1e-14)
    assert imfit_bn(np.array([0.3, 4.0])).shape == (2,)


def test_imfit_ie_round_trip_and_closed_form(random_params):
    m = to_imfit(random_params)
    ie_back = to_imfit(from_imfit(m))["I_e"]
    np.testing.assert_allclose(ie_back, m["I_e"], rtol=1e-10)
    # n = 1 closed form: flux = 2 pi q h^2 I_e e^b with h = r_e / b (b = Imfit's b_1)
    p = {"x": 0.0, "y": 0.0, "flux": 500.0, "re_pix": 4.0, "n": 1.0, "q": 0.5, "pa_deg": 0.0}
    b = imfit_bn(1.0)
    expected = 500.0 / (2 * np.pi * 0.5 * (4.0 / b) ** 2 * np.exp(b))
    assert to_imfit(p)["I_e"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n", [0.3, 0.5, 1.0, 2.0, 4.0, 6.0])
def test_imfit_flux_is_2d_integral(n):
    """The I_e of to_imfit, put in Imfit's profile and integrated in 2-D, gives the flux."""
    p = {"x": 0.0, "y": 0.0, "flux": 123.0, "re_pix": 3.0, "n": n, "q": 0.6, "pa_deg": 30.0}
    m = to_imfit(p)
    b = imfit_bn(n)
    # polar grid in the image plane: log-spaced radius, uniform angle (no ellipse Jacobian used)
    u = np.linspace(np.log(1e-7), np.log(3e4 * p["re_pix"]), 6001)
    phi = np.linspace(0, 2 * np.pi, 721)[:-1]
    rho, ph = np.exp(u)[:, None], phi[None, :]
    dx, dy = rho * np.cos(ph), rho * np.sin(ph)
    t = np.radians(m["PA"] + 90.0)  # Imfit: major axis at PA + 90 from +x
    xp = dx * np.cos(t) + dy * np.sin(t)
    yp = (-dx * np.sin(t) + dy * np.cos(t)) / (1.0 - m["ell"])
    r = np.hypot(xp, yp)
    intensity = m["I_e"] * np.exp(-b * ((r / m["r_e"]) ** (1.0 / n) - 1.0))
    radial = intensity.mean(axis=1) * 2 * np.pi * np.exp(2 * u)  # integrand in d(ln rho)
    flux = np.trapezoid(radial, u)
    assert flux == pytest.approx(123.0, rel=1e-5)


# ------------------------------------------------------------------------------- GALFIT text


def test_galfit_block_round_trip():
    p = {"x": 30.123456789, "y": 12.5, "flux": 2345.678, "re_pix": 7.25, "n": 3.3, "q": 0.42,
         "pa_deg": 170.0}
    g = to_galfit(p, ZP)
    text = galfit_sersic_block(g, number=2, free={"N": False, "PA": False})
    assert text.splitlines()[0] == "# Component number: 2"
    assert " 0) sersic" in text and "10) -10 0" in text and " Z) 0" in text
    back = read_galfit_sersic_block("# header\n J) 27.0\n" + text + " 0) sky\n 1) 5 1\n")
    for k in GALFIT_KEYS:
        assert back[k] == pytest.approx(float(g[k]), rel=1e-9, abs=1e-9), k
    assert back["free"] == {"XC": True, "YC": True, "MAG": True, "RE": True, "N": False,
                            "AR": True, "PA": False}
    assert_same_params(from_galfit(back, ZP), p, tol=1e-9)
    assert " Z) 1" in galfit_sersic_block(g, skip=True)
    assert "1 1  " not in galfit_sersic_block(g, free=False).split("\n")[2]


def test_galfit_block_needs_scalars(random_params):
    with pytest.raises(GalnetValueError, match="XC must be a scalar"):
        galfit_sersic_block(to_galfit(random_params, ZP))
    with pytest.raises(GalnetValueError, match="unknown key"):
        galfit_sersic_block(to_galfit({k: v[0] for k, v in random_params.items()}, ZP),
                            free={"BOGUS": True})


# ----------------------------------------------------------------------------------- errors


def test_errors():
    p = {"x": 1.0, "y": 1.0, "flux": 1.0, "re_pix": 2.0, "n": 1.0, "q": 0.5, "pa_deg": 0.0}
    with pytest.raises(GalnetValueError, match="to_galfit: missing parameter 're_pix'"):
        to_galfit({k: v for k, v in p.items() if k != "re_pix"}, ZP)
    with pytest.raises(GalnetValueError, match="'mag' given without a zeropoint"):
        to_imfit({**{k: v for k, v in p.items() if k != "flux"}, "mag": 20.0})
    with pytest.raises(GalnetValueError, match="missing parameter 'flux'"):
        to_galsim({k: v for k, v in p.items() if k != "flux"}, (61, 61))
    with pytest.raises(GalnetValueError, match=r"q must be in \(0, 1\]"):
        to_imfit({**p, "q": 1.5})
    with pytest.raises(GalnetValueError, match="re_pix must be > 0"):
        to_galsim({**p, "re_pix": 0.0}, (61, 61))
    with pytest.raises(GalnetValueError, match="x must be finite"):
        to_galfit({**p, "x": np.nan}, ZP)
    with pytest.raises(GalnetValueError, match="from_imfit: missing parameter 'I_e'"):
        from_imfit({"X0": 1.0, "Y0": 1.0, "PA": 0.0, "ell": 0.5, "n": 1.0, "r_e": 2.0})
    with pytest.raises(GalnetValueError, match="outside GalSim's range"):
        galsim_sersic({**p, "n": 8.0}, (61, 61))
    with pytest.raises(GalnetValueError, match="one object"):
        galsim_sersic({**p, "x": np.array([1.0, 2.0])}, (61, 61))
    with pytest.raises(ValueError):  # GalnetValueError is a ValueError
        to_galfit({**p, "flux": -1.0}, ZP)
