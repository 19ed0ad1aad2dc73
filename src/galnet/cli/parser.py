"""The ``galnet`` argument parser: one subcommand per step (see :mod:`galnet.cli`).

Options only: every value is checked here (argument types of :mod:`galnet.cli.options`) or by the
command before any work (:mod:`galnet.cli.commands`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from galnet import __version__
from galnet.cli import commands as c
from galnet.cli.options import (
    Parser,
    UsageError,
    finite_float,
    fraction,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_fraction,
    positive_int,
    zeropoint,
)
from galnet.runner import DEVICE_HELP

__all__ = ["build_parser"]


def _common() -> argparse.ArgumentParser:
    """-v/--verbose and -q/--quiet, shared by every subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="log what happens (-v: steps, -vv: debug details)")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no warnings, errors only")
    return p


def _overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs [refuse them]")


def _missing(message: str):
    def fail(a: argparse.Namespace) -> int:
        raise UsageError(message)
    return fail


def _add_input_args(p: argparse.ArgumentParser) -> None:
    """The input options shared by predict and fit (stamps or a frame, PSF, noise, photometry)."""
    p.add_argument("--images", default=None,
                   help="FITS cube (N,H,W) or 2-D stamp; SIGMA/IVAR/MASK extensions are used")
    p.add_argument("--frame", default=None,
                   help="large FITS image (FILE or FILE[HDU]) with --detect or --positions: "
                        "the frame pipeline (docs/predict.md, Frames)")
    p.add_argument("--positions", default=None,
                   help="with --frame: catalogue with x,y (0-based pixels) or ra,dec (deg) "
                        "columns")
    p.add_argument("--detect", action="store_true",
                   help="with --frame: detect and deblend the sources (photutils)")
    p.add_argument("--weight", default=None,
                   help="with --frame: inverse-variance (weight) map of the frame")
    p.add_argument("--variance", default=None, help="with --frame: variance map of the frame")
    p.add_argument("--frame-mask", default=None,
                   help="with --frame: mask of the frame, nonzero = unusable")
    p.add_argument("--snr-min", type=nonneg_float, default=5.0,
                   help="with --frame: sources detected below this S/N are masked, not "
                        "modelled [5]")
    p.add_argument("--psf", required=True,
                   help="PSF: FITS image (h,w), cube (N,h,w) or PSFEx model")
    p.add_argument("--psf-positions", default=None, metavar="CAT",
                   help="x,y frame positions (0-based) of the stamps, for a PSFEx --psf")
    p.add_argument("--sigma", default=None, help="1-sigma noise map(s) [extension SIGMA]")
    p.add_argument("--ivar", default=None, help="inverse-variance map(s) [extension IVAR]")
    p.add_argument("--mask", default=None, help="mask(s), nonzero = ignored [extension MASK]")
    p.add_argument("--pixel-scale", type=positive_float, default=None,
                   help="arcsec/pixel [header PIXSCALE/WCS, else the preset's]")
    p.add_argument("--zeropoint", type=zeropoint, default=None,
                   help="AB mag of one image unit, in [-50, 50] [header MAGZERO/ZP..., else the "
                        "preset's]")
    p.add_argument("--preset", default="hsc-r", help="survey preset for defaults [hsc-r]")
    p.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} [cpu]")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--save-models", default=None, metavar="FILE.fits|DIR",
                   help="write data, model, residual and mask of every stamp: one "
                        "multi-extension FITS (DATA, MODEL, RESIDUAL, MASK, SIGMA, OBJECTS: ids, "
                        "cutout origins, WCS) FILE.fits or DIR/models.fits; see galnet plot")
    _overwrite(p)


