"""The ``galnet`` command line (also ``python -m galnet``): a thin layer over importable functions.

Commands::

    galnet simulate --preset hsc-r -n 200000 --seed 1 --out train.h5 [--bank BANK] [--snr-min X]
    galnet bank build --data DIR --out BANK [--pixel-scales 0.168 0.2 0.396]
    galnet presets [NAME ...] [--json]
    galnet train --config configs/hsc-r.toml [--data train.h5] [--out-dir DIR] [--epochs N]
    galnet predict --images STAMPS.fits --psf PSF.fits [--sigma S] [--mask M] --out CAT.ecsv
    galnet predict --frame IMAGE.fits --positions CAT --psf PSF --out CAT.fits
    galnet evaluate --pred CAT --truth TRUTH(.h5|.ecsv) --out REPORT/
    galnet demo [--out-dir galnet-demo] [-n 2000]
    galnet translate simulate|train|apply|evaluate ...   (docs/translation.md)

Errors (any :class:`galnet.GalnetError` and bad arguments) print one line
``galnet: error: <message>`` on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from galnet import __version__
from galnet.errors import GalnetError, GalnetFileError

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _UsageError(Exception):
    """A command-line argument problem (raised instead of argparse's print-usage-and-exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        raise _UsageError(message)


# ---- argument types ----------------------------------------------------------------------------
def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {v}")
    return v


def _finite_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {s!r}")
    return v


def _nonneg_float(s: str) -> float:
    v = _finite_float(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s!r}")
    return v


def _positive_float(s: str) -> float:
    v = _finite_float(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s!r}")
    return v


def _fraction(s: str) -> float:
    v = _finite_float(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s!r}")
    return v


# ---- parser ------------------------------------------------------------------------------------
def _add_input_args(p: argparse.ArgumentParser) -> None:
    """The input options shared by predict and fit (stamps or a frame, PSF, noise, photometry)."""
    p.add_argument("--images", default=None,
                    help="FITS cube (N,H,W) or 2-D stamp; SIGMA/IVAR/MASK extensions are used")
    p.add_argument("--frame", default=None, help="large FITS image (with --positions)")
    p.add_argument("--positions", default=None,
                    help="catalogue with x,y (0-based pixels) or ra,dec (deg) columns")
    p.add_argument("--psf", required=True,
                    help="PSF: FITS image (h,w), cube (N,h,w) or PSFEx model")
    p.add_argument("--psf-positions", default=None, metavar="CAT",
                    help="x,y frame positions (0-based) of the stamps, for a PSFEx --psf")
    p.add_argument("--sigma", default=None, help="1-sigma noise map(s) [extension SIGMA]")
    p.add_argument("--ivar", default=None, help="inverse-variance map(s) [extension IVAR]")
    p.add_argument("--mask", default=None, help="mask(s), nonzero = ignored [extension MASK]")
    p.add_argument("--pixel-scale", type=_positive_float, default=None,
                    help="arcsec/pixel [header PIXSCALE/WCS, else the preset's]")
    p.add_argument("--zeropoint", type=_finite_float, default=None,
                    help="AB mag of one image unit [header MAGZERO/ZP..., else the preset's]")
    p.add_argument("--preset", default="hsc-r", help="survey preset for defaults [hsc-r]")


def build_parser() -> argparse.ArgumentParser:
    """The ``galnet`` argument parser (one subcommand per step; see the module docstring)."""
    p = _Parser(prog="galnet", description="Single-Sérsic structure of galaxies at survey scale.")
    p.add_argument("--version", action="version", version=f"galnet {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("simulate", help="simulate survey stamps into an HDF5 file",
                       description="Simulate Sérsic galaxies with PSFs, backgrounds and noise "
                                   "(see galnet.sim.simulate).")
    s.add_argument("--preset", default=None, help="survey preset (see `galnet presets`) "
                                                  "[default: the default preset]")
    s.add_argument("-n", "--n", type=_positive_int, required=True, help="number of stamps")
    s.add_argument("--seed", type=_nonneg_int, default=0, help="random seed [0]")
    s.add_argument("--out", required=True, type=Path, help="output HDF5 file")
    s.add_argument("--bank", type=Path, default=None,
                   help="background/PSF bank (galnet bank build) [default: synthetic]")
    s.add_argument("--snr-min", type=_nonneg_float, default=None,
                   help="redraw galaxies with optimal S/N below this")
    s.add_argument("--bank-psf-fraction", type=_fraction, default=None,
                   help="share of real PSFs with --bank [default: the preset's]")
    s.add_argument("--chunk", type=_positive_int, default=4096,
                   help="stamps per batch (memory only; results do not depend on it) [4096]")
    s.add_argument("--threads", type=_positive_int, default=1,
                   help="torch threads (1 is fastest on a small shared machine) [1]")
    s.add_argument("--workers", type=_positive_int, default=1,
                   help="processes computing chunks in parallel (same output) [1]")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_simulate)

    b = sub.add_parser("bank", help="background and PSF banks from real survey data")
    bsub = b.add_subparsers(dest="bank_command", metavar="ACTION", parser_class=_Parser)
    bb = bsub.add_parser("build", help="build a bank file from a data directory",
                         description="Cut unit-rms background cutouts and PSFs from real frames.")
    bb.add_argument("--data", required=True, type=Path, help="data directory (e.g. ../shared/data)")
    bb.add_argument("--out", required=True, type=Path, help="output bank file")
    bb.add_argument("--pixel-scales", type=_positive_float, nargs="+", default=None,
                    metavar="ARCSEC", help="pixel scales to bank PSFs at [0.168 0.2 0.396]")
    bb.add_argument("--seed", type=_nonneg_int, default=0, help="random seed [0]")
    bb.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    bb.set_defaults(func=_cmd_bank_build)
    b.set_defaults(func=lambda a: _missing(b, "an action is required (build)"))

    pr = sub.add_parser("presets", help="list the survey presets and their values")
    pr.add_argument("names", nargs="*", metavar="NAME", help="presets to show [all]")
    pr.add_argument("--json", action="store_true", help="print the full configuration as JSON")
    pr.set_defaults(func=_cmd_presets)

    d = sub.add_parser("demo", help="simulate, predict and evaluate a small hsc-r set",
                       description="The whole chain on this machine with the shipped weights "
                                   "(no external data): simulate -> predict -> evaluate.")
    d.add_argument("--out-dir", type=Path, default=Path("galnet-demo"),
                   help="output directory [./galnet-demo]")
    d.add_argument("-n", "--n", type=_positive_int, default=2000, help="stamps [2000]")
    d.add_argument("--seed", type=_nonneg_int, default=0, help="random seed [0]")
    d.add_argument("--model", default=None, help="weights (safetensors) [shipped hsc-r model]")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train GaLNet on a simulated HDF5 file",
                       description="Adam + Huber training with resumable checkpoints "
                                   "(see galnet.nn.train; configs/hsc-r.toml).")
    t.add_argument("--config", type=Path, default=None, help="TOML training config")
    t.add_argument("--data", default=None, help="HDF5 file from galnet simulate [config's]")
    t.add_argument("--out-dir", default=None, help="checkpoints, log and weights [config's]")
    t.add_argument("--epochs", type=_positive_int, default=None, help="epochs [config's]")
    t.add_argument("--n-train", type=_positive_int, default=None, help="training stamps")
    t.add_argument("--n-val", type=_positive_int, default=None, help="validation stamps")
    t.add_argument("--batch", type=_positive_int, default=None, help="batch size")
    t.add_argument("--lr", type=_positive_float, default=None, help="peak learning rate")
    t.add_argument("--seed", type=_nonneg_int, default=None, help="random seed")
    t.add_argument("--device", default=None, help="cpu, cuda or auto [auto]")
    t.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    pd = sub.add_parser("predict", help="Sérsic parameters of stamps with GaLNet -> catalogue",
                        description="Run the network on FITS stamps (or cutouts of a frame) and "
                                    "write a catalogue with errors, chi2nu, snr and flags "
                                    "(see docs/predict.md).")
    _add_input_args(pd)
    pd.add_argument("--model", default=None, help="weights (safetensors) [shipped hsc-r model]")
    pd.add_argument("--out", required=True, help="output catalogue (.ecsv, .fits or .parquet)")
    pd.add_argument("--save-models", default=None, metavar="DIR",
                    help="write models.fits and residuals.fits cubes into DIR")
    pd.add_argument("--no-chi2", action="store_true",
                    help="skip rendering the models (chi2nu and snr become NaN; faster)")
    pd.add_argument("--refine", action="store_true",
                    help="refine the network's parameters with the forward-model fit "
                         "(the catalogue of galnet fit --init nn)")
    pd.add_argument("--device", default="cpu", help="cpu, cuda or auto [cpu]")
    pd.add_argument("--chunk", type=_positive_int, default=4096, help="stamps per chunk [4096]")
    pd.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    pd.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pd.set_defaults(func=_cmd_predict)

    ft = sub.add_parser("fit", help="forward-model fit of PSF-convolved Sérsic profiles",
                        description="Levenberg-Marquardt fit of stamps (or cutouts of a frame), "
                                    "batched, initialised by GaLNet; writes the catalogue of "
                                    "galnet predict plus niter and converged (see docs/fit.md).")
    _add_input_args(ft)
    ft.add_argument("--init", default="nn", metavar="nn|moments|CATALOG",
                    help="initial guesses: the network, image moments, or a catalogue [nn]")
    ft.add_argument("--sky", choices=("none", "flat"), default="none",
                    help="fit a flat sky too [none: the stamps are sky-subtracted]")
    ft.add_argument("--no-auto-mask", action="store_true",
                    help="do not mask neighbours (photutils detection + deblending)")
    ft.add_argument("--gain", type=_positive_float, default=None,
                    help="e-/image unit: add the source's Poisson noise to the weights when "
                         "there is no sigma map")
    ft.add_argument("--nn-prior", action="store_true",
                    help="MAP fit: the network's values and errors (x2) as a Gaussian prior on "
                         "re, n and the ellipticity (with --init nn)")
    ft.add_argument("--native", action="store_true",
                    help="fit each input image whole at its own pixels (no crop, no rebinning)")
    ft.add_argument("--scale-errors", action="store_true",
                    help="multiply the covariance errors by sqrt(chi2nu)")
    ft.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                    help="precision of the fit [float32; float64 renders ~2x slower]")
    ft.add_argument("--model", default=None, help="weights for --init nn [shipped hsc-r model]")
    ft.add_argument("--out", required=True, help="output catalogue (.ecsv, .fits or .parquet)")
    ft.add_argument("--device", default="cpu", help="cpu, cuda or auto [cpu]")
    ft.add_argument("--chunk", type=_positive_int, default=1024, help="stamps per chunk [1024]")
    ft.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    ft.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ft.set_defaults(func=_cmd_fit)

    ev = sub.add_parser("evaluate", help="compare predictions with the truth: metrics and plots",
                        description="R², NMAD, bias, outliers, calibration, by S/N and n "
                                    "(see docs/evaluate.md).")
    ev.add_argument("--pred", required=True, type=Path,
                    help="predicted catalogue (ECSV/FITS/Parquet)")
    ev.add_argument("--truth", required=True, type=Path,
                    help="truth catalogue, or an HDF5 file from galnet simulate")
    ev.add_argument("--out", required=True, type=Path, help="report directory (created)")
    ev.add_argument("--snr-bins", type=float, nargs="+", default=None, metavar="EDGE",
                    help="true-S/N bin edges [0 10 20 50 100 inf]")
    ev.add_argument("--n-bins", type=float, nargs="+", default=None, metavar="EDGE",
                    help="true-n bin edges [0.3 1 2 4 8]")
    ev.add_argument("--no-gallery", action="store_true", help="no residual gallery")
    ev.set_defaults(func=_cmd_evaluate)

    _add_translate(sub)

    ex = sub.add_parser("export", help="write GALFIT feedme or Imfit config files of a catalogue",
                        description="One GALFIT feedme (+ constraints) or Imfit configuration per "
                                    "catalogue row, started from its parameters, conventions "
                                    "converted exactly (see docs/export.md).")
    ex.add_argument("--to", required=True, choices=("galfit", "imfit"), help="target code")
    ex.add_argument("catalog", metavar="CATALOG", help="catalogue (ECSV/FITS/Parquet/CSV)")
    ex.add_argument("directory", metavar="DIR", type=Path, help="output folder (created)")
    ex.add_argument("--images", default=None,
                    help="stamps: FITS cube (plane k = row k; written into DIR), 2-D image, or a "
                         "file-name pattern with {id}/{index} [placeholder DIR/<id>.fits]")
    ex.add_argument("--psf", default=None, help="PSF: 2-D FITS image, cube, or pattern")
    ex.add_argument("--sigma", default=None, help="1-sigma map(s) [extension SIGMA of a cube]")
    ex.add_argument("--mask", default=None, help="mask(s), nonzero = ignored [extension MASK]")
    ex.add_argument("--zeropoint", type=_finite_float, default=None,
                    help="mag zeropoint [the catalogue's meta, else --preset's]")
    ex.add_argument("--pixel-scale", type=_positive_float, default=None,
                    help="arcsec/pixel [the catalogue's meta, else --preset's]")
    ex.add_argument("--preset", default=None, help="survey preset for missing zeropoint/scale")
    ex.add_argument("--box", type=_positive_int, default=None,
                    help="fitting-region side, px [whole stamp; max(61, 12 re_pix) in a frame]")
    ex.add_argument("--sky", action="store_true", help="add a free flat sky component")
    ex.set_defaults(func=_cmd_export)
    return p


