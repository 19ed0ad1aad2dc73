"""Faults of the network path that used to pass silently: corrupt or NaN weights, non-finite
outputs, big-endian and odd-sized arrays, predictions without flags or magnitudes."""

import copy
import logging
import struct

import h5py
import numpy as np
import pytest
import torch
from astropy.io import fits

from galnet.cli import main
from galnet.errors import GalnetFileError
from galnet.flags import Flag
from galnet.io.catalog import read_catalog
from galnet.nn.model import encode_targets, load_model, save_model
from galnet.nn.predict import predict_arrays, predict_files


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny_model):
    return save_model(tiny_model, tmp_path_factory.mktemp("w") / "tiny.safetensors")


@pytest.fixture(scope="module")
def data(tiny_sim):
    with h5py.File(tiny_sim) as f:
        return f["images"][:6], f["psfs"][:6]


def _corrupt(src, dst, how):
    raw = bytearray(src.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    if how == "header_length":
        raw[:8] = struct.pack("<Q", 10**12)
    elif how == "header_byte":
        raw[20] ^= 0xFF
    elif how == "header_json":
        raw[60] ^= 0x55
    elif how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "data_nan":  # float32 NaN over a stretch of tensor data
        raw[n + 8 + 100: n + 8 + 200] = b"\xff" * 100
    dst.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize("how", ["header_length", "header_byte", "header_json", "truncated",
                                 "data_nan"])
def test_corrupt_weights_one_line_error(weights, tmp_path, how):
    bad = _corrupt(weights, tmp_path / "bad.safetensors", how)
    with pytest.raises(GalnetFileError, match=r"bad\.safetensors: ") as e:
        load_model(bad)
    assert "\n" not in str(e.value)


def test_nan_weights_rejected(tiny_model, tmp_path):
    m = copy.deepcopy(tiny_model)
    with torch.no_grad():
        m.head[0].weight[0, 0] = float("nan")
    path = save_model(m, tmp_path / "nan.safetensors")
    with pytest.raises(GalnetFileError, match="weights contain non-finite values"):
        load_model(path)


def test_predict_cli_nan_weights_exit_1_no_output(weights, tiny_model, data, tmp_path, capsys):
    im, ps = data
    fits.PrimaryHDU(im).writeto(tmp_path / "st.fits")
    fits.PrimaryHDU(ps[0]).writeto(tmp_path / "psf.fits")
    bad = _corrupt(weights, tmp_path / "bad.safetensors", "data_nan")
    rc = main(["predict", "--images", str(tmp_path / "st.fits"), "--psf",
               str(tmp_path / "psf.fits"), "--model", str(bad), "--out",
               str(tmp_path / "c.ecsv"), "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "non-finite" in err and err.count("\n") == 1
    assert "Traceback" not in err and not (tmp_path / "c.ecsv").exists()


def _inf_model(tiny_model):
    """A model whose flux output overflows (log10 flux / noise = 1e4): non-finite flux."""
    m = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.out.bias[2] = 1e4
    return m.eval()


def test_nonfinite_outputs_are_flagged(tiny_model, data, tmp_path, capsys):
    im, ps = data
    res = predict_arrays(im, ps[0], model=_inf_model(tiny_model))
    assert not np.isfinite(res["flux"]).any()
    assert np.all(res["flags"] & int(Flag.NONFINITE))
    assert np.isnan(res["chi2nu"]).all()
    # a NaN pixel in a 61 x 61 stamp is masked (as the FITS path does): that row only is flagged
    # and every result stays finite; the other rows are unchanged
    im2 = im.copy()
    im2[1, 0, 0] = np.nan
    res = predict_arrays(im2, ps[0], model=tiny_model)
    ref = predict_arrays(im, ps[0], model=tiny_model)
    nonfinite = (res["flags"] & int(Flag.NONFINITE)) != 0
    assert nonfinite[1] and not nonfinite[[0, 2, 3, 4, 5]].any()
    assert np.isfinite(res["chi2nu"]).all() and np.isfinite(res["re_pix"]).all()
    np.testing.assert_allclose(res["re_pix"][[0, 2]], ref["re_pix"][[0, 2]], rtol=1e-6)
    # the catalogue never reports an all-NaN run as "0 flagged"
    weights = save_model(_inf_model(tiny_model), tmp_path / "inf.safetensors")
    fits.PrimaryHDU(im).writeto(tmp_path / "st.fits")
    fits.PrimaryHDU(ps[0]).writeto(tmp_path / "psf.fits")
    rc = main(["predict", "--images", str(tmp_path / "st.fits"), "--psf",
               str(tmp_path / "psf.fits"), "--model", str(weights), "--out",
               str(tmp_path / "c.fits"), "-q"])
    assert rc == 0 and "6 flagged" in capsys.readouterr().out
    t = read_catalog(tmp_path / "c.fits")
    assert np.all(np.asarray(t["flags"]) & int(Flag.NONFINITE))


def test_predict_arrays_big_endian(tiny_model, data):
    im, ps = data
    a = predict_arrays(im, ps[0], model=tiny_model)
    b = predict_arrays(im.astype(">f4"), ps[0].astype(">f8"), model=tiny_model,
                       sigma=None, mask=np.zeros(im.shape, ">i2") != 0)
    c = predict_arrays(im.astype(">f4"), ps[0].astype(">f4"), model=tiny_model)
    for k in ("x", "re_pix", "flux", "chi2nu"):
        np.testing.assert_allclose(a[k], c[k], rtol=1e-6)
        assert np.isfinite(b[k]).all()


def test_predict_arrays_from_getdata(tiny_model, data, tmp_path):
    im, ps = data
    fits.PrimaryHDU(im).writeto(tmp_path / "st.fits")
    fits.PrimaryHDU(ps[0]).writeto(tmp_path / "psf.fits")
    cube, psf = fits.getdata(tmp_path / "st.fits"), fits.getdata(tmp_path / "psf.fits")
    assert cube.dtype.byteorder == ">"
    res = predict_arrays(cube, psf, model=tiny_model)
    ref = predict_arrays(im, ps[0], model=tiny_model)
    np.testing.assert_allclose(res["re_pix"], ref["re_pix"], rtol=1e-6)


def _constant_model(tiny_model, x, y):
    m = copy.deepcopy(tiny_model)
    p = {"x": torch.tensor([x]), "y": torch.tensor([y]), "flux": torch.tensor([50.0]),
         "re_pix": torch.tensor([3.0]), "n": torch.tensor([1.5]), "q": torch.tensor([0.7]),
         "pa_deg": torch.tensor([20.0])}
    with torch.no_grad():
        for q in m.parameters():
            q.zero_()
        m.out.bias.copy_(encode_targets(p, torch.ones(1), m.config)[0])
        m.out_sigma.bias.fill_(-1.0)
    return m.eval()


@pytest.mark.parametrize("size", [41, 60, 81])
def test_predict_arrays_any_stamp_size(tiny_model, data, size):
    """Stamps of another size are padded (PADDED flag) or cropped as the FITS path does, and the
    positions come back in the pixels of the stamps given."""
    im, ps = data
    m = _constant_model(tiny_model, 30.5, 29.5)  # stamp-pixel answer, whatever the input
    big = np.zeros((2, 101, 101), np.float32)
    big[:, 20:81, 20:81] = im[:2]
    c = 50
    stamps = big[:, c - size // 2: c - size // 2 + size, c - size // 2: c - size // 2 + size]
    res = predict_arrays(stamps, ps[0], model=m)
    off = (size - 1) / 2 - 30  # input centre minus stamp centre; exact for odd sizes
    if size % 2 == 1:
        np.testing.assert_allclose(res["x"], 30.5 + off, atol=1e-4)
        np.testing.assert_allclose(res["y"], 29.5 + off, atol=1e-4)
    padded = (res["flags"] & int(Flag.PADDED)) != 0
    assert padded.all() == (size < 61)
    assert len(res["x"]) == 2


def test_predict_arrays_magnitudes_and_flags(tiny_model, data):
    im, ps = data
    res = predict_arrays(im, ps[0], model=tiny_model, zeropoint=27.0)
    np.testing.assert_allclose(res["mag"], 27.0 - 2.5 * np.log10(res["flux"]))
    assert res["flags"].dtype == np.int64 and len(res["flags"]) == len(im)
    assert "mag" not in predict_arrays(im[:1], ps[0], model=tiny_model, chi2=False)


def test_predict_files_provenance(weights, data, tmp_path, caplog):
    im, ps = data
    fits.PrimaryHDU(im).writeto(tmp_path / "st.fits")
    hdr = fits.Header({"MAGZERO": 30.0})  # zeropoint from the header, not the preset
    fits.PrimaryHDU(ps[0]).writeto(tmp_path / "psf.fits")
    fits.PrimaryHDU(im, header=hdr).writeto(tmp_path / "stz.fits")
    with caplog.at_level(logging.WARNING, logger="galnet"):
        t = predict_files(tmp_path / "c.ecsv", images=tmp_path / "st.fits",
                          psf=tmp_path / "psf.fits", model=weights, progress=False,
                          command=["galnet", "predict", "..."])
    p = t.meta["provenance"]
    assert p["command"] == "galnet predict ..."
    assert p["inputs"]["images"].endswith("st.fits") and p["inputs"]["psf"].endswith("psf.fits")
    assert p["weights"]["name"] == "tiny.safetensors" and len(p["weights"]["sha256"]) == 64
    assert p["options"]["preset"] == "hsc-r" and p["options"]["chunk"] == 4096
    assert p["sources"]["zeropoint"].startswith("preset")
    assert any("zeropoint" in r.message and "default" in r.message for r in caplog.records)
    back = read_catalog(tmp_path / "c.ecsv")
    assert back.meta["provenance"]["weights"]["sha256"] == p["weights"]["sha256"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="galnet"):
        t = predict_files(tmp_path / "z.ecsv", images=tmp_path / "stz.fits",
                          psf=tmp_path / "psf.fits", model=weights, progress=False,
                          pixel_scale=0.2)
    src = t.meta["provenance"]["sources"]
    assert "MAGZERO" in src["zeropoint"] and not src["pixel_scale"].startswith("preset")
    assert not any("default" in r.message for r in caplog.records)


def test_save_models_interrupted_leaves_nothing(weights, data, tmp_path, monkeypatch):
    """Ctrl-C in the second chunk: no model file, no catalogue, no temporary file (the old cube
    writer left partial cubes under their final names)."""
    import galnet.nn.predict as nnp

    im, ps = data
    fits.PrimaryHDU(im).writeto(tmp_path / "st.fits")
    fits.PrimaryHDU(ps[0]).writeto(tmp_path / "psf.fits")
    real, calls = nnp.predict, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(nnp, "predict", flaky)
    with pytest.raises(KeyboardInterrupt):
        predict_files(tmp_path / "c.ecsv", images=tmp_path / "st.fits",
                      psf=tmp_path / "psf.fits", model=weights, chunk=2, progress=False,
                      save_models=tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == []
    assert not (tmp_path / "c.ecsv").exists()
    monkeypatch.setattr(nnp, "predict", real)
    predict_files(tmp_path / "c.ecsv", images=tmp_path / "st.fits", psf=tmp_path / "psf.fits",
                  model=weights, chunk=2, progress=False, save_models=tmp_path / "m.fits")
    from galnet.io.models import read_models

    mf = read_models(tmp_path / "m.fits")
    mod, objects = mf.cube("model"), mf.objects
    assert mod.shape == (6, 61, 61) and list(objects["id"]) == list(range(6))


@pytest.mark.parametrize("with_sigma", [True, False])
def test_small_stamp_noise_is_not_the_floor(with_sigma):
    """A 45x45 stamp padded to 61 px has no unmasked pixel in the 6-px outer ring: the sky rms
    fell to its 1e-6-of-peak floor and the network returned n ~ 0.01, q = 0.02. The noise now
    comes from the sigma map (or all unmasked pixels) and the parameters are sane."""
    import galnet
    from galnet.nn.predict import predict_arrays

    yy, xx = np.mgrid[:25, :25] - 12
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))
    psf /= psf.sum()
    img = galnet.render(dict(x=22.0, y=22.0, mag=20.0, re_pix=4.0, n=2.0, q=0.6, pa_deg=35.0),
                        psf, shape=(45, 45), zeropoint=27.0)[0]
    rng = np.random.default_rng(1)
    imgs = np.stack([img + rng.normal(0, 1, img.shape) for _ in range(3)])
    res = predict_arrays(imgs, psf, sigma=np.ones_like(imgs) if with_sigma else None,
                         chi2=False)
    assert np.all(res["noise"] > 0.5) and np.all(res["noise"] < 2.0), res["noise"]
    assert np.all(np.abs(np.log(res["re_pix"] / 4.0)) < np.log(1.5)), res["re_pix"]
    assert np.all((res["n"] > 1.0) & (res["n"] < 4.0)), res["n"]
    assert np.all(res["q"] > 0.4), res["q"]
