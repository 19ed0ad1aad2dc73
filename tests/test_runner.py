"""galnet.runner: the one device resolver, chunk loop and progress bar."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import pytest
import torch

from galnet.errors import GalnetValueError
from galnet.runner import (
    chunks,
    progress,
    progress_enabled,
    resolve_device,
    run_batches,
    run_chunks,
)


def test_import_does_not_import_torch():
    code = "import sys, galnet.runner; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_resolve_device_auto_and_cpu():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert resolve_device(None).type == want
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu0", "cuda:x", "", "tpu", "cpu:0:1"])
def test_resolve_device_unknown_name(name):
    with pytest.raises(GalnetValueError, match=r"^device .* is not a device") as e:
        resolve_device(name)
    assert "\n" not in str(e.value)
    assert e.value.name == "device"


def test_resolve_device_cuda_index_beyond_count():
    with pytest.raises(GalnetValueError, match="device 'cuda:7'"):
        resolve_device("cuda:7" if torch.cuda.device_count() <= 7 else "cuda:99")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_resolve_device_cuda_without_cuda():
    with pytest.raises(GalnetValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(GalnetValueError, match="^--device 'cuda'"):
        resolve_device("cuda", option="--device")


def test_chunks_and_bad_size():
    assert [(s.start, s.stop) for s in chunks(10, 4)] == [(0, 4), (4, 8), (8, 10)]
    assert list(chunks(0, 3)) == []
    for bad in (0, -1, 2.5, "4", True):
        with pytest.raises(GalnetValueError, match="chunk must be an integer >= 1"):
            list(chunks(10, bad))


def test_run_chunks_and_batches_in_order():
    assert run_chunks(lambda s: (s.start, s.stop), 5, 2, progress=False) == [(0, 2), (2, 4),
                                                                             (4, 5)]
    assert run_batches(len, [[1, 2], [3]], progress=False) == [2, 1]


def test_progress_only_on_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress_enabled(None) and not progress_enabled(True)
    list(progress(range(3), desc="x"))
    assert sys.stderr.getvalue() == ""  # not a terminal: nothing printed
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert progress_enabled(None) and progress_enabled(True)
    assert not progress_enabled(False)
    list(progress(range(3), desc="shown"))
    assert "shown" in tty.getvalue()
    log = logging.getLogger("galnet")
    old = log.level
    log.setLevel(logging.ERROR)  # galnet -q
    try:
        assert not progress_enabled(None)
    finally:
        log.setLevel(old)
