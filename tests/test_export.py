"""galnet.interop: GALFIT/Imfit files of a catalogue, reading fits back, the PyImfit wrapper.

- catalogue -> Imfit config -> read back gives the same parameters (exact converters);
- a config written by galnet, read by PyImfit's own parser and fitted to stamps rendered with
  ``render(mode="imfit")`` (Imfit's model), gives back the truth through ``read_imfit_bestfit``;
- catalogue -> GALFIT feedme -> read back gives the same parameters; GALFIT headers are read;
- ``imfit_fit`` recovers the truth of a noiseless mode="imfit" stamp, with calibrated errors;
- ``galnet export`` writes one file per row; bad arguments give one-line errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import QTable

from galnet.cli import main
from galnet.conventions import galfit_pa
from galnet.errors import GalnetValueError
from galnet.interop import (
    DEFAULT_LIMITS,
    export_catalog,
    imfit_config,
    parse_imfit_config,
    read_galfit_feedme,
    read_galfit_header,
    read_imfit_bestfit,
)
from galnet.io.catalog import write_catalog

pyimfit = pytest.importorskip("pyimfit")

ZP = 27.0
SHAPE = (61, 61)
KEYS = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")

#: Three galaxies (n >= 2 where Imfit's b_n equals the exact one to < 1.3e-6, and an n = 1.2).
TRUTH = {
    "x": np.array([30.3, 29.8, 31.1]),
    "y": np.array([29.6, 30.4, 30.0]),
    "flux": np.array([2000.0, 900.0, 1500.0]),
    "re_pix": np.array([4.0, 2.5, 6.0]),
    "n": np.array([2.5, 1.2, 4.0]),
    "q": np.array([0.6, 0.85, 0.4]),
    "pa_deg": np.array([35.0, 120.0, 170.0]),
}


def moffat_psf(fwhm: float = 3.5, size: int = 25) -> np.ndarray:
    """Moffat (beta = 3) PSF image, unit sum (analytic: no GalSim needed)."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / 3) - 1))
    p = (1 + (xx ** 2 + yy ** 2) / alpha ** 2) ** -3
    return p / p.sum()


def one(params: dict, i: int) -> dict:
    return {k: float(v[i]) for k, v in params.items()}


def catalogue(params=TRUTH, **meta) -> QTable:
    t = QTable({"id": np.arange(len(params["x"])), **{k: np.asarray(v) for k, v in params.items()}})
    for k, unit in (("x", u.pix), ("y", u.pix), ("re_pix", u.pix), ("pa_deg", u.deg)):
        t[k] = t[k] * unit
    t["mag"] = (ZP - 2.5 * np.log10(t["flux"])) * u.mag
    t.meta.update({"zeropoint": ZP, "pixel_scale": 0.168, **meta})
    return t


@pytest.fixture(scope="module")
def stamps(tmp_path_factory):
    """Noiseless Imfit-model stamps (render mode="imfit") as a cube with a SIGMA extension."""
    from galnet.profiles.render import render

    psf = moffat_psf()
    imgs = render(TRUTH, psf, SHAPE, mode="imfit")
    d = tmp_path_factory.mktemp("stamps")
    fits.HDUList([fits.PrimaryHDU(imgs),
                  fits.ImageHDU(np.full(imgs.shape, 0.5), name="SIGMA")]).writeto(d / "stamps.fits")
    fits.PrimaryHDU(psf).writeto(d / "psf.fits")
    return d, imgs, psf


def assert_params(got: dict, want: dict, rtol: float, xy_atol: float, pa_atol: float) -> None:
    for k in ("flux", "re_pix", "n", "q"):
        assert got[k] == pytest.approx(want[k], rel=rtol), k
    for k in ("x", "y"):
        assert got[k] == pytest.approx(want[k], abs=xy_atol), k
    dpa = (got["pa_deg"] - want["pa_deg"] + 90) % 180 - 90
    assert abs(dpa) < pa_atol
    assert 0 <= got["pa_deg"] < 180


# ----------------------------------------------------------------------------------- Imfit


def test_imfit_config_round_trip(tmp_path):
    """catalogue -> Imfit config -> read_imfit_bestfit: the same galnet parameters."""
    res = export_catalog(catalogue(), tmp_path, "imfit")
    assert [f.name for f in res.files] == [f"{i}.imfit.conf" for i in range(3)]
    assert res.skipped == []
    for i in range(3):
        got = read_imfit_bestfit(tmp_path / f"{i}.imfit.conf", zeropoint=ZP)
        want = one(TRUTH, i)
        for k in KEYS:
            assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-12), k
        assert got["mag"] == pytest.approx(ZP - 2.5 * math.log10(want["flux"]), abs=1e-12)
        assert math.isnan(got["x_err"]) and math.isnan(got["chi2nu"])
    text = (tmp_path / "0.imfit.conf").read_text()
    assert "X0    31.3 " in text and "ell   0.4" in text  # 1-based, ell = 1 - q


