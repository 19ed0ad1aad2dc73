"""Stamp preparation: crop or pad to ``S x S``, choose and apply the rebinning, noise and masks.

:func:`prepare_block` turns raw stamps ``(n, H, W)`` (and optional sigma / ivar / mask planes)
into the output stamps of a :class:`~galnet.io.batch.StampBatch` with the transform of
:mod:`galnet.io.batch` (``x_in = x0 + k x + (k - 1)/2``). PSFs are binned by
:mod:`galnet.io.psf`.

Geometry (pixel conventions of :mod:`galnet.conventions`: 0-based, pixel centres at integers)
---------------------------------------------------------------------------------------------
- Stamps of another size are cropped or zero-padded around their centre ``((W-1)/2, (H-1)/2)``
  (``x0 = floor((W-1)/2 - (S-1)/2 k - (k-1)/2 + 1/2)``): an odd-sized input keeps its central
  pixel at ``(S-1)/2`` exactly. Padded pixels are masked (flag ``PADDED``).
- Rebinning (flag ``REBINNED``), rule ``rebin="auto"``, only for stamps larger than ``S``: the
  central source is segmented (pixels of the 3x3-box-smoothed, sky-subtracted stamp above
  ``2 sigma`` of the smoothed noise, 8-connected, the segment at the brightest of the 3x3 central
  pixels); if less than ``preset.containment`` (0.9) of its flux lies within
  ``preset.containment_radius`` (27 px: the simulator's containment rule) of the centre, the
  stamp is rebinned by the smallest ``k`` in 2..kmax that puts that fraction within ``27 k``
  input pixels, ``kmax = min(MAX_REBIN, ceil(max(H, W) / S))`` (``kmax`` if none does;
  ``MAX_REBIN`` = 8). The segment misses the faint wings and what lies outside the input stamp,
  so the rule is conservative (low-surface-brightness galaxies are not rebinned). Frames sized
  by detection use :func:`galnet.io.detect.cutout_plan` instead. Rebinning block-sums
  ``k x k`` pixels of the image (flux kept), adds sigma in quadrature, ORs the mask and bins the
  PSF the same way (the binned effective PSF is the PSF convolved with the ``k x k`` comb of
  pixel centres, sampled every ``k`` pixels: an exact block-sum for odd k; for even k the PSF is
  interpolated half a pixel with GalSim's Quintic kernel). For an odd input size and even k the
  input centre lands at ``(S-1)/2 - 1/(2k)`` (no sub-pixel resampling of the image).
  ``rebin=1..MAX_REBIN`` forces a factor for every stamp; an array gives one per stamp.

Noise and masks
---------------
- Non-finite image pixels (and non-finite sigma/ivar) are set to 0 and masked: flag
  ``NONFINITE`` (not for pixels the mask or the frame edge already masks). Pixels with
  ``sigma <= 0`` or ``ivar <= 0`` are masked.
- ``sky_rms`` (per stamp, on the output stamp): without a sigma/ivar map, ``median - 15.87th
  percentile`` of the unmasked pixels of the stamp's border (``S // 6`` = 10 px wide: pixels at
  least 21 px from the centre), i.e. the lower half of the pixel distribution, which galaxy light
  and neighbours barely touch (precision ~3%; overestimated when a bright galaxy's smooth light
  fills the border, e.g. x4 for re = 10 px at S/N ~ 1000: give a sigma map for such samples);
  with a map, the mean sigma over the same pixels. All unmasked pixels are used when fewer than
  50 remain; NaN when none, or when the estimate is 0.
- Without a sigma/ivar map, ``sigma = sky_rms`` (constant per stamp). Masked pixels carry
  ``sigma = sky_rms`` (1 where ``sky_rms`` is NaN) as a finite placeholder: use ``mask``.
- ``MASKED_CENTRE``: all 3x3 central pixels masked. A stamp with no usable pixel is kept
  (flagged); an input in which no stamp has a usable pixel is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from galnet.flags import Flag
from galnet.presets import Preset

__all__ = ["MAX_REBIN", "REBIN_DETECT_NSIGMA", "Block", "prepare_block"]

#: Detection threshold of the rebinning rule, in units of the smoothed-noise rms.
REBIN_DETECT_NSIGMA = 2.0
#: Largest rebinning factor.
MAX_REBIN = 8
#: Fewest ring pixels for the sky estimate before all unmasked pixels are used.
_MIN_SKY_PIXELS = 50
#: Gaussian quantile at -1 sigma.
_Q16 = 0.15865525393145707


def _radius(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    return np.hypot(xx - (w - 1) / 2.0, yy - (h - 1) / 2.0)


def _border(a: np.ndarray, w: int) -> np.ndarray:
    """(n, M) pixels of ``a`` (n, H, W) less than ``w`` pixels from the stamp edge."""
    n, H, W = a.shape
    parts = (a[:, :w], a[:, H - w:], a[:, w:H - w, :w], a[:, w:H - w, W - w:])
    return np.concatenate([p.reshape(n, -1) for p in parts], axis=1)


def _border_width(H: int, W: int) -> int:
    """Width of the sky border: 10 px for 61 x 61 (pixels >= 21 px from the centre)."""
    return max(1, min(H, W) // 6)


def _robust_stats(img: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per stamp (median, median - 15.87th percentile) of the unmasked pixels of the border
    (:func:`_border_width`; all unmasked pixels where fewer than _MIN_SKY_PIXELS remain). NaN
    where no pixel is left or the rms is 0."""
    n, H, W = img.shape
    w = _border_width(H, W)
    v = _border(img, w)
    M = v.shape[1]
    med = np.full(n, np.nan)
    rms = np.full(n, np.nan)
    dirty = _border(mask, w).any(axis=1) if mask.any() else np.zeros(n, dtype=bool)
    if M < _MIN_SKY_PIXELS:
        dirty[:] = True
    clean = np.flatnonzero(~dirty)
    if clean.size:
        k16, k50 = int(round(_Q16 * (M - 1))), (M - 1) // 2
        part = np.partition(v[clean] if clean.size < n else v, k50, axis=1)
        low = np.partition(part[:, :k50], k16, axis=1)[:, k16]  # faster than kth=(k16, k50)
        med[clean] = part[:, k50]
        rms[clean] = part[:, k50] - low
    if dirty.any():
        m = _border(mask, w)
        for i in np.flatnonzero(dirty):
            good = v[i][~m[i]]
            if good.size < _MIN_SKY_PIXELS:
                good = img[i][~mask[i]]
            if good.size == 0:
                continue
            good = np.sort(good)
            nv = good.size
            med[i] = good[(nv - 1) // 2]
            rms[i] = med[i] - good[int(round(_Q16 * (nv - 1)))]
    rms[~(rms > 0)] = np.nan
    return med, rms


def _mean_sigma(sig: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per stamp mean of a sigma map over the unmasked border pixels (all unmasked pixels where
    fewer than _MIN_SKY_PIXELS remain); NaN where none."""
    n, H, W = sig.shape
    w = _border_width(H, W)
    good = ~_border(mask, w)
    cnt = good.sum(axis=1)
    tot = np.where(good, _border(sig, w), 0.0).sum(axis=1, dtype=np.float64)
    few = cnt < _MIN_SKY_PIXELS
    if few.any():
        g = ~mask[few]
        cnt[few] = g.sum(axis=(1, 2))
        tot[few] = np.where(g, sig[few], 0.0).sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = tot / cnt
    out[~(out > 0)] = np.nan
    return out


def _auto_rebin(img: np.ndarray, mask: np.ndarray, kmax: int, preset: Preset) -> np.ndarray:
    """Rebinning factor per stamp (the rule of the module docstring)."""
    from scipy import ndimage

    n, H, W = img.shape
    k = np.ones(n, dtype=np.int64)
    if kmax < 2:
        return k
    r = _radius((H, W))
    med, rms = _robust_stats(img, mask)
    work = np.where(mask, 0.0, img - np.nan_to_num(med)[:, None, None]).astype(np.float32)
    sm = ndimage.uniform_filter(work, size=(1, 3, 3), mode="constant")
    thr = np.where(np.isfinite(rms), REBIN_DETECT_NSIGMA * rms / 3.0, np.inf)
    det = (sm > thr[:, None, None].astype(np.float32)) & ~mask
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    labels, _ = ndimage.label(det, structure=structure)
    cy, cx = (H - 1) // 2, (W - 1) // 2
    cl = labels[:, cy - 1:cy + 2, cx - 1:cx + 2].reshape(n, 9)
    cs = sm[:, cy - 1:cy + 2, cx - 1:cx + 2].reshape(n, 9)
    pick = np.argmax(np.where(cl > 0, cs, -np.inf), axis=1)
    lab = cl[np.arange(n), pick]
    seg = (labels == lab[:, None, None]) & (lab > 0)[:, None, None]
    flux = np.where(seg, work, 0.0)
    total = flux.sum(axis=(1, 2), dtype=np.float64)
    R = preset.containment_radius
    k[:] = kmax  # when no factor up to kmax contains the source
    need = total > 0
    k[~need] = 1
    for kk in range(1, kmax):
        inside = flux[:, r <= R * kk].sum(axis=1, dtype=np.float64)
        ok = need & (inside >= preset.containment * total)
        k[ok] = kk
        need &= ~ok
    return k


@dataclass
class Block:
    images: np.ndarray
    sigma: np.ndarray
    mask: np.ndarray
    flags: np.ndarray
    rebin: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    sky_rms: np.ndarray


def _offset(n_in: int, S: int, k: int) -> int:
    """Integer input offset of output pixel 0 for an input axis of n_in pixels (module doc)."""
    c_in = (n_in - 1) / 2.0
    return int(math.floor(c_in - k * (S - 1) / 2.0 - (k - 1) / 2.0 + 0.5))


def _place(a: np.ndarray, y0: int, x0: int, B: int, fill) -> tuple[np.ndarray, bool]:
    """The B x B window of ``a`` (n, H, W) starting at (y0, x0), outside filled with ``fill``;
    also whether any pixel was outside."""
    n, H, W = a.shape
    out = np.full((n, B, B), fill, dtype=a.dtype)
    ys, ye = max(0, y0), min(H, y0 + B)
    xs, xe = max(0, x0), min(W, x0 + B)
    if ys < ye and xs < xe:
        out[:, ys - y0:ye - y0, xs - x0:xe - x0] = a[:, ys:ye, xs:xe]
    return out, not (ys == y0 and xs == x0 and ye == y0 + B and xe == x0 + B)


def prepare_block(raw, sig_raw, ivar_raw, mask_raw, outside, *, S: int, rebin, preset: Preset
             ) -> Block:
    """Stamps ``raw`` (n, H, W) -> S x S output stamps, noise, mask, flags, transform."""
    img = np.array(raw, dtype=np.float32)
    n, H, W = img.shape
    flags = np.zeros(n, dtype=np.int64)
    # masked already: outside the frame, or by the user (NaN there is no news: no NONFINITE)
    mask = np.zeros(img.shape, bool) if outside is None else outside.copy()
    if mask_raw is not None:
        mask |= np.asarray(mask_raw) != 0
    bad = ~np.isfinite(img)
    nonfinite = (bad & ~mask).any(axis=(1, 2))
    mask |= bad
    sig = None
    if sig_raw is not None:
        sig = np.array(sig_raw, dtype=np.float32)
        fin = np.isfinite(sig)
        nonfinite |= (~fin & ~mask).any(axis=(1, 2))
        mask |= ~fin | ~(sig > 0)
    elif ivar_raw is not None:
        iv = np.asarray(ivar_raw, dtype=np.float32)
        fin = np.isfinite(iv)
        nonfinite |= (~fin & ~mask).any(axis=(1, 2))
        good = fin & (iv > 0)
        mask |= ~good
        with np.errstate(divide="ignore", invalid="ignore"):
            sig = np.where(good, 1.0 / np.sqrt(np.where(good, iv, 1.0)), 0.0).astype(np.float32)
    flags[nonfinite] |= Flag.NONFINITE
    np.copyto(img, 0.0, where=mask)
    if sig is not None:
        np.copyto(sig, 0.0, where=mask)

    # rebinning factor per stamp
    if rebin == "auto":
        kmax = min(MAX_REBIN, math.ceil(max(H, W) / S))
        k = _auto_rebin(img, mask, kmax, preset) if max(H, W) > S else np.ones(n, np.int64)
    else:
        k = np.broadcast_to(np.asarray(rebin, dtype=np.int64), (n,)).copy()

    if H == S and W == S and (k == 1).all():  # the common path: nothing to move
        x0 = np.zeros(n)
        y0 = np.zeros(n)
    else:
        out_img = np.empty((n, S, S), np.float32)
        out_mask = np.empty((n, S, S), bool)
        out_sig = None if sig is None else np.empty((n, S, S), np.float32)
        x0 = np.empty(n)
        y0 = np.empty(n)
        for kk in np.unique(k):
            kk = int(kk)
            sel = np.flatnonzero(k == kk)
            B = S * kk
            oy, ox = _offset(H, S, kk), _offset(W, S, kk)
            a, padded = _place(img[sel], oy, ox, B, 0.0)
            m, _ = _place(mask[sel], oy, ox, B, True)
            s = None if sig is None else _place(sig[sel], oy, ox, B, 0.0)[0]
            if kk > 1:
                a = a.reshape(-1, S, kk, S, kk).sum(axis=(2, 4))
                m = m.reshape(-1, S, kk, S, kk).any(axis=(2, 4))
                if s is not None:
                    s = np.sqrt((s.astype(np.float64) ** 2).reshape(-1, S, kk, S, kk).sum(
                        axis=(2, 4))).astype(np.float32)
                flags[sel] |= Flag.REBINNED
            if padded:
                flags[sel] |= Flag.PADDED
            out_img[sel], out_mask[sel] = a, m
            if s is not None:
                out_sig[sel] = s
            x0[sel], y0[sel] = ox, oy
        img, mask, sig = out_img, out_mask, out_sig
        np.copyto(img, 0.0, where=mask)

    # noise
    sky = _robust_stats(img, mask)[1] if sig is None else _mean_sigma(sig, mask)
    fill = np.where(np.isfinite(sky), sky, 1.0).astype(np.float32)
    if sig is None:
        sig = np.empty((n, S, S), np.float32)
        sig[...] = fill[:, None, None]
    else:
        np.copyto(sig, np.broadcast_to(fill[:, None, None], sig.shape), where=mask)
    c = (S - 1) // 2
    flags[mask[:, c - 1:c + 2, c - 1:c + 2].all(axis=(1, 2))] |= Flag.MASKED_CENTRE
    return Block(img, sig, mask, flags, k, x0, y0, sky)
