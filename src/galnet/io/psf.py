"""PSF sources: one image for all stamps, a cube (one per stamp), or a PSFEx model.

- A PSFEx model (``.psf`` / FITS with a ``PSF_DATA`` table, or a legacypipe "psfex-single" table,
  see :func:`psfex_hdu_from_legacypipe`) is evaluated at each stamp's frame position with
  ``galsim.des.DES_PSFEx`` (GalSim positions are 1-based: the model is evaluated at
  ``(x + 1, y + 1)``) and drawn on the stamp pixels with ``method='no_pixel'`` (PSFEx models are
  effective PSFs).
- Sizes must be odd. Every PSF is normalised to unit sum, shifted by the integer offset of its
  peak so the peak is the central pixel (no shift when the central pixel ties the peak), then
  cropped/zero-padded to ``P x P`` (``P = preset.psf_size`` = 25) and renormalised. ``BAD_PSF``:
  the peak was more than :data:`PSF_MAX_SHIFT` px off-centre, or more than :data:`PSF_MAX_LOST`
  of the flux fell outside ``P x P``.
- Rebinned stamps (:mod:`galnet.io.prepare`) get the PSF binned the same way: the binned
  effective PSF is the PSF convolved with the ``k x k`` comb of pixel centres, sampled every
  ``k`` pixels (an exact block-sum for odd k; for even k the PSF is interpolated half a pixel
  with GalSim's Quintic kernel), k = 1 .. 8.
"""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np

from galnet.errors import GalnetPSFError, GalnetValueError
from galnet.io.fits import cube_from_array, cube_from_hdu, first_image_hdu, is_pathlike, open_fits

__all__ = ["PSF_MAX_SHIFT", "PSF_MAX_LOST", "PSFSource", "psfex_hdu_from_legacypipe"]

#: A PSF whose peak is farther than this (pixels, per axis) from the centre is flagged BAD_PSF.
PSF_MAX_SHIFT = 2
#: A PSF losing more than this fraction of its flux outside P x P is flagged BAD_PSF.
PSF_MAX_LOST = 0.10


