"""Files in, files out: translate FITS cubes or simulated pairs, and evaluate translations.

``galnet translate apply`` and ``galnet translate evaluate`` are thin wrappers of
:func:`translate_file` and :func:`evaluate_file`.

Input images: a FITS cube ``(N, C, S, S)`` (or one galaxy ``(C, S, S)``) of source-domain
stamps in nanomaggies per pixel, band order and size those of the model's source domain, or the
``source`` images of a ``galnet translate simulate`` file. Output: a FITS cube ``(N, C, S', S')``
in nanomaggies per target pixel (header: model, domains, bands, pixel scale, BUNIT), written
atomically.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import numpy as np

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.files import atomic_write, jsonable

__all__ = ["DEFAULT_MODEL", "default_model_path", "read_cube", "translate_file", "evaluate_file"]

#: The shipped SDSS -> CFHTLS translator (docs/translation-model-card.md).
DEFAULT_MODEL = "translate-sdss-cfhtls.safetensors"
#: The shipped photo-z probe for CFHTLS-like images (trained on simulated target images).
DEFAULT_PHOTOZ = "photoz-cfhtls.safetensors"


def default_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of a model file shipped in ``galnet/data``."""
    return Path(str(resources.files("galnet").joinpath("data", name)))


def read_cube(path: str | os.PathLike, bands: int, size: int) -> np.ndarray:
    """A FITS image cube of stamps as float32 ``(N, bands, size, size)``; one-line errors name the
    file and the problem (missing, no data, wrong shape, non-finite pixels)."""
    from galnet.io.fits import open_fits

    path = Path(path)
    if not path.exists():
        raise GalnetFileError(f"{str(path)!r}: no such file")
    hdul = open_fits(path, "source stamps")  # one-line errors: empty, not FITS, truncated
    with hdul:
        data = next((h.data for h in hdul if getattr(h, "data", None) is not None
                     and h.data.ndim >= 2), None)
        data = None if data is None else np.array(data, dtype=np.float32)
    if data is None:
        raise GalnetFileError(f"{str(path)!r}: no image data")
    if data.ndim == 3:
        data = data[None]
    if data.ndim != 4 or data.shape[1:] != (bands, size, size):
        raise GalnetValueError(f"{str(path)!r}: images must be (N, {bands}, {size}, {size}) or "
                               f"({bands}, {size}, {size}), got {data.shape}")
    bad = ~np.isfinite(data).all(axis=(1, 2, 3))
    if bad.any():
        raise GalnetValueError(f"{str(path)!r}: {int(bad.sum())} stamp(s) have non-finite "
                               f"pixels (first: stamp {int(np.flatnonzero(bad)[0])})")
    return data


def _zspec(zspec, n: int, where: str) -> np.ndarray:
    z = np.atleast_1d(np.asarray(zspec, dtype=float))
    if z.size == 1 and n > 1:
        z = np.full(n, z[0])
    if z.shape != (n,) or not np.isfinite(z).all() or (z < 0).any():
        raise GalnetValueError(f"{where}: need {n} finite non-negative redshifts, got "
                               f"{z.shape[0]} ({z[:3]}...)")
    return z


def translate_file(out: str | os.PathLike, *, images: str | os.PathLike | None = None,
                   pairs: str | os.PathLike | None = None, model: str | os.PathLike | None = None,
                   zspec=None, batch: int = 64, device: str = "cpu") -> Path:
    """Translate source stamps (``images``: a FITS cube, or ``pairs``: a simulated file's source
    images) with ``model`` [default: the shipped SDSS -> CFHTLS model] and write a FITS cube.
    ``zspec``: redshifts (scalar or (N,)) for a z_spec-conditioned model; with ``pairs`` the
    catalogue's ``z`` is used when not given."""
    from astropy.io import fits

    from galnet.translate.model import load_translator, read_metadata
    from galnet.translate.train import apply_translator

    if (images is None) == (pairs is None):
        raise GalnetValueError("give exactly one of images (FITS cube) or pairs (HDF5 file)")
    mpath = Path(model) if model else default_model_path()
    net = load_translator(mpath, device=device)
    c = net.config
    if zspec is not None and c.cond_dim == 0:
        raise GalnetValueError(f"{str(mpath)!r} is not conditioned on z_spec: drop --zspec",
                               "zspec", zspec)
    if images is not None:
        src = read_cube(images, c.bands, c.in_size)
        where = str(images)
    else:
        from galnet.translate.simulate import read_pairs

        p = read_pairs(pairs)
        src, where = p.source, str(pairs)
        if src.shape[1:] != (c.bands, c.in_size, c.in_size):
            raise GalnetValueError(f"{where!r}: source images {src.shape[1:]} do not match the "
                                   f"model's ({c.bands}, {c.in_size}, {c.in_size})")
        if zspec is None and c.cond_dim > 0:
            zspec = np.asarray(p.catalog["z"])
    cond = None
    if c.cond_dim > 0:
        if zspec is None:
            raise GalnetValueError(f"{str(mpath)!r} is conditioned on z_spec: give --zspec")
        cond = _zspec(zspec, len(src), where)
    pred = apply_translator(net, src, cond=cond, batch=batch, device=device)
    meta = read_metadata(mpath)
    hdr = fits.Header()
    hdr["BUNIT"] = ("nanomaggy", "flux per pixel, AB zeropoint 22.5")
    hdr["GNMODEL"] = (mpath.name[:68], "galnet translator")
    for k, key in (("source_domain", "GNSRC"), ("target_domain", "GNTGT")):
        if k in meta:
            hdr[key] = str(meta[k])
    if "target_domain" in meta:
        from galnet.translate.simulate import get_domain

        hdr["PIXSCALE"] = (get_domain(str(meta["target_domain"])).pixel_scale, "arcsec / pixel")
    if "bands" in meta:
        hdr["BANDS"] = "".join(meta["bands"])
    out = Path(out)
    return atomic_write(out, lambda tmp: fits.PrimaryHDU(pred, header=hdr).writeto(tmp,
                                                                                   overwrite=True))


