"""Training objectives of the survey-to-survey translator: pixel, gradient and gradient-flow.

Units
-----
Every image handed to a loss is in *target sky-rms units*: ``y = f / beta_b``, with ``f`` the
pixel flux and ``beta_b`` the sky rms of the target survey in band ``b`` (dimensionless; zero
or negative where noise dominates). Tensors are ``(B, C, H, W)``, ``C >= 1`` bands ordered by
wavelength (ugriz: ``C = 5``). The gradient losses work on the *softened log flux*::

    s = asinh(y / 2) = asinh(f / (2 beta_b))

linear (``s ~ y / 2``) within a few sky rms of zero and logarithmic (``s ~ ln y``) above, so
zero and negative pixels are harmless and a difference of ``s`` is a flux ratio (a colour, a
logarithmic slope) wherever the galaxy is detected.

The three objectives (``make_loss(name)``; ``LOSSES``)
-------------------------------------------------------
``pixel`` -- :class:`PixelLoss`, the baseline: ``mean |p - t|`` (L1, default) or
``mean (p - t)^2`` (L2) over all pixels and bands, with ``p`` the prediction and ``t`` the
target, in sky-rms units.

``gradient`` -- :class:`GradientLoss`. The *elements* (:func:`gradient_elements`) are the
spatial and passband finite differences of ``s``::

    dx[b, i, j]      = s[b, i, j+1] - s[b, i, j]      (B, C, H, W-1)
    dy[b, i, j]      = s[b, i+1, j] - s[b, i, j]      (B, C, H-1, W)
    dlambda[b, i, j] = s[b+1, i, j] - s[b, i, j]      (B, C-1, H, W)  per-pixel colours; C > 1

With ``r_k = g_k(s_p) - g_k(s_t)`` the residual of element ``k`` (``N`` elements in all)::

    L = (1/N) sum_k |r_k|                                       gradient term (L1)
      + anchor * mean_pixels |s_p - s_t|                        pixel anchor in s
      + flux_anchor * mean_(B,C) |F_p - F_t| / (|F_t| + sqrt(H W))   total-flux anchor

``F = sum_pixels y`` is the total flux of one band of one stamp. The gradients fix ``s`` only up
to a constant per stamp, hence the weak pixel anchor (``anchor = 0.1``) and the total-flux anchor
(``flux_anchor = 1``): a relative flux error, softened by ``sqrt(H W)``, the rms of a sum of
``H W`` pixels of unit sky noise, so that it stays finite for empty or all-zero stamps.

``gradient-flow`` -- :class:`GradientFlowLoss`: the same elements and anchors, each residual
weighted by how precisely it can be predicted, as learnt by a conditional normalizing flow:

- context of element ``k``: ``c_k = (s_ctx, onehot(type, 3), onehot(band, C))`` with ``s_ctx``
  the mean of the two predicted values ``s_p`` the element differences (detached), type one of
  dx, dy, dlambda, band the band of dx and dy and the lower band ``b`` of dlambda. ``c_k`` does
  not depend on the target.
- flow: ``q_phi(r | c)``, a 1-D conditional neural spline flow (``zuko.flows.NSF(features=1,
  context=4 + C, transforms=2, hidden_features=(32, 32))``) over the detached residuals divided
  by a running scale ``tau`` (a buffer: the exponential moving average, momentum 0.9, of the
  batch's Gaussian-equivalent scale ``sqrt(pi/2) mean |r|``), so that the spline works on
  residuals of order one whatever their size: ``q_phi(r | c) = q~(r / tau | c) / tau``.
- fit (alternating with the generator): :meth:`GradientFlowLoss.update_flow` takes
  ``flow_steps`` (1) Adam steps (learning rate ``flow_lr``, 1e-3; the optimizer lives in the
  module) minimising ``-mean log q_phi(r | c)`` over a random subsample (with replacement) of at
  most ``flow_samples`` (16384) elements of the batch. Residuals are detached: the flow fit sends
  no gradient to the generator.
- weights: ``w_k = sigma_hat(c_k)^-2`` with ``sigma_hat(c) = 1 / (sqrt(2 pi) q_phi(0 | c))``,
  the width of the Gaussian with the same peak density at zero residual as the flow. Since only
  ``s_ctx`` is continuous, ``log q_phi(0 | c)`` is evaluated (no gradient) on ``grid`` (64)
  values of ``s_ctx`` spanning the batch's min..max ``s_ctx``, for every type and band
  (``3 C grid`` contexts, one batched call), and interpolated linearly in ``s_ctx`` for every
  element (``w_k = exp(2 log q_phi(0 | c_k))`` up to a constant). The weights are detached,
  normalised to mean 1 over the ``N`` elements of the batch, then clipped to
  ``[w_min, w_max] = [0.01, 100]``. The scale ``tau`` cancels in the normalisation.
- loss: ``L = (1/N) sum_k w_k |r_k| + anchors`` (as ``gradient``). Until ``update_flow`` has
  been called ``warmup`` (1) times all ``w_k = 1``: the plain gradient loss. The generator loss
  sends no gradient to the flow (the weights are computed under ``torch.no_grad``).

Every loss has ``forward(pred, target, cond=None) -> scalar`` (``cond``, per-galaxy
conditioning, is accepted and unused) and ``update_flow(pred, target, cond=None)``, a no-op
returning ``None`` except for ``gradient-flow``, so a training loop can call
``loss.update_flow(pred.detach(), target)`` every step whatever the loss. The flow (a
submodule), ``tau`` and the update count are in the loss's ``state_dict()``; the flow's Adam
state (``flow_optimizer``) is not. The flow's parameters are ``loss.parameters()``: never hand
them to the generator's optimizer.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor, nn

from galnet.errors import GalnetValueError, optional_import

__all__ = ["SOFTENING", "ELEMENT_KEYS", "LOSSES", "soft_log", "gradient_elements",
           "element_contexts", "TranslationLoss", "PixelLoss", "GradientLoss", "GradientFlowLoss",
           "make_loss"]

#: Softening of the log flux, in units of the target sky rms: ``s = asinh(y / SOFTENING)`` is
#: linear within ~SOFTENING sky rms of zero and logarithmic above (Lupton et al. 1999 asinh
#: magnitudes with ``b = 2 beta``: a pixel at the 2-sigma noise level sits at the knee).
SOFTENING = 2.0

#: The gradient elements, in the order of their one-hot type in the flow's context.
ELEMENT_KEYS: tuple[str, ...] = ("dx", "dy", "dlambda")

#: Names accepted by :func:`make_loss`.
LOSSES: tuple[str, ...] = ("pixel", "gradient", "gradient-flow")


# ----------------------------------------------------------------------------------------------
# Elements
# ----------------------------------------------------------------------------------------------
def soft_log(y: Tensor) -> Tensor:
    """Softened log flux ``asinh(y / SOFTENING)`` of an image ``y`` in target sky-rms units."""
    return torch.asinh(y / SOFTENING)


def gradient_elements(s: Tensor) -> dict[str, Tensor]:
    """Spatial and passband differences of ``s`` (B, C, H, W), in softened-log units.

    Returns ``{"dx": (B, C, H, W-1), "dy": (B, C, H-1, W), "dlambda": (B, C-1, H, W)}``
    (``s[.., j+1] - s[.., j]``, ``s[.., i+1, :] - s[.., i, :]``, ``s[:, b+1] - s[:, b]``);
    ``dlambda`` is absent when ``C == 1``.
    """
    out = {"dx": s[..., :, 1:] - s[..., :, :-1], "dy": s[..., 1:, :] - s[..., :-1, :]}
    if s.shape[1] > 1:
        out["dlambda"] = s[:, 1:] - s[:, :-1]
    return out


def element_contexts(s: Tensor) -> dict[str, Tensor]:
    """Mean of the two values of ``s`` each element of :func:`gradient_elements` differences."""
    out = {"dx": 0.5 * (s[..., :, 1:] + s[..., :, :-1]),
           "dy": 0.5 * (s[..., 1:, :] + s[..., :-1, :])}
    if s.shape[1] > 1:
        out["dlambda"] = 0.5 * (s[:, 1:] + s[:, :-1])
    return out


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------
def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise GalnetValueError(f"pred and target shapes differ: pred {tuple(pred.shape)}, "
                               f"target {tuple(target.shape)}", "pred", tuple(pred.shape))
    if pred.ndim != 4:
        raise GalnetValueError(f"pred and target must be (B, C, H, W), got shape "
                               f"{tuple(pred.shape)}", "pred", tuple(pred.shape))


def _check_nonneg(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise GalnetValueError(f"{name} must be finite and >= 0, got {value}", name, value)
    return value


def _check_int(name: str, value: int, lower: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < lower:
        raise GalnetValueError(f"{name} must be an integer >= {lower}, got {value!r}", name, value)
    return int(value)


class TranslationLoss(nn.Module):
    """Base of the translator's objectives: ``loss(pred, target, cond=None) -> scalar``.

    ``pred`` and ``target`` are (B, C, H, W) images in target sky-rms units; ``cond`` is
    accepted for a common signature and unused.
    """

    name: str = ""

    def forward(self, pred: Tensor, target: Tensor, cond: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def update_flow(self, pred: Tensor, target: Tensor, cond: Tensor | None = None
                    ) -> float | None:
        """Fit the loss's own model to a batch; a no-op returning None for losses without one."""
        return None


