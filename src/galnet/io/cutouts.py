"""Stamp readers: stamps or a frame with positions in, :class:`~galnet.io.batch.StampBatch` es out.

Inputs
------
- **Stamps** (:func:`load_stamps`, :func:`iter_stamps`): a FITS cube ``(N, H, W)`` or one 2-D image
  (the first image HDU with data), or a numpy array. ``SIGMA``, ``IVAR`` and ``MASK`` come from
  extensions of that name or from separate files/arrays of the same shape
  (:mod:`galnet.io.fits`).
- **A frame and positions** (:func:`load_frame`, :func:`iter_frame`): ``S x S`` cutouts of a large
  image around ``x, y`` (0-based pixels) or ``ra, dec`` (degrees, needs a celestial WCS), the same
  pixels as ``astropy.nddata.Cutout2D(frame, (x, y), S, mode='partial')``: centre pixel
  ``ceil(x - 1/2)``; pixels outside the frame are masked and flag ``EDGE``. Position columns
  must be numeric (a one-line error names the column otherwise).
- **PSF**: one image, a cube or a PSFEx model (:mod:`galnet.io.psf`).

Stamps are cropped, padded and rebinned, and their noise and masks prepared, by
:mod:`galnet.io.prepare`; the transform back to the input pixels is that of
:mod:`galnet.io.batch`. Pixel scale and zeropoint: the argument, else the header, else the preset
(:func:`galnet.io.fits.scale_and_zeropoint`); ``StampBatch.pixel_scale`` is that of the *input*
pixels and ``StampBatch.meta`` says where both came from.

Speed: the common path (a cube of ``S x S`` stamps, one PSF) is vectorised numpy; FITS data are
memory-mapped and read ``chunk`` stamps at a time by :func:`iter_stamps`. Per-stamp Python loops
are only used for PSFEx evaluation, rebinned PSFs of PSF cubes and off-centre PSF peaks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from galnet.errors import GalnetPSFError, GalnetValueError
from galnet.flags import Flag
from galnet.io.batch import StampBatch, StampIterator, collect
from galnet.io.catalog import read_catalog
from galnet.io.fits import (
    celestial_wcs,
    input_planes,
    is_pathlike,
    main_input,
    scale_and_zeropoint,
)
from galnet.io.prepare import MAX_REBIN, prepare_block
from galnet.io.psf import PSFSource
from galnet.presets import Preset, get_preset

__all__ = ["iter_stamps", "load_stamps", "iter_frame", "load_frame"]

#: Stamps per chunk in load_stamps / load_frame (bounded temporaries, cache friendly).
_LOAD_CHUNK = 4096


def _check_rebin(rebin):
    if rebin == "auto" or (isinstance(rebin, int | np.integer) and not isinstance(rebin, bool)
                           and 1 <= rebin <= MAX_REBIN):
        return rebin if rebin == "auto" else int(rebin)
    raise GalnetValueError(f"rebin must be 'auto' or an integer 1..{MAX_REBIN}, got {rebin!r}",
                           "rebin", rebin)


def _check_chunk(chunk) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise GalnetValueError(f"chunk must be a positive integer, got {chunk!r}", "chunk", chunk)
    return int(chunk)


def _ids(ids, n: int, name: str) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    a = np.asarray(ids)
    if a.shape != (n,):
        raise GalnetValueError(f"ids: expected {n} values (one per stamp of {name}), got shape "
                               f"{a.shape}", "ids")
    return a


def _positions_array(pos, n: int, what: str) -> np.ndarray:
    try:
        a = np.asarray(pos, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise GalnetValueError(f"{what}: expected ({n}, 2) numeric frame positions (x, y) "
                               f"({' '.join(str(err).split())})", what) from err
    if a.shape != (n, 2) or not np.isfinite(a).all():
        raise GalnetValueError(f"{what}: expected ({n}, 2) finite frame positions (x, y), got "
                               f"shape {a.shape}", what)
    return a


def iter_stamps(images, psf, sigma=None, ivar=None, mask=None, *, pixel_scale: float | None = None,
                zeropoint: float | None = None, preset: str | Preset = "hsc-r", ids=None,
                psf_positions=None, rebin: str | int = "auto", chunk: int = 4096
                ) -> Iterator[StampBatch]:
    """Read stamps ``chunk`` at a time (bounded memory): yields :class:`StampBatch` es.

    Parameters
    ----------
    images : path of a FITS file (first image HDU: a cube (N, H, W) or one 2-D image; optional
        SIGMA / IVAR / MASK extensions) or an array (N, H, W) / (H, W), image units.
    psf : path (FITS image/cube or PSFEx model), array (h, w) / (N, h, w), or a
        ``galsim.des.DES_PSFEx``; odd sizes, any positive normalisation.
    sigma, ivar, mask : paths or arrays of the stamps' shape [default: the extensions, if any].
        mask nonzero = pixel ignored.
    pixel_scale : arcsec/pixel [default: header, else preset].
    zeropoint : AB mag of one image unit [default: header, else preset].
    preset : survey preset (stamp size, PSF size, containment rule, defaults) [default: hsc-r].
    ids : (N,) identifiers [default: 0..N-1].
    psf_positions : (N, 2) frame positions (0-based x, y) of the stamps, needed by a PSFEx PSF.
    rebin : ``"auto"`` (rule of :mod:`galnet.io.prepare`) or a factor 1..MAX_REBIN (8) for every
        stamp.
    chunk : stamps per batch.

    Inputs are validated (and files opened) when this is called; a missing file, a shape
    mismatch or a bad PSF raises here, before the first batch.
    """
    preset = get_preset(preset)
    rebin = _check_rebin(rebin)
    chunk = _check_chunk(chunk)
    stack = contextlib.ExitStack()
    try:
        cube, ext = main_input(images, "images", stack)
        N = cube.shape[0]
        planes = input_planes(sigma, ivar, mask, ext, stack, cube)
        psrc = PSFSource(psf, N, preset.psf_size, cube.name, stack)
        pos = None if psf_positions is None else _positions_array(psf_positions, N,
                                                                   "psf_positions")
        if psrc.kind == "psfex" and pos is None:
            raise GalnetPSFError(f"{psrc.name}: a PSFEx model needs each stamp's frame position "
                                 "(psf_positions)", "psf")
        ps, zp, meta = scale_and_zeropoint(pixel_scale, zeropoint, cube.headers, preset,
                                            cube.name)
        id_arr = _ids(ids, N, cube.name)
    except BaseException:
        stack.close()
        raise
    meta.update(images=cube.name, psf=psrc.name, preset=preset.name,
                **{w: c.name for w, c in planes.items() if c is not None})
    _, H, W = cube.shape
    S = preset.stamp

    def gen() -> Iterator[StampBatch]:
        usable = 0
        with stack:
            for i0 in range(0, N, chunk):
                i1 = min(N, i0 + chunk)
                blk = prepare_block(cube.read(i0, i1),
                               *(None if planes[w] is None else planes[w].read(i0, i1)
                                 for w in ("sigma", "ivar", "mask")),
                               None, S=S, rebin=rebin, preset=preset)
                psfs, bad = psrc.block(i0, i1, blk.rebin, None if pos is None else pos[i0:i1])
                blk.flags[bad] |= Flag.BAD_PSF
                usable += int((~blk.mask.all(axis=(1, 2))).sum())
                cx = np.full(i1 - i0, (W - 1) / 2.0)  # the input stamp's centre
                cy = np.full(i1 - i0, (H - 1) / 2.0)
                if usable == 0 and i1 == N:
                    _raise_empty(cube.name, N)
                yield StampBatch(blk.images, blk.sigma, blk.mask, psfs, blk.flags,
                                 id_arr[i0:i1], blk.rebin, blk.x0, blk.y0, cx, cy, blk.sky_rms,
                                 ps, zp, dict(meta))

    return StampIterator(gen(), N, chunk, stack)




def _raise_empty(name: str, n: int) -> None:
    why = "(masked: non-finite pixels, the mask, sigma <= 0 or ivar <= 0)"
    if n == 1:
        raise GalnetValueError(f"{name}: the stamp has no finite, unmasked pixel {why}", "images")
    raise GalnetValueError(f"{name}: none of the {n} stamps has a finite, unmasked pixel {why}",
                           "images")


def load_stamps(images, psf, sigma=None, ivar=None, mask=None, *, pixel_scale: float | None = None,
                zeropoint: float | None = None, preset: str | Preset = "hsc-r", ids=None,
                psf_positions=None, rebin: str | int = "auto") -> StampBatch:
    """All stamps at once (see :func:`iter_stamps` for the parameters).

    Returns
    -------
    :class:`StampBatch` of N stamps.

    Raises
    ------
    GalnetFileError : a missing or unreadable file.
    GalnetPSFError : an even-sized, non-finite or non-positive-sum PSF; a PSF cube whose length
        is not N; a PSFEx model without psf_positions.
    GalnetValueError : shape mismatches, bad arguments, no usable pixel in any stamp.
    """
    it = iter_stamps(images, psf, sigma, ivar, mask, pixel_scale=pixel_scale,
                     zeropoint=zeropoint, preset=preset, ids=ids, psf_positions=psf_positions,
                     rebin=rebin, chunk=_LOAD_CHUNK)
    return collect(it)


# ----------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------
def _column(t, names: tuple[str, ...]):
    """(name, column) of the first of ``names`` in table ``t`` (case-insensitive), else None."""
    lower = {c.lower(): c for c in t.colnames}
    for n in names:
        if n in lower:
            return lower[n], t[lower[n]]
    return None


def _values(named, where: str, unit: str | None = None) -> np.ndarray:
    """float64 values of a (name, column) pair in ``unit`` when it has a convertible one; masked
    entries NaN. GalnetValueError naming the column when it is not numeric."""
    name, col = named
    if hasattr(col, "unit") and col.unit is not None and unit is not None:
        try:
            return np.asarray(col.to_value(unit) if hasattr(col, "to_value")
                              else col.quantity.to_value(unit), dtype=np.float64)
        except Exception:  # noqa: BLE001 - dimensionless / odd units: take the numbers
            pass
    data = getattr(col, "value", col)
    try:
        if np.ma.is_masked(data):
            return np.ma.asarray(data, dtype=np.float64).filled(np.nan)
        return np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        first = np.asarray(data).ravel()[:1].tolist()
        raise GalnetValueError(f"{where}: column {name!r} is not numeric (first value "
                               f"{first[0]!r})" if first else
                               f"{where}: column {name!r} is not numeric", name) from None


def _positions_table(positions):
    """(name, astropy Table) of a positions argument (path, Table, mapping or (N, 2) array)."""
    from astropy.table import Table

    if is_pathlike(positions):
        return str(positions), read_catalog(positions, "positions")
    if isinstance(positions, Table):
        return "positions", positions
    if isinstance(positions, Mapping):
        try:
            return "positions", Table({k: np.atleast_1d(v) for k, v in positions.items()})
        except (TypeError, ValueError) as err:
            raise GalnetValueError(f"positions: not a table of equal-length columns ({err})",
                                   "positions") from err
    try:
        a = np.asarray(positions, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise GalnetValueError("positions: expected a table or an (N, 2) numeric array of x, y "
                               f"({' '.join(str(err).split())})", "positions") from err
    if a.ndim != 2 or a.shape[1] != 2:
        raise GalnetValueError(f"positions: expected a table or an (N, 2) array of x, y, got "
                               f"shape {a.shape}", "positions")
    return "positions", Table({"x": a[:, 0], "y": a[:, 1]})


def _read_positions(positions, frame_name: str, wcs_headers) -> tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray, Any, str]:
    """(x, y, ids, celestial WCS or None, name) of a positions catalogue."""
    name, t = _positions_table(positions)
    if len(t) == 0:
        raise GalnetValueError(f"{name}: no positions", "positions")
    xc, yc = _column(t, ("x",)), _column(t, ("y",))
    wcs = None
    for h in wcs_headers:
        wcs = celestial_wcs(h)
        if wcs is not None:
            break
    if xc is not None and yc is not None:
        x, y = _values(xc, name, "pix"), _values(yc, name, "pix")
    else:
        rc, dc = _column(t, ("ra",)), _column(t, ("dec",))
        if rc is None or dc is None:
            raise GalnetValueError(f"{name}: needs columns x, y (0-based pixels) or ra, dec "
                                   f"(degrees); has {', '.join(t.colnames)}", "positions")
        if wcs is None:
            raise GalnetValueError(f"{frame_name}: no celestial WCS, cannot use ra/dec positions",
                                   "positions")
        x, y = wcs.all_world2pix(_values(rc, name, "deg"), _values(dc, name, "deg"), 0)
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        raise GalnetValueError(f"{name}: {int(bad.sum())} non-finite positions (first row "
                               f"{int(np.argmax(bad))})", "positions")
    idc = _column(t, ("id",))
    ids = np.arange(len(t), dtype=np.int64) if idc is None else np.asarray(idc[1])
    return x, y, ids, wcs, name


def _gather(data: np.ndarray, ixc: np.ndarray, iyc: np.ndarray, size: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """size x size windows of a 2-D array centred on integer pixels (ixc, iyc); returns (values
    (n, size, size) with outside pixels taken from the nearest edge, outside mask)."""
    H, W = data.shape
    off = np.arange(size) - (size - 1) // 2
    ix = ixc[:, None] + off
    iy = iyc[:, None] + off
    okx = (ix >= 0) & (ix < W)
    oky = (iy >= 0) & (iy < H)
    vals = np.asarray(data[np.clip(iy, 0, H - 1)[:, :, None], np.clip(ix, 0, W - 1)[:, None, :]])
    return vals, ~(oky[:, :, None] & okx[:, None, :])


def _frame_sizes(size, rebin, N: int, S: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(side (N,) of the cutout read around each position, rebin (N,) or None for "auto")."""
    def bad_size(v):
        raise GalnetValueError(f"size must be an odd integer >= 3 (or one per position), got "
                               f"{v!r}", "size", v)

    if size is None:
        side = np.full(N, S, dtype=np.int64)
    elif np.ndim(size) == 0:
        if (isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 3
                or size % 2 == 0):
            bad_size(size)
        side = np.full(N, int(size), dtype=np.int64)
    else:
        a = np.asarray(size)
        if a.shape != (N,) or a.dtype.kind not in "iu":
            bad_size(f"an array of shape {a.shape} and dtype {a.dtype} for {N} positions")
        wrong = (a < 3) | (a % 2 == 0)
        if wrong.any():
            bad_size(int(a[wrong][0]))
        side = a.astype(np.int64)
    if isinstance(rebin, str) or np.ndim(rebin) == 0:
        k = _check_rebin(rebin)
        return side, None if k == "auto" else np.full(N, k, dtype=np.int64)
    k = np.asarray(rebin)
    if k.shape != (N,) or k.dtype.kind not in "iu" or ((k < 1) | (k > MAX_REBIN)).any():
        raise GalnetValueError(f"rebin: expected 'auto', an integer 1..{MAX_REBIN} or {N} of "
                               f"them (one per position), got shape {k.shape}", "rebin")
    k = k.astype(np.int64)
    need = S * k + (1 - (S * k) % 2)  # the S k box (one more for even k: an odd cutout)
    return np.maximum(side, need), k


