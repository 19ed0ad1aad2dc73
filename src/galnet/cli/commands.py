"""The ``galnet`` subcommands: check the options and the outputs, call the library, report.

Each ``cmd_*`` takes the parsed :class:`argparse.Namespace` and returns the exit status (0).
Options are checked before any work: incompatible options raise
:class:`~galnet.cli.options.UsageError`; outputs that cannot be written (or exist, without
``--overwrite``) raise :class:`~galnet.errors.GalnetFileError`. No science happens here.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from galnet.cli.options import (
    UsageError,
    check_device,
    check_output,
    check_output_dir,
)
from galnet.errors import GalnetFileError

log = logging.getLogger("galnet")

#: The file that ``--save-models DIR`` writes into DIR (one multi-extension FITS).
MODELS_FILE = "models.fits"


# ---- helpers ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _outputs(files: tuple = (), dirs: tuple = (), empty_dirs: tuple = ()) -> Iterator[None]:
    """On failure (or Ctrl-C), remove the outputs that this run created: ``files`` that did not
    exist before, ``dirs`` that did not exist before (with what was written into them), and
    ``empty_dirs`` that did not exist before if nothing was written into them (a training folder
    keeps its checkpoint for a resume)."""
    def new(paths: tuple) -> list[Path]:
        return [Path(p) for p in paths if p is not None and not Path(p).exists()]

    new_files, new_dirs, new_empty = new(files), new(dirs), new(empty_dirs)
    try:
        yield
    except BaseException:
        for f in new_files:
            with contextlib.suppress(OSError):
                if f.is_file():
                    f.unlink()
        for d in new_dirs:
            shutil.rmtree(d, ignore_errors=True)
        for d in new_empty:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _call(fn: Callable, a: argparse.Namespace, *args, **kw):
    """``fn(*args, **kw)``, plus ``overwrite`` (``--overwrite``; the outputs were checked
    already) and ``command`` (the command line, for the provenance of the outputs) for the
    library functions that take them."""
    params = inspect.signature(fn).parameters
    if "overwrite" in params:
        kw["overwrite"] = bool(getattr(a, "overwrite", False))
    if "command" in params and getattr(a, "argv", None) is not None:
        kw["command"] = ["galnet", *a.argv]
    log.debug("%s.%s(%s)", fn.__module__, fn.__name__,
              ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kw.items())]))
    return fn(*args, **kw)


def _check_catalog_out(path: str) -> None:
    from galnet.errors import GalnetValueError
    from galnet.io.catalog import catalog_format

    try:
        catalog_format(path)
    except GalnetValueError as err:
        raise UsageError(f"--out {err}") from None


def _set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _progress(a: argparse.Namespace) -> bool:
    """Progress bars wanted (the runner shows them only when stderr is a terminal)."""
    return not a.quiet


# ---- simulate, bank, presets, demo, train ----------------------------------------------------
def cmd_simulate(a: argparse.Namespace) -> int:
    from galnet.sim.simulate import simulate

    check_output(a.out, a.overwrite)
    t0 = time.perf_counter()
    with _outputs(files=(a.out,)):
        out = _call(simulate, a, a.preset, a.n, a.seed, a.out, bank=a.bank, snr_min=a.snr_min,
                    chunk=a.chunk, progress=_progress(a), bank_psf_fraction=a.bank_psf_fraction,
                    threads=a.threads, workers=a.workers)
    dt = time.perf_counter() - t0
    print(f"wrote {a.n} stamps to {out} in {dt:.1f} s ({a.n / dt:.0f} stamps/s)")
    return 0


def cmd_bank_build(a: argparse.Namespace) -> int:
    if not a.data.is_dir():
        raise GalnetFileError(f"data directory {str(a.data)!r} does not exist")
    check_output(a.out, a.overwrite)
    from galnet.sim.bank import build_bank

    kw = {} if a.pixel_scales is None else {"pixel_scales": tuple(a.pixel_scales)}
    with _outputs(files=(a.out,)):
        out = _call(build_bank, a, a.data, a.out, seed=a.seed, progress=_progress(a), **kw)
    print(f"wrote bank {out}")
    return 0


def cmd_presets(a: argparse.Namespace) -> int:
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


def cmd_demo(a: argparse.Namespace) -> int:
    from galnet.demo import run_demo

    check_output_dir(a.out_dir, overwrite=True)
    with _outputs(dirs=(a.out_dir,)):
        run_demo(a.out_dir, n=a.n, seed=a.seed, progress=_progress(a), model=a.model)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from galnet.nn.train import load_config, train

    check_device(a.device)
    cfg = load_config(a.config, data=a.data, out_dir=a.out_dir, epochs=a.epochs,
                      n_train=a.n_train, n_val=a.n_val, batch=a.batch, lr=a.lr, seed=a.seed,
                      device=a.device, threads=a.threads)
    if not cfg.data:
        raise UsageError("no training data: give --data or `data` in the config")
    if not Path(cfg.data).is_file():
        raise GalnetFileError(f"training data {str(cfg.data)!r} does not exist")
    if a.device is None:  # the config's device: a bad value in a file, exit status 1
        from galnet.runner import resolve_device

        resolve_device(cfg.device, option=f"{a.config or 'config'}: device")
    check_output_dir(cfg.out_dir, overwrite=True)  # resumed, or replaced with --restart
    with _outputs(empty_dirs=(cfg.out_dir,)):
        out = train(cfg, resume=not a.restart, progress=_progress(a))
    print(f"wrote {out}")
    return 0


# ---- predict, fit, evaluate, export ----------------------------------------------------------
_FRAME_ONLY = ("weight", "variance", "frame_mask")


def _frame_checks(a: argparse.Namespace, unsupported: dict) -> None:
    """Options of the frame pipeline (``--frame`` with ``--detect`` or ``--positions``)."""
    if a.frame is None:
        for opt in ("detect", *_FRAME_ONLY):
            if getattr(a, opt, None):
                raise UsageError(f"--{opt.replace('_', '-')} goes with --frame")
        return
    if a.images is not None:
        raise UsageError("give either --images or --frame, not both")
    if a.detect and a.positions is not None:
        raise UsageError("give --detect or --positions, not both")
    if not a.detect and a.positions is None:
        raise UsageError("--frame needs --positions CAT or --detect")
    maps = [f"--{k}" for k in ("weight", "variance", "sigma", "ivar") if getattr(a, k)]
    if len(maps) > 1:
        raise UsageError(f"give one noise map, not {' and '.join(maps)}")
    if a.frame_mask is not None and a.mask is not None:
        raise UsageError("give --frame-mask or --mask, not both")
    if a.psf_positions is not None:
        raise UsageError("--psf-positions goes with --images; with --frame the PSF is taken at "
                         "each source")
    for opt, bad in unsupported.items():
        if bad:
            raise UsageError(f"{opt} does not apply to --frame (the frame pipeline)")


def _frame_run(a: argparse.Namespace, refine: bool) -> int:
    """``galnet predict|fit --frame IMAGE --detect|--positions CAT``: the frame pipeline."""
    from galnet.frame import run_frame

    check_device(a.device)
    check_output(a.out, a.overwrite)
    _check_catalog_out(a.out)
    _set_threads(a.threads)
    models, new_dir = _models_file(a)
    weight = a.weight if a.weight is not None else a.ivar
    t0 = time.perf_counter()
    with _outputs(files=(a.out, models), dirs=(new_dir,)):
        if new_dir is not None:
            new_dir.mkdir(parents=True)
        t = _call(run_frame, a, a.frame, a.psf, a.out, detect=a.detect,
                  positions=a.positions, weight=weight, variance=a.variance, sigma=a.sigma,
                  frame_mask=a.frame_mask if a.frame_mask is not None else a.mask,
                  refine=refine, pixel_scale=a.pixel_scale, zeropoint=a.zeropoint,
                  preset=a.preset, model=a.model, device=a.device, save_models=models,
                  snr_min=a.snr_min, gain=a.gain, progress=_progress(a))
    _report(t, a.out, time.perf_counter() - t0)
    return 0


def _inputs(a: argparse.Namespace) -> dict:
    """The input options shared by predict and fit, checked, as keyword arguments."""
    if (a.images is None) == (a.frame is None):
        raise UsageError("give either --images or --frame (with --detect or --positions)")
    if a.frame is not None and a.positions is None:
        raise UsageError("--frame needs --positions CAT or --detect")
    if a.images is not None and a.positions is not None:
        raise UsageError("--positions goes with --frame, not --images (use --psf-positions "
                         "for the frame positions of stamps)")
    if a.frame is not None and a.psf_positions is not None:
        raise UsageError("--psf-positions goes with --images; with --frame the PSF is taken at "
                         "--positions")
    check_device(a.device)
    check_output(a.out, a.overwrite)
    _check_catalog_out(a.out)
    _set_threads(a.threads)
    return dict(images=a.images, psf=a.psf, sigma=a.sigma, ivar=a.ivar, mask=a.mask,
                frame=a.frame, positions=a.positions, psf_positions=a.psf_positions,
                pixel_scale=a.pixel_scale, zeropoint=a.zeropoint, preset=a.preset,
                model=a.model, device=a.device, chunk=a.chunk, progress=_progress(a))


def _report(t, out, dt: float) -> None:
    n_flag = int((t["flags"] != 0).sum())
    extra = ""
    if "converged" in t.colnames:
        extra = f", {len(t) - int(sum(bool(c) for c in t['converged']))} not converged"
    print(f"wrote {len(t)} galaxies to {out} in {dt:.1f} s ({len(t) / dt:.1f} galaxies/s); "
          f"{n_flag} flagged{extra}")


def _models_file(a: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """(file, new folder) of ``--save-models FILE.fits|DIR``, checked: the model images go to
    FILE.fits, or DIR/models.fits (DIR is created)."""
    if a.save_models is None:
        return None, None
    p = Path(a.save_models)
    target = p if p.suffix.lower() in (".fits", ".fit") else p / MODELS_FILE
    if target.resolve() == Path(a.out).resolve():
        raise UsageError(f"--save-models and --out name the same file ({a.out})")
    if p.suffix.lower() in (".fits", ".fit"):
        return check_output(p, a.overwrite, what="--save-models file"), None
    check_output_dir(p, overwrite=True, what="--save-models folder")
    f = check_output(p / MODELS_FILE, a.overwrite, what="--save-models file", create_dirs=True)
    return f, None if p.exists() else p


def cmd_predict(a: argparse.Namespace) -> int:
    from galnet.nn.predict import predict_files

    if a.refine and a.no_chi2:
        raise UsageError("--refine does not combine with --no-chi2 (the fit renders the models)")
    _frame_checks(a, {"--no-chi2": a.no_chi2, "--no-point-test": a.no_point_test})
    if a.frame is not None:
        return _frame_run(a, refine=a.refine)
    if a.gain is not None:
        raise UsageError("galnet predict takes --gain with --frame only (for stamps: galnet fit "
                         "--gain, or a sigma map that includes the source noise)")
    kw = _inputs(a)
    models, new_dir = _models_file(a)
    t0 = time.perf_counter()
    with _outputs(files=(a.out, models), dirs=(new_dir,)):
        if new_dir is not None:
            new_dir.mkdir(parents=True)
        if a.refine:
            from galnet.fitting.runner import fit_files

            t = _call(fit_files, a, a.out, init="nn", save_models=models,
                      point_test=not a.no_point_test, **kw)
        else:
            from galnet.fitting.assess import assessor

            t = _call(predict_files, a, a.out, chi2=not a.no_chi2, save_models=models,
                      assess=assessor(point_test=not a.no_point_test), **kw)
    _report(t, a.out, time.perf_counter() - t0)
    return 0


def cmd_fit(a: argparse.Namespace) -> int:
    from galnet.fitting.problem import FitConfig
    from galnet.fitting.runner import fit_files

    if a.nn_prior and a.init != "nn":
        raise UsageError(f"--nn-prior needs --init nn (the network's values and errors), got "
                         f"--init {a.init}")
    if a.nn_prior and a.no_prior:
        raise UsageError("--nn-prior and --no-prior contradict each other")
    _frame_checks(a, {"--init " + str(a.init): a.init != "nn", "--sky flat": a.sky != "none",
                      "--no-prior": a.no_prior, "--no-point-test": a.no_point_test,
                      "--scale-errors": a.scale_errors, "--dtype float64": a.dtype != "float32"})
    if a.frame is not None:
        return _frame_run(a, refine=True)
    kw = _inputs(a)
    models, new_dir = _models_file(a)
    cfg = FitConfig(scale_errors=a.scale_errors, dtype=a.dtype)
    t0 = time.perf_counter()
    with _outputs(files=(a.out, models), dirs=(new_dir,)):
        if new_dir is not None:
            new_dir.mkdir(parents=True)
        t = _call(fit_files, a, a.out, init=a.init, sky=a.sky,
                  auto_mask_neighbours=not a.no_auto_mask, gain=a.gain, config=cfg,
                  native=True if a.native else "auto", prior=not a.no_prior,
                  nn_prior=a.nn_prior or None, save_models=models,
                  point_test=not a.no_point_test, **kw)
    _report(t, a.out, time.perf_counter() - t0)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from galnet.evaluate.metrics import evaluate

    check_output_dir(a.out, a.overwrite, what="report folder")
    kw = {}
    if a.snr_bins:
        kw["snr_bins"] = a.snr_bins
    if a.n_bins:
        kw["n_bins"] = a.n_bins
    with _outputs(dirs=(a.out,)):
        m = _call(evaluate, a, a.pred, a.truth, a.out,
                  gallery=False if a.no_gallery else None, **kw)
    print(f"galnet evaluate: {m['n_evaluated']} rows evaluated (matched by {m['matched_by']}), "
          f"{m['n_failed']} failed")
    for t in m["targets"]:
        v = t["overall"]["value"]
        mark = {True: "ok", False: "MISSED", None: "-"}[t["overall"]["pass"]]
        val = "-" if v is None or v != v else f"{v:.4f}"
        print(f"  {t['param']:<7} {t['metric']:<18} {t['target']:<11} {val}  {mark}")
    print(f"  report: {(a.out / 'report.md').resolve()}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from galnet.interop.export import FORMATS, export_catalog

    check_output_dir(a.directory, a.overwrite)
    with _outputs(dirs=(a.directory,)):
        res = _call(export_catalog, a, a.catalog, a.directory, a.to, psf=a.psf, images=a.images,
                    sigma=a.sigma, mask=a.mask, zeropoint=a.zeropoint,
                    pixel_scale=a.pixel_scale, preset=a.preset, box=a.box, sky=a.sky)
    n = sum(f.name.endswith(FORMATS[a.to]) for f in res.files)
    skipped = f"; {len(res.skipped)} rows skipped (invalid parameters or centre off the image)" \
        if res.skipped else ""
    print(f"wrote {n} {a.to} configurations to {a.directory} ({len(res.files)} files in all)"
          f"{skipped}")
    return 0


def cmd_plot(a: argparse.Namespace) -> int:
    from galnet.evaluate.fitplots import plot_fits

    if a.out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"--out {a.out}: the figure must be .png, .pdf or .svg")
    check_output(a.out, a.overwrite, what="figure")
    path = _call(plot_fits, a, a.catalog, a.models, ids=a.ids, worst=a.worst, out=a.out)
    print(f"wrote {path}")
    return 0


# ---- translate -------------------------------------------------------------------------------
def cmd_translate_simulate(a: argparse.Namespace) -> int:
    from galnet.translate.simulate import get_domain, simulate_pairs

    for name in (a.source, a.target):
        get_domain(name)
    check_output(a.out, a.overwrite)
    t0 = time.perf_counter()
    with _outputs(files=(a.out,)):
        out = _call(simulate_pairs, a, a.out, a.n, source=a.source, target=a.target,
                    seed=a.seed, chunk=a.chunk, threads=a.threads, progress=_progress(a))
    print(f"wrote {a.n} pairs ({a.source} -> {a.target}) to {out} in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def cmd_translate_train(a: argparse.Namespace) -> int:
    from galnet.translate.losses import LOSSES
    from galnet.translate.simulate import read_pairs
    from galnet.translate.train import TranslatorTrainConfig, train_translator

    if a.loss not in LOSSES:  # checked here: importing the losses at parse time loads torch
        raise UsageError(f"argument --loss: invalid choice {a.loss!r} (choose from "
                         f"{', '.join(LOSSES)})")
    check_device(a.device)
    check_output(a.out, a.overwrite)
    cfg = TranslatorTrainConfig(loss=a.loss, conditioning=a.conditioning, fraction=a.fraction,
                                steps=a.steps, batch=a.batch, lr=a.lr, width=a.width,
                                n_val=a.n_val, val_every=a.val_every, seed=a.seed,
                                device=a.device, threads=a.threads)
    with _outputs(files=(a.out, Path(a.out).with_suffix(".json"))):  # weights, history
        s = _call(train_translator, a, read_pairs(a.data), cfg, a.out, progress=_progress(a))
    print(f"wrote {a.out}: {s['steps']} steps on {s['n_train']} pairs, best validation loss "
          f"{s['best_val_loss']:.4g} (step {s['best_step']}), {s['wall_s']:.0f} s")
    return 0


def cmd_translate_apply(a: argparse.Namespace) -> int:
    from galnet.translate.apply import translate_file

    check_device(a.device)
    check_output(a.out, a.overwrite)
    zspec = None if a.zspec is None else (a.zspec[0] if len(a.zspec) == 1 else a.zspec)
    with _outputs(files=(a.out,)):
        out = _call(translate_file, a, a.out, images=a.images, pairs=a.data, model=a.model,
                    zspec=zspec, device=a.device)
    print(f"wrote {out}")
    return 0


def cmd_translate_evaluate(a: argparse.Namespace) -> int:
    from galnet.translate.apply import evaluate_file

    check_output_dir(a.out, a.overwrite)
    with _outputs(dirs=(a.out,)):
        rec = _call(evaluate_file, a, a.out, pairs=a.data, pred=a.pred, model=a.model,
                    photoz=a.photoz, structure_rows=a.structure_rows)
    for name, r in rec.items():
        print(f"{name:>10}: photo-z sigma_MAD {r['sigma_mad']:.4f} outliers {r['outlier']:.3f}"
              f"  colour err {r['colour_err']:.3f} mag  d_re {r['d_re']:.3f}  d_n {r['d_n']:.3f}")
    print(f"wrote {a.out / 'metrics.json'}")
    return 0
