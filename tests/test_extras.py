"""A core install (no extras) gives one-line errors naming the extra, not tracebacks."""

from __future__ import annotations

import sys

import pytest

from galnet.cli import main
from galnet.errors import GalnetDependencyError, GalnetError, optional_import


def test_optional_import_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "zuko", None)  # import of a None entry raises ImportError
    monkeypatch.setitem(sys.modules, "zuko.flows", None)  # (may be imported by earlier tests)
    with pytest.raises(GalnetDependencyError, match=r"needs zuko.*'galnet\[translate\]'"):
        optional_import("zuko.flows", "translate", "the gradient-flow loss")
    assert issubclass(GalnetDependencyError, GalnetError)
    assert issubclass(GalnetDependencyError, ImportError)


def test_gradient_flow_loss_without_zuko(monkeypatch):
    from galnet.translate.losses import make_loss

    monkeypatch.setitem(sys.modules, "zuko", None)
    monkeypatch.setitem(sys.modules, "zuko.flows", None)
    with pytest.raises(GalnetDependencyError, match=r"galnet\[translate\]"):
        make_loss("gradient-flow", n_bands=5)


def test_translate_simulate_without_speclite_is_one_line(monkeypatch, tmp_path, capsys):
    from galnet.translate import population

    population._ab_table.cache_clear()
    monkeypatch.setitem(sys.modules, "speclite", None)
    monkeypatch.setitem(sys.modules, "speclite.filters", None)
    out = tmp_path / "pairs.h5"
    rc = main(["translate", "simulate", "-n", "4", "--seed", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    population._ab_table.cache_clear()
    assert rc == 1
    assert len(err) == 1 and "pip install 'galnet[translate]'" in err[0], err
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()  # (a .partial file stays by design: the simulation resumes from it)
