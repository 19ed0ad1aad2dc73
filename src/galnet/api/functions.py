"""``galnet.predict`` and ``galnet.fit``: the inputs read in batches by the CLI's stamp reader,
each batch through the CLI's function (:func:`galnet.nn.predict.predict`,
:func:`galnet.fitting.runner.fit`), one table in input order with the CLI's columns, units, flags
and provenance."""

from __future__ import annotations

import logging
import os

import numpy as np

from galnet.api.inputs import add_positions, describe, groups, read_inputs
from galnet.errors import GalnetValueError

__all__ = ["predict", "fit"]

_log = logging.getLogger("galnet")


def _run(job, images, psf, sigma, ivar, mask, *, pixel_scale, zeropoint, preset, chunk, rebin,
         ids, psf_positions, weights, options: dict):
    """Read the inputs in batches (as the CLI does), apply ``job(batch) -> QTable`` to each,
    and return one table in input order with the API's columns and provenance."""
    from astropy.table import vstack

    from galnet.io.cutouts import iter_stamps

    items, shared_psf, in_list = read_inputs(images, psf, sigma, ivar, mask)
    preset = "hsc-r" if preset is None else preset
    tables, rows_all = [], []
    given = {"pixel_scale": pixel_scale, "zeropoint": zeropoint}
    sources: dict[str, list[str]] = {k: [] for k in given}
    for rows, kw in groups(items, shared_psf, in_list):
        it0 = items[0] if rows is None else items[int(rows[0])]
        ps = pixel_scale if pixel_scale is not None else it0.pixel_scale
        zp = zeropoint if zeropoint is not None else it0.zeropoint
        if rows is not None:
            row_ids = rows if ids is None else _checked_ids(ids, len(items))[rows]
            pp = None if psf_positions is None else np.asarray(psf_positions)[rows]
        else:
            row_ids, pp = ids, psf_positions
        batches = iter_stamps(**kw, pixel_scale=ps, zeropoint=zp, preset=preset, ids=row_ids,
                              psf_positions=pp, rebin=rebin, chunk=chunk)
        with batches:
            for b in batches:
                for k, v in given.items():
                    src = getattr(it0, f"{k}_source")
                    if v is None and src is not None:
                        b.meta[f"{k}_source"] = src
                    src = b.meta.get(f"{k}_source", "argument")
                    if src not in sources[k]:
                        sources[k].append(src)
                tables.append(job(b))
        if rows is not None:
            rows_all.append(rows)
    t = vstack(tables, metadata_conflicts="silent") if len(tables) > 1 else tables[0]
    if len(rows_all) > 1:
        t = t[np.argsort(np.concatenate(rows_all), kind="stable")]
    if in_list or items[0].wcs is not None or items[0].origin is not None:
        add_positions(t, items if in_list else items * len(t))
    _provenance(t, items, in_list, psf, {k: "; ".join(v) for k, v in sources.items()}, preset,
                weights, {**options, **given})
    return t


def _checked_ids(ids, n: int) -> np.ndarray:
    a = np.asarray(ids)
    if a.shape != (n,):
        raise GalnetValueError(f"ids: expected {n} values (one per image), got shape {a.shape}",
                               "ids")
    return a


def _provenance(t, items, in_list, psf, sources, preset, weights, options) -> None:
    """``meta['provenance']`` as the CLI writes it (io.catalog.provenance): the API records its
    call instead of a command line; a logged warning when a preset default was used."""
    from galnet.io.catalog import provenance

    func = options.pop("function")
    for k, src in sources.items():
        if src.startswith("preset"):
            where = "argument, NDData meta" + (" or WCS" if k == "pixel_scale" else "")
            _log.warning("%s: no %s given (%s): using the %s default %s", func, k, where, src,
                         t.meta.get(k))
    if in_list:
        inputs = {"images": [describe(it) for it in items] if len(items) <= 20
                  else f"list of {len(items)} images"}
    else:
        inputs = {"images": describe(items[0])}
    inputs["psf"] = describe(psf)
    t.meta["provenance"] = provenance(command=f"{func}(...) (Python API)", inputs=inputs,
                                      weights=weights, options={"preset": preset, **options},
                                      sources=sources)


def _load_model(model, device):
    """(folded GaLNet on the device, the device, the weights for the provenance)."""
    from galnet.nn.model import DEFAULT_WEIGHTS, GaLNet, load_model
    from galnet.runner import resolve_device

    dev = resolve_device(device)
    if isinstance(model, GaLNet):
        weights = {"name": str(model.config.info.get("name", "galnet")), "sha256": None}
    else:
        weights = DEFAULT_WEIGHTS if model is None else model
        model = load_model(model, device=dev)
    return model.to(dev).folded(), dev, weights


