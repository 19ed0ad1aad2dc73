"""Real galaxies for galleries: isolated, extended sources cut from the bank's real frames.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from galnet.errors import GalnetFileError
from galnet.sim.bank.frames import STAMP, cat_attr, discover_frames, load_frame, normalise_frame

__all__ = ["real_galaxy_cutouts"]



# ----------------------------------------------------------------------------------------------
# Real galaxies for galleries
# ----------------------------------------------------------------------------------------------
_GALLERY_FRAMES = ("kids_r", "vst_r", "ctio_i", "ntt_emmi", "decam_170316_062107_N2_z")


def real_galaxy_cutouts(data_dir: str | os.PathLike, n: int, seed: int = 0, *,
                        min_snr: float = 30.0, frames: Sequence[str] = _GALLERY_FRAMES
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` 61 x 61 cutouts of real, isolated, extended sources (galaxies) at the centre.

    Sources are detected on the noise-normalised frames (as for the bank) and measured with
    photutils ``SourceCatalog``. Kept: S/N = flux / (sigma sqrt(area)) > ``min_snr``; extended
    (peak / flux below half that of the most compact bright sources, i.e. not stars); footprint
    smaller than 45 px; brightest pixel within 2.5 px of the centroid (no merged pairs); no other
    source brighter than a third of its flux within 20 px; no bad
    pixel; at least 30 px from the edges. Drawn at random (``seed``) across frames.

    Returns (images (k, 61, 61) float32, sky-subtracted, in the frames' own units, centred on the
    source's nearest pixel; noise_rms (k,) float64, median 1-sigma sky noise of each cutout, same
    units), k <= n.
    """
    from photutils.segmentation import SegmentationImage, SourceCatalog

    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise GalnetFileError(f"data directory {str(data_dir)!r} not found")
    use = [f for f in discover_frames(data_dir)[0] if f.name in set(frames)]
    if not use:
        raise GalnetFileError(f"data directory {str(data_dir)!r} holds none of the frames "
                              f"{list(frames)}")
    h = STAMP // 2
    cands: list[tuple[np.ndarray, float]] = []
    for fr in use:
        nf = normalise_frame(*load_frame(data_dir, fr))
        if nf.segm.max() == 0:
            continue
        cat = SourceCatalog(np.where(nf.bad, 0.0, nf.norm).astype(float),
                            SegmentationImage(nf.segm))
        flux = np.asarray(cat.segment_flux, dtype=float)
        area = np.asarray(cat.area.value, dtype=float)
        peak = np.asarray(cat.max_value, dtype=float)
        xc = cat_attr(cat, "x_centroid", "xcentroid")
        yc = cat_attr(cat, "y_centroid", "ycentroid")
        off = np.hypot(cat_attr(cat, "max_value_xindex", "maxval_xindex") - xc,
                       cat_attr(cat, "max_value_yindex", "maxval_yindex") - yc)
        bb = cat.bbox
        size = np.array([max(b.ixmax - b.ixmin, b.iymax - b.iymin) for b in bb])
        snr = flux / np.sqrt(np.maximum(area, 1.0))
        conc = peak / np.maximum(flux, 1e-30)
        bright = snr > 50
        star_conc = np.percentile(conc[bright], 90) if bright.sum() >= 5 else np.inf
        ny, nx = nf.norm.shape
        ok = ((snr > min_snr) & (conc < 0.5 * star_conc) & (size < 45) & (off < 2.5)
              & (xc > h) & (xc < nx - h - 1) & (yc > h) & (yc < ny - h - 1))
        for i in np.flatnonzero(ok):
            near = (np.hypot(xc - xc[i], yc - yc[i]) < 20) & (flux > flux[i] / 3)
            near[i] = False
            if near.any():
                continue
            x, y = int(round(xc[i])), int(round(yc[i]))
            sl = (slice(y - h, y + h + 1), slice(x - h, x + h + 1))
            if nf.bad[sl].any():
                continue
            cands.append((nf.sky_sub[sl].astype(np.float32), float(np.median(nf.noise[sl]))))
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(cands))[: max(int(n), 0)]
    if len(pick) == 0:
        return np.zeros((0, STAMP, STAMP), np.float32), np.zeros(0)
    return (np.stack([cands[i][0] for i in pick]), np.array([cands[i][1] for i in pick]))
