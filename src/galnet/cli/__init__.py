"""The ``galnet`` command line (also ``python -m galnet``): a thin layer over importable functions.

Commands::

    galnet simulate --preset hsc-r -n 200000 --seed 1 --out train.h5 [--bank BANK] [--snr-min X]
    galnet bank build --data DIR --out BANK [--pixel-scales 0.168 0.2 0.396]
    galnet presets [NAME ...] [--json]
    galnet train --config configs/hsc-r.toml [--data train.h5] [--out-dir DIR] [--epochs N]
    galnet predict --images STAMPS.fits --psf PSF.fits [--sigma S] [--mask M] --out CAT.ecsv
    galnet predict --frame IMAGE.fits --positions CAT --psf PSF --out CAT.fits
    galnet fit --images STAMPS.fits --psf PSF.fits --out CAT.ecsv [--init nn|moments|CAT]
    galnet evaluate --pred CAT --truth TRUTH(.h5|.ecsv) --out REPORT/
    galnet export --to galfit|imfit CAT DIR
    galnet plot CAT MODELS.fits --out FIG.png [--ids ID ...] [--worst N]   (docs/plot.md)
    galnet demo [--out-dir galnet-demo] [-n 2000]
    galnet translate simulate|train|apply|evaluate ...   (docs/translation.md)

Every subcommand takes ``-v/--verbose`` (``-v`` steps, ``-vv`` debug: the ``galnet`` logger at
INFO/DEBUG on stderr) and ``-q/--quiet`` (errors only, no progress bar); progress bars are shown
only when stderr is a terminal. Commands that write take ``--overwrite``: without it an existing
output is refused. Outputs are checked before any work, and a failed run leaves none behind.

Errors print one line ``galnet: error: <message>`` on stderr, without a traceback, naming the
file or the option. Exit status: 0 success; 1 a runtime error (a
:class:`~galnet.errors.GalnetError`: a bad or missing file, a bad value found while running, an
output that cannot be written); 2 a usage error (bad or incompatible options, an unknown preset);
130 interrupted (Ctrl-C). When stdout is closed early (``galnet presets --json | head -1``) the
command stops quietly with status 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import time
import warnings
from collections.abc import Iterator, Sequence

from galnet import __version__
from galnet.cli.options import UsageError
from galnet.errors import GalnetError, GalnetPresetError

__all__ = ["main", "build_parser", "EXIT_ERROR", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser():
    """The ``galnet`` argument parser (see :func:`galnet.cli.parser.build_parser`)."""
    from galnet.cli.parser import build_parser as build

    return build()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _fail(message: str, status: int) -> int:
    print(f"galnet: error: {message}", file=sys.stderr)
    return status


class _OneLine(logging.Formatter):
    """``galnet: warning: message`` (one line; INFO messages without the level)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = " ".join(record.getMessage().split())
        if record.levelno == logging.INFO:
            return f"galnet: {msg}"
        return f"galnet: {record.levelname.lower()}: {msg}"


@contextlib.contextmanager
def _logging(verbose: int, quiet: bool) -> Iterator[None]:
    """The ``galnet`` logger on stderr for one command (WARNING; -v INFO; -vv DEBUG; -q ERROR),
    Python warnings shown as one ``galnet: warning:`` line; all undone afterwards."""
    levels = (logging.WARNING, logging.INFO, logging.DEBUG)
    level = logging.ERROR if quiet else levels[min(verbose, 2)]
    logger = logging.getLogger("galnet")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)

    def show(message, category, filename, lineno, file=None, line=None):
        logger.warning("%s: %s", category.__name__, message)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _stdout_gone() -> None:
    """stdout was closed by the reader: send what is left to /dev/null so that Python's final
    flush does not complain."""
    with contextlib.suppress(Exception):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 runtime error, 2 usage error,
    130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv  # the command line, for the provenance of the outputs
    except UsageError as err:
        return _fail(_one_line(err), EXIT_USAGE)
    except SystemExit as err:  # --help / --version
        return err.code if isinstance(err.code, int) else 0
    if getattr(args, "func", None) is None:
        return _fail("a command is required (simulate, bank, presets, train, predict, fit, "
                     "evaluate, export, plot, translate, demo); see galnet --help", EXIT_USAGE)
    log = logging.getLogger("galnet")
    with _logging(getattr(args, "verbose", 0), getattr(args, "quiet", False)):
        try:
            t0 = time.perf_counter()
            log.info("galnet %s: %s", __version__, shlex.join(["galnet", *argv]))
            status = int(args.func(args))
            sys.stdout.flush()
            log.info("done in %.1f s", time.perf_counter() - t0)
            return status
        except (UsageError, GalnetPresetError) as err:
            return _fail(_one_line(err), EXIT_USAGE)
        except (GalnetError, OSError) as err:  # OSError: disk full, permissions while writing
            if isinstance(err, BrokenPipeError):
                _stdout_gone()
                return EXIT_ERROR
            log.debug("traceback of the error below", exc_info=True)
            return _fail(_one_line(err), EXIT_ERROR)
        except KeyboardInterrupt:
            print("galnet: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
