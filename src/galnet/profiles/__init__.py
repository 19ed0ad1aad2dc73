"""Sérsic profiles and their PSF-convolved stamps (no I/O).

- :mod:`galnet.profiles.sersic`      profile math: exact ``b_n``, ``I_e``, enclosed flux,
  a differentiable incomplete gamma function.
- :mod:`galnet.profiles.render`      the renderer: :func:`~galnet.profiles.render.render` (checked,
  in galnet's conventions), :func:`~galnet.profiles.render.render_tensors` /
  :func:`~galnet.profiles.render.render_grouped` (unchecked, batched), :class:`RenderConfig`.
- :mod:`galnet.profiles.quadrature`  the renderer's quadrature around the centre: Quintic kernel,
  graded cells, exact core cells and ring fluxes.
- :mod:`galnet.profiles.imfit`       Imfit's pixel sub-sampling (``mode="imfit"``, for comparisons).

A new profile family (e.g. a bulge + disk) is a new renderer here, driven by a new table in
:mod:`galnet.params`.
"""
