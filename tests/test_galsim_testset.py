"""benchmarks/galsim_testset.py: the test set with the galaxies re-rendered by GalSim."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from galnet.errors import GalnetFileError
from galnet.sim.simulate import read_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import galsim_testset as gt  # noqa: E402

N_ROWS = 6  # GalSim draws ~0.05-4 s each


def test_galnet_stamps_are_the_simulator_galaxies(tiny_sim):
    """The subtracted galaxy is the one the simulator added (first block re-simulated)."""
    images, gal = gt.simulator_galaxies(tiny_sim, blocks=1)
    with h5py.File(tiny_sim) as f:
        stored, psfs, par = f["images"][:64], f["psfs"][:64], f["params"][:64]
    np.testing.assert_allclose(images, stored, rtol=0, atol=1e-6 * stored.max())
    mine = gt.galnet_stamps({k: par[k] for k in gt.SHAPE_KEYS}, psfs, (61, 61))
    assert mine.dtype == np.float32
    peak = gal.max(axis=(1, 2))
    assert (np.abs(mine - gal).max(axis=(1, 2)) / peak).max() < 1e-6


def test_convert(tiny_sim, tmp_path):
    src = tmp_path / "in.h5"
    shutil.copy(tiny_sim, src)
    with h5py.File(src, "r+") as f:  # row 1 outside GalSim's range: left out
        p = f["params"][:]
        p["n"][1] = 7.0
        p["n"][[0, 2, 3, 4, 5]] = np.clip(p["n"][[0, 2, 3, 4, 5]], 0.5, 6.0)
        f["params"][:] = p
    out = tmp_path / "out.h5"
    s = gt.convert(src, out, N_ROWS, progress=False)
    assert s["n_high_n"] == 1 and not s["failed"]
    keep = [0, 2, 3, 4, 5]
    with h5py.File(src) as a, h5py.File(out) as b:
        np.testing.assert_array_equal(b["rows"][:], keep)
        for k in ("params", "sigma", "psfs"):
            np.testing.assert_array_equal(b[k][:], a[k][:N_ROWS][keep])
        assert b.attrs["n"] == len(keep) and b.attrs["source_n"] == 256
        assert b.attrs["seed"] == a.attrs["seed"] and b.attrs["preset"] == "hsc-r"
        assert b.attrs["dropped_high_n"] == 1
        i = 2  # stamp of row 3: image changed by exactly galsim - galnet
        par = a["params"][3]
        gs, _ = gt.galsim_stamp({k: float(par[k]) for k in gt.SHAPE_KEYS}, a["psfs"][3])
        gn = gt.galnet_stamps({k: np.array([par[k]]) for k in gt.SHAPE_KEYS}, a["psfs"][3:4],
                              (61, 61))[0]
        d = b["images"][i].astype(float) - a["images"][3]
        np.testing.assert_allclose(d, gs - gn, rtol=0, atol=1e-6 * gs.max())
        cmp = b["galsim_vs_galnet"][:]
    # same conventions (centre, PA, radius, flux): the renderers agree to < 1% of the peak
    assert (cmp["max_d_peak"] < 0.01).all() and (np.abs(cmp["dflux"]) < 2e-3).all()
    np.testing.assert_allclose(cmp["max_d_peak"], s["max_d_peak"])
    assert len(read_params(out)) == len(keep)


def test_convert_refuses_its_input(tiny_sim):
    with pytest.raises(GalnetFileError, match="is the input file"):
        gt.convert(tiny_sim, tiny_sim, 1, progress=False)


def test_galsim_stamp_compact_low_n_falls_back():
    """GalSim's maxk is NaN for compact n < 0.5 truncated profiles at maxk_threshold 1e-5 (a
    test-set row): the ValueError is caught and a later attempt draws the stamp."""
    p = dict(x=27.6, y=32.55, flux=236.9, re_pix=0.722, n=0.385, q=0.134, pa_deg=30.0)
    yy, xx = np.mgrid[-12:13, -12:13]
    psf = (1 + (xx**2 + yy**2) / 12.0) ** -3.0  # Moffat, FWHM 3.5 px
    img, attempt = gt.galsim_stamp(p, psf)
    assert attempt > 0
    assert np.isfinite(img).all() and abs(img.sum() / p["flux"] - 1) < 0.01
    gn = gt.galnet_stamps({k: np.array([v]) for k, v in p.items()}, psf[None], (61, 61))[0]
    assert np.abs(img - gn).max() / img.max() < 0.005
