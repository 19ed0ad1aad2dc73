"""The public API: galnet.predict / galnet.fit / galnet.render take every input form of
docs/api.md and return the CLI's catalogue; `import galnet` stays light; bad inputs fail in one
line. Tiny data: Sérsic stamps made with galnet.render through a Gaussian PSF plus noise."""

import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import (
    CCDData,
    Cutout2D,
    InverseVariance,
    NDData,
    StdDevUncertainty,
    UnknownUncertainty,
    VarianceUncertainty,
)
from astropy.wcs import WCS

import galnet
from galnet.cli import main
from galnet.errors import GalnetPSFError, GalnetValueError
from galnet.flags import Flag

SIGMA = 0.5
ZP = 27.0


def _psf(size: int = 25, fwhm: float = 3.0) -> np.ndarray:
    r = (size - 1) / 2
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return np.exp(-(xx**2 + yy**2) / (2 * (fwhm / 2.3548) ** 2))


PSF = _psf()


@pytest.fixture(scope="module")
def cube() -> np.ndarray:
    """Three 61x61 noisy Sérsic stamps (float32)."""
    p = dict(x=[30.2, 31.0, 29.6], y=[29.7, 30.5, 30.1], mag=[20.0, 21.0, 20.5],
             re_pix=[4.0, 3.0, 5.0], n=[2.5, 1.0, 1.5], q=[0.6, 0.8, 0.5],
             pa_deg=[35.0, 100.0, 150.0])
    img = galnet.render(p, PSF, shape=(61, 61), zeropoint=ZP)
    rng = np.random.default_rng(1)
    return (img + rng.normal(0, SIGMA, img.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny_model):
    from galnet.nn.model import save_model

    return save_model(tiny_model, tmp_path_factory.mktemp("w") / "tiny.safetensors")


def _v(col) -> np.ndarray:
    return np.asarray(getattr(col, "value", col), dtype=float)


def _same(a, b, cols=("x", "y", "mag", "re_pix", "n", "q", "pa_deg", "chi2nu")) -> None:
    for c in cols:
        np.testing.assert_allclose(_v(a[c]), _v(b[c]), rtol=1e-5, atol=1e-5, err_msg=c)
    assert list(a["flags"]) == list(b["flags"])


# ------------------------------------------------------------------------------------------
# import galnet is light; galnet.render works every time
# ------------------------------------------------------------------------------------------
def test_import_galnet_does_not_import_torch():
    code = ("import sys, galnet, galnet.api; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert callable(galnet.predict) and callable(galnet.fit); "
            "assert 'torch' not in sys.modules, 'torch imported by galnet.predict'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_render_is_callable_twice_regression():
    """Old bug: `from galnet import render; render(...)` failed the second time with "module is
    not callable" (galnet.render was both a module and a lazy function)."""
    code = ("import numpy as np\n"
            "from galnet import render\n"
            "p = dict(x=30.0, y=30.0, flux=100.0, re_pix=3.0, n=1.0, q=0.7, pa_deg=20.0)\n"
            "psf = np.ones((5, 5))\n"
            "a = render(p, psf)\n"
            "import galnet.profiles.render\n"
            "from galnet import render\n"
            "b = render(p, psf)\n"
            "import galnet\n"
            "c = galnet.render(p, psf)\n"
            "assert a.shape == b.shape == c.shape == (1, 61, 61) and np.array_equal(a, c)\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    from galnet.profiles.render import render

    assert galnet.render is render
    assert {"predict", "fit", "render"} <= set(dir(galnet))


# ------------------------------------------------------------------------------------------
# Same table as the CLI
# ------------------------------------------------------------------------------------------
def test_predict_is_the_cli_catalogue_from_big_endian_fits(cube, weights, tmp_path, capsys):
    """Arrays straight from fits.getdata (big-endian) give the CLI's catalogue: columns, units,
    values, flags and metadata (predict_arrays used to refuse big-endian input)."""
    fits.PrimaryHDU(cube.astype(">f4")).writeto(tmp_path / "st.fits")
    fits.PrimaryHDU(PSF.astype(">f8")).writeto(tmp_path / "psf.fits")
    out = tmp_path / "cli.ecsv"
    assert main(["predict", "--images", str(tmp_path / "st.fits"), "--psf",
                 str(tmp_path / "psf.fits"), "--model", str(weights), "--zeropoint", "27",
                 "--out", str(out), "-q"]) == 0
    from astropy.table import QTable

    cli = QTable.read(out)
    images = fits.getdata(tmp_path / "st.fits")
    assert images.dtype.byteorder == ">"
    t = galnet.predict(images, fits.getdata(tmp_path / "psf.fits"), model=weights,
                       zeropoint=ZP)
    assert t.colnames == cli.colnames
    for c in t.colnames:
        assert getattr(t[c], "unit", None) == getattr(cli[c], "unit", None), c
    _same(t, cli)
    assert t.meta["flags"] == {f.name: int(f) for f in Flag}
    for k in ("pixel_scale", "zeropoint", "model"):
        assert t.meta[k] == cli.meta[k], k
    assert set(cli.meta) == set(t.meta), "the API's table metadata differ from the CLI's"
    prov = t.meta["provenance"]
    assert set(cli.meta.get("provenance", {})) <= set(prov)
    assert prov["command"].startswith("galnet.predict(") and prov["galnet_version"]
    assert prov["weights"]["name"] == "tiny.safetensors" and len(prov["weights"]["sha256"]) == 64
    assert prov["sources"] == {"pixel_scale": "preset hsc-r", "zeropoint": "argument"}
    assert prov["inputs"] == {"images": "array (3, 61, 61) >f4", "psf": "array (25, 25) >f8"}
    assert prov["options"]["zeropoint"] == ZP and prov["options"]["pixel_scale"] is None


def test_fit_is_the_cli_catalogue(cube, tmp_path):
    fits.PrimaryHDU(cube).writeto(tmp_path / "st.fits")
    fits.PrimaryHDU(PSF).writeto(tmp_path / "psf.fits")
    fits.PrimaryHDU(np.full_like(cube, SIGMA)).writeto(tmp_path / "sig.fits")
    out = tmp_path / "fit.ecsv"
    assert main(["fit", "--images", str(tmp_path / "st.fits"), "--psf", str(tmp_path / "psf.fits"),
                 "--sigma", str(tmp_path / "sig.fits"), "--init", "moments", "--zeropoint", "27",
                 "--out", str(out), "-q"]) == 0
    from astropy.table import QTable

    cli = QTable.read(out)
    t = galnet.fit(cube, PSF, np.full_like(cube, SIGMA), init="moments", zeropoint=ZP)
    assert t.colnames == cli.colnames
    assert "converged" in t.colnames and "niter" in t.colnames
    _same(t, cli)
    assert abs(_v(t["mag"]) - [20.0, 21.0, 20.5]).max() < 0.1


def test_fit_init_from_a_catalogue_table_or_file(cube, tmp_path):
    sig = np.full_like(cube[:2], SIGMA)
    first = galnet.fit(cube[:2], PSF, sig, init="moments", zeropoint=ZP)
    first.write(tmp_path / "first.ecsv")
    from_file = galnet.fit(cube[:2], PSF, sig, init=tmp_path / "first.ecsv", zeropoint=ZP)
    from_table = galnet.fit(cube[:2], PSF, sig, init=first, zeropoint=ZP)
    _same(from_file, from_table)
    np.testing.assert_allclose(_v(from_file["mag"]), _v(first["mag"]), atol=0.02)
    assert from_file.meta["provenance"]["options"]["init"] == str(tmp_path / "first.ecsv")
    assert from_file.meta["provenance"]["command"].startswith("galnet.fit(")


def test_predict_refine_is_a_fit(cube):
    t = galnet.predict(cube[:1], PSF, np.full_like(cube[:1], SIGMA), zeropoint=ZP, refine=True)
    assert "converged" in t.colnames
    assert t.meta["provenance"]["command"].startswith("galnet.predict(")
    assert t.meta["provenance"]["options"]["refine"] is True
    assert t.meta["model"].startswith("nn")


# ------------------------------------------------------------------------------------------
# Input forms
# ------------------------------------------------------------------------------------------
def test_single_2d_stamp_and_any_size(cube, tiny_model):
    one = galnet.predict(cube[0], PSF, model=tiny_model)
    assert len(one) == 1 and list(one["id"]) == [0]
    _same(one, galnet.predict(cube[:1], PSF, model=tiny_model))
    small = galnet.predict(cube[:, 5:-5, 3:-3], PSF, model=tiny_model)  # 51 x 55 stamps
    assert np.all(small["flags"] & int(Flag.PADDED))
    big = np.zeros((3, 151, 151), np.float32)
    big[:, 45:106, 45:106] = cube
    t = galnet.predict(big, PSF, model=tiny_model, rebin=1)
    assert len(t) == 3 and not np.any(t["flags"] & int(Flag.PADDED))


def test_masked_arrays_quantities_and_integers(cube, tiny_model):
    from astropy import units as u

    mask = np.zeros(cube.shape, bool)
    mask[:, :, :6] = True
    ref = galnet.predict(cube, PSF, mask=mask, model=tiny_model)
    _same(galnet.predict(np.ma.MaskedArray(cube, mask), PSF, model=tiny_model), ref)
    _same(galnet.predict(cube * u.adu, PSF, mask=mask, model=tiny_model), ref)
    ints = np.round(cube * 100).astype(">i4")
    _same(galnet.predict(ints, PSF, model=tiny_model),
          galnet.predict(ints.astype(np.float32), PSF, model=tiny_model))


def test_list_of_different_sizes_keeps_order(cube, tiny_model):
    stamps = [cube[0], cube[1][5:-5, 3:-3], cube[2], cube[0][2:-2, 2:-2]]
    t = galnet.predict(stamps, PSF, model=tiny_model, chunk=1)
    assert list(t["id"]) == [0, 1, 2, 3]
    _same(t[[0, 2]], galnet.predict(cube[[0, 2]], PSF, model=tiny_model))
    _same(t[[1]], galnet.predict(cube[1][5:-5, 3:-3], PSF, model=tiny_model))
    assert list(t["flags"] & int(Flag.PADDED) > 0) == [False, True, False, True]
    # one PSF per element, and per-element sigma
    t2 = galnet.predict(stamps, [PSF] * 4, [np.full(s.shape, SIGMA) for s in stamps],
                        model=tiny_model)
    assert list(t2["id"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(_v(t2["x"]), _v(t["x"]), rtol=1e-5)


@pytest.mark.parametrize("kind", ["std", "var", "ivar"])
def test_nddata_uncertainty_kinds_agree(cube, tiny_model, kind):
    unc = {"std": StdDevUncertainty(np.full((61, 61), SIGMA)),
           "var": VarianceUncertainty(np.full((61, 61), SIGMA**2)),
           "ivar": InverseVariance(np.full((61, 61), SIGMA**-2))}[kind]
    t = galnet.predict(NDData(cube[0], uncertainty=unc), PSF, model=tiny_model, zeropoint=ZP)
    ref = galnet.predict(cube[0], PSF, np.full((61, 61), SIGMA), model=tiny_model, zeropoint=ZP)
    _same(t, ref)


def test_nddata_mask_meta_and_ccddata(cube, tiny_model):
    mask = np.zeros((61, 61), bool)
    mask[:, :8] = True
    nd = NDData(cube[0], mask=mask, meta={"MAGZERO": 25.0, "PIXSCALE": 0.25})
    t = galnet.predict(nd, PSF, model=tiny_model)
    ref = galnet.predict(cube[0], PSF, mask=mask, model=tiny_model, zeropoint=25.0,
                         pixel_scale=0.25)
    _same(t, ref)
    assert t.meta["zeropoint"] == 25.0 and t.meta["pixel_scale"] == 0.25
    assert t.meta["provenance"]["sources"] == {"zeropoint": "images meta MAGZERO",
                                               "pixel_scale": "images meta PIXSCALE"}
    # an argument wins over the meta
    assert galnet.predict(nd, PSF, model=tiny_model, zeropoint=30.0).meta["zeropoint"] == 30.0
    ccd = CCDData(cube[0], unit="adu", mask=mask,
                  uncertainty=StdDevUncertainty(np.full((61, 61), SIGMA)))
    t = galnet.predict([ccd, ccd], PSF, model=tiny_model)
    assert len(t) == 2 and list(t["id"]) == [0, 1]


def _wcs(scale_arcsec: float = 0.2) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [100.0, 100.0]
    return w


def test_cutout2d_positions_map_to_the_parent(cube, tiny_model):
    parent = np.zeros((200, 220), np.float32)
    parent[50:111, 70:131] = cube[0]
    c = Cutout2D(parent, (100, 80), (61, 61), wcs=_wcs())
    t = galnet.predict(c, PSF, model=tiny_model, zeropoint=ZP)
    x0, y0 = c.origin_original
    np.testing.assert_allclose(_v(t["x_original"]), _v(t["x"]) + x0)
    np.testing.assert_allclose(_v(t["y_original"]), _v(t["y"]) + y0)
    assert t.meta["pixel_scale"] == pytest.approx(0.2)
    assert t.meta["provenance"]["sources"]["pixel_scale"] == "images WCS"
    sky = _wcs().pixel_to_world(_v(t["x_original"]), _v(t["y_original"]))
    assert float(t["ra"][0].value) == pytest.approx(sky.ra.deg[0], abs=1e-9)
    assert float(t["dec"][0].value) == pytest.approx(sky.dec.deg[0], abs=1e-9)
    _same(t, galnet.predict(cube[0], PSF, model=tiny_model, zeropoint=ZP, pixel_scale=0.2))


def test_psf_cube_and_fits_file_names(cube, tiny_model, tmp_path):
    t = galnet.predict(cube, np.stack([PSF] * 3), model=tiny_model)
    _same(t, galnet.predict(cube, PSF, model=tiny_model))
    fits.PrimaryHDU(cube).writeto(tmp_path / "st.fits")
    fits.PrimaryHDU(PSF).writeto(tmp_path / "psf.fits")
    _same(galnet.predict(str(tmp_path / "st.fits"), tmp_path / "psf.fits", model=tiny_model), t)


# ------------------------------------------------------------------------------------------
# Bad inputs: one-line errors
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, exc, match", [
    (lambda c: dict(images=c[0, 0]), GalnetValueError, r"images: expected a 2-D or 3-D array"),
    (lambda c: dict(images=c[None]), GalnetValueError, r"images: expected a 2-D or 3-D array"),
    (lambda c: dict(images=np.array(["a", "b"])), GalnetValueError, "not a numeric array"),
    (lambda c: dict(images=c > 0), GalnetValueError, r"images: not a numeric array \(dtype bool"),
    (lambda c: dict(images=[]), GalnetValueError, "images: an empty list"),
    (lambda c: dict(images=[c[0], c]), GalnetValueError, r"images\[1\]: a list of images takes"),
    (lambda c: dict(images=c, sigma=np.ones((3, 61, 60))), GalnetValueError,
     r"sigma: shape \(3, 61, 60\) does not match"),
    (lambda c: dict(images=c, mask=np.zeros((2, 61, 61))), GalnetValueError,
     r"mask: shape \(2, 61, 61\) does not match"),
    (lambda c: dict(images=[c[0], c[1]], sigma=[np.ones((61, 61))]), GalnetValueError,
     "sigma: expected 2 elements"),
    (lambda c: dict(images=[c[0], c[1]], sigma=np.ones((61, 61))), GalnetValueError,
     "sigma: give a list of 2 arrays"),
    (lambda c: dict(images=c, psf=None), GalnetPSFError, "psf: a PSF is required"),
    (lambda c: dict(images=c, psf=np.full((25, 25), np.nan)), GalnetPSFError,
     "psf: contains non-finite values"),
    (lambda c: dict(images=c, psf=np.ones(25)), GalnetValueError, "psf: expected a 2-D or 3-D"),
    (lambda c: dict(images=c, psf=np.ones((2, 25, 25))), GalnetPSFError,
     "psf: a cube of 2 PSFs for 3 stamps"),
    (lambda c: dict(images=c, psf=np.ones((24, 24))), GalnetPSFError, "odd sizes"),
    (lambda c: dict(images=NDData(c[0], uncertainty=UnknownUncertainty(np.ones((61, 61))))),
     GalnetValueError, "uncertainty UnknownUncertainty is not supported"),
    (lambda c: dict(images=np.full((61, 61), np.nan)), GalnetValueError, "no finite, unmasked"),
    (lambda c: dict(images=c, ids=[1, 2]), GalnetValueError, "ids: expected 3 values"),
    (lambda c: dict(images=c, device="gpu0"), GalnetValueError, "gpu0"),
])
def test_predict_bad_inputs_one_line(cube, tiny_model, make, exc, match):
    kw = {"psf": PSF, **make(cube)}
    with pytest.raises(exc, match=match) as err:
        galnet.predict(model=tiny_model, **kw)
    assert "\n" not in str(err.value)


def test_fit_bad_options(cube):
    with pytest.raises(GalnetValueError, match="sky must be 'none' or 'flat'"):
        galnet.fit(cube, PSF, sky="plane")
    with pytest.raises(GalnetValueError, match="refine does not combine with chi2=False"):
        galnet.predict(cube, PSF, refine=True, chi2=False)


def test_fit_records_the_prior_it_used(cube, tiny_model):
    """The network prior is on by default (docs/fit.md "The guard"); ``nn_prior=False`` (its old
    name) turns it off, and the provenance says which (it used to say False while it was on)."""
    sig = np.full_like(cube[:2], SIGMA)
    on = galnet.fit(cube[:2], PSF, sig, model=tiny_model, zeropoint=ZP)
    off = galnet.fit(cube[:2], PSF, sig, model=tiny_model, zeropoint=ZP, nn_prior=False)
    assert on.meta["provenance"]["options"]["prior"] is True
    assert off.meta["provenance"]["options"]["prior"] is False
    assert on.meta["fit"]["prior"] is True and off.meta["fit"]["prior"] is False
