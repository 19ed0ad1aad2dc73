"""galnet: single-Sérsic structural parameters of galaxies at survey scale.

Data flows one way: :mod:`galnet.profiles.sersic` (profile math) -> :mod:`galnet.profiles.render` (PSF-convolved
stamps) -> :mod:`galnet.sim.simulate` (survey-like training sets) -> network, fitter, evaluation.
Conventions (pixel coordinates, magnitudes, position angles) are defined once in
:mod:`galnet.conventions`; see ``docs/conventions.md``.
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


def __getattr__(name: str):
    # Lazy imports keep `import galnet` (and the CLI's start-up) light: torch loads on first use.
    if name == "render":
        from galnet.profiles.render import render

        return render
    raise AttributeError(f"module 'galnet' has no attribute {name!r}")


__all__ = [
    "__version__",
    "render",
    "GalnetError",
    "GalnetFileError",
    "GalnetPresetError",
    "GalnetPSFError",
    "GalnetValueError",
]
