"""One galaxy, one source: merge the deblended pieces of a large galaxy back into it.

photutils deblending cuts a large galaxy with arms or clumps into several segments (the VST r
spiral of ../shared/data: four). :func:`merge_pieces` puts the pieces back, after
:func:`galnet.io.detect.detect`.

The rule
--------
The children of one parent segment are the segments of one 8-connected blend (deblended
children touch; separate detections never do). Within a blend, child ``c`` is a *piece* of a
*host* child ``h`` when all of these hold:

1. ``flux_c <= FLUX_RATIO * flux_h`` (0.25): a piece is faint next to its host; two galaxies of
   similar flux stay two;
2. ``|centre_c - centre_h| <= EXTENT_FACTOR * r_extent_h`` (1.5 x the host's extent: the larger
   of 2.5 Kron radii and its segment's half-diagonal, px): the piece lies on the host's light;
3. neither is *point-like*. Around its brightest pixel, the light beneath it (``pedestal``) is
   the median of the ring 1.5-2.5 FWHM from it; a child is point-like when its peak above the
   pedestal (``top``) is ``>= PEAK_CONTRAST`` (3) times the pedestal, a point source of that
   peak (``top`` / the peak fraction of a Gaussian PSF, ``4 ln2 / (pi FWHM^2)``) holds ``>=
   PSF_FRACTION`` (0.15) of the child's segment flux, and the pixels above ``pedestal + top/2``
   cover ``<= COMPACT_AREA`` (6) times the PSF's half-maximum area (pi FWHM^2 / 4). Measured:
   stars on a disc 0.24-0.28 (synthetic, and the saturated star on the VST spiral); a disc's
   nucleus 0.09-0.10; clumps and arm pieces 0.01-0.10. A point-like child is a star (or a
   compact galaxy) on the disc: it stays a source of its own (modelled as a point source when
   it is one) and never hosts pieces.

Children are taken faintest first; each piece joins the qualifying host nearest to it in units of
the host's extent, and hosts that are themselves pieces pass theirs up (a chain ends at a host
that is no piece). The merged segment keeps the host's label; its centre is the host's peak in
the PSF-filtered image (the nucleus: on the VST spiral the centroid of the deblended central
piece is 6 px from it); it sums flux, area and the S/N's signal and noise, gets the union's
moments and Kron radius, and an extent (``r_extent``, which sizes its cutout) that reaches every
piece's centre (:func:`_recompute` says why not the union's Kron aperture).

Conventions: 0-based frame pixels; fluxes in image units; the table is :func:`detect`'s.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FLUX_RATIO", "EXTENT_FACTOR", "PSF_FRACTION", "PEAK_CONTRAST", "COMPACT_AREA",
           "merge_pieces", "point_like"]

#: Largest flux of a piece relative to its host.
FLUX_RATIO = 0.25
#: Largest host-centre distance of a piece, in units of the host's ``r_extent``.
EXTENT_FACTOR = 1.5
#: Smallest fraction of a point-like child's segment flux held by a point source of its peak.
PSF_FRACTION = 0.15
#: Smallest peak of a point-like child above the light around it, in units of that light.
PEAK_CONTRAST = 3.0
#: Largest half-maximum area of a point-like child, in units of the PSF's (pi FWHM^2 / 4).
COMPACT_AREA = 6.0


def point_like(data: np.ndarray, labels: np.ndarray, ids, psf_fwhm_pix: float,
               objs=None) -> np.ndarray:
    """(N,) bool: the segments ``ids`` that are point-like on the light beneath them (rule 3 of
    the module docstring). ``data``: sky-subtracted frame (unusable pixels 0); ``objs``:
    ``scipy.ndimage.find_objects(labels)`` if already at hand."""
    from scipy import ndimage

    ids = np.asarray(ids, np.int64)
    out = np.zeros(ids.size, bool)
    fw = float(psf_fwhm_pix)
    psf_area, psf_peak = math.pi * fw**2 / 4.0, 4.0 * math.log(2.0) / (math.pi * fw**2)
    R = int(math.ceil(2.5 * fw))
    H, W = data.shape
    objs = ndimage.find_objects(labels) if objs is None else objs
    for j, lab in enumerate(ids):
        sl = objs[lab - 1] if lab - 1 < len(objs) else None
        if sl is None:
            continue
        own = labels[sl] == lab
        v = np.where(own, data[sl], -np.inf)
        k = int(np.argmax(v))
        py, px = sl[0].start + k // v.shape[1], sl[1].start + k % v.shape[1]
        ys = slice(max(0, py - R), min(H, py + R + 1))
        xs = slice(max(0, px - R), min(W, px + R + 1))
        yy, xx = np.mgrid[ys, xs]
        r = np.hypot(xx - px, yy - py)
        w = data[ys, xs]
        ring = (r >= 1.5 * fw) & (r <= 2.5 * fw)
        ped = max(float(np.median(w[ring])) if ring.any() else 0.0, 0.0)
        top = float(data[py, px]) - ped
        flux = float(data[sl][own].sum())
        if top <= 0 or flux <= 0:
            continue
        area = float(((w - ped) > 0.5 * top)[r < 2.5 * fw].sum())
        out[j] = (top / psf_peak >= PSF_FRACTION * flux and top >= PEAK_CONTRAST * ped
                  and area <= COMPACT_AREA * psf_area)
    return out


def _parents(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(N,) the 8-connected blend of each segment ``ids``."""
    from scipy import ndimage

    blend, _ = ndimage.label(labels > 0, structure=np.ones((3, 3), bool))
    lut = np.zeros(int(labels.max()) + 1, np.int64)
    lut[labels.ravel()] = blend.ravel()  # one blend per segment: any of its pixels says which
    return lut[ids]


