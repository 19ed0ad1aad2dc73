"""galnet.io.fits / cutouts: bad input files and positions give one-line errors naming the file
or the column (never an astropy traceback)."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.cutouts import load_frame, load_stamps
from galnet.io.fits import open_fits
from galnet.io.psf import psfex_hdu_from_legacypipe


def _psf(size=25):
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2.0
    return np.exp(-(xx**2 + yy**2) / (2 * 1.7**2))


def _stamps(tmp_path, name="s.fits", n=4):
    data = np.random.default_rng(0).normal(0, 0.1, (n, 61, 61)).astype(np.float32)
    path = tmp_path / name
    fits.HDUList([fits.PrimaryHDU(data), fits.ImageHDU(np.full_like(data, 0.1), name="SIGMA")]
                 ).writeto(path)
    return path


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize("cut", [0.3, 0.49, 0.51, 0.9, 0.999])
def test_truncated_stamps_file(tmp_path, cut):
    path = _stamps(tmp_path)
    data = path.read_bytes()
    bad = tmp_path / "trunc.fits"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(GalnetFileError, match=r"trunc\.fits: (truncated|not a readable)") as e:
        load_stamps(bad, _psf())
    _one_line(e)


def test_truncated_extension_header_is_not_silently_dropped(tmp_path):
    path = _stamps(tmp_path)
    data = path.read_bytes()
    first = 2880 + 4 * 61 * 61 * 4  # primary header + data
    first += -first % 2880
    bad = tmp_path / "trunc.fits"
    bad.write_bytes(data[: first + 1000])  # SIGMA header cut in the middle
    with pytest.raises(GalnetFileError, match=r"trunc\.fits: truncated or corrupt"):
        load_stamps(bad, _psf())


def test_truncated_psf_file(tmp_path):
    fits.PrimaryHDU(_psf(101)).writeto(tmp_path / "psf.fits")
    data = (tmp_path / "psf.fits").read_bytes()
    (tmp_path / "p.fits").write_bytes(data[:-3000])
    with pytest.raises(GalnetFileError, match=r"p\.fits: truncated"):
        load_stamps(np.zeros((2, 61, 61)) + 1, tmp_path / "p.fits")


@pytest.mark.parametrize("content,msg", [
    (b"", "empty file"),
    (b"hello, this is not FITS\n" * 200, "not a readable FITS file"),
    (b"\x00" * 5000, "not a readable FITS file"),
])
def test_not_fits(tmp_path, content, msg):
    path = tmp_path / "x.fits"
    path.write_bytes(content)
    with pytest.raises(GalnetFileError, match=rf"x\.fits: {msg}") as e:
        load_stamps(path, _psf())
    _one_line(e)
    with pytest.raises(GalnetFileError, match=rf"x\.fits: {msg}"):
        load_stamps(np.ones((1, 61, 61)), path)  # as a PSF


def test_no_image_data(tmp_path):
    fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(Table({"a": [1, 2]}))]).writeto(
        tmp_path / "t.fits")
    with pytest.raises(GalnetFileError, match=r"t\.fits: no image HDU with data"):
        load_stamps(tmp_path / "t.fits", _psf())
    fits.PrimaryHDU().writeto(tmp_path / "h.fits")
    with pytest.raises(GalnetFileError, match=r"h\.fits: no image HDU with data"):
        load_stamps(tmp_path / "h.fits", _psf())


def test_open_fits_closes_on_error(tmp_path):
    (tmp_path / "x.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    with pytest.raises(GalnetFileError, match=r"x\.fits: "):
        open_fits(tmp_path / "x.fits", "images")


@pytest.mark.parametrize("suffix", [".ecsv", ".csv"])
def test_positions_as_strings(tmp_path, suffix):
    frame = np.random.default_rng(1).normal(0, 0.1, (200, 200)).astype(np.float32)
    t = Table({"x": ["abc", "50"], "y": ["60", "70"]})
    path = tmp_path / f"pos{suffix}"
    t.write(path)
    with pytest.raises(GalnetValueError, match=r"pos\.\w+: column 'x' is not numeric") as e:
        load_frame(frame, path, _psf())
    _one_line(e)
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [150.0, 2.0], [100.0, 100.0], [-5e-5, 5e-5]
    fits.PrimaryHDU(frame, w.to_header()).writeto(tmp_path / "frame.fits")
    with pytest.raises(GalnetValueError, match="positions: column 'RA' is not numeric"):
        load_frame(tmp_path / "frame.fits", Table({"RA": ["a"], "dec": [1.0]}), _psf())
    with pytest.raises(GalnetValueError, match="positions: expected a table or an"):
        load_frame(frame, [["a", "b"]], _psf())
    with pytest.raises(GalnetValueError, match="positions: not a table of equal-length"):
        load_frame(frame, {"x": [1.0, 2.0], "y": [1.0]}, _psf())


def test_masked_positions_are_nonfinite(tmp_path):
    from astropy.table import MaskedColumn

    frame = np.ones((200, 200), np.float32)
    t = Table({"x": MaskedColumn([50.0, 60.0], mask=[False, True]), "y": [50.0, 60.0]})
    with pytest.raises(GalnetValueError, match="1 non-finite positions"):
        load_frame(frame, t, _psf())


def test_psf_positions_as_strings():
    with pytest.raises(GalnetValueError, match="psf_positions: expected"):
        load_stamps(np.ones((2, 61, 61)), _psf(), psf_positions=[["a", "b"], ["c", "d"]])


def test_psfex_hdu_from_legacypipe(tmp_path):
    basis = np.random.default_rng(0).random((3, 25, 25)).astype(np.float32)
    cols = {"psf_mask": basis[None]}
    keys = {"polnaxis": 2, "polname1": "X_IMAGE", "polname2": "Y_IMAGE", "polzero1": 1000.0,
            "polzero2": 2000.0, "polscal1": 2000.0, "polscal2": 4000.0, "polngrp": 1,
            "polgrp1": 1, "polgrp2": 1, "poldeg1": 1, "psfnaxis": 3, "psfaxis1": 25,
            "psfaxis2": 25, "psfaxis3": 3, "psf_samp": 1.0, "psf_fwhm": 3.0}
    cols.update({k: [v] for k, v in keys.items()})
    path = tmp_path / "legacy.fits"
    Table(cols).write(path)
    for src in (path, fits.open(path)[1]):
        hdu = psfex_hdu_from_legacypipe(src)
        assert hdu.header["POLNAME1"] == "X_IMAGE" and hdu.header["PSFAXIS3"] == 3
        np.testing.assert_array_equal(hdu.data["PSF_MASK"][0], basis)


def test_implausible_zeropoint(tmp_path):
    imgs = np.random.default_rng(2).normal(0, 0.1, (2, 61, 61))
    with pytest.raises(GalnetValueError, match=r"zeropoint must be an AB magnitude in \[-100,"):
        load_stamps(imgs, _psf(), zeropoint=1e30)
    hdr = fits.Header({"MAGZERO": 1e30})
    fits.PrimaryHDU(imgs, hdr).writeto(tmp_path / "zp.fits")
    with pytest.raises(GalnetValueError, match=r"zp\.fits header MAGZERO must be an AB magnitude"):
        load_stamps(tmp_path / "zp.fits", _psf())
    b = load_stamps(imgs, _psf(), zeropoint=-48.6)  # erg/s/cm^2/Hz images
    assert b.zeropoint == -48.6 and b.meta["zeropoint_source"] == "argument"
    assert load_stamps(imgs, _psf()).meta["zeropoint_source"] == "preset hsc-r"


@pytest.mark.parametrize("opener", ["gzip", "bz2"])
def test_compressed_fits_is_read_and_a_cut_stream_refused(tmp_path, opener):
    """A .gz/.bz2 FITS file is smaller on disk than its HDUs: the truncation check must not
    refuse it (it did: "truncated FITS file"), and a cut compressed stream is one line."""
    import bz2
    import gzip

    raw = _stamps(tmp_path).read_bytes()
    mod = {"gzip": gzip, "bz2": bz2}[opener]
    good = tmp_path / f"s.fits.{'gz' if opener == 'gzip' else 'bz2'}"
    good.write_bytes(mod.compress(raw))
    batch = load_stamps(good, _psf(), pixel_scale=0.168, zeropoint=27.0)
    assert batch.images.shape[0] == 4
    cut = tmp_path / f"cut{good.suffix}"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(GalnetFileError, match="cut") as ei:
        load_stamps(cut, _psf(), pixel_scale=0.168, zeropoint=27.0)
    _one_line(ei)
