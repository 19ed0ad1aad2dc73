"""Analytic PSF images shared by the fitter's tests (imported as ``from psf_helpers import ...``;
tests/ is on the import path, as for ``galsim_reference``)."""

from __future__ import annotations

import numpy as np


def moffat(size: int = 25, fwhm: float = 3.5, beta: float = 3.0) -> np.ndarray:
    """A round Moffat PSF image (size x size, unit sum, peak on the central pixel)."""
    c = (size - 1) / 2
    y, x = np.mgrid[:size, :size] - c
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    p = (1 + (x**2 + y**2) / alpha**2) ** -beta
    return p / p.sum()