def evaluate_file(out_dir: str | os.PathLike, *, pairs: str | os.PathLike,
                  pred: str | os.PathLike | None = None, model: str | os.PathLike | None = None,
                  photoz: str | os.PathLike | None = None, structure_rows: int = 200,
                  plots: bool = True) -> dict:
    """Evaluate translated images against a simulated test file: photo-z, colour, structure and
    pixel probes (:func:`galnet.translate.evaluate.evaluate_translation`), plus the same probes on
    the true target and the regridded source images for reference. ``pred``: a FITS cube from
    :func:`translate_file`; otherwise the images are translated here with ``model``. ``photoz``:
    a photo-z probe trained on target-domain images [default: the shipped CFHTLS probe].
    Writes ``metrics.json`` (records "translated", "target", "source") and ``examples.png``."""
    from galnet.translate.evaluate import evaluate_translation, regrid, structure_reference
    from galnet.translate.model import load_photoz, load_translator
    from galnet.translate.simulate import read_pairs
    from galnet.translate.train import apply_translator, predict_photoz

    p = read_pairs(pairs)
    S = p.target.shape[-1]
    if pred is not None:
        images = read_cube(pred, p.target.shape[1], S)
        if len(images) != len(p):
            raise GalnetValueError(f"{str(pred)!r} has {len(images)} stamps but {str(pairs)!r} "
                                   f"has {len(p)} pairs")
    else:
        net = load_translator(Path(model) if model else default_model_path())
        cond = np.asarray(p.catalog["z"]) if net.config.cond_dim > 0 else None
        images = apply_translator(net, p.source, cond=cond)
    pz_net = load_photoz(Path(photoz) if photoz else default_model_path(DEFAULT_PHOTOZ))
    rows = min(structure_rows, len(p))
    ref = structure_reference(p, rows=rows) if rows > 0 else None
    src = regrid(p.source, p.source_scale, p.target_scale, S)
    records = {}
    for name, im in (("translated", images), ("target", p.target), ("source", src)):
        pz = predict_photoz(pz_net, im)
        records[name] = evaluate_translation(im, p, pz, structure_rows=rows,
                                             reference_fit=ref)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(jsonable(records), indent=1)
    atomic_write(out_dir / "metrics.json", lambda tmp: tmp.write_text(text))
    if plots:
        _example_plot(out_dir / "examples.png", p, src, images)
    return records


def rgb(images: np.ndarray, sky: np.ndarray, bands=(3, 2, 1)) -> np.ndarray:
    """(S, S, 3) asinh-stretched colour image of one (C, S, S) stamp (i, r, g by default)."""
    x = np.arcsinh(images[list(bands)] / (2 * np.asarray(sky)[list(bands), None, None]))
    x = x / max(float(np.percentile(x, 99.7)), 1e-12)
    return np.clip(np.moveaxis(x, 0, -1), 0, 1)


def _example_plot(path: Path, p, src: np.ndarray, pred: np.ndarray, n: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(p))
    fig, ax = plt.subplots(3, n, figsize=(2.2 * n, 6.8), squeeze=False)
    for i in range(n):
        for row, (im, sky, title) in enumerate(((p.source[i], p.source_sky, "source"),
                                                (pred[i], p.target_sky, "translated"),
                                                (p.target[i], p.target_sky, "target"))):
            ax[row, i].imshow(rgb(im, sky), origin="lower")
            ax[row, i].set_xticks([])
            ax[row, i].set_yticks([])
            if i == 0:
                ax[row, i].set_ylabel(title)
        ax[0, i].set_title(f"z = {p.catalog['z'][i]:.3f}", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
