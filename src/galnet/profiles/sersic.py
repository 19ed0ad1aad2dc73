"""Sérsic profile mathematics, exact and differentiable (numpy and PyTorch).

The elliptical Sérsic profile (conventions in :mod:`galnet.conventions`)::

    I(rho) = I_e exp(-b_n [(rho / r_e)^(1/n) - 1])
    rho^2  = a^2 + (b / q)^2          a, b: offsets along the major and minor axes (pixels)
    F      = 2 pi q r_e^2 I_e n e^(b_n) b_n^(-2n) Gamma(2n)      (total flux to infinity)
    L(<rho) = F P(2n, b_n (rho / r_e)^(1/n))                      (flux inside the ellipse rho)

``b_n`` is exact: the root of ``P(2n, b_n) = 1/2`` where ``P`` is the regularised lower incomplete
gamma function (``scipy.special.gammaincinv(2n, 0.5)``), so that ``r_e`` is exactly the half-light
radius along the major axis. No asymptotic series is used (Imfit uses one; see
:func:`galnet.conventions.imfit_bn`).

Every function takes numpy arrays (returns numpy) or torch tensors (returns tensors, with gradients
with respect to every argument, including ``n``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special

__all__ = [
    "sersic_bn",
    "sersic_ie",
    "sersic_total_flux",
    "gammainc_p",
    "enclosed_fraction",
]


# ----------------------------------------------------------------------------------------------
# Regularised lower incomplete gamma P(a, x) with gradients in both arguments (torch).
# torch.special.gammainc has no derivative with respect to `a`; this Function supplies it.
# ----------------------------------------------------------------------------------------------
class _GammaIncP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, x)
        return torch.special.gammainc(a, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, x = ctx.saved_tensors
        ga = gx = None
        if ctx.needs_input_grad[1]:
            # dP/dx = x^(a-1) e^(-x) / Gamma(a)
            xs = x.clamp_min(torch.finfo(x.dtype).tiny)
            gx = grad * torch.exp((a - 1) * torch.log(xs) - xs - torch.lgamma(a))
            gx = torch.where(x > 0, gx, torch.zeros_like(gx))
        if ctx.needs_input_grad[0]:
            # dP/da by a central difference in float64 (P is smooth in a; relative error ~1e-9).
            a64, x64 = a.double(), x.double()
            h = 1e-4 * a64.clamp_min(1e-3)
            dp = torch.special.gammainc(a64 + h, x64) - torch.special.gammainc(a64 - h, x64)
            ga = grad * (dp / (2 * h)).to(a.dtype)
        return _reduce_to(ga, a), _reduce_to(gx, x)


def _reduce_to(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Sum a broadcast gradient back to the shape of the input it belongs to."""
    if g is None or g.shape == like.shape:
        return g
    while g.dim() > like.dim():
        g = g.sum(0)
    for i, s in enumerate(like.shape):
        if s == 1 and g.shape[i] != 1:
            g = g.sum(i, keepdim=True)
    return g


def gammainc_p(a, x):
    """Regularised lower incomplete gamma ``P(a, x)`` (differentiable in ``a`` and ``x``)."""
    if isinstance(a, torch.Tensor) or isinstance(x, torch.Tensor):
        a, x = torch.broadcast_tensors(*_as_tensors(a, x))
        return _GammaIncP.apply(a, x)
    return special.gammainc(a, x)


# ----------------------------------------------------------------------------------------------
# b_n: exact inverse of P(2n, b) = 1/2.
# ----------------------------------------------------------------------------------------------
def _bn_newton(n: torch.Tensor) -> torch.Tensor:
    """Solve P(2n, b) = 1/2 for b by safeguarded Newton iteration (float64, any device)."""
    a = 2.0 * n.double()
    # Ciotti & Bertin (1999) series as a start; safeguarded by the bracket [0, 2a + 10].
    b = a - 1.0 / 3.0 + 4.0 / (405.0 * n.double()) + 46.0 / (25515.0 * n.double() ** 2)
    lo = torch.zeros_like(a)
    hi = 2.0 * a + 10.0
    b = torch.minimum(b.clamp_min(1e-6), hi - 1.0)
    lga = torch.lgamma(a)
    for _ in range(60):
        f = torch.special.gammainc(a, b) - 0.5
        lo = torch.where(f < 0, b, lo)
        hi = torch.where(f >= 0, b, hi)
        fp = torch.exp((a - 1) * torch.log(b) - b - lga)
        step = b - f / fp
        bad = ~((step > lo) & (step < hi)) | ~torch.isfinite(step)
        new = torch.where(bad, 0.5 * (lo + hi), step)
        if torch.all(torch.abs(new - b) <= 1e-14 * b):
            b = new
            break
        b = new
    return b


