"""Stamps in, catalogue out: ``galnet fit`` and ``galnet predict --refine``.

:func:`fit` fits the stamps of one :class:`~galnet.io.batch.StampBatch` (started from the
network, image moments or a catalogue; neighbours subtracted when their model is given, else
masked) and returns the catalogue of ``galnet fit`` (a contract; ``docs/fit.md``): the columns
of ``galnet predict`` plus ``niter``, ``converged``, ``chi2nu_nn`` and the fitted ``sky`` when
one is fitted. Started from the network, the refine is guarded: the network's prior, a centre
bound tied to its errors, and accept-or-revert on chi2 (``REVERTED``). :func:`fit_files` does it
for files, a chunk at a time, and writes the catalogue (and optionally the models and residuals)
atomically.

A stamp that cannot be fitted -- no usable pixel (all masked, non-finite, or ``sigma <= 0``) or
no finite first guess -- is not fitted: its row has NaN parameters and the flags ``NONFINITE``
(and ``MASKED_CENTRE`` when it has no usable pixel); the other stamps are fitted as usual. Any
row whose fitted values or errors are not all finite gets ``NONFINITE``.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from galnet.errors import GalnetValueError
from galnet.fitting.init import auto_mask, init_from_catalog, moments_init
from galnet.fitting.lm import empty_result, fit_arrays
from galnet.fitting.problem import DEFAULT_FIT, FIT_KEYS, FitConfig, subtract_neighbours
from galnet.flags import LOW_SNR_LIMIT, Flag
from galnet.runner import resolve_device, run_batches

__all__ = ["fit", "fit_files", "usable_stamps", "nonfinite_rows", "centre_bounds",
           "CENTRE_RADIUS"]

log = logging.getLogger(__name__)

_SKY_MODES = ("none", "flat")

#: Default radius (stamp px) of the centre bound around the network's position (the bound is
#: ``max(CENTRE_RADIUS, 3 x the network's x_err / y_err)``).
CENTRE_RADIUS = 1.5


def usable_stamps(images, mask=None, sigma=None) -> np.ndarray:
    """(N,) bool: the stamps with at least one usable pixel (unmasked, finite, and with a finite
    positive ``sigma`` when a sigma map is given) -- those :func:`fit_arrays` accepts."""
    ok = np.isfinite(images)
    if mask is not None:
        ok &= ~np.asarray(mask, dtype=bool)
    if sigma is not None:
        s = np.asarray(sigma)
        ok &= np.isfinite(s) & (s > 0)
    return ok.any(axis=(1, 2))


def _start(stamps, init, model, device) -> tuple[dict[str, np.ndarray], str]:
    """Initial parameters (stamp pixels; with their ``_err`` when known) and a name for them:
    ``"nn (...)"`` for the network (also a first-guess catalogue made by it, see
    :func:`_first_guess`), ``"moments"``, or ``"catalogue"``."""
    if isinstance(init, str) and init == "nn":
        from galnet.nn.model import GaLNet, load_model
        from galnet.nn.predict import predict_arrays

        if not isinstance(model, GaLNet):
            model = load_model(model, device=device)
        p = predict_arrays(stamps.images, stamps.psfs, sigma=stamps.sigma, mask=stamps.mask,
                           model=model, device=device, chi2=False)
        keys = (*FIT_KEYS, *(f"{k}_err" for k in FIT_KEYS))
        return {k: p[k] for k in keys}, f"nn ({model.config.info.get('name', 'galnet')})"
    if isinstance(init, str) and init == "moments":
        return moments_init(stamps.images, stamps.psfs, mask=stamps.mask,
                            sigma=stamps.sigma), "moments"
    name = str(getattr(init, "meta", {}).get("first_guess", "catalogue"))
    return init_from_catalog(init, stamps), name


def _first_guess(stamps, init, **kw):
    """Initial parameters of ``stamps`` as a catalogue in input pixels (``init`` nn/moments),
    with their errors; ``meta["first_guess"]`` names them (for the prior and the guard)."""
    from galnet.io.catalog import stamp_catalog

    start, name = _start(stamps, init, kw.get("model"), kw.get("device", "cpu"))
    res = {**{f"{k}_err": np.full(len(stamps), np.nan) for k in FIT_KEYS}, **start,
           "chi2nu": np.full(len(stamps), np.nan), "snr": np.full(len(stamps), np.nan)}
    return stamp_catalog(stamps, res, np.asarray(stamps.flags),
                         {"model": "init", "first_guess": name})


def nonfinite_rows(res: dict) -> np.ndarray:
    """(N,) bool: rows whose fitted values or errors are not all finite."""
    bad = np.zeros(len(res["x"]), bool)
    for k in FIT_KEYS:
        bad |= ~np.isfinite(res[k]) | ~np.isfinite(res[f"{k}_err"])
    return bad


def centre_bounds(start: dict, shape: tuple[int, int], radius: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-stamp bounds (lo, hi: (N, 5) on ``x, y, flux, re_pix, n``, NaN = none; for
    :func:`galnet.fitting.lm.fit_arrays`) that keep the centre within ``max(radius, 3 err)``
    (stamp px; ``radius`` default :data:`CENTRE_RADIUS`) of the start's ``x, y`` (``x_err``,
    ``y_err`` when known)."""
    H, W = shape
    r0 = CENTRE_RADIUS if radius is None else float(radius)
    N = len(np.atleast_1d(start["x"]))
    lo, hi = np.full((N, 5), np.nan), np.full((N, 5), np.nan)
    for j, (k, side) in enumerate((("x", W), ("y", H))):
        c = np.clip(np.asarray(start[k], float), -0.5, side - 0.5)
        err = np.asarray(start.get(f"{k}_err", np.full(N, np.nan)), float)
        r = np.fmax(r0, 3 * np.where(np.isfinite(err), err, 0.0))
        lo[:, j], hi[:, j] = c - r, c + r
    return lo, hi


