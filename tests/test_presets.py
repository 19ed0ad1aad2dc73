"""Survey presets: loading, validation, consistency of the numbers, and prior sampling."""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from scipy import special

from galnet.conventions import mag_to_flux, stamp_centre
from galnet.errors import GalnetFileError, GalnetPresetError, GalnetValueError
from galnet.presets import (
    Preset,
    default_preset_name,
    get_preset,
    list_presets,
    load_presets,
    point_source_depth,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KEYS = ("x", "y", "mag", "flux", "re_pix", "re_arcsec", "n", "q", "pa_deg")


def _toml_text() -> str:
    return resources.files("galnet").joinpath("data/presets.toml").read_text("utf-8")


def test_packaged_presets_and_default():
    names = list_presets()
    assert names[0] == default_preset_name() == "hsc-r"
    assert set(names) == {"hsc-r", "kids-r", "sdss-r"}
    assert isinstance(get_preset(), Preset) and get_preset().name == "hsc-r"
    p = get_preset("hsc-r")
    assert get_preset(p) is p


def test_unknown_preset_message():
    known = r"unknown preset 'x' \(known: hsc-r, kids-r, sdss-r\)"
    with pytest.raises(GalnetPresetError, match=known):
        get_preset("x")
    assert str(GalnetPresetError("a b")) == "a b"


def test_preset_is_frozen():
    p = get_preset("hsc-r")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.sky_rms = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.priors["mag"] = None  # type: ignore[index]
    with pytest.raises(TypeError):
        p.config["sky_rms"] = 1.0  # type: ignore[index]


@pytest.mark.parametrize(
    "name, scale, zp, rms, depth, seeing",
    [
        ("hsc-r", 0.168, 27.0, 0.08, 26.0, (0.5, 1.0)),
        ("kids-r", 0.2, 0.0, 2.51e-12, 25.45, (0.55, 0.95)),
        ("sdss-r", 0.396, 22.5, 0.0496, 22.2, (1.0, 1.8)),
    ],
)
def test_survey_numbers(name, scale, zp, rms, depth, seeing):
    p = get_preset(name)
    assert (p.pixel_scale, p.zeropoint, p.stamp, p.psf_size) == (scale, zp, 61, 25)
    assert p.sky_rms == pytest.approx(rms, rel=0.02)
    assert p.depth_5sigma == pytest.approx(depth, abs=0.01)
    # sky rms and depth agree: noise in an optimal PSF aperture = rms sqrt(4 pi sigma_psf^2)
    s = p.depth_seeing / 2.3548 / p.pixel_scale
    implied = zp - 2.5 * math.log10(5 * rms * math.sqrt(4 * math.pi) * s)
    assert implied == pytest.approx(depth, abs=0.1)
    assert float(p.depth()) == pytest.approx(p.depth_5sigma, abs=0.1)
    assert (p.seeing.low, p.seeing.high) == seeing
    assert p.gain > 0
    fw = p.sample_seeing(np.random.default_rng(0), 2000)
    assert fw.min() >= seeing[0] and fw.max() <= seeing[1]
    assert seeing[0] < np.median(fw) < seeing[1]


def test_hsc_priors():
    pr = get_preset("hsc-r").priors
    assert (pr["mag"].low, pr["mag"].high) == (17.0, 24.0)
    re = pr["re_arcsec"]
    assert (re.dist, re.low, re.high) == ("loguniform", 0.1, 4.0)
    assert (pr["n"].dist, pr["n"].low, pr["n"].high) == ("loguniform", 0.3, 8.0)
    assert (pr["q"].low, pr["q"].high) == (0.1, 1.0)
    assert (pr["pa_deg"].low, pr["pa_deg"].high) == (0.0, 180.0)
    assert (pr["offset_pix"].low, pr["offset_pix"].high) == (-3.0, 3.0)


def test_point_source_depth_formula():
    # 5 sigma of a 1-count/px sky in an optimal aperture of a 2-pixel-sigma Gaussian PSF
    d = point_source_depth(1.0, 2.3548200450309493 * 2.0 * 0.5, 0.5, 30.0)
    assert d == pytest.approx(30.0 - 2.5 * math.log10(5 * math.sqrt(4 * math.pi) * 2.0))


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present (real KiDS sigma maps)")
def test_kids_sky_rms_matches_sigma_maps():
    from astropy.io import fits

    files = sorted(glob.glob(str(DATA / "galaxies/profit_gama_kids_sdss/KiDS/*sigma.fits")))
    assert len(files) >= 5
    sky = np.median([float(np.min(fits.getdata(f))) for f in files])
    assert get_preset("kids-r").sky_rms == pytest.approx(sky, rel=0.05)


@pytest.mark.parametrize("name", ["hsc-r", "kids-r", "sdss-r"])
def test_sample_params_within_priors(name):
    p = get_preset(name)
    s = p.sample_params(np.random.default_rng(1), 4000)
    assert set(s) == set(KEYS)
    assert all(v.shape == (4000,) and v.dtype == np.float64 and np.isfinite(v).all()
               for v in s.values())
    pr = p.priors
    for k in ("mag", "re_arcsec", "n", "q"):
        assert pr[k].low <= s[k].min() and s[k].max() <= pr[k].high, k
    assert 0.0 <= s["pa_deg"].min() and s["pa_deg"].max() < 180.0
    cx, cy = stamp_centre(p.shape)
    off = pr["offset_pix"]
    for k, c in (("x", cx), ("y", cy)):
        assert off.low <= (s[k] - c).min() and (s[k] - c).max() <= off.high
    np.testing.assert_allclose(s["flux"], mag_to_flux(s["mag"], p.zeropoint))
    np.testing.assert_allclose(s["re_arcsec"], s["re_pix"] * p.pixel_scale)
    # the stamp holds the galaxy: containment rule
    frac = p.light_in_stamp(s["re_pix"], s["n"], s["q"])
    assert frac.min() >= p.containment
    # the marginals of the unconstrained parameters keep their shape (uniform mag)
    assert abs(np.mean(s["mag"]) - 0.5 * (pr["mag"].low + pr["mag"].high)) < 0.15
    # log-uniform n: both decades populated, large radii only at low n
    assert (s["n"] < 1).mean() > 0.2 and (s["n"] > 4).mean() > 0.05
    big = s["re_pix"] > 10
    assert big.any() and np.all(s["n"][big] < 4)


def test_sample_params_deterministic():
    p = get_preset("hsc-r")
    a = p.sample_params(np.random.default_rng(7), 300)
    b = p.sample_params(np.random.default_rng(7), 300)
    c = p.sample_params(np.random.default_rng(8), 300)
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["mag"], c["mag"])
    assert all(v.size == 0 for v in p.sample_params(np.random.default_rng(0), 0).values())
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(GalnetValueError, match="n must be a non-negative integer"):
            p.sample_params(np.random.default_rng(0), bad)


