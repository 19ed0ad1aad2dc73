"""GaLNet model: input/target transforms, symmetries, uncertainties, weights I/O."""

import math

import numpy as np
import pytest
import torch

from galnet.errors import GalnetFileError
from galnet.nn.model import (
    GaLNet,
    ModelConfig,
    count_flops,
    decode,
    encode_targets,
    load_model,
    prepare_inputs,
    save_model,
    sky_rms,
)
from galnet.nn.train import augment
from galnet.profiles.render import render

PARAMS = {
    "x": torch.tensor([31.3, 28.6, 30.0]), "y": torch.tensor([29.2, 32.4, 30.5]),
    "flux": torch.tensor([100.0, 50.0, 7.0]), "re_pix": torch.tensor([5.0, 3.0, 0.8]),
    "n": torch.tensor([1.0, 2.5, 6.0]), "q": torch.tensor([0.4, 0.6, 0.95]),
    "pa_deg": torch.tensor([30.0, 130.0, 179.0]),
}


def _elliptical_psf() -> torch.Tensor:
    yy, xx = np.mgrid[-12:13, -12:13]
    psf = np.exp(-((xx - 0.5) ** 2 / 8 + yy**2 / 4 + 0.3 * xx * yy / 4))
    return torch.tensor(psf / psf.sum(), dtype=torch.float32)


def test_encode_decode_round_trip():
    cfg = ModelConfig()
    noise = torch.tensor([0.08, 0.5, 2.0])
    t = encode_targets(PARAMS, noise, cfg)
    d = decode(t, torch.zeros(3, 7), noise, cfg)
    for k, v in PARAMS.items():
        if k == "pa_deg":
            diff = (d[k] - v + 90) % 180 - 90
            assert torch.allclose(diff, torch.zeros(3), atol=1e-3), k
        else:
            assert torch.allclose(d[k], v, rtol=1e-5, atol=1e-5), k
    # errors: exp(0) * sigma_scale * target scale, propagated from log10 quantities
    assert torch.allclose(d["re_pix_err"], math.log(10) * PARAMS["re_pix"] * cfg.scale[3])
    assert torch.allclose(d["x_err"], torch.full((3,), cfg.scale[0]))


def test_pa_is_cyclic():
    """0 and 180 degrees (and 179.9 and 0.1) are nearly the same target."""
    cfg = ModelConfig()
    p = dict(PARAMS, pa_deg=torch.tensor([0.0, 179.9, 0.1]))
    t = encode_targets(p, torch.ones(3), cfg)
    assert torch.allclose(t[0, 6:], t[1, 6:], atol=1e-2)
    assert torch.allclose(t[1, 6:], t[2, 6:], atol=1e-2)


@pytest.mark.parametrize("k", range(8))
def test_augment_matches_rendering_of_transformed_parameters(k):
    """Each symmetry applied to the image and PSF equals the rendering of the transformed
    parameters with the transformed PSF (so the targets move with the pixels)."""
    cfg = ModelConfig()
    psfs = _elliptical_psf().expand(3, 25, 25)
    im = render(PARAMS, psfs, (61, 61))
    t = encode_targets(PARAMS, torch.ones(3), cfg)
    im2, ps2, t2 = augment(im, psfs, t, k, cfg)
    p2 = decode(t2, torch.zeros(3, 7), torch.ones(3), cfg)
    p2 = {key: p2[key] for key in PARAMS}
    ref = render(p2, ps2.contiguous(), (61, 61))
    assert float((ref - im2).abs().max() / im.abs().max()) < 1e-5


def test_sky_rms_gaussian_and_masked():
    g = torch.Generator().manual_seed(1)
    im = 0.3 * torch.randn(4, 61, 61, generator=g)
    im[:, 25:36, 25:36] += 50.0  # a bright source in the middle does not matter
    s = sky_rms(im)
    assert torch.allclose(s, torch.full((4,), 0.3), rtol=0.08)
    masked = im.clone()
    masked[:, :3] = torch.nan
    masked[0, :, :2] = torch.nan
    assert torch.allclose(sky_rms(masked, nan=True), torch.full((4,), 0.3), rtol=0.08)
    assert (sky_rms(torch.zeros(2, 61, 61)) > 0).all()  # floored, never zero


def test_prepare_inputs_flux_units_independent():
    """Multiplying the image (and so its noise) by a constant changes nothing."""
    g = torch.Generator().manual_seed(2)
    im = torch.randn(2, 61, 61, generator=g)
    psf = _elliptical_psf().expand(2, 25, 25)
    x1, p1, n1 = prepare_inputs(im, psf)
    x2, p2, n2 = prepare_inputs(1e-11 * im, 3 * psf)
    assert torch.allclose(x1, x2, atol=1e-5) and torch.allclose(p1, p2)
    assert torch.allclose(n2, 1e-11 * n1)
    assert x1.shape == (2, 2, 61, 61) and p1.shape == (2, 1, 25, 25)
    assert float(p1.amax()) == pytest.approx(1.0)


def test_count_flops_and_parameters():
    m = GaLNet(ModelConfig(width=8))
    c = count_flops(m)
    assert c["params"] == sum(p.numel() for p in m.parameters())
    # the stem alone: 61*61 outputs x 8 channels x 2 inputs x 9 taps
    assert c["macs"] > 61 * 61 * 8 * 2 * 9
    assert c["flops"] == 2 * c["macs"]


def test_save_load_round_trip(tmp_path, tiny_model):
    cfg = tiny_model.config
    cfg.sigma_scale = [1.5] * 7
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    m2 = load_model(path)
    assert m2.config.sigma_scale == [1.5] * 7 and m2.config.width == 4
    x = torch.randn(3, 2, 61, 61)
    p = torch.rand(3, 1, 25, 25)
    with torch.no_grad():
        a, b = tiny_model(x, p)
        c, d = m2(x, p)
    assert torch.equal(a, c) and torch.equal(b, d)
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle


def test_load_model_errors(tmp_path):
    with pytest.raises(GalnetFileError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(GalnetFileError, match="bad.safetensors: not galnet weights"):
        load_model(bad)


def test_folded_model_same_outputs(tiny_model):
    m = GaLNet(ModelConfig(width=4, psf_dim=8, hidden=16))
    # non-trivial BatchNorm statistics
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(3 * torch.randn(8, 2, 61, 61) + 1, torch.rand(8, 1, 25, 25))
    m.eval()
    f = m.folded()
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in f.modules())
    x, p = torch.randn(4, 2, 61, 61), torch.rand(4, 1, 25, 25)
    with torch.no_grad():
        a, b = m(x, p)
        c, d = f(x, p)
    assert torch.allclose(a, c, atol=1e-4) and torch.allclose(b, d, atol=1e-4)
