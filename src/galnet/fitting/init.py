"""First guesses and neighbour masks from the image, or from a catalogue.

:func:`moments_init` makes the initial parameters a careful user would make from image moments;
:func:`auto_mask` masks neighbours (photutils segmentation and deblending);
:func:`init_from_catalog` maps a catalogue in input pixels onto the stamps. First guesses are
clipped into the parameter table's guess ranges (``SERSIC[p].clip_guess``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from galnet.errors import GalnetValueError
from galnet.fitting.problem import FIT_KEYS, as_array3, check_psfs
from galnet.params import SERSIC
from galnet.profiles.sersic import enclosed_fraction

__all__ = ["moments_init", "auto_mask", "init_from_catalog"]


def _segments(image: np.ndarray, sigma: np.ndarray, ignore: np.ndarray, nsigma: float,
              npixels: int, deblend: bool):
    """photutils segmentation of one stamp: (label array or None, the 3x3-box-smoothed stamp).
    A stamp with no usable pixel has no segment (None)."""
    from photutils.segmentation import deblend_sources, detect_sources
    from scipy import ndimage

    sm = ndimage.uniform_filter(np.where(ignore, 0.0, image), 3)
    if ignore.all():  # photutils refuses a mask that covers everything
        return None, sm
    noise = np.where(ignore, np.inf, sigma) / 3.0  # rms of a 3x3 mean of white noise
    seg = detect_sources(sm, nsigma * noise, npixels, mask=ignore)
    if seg is None:
        return None, sm
    if deblend and seg.n_labels >= 1:
        H, W = image.shape
        lab = _central_label(seg.data, sm, (W - 1) / 2, (H - 1) / 2)
        if lab:
            try:
                with warnings.catch_warnings():  # "deblending mode changed to linear": benign
                    warnings.simplefilter("ignore")
                    seg = deblend_sources(sm, seg, npixels, labels=[lab], progress_bar=False)
            except ValueError:
                pass
    return seg.data, sm


def _central_label(labels: np.ndarray, sm: np.ndarray, x: float, y: float) -> int:
    """The segment at (x, y), else the one with the brightest pixel within 3 px of it."""
    H, W = labels.shape
    ix, iy = int(round(min(max(x, 0), W - 1))), int(round(min(max(y, 0), H - 1)))
    if labels[iy, ix]:
        return int(labels[iy, ix])
    y0, y1, x0, x1 = max(iy - 3, 0), min(iy + 4, H), max(ix - 3, 0), min(ix + 4, W)
    box = np.where(labels[y0:y1, x0:x1] > 0, sm[y0:y1, x0:x1], -np.inf)
    if not np.isfinite(box).any():
        return 0
    j = np.unravel_index(np.argmax(box), box.shape)
    return int(labels[y0 + j[0], x0 + j[1]])


def auto_mask(images, sigma, mask=None, *, centre=None, nsigma: float = 1.5, npixels: int = 5,
              grow: int = 0) -> np.ndarray:
    """Mask neighbours: photutils detection (``nsigma`` x the noise of a 3x3-smoothed stamp,
    ``npixels`` connected) and deblending of the central source; the pixels of every segment
    but the target's (the one at ``centre``, default the stamp centre) are masked -- never more
    (``grow`` > 0 grows them by that many pixels, still never onto the target's segment).
    Returns the union with ``mask`` (bool, True = ignored)."""
    from scipy import ndimage

    images = as_array3(images, "images")
    N, H, W = images.shape
    sig = np.broadcast_to(as_array3(sigma, "sigma"), images.shape)
    ign = np.zeros(images.shape, bool) if mask is None else np.broadcast_to(
        as_array3(mask, "mask") != 0, images.shape)
    ign = ign | ~np.isfinite(images)
    out = ign.copy()
    cx = np.full(N, (W - 1) / 2) if centre is None else np.broadcast_to(centre[0], (N,))
    cy = np.full(N, (H - 1) / 2) if centre is None else np.broadcast_to(centre[1], (N,))
    st = ndimage.generate_binary_structure(2, 2)
    for i in range(N):
        if not (np.isfinite(cx[i]) and np.isfinite(cy[i])):
            cxi, cyi = (W - 1) / 2, (H - 1) / 2  # no usable start: the stamp centre
        else:
            cxi, cyi = cx[i], cy[i]
        lab, sm = _segments(images[i], sig[i], ign[i], nsigma, npixels, True)
        if lab is None:
            continue
        t = _central_label(lab, sm, cxi, cyi)
        other = (lab > 0) & (lab != t)
        if other.any() and grow > 0:
            other = ndimage.binary_dilation(other, st, iterations=grow) & (lab != t)
        if other.any():
            out[i] |= other
    return out


# Sérsic concentration r80/r20 as a function of n (circular, no PSF): to invert for an initial n
_N_GRID = np.geomspace(0.3, 8.0, 60)


def _concentration_table() -> np.ndarray:
    from scipy import optimize

    c = []
    for n in _N_GRID:
        r = [optimize.brentq(lambda t, f=f, n=n: float(enclosed_fraction(t, n)) - f, 1e-8, 1e4)
             for f in (0.2, 0.8)]
        c.append(r[1] / r[0])
    return np.array(c)


_C_TABLE: np.ndarray | None = None


def moments_init(images, psfs, *, mask=None, sigma=None, nsigma: float = 1.5) -> dict:
    """Initial guesses from image moments, as a careful user would make them.

    The central source is segmented (photutils, :func:`auto_mask`'s rule); its flux-weighted
    centroid gives ``x, y``; its second moments minus the PSF's give ``q`` and ``pa_deg`` (q = 0.8
    when the corrected size is below 20% of the PSF's: unresolved); the circular radius enclosing
    half its flux, the PSF's removed in quadrature (at least 0.3 px), divided by ``sqrt(q)``,
    gives ``re_pix``; the concentration ``r80/r20`` of a pure Sérsic gives ``n``; ``q`` and ``n``
    are clipped into ``SERSIC[p].guess`` (q in [0.1, 1], n in [0.5, 6]); the flux is the
    segment's sum divided by the Sérsic fraction expected inside it (at most 1.5x). A stamp
    with no usable pixel (all masked or non-finite) gets NaN.
    """
    global _C_TABLE
    if _C_TABLE is None:
        _C_TABLE = _concentration_table()
    images = as_array3(images, "images")
    N, H, W = images.shape
    psfs = check_psfs(psfs, N)
    ign = np.zeros(images.shape, bool) if mask is None else np.broadcast_to(
        as_array3(mask, "mask") != 0, images.shape)
    ign = ign | ~np.isfinite(images)
    if sigma is None:
        from galnet.nn.model import sky_rms

        rms = sky_rms(torch.as_tensor(np.where(ign, np.nan, images)), nan=True).numpy()
        sig = np.broadcast_to(np.where(np.isfinite(rms) & (rms > 0), rms, 1.0)[:, None, None],
                              images.shape)
    else:
        sig = np.broadcast_to(as_array3(sigma, "sigma"), images.shape)
    # PSF: second moments and circular half-light radius
    ph, pw = psfs.shape[1:]
    py, px = np.mgrid[:ph, :pw]
    pdx, pdy = px - (pw - 1) / 2, py - (ph - 1) / 2
    pxx = (psfs * pdx**2).sum((1, 2))
    pyy = (psfs * pdy**2).sum((1, 2))
    pxy = (psfs * pdx * pdy).sum((1, 2))
    pr = np.hypot(pdx, pdy).ravel()
    po = np.argsort(pr)
    p50 = np.array([np.interp(0.5, np.cumsum(p.ravel()[po]) / p.sum(), pr[po]) for p in psfs])
    yy, xx = np.mgrid[:H, :W].astype(float)
    res = {k: np.full(N, np.nan) for k in FIT_KEYS}
    Q, NS, PA = SERSIC["q"], SERSIC["n"], SERSIC["pa_deg"]
    for i in range(N):
        if ign[i].all():  # nothing to measure: NaN (the fit skips and flags such stamps)
            continue
        j = min(i, len(psfs) - 1)
        img = np.where(ign[i], 0.0, images[i])
        lab, sm = _segments(img, sig[i], ign[i], nsigma, 5, True)
        near = ~ign[i] & (np.hypot(xx - (W - 1) / 2, yy - (H - 1) / 2) < 5)
        if lab is None:
            sel = near
        else:
            t = _central_label(lab, sm, (W - 1) / 2, (H - 1) / 2)
            sel = lab == t if t else near
        w = np.where(sel, np.maximum(img, 0.0), 0.0)
        tot = w.sum()
        if not tot > 0:
            w, tot = np.where(sel, 1.0, 0.0), max(float(sel.sum()), 1.0)
        if not (w > 0).any():  # no usable pixel near the centre: the whole stamp's
            sel = ~ign[i]
            w, tot = np.where(sel, 1.0, 0.0), float(sel.sum())
        x = (w * xx).sum() / tot
        y = (w * yy).sum() / tot
        dx, dy = xx - x, yy - y
        # shape from the PSF-corrected second moments; round when the source is unresolved
        mxx = (w * dx * dx).sum() / tot - pxx[j]
        myy = (w * dy * dy).sum() / tot - pyy[j]
        mxy = (w * dx * dy).sum() / tot - pxy[j]
        tr, det = mxx + myy, mxx * myy - mxy * mxy
        if tr > 0.2 * (pxx[j] + pyy[j]) and det > 0:
            l1 = tr / 2 + math.sqrt(max(tr * tr / 4 - det, 0.0))
            q = float(Q.clip_guess(math.sqrt(max(tr - l1, 0.0) / l1)))
            pa = float(PA.wrap(math.degrees(0.5 * math.atan2(2 * mxy, mxx - myy)) - 90.0))
        else:
            q, pa = 0.8, 0.0
        # sizes from the circular curve of growth of the segment, the PSF's removed in quadrature
        r = np.hypot(dx, dy)[w > 0]
        fl = w[w > 0]
        o = np.argsort(r)
        cum = np.cumsum(fl[o]) / fl.sum()
        r20, r50, r80 = (float(np.interp(f, cum, r[o])) for f in (0.2, 0.5, 0.8))
        r50_gal = math.sqrt(max(r50**2 - p50[j] ** 2, 0.3**2))
        re = r50_gal / math.sqrt(q)  # circularised -> semi-major
        n = float(NS.clip_guess(np.interp(r80 / max(r20, 1e-3), _C_TABLE, _N_GRID)))
        inside = float(enclosed_fraction(max(r.max(), 1.0) / r50_gal, n)) if r.size else 1.0
        res["x"][i], res["y"][i], res["q"][i], res["pa_deg"][i] = x, y, q, pa
        res["re_pix"][i], res["n"][i] = re, n
        res["flux"][i] = max(fl.sum(), 1e-3 * sig[i].mean()) / min(max(inside, 1 / 1.5), 1.0)
    return res


def init_from_catalog(cat, stamps) -> dict[str, np.ndarray]:
    """Initial parameters (stamp pixels) for the stamps of a
    :class:`galnet.io.batch.StampBatch` from a catalogue (path or table) in input pixels,
    matched by ``id`` when the catalogue has every id of the stamps, else row by row. ``flux``
    or, without it, ``mag`` with the stamps' zeropoint. The ``_err`` columns present (e.g. the
    network's, of a ``galnet predict`` catalogue) come too, in stamp pixels."""
    from galnet.conventions import mag_to_flux
    from galnet.io.catalog import read_catalog

    t = read_catalog(cat) if not hasattr(cat, "colnames") else cat
    name = cat if isinstance(cat, str) else "init catalogue"

    def col(k):
        v = t[k]
        return np.asarray(getattr(v, "value", v), dtype=float)

    need = [k for k in ("x", "y", "re_pix", "n", "q", "pa_deg") if k not in t.colnames]
    if "flux" not in t.colnames and "mag" not in t.colnames:
        need.append("flux (or mag)")
    if need:
        raise GalnetValueError(f"{name}: missing columns {', '.join(need)}", "init")
    ids = np.asarray(stamps.ids)
    if "id" in t.colnames and set(ids.tolist()) <= set(np.asarray(t["id"]).tolist()):
        where = {v: i for i, v in enumerate(np.asarray(t["id"]).tolist())}
        rows = np.array([where[v] for v in ids.tolist()])
    elif len(t) == len(ids):
        rows = np.arange(len(ids))
    else:
        raise GalnetValueError(f"{name}: {len(t)} rows and no matching id column for "
                               f"{len(ids)} stamps", "init")
    k = np.asarray(stamps.rebin, float)
    flux = (col("flux") if "flux" in t.colnames
            else mag_to_flux(col("mag"), float(stamps.zeropoint)))[rows]
    out = {"x": (col("x")[rows] - stamps.x0 - (k - 1) / 2) / k,
           "y": (col("y")[rows] - stamps.y0 - (k - 1) / 2) / k,
           "flux": flux, "re_pix": col("re_pix")[rows] / k, "n": col("n")[rows],
           "q": col("q")[rows], "pa_deg": col("pa_deg")[rows]}
    per_pixel = {"x", "y", "re_pix"}  # errors in input pixels -> stamp pixels
    for key in FIT_KEYS:
        if f"{key}_err" in t.colnames:
            out[f"{key}_err"] = col(f"{key}_err")[rows] / (k if key in per_pixel else 1.0)
    return out