def test_imfit_config_limits_read_by_pyimfit(tmp_path):
    """Limits as PyImfit's parser reads them; initial values outside them moved onto them."""
    p = {"x": 10.0, "y": 20.0, "flux": 100.0, "re_pix": 3.0, "n": 9.5, "q": 0.02, "pa_deg": 10.0}
    path = tmp_path / "c.conf"
    path.write_text(imfit_config(p, size=61))
    md = pyimfit.parse_config_file(str(path))
    names = md.numberedParameterNames
    vals = dict(zip(names, md.getRawParameters(), strict=True))
    lims = dict(zip(names, md.getParameterLimits(), strict=True))
    assert vals["X0_1"] == 11.0 and lims["X0_1"] == (8.0, 14.0)
    assert lims["PA_1"] == (-170.0, 190.0)  # +-180: free, yet bounded for Imfit's DE
    assert vals["n_1"] == 8.0 and lims["n_1"] == DEFAULT_LIMITS.n
    assert vals["ell_1"] == 0.95 and lims["ell_1"] == DEFAULT_LIMITS.ell
    assert lims["r_e_1"] == (0.05, 61.0) and lims["I_e_1"][0] == 0.0
    # a round start begins at ell = 0.1: at ell = 0 Imfit's LM never moves the PA
    path.write_text(imfit_config({**p, "q": 1.0}))
    md = pyimfit.parse_config_file(str(path))
    assert dict(zip(md.numberedParameterNames, md.getRawParameters(), strict=True))[
        "ell_1"] == pytest.approx(DEFAULT_LIMITS.ell_start)


def test_exported_config_fitted_by_pyimfit(tmp_path, stamps):
    """A config galnet writes, parsed and fitted by PyImfit, gives back the truth."""
    d, imgs, psf = stamps
    start = {k: v.copy() for k, v in TRUTH.items()}  # a guess off the truth
    start["x"] += 0.6
    start["y"] -= 0.4
    start["flux"] *= 1.3
    start["re_pix"] *= 0.7
    start["n"] = np.array([1.5, 2.0, 2.5])
    start["q"] = np.minimum(start["q"] + 0.15, 1.0)
    start["pa_deg"] += 15.0
    export_catalog(catalogue(start), tmp_path, "imfit", images=d / "stamps.fits",
                   psf=d / "psf.fits")
    for i in range(3):
        md = pyimfit.parse_config_file(str(tmp_path / f"{i}.imfit.conf"))
        fitter = pyimfit.Imfit(md, psf=psf, maxThreads=1)
        stamp = fits.getdata(tmp_path / f"{i}.fits")
        sigma = fits.getdata(tmp_path / f"{i}_sigma.fits")  # the cube's SIGMA, split
        assert np.array_equal(stamp, imgs[i]) and np.all(sigma == 0.5)
        fitter.fit(stamp, error=sigma, solver="LM")
        assert fitter.fitConverged
        fitter.saveCurrentModelToFile(str(tmp_path / f"{i}.imfit.bestfit"))
        got = read_imfit_bestfit(tmp_path / f"{i}.imfit.bestfit", zeropoint=ZP)
        # noiseless, Imfit's own model: only the b_n of n = 1.2 (Imfit's series) differs
        assert_params(got, one(TRUTH, i), rtol=2e-3, xy_atol=1e-3, pa_atol=0.05)
        assert np.isfinite([got[f"{k}_err"] for k in ("x", "y", "re_pix", "n", "q", "pa_deg")]
                           ).all()