#: Most frame pixels gathered at once (bounds the temporaries of large cutouts).
_GATHER_PIXELS = 1 << 24


def _frame_block(data, planes, noise, ixc, iyc, side, k, S: int, preset: Preset):
    """Cutouts of one chunk, grouped by (side, rebin), prepared and put back in input order:
    (images, sigma, mask, flags, rebin, x0, y0, sky_rms) in frame pixels."""
    n = ixc.size
    out = dict(images=np.empty((n, S, S), np.float32), sigma=np.empty((n, S, S), np.float32),
               mask=np.empty((n, S, S), bool), flags=np.zeros(n, np.int64),
               rebin=np.empty(n, np.int64), x0=np.empty(n), y0=np.empty(n), sky_rms=np.empty(n))
    key = side * (MAX_REBIN + 1) + (0 if k is None else k)
    for kv in np.unique(key):
        group = np.flatnonzero(key == kv)
        sd = int(kv // (MAX_REBIN + 1))
        kk = int(kv % (MAX_REBIN + 1)) or "auto"
        step = max(1, _GATHER_PIXELS // (sd * sd))
        for j in range(0, group.size, step):
            sel = group[j:j + step]
            cut, outside = _gather(data, ixc[sel], iyc[sel], sd)
            ex = {w: None if a is None else _gather(a, ixc[sel], iyc[sel], sd)[0]
                  for w, a in planes.items()}
            if noise is not None:  # frame noise: sky subtracted, sigma and mask of the frame
                cut = cut - _gather(noise.sky, ixc[sel], iyc[sel], sd)[0]
                sig = _gather(noise.sigma, ixc[sel], iyc[sel], sd)[0]
                nm = _gather(noise.mask, ixc[sel], iyc[sel], sd)[0] & np.isfinite(cut)
                ex["sigma"] = np.where(np.isfinite(sig), sig, 0.0)  # inf: masked, no NONFINITE
                ex["ivar"] = None
                ex["mask"] = nm if ex["mask"] is None else (ex["mask"] != 0) | nm
            blk = prepare_block(cut, ex["sigma"], ex["ivar"], ex["mask"], outside, S=S,
                                rebin=kk, preset=preset)
            blk.flags[outside.any(axis=(1, 2))] |= Flag.EDGE
            h = (sd - 1) // 2
            for name in ("images", "sigma", "mask", "flags", "rebin", "sky_rms"):
                out[name][sel] = getattr(blk, name)
            out["x0"][sel] = blk.x0 + (ixc[sel] - h)
            out["y0"][sel] = blk.y0 + (iyc[sel] - h)
    return out


def iter_frame(frame, positions, psf, sigma=None, ivar=None, mask=None, *,
               pixel_scale: float | None = None, zeropoint: float | None = None,
               preset: str | Preset = "hsc-r", size=None, rebin="auto", chunk: int = 4096,
               noise=None) -> StampIterator:
    """Cutouts of a frame around catalogue positions, ``chunk`` at a time.

    Parameters
    ----------
    frame : path of a FITS image (first image HDU; optional SIGMA / IVAR / MASK extensions) or a
        2-D array.
    positions : path of a catalogue (ECSV / FITS / CSV / Parquet), an astropy Table, a mapping or
        an (N, 2) array, with columns ``x, y`` (0-based frame pixels; preferred when both are
        present) or ``ra, dec`` (degrees; needs a celestial WCS in the frame header) and
        optionally ``id``.
    psf : as :func:`iter_stamps`; a cube must have one PSF per position; a PSFEx model is
        evaluated at each position.
    sigma, ivar, mask : frame-shaped paths or arrays [default: the frame file's extensions].
    size : cutout side (odd), one for all or an (N,) array [default: preset.stamp]; larger
        cutouts go through the rebinning rule, smaller ones are padded.
    rebin : ``"auto"``, a factor 1..MAX_REBIN (8) for all, or an (N,) integer array (e.g. from
        :func:`galnet.io.detect.cutout_plan`). With an array the cutout read around position i
        is at least the ``S k_i`` box (``S k_i + 1`` px for even ``k_i``), so no real pixel is
        replaced by padding.
    noise : a :class:`galnet.io.background.FrameNoise` of this frame: its ``sky`` is subtracted
        from the cutouts and its ``sigma`` and ``mask`` used (``sigma``/``ivar`` planes are then
        ignored; a ``mask`` plane is OR-ed), instead of the stamp-border noise estimate.
    Other parameters as :func:`iter_stamps`.

    Batches hold the positions in input order, whatever their sizes. The transform of each batch
    maps stamp pixels to *frame* pixels; pixels outside the frame are masked and flag EDGE (a
    position wholly outside the frame gives an all-masked stamp).
    """
    preset = get_preset(preset)
    if isinstance(rebin, str) or np.ndim(rebin) == 0:
        _check_rebin(rebin)
    chunk = _check_chunk(chunk)
    S = preset.stamp
    if size is not None and np.ndim(size) == 0:
        _frame_sizes(size, "auto", 1, S)  # a bad scalar size fails before any file is opened
    stack = contextlib.ExitStack()
    try:
        cube, ext = main_input(frame, "frame", stack)
        if not cube.two_d:
            raise GalnetValueError(f"{cube.name}: a frame must be a 2-D image, got shape "
                                   f"{cube.shape}", "frame")
        planes = input_planes(sigma, ivar, mask, ext, stack, cube)
        x, y, ids, wcs, pos_name = _read_positions(positions, cube.name, cube.headers)
        N = x.size
        side, kfix = _frame_sizes(size, rebin, N, S)
        psrc = PSFSource(psf, N, preset.psf_size, pos_name, stack)
        ps, zp, meta = scale_and_zeropoint(pixel_scale, zeropoint, cube.headers, preset,
                                            cube.name)
        data = cube.plane()
        pdata = {w: None if c is None else c.plane() for w, c in planes.items()}
        if noise is not None:
            if getattr(noise, "sigma", None) is None or noise.sigma.shape != data.shape:
                raise GalnetValueError(f"{cube.name}: noise must be a FrameNoise of this frame's "
                                       f"shape {data.shape}", "noise")
            pdata["sigma"] = pdata["ivar"] = None
    except BaseException:
        stack.close()
        raise
    meta.update(frame=cube.name, positions=pos_name, psf=psrc.name, preset=preset.name,
                **{w: c.name for w, c in planes.items() if c is not None})
    if noise is not None:
        meta.update(noise=noise.source, sky_removed=bool(noise.sky_removed))
    ixc = np.ceil(x - 0.5).astype(np.int64)  # Cutout2D's centre pixel for an odd size
    iyc = np.ceil(y - 0.5).astype(np.int64)

    def gen() -> Iterator[StampBatch]:
        usable = 0
        with stack:
            for i0 in range(0, N, chunk):
                i1 = min(N, i0 + chunk)
                sl = slice(i0, i1)
                blk = _frame_block(data, pdata, noise, ixc[sl], iyc[sl], side[sl],
                                   None if kfix is None else kfix[sl], S, preset)
                p = np.stack([x[sl], y[sl]], axis=1)
                psfs, bad = psrc.block(i0, i1, blk["rebin"], p)
                blk["flags"][bad] |= Flag.BAD_PSF
                usable += int((~blk["mask"].all(axis=(1, 2))).sum())
                if usable == 0 and i1 == N:
                    raise GalnetValueError(f"{pos_name}: none of the {N} cutouts of {cube.name} "
                                           "has a finite, unmasked pixel", "positions")
                yield StampBatch(blk["images"], blk["sigma"], blk["mask"], psfs, blk["flags"],
                                 ids[sl], blk["rebin"], blk["x0"], blk["y0"], x[sl].copy(),
                                 y[sl].copy(), blk["sky_rms"], ps, zp, dict(meta), wcs)

    return StampIterator(gen(), N, chunk, stack)


def load_frame(frame, positions, psf, sigma=None, ivar=None, mask=None, *,
               pixel_scale: float | None = None, zeropoint: float | None = None,
               preset: str | Preset = "hsc-r", size=None, rebin="auto",
               noise=None) -> StampBatch:
    """All cutouts at once (see :func:`iter_frame`). Raises as :func:`load_stamps`, and
    GalnetValueError ``"IMAGE.fits: no celestial WCS, cannot use ra/dec positions"``."""
    it = iter_frame(frame, positions, psf, sigma, ivar, mask, pixel_scale=pixel_scale,
                    zeropoint=zeropoint, preset=preset, size=size, rebin=rebin,
                    chunk=_LOAD_CHUNK, noise=noise)
    return collect(it)
