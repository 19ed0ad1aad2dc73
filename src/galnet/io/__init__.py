"""Every reader and writer of galnet: files in, stamps and catalogues out.

- :mod:`galnet.io.fits`     open FITS files with one-line errors, HDUs, lazy cubes, header numbers,
  pixel scale and zeropoint and where they came from.
- :mod:`galnet.io.psf`      PSF sources: image, cube, PSFEx (incl. legacypipe's format).
- :mod:`galnet.io.background` a frame's sky (found and removed with a warning) and noise map.
- :mod:`galnet.io.detect`   source detection and deblending (photutils); cutout size and rebin.
- :mod:`galnet.io.prepare`  stamps to ``S x S``: crop/pad, rebinning rule, noise and masks.
- :mod:`galnet.io.batch`    :class:`~galnet.io.batch.StampBatch` and its map to input pixels.
- :mod:`galnet.io.cutouts`  the readers: stamps (``load_stamps``) or a frame with positions
  (``load_frame``), streamed in chunks (``iter_stamps``, ``iter_frame``).
- :mod:`galnet.io.catalog`  the catalogue: schema, QTable building, provenance, ECSV/FITS/Parquet.
- :mod:`galnet.io.models`   data/model/residual/mask of every stamp: one multi-extension FITS.
- :mod:`galnet.io.files`    the one atomic writer and the output check every command runs first.
"""
