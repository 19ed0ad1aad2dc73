"""Frame background and noise: the sky left in a frame and the 1-sigma noise of every pixel.

:func:`frame_noise` gives a :class:`FrameNoise` for a whole frame, so that stamps take their noise
and mask from the frame (:func:`galnet.io.cutouts.iter_frame` ``noise=``), never from the border
of a stamp (which a large galaxy or a neighbour fills).

- **Noise** (``sigma``, image units): from the map given, in this order: ``weight`` (inverse
  variance: DECam ``oow``, Tractor ``invvar``), ``variance``, ``sigma``; else the background rms
  map of photutils ``Background2D`` (``MADStdBackgroundRMS`` on source-masked pixels, boxes of
  ``box`` px, 3 x 3 median filter). A map's pixels with weight <= 0, variance <= 0, sigma <= 0 or
  non-finite values are unusable: ``sigma = inf`` there and ``mask`` True.
- **Sky**: photutils ``Background2D`` (``SExtractorBackground``) measured twice, the second time
  with the sources of the first pass masked (pixels of the 3 x 3-smoothed residual above
  3 smoothed-noise sigma, dilated by 3 px). A sky is *left in the image* when the median of the
  background map over the usable pixels exceeds ``SKY_TOLERANCE`` (0.2) times the median noise
  (a positive sky; an over-subtracted frame is left alone): then ``sky`` is that map,
  ``sky_removed`` is True and a logging WARNING names the file and the level; the caller
  subtracts it (:meth:`FrameNoise.subtracted`; ``iter_frame(noise=...)`` does). A
  sky-subtracted frame keeps ``sky = 0`` (its small local offsets are left alone).
- ``mask``: the frame mask given (nonzero = unusable), non-finite data, unusable noise-map pixels.

Speed: two Background2D passes on pixel subsamples (every 4th, then every 2nd pixel for
64 px boxes); about 2 s for a 2600 x 2600 frame on one core.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from galnet.errors import GalnetValueError

__all__ = ["SKY_TOLERANCE", "FrameNoise", "frame_noise"]

log = logging.getLogger(__name__)

#: A background whose median exceeds this fraction of the median noise is a sky left in the image.
SKY_TOLERANCE = 0.2
#: Smallest Background2D box (pixels) for small frames.
_MIN_BOX = 8
#: Pixels per box side sampled by the first (source-finding) and second Background2D passes:
#: every (box // N)-th pixel is used, a subsample (not a binning: the rms of correlated noise
#: is kept).
_PIX_PASS1 = 16
_PIX_PASS2 = 32


@dataclass
class FrameNoise:
    """Background and noise of a frame (all maps (H, W), image units).

    Attributes
    ----------
    sky : float64 background map that was / should be subtracted (zeros when none).
    sigma : float64 1-sigma noise per pixel; ``np.inf`` where unusable.
    mask : bool, True = unusable (frame mask, non-finite data, weight <= 0 ...).
    sky_removed : whether a sky was found left in the image (then ``sky`` is non-zero).
    sky_level : median of the measured background map (image units; measured even when not
        removed).
    rms : median of ``sigma`` over the usable pixels.
    source : where ``sigma`` came from: "weight map", "variance map", "sigma map" or
        "Background2D".
    """

    sky: np.ndarray
    sigma: np.ndarray
    mask: np.ndarray
    sky_removed: bool
    sky_level: float
    rms: float
    source: str

    def subtracted(self, data) -> np.ndarray:
        """``data - sky`` as float64 (a copy; ``data`` itself when no sky was found)."""
        d = np.asarray(data)
        return d - self.sky if self.sky_removed else d


def _plane(a, shape, what: str, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.shape != shape:
        raise GalnetValueError(f"{name}: {what} shape {arr.shape} does not match the frame's "
                               f"{shape}", what)
    return arr


def _noise_map(weight, variance, sigma, shape, name) -> tuple[np.ndarray | None, str]:
    given = [w for w, a in (("weight", weight), ("variance", variance), ("sigma", sigma))
             if a is not None]
    if len(given) > 1:
        raise GalnetValueError(f"{name}: give one of weight, variance, sigma, not "
                               f"{' and '.join(given)}", given[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        if weight is not None:
            w = _plane(weight, shape, "weight", name)
            good = np.isfinite(w) & (w > 0)
            return np.where(good, 1.0 / np.sqrt(np.where(good, w, 1.0)), np.inf), "weight map"
        if variance is not None:
            v = _plane(variance, shape, "variance", name)
            good = np.isfinite(v) & (v > 0)
            return np.where(good, np.sqrt(np.where(good, v, 1.0)), np.inf), "variance map"
        if sigma is not None:
            s = _plane(sigma, shape, "sigma", name)
            good = np.isfinite(s) & (s > 0)
            return np.where(good, s, np.inf), "sigma map"
    return None, "Background2D"


def _interp_matrix(n_out: int, centres: np.ndarray) -> np.ndarray:
    """(n_out, n) linear interpolation weights from nodes at ``centres`` (increasing) to pixels
    0..n_out-1, constant beyond the first and last node."""
    n = centres.size
    R = np.zeros((n_out, n))
    if n == 1:
        R[:, 0] = 1.0
        return R
    p = np.clip(np.arange(n_out, dtype=np.float64), centres[0], centres[-1])
    j = np.clip(np.searchsorted(centres, p, side="right") - 1, 0, n - 2)
    w = (p - centres[j]) / (centres[j + 1] - centres[j])
    rows = np.arange(n_out)
    R[rows, j] = 1.0 - w
    R[rows, j + 1] = w
    return R


def _mesh_to_frame(mesh: np.ndarray, box: int, step: int, shape) -> np.ndarray:
    """Bilinear map of a Background2D mesh (boxes of ``box`` pixels of the subsample taken every
    ``step`` pixels) onto the frame: nodes at the box centres."""
    ny, nx = mesh.shape
    cy = step * ((np.arange(ny) + 0.5) * box - 0.5)
    cx = step * ((np.arange(nx) + 0.5) * box - 0.5)
    return _interp_matrix(shape[0], cy) @ np.asarray(mesh, np.float64) @ _interp_matrix(
        shape[1], cx).T


def _background(data, mask, box: int, exclude: float, step: int):
    """(sky, rms) maps of photutils Background2D (SExtractor sky, MAD-std rms, 3 x 3 median
    filter of the mesh) measured on every ``step``-th pixel (boxes of ``box`` full-frame
    pixels), interpolated bilinearly between box centres; None where it cannot run (every box
    too masked)."""
    from photutils.background import Background2D, MADStdBackgroundRMS, SExtractorBackground

    sub, msub = data[::step, ::step], mask[::step, ::step]
    bs = max(2, box // step)
    try:
        b = Background2D(sub, bs, mask=msub, filter_size=(3, 3), exclude_percentile=exclude,
                         bkg_estimator=SExtractorBackground(),
                         bkg_rms_estimator=MADStdBackgroundRMS())
        return (_mesh_to_frame(b.background_mesh, bs, step, data.shape),
                _mesh_to_frame(b.background_rms_mesh, bs, step, data.shape))
    except ValueError:
        return None


def _global(data, mask) -> tuple[float, float]:
    v = data[~mask]
    if v.size == 0:
        return 0.0, np.nan
    med = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - med)))
    return med, mad


def _source_mask(resid, noise, mask) -> np.ndarray:
    """Pixels of sources: 3x3-smoothed residual above 3 smoothed-noise sigma, dilated 3 px (a
    lower threshold masks the positive noise peaks and biases the sky low: -0.1 sigma at 2)."""
    from scipy import ndimage

    sm = ndimage.uniform_filter(np.where(mask, 0.0, resid).astype(np.float32), 3)
    det = (sm > noise) & ~mask  # 3 sigma of the 3 x 3 mean (sigma / 3)
    return ndimage.binary_dilation(det, iterations=3)


def frame_noise(data, *, weight=None, variance=None, sigma=None, mask=None, box: int = 64,
                name: str = "frame") -> FrameNoise:
    """Sky and noise maps of a frame (see the module docstring for the rules).

    Parameters
    ----------
    data : (H, W) frame, image units.
    weight, variance, sigma : (H, W) noise map (one at most): inverse variance, variance or
        1-sigma noise, image units [default: Background2D rms].
    mask : (H, W) nonzero = unusable pixel.
    box : Background2D box side (pixels); smaller frames use ``max(8, min(H, W) // 3)``.
    name : the frame's name in messages (file path).

    Returns
    -------
    :class:`FrameNoise`. Logs a WARNING ``"NAME: a sky of LEVEL (S x rms) was left in the image;
    subtracted (Background2D, box B px)"`` when it finds one.
    """
    d = np.asarray(data)
    if d.ndim != 2:
        raise GalnetValueError(f"{name}: a frame must be a 2-D image, got shape {d.shape}",
                               "frame")
    d = d.astype(np.float64, copy=False)
    shape = d.shape
    bad = ~np.isfinite(d)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != shape:
            raise GalnetValueError(f"{name}: mask shape {m.shape} does not match the frame's "
                                   f"{shape}", "mask")
        bad |= m != 0
    sig, source = _noise_map(weight, variance, sigma, shape, name)
    if sig is not None:
        bad |= ~np.isfinite(sig)
    if bad.all():
        raise GalnetValueError(f"{name}: no usable pixel (all masked, non-finite or zero weight)",
                               "frame")
    b = int(min(box, max(_MIN_BOX, min(shape) // 3)))
    work = np.where(bad, 0.0, d)
    first = _background(work, bad, b, 10.0, max(1, b // _PIX_PASS1))
    if first is None:
        level, rms0 = _global(d, bad)
        bkg0, rms_map = np.full(shape, level), np.full(shape, rms0)
    else:
        bkg0, rms_map = first
    noise = sig if sig is not None else rms_map
    srcmask = _source_mask(work - bkg0, np.where(np.isfinite(noise), noise, 0.0), bad)
    second = _background(work, bad | srcmask, b, 50.0, max(1, b // _PIX_PASS2))
    if second is not None:
        bkg, rms_map = second
    else:
        level, rms0 = _global(d, bad | srcmask)
        bkg, rms_map = np.full(shape, level), np.full(shape, rms0)
    if sig is None:
        sig = np.array(rms_map, dtype=np.float64)
        bad |= ~(np.isfinite(sig) & (sig > 0))
    sig[bad] = np.inf
    good = ~bad
    rms = float(np.median(sig[good])) if good.any() else float("nan")
    sky_level = float(np.median(bkg[good])) if good.any() else 0.0
    removed = bool(np.isfinite(rms) and sky_level > SKY_TOLERANCE * rms)
    if removed:
        log.warning("%s: a sky of %.4g (%.1f x rms) was left in the image; subtracted "
                    "(Background2D, box %d px)", name, sky_level, sky_level / rms, b)
        sky = np.asarray(bkg, dtype=np.float64)
    else:
        sky = np.zeros(shape)
    return FrameNoise(sky, sig, bad, removed, sky_level, rms, source)
