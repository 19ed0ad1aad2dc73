"""galnet predict: arrays and files in, catalogue out; chi2nu; every input form; bad inputs."""

import h5py
import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.table import Table

from galnet.cli import main
from galnet.errors import GalnetValueError
from galnet.flags import Flag
from galnet.io.catalog import catalog_columns, read_catalog
from galnet.io.models import read_models
from galnet.nn.model import encode_targets, save_model
from galnet.nn.predict import predict_arrays, predict_files
from galnet.profiles.render import render


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny_model):
    return save_model(tiny_model, tmp_path_factory.mktemp("w") / "tiny.safetensors")


@pytest.fixture(scope="module")
def stamps(tiny_sim, tmp_path_factory):
    """The first 40 simulated stamps as FITS: cube with a SIGMA extension, PSF cube, one PSF."""
    d = tmp_path_factory.mktemp("fits")
    with h5py.File(tiny_sim) as f:
        im, sg, ps = f["images"][:40], f["sigma"][:40], f["psfs"][:40]
    fits.HDUList([fits.PrimaryHDU(im), fits.ImageHDU(sg, name="SIGMA")]).writeto(d / "st.fits")
    fits.PrimaryHDU(ps).writeto(d / "psfs.fits")
    fits.PrimaryHDU(ps[0]).writeto(d / "psf.fits")
    fits.PrimaryHDU(im[0]).writeto(d / "one.fits")
    return d, im, sg, ps


def _constant_model(tiny_model, params, noise):
    """A copy of the tiny model whose output is the standardised targets of ``params`` for any
    input (zero weights, biases = targets): predictions known in advance."""
    import copy

    m = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.out.bias.copy_(encode_targets(params, noise, m.config)[0])
        m.out_sigma.bias.fill_(-1.0)
    return m.eval()


