"""The ``galnet`` command line: commands run in-process, errors are one line with exit status 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
from astropy.table import Table

from galnet.cli import main


def _one_line_error(capsys, argv) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (argv, out, err)
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
    "argv, match",
    [
        ([], "a command is required"),
        (["frobnicate"], "invalid choice"),
        (["bank"], "an action is required"),
        (["simulate", "-n", "5"], "required: --out"),
        (["simulate", "--preset", "nope", "-n", "5", "--out", "{tmp}/x.h5"],
         "unknown preset 'nope'"),
        (["simulate", "-n", "0", "--out", "{tmp}/x.h5"], "must be a positive integer"),
        (["simulate", "-n", "-4", "--out", "{tmp}/x.h5"], "must be a positive integer"),
        (["simulate", "-n", "ten", "--out", "{tmp}/x.h5"], "expected a positive integer"),
        (["simulate", "-n", "5", "--seed", "-1", "--out", "{tmp}/x.h5"], "non-negative"),
        (["simulate", "-n", "5", "--snr-min", "nan", "--out", "{tmp}/x.h5"], "must be finite"),
        (["simulate", "-n", "5", "--snr-min", "inf", "--out", "{tmp}/x.h5"], "must be finite"),
        (["simulate", "-n", "5", "--snr-min", "-2", "--out", "{tmp}/x.h5"], "must be >= 0"),
        (["simulate", "-n", "5", "--bank-psf-fraction", "1.5", "--out", "{tmp}/x.h5"], r"\[0, 1\]"),
        (["simulate", "-n", "5", "--chunk", "0", "--out", "{tmp}/x.h5"], "positive integer"),
        (["simulate", "-n", "5", "--threads", "0", "--out", "{tmp}/x.h5"], "positive integer"),
        (["simulate", "-n", "5", "--out", "{tmp}/missing/x.h5"], "does not exist"),
        (["simulate", "-n", "5", "--out", "{tmp}/afile/x.h5"], "does not exist"),
        (["simulate", "-n", "5", "--out", "{tmp}"], "is a directory"),
        (["simulate", "-n", "5", "--out", "{tmp}/x.h5", "--bank", "{tmp}/nobank.h5"],
         "bank file .* does not exist"),
        (["bank", "build", "--data", "{tmp}/nodata", "--out", "{tmp}/b.h5"], "does not exist"),
        (["bank", "build", "--data", "{tmp}", "--out", "{tmp}/missing/b.h5"], "does not exist"),
        (["bank", "build", "--data", "{tmp}", "--out", "{tmp}/b.h5", "--pixel-scales", "nan"],
         "must be finite"),
        (["bank", "build", "--data", "{tmp}", "--out", "{tmp}/b.h5", "--pixel-scales", "0"],
         "must be > 0"),
        (["presets", "nope"], "unknown preset 'nope'"),
        (["demo", "-n", "0"], "must be a positive integer"),
    ],
)
def test_bad_inputs_one_line_exit_2(tmp_path, capsys, argv, match):
    (tmp_path / "afile").write_text("not a directory")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    line = _one_line_error(capsys, argv)
    assert re.search(match, line), line
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "b.h5").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_read_only_directory(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = _one_line_error(capsys, ["simulate", "-n", "5", "--out", str(ro / "x.h5")])
        assert "not writable" in line
    finally:
        ro.chmod(0o755)


def test_unwritable_output_file_raises_cleanly(tmp_path, capsys, monkeypatch):
    """An OS error while writing (disk full, permissions) is one line too, and leaves nothing."""
    import galnet.sim.simulate as sim

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sim, "_fill", fail)
    line = _one_line_error(capsys, ["simulate", "-n", "5", "--out", str(tmp_path / "x.h5"), "-q"])
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

    monkeypatch.setitem(sys.modules, "galnet.sim.bank", types.SimpleNamespace(build_bank=build_bank))
    out = tmp_path / "b.h5"
    argv = ["bank", "build", "--data", str(tmp_path), "--out", str(out), "--pixel-scales", "0.2",
            "0.396", "--seed", "7", "-q"]
    assert main(argv) == 0
    assert calls == [(tmp_path, out, (0.2, 0.396), 7, False)]
    assert str(out) in capsys.readouterr().out