def test_light_in_stamp():
    p = get_preset("hsc-r")
    assert p.containment_radius == 27.0
    n = np.array([0.5, 1.0, 4.0, 8.0])
    re = np.array([5.0, 8.0, 3.0, 1.0])
    # round profile: the circle is an isophote, closed form P(2n, b_n (R/re)^(1/n))
    bn = special.gammaincinv(2 * n, 0.5)
    exact = special.gammainc(2 * n, bn * (27.0 / re) ** (1 / n))
    np.testing.assert_allclose(p.light_in_stamp(re, n, 1.0), exact, rtol=1e-10)
    # re == R holds half the light
    np.testing.assert_allclose(p.light_in_stamp(27.0, n, 1.0), 0.5, rtol=1e-10)
    # flattened profile: brute force on a fine grid (n=1, q=0.3, re=15 px, R=27 px)
    h = 0.05
    g = np.arange(-60, 60, h) + h / 2
    X, Y = np.meshgrid(g, g)
    b1 = special.gammaincinv(2.0, 0.5)
    rho = np.hypot(X, Y / 0.3)
    img = np.exp(-b1 * rho / 15.0)
    total = 2 * np.pi * 0.3 * 15.0**2 * math.exp(0) * math.gamma(2) / b1**2  # F / I0 for n=1
    inside = img[np.hypot(X, Y) <= 27.0].sum() * h * h / total
    assert float(p.light_in_stamp(15.0, 1.0, 0.3)) == pytest.approx(inside, abs=2e-3)
    assert float(p.light_in_stamp(15.0, 1.0, 0.3)) > float(p.light_in_stamp(15.0, 1.0, 1.0))


