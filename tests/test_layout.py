"""The house keeps its shape: imports run one way, private names stay home, modules stay small.

Layers, lowest first (a module may import its own layer and the ones below, never above):

    core     errors, params, conventions, flags, presets, runner, stats, quality
    profiles Sérsic math and the renderers
    io       FITS readers, PSF sources, cutouts, catalogues, atomic files
    sim      survey simulation, the real background/PSF bank
    nn       GaLNet: model, training, prediction
    fitting  the forward-model fitter
    frame    frames to catalogue: detection, cutouts, neighbours, the guarded refine
    evaluate metrics, reports and plots
    interop  GALFIT and Imfit
    translate  image translation (beside the stack: may use every layer below it)
    app      the public API (galnet/__init__, galnet.api), the demo and the CLI
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "galnet"

LAYERS: dict[str, int] = {
    "errors": 0, "params": 0, "stats": 0, "quality": 0, "conventions": 0, "flags": 0,
    "presets": 0, "runner": 0,
    "profiles": 1,
    "io": 2,
    "sim": 3,
    "nn": 4,
    "fitting": 5,
    "frame": 6,
    "evaluate": 7,
    "interop": 8,
    "translate": 9,
    "api": 10, "demo": 10, "cli": 10, "__init__": 10, "__main__": 10,
}

#: The most lines a module of src/ may have (the guide says "rarely over ~500").
MAX_LINES = 600


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def _top(path: Path) -> str:
    """Top-level unit of a source file: its package under galnet/, or its module name."""
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _package(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = ("galnet",) + rel.parts
    return ".".join(parts[:-1]) if len(parts) > 1 else "galnet"


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    pkg = _package(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((node.lineno, a.name, []))
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([mod] if mod else []))
            out.append((node.lineno, mod, [a.name for a in node.names]))
    return out


def test_every_unit_has_a_layer():
    missing = sorted({_top(p) for p in _modules()} - set(LAYERS))
    assert not missing, f"give these a layer in tests/test_layout.py: {missing}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_run_one_way(path):
    me = _top(path)
    bad = []
    for line, mod, names in _imports(path):
        if not mod.startswith("galnet"):
            continue
        parts = mod.split(".")
        targets = [parts[1]] if len(parts) > 1 else [n for n in names]
        for t in targets:
            if t in LAYERS and LAYERS[t] > LAYERS[me]:
                bad.append(f"line {line}: {me} (layer {LAYERS[me]}) imports {mod} "
                           f"{names or ''} (layer {LAYERS[t]})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_private_names_stay_in_their_package(path):
    """``from galnet.x.y import _name`` only inside the package ``galnet.x``."""
    me = _top(path)
    bad = []
    for line, mod, names in _imports(path):
        parts = mod.split(".")
        if len(parts) < 2 or parts[0] != "galnet" or parts[1] == me:
            continue
        bad += [f"line {line}: {n} from {mod}" for n in names
                if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_stay_small(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(SRC)} has {n} lines (> {MAX_LINES}): split it"
