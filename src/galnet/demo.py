"""``galnet demo`` (what ``make demo`` runs): the whole chain on a fresh machine, no data needed.

simulate ``n`` hsc-r stamps (synthetic backgrounds) -> write them as FITS (a stamp cube with a
SIGMA extension and a PSF cube, as a user would give them) -> ``galnet predict`` with the shipped
weights -> ``galnet evaluate`` against the truth -> print the headline metrics and where
everything is.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from galnet.errors import GalnetFileError

__all__ = ["run_demo", "save_gallery"]


def save_gallery(h5_path: str | Path, png_path: str | Path, n: int = 25, title: str = "") -> Path:
    """Save a square grid of the first ``n`` stamps of a simulated file (asinh stretch, with each
    galaxy's parameters) as a PNG."""
    import h5py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from galnet.sim.simulate import read_params

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


def _write_fits(h5: Path, out_dir: Path) -> tuple[Path, Path]:
    import h5py
    from astropy.io import fits

    with h5py.File(h5, "r") as f:
        images, sigma, psfs = f["images"][:], f["sigma"][:], f["psfs"][:]
        zp, scale = float(f.attrs["zeropoint"]), float(f.attrs["pixel_scale"])
    hdr = fits.Header({"MAGZERO": zp, "PIXSCALE": scale})
    stamps, psf = out_dir / "stamps.fits", out_dir / "psfs.fits"
    fits.HDUList([fits.PrimaryHDU(images, header=hdr),
                  fits.ImageHDU(sigma, name="SIGMA")]).writeto(stamps, overwrite=True)
    fits.PrimaryHDU(psfs).writeto(psf, overwrite=True)
    return stamps, psf


#: What a demo writes into its folder (a new demo replaces them).
DEMO_FILES = ("demo.h5", "gallery.png", "stamps.fits", "psfs.fits", "catalog.ecsv", "report")


def _clear(out_dir: Path) -> None:
    """Remove the outputs of an earlier demo in ``out_dir`` (and nothing else)."""
    import shutil

    for name in DEMO_FILES:
        p = out_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def run_demo(out_dir: str | Path = "galnet-demo", n: int = 2000, seed: int = 0,
             progress: bool = True, preset: str = "hsc-r", model: str | Path | None = None
             ) -> dict[str, Path]:
    """Simulate, predict and evaluate ``n`` stamps in ``out_dir``; print a summary.

    The files of an earlier demo in ``out_dir`` (:data:`DEMO_FILES`) are replaced.
    Returns the paths written: ``h5`` (simulation), ``stamps``/``psfs`` (FITS inputs), ``catalog``
    (ECSV), ``report`` (evaluation directory), ``gallery`` (25 input stamps)."""
    from galnet.evaluate.metrics import evaluate
    from galnet.nn.predict import predict_files
    from galnet.sim.simulate import simulate

    if model is not None:  # fail before the simulation, not after it
        from galnet.nn.model import load_model

        load_model(model)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _clear(out_dir)
    except OSError as err:
        raise GalnetFileError(f"cannot create {str(out_dir)!r}: {err.strerror or err}") from err
    h5 = out_dir / "demo.h5"
    t0 = time.perf_counter()
    simulate(preset, n, seed, h5, snr_min=5.0, progress=progress)
    t_sim = time.perf_counter() - t0
    gallery = save_gallery(h5, out_dir / "gallery.png",
                           title=f"galnet demo: {preset}, seed {seed} (asinh stretch)")
    stamps, psfs = _write_fits(h5, out_dir)
    catalog = out_dir / "catalog.ecsv"
    t0 = time.perf_counter()
    predict_files(catalog, images=stamps, psf=psfs, preset=preset, model=model,
                  progress=progress)
    t_pred = time.perf_counter() - t0
    report = out_dir / "report"
    m = evaluate(catalog, h5, report)
    print(f"\ngalnet demo: {n} {preset} stamps (synthetic backgrounds, S/N >= 5)")
    print(f"  simulated in {t_sim:.1f} s; predicted (network + chi2 models) in {t_pred:.1f} s "
          f"({n / t_pred:.0f} galaxies/s)\n")
    print(f"  {'subset':<12} {'N':>6} {'R2 mag':>8} {'R2 log re':>10} {'R2 log n':>9} "
          f"{'R2 q':>7} {'out re':>7} {'out n':>7}")
    for name in ("overall", "snr>20", "10<snr<=20"):
        s = m.get(name, {})
        if not s or not s.get("re", {}).get("N"):
            continue
        print(f"  {name:<12} {s['re']['N']:>6} {s['mag']['r2']:>8.4f} {s['re']['r2_log']:>10.4f} "
              f"{s['n']['r2_log']:>9.4f} {s['q']['r2']:>7.4f} {s['re']['outlier_frac']:>7.1%} "
              f"{s['n']['outlier_frac']:>7.1%}")
    print("  (out = fraction with relative error > 15%)\n")
    for k, v in (("catalogue", catalog), ("report", report / "report.md"), ("stamps", stamps),
                 ("gallery", gallery)):
        print(f"  {k + ':':<10} {v.resolve()}")
    return {"h5": h5, "stamps": stamps, "psfs": psfs, "catalog": catalog, "report": report,
            "gallery": gallery}
