"""Sérsic parameters of galaxy stamps with GaLNet: arrays in, astropy table out.

:func:`predict_arrays` runs the network on stamps (N, 61, 61) and PSFs (N or 1, 25, 25) in
chunks and, unless ``chi2=False``, renders each predicted model through its PSF to give ``chi2nu``
(and the model's optimal ``snr``) against the stamp. :func:`predict` does the same for a
:class:`galnet.io.stamps.StampBatch` (what :func:`galnet.io.stamps.load_stamps` / ``load_frame`` read
from FITS) and returns the catalogue of ``galnet predict`` (a contract; see ``docs/predict.md``):
``id, x, y, mag, flux, re_pix, re_arcsec, n, q, pa_deg`` each with ``_err``, then ``chi2nu``,
``snr``, ``flags`` (:class:`galnet.flags.Flag`).

Conventions: :mod:`galnet.conventions`. ``x, y`` and ``re_pix`` are in the pixels of the *input*
(for rebinned or cut-out stamps they are mapped back with the stamp's transform).
``chi2nu = sum(((image - model) / sigma)^2) / (N_pix - 7)`` over unmasked pixels; ``sigma`` is the
sigma map when given, else the stamp's robust sky rms (:func:`galnet.nn.model.sky_rms`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from galnet.errors import GalnetValueError
from galnet.flags import Flag
from galnet.nn.model import GaLNet, decode, load_model, prepare_inputs, sky_rms
from galnet.profiles.render import DEFAULT_CONFIG, psf_transform, render_grouped, window_sizes

__all__ = ["predict_arrays", "predict", "predict_files", "open_inputs", "catalog_table",
           "CHI2_RENDER", "catalog_columns"]

#: Renderer accuracy for the chi2nu models: the default (exact) configuration. Cheaper windows
#: (e.g. ``RenderConfig(window=2, windows=(4, 9))``, 2.7x faster) err by up to ~2% of the peak for
#: compact galaxies, many sigma for bright ones: not good enough for a goodness of fit.
CHI2_RENDER = DEFAULT_CONFIG

#: Below this model S/N a prediction gets the LOW_SNR flag (the network trained on S/N >= 5; the
#: reported accuracy is for S/N > 10).
LOW_SNR_LIMIT = 10.0

#: Parameters reported with an ``_err`` column, in catalogue order.
_PARAMS = ("x", "y", "mag", "flux", "re_pix", "re_arcsec", "n", "q", "pa_deg")


def catalog_columns() -> list[str]:
    """The catalogue columns of ``galnet predict``, in order."""
    cols = ["id"]
    for p in _PARAMS:
        cols += [p, f"{p}_err"]
    return cols + ["chi2nu", "snr", "flags"]


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.inference_mode()
def predict_arrays(
    images: np.ndarray | torch.Tensor,
    psfs: np.ndarray | torch.Tensor,
    *,
    sigma: np.ndarray | torch.Tensor | None = None,
    mask: np.ndarray | torch.Tensor | None = None,
    model: GaLNet | str | Path | None = None,
    device: str | torch.device | None = "cpu",
    batch: int = 2048,
    chi2: bool = True,
    models_out: Callable[[int, np.ndarray], Any] | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Run GaLNet on stamps; returns numpy arrays of length N (pixel units of the stamps).

    Parameters
    ----------
    images : (N, 61, 61) stamps, image units, sky-subtracted.
    psfs : (25, 25) or (N, 25, 25) effective PSFs (normalised here).
    sigma : (N, 61, 61) 1-sigma noise map [default: each stamp's sky rms].
    mask : (N, 61, 61) bool, True = pixel ignored (set to 0 for the network, left out of chi2).
    model : a :class:`GaLNet`, a weights path, or None for the shipped hsc-r weights.
    device : torch device ("cpu", "cuda", "auto").   batch : stamps per chunk.
    chi2 : render the predicted models for ``chi2nu`` and ``snr`` (else NaN).
    models_out : called as ``models_out(start, models)`` with each chunk's model stamps.

    Returns
    -------
    dict with ``x, y, flux, re_pix, n, q, pa_deg`` and their ``_err``, ``noise`` (the sky rms the
    network used), ``chi2nu``, ``snr``.
    """
    from tqdm.auto import tqdm

    dev = _resolve_device(device)
    if not isinstance(model, GaLNet):
        model = load_model(model, device=dev)
    cfg = model.config
    if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        model = model.to(dev).folded()  # callers that loop over chunks fold once beforehand
    model = model.to(dev).to(memory_format=torch.channels_last)
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

    keys = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")
    res: dict[str, np.ndarray] = {k: np.empty(N) for k in keys}
    res.update({f"{k}_err": np.empty(N) for k in keys})
    res.update(noise=np.empty(N), chi2nu=np.full(N, np.nan), snr=np.full(N, np.nan))
    one_psf = psfs.shape[0] == 1
    if one_psf:
        psf1 = (psfs / psfs.sum(dim=(1, 2), keepdim=True)).to(dev, torch.float32)
        psf1_fft = psf_transform(psf1, (S, S))
    for lo in tqdm(range(0, N, batch), disable=not progress, desc="predict", unit_scale=batch):
        hi = min(N, lo + batch)
        im = images[lo:hi].to(dev, torch.float32)
        B = hi - lo
        m = None if mask is None else torch.as_tensor(mask[lo:hi]).to(dev, torch.bool)
        if m is not None:
            noise = sky_rms(torch.where(m, torch.nan, im), nan=True)
            im = torch.where(m, 0.0, im)
        else:
            noise = sky_rms(im)
        ps = psf1.expand(B, P, P) if one_psf else psfs[lo:hi].to(dev, torch.float32)
        if not one_psf:
            ps = ps / ps.sum(dim=(1, 2), keepdim=True)
        x, p, noise = prepare_inputs(im, ps, noise)
        out, log_b = model(x.contiguous(memory_format=torch.channels_last), p)
        d = decode(out.float(), log_b.float(), noise, cfg)
        for k in keys:
            res[k][lo:hi] = d[k].cpu().numpy()
            res[f"{k}_err"][lo:hi] = d[f"{k}_err"].cpu().numpy()
        res["noise"][lo:hi] = noise.cpu().numpy()
        if chi2:
            fft = psf1_fft if one_psf else psf_transform(ps, (S, S))
            win = window_sizes(*(d[k].cpu().numpy() for k in ("re_pix", "n", "q")), CHI2_RENDER)
            mod = render_grouped(d["x"], d["y"], d["flux"], d["re_pix"], d["n"], d["q"],
                                 torch.deg2rad(d["pa_deg"]), fft, (P, P), (S, S), win,
                                 CHI2_RENDER)
            sig = (noise[:, None, None].expand(B, S, S) if sigma is None
                   else torch.as_tensor(sigma[lo:hi]).to(dev, torch.float32))
            w = torch.ones_like(im) if m is None else (~m).float()
            w = w * (sig > 0)
            sig = torch.where(sig > 0, sig, 1.0)
            chi = ((im - mod) / sig) ** 2 * w
            dof = (w.sum(dim=(1, 2)) - 7).clamp_min(1)
            res["chi2nu"][lo:hi] = (chi.sum(dim=(1, 2)) / dof).cpu().numpy()
            res["snr"][lo:hi] = torch.sqrt(((mod / sig) ** 2 * w).sum(dim=(1, 2))).cpu().numpy()
            if models_out is not None:
                models_out(lo, mod.cpu().numpy())
    return res


