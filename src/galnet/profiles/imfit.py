"""Imfit's own pixel sub-sampling of the Sérsic profile, batched and differentiable (PyTorch).

Used by ``render(mode="imfit")``, which exists only to compare galnet with Imfit/GALFIT. It
reproduces ``Sersic::GetValue`` / ``Sersic::CalculateSubsamples`` of Imfit (func_sersic.cpp,
"based on Chien Peng's GALFIT algorithm"), pixel by pixel:

- ``r`` is the *elliptical* radius of the pixel centre from the profile centre, in semi-major
  pixels (``r = r_e`` on the half-light isophote); ``SUBSAMPLE_R = 10``.
- ``r >= 10``: one sample, the profile at the pixel centre.
- ``r_e <= 1`` and ``r <= 1``: ``k = min(100, int(20 / r_e))`` sub-samples per side;
  otherwise ``r <= 4``: ``k = 20``; otherwise (``4 < r < 10``) ``k = min(100, int(20 / r))``
  (4, 3 or 2).
- The pixel value is the mean of the profile over the ``k x k`` sub-pixel centres
  ``x - 1/2 + (i + 1/2)/k`` (same in ``y``): a mid-point rule on a grid tied to the pixel, not to
  the profile.

The value is assigned to every pixel of the grid passed in, PSF margin included (Imfit computes its
model on the image extended by the PSF half-sizes before convolving). The sub-sample count is
piecewise constant in the parameters (no gradient flows through it); the values are differentiable
in every parameter.
"""

from __future__ import annotations

import math

import torch

from galnet.conventions import IMFIT_BN_CB99, IMFIT_BN_M03  # Imfit's b_n (imfit_bn)
from galnet.errors import GalnetValueError
from galnet.profiles.sersic import sersic_bn

__all__ = ["imfit_T", "imfit_bn_torch", "subsample_counts"]

#: Imfit's SUBSAMPLE_R (func_sersic.cpp).
SUBSAMPLE_R = 10
_DEG2RAD = 0.017453292519943295  # Imfit's constant
#: Profile evaluations per chunk when averaging sub-samples (bounds memory).
_CHUNK_EVALS = 1 << 22


def imfit_bn_torch(n: torch.Tensor) -> torch.Tensor:
    """Imfit's approximate ``b_n`` (torch, differentiable): Ciotti & Bertin (1999) for n > 0.36,
    MacArthur et al. (2003) below, as :func:`galnet.conventions.imfit_bn` (numpy)."""
    n2 = n * n
    c, m = IMFIT_BN_CB99, IMFIT_BN_M03
    cb = 2.0 * n - c[0] + c[1] / n + c[2] / n2 + c[3] / (n2 * n) - c[4] / (n2 * n2)
    m03 = m[0] + m[1] * n + m[2] * n2 + m[3] * n2 * n + m[4] * n2 * n2
    return torch.where(n > 0.36, cb, m03)


