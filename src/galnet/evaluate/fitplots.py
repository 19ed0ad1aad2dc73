"""A look at every fit: rows of data | model | residual | mask from a models file (``galnet plot``).

One row per object (the GALFIT image-block habit): the stamp that was fitted, the PSF-convolved
model, the residual and the mask, with the catalogue's parameters and decoded flags beside it.

- data and model share one asinh stretch per row (softening = the noise: median ``SIGMA`` of the
  unmasked pixels, else their NMAD; limits = the data's 0.5 and 99.8 percentiles);
- residual in units of sigma (``(data - model) / sigma``, -5..5) when the file has a ``SIGMA``
  plane, else linear and symmetric (+-5 NMAD of the residual); masked pixels blank (grey);
- mask: black = used, white = ignored; a ``+`` marks the catalogue centre on data and model;
- ``re < X`` for an ``UNRESOLVED`` object (the catalogue then holds the 95% upper limit).

Objects are matched by ``id`` (compared as text, so ``--ids 12`` finds the integer id 12).
At most :data:`MAX_ROWS` rows in one figure; the PNG is written atomically (matplotlib, Agg).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from galnet.errors import GalnetValueError
from galnet.flags import Flag, decode
from galnet.io.files import atomic_write, check_writable
from galnet.stats import nmad

__all__ = ["MAX_ROWS", "plot_fits", "select_rows"]

#: Most rows (objects) in one figure.
MAX_ROWS = 50
#: Residual colour limits in units of sigma.
RESID_SIGMA = 5.0
_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


def _plain(v) -> np.ndarray:
    return np.asarray(getattr(v, "value", v))


def select_rows(catalog, models, *, ids=None, worst: int | None = None) -> list[tuple[int, str]]:
    """(catalogue row, id text) of the objects to show, in order: ``ids`` as given (all must be in
    both the catalogue and the models file), then, with ``worst``, the ``worst`` of them (of all
    objects in both, without ``ids``) with the largest ``chi2nu`` (NaN last). Without either, every
    object of the models file. One-line GalnetValueError naming missing ids or too many rows."""
    if "id" not in catalog.colnames:
        raise GalnetValueError("catalogue has no id column (needed to match the models file)",
                               "catalog")
    cat_row: dict[str, int] = {}
    for i, v in enumerate(_plain(catalog["id"]).tolist()):
        cat_row.setdefault(str(v), i)
    in_models = [str(v) for v in models.ids]
    if ids is not None:
        keys = list(dict.fromkeys(str(v) for v in ids))
        known = set(in_models)
        parts = []
        for where, have in (("catalogue", cat_row), ("models file", known)):
            gone = [k for k in keys if k not in have]
            if gone:
                more = f" (+{len(gone) - 20} more)" if len(gone) > 20 else ""
                parts.append(f"not in the {where}: {', '.join(gone[:20])}{more}")
        if parts:
            raise GalnetValueError("ids " + "; ".join(parts), "ids")
    else:
        keys = [k for k in dict.fromkeys(in_models) if k in cat_row]
        if not keys:
            raise GalnetValueError("no id of the models file is in the catalogue", "ids")
    if worst is not None:
        if worst < 1:
            raise GalnetValueError(f"worst must be >= 1, got {worst}", "worst")
        if "chi2nu" not in catalog.colnames:
            raise GalnetValueError("catalogue has no chi2nu column (needed by --worst)",
                                   "worst")
        chi = _plain(catalog["chi2nu"]).astype(float)
        c = np.array([chi[cat_row[k]] for k in keys])
        order = np.argsort(np.where(np.isfinite(c), -c, np.inf), kind="stable")  # NaN last
        keys = [keys[i] for i in order[:worst]]
    if len(keys) > MAX_ROWS:
        raise GalnetValueError(f"{len(keys)} objects to plot: at most {MAX_ROWS} rows in one "
                               "figure (choose with --ids or --worst N)", "ids")
    return [(cat_row[k], k) for k in keys]


def _value(catalog, name: str, i: int) -> float:
    if name not in catalog.colnames:
        return math.nan
    try:
        return float(_plain(catalog[name][i]))
    except (TypeError, ValueError):
        return math.nan


def _text(catalog, i: int, key: str) -> str:
    """The parameter block of catalogue row ``i``."""
    def f(name, fmt, unit="", err=True):
        v = _value(catalog, name, i)
        if not math.isfinite(v):
            return "-"
        e = _value(catalog, f"{name}_err", i) if err else math.nan
        return format(v, fmt) + unit + (f" ± {e:{fmt}}" if math.isfinite(e) else "")

    fl = _value(catalog, "flags", i)
    flags = int(fl) if math.isfinite(fl) else 0
    arcsec, upper = '"', "< " if flags & int(Flag.UNRESOLVED) else ""  # re: 95% upper limit
    re = upper + f("re_arcsec", ".3g", arcsec, not upper)
    lines = [f"id {key}", f"mag {f('mag', '.2f')}", f"re  {re}",
             f"n   {f('n', '.2f')}", f"q   {f('q', '.2f')}", f"pa  {f('pa_deg', '.0f', '°')}",
             f"chi2nu {f('chi2nu', '.2f')}   snr {f('snr', '.3g')}"]
    try:
        names = decode(flags)
    except GalnetValueError:
        names = [f"unknown bits {flags}"]
    lines.append("flags " + (str(flags) if names else "0"))
    lines += ["  " + ", ".join(names[j:j + 2]) for j in range(0, len(names), 2)]
    return "\n".join(lines)


def _stretch(data: np.ndarray, mask: np.ndarray, sigma: np.ndarray | None):
    """(transform, vmin, vmax) of the shared asinh stretch of a row."""
    good = ~mask & np.isfinite(data)
    vals = data[good] if good.any() else np.zeros(1)
    soft = math.nan
    if sigma is not None:
        s = sigma[good & np.isfinite(sigma) & (sigma > 0)]
        soft = float(np.median(s)) if s.size else math.nan
    if not (math.isfinite(soft) and soft > 0):
        soft = nmad(vals)
    if not (math.isfinite(soft) and soft > 0):
        soft = float(np.max(np.abs(vals))) or 1.0

    def t(a):
        return np.arcsinh(np.asarray(a, float) / soft)

    lo, hi = np.percentile(t(vals), [0.5, 99.8])
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    return t, lo, hi


def _residual(o) -> tuple[np.ndarray, float, str]:
    res = np.where(o.mask, np.nan, o.data - o.model)
    sig = o.sigma
    if sig is not None and np.isfinite(sig[~o.mask]).any() and (sig[~o.mask] > 0).any():
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(np.isfinite(sig) & (sig > 0), res / sig, np.nan)
        return r, RESID_SIGMA, "residual / σ"
    fin = res[np.isfinite(res)]
    lim = RESID_SIGMA * nmad(fin) if fin.size else 1.0
    if not (math.isfinite(lim) and lim > 0):
        lim = float(np.max(np.abs(fin))) if fin.size and np.max(np.abs(fin)) > 0 else 1.0
    return res, lim, "residual"


def _centre(catalog, i: int, o):
    """Catalogue centre in stamp pixels (or None)."""
    x, y = _value(catalog, "x", i), _value(catalog, "y", i)
    if not (math.isfinite(x) and math.isfinite(y)):
        return None
    k = o.rebin
    return (x - o.x0 - (k - 1) / 2) / k, (y - o.y0 - (k - 1) / 2) / k


def plot_fits(catalog, models, *, ids=None, worst: int | None = None, out,
              overwrite: bool = False) -> Path:
    """Draw data | model | residual | mask rows for objects of a models file.

    Parameters
    ----------
    catalog : catalogue path or table (``galnet predict``/``fit``: ``id``, ``mag``,
        ``re_arcsec``, ``n``, ``q``, ``chi2nu``, ``flags``...; missing columns show ``-``).
    models : models file path (:mod:`galnet.io.models`) or an open :class:`~galnet.io.models.
        ModelsFile`.
    ids : objects to show (compared as text); missing ones -> one-line GalnetValueError.
    worst : show the ``worst`` objects with the largest ``chi2nu`` (NaN last).
    out : figure file (``.png``, ``.pdf`` or ``.svg``), written atomically; an existing file is
        refused unless ``overwrite``.

    Returns the path written.
    """
    from galnet.io.catalog import read_catalog
    from galnet.io.models import ModelsFile, read_models

    fmt = _FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise GalnetValueError(f"{out}: figure must be .png, .pdf or .svg", "out")
    out = check_writable(out, overwrite=overwrite)
    cat = read_catalog(catalog, role="catalogue")
    own = not isinstance(models, ModelsFile)
    mf = read_models(models) if own else models
    try:
        rows = select_rows(cat, mf, ids=ids, worst=worst)
        fig = _figure(cat, mf, rows)
    finally:
        if own:
            mf.close()
    import matplotlib.pyplot as plt

    try:
        atomic_write(out, lambda f: fig.savefig(f, format=fmt, dpi=80))
    finally:
        plt.close(fig)
    return out


def _figure(cat, mf, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    fig, axes = plt.subplots(n, 5, figsize=(13.5, 2.5 * n + 0.4), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1, 1, 1.35]})
    cmap_img = plt.get_cmap("gray_r").with_extremes(bad="0.6")
    cmap_res = plt.get_cmap("RdBu_r").with_extremes(bad="0.6")
    pos: dict[str, int] = {}
    for j, v in enumerate(mf.ids):
        pos.setdefault(str(v), j)
    for r, (i, key) in enumerate(rows):
        o = mf.row(pos[key])
        t, lo, hi = _stretch(o.data, o.mask, o.sigma)
        res, lim, rlabel = _residual(o)
        ax = axes[r]
        kw = dict(origin="lower", interpolation="nearest")
        ax[0].imshow(np.where(o.mask, np.nan, t(o.data)), cmap=cmap_img, vmin=lo, vmax=hi, **kw)
        ax[1].imshow(t(o.model), cmap=cmap_img, vmin=lo, vmax=hi, **kw)
        im = ax[2].imshow(res, cmap=cmap_res, vmin=-lim, vmax=lim, **kw)
        ax[3].imshow(o.mask.astype(float), cmap="gray", vmin=0, vmax=1, **kw)
        fig.colorbar(im, ax=ax[2], fraction=0.046, pad=0.03)
        c = _centre(cat, i, o)
        for a in ax[:2]:
            if c is not None:
                a.plot(*c, "+", color="tab:orange", ms=9, mew=1.2)
        titles = ("data", "model", rlabel, f"mask ({int(o.mask.sum())} px)")
        for a, title in zip(ax[:4], titles, strict=True):
            a.set_xticks([])
            a.set_yticks([])
            a.set_title(title, fontsize=8)
        ax[0].set_ylabel(f"{key}  ({o.data.shape[1]}x{o.data.shape[0]}, k={o.rebin})",
                         fontsize=8)
        ax[4].set_axis_off()
        ax[4].text(0.02, 0.98, _text(cat, i, key), va="top", ha="left", family="monospace",
                   fontsize=8, transform=ax[4].transAxes)
    fig.tight_layout()
    return fig