def out_of_prior(res: dict[str, np.ndarray], model: GaLNet) -> np.ndarray:
    """True where a prediction lies outside the model's training prior (``config.info['prior']``:
    re_arcsec, n, q ranges; a 10% margin on re and n)."""
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
        lf = np.log10(np.maximum(res["flux"], 1e-30) / res["noise"])
        bad |= (lf < lo - 0.2) | (lf > hi + 0.2)
    return bad


def predict(stamps, *, model: GaLNet | str | Path | None = None, device="cpu", batch: int = 2048,
            chi2: bool = True, models_out=None, progress: bool = False):
    """The ``galnet predict`` catalogue (astropy QTable with units) of a
    :class:`galnet.io.stamps.StampBatch`. Positions and radii are mapped to the input pixels."""
    dev = _resolve_device(device)
    if not isinstance(model, GaLNet):
        model = load_model(model, device=dev)
    res = predict_arrays(stamps.images, stamps.psfs, sigma=stamps.sigma, mask=stamps.mask,
                         model=model, device=dev, batch=batch, chi2=chi2, models_out=models_out,
                         progress=progress)
    flags = np.asarray(stamps.flags, dtype=np.int64).copy()
    flags |= np.where(out_of_prior(res, model), int(Flag.OUT_OF_PRIOR), 0)
    flags |= np.where(res["snr"] < LOW_SNR_LIMIT, int(Flag.LOW_SNR), 0)  # NaN (no chi2): no flag
    return catalog_table(stamps, res, flags, str(model.config.info.get("name", "galnet")))