def test_chi2nu_and_snr_against_direct_computation(tiny_model):
    """chi2nu of a model that predicts exactly the truth: ~1 for pure-noise residuals, and equal
    to the sum computed here from galnet.profiles.render (masked pixels left out)."""
    truth = {"x": torch.tensor([30.4]), "y": torch.tensor([29.8]), "flux": torch.tensor([40.0]),
             "re_pix": torch.tensor([4.0]), "n": torch.tensor([1.5]), "q": torch.tensor([0.6]),
             "pa_deg": torch.tensor([40.0])}
    yy, xx = np.mgrid[-12:13, -12:13]
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.8**2))
    clean = render({k: v.numpy() for k, v in truth.items()}, psf, (61, 61))
    rng = np.random.default_rng(3)
    sigma = 0.08
    img = (clean + sigma * rng.standard_normal((1, 61, 61))).astype(np.float32)
    mask = np.zeros_like(img, dtype=bool)
    mask[0, :5, :] = True
    res0 = predict_arrays(img, psf, mask=mask, model=tiny_model, chi2=False)
    noise = torch.tensor(res0["noise"], dtype=torch.float32)
    m = _constant_model(tiny_model, truth, noise)
    res = predict_arrays(img, psf, mask=mask, sigma=np.full_like(img, sigma), model=m)
    for k in ("x", "y", "re_pix", "n", "q", "flux"):
        assert res[k][0] == pytest.approx(float(truth[k][0]), rel=1e-4, abs=1e-4), k
    pred = {k: res[k] for k in ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")}
    model_img = render(pred, psf, (61, 61))
    keep = ~mask
    chi2 = np.sum(((img - model_img) / sigma)[keep] ** 2) / (keep.sum() - 7)
    assert res["chi2nu"][0] == pytest.approx(chi2, rel=2e-3)
    assert 0.9 < res["chi2nu"][0] < 1.1
    snr = np.sqrt(np.sum((model_img / sigma)[keep] ** 2))
    assert res["snr"][0] == pytest.approx(snr, rel=2e-3)


def test_predict_arrays_shapes_and_errors(tiny_model, stamps):
    _, im, sg, ps = stamps
    res = predict_arrays(im[:5], ps[:5], model=tiny_model, chi2=False)
    assert set(res) >= {"x", "x_err", "re_pix_err", "pa_deg", "noise", "chi2nu"}
    assert all(len(v) == 5 for v in res.values())
    assert np.all(np.isnan(res["chi2nu"]))
    assert np.all((res["pa_deg"] >= 0) & (res["pa_deg"] < 180))
    one = predict_arrays(im[:5], ps[0], model=tiny_model, chi2=False)
    cube = predict_arrays(im[:5], np.repeat(ps[:1], 5, axis=0), model=tiny_model, chi2=False)
    assert np.allclose(one["re_pix"], cube["re_pix"], rtol=1e-5)
    with pytest.raises(GalnetValueError, match=r"images must have shape \(N, H, W\)"):
        predict_arrays(im[:2, None], ps[0], model=tiny_model)
    with pytest.raises(GalnetValueError, match="psfs must have shape"):
        predict_arrays(im[:2], ps[:3], model=tiny_model)
    with pytest.raises(GalnetValueError, match="sigma must have the shape"):
        predict_arrays(im[:2], ps[0], sigma=sg[:3], model=tiny_model)


@pytest.mark.parametrize("suffix", [".ecsv", ".fits", ".parquet"])
def test_predict_cli_formats_and_columns(stamps, weights, tmp_path, suffix):
    d, *_ = stamps
    out = tmp_path / f"cat{suffix}"
    rc = main(["predict", "--images", str(d / "st.fits"), "--psf", str(d / "psfs.fits"),
               "--model", str(weights), "--out", str(out), "-q"])
    assert rc == 0
    t = read_catalog(out)
    from galnet.fitting.assess import ASSESS_COLUMNS  # point sources, misfits (issue 13)

    assert t.colnames == catalog_columns() + list(ASSESS_COLUMNS)
    assert len(t) == 40 and list(t["id"]) == list(range(40))
    if suffix != ".parquet":
        assert str(t["re_arcsec"].unit) == "arcsec" and str(t["pa_deg"].unit) == "deg"
    re_pix, re_arcsec = (np.asarray(getattr(t[k], "value", t[k])) for k in ("re_pix", "re_arcsec"))
    assert np.allclose(re_arcsec, re_pix * 0.168)
    assert np.all(np.isfinite(t["chi2nu"]))


def test_predict_single_image_one_psf_and_options(stamps, weights, tmp_path):
    d, im, *_ = stamps
    out = tmp_path / "one.ecsv"
    rc = main(["predict", "--images", str(d / "one.fits"), "--psf", str(d / "psf.fits"),
               "--model", str(weights), "--out", str(out), "--pixel-scale", "0.2",
               "--zeropoint", "30", "--no-chi2", "--save-models", str(tmp_path / "m"), "-q"])
    assert rc == 0
    t = Table.read(out)
    assert len(t) == 1 and t.meta["zeropoint"] == 30.0 and t.meta["pixel_scale"] == 0.2
    assert np.isnan(t["chi2nu"][0])
    assert float(t["mag"][0]) == pytest.approx(30 - 2.5 * np.log10(float(t["flux"][0])))
    mf = read_models(tmp_path / "m" / "models.fits")  # one MEF
    mod, res, objects, meta = mf.cube("model"), mf.cube("residual"), mf.objects, mf.meta
    assert mod.shape == res.shape == (1, 61, 61) and list(objects["id"]) == [0]
    assert np.allclose(res[0] + mod[0], im[0], atol=1e-5)
    assert meta["provenance"]["options"]["zeropoint"] == 30.0


def test_predict_pads_small_stamps_and_flags(stamps, weights, tmp_path):
    d, im, *_ = stamps
    small = im[:3, 10:51, 10:51].copy()
    small[0, 20, 20] = np.nan
    fits.PrimaryHDU(small).writeto(tmp_path / "small.fits")
    t = predict_files(tmp_path / "c.ecsv", images=tmp_path / "small.fits",
                      psf=d / "psf.fits", model=weights, progress=False)
    assert np.all(t["flags"] & int(Flag.PADDED))
    assert t["flags"][0] & int(Flag.NONFINITE)
    assert not t["flags"][1] & int(Flag.NONFINITE)


def test_predict_frame_with_positions(stamps, weights, tmp_path):
    d, im, *_ = stamps
    frame = np.zeros((200, 300), np.float32)
    frame[50:111, 100:161] = im[0]
    frame[120:181, 200:261] = im[1]
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [150.0, 100.0]
    w.wcs.cdelt = [-0.168 / 3600, 0.168 / 3600]
    fits.PrimaryHDU(frame, header=w.to_header()).writeto(tmp_path / "frame.fits")
    Table({"id": [7, 9], "x": [130.0, 230.0], "y": [80.0, 150.0]}).write(tmp_path / "pos.ecsv")
    t = predict_files(tmp_path / "f.ecsv", frame=tmp_path / "frame.fits",
                      positions=tmp_path / "pos.ecsv", psf=d / "psf.fits", model=weights,
                      progress=False)
    ref = predict_files(tmp_path / "s.ecsv", images=d / "st.fits", psf=d / "psf.fits",
                        model=weights, progress=False)
    assert list(t["id"]) == [7, 9]
    # the same pixels give the same galaxy, moved to frame coordinates
    x, y, re = (t[k].value for k in ("x", "y", "re_pix"))
    xr, yr, rer = (ref[k].value for k in ("x", "y", "re_pix"))
    assert x[0] == pytest.approx(xr[0] + 100, abs=1e-3)
    assert y[1] == pytest.approx(yr[1] + 120, abs=1e-3)
    assert re[0] == pytest.approx(rer[0], rel=1e-4)
    sky = w.pixel_to_world(x, y)  # sky positions of the predicted centres
    assert np.allclose(t["ra"].value, sky.ra.deg) and np.allclose(t["dec"].value, sky.dec.deg)


@pytest.mark.parametrize("args, message, code", [
    (["--images", "MISSING.fits", "--psf", "P"], "MISSING.fits", 1),
    (["--psf", "P"], "either --images or --frame", 2),
    (["--frame", "F.fits", "--psf", "P"], "--frame needs --positions", 2),
    (["--images", "S", "--psf", "P", "--out", "x.txt"], "unknown catalogue format", 2),
])
def test_predict_cli_errors(stamps, weights, tmp_path, capsys, args, message, code):
    d, *_ = stamps
    args = [str(d / "st.fits") if a == "S" else str(d / "psf.fits") if a == "P" else a
            for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "c.ecsv")]
    rc = main(["predict", *args, "--model", str(weights), "-q"])
    err = capsys.readouterr().err
    assert rc == code and message in err and err.count("\n") == 1