class PixelLoss(TranslationLoss):
    """Mean L1 (``kind="l1"``, default) or L2 (``"l2"``) of ``pred - target`` in sky-rms units."""

    name = "pixel"

    def __init__(self, kind: str = "l1"):
        super().__init__()
        if kind not in ("l1", "l2"):
            raise GalnetValueError(f"pixel loss kind must be 'l1' or 'l2', got {kind!r}",
                                   "kind", kind)
        self.kind = kind

    def forward(self, pred: Tensor, target: Tensor, cond: Tensor | None = None) -> Tensor:
        _check_pair(pred, target)
        d = pred - target
        return d.abs().mean() if self.kind == "l1" else d.square().mean()

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class GradientLoss(TranslationLoss):
    """L1 of the spatial and passband gradients of ``s = asinh(y/2)``, plus two anchors.

    ``L = mean_k |r_k| + anchor mean |s_p - s_t|
    + flux_anchor mean_(B,C) |F_p - F_t| / (|F_t| + sqrt(H W))`` (module docstring).

    Parameters
    ----------
    anchor : weight of the pixel anchor in softened-log units (>= 0). [0.1]
    flux_anchor : weight of the total-flux anchor (>= 0). [1.0]
    """

    name = "gradient"

    def __init__(self, anchor: float = 0.1, flux_anchor: float = 1.0):
        super().__init__()
        self.anchor = _check_nonneg("anchor", anchor)
        self.flux_anchor = _check_nonneg("flux_anchor", flux_anchor)

    def extra_repr(self) -> str:
        return f"anchor={self.anchor}, flux_anchor={self.flux_anchor}"

    def _element_weights(self, s_pred: Tensor) -> dict[str, Tensor] | None:
        """Weights of the elements (None: all 1)."""
        return None

    def _check(self, pred: Tensor, target: Tensor) -> None:
        _check_pair(pred, target)

    def forward(self, pred: Tensor, target: Tensor, cond: Tensor | None = None) -> Tensor:
        self._check(pred, target)
        s_p, s_t = soft_log(pred), soft_log(target)
        g_p, g_t = gradient_elements(s_p), gradient_elements(s_t)
        w = self._element_weights(s_p.detach())
        total = pred.new_zeros(())
        n = 0
        for k, gp in g_p.items():
            r = (gp - g_t[k]).abs()
            total = total + (r.sum() if w is None else (w[k] * r).sum())
            n += r.numel()
        loss = total / max(n, 1)
        if self.anchor > 0:
            loss = loss + self.anchor * (s_p - s_t).abs().mean()
        if self.flux_anchor > 0:
            H, W = pred.shape[-2:]
            f_p, f_t = pred.sum(dim=(-2, -1)), target.sum(dim=(-2, -1))
            rel = (f_p - f_t).abs() / (f_t.abs() + math.sqrt(H * W))
            loss = loss + self.flux_anchor * rel.mean()
        return loss


