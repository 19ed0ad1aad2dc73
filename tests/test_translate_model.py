"""Translator and photo-z networks: shapes, conditioning, the physical base (flux conservation),
files, training (all losses, resuming), photo-z training and prediction, input errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from astropy.table import Table

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.translate import train as ttrain
from galnet.translate.model import (
    PhotoZConfig,
    PhotoZNet,
    Translator,
    TranslatorConfig,
    load_photoz,
    load_translator,
    read_metadata,
    save_photoz,
    save_translator,
)
from galnet.translate.train import (
    PhotoZTrainConfig,
    TranslatorTrainConfig,
    apply_translator,
    predict_photoz,
    train_photoz,
    train_translator,
)

SRC_SKY, TGT_SKY = 0.05, 0.0035  # nanomaggies / px, SDSS-r-like and CFHTLS-r-like
SRC_SCALE, TGT_SCALE = 0.396, 0.187


def _losses() -> list[str]:
    """The loss names galnet.translate.losses provides (all three once it is complete)."""
    losses = pytest.importorskip("galnet.translate.losses")
    return [n for n in ("pixel", "gradient", "gradient-flow") if n in losses.LOSSES]


def _blob(n: int, side: int, sigma: float, flux: float, dx: float = 0.0, dy: float = 0.0):
    """Gaussian blobs (n, side, side) of total ``flux`` about the stamp centre + (dx, dy)."""
    c = (side - 1) / 2
    yy, xx = np.mgrid[:side, :side]
    g = np.exp(-0.5 * (((xx - c - dx) / sigma) ** 2 + ((yy - c - dy) / sigma) ** 2))
    return np.broadcast_to(flux * g / g.sum(), (n, side, side)).astype(np.float32)


def _pairs(n: int = 12, C: int = 5, seed: int = 0) -> SimpleNamespace:
    """A PairSet-like object: noisy blobs, the same galaxy in both domains."""
    rng = np.random.default_rng(seed)
    flux = 10 ** rng.uniform(0, 1.5, n)  # nanomaggies
    src = np.stack([_blob(C, 64, 3.0, f) for f in flux])
    tgt = np.stack([_blob(C, 136, 5.5, f) for f in flux])
    src = src + rng.normal(0, SRC_SKY, src.shape).astype(np.float32)
    tgt = tgt + rng.normal(0, TGT_SKY, tgt.shape).astype(np.float32)
    return SimpleNamespace(
        source=src, target=tgt, source_truth=src, target_truth=tgt,
        source_psf=np.zeros((n, C, 25, 25), np.float32),
        target_psf=np.zeros((n, C, 33, 33), np.float32),
        catalog=Table({"z": rng.uniform(0.02, 0.45, n)}),
        source_sky=np.full(C, SRC_SKY), target_sky=np.full(C, TGT_SKY),
        source_scale=SRC_SCALE, target_scale=TGT_SCALE, bands=tuple("ugriz"[:C]),
        source_domain="sdss", target_domain="cfhtls")


def _tiny(C: int = 5, cond_dim: int = 0, **kw) -> Translator:
    torch.manual_seed(0)
    return Translator(TranslatorConfig(
        bands=C, width=8, depth=2, cond_dim=cond_dim, scale_ratio=(TGT_SCALE / SRC_SCALE) ** 2,
        source_sky=[SRC_SKY] * C, target_sky=[TGT_SKY] * C, **kw))


def _perturb(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random non-zero weights everywhere (the output layer and FiLM start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _cfg(**kw) -> TranslatorTrainConfig:
    kw = {"steps": 4, "batch": 4, "width": 8, "depth": 2, "val_every": 2, "n_val": 4,
          "threads": 1, **kw}
    return TranslatorTrainConfig(**kw)


# ---- Translator --------------------------------------------------------------------------------
@pytest.mark.parametrize("C", [5, 1])
def test_translator_output_shape(C):
    m = _perturb(_tiny(C)).eval()
    x = torch.from_numpy(np.stack([_blob(C, 64, 3.0, 10.0)] * 2))
    with torch.no_grad():
        y = m(x)
    assert y.shape == (2, C, 136, 136) and torch.isfinite(y).all()
    assert sum(p.numel() for p in m.parameters()) < 1_000_000


def test_default_size_and_depth_validation():
    m = Translator(TranslatorConfig())
    assert sum(p.numel() for p in m.parameters()) < 1_000_000
    with pytest.raises(GalnetValueError, match="depth 3 does not divide"):
        Translator(TranslatorConfig(depth=3))  # 68 / 8 is not whole
    with pytest.raises(GalnetValueError, match="source_sky has 2 values"):
        TranslatorConfig(source_sky=[1.0, 2.0])


def test_conditioning_changes_output():
    m = _perturb(_tiny(5, cond_dim=1)).eval()
    x = torch.from_numpy(np.stack([_blob(5, 64, 3.0, 10.0)] * 2))
    with torch.no_grad():
        a = m(x, torch.tensor([[0.1], [0.1]]))
        b = m(x, torch.tensor([0.1, 0.4]))  # (B,) accepted
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1], rtol=1e-4)
    with pytest.raises(GalnetValueError, match="conditioned"):
        m(x)
    with pytest.raises(GalnetValueError, match="source images must be"):
        m(torch.zeros(2, 5, 32, 32), torch.zeros(2, 1))


def test_base_conserves_flux_and_centre():
    """With the residual's last layer zeroed the output is the resampled, pixel-area scaled
    source: total flux conserved and the same sky position (offsets scale with the pixel size)."""
    m = _perturb(_tiny(5))
    with torch.no_grad():
        m.out.weight.zero_()
        m.out.bias.zero_()
    m.eval()
    dx, dy = 4.0, -2.5  # source pixels
    x = torch.from_numpy(np.stack([_blob(5, 64, 3.0, 25.0, dx, dy)]))
    with torch.no_grad():
        y = m(x)
        flux = m.to_flux(y)
    torch.testing.assert_close(y, m.base(x), rtol=1e-4, atol=1e-3)
    assert float(flux.sum()) == pytest.approx(float(x.sum()), rel=0.01)
    img = flux[0, 2].numpy()
    yy, xx = np.mgrid[:136, :136]
    ratio = SRC_SCALE / TGT_SCALE
    assert (img * xx).sum() / img.sum() == pytest.approx(67.5 + dx * ratio, abs=0.05)
    assert (img * yy).sum() / img.sum() == pytest.approx(67.5 + dy * ratio, abs=0.05)
    # the default (zero-initialised) output layer already gives the base
    fresh = _tiny(5).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), fresh.base(x), rtol=1e-4, atol=1e-3)


def test_save_load_round_trip(tmp_path):
    m = _perturb(_tiny(5, cond_dim=1)).eval()
    path = save_translator(tmp_path / "t.safetensors", m, {"note": "hello", "n": 3})
    m2 = load_translator(path)
    x = torch.from_numpy(np.stack([_blob(5, 64, 3.0, 10.0)] * 2))
    z = torch.tensor([[0.1], [0.3]])
    with torch.no_grad():
        assert torch.equal(m(x, z), m2(x, z))
    meta = read_metadata(path)
    assert meta["note"] == "hello" and meta["config"]["cond_dim"] == 1
    assert meta["format"] == "galnet-translator-1"

    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(GalnetFileError, match="garbage.safetensors"):
        load_translator(bad)
    with pytest.raises(GalnetFileError, match="not found"):
        load_translator(tmp_path / "missing.safetensors")
    pz = save_photoz(tmp_path / "p.safetensors", PhotoZNet(PhotoZConfig(width=4, size=32)))
    with pytest.raises(GalnetFileError, match="not galnet translator weights"):
        load_translator(pz)


# ---- training ----------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["pixel", "gradient", "gradient-flow"])
def test_train_translator_each_loss(loss, tmp_path):
    if loss not in _losses():
        pytest.skip(f"galnet.translate.losses has no {loss!r} loss yet")
    pairs = _pairs()
    out = tmp_path / "tr.safetensors"
    s = train_translator(pairs, _cfg(loss=loss), out, progress=False)
    assert out.is_file() and not out.with_suffix(".ckpt.safetensors").exists()
    hist = json.loads(out.with_suffix(".json").read_text())
    assert [h["step"] for h in hist] == [2, 4]
    assert all(np.isfinite(h["val_loss"]) and np.isfinite(h["val_l1"]) for h in hist)
    assert np.isfinite(s["best_val_loss"]) and s["n_train"] == 8 and s["n_val"] == 4
    if loss == "gradient-flow":
        assert all(np.isfinite(h["flow_loss"]) for h in hist)
    m = load_translator(out)
    meta = read_metadata(out)
    assert meta["train_config"]["loss"] == loss and meta["summary"]["steps"] == 4
    assert m.config.target_sky == [TGT_SKY] * 5
    flux = apply_translator(m, pairs.source[:3], batch=2)
    assert flux.shape == (3, 5, 136, 136) and flux.dtype == np.float32
    with torch.no_grad():
        ref = m.to_flux(m(torch.from_numpy(pairs.source[:3]))).numpy()
    np.testing.assert_allclose(flux, ref, rtol=1e-5, atol=1e-6)


def test_train_single_band_zspec_fraction(tmp_path):
    """C = 1, z_spec conditioning, a small fraction (subset smaller than the batch)."""
    loss = "gradient-flow" if "gradient-flow" in _losses() else "pixel"
    pairs = _pairs(C=1)
    out = tmp_path / "z.safetensors"
    s = train_translator(pairs, _cfg(loss=loss, conditioning="zspec", fraction=0.2, steps=3,
                                           select_by="l1"),
                         out, progress=False)
    assert s["n_train"] == 2 and np.isfinite(s["final_val_loss"])
    m = load_translator(out)
    assert m.config.cond_dim == 1 and m.config.bands == 1
    flux = apply_translator(m, pairs.source[:2], cond=np.array([0.1, 0.2]))
    assert flux.shape == (2, 1, 136, 136)
    with pytest.raises(GalnetValueError, match="conditioned"):
        apply_translator(m, pairs.source[:2])


def test_resume_after_interrupt(tmp_path, monkeypatch):
    """An interrupted run leaves a checkpoint; the rerun resumes from it and ends where an
    uninterrupted run does."""
    pairs = _pairs()
    ref = tmp_path / "ref.safetensors"
    train_translator(pairs, _cfg(), ref, progress=False)

    out = tmp_path / "run.safetensors"
    real = ttrain._validate
    calls = []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(ttrain, "_validate", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_translator(pairs, _cfg(), out, progress=False)
    monkeypatch.setattr(ttrain, "_validate", real)
    ckpt = out.with_suffix(".ckpt.safetensors")
    assert ckpt.is_file() and not out.exists()

    s = train_translator(pairs, _cfg(), out, progress=False)
    assert s["resumed_from"] == 2 and not ckpt.exists()
    assert [h["step"] for h in json.loads(out.with_suffix(".json").read_text())] == [2, 4]
    x = torch.from_numpy(pairs.source[:2])
    with torch.no_grad():
        torch.testing.assert_close(load_translator(out)(x), load_translator(ref)(x),
                                   rtol=1e-4, atol=1e-4)

    # a checkpoint of another configuration is not used
    monkeypatch.setattr(ttrain, "_validate", flaky)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        train_translator(pairs, _cfg(), out, progress=False)
    monkeypatch.setattr(ttrain, "_validate", real)
    with pytest.warns(UserWarning, match="different configuration"):
        s = train_translator(pairs, _cfg(lr=5e-4), out, progress=False)
    assert s["resumed_from"] == 0


def test_train_translator_bad_inputs(tmp_path):
    pairs = _pairs(n=6)
    out = tmp_path / "x.safetensors"
    with pytest.raises(GalnetValueError, match=r"fraction must be in \(0, 1\]"):
        train_translator(pairs, _cfg(fraction=0.0), out, progress=False)
    with pytest.raises(GalnetValueError, match=r"fraction must be in \(0, 1\]"):
        train_translator(pairs, _cfg(fraction=1.5), out, progress=False)
    with pytest.raises(GalnetValueError, match="unknown loss 'l2'"):
        train_translator(pairs, _cfg(loss="l2"), out, progress=False)
    with pytest.raises(GalnetValueError, match="unknown conditioning 'photz'"):
        train_translator(pairs, _cfg(conditioning="photz"), out, progress=False)
    with pytest.raises(GalnetValueError, match="unknown select_by 'val'"):
        train_translator(pairs, _cfg(select_by="val"), out, progress=False)
    with pytest.raises(GalnetValueError, match="leaves no training pairs"):
        train_translator(pairs, _cfg(n_val=6), out, progress=False)
    bad = SimpleNamespace(**{**vars(pairs), "target": pairs.target[:, :3]})
    with pytest.raises(GalnetValueError, match="target images must be"):
        train_translator(bad, _cfg(), out, progress=False)
    bad = SimpleNamespace(**{**vars(pairs), "catalog": Table({"zphot": np.zeros(6)})})
    with pytest.raises(GalnetValueError, match="column 'z'"):
        train_translator(bad, _cfg(conditioning="zspec"), out, progress=False)
    m = _tiny(5)
    with pytest.raises(GalnetValueError, match=r"source images must be \(N, 5, 64, 64\)"):
        apply_translator(m, np.zeros((2, 5, 136, 136), np.float32))
    with pytest.raises(GalnetValueError, match=r"source images must be \(N, 5, 64, 64\)"):
        apply_translator(m, np.zeros((2, 3, 64, 64), np.float32))
    assert not out.exists()


# ---- photo-z -----------------------------------------------------------------------------------
def test_photoz_train_predict(tmp_path):
    rng = np.random.default_rng(0)
    n = 16
    z = rng.uniform(0.0, 0.5, n)
    images = np.stack([_blob(5, 136, 6.0 - 8 * zz, 30.0) for zz in z])
    images = images + rng.normal(0, TGT_SKY, images.shape).astype(np.float32)
    cfg = PhotoZTrainConfig(steps=5, batch=8, width=8, nbins=20, n_val=6, val_every=5,
                            threads=1)
    out = tmp_path / "pz.safetensors"
    s = train_photoz(images, z, [TGT_SKY] * 5, cfg, out, progress=False)
    assert np.isfinite(s["best_val_loss"]) and out.with_suffix(".json").is_file()
    m = load_photoz(out)
    assert m.config.nbins == 20 and m.config.target_sky == [TGT_SKY] * 5
    r = predict_photoz(m, images[:5], batch=2)
    assert r["pdf"].shape == (5, 20)
    np.testing.assert_allclose(r["pdf"].sum(1), 1.0, rtol=1e-6)
    for k in ("z_mean", "z_mode"):
        assert r[k].shape == (5,) and np.all((r[k] >= 0) & (r[k] <= 0.5))
    assert np.all(r["width"] >= 0)
    # summarize on a known p(z): two equal bins
    centres = np.array([0.1, 0.2, 0.3])
    sm = PhotoZNet.summarize(np.array([[0.5, 0.0, 0.5]]), centres)
    assert sm["z_mean"][0] == pytest.approx(0.2) and sm["width"][0] == pytest.approx(0.1)
    assert sm["z_mode"][0] == pytest.approx(0.1)
    with pytest.raises(GalnetValueError, match=r"photo-z images must be \(N, 5, 136, 136\)"):
        predict_photoz(m, images[:2, :, :64, :64])


def test_photoz_bad_inputs(tmp_path):
    images = np.zeros((8, 5, 136, 136), np.float32)
    cfg = PhotoZTrainConfig(steps=1, n_val=2, width=4)
    out = tmp_path / "p.safetensors"
    with pytest.raises(GalnetValueError, match="z must hold 8 finite redshifts"):
        train_photoz(images, np.zeros(7), [1.0] * 5, cfg, out)
    with pytest.raises(GalnetValueError, match="target_sky must have one value per band"):
        train_photoz(images, np.zeros(8), [1.0] * 3, cfg, out)
    with pytest.raises(GalnetValueError, match=r"images must be \(N, C, S, S\)"):
        train_photoz(images[:, 0], np.zeros(8), [1.0] * 5, cfg, out)
    with pytest.raises(GalnetValueError, match="steps must be an integer >= 1"):
        train_photoz(images, np.zeros(8), [1.0] * 5, PhotoZTrainConfig(steps=0), out)
