"""The parameter table agrees with every consumer (issue 12, item 1).

galnet.params.SERSIC is the one source of names, units, bounds, log-scaling and wrapping. Each
test here checks one consumer *by behaviour* (what it accepts, clips, wraps or writes), so that
a bound written again by hand somewhere shows up as a failure when the table changes.
"""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pytest
import torch
from astropy import units as u

from galnet.errors import GalnetValueError
from galnet.params import SERSIC, column_units
from galnet.presets import get_preset, list_presets
from galnet.profiles.render import render

#: One renderable profile; the tests move one parameter at a time.
BASE = {"x": 10.0, "y": 10.0, "flux": 100.0, "re_pix": 2.0, "n": 2.0, "q": 0.6, "pa_deg": 30.0}


def _render(**kw):
    return render({**BASE, **kw}, None, (21, 21))


def _just_outside(lo: float, hi: float):
    """Values just outside a closed range (lo, hi) (a bound of 0 is itself outside)."""
    out = [lo if lo == 0 else lo - 1e-9 * max(1.0, abs(lo))]
    if math.isfinite(hi):
        out.append(hi + 1e-9 * max(1.0, abs(hi)))
    return out


# ---- renderer (profiles) ---------------------------------------------------------------------
RENDER_PARAMS = [p.name for p in SERSIC if p.render is not None]


def test_every_shape_parameter_has_render_bounds():
    assert set(RENDER_PARAMS) == {"re_pix", "n", "q"}


@pytest.mark.parametrize("name", RENDER_PARAMS)
def test_renderer_accepts_its_bounds(name):
    lo, hi = SERSIC[name].render
    inside = [v for v in (lo, hi) if v != 0 and math.isfinite(v)]
    if lo == 0:  # an open bound at 0: the smallest positive values are accepted
        inside.append(1e-6)
    for v in inside:
        img = _render(**{name: v})
        assert np.isfinite(img).all(), (name, v)


@pytest.mark.parametrize("name", RENDER_PARAMS)
def test_renderer_rejects_values_just_outside(name):
    for v in _just_outside(*SERSIC[name].render):
        with pytest.raises(GalnetValueError, match=f"parameter '{name}' must"):
            _render(**{name: v})


def test_renderer_message_names_the_table_range():
    lo, hi = SERSIC["n"].render
    with pytest.raises(GalnetValueError, match=rf"must be in \[{lo:g}, {hi:g}\]"):
        _render(n=hi + 1)


def test_render_bounds_lie_inside_physical_bounds():
    for p in SERSIC:
        if p.render is not None:
            lo, hi = p.render
            assert p.lower >= lo and p.upper <= hi, p.name


# ---- presets' priors (core) --------------------------------------------------------------------
PRIOR_OF = {"re_arcsec": "re_pix", "n": "n", "q": "q", "pa_deg": "pa_deg"}


@pytest.mark.parametrize("preset", list_presets())
def test_priors_lie_inside_the_physical_bounds(preset):
    p = get_preset(preset)
    for key, name in PRIOR_OF.items():
        spec, d = SERSIC[name], p.priors[key]
        scale = p.pixel_scale if key == "re_arcsec" else 1.0  # arcsec -> pixels
        lo, hi = d.low / scale, d.high / scale
        if spec.cyclic:
            assert 0 <= lo <= hi <= spec.cyclic, (preset, key)
        else:
            assert spec.lower <= lo <= hi <= spec.upper, (preset, key)
            if spec.guess:  # first guesses are clipped into the bulk of every prior
                assert lo <= spec.guess[0] and spec.guess[1] <= hi, (preset, key)
            if spec.fit:
                assert spec.fit[0] <= lo and hi <= spec.fit[1], (preset, key)


@pytest.mark.parametrize("preset", list_presets())
def test_sampled_parameters_obey_the_table(preset):
    s = get_preset(preset).sample_params(np.random.default_rng(0), 500)
    for name in SERSIC.names:
        assert SERSIC[name].in_bounds(s[name]).all(), name
    period = SERSIC["pa_deg"].cyclic
    assert (s["pa_deg"] >= 0).all() and (s["pa_deg"] < period).all()


def test_presets_check_priors_against_the_render_range(tmp_path):
    from galnet.presets import load_presets

    text = (resources.files("galnet") / "data" / "presets.toml").read_text(encoding="utf-8")
    lo, hi = SERSIC["n"].render
    old = 'n = { dist = "loguniform", low = 0.3, high = 8.0 }'
    assert old in text
    bad = text.replace(old, f'n = {{ dist = "loguniform", low = 0.3, high = {hi * 1.01} }}', 1)
    (tmp_path / "p.toml").write_text(bad, encoding="utf-8")
    with pytest.raises(GalnetValueError, match=rf"priors.n must lie in \[{lo:g}, {hi:g}\]"):
        load_presets(tmp_path / "p.toml")


# ---- simulator columns (sim) -------------------------------------------------------------------
def test_simulation_columns_carry_the_catalogue_units():
    from galnet.sim.simulate import COLUMNS

    units = column_units()
    for k, (_, unit, _) in COLUMNS.items():
        if k in units:
            assert unit == units[k], k
    assert set(SERSIC.names) <= set(COLUMNS)


# ---- network (nn) ------------------------------------------------------------------------------
def test_network_targets_follow_the_log_flags():
    from galnet.nn.model import TARGETS

    for target, name in (("logre", "re_pix"), ("logn", "n"), ("q", "q")):
        assert target in TARGETS
        assert target.startswith("log") == SERSIC[name].log, name


