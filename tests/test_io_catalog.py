"""galnet.io.catalog: schema-driven tables, provenance, atomic ECSV/FITS/Parquet round trips
(meta, descriptions and flag definitions kept), one-line errors."""

import hashlib
import sys

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import QTable, Table

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.flags import Flag
from galnet.io.batch import StampBatch
from galnet.io.catalog import (
    catalog_columns,
    catalog_table,
    provenance,
    read_catalog,
    sha256_file,
    stamp_catalog,
    write_catalog,
)
from galnet.params import column_descriptions


def _table():
    return catalog_table({"id": np.arange(3), "x": [1.0, 2.0, 3.0], "re_arcsec": [0.5, 1, 2],
                          "n": [1.0, 4.0, 2.5], "flags": np.array([0, 4, 65])},
                         {"preset": "hsc-r", "pixel_scale": 0.168,
                          "provenance": provenance(command="galnet predict a.fits",
                                                   inputs={"images": "a.fits"},
                                                   options={"chunk": 4096, "rebin": "auto"},
                                                   sources={"zeropoint": "header MAGZERO"})})


def test_catalog_table_units_descriptions_flags():
    t = _table()
    assert isinstance(t, QTable)
    assert t["x"].unit == u.pix and t["re_arcsec"].unit == u.arcsec
    assert not hasattr(t["n"], "unit") or t["n"].unit in (None, u.dimensionless_unscaled)
    assert t["x"].info.description == column_descriptions()["x"]
    assert t.meta["flags"] == {f.name: int(f) for f in Flag}
    q = catalog_table({"x": [1.0] * u.arcsec})  # a Quantity keeps its unit
    assert q["x"].unit == u.arcsec and "flags" not in q.meta


@pytest.mark.parametrize("suffix", [".ecsv", ".fits", ".parquet"])
def test_roundtrip_keeps_meta_descriptions_flags(tmp_path, suffix):
    t = _table()
    path = write_catalog(t, tmp_path / f"cat{suffix}")
    r = read_catalog(path)
    assert r.colnames == t.colnames
    assert r["x"].unit == u.pix and r["re_arcsec"].unit == u.arcsec
    assert r["x"].info.description == column_descriptions()["x"]
    assert r.meta["flags"] == t.meta["flags"]  # FITS: restored from the FLAGnn cards / GNMETA
    assert r.meta["provenance"] == t.meta["provenance"]
    assert r.meta["pixel_scale"] == 0.168


def test_fits_flag_cards(tmp_path):
    t = catalog_table({"flags": np.array([0, 1])})
    path = write_catalog(t, tmp_path / "cat.fits")
    hdr = fits.getheader(path, 1)
    assert hdr["FLAG05"] == "NONFINITE" and hdr.comments["FLAG05"].startswith("non-finite")
    assert hdr["FLAG00"] == "EDGE"
    # a reader that knows only the cards (no GNMETA) gets the definitions back too
    with fits.open(path) as h:
        del h[1].header["GNMETA"]
        h.writeto(tmp_path / "bare.fits")
    r = read_catalog(tmp_path / "bare.fits")
    assert r.meta["flags"] == {f.name: int(f) for f in Flag}


