"""Analytic effective PSFs for the simulator: Moffat and Kolmogorov profiles, sheared, integrated
over each pixel (batched, torch, float32).

Each pixel is the integral of the profile over the pixel (3 x 3 Gauss-Legendre nodes per pixel;
agrees with GalSim's ``Convolve(psf, Pixel)`` to ~3e-5 of the peak); images are normalised to
unit sum and centred on their central pixel.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["analytic_psfs"]

#: Gauss-Legendre nodes per pixel axis for the analytic effective PSFs.
_PSF_NODES = 3


@lru_cache(maxsize=1)
def _kolmogorov_table(umax: float = 12.0, n: int = 1 << 14) -> tuple[float, np.ndarray]:
    """Kolmogorov profile (unit peak, from GalSim) at ``(r / FWHM)^2 = 0, d, 2d, ..., umax^2``.

    Tabulated in r^2 so that no square root is needed; the profile is smooth in r^2 at the centre.
    Returns (d, values float32).
    """
    import galsim

    k = galsim.Kolmogorov(fwhm=1.0)
    u2 = np.linspace(0.0, umax**2, n + 1)
    v = np.array([k.xValue(galsim.PositionD(float(np.sqrt(x)), 0.0)) for x in u2])
    return float(u2[1]), (v / v[0]).astype(np.float32)


@lru_cache(maxsize=4)
def _psf_grid(size: int):
    """Gauss-Legendre sub-pixel grid of the upper half (rows 0..size//2) of a PSF image.

    Returns (X^2, XY, Y^2) (1, rows*nodes, size*nodes) and the weight matrices Wr (rows,
    rows*nodes), Wc (size*nodes, size) that integrate the nodes into pixels.
    """
    import torch

    t, w = np.polynomial.legendre.leggauss(_PSF_NODES)
    h = size // 2
    sub = ((np.arange(size) - h)[:, None] + 0.5 * t[None, :]).ravel()
    wc = np.kron(np.eye(size), 0.5 * w[None, :]).astype(np.float32)  # (size, size*nodes)
    rows = h + 1
    X = torch.as_tensor(sub, dtype=torch.float32)[None, None, :]
    Y = torch.as_tensor(sub[: rows * _PSF_NODES], dtype=torch.float32)[None, :, None]
    Wr = torch.as_tensor(wc[:rows, : rows * _PSF_NODES])
    return X * X, X * Y, Y * Y, Wr, torch.as_tensor(wc.T.copy())


def analytic_psfs(
    fwhm_pix: np.ndarray,
    beta: np.ndarray,
    kolmogorov: np.ndarray,
    g1: np.ndarray,
    g2: np.ndarray,
    size: int = 25,
    batch: int = 1024,
) -> np.ndarray:
    """Effective (pixel-integrated) Moffat or Kolmogorov PSFs, centred on the central pixel.

    Parameters
    ----------
    fwhm_pix : (N,) FWHM of the profile before the pixel, pixels.
    beta : (N,) Moffat beta (ignored where ``kolmogorov``).
    kolmogorov : (N,) bool, Kolmogorov instead of Moffat.
    g1, g2 : (N,) reduced shear (GalSim convention), ``|g| < 1``.
    size : odd image side (pixels).   batch : PSFs evaluated per torch batch (memory).

    Returns
    -------
    (N, size, size) float32, each normalised to unit sum over the image. Each pixel is the integral
    of the sheared profile over the pixel (3 x 3 Gauss-Legendre nodes per pixel; the image is
    point-symmetric, so only its upper half is evaluated).
    """
    import torch

    fwhm_pix, beta, g1, g2 = (np.asarray(a, dtype=float) for a in (fwhm_pix, beta, g1, g2))
    kolmogorov = np.asarray(kolmogorov, dtype=bool)
    X2, XY, Y2, Wr, Wc = _psf_grid(size)
    d2, table = _kolmogorov_table()
    table_t = torch.as_tensor(table)
    # r^2 of the sheared profile, sheared coordinates S^-1 x with
    # S^-1 = [[1 - g1, -g2], [-g2, 1 + g1]] / sqrt(1 - g^2):  r^2 = A x^2 + B xy + C y^2
    k = 1.0 / (1.0 - g1**2 - g2**2)
    A, B, C = k * ((1 - g1) ** 2 + g2**2), -4.0 * k * g2, k * ((1 + g1) ** 2 + g2**2)
    beta = np.where(kolmogorov, 3.0, beta)  # (unused for Kolmogorov; keeps alpha finite)
    alpha2 = (fwhm_pix / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))) ** 2  # Moffat alpha^2
    scale = np.where(kolmogorov, 1.0 / (fwhm_pix**2 * d2), 1.0 / alpha2)  # r^2 -> table units
    h = size // 2
    out = np.empty((len(fwhm_pix), size, size), dtype=np.float32)
    for s in range(0, len(fwhm_pix), batch):
        sl = slice(s, s + batch)

        def col(a, sl=sl):
            return torch.as_tensor(a[sl].astype(np.float32))[:, None, None]

        u = col(A * scale) * X2 + col(B * scale) * XY + col(C * scale) * Y2  # (m, R, W)
        prof = torch.empty_like(u)
        kol = kolmogorov[sl]
        mi, ki = torch.as_tensor(np.flatnonzero(~kol)), torch.as_tensor(np.flatnonzero(kol))
        if len(mi):  # Moffat: (1 + r^2 / alpha^2)^-beta
            prof[mi] = torch.exp(-col(beta)[mi] * torch.log1p(u[mi]))
        if len(ki):  # Kolmogorov: linear interpolation in the r^2 table
            uk = torch.clamp(u[ki], max=len(table) - 1.0)  # beyond 12 FWHM: last value
            i = torch.clamp(uk.long(), max=len(table) - 2)
            lo = table_t[i]
            prof[ki] = lo + (table_t[i + 1] - lo) * (uk - i)
        half = Wr @ prof @ Wc  # (m, rows, size): pixel integrals of the upper half
        img = torch.cat([half, torch.flip(half[:, :h], dims=(1, 2))], dim=1)
        out[sl] = (img / img.sum((1, 2), keepdim=True)).numpy()
    return out
