"""Atomic file writing: every file galnet writes goes through :func:`atomic_write`, so a crash or
an interrupt never leaves a half-written file under the final name; :func:`check_writable` checks
an output path before any work.

Temporary files are named ``.tmp-<target name>-<8 random characters>`` in the target's directory.
A run killed hard (SIGKILL, power loss) cannot remove its own: the next write to the same target
removes them first."""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from galnet.errors import GalnetError, GalnetFileError

__all__ = ["atomic_write", "check_writable", "jsonable", "TMP_PREFIX"]

#: Prefix of the temporary files of :func:`atomic_write`: ``.tmp-<target name>-``.
TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale(path: Path) -> None:
    """Remove temporary files a killed run left for ``path`` (``.tmp-NAME-XXXXXXXX``)."""
    stale = re.compile(re.escape(f"{TMP_PREFIX}{path.name}-") + r"[A-Za-z0-9_]{8}")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if stale.fullmatch(name):
            try:
                (path.parent / name).unlink()
            except OSError:
                pass


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write ``path`` by calling ``write(tmp)`` on a temporary file in the same directory
    (``.tmp-NAME-XXXXXXXX``), then renaming it to ``path`` (permissions as for a new file under
    the umask). Stale temporary files of ``path`` left by a killed run are removed first. On any
    error (KeyboardInterrupt included) the temporary file is removed and nothing appears under
    ``path``; OS errors become :class:`GalnetFileError` naming ``path``."""
    path = Path(path)
    _remove_stale(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=path.parent)
    except OSError as err:
        raise GalnetFileError(f"cannot write {str(path)!r}: {err.strerror or err}") from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, GalnetError):
            raise GalnetFileError(f"cannot write {str(path)!r}: {err.strerror or err}") from err
        raise
    return path


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check an output path before any work; returns it as a Path.

    One-line GalnetFileError naming the path when it is a directory, exists and ``overwrite`` is
    False (``"PATH exists (use --overwrite)"``), or its directory is missing or not writable.
    """
    p = Path(path)
    if p.is_dir():
        raise GalnetFileError(f"{path}: is a directory")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise GalnetFileError(f"{path} exists (use --overwrite)")
    parent = p.parent
    if not parent.is_dir():
        raise GalnetFileError(f"{path}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GalnetFileError(f"{path}: directory {str(parent)!r} is not writable")
    return p


def jsonable(obj):
    """``obj`` ready for strict JSON: dicts, lists, tuples and arrays recursively; numpy scalars
    become Python ones; non-finite floats become None."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