def catalog_table(stamps, res: dict[str, np.ndarray], flags: np.ndarray, model_name: str):
    """The catalogue (QTable with units) of ``res`` (stamp-pixel parameters and ``_err``,
    ``chi2nu``, ``snr``) for the stamps of a :class:`galnet.io.stamps.StampBatch`: positions and
    radii mapped to the input pixels, ``mag`` from the zeropoint, ``ra``/``dec`` for a frame
    with a celestial WCS. Shared by ``galnet predict`` and ``galnet fit``."""
    from astropy import units as u
    from astropy.table import QTable

    k = np.asarray(stamps.rebin, dtype=float)
    x = np.asarray(stamps.x0) + k * res["x"] + (k - 1) / 2
    y = np.asarray(stamps.y0) + k * res["y"] + (k - 1) / 2
    re = k * res["re_pix"]
    zp = float(stamps.zeropoint)
    flux = res["flux"]
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = zp - 2.5 * np.log10(np.where(flux > 0, flux, np.nan))
        mag_err = 2.5 / math.log(10) * res["flux_err"] / flux
    scale = float(stamps.pixel_scale)
    t = QTable()
    t["id"] = np.asarray(stamps.ids)
    cols = {
        "x": (x, k * res["x_err"], u.pix), "y": (y, k * res["y_err"], u.pix),
        "mag": (mag, mag_err, u.mag), "flux": (flux, res["flux_err"], u.dimensionless_unscaled),
        "re_pix": (re, k * res["re_pix_err"], u.pix),
        "re_arcsec": (re * scale, k * res["re_pix_err"] * scale, u.arcsec),
        "n": (res["n"], res["n_err"], u.dimensionless_unscaled),
        "q": (res["q"], res["q_err"], u.dimensionless_unscaled),
        "pa_deg": (res["pa_deg"], res["pa_deg_err"], u.deg),
    }
    for name, (v, e, unit) in cols.items():
        t[name] = v * unit
        t[f"{name}_err"] = e * unit
    t["chi2nu"] = res["chi2nu"]
    t["snr"] = res["snr"]
    t["flags"] = flags
    if getattr(stamps, "wcs", None) is not None:  # frame with a celestial WCS: sky positions
        sky = stamps.wcs.pixel_to_world(x, y)
        t["ra"] = sky.ra.deg * u.deg
        t["dec"] = sky.dec.deg * u.deg
    t.meta.update({"pixel_scale": scale, "zeropoint": zp, "model": model_name,
                   "flags": {f.name: int(f) for f in Flag}})
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
):
    """``galnet predict``: stamps (``images``) or a ``frame`` with ``positions`` -> catalogue
    ``out`` (.ecsv / .fits / .parquet, written atomically). Streams ``chunk`` stamps at a time.
    ``psf_positions`` (a catalogue path or table with ``x, y`` columns, or an (N, 2) array: frame
    pixels, 0-based) places stamps in their frame for a PSFEx ``psf``.
    With ``save_models``, writes ``models.fits`` and ``residuals.fits`` cubes (N, 61, 61) there.
    Returns the catalogue (QTable)."""
    from astropy.table import vstack
    from tqdm.auto import tqdm

    from galnet.io.stamps import catalog_format, write_catalog

    catalog_format(out)  # unknown suffix: fail before any work
    batches = open_inputs(images=images, psf=psf, sigma=sigma, ivar=ivar, mask=mask, frame=frame,
                          positions=positions, psf_positions=psf_positions,
                          pixel_scale=pixel_scale, zeropoint=zeropoint, preset=preset,
                          chunk=chunk)
    dev = _resolve_device(device)
    if not isinstance(model, GaLNet):
        model = load_model(model, device=dev)
    model = model.to(dev).folded()  # once, not per chunk
    writer = _CubeWriter(save_models) if save_models is not None else None
    tables = []
    bar = tqdm(disable=not progress, desc="predict", unit=" stamps")
    try:
        for b in batches:
            sink = None
            if writer is not None:
                def sink(lo, models, b=b):
                    k = slice(lo, lo + len(models))
                    writer.add(models, b.images[k] - models, b.mask[k])
            tables.append(predict(b, model=model, device=dev, chi2=chi2 or writer is not None,
                                  models_out=sink))
            bar.update(len(b))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    t = vstack(tables, metadata_conflicts="silent") if len(tables) > 1 else tables[0]
    if not chi2:
        t["chi2nu"] = np.nan
        t["snr"] = np.nan
    write_catalog(t, out)
    return t


