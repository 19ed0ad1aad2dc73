"""Training faults: the prior recorded in the weights, config types, batch > n_train, corrupt
checkpoints, --restart, resuming with other options; one checkpoint module for both trainers."""

import json

import numpy as np
import pytest

from galnet.cli import main
from galnet.errors import GalnetFileError, GalnetValueError
from galnet.flags import Flag
from galnet.nn.model import load_model, training_prior
from galnet.nn.predict import out_of_prior, predict_arrays
from galnet.nn.train import load_config, train
from galnet.presets import get_preset

TINY = {"width": 4, "psf_dim": 8, "hidden": 16}


def _cfg(tiny_sim, out, **kw):
    kw = {"data": str(tiny_sim), "out_dir": str(out), "n_train": 64, "n_val": 32, "epochs": 1,
          "batch": 32, "model": TINY, "threads": 1, "device": "cpu", **kw}
    return load_config(None, **kw)


@pytest.fixture(scope="module")
def trained(tiny_sim, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return train(_cfg(tiny_sim, run), progress=False), run


def test_galnet_train_records_prior_and_out_of_prior_works(trained, tiny_sim):
    import h5py

    path, _ = trained
    m = load_model(path)
    assert m.config.info["prior"] == training_prior(get_preset("hsc-r"))
    assert m.config.info["pixel_scale"] == get_preset("hsc-r").pixel_scale
    res = {"x": np.zeros(2), "re_pix": np.array([3.0, 500.0]), "n": np.array([1.0, 1.0]),
           "flux": np.array([1e3, 1e3]), "noise": np.array([1.0, 1.0])}
    assert list(out_of_prior(res, m)) == [False, True]
    with h5py.File(tiny_sim) as f:
        im, ps = f["images"][:4], f["psfs"][:4]
    r = predict_arrays(im, ps[0], model=m)  # the flags of a trained model's run
    assert np.array_equal(r["flags"] & int(Flag.OUT_OF_PRIOR),
                          np.where(out_of_prior(r, m), int(Flag.OUT_OF_PRIOR), 0))


@pytest.mark.parametrize("key, value, message", [
    ("epochs", "ten", "epochs must be an integer >= 1, got 'ten'"),
    ("epochs", 0, "epochs must be an integer >= 1"),
    ("batch", 2.5, "batch must be an integer >= 1"),
    ("lr", "fast", "lr must be a finite number > 0"),
    ("lr", float("nan"), "lr must be a finite number > 0"),
    ("weight_decay", -1.0, "weight_decay must be a finite number >= 0"),
    ("augment", "yes", "augment must be true or false"),
    ("seed", True, "seed must be an integer >= 0"),
    ("data", 3, "data must be a string"),
    ("threads", 0, "threads must be an integer >= 1"),
])
def test_config_value_errors_name_the_key(tmp_path, key, value, message):
    with pytest.raises(GalnetValueError, match=message) as e:
        load_config(None, **{key: value})
    assert e.value.name == key and "\n" not in str(e.value)


def test_config_file_errors_name_the_key(tmp_path):
    c = tmp_path / "c.toml"
    c.write_text('epochs = "ten"\n')
    with pytest.raises(GalnetValueError, match=r"c\.toml: epochs must be an integer"):
        load_config(c)
    c.write_text("[model]\nwidth = 2.5\n")
    with pytest.raises(GalnetValueError, match="model.width must be an integer") as e:
        load_config(c)
    assert e.value.name == "model.width"
    c.write_text("[model]\nscale = [1, 2]\n")
    with pytest.raises(GalnetValueError, match="model.scale must be a list of 8"):
        load_config(c)
    c.write_text("model = 3\n")
    with pytest.raises(GalnetValueError, match="model must be a table"):
        load_config(c)
    c.write_text("lr = 0.01\nwhat = 1\n")
    with pytest.raises(GalnetValueError, match=r"unknown training option\(s\) \['what'\]") as e:
        load_config(c)
    assert e.value.name == "what"
    c.write_bytes(b"\xff\xfe")
    with pytest.raises(GalnetFileError, match="cannot read training config"):
        load_config(c)


def test_batch_larger_than_n_train(tiny_sim, tmp_path):
    with pytest.raises(GalnetValueError, match=r"batch \(256\) must not exceed n_train \(64\)"):
        _cfg(tiny_sim, tmp_path, batch=256)


def test_train_cli_bad_config_exit_code(tiny_sim, tmp_path, capsys):
    c = tmp_path / "c.toml"
    c.write_text('epochs = "ten"\n')
    rc = main(["train", "--config", str(c), "--data", str(tiny_sim), "--out-dir",
               str(tmp_path / "r"), "-q"])
    err = capsys.readouterr().err
    assert rc in (1, 2) and "epochs must be an integer" in err and err.count("\n") == 1


def test_corrupt_checkpoint_one_line_error(trained, tiny_sim, tmp_path):
    _, run = trained
    ck = tmp_path / "run"
    ck.mkdir()
    raw = (run / "checkpoint.safetensors").read_bytes()
    (ck / "checkpoint.safetensors").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(GalnetFileError, match="unreadable checkpoint.*--restart") as e:
        train(_cfg(tiny_sim, ck, epochs=2), progress=False)
    assert "\n" not in str(e.value)
    (ck / "checkpoint.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(GalnetFileError, match="checkpoint"):
        train(_cfg(tiny_sim, ck, epochs=2), progress=False)
    # --restart ignores it
    train(_cfg(tiny_sim, ck), resume=False, progress=False)


def test_restart_starts_a_fresh_log(tiny_sim, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tiny_sim, run), progress=False)
    train(_cfg(tiny_sim, run), resume=False, progress=False)
    log = [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1]


def test_resume_with_other_options_is_refused(trained, tiny_sim, tmp_path):
    _, run = trained
    with pytest.raises(GalnetValueError, match=r"options differ from the checkpoint's: lr "
                                               r"\(checkpoint 0\.002, given 0\.001\)") as e:
        train(_cfg(tiny_sim, run, epochs=2, lr=1e-3), progress=False)
    assert e.value.name == "lr"
    with pytest.raises(GalnetValueError, match=r"model\.width"):
        train(_cfg(tiny_sim, run, epochs=2, model={**TINY, "width": 8}), progress=False)


def test_bad_device_one_line_error(tiny_sim, tmp_path):
    with pytest.raises(GalnetValueError, match="device 'gpu0' is not a device"):
        train(_cfg(tiny_sim, tmp_path / "r", device="gpu0"), progress=False)


def test_one_checkpoint_module_for_both_trainers():
    import torch

    import galnet.nn.train as nt
    import galnet.translate.train as tt
    from galnet.nn import checkpoint

    assert tt.adam_state is checkpoint.adam_state and tt.load_adam is checkpoint.load_adam
    assert nt.adam_state is checkpoint.adam_state
    assert not hasattr(tt, "_adam_state") and not hasattr(tt, "_load_adam")
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    opt2 = torch.optim.Adam([q := torch.nn.Parameter(torch.ones(3))])
    checkpoint.load_adam(opt2, checkpoint.adam_state(opt))
    assert torch.equal(opt2.state[q]["exp_avg"], opt.state[p]["exp_avg"])
