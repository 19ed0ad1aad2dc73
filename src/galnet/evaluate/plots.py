"""Figures of an evaluation: predicted vs true, residuals vs S/N, calibration, residual gallery.

Each figure is written atomically as a PNG (matplotlib, Agg backend, imported on first use).
The gallery shows image / model / residual with an asinh stretch for up to
:data:`GALLERY_STAMPS` stamps: given by the caller, or rendered from the predictions for a
``galnet simulate`` HDF5 truth file (:func:`gallery_from_simulation`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.evaluate.matching import column_values
from galnet.evaluate.residuals import Residuals, param_metrics
from galnet.io.files import atomic_write
from galnet.params import SERSIC
from galnet.stats import nmad

__all__ = ["GALLERY_STAMPS", "write_plots", "gallery_input", "gallery_from_simulation"]

#: Stamps shown in the residual gallery.
GALLERY_STAMPS = 8


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))
    finally:
        plt.close(fig)


_AXIS_LABEL = {"mag": "mag", "re": "re_pix [pix]", "n": "n", "q": "q", "x": "x [pix]",
               "y": "y [pix]", "pa_deg": "pa [deg]"}
_D_LABEL = {"mag": "Δmag", "re": "log10(re_p/re_t)", "n": "log10(n_p/n_t)", "q": "Δq",
            "x": "Δx [pix]", "y": "Δy [pix]", "pa_deg": "ΔPA [deg] (true q<0.8)"}


def _grid(plt, k: int, size: float = 3.2):
    cols = min(4, k)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[k:]:
        ax.set_axis_off()
    return fig, list(axes.flat[:k])


def write_plots(out: Path, res: list[Residuals], snr: np.ndarray | None,
                gallery: dict[str, Any] | None) -> list[str]:
    """Write the figures of residuals ``res`` into ``out``; the names written, in order.

    ``snr``: true S/N of the rows (residuals vs S/N when given); ``gallery``: checked gallery
    arrays (:func:`gallery_input`) or None."""
    plt = _pyplot()
    files = []
    if res and res[0].true.size:
        _save(_plot_pred_vs_true(plt, res), out / "pred_vs_true.png")
        files.append("pred_vs_true.png")
        if snr is not None and np.any(np.isfinite(snr) & (snr > 0)):
            _save(_plot_residuals_vs_snr(plt, res, snr), out / "residuals_vs_snr.png")
            files.append("residuals_vs_snr.png")
        if any(r.z is not None and np.any(np.isfinite(r.z[r.defined])) for r in res):
            _save(_plot_calibration(plt, res), out / "calibration.png")
            files.append("calibration.png")
    if gallery is not None:
        _save(_plot_gallery(plt, gallery), out / "gallery.png")
        files.append("gallery.png")
    return files


def _plot_pred_vs_true(plt, res: list[Residuals]):
    fig, axes = _grid(plt, len(res))
    for ax, r in zip(axes, res, strict=True):
        t, p = r.true[r.defined], r.pred[r.defined]
        log = r.log
        p = SERSIC[r.column].wrap(p)  # angles into [0, period); others unchanged
        if t.size:
            lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
            if t.size >= 200:
                ax.hexbin(t, p, gridsize=50, bins="log", mincnt=1, cmap="viridis",
                          xscale="log" if log else "linear", yscale="log" if log else "linear",
                          linewidths=0)
            else:
                ax.scatter(t, p, s=6, alpha=0.7)
            ax.plot([lo, hi], [lo, hi], "r-", lw=0.8)
        if log:
            _log_axes(ax)
        m = param_metrics(r)
        r2 = m.get("r2_log", m.get("r2"))
        r2s = f"R²={r2:.4f} " if r2 is not None and math.isfinite(r2) else ""
        ax.set_title(f"{r.key}: {r2s}outl={m['outlier_frac']:.3f}", fontsize=9)
        ax.set_xlabel(f"true {_AXIS_LABEL[r.key]}", fontsize=8)
        ax.set_ylabel(f"pred {_AXIS_LABEL[r.key]}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def _log_axes(ax) -> None:
    """Log x and y axes labelled 0.2, 0.5, 1, 2, 5, ... (plain numbers, no minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis, scale in ((ax.xaxis, ax.set_xscale), (ax.yaxis, ax.set_yscale)):
        scale("log")
        axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def _running(x: np.ndarray, y: np.ndarray, nb: int = 12):
    edges = np.unique(np.quantile(x, np.linspace(0, 1, nb + 1)))
    xs, q16, q50, q84 = [], [], [], []
    for lo, hi in zip(edges, edges[1:], strict=False):
        s = (x >= lo) & (x <= hi)
        if np.sum(s) >= 5:
            xs.append(np.median(x[s]))
            a, b, c = np.percentile(y[s], [16, 50, 84])
            q16.append(a)
            q50.append(b)
            q84.append(c)
    return np.array(xs), np.array(q16), np.array(q50), np.array(q84)


def _plot_residuals_vs_snr(plt, res: list[Residuals], snr: np.ndarray):
    fig, axes = _grid(plt, len(res))
    for ax, r in zip(axes, res, strict=True):
        s = r.defined & np.isfinite(snr) & (snr > 0)
        x, d = snr[s], r.d[s]
        if x.size:
            ax.scatter(x, d, s=2, alpha=0.3, color="0.5", rasterized=True)
            xs, a, b, c = _running(x, d)
            if xs.size:
                ax.plot(xs, b, "r-", lw=1.2, label="median")
                ax.plot(xs, a, "r--", lw=0.8, label="16/84%")
                ax.plot(xs, c, "r--", lw=0.8)
            lim = np.percentile(np.abs(d), 99) * 1.2 or 1.0
            ax.set_ylim(-lim, lim)
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("true S/N", fontsize=8)
        ax.set_ylabel(_D_LABEL[r.key], fontsize=8)
        ax.tick_params(labelsize=7)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _plot_calibration(plt, res: list[Residuals]):
    cal = [r for r in res if r.z is not None]
    fig, axes = _grid(plt, len(cal))
    g = np.linspace(-5, 5, 201)
    for ax, r in zip(axes, cal, strict=True):
        z = r.z[r.defined]
        z = z[np.isfinite(z)]
        if z.size:
            ax.hist(np.clip(z, -5, 5), bins=50, range=(-5, 5), density=True, color="C0",
                    alpha=0.7, label="(p - t)/σ")
        ax.plot(g, np.exp(-0.5 * g**2) / math.sqrt(2 * math.pi), "r-", lw=1, label="N(0, 1)")
        f = float(np.mean(np.abs(z) < 1)) if z.size else math.nan
        ax.set_title(f"{r.key}: |z|<1 in {f:.3f} (0.683)", fontsize=9)
        ax.set_xlabel("error / σ (clipped to ±5)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _asinh(a: np.ndarray, scale: float) -> np.ndarray:
    return np.arcsinh(a / scale)


def _plot_gallery(plt, gal: dict[str, Any]):
    images, models, sigma = gal["images"], gal["models"], gal.get("sigma")
    labels = gal.get("labels")
    k = images.shape[0]
    fig, axes = plt.subplots(k, 3, figsize=(6.6, 2.2 * k), squeeze=False)
    for i in range(k):
        img, mod = images[i], models[i]
        if sigma is not None:
            scale = float(np.median(sigma[i]))
        else:
            scale = nmad(img - np.median(img))
        scale = scale if scale > 0 and math.isfinite(scale) else 1.0
        a, b = _asinh(img, 3 * scale), _asinh(mod, 3 * scale)
        lo, hi = np.percentile(a, [1.0, 99.8])
        hi = max(hi, lo + 1e-6)
        resid = (img - mod) / (sigma[i] if sigma is not None else scale)
        for ax, arr, kw in ((axes[i, 0], a, dict(cmap="gray_r", vmin=lo, vmax=hi)),
                            (axes[i, 1], b, dict(cmap="gray_r", vmin=lo, vmax=hi)),
                            (axes[i, 2], _asinh(resid, 1.0),
                             dict(cmap="RdBu_r", vmin=-2.3, vmax=2.3))):
            ax.imshow(arr, origin="lower", interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
        if i == 0:
            axes[i, 0].set_title("image", fontsize=9)
            axes[i, 1].set_title("model", fontsize=9)
            axes[i, 2].set_title("(image-model)/σ, asinh", fontsize=9)
        if labels is not None:
            axes[i, 0].set_ylabel(str(labels[i]), fontsize=6)
    fig.tight_layout()
    return fig


def _check_gallery(gallery: Mapping[str, Any]) -> dict[str, Any]:
    """Validated gallery arrays, at most GALLERY_STAMPS stamps evenly spread over the input."""
    out: dict[str, Any] = {}
    for name in ("images", "models"):
        if name not in gallery:
            raise GalnetValueError(f"gallery has no {name!r} array", f"gallery.{name}")
    images = np.asarray(gallery["images"], dtype=float)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[0] == 0:
        raise GalnetValueError(f"gallery images must be (N, H, W), got shape {images.shape}",
                               "gallery.images")
    take = np.unique(np.linspace(0, images.shape[0] - 1, min(GALLERY_STAMPS, images.shape[0]))
                     .round().astype(int))
    out["images"] = images[take]
    for name in ("models", "sigma"):
        if gallery.get(name) is None:
            continue
        a = np.asarray(gallery[name], dtype=float)
        if a.ndim == 2:
            a = a[None]
        if a.shape != images.shape:
            raise GalnetValueError(f"gallery {name} has shape {a.shape}, images {images.shape}",
                                   f"gallery.{name}")
        out[name] = a[take]
    if gallery.get("labels") is not None:
        labels = list(gallery["labels"])
        if len(labels) != images.shape[0]:
            raise GalnetValueError(f"gallery has {len(labels)} labels for {images.shape[0]} "
                                   "images", "gallery.labels")
        out["labels"] = [labels[i] for i in take]
    return out


def gallery_input(gallery, tt, pt, p_idx, t_idx, ok, snr) -> dict[str, Any] | None:
    """The gallery of :func:`galnet.evaluate.metrics.evaluate`: ``gallery`` checked (a mapping),
    None (False), or for an HDF5 truth ``tt`` rendered from the predicted table ``pt`` (rows
    ``p_idx``/``t_idx`` matched, ``ok`` evaluated, spread over true ``snr``)."""
    if gallery is False:
        return None
    if isinstance(gallery, Mapping):
        return _check_gallery(gallery)
    if gallery not in (None, True):
        raise GalnetValueError("gallery must be a mapping of arrays, None or False",
                               "gallery", gallery)
    h5 = tt.meta.get("galnet_h5") if hasattr(tt, "meta") else None
    if h5 is None or not np.any(ok):
        return None
    rows = np.flatnonzero(ok)
    if snr is not None:  # spread from faint to bright
        rows = rows[np.argsort(snr[rows], kind="stable")]
    rows = rows[np.unique(np.linspace(0, rows.size - 1, min(GALLERY_STAMPS, rows.size))
                          .round().astype(int))]
    return gallery_from_simulation(pt[p_idx[rows]], h5, t_idx[rows])


def gallery_from_simulation(pred, h5_path: str | os.PathLike, rows) -> dict[str, Any]:
    """Gallery arrays for :func:`evaluate`: stamps ``rows`` of a ``galnet simulate`` file and
    models rendered from the matching predicted rows ``pred`` (Table, same order as ``rows``)
    with the file's PSFs and zeropoint. Predicted shapes are clipped to the renderer's bounds."""
    import h5py

    from galnet.profiles.render import render

    rows = np.asarray(rows, dtype=int)
    order = np.argsort(rows)
    try:
        with h5py.File(h5_path, "r") as f:
            zp = float(f.attrs["zeropoint"])
            srt = rows[order]
            images = np.empty((rows.size, *f["images"].shape[1:]))
            psfs = np.empty((rows.size, *f["psfs"].shape[1:]))
            sigma = np.empty_like(images)
            images[order] = f["images"][srt]
            psfs[order] = f["psfs"][srt]
            sigma[order] = f["sigma"][srt]
    except (OSError, KeyError) as err:
        raise GalnetFileError(f"cannot read stamps of {str(h5_path)!r}: {err}") from err
    label = "pred table"
    params = {c: column_values(pred, c, label) for c in SERSIC.names}
    for c in ("re_pix", "n", "q"):
        params[c] = np.clip(params[c], SERSIC[c].lower, SERSIC[c].upper)
    models = render(params, psfs, images.shape[1:], zeropoint=zp)
    labels = [f"#{r} m={m:.1f} re={re:.1f} n={n:.1f}" for r, m, re, n
              in zip(rows, params["mag"], params["re_pix"], params["n"], strict=True)]
    return {"images": images, "models": np.asarray(models), "sigma": sigma, "labels": labels}