def open_inputs(*, images=None, psf=None, sigma=None, ivar=None, mask=None, frame=None,
                positions=None, psf_positions=None, pixel_scale=None, zeropoint=None,
                preset="hsc-r", chunk: int = 4096, rebin="auto"):
    """The stamps of ``galnet predict`` / ``galnet fit`` inputs as a
    :class:`galnet.io.stamps.StampIterator` of batches (``images``, or ``frame`` with ``positions``;
    ``psf_positions`` places stamps in their frame for a PSFEx ``psf``)."""
    from galnet.io.stamps import iter_frame, iter_stamps, read_catalog

    if (images is None) == (frame is None):
        raise GalnetValueError("give either images (stamps) or frame (with positions)", "images")
    if frame is not None and positions is None:
        raise GalnetValueError("a frame needs a positions catalogue", "positions")
    if psf is None:
        raise GalnetValueError("a PSF is required", "psf")
    kw = dict(sigma=sigma, ivar=ivar, mask=mask, pixel_scale=pixel_scale, zeropoint=zeropoint,
              preset=preset, chunk=chunk, rebin=rebin)
    if psf_positions is not None and not isinstance(psf_positions, np.ndarray):
        t = (read_catalog(psf_positions) if isinstance(psf_positions, str | Path)
             else psf_positions)
        try:
            psf_positions = np.c_[np.asarray(getattr(t["x"], "value", t["x"]), float),
                                  np.asarray(getattr(t["y"], "value", t["y"]), float)]
        except KeyError as err:
            raise GalnetValueError(f"{psf_positions}: psf positions need x and y columns",
                                   "psf_positions") from err
    return (iter_stamps(images, psf, psf_positions=psf_positions, **kw) if frame is None
            else iter_frame(frame, positions, psf, **kw))


class _CubeWriter:
    """Model and residual stamps streamed into two FITS cubes (NaN at masked pixels)."""

    def __init__(self, directory: str | Path):
        from galnet.errors import GalnetFileError

        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise GalnetFileError(f"{directory}: cannot create directory ({err})") from err
        self.parts: dict[str, list[np.ndarray]] = {"models": [], "residuals": []}

    def add(self, models: np.ndarray, residuals: np.ndarray, mask: np.ndarray) -> None:
        self.parts["models"].append(models.astype(np.float32))
        self.parts["residuals"].append(np.where(mask, np.nan, residuals).astype(np.float32))

    def close(self) -> None:
        from astropy.io import fits

        from galnet.io.files import atomic_write

        for name, parts in self.parts.items():
            if parts:
                hdu = fits.PrimaryHDU(np.concatenate(parts))
                atomic_write(self.dir / f"{name}.fits",
                             lambda tmp, hdu=hdu: hdu.writeto(tmp, overwrite=True))
