"""A frame and its noise, read once: the data every step of the frame pipeline uses.

:func:`read_frame` opens the image (path or 2-D array; the first image HDU with data, or the HDU
named by ``path[N]``), the optional weight (inverse variance), variance or sigma map and frame
mask (paths or arrays of the frame's shape; ``SIGMA`` / ``IVAR`` / ``MASK`` extensions of the
frame file are used when no map is given) and hands them to
:func:`galnet.io.background.frame_noise`: the per-pixel noise, the unusable pixels, and the sky
(a sky left in the image is subtracted, with a warning naming the file). Pixel scale and
zeropoint: the argument, else the header (``PIXSCALE`` / the WCS, ``MAGZERO`` ...), else the
preset (:func:`galnet.io.fits.scale_and_zeropoint`). Conventions: 0-based pixels, centres at
integers; ``data`` is in image units, sky-subtracted.

Gain (e- per image unit, for the sources' Poisson noise): :func:`frame_gain` decides which one
the pipeline uses and says where it came from (the catalogue's provenance: ``sources["gain"]``
says where, ``options["gain"]`` the value used; ``meta["frame"]["gain"]`` too).
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from galnet.errors import GalnetValueError
from galnet.io.fits import (
    celestial_wcs,
    check_same_shape,
    main_input,
    plane_input,
    scale_and_zeropoint,
)
from galnet.presets import get_preset

__all__ = ["FrameData", "add_source_noise", "frame_gain", "header_gain", "mask_saturated",
           "read_frame", "split_hdu"]

log = logging.getLogger(__name__)

#: A header gain is used only when it agrees within this factor with the sky's
#: ``level / variance`` (the gain of a Poisson sky in ADU-like units).
GAIN_TOLERANCE = 3.0
#: The sky must be this many rms above zero for ``level / variance`` to measure a gain.
GAIN_SKY_MIN = 5.0
_SKY_KEYS = ("SKYLEVEL", "AVSKY", "SKY")

_HDU = re.compile(r"^(?P<path>.+)\[(?P<hdu>\d+)\]$")


@dataclass
class FrameData:
    """A frame ready for the pipeline.

    Attributes
    ----------
    data : (H, W) float32 image, sky-subtracted (image units); unusable pixels set to 0.
    sigma : (H, W) float32 1-sigma noise (image units); finite and > 0 everywhere (unusable pixels
        carry the median noise as a placeholder: use ``mask``).
    mask : (H, W) bool, True = unusable (frame mask, non-finite, weight <= 0).
    noise : the :class:`galnet.io.background.FrameNoise` it came from (sky map, levels, source).
    pixel_scale : arcsec per pixel.   zeropoint : AB mag of one image unit.
    wcs : celestial WCS or None.   name : the frame's name (path).   meta : where things came from.
    saturated : (H, W) bool, pixels at or above the header's ``SATURATE`` level (grown by 1 px),
        or None. Detection sees them; the fits do not (:func:`mask_saturated`).
    """

    data: np.ndarray
    sigma: np.ndarray
    mask: np.ndarray
    noise: Any
    pixel_scale: float
    zeropoint: float
    wcs: Any = None
    name: str = "frame"
    meta: dict = field(default_factory=dict)
    saturated: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]


def split_hdu(path):
    """``("file.fits", 1)`` for ``"file.fits[1]"``; ``(path, None)`` otherwise."""
    if isinstance(path, str):
        m = _HDU.match(path)
        if m:
            return m.group("path"), int(m.group("hdu"))
    return path, None


def _main(frame, stack):
    """(Cube, ext source) of the frame, honouring a ``[N]`` HDU suffix."""
    from galnet.io.fits import cube_from_hdu, open_fits

    path, hdu = split_hdu(frame)
    if hdu is None:
        return main_input(frame, "frame", stack)
    hdul = open_fits(path, "frame", stack)
    if hdu >= len(hdul) or hdul[hdu].data is None:
        raise GalnetValueError(f"{path}: no image data in HDU {hdu} (the file has {len(hdul)} "
                               "HDUs)", "frame")
    prim = hdul[0].header if hdu != 0 else None
    return cube_from_hdu(hdul[hdu], f"{path}[{hdu}]", prim), (hdul, path)


def _plane(obj, what: str, stack, ref, ext=None):
    c = plane_input(obj, what, stack, ext)
    if c is None:
        return None
    check_same_shape(c, ref.shape, ref, what)
    return np.asarray(c.plane(), dtype=np.float64)


def read_frame(frame, *, weight=None, variance=None, sigma=None, frame_mask=None,
               pixel_scale: float | None = None, zeropoint: float | None = None,
               preset="hsc-r") -> FrameData:
    """Read a frame and its noise (see the module docstring). At most one of ``weight``,
    ``variance``, ``sigma``; GalnetValueError naming the inputs otherwise."""
    from galnet.io.background import frame_noise

    given = [k for k, v in (("weight", weight), ("variance", variance), ("sigma", sigma))
             if v is not None]
    if len(given) > 1:
        raise GalnetValueError(f"give one noise map, not {' and '.join(given)}", given[1])
    preset = get_preset(preset)
    with contextlib.ExitStack() as stack:
        cube, ext = _main(frame, stack)
        if not cube.two_d:
            raise GalnetValueError(f"{cube.name}: a frame must be a 2-D image, got shape "
                                   f"{cube.shape[1:] if cube.shape[0] == 1 else cube.shape}",
                                   "frame")
        data = np.asarray(cube.plane(), dtype=np.float64)
        noise_ext = ext if not given else None
        w = _plane(weight, "weight", stack, cube)
        v = _plane(variance, "variance", stack, cube)
        s = _plane(sigma, "sigma", stack, cube)
        if noise_ext is not None:  # the frame file's own SIGMA / IVAR extensions
            s = _plane(None, "sigma", stack, cube, noise_ext)
            if s is None:
                w = _plane(None, "ivar", stack, cube, noise_ext)
        m = _plane(frame_mask, "mask", stack, cube, ext)
        ps, zp, meta = scale_and_zeropoint(pixel_scale, zeropoint, cube.headers, preset,
                                            cube.name)
        meta.update(header_gain(cube.headers))
        sat_level = next((v for h in cube.headers for v in [_number(h, "SATURATE")] if v), None)
        wcs = None
        for h in cube.headers:
            wcs = celestial_wcs(h)
            if wcs is not None:
                break
        name = cube.name
    noise = frame_noise(data, weight=w, variance=v, sigma=s,
                        mask=None if m is None else m != 0, name=name)
    bad = np.asarray(noise.mask, bool) | ~np.isfinite(data)
    sig = np.asarray(noise.sigma, dtype=np.float64)
    bad |= ~(np.isfinite(sig) & (sig > 0))
    if bad.all():
        raise GalnetValueError(f"{name}: no usable pixel (all masked, non-finite or weight <= 0)",
                               "frame")
    clean = data - np.asarray(noise.sky, dtype=np.float64)
    fill = float(np.median(sig[~bad]))
    meta.update(frame=name, noise_source=str(noise.source), sky_removed=bool(noise.sky_removed),
                sky_level=float(noise.sky_level), noise_rms=float(noise.rms))
    saturated = None
    if sat_level is not None:
        from scipy.ndimage import binary_dilation

        with np.errstate(invalid="ignore"):
            saturated = binary_dilation(data >= sat_level, iterations=1) & ~bad
        meta.update(saturate=float(sat_level), n_saturated=int(saturated.sum()))
        if not saturated.any():
            saturated = None
    return FrameData(np.where(bad, 0.0, clean).astype(np.float32),
                     np.where(bad, fill, sig).astype(np.float32), bad, noise, ps, zp, wcs, name,
                     meta, saturated)


def mask_saturated(fd: FrameData) -> FrameData:
    """``fd`` with its saturated pixels (``fd.saturated``) added to the mask: after detection
    (which needs them to see a bright star whole), before the fits (whose model cannot follow
    a clipped core: one saturated star on the VST frame gave its neighbour a chi2nu of ~1.5e4).
    """
    if fd.saturated is None:
        return fd
    log.info("%s: %d saturated pixels (>= %g, grown by 1 px) left out of the fits", fd.name,
             int(fd.saturated.sum()), fd.meta.get("saturate", float("nan")))
    return replace(fd, mask=fd.mask | fd.saturated)


def add_source_noise(fd: FrameData, gain: float) -> FrameData:
    """``fd`` with the sources' Poisson noise added to its sky noise (GALFIT's sigma image):
    ``sigma^2 = sigma_sky^2 + max(D_3x3, 0) / gain``, ``D_3x3`` the sky-subtracted frame
    averaged over 3 x 3 px (so a pixel's weight does not follow its own noise), ``gain`` in
    e- per image unit. Detection uses the sky noise alone; fits, chi2nu and the misfit test
    (calibrated with the source noise included) use this one."""
    from scipy.ndimage import uniform_filter

    g = float(gain)
    if not (np.isfinite(g) and g > 0):
        raise GalnetValueError(f"gain must be a positive number (e-/image unit), got {gain!r}",
                               "gain")
    smooth = uniform_filter(np.where(fd.mask, 0.0, fd.data).astype(np.float64), size=3)
    var = fd.sigma.astype(np.float64) ** 2 + np.maximum(smooth, 0.0) / g
    meta = {**fd.meta, "gain": g}
    return replace(fd, sigma=np.where(fd.mask, fd.sigma, np.sqrt(var)).astype(np.float32),
                   meta=meta)


def _number(h, key):
    try:
        v = float(h.get(key))
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def header_gain(headers) -> dict:
    """``{"header_gain": G or None, "header_gain_key": ..., "header_sky": S or None}`` from the
    first header (of ``headers``, e.g. extension then primary) with ``GAIN`` or ``GAINA`` /
    ``GAINB`` (DECam: their mean), e-/ADU; ``header_sky``: ``SKYLEVEL`` / ``AVSKY`` / ``SKY``
    (the sky level before it was subtracted, image units)."""
    out: dict = {"header_gain": None, "header_gain_key": None, "header_sky": None}
    for h in headers or ():
        if h is None:
            continue
        if out["header_gain"] is None:
            g = _number(h, "GAIN")
            ab = [v for v in (_number(h, "GAINA"), _number(h, "GAINB")) if v is not None]
            if g is not None:
                out.update(header_gain=g, header_gain_key="GAIN")
            elif ab:
                out.update(header_gain=float(np.mean(ab)),
                           header_gain_key="GAINA/GAINB" if len(ab) == 2 else "GAINA")
        if out["header_sky"] is None:
            for k in _SKY_KEYS:
                if _number(h, k) is not None:
                    out["header_sky"] = _number(h, k)
                    break
    return out


def frame_gain(fd: FrameData, gain: float | None = None) -> tuple[float | None, str]:
    """The gain (e- per image unit) for the sources' Poisson noise, and where it came from.

    1. ``gain`` given: it wins (``"argument"``).
    2. The sky level ``S`` is known (left in the image and subtracted by :func:`read_frame`, or
       a ``SKYLEVEL`` / ``AVSKY`` / ``SKY`` header keyword) and ``S > GAIN_SKY_MIN * rms``: the
       gain of a Poisson sky ``S / rms**2`` (``rms``: the frame's median noise). A header gain
       (``GAIN``, or the mean of ``GAINA`` / ``GAINB``) within ``GAIN_TOLERANCE`` of it is
       used (the frame is in ADU-like units); otherwise the estimate is (logged at INFO).
    3. Otherwise ``(None, ...)``: no source noise is added (a header gain cannot be checked and
       may belong to data since rescaled, e.g. a GAIN kept in a frame calibrated to physical
       units); the misfit test then assumes one (:func:`galnet.quality.assumed_gain`).
    """
    if gain is not None:
        return float(gain), "argument"
    hg, key = fd.meta.get("header_gain"), fd.meta.get("header_gain_key")
    rms = float(getattr(fd.noise, "rms", np.nan))
    sky, where = None, None
    if getattr(fd.noise, "sky_removed", False):
        sky, where = float(fd.noise.sky_level), "the sky left in the image"
    elif fd.meta.get("header_sky") is not None:
        sky, where = float(fd.meta["header_sky"]), "the header's sky level"
    est = sky / rms**2 if (sky is not None and np.isfinite(rms) and rms > 0
                           and sky > GAIN_SKY_MIN * rms) else None
    if est is not None and hg is not None and est / GAIN_TOLERANCE < hg < GAIN_TOLERANCE * est:
        return float(hg), f"header {key} (consistent with {where}: sky / variance = {est:.3g})"
    if est is not None:
        why = ("" if hg is None else
               f"; header {key} = {hg:.4g} disagrees by more than x{GAIN_TOLERANCE:g}")
        src = f"estimated: sky / sky variance from {where}{why}"
        log.info("%s: gain %.4g e-/image unit %s", fd.name, est, src)
        return float(est), src
    if hg is not None:
        src = (f"none: header {key} = {hg:.4g} not used (no sky level to check it against: "
               "the frame's units may not be ADU)")
    else:
        src = "none: no gain given, none in the header and no sky level to estimate it"
    log.info("%s: %s; the misfit test assumes a sky-limited source noise", fd.name, src)
    return None, src