def _axes(pa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of Imfit's internal angle (PA + 90 deg, from +x): (-sin pa, cos pa)."""
    return -torch.sin(pa), torch.cos(pa)


def subsample_counts(
    x0: torch.Tensor, y0: torch.Tensor, re: torch.Tensor, q: torch.Tensor, pa: torch.Tensor,
    grid_x: torch.Tensor, grid_y: torch.Tensor,
) -> torch.Tensor:
    """Sub-samples per side ``k`` Imfit uses for each pixel, (N, Hc, Wc) int64 (1: no sub-sampling).

    Arguments as in :func:`imfit_T`. Computed in float64 from detached inputs, with Imfit's
    expressions (its angle ``(PA_deg + 90) * DEG2RAD``), so that pixels exactly on a boundary
    (``r = 4``, ``5``, ...) get Imfit's count.
    """
    f = dict(dtype=torch.float64)
    x0, y0, re, q, pa = (t.detach().to(**f) for t in (x0, y0, re, q, pa))
    # Imfit's angle, PA_rad = (PA_deg + 90) * DEG2RAD, so that r lands on the same side of the
    # count boundaries (r = 4, 5, ...) in symmetric set-ups (integer centres, q = 1, PA = 60, 120)
    imfit_pa = (torch.rad2deg(pa) + 90.0) * _DEG2RAD
    c, s = torch.cos(imfit_pa), torch.sin(imfit_pa)
    dx = grid_x.detach().to(**f)[None, None, :] - x0[:, None, None]
    dy = grid_y.detach().to(**f)[None, :, None] - y0[:, None, None]
    xp = dx * c[:, None, None] + dy * s[:, None, None]
    yp = (-dx * s[:, None, None] + dy * c[:, None, None]) / q[:, None, None]
    r = torch.sqrt(xp * xp + yp * yp)
    re3 = re[:, None, None]
    k_small = torch.clamp(torch.floor(2 * SUBSAMPLE_R / re3), max=100).expand_as(r)
    k_far = torch.clamp(torch.floor(2 * SUBSAMPLE_R / r.clamp_min(1e-300)), max=100)
    k = torch.where(r <= 4.0, torch.full_like(r, 2 * SUBSAMPLE_R), k_far)
    k = torch.where((re3 <= 1.0) & (r <= 1.0), k_small, k)
    k = torch.where(r < SUBSAMPLE_R, k, torch.ones_like(r))
    return k.to(torch.int64)


def imfit_T(
    x0: torch.Tensor,
    y0: torch.Tensor,
    flux: torch.Tensor,
    re: torch.Tensor,
    n: torch.Tensor,
    q: torch.Tensor,
    pa: torch.Tensor,
    grid_x: torch.Tensor,
    grid_y: torch.Tensor,
    *,
    bn: str | torch.Tensor = "exact",
    subsampling: bool = True,
) -> torch.Tensor:
    """Pixel values Imfit assigns to a Sérsic profile before PSF convolution.

    Parameters
    ----------
    x0, y0 : (N,) profile centre, 0-based pixels (pixel centres at integers).
    flux : (N,) total flux (integrated to infinity) of the profile with the ``b_n`` chosen below.
    re : (N,) semi-major half-light radius, pixels.   n, q : (N,) Sérsic index, axis ratio b/a.
    pa : (N,) position angle, radians CCW from +y.
    grid_x : (Wc,) x of the pixel centres (0-based; may be negative, e.g. the PSF margin).
    grid_y : (Hc,) y of the pixel centres.
    bn : ``"exact"`` (default): galnet's exact ``b_n`` (:func:`galnet.profiles.sersic.sersic_bn`),
        used both in the profile shape and in ``I_e = flux / (2 pi q re^2 n e^b b^-2n Gamma(2n))``.
        ``"imfit"``: Imfit's series ``b_n`` in both, which with ``I_e`` from
        :func:`galnet.conventions.to_imfit` is *exactly* Imfit's profile. Or an (N,) tensor.
        The two differ (before any PSF) by at most 4e-4 of the peak for 0.3 <= n <= 0.5, 1e-4 at
        n = 0.8, 5e-6 at n = 2, but 4e-3 at n = 0.2 (Imfit's polynomial b_n for n <= 0.36).
    subsampling : False gives the pixel-centre values everywhere (PyImfit's ``subsampling=False``).

    Returns
    -------
    (N, Hc, Wc) tensor in the dtype/device of ``x0``: Imfit's sub-sampled pixel mean where it
    sub-samples (elliptical radius of the pixel centre < 10 px), the profile at the pixel centre
    elsewhere. Differentiable in all parameters (the sub-sample counts are constants).
    """
    dtype, device = x0.dtype, x0.device
    grid_x = grid_x.to(dtype=dtype, device=device)
    grid_y = grid_y.to(dtype=dtype, device=device)
    if isinstance(bn, torch.Tensor):
        b = bn.to(dtype=dtype, device=device)
    elif bn == "exact":
        b = sersic_bn(n)
    elif bn == "imfit":
        b = imfit_bn_torch(n)
    else:
        raise GalnetValueError(f"bn must be 'exact', 'imfit' or a tensor, got {bn!r}", "bn", bn)

    # S = amp exp(-b (r/re)^(1/n)),  amp = I_e e^b = flux b^(2n) / (2 pi q re^2 n Gamma(2n))
    log_amp = (torch.log(flux) + 2 * n * torch.log(b)
               - math.log(2 * math.pi) - torch.log(q) - 2 * torch.log(re) - torch.log(n)
               - torch.lgamma(2 * n))
    c, s = _axes(pa)
    # (x', y'/q) / re = dx (cx, cy) + dy (sx, sy): Imfit's rotation, scaled by 1/re and 1/(q re)
    cx, cy = c / re, -s / (q * re)
    sx, sy = s / re, c / (q * re)
    shape_p = torch.stack([log_amp, b, 0.5 / n], dim=1)  # (N, 3)

    def profile(p: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, i: torch.Tensor | slice):
        """S on the separable grids ``dx`` (M, kx) x ``dy`` (M, ky) of offsets from the centre of
        profile ``i`` (index into the N profiles) -> (M, ky, kx)."""
        xs = (dx * cx[i, None])[:, None, :] + (dy * sx[i, None])[:, :, None]
        ys = (dx * cy[i, None])[:, None, :] + (dy * sy[i, None])[:, :, None]
        u = xs * xs + ys * ys  # (r/re)^2
        pos = u > 0  # exact 0 (and zero gradient) at r = 0, where log/pow have no derivative
        t = torch.exp(p[:, 2, None, None] * torch.log(torch.where(pos, u, 1.0)))
        t = torch.where(pos, t, 0.0)
        return torch.exp(p[:, 0, None, None] - p[:, 1, None, None] * t)

    T = profile(shape_p, grid_x[None, :] - x0[:, None], grid_y[None, :] - y0[:, None], slice(None))
    if not subsampling:
        return T

    # the sub-sampled pixels (r < 10: a few hundred per profile), sorted by their count k
    k_flat = subsample_counts(x0, y0, re, q, pa, grid_x, grid_y).reshape(-1)
    sel = torch.nonzero(k_flat > 1).squeeze(1)
    if sel.numel() == 0:
        return T
    ks, order = torch.sort(k_flat[sel], stable=True)
    sel = sel[order]
    Hc, Wc = T.shape[-2:]
    bi, iy, ix = sel // (Hc * Wc), (sel // Wc) % Hc, sel % Wc
    kvals, counts = torch.unique_consecutive(ks, return_counts=True)
    vals, start = [], 0
    for k, m in zip(kvals.tolist(), counts.tolist(), strict=True):
        delta = 1.0 / k
        # Imfit: x_ii = (x - 0.5 + 0.5 delta) + ii delta; the pixel value is the mean over k x k
        off = (-0.5 + 0.5 * delta) + torch.arange(k, dtype=dtype, device=device) * delta
        step = max(1, _CHUNK_EVALS // (k * k))
        for a in range(start, start + m, step):
            j = bi[a : min(a + step, start + m)]
            sl = slice(a, a + j.numel())
            dx = (grid_x[ix[sl]] - x0[j])[:, None] + off
            dy = (grid_y[iy[sl]] - y0[j])[:, None] + off
            vals.append(profile(shape_p[j], dx, dy, j).mean(dim=(-2, -1)))
        start += m
    T = T.index_put((bi, iy, ix), torch.cat(vals))
    return T