def merge_pieces(data, sigma, mask, cat, labels, *, psf_fwhm_pix: float):
    """Merge the deblended pieces of one galaxy (module docstring).

    Parameters
    ----------
    data, sigma, mask : the frame given to :func:`galnet.io.detect.detect` (sky-subtracted
        image; 1-sigma noise; nonzero = unusable, or None).
    cat, labels : :func:`detect`'s table and (H, W) segmentation map.
    psf_fwhm_pix : PSF FWHM (px).

    Returns
    -------
    (table, labels, merged): the table without the pieces (hosts' rows recomputed), the
    segmentation with the pieces relabelled to their hosts, and ``{host_label: (piece labels)}``.
    ``table.meta['merged']`` holds the same dict.
    """
    from scipy import ndimage

    ids = np.asarray(cat["id"], np.int64)
    if ids.size < 2:
        return cat, labels, {}
    d = np.asarray(data, np.float64)
    good = np.isfinite(d)
    sig = np.broadcast_to(np.asarray(sigma, np.float64), d.shape)
    good &= np.isfinite(sig) & (sig > 0)
    if mask is not None:
        good &= np.asarray(mask) == 0
    work = np.where(good, d, 0.0)
    parent = _parents(labels, ids)
    _, counts = np.unique(parent, return_counts=True)
    if counts.max() < 2:
        return cat, labels, {}
    multi = np.isin(parent, np.unique(parent)[counts > 1])
    point = np.zeros(ids.size, bool)
    objs = ndimage.find_objects(labels)
    point[multi] = point_like(work, labels, ids[multi], psf_fwhm_pix, objs)
    flux = np.asarray(cat["flux"], float)
    x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
    rext = np.asarray(cat["r_extent"], float)
    host = np.arange(ids.size)
    for c in np.argsort(flux, kind="stable"):
        if not multi[c] or point[c]:
            continue
        cand = np.flatnonzero((parent == parent[c]) & ~point & (flux * FLUX_RATIO >= flux[c])
                              & (np.arange(ids.size) != c))
        if cand.size == 0:
            continue
        dist = np.hypot(x[cand] - x[c], y[cand] - y[c]) / np.maximum(rext[cand], 1.0)
        ok = dist <= EXTENT_FACTOR
        if ok.any():
            host[c] = cand[ok][np.argmin(dist[ok])]
    for _ in range(ids.size):  # pass pieces of pieces up to the top host
        nxt = host[host]
        if np.array_equal(nxt, host):
            break
        host = nxt
    pieces = np.flatnonzero(host != np.arange(ids.size))
    if pieces.size == 0:
        return cat, labels, {}
    merged: dict[int, tuple[int, ...]] = {}
    for p in pieces:
        merged.setdefault(int(ids[host[p]]), ())
        merged[int(ids[host[p]])] += (int(ids[p]),)
    lut = np.arange(int(labels.max()) + 1, dtype=labels.dtype)
    lut[ids[pieces]] = ids[host[pieces]]
    new_labels = lut[labels]
    out = cat[np.setdiff1d(np.arange(ids.size), pieces)]
    _recentre(out, work, labels, objs, merged, psf_fwhm_pix)
    pos = {int(v): (float(a), float(b)) for v, a, b in zip(ids, x, y, strict=True)}
    _recompute(out, work, sig, good, new_labels, merged, pos)
    out.meta["merged"] = merged
    return out, new_labels, merged