def _shift_int(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` moved by (dy, dx) pixels (content at [i, j] goes to [i + dy, j + dx]), zero fill."""
    out = np.zeros_like(a)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def _prepare_psfs(p: np.ndarray, name: str, first: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate, normalise and recentre PSFs ``(n, h, w)``; returns (float64 unit-sum PSFs,
    bad (n,) = peak moved by more than PSF_MAX_SHIFT). ``first`` = index of p[0] in a cube (None
    for a single image)."""
    n, h, w = p.shape
    if h % 2 == 0 or w % 2 == 0:
        raise GalnetPSFError(f"{name}: PSF must have odd sizes (centre on a pixel), got {h}x{w}",
                             "psf", (h, w))

    def which(i: int) -> str:
        return "PSF" if first is None else f"PSF {first + i}"

    p = np.asarray(p, dtype=np.float64)
    finite = np.isfinite(p).all(axis=(1, 2))
    if not finite.all():
        raise GalnetPSFError(f"{name}: {which(int(np.argmin(finite)))} has non-finite pixels",
                             "psf")
    s = p.sum(axis=(1, 2))
    if not (s > 0).all():
        i = int(np.argmin(s > 0))
        raise GalnetPSFError(f"{name}: {which(i)} has a non-positive sum ({s[i]:.3g})", "psf")
    p = p / s[:, None, None]
    flat = p.reshape(n, -1)
    peak = flat.argmax(axis=1)
    peak[p[:, (h - 1) // 2, (w - 1) // 2] >= flat.max(axis=1) * (1 - 1e-6)] = (h * w - 1) // 2
    dy = (h - 1) // 2 - peak // w  # shift to apply (0 when the central pixel ties the peak)
    dx = (w - 1) // 2 - peak % w
    moved = np.flatnonzero((dy != 0) | (dx != 0))
    if moved.size:
        p = p.copy()
        for i in moved:
            p[i] = _shift_int(p[i], int(dy[i]), int(dx[i]))
        p[moved] /= p[moved].sum(axis=(1, 2))[:, None, None]
    bad = np.maximum(np.abs(dy), np.abs(dx)) > PSF_MAX_SHIFT
    return p, bad


def _centre_crop(a: np.ndarray, size: int) -> np.ndarray:
    """Crop or zero-pad the last two (odd) axes of ``a`` to ``size`` around the central pixel."""
    h, w = a.shape[-2:]
    out = np.zeros((*a.shape[:-2], size, size), dtype=a.dtype)
    c, ch, cw = (size - 1) // 2, (h - 1) // 2, (w - 1) // 2
    ry, rx = min(c, ch), min(c, cw)
    out[..., c - ry:c + ry + 1, c - rx:c + rx + 1] = a[..., ch - ry:ch + ry + 1,
                                                      cw - rx:cw + rx + 1]
    return out


def _finish_psfs(p: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop/pad unit-sum PSFs to ``size``; returns (float32 unit-sum PSFs, lost-flux flag)."""
    out = _centre_crop(p, size)
    s = out.sum(axis=(-2, -1))
    lost = 1.0 - s > PSF_MAX_LOST
    return (out / s[..., None, None]).astype(np.float32), lost


def _bin_profile(prof, k: int, size: int) -> np.ndarray:
    """A GalSim profile (pixel units) convolved with the k x k comb of pixel centres and sampled
    every k pixels on a size x size grid centred on it: the effective PSF of k x k-binned pixels."""
    import galsim

    if k > 1:
        off = np.arange(k) - (k - 1) / 2.0
        prof = galsim.Sum([prof.shift(float(ox), float(oy)) for oy in off for ox in off])
    # no_pixel draws surface brightness x pixel area (k^2): divide it out
    arr = prof.drawImage(nx=size, ny=size, scale=float(k), method="no_pixel").array
    return arr.astype(np.float64) / (k * k)


def _bin_psf_image(p: np.ndarray, k: int, size: int) -> np.ndarray:
    """Bin a unit-sum odd PSF image by k (see :func:`_bin_profile`): an exact block-sum around
    the central pixel for odd k, a Quintic-interpolated one for even k. Returns float64 (size,
    size), not normalised."""
    if k == 1:
        return _centre_crop(p, size)
    if k % 2 == 1:
        h, w = p.shape
        m = max(math.ceil(max(h, w) / k), size)
        m += 1 - m % 2  # odd number of blocks: the central block is centred on the central pixel
        big = _centre_crop(p, m * k)
        return _centre_crop(big.reshape(m, k, m, k).sum(axis=(1, 3)), size)
    import galsim

    ii = galsim.InterpolatedImage(galsim.Image(np.ascontiguousarray(p), scale=1.0),
                                  x_interpolant="quintic", normalization="sb")
    return _bin_profile(ii, k, size)


class PSFSource:
    """PSFs per stamp from one image, a cube or a PSFEx model."""

    def __init__(self, psf, n_stamps: int, size: int, stamps_name: str,
                 stack: contextlib.ExitStack):
        self.size = size
        self.model = None
        if is_pathlike(psf):
            self.name = str(psf)
            hdul = open_fits(psf, "psf", stack)
            hdu = self._psfex_hdu(hdul)
            if hdu is not None:
                self._load_psfex(hdu)
                return
            cube = cube_from_hdu(first_image_hdu(hdul, psf, skip=()), self.name)
        elif psf is not None and type(psf).__name__ == "DES_PSFEx":
            self.name, self.kind, self.model = "psf (DES_PSFEx)", "psfex", psf
            return
        else:
            self.name = "psf"
            if psf is None:
                raise GalnetPSFError("psf: a PSF is required (2-D image, cube or PSFEx file)",
                                     "psf")
            try:
                cube = cube_from_array(psf, "psf")
            except GalnetValueError as err:
                raise GalnetPSFError(str(err), "psf") from err
        n, h, w = cube.shape
        if h % 2 == 0 or w % 2 == 0:
            raise GalnetPSFError(
                f"{self.name}: PSF must have odd sizes (centre on a pixel), got {h}x{w}", "psf",
                (h, w))
        if cube.two_d or n == 1:
            self.kind = "image"
            full, bad = _prepare_psfs(cube.read(0, 1).astype(np.float64), self.name, None)
            self.full, self.bad = full[0], bool(bad[0])
            self._binned: dict[int, tuple[np.ndarray, bool]] = {}
        else:
            if n != n_stamps:
                raise GalnetPSFError(
                    f"{self.name}: PSF cube has {n} PSFs for {n_stamps} stamps ({stamps_name})",
                    "psf", n)
            self.kind, self.cube = "cube", cube

    @staticmethod
    def _psfex_hdu(hdul):
        from astropy.io import fits

        for h in hdul:
            if isinstance(h, fits.BinTableHDU):
                cols = [c.upper() for c in h.columns.names]
                if "PSF_MASK" in cols:
                    return h
        return None

    def _load_psfex(self, hdu) -> None:
        import galsim.des

        self.kind = "psfex"
        try:
            if "PSF_MASK" in hdu.columns.names and "POLNAXIS" in hdu.header:
                self.model = galsim.des.DES_PSFEx(hdu)
            else:  # legacypipe "psfex-single": PSFEx keywords stored as columns
                self.model = galsim.des.DES_PSFEx(psfex_hdu_from_legacypipe(hdu))
        except Exception as err:  # noqa: BLE001 - GalSim raises OSError/KeyError/AssertionError
            raise GalnetPSFError(f"{self.name}: unreadable PSFEx model ({err})", "psf") from err

    def _image_binned(self, k: int) -> tuple[np.ndarray, bool]:
        if k not in self._binned:
            out, lost = _finish_psfs(_bin_psf_image(self.full, k, self.size)[None], self.size)
            self._binned[k] = (out[0], bool(self.bad or lost[0]))
        return self._binned[k]

    def block(self, i0: int, i1: int, k: np.ndarray, pos: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
        """PSFs (n, P, P) float32 and BAD_PSF (n,) for stamps i0:i1 with rebin factors k and
        frame positions pos (n, 2) (0-based x, y; PSFEx only)."""
        n, P = i1 - i0, self.size
        out = np.empty((n, P, P), dtype=np.float32)
        bad = np.zeros(n, dtype=bool)
        if self.kind == "image":
            for kk in np.unique(k):
                img, b = self._image_binned(int(kk))
                sel = k == kk
                out[sel] = img
                bad[sel] = b
            return out, bad
        if self.kind == "cube":
            raw = self.cube.read(i0, i1)
            full, bad = _prepare_psfs(raw, self.name, i0)
            one = k == 1
            if one.any():
                out[one], lost = _finish_psfs(full[one], P)
                bad[one] |= lost
            for i in np.flatnonzero(~one):
                b = _bin_psf_image(full[i], int(k[i]), P)
                out[i], lost = _finish_psfs(b[None], P)
                bad[i] |= lost[0]
            return out, bad
        # PSFEx: evaluated at each frame position (GalSim positions are 1-based)
        import galsim

        if pos is None:
            raise GalnetPSFError(
                f"{self.name}: a PSFEx model needs each stamp's frame position (psf_positions)",
                "psf")
        raw = np.empty((n, P, P))
        for i in range(n):
            prof = self.model.getPSF(galsim.PositionD(float(pos[i, 0]) + 1.0,
                                                      float(pos[i, 1]) + 1.0))
            raw[i] = _bin_profile(prof, int(k[i]), P)
        lost = 1.0 - raw.sum(axis=(1, 2)) > PSF_MAX_LOST
        full, bad = _prepare_psfs(raw, self.name, i0)
        out, lost2 = _finish_psfs(full, P)
        return out, bad | lost | lost2


def psfex_hdu_from_legacypipe(source):
    """A standard PSFEx ``PSF_DATA`` table HDU (readable by ``galsim.des.DES_PSFEx``) from a
    legacypipe "psfex-single" table, whose PSFEx header keywords are stored as columns.

    ``source``: the path of the file (table in HDU 1) or the table HDU itself."""
    from astropy.io import fits

    if isinstance(source, str | os.PathLike):
        with fits.open(source) as h:
            return psfex_hdu_from_legacypipe(h[1])
    t = source.data
    basis = np.asarray(t["psf_mask"][0], dtype=np.float32)
    row = {name.upper(): t[name][0] for name in t.columns.names if name.lower() != "psf_mask"}
    n3, n2, n1 = basis.shape
    col = fits.Column(name="PSF_MASK", format=f"{basis.size}E", dim=f"({n1},{n2},{n3})",
                      array=basis[None])
    hdu = fits.BinTableHDU.from_columns([col])
    for key in ("POLNAXIS", "POLNAME1", "POLNAME2", "POLZERO1", "POLZERO2", "POLSCAL1",
                "POLSCAL2", "POLNGRP", "POLGRP1", "POLGRP2", "POLDEG1", "PSFNAXIS", "PSFAXIS1",
                "PSFAXIS2", "PSFAXIS3", "PSF_SAMP", "PSF_FWHM"):
        v = row[key]
        hdu.header[key] = v.strip() if isinstance(v, str) else v.item()
    return hdu