def _missing(parser: argparse.ArgumentParser, message: str) -> int:
    raise _UsageError(message)


# ---- commands ----------------------------------------------------------------------------------
def _add_translate(sub) -> None:
    """``galnet translate simulate|train|apply|evaluate`` (docs/translation.md)."""
    from galnet.translate.losses import LOSSES  # light: no model code runs at import

    tr = sub.add_parser("translate", help="survey-to-survey image translation (SDSS -> CFHTLS)")
    tsub = tr.add_subparsers(dest="translate_command", metavar="ACTION", parser_class=_Parser)
    tr.set_defaults(func=lambda a: _missing(tr, "an action is required "
                                                "(simulate, train, apply, evaluate)"))

    s = tsub.add_parser("simulate", help="paired multi-band images of the same galaxies",
                        description="Bulge + disk + knots galaxies with CWW SEDs through real "
                                    "filter curves, seen by two domains (translation.toml).")
    s.add_argument("-n", "--n", type=_positive_int, required=True, help="number of galaxies")
    s.add_argument("--out", required=True, type=Path, help="output HDF5 file")
    s.add_argument("--source", default="sdss", help="source domain [sdss]")
    s.add_argument("--target", default="cfhtls", help="target domain [cfhtls]")
    s.add_argument("--seed", type=_nonneg_int, default=0, help="random seed [0]")
    s.add_argument("--chunk", type=_positive_int, default=128, help="galaxies per batch [128]")
    s.add_argument("--threads", type=_positive_int, default=None, help="torch threads")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_translate_simulate)

    t = tsub.add_parser("train", help="train a translator on a paired file",
                        description="U-Net translator trained with the pixel, gradient or "
                                    "gradient-flow loss (galnet.translate.train).")
    t.add_argument("--data", required=True, type=Path, help="paired HDF5 file (simulate)")
    t.add_argument("--out", required=True, type=Path, help="output weights (.safetensors)")
    t.add_argument("--loss", choices=LOSSES, default="gradient-flow", help="[gradient-flow]")
    t.add_argument("--conditioning", choices=("none", "zspec"), default="none", help="[none]")
    t.add_argument("--fraction", type=_fraction, default=1.0, help="share of the pairs [1]")
    t.add_argument("--steps", type=_positive_int, default=3000, help="optimizer steps [3000]")
    t.add_argument("--batch", type=_positive_int, default=16, help="pairs per step [16]")
    t.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate [1e-3]")
    t.add_argument("--width", type=_positive_int, default=24, help="U-Net base channels [24]")
    t.add_argument("--n-val", type=_positive_int, default=256, help="validation pairs [256]")
    t.add_argument("--val-every", type=_positive_int, default=250, help="[250]")
    t.add_argument("--seed", type=_nonneg_int, default=0, help="random seed [0]")
    t.add_argument("--device", default="cpu", help="torch device [cpu]")
    t.add_argument("--threads", type=_positive_int, default=None, help="torch threads")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_translate_train)

    ap = tsub.add_parser("apply", help="translate source stamps -> target-domain FITS cube",
                         description="Translate a FITS cube (N, C, S, S) of source stamps "
                                     "(nanomaggies) or a paired file's source images.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="FITS cube of source stamps")
    src.add_argument("--data", type=Path, help="paired HDF5 file: translate its source images")
    ap.add_argument("--out", required=True, type=Path, help="output FITS cube")
    ap.add_argument("--model", type=Path, default=None,
                    help="translator weights [the shipped SDSS -> CFHTLS model]")
    ap.add_argument("--zspec", type=float, nargs="+", default=None,
                    help="redshift(s) for a z_spec-conditioned model (one or one per stamp)")
    ap.add_argument("--device", default="cpu", help="torch device [cpu]")
    ap.set_defaults(func=_cmd_translate_apply)

    ev = tsub.add_parser("evaluate", help="photo-z, colour, structure and pixel probes",
                         description="Evaluate translations of a simulated test file against "
                                     "its true target images.")
    ev.add_argument("--data", required=True, type=Path, help="paired HDF5 test file")
    ev.add_argument("--pred", type=Path, default=None,
                    help="translated FITS cube (apply) [default: translate with --model]")
    ev.add_argument("--model", type=Path, default=None, help="translator [the shipped one]")
    ev.add_argument("--photoz", type=Path, default=None,
                    help="photo-z probe for target images [the shipped CFHTLS probe]")
    ev.add_argument("--structure-rows", type=_nonneg_int, default=200,
                    help="galaxies fitted by the structure probe [200]")
    ev.add_argument("--out", required=True, type=Path, help="output folder")
    ev.set_defaults(func=_cmd_translate_evaluate)


def _cmd_translate_simulate(a: argparse.Namespace) -> int:
    from galnet.translate.simulate import simulate_pairs

    t0 = time.perf_counter()
    out = simulate_pairs(a.out, a.n, source=a.source, target=a.target, seed=a.seed,
                         chunk=a.chunk, threads=a.threads, progress=not a.quiet)
    print(f"wrote {a.n} pairs ({a.source} -> {a.target}) to {out} in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def _cmd_translate_train(a: argparse.Namespace) -> int:
    from galnet.translate.simulate import read_pairs
    from galnet.translate.train import TranslatorTrainConfig, train_translator

    cfg = TranslatorTrainConfig(loss=a.loss, conditioning=a.conditioning, fraction=a.fraction,
                                steps=a.steps, batch=a.batch, lr=a.lr, width=a.width,
                                n_val=a.n_val, val_every=a.val_every, seed=a.seed,
                                device=a.device, threads=a.threads)
    s = train_translator(read_pairs(a.data), cfg, a.out, progress=not a.quiet)
    print(f"wrote {a.out}: {s['steps']} steps on {s['n_train']} pairs, best validation loss "
          f"{s['best_val_loss']:.4g} (step {s['best_step']}), {s['wall_s']:.0f} s")
    return 0


def _cmd_translate_apply(a: argparse.Namespace) -> int:
    from galnet.translate.apply import translate_file

    zspec = None if a.zspec is None else (a.zspec[0] if len(a.zspec) == 1 else a.zspec)
    out = translate_file(a.out, images=a.images, pairs=a.data, model=a.model, zspec=zspec,
                         device=a.device)
    print(f"wrote {out}")
    return 0


def _cmd_translate_evaluate(a: argparse.Namespace) -> int:
    from galnet.translate.apply import evaluate_file

    rec = evaluate_file(a.out, pairs=a.data, pred=a.pred, model=a.model, photoz=a.photoz,
                        structure_rows=a.structure_rows)
    for name, r in rec.items():
        print(f"{name:>10}: photo-z sigma_MAD {r['sigma_mad']:.4f} outliers {r['outlier']:.3f}"
              f"  colour err {r['colour_err']:.3f} mag  d_re {r['d_re']:.3f}  d_n {r['d_n']:.3f}")
    print(f"wrote {a.out / 'metrics.json'}")
    return 0


def _cmd_simulate(a: argparse.Namespace) -> int:
    from galnet.sim.simulate import simulate

    t0 = time.perf_counter()
    out = simulate(a.preset, a.n, a.seed, a.out, bank=a.bank, snr_min=a.snr_min, chunk=a.chunk,
                   progress=not a.quiet, bank_psf_fraction=a.bank_psf_fraction,
                   threads=a.threads, workers=a.workers)
    dt = time.perf_counter() - t0
    print(f"wrote {a.n} stamps to {out} in {dt:.1f} s ({a.n / dt:.0f} stamps/s)")
    return 0


def _cmd_bank_build(a: argparse.Namespace) -> int:
    from galnet.sim.simulate import check_output_path

    if not a.data.is_dir():
        raise GalnetFileError(f"data directory {str(a.data)!r} does not exist")
    check_output_path(a.out)
    try:
        from galnet.sim.bank import build_bank
    except ImportError as err:  # pragma: no cover - until galnet.sim.bank exists
        raise GalnetError(f"bank building is not available: {err}") from err
    kw = {} if a.pixel_scales is None else {"pixel_scales": tuple(a.pixel_scales)}
    out = build_bank(a.data, a.out, seed=a.seed, progress=not a.quiet, **kw)
    print(f"wrote bank {out}")
    return 0


def _cmd_presets(a: argparse.Namespace) -> int:
    from galnet.presets import default_preset_name, get_preset, list_presets

    names = a.names or list_presets()
    presets = [get_preset(n) for n in names]
    if a.json:
        print(json.dumps({p.name: json.loads(p.to_json()) for p in presets}, indent=2))
        return 0
    default = default_preset_name()
    for p in presets:
        print(f"{p.name}{' (default)' if p.name == default else ''}: {p.description}")
        rows = [
            ("pixel_scale", f"{p.pixel_scale:g} arcsec/px"),
            ("zeropoint", f"{p.zeropoint:g} (AB mag of 1 image unit)"),
            ("stamp / psf_size", f"{p.stamp} / {p.psf_size} px"),
            ("sky_rms", f"{p.sky_rms:.4g} image units/px"),
            ("depth_5sigma", f"{p.depth_5sigma:g} mag at {p.depth_seeing:g}\" seeing "
                             f"(sky_rms implies {float(p.depth()):.2f})"),
            ("gain", f"{p.gain:.4g} e-/image unit"),
            ("seeing FWHM", f"{p.seeing.describe()} arcsec"),
            ("PSF", f"Moffat beta in {list(p.psf.moffat_beta)}, Kolmogorov "
                    f"{p.psf.kolmogorov_fraction:g}, |g| <= {p.psf.max_shear:g}, "
                    f"bank share {p.psf.bank_fraction:g}"),
        ]
        rows += [(f"prior {k}", v.describe()) for k, v in p.priors.items()]
        rows.append(("containment", f">= {p.containment:g} of the light within "
                                    f"{p.containment_radius:g} px of the centre"))
        bg = p.background
        rows.append(("synthetic bg", f"noise corr {bg.noise_correlation:g}, neighbours "
                                     f"{bg.neighbours:g} (mag {list(bg.neighbour_mag)}), stars "
                                     f"{bg.stars:g} (mag {list(bg.star_mag)})"))
        for k, v in rows:
            print(f"  {k:<18} {v}")
        print()
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from galnet.demo import run_demo

    run_demo(a.out_dir, n=a.n, seed=a.seed, progress=not a.quiet, model=a.model)
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    from galnet.nn.train import load_config, train

    cfg = load_config(a.config, data=a.data, out_dir=a.out_dir, epochs=a.epochs,
                      n_train=a.n_train, n_val=a.n_val, batch=a.batch, lr=a.lr, seed=a.seed,
                      device=a.device, threads=a.threads)
    if not cfg.data:
        raise _UsageError("no training data: give --data or `data` in the config")
    out = train(cfg, resume=not a.restart, progress=not a.quiet)
    print(f"wrote {out}")
    return 0


def _inputs(a: argparse.Namespace) -> dict:
    """The input options shared by predict and fit, checked, as keyword arguments."""
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    if (a.images is None) == (a.frame is None):
        raise _UsageError("give either --images or --frame (with --positions)")
    if a.frame is not None and a.positions is None:
        raise _UsageError("--frame needs --positions")
    return dict(images=a.images, psf=a.psf, sigma=a.sigma, ivar=a.ivar, mask=a.mask,
                frame=a.frame, positions=a.positions, psf_positions=a.psf_positions,
                pixel_scale=a.pixel_scale, zeropoint=a.zeropoint, preset=a.preset,
                model=a.model, device=a.device, chunk=a.chunk, progress=not a.quiet)


def _cmd_predict(a: argparse.Namespace) -> int:
    from galnet.nn.predict import predict_files

    kw = _inputs(a)
    t0 = time.perf_counter()
    if a.refine:
        from galnet.fitting.fitter import fit_files

        if a.save_models or a.no_chi2:
            raise _UsageError("--refine does not combine with --save-models or --no-chi2")
        t = fit_files(a.out, init="nn", **kw)
    else:
        t = predict_files(a.out, chi2=not a.no_chi2, save_models=a.save_models, **kw)
    _report(t, a.out, time.perf_counter() - t0)
    return 0


def _report(t, out, dt: float) -> None:
    n_flag = int((t["flags"] != 0).sum())
    extra = ""
    if "converged" in t.colnames:
        extra = f", {len(t) - int(sum(bool(c) for c in t['converged']))} not converged"
    print(f"wrote {len(t)} galaxies to {out} in {dt:.1f} s ({len(t) / dt:.1f} galaxies/s); "
          f"{n_flag} flagged{extra}")


def _cmd_fit(a: argparse.Namespace) -> int:
    from galnet.fitting.fitter import FitConfig, fit_files

    kw = _inputs(a)
    cfg = FitConfig(scale_errors=a.scale_errors, dtype=a.dtype)
    t0 = time.perf_counter()
    t = fit_files(a.out, init=a.init, sky=a.sky, auto_mask_neighbours=not a.no_auto_mask,
                  gain=a.gain, config=cfg, native=a.native, nn_prior=a.nn_prior, **kw)
    _report(t, a.out, time.perf_counter() - t0)
    return 0


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from galnet.evaluate.metrics import evaluate

    kw = {}
    if a.snr_bins:
        kw["snr_bins"] = a.snr_bins
    if a.n_bins:
        kw["n_bins"] = a.n_bins
    m = evaluate(a.pred, a.truth, a.out, gallery=False if a.no_gallery else None, **kw)
    print(f"galnet evaluate: {m['n_evaluated']} rows evaluated (matched by {m['matched_by']}), "
          f"{m['n_failed']} failed")
    for t in m["targets"]:
        v = t["overall"]["value"]
        mark = {True: "ok", False: "MISSED", None: "-"}[t["overall"]["pass"]]
        val = "-" if v is None or v != v else f"{v:.4f}"
        print(f"  {t['param']:<7} {t['metric']:<18} {t['target']:<11} {val}  {mark}")
    print(f"  report: {(a.out / 'report.md').resolve()}")
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from galnet.interop.export import FORMATS, export_catalog

    res = export_catalog(a.catalog, a.directory, a.to, psf=a.psf, images=a.images,
                         sigma=a.sigma, mask=a.mask, zeropoint=a.zeropoint,
                         pixel_scale=a.pixel_scale, preset=a.preset, box=a.box, sky=a.sky)
    n = sum(f.name.endswith(FORMATS[a.to]) for f in res.files)
    skipped = f"; {len(res.skipped)} rows skipped (invalid parameters or centre off the image)" \
        if res.skipped else ""
    print(f"wrote {n} {a.to} configurations to {a.directory} ({len(res.files)} files in all)"
          f"{skipped}")
    return 0


# ---- entry point -------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            raise _UsageError("a command is required (simulate, bank, presets, train, predict, "
                              "fit, evaluate, export, translate, demo); see galnet --help")
        return int(args.func(args))
    except (_UsageError, GalnetError) as err:
        msg = " ".join(str(err).split())  # one line
        print(f"galnet: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as err:  # --help / --version
        return err.code if isinstance(err.code, int) else 0
    except KeyboardInterrupt:
        print("galnet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