class GradientFlowLoss(GradientLoss):
    """Gradient loss with each element weighted by a conditional flow of its residuals.

    ``L = mean_k w_k |r_k| + anchors``, ``w_k`` = ``sigma_hat(c_k)^-2`` from the flow
    ``q_phi(r | c)`` fitted by :meth:`update_flow`, normalised to mean 1 and clipped (module
    docstring for the exact formulation).

    Parameters
    ----------
    anchor, flux_anchor : as :class:`GradientLoss`. [0.1, 1.0]
    n_bands : number of bands C of the images (the context has 4 + C entries). [5]
    transforms, hidden_features, bins : the zuko NSF. [2, (32, 32), 8]
    flow_lr : Adam learning rate of the flow. [1e-3]
    flow_steps : Adam steps per :meth:`update_flow`. [1]
    flow_samples : elements subsampled per step. [16384]
    grid : values of the s context on which the weights are tabulated. [64]
    w_min, w_max : clipping of the normalised weights. [0.01, 100]
    warmup : update_flow calls before the weights are used (all 1 until then). [1]
    scale_momentum : momentum of the running residual scale tau. [0.9]
    """

    name = "gradient-flow"

    def __init__(self, anchor: float = 0.1, flux_anchor: float = 1.0, *, n_bands: int = 5,
                 transforms: int = 2, hidden_features: tuple[int, ...] = (32, 32), bins: int = 8,
                 flow_lr: float = 1e-3, flow_steps: int = 1, flow_samples: int = 16384,
                 grid: int = 64, w_min: float = 0.01, w_max: float = 100.0, warmup: int = 1,
                 scale_momentum: float = 0.9):
        super().__init__(anchor, flux_anchor)
        self.n_bands = _check_int("n_bands", n_bands, 1)
        transforms = _check_int("transforms", transforms, 1)
        bins = _check_int("bins", bins, 2)
        hidden = tuple(_check_int("hidden_features", h, 1) for h in hidden_features)
        flow_lr = float(flow_lr)
        if not (math.isfinite(flow_lr) and flow_lr > 0):
            raise GalnetValueError(f"flow_lr must be finite and > 0, got {flow_lr}",
                                   "flow_lr", flow_lr)
        self.flow_steps = _check_int("flow_steps", flow_steps, 1)
        self.flow_samples = _check_int("flow_samples", flow_samples, 1)
        self.grid = _check_int("grid", grid, 2)
        self.w_min, self.w_max = float(w_min), float(w_max)
        if not (0 < self.w_min <= 1 <= self.w_max < math.inf):
            raise GalnetValueError(f"need 0 < w_min <= 1 <= w_max < inf, got w_min={w_min}, "
                                   f"w_max={w_max}", "w_min", (w_min, w_max))
        self.warmup = _check_int("warmup", warmup, 0)
        self.scale_momentum = float(scale_momentum)
        if not 0 <= self.scale_momentum < 1:
            raise GalnetValueError(f"scale_momentum must be in [0, 1), got {scale_momentum}",
                                   "scale_momentum", scale_momentum)
        # the 'translate' extra; imported here so that the core CLI starts without it
        flows = optional_import("zuko.flows", "translate", "the gradient-flow loss")
        self.flow = flows.NSF(features=1, context=4 + self.n_bands, transforms=transforms,
                                   hidden_features=hidden, bins=bins)
        self.flow_optimizer = torch.optim.Adam(self.flow.parameters(), lr=flow_lr)
        self.register_buffer("tau", torch.ones(()))  # running residual scale (s units)
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_bands={self.n_bands}, grid={self.grid}, "
                f"w=[{self.w_min}, {self.w_max}], warmup={self.warmup}")

    def flow_state_dict(self) -> dict[str, Tensor]:
        """The flow's parameters, ``tau`` and the update count (part of ``state_dict()``)."""
        return {k: v for k, v in self.state_dict().items()
                if k.startswith("flow.") or k in ("tau", "n_updates")}

    @property
    def active(self) -> bool:
        """Whether the flow weights are in use (update_flow called at least ``warmup`` times)."""
        return int(self.n_updates) >= self.warmup

    def _check(self, pred: Tensor, target: Tensor) -> None:
        _check_pair(pred, target)
        if pred.shape[1] != self.n_bands:
            raise GalnetValueError(f"gradient-flow loss built for {self.n_bands} bands, got "
                                   f"images of shape {tuple(pred.shape)}", "pred",
                                   tuple(pred.shape))

    # -- contexts ----------------------------------------------------------------------------
    def _contexts(self, s_ctx: Tensor, etype: int, band: Tensor) -> Tensor:
        """(n, 4 + C) flow contexts from s values (n,), one type and band indices (n,)."""
        C = self.n_bands
        ctx = s_ctx.new_zeros(s_ctx.shape[0], 4 + C)
        ctx[:, 0] = s_ctx
        ctx[:, 1 + etype] = 1.0
        ctx[torch.arange(s_ctx.shape[0], device=s_ctx.device), 4 + band] = 1.0
        return ctx

    def _log_peak_table(self, s_grid: Tensor) -> Tensor:
        """``log q~(0 | s, type, band)`` on a grid of s: (3, C, G), flow dtype, no gradient."""
        C, G = self.n_bands, s_grid.shape[0]
        ctx = s_grid.new_zeros(3, C, G, 4 + C)
        ctx[..., 0] = s_grid
        ctx[..., 1:4] = torch.eye(3, dtype=ctx.dtype, device=ctx.device)[:, None, None, :]
        ctx[..., 4:] = torch.eye(C, dtype=ctx.dtype, device=ctx.device)[None, :, None, :]
        ctx = ctx.reshape(-1, 4 + C)
        with torch.no_grad():
            lp = self.flow(ctx).log_prob(ctx.new_zeros(ctx.shape[0], 1))
        return lp.reshape(3, C, G)

    # -- weights -----------------------------------------------------------------------------
    def _element_weights(self, s_pred: Tensor) -> dict[str, Tensor] | None:
        if not self.active:
            return None
        with torch.no_grad():
            return self._flow_weights(s_pred.detach())

    def _flow_weights(self, s_pred: Tensor) -> dict[str, Tensor]:
        ctx = element_contexts(s_pred)
        filled = [c for c in ctx.values() if c.numel() > 0]  # dy is empty when H == 1 ...
        if not filled:
            return {k: torch.ones_like(c) for k, c in ctx.items()}
        fdtype = self.tau.dtype
        lo = min(float(c.min()) for c in filled)
        hi = max(float(c.max()) for c in filled)
        if not hi - lo > 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
        G = self.grid
        s_grid = torch.linspace(lo, hi, G, device=s_pred.device, dtype=fdtype)
        # w = exp(2 log q(0|c)) up to a constant; the global max keeps exp() in range
        lw = 2.0 * self._log_peak_table(s_grid)
        lw = (lw - lw.max()).to(s_pred.dtype)
        scale = (G - 1) / (hi - lo)
        raw: dict[str, Tensor] = {}
        for k, c in ctx.items():
            t = ELEMENT_KEYS.index(k)
            u = ((c - lo) * scale).clamp_(0, G - 1)
            i0 = u.floor().clamp_(max=G - 2)
            f = u - i0
            band = torch.arange(c.shape[1], device=c.device).view(1, -1, 1, 1)
            idx = band * G + i0.long()
            table = lw[t].reshape(-1)
            v = torch.take(table, idx)
            v = v + f * (torch.take(table, idx + 1) - v)
            raw[k] = v.exp_()
        n = sum(w.numel() for w in raw.values())
        mean = sum(w.sum() for w in raw.values()) / n
        return {k: (w / mean).clamp_(self.w_min, self.w_max) for k, w in raw.items()}

    def weights(self, pred: Tensor) -> dict[str, Tensor]:
        """Normalised weights of the elements of ``pred`` (same keys and shapes as
        :func:`gradient_elements`; all 1 before the flow is active). No gradient."""
        with torch.no_grad():
            s_p = soft_log(pred.detach())
            if not self.active:
                return {k: torch.ones_like(g) for k, g in gradient_elements(s_p).items()}
            return self._flow_weights(s_p)

    # -- flow fit ----------------------------------------------------------------------------
    def _sample(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Residuals (n,) and contexts (n, 4 + C) of a random subsample of the elements."""
        B, C, H, W = pred.shape
        shapes = {"dx": (B, C, H, W - 1), "dy": (B, C, H - 1, W)}
        steps = {"dx": 1, "dy": W, "dlambda": H * W}  # flat offset to the second pixel
        if C > 1:
            shapes["dlambda"] = (B, C - 1, H, W)
        sizes = {k: math.prod(v) for k, v in shapes.items()}
        sizes = {k: v for k, v in sizes.items() if v > 0}
        n_tot = sum(sizes.values())
        if n_tot == 0:
            return pred.new_zeros(0), pred.new_zeros(0, 4 + C)
        n = min(self.flow_samples, n_tot)
        pick = torch.randint(n_tot, (n,), device=pred.device)
        p_flat, t_flat = pred.reshape(-1), target.reshape(-1)
        res, ctxs = [], []
        offset = 0
        for k, size in sizes.items():
            sel = pick[(pick >= offset) & (pick < offset + size)] - offset
            offset += size
            if sel.numel() == 0:
                continue
            b, c, i, j = torch.unravel_index(sel, shapes[k])
            first = ((b * C + c) * H + i) * W + j
            second = first + steps[k]
            sp1, sp2 = soft_log(p_flat[first]), soft_log(p_flat[second])
            st1, st2 = soft_log(t_flat[first]), soft_log(t_flat[second])
            res.append((sp2 - sp1) - (st2 - st1))
            ctxs.append(self._contexts(0.5 * (sp1 + sp2), ELEMENT_KEYS.index(k), c))
        return torch.cat(res), torch.cat(ctxs)

    def update_flow(self, pred: Tensor, target: Tensor, cond: Tensor | None = None) -> float:
        """Fit the flow to the batch's detached residuals: ``flow_steps`` Adam steps.

        Returns the mean negative log-likelihood of the last step, ``-log q_phi(r | c)``, in
        nats for residuals in softened-log units.
        """
        self._check(pred, target)
        pred, target = pred.detach(), target.detach()
        fdtype = self.tau.dtype
        nll = float("nan")
        for _ in range(self.flow_steps):
            with torch.no_grad():
                r, ctx = self._sample(pred, target)
                if r.numel() == 0:  # no elements (1x1 single-band images): nothing to fit
                    break
                r, ctx = r.to(fdtype), ctx.to(fdtype)
                batch_tau = math.sqrt(math.pi / 2) * float(r.abs().mean())
                if math.isfinite(batch_tau) and batch_tau > 0:
                    m = self.scale_momentum if int(self.n_updates) > 0 else 0.0
                    self.tau.mul_(m).add_((1 - m) * batch_tau)
                tau = float(self.tau)
            with torch.enable_grad():
                loss = -self.flow(ctx).log_prob((r / tau)[:, None]).mean()
                self.flow_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.flow_optimizer.step()
                self.flow_optimizer.zero_grad(set_to_none=True)
            nll = float(loss.detach()) + math.log(tau)
        self.n_updates += 1
        return nll


_CLASSES: dict[str, type[TranslationLoss]] = {
    "pixel": PixelLoss, "gradient": GradientLoss, "gradient-flow": GradientFlowLoss}


def make_loss(name: str, **kwargs) -> TranslationLoss:
    """The loss called ``name`` (one of :data:`LOSSES`), built with ``kwargs``."""
    if name not in _CLASSES:
        raise GalnetValueError(f"unknown translation loss {name!r}; valid: {', '.join(LOSSES)}",
                               "loss", name)
    cls = _CLASSES[name]
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise GalnetValueError(f"bad arguments for loss {name!r}: {exc}", "loss", kwargs) from None
    return cls(**kwargs)
