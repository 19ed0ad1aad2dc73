"""galnet.evaluate: the parameter table drives the log/angle handling; tables are read through
galnet.io.catalog (Parquet with pyarrow alone); bad inputs give one-line errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from astropy import units as u
from astropy.table import QTable

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.evaluate import evaluate
from galnet.evaluate.residuals import LOG_KEYS, METRIC_KEYS, param_metrics, residuals
from galnet.io.catalog import write_catalog
from galnet.params import SERSIC, fold_diff


def _truth(n: int, seed: int = 0) -> QTable:
    rng = np.random.default_rng(seed)
    t = QTable({"id": np.arange(n)})
    t["x"] = rng.uniform(28, 32, n) * u.pix
    t["y"] = rng.uniform(28, 32, n) * u.pix
    t["mag"] = rng.uniform(18, 24, n) * u.mag
    t["re_pix"] = 10 ** rng.uniform(-0.3, 1.2, n) * u.pix
    t["n"] = 10 ** rng.uniform(-0.4, 0.8, n)
    t["q"] = rng.uniform(0.2, 1.0, n)
    t["pa_deg"] = rng.uniform(0, 180, n) * u.deg
    t["snr"] = 10 ** rng.uniform(0.7, 2.5, n)
    return t


def _noisy(t: QTable, seed: int = 1) -> QTable:
    rng = np.random.default_rng(seed)
    n = len(t)
    p = QTable({"id": t["id"]})
    for c, s in (("x", 0.3 * u.pix), ("y", 0.3 * u.pix), ("mag", 0.05 * u.mag)):
        p[c] = t[c] + rng.normal(0, 1, n) * s
    for c, s in (("re_pix", 0.08), ("n", 0.15)):
        p[c] = t[c] * np.exp(rng.normal(0, s, n))
    p["q"] = np.clip(t["q"] + rng.normal(0, 0.03, n), 0.05, 1.0)
    p["pa_deg"] = np.mod(t["pa_deg"].value + rng.normal(0, 5, n), 180) * u.deg
    return p


def test_metric_keys_follow_the_parameter_table():
    assert set(METRIC_KEYS) == set(SERSIC.names)
    assert {c for c, k in METRIC_KEYS.items() if k in LOG_KEYS} == set(SERSIC.log_names)
    m = evaluate(_noisy(_truth(200)), _truth(200))["overall"]
    for c, k in METRIC_KEYS.items():
        assert ("r2_log" in m[k]) == SERSIC[c].log, c
        assert ("n_round_excluded" in m[k]) == bool(SERSIC[c].cyclic), c


def test_angle_residuals_fold_with_the_table_period():
    t = np.array([1.0, 179.0, 90.0, 10.0])
    p = np.array([179.0, 1.0, 0.0, 40.0])
    r = residuals("pa_deg", t, p, true_q=np.full(4, 0.5))
    np.testing.assert_array_equal(r.d, fold_diff("pa_deg", p, t))
    np.testing.assert_allclose(r.d, [-2.0, 2.0, -90.0, 30.0])
    m = param_metrics(r)
    assert m["N"] == 4 and m["n_outliers"] == 2  # |d| > 15 deg


def test_parquet_and_fits_catalogues_read_through_io(tmp_path):
    t, p = _truth(150), _noisy(_truth(150))
    want = evaluate(p, t)["overall"]
    for suffix in (".parquet", ".fits", ".ecsv"):
        write_catalog(p, tmp_path / f"pred{suffix}")
        write_catalog(t, tmp_path / f"truth{suffix}")
        got = evaluate(tmp_path / f"pred{suffix}", tmp_path / f"truth{suffix}")["overall"]
        for k in want:
            assert got[k]["nmad"] == pytest.approx(want[k]["nmad"], rel=1e-12), (suffix, k)


def test_pa_in_radians_is_converted(tmp_path):
    t, p = _truth(100), _noisy(_truth(100))
    want = evaluate(p, t)["overall"]["pa_deg"]["nmad"]
    p["pa_deg"] = p["pa_deg"].to(u.rad)
    write_catalog(p, tmp_path / "pred.parquet")
    assert evaluate(tmp_path / "pred.parquet", t)["overall"]["pa_deg"]["nmad"] == \
        pytest.approx(want, rel=1e-9)


def test_one_line_errors(tmp_path):
    t, p = _truth(20), _noisy(_truth(20))
    with pytest.raises(GalnetValueError, match="params must be a parameter name or a list of "
                                               "names, got int"):
        evaluate(p, t, params=5)
    with pytest.raises(GalnetFileError, match=re.escape("sim.h5: no such file (truth)")):
        evaluate(p, tmp_path / "sim.h5")
    (tmp_path / "dir.h5").mkdir()
    with pytest.raises(GalnetFileError, match="dir.h5: is a directory, not a truth file"):
        evaluate(p, tmp_path / "dir.h5")
    (tmp_path / "junk.h5").write_text("junk")
    with pytest.raises(GalnetFileError, match="cannot read simulation file .*junk.h5"):
        evaluate(p, tmp_path / "junk.h5")
    (tmp_path / "empty.ecsv").write_text("")
    with pytest.raises(GalnetFileError, match="empty.ecsv: empty file \\(pred\\)"):
        evaluate(tmp_path / "empty.ecsv", t)
    with pytest.raises(GalnetValueError, match=r"pred.txt: unknown catalogue format '.txt'"):
        evaluate(tmp_path / "pred.txt", t)
