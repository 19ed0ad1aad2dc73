"""Bank of real backgrounds and real PSFs for the simulator (one HDF5 file; see docs/bank.md).

Backgrounds: 61 x 61 cutouts of real ground-based frames at their native pixel scale, sky-
subtracted and divided by the per-pixel noise so that the noise has unit rms ("noise-normalised";
multiply by the target sky sigma). They keep the real correlated noise, the neighbours and the
artefacts, but no source with a peak S/N > :data:`CENTRE_SNR` within :data:`CENTRE_RADIUS` pixels
of the centre (30, 30): the simulated galaxy is the central object.

PSFs: real *effective* PSFs (pixel response included), resampled to each requested pixel scale,
25 x 25, unit sum, first-moment centroid at the central pixel (12, 12).

Build with :func:`build_bank` (``galnet bank build``), read with :class:`Bank`. The frames and PSF
models come from the data directory (``../shared/data``) and are never copied into the project.

Modules: :mod:`~galnet.sim.bank.frames` (background cutouts), :mod:`~galnet.sim.bank.psf_inputs`
(real PSFs), :mod:`~galnet.sim.bank.build` (the file), :mod:`~galnet.sim.bank.reader`
(:class:`Bank`), :mod:`~galnet.sim.bank.gallery` (real galaxies for figures).
"""

from galnet.sim.bank.build import DEFAULT_SCALES, FORMAT_VERSION, build_bank
from galnet.sim.bank.frames import CENTRE_RADIUS, CENTRE_SNR, MIN_SEPARATION, STAMP
from galnet.sim.bank.gallery import real_galaxy_cutouts
from galnet.sim.bank.psf_inputs import FWHM_RANGE, PSF_SIZE, psf_fwhm, resample_psf
from galnet.sim.bank.reader import Bank

__all__ = [
    "Bank", "build_bank", "real_galaxy_cutouts", "psf_fwhm", "resample_psf", "STAMP", "PSF_SIZE",
    "DEFAULT_SCALES", "FORMAT_VERSION", "CENTRE_SNR", "CENTRE_RADIUS", "MIN_SEPARATION",
    "FWHM_RANGE",
]
