"""Training loop: runs, logs, checkpoints, resumes deterministically, calibrates."""

import json

import numpy as np
import pytest
import torch

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.nn.model import load_model
from galnet.nn.train import calibrate, load_config, load_training_data, predict_split, train

TINY = {"width": 4, "psf_dim": 8, "hidden": 16}


def _cfg(tiny_sim, out, **kw):
    kw = {"data": str(tiny_sim), "out_dir": str(out), "n_train": 128, "n_val": 64, "epochs": 2,
          "batch": 32, "model": TINY, "threads": 1, "device": "cpu", **kw}
    return load_config(None, **kw)


def test_train_writes_log_checkpoint_and_calibrated_weights(tiny_sim, tmp_path):
    cfg = _cfg(tiny_sim, tmp_path / "run")
    out = train(cfg, progress=False)
    log = [json.loads(s) for s in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    for key in ("train_huber", "val_huber", "r2_log_re_pix", "outlier_n", "seconds"):
        assert np.isfinite(log[-1][key])
    m = load_model(out)
    assert m.config.width == 4 and m.config.info["n_train"] == 128
    assert all(s > 0 for s in m.config.sigma_scale) and m.config.sigma_scale != [1.0] * 7
    # calibrated: 68% of |error| / sigma below 1 on the validation split (64 stamps)
    _, va, _ = load_training_data(cfg)
    out, log_b = predict_split(m, va, torch.device("cpu"))
    sigma = torch.exp(log_b[:, :6]) * torch.tensor(m.config.sigma_scale[:6])
    frac = ((out[:, :6] - va.targets[:, :6]).abs() / sigma < 1).float().mean(0)
    assert torch.allclose(frac, torch.full((6,), 0.6827), atol=1.5 / 64)
    saved = list(m.config.sigma_scale)
    assert calibrate(m, va, torch.device("cpu")) == pytest.approx(saved, rel=1e-5)  # idempotent


def test_resume_is_deterministic(tiny_sim, tmp_path):
    """Two epochs straight == one epoch, stop, resume for the second."""
    train(_cfg(tiny_sim, tmp_path / "a"), progress=False)
    train(_cfg(tiny_sim, tmp_path / "b", epochs=1), progress=False)
    train(_cfg(tiny_sim, tmp_path / "b", epochs=2), progress=False)
    a = load_model(tmp_path / "a" / "best.safetensors").state_dict()
    b = load_model(tmp_path / "b" / "best.safetensors").state_dict()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def test_config_errors(tmp_path, tiny_sim):
    bad = tmp_path / "c.toml"
    bad.write_text("epochs = 3\nwhat = 1\n")
    with pytest.raises(GalnetValueError, match="unknown training option"):
        load_config(bad)
    with pytest.raises(GalnetFileError, match="cannot read training config"):
        load_config(tmp_path / "missing.toml")
    bad.write_text("[model]\nwidht = 3\n")
    with pytest.raises(GalnetValueError, match="unknown model option"):
        load_config(bad)
    with pytest.raises(GalnetValueError, match="has 256 stamps"):
        load_training_data(_cfg(tiny_sim, tmp_path, n_train=250))
    with pytest.raises(GalnetFileError, match="cannot read training data"):
        load_training_data(_cfg(tmp_path / "nope.h5", tmp_path))


def test_train_cli(tiny_sim, tmp_path, capsys):
    from galnet.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text("n_train = 96\nn_val = 32\nbatch = 32\ndevice = 'cpu'\n"
                   "[model]\nwidth = 4\npsf_dim = 8\nhidden = 16\n")
    rc = main(["train", "--config", str(cfg), "--data", str(tiny_sim), "--out-dir",
               str(tmp_path / "run"), "--epochs", "1", "--threads", "1", "--seed", "3", "-q"])
    assert rc == 0 and "model.safetensors" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["seed"] == 3 and saved["n_train"] == 96 and saved["model"]["width"] == 4
    rc = main(["train", "--config", str(cfg), "--out-dir", str(tmp_path / "r2"), "-q"])
    assert rc == 2 and "no training data" in capsys.readouterr().err
