"""The simulator: file layout, priors, PSFs, noise, S/N, determinism, atomic writes, banks."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import galnet.sim.compose as compose
from galnet.errors import GalnetError, GalnetFileError, GalnetPresetError, GalnetValueError
from galnet.presets import get_preset
from galnet.sim.psfs import analytic_psfs
from galnet.sim.simulate import COLUMNS, read_params, simulate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
N, SEED, CHUNK = 150, 3, 64  # 150 = 2 full blocks + a partial one: exercises chunking
RENDER_COLS = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")


def _load(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in ("images", "sigma", "psfs", "params")}, dict(f.attrs)


def _models(t, psfs) -> np.ndarray:
    """Noiseless galaxies re-rendered (float64) from a parameter table and the stored PSFs."""
    from galnet.profiles.render import render

    cols = {k: np.asarray(getattr(t[k], "value", t[k]), dtype=float) for k in RENDER_COLS}
    return render(cols, psfs.astype(float), (61, 61))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "train.h5"
    path = simulate("hsc-r", N, SEED, out, chunk=CHUNK, progress=False)
    arrays, attrs = _load(path)
    return path, arrays, attrs, read_params(path)


# ---- analytic PSFs ---------------------------------------------------------------------------
@pytest.mark.parametrize("kolmogorov, fwhm, beta", [(False, 2.98, 2.5), (False, 5.0, 4.5),
                                                    (True, 3.0, 0.0), (True, 5.5, 0.0)])
def test_analytic_psfs_match_galsim(kolmogorov, fwhm, beta):
    import galsim

    g1, g2 = 0.03, -0.035
    mine = analytic_psfs(np.array([fwhm]), np.array([beta]), np.array([kolmogorov]),
                         np.array([g1]), np.array([g2]))[0]
    prof = galsim.Kolmogorov(fwhm=fwhm) if kolmogorov else galsim.Moffat(beta=beta, fwhm=fwhm)
    gsp = galsim.GSParams(maxk_threshold=1e-5, folding_threshold=1e-4)
    ref = galsim.Convolve(prof.shear(g1=g1, g2=g2), galsim.Pixel(1.0), gsparams=gsp).drawImage(
        nx=25, ny=25, scale=1.0, method="no_pixel").array
    ref /= ref.sum()
    assert mine.dtype == np.float32 and mine.shape == (25, 25)
    assert mine.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.abs(mine - ref).max() < 2e-4 * ref.max()
    assert np.unravel_index(np.argmax(mine), mine.shape) == (12, 12)


# ---- the file ----------------------------------------------------------------------------------
def test_file_layout(run):
    path, a, attrs, t = run
    assert a["images"].shape == a["sigma"].shape == (N, 61, 61)
    assert a["psfs"].shape == (N, 25, 25)
    assert all(a[k].dtype == np.float32 for k in ("images", "sigma", "psfs"))
    assert set(a["params"].dtype.names) == set(COLUMNS)
    assert all(np.isfinite(a[k]).all() for k in ("images", "sigma", "psfs"))
    assert (a["sigma"] > 0).all()
    np.testing.assert_allclose(a["psfs"].sum((1, 2)), 1.0, atol=1e-5)
    p = get_preset("hsc-r")
    assert attrs["preset"] == "hsc-r" and json.loads(attrs["preset_config"]) == json.loads(
        p.to_json())
    assert (attrs["seed"], attrs["n"], attrs["bank"], attrs["background"]) == (
        SEED, N, '"synthetic"', "synthetic")
    assert attrs["galnet_version"] and attrs["created"].startswith("20")
    units = json.loads(attrs["units"])
    assert (units["re_arcsec"], units["psf_fwhm"], units["pa_deg"]) == ("arcsec", "arcsec", "deg")
    assert str(t["re_arcsec"].unit) == "arcsec" and str(t["x"].unit) == "pix"
    assert set(np.unique(t["psf_source"])) <= {"moffat", "kolmogorov"}
    assert set(np.unique(t["bg_origin"])) == {"synthetic"}
    assert not list(path.parent.glob("*.tmp-*"))
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_parameters_follow_the_preset(run):
    _, a, _, t = run
    p = get_preset("hsc-r")
    pr = p.priors
    for k in ("mag", "re_arcsec", "n", "q"):
        v = np.asarray(getattr(t[k], "value", t[k]))
        assert pr[k].low <= v.min() and v.max() <= pr[k].high, k
    fw = np.asarray(t["psf_fwhm"].value)
    assert p.seeing.low <= fw.min() and fw.max() <= p.seeing.high
    np.testing.assert_allclose(t["psf_fwhm_pix"].value, fw / p.pixel_scale)
    # neighbours and stars appear at the preset's rates
    assert 0.8 < np.mean(t["n_neighbours"]) < 2.3
    assert np.asarray(t["snr"]).min() > 0


def test_snr_column_matches_recomputation(run):
    _, a, _, t = run
    model = _models(t, a["psfs"])
    snr = np.sqrt(((model / a["sigma"]) ** 2).sum((1, 2)))
    np.testing.assert_allclose(snr, np.asarray(t["snr"]), rtol=1e-4)


def test_noise_level(run):
    """(image - model) / sigma has unit rms: sky-dominated and source-Poisson-dominated pixels."""
    _, a, _, t = run
    clean = (np.asarray(t["n_neighbours"]) == 0) & (np.asarray(t["n_stars"]) == 0)
    assert clean.sum() >= 15
    model = _models(t[clean], a["psfs"][clean])
    chi = (a["images"][clean] - model) / a["sigma"][clean]
    mad = 1.4826 * np.median(np.abs(chi - np.median(chi)))
    assert mad == pytest.approx(1.0, abs=0.05)
    # where the galaxy's Poisson variance exceeds the sky's, the residual rms is still ~1
    pois = np.maximum(model, 0) / get_preset("hsc-r").gain
    hot = pois > get_preset("hsc-r").sky_rms ** 2
    assert hot.sum() > 300
    assert np.std(chi[hot]) == pytest.approx(1.0, abs=0.1)
    # and sigma is the quadrature sum of the sky rms and the Poisson term
    expect = np.sqrt(get_preset("hsc-r").sky_rms ** 2 + pois)
    np.testing.assert_allclose(a["sigma"][clean][hot], expect[hot], rtol=1e-4)


# ---- determinism ---------------------------------------------------------------------------------
def test_deterministic_and_chunk_independent(run, tmp_path):
    _, a, _, _ = run
    same, _ = _load(simulate("hsc-r", N, SEED, tmp_path / "same.h5", chunk=CHUNK, progress=False))
    for k in a:
        np.testing.assert_array_equal(same[k], a[k])
    other, _ = _load(simulate("hsc-r", N, SEED, tmp_path / "big.h5", chunk=4096, progress=False))
    for k in RENDER_COLS:  # identical random draws
        np.testing.assert_array_equal(other["params"][k], a["params"][k])
    np.testing.assert_array_equal(other["psfs"], a["psfs"])
    # each block is rendered on its own (galnet.sim.compose), so the pixels do not depend on the
    # chunk at all. (Rendering the whole chunk at once put stamps of several blocks into one
    # float32 batch, whose matrix products round differently with the batch composition: stamp
    # 138 of this run, a mag 17.2 galaxy, differed by 2.5e-3 sigma at its edge.)
    for k in ("images", "sigma", "psfs"):
        np.testing.assert_array_equal(other[k], a[k])
    np.testing.assert_array_equal(other["params"], a["params"])


def test_workers_give_the_same_file(run, tmp_path):
    _, a, _, _ = run
    b, _ = _load(simulate("hsc-r", N, SEED, tmp_path / "w.h5", chunk=CHUNK, progress=False,
                          workers=2))
    for k in a:
        np.testing.assert_array_equal(b[k], a[k])


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    """progress=True shows a bar only on a terminal (galnet.runner.progress): none in a log."""
    simulate("hsc-r", 8, 0, tmp_path / "p.h5", progress=True)
    assert capsys.readouterr().err == ""


def test_prefix_and_seed(run, tmp_path):
    _, a, _, _ = run
    first, _ = _load(simulate("hsc-r", 64, SEED, tmp_path / "p.h5", chunk=CHUNK, progress=False))
    np.testing.assert_array_equal(first["images"], a["images"][:64])
    np.testing.assert_array_equal(first["params"], a["params"][:64])
    diff, _ = _load(simulate("hsc-r", 64, SEED + 1, tmp_path / "d.h5", progress=False))
    assert not np.array_equal(diff["params"]["mag"], a["params"]["mag"][:64])
    assert not np.allclose(diff["images"], a["images"][:64])


# ---- S/N selection -------------------------------------------------------------------------------
def test_snr_min(run, tmp_path):
    _, a, _, _ = run
    cut = 100.0
    low = a["params"]["snr"][:64] < cut
    assert low.any() and (~low).any()
    b, attrs = _load(simulate("hsc-r", 64, SEED, tmp_path / "s.h5", snr_min=cut, chunk=CHUNK,
                              progress=False))
    assert b["params"]["snr"].min() >= cut and attrs["snr_min"] == cut
    # stamps that passed keep their galaxy; the others were redrawn
    np.testing.assert_array_equal(b["params"]["mag"][~low], a["params"]["mag"][:64][~low])
    assert not np.any(b["params"]["mag"][low] == a["params"]["mag"][:64][low])


def test_snr_min_impossible(tmp_path, monkeypatch):
    monkeypatch.setattr(compose, "_MAX_REDRAW_ROUNDS", 2)
    with pytest.raises(GalnetValueError, match="too high"):
        simulate("hsc-r", 8, 0, tmp_path / "x.h5", snr_min=1e9, progress=False)
    assert list(tmp_path.iterdir()) == []


# ---- atomic writes -------------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_write(tmp_path, monkeypatch, exc):
    out = tmp_path / "train.h5"
    out.write_bytes(b"previous")
    real = compose.make_chunk
    calls = []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise exc
        return real(*args, **kw)

    monkeypatch.setattr(compose, "make_chunk", failing)
    with pytest.raises(type(exc)):
        simulate("hsc-r", 130, 0, out, chunk=64, progress=False)
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.h5"]
    assert out.read_bytes() == b"previous"  # the old file is untouched


# ---- input validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, err, match",
    [
        ({"n": 0}, GalnetValueError, "n must be >= 1"),
        ({"n": -3}, GalnetValueError, "n must be >= 1"),
        ({"n": 2.5}, GalnetValueError, "n must be an integer"),
        ({"seed": -1}, GalnetValueError, "seed must be >= 0"),
        ({"snr_min": float("nan")}, GalnetValueError, "snr_min must be finite"),
        ({"snr_min": -1.0}, GalnetValueError, "snr_min must be >= 0"),
        ({"chunk": 0}, GalnetValueError, "chunk must be >= 1"),
        ({"threads": 0}, GalnetValueError, "threads must be >= 1"),
        ({"workers": 0}, GalnetValueError, "workers must be >= 1"),
        ({"preset": "nope"}, GalnetPresetError, "unknown preset 'nope'"),
        ({"out": "missing-dir/x.h5"}, GalnetFileError, "does not exist"),
        ({"out": "."}, GalnetFileError, "is a directory"),
        ({"bank": "no-such-bank.h5"}, GalnetFileError, "bank file .* does not exist"),
    ],
)
def test_invalid_inputs(tmp_path, kw, err, match):
    args = {"preset": "hsc-r", "n": 4, "seed": 0, "out": "x.h5", **kw}
    for k in ("out", "bank"):
        if isinstance(args.get(k), str):
            args[k] = tmp_path / args[k]
    with pytest.raises(err, match=match):
        simulate(**args, progress=False)
    assert issubclass(err, GalnetError)
    assert not (tmp_path / "x.h5").exists()


# ---- banks ---------------------------------------------------------------------------------------
class FakeBank:
    """A stand-in with the interface of galnet.sim.bank.Bank: Gaussian PSFs, white-noise cutouts."""

    path = "fake-bank.h5"
    pixel_scales = (0.168, 0.2)
    provenance = {"kind": "fake", "sha256": "0" * 8}

    def sample_backgrounds(self, rng, n):
        cut = rng.standard_normal((n, 61, 61)).astype(np.float32) * 1.1
        return cut, [f"frame{i % 3}.fits[{i}]" for i in range(n)]

    def sample_psfs(self, rng, n, pixel_scale, fwhm_range=None):
        fwhm = rng.uniform(*fwhm_range, n)  # the simulator asks for the preset's seeing range
        s = fwhm / 2.3548 / pixel_scale
        yy, xx = np.mgrid[-12:13, -12:13]
        p = np.exp(-(xx**2 + yy**2)[None] / (2 * s[:, None, None] ** 2))
        p /= p.sum((1, 2), keepdims=True)
        return p.astype(np.float32), fwhm, ["fake-psf"] * n


def test_fake_bank(tmp_path):
    out = simulate("hsc-r", 128, 1, tmp_path / "b.h5", bank=FakeBank(), chunk=64, progress=False,
                   bank_psf_fraction=0.5)
    a, attrs = _load(out)
    t = read_params(out)
    src = np.asarray(t["psf_source"])
    assert 0.3 < np.mean(src == "fake-psf") < 0.7
    assert set(src) == {"fake-psf", "moffat", "kolmogorov"}
    assert set(np.asarray(t["bg_origin"])) == {"frame0.fits[0]"} | {
        f"frame{i % 3}.fits[{i}]" for i in range(1, 64)}
    assert attrs["background"] == "bank"
    assert json.loads(attrs["bank"])["kind"] == "fake"
    assert np.all(np.asarray(t["n_neighbours"]) == 0)
    # the sky sigma is the preset's sky rms times the cutout's measured (robust) rms
    sky = a["sigma"].min(axis=(1, 2))
    assert np.median(sky) == pytest.approx(0.08 * 1.1, rel=0.05)
    # with fraction 0 no real PSF is used, with 1 only real ones
    t1 = read_params(simulate("hsc-r", 16, 1, tmp_path / "c.h5", bank=FakeBank(), progress=False,
                              bank_psf_fraction=1.0))
    assert set(np.asarray(t1["psf_source"])) == {"fake-psf"}


def test_bank_pixel_scale_mismatch(tmp_path):
    with pytest.raises(GalnetValueError, match="no PSFs at pixel scale 0.396"):
        simulate("sdss-r", 4, 0, tmp_path / "x.h5", bank=FakeBank(), progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="session")
def real_bank(tmp_path_factory):
    if not DATA.is_dir():
        pytest.skip("../shared/data not present: no real bank")
    bank = pytest.importorskip("galnet.sim.bank", reason="galnet.sim.bank not available yet")
    out = tmp_path_factory.mktemp("bank") / "bank.h5"
    # a small bank (one frame, two PSF families) keeps this fast; the NTT header has
    # non-standard cards that astropy warns about (the bank's business, not this test's)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bank.build_bank(DATA, out, pixel_scales=(0.168,), seed=0, progress=False,
                               frames=("ntt_emmi",), psf_sources=("hsc", "profit_kids"))


def test_real_bank(real_bank, tmp_path):
    out = simulate("hsc-r", 64, 2, tmp_path / "r.h5", bank=real_bank, progress=False)
    a, attrs = _load(out)
    t = read_params(out)
    assert attrs["background"] == "bank" and str(real_bank) in attrs["bank"]
    assert np.isfinite(a["images"]).all() and (a["sigma"] > 0).all()
    src = np.asarray(t["psf_source"])
    real = ~np.isin(src, ["moffat", "kolmogorov"])
    assert 0.25 < real.mean() < 0.75 and all(s.split(":")[0] in ("hsc", "profit_kids")
                                             for s in src[real])
    p = get_preset("hsc-r")
    fw = np.asarray(t["psf_fwhm"].value)  # real PSFs too lie in the preset's seeing range
    assert p.seeing.low <= fw.min() and fw.max() <= p.seeing.high
    assert all(o.startswith("ntt_emmi:") for o in np.asarray(t["bg_origin"]))
    # sky sigma = preset sky rms x the cutout's robust rms (~1 for unit-rms cutouts)
    assert np.median(a["sigma"].min(axis=(1, 2))) == pytest.approx(p.sky_rms, rel=0.1)
    np.testing.assert_allclose(a["psfs"].sum((1, 2)), 1.0, atol=1e-4)
    snr = np.sqrt(((_models(t, a["psfs"]) / a["sigma"]) ** 2).sum((1, 2)))
    np.testing.assert_allclose(snr, np.asarray(t["snr"]), rtol=1e-4)
