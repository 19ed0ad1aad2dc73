"""galnet.interop without PyImfit: the export limits agree with the parameter table, and bad
inputs of the export and of the readers give one-line errors naming the column, option or file."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import QTable

from galnet.cli import main
from galnet.errors import GalnetFileError, GalnetValueError
from galnet.interop import (
    DEFAULT_LIMITS,
    ImfitLimits,
    export_catalog,
    parse_imfit_config,
    read_galfit_feedme,
    read_galfit_header,
    read_imfit_bestfit,
)
from galnet.io.catalog import write_catalog
from galnet.params import SERSIC


def _catalogue() -> QTable:
    t = QTable({"id": [1, 2], "x": [30.0, 31.0] * u.pix, "y": [30.0, 29.5] * u.pix,
                "mag": [20.0, 21.0] * u.mag, "re_pix": [4.0, 2.0] * u.pix, "n": [2.0, 1.0],
                "q": [0.5, 0.9], "pa_deg": [10.0, 120.0] * u.deg})
    t.meta["zeropoint"] = 27.0
    return t


# ---- the limits and the parameter table ------------------------------------------------------
def test_imfit_limits_lie_inside_the_parameter_table():
    lo, hi = SERSIC["n"].fit
    assert lo <= DEFAULT_LIMITS.n[0] < DEFAULT_LIMITS.n[1] <= hi
    assert DEFAULT_LIMITS.n == (0.3, 8.0)  # the training priors of every preset
    assert DEFAULT_LIMITS.q_range[0] >= SERSIC["q"].lower
    assert DEFAULT_LIMITS.q_range == pytest.approx((0.05, 2.0))
    assert DEFAULT_LIMITS.re_min >= SERSIC["re_pix"].lower
    with pytest.raises(GalnetValueError, match=r"n range \(0.1, 8.0\) .*within galnet's"):
        ImfitLimits(n=(0.1, 8.0))
    with pytest.raises(GalnetValueError, match="n range"):
        ImfitLimits(n=(0.3, 12.0))
    with pytest.raises(GalnetValueError, match=r"ell range .*q = 1 - ell >= 0.02"):
        ImfitLimits(ell=(-1.0, 0.99))
    with pytest.raises(GalnetValueError, match="re_min"):
        ImfitLimits(re_min=1e-4)
    assert ImfitLimits(n=(0.5, 6.0)).n == (0.5, 6.0)  # narrower is fine


def test_constraints_and_configs_use_the_limits(tmp_path):
    lim = ImfitLimits(n=(0.5, 6.0), ell=(-1.0, 0.9))
    export_catalog(_catalogue(), tmp_path / "g", "galfit", limits=lim)
    text = (tmp_path / "g" / "1.constraints").read_text()
    assert "n           0.5 to 6" in text and "q           0.1 to 2" in text
    export_catalog(_catalogue(), tmp_path / "i", "imfit", limits=lim)
    cfg = parse_imfit_config((tmp_path / "i" / "1.imfit.conf").read_text())
    params = dict(cfg["function_sets"][0]["functions"][0]["params"])
    assert params["n"]["limits"] == (0.5, 6.0) and params["ell"]["limits"] == (-1.0, 0.9)


# ---- export: bad catalogues and options ----------------------------------------------------
def test_export_string_column_is_a_one_line_error(tmp_path, capsys):
    t = _catalogue()
    t["x"] = ["a", "b"]  # positions given as strings
    with pytest.raises(GalnetValueError, match="catalogue column 'x' is not numeric"):
        export_catalog(t, tmp_path / "a", "imfit")
    cat = tmp_path / "cat.ecsv"
    write_catalog(t, cat)
    capsys.readouterr()
    assert main(["export", "--to", "imfit", str(cat), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err == "galnet: error: catalogue column 'x' is not numeric\n"
    assert not list(tmp_path.glob("out/*.conf"))  # nothing written


def test_export_pa_with_an_angle_unit_is_converted(tmp_path):
    t = _catalogue()
    t["pa_deg"] = np.deg2rad([10.0, 120.0]) * u.rad
    export_catalog(t, tmp_path, "imfit")
    cfg = parse_imfit_config((tmp_path / "2.imfit.conf").read_text())
    pa = dict(cfg["function_sets"][0]["functions"][0]["params"])["PA"]["value"]
    assert pa == pytest.approx(120.0)
    assert read_imfit_bestfit(tmp_path / "2.imfit.conf")["pa_deg"] == pytest.approx(120.0)


@pytest.mark.parametrize("kw, match", [
    ({"box": "a"}, "box must be an integer >= 3, got 'a'"),
    ({"box": True}, "box must be an integer"),
    ({"zeropoint": "abc"}, "zeropoint must be a finite number, got 'abc'"),
    ({"zeropoint": math.nan}, "zeropoint must be a finite number, got nan"),
    ({"pixel_scale": "x"}, "pixel_scale must be a finite number > 0"),
    ({"pixel_scale": -0.2}, "pixel_scale must be a finite number > 0"),
])
def test_export_bad_options(tmp_path, kw, match):
    with pytest.raises(GalnetValueError, match=match):
        export_catalog(_catalogue(), tmp_path, "galfit", **kw)
    assert not list(tmp_path.iterdir())  # nothing written


def test_export_bad_catalogue_type(tmp_path):
    with pytest.raises(GalnetValueError, match="catalog must be a catalogue path, an astropy "
                                               "Table or a mapping of columns, got list"):
        export_catalog([1, 2], tmp_path, "imfit", zeropoint=27.0)
    with pytest.raises(GalnetFileError, match="no such file"):
        export_catalog(tmp_path / "none.ecsv", tmp_path, "imfit")


# ---- readers: one-line errors naming the file ---------------------------------------------------
def test_readers_name_the_file(tmp_path):
    junk = tmp_path / "junk.bestfit"
    junk.write_text("junk\n")
    with pytest.raises(GalnetValueError, match=r"junk.bestfit: line 1: no value in 'junk'"):
        read_imfit_bestfit(junk)
    feedme = tmp_path / "f.feedme"
    feedme.write_text("J) 27\n 0) sersic\n 1) a b 1 1\n")
    with pytest.raises(GalnetValueError, match=r"f.feedme: bad number in the sersic component"):
        read_galfit_feedme(feedme)
    block = tmp_path / "block.fits"
    fits.PrimaryHDU(np.zeros((5, 5))).writeto(block)
    with pytest.raises(GalnetValueError, match=r"block.fits: GALFIT header: no sersic component"):
        read_galfit_header(block)
    hdr = fits.Header({"COMP_1": "sersic", "MAGZPT": "abc"})
    for k in ("XC", "YC", "MAG", "RE", "N", "AR", "PA"):
        hdr[f"1_{k}"] = "1.0 +/- 0.1"
    with pytest.raises(GalnetValueError, match="MAGZPT = 'abc' is not a number"):
        read_galfit_header(hdr)
    with pytest.raises(GalnetFileError, match="nothere.conf: no such file"):
        read_imfit_bestfit(tmp_path / "nothere.conf")


# ---- PyImfit is an extra --------------------------------------------------------------------
def test_imfit_fit_names_the_extra_without_pyimfit(monkeypatch):
    from galnet.interop import imfit_fit

    monkeypatch.setitem(sys.modules, "pyimfit", None)  # import pyimfit -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'galnet\[imfit\]'"):
        imfit_fit(np.zeros((21, 21)), np.ones((5, 5)), init={})
    code = ("import sys; sys.modules['pyimfit'] = None; import galnet.interop, galnet.evaluate; "
            "assert 'pyimfit' not in [m for m in sys.modules if sys.modules[m] is not None]")
    subprocess.run([sys.executable, "-c", code], check=True)
