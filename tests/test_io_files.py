"""galnet.io.files: the one atomic writer (stale temporaries cleaned) and the output check."""

import os

import pytest

from galnet.errors import GalnetFileError
from galnet.io.files import atomic_write, check_writable


def test_atomic_write_removes_stale_temporaries(tmp_path):
    target = tmp_path / "cat.ecsv"
    orphan = tmp_path / ".tmp-cat.ecsv-ab12cd_9"  # left by a run killed with SIGKILL
    orphan.write_text("half")
    other = tmp_path / ".tmp-other.ecsv-ab12cd_9"  # another target's: kept
    other.write_text("x")
    atomic_write(target, lambda tmp: tmp.write_text("full"))
    assert target.read_text() == "full"
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "cat.ecsv"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_write_leaves_nothing_on_error(tmp_path, exc):
    target = tmp_path / "out.fits"

    def write(tmp):
        tmp.write_text("partial")
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(target, write)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_temp_name(tmp_path):
    seen = []
    atomic_write(tmp_path / "a.txt", lambda tmp: seen.append(tmp.name) or tmp.write_text("1"))
    assert seen[0].startswith(".tmp-a.txt-") and len(seen[0]) == len(".tmp-a.txt-") + 8


def test_check_writable(tmp_path):
    out = tmp_path / "cat.ecsv"
    assert check_writable(out) == out
    out.write_text("old")
    with pytest.raises(GalnetFileError, match=r"cat\.ecsv exists \(use --overwrite\)"):
        check_writable(out)
    assert check_writable(out, overwrite=True) == out
    with pytest.raises(GalnetFileError, match="is a directory"):
        check_writable(tmp_path, overwrite=True)
    with pytest.raises(GalnetFileError, match=r"directory '.*nodir' does not exist"):
        check_writable(tmp_path / "nodir" / "cat.ecsv")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_check_writable_readonly_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(GalnetFileError, match="is not writable"):
            check_writable(ro / "cat.ecsv")
    finally:
        ro.chmod(0o755)