def _recentre(t, work, labels, objs, merged: dict, fwhm: float) -> None:
    """Hosts' ``x, y`` (in place) = the peak of their own segment in the image filtered by a
    Gaussian of the PSF FWHM: the nucleus, not the centroid of a piece that deblending cut."""
    from scipy import ndimage

    row = {int(v): i for i, v in enumerate(np.asarray(t["id"]))}
    for lab in merged:
        sl = objs[lab - 1]
        f = ndimage.gaussian_filter(work[sl], fwhm / 2.3548, mode="nearest")
        k = int(np.argmax(np.where(labels[sl] == lab, f, -np.inf)))
        t["x"][row[lab]] = float(sl[1].start + k % f.shape[1])
        t["y"][row[lab]] = float(sl[0].start + k // f.shape[1])


def _recompute(t, work, sig, good, labels, merged: dict, pos: dict) -> None:
    """Update the hosts' rows of ``t`` (in place) over their merged segments: flux, snr, area,
    peak, bbox, a, b, theta_deg, kron_radius (the union's) and r_extent (the larger of the
    host's and the distance to the farthest piece's centre; the union's Kron aperture is not
    used: on the VST spiral the arms make it 205 px against the host's 119, the network then
    saw the galaxy binned by 8 with a bright star on it, and put its centre 17 px off); ``pos``
    the pieces' centres ``{label: (x, y)}`` (the hosts' centres are :func:`_recentre`'s)."""
    from photutils.segmentation import SegmentationImage, SourceCatalog
    from scipy import ndimage

    hosts = np.array(sorted(merged), np.int64)
    seg = SegmentationImage(np.where(np.isin(labels, hosts), labels, 0).astype(np.int32))
    sc = SourceCatalog(work, seg, mask=~good)
    val = {k: np.atleast_1d(np.asarray(getattr(getattr(sc, k), "value", getattr(sc, k)),
                                       np.float64))
           for k in ("semimajor_axis", "semiminor_axis", "orientation", "kron_radius",
                     "max_value", "area", "bbox_xmin", "bbox_xmax", "bbox_ymin",
                     "bbox_ymax")}
    var = np.where(good, sig, 0.0) ** 2
    objs = ndimage.find_objects(labels)
    row = {int(v): i for i, v in enumerate(np.asarray(t["id"]))}
    for j, lab in enumerate(np.asarray(sc.labels, np.int64)):
        i = row[int(lab)]
        sl = objs[int(lab) - 1]
        m = labels[sl] == lab
        flux, noise = float(work[sl][m].sum()), math.sqrt(float(var[sl][m].sum()))
        t["flux"][i] = flux
        t["snr"][i] = flux / noise if noise > 0 else 0.0
        t["area"][i] = int(val["area"][j])
        t["peak"][i] = val["max_value"][j]
        a, kron = val["semimajor_axis"][j], val["kron_radius"][j]
        t["a"][i], t["b"][i] = a, val["semiminor_axis"][j]
        t["theta_deg"][i] = np.mod(val["orientation"][j], 180.0)
        t["kron_radius"][i] = kron
        x0, x1, y0, y1 = (int(val[k][j]) for k in ("bbox_xmin", "bbox_xmax", "bbox_ymin",
                                                     "bbox_ymax"))
        t["bbox_xmin"][i], t["bbox_xmax"][i], t["bbox_ymin"][i], t["bbox_ymax"][i] = (
            x0, x1, y0, y1)
        # the cutout must hold every piece: the host's extent or the farthest piece's centre
        far = max(math.hypot(pos[p][0] - float(t["x"][i]), pos[p][1] - float(t["y"][i]))
                  for p in merged[int(lab)])
        t["r_extent"][i] = max(float(t["r_extent"][i]), far)
        if "star_like" in t.colnames:
            t["star_like"][i] = False
