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
"""

from __future__ import annotations

import contextlib
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

__all__ = ["FrameData", "read_frame", "split_hdu"]

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
    return FrameData(np.where(bad, 0.0, clean).astype(np.float32),
                     np.where(bad, fill, sig).astype(np.float32), bad, noise, ps, zp, wcs, name,
                     meta)


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

