"""Neighbours modelled, not hidden: every source's model rendered into one frame-sized image.

The GALFIT habit (fit the neighbours with the target) done as a block-coordinate joint fit over
the frame: each modelled source's current model (Sérsic x PSF at native pixels; a point source
is a Sérsic of :data:`POINT_RE` px, i.e. the PSF) is rendered on its own native cutout grid
(:func:`render_models`) and added into a :class:`ModelCanvas`. For target ``i`` the other
sources' light in its cutout is ``canvas[cutout_i] - model_i`` (:meth:`ModelCanvas.others`):
subtracted from the data before its fit, then the canvas is re-rendered and the targets fitted
again. A source's light is rendered on a box centred on its cutout, large enough that what it
leaves out is below :data:`LIGHT_SIGMA` (0.1) of the local noise (:func:`box_sides`: the radius
where its predicted surface brightness falls below that, plus the PSF's reach at that level;
at least the cutout, at most :data:`BOX_CAP` x it), so that its model does not end at a visible
edge in the frame model image.
"""

from __future__ import annotations

import numpy as np
import torch

from galnet.profiles.render import DEFAULT_CONFIG, psf_transform, render_grouped, window_sizes

__all__ = ["BOX_CAP", "LIGHT_SIGMA", "POINT_RE", "ModelCanvas", "box_sides", "crop_boxes",
           "light_radius", "local_sigma", "render_boxes", "render_models", "safe_params"]

#: Radius (px) that renders a point source: the Sérsic profile is then the PSF itself.
POINT_RE = 0.02
#: A model's box holds its light down to this fraction of the local 1-sigma noise.
LIGHT_SIGMA = 0.1
#: Largest model box, in units of the source's cutout side.
BOX_CAP = 4
#: Most pixels (boxes x side^2) rendered in one call by :func:`render_boxes`.
BOX_PIXELS = 1 << 23
_KEYS = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")


def safe_params(p: dict, index: np.ndarray, point=None) -> dict[str, np.ndarray]:
    """The parameters ``index`` of ``p`` (frame px) ready to render: non-finite rows get zero
    flux; point sources ``re = POINT_RE, n = 1, q = 1``; q, n and re clipped into the renderer's
    range."""
    out = {k: np.asarray(p[k], np.float64)[index].copy() for k in _KEYS}
    ok = np.all([np.isfinite(out[k]) for k in _KEYS], axis=0)
    for k, v in (("x", 0.0), ("y", 0.0), ("flux", 0.0), ("re_pix", 1.0), ("n", 1.0),
                 ("q", 1.0), ("pa_deg", 0.0)):
        out[k][~ok] = v
    if point is not None:
        pt = np.asarray(point, bool)[index]
        out["re_pix"][pt], out["n"][pt], out["q"][pt] = POINT_RE, 1.0, 1.0
    out["re_pix"] = np.clip(out["re_pix"], 1e-3, 1e4)
    out["n"] = np.clip(out["n"], 0.2, 10.0)
    out["q"] = np.clip(out["q"], 0.02, 1.0)
    return out


