"""Checked command-line values: argument types, option checks and output checks.

Every check raises :class:`UsageError` (exit status 2: the command line is wrong) or
:class:`galnet.errors.GalnetFileError` (exit status 1: a file cannot be written), with a one-line
message that names the option or the file.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import NoReturn

from galnet.errors import GalnetFileError, GalnetValueError

__all__ = ["UsageError", "Parser", "positive_int", "nonneg_int", "finite_float", "nonneg_float",
           "positive_float", "fraction", "positive_fraction", "zeropoint", "check_device",
           "check_output", "check_output_dir", "ZEROPOINT_RANGE"]

#: Accepted magnitude zeropoints (AB mag of one image unit). 0 is real (KiDS/ProFit images have
#: magzero 0); images in erg/s/cm²/Hz have -48.6; counts of long exposures reach ~35.
ZEROPOINT_RANGE = (-50.0, 50.0)


class UsageError(Exception):
    """The command line is wrong (bad or incompatible options): exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` (one line, no usage dump)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# ---- argument types (argparse turns their ArgumentTypeError into "argument --x: ...") --------
def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {v}")
    return v


def finite_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {s!r}")
    return v


def nonneg_float(s: str) -> float:
    v = finite_float(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s!r}")
    return v


def positive_float(s: str) -> float:
    v = finite_float(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s!r}")
    return v


def fraction(s: str) -> float:
    v = finite_float(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s!r}")
    return v


def positive_fraction(s: str) -> float:
    v = finite_float(s)
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s!r}")
    return v


def zeropoint(s: str) -> float:
    """A magnitude zeropoint in :data:`ZEROPOINT_RANGE` (AB mag of one image unit)."""
    v = finite_float(s)
    lo, hi = ZEROPOINT_RANGE
    if not lo <= v <= hi:
        raise argparse.ArgumentTypeError(f"must be an AB zeropoint in [{lo:g}, {hi:g}] mag, "
                                         f"got {s!r}")
    return v


# ---- checks run by the commands before any work ----------------------------------------------
def check_device(name: str | None, option: str = "--device") -> None:
    """Refuse a device torch cannot use here (unknown name, CUDA absent, index out of range)."""
    if name is None:
        return
    from galnet.runner import resolve_device

    try:
        resolve_device(name, option=option)
    except GalnetValueError as err:
        raise UsageError(str(err)) from None


def _writable_parent(p: Path, what: str) -> None:
    parent = p.parent if str(p.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:  # a folder that will be created
        parent = parent.parent
    if not parent.is_dir():
        raise GalnetFileError(f"cannot write {what} {str(p)!r}: {str(parent)!r} is not a "
                              "directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GalnetFileError(f"cannot write {what} {str(p)!r}: directory {str(parent)!r} is "
                              "not writable")


def check_output(path: str | os.PathLike, overwrite: bool = False, what: str = "output",
                 create_dirs: bool = False) -> Path:
    """``path`` as a Path once it is known to be writable (:func:`galnet.io.files.check_writable`:
    not a directory, its folder exists and is writable, it does not exist unless ``overwrite``).
    ``create_dirs``: its folder may be missing if it can be created. Raises a one-line
    :class:`GalnetFileError`."""
    from galnet.io.files import check_writable

    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise GalnetFileError(f"cannot write {what} {str(p)!r}: {str(parent)!r} is not a "
                              "directory")
    if create_dirs and not parent.exists():
        _writable_parent(p, what)
        return p
    return check_writable(p, overwrite)


def check_output_dir(path: str | os.PathLike, overwrite: bool = False,
                     what: str = "output folder") -> Path:
    """``path`` as a Path once it is known to be a usable output folder: a folder that can be
    created (its missing parents too), or an existing writable one that is empty unless
    ``overwrite``. Raises a one-line :class:`GalnetFileError`."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise GalnetFileError(f"{what} {str(p)!r} exists and is not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise GalnetFileError(f"{what} {str(p)!r} is not writable")
        if not overwrite and any(p.iterdir()):
            raise GalnetFileError(f"{what} {str(p)!r} exists and is not empty (use --overwrite)")
        return p
    _writable_parent(p, what)
    return p