def test_distributions():
    p = get_preset("sdss-r")
    x = p.seeing.sample(np.random.default_rng(0), 20000)
    assert x.min() >= 1.0 and x.max() <= 1.8
    assert np.mean(x) == pytest.approx(1.4, abs=0.01)  # symmetric truncation keeps the mean
    lg = np.log10(get_preset("hsc-r").priors["n"].sample(np.random.default_rng(0), 20000))
    assert np.histogram(lg, bins=4)[0].min() > 4000  # flat in log
    assert "loguniform[0.3, 8]" == get_preset("hsc-r").priors["n"].describe()


def _write(tmp_path, text: str) -> Path:
    f = tmp_path / "presets.toml"
    f.write_text(text)
    return f


def test_priors_come_from_the_toml(tmp_path):
    text = _toml_text().replace('mag = { dist = "uniform", low = 17.0, high = 24.0 }',
                                'mag = { dist = "uniform", low = 22.0, high = 22.5 }')
    presets, default = load_presets(_write(tmp_path, text))
    s = presets["hsc-r"].sample_params(np.random.default_rng(0), 500)
    assert 22.0 <= s["mag"].min() and s["mag"].max() <= 22.5
    assert presets["hsc-r"].config["priors"]["mag"]["low"] == 22.0
    assert default == "hsc-r"


@pytest.mark.parametrize(
    "old, new, match",
    [
        ("sky_rms = 0.080", "sky_rms = 0.2", "disagrees with sky_rms"),
        ('dist = "loguniform", low = 0.3, high = 8.0', 'dist = "powerlaw", low = 0.3, high = 8.0',
         "unknown distribution 'powerlaw'"),
        ("q = { dist = \"uniform\", low = 0.1, high = 1.0 }\npa_deg",
         "q = { dist = \"uniform\", low = 0.1, high = 1.5 }\npa_deg",
         r"priors.q must lie in \(0, 1\]"),
        ("stamp = 61\npsf_size = 25\n# 5-sigma", "stamp = 60\npsf_size = 25\n# 5-sigma",
         "stamp must be an odd integer"),
        ("gain = 1300.0", "gain = nan", "gain must be a finite number"),
        ("containment = 0.9\nmag = { dist = \"uniform\", low = 17.0",
         "containment = 0.99999\nmag = { dist = \"uniform\", low = 17.0", "containment"),
    ],
)
def test_invalid_presets_rejected(tmp_path, old, new, match):
    text = _toml_text()
    assert old in text
    with pytest.raises(GalnetValueError, match=match):
        load_presets(_write(tmp_path, text.replace(old, new, 1)))


def test_bad_presets_files(tmp_path):
    with pytest.raises(GalnetFileError, match="cannot read presets file"):
        load_presets(tmp_path / "missing.toml")
    with pytest.raises(GalnetFileError, match="not valid TOML"):
        load_presets(_write(tmp_path, "[a\n"))
    text = _toml_text().replace('default = "hsc-r"', 'default = "nope"')
    with pytest.raises(GalnetFileError, match="'default' must name one of"):
        load_presets(_write(tmp_path, text))


def test_toml_is_documented():
    text = _toml_text()
    raw = tomllib.loads(text)
    assert raw["default"] == "hsc-r"
    # every preset records where its noise numbers come from
    for key in ("sky_rms", "gain", "containment", "seeing"):
        assert key in text
    assert "sigma.fits" in text  # kids-r sky rms origin
    assert text.count("#") > 60


def test_preset_from_json_round_trip():
    """A simulation file's ``preset_config`` (Preset.to_json) rebuilds the same preset."""
    p = get_preset("hsc-r")
    assert Preset.from_json(p.to_json()) == p
    bad = json.loads(p.to_json())
    bad["priors"]["n"]["high"] = 50.0
    with pytest.raises(GalnetValueError, match="priors.n must lie in"):
        Preset.from_json(json.dumps(bad))
