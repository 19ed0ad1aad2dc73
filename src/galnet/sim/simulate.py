"""Survey-like training stamps: Sérsic galaxies, PSFs, backgrounds and noise, streamed to HDF5.

For each stamp (``preset.stamp`` pixels square, conventions of :mod:`galnet.conventions`):

1. galaxy parameters from the preset's priors (:meth:`galnet.presets.Preset.sample_params`);
2. an *effective* PSF (pixel response included), ``psf_size`` square, unit sum: a real PSF from a
   bank (:class:`galnet.sim.bank.Bank`, share ``preset.psf.bank_fraction``, drawn among the bank
   PSFs whose FWHM lies in the preset's seeing range) or an analytic Moffat / Kolmogorov profile
   with the seeing FWHM and a small shear (:mod:`galnet.sim.psfs`);
3. the noiseless galaxy rendered with :func:`galnet.profiles.render.render` (float32, batched);
4. a background: with a bank, a real unit-rms cutout times ``sky_rms``; without, Gaussian sky noise
   (optionally correlated), neighbour galaxies and stars (same renderer with a smaller exactly
   integrated window, same PSF);
5. source Poisson noise, Gaussian approximation: variance ``model / gain``.

Stored per stamp: ``images``, ``psfs``, ``sigma`` (per-pixel 1-sigma noise: sky and source Poisson)
and a ``params`` table (see :data:`COLUMNS`) whose ``snr`` is the optimal S/N of the noiseless
galaxy, ``sqrt(sum(model^2 / sigma^2))``.

Determinism: the stamps are generated in blocks of :data:`BLOCK`; block ``b`` draws all its random
numbers from ``Generator(PCG64(SeedSequence(seed).spawn(...)[b]))`` and is rendered on its own
(:mod:`galnet.sim.compose`), so a file depends only on (preset, seed, bank, options), the first
``k`` stamps of a run are the same for any ``n >= k``, and the file is bitwise the same for any
``chunk`` and ``workers`` (at a given ``threads``: torch's intra-op threads may round differently).
Files are written atomically (temporary file in the same directory, renamed at the end).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from galnet import __version__
from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.files import atomic_write
from galnet.params import column_descriptions, column_units
from galnet.presets import Preset, get_preset
from galnet.runner import chunks
from galnet.runner import progress as runner_progress
from galnet.sim.compose import BLOCK, compute_chunk

__all__ = [
    "simulate",
    "read_params",
    "check_output_path",
    "COLUMNS",
    "BLOCK",
    "FORMAT_VERSION",
]

#: Version of the HDF5 layout written by :func:`simulate`.
FORMAT_VERSION = 1
#: Stamps per HDF5 storage chunk (random access for training).
_H5_CHUNK = 32

_UNITS, _DESC = column_units(), column_descriptions()


def _col(dtype: str, name: str, doc: str | None = None) -> tuple[str, str, str]:
    """(dtype, unit, description) of a catalogue column (galnet.params), the description
    replaced by ``doc`` where the simulation says more."""
    return dtype, _UNITS[name], doc or _DESC[name]


#: The parameter table: column -> (numpy dtype, unit, description).
COLUMNS: dict[str, tuple[str, str, str]] = {
    "x": _col("f8", "x"),
    "y": _col("f8", "y"),
    "mag": _col("f8", "mag", "AB magnitude (preset zeropoint)"),
    "flux": _col("f8", "flux"),
    "re_pix": _col("f8", "re_pix"),
    "re_arcsec": _col("f8", "re_arcsec"),
    "n": _col("f8", "n"),
    "q": _col("f8", "q"),
    "pa_deg": _col("f8", "pa_deg"),
    "snr": _col("f8", "snr", "optimal S/N of the noiseless galaxy"),
    "psf_fwhm": _col("f8", "psf_fwhm", "PSF FWHM (analytic: of the profile before the pixel; "
                     "bank: as the bank gives)"),
    "psf_fwhm_pix": _col("f8", "psf_fwhm_pix", "psf_fwhm / pixel_scale"),
    "bg_origin": ("i4", "", "index into /bg_origins"),
    "psf_source": ("i4", "", "index into /psf_sources"),
    "n_neighbours": ("i2", "", "synthetic neighbour galaxies in the stamp"),
    "n_stars": ("i2", "", "synthetic stars in the stamp"),
}


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------
def simulate(
    preset: str | Preset,
    n: int,
    seed: int,
    out: str | os.PathLike,
    bank=None,
    snr_min: float | None = None,
    chunk: int = 4096,
    progress: bool = True,
    bank_psf_fraction: float | None = None,
    threads: int | None = 1,
    workers: int = 1,
) -> Path:
    """Simulate ``n`` survey stamps and write them to the HDF5 file ``out`` (atomically).

    Parameters
    ----------
    preset : preset name (``galnet presets``) or :class:`~galnet.presets.Preset`.
    n : number of stamps (> 0).
    seed : non-negative integer; the output is a deterministic function of it.
    out : output path (.h5); its directory must exist. An existing file is replaced.
    bank : None (synthetic backgrounds, analytic PSFs), a bank file path or a
        :class:`galnet.sim.bank.Bank`: real backgrounds and a mix of real and analytic PSFs.
    snr_min : redraw galaxies whose optimal S/N is below this [default: keep all].
    chunk : stamps rendered and written at once (memory ~ 60 kB x chunk); rounded up to a multiple
        of :data:`BLOCK`. Does not change the result. [default: 4096]
    progress : show a progress bar on stderr (only when it is a terminal:
        :func:`galnet.runner.progress`).
    bank_psf_fraction : share of real PSFs when a bank is given [default: the preset's].
    threads : torch intra-op threads while simulating (restored afterwards); None keeps torch's
        setting. [default: 1 -- the batched ops are small, and on a busy 2-core machine two
        threads run up to 6x slower than one (OpenMP barriers stall when a core is taken)]
    workers : processes computing chunks in parallel (each with ``threads`` torch threads); the
        output does not depend on it. A bank must then be a file path (reopened per worker).
        [default: 1]

    Returns
    -------
    Path of the written file. Layout: ``images``, ``sigma`` (N, S, S) float32, image units;
    ``psfs`` (N, P, P) float32, unit sum; ``params`` (N,) compound table, columns :data:`COLUMNS`;
    ``bg_origins`` and ``psf_sources`` (string lists indexed by the table); attributes describe the
    preset (``preset``, ``preset_config`` JSON), ``seed``, ``n``, ``bank``, ``units``, ...
    """
    preset = get_preset(preset)
    n = _check_int(n, "n", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)
    chunk = _check_int(chunk, "chunk", minimum=1)
    if threads is not None:
        threads = _check_int(threads, "threads", minimum=1)
    workers = _check_int(workers, "workers", minimum=1)
    chunk = BLOCK * math.ceil(chunk / BLOCK)
    if snr_min is not None:
        snr_min = _check_float(snr_min, "snr_min")
        if snr_min < 0:
            raise GalnetValueError(f"snr_min must be >= 0, got {snr_min:g}", "snr_min", snr_min)
    out = check_output_path(out)
    bank_obj, bank_info = _open_bank(bank, preset)
    fraction = preset.psf.bank_fraction if bank_psf_fraction is None else _check_float(
        bank_psf_fraction, "bank_psf_fraction")
    if not 0.0 <= fraction <= 1.0:
        raise GalnetValueError(f"bank_psf_fraction must be in [0, 1], got {fraction:g}",
                               "bank_psf_fraction", fraction)

    attrs = {
        "format": "galnet-simulation",
        "format_version": FORMAT_VERSION,
        "preset": preset.name,
        "preset_config": preset.to_json(),
        "seed": seed,
        "n": n,
        "snr_min": "none" if snr_min is None else snr_min,
        "bank": json.dumps(bank_info, sort_keys=True, default=str),
        "background": "synthetic" if bank_obj is None else "bank",
        "bank_psf_fraction": fraction if bank_obj is not None else 0.0,
        "galnet_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "units": json.dumps({**{k: v[1] for k, v in COLUMNS.items()},
                             "images": "image units", "sigma": "image units", "psfs": ""}),
        "columns": json.dumps({k: v[2] for k, v in COLUMNS.items()}),
        "pixel_scale": preset.pixel_scale,
        "zeropoint": preset.zeropoint,
        "gain": preset.gain,
        "sky_rms": preset.sky_rms,
        "block": BLOCK,
    }
    n_blocks = math.ceil(n / BLOCK)
    seeds = np.random.SeedSequence(seed).spawn(n_blocks)
    results = _chunk_results(preset, n, seeds, chunk, bank_obj, fraction, snr_min, workers,
                             threads)
    try:
        with _torch_threads(threads):
            def write(tmp: Path) -> None:
                with h5py.File(tmp, "w") as f:
                    _fill(f, preset, n, results, attrs, progress)

            return atomic_write(out, write)
    finally:
        results.close()  # stops worker processes at once if writing failed


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count."""
    if threads is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


_WORKER_BANKS: dict[str, Any] = {}


def _worker_init(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _worker_chunk(preset: Preset, bank_path: str | None, fraction: float, snr_min: float | None,
                  seeds: list[np.random.SeedSequence]) -> dict[str, Any]:
    """:func:`~galnet.sim.compose.compute_chunk` in a worker process (the bank is reopened there,
    once)."""
    bank = None
    if bank_path is not None:
        if bank_path not in _WORKER_BANKS:
            from galnet.sim.bank import Bank

            _WORKER_BANKS[bank_path] = Bank(bank_path)
        bank = _WORKER_BANKS[bank_path]
    return compute_chunk(preset, bank, fraction, snr_min, seeds)


def _chunk_results(preset: Preset, n: int, seeds, chunk: int, bank, fraction: float,
                   snr_min: float | None, workers: int, threads: int | None
                   ) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(start, stop, result) of each chunk, in order; computed here or by ``workers`` processes."""
    spans = [(s.start, s.stop) for s in chunks(n, chunk)]

    def block_seeds(a: int, b: int):
        return seeds[a // BLOCK: math.ceil(b / BLOCK)]

    if workers == 1 or len(spans) == 1:
        for a, b in spans:
            yield a, b, compute_chunk(preset, bank, fraction, snr_min, block_seeds(a, b))
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    bank_path = None if bank is None else str(bank.path)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads,)) as ex:
        pending: deque = deque()
        todo = iter(spans)
        try:
            for a, b in todo:
                pending.append((a, b, ex.submit(_worker_chunk, preset, bank_path, fraction,
                                                snr_min, block_seeds(a, b))))
                if len(pending) > workers:
                    a0, b0, fut = pending.popleft()
                    yield a0, b0, fut.result()
            while pending:
                a0, b0, fut = pending.popleft()
                yield a0, b0, fut.result()
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise


def _fill(f: h5py.File, preset: Preset, n: int, results, attrs: dict[str, Any],
          progress: bool) -> None:
    """Create the datasets and stream the chunk ``results`` into them."""
    S, P = preset.stamp, preset.psf_size
    hc = min(_H5_CHUNK, n)
    d_img = f.create_dataset("images", (n, S, S), "f4", chunks=(hc, S, S))
    d_sig = f.create_dataset("sigma", (n, S, S), "f4", chunks=(hc, S, S))
    d_psf = f.create_dataset("psfs", (n, P, P), "f4", chunks=(hc, P, P))
    table_dtype = np.dtype([(k, v[0]) for k, v in COLUMNS.items()])
    d_par = f.create_dataset("params", (n,), table_dtype, chunks=(min(4096, n),))
    d_img.attrs["units"] = d_sig.attrs["units"] = "image units (mag = zeropoint - 2.5 log10)"
    d_sig.attrs["description"] = "per-pixel 1-sigma noise: sky and source Poisson"
    d_psf.attrs["description"] = "effective PSF (pixel included), unit sum, centred"
    for k, v in COLUMNS.items():
        d_par.attrs[f"unit_{k}"] = v[1]
    lists: dict[str, dict[str, int]] = {"psf_source": {}, "bg_origin": {}}

    t0 = time.perf_counter()
    with runner_progress(total=n, desc=f"simulate {preset.name}", enable=progress, unit="stamp",
                         smoothing=0.1) as bar:
        for start, stop, res in results:
            m = stop - start  # the last block may be partly beyond n
            d_img[start:stop] = res["images"][:m]
            d_sig[start:stop] = res["sigma"][:m]
            d_psf[start:stop] = res["psfs"][:m]
            rows = np.zeros(m, dtype=table_dtype)
            for k in COLUMNS:
                if k in res["params"]:
                    rows[k] = res["params"][k][:m]
            for col in ("psf_source", "bg_origin"):
                index = lists[col]
                rows[col] = [index.setdefault(s, len(index)) for s in res[col][:m]]
            rows["n_neighbours"] = res["n_neighbours"][:m]
            rows["n_stars"] = res["n_stars"][:m]
            d_par[start:stop] = rows
            bar.update(m)
    str_dt = h5py.string_dtype()
    f.create_dataset("psf_sources", data=np.array(list(lists["psf_source"]), dtype=object),
                     dtype=str_dt)
    f.create_dataset("bg_origins", data=np.array(list(lists["bg_origin"]), dtype=object),
                     dtype=str_dt)
    attrs["elapsed_s"] = round(time.perf_counter() - t0, 3)
    f.attrs.update(attrs)


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------
def _check_int(v: Any, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        raise GalnetValueError(f"{name} must be an integer, got {v!r}", name, v)
    if v < minimum:
        raise GalnetValueError(f"{name} must be >= {minimum}, got {v}", name, v)
    return int(v)


def _check_float(v: Any, name: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError) as err:
        raise GalnetValueError(f"{name} must be a number, got {v!r}", name, v) from err
    if not math.isfinite(x):
        raise GalnetValueError(f"{name} must be finite, got {v!r}", name, v)
    return x


def check_output_path(out: str | os.PathLike) -> Path:
    """``out`` as a Path, after checking that it can be written: not a directory, and its
    directory exists and is writable. Raises :class:`GalnetFileError`."""
    p = Path(out)
    if p.is_dir():
        raise GalnetFileError(f"output {str(p)!r} is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise GalnetFileError(f"cannot write {str(p)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GalnetFileError(f"cannot write {str(p)!r}: directory {str(parent)!r} is not writable")
    return p


def _open_bank(bank, preset: Preset):
    """(Bank or None, provenance dict or "synthetic"). Checks the preset's pixel scale is banked."""
    if bank is None:
        return None, "synthetic"
    if isinstance(bank, str | os.PathLike):
        if not Path(bank).is_file():
            raise GalnetFileError(f"bank file {str(bank)!r} does not exist "
                                  "(build one with `galnet bank build`)")
        from galnet.sim.bank import Bank

        bank = Bank(bank)
    scales = [float(s) for s in getattr(bank, "pixel_scales", ())]
    if not any(math.isclose(s, preset.pixel_scale, rel_tol=1e-6) for s in scales):
        raise GalnetValueError(
            f"bank {str(getattr(bank, 'path', bank))!r} has no PSFs at pixel scale "
            f"{preset.pixel_scale} (preset {preset.name!r}; bank has {scales})",
            "pixel_scale", preset.pixel_scale)
    info = {"path": str(getattr(bank, "path", "")), **dict(getattr(bank, "provenance", {}))}
    return bank, info


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
def read_params(path: str | os.PathLike):
    """The parameter table of a simulated file as an astropy ``QTable`` with units;
    ``psf_source`` and ``bg_origin`` decoded to strings. Metadata (file attributes) in ``.meta``."""
    from astropy import units as u
    from astropy.table import QTable

    try:
        with h5py.File(path, "r") as f:
            rows = f["params"][:]
            psf_sources = np.array([s.decode() if isinstance(s, bytes) else s
                                    for s in f["psf_sources"][:]], dtype=object)
            bg_origins = np.array([s.decode() if isinstance(s, bytes) else s
                                   for s in f["bg_origins"][:]], dtype=object)
            meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    except (OSError, KeyError) as err:
        raise GalnetFileError(f"cannot read simulation file {str(path)!r}: {err}") from err
    t = QTable(meta=meta)
    for k in rows.dtype.names:
        unit = COLUMNS.get(k, ("", "", ""))[1]
        col = rows[k]
        if k == "psf_source":
            col = psf_sources[col].astype(str)
        elif k == "bg_origin":
            col = bg_origins[col].astype(str)
        t[k] = col * u.Unit(unit) if unit else col
    return t
