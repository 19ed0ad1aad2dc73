"""The forward-model fitter (``galnet fit``): batched Levenberg-Marquardt, CPU or GPU.

- :mod:`~galnet.fitting.problem`: knobs (:class:`FitConfig`), internal coordinates, bounds from
  the parameter table (:func:`fit_bounds`), weights, the model and its Jacobian.
- :mod:`~galnet.fitting.lm`: the LM solver, :func:`fit_arrays` (arrays in, parameters, errors
  and fit statistics out) and :func:`fisher_errors` (Cramér-Rao bounds).
- :mod:`~galnet.fitting.init`: first guesses (:func:`moments_init`, a catalogue) and the
  neighbour mask (:func:`auto_mask`).
- :mod:`~galnet.fitting.runner`: stamps in, catalogue out (:func:`fit`, :func:`fit_files`).
"""

from galnet.fitting.init import auto_mask, init_from_catalog, moments_init
from galnet.fitting.lm import fisher_errors, fit_arrays
from galnet.fitting.problem import DEFAULT_FIT, FIT_KEYS, FitConfig, fit_bounds
from galnet.fitting.runner import fit, fit_files

__all__ = ["FitConfig", "DEFAULT_FIT", "FIT_KEYS", "fit_bounds", "fit_arrays", "fisher_errors",
           "moments_init", "auto_mask", "init_from_catalog", "fit", "fit_files"]
