"""The one chunked runner: device choice, chunk loop and progress bar for predict, fit and simulate.

- :func:`resolve_device` -- THE device resolver ("auto", "cpu", "cuda", "cuda:1", "mps", a
  :class:`torch.device`); an unusable name is a one-line :class:`~galnet.errors.GalnetValueError`
  naming the option.
- :func:`progress` -- a tqdm bar on stderr, shown only when stderr is a terminal and the ``galnet``
  logger is not quiet (``galnet -q`` sets it above WARNING); otherwise a silent pass-through.
- :func:`chunks` / :func:`run_chunks` -- ``n`` items in slices of ``size``; ``fn(slice)`` per chunk,
  results in order. :func:`run_batches` maps ``fn`` over ready-made batches (a
  :class:`galnet.io.batch.StampIterator`), advancing the bar by each batch's length.

A distributed runner (Dask, a job queue) would go beside this module: the per-chunk functions are
pure (arrays in, arrays out), the loop here is the only thing to replace.

torch is imported lazily: ``import galnet.runner`` does not import it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from galnet.errors import GalnetValueError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["resolve_device", "progress", "progress_enabled", "chunks", "run_chunks",
           "run_batches", "DEVICE_HELP"]

T = TypeVar("T")

#: One-line help for a ``--device`` option.
DEVICE_HELP = "torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps"

_DEVICE_RE = re.compile(r"^(cpu|cuda|mps)(:(\d+))?$")


def resolve_device(name: Any = "auto", option: str = "device") -> torch.device:
    """The :class:`torch.device` for ``name``.

    ``"auto"`` or None: ``cuda`` when CUDA is available, else ``cpu``. ``"cpu"``, ``"cuda"``,
    ``"cuda:N"``, ``"mps"`` and :class:`torch.device` objects are checked against what this
    machine has. ``option`` names the option in the error message.

    Raises
    ------
    GalnetValueError : an unknown name ("gpu0"), CUDA/MPS asked for but not available, or a CUDA
        index beyond the device count.
    """
    import torch

    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(name).strip().lower()
    m = _DEVICE_RE.match(text)
    if m is None:
        raise GalnetValueError(f"{option} {str(name)!r} is not a device ({DEVICE_HELP})",
                               option, name)
    kind, index = m.group(1), m.group(3)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise GalnetValueError(f"{option} {str(name)!r}: CUDA is not available on this machine"
                                   " (use cpu or auto)", option, name)
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise GalnetValueError(f"{option} {str(name)!r}: this machine has {count} CUDA "
                                   f"device(s) (cuda:0 to cuda:{count - 1})", option, name)
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise GalnetValueError(f"{option} {str(name)!r}: MPS is not available on this machine"
                                   " (use cpu or auto)", option, name)
    return torch.device(text)


def progress_enabled(enable: bool | None = None) -> bool:
    """Whether a progress bar is shown: never when ``enable`` is False or the ``galnet`` logger is
    quiet (level above WARNING); otherwise only when stderr is a terminal."""
    if enable is False:
        return False
    if logging.getLogger("galnet").getEffectiveLevel() > logging.WARNING:
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def progress(iterable: Iterable[T] | None = None, total: int | None = None,
             desc: str | None = None, enable: bool | None = None, **kwargs):
    """A tqdm bar over ``iterable`` (or a manual one: ``bar.update(k)``; ``bar.close()``).

    Shown only when :func:`progress_enabled` (``enable``) says so; otherwise a disabled tqdm,
    which iterates and accepts ``update``/``close`` silently. ``kwargs`` go to tqdm (``unit``...).
    """
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not progress_enabled(enable),
                file=sys.stderr, **kwargs)


def chunks(n: int, size: int, option: str = "chunk") -> Iterator[slice]:
    """Slices ``[0:size], [size:2 size], ...`` covering ``range(n)`` (the last one shorter).

    Raises :class:`GalnetValueError` naming ``option`` when ``size`` is not an integer >= 1 or
    ``n`` is negative.
    """
    if isinstance(size, bool) or not isinstance(size, int | _np_integer()) or size < 1:
        raise GalnetValueError(f"{option} must be an integer >= 1, got {size!r}", option, size)
    n = int(n)
    if n < 0:
        raise GalnetValueError(f"number of items must be >= 0, got {n}", "n", n)
    size = int(size)
    for lo in range(0, n, size):
        yield slice(lo, min(n, lo + size))


def run_chunks(fn: Callable[[slice], T], n: int, size: int, *, progress: bool | None = None,
               desc: str | None = None, unit: str = " stamps", option: str = "chunk") -> list[T]:
    """``[fn(s) for s in chunks(n, size)]`` with a progress bar advanced by each chunk's length.

    ``progress``: False never shows a bar; None/True show one when stderr is a terminal (see
    :func:`progress_enabled`).
    """
    out: list[T] = []
    bar = _bar(total=n, desc=desc, enable=progress, unit=unit)
    try:
        for s in chunks(n, size, option):
            out.append(fn(s))
            bar.update(s.stop - s.start)
    finally:
        bar.close()
    return out


def run_batches(fn: Callable[[Any], T], batches: Iterable[Any], *, total: int | None = None,
                progress: bool | None = None, desc: str | None = None,
                unit: str = " stamps") -> list[T]:
    """``[fn(b) for b in batches]`` with a progress bar advanced by ``len(b)`` (``total``: the
    number of items over all batches, when known)."""
    out: list[T] = []
    bar = _bar(total=total, desc=desc, enable=progress, unit=unit)
    try:
        for b in batches:
            out.append(fn(b))
            bar.update(len(b))
    finally:
        bar.close()
    return out


def _bar(total, desc, enable, unit):
    return progress(None, total=total, desc=desc, enable=enable, unit=unit)


def _np_integer():
    import numpy as np

    return np.integer