def fit(stamps, *, init="nn", sky: str = "none", auto_mask_neighbours: bool = True,
        gain: float | None = None, model=None, device="cpu", config: FitConfig = DEFAULT_FIT,
        guard: bool = True, prior: bool = True, nn_prior: bool | None = None,
        centre_radius: float | None = None, neighbours=None, progress: bool = False,
        models_out=None, point_test: bool = True, assess: bool = True):
    """The ``galnet fit`` catalogue (QTable with units) of a :class:`galnet.io.batch.StampBatch`.

    ``init``: ``"nn"`` (GaLNet, the default), ``"moments"`` (:func:`moments_init`), or a
    catalogue (path or table, input pixels). ``neighbours``: None or (N, S, S) model of the
    other sources in each stamp (image units, stamp pixels), subtracted from the data before
    the neighbour mask and the fit. Neighbours are masked with :func:`auto_mask` around the
    initial position unless ``auto_mask_neighbours=False``. ``gain`` (e-/image unit) adds the
    source's Poisson noise to the weights when the stamps have no sigma map.

    The guarded refine (with ``init="nn"``, docs/fit.md): ``prior`` -- the network's values and
    errors as a Gaussian prior (a MAP fit, ``fit_arrays(prior=...)``; ``nn_prior=True`` is the
    old name); the centre bound -- ``|x - x_nn|, |y - y_nn| <= max(centre_radius [1.5 px],
    3 x the network's error)`` (other inits: only when ``centre_radius`` is given; ``inf`` turns
    it off); ``guard`` -- accept or revert: where the fit's chi2 is above that of its start on
    the same pixels and weights, the start is reported (errors from the Fisher matrix there),
    flagged ``REVERTED``.

    Columns: those of ``galnet predict`` (``chi2nu``, ``snr`` of the reported parameters), then
    ``niter``, ``converged``, ``chi2nu_nn`` (the network's parameters' chi2nu on the same
    pixels; NaN unless the start is the network's) and, with ``sky="flat"``, ``sky``,
    ``sky_err``; flags ``FIT_NOT_CONVERGED``, ``BOUND_HIT``, ``N_AT_BOUND``,
    ``RE_UNCONSTRAINED`` (``re_pix`` beyond a quarter of the stamp's smaller side, or at its
    upper bound), ``REVERTED``, ``LOW_SNR``, ``NONFINITE`` (see the module docstring).
    ``models_out``: an object with ``add(stamps, models)`` (e.g. a
    :class:`galnet.io.models.ModelWriter`) that receives the models (N, H, W: Sérsic x PSF plus
    the fitted sky, plus ``neighbours`` when given; NaN for stamps not fitted).

    Point sources and misfits (:mod:`galnet.fitting.assess`, on the fitted pixels): flags
    ``POINT_SOURCE``, ``UNRESOLVED`` (``re_pix`` = the 95% upper limit), ``MISFIT`` and the
    columns ``psf_mag, psf_mag_err, rff, rff_err, asym, asym_err, chi2nu_in``; ``point_test=False``
    skips the PSF fit (no POINT_SOURCE / UNRESOLVED, ``psf_mag`` NaN); ``assess=False`` skips
    the whole step (no such flags or columns; the frame mode measures them itself).
    """
    from galnet.io.catalog import stamp_catalog

    if sky not in _SKY_MODES:
        raise GalnetValueError(f"sky must be 'none' or 'flat', got {sky!r}", "sky", sky)
    device = resolve_device(device)
    N, H, W = stamps.images.shape
    has_map = any(k in stamps.meta for k in ("sigma", "ivar"))
    sigma = stamps.sigma if (has_map or gain is None) else None
    start, name = _start(stamps, init, model, device)
    is_nn = name.startswith("nn")
    if nn_prior and not is_nn:
        raise GalnetValueError("the network prior needs init='nn'", "nn_prior")
    use_prior = bool(prior or nn_prior) and is_nn
    images = stamps.images
    if neighbours is not None:
        images, neighbours = subtract_neighbours(images, neighbours, "stamps")
    has_pixels = usable_stamps(images, stamps.mask, sigma)
    started = np.all([np.isfinite(np.asarray(start[k], float)) for k in FIT_KEYS], axis=0)
    mask = stamps.mask
    if auto_mask_neighbours:
        mask = auto_mask(images, stamps.sigma, stamps.mask, centre=(start["x"], start["y"]))
    usable = usable_stamps(images, mask, sigma) & started
    res = empty_result(N)
    models = np.full(images.shape, np.nan) if models_out is not None or assess else None
    bounded = is_nn or centre_radius is not None
    if usable.any():
        sel = np.flatnonzero(usable)
        psfs = stamps.psfs if len(stamps.psfs) == 1 else stamps.psfs[sel]
        st = {k: np.asarray(v, float)[sel] for k, v in start.items()}
        lo, hi = centre_bounds(st, (H, W), centre_radius) if bounded else (None, None)
        r = fit_arrays(images[sel], psfs, sigma=None if sigma is None else sigma[sel],
                       mask=mask[sel], init={k: st[k] for k in FIT_KEYS}, sky=sky, gain=gain,
                       prior=st if use_prior else None, lo=lo, hi=hi,
                       reference={k: st[k] for k in FIT_KEYS}, guard=guard, device=device,
                       config=config, progress=progress, models=models is not None)
        if models is not None:
            models[sel] = r.pop("model")
        for k, v in r.items():
            res[k][sel] = v
    if not usable.all():
        log.warning("%d of %d stamps could not be fitted (no usable pixel or no finite first "
                    "guess): NaN, flagged NONFINITE", int((~usable).sum()), N)
    flags = np.asarray(stamps.flags, dtype=np.int64).copy()
    unconstrained = res["re_upper"] | (res["re_pix"] > min(H, W) / 4)
    for cond, flag in ((~res["converged"], Flag.FIT_NOT_CONVERGED), (res["bound"], Flag.BOUND_HIT),
                       (res["n_bound"], Flag.N_AT_BOUND),
                       (unconstrained, Flag.RE_UNCONSTRAINED), (res["reverted"], Flag.REVERTED),
                       (res["snr"] < LOW_SNR_LIMIT, Flag.LOW_SNR),
                       (nonfinite_rows(res), Flag.NONFINITE), (~has_pixels, Flag.MASKED_CENTRE)):
        flags |= np.where(cond, int(flag), 0)
    from galnet.fitting.assess import assess_stamps, columns

    cols = columns(assess_stamps(stamps, res, flags, models, images=images, mask=mask,
                                 gain=gain, point_test=point_test)) if assess else {}
    t = stamp_catalog(stamps, res, flags, {"model": name})
    t["niter"] = res["niter"]
    t["converged"] = res["converged"]
    t["chi2nu_nn"] = res["chi2nu_ref"] if is_nn else np.full(N, np.nan)
    if sky == "flat":
        t["sky"] = res["sky"]
        t["sky_err"] = res["sky_err"]
    for k, v in cols.items():
        t[k] = v
    t.meta["fit"] = {"init": name, "sky": sky, "prior": use_prior, "nn_prior": use_prior,
                     "guard": bool(guard), "auto_mask": bool(auto_mask_neighbours),
                     "centre_radius": (float(CENTRE_RADIUS if centre_radius is None else
                                             centre_radius) if bounded else None),
                     "neighbours": neighbours is not None,
                     "point_test": bool(point_test) if assess else None,
                     "scale_errors": bool(config.scale_errors), "dtype": config.dtype}
    if models_out is not None:
        models_out.add(stamps, models if neighbours is None else models + neighbours,
                       mask=mask)  # the mask the fit used (neighbours masked too)
    return t


