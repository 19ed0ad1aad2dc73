"""``galnet predict|fit --frame IMAGE --detect``: the catalogue with units, the models file, and
one-line usage errors (exit status 2)."""

from __future__ import annotations

import numpy as np
import pytest
from test_frame import write_frame

from galnet.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_frame(tmp_path_factory.mktemp("frame"))


def test_predict_frame_detect_writes_catalogue(files, tmp_path, capsys):
    from astropy import units as u

    from galnet.io.catalog import read_catalog

    frame, psf, sigma = files
    out = tmp_path / "cat.ecsv"
    rc = main(["predict", "--frame", str(frame), "--psf", str(psf), "--detect", "--sigma",
               str(sigma), "--out", str(out), "-q"])
    assert rc == 0
    t = read_catalog(out)
    assert len(t) == 5
    assert t["x"].unit == u.pix and t["ra"].unit == u.deg and t["re_arcsec"].unit == u.arcsec
    assert np.all((t["ra"].value > 149.9) & (t["ra"].value < 150.1))
    assert t.meta["zeropoint"] == 27.0 and abs(t.meta["pixel_scale"] - 0.2) < 1e-9
    assert "provenance" in t.meta and "--detect" in str(t.meta["provenance"]["command"])
    assert "wrote 5 galaxies" in capsys.readouterr().out


def test_fit_frame_detect_with_models(files, tmp_path):
    from galnet.io.catalog import read_catalog
    from galnet.io.models import read_models

    frame, psf, sigma = files
    out, models = tmp_path / "fit.fits", tmp_path / "models.fits"
    rc = main(["fit", "--frame", str(frame), "--psf", str(psf), "--detect", "--weight",
               str(sigma), "--out", str(out), "--save-models", str(models), "-q"])
    assert rc == 0
    t = read_catalog(out)
    assert {"niter", "converged", "chi2nu_nn", "psf_mag", "n_neighbours"} <= set(t.colnames)
    m = read_models(models)
    assert set(m.ids) == set(np.asarray(t["id"]).tolist())


def test_predict_frame_positions(files, tmp_path):
    from astropy.table import Table

    from galnet.io.catalog import read_catalog

    frame, psf, sigma = files
    pos = tmp_path / "pos.ecsv"
    Table({"x": [40.3, 60.0], "y": [45.1, 125.2], "id": [7, 9]}).write(pos)
    out = tmp_path / "cat.ecsv"
    rc = main(["predict", "--frame", str(frame), "--psf", str(psf), "--positions", str(pos),
               "--refine", "--out", str(out), "-q"])
    assert rc == 0
    t = read_catalog(out)
    assert list(t["id"]) == [7, 9]
    assert np.allclose(t["x"].value, [40.3, 60.0], atol=0.5)


@pytest.mark.parametrize("extra, message", [
    (["--detect", "--positions", "P.ecsv"], "--detect or --positions, not both"),
    ([], "--frame needs --positions"),
    (["--detect", "--weight", "W.fits", "--variance", "V.fits"], "one noise map"),
    (["--detect", "--psf-positions", "P.ecsv"], "--psf-positions goes with --images"),
    (["--detect", "--no-chi2"], "--no-chi2 does not apply to --frame"),
])
def test_frame_usage_errors(files, tmp_path, capsys, extra, message):
    frame, psf, _ = files
    rc = main(["predict", "--frame", str(frame), "--psf", str(psf), "--out",
               str(tmp_path / "c.ecsv"), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.ecsv").exists()


def test_frame_usage_errors_other(files, tmp_path, capsys):
    frame, psf, _ = files
    out = str(tmp_path / "c.ecsv")
    cases = [
        (["predict", "--frame", str(frame), "--detect", "--out", out], "--psf"),  # no PSF
        (["predict", "--images", str(frame), "--psf", str(psf), "--detect", "--out", out],
         "--detect goes with --frame"),
        (["fit", "--frame", str(frame), "--psf", str(psf), "--detect", "--sky", "flat",
          "--out", out], "--sky flat does not apply to --frame"),
    ]
    for argv, message in cases:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, argv
        assert message in err, err
        assert len(err.strip().splitlines()) == 1


def test_frame_missing_file_is_one_line(files, tmp_path, capsys):
    _, psf, _ = files
    rc = main(["predict", "--frame", str(tmp_path / "nope.fits"), "--psf", str(psf),
               "--detect", "--out", str(tmp_path / "c.ecsv")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "nope.fits" in err and len(err.strip().splitlines()) == 1
