"""Sérsic parameters of galaxy stamps with GaLNet: arrays in, astropy table out.

:func:`predict_arrays` runs the network on stamps (N, H, W) and PSFs (N or 1, h, w) in chunks
(:func:`galnet.runner.run_chunks`) and, unless ``chi2=False``, renders each predicted model
through its PSF to give ``chi2nu`` (and the model's optimal ``snr``) against the stamp; stamps of
another size than the network's 61 x 61 are padded or cropped as the FITS path does
(:func:`galnet.io.cutouts.load_stamps`, flag ``PADDED``). :func:`predict` does the same for a
:class:`galnet.io.batch.StampBatch` (what :func:`galnet.io.cutouts.load_stamps` / ``load_frame``
read from FITS) and returns the catalogue of ``galnet predict`` (a contract; see
``docs/predict.md``; built by :func:`galnet.io.catalog.stamp_catalog`): ``id, x, y, mag, flux,
re_pix, re_arcsec, n, q, pa_deg`` each with ``_err``, then ``chi2nu``, ``snr``, ``flags``
(:class:`galnet.flags.Flag`). :func:`predict_files` is ``galnet predict``: files in, catalogue
file out, with its provenance in ``meta['provenance']``.

Conventions: :mod:`galnet.conventions`. ``x, y`` and ``re_pix`` are in the pixels of the *input*
(for rebinned or cut-out stamps they are mapped back with the stamp's transform).
``chi2nu = sum(((image - model) / sigma)^2) / (N_pix - 7)`` over unmasked pixels (7
parameters: ``len(galnet.params.SERSIC)``); ``sigma`` is the
sigma map when given, else the stamp's robust sky rms (:func:`galnet.nn.model.sky_rms`).
Any row whose parameters or errors are not finite gets the ``NONFINITE`` flag.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from galnet.conventions import magnitudes
from galnet.errors import GalnetValueError
from galnet.flags import LOW_SNR_LIMIT, Flag
from galnet.nn.model import (
    _RING,
    DEFAULT_WEIGHTS,
    GaLNet,
    decode,
    load_model,
    prepare_inputs,
    sky_rms,
)
from galnet.params import SERSIC
from galnet.profiles.render import DEFAULT_CONFIG, psf_transform, render_grouped, window_sizes
from galnet.runner import resolve_device, run_batches, run_chunks

__all__ = ["predict_arrays", "predict", "predict_files", "open_inputs", "out_of_prior",
           "result_flags", "weights_provenance", "CHI2_RENDER", "LOW_SNR_LIMIT", "RESULT_KEYS"]

log = logging.getLogger(__name__)

#: Renderer accuracy for the chi2nu models: the default (exact) configuration. Cheaper windows
#: (e.g. ``RenderConfig(window=2, windows=(4, 9))``, 2.7x faster) err by up to ~2% of the peak for
#: compact galaxies, many sigma for bright ones: not good enough for a goodness of fit.
CHI2_RENDER = DEFAULT_CONFIG

#: The measured quantities of :func:`predict_arrays` (each with ``_err``): the parameter table's
#: names, with the flux in place of the magnitude.
RESULT_KEYS: tuple[str, ...] = tuple("flux" if p.role == "mag" else p.name for p in SERSIC)


def _native(a):
    """``a`` as an array in native byte order (big-endian FITS data straight from
    ``fits.getdata``); tensors and None pass through."""
    if a is None or isinstance(a, torch.Tensor):
        return a
    a = np.asarray(a)
    if a.dtype.byteorder not in ("=", "|") and a.dtype.byteorder != _NATIVE:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


_NATIVE = "<" if np.little_endian else ">"


#: Fewest unmasked pixels in the outer ring for its sky rms (:func:`sky_rms`) to be used; with
#: fewer (a small stamp padded to 61 px, a crowded border), the noise comes from the sigma map or,
#: without one, from all unmasked pixels.
MIN_RING_PIXELS = 100


def _noise(im: torch.Tensor, m: torch.Tensor | None, sigma: torch.Tensor | None) -> torch.Tensor:
    """Sky rms (B,) that scales the network's input: the outer ring's (as in training), unless
    the ring has fewer than :data:`MIN_RING_PIXELS` unmasked pixels."""
    B, H, W = im.shape
    if m is None:
        return sky_rms(im)
    noise = sky_rms(torch.where(m, torch.nan, im), nan=True)
    ring = torch.ones(H, W, dtype=torch.bool, device=im.device)
    ring[_RING:-_RING, _RING:-_RING] = False
    few = ((~m) & ring).sum(dim=(1, 2)) < MIN_RING_PIXELS
    if not bool(few.any()):
        return noise
    good = ~m if sigma is None else (~m) & (sigma > 0) & torch.isfinite(sigma)
    if sigma is not None:
        alt = torch.where(good, sigma, torch.nan).flatten(1).nanmedian(dim=1).values
    else:
        v = torch.where(good, im, torch.nan).flatten(1)
        med = v.nanmedian(dim=1, keepdim=True).values
        alt = 1.4826 * (v - med).abs().nanmedian(dim=1).values
    alt = torch.where(torch.isfinite(alt) & (alt > 0), alt, noise)
    return torch.where(few, alt, noise)


def predict_arrays(
    images,
    psfs,
    *,
    sigma=None,
    mask=None,
    model: GaLNet | str | Path | None = None,
    device: str | torch.device | None = "cpu",
    batch: int = 2048,
    chi2: bool = True,
    models_out: Callable[[int, np.ndarray], Any] | None = None,
    progress: bool = False,
    zeropoint: float | None = None,
    rebin: str | int = 1,
) -> dict[str, np.ndarray]:
    """Run GaLNet on stamps; returns numpy arrays of length N (pixel units of the stamps given).

    Parameters
    ----------
    images : (N, H, W) or (H, W) stamps, image units, sky-subtracted, any byte order. Stamps of
        another size than the network's (61 x 61) are centred, padded (padded pixels masked, flag
        ``PADDED``) or cropped, as for FITS input; positions and radii come back in the pixels of
        ``images``.
    psfs : (h, w) or (N, h, w) effective PSFs, odd sizes (normalised here).
    sigma : 1-sigma noise map of the shape of ``images`` [default: each stamp's sky rms].
    mask : bool of the shape of ``images``, True = pixel ignored (set to 0 for the network, left
        out of chi2). Non-finite pixels are masked too (flag ``NONFINITE``).
    model : a :class:`GaLNet`, a weights path, or None for the shipped hsc-r weights.
    device : torch device ("cpu", "cuda", "auto"; :func:`galnet.runner.resolve_device`).
    batch : stamps per chunk.
    chi2 : render the predicted models for ``chi2nu`` and ``snr`` (else NaN).
    models_out : called as ``models_out(start, models)`` with each chunk's model stamps (61 x 61).
    progress : progress bar on a terminal.
    zeropoint : AB magnitude of one image unit; adds ``mag`` and ``mag_err``.
    rebin : for stamps other than 61 x 61: 1 (pad/crop), 2, 3 or "auto" (as ``galnet predict``).

    Returns
    -------
    dict with ``x, y, flux, re_pix, n, q, pa_deg`` and their ``_err``, ``noise`` (the sky rms the
    network used), ``chi2nu``, ``snr``, ``flags`` (int64, :class:`galnet.flags.Flag`) and, with a
    zeropoint, ``mag``, ``mag_err``.
    """
    dev = resolve_device(device)
    model = _model(model, dev)
    S, P = model.config.stamp, model.config.psf_size
    images, psfs, sigma, mask = (_native(a) for a in (images, psfs, sigma, mask))
    if np.ndim(images) == 2:
        images = images[None]
        sigma = None if sigma is None else np.asarray(sigma)[None]
        mask = None if mask is None else np.asarray(mask)[None]
    if np.ndim(images) != 3 or np.shape(images)[0] == 0:
        raise GalnetValueError(f"images must have shape (N, H, W) or (H, W), got "
                               f"{tuple(np.shape(images))}", "images")
    direct = (tuple(np.shape(images)[1:]) == (S, S) and np.ndim(psfs) in (2, 3)
              and tuple(np.shape(psfs)[-2:]) == (P, P))
    if direct:
        images, mask, base = _mask_nonfinite(images, sigma, mask)
        res = _run(images, psfs, sigma, mask, model, dev, batch, chi2, models_out, progress)
    else:
        res, base = _run_cutouts(images, psfs, sigma, mask, model, dev, batch, chi2, models_out,
                                 progress, rebin)
    res["flags"] = result_flags(res, model, base)
    if zeropoint is not None:
        res["mag"], res["mag_err"] = _magnitudes(res["flux"], res["flux_err"], zeropoint)
    return res


def _mask_nonfinite(images, sigma, mask):
    """Non-finite pixels (of the image or sigma) masked and set to 0, as the FITS path does; the
    stamps that had any (outside the user's mask) get ``NONFINITE``. ``(images, mask, flags)``;
    untouched (flags None) when every pixel is finite."""
    im = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    bad = ~np.isfinite(im)
    if sigma is not None:
        sg = sigma.numpy() if isinstance(sigma, torch.Tensor) else np.asarray(sigma)
        if sg.shape == im.shape:
            bad |= ~np.isfinite(sg)
    if not bad.any():
        return images, mask, None
    m = np.zeros(im.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != im.shape:
        return images, mask, None  # _run names the shape error
    flags = np.where((bad & ~m).any(axis=(1, 2)), int(Flag.NONFINITE), 0).astype(np.int64)
    return np.where(bad, 0.0, im).astype(im.dtype), m | bad, flags


def _model(model, dev: torch.device) -> GaLNet:
    if not isinstance(model, GaLNet):
        model = load_model(model, device=dev)
    if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        model = model.to(dev).folded()  # callers that loop over chunks fold once beforehand
    return model.to(dev)


def _magnitudes(flux, flux_err, zeropoint: float) -> tuple[np.ndarray, np.ndarray]:
    zp = float(zeropoint)
    if not math.isfinite(zp):
        raise GalnetValueError(f"zeropoint must be a finite number, got {zeropoint!r}",
                               "zeropoint", zeropoint)
    return magnitudes(flux, flux_err, zp)


def _run_cutouts(images, psfs, sigma, mask, model, dev, batch, chi2, models_out, progress, rebin):
    """Stamps of another size: through the FITS path's cutouts, results in input pixels."""
    from galnet.io.batch import to_input_coords
    from galnet.io.cutouts import load_stamps

    b = load_stamps(images, psfs, sigma=sigma, mask=mask, rebin=rebin, pixel_scale=1.0,
                    zeropoint=0.0)
    res = _run(b.images, b.psfs, b.sigma if sigma is not None else None, b.mask, model, dev,
               batch, chi2, models_out, progress)
    res.update(to_input_coords(res, b))
    res.pop("re_arcsec", None)
    res.pop("re_arcsec_err", None)
    return res, b.flags


@torch.inference_mode()
def _run(images, psfs, sigma, mask, model: GaLNet, dev: torch.device, batch: int, chi2: bool,
         models_out, progress) -> dict[str, np.ndarray]:
    """The network (and the chi2 models) on (N, S, S) stamps, chunk by chunk."""
    cfg = model.config
    model = model.to(memory_format=torch.channels_last)
    S, P = cfg.stamp, cfg.psf_size
    images = torch.as_tensor(images)
    psfs = torch.as_tensor(psfs)
    if images.ndim != 3 or tuple(images.shape[1:]) != (S, S):
        raise GalnetValueError(f"images must have shape (N, {S}, {S}), got {tuple(images.shape)}",
                               "images")
    N = images.shape[0]
    if psfs.ndim == 2:
        psfs = psfs[None]
    if psfs.ndim != 3 or tuple(psfs.shape[1:]) != (P, P) or psfs.shape[0] not in (1, N):
        raise GalnetValueError(f"psfs must have shape ({P}, {P}) or ({N}, {P}, {P}), "
                               f"got {tuple(psfs.shape)}", "psfs")
    for name, a in (("sigma", sigma), ("mask", mask)):
        if a is not None and tuple(np.shape(a)) != tuple(images.shape):
            raise GalnetValueError(f"{name} must have the shape of images {tuple(images.shape)}, "
                                   f"got {tuple(np.shape(a))}", name)

    res: dict[str, np.ndarray] = {k: np.empty(N) for k in RESULT_KEYS}
    res.update({f"{k}_err": np.empty(N) for k in RESULT_KEYS})
    res.update(noise=np.empty(N), chi2nu=np.full(N, np.nan), snr=np.full(N, np.nan))
    one_psf = psfs.shape[0] == 1
    psf1 = psf1_fft = None
    if one_psf:
        psf1 = (psfs / psfs.sum(dim=(1, 2), keepdim=True)).to(dev, torch.float32)
        psf1_fft = psf_transform(psf1, (S, S))

    def chunk(sl: slice) -> None:
        lo, hi = sl.start, sl.stop
        im = images[lo:hi].to(dev, torch.float32)
        B = hi - lo
        m = None if mask is None else torch.as_tensor(mask[lo:hi]).to(dev, torch.bool)
        sg = None if sigma is None else torch.as_tensor(sigma[lo:hi]).to(dev, torch.float32)
        noise = _noise(im, m, sg)
        if m is not None:
            im = torch.where(m, 0.0, im)
        ps = psf1.expand(B, P, P) if one_psf else psfs[lo:hi].to(dev, torch.float32)
        if not one_psf:
            ps = ps / ps.sum(dim=(1, 2), keepdim=True)
        x, p, noise = prepare_inputs(im, ps, noise)
        out, log_b = model(x.contiguous(memory_format=torch.channels_last), p)
        d = decode(out.float(), log_b.float(), noise, cfg)
        for k in RESULT_KEYS:
            res[k][lo:hi] = d[k].cpu().numpy()
            res[f"{k}_err"][lo:hi] = d[f"{k}_err"].cpu().numpy()
        res["noise"][lo:hi] = noise.cpu().numpy()
        if chi2:
            fft = psf1_fft if one_psf else psf_transform(ps, (S, S))
            ok = _finite_rows(d, RESULT_KEYS)
            d = _safe_params(d, ok, (S - 1) / 2)
            win = window_sizes(*(d[k].cpu().numpy() for k in ("re_pix", "n", "q")), CHI2_RENDER)
            mod = render_grouped(d["x"], d["y"], d["flux"], d["re_pix"], d["n"], d["q"],
                                 torch.deg2rad(d["pa_deg"]), fft, (P, P), (S, S), win,
                                 CHI2_RENDER)
            sig = noise[:, None, None].expand(B, S, S) if sg is None else sg
            w = torch.ones_like(im) if m is None else (~m).float()
            w = w * (sig > 0)
            sig = torch.where(sig > 0, sig, 1.0)
            chi = ((im - mod) / sig) ** 2 * w
            dof = (w.sum(dim=(1, 2)) - len(SERSIC)).clamp_min(1)
            c2 = (chi.sum(dim=(1, 2)) / dof).cpu().numpy()
            snr = torch.sqrt(((mod / sig) ** 2 * w).sum(dim=(1, 2))).cpu().numpy()
            okn = ok.cpu().numpy()
            res["chi2nu"][lo:hi] = np.where(okn, c2, np.nan)
            res["snr"][lo:hi] = np.where(okn, snr, np.nan)
            if models_out is not None:
                models_out(lo, mod.cpu().numpy())

    run_chunks(chunk, N, batch, progress=progress, desc="predict", option="batch")
    return res


def _finite_rows(d: dict[str, torch.Tensor], keys) -> torch.Tensor:
    ok = torch.ones_like(d[keys[0]], dtype=torch.bool)
    for k in keys:
        ok &= torch.isfinite(d[k]) & torch.isfinite(d[f"{k}_err"])
    return ok


def _safe_params(d: dict[str, torch.Tensor], ok: torch.Tensor, c0: float
                 ) -> dict[str, torch.Tensor]:
    """``d`` with non-finite rows replaced by a zero-flux profile (rendered, then ignored)."""
    if bool(ok.all()):
        return d
    safe = {"x": c0, "y": c0, "flux": 0.0, "re_pix": 1.0, "n": 1.0, "q": 1.0, "pa_deg": 0.0}
    return {**d, **{k: torch.where(ok, d[k], torch.full_like(d[k], v)) for k, v in safe.items()}}


def out_of_prior(res: dict[str, np.ndarray], model: GaLNet) -> np.ndarray:
    """True where a prediction lies outside the model's training prior (``config.info['prior']``:
    re_pix, n and log10(flux / noise) ranges; a 10% margin on re and n, 0.2 dex on the flux)."""
    prior = model.config.info.get("prior") or {}
    bad = np.zeros(len(res["x"]), dtype=bool)
    if "re_pix" in prior:
        lo, hi = prior["re_pix"]
        bad |= (res["re_pix"] < lo / 1.1) | (res["re_pix"] > hi * 1.1)
    if "n" in prior:
        lo, hi = prior["n"]
        bad |= (res["n"] < lo / 1.1) | (res["n"] > hi * 1.1)
    if "logflux_noise" in prior:
        lo, hi = prior["logflux_noise"]
        with np.errstate(divide="ignore", invalid="ignore"):
            lf = np.log10(np.maximum(res["flux"], 1e-30) / res["noise"])
        bad |= (lf < lo - 0.2) | (lf > hi + 0.2)
    return bad


def result_flags(res: dict[str, np.ndarray], model: GaLNet, base=None) -> np.ndarray:
    """Flags of :func:`predict_arrays` results: ``base`` (the stamps' flags), ``OUT_OF_PRIOR``,
    ``LOW_SNR`` (snr below :data:`galnet.flags.LOW_SNR_LIMIT`; none without chi2) and
    ``NONFINITE`` for any row with a non-finite parameter or error."""
    n = len(res["x"])
    flags = np.zeros(n, np.int64) if base is None else np.asarray(base, dtype=np.int64).copy()
    flags |= np.where(out_of_prior(res, model), int(Flag.OUT_OF_PRIOR), 0)
    with np.errstate(invalid="ignore"):
        flags |= np.where(res["snr"] < LOW_SNR_LIMIT, int(Flag.LOW_SNR), 0)
    bad = np.zeros(n, dtype=bool)
    for k in RESULT_KEYS:
        bad |= ~np.isfinite(res[k]) | ~np.isfinite(res[f"{k}_err"])
    flags |= np.where(bad, int(Flag.NONFINITE), 0)
    return flags


def predict(stamps, *, model: GaLNet | str | Path | None = None, device="cpu", batch: int = 2048,
            chi2: bool = True, models_out=None, progress: bool = False, assess=None):
    """The ``galnet predict`` catalogue (astropy QTable with units) of a
    :class:`galnet.io.batch.StampBatch`. Positions and radii are mapped to the input pixels.

    ``assess``: optional ``assess(stamps, res, flags, models) -> columns`` run on the
    stamp-pixel results and the rendered models (with ``chi2`` only; it may change ``res`` and
    ``flags`` in place; the returned columns are appended), e.g. the point-source and misfit
    step of the layer that calls this one (:func:`galnet.fitting.assess.assess_stamps`)."""
    from galnet.io.catalog import stamp_catalog

    dev = resolve_device(device)
    model = _model(model, dev)
    models = None
    if assess is not None and chi2:
        models = np.full(stamps.images.shape, np.nan)

        def keep(lo, m, sink=models_out):
            models[lo:lo + len(m)] = m
            if sink is not None:
                sink(lo, m)
    res = _run(stamps.images, stamps.psfs, stamps.sigma, stamps.mask, model, dev, batch, chi2,
               models_out if models is None else keep, progress)
    flags = result_flags(res, model, stamps.flags)
    cols = {} if models is None else assess(stamps, res, flags, models)
    t = stamp_catalog(stamps, res, flags, {"model": str(model.config.info.get("name", "galnet"))})
    for k, v in cols.items():
        t[k] = v
    return t


def predict_files(
    out: str | Path,
    *,
    images=None,
    psf=None,
    sigma=None,
    ivar=None,
    mask=None,
    frame=None,
    positions=None,
    psf_positions=None,
    pixel_scale: float | None = None,
    zeropoint: float | None = None,
    preset: str = "hsc-r",
    model: GaLNet | str | Path | None = None,
    device: str | None = "cpu",
    chunk: int = 4096,
    chi2: bool = True,
    save_models: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    command=None,
    assess=None,
):
    """``galnet predict``: stamps (``images``) or a ``frame`` with ``positions`` -> catalogue
    ``out`` (.ecsv / .fits / .parquet, written atomically; an existing file is refused unless
    ``overwrite``). Streams ``chunk`` stamps at a time.
    ``psf_positions`` (a catalogue path or table with ``x, y`` columns, or an (N, 2) array: frame
    pixels, 0-based) places stamps in their frame for a PSFEx ``psf``.
    ``save_models``: a directory (``galnet predict --save-models DIR``: writes ``DIR/models.fits``)
    or a ``.fits`` path for the model and residual images: one multi-extension FITS
    (:mod:`galnet.io.models`: ``MODEL``, ``RESIDUAL``, ``OBJECTS`` with ids, cutout origins and
    per-object WCS), written atomically at the end (nothing under that name if the run stops).
    ``meta['provenance']`` records the galnet version, ``command`` [default: sys.argv], the inputs,
    the weights (name, sha256), the options and where the zeropoint and pixel scale came from (a
    warning is logged when they are a preset's defaults). ``assess``: as :func:`predict` (the
    CLI passes the point-source and misfit step, :func:`galnet.fitting.assess.assessor`).
    Returns the catalogue (QTable)."""
    import contextlib

    from astropy.table import vstack

    from galnet.io.catalog import catalog_format, write_catalog
    from galnet.io.files import check_writable
    from galnet.io.models import ModelWriter

    catalog_format(out)  # unknown suffix: fail before any work
    check_writable(out, overwrite=overwrite)
    models_path = None if save_models is None else _models_path(save_models)
    dev = resolve_device(device)
    batches = open_inputs(images=images, psf=psf, sigma=sigma, ivar=ivar, mask=mask, frame=frame,
                          positions=positions, psf_positions=psf_positions,
                          pixel_scale=pixel_scale, zeropoint=zeropoint, preset=preset,
                          chunk=chunk)
    weights = weights_provenance(model)
    model = _model(model, dev)  # folded once, not per chunk
    first_meta: dict = {}
    with contextlib.ExitStack() as stack:
        writer = None
        if models_path is not None:  # written when the block ends normally, else discarded
            writer = stack.enter_context(ModelWriter(models_path, overwrite=overwrite))

        def one(b):
            if not first_meta:
                first_meta.update(b.meta)
            sink = None
            if writer is not None:
                def sink(lo, models, b=b):
                    writer.add(b, models, start=lo)
            return predict(b, model=model, device=dev, chi2=chi2 or writer is not None,
                           models_out=sink, assess=assess if chi2 else None)

        tables = run_batches(one, batches, total=len(batches), progress=progress,
                             desc="predict")
        t = vstack(tables, metadata_conflicts="silent") if len(tables) > 1 else tables[0]
        if not chi2:
            t["chi2nu"] = np.nan
            t["snr"] = np.nan
        inputs = {"images": images, "psf": psf, "sigma": sigma, "ivar": ivar, "mask": mask,
                  "frame": frame, "positions": positions, "psf_positions": psf_positions}
        options = {"pixel_scale": pixel_scale, "zeropoint": zeropoint, "preset": str(preset),
                   "device": str(device), "chunk": chunk, "chi2": chi2,
                   **getattr(assess, "options", {}),
                   "save_models": None if models_path is None else str(models_path)}
        t.meta["provenance"] = _provenance(command, inputs, weights, options, first_meta)
        if writer is not None:
            writer.meta = {"provenance": t.meta["provenance"], "model": t.meta.get("model")}
    write_catalog(t, out, overwrite=overwrite)
    return t


def weights_provenance(model):
    """The weights for the provenance: a path (hashed), or name/sha256 of an in-memory model."""
    if model is None:
        return DEFAULT_WEIGHTS
    if isinstance(model, str | os.PathLike):
        return Path(model)
    return {"name": str(model.config.info.get("name", "galnet")), "sha256": None}


def _provenance(command, inputs, weights, options, meta) -> dict:
    """``galnet.io.catalog.provenance`` of a run; logs a warning for preset-default calibration."""
    from galnet.io.catalog import provenance

    files = {k: (str(v) if isinstance(v, str | os.PathLike) else "<array>")
             for k, v in inputs.items() if v is not None}
    sources = {}
    for key in ("zeropoint", "pixel_scale"):
        src = meta.get(f"{key}_source")
        if src is None:
            continue
        sources[key] = str(src)
        if str(src).startswith("preset"):
            log.warning("%s not given and not in the input headers: using the %s default",
                        key, src)
    return provenance(command=command, inputs=files, weights=weights, options=options,
                      sources=sources)


def open_inputs(*, images=None, psf=None, sigma=None, ivar=None, mask=None, frame=None,
                positions=None, psf_positions=None, pixel_scale=None, zeropoint=None,
                preset="hsc-r", chunk: int = 4096, rebin="auto"):
    """The stamps of ``galnet predict`` / ``galnet fit`` inputs as a
    :class:`galnet.io.batch.StampIterator` of batches (``images``, or ``frame`` with
    ``positions``; ``psf_positions`` places stamps in their frame for a PSFEx ``psf``)."""
    from galnet.io.catalog import read_catalog
    from galnet.io.cutouts import iter_frame, iter_stamps

    if (images is None) == (frame is None):
        raise GalnetValueError("give either images (stamps) or frame (with positions)", "images")
    if frame is not None and positions is None:
        raise GalnetValueError("a frame needs a positions catalogue", "positions")
    if psf is None:
        raise GalnetValueError("a PSF is required", "psf")
    kw = dict(sigma=sigma, ivar=ivar, mask=mask, pixel_scale=pixel_scale, zeropoint=zeropoint,
              preset=preset, chunk=chunk, rebin=rebin)
    if psf_positions is not None and not isinstance(psf_positions, np.ndarray):
        t = (read_catalog(psf_positions, role="psf positions")
             if isinstance(psf_positions, str | Path) else psf_positions)
        try:
            psf_positions = np.c_[np.asarray(getattr(t["x"], "value", t["x"]), float),
                                  np.asarray(getattr(t["y"], "value", t["y"]), float)]
        except KeyError as err:
            raise GalnetValueError(f"{psf_positions}: psf positions need x and y columns",
                                   "psf_positions") from err
    return (iter_stamps(images, psf, psf_positions=psf_positions, **kw) if frame is None
            else iter_frame(frame, positions, psf, **kw))


def _models_path(save_models) -> Path:
    """The model-image file of ``save_models``: a ``.fits``/``.fit`` path as given, else a
    directory (created) holding ``models.fits``."""
    from galnet.errors import GalnetFileError

    p = Path(save_models)
    if p.suffix.lower() in (".fits", ".fit"):
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GalnetFileError(f"{save_models}: cannot create directory ({err.strerror or err})"
                              ) from err
    return p / "models.fits"
