"""galnet.io.models: one multi-extension FITS of models/residuals with ids, cutout origins and a
WCS per object, written atomically (an interrupted run leaves nothing)."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from galnet.errors import GalnetFileError
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
        assert [x.name for x in h] == ["PRIMARY", "MODEL", "RESIDUAL", "OBJECTS"]
        assert h[0].header["NOBJ"] == 4
    m, r, obj, meta = read_models(path)
    np.testing.assert_array_equal(m, models)
    np.testing.assert_allclose(r[:, 1:, 1:], (b.images - models)[:, 1:, 1:])
    assert np.isnan(r[:, 0, 0]).all()
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
    _, _, obj, _ = read_models(tmp_path / "m.fits")
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
    assert read_models(path)[0].shape == b.images.shape
    with pytest.raises(GalnetFileError, match="not a galnet models file"):
        fits.PrimaryHDU(np.zeros((3, 3))).writeto(tmp_path / "x.fits")
        read_models(tmp_path / "x.fits")
