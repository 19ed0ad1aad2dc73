"""Cutouts of a frame for the two uses of the pipeline.

- **Network stamps** (:func:`network_stamps`): ``stamp x stamp`` (61 x 61) inputs of GaLNet, the
  source's ``stamp * k`` frame pixels block-summed by its rebinning factor ``k`` (flux kept; the
  PSF binned the same way; flag ``REBINNED``), through :func:`galnet.io.cutouts.iter_frame` with
  the frame's noise map and mask. Results map back to frame pixels with
  ``x = x0 + k x_stamp + (k - 1)/2``.
- **Native cutouts** (:func:`native_cutouts`): the source's own ``size x size`` frame pixels (no
  rebinning), for the models, chi2 and the refine. Cutout pixel ``(u, v)`` is frame pixel
  ``(x0 + u, y0 + v)`` with ``x0 = ceil(x - 1/2) - (size - 1)/2`` (astropy ``Cutout2D``'s
  centre pixel); pixels outside the frame are masked (flag ``EDGE``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from galnet.flags import Flag

__all__ = ["Cutouts", "cutout_origin", "native_cutouts", "network_stamps", "native_psfs"]


def cutout_origin(x, y, size) -> tuple[np.ndarray, np.ndarray]:
    """Integer frame coordinates of cutout pixel (0, 0) for centres ``x, y`` and odd sides."""
    h = (np.asarray(size, np.int64) - 1) // 2
    return (np.ceil(np.asarray(x) - 0.5).astype(np.int64) - h,
            np.ceil(np.asarray(y) - 0.5).astype(np.int64) - h)


def _window(a: np.ndarray, x0: int, y0: int, s: int, fill) -> np.ndarray:
    H, W = a.shape
    out = np.full((s, s), fill, dtype=a.dtype)
    ys, ye, xs, xe = max(0, y0), min(H, y0 + s), max(0, x0), min(W, x0 + s)
    if ys < ye and xs < xe:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = a[ys:ye, xs:xe]
    return out


@dataclass
class Cutouts:
    """Native cutouts of one size ``s`` for the sources ``index`` (into the source list).

    data, sigma : (n, s, s) float32 (sky-subtracted image, 1-sigma noise).   mask : (n, s, s)
    bool (True = ignored: frame mask, outside the frame, unmodelled sources' segments).
    x0, y0 : (n,) int64 frame origin.   edge : (n,) bool (part of the cutout is off the frame).
    """

    index: np.ndarray
    size: int
    data: np.ndarray
    sigma: np.ndarray
    mask: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    edge: np.ndarray


def native_cutouts(fd, index: np.ndarray, x, y, size: int, extra_mask=None) -> Cutouts:
    """Cutouts ``size x size`` of frame ``fd`` around ``x[index], y[index]`` (module docstring);
    ``extra_mask`` (H, W) bool is ORed into the mask (the unmodelled sources' segments)."""
    index = np.asarray(index, np.int64)
    n, s = index.size, int(size)
    x0, y0 = cutout_origin(np.asarray(x)[index], np.asarray(y)[index], np.full(n, s))
    data = np.empty((n, s, s), np.float32)
    sig = np.empty((n, s, s), np.float32)
    mask = np.empty((n, s, s), bool)
    edge = np.zeros(n, bool)
    H, W = fd.shape
    for j in range(n):
        a, b = int(x0[j]), int(y0[j])
        data[j] = _window(fd.data, a, b, s, 0.0)
        sig[j] = _window(fd.sigma, a, b, s, 1.0)
        m = _window(fd.mask, a, b, s, True)
        if extra_mask is not None:
            m |= _window(extra_mask, a, b, s, False)
        mask[j] = m
        edge[j] = a < 0 or b < 0 or a + s > W or b + s > H
    np.copyto(data, 0.0, where=mask)
    return Cutouts(index, s, data, sig, mask, x0, y0, edge)


def native_psfs(psf, x, y, psf_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, P, P) unit-sum native-pixel PSFs at frame positions ``x, y`` (a PSFEx model is
    evaluated at each; one image is shared: shape (1, P, P)) and BAD_PSF (n,) bool."""
    import contextlib

    from galnet.io.psf import PSFSource

    n = len(x)
    with contextlib.ExitStack() as stack:
        src = PSFSource(psf, n, psf_size, "positions", stack)
        if src.kind == "image":
            out, bad = src.block(0, 1, np.ones(1, np.int64), None)
            return out, np.full(n, bool(bad[0]))
        pos = np.stack([np.asarray(x, float), np.asarray(y, float)], axis=1)
        return src.block(0, n, np.ones(n, np.int64), pos)


def network_stamps(fd, psf, x, y, size, rebin, *, preset, ids=None, chunk: int = 4096):
    """The network's stamps of every source, one :class:`galnet.io.batch.StampBatch` (input
    order), frame-pixel transform; grouped by rebinning factor internally."""
    from galnet.io.batch import StampBatch
    from galnet.io.cutouts import iter_frame

    x, y = np.asarray(x, float), np.asarray(y, float)
    rebin = np.asarray(rebin, np.int64)
    n = x.size
    ids = np.arange(n) if ids is None else np.asarray(ids)
    S = preset.stamp
    parts, order = [], []
    for k in np.unique(rebin):
        k = int(k)
        sel = np.flatnonzero(rebin == k)
        side = S * k + (1 - (S * k) % 2)  # odd; an even k takes one extra (unused) px
        pos = {"x": x[sel], "y": y[sel], "id": ids[sel]}
        it = iter_frame(fd.data, pos, psf, sigma=fd.sigma, mask=fd.mask,
                        pixel_scale=fd.pixel_scale, zeropoint=fd.zeropoint, preset=preset,
                        size=side, rebin=k, chunk=chunk)
        with it:
            parts.extend(it)
        order.append(sel)
    b = StampBatch.concatenate(parts)
    inv = np.empty(n, np.int64)
    inv[np.concatenate(order)] = np.arange(n)
    b = b.select(inv)
    b.meta = {**b.meta, "frame": fd.name}
    b.wcs = fd.wcs
    b.flags = np.asarray(b.flags, np.int64) & ~np.int64(Flag.EDGE | Flag.PADDED)
    return b