def predict(images, psf, sigma=None, mask=None, *, ivar=None, pixel_scale: float | None = None,
            zeropoint: float | None = None, preset: str | None = None, model=None,
            device: str = "cpu", refine: bool = False, chi2: bool = True, ids=None,
            psf_positions=None, rebin: str | int = "auto", chunk: int = 4096,
            point_test: bool = True):
    """Sérsic parameters of galaxy stamps with GaLNet: ``galnet predict`` on arrays.

    Parameters
    ----------
    images : stamps, image units, sky-subtracted: array (H, W) or (N, H, W), list of 2-D arrays,
        NDData/CCDData, Cutout2D, a list of those, or a FITS file name (module docstring).
    psf : effective PSF (h, w), (N, h, w), a list of 2-D PSFs, or a FITS/PSFEx file name.
    sigma : 1-sigma noise of the images' shape, image units [default: NDData uncertainty, else
        each stamp's robust sky rms].
    mask : nonzero/True = pixel ignored, the images' shape [default: NDData mask, else none].
    ivar : inverse variance instead of sigma.
    pixel_scale : arcsec/pixel [default: NDData meta/WCS, else the preset's].
    zeropoint : AB mag of one image unit [default: NDData meta, else the preset's].
    preset : survey preset for the defaults and stamp geometry [default: ``"hsc-r"``].
    model : GaLNet weights path or a loaded GaLNet [default: the shipped hsc-r weights].
    device : ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``. [default: "cpu"]
    refine : refine the network's parameters with the forward-model fit (``galnet predict
        --refine``; the columns of :func:`fit`).
    chi2 : compute ``chi2nu`` and ``snr`` of the predicted models (else NaN). [default: True]
    ids : (N,) row identifiers [default: 0..N-1, list order for lists].
    psf_positions : (N, 2) frame positions (x, y, 0-based) of the stamps, for a PSFEx ``psf``.
    rebin : ``"auto"`` (as the CLI) or a factor 1, 2, 3 for every stamp.
    chunk : stamps per batch (bounded memory).
    point_test : run the point-source test (a PSF model competes with the Sérsic; flags
        ``POINT_SOURCE``, ``UNRESOLVED``, column ``psf_mag``). [default: True]

    Returns
    -------
    astropy QTable: the catalogue of ``galnet predict`` (``docs/predict.md``): ``id, x, y, mag,
    flux, re_pix, re_arcsec, n, q, pa_deg`` each with ``_err``, ``chi2nu``, ``snr``, ``flags``;
    ``x, y, re_pix`` in input pixels; with ``chi2`` (:mod:`galnet.fitting.assess`)
    ``psf_mag, psf_mag_err, rff, rff_err, asym, asym_err, chi2nu_in`` and the flags
    ``POINT_SOURCE``, ``UNRESOLVED`` (``re_pix`` = the 95% upper limit), ``MISFIT``.

    Raises
    ------
    GalnetValueError : a bad array (wrong ndim, sigma/mask shape mismatch, no usable pixel).
    GalnetPSFError : a missing, non-finite, even-sized or wrongly counted PSF.
    """
    if refine:
        if not chi2:
            raise GalnetValueError("refine does not combine with chi2=False", "chi2")
        return _fit(images, psf, sigma, mask, ivar=ivar, pixel_scale=pixel_scale,
                   zeropoint=zeropoint, preset=preset, init="nn", model=model, device=device,
                   ids=ids, psf_positions=psf_positions, rebin=rebin,
                   chunk=min(chunk, 1024), function="galnet.predict", point_test=point_test)
    from galnet.fitting.assess import assessor
    from galnet.nn.predict import predict as predict_batch

    net, dev, weights = _load_model(model, device)
    assess = assessor(point_test=point_test) if chi2 else None

    def job(b):
        return predict_batch(b, model=net, device=dev, chi2=chi2, assess=assess)

    return _run(job, images, psf, sigma, ivar, mask, pixel_scale=pixel_scale,
                zeropoint=zeropoint, preset=preset, chunk=chunk, rebin=rebin, ids=ids,
                psf_positions=psf_positions, weights=weights,
                options=dict(function="galnet.predict", device=str(dev), refine=False,
                             chi2=chi2, rebin=rebin, chunk=chunk, point_test=point_test))


