"""The bad-input matrix: every subcommand, given bad files, bad values and bad options, fails
cleanly.

Each case runs ``galnet.cli.main(argv)`` in-process and asserts: the exit status (1 a runtime
error: a bad file or value, an output that cannot be written; 2 a usage error: bad or
incompatible options), exactly one line on stderr, starting with ``galnet: error:`` and naming
the file or the option, no traceback, and no output left behind (nor ``.tmp-*`` files). A few
cases run through the real entry point (``python -m galnet``) in a subprocess.

Inputs are tiny (3 stamps of 61x61, a 25x25 PSF, -n 4 simulations) so that the matrix stays fast.
Placeholders in the argument lists: ``{d}`` the folder of the input files (read-only for the
cases), ``{o}`` a fresh output folder per case.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from galnet.cli import main


# ---- inputs ----------------------------------------------------------------------------------
def _psf(size: int = 25, fwhm: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    p = np.exp(-(xx**2 + yy**2) / (2 * (fwhm / 2.355) ** 2))
    return (p / p.sum()).astype(np.float32)


def _stamps(n: int = 3, size: int = 61, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from galnet.profiles.render import render

    rng = np.random.default_rng(seed)
    params = {"x": np.full(n, (size - 1) / 2 + 0.3), "y": np.full(n, (size - 1) / 2 - 0.2),
              "flux": np.full(n, 300.0), "re_pix": np.linspace(3, 6, n),
              "n": np.linspace(1, 3, n), "q": np.full(n, 0.7), "pa_deg": np.full(n, 30.0)}
    clean = render(params, _psf(), (size, size))
    sigma = np.full((n, size, size), 0.5, np.float32)
    return (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32), sigma


def _hdr() -> fits.Header:
    return fits.Header({"MAGZERO": 27.0, "PIXSCALE": 0.168})


def _write_stamps(path: Path, images: np.ndarray, sigma: np.ndarray | None = None) -> None:
    hdus = [fits.PrimaryHDU(images, header=_hdr())]
    if sigma is not None:
        hdus.append(fits.ImageHDU(sigma, name="SIGMA"))
    fits.HDUList(hdus).writeto(path)


@pytest.fixture(scope="module")
def d(tmp_path_factory, tiny_model) -> Path:
    """The input files of the matrix (good ones and bad ones), made once."""
    import h5py

    from galnet.nn.model import save_model
    from galnet.sim.simulate import simulate

    d = tmp_path_factory.mktemp("inputs")
    im, sg = _stamps()
    _write_stamps(d / "stamps.fits", im, sg)
    fits.PrimaryHDU(_psf()).writeto(d / "psf.fits")
    # bad images
    (d / "notfits.fits").write_text("SIMPLE? no, this is a text file\n" * 20)
    (d / "empty.fits").write_bytes(b"")
    raw = (d / "stamps.fits").read_bytes()
    (d / "trunc.fits").write_bytes(raw[: len(raw) // 3])
    fits.PrimaryHDU().writeto(d / "nodata.fits")
    _write_stamps(d / "line.fits", im[0, 0])  # 1-D
    _write_stamps(d / "cube4.fits", im[None])  # 4-D
    nan = im.copy()
    nan[1] = np.nan
    _write_stamps(d / "allnan.fits", nan, sg)
    inf = im.copy()
    inf[0, 30, 30] = np.inf
    _write_stamps(d / "inf.fits", inf, sg)
    # bad PSFs
    fits.PrimaryHDU(_psf(24)).writeto(d / "psf_even.fits")
    fits.PrimaryHDU(np.zeros((25, 25), np.float32)).writeto(d / "psf_zero.fits")
    p = _psf()
    p[12, 12] = np.nan
    fits.PrimaryHDU(p).writeto(d / "psf_nan.fits")
    fits.PrimaryHDU(np.stack([_psf()] * 2)).writeto(d / "psf_two.fits")  # 2 PSFs, 3 stamps
    # bad sigma / mask
    fits.PrimaryHDU(-sg).writeto(d / "sigma_neg.fits")
    fits.PrimaryHDU(sg[:, :50, :50]).writeto(d / "sigma_shape.fits")
    fits.PrimaryHDU(np.zeros((3, 40, 61), np.uint8)).writeto(d / "mask_shape.fits")
    # a frame with positions
    frame = np.random.default_rng(1).normal(0, 0.5, (160, 160)).astype(np.float32)
    frame[40:101, 50:111] += im[0]
    fits.PrimaryHDU(frame, header=_hdr()).writeto(d / "frame.fits")
    Table({"x": [80.3], "y": [70.2]}).write(d / "pos.ecsv")
    Table({"x": ["abc"], "y": ["def"]}).write(d / "pos_str.ecsv")
    Table({"x": [5000.0], "y": [-300.0]}).write(d / "pos_out.ecsv")
    Table({"a": [80.0], "b": [70.0]}).write(d / "pos_cols.ecsv")
    # weights: good, flipped bytes, NaN, not safetensors
    w = save_model(tiny_model, d / "w.safetensors")
    raw = bytearray(w.read_bytes())
    for i in range(8, 60):  # inside the JSON header
        raw[i] ^= 0xFF
    (d / "w_flipped.safetensors").write_bytes(bytes(raw))
    import torch

    from galnet.nn.model import GaLNet

    bad = GaLNet(tiny_model.config).eval()
    bad.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        next(bad.parameters()).fill_(float("nan"))
    save_model(bad, d / "w_nan.safetensors")
    (d / "w_text.safetensors").write_text("not weights")
    # a catalogue (for export and fit --init), a simulation (evaluate, train)
    assert main(["predict", "--images", str(d / "stamps.fits"), "--psf", str(d / "psf.fits"),
                 "--model", str(w), "--out", str(d / "cat.ecsv"), "-q", "--no-chi2"]) == 0
    simulate("hsc-r", 4, 0, d / "sim.h5", progress=False)
    (d / "noth5.h5").write_text("not HDF5")
    with h5py.File(d / "bad.h5", "w") as f:
        f["nothing"] = np.zeros(3)
    # train configs
    (d / "epochs.toml").write_text('epochs = "ten"\n')
    (d / "unknown.toml").write_text("epochz = 3\n")
    (d / "broken.toml").write_text("epochs = = 3\n")
    (d / "afile").write_text("a file, not a folder")
    (d / "badrun").mkdir()
    (d / "badrun" / "checkpoint.safetensors").write_bytes(b"\x08" + b"garbage" * 20)
    # translate: source cubes
    fits.PrimaryHDU(np.zeros((2, 5, 64, 64), np.float32)).writeto(d / "src.fits")
    s = np.zeros((2, 5, 64, 64), np.float32)
    s[1, 2, 3, 4] = np.nan
    fits.PrimaryHDU(s).writeto(d / "src_nan.fits")
    fits.PrimaryHDU(np.zeros((2, 5, 30, 30), np.float32)).writeto(d / "src_shape.fits")
    # existing outputs (refused without --overwrite)
    (d / "exists.ecsv").write_text("# old catalogue\n")
    (d / "exists.h5").write_text("old")
    (d / "exists.fits").write_text("old")
    (d / "full").mkdir()
    (d / "full" / "old.txt").write_text("old")
    (d / "mdir").mkdir()
    (d / "mdir" / "models.fits").write_text("old")
    return d


# ---- the matrix ------------------------------------------------------------------------------
S, P, W = "{d}/stamps.fits", "{d}/psf.fits", "{d}/w.safetensors"
PRED = ["predict", "--psf", P, "--model", W, "-q"]  # + --images/--frame, --out
IMG = ["--images", S]
OUT = ["--out", "{o}/cat.ecsv"]
FRAME = ["predict", "--frame", "{d}/frame.fits", "--psf", P, "--model", W, "-q"]
FIT = ["fit", "--images", S, "--psf", P, "--model", W, "-q", "--no-auto-mask"]
TAPPLY = ["translate", "apply", "--images", "{d}/src.fits"]

CASES = [
    # -- predict --images: files
    ("predict-images-missing", [*PRED, "--images", "{d}/missing.fits", *OUT], 1, "missing.fits"),
    ("predict-images-notfits", [*PRED, "--images", "{d}/notfits.fits", *OUT], 1, "notfits.fits"),
    ("predict-images-empty", [*PRED, "--images", "{d}/empty.fits", *OUT], 1, "empty.fits"),
    ("predict-images-truncated", [*PRED, "--images", "{d}/trunc.fits", *OUT], 1, "trunc.fits"),
    ("predict-images-nodata", [*PRED, "--images", "{d}/nodata.fits", *OUT], 1, "nodata.fits"),
    ("predict-images-1d", [*PRED, "--images", "{d}/line.fits", *OUT], 1, "line.fits"),
    ("predict-images-4d", [*PRED, "--images", "{d}/cube4.fits", *OUT], 1, "cube4.fits"),
    ("predict-images-is-dir", [*PRED, "--images", "{d}", *OUT], 1, "is a directory"),
    # -- predict: PSF
    ("predict-psf-missing", ["predict", *IMG, "--psf", "{d}/nopsf.fits", "--model", W, *OUT],
     1, "nopsf.fits"),
    ("predict-psf-even", ["predict", *IMG, "--psf", "{d}/psf_even.fits", "--model", W, *OUT],
     1, "psf_even.fits"),
    ("predict-psf-zero", ["predict", *IMG, "--psf", "{d}/psf_zero.fits", "--model", W, *OUT],
     1, "psf_zero.fits"),
    ("predict-psf-nan", ["predict", *IMG, "--psf", "{d}/psf_nan.fits", "--model", W, *OUT],
     1, "psf_nan.fits"),
    ("predict-psf-count", ["predict", *IMG, "--psf", "{d}/psf_two.fits", "--model", W, *OUT],
     1, "psf_two.fits"),
    ("predict-psf-notfits", ["predict", *IMG, "--psf", "{d}/notfits.fits", "--model", W, *OUT],
     1, "notfits.fits"),
    # -- predict: sigma, mask
    ("predict-sigma-negative", [*PRED, *IMG, "--sigma", "{d}/sigma_neg.fits", *OUT], 1,
     "sigma"),
    ("predict-sigma-shape", [*PRED, *IMG, "--sigma", "{d}/sigma_shape.fits", *OUT], 1,
     "sigma_shape.fits"),
    ("predict-mask-shape", [*PRED, *IMG, "--mask", "{d}/mask_shape.fits", *OUT], 1,
     "mask_shape.fits"),
    ("predict-mask-missing", [*PRED, *IMG, "--mask", "{d}/nomask.fits", *OUT], 1,
     "nomask.fits"),
    # -- predict: options
    ("predict-zeropoint-huge", [*PRED, *IMG, "--zeropoint", "1e30", *OUT], 2, "--zeropoint"),
    ("predict-zeropoint-nan", [*PRED, *IMG, "--zeropoint", "nan", *OUT], 2, "--zeropoint"),
    ("predict-pixel-scale-negative", [*PRED, *IMG, "--pixel-scale", "-0.2", *OUT], 2,
     "--pixel-scale"),
    ("predict-preset-unknown", [*PRED, *IMG, "--preset", "nope", *OUT], 2, "nope"),
    ("predict-device-unknown", [*PRED, *IMG, "--device", "gpu0", *OUT], 2, "--device"),
    ("predict-device-cuda-absent", [*PRED, *IMG, "--device", "cuda", *OUT], 2, "--device"),
    ("predict-chunk-zero", [*PRED, *IMG, "--chunk", "0", *OUT], 2, "--chunk"),
    ("predict-threads-text", [*PRED, *IMG, "--threads", "two", *OUT], 2, "--threads"),
    ("predict-positions-with-images", [*PRED, *IMG, "--positions", "{d}/pos.ecsv", *OUT], 2,
     "--positions"),
    ("predict-no-input", [*PRED, *OUT], 2, "--images"),
    ("predict-save-models-exists", [*PRED, *IMG, *OUT, "--save-models", "{d}/mdir"], 1,
     "--overwrite"),
    # -- predict: weights
    ("predict-weights-missing", ["predict", *IMG, "--psf", P, "--model", "{d}/no.safetensors",
                                 *OUT], 1, "no.safetensors"),
    ("predict-weights-flipped", ["predict", *IMG, "--psf", P, "--model",
                                 "{d}/w_flipped.safetensors", *OUT], 1, "w_flipped"),
    ("predict-weights-nan", ["predict", *IMG, "--psf", P, "--model", "{d}/w_nan.safetensors",
                             *OUT], 1, "w_nan"),
    ("predict-weights-text", ["predict", *IMG, "--psf", P, "--model", "{d}/w_text.safetensors",
                              *OUT], 1, "w_text"),
    # -- predict: outputs
    ("predict-out-format", [*PRED, *IMG, "--out", "{o}/cat.txt"], 2, "cat.txt"),
    ("predict-out-under-file", [*PRED, *IMG, "--out", "{d}/afile/cat.ecsv"], 1, "afile"),
    ("predict-out-missing-dir", [*PRED, *IMG, "--out", "{o}/no/cat.ecsv"], 1,
     "no' does not exist"),
    ("predict-out-is-dir", [*PRED, *IMG, "--out", "{o}"], 1, "is a directory"),
    ("predict-out-exists", [*PRED, *IMG, "--out", "{d}/exists.ecsv"], 1, "--overwrite"),
    ("predict-save-models-under-file", [*PRED, *IMG, *OUT, "--save-models", "{d}/afile/m"], 1,
     "afile"),
    # -- predict --frame
    ("frame-missing", ["predict", "--frame", "{d}/noframe.fits", "--positions", "{d}/pos.ecsv",
                       "--psf", P, "--model", W, *OUT], 1, "noframe.fits"),
    ("frame-notfits", ["predict", "--frame", "{d}/notfits.fits", "--positions", "{d}/pos.ecsv",
                       "--psf", P, "--model", W, *OUT], 1, "notfits.fits"),
    ("frame-no-positions", [*FRAME, *OUT], 2, "--positions"),
    ("frame-positions-missing", [*FRAME, "--positions", "{d}/nopos.ecsv", *OUT], 1,
     "nopos.ecsv"),
    ("frame-positions-strings", [*FRAME, "--positions", "{d}/pos_str.ecsv", *OUT], 1,
     "pos_str.ecsv: column 'x'"),
    ("frame-positions-columns", [*FRAME, "--positions", "{d}/pos_cols.ecsv", *OUT], 1,
     "pos_cols.ecsv"),
    ("frame-positions-outside", [*FRAME, "--positions", "{d}/pos_out.ecsv", *OUT], 1,
     "pos_out.ecsv"),
    ("frame-psf-positions", [*FRAME, "--positions", "{d}/pos.ecsv", "--psf-positions",
                             "{d}/pos.ecsv", *OUT], 2, "--psf-positions"),
    # -- predict --refine
    ("refine-psf-even", ["predict", "--refine", *IMG, "--psf", "{d}/psf_even.fits", "--model", W,
                         *OUT, "-q"], 1, "psf_even.fits"),
    ("refine-no-chi2", [*PRED, *IMG, "--refine", "--no-chi2", "--save-models", "{o}/m", *OUT],
     2, "--refine"),
    ("fit-save-models-exists", [*FIT, *OUT, "--save-models", "{d}/exists.fits"], 1,
     "--overwrite"),
    ("fit-save-models-under-file", [*FIT, *OUT, "--save-models", "{d}/afile/m.fits"], 1,
     "afile"),
    # -- fit
    ("fit-init-missing", [*FIT, "--init", "{d}/noinit.ecsv", *OUT], 1, "noinit.ecsv"),
    ("fit-nn-prior-moments", [*FIT, "--init", "moments", "--nn-prior", *OUT], 2, "--nn-prior"),
    ("fit-sky-bad", [*FIT, "--sky", "tilted", *OUT], 2, "--sky"),
    ("fit-gain-negative", [*FIT, "--gain", "-3", *OUT], 2, "--gain"),
    ("fit-dtype-bad", [*FIT, "--dtype", "float16", *OUT], 2, "--dtype"),
    ("fit-device-unknown", [*FIT, "--device", "tpu", *OUT], 2, "--device"),
    ("fit-images-truncated", ["fit", "--images", "{d}/trunc.fits", "--psf", P, "--model", W,
                              *OUT], 1, "trunc.fits"),
    ("fit-psf-zero", ["fit", *IMG, "--psf", "{d}/psf_zero.fits", "--model", W, *OUT], 1,
     "psf_zero.fits"),
    ("fit-weights-nan", ["fit", *IMG, "--psf", P, "--model", "{d}/w_nan.safetensors", *OUT], 1,
     "w_nan"),
    ("fit-out-exists", [*FIT, "--out", "{d}/exists.ecsv"], 1, "--overwrite"),
    ("fit-out-format", [*FIT, "--out", "{o}/cat.csv"], 2, "cat.csv"),
    # -- simulate
    ("simulate-n-negative", ["simulate", "-n", "-4", "--out", "{o}/s.h5"], 2, "-n"),
    ("simulate-preset-unknown", ["simulate", "--preset", "nope", "-n", "4", "--out", "{o}/s.h5"],
     2, "nope"),
    ("simulate-bank-missing", ["simulate", "-n", "4", "--bank", "{d}/nobank.h5", "--out",
                               "{o}/s.h5"], 1, "nobank.h5"),
    ("simulate-bank-not-hdf5", ["simulate", "-n", "4", "--bank", "{d}/notfits.fits", "--out",
                                "{o}/s.h5"], 1, "notfits.fits"),
    ("simulate-out-exists", ["simulate", "-n", "4", "--out", "{d}/exists.h5"], 1, "--overwrite"),
    ("simulate-out-under-file", ["simulate", "-n", "4", "--out", "{d}/afile/s.h5"], 1, "afile"),
    ("simulate-workers-zero", ["simulate", "-n", "4", "--workers", "0", "--out", "{o}/s.h5"], 2,
     "--workers"),
    # -- bank build
    ("bank-data-missing", ["bank", "build", "--data", "{d}/nodata", "--out", "{o}/b.h5"], 1,
     "nodata"),
    ("bank-data-is-file", ["bank", "build", "--data", "{d}/afile", "--out", "{o}/b.h5"], 1,
     "afile"),
    ("bank-data-empty", ["bank", "build", "--data", "{o}", "--out", "{o}/b.h5"], 1,
     "none of the expected files"),
    ("bank-out-exists", ["bank", "build", "--data", "{d}", "--out", "{d}/exists.h5"], 1,
     "--overwrite"),
    ("bank-pixel-scales-zero", ["bank", "build", "--data", "{d}", "--out", "{o}/b.h5",
                                "--pixel-scales", "0"], 2, "--pixel-scales"),
    ("bank-no-action", ["bank"], 2, "action"),
    # -- presets
    ("presets-unknown", ["presets", "nope"], 2, "nope"),
    ("presets-json-unknown", ["presets", "--json", "hsc-r", "nope"], 2, "nope"),
    # -- train
    ("train-config-missing", ["train", "--config", "{d}/no.toml", "--data", "{d}/sim.h5",
                              "--out-dir", "{o}/run"], 1, "no.toml"),
    ("train-config-broken", ["train", "--config", "{d}/broken.toml", "--data", "{d}/sim.h5",
                             "--out-dir", "{o}/run"], 1, "broken.toml"),
    ("train-config-type", ["train", "--config", "{d}/epochs.toml", "--data", "{d}/sim.h5",
                           "--out-dir", "{o}/run"], 1, "epochs"),
    ("train-config-unknown-key", ["train", "--config", "{d}/unknown.toml", "--data",
                                  "{d}/sim.h5", "--out-dir", "{o}/run"], 1, "epochz"),
    ("train-no-data", ["train", "--out-dir", "{o}/run"], 2, "--data"),
    ("train-data-missing", ["train", "--data", "{d}/nosim.h5", "--out-dir", "{o}/run"], 1,
     "nosim.h5"),
    ("train-data-not-hdf5", ["train", "--data", "{d}/notfits.fits", "--out-dir", "{o}/run",
                             "--epochs", "1", "--n-train", "2", "--n-val", "2", "--batch", "2"],
     1, "notfits.fits"),
    ("train-device-unknown", ["train", "--data", "{d}/sim.h5", "--out-dir", "{o}/run",
                              "--device", "gpu0"], 2, "--device"),
    ("train-batch-over-n-train", ["train", "--data", "{d}/sim.h5", "--out-dir", "{o}/run",
                                  "--n-train", "2", "--n-val", "2", "--batch", "8"], 1,
     "batch"),
    ("train-checkpoint-corrupt", ["train", "--data", "{d}/sim.h5", "--out-dir", "{d}/badrun",
                                  "--n-train", "2", "--n-val", "2", "--batch", "2", "--epochs",
                                  "1"], 1, "checkpoint.safetensors"),
    ("train-lr-negative", ["train", "--data", "{d}/sim.h5", "--lr", "-1"], 2, "--lr"),
    ("train-out-dir-under-file", ["train", "--data", "{d}/sim.h5", "--out-dir",
                                  "{d}/afile/run"], 1, "afile"),
    # -- evaluate
    ("evaluate-pred-missing", ["evaluate", "--pred", "{d}/nocat.ecsv", "--truth", "{d}/sim.h5",
                               "--out", "{o}/rep"], 1, "nocat.ecsv"),
    ("evaluate-pred-notcat", ["evaluate", "--pred", "{d}/notfits.fits", "--truth", "{d}/sim.h5",
                              "--out", "{o}/rep"], 1, "notfits.fits"),
    ("evaluate-truth-missing", ["evaluate", "--pred", "{d}/cat.ecsv", "--truth",
                                "{d}/notruth.h5", "--out", "{o}/rep"], 1, "notruth.h5"),
    ("evaluate-truth-not-hdf5", ["evaluate", "--pred", "{d}/cat.ecsv", "--truth",
                                 "{d}/noth5.h5", "--out", "{o}/rep"], 1, "noth5.h5"),
    ("evaluate-truth-no-params", ["evaluate", "--pred", "{d}/cat.ecsv", "--truth",
                                  "{d}/bad.h5", "--out", "{o}/rep"], 1, "bad.h5"),
    ("evaluate-out-exists", ["evaluate", "--pred", "{d}/cat.ecsv", "--truth", "{d}/sim.h5",
                             "--out", "{d}/full"], 1, "--overwrite"),
    ("evaluate-out-under-file", ["evaluate", "--pred", "{d}/cat.ecsv", "--truth", "{d}/sim.h5",
                                 "--out", "{d}/afile/rep"], 1, "afile"),
    ("evaluate-snr-bins-nan", ["evaluate", "--pred", "{d}/cat.ecsv", "--truth", "{d}/sim.h5",
                               "--out", "{o}/rep", "--snr-bins", "0", "nan"], 2, "--snr-bins"),
    # -- export
    ("export-catalog-missing", ["export", "--to", "galfit", "{d}/nocat.ecsv", "{o}/x"], 1,
     "nocat.ecsv"),
    ("export-catalog-notcat", ["export", "--to", "galfit", "{d}/notfits.fits", "{o}/x"], 1,
     "notfits.fits"),
    ("export-to-unknown", ["export", "--to", "sextractor", "{d}/cat.ecsv", "{o}/x"], 2, "--to"),
    ("export-psf-missing", ["export", "--to", "imfit", "{d}/cat.ecsv", "{o}/x", "--psf",
                            "{d}/nopsf.fits"], 1, "nopsf.fits"),
    ("export-zeropoint-huge", ["export", "--to", "galfit", "{d}/cat.ecsv", "{o}/x",
                               "--zeropoint", "1e30"], 2, "--zeropoint"),
    ("export-box-zero", ["export", "--to", "galfit", "{d}/cat.ecsv", "{o}/x", "--box", "0"], 2,
     "--box"),
    ("export-preset-unknown", ["export", "--to", "galfit", "{d}/cat.ecsv", "{o}/x", "--preset",
                               "nope"], 2, "nope"),
    ("export-dir-exists", ["export", "--to", "galfit", "{d}/cat.ecsv", "{d}/full"], 1,
     "--overwrite"),
    ("export-dir-under-file", ["export", "--to", "galfit", "{d}/cat.ecsv", "{d}/afile/x"], 1,
     "afile"),
    # -- plot
    ("plot-catalog-missing", ["plot", "{d}/nocat.ecsv", "{d}/notfits.fits", "--out",
                              "{o}/f.png"], 1, "nocat.ecsv"),
    ("plot-models-not-fits", ["plot", "{d}/cat.ecsv", "{d}/notfits.fits", "--out", "{o}/f.png"],
     1, "notfits.fits"),
    ("plot-worst-zero", ["plot", "{d}/cat.ecsv", "{d}/notfits.fits", "--worst", "0", "--out",
                         "{o}/f.png"], 2, "--worst"),
    ("plot-out-suffix", ["plot", "{d}/cat.ecsv", "{d}/notfits.fits", "--out", "{o}/f.jpg"], 2,
     "--out"),
    # -- demo
    ("demo-n-zero", ["demo", "-n", "0", "--out-dir", "{o}/demo"], 2, "-n"),
    ("demo-seed-negative", ["demo", "--seed", "-1", "--out-dir", "{o}/demo"], 2, "--seed"),
    ("demo-model-missing", ["demo", "-n", "4", "--model", "{d}/no.safetensors", "--out-dir",
                            "{o}/demo"], 1, "no.safetensors"),
    ("demo-out-dir-under-file", ["demo", "-n", "4", "--out-dir", "{d}/afile/demo"], 1, "afile"),
    # -- translate simulate / train / apply / evaluate
    ("translate-no-action", ["translate"], 2, "action"),
    ("translate-simulate-domain", ["translate", "simulate", "-n", "2", "--source", "hst",
                                   "--out", "{o}/p.h5"], 2, "hst"),
    ("translate-simulate-n-zero", ["translate", "simulate", "-n", "0", "--out", "{o}/p.h5"], 2,
     "-n"),
    ("translate-simulate-out-exists", ["translate", "simulate", "-n", "2", "--out",
                                       "{d}/exists.h5"], 1, "--overwrite"),
    ("translate-train-data-missing", ["translate", "train", "--data", "{d}/nopairs.h5", "--out",
                                      "{o}/t.safetensors"], 1, "nopairs.h5"),
    ("translate-train-data-not-pairs", ["translate", "train", "--data", "{d}/sim.h5", "--out",
                                        "{o}/t.safetensors"], 1, "sim.h5"),
    ("translate-train-fraction-zero", ["translate", "train", "--data", "{d}/sim.h5", "--out",
                                       "{o}/t.safetensors", "--fraction", "0"], 2, "--fraction"),
    ("translate-train-loss", ["translate", "train", "--data", "{d}/sim.h5", "--out",
                              "{o}/t.safetensors", "--loss", "l1"], 2, "--loss"),
    ("translate-train-device", ["translate", "train", "--data", "{d}/sim.h5", "--out",
                                "{o}/t.safetensors", "--device", "gpu0"], 2, "--device"),
    ("translate-train-out-exists", ["translate", "train", "--data", "{d}/sim.h5", "--out",
                                    "{d}/exists.fits"], 1, "--overwrite"),
    ("translate-apply-missing", ["translate", "apply", "--images", "{d}/nosrc.fits", "--out",
                                 "{o}/t.fits"], 1, "nosrc.fits"),
    ("translate-apply-nan", ["translate", "apply", "--images", "{d}/src_nan.fits", "--out",
                             "{o}/t.fits"], 1, "src_nan.fits"),
    ("translate-apply-shape", ["translate", "apply", "--images", "{d}/src_shape.fits", "--out",
                               "{o}/t.fits"], 1, "src_shape.fits"),
    ("translate-apply-truncated", ["translate", "apply", "--images", "{d}/trunc.fits", "--out",
                                   "{o}/t.fits"], 1, "trunc.fits"),
    ("translate-apply-zspec-unconditioned", [*TAPPLY, "--out", "{o}/t.fits", "--zspec", "0.1"],
     1, "zspec"),
    ("translate-apply-zspec-negative", [*TAPPLY, "--out", "{o}/t.fits", "--zspec", "-0.1"], 2,
     "--zspec"),
    ("translate-apply-model-corrupt", [*TAPPLY, "--out", "{o}/t.fits", "--model",
                                       "{d}/w_text.safetensors"], 1, "w_text"),
    ("translate-apply-out-exists", [*TAPPLY, "--out", "{d}/exists.fits"], 1, "--overwrite"),
    ("translate-apply-both-inputs", [*TAPPLY, "--data", "{d}/sim.h5", "--out", "{o}/t.fits"], 2,
     "--data"),
    ("translate-evaluate-data-missing", ["translate", "evaluate", "--data", "{d}/nopairs.h5",
                                         "--out", "{o}/rep"], 1, "nopairs.h5"),
    ("translate-evaluate-out-exists", ["translate", "evaluate", "--data", "{d}/sim.h5", "--out",
                                       "{d}/full"], 1, "--overwrite"),
    ("translate-evaluate-rows-negative", ["translate", "evaluate", "--data", "{d}/sim.h5",
                                          "--structure-rows", "-1", "--out", "{o}/rep"], 2,
     "--structure-rows"),
]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


@pytest.fixture
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("name, argv, status, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(d, tmp_path, capsys, no_cuda, name, argv, status, match):
    o = tmp_path / "o"
    o.mkdir()
    before = _snapshot(d)
    argv = [a.replace("{d}", str(d)).replace("{o}", str(o)) for a in argv]
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"{name}: stderr has {len(lines)} lines:\n{err}"
    assert lines[0].startswith("galnet: error: "), lines[0]
    assert re.search(re.escape(match), lines[0]), f"{name}: {match!r} not in {lines[0]!r}"
    assert rc == status, f"{name}: exit {rc}, expected {status}: {lines[0]}"
    assert list(o.rglob("*")) == [], f"{name}: left {list(o.rglob('*'))}"
    assert _snapshot(d) == before, f"{name}: the inputs folder changed"


@pytest.mark.parametrize("name", ["predict-zeropoint-huge", "presets-unknown",
                                  "export-dir-exists", "predict-images-truncated"])
def test_bad_input_real_entry_point(d, tmp_path, name):
    """The same through ``python -m galnet`` (the console script calls the same main)."""
    _, argv, status, match = next(c for c in CASES if c[0] == name)
    o = tmp_path / "o"
    o.mkdir()
    argv = [a.replace("{d}", str(d)).replace("{o}", str(o)) for a in argv]
    r = subprocess.run([sys.executable, "-m", "galnet", *argv], capture_output=True, text=True,
                       timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == status and len(lines) == 1, r.stderr
    assert lines[0].startswith("galnet: error: ") and match in lines[0]
    assert "Traceback" not in r.stderr and list(o.iterdir()) == []


def test_matrix_covers_every_subcommand():
    from galnet.cli import build_parser

    covered = {tuple(c[1][:2]) if c[1][0] in ("bank", "translate") else (c[1][0],)
               for c in CASES}
    def subcommands(parser) -> dict:
        return next((a.choices for a in parser._actions
                     if isinstance(a, argparse._SubParsersAction)), {})

    for name, p in subcommands(build_parser()).items():
        names = [(name, s) for s in subcommands(p)] or [(name,)]
        for n in names:
            assert n in covered, f"no bad-input case for galnet {' '.join(n)}"
    assert len(CASES) >= 60
