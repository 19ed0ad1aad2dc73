"""The sources of a frame: detected (photutils, :func:`galnet.io.detect.detect`) or read from a
positions catalogue, each with its cutout side and rebinning factor.

:func:`find_sources` returns a :class:`Sources` (frame pixels, 0-based): detection gives ids =
segment labels, centroids, S/N and the light's extent; positions (``x, y`` or ``ra, dec`` with a
WCS; optional ``id``) are matched to the detection segments under them for their size (a position
on no segment gets the network's stamp, rebin 1). Deblended pieces of one galaxy are merged into
it first (:mod:`galnet.io.merge`: a faint piece on a brighter child's light; point-like children
stay separate). Sources with ``snr < snr_min`` (or detected but
not in the positions) are *not modelled*: their segment pixels are masked in every cutout
(:meth:`Sources.unmodelled_mask`); everything else is modelled, never masked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from galnet.errors import GalnetValueError

__all__ = ["Sources", "find_sources", "psf_fwhm_pix", "read_positions", "quantise_sizes"]

#: Cutout sides are rounded up to one of these (frame px) so that fits batch by size.
SIZE_STEPS: tuple[int, ...] = (61, 81, 101, 121, 151, 181, 221, 261, 321, 391, 471)


@dataclass
class Sources:
    """N sources of a frame (arrays of length N; frame pixels).

    ids : int64 identifiers.   x, y : first positions.   snr : detection S/N (NaN for positions
    without a segment).   size : odd native cutout side (px).   rebin : network rebinning factor
    k (the network sees ``stamp * k`` px block-summed to ``stamp``).   label : segment label of
    each source (0 = none).   segm : (H, W) int segmentation of the frame, or None.
    unmodelled : labels of detected segments that are not modelled (masked).
    merged : ``{label: (piece labels)}``: deblended pieces of one galaxy merged into it
    (:func:`galnet.io.merge.merge_pieces`; their pixels carry the host's label in ``segm``).
    """

    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    snr: np.ndarray
    size: np.ndarray
    rebin: np.ndarray
    label: np.ndarray
    segm: np.ndarray | None
    unmodelled: np.ndarray
    merged: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.size)

    def unmodelled_mask(self) -> np.ndarray | None:
        """(H, W) bool: pixels of the segments of sources that are not modelled (None if none)."""
        if self.segm is None or self.unmodelled.size == 0:
            return None
        return np.isin(self.segm, self.unmodelled)


def psf_fwhm_pix(psf: np.ndarray) -> float:
    """FWHM (px) of a PSF image from the area above half its peak: ``2 sqrt(A / pi)``."""
    p = np.asarray(psf, dtype=np.float64)
    area = float((p >= 0.5 * p.max()).sum())
    return max(2.0 * np.sqrt(area / np.pi), 1.0)


def quantise_sizes(size: np.ndarray, stamp: int) -> np.ndarray:
    """Each side rounded up to :data:`SIZE_STEPS` (odd; at least ``stamp``; larger ones odd as
    given), so that the native fits batch into a few sizes."""
    size = np.maximum(np.asarray(size, dtype=np.int64), stamp)
    steps = np.array([s for s in SIZE_STEPS if s >= stamp] or [stamp])
    out = size.copy()
    small = size <= steps[-1]
    out[small] = steps[np.searchsorted(steps, size[small])]
    return out | 1


def read_positions(positions, wcs, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, ids) of a positions catalogue (path or table): ``x, y`` (0-based frame px) or
    ``ra, dec`` (deg; needs ``wcs``), optional ``id``."""
    from astropy.table import Table

    from galnet.io.catalog import read_catalog
    from galnet.io.fits import is_pathlike

    where = str(positions) if is_pathlike(positions) else "positions"
    if is_pathlike(positions):
        t = read_catalog(positions, "positions")
    elif isinstance(positions, Table):
        t = positions
    else:
        a = np.asarray(positions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 2:
            raise GalnetValueError(f"positions: expected a table or an (N, 2) array of x, y, "
                                   f"got shape {a.shape}", "positions")
        t = Table({"x": a[:, 0], "y": a[:, 1]})
    if len(t) == 0:
        raise GalnetValueError(f"{where}: no positions", "positions")
    cols = {c.lower(): c for c in t.colnames}

    def num(c):
        v = t[cols[c]]
        try:
            return np.asarray(getattr(v, "value", v), dtype=np.float64)
        except (TypeError, ValueError):
            first = np.asarray(v).ravel()[:1].tolist()
            raise GalnetValueError(f"{where}: column {cols[c]!r} is not numeric (first value "
                                   f"{first[0] if first else None!r})", "positions") from None

    if "x" in cols and "y" in cols:
        x, y = num("x"), num("y")
    elif "ra" in cols and "dec" in cols:
        if wcs is None:
            raise GalnetValueError(f"{name}: no celestial WCS, cannot use ra/dec positions",
                                   "positions")
        x, y = (np.asarray(v, np.float64) for v in wcs.all_world2pix(num("ra"), num("dec"), 0))
    else:
        raise GalnetValueError(f"{where}: needs columns x, y (0-based pixels) or ra, dec "
                               f"(degrees); has {', '.join(t.colnames)}", "positions")
    if not (np.isfinite(x) & np.isfinite(y)).all():
        raise GalnetValueError(f"{where}: non-finite positions", "positions")
    ids = (np.asarray(t[cols["id"]]) if "id" in cols else np.arange(len(t), dtype=np.int64))
    return x, y, ids


def find_sources(fd, *, fwhm: float, stamp: int, detect: bool = True, positions=None,
                 snr_min: float = 5.0, max_rebin: int | None = None,
                 merge: bool = True) -> Sources:
    """The sources of the :class:`~galnet.frame.inputs.FrameData` ``fd`` (module docstring).

    ``fwhm``: the PSF FWHM (px) for the detection filter; ``stamp``: the network's stamp side;
    ``merge``: merge the deblended pieces of one galaxy (:func:`galnet.io.merge.merge_pieces`).
    """
    from galnet.io.detect import cutout_plan
    from galnet.io.detect import detect as detect_sources
    from galnet.io.prepare import MAX_REBIN

    kmax = MAX_REBIN if max_rebin is None else int(max_rebin)
    cat, segm = detect_sources(fd.data, fd.sigma, fd.mask, psf_fwhm_pix=float(fwhm))
    merged: dict = {}
    if merge and len(cat) > 1:
        from galnet.io.merge import merge_pieces

        cat, segm, merged = merge_pieces(fd.data, fd.sigma, fd.mask, cat, segm,
                                         psf_fwhm_pix=float(fwhm))
    if len(cat):
        size_d, rebin_d = cutout_plan(cat, stamp=stamp, max_rebin=kmax)
        labels_d = np.asarray(cat["id"], dtype=np.int64)
        snr_d = np.asarray(cat["snr"], dtype=np.float64)
    else:
        size_d = rebin_d = labels_d = np.zeros(0, np.int64)
        snr_d = np.zeros(0)
    if detect:
        keep = snr_d >= snr_min
        return Sources(labels_d[keep], np.asarray(cat["x"], float)[keep],
                       np.asarray(cat["y"], float)[keep], snr_d[keep],
                       quantise_sizes(np.asarray(size_d)[keep], stamp),
                       np.asarray(rebin_d, np.int64)[keep], labels_d[keep], segm,
                       labels_d[~keep], merged)
    x, y, ids = read_positions(positions, fd.wcs, fd.name)
    H, W = fd.shape
    on = (x > -0.5) & (x < W - 0.5) & (y > -0.5) & (y < H - 0.5)
    if not on.any():
        where = str(positions) if isinstance(positions, str | os.PathLike) else "positions"
        raise GalnetValueError(f"{where}: none of the {x.size} positions lies on {fd.name} "
                               f"({W} x {H} px; x, y are 0-based pixels)", "positions")
    ix = np.clip(np.ceil(x - 0.5).astype(np.int64), 0, W - 1)
    iy = np.clip(np.ceil(y - 0.5).astype(np.int64), 0, H - 1)
    inside = (x > -0.5) & (x < W - 0.5) & (y > -0.5) & (y < H - 0.5)
    lab = np.where(inside, segm[iy, ix], 0).astype(np.int64)
    row = {int(v): i for i, v in enumerate(labels_d)}
    idx = np.array([row.get(int(v), -1) for v in lab], dtype=np.int64)
    has = idx >= 0
    size = np.full(x.size, stamp, np.int64)
    rebin = np.ones(x.size, np.int64)
    snr = np.full(x.size, np.nan)
    size[has] = np.asarray(size_d)[idx[has]]
    rebin[has] = np.asarray(rebin_d)[idx[has]]
    snr[has] = snr_d[idx[has]]
    unmodelled = np.setdiff1d(labels_d, lab[has])
    return Sources(np.asarray(ids), x, y, snr, quantise_sizes(size, stamp), rebin, lab, segm,
                   unmodelled, merged)
