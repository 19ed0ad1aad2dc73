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

The window's half-size ``R`` (4 to 18 px, :func:`window_sizes`) is chosen per profile so that
the step between the integrated ``T`` inside and the sampled ``S`` outside stays below 1e-5 of the
model's peak pixel (``RenderConfig.edge_tol``): invisible (< 0.1 sigma) even for a star whose
peak pixel has S/N 1e4 (issue 13; tests/test_render_edge.py, benchmarks/render_edge.py).

This is the adaptive central sub-sampling of GALFIT/Imfit/ProFit, made exact at the cusp, at a
cost of a few thousand profile evaluations and one small FFT per stamp. The quadrature is
:mod:`galnet.profiles.quadrature`; this module holds the checked entry point and the FFT.

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
from galnet.params import SERSIC
from galnet.profiles.imfit import imfit_T
from galnet.profiles.quadrature import quintic_window, sampling_error
from galnet.profiles.sersic import sersic_bn

__all__ = ["render", "RenderConfig", "DEFAULT_CONFIG", "render_tensors", "render_grouped",
           "window_sizes", "psf_transform"]


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
        cells are rescaled to their exact flux (:func:`galnet.profiles.quadrature.square_flux`);
        0 switches it off. [default: 3]
    ring_nodes : Gauss-Legendre nodes per edge for those exact square fluxes. [default: 24]
    edge_tol : largest step allowed at the window's edge, as a fraction of the model's peak pixel
        (:func:`galnet.profiles.quadrature.sampling_error`): 1e-5 keeps it below 0.1 sigma for a
        source whose peak pixel has S/N 1e4. None: windows from the cross-section and light
        criteria only (cheaper, for finite-difference Jacobians). [default: 1e-5]
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
    edge_tol: float | None = 1e-5
    chunk: int = 128


DEFAULT_CONFIG = RenderConfig()

# Subnormal floats (below 1e-38 in float32) reach the far wings of steep profiles; x86 CPUs do
# arithmetic on them very slowly, which made float32 rendering slower than float64. They are
# ~1e-38 of the peak: galnet flushes them to zero (as GPUs do) for the whole process.
torch.set_flush_denormal(True)



def window_sizes(re, n, q, config: RenderConfig = DEFAULT_CONFIG) -> np.ndarray:
    """Half-size of the integration window each profile needs (pixels).

    Beyond the window ``T`` is the profile sampled at pixel centres, which is accurate only where
    the profile is smooth on the pixel scale. Along the major axis at distance ``a`` the profile's
    cross-section is a Gaussian of width ``sigma_b = q a sqrt(n / (b_n (a/r_e)^(1/n)))``; thin
    galaxies need the window to extend until ``sigma_b >= 0.8`` px, unless the light beyond the
    ellipse ``rho = window`` is below 1e-4 of the total. Then, unless ``config.edge_tol`` is None,
    until the step between the integrated ``T`` inside and the sampled profile outside is below
    ``edge_tol`` of the model's peak pixel (:func:`galnet.profiles.quadrature.sampling_error`):
    without it the steep wings of point-like high-n profiles and the sharp edges of n < 0.5 ones
    left a square edge (up to ~1e-3 of the peak) in the models of bright stars. Profiles that no
    window meets get the largest.
    """
    re, n, q = np.broadcast_arrays(*(np.asarray(v, float) for v in (re, n, q)))
    shape = re.shape
    re, n, q = re.reshape(-1), n.reshape(-1), q.reshape(-1)
    sizes = (config.window, *sorted(w for w in config.windows if w > config.window))
    bn = special.gammaincinv(2 * n, 0.5)
    out = np.full(re.shape, sizes[-1], dtype=int)
    done = np.zeros(re.shape, bool)
    for R in sizes:
        u = bn * (R / re) ** (1 / n)
        sigma_b = q * R * np.sqrt(n / u)
        ok = ~done & ((sigma_b >= 0.8) | (special.gammaincc(2 * n, u) < 1e-4))
        if config.edge_tol is not None and ok.any():
            ok[ok] = sampling_error(re[ok], n[ok], q[ok], R, bn[ok]) <= config.edge_tol
        out[ok] = R
        done |= ok
    return out.reshape(shape)


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
        # Imfit's own pixel sub-sampling, then the same discrete convolution (profiles/imfit.py)
        T = imfit_T(x0, y0, flux, re, n, q, pa, gx, gy)
    else:
        T = profile(gx[None, None, :] - col(x0), gy[None, :, None] - col(y0))  # (N, Hc, Wc)
        T = quintic_window(T, x0, y0, flux, re, n, q, ux, uy, bn, inv_n, profile, (ph, pw), config)

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



def _fft_width(psf_fft: torch.Tensor, guess: int) -> int:
    return getattr(psf_fft, "_galnet_lw", guess)


@lru_cache(maxsize=256)
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
        # conventions.mag_to_flux, on tensors (differentiable)
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
    checks = {"flux": (t["flux"] > 0, "must be > 0")}
    checks.update({k: _in_render_bounds(k, t[k]) for k in _RENDER_CHECKED})
    for k, (ok, msg) in checks.items():
        ok = ok.detach()
        if not bool(ok.all()):
            i = int(torch.nonzero(~ok)[0])
            raise GalnetValueError(
                f"parameter {k!r} {msg} (index {i}: {float(t[k][i]):g})", k, float(t[k][i])
            )


#: Parameters whose renderer bounds (galnet.params.SERSIC[name].render) are checked.
_RENDER_CHECKED = tuple(p.name for p in SERSIC if p.render is not None)


def _in_render_bounds(name: str, v: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(ok mask, message) for ``SERSIC[name].render``: inclusive bounds, except that a lower
    bound of 0 is exclusive (a zero radius or axis ratio is degenerate) and an infinite one is
    not checked."""
    lo, hi = SERSIC[name].render
    ok = v > lo if lo == 0 else v >= lo
    if math.isfinite(hi):
        ok = ok & (v <= hi)
        msg = f"must be in {'(' if lo == 0 else '['}{lo:g}, {hi:g}]"
    else:
        msg = f"must be > {lo:g}" if lo == 0 else f"must be >= {lo:g}"
    return ok, msg


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
