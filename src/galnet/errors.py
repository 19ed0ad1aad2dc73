"""Error hierarchy of galnet.

Every galnet error subclasses both :class:`GalnetError` and the matching built-in exception,
so callers can catch either. The CLI prints ``galnet: error: <message>`` (one line, no
traceback) for any :class:`GalnetError`.

Which to raise:

- :class:`GalnetValueError` -- a value is wrong (non-finite parameters, out of range, bad shape).
- :class:`GalnetPSFError` -- the PSF image is unusable (not 2-D, even-sized, non-positive sum).
- :class:`GalnetFileError` -- a file is missing, unreadable, malformed or not writable.
- :class:`GalnetPresetError` -- an unknown preset name.
- :class:`GalnetDependencyError` -- an optional dependency (an install extra) is missing;
  raised by :func:`optional_import`.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class GalnetError(Exception):
    """Base class of all galnet errors."""


class GalnetValueError(GalnetError, ValueError):
    """A parameter or array has an invalid value or shape.

    Attributes ``name`` and ``value`` keep what was wrong, when known.
    """

    def __init__(self, message: str, name: str | None = None, value: object = None):
        super().__init__(message)
        self.name = name
        self.value = value


class GalnetPSFError(GalnetValueError):
    """A PSF image that cannot be used (not 2-D, even-sized, non-positive sum, non-finite)."""


class GalnetFileError(GalnetError, OSError):
    """A file that is missing, unreadable, malformed or cannot be written."""


class GalnetPresetError(GalnetError, KeyError):
    """An unknown survey preset."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it plain
        return str(self.args[0]) if self.args else ""


class GalnetDependencyError(GalnetError, ImportError):
    """An optional dependency is not installed (the message names the install extra)."""


def optional_import(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` of the install extra ``extra``, or raise a one-line
    :class:`GalnetDependencyError`: "<purpose> needs <module>: pip install 'galnet[<extra>]'"."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        raise GalnetDependencyError(
            f"{purpose} needs {top}, which is not installed: pip install 'galnet[{extra}]'"
        ) from err
