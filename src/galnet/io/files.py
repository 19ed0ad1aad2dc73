"""Atomic file writing: every file galnet writes goes through :func:`atomic_write`, so a crash or
an interrupt never leaves a half-written file under the final name."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from galnet.errors import GalnetError, GalnetFileError

__all__ = ["atomic_write", "jsonable"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write ``path`` by calling ``write(tmp)`` on a temporary file in the same directory, then
    renaming it to ``path`` (permissions as for a new file under the umask). On any error the
    temporary file is removed; OS errors become :class:`GalnetFileError` naming ``path``."""
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
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
