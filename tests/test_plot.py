"""--save-models (predict, predict --refine, fit) writes DATA, MODEL, RESIDUAL, MASK per object, and
``galnet plot`` draws data | model | residual | mask rows from it (issue 13, item 6)."""

import numpy as np
import pytest
from astropy.io import fits

from galnet.cli import main
from galnet.errors import GalnetValueError
from galnet.evaluate.fitplots import MAX_ROWS, plot_fits, select_rows
from galnet.io.catalog import read_catalog
from galnet.io.models import ModelWriter, read_models


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    """5 rendered galaxies (61x61, SIGMA extension, MAGZERO/PIXSCALE) and their PSF."""
    from galnet.profiles.render import render

    d = tmp_path_factory.mktemp("cube")
    yy, xx = np.mgrid[:25, :25] - 12.0
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.7**2))
    psf = (psf / psf.sum()).astype(np.float32)
    n = 5
    p = {"x": np.full(n, 30.3), "y": np.full(n, 29.8), "flux": np.linspace(200, 800, n),
         "re_pix": np.linspace(2.5, 6.0, n), "n": np.linspace(0.8, 3.5, n),
         "q": np.full(n, 0.7), "pa_deg": np.linspace(0, 120, n)}
    sg = np.full((n, 61, 61), 0.5, np.float32)
    im = render(p, psf, (61, 61)) + sg * np.random.default_rng(0).standard_normal(sg.shape)
    nb = {"x": [48.0], "y": [45.0], "flux": [400.0], "re_pix": [1.5], "n": [1.0], "q": [0.9],
          "pa_deg": [0.0]}
    im[2] += render(nb, psf, (61, 61))[0]  # a neighbour: the fitter masks it
    hdr = fits.Header({"MAGZERO": 27.0, "PIXSCALE": 0.168})
    fits.HDUList([fits.PrimaryHDU(im.astype(np.float32), header=hdr),
                  fits.ImageHDU(sg, name="SIGMA")]).writeto(d / "stamps.fits")
    fits.PrimaryHDU(psf).writeto(d / "psf.fits")
    return d


def _run(cube, tmp_path, cmd, *extra):
    out, mod = tmp_path / f"{cmd}.ecsv", tmp_path / f"{cmd}.fits"
    argv = [cmd, "--images", str(cube / "stamps.fits"), "--psf", str(cube / "psf.fits"), "-q",
            "--chunk", "2", "--out", str(out), "--save-models", str(mod), *extra]
    assert main(argv) == 0
    return out, mod


def _check_models_file(cat, mod, n=5):
    with fits.open(mod) as h:
        names = [x.name for x in h]
        for ext in ("DATA", "MODEL", "RESIDUAL", "MASK", "SIGMA", "OBJECTS"):
            assert ext in names, names
        assert h["DATA"].data.shape == (n, 61, 61)
    t = read_catalog(cat)
    with read_models(mod) as mf:
        assert [str(i) for i in mf.ids] == [str(i) for i in t["id"]]
        for o in mf:
            good = ~o.mask
            assert good.sum() > 1000
            np.testing.assert_allclose(o.residual[good], (o.data - o.model)[good], atol=1e-5)
            assert np.isnan(o.residual[o.mask]).all()
            np.testing.assert_allclose(o.sigma, 0.5)
    return t


@pytest.mark.parametrize("cmd,extra", [("predict", ()), ("predict", ("--refine",)),
                                       ("fit", ())])
def test_save_models_has_data_model_residual_mask(cube, tmp_path, cmd, extra):
    """Shipped weights; --chunk 2 so that planes come from several chunks."""
    cat, mod = _run(cube, tmp_path, cmd, *extra)
    t = _check_models_file(cat, mod)
    with read_models(mod) as mf:
        np.testing.assert_allclose(mf.cube("data"), fits.getdata(cube / "stamps.fits"))
        if cmd == "predict" and not extra:  # the network's model: chi2nu from these pixels
            o = mf.row(4)
            chi = np.nansum(((o.data - o.model) / o.sigma)[~o.mask] ** 2) / ((~o.mask).sum() - 7)
            assert chi == pytest.approx(float(t["chi2nu"][4]), rel=0.05)
        else:  # the fit: residuals are noise (sigma 0.5); MASK is the mask the fit used
            assert np.nanstd(mf.cube("residual")) < 0.75
            assert mf.row(2).mask[45, 48] and not mf.row(2).mask[30, 30]


