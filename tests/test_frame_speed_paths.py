"""Speed paths of the frame pipeline give the same answers as the slow ones: the refine keeps the
network's painted models as the guard's reference (no second render), and the speed benchmark
(benchmarks/bench_frame.py) runs the real pipeline and prints its step table. Small synthetic
frames only (tests/test_frame.py's)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from test_frame import make_frame, write_frame


def test_refine_guard_reference_is_the_network_render(monkeypatch):
    """After the refine the network's models (the accept-or-revert reference) equal a fresh
    render of the network's parameters, and the refine never rendered them a second time."""
    import galnet.frame.pipeline as pl

    seen = {}
    real_guard = pl._final_guard
    real_render = pl._Frame.render
    calls = {"render": 0}

    def render(self, *a, **k):
        calls["render"] += 1
        return real_render(self, *a, **k)

    def guard(st, nn, params, flags):
        seen["cached"] = [m.copy() for m in st.network_models(nn)]
        seen["fresh"] = [real_render(st, nn, g) for g in st.groups]
        seen["renders_before_guard"] = calls["render"]
        return real_guard(st, nn, params, flags)

    monkeypatch.setattr(pl, "_final_guard", guard)
    monkeypatch.setattr(pl._Frame, "render", render)
    img, psf, _ = make_frame(0)
    t = pl.run_frame(img, psf, sigma=np.ones(img.shape), pixel_scale=0.2, zeropoint=27.0,
                     refine=True, progress=False)
    assert len(t) >= 4
    assert seen["renders_before_guard"] == 0
    assert len(seen["cached"]) == len(seen["fresh"]) > 0
    for a, b in zip(seen["cached"], seen["fresh"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_bench_frame_prints_the_step_table(tmp_path, capsys):
    path = Path(__file__).parents[1] / "benchmarks" / "bench_frame.py"
    spec = importlib.util.spec_from_file_location("bench_frame", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    frame, psf, _ = write_frame(tmp_path)
    assert mod.main(["--frame", str(frame), "--psf", str(psf), "--threads", "1",
                     "--out", str(tmp_path / "cat.ecsv")]) == 0
    out = capsys.readouterr().out
    for step in ("noise/background", "detection", "network (stamps + GaLNet)", "measure",
                 "catalogue", "total"):
        assert step in out
    assert "galaxies/s" in out
    assert (tmp_path / "cat.ecsv").exists()


def test_incremental_guard_equals_full_rounds(monkeypatch):
    """The frame-level accept-or-revert that re-checks only the sources whose neighbours changed
    reverts exactly the sources that re-checking everything every round reverts."""
    import copy

    import galnet.frame.pipeline as pl

    state = {}

    def capture(st, nn, params, flags):
        state.update(st=st, nn=nn, params=params, flags=flags)
        return 0

    monkeypatch.setattr(pl, "_final_guard", capture)
    img, psf, _ = make_frame(0)
    pl.run_frame(img, psf, sigma=np.ones(img.shape), pixel_scale=0.2, zeropoint=27.0,
                 refine=True, progress=False)
    st, nn = state["st"], state["nn"]
    params = {k: v.copy() for k, v in state["params"].items()}
    # spoil two fits so that the guard must revert them (and re-check their neighbours)
    bad = np.argsort(-np.asarray(nn["flux"]))[:2]
    params["flux"][bad] *= 2.5
    params["re_pix"][bad] *= 0.5
    for gi, g in enumerate(st.groups):
        rows = np.flatnonzero(np.isin(g.index, bad))
        if rows.size:
            st.replace(gi, params, rows)
    st_a, st_b = copy.deepcopy(st), copy.deepcopy(st)
    pa, pb = copy.deepcopy(params), copy.deepcopy(params)
    fa, fb = state["flags"].copy(), state["flags"].copy()
    monkeypatch.undo()
    n_a = pl._final_guard(st_a, nn, pa, fa)
    n_b = 0
    for _ in range(pl._GUARD_ROUNDS):  # the old way: every source, every round
        k = pl._guard_round(st_b, nn, pb, fb)
        n_b += k
        if k == 0:
            break
    assert n_a == n_b >= 2
    np.testing.assert_array_equal(fa, fb)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    np.testing.assert_array_equal(st_a.canvas.image, st_b.canvas.image)
