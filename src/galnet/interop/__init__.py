"""Interop with GALFIT and Imfit: export a catalogue, read their fits back, fit with PyImfit.

- :mod:`~galnet.interop.export`: :func:`export_catalog`, one GALFIT feedme or Imfit config per
  catalogue row (``galnet export``);
- :mod:`~galnet.interop.galfit`: feedme and constraint texts, feedme / image-block readers;
- :mod:`~galnet.interop.imfit`: config texts and parser, best-fit reader, :class:`ImfitLimits`;
- :mod:`~galnet.interop.pyimfit_runner`: :func:`imfit_fit` (the ``imfit`` extra: PyImfit).
"""

from galnet.interop.export import FORMATS, Exported, export_catalog
from galnet.interop.galfit import (
    galfit_constraints,
    galfit_feedme,
    read_galfit_feedme,
    read_galfit_header,
)
from galnet.interop.imfit import (
    DEFAULT_LIMITS,
    ImfitLimits,
    imfit_config,
    parse_imfit_config,
    read_imfit_bestfit,
)
from galnet.interop.pyimfit_runner import imfit_fit

__all__ = [
    "FORMATS", "Exported", "export_catalog",
    "galfit_feedme", "galfit_constraints", "read_galfit_feedme", "read_galfit_header",
    "ImfitLimits", "DEFAULT_LIMITS", "imfit_config", "parse_imfit_config", "read_imfit_bestfit",
    "imfit_fit",
]