def test_read_imfit_bestfit_cli_file(tmp_path):
    """imfit's own --save-params layout: header comments, options, errors, a FlatSky, ell < 0."""
    text = """# Best-fit model results for imfit
# Generated by imfit 1.9.0: Mon Jan  1 00:00:00 2024
# Command-line: imfit 0.fits -c 0.imfit.conf --save-params 0.imfit.bestfit
# Reduced Chi^2 = 1.0234
# AIC = 3800.1, BIC = 3850.2

GAIN	4.5
X0		31.25		# +/- 0.012
Y0		30.5		# +/- 0.013
FUNCTION Sersic
PA		170.0		# +/- 0.9
ell		-0.25		# +/- 0.02
n		2.0		# +/- 0.08
I_e		10.0		# +/- 0.3
r_e		4.0		# +/- 0.07
FUNCTION FlatSky
I_sky		0.12		# +/- 0.01
"""
    path = tmp_path / "best.dat"
    path.write_text(text)
    got = read_imfit_bestfit(path)
    assert got["x"] == pytest.approx(30.25) and got["y"] == pytest.approx(29.5)
    assert got["chi2nu"] == pytest.approx(1.0234) and got["sky"] == pytest.approx(0.12)
    # ell = -0.25 is q = 1.25 > 1: folded to q = 0.8, re = 4 * 1.25 = 5, PA + 90
    assert got["q"] == pytest.approx(0.8) and got["re_pix"] == pytest.approx(5.0)
    assert got["pa_deg"] == pytest.approx(80.0)
    assert got["x_err"] == 0.012 and got["n_err"] == 0.08 and got["pa_deg_err"] == 0.9
    assert got["q_err"] == pytest.approx(0.02 * 0.8 ** 2)
    assert math.isnan(got["flux_err"])
    assert parse_imfit_config(text)["options"] == {"GAIN": 4.5}
    path.write_text("X0 1\nY0 1\nFUNCTION Sersic\nPA 0\nell 0\nn 1\n")
    with pytest.raises(GalnetValueError, match="5"):
        read_imfit_bestfit(path)
    path.write_text("X0 1\nY0 1\nFUNCTION Exponential\nPA 0\nell 0\nI_0 1\nh 2\n")
    with pytest.raises(GalnetValueError, match="no Sersic"):
        read_imfit_bestfit(path)


# ---------------------------------------------------------------------------------- GALFIT


def test_galfit_feedme_round_trip(tmp_path, stamps):
    """catalogue -> feedme (A-P lines, constraints) -> read back: the same parameters."""
    d, _, _ = stamps
    res = export_catalog(catalogue(), tmp_path, "galfit", images=d / "stamps.fits",
                         psf=d / "psf.fits", sky=True)
    names = sorted(f.name for f in res.files)
    assert names == sorted(f"{i}{s}" for i in range(3)
                           for s in (".feedme", ".constraints", ".fits", "_sigma.fits"))
    for i in range(3):
        got = read_galfit_feedme(tmp_path / f"{i}.feedme")
        want = one(TRUTH, i)
        for k in KEYS:  # MAG is written with 12 significant digits
            assert got[k] == pytest.approx(want[k], rel=1e-10, abs=1e-10), k
        assert all(got["free"].values())
    text = (tmp_path / "2.feedme").read_text()
    lines = {ln.split(")")[0].strip(): ln.split(")", 1)[1].split("#")[0].strip()
             for ln in text.splitlines() if ")" in ln.split("#")[0]}
    assert lines["A"] == "2.fits" and lines["B"] == "2.galfit.fits"
    assert lines["C"] == "2_sigma.fits" and lines["D"] == str((d / "psf.fits").resolve())
    assert lines["F"] == "none" and lines["G"] == "2.constraints"
    assert lines["H"] == "1 61 1 61" and lines["I"] == "61 61"
    assert lines["J"] == "27.0" and lines["K"] == "0.168 0.168"
    assert float(lines["10"].split()[0]) == pytest.approx(galfit_pa(170.0)) == -10.0
    assert "0) sky" in text
    cons = (tmp_path / "2.constraints").read_text()
    assert "n           0.3 to 8" in cons and "x           -3 3" in cons
    assert fits.getheader(tmp_path / "2.fits")["EXPTIME"] == 1.0


def test_galfit_frame_exptime_and_regions(tmp_path):
    """One 2-D image for all rows (a frame): boxes around each object, clipped; its EXPTIME
    enters GALFIT's magnitude; a centre off the image is skipped."""
    frame = tmp_path / "frame.fits"
    hdu = fits.PrimaryHDU(np.zeros((200, 300)))
    hdu.header["EXPTIME"] = 10.0
    hdu.writeto(frame)
    params = {"x": np.array([150.0, 5.2, 400.0]), "y": np.array([100.0, 190.0, 10.0]),
              "flux": np.array([1000.0, 50.0, 10.0]), "re_pix": np.array([3.0, 20.0, 1.0]),
              "n": np.ones(3), "q": np.ones(3), "pa_deg": np.zeros(3)}
    res = export_catalog(catalogue(params), tmp_path / "out", "galfit", images=frame, box=None)
    assert res.skipped == ["2"]
    t0 = (tmp_path / "out" / "0.feedme").read_text()
    assert "H) 121 181 71 131" in t0  # 61 px around pixel (151, 101), 1-based
    assert f"A) {frame.resolve()}" in t0
    t1 = (tmp_path / "out" / "1.feedme").read_text()
    assert "H) 1 126 71 200" in t1  # 2 ceil(6 * 20) + 1 = 241 px around (6, 191), clipped
    got = read_galfit_feedme(tmp_path / "out" / "0.feedme", exptime=10.0)
    assert got["flux"] == pytest.approx(1000.0, rel=1e-10)
    m = float(t0.split(" 3) ")[1].split()[0])
    assert m == pytest.approx(ZP - 2.5 * math.log10(1000.0 / 10.0), abs=1e-9)
    res = export_catalog(catalogue(params), tmp_path / "im", "imfit", images=frame)
    assert "[121:181,71:131]" in (tmp_path / "im" / "0.imfit.conf").read_text()