def _native_size(images) -> int:
    """Odd side of the square stamp that holds the largest input image whole."""
    import contextlib

    from galnet.io.fits import main_input

    with contextlib.ExitStack() as stack:
        cube, _ = main_input(images, "images", stack)
        return int(max(cube.shape[1:])) | 1


def _provenance(stamps_meta: dict, inputs: dict, init, model, options: dict,
                command=None) -> dict:
    """The catalogue's provenance (galnet.io.catalog.provenance) of a ``fit_files`` run."""
    import os

    from galnet.io.catalog import provenance

    files = {k: v for k, v in inputs.items() if isinstance(v, str | os.PathLike)}
    if isinstance(init, str | os.PathLike) and init not in ("nn", "moments"):
        files["init"] = init
    weights = None
    if isinstance(init, str) and init == "nn":
        from galnet.nn.model import DEFAULT_WEIGHTS

        weights = model if isinstance(model, str | os.PathLike) else (
            DEFAULT_WEIGHTS if model is None else {"name": "in-memory GaLNet"})
    sources = {k: stamps_meta[f"{k}_source"] for k in ("zeropoint", "pixel_scale")
               if f"{k}_source" in stamps_meta}
    for k, v in sources.items():
        if str(v).startswith("preset"):
            log.warning("%s from the %s default (no header keyword, WCS or option)", k, v)
    return provenance(command=command, inputs=files, weights=weights, options=options,
                      sources=sources)


