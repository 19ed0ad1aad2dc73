"""Physics-aware galaxy image translation between survey domains (issue 5; docs/translation.md).

Data flows one way, as in the rest of galnet::

    simulate (paired multi-band images of the same galaxies in two domains)
      -> model (U-Net translator, photo-z CNN probe)
      -> losses (pixel, gradient, gradient-flow)
      -> train (translator, photo-z probe)
      -> evaluate (photo-z, colour, structure and pixel probes)

Domains (pixel scale, stamp, bands, PSF FWHM, depth) and the galaxy population are data, in
``galnet/data/translation.toml``.
"""
