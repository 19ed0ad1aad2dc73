"""galnet: single-Sérsic structural parameters of galaxies at survey scale.

The public API (``docs/api.md``): :func:`galnet.predict` (GaLNet), :func:`galnet.fit` (the
forward-model fitter) and :func:`galnet.render` (PSF-convolved Sérsic stamps); arrays, NDData or
Cutout2D in, the catalogue of the command line (an astropy QTable) out.

Data flows one way: :mod:`galnet.profiles` (profile math, renderers) -> :mod:`galnet.io` (FITS,
PSFs, cutouts, catalogues) -> :mod:`galnet.sim` (training sets) -> :mod:`galnet.nn` (network) ->
:mod:`galnet.fitting` -> :mod:`galnet.evaluate`. Conventions (pixel coordinates, magnitudes,
position angles) are defined once in :mod:`galnet.conventions`; see ``docs/conventions.md``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from galnet.errors import (  # noqa: E402
    GalnetError,
    GalnetFileError,
    GalnetPresetError,
    GalnetPSFError,
    GalnetValueError,
)

#: Public functions, imported on first use: `import galnet` (and the CLI's start-up) stays light,
#: torch loads only when one is called. No submodule shares these names, so an import of a
#: submodule can never replace the function (the old "module is not callable" bug).
_LAZY = {"predict": "galnet.api", "fit": "galnet.api", "render": "galnet.profiles.render",
         "run_frame": "galnet.frame.pipeline"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        func = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = func  # cached: later look-ups skip __getattr__
        return func
    raise AttributeError(f"module 'galnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "predict",
    "fit",
    "render",
    "run_frame",
    "GalnetError",
    "GalnetFileError",
    "GalnetPresetError",
    "GalnetPSFError",
    "GalnetValueError",
]
