"""The public Python API: ``galnet.predict``, ``galnet.fit`` (and ``galnet.render``).

Arrays in, the catalogue of the command line out: :func:`predict` is ``galnet predict`` and
:func:`fit` is ``galnet fit`` for data already in memory. Both return the same astropy ``QTable``
as the CLI (columns and units of ``docs/predict.md`` / ``docs/fit.md``, ``flags`` bits of
:class:`galnet.flags.Flag`, ``meta`` with the pixel scale, zeropoint, model, flag definitions and
``provenance``: galnet version, date, the call, the inputs, the weights and their sha256, the
options, and where the pixel scale and zeropoint came from).

Inputs (``images``)
-------------------
- a numpy array, any byte order (big-endian straight from ``fits.getdata`` is fine), any float
  or integer dtype: one 2-D stamp ``(H, W)`` or a cube ``(N, H, W)`` of stamps of any size
  (stamps that are not 61 x 61 are cropped/padded or rebinned as ``galnet predict`` does: flags
  ``PADDED`` / ``REBINNED``; positions and radii come back in the pixels of the input);
- a list of 2-D arrays, possibly of different sizes (one row per element, in list order);
- an :class:`astropy.nddata.NDData` / ``CCDData`` (or a list of them): ``uncertainty`` gives the
  noise (``StdDevUncertainty`` is sigma, ``InverseVariance`` is ivar, ``VarianceUncertainty`` its
  square root), ``mask`` (True = ignored) is used, and the pixel scale comes from ``meta``
  (``PIXSCALE``, ``PIXSCAL1``) or the celestial ``wcs``, the zeropoint from ``meta`` (``MAGZERO``,
  ``MAGZP``, ``ZEROPNT``, ``ZP``, ``MAGZPT``), unless given as arguments;
- an :class:`astropy.nddata.Cutout2D` (or a list): its ``data``; the catalogue gets
  ``x_original, y_original`` (the position in the parent image, ``x + origin_original[0]``) and,
  when the cutout has a celestial WCS, ``ra, dec``;
- a FITS file name (as ``galnet predict --images``).

``psf``: a 2-D effective PSF ``(h, w)`` for all stamps, a cube ``(N, h, w)`` (one per stamp), a
list of 2-D PSFs (one per element of a list of images), or a FITS/PSFEx file name; odd sizes,
any positive normalisation. ``sigma`` / ``ivar`` / ``mask`` (True or nonzero = pixel ignored)
have the shape of ``images`` (a list for a list). Explicit arguments win over NDData attributes.

Conventions: ``docs/conventions.md`` (0-based pixels, pixel centres at integers, ``image[y, x]``;
``pa_deg`` counter-clockwise from +y; AB magnitudes ``mag = zeropoint - 2.5 log10(flux)``).
"""

from galnet.api.functions import fit, predict

__all__ = ["predict", "fit"]