def test_read_galfit_header():
    h = fits.Header()
    h["COMP_1"] = "sky"
    h["COMP_2"] = "sersic"
    h["MAGZPT"] = 27.0
    h["CHI2NU"] = 1.05
    h["2_XC"] = "31.3000 +/- 0.0100"
    h["2_YC"] = "30.6000 +/- 0.0200"
    h["2_MAG"] = "18.7474 +/- 0.0100"
    h["2_RE"] = "*4.0000* +/- *0.0800*"
    h["2_N"] = "[2.5000]"
    h["2_AR"] = "0.6000 +/- 0.0100"
    h["2_PA"] = "-60.0000 +/- 1.0000"
    got = read_galfit_header(h)
    assert got["x"] == pytest.approx(30.3) and got["y"] == pytest.approx(29.6)
    assert got["pa_deg"] == pytest.approx(120.0) and got["n"] == 2.5 and got["n_err"] == 0.0
    assert got["flux"] == pytest.approx(10 ** (-0.4 * (18.7474 - 27.0)))
    assert got["flux_err"] == pytest.approx(got["flux"] * 0.01 / 1.0857362, rel=1e-6)
    assert got["re_pix_err"] == 0.08 and got["galfit_flagged"] and got["chi2nu"] == 1.05


# ------------------------------------------------------------------------------- imfit_fit


def test_imfit_fit_recovers_truth(stamps):
    """Noiseless Imfit-model stamp, guess off the truth: the truth, converged, chi2 ~ 0."""
    from galnet.interop import imfit_fit

    _, imgs, psf = stamps
    truth = one(TRUTH, 0)
    init = {**truth, "x": 30.9, "y": 29.1, "flux": 1500.0, "re_pix": 2.5, "n": 1.2, "q": 0.8,
            "pa_deg": 55.0}
    r = imfit_fit(imgs[0], psf, init=init, sigma=0.5, zeropoint=ZP)
    assert r["converged"] and r["message"] == "" and not r["bound_hit"]
    assert_params(r, truth, rtol=1e-4, xy_atol=1e-4, pa_atol=1e-3)
    assert r["mag"] == pytest.approx(ZP - 2.5 * math.log10(truth["flux"]), abs=1e-4)
    assert r["chi2nu"] < 1e-6 and r["npix"] == 61 * 61 and r["nfev"] > r["niter"] > 0
    assert all(r[f"{k}_err"] > 0 for k in (*KEYS, "mag"))
    assert r["time_s"] > 0 and r["time_total_s"] >= r["time_s"]