def build_parser() -> argparse.ArgumentParser:
    """The ``galnet`` argument parser (one subcommand per step; see :mod:`galnet.cli`)."""
    p = Parser(prog="galnet", description="Single-Sérsic structure of galaxies at survey scale.")
    p.add_argument("--version", action="version", version=f"galnet {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    common = [_common()]

    s = sub.add_parser("simulate", parents=common, help="simulate survey stamps into an HDF5 file",
                       description="Simulate Sérsic galaxies with PSFs, backgrounds and noise "
                                   "(see galnet.sim.simulate).")
    s.add_argument("--preset", default=None, help="survey preset (see `galnet presets`) "
                                                  "[default: the default preset]")
    s.add_argument("-n", "--n", type=positive_int, required=True, help="number of stamps")
    s.add_argument("--seed", type=nonneg_int, default=0, help="random seed [0]")
    s.add_argument("--out", required=True, type=Path, help="output HDF5 file")
    s.add_argument("--bank", type=Path, default=None,
                   help="background/PSF bank (galnet bank build) [default: synthetic]")
    s.add_argument("--snr-min", type=nonneg_float, default=None,
                   help="redraw galaxies with optimal S/N below this")
    s.add_argument("--bank-psf-fraction", type=fraction, default=None,
                   help="share of real PSFs with --bank [default: the preset's]")
    s.add_argument("--chunk", type=positive_int, default=4096,
                   help="stamps per batch (memory only; results do not depend on it) [4096]")
    s.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (1 is fastest on a small shared machine) [1]")
    s.add_argument("--workers", type=positive_int, default=1,
                   help="processes computing chunks in parallel (same output) [1]")
    _overwrite(s)
    s.set_defaults(func=c.cmd_simulate)

    b = sub.add_parser("bank", help="background and PSF banks from real survey data")
    bsub = b.add_subparsers(dest="bank_command", metavar="ACTION", parser_class=Parser)
    bb = bsub.add_parser("build", parents=common, help="build a bank file from a data directory",
                         description="Cut unit-rms background cutouts and PSFs from real frames.")
    bb.add_argument("--data", required=True, type=Path, help="data directory (e.g. ../shared/data)")
    bb.add_argument("--out", required=True, type=Path, help="output bank file")
    bb.add_argument("--pixel-scales", type=positive_float, nargs="+", default=None,
                    metavar="ARCSEC", help="pixel scales to bank PSFs at [0.168 0.2 0.396]")
    bb.add_argument("--seed", type=nonneg_int, default=0, help="random seed [0]")
    _overwrite(bb)
    bb.set_defaults(func=c.cmd_bank_build)
    b.set_defaults(func=_missing("an action is required (build)"))

    pr = sub.add_parser("presets", parents=common, help="list the survey presets and their values")
    pr.add_argument("names", nargs="*", metavar="NAME", help="presets to show [all]")
    pr.add_argument("--json", action="store_true", help="print the full configuration as JSON")
    pr.set_defaults(func=c.cmd_presets)

    d = sub.add_parser("demo", parents=common,
                       help="simulate, predict and evaluate a small hsc-r set",
                       description="The whole chain on this machine with the shipped weights "
                                   "(no external data): simulate -> predict -> evaluate. The "
                                   "files of an earlier demo in --out-dir are replaced.")
    d.add_argument("--out-dir", type=Path, default=Path("galnet-demo"),
                   help="output directory [./galnet-demo]")
    d.add_argument("-n", "--n", type=positive_int, default=2000, help="stamps [2000]")
    d.add_argument("--seed", type=nonneg_int, default=0, help="random seed [0]")
    d.add_argument("--model", default=None, help="weights (safetensors) [shipped hsc-r model]")
    d.set_defaults(func=c.cmd_demo)

    t = sub.add_parser("train", parents=common, help="train GaLNet on a simulated HDF5 file",
                       description="Adam + Huber training with resumable checkpoints "
                                   "(see galnet.nn.train; configs/hsc-r.toml). An existing "
                                   "checkpoint in --out-dir is resumed unless --restart.")
    t.add_argument("--config", type=Path, default=None, help="TOML training config")
    t.add_argument("--data", default=None, help="HDF5 file from galnet simulate [config's]")
    t.add_argument("--out-dir", default=None, help="checkpoints, log and weights [config's]")
    t.add_argument("--epochs", type=positive_int, default=None, help="epochs [config's]")
    t.add_argument("--n-train", type=positive_int, default=None, help="training stamps")
    t.add_argument("--n-val", type=positive_int, default=None, help="validation stamps")
    t.add_argument("--batch", type=positive_int, default=None, help="batch size")
    t.add_argument("--lr", type=positive_float, default=None, help="peak learning rate")
    t.add_argument("--seed", type=nonneg_int, default=None, help="random seed")
    t.add_argument("--device", default=None, help=f"{DEVICE_HELP} [config's, else auto]")
    t.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    t.add_argument("--restart", action="store_true",
                   help="start afresh: ignore an existing checkpoint, start a new log")
    t.set_defaults(func=c.cmd_train)

    pd = sub.add_parser("predict", parents=common,
                        help="Sérsic parameters of stamps with GaLNet -> catalogue",
                        description="Run the network on FITS stamps (or cutouts of a frame) and "
                                    "write a catalogue with errors, chi2nu, snr and flags "
                                    "(see docs/predict.md).")
    _add_input_args(pd)
    pd.add_argument("--model", default=None, help="weights (safetensors) [shipped hsc-r model]")
    pd.add_argument("--out", required=True, help="output catalogue (.ecsv, .fits or .parquet)")
    pd.add_argument("--no-chi2", action="store_true",
                    help="skip rendering the models (chi2nu and snr become NaN; faster)")
    pd.add_argument("--refine", action="store_true",
                    help="refine the network's parameters with the forward-model fit "
                         "(the catalogue of galnet fit --init nn)")
    pd.add_argument("--no-point-test", action="store_true",
                    help="stamps: skip the point-source test (no POINT_SOURCE / UNRESOLVED, "
                         "psf_mag NaN; the misfit statistics stay)")
    pd.add_argument("--gain", type=positive_float, default=None,
                    help="with --frame: e-/image unit; adds the sources' Poisson noise to the "
                         "frame's sky noise for the fits, chi2nu and MISFIT [default: header "
                         "GAIN if consistent with the sky, else sky/variance, else none]")
    pd.add_argument("--chunk", type=positive_int, default=4096, help="stamps per chunk [4096]")
    pd.set_defaults(func=c.cmd_predict)

    ft = sub.add_parser("fit", parents=common,
                        help="forward-model fit of PSF-convolved Sérsic profiles",
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
    ft.add_argument("--gain", type=positive_float, default=None,
                    help="e-/image unit: add the source's Poisson noise to the weights when "
                         "there is no sigma map; with --frame: added to the frame noise")
    ft.add_argument("--nn-prior", action="store_true",
                    help="MAP fit: the network's values and errors as a Gaussian prior on "
                         "re, n, the ellipticity and the centre (with --init nn; the default)")
    ft.add_argument("--no-prior", action="store_true",
                    help="no network prior (a plain least-squares fit from the network's start)")
    ft.add_argument("--no-point-test", action="store_true",
                    help="stamps: skip the point-source test (no POINT_SOURCE / UNRESOLVED, "
                         "psf_mag NaN; the misfit statistics stay)")
    ft.add_argument("--native", action="store_true",
                    help="fit each input image whole at its own pixels (no crop, no rebinning) "
                         "[the default when the inputs are larger than the stamp]")
    ft.add_argument("--scale-errors", action="store_true",
                    help="multiply the covariance errors by sqrt(chi2nu)")
    ft.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                    help="precision of the fit [float32; float64 renders ~2x slower]")
    ft.add_argument("--model", default=None, help="weights for --init nn [shipped hsc-r model]")
    ft.add_argument("--out", required=True, help="output catalogue (.ecsv, .fits or .parquet)")
    ft.add_argument("--chunk", type=positive_int, default=1024, help="stamps per chunk [1024]")
    ft.set_defaults(func=c.cmd_fit)

    ev = sub.add_parser("evaluate", parents=common,
                        help="compare predictions with the truth: metrics and plots",
                        description="R², NMAD, bias, outliers, calibration, by S/N and n "
                                    "(see docs/evaluate.md).")
    ev.add_argument("--pred", required=True, type=Path,
                    help="predicted catalogue (ECSV/FITS/Parquet)")
    ev.add_argument("--truth", required=True, type=Path,
                    help="truth catalogue, or an HDF5 file from galnet simulate")
    ev.add_argument("--out", required=True, type=Path, help="report directory (created)")
    ev.add_argument("--snr-bins", type=finite_or_inf, nargs="+", default=None, metavar="EDGE",
                    help="true-S/N bin edges [0 10 20 50 100 inf]")
    ev.add_argument("--n-bins", type=finite_or_inf, nargs="+", default=None, metavar="EDGE",
                    help="true-n bin edges [0.3 1 2 4 8]")
    ev.add_argument("--no-gallery", action="store_true", help="no residual gallery")
    _overwrite(ev)
    ev.set_defaults(func=c.cmd_evaluate)

    _add_translate(sub, common)

    ex = sub.add_parser("export", parents=common,
                        help="write GALFIT feedme or Imfit config files of a catalogue",
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
    ex.add_argument("--zeropoint", type=zeropoint, default=None,
                    help="mag zeropoint [the catalogue's meta, else --preset's]")
    ex.add_argument("--pixel-scale", type=positive_float, default=None,
                    help="arcsec/pixel [the catalogue's meta, else --preset's]")
    ex.add_argument("--preset", default=None, help="survey preset for missing zeropoint/scale")
    ex.add_argument("--box", type=positive_int, default=None,
                    help="fitting-region side, px [whole stamp; max(61, 12 re_pix) in a frame]")
    ex.add_argument("--sky", action="store_true", help="add a free flat sky component")
    _overwrite(ex)
    ex.set_defaults(func=c.cmd_export)

    pl = sub.add_parser("plot", parents=common,
                        help="data | model | residual | mask rows of fitted objects",
                        description="One row per object of a --save-models file: data, model, "
                                    "residual (in sigma) and mask, with the catalogue's "
                                    "parameters and flags (see docs/plot.md).")
    pl.add_argument("catalog", metavar="CATALOG", help="catalogue of the run (ECSV/FITS/Parquet)")
    pl.add_argument("models", metavar="MODELS", help="models file of the run (--save-models)")
    pl.add_argument("--ids", nargs="+", default=None, metavar="ID", help="objects to show")
    pl.add_argument("--worst", type=positive_int, default=None, metavar="N",
                    help="the N objects with the largest chi2nu (of --ids, if given)")
    pl.add_argument("--out", required=True, type=Path, help="figure (.png, .pdf or .svg)")
    _overwrite(pl)
    pl.set_defaults(func=c.cmd_plot)
    return p


def finite_or_inf(s: str) -> float:
    """A bin edge: a number or +inf (not NaN)."""
    if s.strip().lower() in ("inf", "+inf", "infinity"):
        return float("inf")
    return finite_float(s)


def _add_translate(sub, common: list) -> None:
    """``galnet translate simulate|train|apply|evaluate`` (docs/translation.md)."""
    tr = sub.add_parser("translate", help="survey-to-survey image translation (SDSS -> CFHTLS)")
    tsub = tr.add_subparsers(dest="translate_command", metavar="ACTION", parser_class=Parser)
    tr.set_defaults(func=_missing("an action is required (simulate, train, apply, evaluate)"))

    s = tsub.add_parser("simulate", parents=common,
                        help="paired multi-band images of the same galaxies",
                        description="Bulge + disk + knots galaxies with CWW SEDs through real "
                                    "filter curves, seen by two domains (translation.toml).")
    s.add_argument("-n", "--n", type=positive_int, required=True, help="number of galaxies")
    s.add_argument("--out", required=True, type=Path, help="output HDF5 file")
    s.add_argument("--source", default="sdss", help="source domain [sdss]")
    s.add_argument("--target", default="cfhtls", help="target domain [cfhtls]")
    s.add_argument("--seed", type=nonneg_int, default=0, help="random seed [0]")
    s.add_argument("--chunk", type=positive_int, default=128, help="galaxies per batch [128]")
    s.add_argument("--threads", type=positive_int, default=None, help="torch threads")
    _overwrite(s)
    s.set_defaults(func=c.cmd_translate_simulate)

    t = tsub.add_parser("train", parents=common, help="train a translator on a paired file",
                        description="U-Net translator trained with the pixel, gradient or "
                                    "gradient-flow loss (galnet.translate.train).")
    t.add_argument("--data", required=True, type=Path, help="paired HDF5 file (simulate)")
    t.add_argument("--out", required=True, type=Path, help="output weights (.safetensors)")
    t.add_argument("--loss", default="gradient-flow",
                   help="pixel, gradient or gradient-flow (galnet.translate.losses.LOSSES) "
                        "[gradient-flow]")
    t.add_argument("--conditioning", choices=("none", "zspec"), default="none", help="[none]")
    t.add_argument("--fraction", type=positive_fraction, default=1.0,
                   help="share of the pairs, in (0, 1] [1]")
    t.add_argument("--steps", type=positive_int, default=3000, help="optimizer steps [3000]")
    t.add_argument("--batch", type=positive_int, default=16, help="pairs per step [16]")
    t.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate [1e-3]")
    t.add_argument("--width", type=positive_int, default=24, help="U-Net base channels [24]")
    t.add_argument("--n-val", type=positive_int, default=256, help="validation pairs [256]")
    t.add_argument("--val-every", type=positive_int, default=250, help="[250]")
    t.add_argument("--seed", type=nonneg_int, default=0, help="random seed [0]")
    t.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} [cpu]")
    t.add_argument("--threads", type=positive_int, default=None, help="torch threads")
    _overwrite(t)
    t.set_defaults(func=c.cmd_translate_train)

    ap = tsub.add_parser("apply", parents=common,
                         help="translate source stamps -> target-domain FITS cube",
                         description="Translate a FITS cube (N, C, S, S) of source stamps "
                                     "(nanomaggies) or a paired file's source images.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="FITS cube of source stamps")
    src.add_argument("--data", type=Path, help="paired HDF5 file: translate its source images")
    ap.add_argument("--out", required=True, type=Path, help="output FITS cube")
    ap.add_argument("--model", type=Path, default=None,
                    help="translator weights [the shipped SDSS -> CFHTLS model]")
    ap.add_argument("--zspec", type=nonneg_float, nargs="+", default=None,
                    help="redshift(s) for a z_spec-conditioned model (one or one per stamp)")
    ap.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} [cpu]")
    _overwrite(ap)
    ap.set_defaults(func=c.cmd_translate_apply)

    ev = tsub.add_parser("evaluate", parents=common,
                         help="photo-z, colour, structure and pixel probes",
                         description="Evaluate translations of a simulated test file against "
                                     "its true target images.")
    ev.add_argument("--data", required=True, type=Path, help="paired HDF5 test file")
    ev.add_argument("--pred", type=Path, default=None,
                    help="translated FITS cube (apply) [default: translate with --model]")
    ev.add_argument("--model", type=Path, default=None, help="translator [the shipped one]")
    ev.add_argument("--photoz", type=Path, default=None,
                    help="photo-z probe for target images [the shipped CFHTLS probe]")
    ev.add_argument("--structure-rows", type=nonneg_int, default=200,
                    help="galaxies fitted by the structure probe [200]")
    ev.add_argument("--out", required=True, type=Path, help="output folder")
    _overwrite(ev)
    ev.set_defaults(func=c.cmd_translate_evaluate)