def fit_files(out, *, images=None, psf=None, sigma=None, ivar=None, mask=None, frame=None,
              positions=None, psf_positions=None, pixel_scale: float | None = None,
              zeropoint: float | None = None, preset: str = "hsc-r", init="nn",
              sky: str = "none", auto_mask_neighbours: bool = True, gain: float | None = None,
              model=None, device: str | None = "cpu", chunk: int = 1024,
              config: FitConfig = DEFAULT_FIT, native: bool | str = "auto",
              guard: bool = True, prior: bool = True, nn_prior: bool | None = None,
              centre_radius: float | None = None, progress: bool = True, save_models=None,
              overwrite: bool = False, command=None, point_test: bool = True):
    """``galnet fit`` (and ``galnet predict --refine``): the inputs of ``galnet predict`` ->
    catalogue ``out`` (.ecsv / .fits / .parquet, written atomically; an existing file is refused
    unless ``overwrite``), ``chunk`` stamps at a time. See :func:`fit` for ``init``, ``sky``,
    ``auto_mask_neighbours``, ``gain``, ``guard``, ``prior`` (``nn_prior``: its old name),
    ``centre_radius``, ``point_test``. ``native=True`` (``images`` only) fits each input image
    whole, at its own pixels (no cropping, no rebinning; e.g. a galaxy far bigger than 61x61),
    started from ``init`` computed on the usual stamps (rebinning is for the network's input only);
    ``"auto"`` (the default): native when the ``images`` are larger than the preset's stamp,
    else the usual stamps (always for a ``frame``). ``save_models``: a
    FITS path for the fitted models and residuals (:mod:`galnet.io.models`: one
    multi-extension file, written atomically at the end: nothing under that name if the run
    stops). Outputs are checked for writability before any work. The table meta holds the
    provenance (``meta["provenance"]``; ``command``: the command line, default ``sys.argv``).
    Returns the catalogue (QTable)."""
    import contextlib
    import os

    from astropy.table import vstack

    from galnet.io.catalog import catalog_format, read_catalog, write_catalog
    from galnet.io.files import check_writable
    from galnet.nn.predict import open_inputs

    catalog_format(out)
    check_writable(out, overwrite)
    if save_models is not None:
        check_writable(save_models, overwrite)
    if sky not in _SKY_MODES:
        raise GalnetValueError(f"sky must be 'none' or 'flat', got {sky!r}", "sky", sky)
    device = resolve_device(device)
    init_arg = init
    if not (isinstance(init, str) and init in ("nn", "moments")) and not hasattr(init, "colnames"):
        init = read_catalog(init, role="init catalogue")  # a path: read once, fail early
    inputs = dict(images=images, psf=psf, sigma=sigma, ivar=ivar, mask=mask, frame=frame,
                  positions=positions, psf_positions=psf_positions, pixel_scale=pixel_scale,
                  zeropoint=zeropoint, chunk=chunk)
    if native == "auto":
        from galnet.presets import get_preset

        native = (frame is None and images is not None
                  and _native_size(images) > get_preset(preset).stamp)
    if native:
        if frame is not None:
            raise GalnetValueError("native fits take images, not a frame", "frame")
        if not hasattr(init, "colnames"):  # first guesses on the usual stamps
            kw = dict(auto_mask_neighbours=False, model=model, device=device)
            init = vstack([_first_guess(b, init, **kw) for b in open_inputs(preset=preset,
                                                                            **inputs)])
        from galnet.presets import get_preset

        p = get_preset(preset)
        preset = replace(p, stamp=_native_size(images))
        inputs["rebin"] = 1
    batches = open_inputs(preset=preset, **inputs)
    model_arg = model
    if isinstance(init, str) and init == "nn":
        from galnet.nn.model import GaLNet, load_model

        if not isinstance(model, GaLNet):
            model = load_model(model, device=device)
        model = model.folded()
    meta: dict = {}
    with contextlib.ExitStack() as stack:
        writer = None
        if save_models is not None:
            from galnet.io.models import ModelWriter

            writer = stack.enter_context(ModelWriter(save_models, overwrite=overwrite))

        def one(b):
            meta.update(b.meta)
            return fit(b, init=init, sky=sky, auto_mask_neighbours=auto_mask_neighbours,
                       gain=gain, model=model, device=device, config=config, guard=guard,
                       prior=prior, nn_prior=nn_prior, centre_radius=centre_radius,
                       models_out=writer, point_test=point_test)

        tables = run_batches(one, batches, progress=progress, desc="fit")
        t = vstack(tables, metadata_conflicts="silent") if len(tables) > 1 else tables[0]
        init_name = str(init_arg) if isinstance(init_arg, str | os.PathLike) else "table"
        options = dict(preset=getattr(preset, "name", preset), init=init_name, sky=sky,
                       auto_mask_neighbours=auto_mask_neighbours, gain=gain,
                       device=str(device), chunk=chunk, native=bool(native), guard=guard,
                       prior=prior, nn_prior=nn_prior, centre_radius=centre_radius,
                       pixel_scale=pixel_scale, zeropoint=zeropoint,
                       scale_errors=config.scale_errors, dtype=config.dtype,
                       save_models=save_models, point_test=point_test)
        files = {k: v for k, v in inputs.items() if k != "chunk"}
        t.meta["provenance"] = _provenance(meta, files, init_arg, model_arg, options, command)
        if writer is not None:  # written when the block ends normally
            writer.meta = {"provenance": t.meta["provenance"], "fit": t.meta["fit"]}
    write_catalog(t, out, overwrite=overwrite)
    return t