def test_imfit_fit_errors_mask_and_failures(stamps, monkeypatch):
    """Errors match the scatter; masked garbage and NaNs are ignored; failures are results."""
    from galnet.interop import imfit_fit

    _, imgs, psf = stamps
    truth = one(TRUTH, 1)
    rng = np.random.default_rng(3)
    fits_ = [imfit_fit(imgs[1] + rng.normal(0, 0.5, SHAPE), psf, init=truth, sigma=0.5)
             for _ in range(16)]
    for k in ("flux", "re_pix", "n"):
        scatter = np.std([f[k] for f in fits_])
        err = np.mean([f[f"{k}_err"] for f in fits_])
        assert 0.5 < scatter / err < 1.6, (k, scatter, err)  # 16 draws: +-35% at 2 sigma
    assert np.mean([f["chi2nu"] for f in fits_]) == pytest.approx(1.0, abs=0.05)

    bad = imgs[1].copy()
    mask = np.zeros(SHAPE, dtype=bool)
    bad[5:15, 40:55] = 1e4  # a "star"
    mask[5:15, 40:55] = True
    bad[0, 0] = np.nan
    r = imfit_fit(bad, psf, init={**truth, "n": 2.0}, mask=mask, mode="imfit")
    assert r["converged"] and r["npix"] == 61 * 61 - 150 - 1
    assert_params(r, truth, rtol=2e-3, xy_atol=1e-3, pa_atol=0.05)

    with pytest.raises(GalnetValueError, match="solver"):
        imfit_fit(imgs[1], psf, init=truth, solver="BFGS")
    with pytest.raises(GalnetValueError, match="mode"):
        imfit_fit(imgs[1], psf, init=truth, mode="exact")
    with pytest.raises(GalnetValueError, match="sigma"):
        imfit_fit(imgs[1], psf, init=truth, sigma=np.ones((3, 3)))

    # image units of ~1e-12 (a zeropoint-0 survey): the same fit, errors and flags, scaled
    noisy = imgs[1] + rng.normal(0, 0.5, SHAPE)
    a = imfit_fit(noisy, psf, init=truth, sigma=0.5)
    s = 1e-12
    b = imfit_fit(noisy * s, psf, init={**truth, "flux": truth["flux"] * s}, sigma=0.5 * s)
    assert not a["bound_hit"] and not b["bound_hit"] and b["converged"]
    assert b["chi2nu"] == pytest.approx(a["chi2nu"], rel=1e-9)
    for k in KEYS:
        f = s if k == "flux" else 1.0
        assert b[k] == pytest.approx(a[k] * f, rel=1e-6, abs=1e-9 * f), k
        assert b[f"{k}_err"] == pytest.approx(a[f"{k}_err"] * f, rel=1e-3), k

    def boom(self, *a, **k):
        raise Exception("simulated Imfit failure")  # noqa: TRY002 - PyImfit's style

    monkeypatch.setattr(pyimfit.Imfit, "fit", boom)
    r = imfit_fit(imgs[1], psf, init=truth)
    assert not r["converged"] and "simulated" in r["message"] and math.isnan(r["flux"])


# ------------------------------------------------------------------------- names and the CLI


def test_names_and_patterns(tmp_path):
    t = catalogue()
    t["id"] = ["a/b", "c d", ".x"]
    res = export_catalog(t, tmp_path, "galfit", images="stamps/{id}.fits", psf="psf_{index}.fits")
    assert sorted(f.name for f in res.files if f.suffix == ".feedme") == [
        "a_b.feedme", "c_d.feedme", "x.feedme"]
    text = (tmp_path / "c_d.feedme").read_text()
    assert "A) stamps/c_d.fits" in text and "D) psf_1.fits" in text
    t["id"] = ["a/b", "a_b", "z"]
    with pytest.raises(GalnetValueError, match="not unique"):
        export_catalog(t, tmp_path, "imfit")
    with pytest.raises(GalnetValueError, match="unknown export format"):
        export_catalog(catalogue(), tmp_path, "sextractor")


def test_cli_export(tmp_path, capsys):
    t = catalogue()
    t["n"][1] = np.nan  # a failed row: skipped
    cat = tmp_path / "cat.ecsv"
    write_catalog(t, cat)
    assert main(["export", "--to", "imfit", str(cat), str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.imfit.conf",
                                                                     "2.imfit.conf"]
    assert "wrote 2 imfit configurations" in capsys.readouterr().out
    assert main(["export", "--to", "galfit", str(cat), str(tmp_path / "g")]) == 0
    assert len(list((tmp_path / "g").glob("*.feedme"))) == 2
    capsys.readouterr()
    for argv, msg, code in (  # exit 2: usage errors; 1: errors found while running
        (["export", "--to", "sextractor", str(cat), str(tmp_path / "x")], "invalid choice", 2),
        (["export", "--to", "imfit", str(cat), str(tmp_path / "x"), "--preset", "nope"],
         "unknown preset", 2),
        (["export", "--to", "imfit", str(tmp_path / "none.ecsv"), str(tmp_path / "x")],
         "no such file", 1),
        (["export", "--to", "imfit", str(cat), str(tmp_path / "x"), "--psf",
          str(tmp_path / "none.fits")], "no such file", 1),
    ):
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert err.startswith("galnet: error: ") and msg in err and err.count("\n") == 1, err
    t.meta.pop("zeropoint")
    t.remove_column("flux")
    write_catalog(t, cat, overwrite=True)
    assert main(["export", "--to", "galfit", str(cat), str(tmp_path / "x")]) == 1
    assert "zeropoint" in capsys.readouterr().err
    assert main(["export", "--to", "galfit", str(cat), str(tmp_path / "x"), "--preset",
                 "hsc-r"]) == 0
