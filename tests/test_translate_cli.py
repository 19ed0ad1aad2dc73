"""``galnet translate simulate|train|apply|evaluate`` on tiny data, and its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

from galnet.cli import main
from galnet.translate.apply import DEFAULT_MODEL, DEFAULT_PHOTOZ, default_model_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("translate")
    assert main(["translate", "simulate", "-n", "10", "--out", str(d / "pairs.h5"), "--chunk",
                 "5", "--seed", "3", "-q"]) == 0
    assert main(["translate", "train", "--data", str(d / "pairs.h5"), "--out",
                 str(d / "t.safetensors"), "--steps", "2", "--n-val", "3", "--val-every", "1",
                 "--width", "8", "--loss", "gradient-flow", "--conditioning", "zspec",
                 "-q"]) == 0
    return d


def test_simulate_train_apply_evaluate(trained, tmp_path, capsys):
    d = trained
    out = tmp_path / "pred.fits"
    assert main(["translate", "apply", "--data", str(d / "pairs.h5"), "--model",
                 str(d / "t.safetensors"), "--out", str(out)]) == 0
    with fits.open(out) as h:
        pred = h[0].data
        assert pred.shape == (10, 5, 136, 136) and np.isfinite(pred).all()
        assert h[0].header["BUNIT"] == "nanomaggy" and h[0].header["PIXSCALE"] == 0.187
    # a FITS cube of source stamps gives the same translation (redshifts given explicitly)
    from galnet.translate.simulate import read_pairs

    p = read_pairs(d / "pairs.h5")
    fits.writeto(tmp_path / "src.fits", p.source)
    zs = [str(z) for z in p.catalog["z"]]
    assert main(["translate", "apply", "--images", str(tmp_path / "src.fits"), "--model",
                 str(d / "t.safetensors"), "--out", str(tmp_path / "p2.fits"), "--zspec",
                 *zs]) == 0
    np.testing.assert_allclose(fits.getdata(tmp_path / "p2.fits"), pred, rtol=1e-5, atol=1e-6)

    from galnet.translate.train import PhotoZTrainConfig, train_photoz

    train_photoz(p.target, np.asarray(p.catalog["z"]), p.target_sky,
                 PhotoZTrainConfig(steps=2, n_val=3, val_every=1, width=8), d / "pz.safetensors",
                 progress=False)
    assert main(["translate", "evaluate", "--data", str(d / "pairs.h5"), "--pred", str(out),
                 "--photoz", str(d / "pz.safetensors"), "--structure-rows", "2", "--out",
                 str(tmp_path / "rep")]) == 0
    rec = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert set(rec) == {"translated", "target", "source"}
    for r in rec.values():
        for k in ("sigma_mad", "bias", "outlier", "pz_width", "colour_err", "d_re", "d_n"):
            assert k in r
    assert rec["target"]["colour_err"] < rec["source"]["colour_err"]
    assert (tmp_path / "rep" / "examples.png").stat().st_size > 1000


def test_errors_are_one_line(trained, tmp_path, capsys):
    d = trained
    bad = tmp_path / "nan.fits"
    a = np.zeros((2, 5, 64, 64), np.float32)
    a[1, 2, 3, 4] = np.nan
    fits.writeto(bad, a)
    good = tmp_path / "good.fits"
    fits.writeto(good, np.zeros((2, 5, 64, 64), np.float32))
    cases = [
        (["translate", "simulate", "-n", "2", "--out", str(tmp_path / "x.h5"), "--source",
          "hst"], 2, "unknown translation domain 'hst'"),
        (["translate", "apply", "--images", str(bad), "--model", str(d / "t.safetensors"),
          "--out", str(tmp_path / "o.fits"), "--zspec", "0.1"], 1, "non-finite pixels"),
        (["translate", "apply", "--images", str(tmp_path / "missing.fits"), "--model",
          str(d / "t.safetensors"), "--out", str(tmp_path / "o.fits")], 1, "no such file"),
        (["translate", "apply", "--images", str(good), "--model", str(d / "t.safetensors"),
          "--out", str(tmp_path / "o.fits")], 1, "conditioned on z_spec"),
        (["translate", "apply", "--images", str(good), "--model", str(d / "t.safetensors"),
          "--out", str(tmp_path / "o.fits"), "--zspec", "0.1", "0.2", "0.3"], 1, "redshifts"),
        (["translate", "apply", "--data", str(d / "pairs.h5"), "--model",
          str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o.fits")], 1, "nope"),
        (["translate", "train", "--data", str(d / "pairs.h5"), "--out", str(tmp_path / "w"),
          "--fraction", "0"], 2, "fraction"),
        (["translate"], 2, "an action is required"),
    ]
    for argv, code, match in cases:
        capsys.readouterr()
        assert main(argv) == code, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("galnet: error:") and "\n" not in err and match in err, err
    assert not (tmp_path / "o.fits").exists()


def test_zspec_on_an_unconditioned_model_is_refused(trained, tmp_path, capsys):
    """--zspec was silently ignored by a model not conditioned on z_spec."""
    d = trained
    assert main(["translate", "train", "--data", str(d / "pairs.h5"), "--out",
                 str(tmp_path / "u.safetensors"), "--steps", "1", "--n-val", "3",
                 "--val-every", "1", "--width", "8", "--loss", "pixel", "-q"]) == 0
    capsys.readouterr()
    argv = ["translate", "apply", "--data", str(d / "pairs.h5"), "--model",
            str(tmp_path / "u.safetensors"), "--out", str(tmp_path / "o.fits")]
    assert main([*argv, "--zspec", "0.1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("galnet: error:") and "not conditioned on z_spec" in err
    assert "--zspec" in err and not (tmp_path / "o.fits").exists()
    assert main(argv) == 0  # without --zspec it translates
    assert main(argv) == 1  # the output exists now
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.skipif(not default_model_path().exists(), reason="no shipped translator")
def test_shipped_models_translate_a_simulated_galaxy(tmp_path):
    """The shipped SDSS -> CFHTLS translator and photo-z probe load and give physical output."""
    from galnet.translate.model import load_photoz, load_translator
    from galnet.translate.simulate import read_pairs, simulate_pairs
    from galnet.translate.train import apply_translator, predict_photoz

    simulate_pairs(tmp_path / "p.h5", 4, seed=11, progress=False)
    p = read_pairs(tmp_path / "p.h5")
    net = load_translator(default_model_path(DEFAULT_MODEL))
    cond = np.asarray(p.catalog["z"]) if net.config.cond_dim else None
    pred = apply_translator(net, p.source, cond=cond)
    # total flux per band within 25% of the truth for these bright galaxies (r < 20)
    ratio = pred.sum((2, 3)) / p.target_truth.sum((2, 3))
    assert np.median(ratio[:, 1:4]) == pytest.approx(1.0, abs=0.25)
    pz = predict_photoz(load_photoz(default_model_path(DEFAULT_PHOTOZ)), pred)
    assert np.all((pz["z_mean"] >= 0) & (pz["z_mean"] <= 0.5))


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    assert main(["translate", "simulate", "-n", "2", "--chunk", "2", "--out",
                 str(tmp_path / "p.h5")]) == 0  # no -q
    err = capsys.readouterr().err
    assert "%|" not in err and "gal/s" not in err, err