def light_radius(params: dict, level, psf: np.ndarray) -> np.ndarray:
    """(n,) radius (px) beyond which the model of each source (``params`` as :func:`safe_params`
    gives, frame px) is below ``level`` (image units per px; scalar or (n,)).

    The Sérsic profile along its major axis falls to ``level`` at ``re (1 + ln(I_e / level) /
    b_n)^n``; the PSF (``(P, P)`` or ``(n, P, P)``, unit sum) adds the radius beyond which
    ``flux x PSF`` stays below ``level`` (its outermost such pixel; at most the PSF's
    half-diagonal). Conservative: the sum of the two."""
    from galnet.profiles.sersic import sersic_bn, sersic_ie

    flux = np.clip(np.asarray(params["flux"], np.float64), 0.0, None)
    re, n, q = (np.asarray(params[k], np.float64) for k in ("re_pix", "n", "q"))
    lev = np.broadcast_to(np.asarray(level, np.float64), flux.shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ie = np.asarray(sersic_ie(flux, re, n, q), np.float64)
        bn = np.asarray(sersic_bn(n), np.float64)
        r_s = re * np.clip(1.0 + np.log(ie / lev) / bn, 0.0, None) ** n
    r_s = np.where(np.isfinite(r_s), r_s, 0.0)
    ps = np.asarray(psf, np.float64)
    ps = ps.reshape((-1, *ps.shape[-2:]))
    ps = ps / ps.sum(axis=(1, 2), keepdims=True)
    P = ps.shape[-1]
    yy, xx = np.mgrid[:ps.shape[-2], :P]
    r = np.hypot(xx - (P - 1) / 2, yy - (ps.shape[-2] - 1) / 2).ravel()
    order = np.argsort(-r)
    # the largest PSF value at radius >= r, from the outside in
    outer = np.maximum.accumulate(ps.reshape(ps.shape[0], -1)[:, order], axis=1)
    pi = np.arange(flux.size) % ps.shape[0] if ps.shape[0] > 1 else np.zeros(flux.size, int)
    above = flux[:, None] * outer[pi] >= lev[:, None]
    first = np.where(above.any(axis=1), np.argmax(above, axis=1), -1)
    r_p = np.where(first >= 0, r[order][np.maximum(first, 0)], 0.0)
    return r_s + r_p


def box_sides(params: dict, level, psf: np.ndarray, size: int, cap: int = BOX_CAP) -> np.ndarray:
    """(n,) odd side of the box each model is rendered on: ``2 ceil(light_radius) + 1`` rounded up
    to :data:`galnet.frame.sources.SIZE_STEPS` (so that boxes batch), at least the cutout side
    ``size``, at most ``cap x size``."""
    from galnet.frame.sources import quantise_sizes

    r = light_radius(params, level, psf)
    side = 2 * np.ceil(np.minimum(r, cap * size)).astype(np.int64) + 1
    side = quantise_sizes(side, int(size))
    return np.minimum(side, (cap * int(size)) | 1)


def render_models(params: dict, x0, y0, size: int, psfs: np.ndarray, *,
                  device="cpu") -> np.ndarray:
    """(n, size, size) float32 models of sources with frame-pixel ``params`` (as
    :func:`safe_params` gives) on cutouts with frame origins ``x0, y0``; ``psfs`` (1 or n, P, P)
    unit-sum native PSFs."""
    n = len(params["x"])
    if n == 0:
        return np.zeros((0, size, size), np.float32)

    def t(a):
        return torch.as_tensor(np.asarray(a, np.float64), dtype=torch.float32, device=device)

    ps = torch.as_tensor(np.asarray(psfs), dtype=torch.float32, device=device)
    ps = ps / ps.sum(dim=(1, 2), keepdim=True)
    P = tuple(ps.shape[-2:])
    fft = psf_transform(ps, (size, size))
    win = window_sizes(params["re_pix"], params["n"], params["q"], DEFAULT_CONFIG)
    with torch.inference_mode():
        out = render_grouped(t(params["x"] - np.asarray(x0)), t(params["y"] - np.asarray(y0)),
                             t(params["flux"]), t(params["re_pix"]), t(params["n"]),
                             t(params["q"]), torch.deg2rad(t(params["pa_deg"])), fft, P,
                             (size, size), win, DEFAULT_CONFIG)
    return out.cpu().numpy()


def local_sigma(sigma: np.ndarray) -> np.ndarray:
    """(n,) median finite positive 1-sigma noise of each (s, s) cutout of ``sigma`` (n, s, s)
    (inf where there is none: such a model keeps its cutout)."""
    s = np.asarray(sigma, np.float64).reshape(len(sigma), -1)
    s = np.where(np.isfinite(s) & (s > 0), s, np.nan)
    out = np.full(len(s), np.inf)
    has = np.isfinite(s).any(axis=1)
    if has.any():
        out[has] = np.nanmedian(s[has], axis=1)
    return out


def render_boxes(params: dict, x0, y0, size: int, level, psfs: np.ndarray,
                 frame_shape: tuple[int, int], *, device="cpu") -> list:
    """``[(model, bx0, by0)]``: each source's model on its own box (:func:`box_sides` with
    ``level``, no larger than twice the frame), centred on its ``size`` cutout at frame origin
    ``x0, y0``; ``bx0, by0`` the box's frame origin. Boxes of one side render together, at most
    :data:`BOX_PIXELS` pixels per call. ``params`` as :func:`safe_params` gives; ``psfs`` (1 or
    n, P, P)."""
    x0, y0 = np.asarray(x0, np.int64), np.asarray(y0, np.int64)
    psfs = np.asarray(psfs)
    side = box_sides(params, level, psfs, size)
    side = np.minimum(side, max(int(size), 2 * max(frame_shape) + 1))
    c = (int(size) - 1) // 2
    out: list = [None] * x0.size
    for B in np.unique(side):
        sel = np.flatnonzero(side == B)
        h = (int(B) - 1) // 2
        step = max(1, BOX_PIXELS // int(B) ** 2)
        for s0 in range(0, sel.size, step):
            j = sel[s0:s0 + step]
            bx, by = x0[j] + c - h, y0[j] + c - h
            m = render_models({k: v[j] for k, v in params.items()}, bx, by, int(B),
                              psfs if psfs.shape[0] == 1 else psfs[j], device=device)
            for t, jj in enumerate(j):
                out[jj] = (m[t], int(bx[t]), int(by[t]))
    return out


def crop_boxes(boxes: list, size: int) -> np.ndarray:
    """(n, size, size) float32 centres (the cutout grids) of :func:`render_boxes`' models."""
    out = np.empty((len(boxes), size, size), np.float32)
    for j, (m, _, _) in enumerate(boxes):
        o = (m.shape[0] - size) // 2
        out[j] = m[o:o + size, o:o + size]
    return out


class ModelCanvas:
    """A frame-sized model image: the sum of the sources' cutout models (image units)."""

    def __init__(self, shape: tuple[int, int]):
        self.image = np.zeros(shape, np.float64)

    def _slices(self, x0: int, y0: int, s: int):
        H, W = self.image.shape
        ys, ye, xs, xe = max(0, y0), min(H, y0 + s), max(0, x0), min(W, x0 + s)
        if ys >= ye or xs >= xe:
            return None
        return (slice(ys, ye), slice(xs, xe)), (slice(ys - y0, ye - y0), slice(xs - x0, xe - x0))

    def add(self, models: np.ndarray, x0, y0, sign: float = 1.0) -> None:
        """Add (or with ``sign=-1`` remove) cutout models (n, s, s) at frame origins x0, y0."""
        s = models.shape[-1]
        for m, a, b in zip(models, np.asarray(x0), np.asarray(y0), strict=True):
            sl = self._slices(int(a), int(b), s)
            if sl is not None:
                self.image[sl[0]] += sign * m[sl[1]]

    def cut(self, x0, y0, s: int) -> np.ndarray:
        """(n, s, s) windows of the canvas at frame origins x0, y0 (0 outside the frame)."""
        x0, y0 = np.asarray(x0), np.asarray(y0)
        out = np.zeros((x0.size, s, s), np.float64)
        for j, (a, b) in enumerate(zip(x0, y0, strict=True)):
            sl = self._slices(int(a), int(b), s)
            if sl is not None:
                out[j][sl[1]] = self.image[sl[0]]
        return out

    def others(self, own: np.ndarray, x0, y0) -> np.ndarray:
        """The other sources' light (n, s, s) in cutouts whose own models are ``own`` (0 outside
        the frame)."""
        s = own.shape[-1]
        out = self.cut(x0, y0, s)
        for j, (a, b) in enumerate(zip(np.asarray(x0), np.asarray(y0), strict=True)):
            sl = self._slices(int(a), int(b), s)
            if sl is not None:
                out[j][sl[1]] -= own[j][sl[1]]
        return out


def footprints(models: np.ndarray, x0, y0, threshold) -> np.ndarray:
    """(n, 4) frame boxes ``xmin, xmax, ymin, ymax`` of the pixels where each cutout model
    exceeds ``threshold`` (image units; scalar or (n,)); an empty footprint is the central
    pixel."""
    n, s, _ = models.shape
    thr = np.broadcast_to(np.asarray(threshold, float), (n,))
    m = models > thr[:, None, None]
    cols, rows = m.any(axis=1), m.any(axis=2)
    c = (s - 1) // 2

    def span(a):
        has = a.any(axis=1)
        lo = np.where(has, np.argmax(a, axis=1), c)
        hi = np.where(has, s - 1 - np.argmax(a[:, ::-1], axis=1), c)
        return lo, hi

    xl, xh = span(cols)
    yl, yh = span(rows)
    x0, y0 = np.asarray(x0), np.asarray(y0)
    return np.stack([x0 + xl, x0 + xh, y0 + yl, y0 + yh], axis=1)


def colour_batches(boxes: np.ndarray) -> np.ndarray:
    """(n,) colour of each source such that sources whose footprint boxes overlap never share a
    colour (greedy, largest footprints first): the sources of one colour can be fitted together
    without one's model moving under another's fit (a true Gauss-Seidel sweep)."""
    n = len(boxes)
    colour = np.full(n, -1, np.int64)
    if n == 0:
        return colour
    xl, xh, yl, yh = (boxes[:, j] for j in range(4))
    order = np.argsort(-((xh - xl + 1) * (yh - yl + 1)), kind="stable")
    # candidate pairs: sort by xmin and sweep (boxes are small next to the frame)
    by_x = np.argsort(xl, kind="stable")
    adj: list[list[int]] = [[] for _ in range(n)]
    active: list[int] = []
    for i in by_x:
        active = [j for j in active if xh[j] >= xl[i]]
        for j in active:
            if yl[i] <= yh[j] and yl[j] <= yh[i]:
                adj[i].append(j)
                adj[j].append(i)
        active.append(int(i))
    for i in order:
        used = {int(colour[j]) for j in adj[i] if colour[j] >= 0}
        c = 0
        while c in used:
            c += 1
        colour[i] = c
    return colour