def test_network_decode_clamps_q_and_wraps_pa():
    from galnet.nn.model import ModelConfig, decode

    c = ModelConfig()
    loc, scale = np.array(c.loc), np.array(c.scale)
    q_raw = np.array([-1.0, SERSIC["q"].lower / 2, 0.5, 1.7])
    pa_true = np.array([-30.0, 0.0, 95.0, 200.0])
    period = SERSIC["pa_deg"].cyclic
    t = np.zeros((4, 8))
    t[:, 2] = 1.0
    t[:, 3] = t[:, 4] = 0.3
    t[:, 5] = q_raw
    ang = 2 * np.pi * pa_true / period
    t[:, 6], t[:, 7] = np.cos(ang), np.sin(ang)
    out = torch.tensor((t - loc) / scale, dtype=torch.float64)
    res = decode(out, torch.zeros(4, 7, dtype=torch.float64), torch.ones(4, dtype=torch.float64),
                 c)
    q = res["q"].numpy()
    np.testing.assert_allclose(q, np.clip(q_raw, SERSIC["q"].lower, SERSIC["q"].upper),
                               atol=1e-12)
    pa = res["pa_deg"].numpy()
    assert (pa >= 0).all() and (pa < period).all()
    np.testing.assert_allclose(pa, SERSIC["pa_deg"].wrap(pa_true), atol=1e-9)


# ---- fitter (fitting) --------------------------------------------------------------------------
def test_fitter_bounds_are_the_table_fit_ranges():
    from galnet.fitting.problem import fit_bounds

    H, W = 61, 61
    b = fit_bounds((H, W))
    for name in ("n", "q"):
        assert tuple(b[name]) == tuple(SERSIC[name].fit), name
    lo, hi = b["re_pix"]
    assert lo == SERSIC["re_pix"].fit[0] and hi <= SERSIC["re_pix"].fit[1]
    assert set(b) <= set(SERSIC.names)


def test_moment_guesses_lie_in_the_guess_ranges():
    from galnet.fitting.init import moments_init

    yy, xx = np.mgrid[-12:13, -12:13]
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.3**2))
    cases = [  # a needle, a near point source, a round high-n cusp, a big disc
        dict(re_pix=8.0, n=0.5, q=0.05, pa_deg=20.0),
        dict(re_pix=0.05, n=1.0, q=1.0, pa_deg=0.0),
        dict(re_pix=3.0, n=8.0, q=0.95, pa_deg=100.0),
        dict(re_pix=12.0, n=0.3, q=0.5, pa_deg=170.0),
    ]
    params = {k: np.array([c[k] for c in cases]) for k in cases[0]}
    params.update(x=np.full(4, 30.0), y=np.full(4, 30.0), flux=np.full(4, 5000.0))
    images = render(params, psf, (61, 61)) + np.random.default_rng(1).normal(0, 0.5, (4, 61, 61))
    res = moments_init(images, psf, sigma=np.full((4, 61, 61), 0.5))
    for p in SERSIC:
        if p.guess is not None:
            v = np.asarray(res[p.name], float)
            assert ((v >= p.guess[0]) & (v <= p.guess[1])).all(), (p.name, v)
    assert SERSIC["pa_deg"].in_bounds(res["pa_deg"]).all()


# ---- export (interop) --------------------------------------------------------------------------
def test_imfit_limits_sit_inside_the_fit_ranges():
    from galnet.interop.imfit import ImfitLimits

    lim = ImfitLimits()
    n_lo, n_hi = SERSIC["n"].fit
    assert n_lo <= lim.n[0] < lim.n[1] <= n_hi
    assert 1.0 - lim.ell[1] >= SERSIC["q"].lower
    assert lim.re_min >= SERSIC["re_pix"].lower
    with pytest.raises(GalnetValueError, match="n range"):
        ImfitLimits(n=(n_lo / 2, n_hi))


# ---- catalogues (io, conventions) --------------------------------------------------------------
def test_catalogue_units_are_the_table_units():
    from galnet.conventions import COLUMN_UNITS
    from galnet.io.catalog import catalog_columns, catalog_table

    units = column_units()
    assert COLUMN_UNITS == units
    cols = {k: np.ones(2) for k in catalog_columns() if k in units}
    t = catalog_table(cols)
    for k in cols:
        got = "" if t[k].unit is None else t[k].unit.to_string()
        want = u.Unit(units[k]).to_string() if units[k] else ""
        assert got == want, k


# ---- evaluation (evaluate) ---------------------------------------------------------------------
def test_evaluation_log_keys_are_the_log_scaled_parameters():
    from galnet.evaluate.residuals import LOG_KEYS, METRIC_KEYS, residuals

    assert set(LOG_KEYS) == {METRIC_KEYS[n] for n in SERSIC.log_names}
    t = np.array([1.0, 2.0, 4.0])
    for name in METRIC_KEYS:
        r = residuals(name, t, 2 * t, true_q=np.full(3, 0.5))
        assert r.log == SERSIC[name].log, name
        if SERSIC[name].log:  # residuals in dex
            np.testing.assert_allclose(r.d, np.log10(2.0))
    r = residuals("pa_deg", np.array([179.0]), np.array([1.0]), true_q=np.array([0.5]))
    np.testing.assert_allclose(r.d, 2.0)  # folded by the period
