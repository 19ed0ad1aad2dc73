"""Batched, differentiable rendering of PSF-convolved Sérsic stamps (PyTorch; CPU or GPU).

What is rendered (``mode="exact"``, the default)
------------------------------------------------
The PSF image is the *effective* PSF: samples ``P_j`` at pixel centres of a PSF that already
contains the pixel response (as survey PSF models and star images do). As in GalSim's
``InterpolatedImage``, the continuous PSF is ``sum_j P_j K(x - j)`` with ``K`` GalSim's Quintic
interpolation kernel (Bernstein & Gruen 2014). The model image is the Sérsic ``S`` convolved
with that continuous PSF and *sampled* (not integrated) at the pixel centres ``c``::

    M(c) = sum_j P_j T(c - j),      T(c) = (S * K)(c) = integral S(x) K(c - x) d^2x

a discrete convolution (done by FFT) of the PSF samples with ``T``, the Sérsic smoothed by the
interpolation kernel. This is what ``galsim.Convolve(sersic, galsim.InterpolatedImage(psf))
.drawImage(method="no_pixel")`` computes, without GalSim's truncation of Fourier space at its
estimated ``maxk`` (a truncation worth a few 1e-3 of the peak when the PSF FWHM is ~3 px and the
galaxy is unresolved; see docs/benchmarks.md).

How ``T`` is computed (the choice, and why)
-------------------------------------------
Far from the centre the profile is smooth on the pixel scale and ``T(c) = S(c)`` (the Quintic
reproduces low-order polynomials). In a window of ``(2R+1)^2`` pixels around the centre,
``T`` is a quadrature over cells centred on the profile centre, graded from ``h_core`` (1/16 px)
at the centre to ``h_max`` (1/2 px), so that the relative accuracy is uniform on the power-law
cusp of high-n profiles and on galaxies smaller than a pixel:

- each cell: 2x2 Gauss-Legendre nodes, each weighted by the Quintic at its own position;
- the 3x3 central cells (the cusp): flux and first moments integrated *exactly*. For a polygon,
  Green's theorem in polar coordinates about the centre turns the area integral into edge
  integrals of the enclosed-flux function, ``integral_cell S = sum_edges (F / 2 pi q) (A x B)
  integral_0^1 P(2n, b_n (rho(t)/r_e)^(1/n)) / rho(t)^2 dt`` (edges A -> B; ``rho(t)`` the
  elliptical radius along the edge), with a smooth, bounded integrand even for n = 8. The cell's
  flux is placed at its exact centroid.
- the square rings of cells around them, out to 3 px: each ring rescaled to its exact flux (the
  same theorem, in the frame where the profile is round). Near the centre the cells are as wide
  as their distance from it, so a thin galaxy's cross-section (q times that distance) falls
  between the nodes; without this the stamp flux of galaxies with q re_pix ~ 0.05-0.1 px erred
  by up to 1%.

This is the adaptive central sub-sampling of GALFIT/Imfit/ProFit, made exact at the cusp, at a
cost of a few thousand profile evaluations and one small FFT per stamp.

``mode="imfit"`` reproduces Imfit instead: its own pixel sub-sampling (integrating the Sérsic
over pixels near the centre) followed by the discrete convolution with the PSF image, which
counts the pixel response twice. It exists only for comparisons with Imfit and GALFIT
(:mod:`galnet.profiles.imfit`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
from scipy import special

from galnet.errors import GalnetPSFError, GalnetValueError
from galnet.profiles.imfit import imfit_T
from galnet.profiles.sersic import gammainc_p, sersic_bn

__all__ = ["render", "RenderConfig", "render_tensors", "render_grouped", "quintic"]


@dataclass(frozen=True)
class RenderConfig:
    """Accuracy knobs of the renderer, gathered in one place (like GalSim's GSParams).

    Attributes
    ----------
    window : smallest half-size (pixels) of the window around the centre where ``T`` is integrated
        on the fine grid rather than sampled. [default: 4]
    windows : larger half-sizes available to thin or extended profiles, chosen per stamp by
        :func:`window_sizes`. Empty: always ``window``. [default: (6, 9, 13, 18)]
    h_core : side (pixels) of the central cells, integrated exactly. [default: 1/16]
    growth : ratio of the sizes of successive cells away from the centre. [default: 1.5]
    h_max : largest cell side (pixels). 1/2 is within 7.4e-4 of the peak of a quadrature 2-4x
        finer everywhere (benchmarks/render_quadrature.py). [default: 1/2]
    edge_nodes : Gauss-Legendre nodes per cell edge for the exact integrals. [default: 12]
    ring_extent : half-size (pixels) of the square inside which the quadrature's square rings of
        cells are rescaled to their exact flux (:func:`_square_flux`); 0 switches it off.
        [default: 3]
    ring_nodes : Gauss-Legendre nodes per edge for those exact square fluxes. [default: 24]
    chunk : stamps rendered per batch (bounds memory; small chunks keep the temporaries in
        cache, faster on CPUs). [default: 128]
    """

    window: int = 4
    windows: tuple[int, ...] = (6, 9, 13, 18)
    h_core: float = 1.0 / 16.0
    growth: float = 1.5
    h_max: float = 0.5
    edge_nodes: int = 12
    ring_extent: float = 3.0
    ring_nodes: int = 24
    chunk: int = 128


DEFAULT_CONFIG = RenderConfig()

# Subnormal floats (below 1e-38 in float32) reach the far wings of steep profiles; x86 CPUs do
# arithmetic on them very slowly, which made float32 rendering slower than float64. They are
# ~1e-38 of the peak: galnet flushes them to zero (as GPUs do) for the whole process.
torch.set_flush_denormal(True)


# ----------------------------------------------------------------------------------------------
# Interpolation kernels
# ----------------------------------------------------------------------------------------------
def quintic(d: torch.Tensor) -> torch.Tensor:
    """GalSim's Quintic interpolant (support |d| < 3), as in GalSim's Interpolant.cpp."""
    x = d.abs()
    k1 = 1.0 + x**3 * (-95.0 / 12.0 + x * (23.0 / 2.0 + x * (-55.0 / 12.0)))
    k2 = (
        (x - 1) * (x - 2) * (-23.0 / 4.0 + x * (29.0 / 2.0 + x * (-83.0 / 8.0 + x * (55.0 / 24.0))))
    )
    k3 = (x - 2) * (x - 3) ** 2 * (-9.0 / 4.0 + x * (25.0 / 12.0 + x * (-11.0 / 24.0)))
    zero = torch.zeros_like(x)
    return torch.where(x <= 1, k1, torch.where(x <= 2, k2, torch.where(x < 3, k3, zero)))


# ----------------------------------------------------------------------------------------------
# Geometry shared by all stamps of a configuration (cached per dtype/device)
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _core_edges(core: int, h: float, nodes: int, dtype: torch.dtype, device: str):
    """Quadrature nodes on the edges of the (2 core + 1)^2 central cells (centre frame, pixels).

    Returns (px, py, w, cross) with px, py of shape (E, nodes): node positions; w (nodes,): GL
    weights on [0, 1]; cross (E,): A x B of each edge. Horizontal edges come first, oriented +x,
    indexed [row (2c+2), col (2c+1)]; then vertical edges oriented +y, indexed
    [col (2c+2), row (2c+1)].
    """
    t, w = np.polynomial.legendre.leggauss(nodes)
    t, w = 0.5 * (t + 1.0), 0.5 * w
    m = 2 * core + 1
    lines = (np.arange(m + 1) - core - 0.5) * h  # edge lines
    starts = (np.arange(m) - core - 0.5) * h  # segment starts
    # horizontal: y = lines[r], x from starts[c] to starts[c] + h
    hy = np.repeat(lines, m)
    hx0 = np.tile(starts, m + 1)
    # vertical: x = lines[c], y from starts[r] to starts[r] + h
    vx = np.repeat(lines, m)
    vy0 = np.tile(starts, m + 1)
    px = np.concatenate([hx0[:, None] + h * t[None, :], np.repeat(vx[:, None], nodes, 1)])
    py = np.concatenate([np.repeat(hy[:, None], nodes, 1), vy0[:, None] + h * t[None, :]])
    # A x B = Ax By - Ay Bx
    cross_h = hx0 * hy - hy * (hx0 + h)
    cross_v = vx * (vy0 + h) - vy0 * vx
    cross = np.concatenate([cross_h, cross_v])
    f = dict(dtype=dtype, device=device)
    return (
        torch.as_tensor(px, **f),
        torch.as_tensor(py, **f),
        torch.as_tensor(w, **f),
        torch.as_tensor(cross, **f),
    )


@lru_cache(maxsize=32)
def _graded_nodes(h_core: float, growth: float, h_max: float, extent: float, dtype, device: str):
    """1-D Gauss-Legendre (2-point) nodes and weights on cells graded away from the centre.

    Cells: [-h/2, h/2] and its two neighbours of side ``h_core``, then sides growing by
    ``growth`` up to ``h_max``, out to ``extent``. Returns (nodes, weights, core, bounds) where
    ``core`` marks the nodes of the three central cells (integrated exactly elsewhere) and
    ``bounds`` (numpy) are the outer edges of the cells on the positive side: the half-sizes of the
    nested squares whose differences are the square rings of cells.
    """
    b = [h_core / 2, 3 * h_core / 2]
    size = h_core
    while b[-1] < extent:
        size = min(size * growth, h_max)
        b.append(b[-1] + size)
    bounds = np.array([-v for v in reversed(b)] + b)
    lo, hi = bounds[:-1], bounds[1:]
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    g = half / math.sqrt(3.0)
    nodes = np.stack([mid - g, mid + g], 1).reshape(-1)
    weights = np.repeat(half, 2)
    ic = len(mid) // 2
    core = np.zeros(len(mid), bool)
    core[ic - 1 : ic + 2] = True
    f = dict(dtype=dtype, device=device)
    return (
        torch.as_tensor(nodes, **f),
        torch.as_tensor(weights, **f),
        torch.as_tensor(np.repeat(core, 2)),
        np.array(b),
    )


@lru_cache(maxsize=32)
def _ring_map(rings: int, dtype, device: str) -> torch.Tensor:
    """One-hot (L*L, rings + 1) map of the central L x L graded nodes to their square ring.

    Ring k holds the cells at Chebyshev distance k from the central cell (2 nodes per cell and
    axis); L = 2 (2 rings + 1): the middle nodes of the graded grid.
    """
    cells = np.abs(np.arange(2 * rings + 1) - rings).repeat(2)
    ring = np.maximum(cells[:, None], cells[None, :]).reshape(-1)
    return torch.as_tensor(np.eye(rings + 1)[ring], dtype=dtype, device=device)


def _core_cells_from_edges(e: torch.Tensor, core: int) -> torch.Tensor:
    """Cell integrals (N, m, m) [row=y, col=x] from oriented edge integrals e (N, E)."""
    N = e.shape[0]
    m = 2 * core + 1
    eh = e[:, : (m + 1) * m].reshape(N, m + 1, m)  # [y-line, x-segment]
    ev = e[:, (m + 1) * m :].reshape(N, m + 1, m)  # [x-line, y-segment]
    # counter-clockwise boundary: bottom(+x) + right(+y) - top(+x) - left(+y)
    return (
        eh[:, :-1, :] + ev[:, 1:, :].transpose(1, 2) - eh[:, 1:, :] - ev[:, :-1, :].transpose(1, 2)
    )


def window_sizes(re, n, q, config: RenderConfig = DEFAULT_CONFIG) -> np.ndarray:
    """Half-size of the integration window each profile needs (pixels).

    Beyond the window ``T`` is the profile sampled at pixel centres, which is accurate only where
    the profile is smooth on the pixel scale. Along the major axis at distance ``a`` the profile's
    cross-section is a Gaussian of width ``sigma_b = q a sqrt(n / (b_n (a/r_e)^(1/n)))``; thin
    galaxies need the window to extend until ``sigma_b >= 0.8`` px, unless the light beyond the
    ellipse ``rho = window`` is below 1e-4 of the total.
    """
    re, n, q = (np.asarray(v, float) for v in (re, n, q))
    sizes = (config.window, *sorted(w for w in config.windows if w > config.window))
    bn = special.gammaincinv(2 * n, 0.5)
    out = np.full(re.shape, sizes[-1], dtype=int)
    done = np.zeros(re.shape, bool)
    for R in sizes:
        u = bn * (R / re) ** (1 / n)
        sigma_b = q * R * np.sqrt(n / u)
        ok = ~done & ((sigma_b >= 0.8) | (special.gammaincc(2 * n, u) < 1e-4))
        out[ok] = R
        done |= ok
    return out


# ----------------------------------------------------------------------------------------------
# The core: tensors in, tensors out, no checks (callers validate)
# ----------------------------------------------------------------------------------------------
def render_tensors(
    x0: torch.Tensor,
    y0: torch.Tensor,
    flux: torch.Tensor,
    re: torch.Tensor,
    n: torch.Tensor,
    q: torch.Tensor,
    pa: torch.Tensor,
    psf_fft: torch.Tensor | None,
    psf_shape: tuple[int, int],
    shape: tuple[int, int],
    mode: str = "exact",
    config: RenderConfig = DEFAULT_CONFIG,
) -> torch.Tensor:
    """Render N PSF-convolved Sérsic stamps. Unchecked fast path of :func:`render`.

    Parameters
    ----------
    x0, y0 : (N,) centre, 0-based pixels.
    flux : (N,) total flux.   re : (N,) semi-major half-light radius, pixels.
    n, q : (N,) Sérsic index, axis ratio.   pa : (N,) position angle, radians CCW from +y.
    psf_fft : rfft2 of the PSF from :func:`psf_transform`, ((1 or N), Lh, Lw//2+1); None: no PSF.
    psf_shape : (h, w) of the PSF image (odd).   shape : (H, W) of the output.
    mode : "exact" (Quintic-interpolated effective PSF, sampled) or "imfit" (pixel-integrated).

    Returns
    -------
    (N, H, W) tensor.
    """
    H, W = shape
    ph, pw = psf_shape[0] // 2, psf_shape[1] // 2
    dtype, device = x0.dtype, x0.device

    bn = sersic_bn(n)
    inv_n = 1.0 / n
    ux, uy = -torch.sin(pa), torch.cos(pa)  # major axis direction
    # S = amp * exp(-b (rho/re)^(1/n)),  amp = I_e e^b
    amp = flux / (
        2 * math.pi * q * re**2 * n * torch.exp(torch.lgamma(2 * n) - 2 * n * torch.log(bn))
    )

    def col(t):  # (N,) -> (N, 1, 1)
        return t[:, None, None]

    # rho^2 = A dx^2 + B dx dy + C dy^2 (the ellipse as a quadratic form), divided by re^2
    inv_q2 = 1.0 / (q * q)
    qa = (ux * ux + uy * uy * inv_q2) / (re * re)
    qb = 2.0 * ux * uy * (1.0 - inv_q2) / (re * re)
    qc = (uy * uy + ux * ux * inv_q2) / (re * re)
    tiny = torch.finfo(dtype).tiny
    half_inv_n = col(0.5 * inv_n)

    def profile(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        """S at offsets dx (.., 1, W) and dy (.., H, 1) from the centre, broadcast to (N, H, W)."""
        r2 = col(qa) * dx * dx + col(qc) * dy * dy  # (rho / re)^2 = r2 + qb dx dy
        # S = amp exp(-b (rho/re)^(1/n)),  (rho/re)^(1/n) = exp(log(r2) / 2n)
        if not r2.requires_grad:  # no autograd: in place (the allocations cost more than the maths)
            r2.addcmul_(col(qb) * dx, dy).add_(tiny).log_().mul_(half_inv_n).exp_()
            return r2.mul_(-col(bn)).exp_().mul_(col(amp))
        r2 = torch.addcmul(r2, col(qb) * dx, dy)
        return col(amp) * torch.exp(-col(bn) * torch.exp(half_inv_n * torch.log(r2 + tiny)))

    # T on the pixel centres of the stamp plus the PSF margin
    gy = torch.arange(-ph, H + ph, dtype=dtype, device=device)
    gx = torch.arange(-pw, W + pw, dtype=dtype, device=device)
    if mode == "imfit":
        # Imfit's own pixel sub-sampling, then the same discrete convolution (render_imfit.py)
        T = imfit_T(x0, y0, flux, re, n, q, pa, gx, gy)
    else:
        T = profile(gx[None, None, :] - col(x0), gy[None, :, None] - col(y0))  # (N, Hc, Wc)
        T = _quintic_window(T, x0, y0, flux, re, n, q, ux, uy, bn, inv_n, profile, (ph, pw), config)

    if psf_fft is None:
        return T[:, ph : ph + H, pw : pw + W]
    # --- discrete convolution with the PSF samples (circular FFT of size >= Hc x Wc: no wrap) ----
    Lh, Lw = psf_fft.shape[-2], 2 * (psf_fft.shape[-1] - 1)
    Lw = _fft_width(psf_fft, Lw)
    Tk = torch.fft.rfft2(T, s=(Lh, Lw))
    out = torch.fft.irfft2(Tk * psf_fft, s=(Lh, Lw))
    return out[:, 2 * ph : 2 * ph + H, 2 * pw : 2 * pw + W]


def render_grouped(
    x0: torch.Tensor,
    y0: torch.Tensor,
    flux: torch.Tensor,
    re: torch.Tensor,
    n: torch.Tensor,
    q: torch.Tensor,
    pa: torch.Tensor,
    psf_fft: torch.Tensor | None,
    psf_shape: tuple[int, int],
    shape: tuple[int, int],
    windows: np.ndarray,
    config: RenderConfig = DEFAULT_CONFIG,
) -> torch.Tensor:
    """:func:`render_tensors` for profiles with their own integration windows (unchecked).

    ``windows`` (N,) are half-sizes from :func:`window_sizes`, passed explicitly so that a caller
    can keep them fixed while it perturbs the parameters (finite-difference Jacobians: a window
    that changed between two renders would make a jump). ``psf_fft`` holds 1 or N transforms.
    Renders ``config.chunk`` profiles at a time (the fitter uses small chunks: faster on CPUs).
    """
    windows = np.asarray(windows)
    per_stamp = psf_fft is not None and psf_fft.shape[0] != 1
    groups = np.unique(windows)
    N = x0.shape[0]
    if len(groups) == 1 and N <= config.chunk:
        return render_tensors(x0, y0, flux, re, n, q, pa, psf_fft, psf_shape, shape,
                              config=replace(config, window=int(groups[0])))
    out = torch.empty((N, *shape), dtype=x0.dtype, device=x0.device)
    for r in groups:
        sel = np.flatnonzero(windows == r)
        for s in range(0, len(sel), config.chunk):
            idx = torch.as_tensor(sel[s : s + config.chunk], device=x0.device)
            pf = psf_fft
            if per_stamp:
                pf = psf_fft[idx]
                pf._galnet_lw = _fft_width(psf_fft, 2 * (psf_fft.shape[-1] - 1))  # type: ignore
            out[idx] = render_tensors(x0[idx], y0[idx], flux[idx], re[idx], n[idx], q[idx],
                                      pa[idx], pf, psf_shape, shape,
                                      config=replace(config, window=int(r)))
    return out


def _quintic_window(T, x0, y0, flux, re, n, q, ux, uy, bn, inv_n, profile, margin, config):
    """Replace the sampled T by (S * K)(c) in the (2R+1)^2 pixels around the centre.

    Quadrature on a grid of cells centred on the profile centre, graded from ``h_core`` at the
    centre to ``h_max`` (so the relative accuracy is uniform on a power-law cusp): 2x2
    Gauss-Legendre nodes in each cell, each weighted by the Quintic at its own position, except
    the 3x3 central cells, whose flux and first moments are integrated exactly (edge integrals of
    the enclosed-flux function) and placed at their centroids.
    """
    N, Hc, Wc = T.shape
    ph, pw = margin
    dtype, device = T.dtype, T.device
    R = config.window
    nodes, wts, core, bounds = _graded_nodes(
        config.h_core, config.growth, config.h_max, R + 3.5, dtype, str(device)
    )
    # node weights, zero on the central 3x3 cells (added exactly below)
    w2 = wts[:, None] * wts[None, :] * (~(core[:, None] & core[None, :])).to(dtype)
    Sn = profile(nodes[None, None, :], nodes[None, :, None])
    Sn = Sn * w2 if Sn.requires_grad else Sn.mul_(w2)
    rings = int(np.searchsorted(bounds, config.ring_extent + 1e-9, side="right")) - 1
    if rings >= 2:
        Sn = _exact_ring_flux(Sn, bounds[1 : rings + 1], flux, re, n, q, ux, uy, bn, config)
    c, h = 1, config.h_core

    # exact flux and first moments of the core cells (Green's theorem about the centre)
    px, py, gw, cross = _core_edges(c, h, config.edge_nodes, dtype, str(device))
    a = px[None] * ux[:, None, None] + py[None] * uy[:, None, None]  # (N, E, nodes)
    b = (-px[None] * uy[:, None, None] + py[None] * ux[:, None, None]) / q[:, None, None]
    rho = torch.sqrt(a * a + b * b)
    u = bn[:, None, None] * torch.exp(inv_n[:, None, None] * torch.log(rho / re[:, None, None]))
    p2 = gammainc_p((2 * n)[:, None, None].expand_as(u), u)
    p3 = gammainc_p((3 * n)[:, None, None].expand_as(u), u)
    f0 = (flux / (2 * math.pi * q))[:, None] * cross[None, :]  # (N, E)
    # int_0^P I rho^2 drho = (F / 2 pi q) re b^-n Gamma(3n)/Gamma(2n) P(3n, u)
    f1 = (
        f0
        * (re * torch.exp(torch.lgamma(3 * n) - torch.lgamma(2 * n) - n * torch.log(bn)))[:, None]
    )
    e0 = (p2 / (rho * rho) * gw).sum(-1) * f0
    ex = (px[None] * p3 / rho**3 * gw).sum(-1) * f1
    ey = (py[None] * p3 / rho**3 * gw).sum(-1) * f1
    m = 2 * c + 1
    B = _core_cells_from_edges(e0, c).reshape(N, m * m)
    mx = _core_cells_from_edges(ex, c).reshape(N, m * m)
    my = _core_cells_from_edges(ey, c).reshape(N, m * m)
    cc = (torch.arange(m, dtype=dtype, device=device) - c) * h
    ccx = cc[None, :].expand(m, m).reshape(-1)
    ccy = cc[:, None].expand(m, m).reshape(-1)
    ok = B > torch.finfo(dtype).tiny * 1e6
    safe = torch.where(ok, B, torch.ones_like(B))
    X = torch.where(ok, torch.clamp(mx / safe, ccx - h / 2, ccx + h / 2), ccx)  # centroids
    Y = torch.where(ok, torch.clamp(my / safe, ccy - h / 2, ccy + h / 2), ccy)

    # window pixels: centred on the nearest pixel to the profile centre
    icx, icy = torch.round(x0.detach()), torch.round(y0.detach())
    j = torch.arange(-R, R + 1, dtype=dtype, device=device)
    ox = (icx - x0)[:, None, None] + j[None, :, None]  # (N, 2R+1, 1): pixel - centre
    oy = (icy - y0)[:, None, None] + j[None, :, None]
    Kx, Ky = quintic(ox - nodes[None, None, :]), quintic(oy - nodes[None, None, :])
    Twin = Ky @ Sn @ Kx.transpose(1, 2)  # (N, 2R+1, 2R+1)
    Kxc, Kyc = quintic(ox - X[:, None, :]), quintic(oy - Y[:, None, :])  # (N, 2R+1, m^2)
    Twin = Twin + torch.einsum("nyc,nc,nxc->nyx", Kyc, B, Kxc)

    # replace the sampled values inside the window (only where the window lies in the grid)
    jy0 = (icy + ph).long() - R
    jx0 = (icx + pw).long() - R
    inside = (jy0 >= 0) & (jx0 >= 0) & (jy0 + 2 * R < Hc) & (jx0 + 2 * R < Wc)
    if not bool(inside.any()):
        return T  # centres far outside the stamp keep the sampled T
    ar = torch.arange(2 * R + 1, device=device)
    rows = jy0.clamp(0, max(Hc - 2 * R - 1, 0))[:, None] + ar
    cols = jx0.clamp(0, max(Wc - 2 * R - 1, 0))[:, None] + ar
    flat = (rows[:, :, None] * Wc + cols[:, None, :]).reshape(N, -1)  # (N, (2R+1)^2)
    Tflat = T.reshape(N, -1)
    delta = (Twin.reshape(N, -1) - torch.gather(Tflat, 1, flat)) * inside[:, None].to(dtype)
    if Tflat.requires_grad:
        return Tflat.scatter_add(1, flat, delta).reshape(N, Hc, Wc)
    return Tflat.scatter_add_(1, flat, delta).reshape(N, Hc, Wc)


def _exact_ring_flux(Sn, bounds, flux, re, n, q, ux, uy, bn, config):
    """Rescale the quadrature's square rings of cells 2..K to their exact flux.

    Near the centre the graded cells are as wide as their distance from it, so a thin galaxy's
    cross-section (q times that distance) falls between the 2x2 Gauss-Legendre nodes: the
    quadrature then errs by up to a few per cent per ring (1% of the stamp flux for q re_pix ~
    0.05 px). The flux of each ring is known exactly (:func:`_square_flux`); each ring's nodes are
    scaled to it (factors clamped to [0.1, 10]), keeping the light where the quadrature put it.
    Near-round profiles (q > 0.7) change by < 4e-4 of the peak, needles and elongated high-n
    cusps by up to ~0.6% (near the centre every elongated cusp is as thin, relative to the cells,
    as a needle); benchmarks/render_quadrature.py measures both.
    """
    N, M = Sn.shape[0], Sn.shape[-1]
    K = len(bounds)  # squares b_1..b_K: the core square and the outer edges of rings 2..K
    dtype, device = Sn.dtype, Sn.device
    G = _square_flux(torch.as_tensor(bounds, dtype=dtype, device=device), re, n, q, ux, uy, bn,
                     config.ring_nodes)  # (N, K): fraction of the flux inside each square
    exact = flux[:, None] * (G[:, 1:] - G[:, :-1])  # (N, K - 1): rings 2..K
    lo = M // 2 - 1 - 2 * K  # the central 2 (2K + 1) nodes: the cells of rings 0..K
    hi = M - lo
    onehot = _ring_map(K, dtype, str(device))
    block = Sn[:, lo:hi, lo:hi]
    quad = (block.reshape(N, -1) @ onehot)[:, 2:]  # (N, K - 1)
    tiny = torch.finfo(dtype).tiny * 1e6
    factor = torch.where(quad > tiny, exact / torch.where(quad > tiny, quad, 1.0), 1.0)
    factor = torch.cat([torch.ones_like(factor[:, :2]), factor.clamp(0.1, 10.0)], 1)
    scale = (onehot @ factor.T).T.reshape(N, hi - lo, hi - lo)  # (N, L, L)
    if not Sn.requires_grad:
        Sn[:, lo:hi, lo:hi] *= scale
        return Sn
    middle = torch.cat([Sn[:, lo:hi, :lo], block * scale, Sn[:, lo:hi, hi:]], 2)
    return torch.cat([Sn[:, :lo], middle, Sn[:, hi:]], 1)


@lru_cache(maxsize=32)
def _gauss_legendre01(nodes: int, dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes and weights on [0, 1]."""
    t, w = np.polynomial.legendre.leggauss(nodes)
    f = dict(dtype=dtype, device=device)
    return torch.as_tensor(0.5 * (t + 1), **f), torch.as_tensor(0.5 * w, **f)


def _square_flux(s, re, n, q, ux, uy, bn, nodes: int) -> torch.Tensor:
    """Exact fraction of a Sérsic's flux inside the squares ``[-s, s]^2`` about its centre.

    In the frame stretched along the minor axis (``a``, ``b / q``) the profile is round and the
    flux inside a star-shaped region is ``F / 2 pi`` times the integral over ``psi`` of
    ``P(2n, b_n (r(psi) / r_e)^(1/n))`` (Green's theorem in polar coordinates), ``r(psi)`` the
    boundary at angle ``psi``. Along a straight edge from A to B, ``r(psi) = (A x D) / (e_psi x
    D)`` with ``D = B - A``: the integrand is smooth in ``psi`` however thin the galaxy, so
    ``nodes`` Gauss-Legendre nodes per edge suffice (24: within 3e-6 of the total flux for
    q >= 0.05, benchmarks/render_quadrature.py). By symmetry, two edges (right, top) give the
    whole square. Returns (N, S).
    """
    t, w = _gauss_legendre01(nodes, s.dtype, str(s.device))
    # corners (s, -s) -> (s, s) -> (-s, s), in the stretched frame: (N, S, 3)
    cx = torch.stack([s, s, -s], -1)[None]
    cy = torch.stack([-s, s, s], -1)[None]
    a = cx * ux[:, None, None] + cy * uy[:, None, None]
    b = (-cx * uy[:, None, None] + cy * ux[:, None, None]) / q[:, None, None]
    ax, ay, bx, by = a[..., :2], b[..., :2], a[..., 1:], b[..., 1:]  # edges A -> B: (N, S, 2)
    dx, dy = bx - ax, by - ay
    dpsi = torch.atan2(ax * by - ay * bx, ax * bx + ay * by)
    psi = torch.atan2(ay, ax)[..., None] + dpsi[..., None] * t  # (N, S, 2, nodes)
    r = (ax * dy - ay * dx)[..., None] / (torch.cos(psi) * dy[..., None]
                                         - torch.sin(psi) * dx[..., None])
    col = (slice(None),) + (None,) * 3
    u = bn[col] * torch.exp(torch.log(r / re[col]) / n[col])
    P = gammainc_p((2 * n)[col].expand_as(u), u)
    return ((P * w).sum(-1) * dpsi).sum(-1) / math.pi


def _fft_width(psf_fft: torch.Tensor, guess: int) -> int:
    return getattr(psf_fft, "_galnet_lw", guess)


def _good_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (fast FFT sizes)."""
    best = 2 * n
    for a in range(0, 12):
        for b in range(0, 8):
            for c in range(0, 6):
                v = 2**a * 3**b * 5**c
                if n <= v < best:
                    best = v
    return best


def psf_transform(psf: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """rfft2 of (normalised) PSF images ``(P, h, w)`` on the FFT grid used to render ``shape``.

    The returned tensor carries the real FFT width as attribute ``_galnet_lw``.
    """
    h, w = psf.shape[-2:]
    Lh = _good_size(shape[0] + h - 1)
    Lw = _good_size(shape[1] + w - 1)
    fk = torch.fft.rfft2(psf, s=(Lh, Lw))
    fk._galnet_lw = Lw  # type: ignore[attr-defined]
    return fk


# ----------------------------------------------------------------------------------------------
# Public, checked entry point
# ----------------------------------------------------------------------------------------------
_REQUIRED = ("x", "y", "re_pix", "n", "q", "pa_deg")


def render(
    params,
    psf,
    shape: tuple[int, int] = (61, 61),
    *,
    zeropoint: float | None = None,
    mode: str = "exact",
    device: str | torch.device | None = None,
    dtype=None,
    config: RenderConfig = DEFAULT_CONFIG,
):
    """Render PSF-convolved Sérsic stamps in galnet's conventions (docs/conventions.md).

    Parameters
    ----------
    params : mapping or astropy Table
        Columns ``x``, ``y`` (0-based pixels), ``re_pix`` (semi-major half-light radius, pixels),
        ``n``, ``q`` (b/a), ``pa_deg`` (CCW from +y) and either ``flux`` (total, image units) or
        ``mag`` together with ``zeropoint``. Scalars or arrays of length N.
    psf : array or tensor, (h, w) or (N, h, w)
        Effective PSF image(s) (pixel response included), odd sizes; normalised to unit sum here.
        ``None`` renders the bare profile (T, no PSF).
    shape : (H, W) of the output stamps. [default: (61, 61)]
    zeropoint : magnitude zeropoint, needed when ``params`` give ``mag``.
    mode : ``"exact"`` (default) or ``"imfit"`` (Imfit's pixel sub-sampling, then convolved).
    device : torch device for the computation [default: that of tensor inputs, else CPU].
    dtype : float32 or float64 (numpy or torch dtype) [default: float64 for numpy input, else the
        dtype of the tensors].
    config : accuracy knobs, :class:`RenderConfig`.

    Returns
    -------
    (N, H, W) numpy array for numpy input; tensor (differentiable) when any parameter is a tensor.
    """
    if mode not in ("exact", "imfit"):
        raise GalnetValueError(
            f"unknown render mode {mode!r} (use 'exact' or 'imfit')", "mode", mode
        )
    shape = _check_shape(shape)
    if not isinstance(params, Mapping):
        try:  # astropy Table / QTable / structured arrays
            params = {k: params[k] for k in params.colnames}
        except AttributeError as err:
            raise GalnetValueError("params must be a mapping or an astropy Table") from err
    missing = [k for k in _REQUIRED if k not in params]
    if "flux" not in params and "mag" not in params:
        missing.append("flux (or mag)")
    if missing:
        raise GalnetValueError(f"params is missing {', '.join(missing)}", "params")

    values = {k: params[k] for k in (*_REQUIRED, "flux" if "flux" in params else "mag")}
    as_tensor = any(isinstance(v, torch.Tensor) for v in values.values()) or isinstance(
        psf, torch.Tensor
    )
    tdtype = _torch_dtype(dtype, values, psf)
    tdevice = torch.device(device) if device is not None else _tensor_device(values, psf)

    t = {k: _to_tensor(v, k, tdtype, tdevice) for k, v in values.items()}
    if "mag" in t:
        if zeropoint is None:
            raise GalnetValueError("params give 'mag' but no zeropoint was given", "zeropoint")
        t["flux"] = 10.0 ** (-0.4 * (t.pop("mag") - float(zeropoint)))
    N = max(v.numel() for v in t.values())
    t = {k: v.reshape(-1).expand(N) if v.numel() == 1 else v.reshape(-1) for k, v in t.items()}
    if any(v.numel() != N for v in t.values()):
        raise GalnetValueError("parameter arrays have different lengths", "params")
    _check_values(t)

    psf_t = None if psf is None else _check_psf(psf, N, tdtype, tdevice)
    psf_shape = (1, 1) if psf_t is None else tuple(psf_t.shape[-2:])
    shared = psf_t is not None and psf_t.shape[0] == 1
    pf_shared = psf_transform(psf_t, shape) if shared else None
    # profiles are grouped by the integration window they need (thin galaxies need larger ones)
    R = window_sizes(*(t[k].detach().cpu().numpy() for k in ("re_pix", "n", "q")), config)
    if mode == "imfit":
        R[:] = config.window  # Imfit's scheme does not use the window
    parts, order = [], []
    for r in np.unique(R):
        idx_all = np.flatnonzero(R == r)
        cfg = replace(config, window=int(r))
        for s in range(0, len(idx_all), config.chunk):
            idx = torch.as_tensor(idx_all[s : s + config.chunk], device=tdevice)
            pf = pf_shared
            if psf_t is not None and not shared:
                pf = psf_transform(psf_t[idx], shape)
            sub = {k: v[idx] for k, v in t.items()}
            parts.append(
                render_tensors(
                    sub["x"],
                    sub["y"],
                    sub["flux"],
                    sub["re_pix"],
                    sub["n"],
                    sub["q"],
                    torch.deg2rad(sub["pa_deg"]),
                    pf,
                    psf_shape,
                    shape,
                    mode,
                    cfg,
                )
            )
            order.append(idx)
    img = torch.cat(parts) if len(parts) > 1 else parts[0]
    if len(parts) > 1 or not bool((order[0] == torch.arange(N, device=tdevice)).all()):
        inv = torch.empty(N, dtype=torch.long, device=tdevice)
        inv[torch.cat(order)] = torch.arange(N, device=tdevice)
        img = img[inv]
    if as_tensor:
        return img
    return img.detach().cpu().numpy()


# ---- validation helpers ----------------------------------------------------------------------
def _check_shape(shape) -> tuple[int, int]:
    try:
        H, W = (int(s) for s in shape)
    except (TypeError, ValueError) as err:
        raise GalnetValueError(f"shape must be (H, W), got {shape!r}", "shape", shape) from err
    if H < 1 or W < 1:
        raise GalnetValueError(f"shape must be positive, got {shape!r}", "shape", shape)
    return H, W


def _torch_dtype(dtype, values, psf) -> torch.dtype:
    if dtype is not None:
        if isinstance(dtype, torch.dtype):
            return dtype
        return {np.dtype("float32"): torch.float32, np.dtype("float64"): torch.float64}[
            np.dtype(dtype)
        ]
    for v in (*values.values(), psf):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.dtype
    return torch.float64


def _tensor_device(values, psf) -> torch.device:
    for v in (*values.values(), psf):
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")


def _to_tensor(v, name, dtype, device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.to(dtype=dtype, device=device)
    try:
        a = np.asarray(getattr(v, "value", v), dtype=float)  # astropy Quantity -> value
    except (TypeError, ValueError) as err:
        raise GalnetValueError(f"parameter {name!r} is not numeric", name) from err
    return torch.as_tensor(a, dtype=dtype, device=device)


def _check_values(t: dict[str, torch.Tensor]) -> None:
    for k, v in t.items():
        bad = ~torch.isfinite(v.detach())
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            raise GalnetValueError(f"parameter {k!r} is not finite (first at index {i})", k)
    checks = {
        "flux": (t["flux"] > 0, "must be > 0"),
        "re_pix": (t["re_pix"] > 0, "must be > 0"),
        "n": ((t["n"] >= 0.2) & (t["n"] <= 10), "must be in [0.2, 10]"),
        "q": ((t["q"] > 0) & (t["q"] <= 1), "must be in (0, 1]"),
    }
    for k, (ok, msg) in checks.items():
        ok = ok.detach()
        if not bool(ok.all()):
            i = int(torch.nonzero(~ok)[0])
            raise GalnetValueError(
                f"parameter {k!r} {msg} (index {i}: {float(t[k][i]):g})", k, float(t[k][i])
            )


def _check_psf(psf, N: int, dtype, device) -> torch.Tensor:
    if isinstance(psf, torch.Tensor):
        p = psf.to(dtype=dtype, device=device)
    else:
        try:
            p = torch.as_tensor(np.asarray(psf, dtype=float), dtype=dtype, device=device)
        except (TypeError, ValueError) as err:
            raise GalnetPSFError("PSF is not a numeric array") from err
    if p.dim() == 2:
        p = p[None]
    if p.dim() != 3:
        raise GalnetPSFError(f"PSF must be 2-D (h, w) or a cube (N, h, w), got {p.dim()}-D")
    if p.shape[0] not in (1, N):
        raise GalnetPSFError(f"PSF cube has {p.shape[0]} images for {N} profiles")
    h, w = p.shape[-2:]
    if h % 2 == 0 or w % 2 == 0:
        raise GalnetPSFError(f"PSF must have odd sizes (centre on a pixel), got {h}x{w}")
    if not bool(torch.isfinite(p.detach()).all()):
        raise GalnetPSFError("PSF has non-finite pixels")
    s = p.sum(dim=(-2, -1), keepdim=True)
    if not bool((s.detach() > 0).all()):
        raise GalnetPSFError("PSF sum must be positive")
    return p / s
