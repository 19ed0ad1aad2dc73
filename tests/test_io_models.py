"""galnet.io.models: one multi-extension FITS of models/residuals with ids, cutout origins and a
WCS per object, written atomically (an interrupted run leaves nothing)."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.batch import StampBatch
from galnet.io.models import ModelWriter, object_wcs, read_models, write_models


def _batch(n=4, S=9, wcs=None):
    rng = np.random.default_rng(0)
    z = np.zeros(n)
    mask = np.zeros((n, S, S), bool)
    mask[:, 0, 0] = True
    return StampBatch(images=rng.normal(size=(n, S, S)).astype(np.float32),
                      sigma=np.ones((n, S, S), np.float32), mask=mask,
                      psfs=np.zeros((n, 3, 3), np.float32), flags=np.zeros(n, np.int64),
                      ids=np.arange(10, 10 + n), rebin=np.array([1, 2, 1, 3])[:n],
                      x0=np.arange(n) * 100.0, y0=np.arange(n) * 50.0 - 3, input_x=z + 1,
                      input_y=z + 2, sky_rms=z + 1, pixel_scale=0.2, zeropoint=27.0, wcs=wcs)


def _wcs():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [150.0, 2.0], [1000.5, 800.0], [-5e-5, 5e-5]
    return w


def test_models_file_layout(tmp_path):
    b = _batch(wcs=_wcs())
    models = np.ones_like(b.images)
    path = tmp_path / "models.fits"
    with ModelWriter(path, meta={"command": "galnet predict"}) as w:
        w.add(b, models[:3], start=0)
        w.add(b.select(slice(3, 4)), models[3:])
    with fits.open(path) as h:
        assert [x.name for x in h] == ["PRIMARY", "DATA", "MODEL", "RESIDUAL", "MASK", "SIGMA",
                                       "OBJECTS"]
        assert h[0].header["NOBJ"] == 4 and h["MASK"].data.dtype == np.uint8
    mf = read_models(path)
    m, r, obj, meta = mf.cube("model"), mf.cube("residual"), mf.objects, mf.meta
    np.testing.assert_array_equal(m, models)
    np.testing.assert_array_equal(mf.cube("data"), b.images)
    np.testing.assert_array_equal(mf.cube("mask"), b.mask)
    np.testing.assert_allclose(r[:, 1:, 1:], (b.images - models)[:, 1:, 1:])
    assert np.isnan(r[:, 0, 0]).all()
    assert mf[12].rebin == 1 and mf[11].x0 == 100.0 and 99 not in mf and mf["13"].id == 13
    with pytest.raises(KeyError, match="no object with id 99"):
        mf[99]
    # data/mask/sigma of the whole batch are sliced like the models; of the n planes, taken as is
    other = np.zeros_like(b.mask)
    other[:, 4, 4] = True
    with ModelWriter(tmp_path / "m2.fits") as w:
        w.add(b, models[2:], start=2, mask=other, data=b.images[2:] + 1)
    with read_models(tmp_path / "m2.fits") as m2:
        np.testing.assert_array_equal(m2.cube("mask"), other[2:])
        np.testing.assert_array_equal(m2.cube("data"), b.images[2:] + 1)
        assert m2.ids == [12, 13]
    assert obj["id"].tolist() == [10, 11, 12, 13] and obj["rebin"].tolist() == [1, 2, 1, 3]
    np.testing.assert_array_equal(obj["x0"], b.x0)
    assert meta == {"command": "galnet predict"}
    # each object's WCS maps its stamp pixels to the same sky as the frame pixels they came from
    frame = _wcs()
    for i in range(4):
        k, X, Y = b.rebin[i], 3.0, 5.0
        ow = object_wcs(obj, i)
        sky = ow.pixel_to_world(X, Y)
        ref = frame.pixel_to_world(b.x0[i] + k * X + (k - 1) / 2, b.y0[i] + k * Y + (k - 1) / 2)
        assert sky.separation(ref).arcsec < 1e-6


def test_models_without_wcs(tmp_path):
    b = _batch()
    write_models(tmp_path / "m.fits", b, np.zeros_like(b.images))
    obj = read_models(tmp_path / "m.fits").objects
    assert object_wcs(obj, 0) is None and "CRPIX1" not in obj.colnames


def test_interrupted_run_leaves_nothing(tmp_path):
    b = _batch()
    path = tmp_path / "models.fits"
    with pytest.raises(KeyboardInterrupt):
        with ModelWriter(path) as w:
            w.add(b, np.zeros_like(b.images))
            raise KeyboardInterrupt  # Ctrl-C half-way through a run
    assert list(tmp_path.iterdir()) == []


def test_failure_during_write_leaves_nothing(tmp_path, monkeypatch):
    b = _batch()
    path = tmp_path / "models.fits"
    real = fits.HDUList.writeto

    def broken(self, name, *a, **kw):
        with open(name, "wb") as f:  # half a file, then the interrupt
            f.write(b"SIMPLE  = " + b" " * 4000)
        raise KeyboardInterrupt

    monkeypatch.setattr(fits.HDUList, "writeto", broken)
    with pytest.raises(KeyboardInterrupt):
        write_models(path, b, np.zeros_like(b.images))
    monkeypatch.setattr(fits.HDUList, "writeto", real)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_refused_before_work(tmp_path):
    path = tmp_path / "models.fits"
    path.write_text("old")
    with pytest.raises(GalnetFileError, match=r"models\.fits exists \(use --overwrite\)"):
        ModelWriter(path)
    b = _batch()
    write_models(path, b, np.zeros_like(b.images), overwrite=True)
    assert read_models(path).cube("model").shape == b.images.shape
    with pytest.raises(GalnetFileError, match="not a galnet models file"):
        fits.PrimaryHDU(np.zeros((3, 3))).writeto(tmp_path / "x.fits")
        read_models(tmp_path / "x.fits")


def test_mixed_stamp_sizes_and_own_arrays(tmp_path):
    """add_arrays with stamps of two sizes (frame pipeline: big galaxies in bigger cutouts): one
    DATA/MODEL/RESIDUAL/MASK set per size (EXTVER), OBJECTS gives group and plane."""
    rng = np.random.default_rng(1)
    shapes = [(9, 9), (15, 13), (9, 9)]
    data = [rng.normal(size=s).astype(np.float32) for s in shapes]
    model = [np.full(s, 0.5, np.float32) for s in shapes]
    mask = [np.zeros(s, bool) for s in shapes]
    mask[1][2, 3] = True
    path = tmp_path / "frame.fits"
    with ModelWriter(path) as w:
        w.add_arrays(ids=["a", "b", "c"], data=data, model=model, mask=mask, x0=[0, 10, 20],
                     y0=[5, 6, 7], rebin=1, input_x=[4, 16, 24], input_y=[9, 13, 11],
                     wcs=_wcs())
    with fits.open(path) as h:
        assert [(x.name, x.ver) for x in h[1:]] == [
            ("DATA", 1), ("MODEL", 1), ("RESIDUAL", 1), ("MASK", 1),
            ("DATA", 2), ("MODEL", 2), ("RESIDUAL", 2), ("MASK", 2), ("OBJECTS", 1)]
        assert h["DATA", 1].data.shape == (2, 9, 9) and h["DATA", 2].data.shape == (1, 15, 13)
        assert h[0].header["NGROUP"] == 2
    mf = read_models(path)
    assert mf.ids == ["a", "b", "c"]
    assert mf.objects["group"].tolist() == [1, 2, 1] and mf.objects["plane"].tolist() == [0, 0, 1]
    assert mf.objects["ny"].tolist() == [9, 15, 9] and mf.objects["nx"].tolist() == [9, 13, 9]
    for i, o in enumerate(mf):
        np.testing.assert_array_equal(o.data, data[i])
        np.testing.assert_array_equal(o.mask, mask[i])
        good = ~mask[i]
        np.testing.assert_allclose(o.residual[good], (data[i] - model[i])[good])
        assert np.isnan(o.residual[~good]).all() and o.sigma is None
    assert mf["b"].wcs is not None and mf["b"].x0 == 10.0
    with pytest.raises(GalnetValueError, match="several sizes"):
        mf.cube("data")
    mf.close()
    with pytest.raises(GalnetValueError, match="differ in shape"):
        ModelWriter(tmp_path / "bad.fits").add_arrays(
            ids=[1], data=[data[0]], model=[model[1]], mask=[mask[0]], x0=0, y0=0, rebin=1,
            input_x=0, input_y=0)


def test_first_layout_still_read(tmp_path):
    """A file of the first layout (MODEL, RESIDUAL, OBJECTS only): data = model + residual,
    mask = NaN residual pixels."""
    from astropy.table import Table

    model = np.ones((2, 5, 5), np.float32)
    resid = np.full((2, 5, 5), 0.25, np.float32)
    resid[1, 0, 0] = np.nan
    objects = fits.table_to_hdu(Table({"id": [3, 4], "x0": [0.0, 1.0], "y0": [0.0, 1.0],
                                       "rebin": [1, 1], "input_x": [2.0, 3.0],
                                       "input_y": [2.0, 3.0]}))
    objects.name = "OBJECTS"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(model, name="MODEL"),
                  fits.ImageHDU(resid, name="RESIDUAL"), objects]).writeto(tmp_path / "old.fits")
    with read_models(tmp_path / "old.fits") as mf:
        o = mf[4]
        assert o.mask[0, 0] and o.mask.sum() == 1
        np.testing.assert_allclose(o.data[1:], 1.25)
        np.testing.assert_array_equal(mf.cube("model"), model)