class _SersicBn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, n: torch.Tensor) -> torch.Tensor:
        if n.device.type == "cpu":  # scipy's exact inverse, no iteration (faster on CPUs)
            b = torch.as_tensor(special.gammaincinv(2.0 * n.detach().double().numpy(), 0.5))
        else:
            b = _bn_newton(n)
        ctx.save_for_backward(n, b)
        return b.to(n.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Implicit differentiation of P(2n, b(n)) = 1/2:  db/dn = -2 (dP/da) / (dP/db).
        n, b = ctx.saved_tensors
        a = 2.0 * n.double()
        h = 1e-4 * a  # torch gammainc is accurate to ~1e-12; O(h^2) truncation ~1e-9
        dpda = (torch.special.gammainc(a + h, b) - torch.special.gammainc(a - h, b)) / (2 * h)
        dpdb = torch.exp((a - 1) * torch.log(b) - b - torch.lgamma(a))
        return grad * (-2.0 * dpda / dpdb).to(grad.dtype)


def sersic_bn(n):
    """Exact Sérsic ``b_n``: the solution of ``P(2n, b_n) = 1/2`` (``r_e`` holds half the light).

    Parameters
    ----------
    n : float, array or tensor
        Sérsic index (> 0).

    Returns
    -------
    Same type as ``n``. Tensors are solved on their device in float64 and are differentiable.
    """
    if isinstance(n, torch.Tensor):
        return _SersicBn.apply(n)
    return special.gammaincinv(2.0 * np.asarray(n, dtype=float), 0.5)


# ----------------------------------------------------------------------------------------------
# Normalisation.
# ----------------------------------------------------------------------------------------------
def _log_flux_over_ie(re, n, q, bn):
    """log(F / I_e) = log(2 pi q r_e^2 n) + b_n - 2n log b_n + lgamma(2n)."""
    if isinstance(n, torch.Tensor):
        return (
            math.log(2 * math.pi)
            + torch.log(q)
            + 2 * torch.log(re)
            + torch.log(n)
            + bn
            - 2 * n * torch.log(bn)
            + torch.lgamma(2 * n)
        )
    return np.log(2 * np.pi * q * re**2 * n) + bn - 2 * n * np.log(bn) + special.gammaln(2 * n)


def _arrays(*xs):
    """Tensors (same dtype/device) if any argument is a tensor, else float numpy arrays."""
    return _as_tensors(*xs) if _any_tensor(*xs) else tuple(np.asarray(x, float) for x in xs)


def _exp(x):
    return torch.exp(x) if isinstance(x, torch.Tensor) else np.exp(x)


def sersic_ie(flux, re, n, q):
    """Intensity at the half-light radius ``I_e`` (flux per pixel) of a profile of total ``flux``.

    ``re`` is the semi-major half-light radius in pixels; uses the exact ``b_n``.
    """
    flux, re, n, q = _arrays(flux, re, n, q)
    return flux * _exp(-_log_flux_over_ie(re, n, q, sersic_bn(n)))


def sersic_total_flux(ie, re, n, q):
    """Total flux (integrated to infinity) of a profile with intensity ``ie`` at ``re`` (pixels)."""
    ie, re, n, q = _arrays(ie, re, n, q)
    return ie * _exp(_log_flux_over_ie(re, n, q, sersic_bn(n)))


def enclosed_fraction(rho_over_re, n, bn=None):
    """Fraction of the total flux inside the ellipse of (semi-major) radius ``rho``:
    ``P(2n, b_n (rho/r_e)^(1/n))``."""
    if bn is None:
        bn = sersic_bn(n)
    if isinstance(rho_over_re, torch.Tensor) or isinstance(n, torch.Tensor):
        rho_over_re, n, bn = _as_tensors(rho_over_re, n, bn)
        return gammainc_p(2 * n, bn * rho_over_re ** (1.0 / n))
    return special.gammainc(2 * n, bn * np.asarray(rho_over_re) ** (1.0 / n))


# ----------------------------------------------------------------------------------------------
def _any_tensor(*xs) -> bool:
    return any(isinstance(x, torch.Tensor) for x in xs)


def _as_tensors(*xs):
    ref = next((x for x in xs if isinstance(x, torch.Tensor)), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float64
    device = ref.device if ref is not None else None
    return tuple(
        x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=dtype, device=device)
        for x in xs
    )
