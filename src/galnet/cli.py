"""The ``galnet`` command line (also ``python -m galnet``): a thin layer over importable functions.

Commands::

    galnet simulate --preset hsc-r -n 200000 --seed 1 --out train.h5 [--bank BANK] [--snr-min X]
    galnet bank build --data DIR --out BANK [--pixel-scales 0.168 0.2 0.396]
    galnet presets [NAME ...] [--json]
    galnet demo [--out-dir galnet-demo] [-n 2000]

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

__all__ = ["main", "build_parser", "run_demo", "save_gallery"]

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
def build_parser() -> argparse.ArgumentParser:
    """The ``galnet`` argument parser (subcommands simulate, bank build, presets, demo)."""
    p = _Parser(prog="galnet", description="Single-Sérsic structure of galaxies at survey scale.")
    p.add_argument("--version", action="version", version=f"galnet {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("simulate", help="simulate survey stamps into an HDF5 file",
                       description="Simulate Sérsic galaxies with PSFs, backgrounds and noise "
                                   "(see galnet.simulate).")
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

    d = sub.add_parser("demo", help="simulate a small hsc-r set, save a gallery and a summary",
                       description="A quick end-to-end run on this machine (no external data).")
    d.add_argument("--out-dir", type=Path, default=Path("galnet-demo"),
                   help="output directory [./galnet-demo]")
    d.add_argument("-n", "--n", type=_positive_int, default=2000, help="stamps [2000]")
    d.add_argument("--seed", type=_nonneg_int, default=0, help="random seed [0]")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_demo)
    return p


def _missing(parser: argparse.ArgumentParser, message: str) -> int:
    raise _UsageError(message)


# ---- commands ----------------------------------------------------------------------------------
def _cmd_simulate(a: argparse.Namespace) -> int:
    from galnet.simulate import simulate

    t0 = time.perf_counter()
    out = simulate(a.preset, a.n, a.seed, a.out, bank=a.bank, snr_min=a.snr_min, chunk=a.chunk,
                   progress=not a.quiet, bank_psf_fraction=a.bank_psf_fraction,
                   threads=a.threads, workers=a.workers)
    dt = time.perf_counter() - t0
    print(f"wrote {a.n} stamps to {out} in {dt:.1f} s ({a.n / dt:.0f} stamps/s)")
    return 0


def _cmd_bank_build(a: argparse.Namespace) -> int:
    from galnet.simulate import check_output_path

    if not a.data.is_dir():
        raise GalnetFileError(f"data directory {str(a.data)!r} does not exist")
    check_output_path(a.out)
    try:
        from galnet.bank import build_bank
    except ImportError as err:  # pragma: no cover - until galnet.bank exists
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
    run_demo(a.out_dir, n=a.n, seed=a.seed, progress=not a.quiet)
    return 0


# ---- demo --------------------------------------------------------------------------------------
def save_gallery(h5_path: str | Path, png_path: str | Path, n: int = 25, title: str = "") -> Path:
    """Save a square grid of the first ``n`` stamps of a simulated file (asinh stretch, with each
    galaxy's parameters) as a PNG."""
    import h5py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from galnet.simulate import read_params

    t = read_params(h5_path)
    with h5py.File(h5_path, "r") as f:
        k = min(n, len(t))
        images = f["images"][:k]
        sigma = f["sigma"][:k]
    side = math.ceil(math.sqrt(k))
    fig, axes = plt.subplots(side, side, figsize=(2.4 * side, 2.6 * side), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= k:
            continue
        sky = float(np.min(sigma[i]))  # the sky-only sigma of the stamp
        img = np.arcsinh(images[i] / (3.0 * sky))
        lo, hi = np.percentile(img, [1.0, 99.8])
        ax.imshow(img, origin="lower", cmap="gray_r", vmin=lo, vmax=max(hi, lo + 1e-6),
                  interpolation="nearest")
        r = t[i]
        ax.set_title(f"m={float(r['mag'].value):.1f} re={float(r['re_arcsec'].value):.2f}\" "
                     f"n={float(r['n']):.2f}\nq={float(r['q']):.2f} "
                     f"pa={float(r['pa_deg'].value):.0f} S/N={float(r['snr']):.0f}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97) if title else None)
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return png_path


def run_demo(out_dir: str | Path = "galnet-demo", n: int = 2000, seed: int = 0,
             progress: bool = True, preset: str = "hsc-r") -> dict[str, Path]:
    """Simulate ``n`` stamps (synthetic backgrounds) into ``out_dir/demo.h5``, save
    ``out_dir/gallery.png`` (25 stamps) and print a summary. Returns the paths written."""
    import numpy as np

    from galnet.simulate import read_params, simulate

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GalnetFileError(f"cannot create {str(out_dir)!r}: {err.strerror or err}") from err
    h5 = out_dir / "demo.h5"
    t0 = time.perf_counter()
    simulate(preset, n, seed, h5, progress=progress)
    dt = time.perf_counter() - t0
    png = save_gallery(h5, out_dir / "gallery.png",
                       title=f"galnet demo: {preset}, seed {seed} (asinh stretch)")
    t = read_params(h5)
    print(f"\ngalnet demo: {n} {preset} stamps (synthetic backgrounds) in {dt:.1f} s "
          f"({n / dt:.0f} stamps/s)\n")
    print(f"  {'column':<10} {'min':>10} {'median':>10} {'max':>10}  unit")
    for k in ("mag", "re_arcsec", "re_pix", "n", "q", "pa_deg", "psf_fwhm", "snr"):
        v = np.asarray(getattr(t[k], "value", t[k]), dtype=float)
        unit = str(getattr(t[k], "unit", "") or "")
        print(f"  {k:<10} {v.min():>10.3g} {np.median(v):>10.3g} {v.max():>10.3g}  {unit}")
    q = np.percentile(np.asarray(t["snr"], dtype=float), [5, 25, 50, 75, 95])
    print("\n  S/N quantiles 5/25/50/75/95%: " + " ".join(f"{x:.0f}" for x in q))
    src = np.asarray(t["psf_source"])
    kinds = ", ".join(f"{s} {np.mean(src == s):.0%}" for s in sorted(set(src)))
    print(f"  PSFs: {kinds}")
    print(f"\n  stamps:  {h5.resolve()}\n  gallery: {png.resolve()}")
    return {"h5": h5, "gallery": png}


# ---- entry point -------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            raise _UsageError("a command is required (simulate, bank, presets, demo); "
                              "see galnet --help")
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