def fit(images, psf, sigma=None, mask=None, *, init="nn", ivar=None,
        pixel_scale: float | None = None, zeropoint: float | None = None,
        preset: str | None = None, sky: str = "none", auto_mask_neighbours: bool = True,
        gain: float | None = None, prior: bool = True, guard: bool = True,
        nn_prior: bool | None = None, scale_errors: bool = False,
        model=None, device: str = "cpu", ids=None, psf_positions=None,
        rebin: str | int = "auto", chunk: int = 1024, point_test: bool = True):
    """Forward-model Sérsic fits of galaxy stamps: ``galnet fit`` on arrays.

    Parameters
    ----------
    images, psf, sigma, mask, ivar, pixel_scale, zeropoint, preset, ids, psf_positions, rebin,
    chunk, model, device : as :func:`predict`.
    init : first guess: ``"nn"`` (GaLNet), ``"moments"``, or a catalogue (table or file name,
        input pixels; matched by ``id``). [default: "nn"]
    sky : ``"none"`` or ``"flat"`` (also fit a constant sky). [default: "none"]
    auto_mask_neighbours : mask neighbours found around the first guess. [default: True]
    gain : e-/image unit: adds the source's Poisson noise when there is no sigma map.
    prior : with ``init="nn"``, the network's values and errors as a Gaussian prior (a MAP fit;
        docs/fit.md "The guard"). [default: True]
    guard : accept-or-revert against the network's parameters on the same pixels (flag
        ``REVERTED``). [default: True]
    nn_prior : the old name of ``prior``; when given it overrides ``prior``.
    scale_errors : multiply the errors by ``sqrt(chi2nu)``. [default: False]
    point_test : as :func:`predict`. [default: True]

    Returns
    -------
    astropy QTable: the catalogue of ``galnet fit`` (``docs/fit.md``): the columns of
    :func:`predict`, then ``niter``, ``converged`` (and ``sky``, ``sky_err`` with
    ``sky="flat"``), ``psf_mag`` ... ``chi2nu_in`` (as :func:`predict`); flags
    ``FIT_NOT_CONVERGED``, ``BOUND_HIT``, ``POINT_SOURCE``, ``UNRESOLVED``, ``MISFIT``.
    """
    return _fit(images, psf, sigma, mask, init=init, ivar=ivar, pixel_scale=pixel_scale,
                zeropoint=zeropoint, preset=preset, sky=sky,
                auto_mask_neighbours=auto_mask_neighbours, gain=gain,
                prior=prior if nn_prior is None else bool(nn_prior), guard=guard,
                scale_errors=scale_errors, model=model, device=device, ids=ids,
                psf_positions=psf_positions, rebin=rebin, chunk=chunk, function="galnet.fit",
                point_test=point_test)


def _fit(images, psf, sigma, mask, *, init="nn", ivar=None, pixel_scale=None, zeropoint=None,
         preset=None, sky="none", auto_mask_neighbours=True, gain=None, prior=True,
         guard=True, scale_errors=False, model=None, device="cpu", ids=None, psf_positions=None,
         rebin="auto", chunk=1024, function: str, point_test: bool = True):
    """:func:`fit`, recording ``function`` (the public call) in the provenance."""
    from galnet.fitting.problem import FitConfig
    from galnet.fitting.runner import fit as fit_batch

    if sky not in ("none", "flat"):
        raise GalnetValueError(f"sky must be 'none' or 'flat', got {sky!r}", "sky", sky)
    init_name = str(init) if isinstance(init, str | os.PathLike) else "catalogue (table)"
    if isinstance(init, str | os.PathLike) and init not in ("nn", "moments"):
        from galnet.io.catalog import read_catalog

        init = read_catalog(init, role="init catalogue")  # a catalogue file: read once, fail early
    if isinstance(init, str) and init == "nn":
        net, dev, weights = _load_model(model, device)
    else:
        from galnet.runner import resolve_device

        net, dev, weights = model, resolve_device(device), None
    cfg = FitConfig(scale_errors=scale_errors)

    def job(b):
        return fit_batch(b, init=init, sky=sky, auto_mask_neighbours=auto_mask_neighbours,
                         gain=gain, model=net, device=dev, config=cfg, prior=prior,
                         guard=guard, point_test=point_test)

    return _run(job, images, psf, sigma, ivar, mask, pixel_scale=pixel_scale,
                zeropoint=zeropoint, preset=preset, chunk=chunk, rebin=rebin, ids=ids,
                psf_positions=psf_positions, weights=weights,
                options=dict(function=function, device=str(dev),
                             refine=function == "galnet.predict", init=init_name, sky=sky,
                             auto_mask_neighbours=auto_mask_neighbours, gain=gain,
                             prior=bool(prior) and init_name == "nn", guard=guard,
                             scale_errors=scale_errors, rebin=rebin,
                             chunk=chunk, point_test=point_test))
