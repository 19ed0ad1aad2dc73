"""Tests of galnet.evaluate: metric formulas, matching, calibration, files and errors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from astropy import units as u
from astropy.table import QTable, Table

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.evaluate.metrics import evaluate
from galnet.params import fold_diff
from galnet.stats import nmad, r2_score

COLS = ("x", "y", "mag", "re_pix", "n", "q", "pa_deg")


def _truth(n: int = 400, seed: int = 0) -> QTable:
    """A synthetic truth table with units, ids and S/N."""
    rng = np.random.default_rng(seed)
    t = QTable()
    t["id"] = np.arange(1000, 1000 + n)
    t["x"] = rng.uniform(28, 32, n) * u.pix
    t["y"] = rng.uniform(28, 32, n) * u.pix
    t["mag"] = rng.uniform(18, 24, n) * u.mag
    t["re_pix"] = 10 ** rng.uniform(-0.3, 1.2, n) * u.pix
    t["n"] = 10 ** rng.uniform(np.log10(0.4), np.log10(6), n)
    t["q"] = rng.uniform(0.2, 1.0, n)
    t["pa_deg"] = rng.uniform(0, 180, n) * u.deg
    t["snr"] = 10 ** rng.uniform(0.7, 2.5, n)
    return t


def _noisy(t: QTable, seed: int = 1, scale: float = 1.0) -> QTable:
    """pred = truth + known noise (multiplicative for re and n)."""
    rng = np.random.default_rng(seed)
    n = len(t)
    p = QTable()
    p["id"] = t["id"]
    p["x"] = t["x"] + rng.normal(0, 0.3 * scale, n) * u.pix
    p["y"] = t["y"] + rng.normal(0, 0.3 * scale, n) * u.pix
    p["mag"] = t["mag"] + rng.normal(0, 0.05 * scale, n) * u.mag
    p["re_pix"] = t["re_pix"] * np.exp(rng.normal(0, 0.08 * scale, n))
    p["n"] = t["n"] * np.exp(rng.normal(0, 0.15 * scale, n))
    p["q"] = np.clip(t["q"] + rng.normal(0, 0.03 * scale, n), 0.05, 1.0)
    p["pa_deg"] = np.mod(t["pa_deg"].value + rng.normal(0, 5 * scale, n), 180) * u.deg
    return p


def _v(col) -> np.ndarray:
    return np.asarray(getattr(col, "value", col), dtype=float)


# ---- basic statistics -----------------------------------------------------------------------
def test_nmad_r2_and_wrap_helpers():
    d = np.array([0.0, 1.0, 2.0, 3.0, 100.0])
    assert nmad(d) == pytest.approx(1.4826 * 1.0)  # median 2, |d-2| = 2,1,0,1,98 -> median 1
    t = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.1, 1.9, 3.2, 4.0])
    assert r2_score(t, p) == pytest.approx(1 - 0.06 / 5.0)
    assert math.isnan(r2_score([1.0, 1.0], [1.0, 2.0]))  # constant truth
    assert fold_diff("pa_deg", 179.0, 1.0) == pytest.approx(-2.0)
    assert fold_diff("pa_deg", 1.0, 179.0) == pytest.approx(2.0)
    assert fold_diff("pa_deg", 90.0, 0.0) == pytest.approx(-90.0)  # [-90, 90)
    assert fold_diff("pa_deg", 30.0, 10.0) == pytest.approx(20.0)


def test_metrics_match_numpy_formulas():
    t = _truth()
    p = _noisy(t)
    m = evaluate(p, t)
    o = m["overall"]
    assert m["matched_by"] == "id" and m["n_failed"] == 0 and m["n_evaluated"] == len(t)

    tm, pm = _v(t["mag"]), _v(p["mag"])
    d = pm - tm
    assert o["mag"]["r2"] == pytest.approx(1 - np.sum(d**2) / np.sum((tm - tm.mean()) ** 2))
    assert o["mag"]["nmad"] == pytest.approx(1.4826 * np.median(np.abs(d - np.median(d))))
    assert o["mag"]["bias"] == pytest.approx(np.median(d))
    assert o["mag"]["mean"] == pytest.approx(np.mean(d))
    assert o["mag"]["rms"] == pytest.approx(np.sqrt(np.mean(d**2)))
    assert o["mag"]["nmad"] == pytest.approx(0.05, rel=0.15)  # the injected noise

    tr, pr = _v(t["re_pix"]), _v(p["re_pix"])
    lt, lp = np.log10(tr), np.log10(pr)
    assert o["re"]["r2_log"] == pytest.approx(1 - np.sum((lp - lt) ** 2)
                                              / np.sum((lt - lt.mean()) ** 2))
    dl = lp - lt
    assert o["re"]["nmad"] == pytest.approx(1.4826 * np.median(np.abs(dl - np.median(dl))))
    assert o["re"]["nmad"] == pytest.approx(0.08 / np.log(10), rel=0.15)  # dex
    rel = (pr - tr) / tr
    assert o["re"]["nmad_rel"] == pytest.approx(nmad(rel))
    assert o["re"]["outlier_frac"] == pytest.approx(np.mean(np.abs(rel) > 0.15))
    assert o["n"]["r2_log"] == pytest.approx(r2_score(np.log10(_v(t["n"])), np.log10(_v(p["n"]))))
    assert o["q"]["r2"] == pytest.approx(r2_score(_v(t["q"]), _v(p["q"])))
    assert o["x"]["r2"] == pytest.approx(r2_score(_v(t["x"]), _v(p["x"])))
    # PA: only true q < 0.8
    round_ = _v(t["q"]) >= 0.8
    assert o["pa_deg"]["N"] == np.sum(~round_) and o["pa_deg"]["n_round_excluded"] == np.sum(round_)
    dpa = fold_diff("pa_deg", _v(p["pa_deg"]), _v(t["pa_deg"]))[~round_]
    assert o["pa_deg"]["nmad"] == pytest.approx(nmad(dpa))
    assert o["pa_deg"]["nmad"] == pytest.approx(5.0, rel=0.2)
    assert "r2" not in o["pa_deg"]
    # a worse prediction scores worse
    worse = evaluate(_noisy(t, scale=4.0), t)["overall"]
    assert worse["re"]["r2_log"] < o["re"]["r2_log"]
    assert worse["n"]["outlier_frac"] > o["n"]["outlier_frac"]


def test_outlier_fraction_exact():
    k = 10
    t = Table({"x": np.full(k, 30.0), "y": np.full(k, 30.0), "mag": np.full(k, 20.0),
               "re_pix": np.full(k, 4.0), "n": np.full(k, 2.0), "q": np.full(k, 0.5),
               "pa_deg": np.full(k, 90.0), "snr": np.full(k, 50.0)})
    p = Table(t, copy=True)
    # re: relative errors; |rel| > 0.15 are outliers -> 3 of 10
    p["re_pix"] = 4.0 * (1 + np.array([0, 0.1, 0.149, -0.149, 0.151, -0.16, 0.5, 0, 0, 0]))
    # n: 2 outliers
    p["n"] = 2.0 * (1 + np.array([0.2, 0, 0, 0, 0, 0, 0, 0, -0.2, 0.14]))
    # mag: flux ratios 1.2 and 0.8 are outliers, 1.1 is not
    p["mag"] = 20.0 - 2.5 * np.log10([1.2, 0.8, 1.1, 1, 1, 1, 1, 1, 1, 1])
    # q: |dq|/q > 0.15 with q = 0.5 -> |dq| > 0.075: one outlier
    p["q"] = 0.5 + np.array([0.08, 0.07, 0, 0, 0, 0, 0, 0, 0, 0])
    # x: |dx| > 1 pix; y: none
    p["x"] = 30.0 + np.array([1.5, -1.01, 0.99, 0, 0, 0, 0, 0, 0, 0])
    # pa: |d| > 15 deg -> 2 (one across the wrap: 90 -> 270 is 0 deg off)
    p["pa_deg"] = 90.0 + np.array([16, -20, 14, 180, 0, 0, 0, 0, 0, 0])
    o = evaluate(p, t)["overall"]
    assert o["re"]["n_outliers"] == 3 and o["re"]["outlier_frac"] == pytest.approx(0.3)
    assert o["n"]["n_outliers"] == 2 and o["n"]["outlier_frac"] == pytest.approx(0.2)
    assert o["mag"]["n_outliers"] == 2
    assert o["q"]["n_outliers"] == 1
    assert o["x"]["n_outliers"] == 2 and o["y"]["n_outliers"] == 0
    assert o["pa_deg"]["n_outliers"] == 2 and o["pa_deg"]["N"] == k


def test_pa_wrapping_and_round_galaxies():
    t = Table({c: np.ones(4) for c in COLS})
    t["q"] = [0.5, 0.5, 0.9, 0.79]
    t["pa_deg"] = [1.0, 1.0, 1.0, 1.0]
    t["re_pix"] = [1.0, 2.0, 3.0, 4.0]
    p = Table(t, copy=True)
    p["pa_deg"] = [179.0, 179.0, 90.0, 179.0]  # d = -2 deg; the q = 0.9 one is ignored
    o = evaluate(p, t)["overall"]["pa_deg"]
    assert o["N"] == 3 and o["n_round_excluded"] == 1
    assert o["bias"] == pytest.approx(-2.0) and o["mean"] == pytest.approx(-2.0)
    assert o["outlier_frac"] == 0.0
    # angles given in radians are converted to degrees
    tq, pq = QTable(t), QTable(p)
    tq["pa_deg"] = np.deg2rad(t["pa_deg"]) * u.rad
    pq["pa_deg"] = np.deg2rad(p["pa_deg"]) * u.rad
    assert evaluate(pq, tq)["overall"]["pa_deg"]["bias"] == pytest.approx(-2.0)


# ---- matching, failures, units ------------------------------------------------------------------
def test_id_matching_with_shuffled_rows_and_subsets():
    t = _truth(200)
    p = _noisy(t)
    ref = evaluate(p, t)["overall"]
    perm = np.random.default_rng(3).permutation(len(p))
    m = evaluate(p[perm], t)
    assert m["matched_by"] == "id"
    for key in ("mag", "re", "n", "q", "x", "y", "pa_deg"):
        assert m["overall"][key]["nmad"] == pytest.approx(ref[key]["nmad"])
    assert m["overall"]["re"]["r2_log"] == pytest.approx(ref["re"]["r2_log"])
    # row order with shuffled rows and no ids gives a (much) worse, wrong answer
    p_noid = p[perm]
    p_noid.remove_column("id")
    bad = evaluate(p_noid, t)
    assert bad["matched_by"] == "row" and bad["overall"]["re"]["r2_log"] < 0.5
    # a prediction covering part of the truth, matched by id
    sub = evaluate(p[perm][:50], t)
    assert sub["n_rows"] == 50 and sub["n_truth_rows"] == 200 and sub["matched_by"] == "id"
    # ids that do not match, same length: row order with a warning
    p_bad = p.copy()
    p_bad["id"] = np.arange(len(p))
    with pytest.warns(UserWarning, match="ids do not match"):
        m2 = evaluate(p_bad, t)
    assert m2["matched_by"] == "row"
    assert m2["overall"]["re"]["nmad"] == pytest.approx(ref["re"]["nmad"])


def test_failed_rows_are_counted_and_excluded():
    t = _truth(100)
    p = _noisy(t)
    p["n"][[3, 7]] = np.nan
    p["mag"][11] = np.nan * u.mag
    p["re_pix"][20] = -1.0 * u.pix  # non-physical: failed too
    m = evaluate(p, t)
    assert m["n_failed"] == 4 and m["n_evaluated"] == 96
    # masked entries (e.g. empty cells of a catalogue) are failures too
    pm = Table({c: _v(p[c]) for c in p.colnames}, masked=True)
    pm["q"].mask[50] = True
    assert evaluate(pm, t)["n_failed"] == 5
    assert m["failed_frac"] == pytest.approx(0.04)
    keep = np.ones(100, bool)
    keep[[3, 7, 11, 20]] = False
    ref = evaluate(p[keep], t[keep])["overall"]
    for key in ("mag", "re", "n"):
        assert m["overall"][key]["N"] == 96
        assert m["overall"][key]["nmad"] == pytest.approx(ref[key]["nmad"])


def test_units_are_stripped():
    t = _truth(100)
    p = _noisy(t)
    plain_t = Table({c: _v(t[c]) for c in t.colnames})
    plain_p = Table({c: _v(p[c]) for c in p.colnames})
    a = evaluate(p, t)["overall"]
    b = evaluate(plain_p, plain_t)["overall"]
    for key in a:
        assert a[key]["nmad"] == pytest.approx(b[key]["nmad"])


# ---- bins and subsets ---------------------------------------------------------------------------
def test_bins_and_named_subsets():
    t = _truth(300)
    p = _noisy(t)
    m = evaluate(p, t, snr_bins=(0, 10, 20, 50, 100, np.inf), n_bins=(0.3, 1, 2, 4, 8.0))
    snr = _v(t["snr"])
    assert m["snr>20"]["mag"]["N"] == np.sum(snr > 20)
    assert m["10<snr<=20"]["mag"]["N"] == np.sum((snr > 10) & (snr <= 20))
    sel = snr > 20
    assert m["snr>20"]["re"]["r2_log"] == pytest.approx(
        r2_score(np.log10(_v(t["re_pix"])[sel]), np.log10(_v(p["re_pix"])[sel])))
    bins = m["by_snr"]["bins"]
    assert [b["label"] for b in bins] == ["0<=snr<10", "10<=snr<20", "20<=snr<50",
                                          "50<=snr<100", "snr>=100"]
    assert sum(b["n_rows"] for b in bins) == len(t)
    assert bins[1]["n_rows"] == np.sum((snr >= 10) & (snr < 20))
    nb = m["by_n"]["bins"]
    assert len(nb) == 4 and sum(b["n_rows"] for b in nb) == len(t)
    assert nb[0]["metrics"]["n"]["N"] == np.sum(_v(t["n"]) < 1)
    # targets are reported for each scope with a pass flag
    tg = {(x["param"], x["metric"]): x for x in m["targets"]}
    assert tg[("re", "r2_log")]["overall"]["value"] == m["overall"]["re"]["r2_log"]
    assert tg[("mag", "r2")]["snr>20"]["pass"] is (m["snr>20"]["mag"]["r2"] >= 0.995)
    # no snr column: no S/N bins, empty subsets, but no error
    t2 = t.copy()
    t2.remove_column("snr")
    m2 = evaluate(p, t2)
    assert m2["by_snr"]["bins"] == [] and m2["snr>20"]["mag"]["N"] == 0
    with pytest.raises(GalnetValueError, match="snr_bins"):
        evaluate(p, t, snr_bins=(10, 5))


# ---- calibration --------------------------------------------------------------------------------
def test_calibration_fraction_gaussian():
    rng = np.random.default_rng(5)
    t = _truth(4000, seed=2)
    p = t.copy()
    sig = {"mag": 0.05, "x": 0.3, "q": 0.02}
    for c, s in sig.items():
        e = rng.uniform(0.5, 2.0, len(t)) * s  # heteroscedastic, correct sigmas
        unit = getattr(t[c], "unit", None) or 1
        p[c] = t[c] + rng.normal(0, 1, len(t)) * e * unit
        p[f"{c}_err"] = e
    rel = rng.uniform(0.03, 0.1, len(t))  # re: sigma in linear units
    p["re_pix"] = t["re_pix"] * (1 + rng.normal(0, 1, len(t)) * rel)
    p["re_pix_err"] = _v(t["re_pix"]) * rel
    p["n_err"] = 0.5 * np.ones(len(t))
    p["n"] = t["n"] + rng.normal(0, 0.5 / 2, len(t))  # sigma overestimated 2x
    p["n"] = np.abs(p["n"]) + 0.01
    o = evaluate(p, t)["overall"]
    for key in ("mag", "x", "q", "re"):
        assert o[key]["calib_frac_1sigma"] == pytest.approx(0.683, abs=0.025), key
        assert o[key]["calib_z_nmad"] == pytest.approx(1.0, abs=0.06), key
        assert o[key]["calib_N"] == len(t)
    assert o["n"]["calib_frac_1sigma"] > 0.9  # errors too large -> over-covered
    assert "calib_frac_1sigma" not in o["y"]  # no y_err column


# ---- files --------------------------------------------------------------------------------------
def test_files_written_and_report(tmp_path):
    t = _truth(300)
    p = _noisy(t)
    p["re_pix_err"] = 0.08 * _v(p["re_pix"])
    t.write(tmp_path / "truth.fits")
    p.write(tmp_path / "pred.ecsv")
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (12, 21, 21))
    gallery = {"images": images, "models": images * 0.9, "sigma": np.ones_like(images)}
    out = tmp_path / "report"
    m = evaluate(tmp_path / "pred.ecsv", str(tmp_path / "truth.fits"), out, gallery=gallery)
    with open(out / "metrics.json") as f:  # strict JSON: no NaN / Infinity tokens
        j = json.load(f, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert j["overall"]["re"]["r2_log"] == pytest.approx(m["overall"]["re"]["r2_log"])
    assert j["by_snr"]["bins"][-1]["hi"] is None  # inf -> null
    pngs = sorted(f.name for f in out.glob("*.png"))
    assert pngs == ["calibration.png", "gallery.png", "pred_vs_true.png", "residuals_vs_snr.png"]
    for f in pngs:
        assert (out / f).stat().st_size > 1000
    report = (out / "report.md").read_text()
    for f in pngs:
        assert f"]({f})" in report
    assert sorted(m["files"]) == sorted(["metrics.json", "report.md", *pngs])
    assert "| re |" in report and "snr>20" in report and "10<snr<=20" in report
    assert not [f for f in out.iterdir() if ".tmp-" in f.name]  # no temporary files left
    # Parquet round trip gives the same numbers; no gallery and no _err -> fewer PNGs
    p.remove_column("re_pix_err")
    p.write(tmp_path / "pred.parquet")
    out2 = tmp_path / "r2"
    m2 = evaluate(tmp_path / "pred.parquet", tmp_path / "truth.fits", out2)
    assert m2["overall"]["mag"]["nmad"] == pytest.approx(m["overall"]["mag"]["nmad"])
    pngs2 = {f.name for f in out2.glob("*.png")}
    assert pngs2 == {"pred_vs_true.png", "residuals_vs_snr.png"}
    report2 = (out2 / "report.md").read_text()
    assert "calibration.png" not in report2 and "gallery.png" not in report2


def test_simulated_truth_and_rendered_gallery(tmp_path):
    from galnet.sim.simulate import read_params, simulate

    h5 = simulate("hsc-r", n=64, seed=0, out=tmp_path / "t.h5", progress=False)
    t = read_params(h5)
    p = QTable({c: t[c] for c in COLS})
    p["id"] = np.arange(len(t))  # ids are the HDF5 row indices
    p = p[::-1]
    m = evaluate(p, h5, tmp_path / "rep")
    assert m["matched_by"] == "id" and m["n_evaluated"] == 64
    assert m["overall"]["re"]["r2_log"] == pytest.approx(1.0)
    assert m["overall"]["mag"]["nmad"] == 0.0
    assert (tmp_path / "rep" / "gallery.png").is_file()
    m_nogal = evaluate(p, h5, tmp_path / "rep2", gallery=False)
    assert "gallery.png" not in m_nogal["files"]


# ---- errors -------------------------------------------------------------------------------------
def test_errors(tmp_path):
    t = _truth(20)
    p = _noisy(t)
    with pytest.raises(GalnetFileError, match=re.escape("nope.ecsv: no such file (pred)")):
        evaluate(tmp_path / "nope.ecsv", t)
    with pytest.raises(GalnetFileError, match=re.escape("missing.fits: no such file (truth)")):
        evaluate(p, tmp_path / "missing.fits")
    (tmp_path / "junk.ecsv").write_text("not a table\x00\x01")
    with pytest.raises(GalnetFileError, match="junk.ecsv: cannot read pred "):
        evaluate(tmp_path / "junk.ecsv", t)
    p2 = p.copy()
    p2.remove_column("re_pix")
    with pytest.raises(GalnetValueError, match="pred table has no column 're_pix'"):
        evaluate(p2, t)
    t2 = t.copy()
    t2.remove_column("q")
    with pytest.raises(GalnetValueError, match="truth table has no column 'q'"):
        evaluate(p, t2)
    p3 = p[:15]
    p3.remove_column("id")
    with pytest.raises(GalnetValueError, match="15 rows but truth table has 20"):
        evaluate(p3, t)
    p4 = p[:15].copy()
    p4["id"] = np.arange(15)  # ids not in the truth, lengths differ
    with pytest.raises(GalnetValueError, match="ids do not match"):
        evaluate(p4, t)
    with pytest.raises(GalnetValueError, match="unknown parameter 'foo'"):
        evaluate(p, t, params=["re", "foo"])
    (tmp_path / "afile").write_text("")
    with pytest.raises(GalnetFileError, match="is a file"):
        evaluate(p, t, tmp_path / "afile")
    with pytest.raises(GalnetValueError, match="gallery has no 'models'"):
        evaluate(p, t, tmp_path / "out", gallery={"images": np.zeros((2, 5, 5))})
    # a subset of the parameters needs only those columns
    m = evaluate(p2, t, params=["mag", "q"])
    assert set(m["overall"]) == {"mag", "q"}
