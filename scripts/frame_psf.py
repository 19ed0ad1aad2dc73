"""A PSF image from a frame's own stars, for frames that come without a PSF model.

    python scripts/frame_psf.py FRAME.fits OUT_PSF.fits [--fwhm 3.5] [--size 25]
        [--weight W.fits] [--snr-min 50]

Recipe: the frame's noise and sky (:func:`galnet.io.background.frame_noise`), detection
(:func:`galnet.io.detect.detect`, PSF FWHM guess ``--fwhm`` px); candidate stars are the compact
locus: S/N > ``--snr-min``, a moment FWHM ``2.355 sqrt(a b)`` within 15 % of the 20th percentile of
those sources, peak below the 90th percentile (no saturated cores), and no other segment in their
``size x size`` window. Each cutout is shifted (cubic spline) so that its centroid sits on the
central pixel, normalised to unit sum; the PSF is the pixel-wise median, negative pixels set to 0,
unit sum. Prints the number of stars and the PSF's FWHM (area above half maximum). It is an
*effective* PSF (pixel response included), as galnet's renderer expects. Raises SystemExit with a
one-line message when fewer than 3 stars qualify.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def star_psf(data, noise, sources, labels, *, size: int = 25, snr_min: float = 50.0):
    """(size, size) unit-sum PSF and the number of stars stacked (see the module docstring)."""
    from scipy.ndimage import shift

    h = size // 2
    H, W = data.shape
    snr = np.asarray(sources["snr"], float)
    fwhm = 2.355 * np.sqrt(np.asarray(sources["a"], float) * np.asarray(sources["b"], float))
    peak = np.asarray(sources["peak"], float)
    sel = snr > snr_min
    if sel.sum() < 3:
        return None, 0
    ref = np.nanpercentile(fwhm[sel], 20)
    sel &= np.abs(fwhm - ref) < 0.15 * ref
    sel &= peak < np.nanpercentile(peak[snr > snr_min], 90)
    img = np.where(noise.mask, 0.0, data - noise.sky)
    stack = []
    for r in np.flatnonzero(sel):
        x, y, lab = float(sources["x"][r]), float(sources["y"][r]), int(sources["id"][r])
        ix, iy = int(round(x)), int(round(y))
        if not (h + 2 <= ix < W - h - 2 and h + 2 <= iy < H - h - 2):
            continue
        win = labels[iy - h:iy + h + 1, ix - h:ix + h + 1]
        if np.any((win != 0) & (win != lab)) or noise.mask[iy - h:iy + h + 1,
                                                            ix - h:ix + h + 1].any():
            continue
        cut = img[iy - h - 2:iy + h + 3, ix - h - 2:ix + h + 3]
        cut = shift(cut, (iy - y, ix - x), order=3, mode="nearest")[2:-2, 2:-2]
        if cut.sum() > 0:
            stack.append(cut / cut.sum())
    if len(stack) < 3:
        return None, len(stack)
    psf = np.clip(np.median(stack, axis=0), 0.0, None)
    return psf / psf.sum(), len(stack)


def main(argv=None) -> int:
    from astropy.io import fits

    from galnet.fitting.pointsource import psf_fwhm
    from galnet.io.background import frame_noise
    from galnet.io.detect import detect

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("frame")
    p.add_argument("out")
    p.add_argument("--fwhm", type=float, default=3.5, help="PSF FWHM guess for detection, px")
    p.add_argument("--size", type=int, default=25, help="PSF side, px (odd) [25]")
    p.add_argument("--weight", default=None, help="inverse-variance map")
    p.add_argument("--snr-min", type=float, default=50.0)
    a = p.parse_args(argv)
    if a.size % 2 == 0:
        sys.exit(f"frame_psf: --size must be odd, got {a.size}")
    data = np.asarray(fits.getdata(a.frame), np.float64)
    weight = None if a.weight is None else np.asarray(fits.getdata(a.weight), np.float64)
    noise = frame_noise(data, weight=weight, name=a.frame)
    src, labels = detect(data - noise.sky, noise.sigma, noise.mask, psf_fwhm_pix=a.fwhm)
    psf, n = star_psf(data, noise, src, labels, size=a.size, snr_min=a.snr_min)
    if psf is None:
        sys.exit(f"frame_psf: {a.frame}: only {n} isolated stars with S/N > {a.snr_min}")
    fwhm = float(psf_fwhm(psf[None])[0])
    fits.writeto(a.out, psf.astype(np.float32), overwrite=True)
    print(f"wrote {a.out}: median of {n} stars, FWHM {fwhm:.2f} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
