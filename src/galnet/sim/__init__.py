"""Survey simulation: training stamps from a preset's priors, PSFs and backgrounds.

- :mod:`galnet.sim.simulate`  :func:`~galnet.sim.simulate.simulate` (HDF5 out, chunked, atomic,
  deterministic) and :func:`~galnet.sim.simulate.read_params`.
- :mod:`galnet.sim.compose`   one block of stamps: its random draws, rendering and noise.
- :mod:`galnet.sim.psfs`      analytic effective PSFs (Moffat, Kolmogorov).
- :mod:`galnet.sim.bank`      the bank of real backgrounds and PSFs: build, read, gallery cutouts.

The presets (survey pixel scale, depth, priors) live in :mod:`galnet.presets`.
"""
