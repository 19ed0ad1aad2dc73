"""Tests of galnet.translate.losses: pixel, gradient and gradient-flow objectives."""

from __future__ import annotations

import math

import pytest
import torch

from galnet.errors import GalnetValueError
from galnet.translate.losses import (
    LOSSES,
    SOFTENING,
    GradientFlowLoss,
    GradientLoss,
    PixelLoss,
    TranslationLoss,
    gradient_elements,
    make_loss,
    soft_log,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def _images(shape=(2, 3, 8, 9), dtype=torch.float32):
    """Target with a bright blob plus unit noise (zeros and negatives included); noisy pred."""
    B, C, H, W = shape
    yy, xx = torch.meshgrid(torch.arange(H, dtype=dtype), torch.arange(W, dtype=dtype),
                            indexing="ij")
    blob = 30 * torch.exp(-((yy - H / 2) ** 2 + (xx - W / 2) ** 2) / 6)
    target = blob + torch.randn(shape, dtype=dtype)
    target[0, 0, 0, :3] = 0.0
    pred = target + 0.5 * torch.randn(shape, dtype=dtype)
    pred[0, 0, 1, :2] = 0.0
    return pred, target


def _active_flow(C=3, **kw) -> GradientFlowLoss:
    loss = GradientFlowLoss(n_bands=C, flow_samples=1024, **kw)
    pred, target = _images((2, C, 8, 9))
    loss.update_flow(pred, target)
    assert loss.active
    return loss


def _all_losses(C=3):
    return [PixelLoss("l1"), PixelLoss("l2"), GradientLoss(), GradientFlowLoss(n_bands=C),
            _active_flow(C)]


# ----------------------------------------------------------------------------------------------
# Common behaviour
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("C", [1, 3])
def test_zero_when_equal_positive_otherwise_finite(C):
    pred, target = _images((2, C, 8, 9))
    assert (target < 0).any() and (target == 0).any()
    zeros = torch.zeros_like(target)
    for loss in _all_losses(C):
        assert float(loss(target, target.clone())) == pytest.approx(0.0, abs=1e-6)
        assert float(loss(zeros, zeros)) == pytest.approx(0.0, abs=1e-6)
        for p, t in [(pred, target), (zeros, target), (pred, zeros), (-pred, target)]:
            p = p.clone().requires_grad_(True)
            value = loss(p, t)
            value.backward()
            v = float(value.detach())
            assert value.ndim == 0 and math.isfinite(v) and v > 0
            assert torch.isfinite(p.grad).all()


def test_update_flow_no_op_for_plain_losses():
    pred, target = _images()
    for loss in (PixelLoss(), GradientLoss()):
        assert isinstance(loss, TranslationLoss)
        assert loss.update_flow(pred, target) is None


def _min_residual(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Smallest |residual| entering an L1 term of the gradient losses (kinks at 0)."""
    s_p, s_t = soft_log(pred), soft_log(target)
    g_p, g_t = gradient_elements(s_p), gradient_elements(s_t)
    m = min(float((g_p[k] - g_t[k]).abs().min()) for k in g_p)
    m = min(m, float((s_p - s_t).abs().min()), float((pred - target).abs().min()))
    flux = (pred.sum(dim=(-2, -1)) - target.sum(dim=(-2, -1))).abs().min()
    return min(m, float(flux))


@pytest.mark.parametrize("loss", [PixelLoss("l1"), PixelLoss("l2"), GradientLoss(),
                                  GradientLoss(anchor=0.5, flux_anchor=2.0),
                                  GradientFlowLoss(n_bands=2)],  # inactive: plain gradient
                         ids=["l1", "l2", "gradient", "gradient-anchors", "flow-inactive"])
def test_gradcheck(loss):
    pred, target = _images((1, 2, 4, 5), torch.float64)
    pred = pred + 0.3 * torch.randn_like(pred)
    # L1 is not differentiable at zero residual: every residual stays far (> 100 eps) from it,
    # so no finite-difference step of gradcheck (eps = 1e-6) crosses a kink
    assert _min_residual(pred, target) > 1e-4
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: loss(p, target), (pred,), eps=1e-6, atol=1e-6)


def test_flow_loss_gradient_is_weighted_l1_with_frozen_weights():
    loss = _active_flow(C=2, anchor=0.3, flux_anchor=0.5)
    pred, target = _images((1, 2, 6, 7), torch.float64)
    w = loss.weights(pred)
    ref = GradientLoss(anchor=0.3, flux_anchor=0.5)
    p1 = pred.clone().requires_grad_(True)
    loss(p1, target).backward()
    # reference: the same formula with the weights as constants
    p2 = pred.clone().requires_grad_(True)
    g_p, g_t = gradient_elements(soft_log(p2)), gradient_elements(soft_log(target))
    n = sum(g.numel() for g in g_p.values())
    value = sum((w[k] * (g_p[k] - g_t[k]).abs()).sum() for k in g_p) / n
    value = value + ref(p2, target) - GradientLoss(0.0, 0.0)(p2, target)  # the anchors
    value.backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-5, atol=1e-9)
    assert float(loss(pred, target).detach()) == pytest.approx(float(value.detach()), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Gradient elements and the gradient loss
# ----------------------------------------------------------------------------------------------
def test_gradient_elements_shapes_and_values():
    B, C, H, W = 2, 3, 4, 5
    b = torch.arange(C, dtype=torch.float64).view(1, C, 1, 1)
    i = torch.arange(H, dtype=torch.float64).view(1, 1, H, 1)
    j = torch.arange(W, dtype=torch.float64).view(1, 1, 1, W)
    s = (0.25 * j - 0.5 * i + 1.5 * b + 2.0).expand(B, C, H, W)
    g = gradient_elements(s)
    assert set(g) == {"dx", "dy", "dlambda"}
    assert g["dx"].shape == (B, C, H, W - 1) and g["dy"].shape == (B, C, H - 1, W)
    assert g["dlambda"].shape == (B, C - 1, H, W)
    torch.testing.assert_close(g["dx"], torch.full_like(g["dx"], 0.25))
    torch.testing.assert_close(g["dy"], torch.full_like(g["dy"], -0.5))
    torch.testing.assert_close(g["dlambda"], torch.full_like(g["dlambda"], 1.5))
    assert set(gradient_elements(s[:, :1])) == {"dx", "dy"}
    assert soft_log(torch.tensor(SOFTENING * math.sinh(0.7))).item() == pytest.approx(0.7)


def test_gradient_loss_offset_in_softened_log_space():
    pred, target = _images((2, 3, 8, 9), torch.float64)
    shift = lambda y, c: SOFTENING * torch.sinh(soft_log(y) + c)  # noqa: E731
    bare = GradientLoss(anchor=0.0, flux_anchor=0.0)
    # gradients only: blind to a constant in s (all bands), through asinh
    assert float(bare(shift(pred, 0.7), target)) == pytest.approx(float(bare(pred, target)),
                                                                  rel=1e-10)
    assert float(bare(shift(target, 0.7), target)) == pytest.approx(0.0, abs=1e-12)
    # the anchors see it
    assert float(GradientLoss(anchor=0.1, flux_anchor=0.0)(shift(target, 0.7), target)) == \
        pytest.approx(0.07)
    assert float(GradientLoss(anchor=0.0, flux_anchor=1.0)(shift(target, 0.7), target)) > 0.1


# ----------------------------------------------------------------------------------------------
# Gradient-flow loss
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("C", [1, 3])
def test_flow_weights_and_gradient_isolation(C):
    loss = GradientFlowLoss(n_bands=C, flow_samples=1024)
    pred, target = _images((2, C, 8, 9))
    w0 = loss.weights(pred)
    assert all(torch.equal(w, torch.ones_like(w)) for w in w0.values())  # before the fit

    p = pred.clone().requires_grad_(True)
    nll = loss.update_flow(p, target)
    assert math.isfinite(nll) and p.grad is None  # the flow fit sends nothing to pred
    assert all(q.grad is None for q in loss.flow.parameters())

    w = loss.weights(pred)
    g = gradient_elements(soft_log(pred))
    assert set(w) == set(g) and ("dlambda" in w) == (C > 1)
    for k in g:
        assert w[k].shape == g[k].shape and not w[k].requires_grad
        assert torch.isfinite(w[k]).all() and (w[k] > 0).all()
        assert (w[k] >= loss.w_min).all() and (w[k] <= loss.w_max).all()
    mean = sum(v.sum() for v in w.values()) / sum(v.numel() for v in w.values())
    assert float(mean) == pytest.approx(1.0, rel=1e-4)  # no clipping at this spread

    value = loss(p, target)
    value.backward()
    assert torch.isfinite(p.grad).all()
    assert all(q.grad is None or not q.grad.any() for q in loss.flow.parameters())


def test_flow_weights_follow_residual_noise_per_band():
    loss = GradientFlowLoss(n_bands=2, flow_samples=2048)
    sigma = torch.tensor([0.5, 0.05]).view(1, 2, 1, 1)  # band 0: 10x noisier residuals in s

    def pair():
        s_t = torch.randn(8, 2, 16, 16)
        s_p = s_t + sigma * torch.randn_like(s_t)
        return SOFTENING * torch.sinh(s_p), SOFTENING * torch.sinh(s_t)

    for _ in range(150):
        loss.update_flow(*pair())
    w = loss.weights(pair()[0])
    for k in ("dx", "dy"):
        assert float(w[k][:, 1].mean()) > 10 * float(w[k][:, 0].mean())


def test_flow_state_dict_roundtrip():
    loss = _active_flow(C=2)
    other = GradientFlowLoss(n_bands=2)
    other.load_state_dict(loss.state_dict())
    assert other.active and set(loss.flow_state_dict()) <= set(loss.state_dict())
    pred, target = _images((1, 2, 8, 9))
    for k, w in loss.weights(pred).items():
        torch.testing.assert_close(other.weights(pred)[k], w)


# ----------------------------------------------------------------------------------------------
# Factory and validation
# ----------------------------------------------------------------------------------------------
def test_make_loss():
    assert LOSSES == ("pixel", "gradient", "gradient-flow")
    assert isinstance(make_loss("pixel"), PixelLoss)
    assert make_loss("pixel", kind="l2").kind == "l2"
    assert isinstance(make_loss("gradient", anchor=0.2), GradientLoss)
    assert make_loss("gradient-flow", n_bands=4).n_bands == 4
    with pytest.raises(GalnetValueError, match="unknown translation loss 'l3'.*pixel, gradient"):
        make_loss("l3")
    with pytest.raises(GalnetValueError, match="bad arguments"):
        make_loss("pixel", anchor=1.0)


@pytest.mark.parametrize("build", [lambda: PixelLoss("huber"), lambda: GradientLoss(anchor=-1),
                                   lambda: GradientLoss(flux_anchor=float("nan")),
                                   lambda: GradientFlowLoss(n_bands=0),
                                   lambda: GradientFlowLoss(grid=1),
                                   lambda: GradientFlowLoss(w_min=2.0),
                                   lambda: GradientFlowLoss(flow_lr=0.0)])
def test_bad_arguments(build):
    with pytest.raises(GalnetValueError):
        build()


def test_shape_checks():
    pred, target = _images((2, 3, 8, 9))
    for loss in _all_losses(3):
        with pytest.raises(GalnetValueError, match=r"pred \(2, 3, 8, 9\), target \(2, 3, 8, 8\)"):
            loss(pred, target[..., :8])
    with pytest.raises(GalnetValueError, match="built for 5 bands"):
        GradientFlowLoss()(pred, target)
