"""The ``galnet`` command line: commands run in-process; errors are one line, exit status 1
(runtime) or 2 (usage)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.table import Table

from galnet.cli import main


def _one_line_error(capsys, argv, status: int = 2) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == status, (argv, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("galnet: error: ") and "Traceback" not in err
    return lines[0]


def test_module_help_subprocess():
    r = subprocess.run([sys.executable, "-m", "galnet", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0
    for cmd in ("simulate", "bank", "presets", "demo"):
        assert cmd in r.stdout


def test_help_and_version(capsys):
    assert main(["simulate", "--help"]) == 0
    assert "--snr-min" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert "galnet" in capsys.readouterr().out


def test_presets(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "hsc-r (default)" in out and "kids-r" in out and "sdss-r" in out
    assert "0.168 arcsec/px" in out and "loguniform[0.1, 4]" in out
    assert main(["presets", "sdss-r", "--json"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert list(cfg) == ["sdss-r"] and cfg["sdss-r"]["zeropoint"] == 22.5


def test_simulate(tmp_path, capsys):
    out = tmp_path / "t.h5"
    argv = ["simulate", "--preset", "kids-r", "-n", "20", "--seed", "4", "--out", str(out), "-q",
            "--snr-min", "5", "--chunk", "64"]
    assert main(argv) == 0
    assert "wrote 20 stamps" in capsys.readouterr().out
    with h5py.File(out) as f:
        assert f["images"].shape == (20, 61, 61)
        assert f.attrs["preset"] == "kids-r" and f.attrs["seed"] == 4
        assert f["params"]["snr"].min() >= 5


def test_demo(tmp_path, capsys):
    """The demo runs the whole chain with the shipped weights: simulate -> predict -> evaluate."""
    from galnet.demo import run_demo

    paths = run_demo(tmp_path / "demo", n=40, seed=1, progress=False)
    out = capsys.readouterr().out
    assert paths["gallery"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "galaxies/s" in out and "catalog.ecsv" in out and "report.md" in out
    with h5py.File(paths["h5"]) as f:
        assert f["images"].shape[0] == 40 and f.attrs["preset"] == "hsc-r"
    t = Table.read(paths["catalog"])
    assert len(t) == 40 and np.isfinite(t["re_pix"]).all()
    m = json.loads((paths["report"] / "metrics.json").read_text())
    assert m["n_evaluated"] == 40
    assert (paths["report"] / "report.md").is_file()


@pytest.mark.parametrize(
    "argv, status, match",
    [
        ([], 2, "a command is required"),
        (["frobnicate"], 2, "invalid choice"),
        (["bank"], 2, "an action is required"),
        (["simulate", "-n", "5"], 2, "required: --out"),
        (["simulate", "--preset", "nope", "-n", "5", "--out", "{tmp}/x.h5"], 2,
         "unknown preset 'nope'"),
        (["simulate", "-n", "0", "--out", "{tmp}/x.h5"], 2, "must be a positive integer"),
        (["simulate", "-n", "-4", "--out", "{tmp}/x.h5"], 2, "must be a positive integer"),
        (["simulate", "-n", "ten", "--out", "{tmp}/x.h5"], 2, "expected a positive integer"),
        (["simulate", "-n", "5", "--seed", "-1", "--out", "{tmp}/x.h5"], 2, "non-negative"),
        (["simulate", "-n", "5", "--snr-min", "nan", "--out", "{tmp}/x.h5"], 2, "must be finite"),
        (["simulate", "-n", "5", "--snr-min", "inf", "--out", "{tmp}/x.h5"], 2, "must be finite"),
        (["simulate", "-n", "5", "--snr-min", "-2", "--out", "{tmp}/x.h5"], 2, "must be >= 0"),
        (["simulate", "-n", "5", "--bank-psf-fraction", "1.5", "--out", "{tmp}/x.h5"], 2,
         r"\[0, 1\]"),
        (["simulate", "-n", "5", "--chunk", "0", "--out", "{tmp}/x.h5"], 2, "positive integer"),
        (["simulate", "-n", "5", "--threads", "0", "--out", "{tmp}/x.h5"], 2, "positive integer"),
        (["simulate", "-n", "5", "--out", "{tmp}/missing/x.h5"], 1, "does not exist"),
        (["simulate", "-n", "5", "--out", "{tmp}/afile/x.h5"], 1, "is not a directory"),
        (["simulate", "-n", "5", "--out", "{tmp}"], 1, "is a directory"),
        (["simulate", "-n", "5", "--out", "{tmp}/x.h5", "--bank", "{tmp}/nobank.h5"], 1,
         "bank file .* does not exist"),
        (["bank", "build", "--data", "{tmp}/nodata", "--out", "{tmp}/b.h5"], 1, "does not exist"),
        (["bank", "build", "--data", "{tmp}", "--out", "{tmp}/missing/b.h5"], 1, "does not exist"),
        (["bank", "build", "--data", "{tmp}", "--out", "{tmp}/b.h5", "--pixel-scales", "nan"], 2,
         "must be finite"),
        (["bank", "build", "--data", "{tmp}", "--out", "{tmp}/b.h5", "--pixel-scales", "0"], 2,
         "must be > 0"),
        (["presets", "nope"], 2, "unknown preset 'nope'"),
        (["demo", "-n", "0"], 2, "must be a positive integer"),
    ],
)
def test_bad_inputs_one_line(tmp_path, capsys, argv, status, match):
    (tmp_path / "afile").write_text("not a directory")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    line = _one_line_error(capsys, argv, status)
    assert re.search(match, line), line
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "b.h5").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_read_only_directory(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = _one_line_error(capsys, ["simulate", "-n", "5", "--out", str(ro / "x.h5")], 1)
        assert "not writable" in line
    finally:
        ro.chmod(0o755)


def test_unwritable_output_file_raises_cleanly(tmp_path, capsys, monkeypatch):
    """An OS error while writing (disk full, permissions) is one line too, and leaves nothing."""
    import galnet.sim.simulate as sim

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sim, "_fill", fail)
    line = _one_line_error(capsys, ["simulate", "-n", "5", "--out", str(tmp_path / "x.h5"), "-q"],
                           1)
    assert "No space left on device" in line
    assert list(tmp_path.iterdir()) == []


def test_bank_build_plumbing(tmp_path, capsys, monkeypatch):
    """`galnet bank build` passes its arguments to galnet.sim.bank.build_bank (a stand-in here)."""
    import types

    calls = []

    def build_bank(data_dir, out, pixel_scales=(0.168, 0.2, 0.396), seed=0, progress=True):
        calls.append((data_dir, out, pixel_scales, seed, progress))
        out.write_bytes(b"bank")
        return out

    monkeypatch.setitem(sys.modules, "galnet.sim.bank",
                        types.SimpleNamespace(build_bank=build_bank))
    out = tmp_path / "b.h5"
    argv = ["bank", "build", "--data", str(tmp_path), "--out", str(out), "--pixel-scales", "0.2",
            "0.396", "--seed", "7", "-q"]
    assert main(argv) == 0
    assert calls == [(tmp_path, out, (0.2, 0.396), 7, False)]
    assert str(out) in capsys.readouterr().out


# ---- exit codes, --overwrite, outputs checked first, Ctrl-C, logging, pipes ------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_model):
    """3 stamps (61x61, SIGMA extension, MAGZERO/PIXSCALE), a PSF and tiny weights."""
    from astropy.io import fits

    from galnet.nn.model import save_model
    from galnet.profiles.render import render

    d = tmp_path_factory.mktemp("small")
    yy, xx = np.mgrid[:25, :25] - 12.0
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.7**2))
    psf = (psf / psf.sum()).astype(np.float32)
    p = {"x": np.full(3, 30.3), "y": np.full(3, 29.8), "flux": np.full(3, 300.0),
         "re_pix": np.array([3.0, 4.0, 5.0]), "n": np.array([1.0, 2.0, 3.0]),
         "q": np.full(3, 0.7), "pa_deg": np.full(3, 30.0)}
    sg = np.full((3, 61, 61), 0.5, np.float32)
    im = render(p, psf, (61, 61)) + sg * np.random.default_rng(0).standard_normal(sg.shape)
    hdr = fits.Header({"MAGZERO": 27.0, "PIXSCALE": 0.168})
    fits.HDUList([fits.PrimaryHDU(im.astype(np.float32), header=hdr),
                  fits.ImageHDU(sg, name="SIGMA")]).writeto(d / "stamps.fits")
    fits.PrimaryHDU(psf).writeto(d / "psf.fits")
    save_model(tiny_model, d / "w.safetensors")
    return d


def _predict_argv(d, out, *extra):
    return ["predict", "--images", str(d / "stamps.fits"), "--psf", str(d / "psf.fits"),
            "--model", str(d / "w.safetensors"), "--out", str(out), "-q", "--no-chi2", *extra]


def test_overwrite(small, tmp_path, capsys):
    """An existing output is refused (exit 1, the file untouched) unless --overwrite."""
    out = tmp_path / "cat.ecsv"
    assert main(_predict_argv(small, out)) == 0
    out.write_text("precious")
    line = _one_line_error(capsys, _predict_argv(small, out), 1)
    assert "--overwrite" in line and str(out) in line
    assert out.read_text() == "precious"
    assert main(_predict_argv(small, out, "--overwrite")) == 0
    assert len(Table.read(out)) == 3
    # simulate, the same
    h5 = tmp_path / "s.h5"
    h5.write_text("old")
    line = _one_line_error(capsys, ["simulate", "-n", "2", "--out", str(h5), "-q"], 1)
    assert "--overwrite" in line and h5.read_text() == "old"
    assert main(["simulate", "-n", "2", "--out", str(h5), "-q", "--overwrite"]) == 0
    with h5py.File(h5) as f:
        assert f["images"].shape[0] == 2


@pytest.mark.parametrize("cmd, module, name", [
    (["predict"], "galnet.nn.predict", "predict_files"),
    (["predict", "--refine"], "galnet.fitting.runner", "fit_files"),
    (["fit"], "galnet.fitting.runner", "fit_files"),
])
def test_outputs_checked_before_any_work(small, tmp_path, capsys, monkeypatch, cmd, module,
                                         name):
    """An output that cannot be written stops the command before any work (the issue: the
    output folder was checked after 49 s of fitting)."""
    import importlib

    def work(*a, **k):
        raise AssertionError("the work started before the output was checked")

    monkeypatch.setattr(importlib.import_module(module), name, work)
    argv = [*cmd, "--images", str(small / "stamps.fits"), "--psf", str(small / "psf.fits"), "-q"]
    (tmp_path / "afile").write_text("x")
    for out, match in ((tmp_path / "afile" / "c.ecsv", "is not a directory"),
                       (tmp_path / "missing" / "c.ecsv", "does not exist"),
                       (tmp_path / "afile", "--overwrite")):
        line = _one_line_error(capsys, [*argv, "--out", str(out)], 1)
        assert match in line


def test_outputs_checked_before_any_work_other_commands(small, tmp_path, capsys, monkeypatch):
    import galnet.evaluate.metrics as metrics
    import galnet.interop.export as export
    import galnet.sim.simulate as sim

    def work(*a, **k):
        raise AssertionError("the work started before the output was checked")

    for mod, name in ((sim, "simulate"), (metrics, "evaluate"), (export, "export_catalog")):
        monkeypatch.setattr(mod, name, work)
    full = tmp_path / "full"
    full.mkdir()
    (full / "old.txt").write_text("old")
    for argv in (["simulate", "-n", "2", "--out", str(full / "old.txt")],
                 ["evaluate", "--pred", "p.ecsv", "--truth", "t.h5", "--out", str(full)],
                 ["export", "--to", "galfit", "c.ecsv", str(full)]):
        assert "--overwrite" in _one_line_error(capsys, argv, 1)


def test_ctrl_c_exits_130_and_leaves_nothing(small, tmp_path, capsys, monkeypatch):
    import galnet.nn.predict as predict

    def interrupted(out, **kw):
        Path(out).write_text("half a catalogue")  # a writer that is not atomic
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "predict_files", interrupted)
    out = tmp_path / "cat.ecsv"
    assert main(_predict_argv(small, out)) == 130
    assert capsys.readouterr().err.strip() == "galnet: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_zeropoint_range(tmp_path, capsys):
    """A zeropoint of 1e30 (or non-finite) is a usage error; 0 (KiDS magzero) and -48.6 (images
    in erg/s/cm^2/Hz) are real zeropoints."""
    from galnet.cli import build_parser

    base = ["predict", "--images", "s.fits", "--psf", "p.fits", "--out", "c.ecsv", "--zeropoint"]
    for zp in ("0", "-48.6", "27", "31.4"):
        assert build_parser().parse_args([*base, zp]).zeropoint == float(zp)
    for zp in ("1e30", "nan", "inf", "-60", "51"):
        line = _one_line_error(capsys, [*base, zp], 2)
        assert "--zeropoint" in line and zp in line


def test_device_errors(small, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "c.ecsv"
    for dev, match in (("cuda", "CUDA is not available"), ("gpu0", "is not a device"),
                       ("cuda:7", "CUDA")):
        line = _one_line_error(capsys, _predict_argv(small, out, "--device", dev), 2)
        assert "--device" in line and match in line
    assert not out.exists()


def test_positions_with_images_is_a_usage_error(small, tmp_path, capsys):
    line = _one_line_error(capsys, _predict_argv(small, tmp_path / "c.ecsv", "--positions",
                                                 str(small / "pos.ecsv")), 2)
    assert "--positions" in line


def test_verbose_and_quiet(monkeypatch, capsys):
    """-v: INFO, -vv: DEBUG, default: warnings, -q: errors only; one handler for the command,
    removed afterwards; Python warnings become one line."""
    import logging
    import warnings

    import galnet.cli.commands as commands

    def chatty(a):
        log = logging.getLogger("galnet.something")
        log.debug("a detail")
        log.info("a step")
        log.warning("a warning")
        warnings.warn("a python\nwarning", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(commands, "cmd_presets", chatty)
    handlers = list(logging.getLogger("galnet").handlers)
    expect = {(): ["galnet: warning: a warning", "galnet: warning: UserWarning: a python warning"],
              ("-v",): ["galnet: a step", "galnet: warning: a warning",
                        "galnet: warning: UserWarning: a python warning"],
              ("-vv",): ["galnet: debug: a detail", "galnet: a step",
                         "galnet: warning: a warning",
                         "galnet: warning: UserWarning: a python warning"],
              ("-q",): []}
    for flags, lines in expect.items():
        assert main(["presets", *flags]) == 0
        err = capsys.readouterr().err.splitlines()
        if flags in (("-v",), ("-vv",)):  # the command line first, the time last
            assert err[0].startswith("galnet: galnet ") and err[0].endswith("presets " + flags[0])
            assert re.fullmatch(r"galnet: done in [\d.]+ s", err[-1]), err[-1]
            err = err[1:-1]
        assert err == lines, flags
    assert logging.getLogger("galnet").handlers == handlers
    assert _one_line_error(capsys, ["presets", "-q", "-v"], 2)


def test_import_is_light_and_has_no_logging_side_effects():
    code = ("import logging, sys, galnet, galnet.cli, galnet.cli.parser; "
            "galnet.cli.build_parser(); assert 'torch' not in sys.modules, 'torch'; "
            "assert logging.getLogger('galnet').handlers == [], 'galnet handler'; "
            "assert logging.getLogger().handlers == [], 'root handler'; "
            "assert logging.getLogger('galnet').level == logging.NOTSET; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_broken_pipe_is_quiet():
    """`galnet presets --json | head -1`: the reader goes away; no traceback."""
    p = subprocess.Popen([sys.executable, "-m", "galnet", "presets", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before galnet writes
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert "Traceback" not in err and "Exception ignored" not in err and err == "", err
    assert p.returncode == 1


def test_entry_point_exit_codes(small, tmp_path):
    """The real entry point: exit 2 for usage, 1 for runtime errors, one line."""
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "galnet", *argv], capture_output=True,
                              text=True, timeout=300)

    r = run("predict", "--images", "s.fits", "--psf", "p.fits", "--out", "c.ecsv",
            "--zeropoint", "1e30")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--zeropoint" in r.stderr
    r = run("predict", "--images", str(tmp_path / "missing.fits"), "--psf",
            str(small / "psf.fits"), "--model", str(small / "w.safetensors"), "--out",
            str(tmp_path / "c.ecsv"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "missing.fits" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "c.ecsv").exists()


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    assert main(["simulate", "-n", "3", "--out", str(tmp_path / "s.h5")]) == 0  # no -q
    err = capsys.readouterr().err
    assert "%|" not in err and "it/s" not in err, err


def test_save_models_file_or_folder(small, tmp_path):
    """predict/fit --save-models FILE.fits or DIR (-> DIR/models.fits): one multi-extension FITS."""
    from astropy.io import fits

    assert main(["predict", "--images", str(small / "stamps.fits"), "--psf",
                 str(small / "psf.fits"), "--model", str(small / "w.safetensors"), "-q",
                 "--out", str(tmp_path / "a.ecsv"), "--save-models", str(tmp_path / "m")]) == 0
    assert main(["fit", "--images", str(small / "stamps.fits"), "--psf", str(small / "psf.fits"),
                 "--model", str(small / "w.safetensors"), "-q", "--no-auto-mask",
                 "--out", str(tmp_path / "b.ecsv"), "--save-models",
                 str(tmp_path / "fit.fits")]) == 0
    for f in (tmp_path / "m" / "models.fits", tmp_path / "fit.fits"):
        with fits.open(f) as h:
            names = [x.name for x in h]
            assert "MODEL" in names and "RESIDUAL" in names and "OBJECTS" in names, names
            assert h["MODEL"].data.shape[0] == 3


@pytest.mark.parametrize("cmd", ["predict", "fit"])
def test_save_models_onto_the_catalogue_is_a_usage_error(tmp_path, capsys, cmd):
    """``--out X --save-models X`` ran the whole job and then failed; now refused up front."""
    from astropy.io import fits

    rng = np.random.default_rng(0)
    fits.PrimaryHDU(rng.normal(0, 1, (2, 61, 61)).astype(np.float32)).writeto(tmp_path / "s.fits")
    yy, xx = np.mgrid[:25, :25] - 12
    fits.PrimaryHDU(np.exp(-(xx**2 + yy**2) / 4.5)).writeto(tmp_path / "p.fits")
    out = tmp_path / "same.fits"
    msg = _one_line_error(capsys, [cmd, "--images", str(tmp_path / "s.fits"), "--psf",
                                   str(tmp_path / "p.fits"), "--out", str(out),
                                   "--save-models", str(out)], status=2)
    assert "same file" in msg
    assert not out.exists()