@pytest.fixture(scope="module")
def run(cube, tmp_path_factory):
    return _run(cube, tmp_path_factory.mktemp("run"), "predict")


def test_plot_worst_and_ids(run, tmp_path, capsys):
    cat, mod = run
    png = tmp_path / "worst.png"
    assert main(["plot", str(cat), str(mod), "--worst", "3", "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert str(png) in capsys.readouterr().out
    png2 = tmp_path / "ids.png"
    assert main(["plot", str(cat), str(mod), "--ids", "1", "3", "--out", str(png2)]) == 0
    assert png2.stat().st_size > 10_000
    # an existing figure is refused without --overwrite, replaced with it
    assert main(["plot", str(cat), str(mod), "--ids", "1", "--out", str(png2), "-q"]) == 1
    assert main(["plot", str(cat), str(mod), "--ids", "1", "--out", str(png2),
                 "--overwrite"]) == 0
    assert not list(tmp_path.glob(".tmp-*"))


def test_plot_bad_ids_one_line_error(run, tmp_path, capsys):
    cat, mod = run
    capsys.readouterr()
    png = tmp_path / "bad.png"
    assert main(["plot", str(cat), str(mod), "--ids", "1", "77", "x9", "--out", str(png)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "77" in err and "x9" in err and "Traceback" not in err, err
    assert not png.exists()
    assert main(["plot", str(cat), str(mod), "--worst", "0", "--out", str(png)]) == 2
    assert main(["plot", str(cat), str(mod), "--out", str(tmp_path / "f.jpg")]) == 2


class _Ids:
    def __init__(self, ids):
        self.ids = ids


def test_select_rows_worst_nan_last_and_cap():
    from astropy.table import QTable

    t = QTable({"id": [5, 6, 7, 8], "chi2nu": [1.0, np.nan, 9.0, 3.0]})
    assert select_rows(t, _Ids([5, 6, 7, 8]), worst=4) == [(2, "7"), (3, "8"), (0, "5"),
                                                           (1, "6")]
    assert select_rows(t, _Ids([5, 6, 7, 8]), ids=["6", 5], worst=1) == [(0, "5")]
    with pytest.raises(GalnetValueError, match="not in the catalogue: 9$"):
        select_rows(t, _Ids([5, 6, 7, 9]), ids=[9, 5])
    with pytest.raises(GalnetValueError, match="catalogue: 9; not in the models file: 8, 9$"):
        select_rows(t, _Ids([5, 6, 7]), ids=[8, 9])
    big = QTable({"id": np.arange(MAX_ROWS + 1), "chi2nu": np.ones(MAX_ROWS + 1)})
    with pytest.raises(GalnetValueError, match=f"at most {MAX_ROWS} rows"):
        select_rows(big, _Ids(list(range(MAX_ROWS + 1))))
    assert len(select_rows(big, _Ids(list(range(MAX_ROWS + 1))), worst=MAX_ROWS)) == MAX_ROWS


def test_plot_mixed_sizes_without_sigma(tmp_path):
    """add_arrays file with two stamp sizes and no SIGMA plane (linear residual stretch)."""
    from astropy.table import QTable

    rng = np.random.default_rng(2)
    shapes = [(31, 31), (45, 41)]
    yy, xx = np.mgrid[:45, :45]
    model = [np.exp(-((xx[:s[0], :s[1]] - s[1] // 2) ** 2 + (yy[:s[0], :s[1]] - s[0] // 2) ** 2)
                    / 20.0).astype(np.float32) * 10 for s in shapes]
    data = [m + rng.normal(0, 0.3, m.shape).astype(np.float32) for m in model]
    mask = [np.zeros(s, bool) for s in shapes]
    mask[1][:5] = True
    with ModelWriter(tmp_path / "m.fits") as w:
        w.add_arrays(ids=[101, 102], data=data, model=model, mask=mask, x0=[0, 50], y0=0,
                     rebin=1, input_x=[15, 70], input_y=[15, 22])
    cat = QTable({"id": [102, 101], "x": [70.0, 15.0], "y": [22.0, 15.0], "mag": [20.1, 21.0],
                  "chi2nu": [1.1, 0.9], "flags": [4096 | 16384, 0]})
    out = plot_fits(cat, tmp_path / "m.fits", out=tmp_path / "p.png")
    assert out.stat().st_size > 10_000