def test_predict_cli_even_psf_and_nan_psf(stamps, weights, tmp_path, capsys):
    d, *_ = stamps
    fits.PrimaryHDU(np.ones((24, 24))).writeto(tmp_path / "even.fits")
    rc = main(["predict", "--images", str(d / "st.fits"), "--psf", str(tmp_path / "even.fits"),
               "--model", str(weights), "--out", str(tmp_path / "c.ecsv"), "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "even.fits" in err  # a bad input file: a runtime error
    assert not (tmp_path / "c.ecsv").exists()


def test_predict_cli_separate_sigma_mask_ivar_chunk_threads(stamps, weights, tmp_path):
    """--sigma / --ivar / --mask as separate files, --chunk (same answer in several chunks),
    --device, --threads, --preset."""
    d, im, sg, ps = stamps
    fits.PrimaryHDU(im).writeto(tmp_path / "im.fits")
    fits.PrimaryHDU(sg).writeto(tmp_path / "sig.fits")
    fits.PrimaryHDU(1.0 / sg**2).writeto(tmp_path / "ivar.fits")
    mask = np.zeros(im.shape, np.uint8)
    mask[:, :, :4] = 1
    fits.PrimaryHDU(mask).writeto(tmp_path / "mask.fits")
    base = ["predict", "--images", str(tmp_path / "im.fits"), "--psf", str(d / "psfs.fits"),
            "--model", str(weights), "-q", "--device", "cpu", "--threads", "1",
            "--preset", "hsc-r"]
    assert main([*base, "--sigma", str(tmp_path / "sig.fits"), "--mask",
                 str(tmp_path / "mask.fits"), "--out", str(tmp_path / "a.ecsv")]) == 0
    assert main([*base, "--ivar", str(tmp_path / "ivar.fits"), "--mask",
                 str(tmp_path / "mask.fits"), "--chunk", "7", "--out",
                 str(tmp_path / "b.ecsv")]) == 0
    assert main([*base, "--sigma", str(tmp_path / "sig.fits"), "--out",
                 str(tmp_path / "c.ecsv")]) == 0
    a, b, c = (Table.read(tmp_path / f"{k}.ecsv") for k in "abc")
    assert np.allclose(a["re_pix"], b["re_pix"], rtol=1e-5)
    assert np.allclose(a["chi2nu"], b["chi2nu"], rtol=1e-4)
    # the mask changes what the network sees and which pixels enter chi2nu
    assert not np.allclose(a["chi2nu"], c["chi2nu"], rtol=1e-4)


def test_predict_out_of_prior_and_low_snr_flags(tiny_model, stamps, tmp_path):
    """A model whose prior excludes everything flags every row OUT_OF_PRIOR; a pure-noise stamp
    gets LOW_SNR."""
    import copy

    d, im, _, ps = stamps
    m = copy.deepcopy(tiny_model)
    m.config.info = {"prior": {"re_pix": [1e3, 1e4], "n": [0.3, 8.0]}}
    t = predict_files(tmp_path / "p.ecsv", images=d / "st.fits", psf=d / "psf.fits", model=m,
                      progress=False)
    assert np.all(t["flags"] & int(Flag.OUT_OF_PRIOR))
    # LOW_SNR: a flat, faint model on noise (constant-output model, flux ~ 1 sky rms)
    noise = np.random.default_rng(0).normal(0, 1.0, (2, 61, 61)).astype(np.float32)
    truth = {"x": torch.tensor([30.0]), "y": torch.tensor([30.0]), "flux": torch.tensor([1.0]),
             "re_pix": torch.tensor([3.0]), "n": torch.tensor([1.0]), "q": torch.tensor([1.0]),
             "pa_deg": torch.tensor([0.0])}
    cm = _constant_model(tiny_model, truth, torch.ones(1))
    t = predict_files(tmp_path / "n.ecsv", images=noise, psf=ps[0], model=cm, progress=False)
    assert np.all(t["flags"] & int(Flag.LOW_SNR))


def test_evaluate_cli_flags(stamps, weights, tiny_sim, tmp_path, capsys):
    d, *_ = stamps
    out = tmp_path / "cat.ecsv"
    assert main(["predict", "--images", str(d / "st.fits"), "--psf", str(d / "psfs.fits"),
                 "--model", str(weights), "--out", str(out), "-q"]) == 0
    rc = main(["evaluate", "--pred", str(out), "--truth", str(tiny_sim), "--out",
               str(tmp_path / "rep"), "--snr-bins", "0", "50", "inf", "--n-bins", "0.3", "2", "8",
               "--no-gallery"])
    assert rc == 0
    assert "report:" in capsys.readouterr().out
    import json

    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert m["n_evaluated"] == 40 and len(m["by_snr"]["bins"]) == 2
    assert not (tmp_path / "rep" / "gallery.png").exists()


def test_predict_cli_psfex_with_psf_positions(stamps, weights, tmp_path, capsys):
    """--psf-positions places a stamp cube in its frame for a PSFEx PSF: the same result as the
    PSFs evaluated at those positions given as a cube."""
    from test_io_cutouts import _synthetic_psfex

    from galnet.io.cutouts import load_stamps

    d, im, *_ = stamps
    _synthetic_psfex(tmp_path / "m.psf")
    fits.PrimaryHDU(im[:3]).writeto(tmp_path / "st3.fits")
    pos = Table({"x": [99.0, 299.0, 99.0], "y": [79.0, 79.0, 229.0]})
    pos.write(tmp_path / "pos.ecsv")
    psfs = load_stamps(im[:3], tmp_path / "m.psf",
                       psf_positions=np.c_[pos["x"], pos["y"]]).psfs
    fits.PrimaryHDU(psfs).writeto(tmp_path / "cube.fits")
    base = ["predict", "--images", str(tmp_path / "st3.fits"), "--model", str(weights), "-q",
            "--no-chi2"]
    assert main([*base, "--psf", str(tmp_path / "m.psf"), "--psf-positions",
                 str(tmp_path / "pos.ecsv"), "--out", str(tmp_path / "a.ecsv")]) == 0
    assert main([*base, "--psf", str(tmp_path / "cube.fits"), "--out",
                 str(tmp_path / "b.ecsv")]) == 0
    a, b = Table.read(tmp_path / "a.ecsv"), Table.read(tmp_path / "b.ecsv")
    assert np.allclose(a["re_pix"], b["re_pix"], rtol=1e-5)
    assert main([*base, "--psf", str(tmp_path / "m.psf"), "--out",
                 str(tmp_path / "c.ecsv")]) == 1  # the PSF file needs positions: runtime error
    assert "PSFEx model needs" in capsys.readouterr().err