def test_parquet_needs_no_pandas(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    path = write_catalog(_table(), tmp_path / "cat.parquet")
    r = read_catalog(path)
    assert r["x"].unit == u.pix and r.meta["preset"] == "hsc-r"


def test_write_refuses_existing_unless_overwrite(tmp_path):
    path = tmp_path / "cat.ecsv"
    write_catalog(_table(), path)
    with pytest.raises(GalnetFileError, match=r"cat\.ecsv exists \(use --overwrite\)"):
        write_catalog(_table(), path)
    write_catalog(_table()[:1], path, overwrite=True)
    assert len(read_catalog(path)) == 1
    (tmp_path / "d.ecsv").mkdir()
    with pytest.raises(GalnetFileError, match="is a directory"):
        write_catalog(_table(), tmp_path / "d.ecsv", overwrite=True)


def test_write_unserialisable_is_one_line(tmp_path):
    t = QTable({"x": [object(), object()]})
    with pytest.raises(GalnetFileError, match="cannot write catalogue") as e:
        write_catalog(t, tmp_path / "c.fits")
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"not a catalogue at all\x00\x01", b"SIMPLE  = T"])
@pytest.mark.parametrize("suffix", [".fits", ".ecsv", ".parquet"])
def test_read_bad_files_one_line(tmp_path, content, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(GalnetFileError, match=r"bad\.\w+: ") as e:
        read_catalog(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("frac", [0.5, 0.98])
def test_read_truncated_fits_catalogue(tmp_path, frac):
    path = write_catalog(catalog_table({"x": np.arange(5000.0)}), tmp_path / "c.fits")
    data = path.read_bytes()
    (tmp_path / "t.fits").write_bytes(data[: int(len(data) * frac)])
    with pytest.raises(GalnetFileError, match=r"t\.fits: truncated") as e:
        read_catalog(tmp_path / "t.fits")
    assert "\n" not in str(e.value)


def test_read_errors_and_tables(tmp_path):
    with pytest.raises(GalnetFileError, match=r"missing\.ecsv: no such file \(truth\)"):
        read_catalog(tmp_path / "missing.ecsv", "truth")
    (tmp_path / "dir.ecsv").mkdir()
    with pytest.raises(GalnetFileError, match="is a directory"):
        read_catalog(tmp_path / "dir.ecsv")
    with pytest.raises(GalnetValueError, match="unknown catalogue format"):
        read_catalog(tmp_path / "x.txt")
    with pytest.raises(GalnetValueError, match="pred must be a file path or an astropy Table"):
        read_catalog(42, "pred")
    t = Table({"a": [1, 2]})
    assert isinstance(read_catalog(t), QTable)
    q = QTable({"a": [1, 2]})
    assert read_catalog(q) is q


def test_provenance(tmp_path):
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"weights")
    p = provenance(inputs=["a.fits", tmp_path / "b.fits"], weights=w,
                   options={"zeropoint": float("nan"), "out": tmp_path / "c.ecsv"},
                   sources={"pixel_scale": "WCS"})
    assert p["galnet_version"] and p["date"].endswith("+00:00")
    assert isinstance(p["command"], str)
    assert p["weights"] == {"name": "w.safetensors", "path": str(w),
                            "sha256": hashlib.sha256(b"weights").hexdigest()}
    assert p["options"] == {"zeropoint": None, "out": str(tmp_path / "c.ecsv")}
    assert p["inputs"][1] == str(tmp_path / "b.fits") and p["sources"] == {"pixel_scale": "WCS"}
    assert provenance(command=["galnet", "fit", "a b.fits"])["command"] == "galnet fit 'a b.fits'"
    with pytest.raises(GalnetFileError, match="nope.bin: cannot read"):
        sha256_file(tmp_path / "nope.bin")


def test_stamp_catalog_maps_to_input_pixels():
    n = 2
    z = np.zeros(n)
    b = StampBatch(images=np.zeros((n, 5, 5), np.float32), sigma=np.ones((n, 5, 5), np.float32),
                   mask=np.zeros((n, 5, 5), bool), psfs=np.zeros((n, 3, 3), np.float32),
                   flags=np.array([0, 4]), ids=np.array([7, 8]), rebin=np.array([1, 2]),
                   x0=np.array([10.0, -5.0]), y0=np.array([0.0, 3.0]), input_x=z, input_y=z,
                   sky_rms=z + 1, pixel_scale=0.2, zeropoint=27.0)
    res = {k: np.array([2.0, 2.0]) for k in ("x", "y", "re_pix", "n", "q", "pa_deg")}
    res.update({f"{k}_err": np.array([0.1, 0.1]) for k in ("x", "y", "re_pix", "n", "q",
                                                           "pa_deg", "flux")})
    res.update(flux=np.array([100.0, -1.0]), chi2nu=np.ones(n), snr=np.ones(n))
    t = stamp_catalog(b, res, b.flags, {"model": "galnet"})
    assert t.colnames == catalog_columns()
    np.testing.assert_allclose(t["x"].value, [12.0, -5 + 4 + 0.5])
    np.testing.assert_allclose(t["re_pix"].value, [2.0, 4.0])
    np.testing.assert_allclose(t["re_arcsec"].value, [0.4, 0.8])
    np.testing.assert_allclose(t["mag"].value[0], 27.0 - 5.0)
    assert np.isnan(t["mag"].value[1])
    assert t.meta["zeropoint"] == 27.0 and t.meta["model"] == "galnet"
    assert t["flags"].tolist() == [0, 4]
