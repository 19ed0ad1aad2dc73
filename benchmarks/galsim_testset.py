"""The test set re-rendered by GalSim: does the network depend on the quirks of galnet's renderer?

Usage::

    .venv/bin/python benchmarks/galsim_testset.py --in test.h5 --out test_galsim.h5 -n 2000 \\
        [--workers 1] [--verify-blocks 1]

Reads the first ``n`` stamps of a ``galnet simulate`` file and writes a file of the same layout
(``images``, ``psfs``, ``sigma``, ``params``, ``psf_sources``, ``bg_origins``, all attributes) in
which each stamp's noiseless galaxy, as galnet rendered it, is replaced by the same galaxy rendered
by GalSim::

    image_galsim = image - galnet_render(params, psf) + galsim_render(params, psf)

so the background, neighbours, stars and the noise realisation stay identical. ``galnet_render`` is
the simulator's own call (:func:`galnet.sim.compose.render_stamps`: float32, default config), so the
subtraction is exact to float32 rounding (``--verify-blocks`` checks this by re-running the
simulator on the first blocks). ``sigma`` and ``params`` (``snr`` included) are copied unchanged:
the source Poisson variance is that of the galnet galaxy (the renderers differ by < 1e-2 of the
noise, see the printed numbers).

The GalSim galaxy is ``Convolve(Sersic, InterpolatedImage(Image(psf, scale=1))).drawImage(nx, ny,
scale=1, method="no_pixel")`` with the gsparams of ``tests/galsim_reference.py`` (the reference of
the renderer accuracy tests; same fall-backs when GalSim's Hankel integrator fails). GalSim draws
0.3 <= n <= 6.2 only: rows with n > 6.2, or where GalSim fails, are left out and counted. The
dataset ``rows`` (int64) holds the input row of each output stamp; ``galsim_vs_galnet`` holds, per
output stamp, ``max|d|/peak``, ``dflux/flux`` (sum over the stamp) and ``max|d|/sigma`` of
``d = galsim - galnet``. The attribute ``n`` is the number of output stamps (``source_n``: that of
the input file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.files import atomic_write
from galnet.sim.compose import render_stamps
from galnet.sim.simulate import check_output_path

#: Parameters of one galaxy passed to the renderers.
SHAPE_KEYS = ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")
#: gsparams of the PSF and the convolution (as tests/galsim_reference.py).
GSPARAMS = dict(folding_threshold=1e-4, maxk_threshold=1e-5, kvalue_accuracy=1e-7,
                xvalue_accuracy=1e-7, maximum_fft_size=16384)
#: Attempts (Sérsic gsparams, truncated?) tried in turn. At accuracy 1e-7 GalSim's Hankel
#: integrator fails for most n > 4 ("Roundoff error ... in intGKP"); relaxing the Sérsic's own
#: maxk_threshold (the convolution is limited by the PSF's maxk) and then its accuracy makes those
#: draw (tests/galsim_reference.py); the relaxed maxk_threshold also fixes compact low-n profiles
#: (n < 0.5, q*re < 0.3 px), whose truncated maxk is NaN at 1e-5 ("cannot convert float NaN to
#: integer"). The truncation keeps GalSim's FFT finite for large profiles; the last attempt,
#: untruncated, is a last resort.
ATTEMPTS: tuple[tuple[dict, bool], ...] = (
    ({**GSPARAMS, "kvalue_accuracy": 1e-6, "xvalue_accuracy": 1e-6}, True),
    ({**GSPARAMS, "kvalue_accuracy": 1e-6, "xvalue_accuracy": 1e-6, "maxk_threshold": 1e-3},
     True),
    ({**GSPARAMS, "kvalue_accuracy": 1e-5, "xvalue_accuracy": 1e-5, "maxk_threshold": 1e-3},
     True),
    ({**GSPARAMS, "kvalue_accuracy": 1e-6, "xvalue_accuracy": 1e-6}, False),
)
#: Looser gsparams for injections into noisy frames (``galsim_stamp(..., accuracy="injection")``):
#: ~18x faster than the reference settings; the stamps differ from them by < 1e-4 of the peak
#: (12 profiles, re 0.7-15 px, n 0.5-6, Moffat PSF), far below the noise of an S/N <= 500 source.
INJECTION_GSPARAMS = dict(folding_threshold=5e-3, maxk_threshold=1e-3, kvalue_accuracy=1e-5,
                          xvalue_accuracy=1e-5, maximum_fft_size=16384)
#: GalSim's range of Sérsic indices (galsim.Sersic._minimum_n, _maximum_n).
N_RANGE = (0.3, 6.2)
#: Input rows processed (read, rendered, written) at once.
CHUNK = 256


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
def galsim_stamp(p: dict[str, float], psf: np.ndarray, shape: tuple[int, int] = (61, 61),
                 accuracy: str = "reference") -> tuple[np.ndarray, int]:
    """One noiseless PSF-convolved Sérsic stamp drawn by GalSim (float32, image units) and the
    index of the :data:`ATTEMPTS` entry that drew it.

    ``p``: scalars x, y (0-based pixels), flux, re_pix (semi-major), n, q, pa_deg (CCW from +y);
    ``psf``: effective PSF (pixel included), normalised to unit sum here; ``accuracy``:
    "reference" (:data:`ATTEMPTS`) or "injection" (:data:`INJECTION_GSPARAMS` first, then the
    attempts). The profile is truncated
    (``flux_untruncated=True``) far outside the stamp + PSF margin only to keep GalSim's FFT
    finite. Raises the error of the last attempt (``RuntimeError``, ``galsim.GalSimError`` or
    ``ValueError``) where all fail.
    """
    import galsim

    H, W = shape
    psf = np.asarray(psf, dtype=float)
    gsp = GSPARAMS if accuracy == "reference" else INJECTION_GSPARAMS
    ii = galsim.InterpolatedImage(galsim.Image(psf / psf.sum(), scale=1.0),
                                  gsparams=galsim.GSParams(**gsp))
    q = float(p["q"])
    dx, dy = float(p["x"]) - (W - 1) / 2, float(p["y"]) - (H - 1) / 2
    half = 0.5 * np.hypot(H + psf.shape[0], W + psf.shape[1]) + np.hypot(dx, dy)
    err: Exception | None = None
    attempts = ATTEMPTS if accuracy == "reference" else ((INJECTION_GSPARAMS, True),) + ATTEMPTS
    for attempt, (sersic_gsp, truncate) in enumerate(attempts):
        try:
            s = galsim.Sersic(n=float(p["n"]), half_light_radius=float(p["re_pix"]) * np.sqrt(q),
                              flux=float(p["flux"]), trunc=1.2 * half / np.sqrt(q) if truncate
                              else 0.0, flux_untruncated=truncate,
                              gsparams=galsim.GSParams(**sersic_gsp))
            s = s.shear(q=q, beta=(float(p["pa_deg"]) + 90.0) * galsim.degrees).shift(dx, dy)
            conv = galsim.Convolve(s, ii, gsparams=galsim.GSParams(**gsp),
                                   propagate_gsparams=False)
            return conv.drawImage(nx=W, ny=H, scale=1.0, method="no_pixel").array, attempt
        except (RuntimeError, ValueError) as e:  # GalSimError subclasses RuntimeError
            err = e
    assert err is not None
    raise err


def _galsim_task(args: tuple[int, dict[str, float], np.ndarray, tuple[int, int]]
                 ) -> tuple[int, np.ndarray | None, int, str, float]:
    """(row, stamp or None, attempt, error message, CPU seconds) of one GalSim draw (pool
    worker). CPU time: the wall time counts the other jobs on a busy machine."""
    row, p, psf, shape = args
    t0 = time.process_time()
    if not N_RANGE[0] <= p["n"] <= N_RANGE[1]:
        return row, None, -1, "n", 0.0
    try:
        img, attempt = galsim_stamp(p, psf, shape)
    except (RuntimeError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        return row, None, -1, f"{type(e).__name__}: {msg}", time.process_time() - t0
    return row, img, attempt, "", time.process_time() - t0


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


@contextmanager
def _pool(workers: int) -> Iterator:
    """``map``-like callable: in-process for one worker, else a spawn process pool."""
    if workers == 1:
        yield map
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        yield lambda fn, it: pool.imap(fn, it, chunksize=4)


def galnet_stamps(params: dict[str, np.ndarray], psfs: np.ndarray, shape: tuple[int, int]
                  ) -> np.ndarray:
    """The galaxies exactly as ``galnet simulate`` rendered them: (N, H, W) float32."""
    return render_stamps({k: np.ascontiguousarray(params[k], dtype=float) for k in SHAPE_KEYS},
                         np.asarray(psfs), shape)


def compare(galsim: np.ndarray, galnet: np.ndarray, flux: np.ndarray, sigma: np.ndarray
            ) -> dict[str, np.ndarray]:
    """Per-stamp differences ``d = galsim - galnet`` of (N, H, W) noiseless stamps.

    Returns ``max_d_peak`` = max|d| / max(galsim), ``dflux`` = sum(d) / flux (signed) and
    ``max_d_sigma`` = max over pixels of |d| / sigma.
    """
    d = galsim.astype(np.float64) - galnet.astype(np.float64)
    return {
        "max_d_peak": np.abs(d).max(axis=(1, 2)) / galsim.max(axis=(1, 2)),
        "dflux": d.sum(axis=(1, 2)) / flux,
        "max_d_sigma": (np.abs(d) / sigma).max(axis=(1, 2)),
    }


# ----------------------------------------------------------------------------------------------
# The file
# ----------------------------------------------------------------------------------------------
def convert(path_in: str | os.PathLike, path_out: str | os.PathLike, n: int, workers: int = 1,
            progress: bool = True) -> dict:
    """Write the GalSim version of the first ``n`` stamps of ``path_in`` to ``path_out``.

    Returns a summary: ``n_in`` (rows read), ``rows`` (kept input rows), ``n_high_n`` (rows with
    n > 6.2), ``failed`` (list of (row, GalSim error)), ``seconds`` (CPU time per GalSim draw),
    ``wall_s`` and the per-stamp :func:`compare` arrays of the kept rows.
    """
    from tqdm.auto import tqdm

    path_in, out = Path(path_in), check_output_path(path_out)
    if not path_in.is_file():
        raise GalnetFileError(f"input file {str(path_in)!r} does not exist")
    if out.exists() and out.resolve() == path_in.resolve():
        raise GalnetFileError(f"output {str(out)!r} is the input file")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise GalnetValueError(f"n must be an integer >= 1, got {n!r}", "n", n)
    if not isinstance(workers, int) or workers < 1:
        raise GalnetValueError(f"workers must be an integer >= 1, got {workers!r}", "workers",
                               workers)
    try:
        src = h5py.File(path_in, "r")
        images_in, psfs_in, sigma_in, params_in = (src[k] for k in
                                                   ("images", "psfs", "sigma", "params"))
    except (OSError, KeyError) as err:
        raise GalnetFileError(f"cannot read simulation file {str(path_in)!r}: {err}") from err
    import galsim

    n_in = min(int(n), len(images_in))
    shape = tuple(images_in.shape[1:])
    summary: dict = {"n_in": n_in, "rows": [], "n_high_n": 0, "failed": [], "seconds": [],
                     **{k: [] for k in ("max_d_peak", "dflux", "max_d_sigma", "attempt")}}

    def fill(f: h5py.File) -> None:
        S, P = shape, tuple(psfs_in.shape[1:])
        hc = 32
        dsets = {
            "images": f.create_dataset("images", (0, *S), "f4", maxshape=(None, *S),
                                       chunks=(hc, *S)),
            "sigma": f.create_dataset("sigma", (0, *S), "f4", maxshape=(None, *S),
                                      chunks=(hc, *S)),
            "psfs": f.create_dataset("psfs", (0, *P), "f4", maxshape=(None, *P), chunks=(hc, *P)),
            "params": f.create_dataset("params", (0,), params_in.dtype, maxshape=(None,),
                                       chunks=(4096,)),
            "rows": f.create_dataset("rows", (0,), "i8", maxshape=(None,), chunks=(4096,)),
        }
        cmp_dtype = np.dtype([("max_d_peak", "f8"), ("dflux", "f8"), ("max_d_sigma", "f8"),
                              ("attempt", "i1")])
        dsets["galsim_vs_galnet"] = f.create_dataset("galsim_vs_galnet", (0,), cmp_dtype,
                                                     maxshape=(None,), chunks=(4096,))
        for k in ("images", "sigma", "psfs", "params"):
            dsets[k].attrs.update(dict(src[k].attrs))
        dsets["rows"].attrs["description"] = f"input row (0-based) in {path_in.name}"
        dsets["galsim_vs_galnet"].attrs["description"] = (
            "d = galsim - galnet noiseless galaxy: max|d|/peak(galsim), sum(d)/flux, "
            "max|d|/sigma; attempt: index into the galsim_attempts attribute")
        for k in ("psf_sources", "bg_origins"):
            src.copy(src[k], f, name=k)

        t0 = time.perf_counter()
        with _pool(workers) as pmap, tqdm(total=n_in, unit="stamp", disable=not progress,
                                          desc="galsim", smoothing=0.1) as bar:
            for a in range(0, n_in, CHUNK):
                b = min(a + CHUNK, n_in)
                img, sig, psf, par = (d[a:b] for d in (images_in, sigma_in, psfs_in, params_in))
                pd = {k: par[k].astype(float) for k in SHAPE_KEYS}
                tasks = ((a + i, {k: float(pd[k][i]) for k in SHAPE_KEYS}, psf[i], shape)
                         for i in range(b - a))
                gs = np.zeros((b - a, *shape))
                keep = np.zeros(b - a, bool)
                attempts = np.full(b - a, -1, np.int8)
                for row, stamp, attempt, msg, sec in pmap(_galsim_task, tasks):
                    bar.update(1)
                    if stamp is not None:
                        gs[row - a], keep[row - a], attempts[row - a] = stamp, True, attempt
                        summary["seconds"].append(sec)
                    elif msg == "n":
                        summary["n_high_n"] += 1
                    else:
                        summary["failed"].append((row, msg))
                if not keep.any():
                    continue
                gn = galnet_stamps({k: v[keep] for k, v in pd.items()}, psf[keep], shape)
                gs = gs[keep]
                out_img = (img[keep].astype(np.float64) - gn + gs).astype(np.float32)
                c = compare(gs, gn, pd["flux"][keep], sig[keep])
                rows = a + np.flatnonzero(keep)
                table = np.zeros(len(rows), cmp_dtype)
                for k in c:
                    table[k] = c[k]
                    summary[k].append(c[k])
                table["attempt"] = attempts[keep]
                summary["attempt"].append(attempts[keep])
                summary["rows"].append(rows)
                m0 = len(dsets["rows"])
                for k, v in (("images", out_img), ("sigma", sig[keep]), ("psfs", psf[keep]),
                             ("params", par[keep]), ("rows", rows), ("galsim_vs_galnet", table)):
                    dsets[k].resize(m0 + len(v), axis=0)
                    dsets[k][m0:] = v
        summary["wall_s"] = time.perf_counter() - t0
        n_out = len(dsets["rows"])
        f.attrs.update(dict(src.attrs))
        f.attrs.update({
            "n": n_out,
            "source_n": int(src.attrs.get("n", len(images_in))),
            "source_file": str(path_in.resolve()),
            "renderer": "galsim",
            "galsim_version": galsim.__version__,
            "galsim_method": "Convolve(Sersic, InterpolatedImage(psf)).drawImage(no_pixel)",
            "galsim_gsparams": json.dumps(GSPARAMS),
            "galsim_attempts": json.dumps([{"sersic_gsparams": g, "truncated": t}
                                           for g, t in ATTEMPTS]),
            "dropped_high_n": summary["n_high_n"],
            "dropped_galsim_error": len(summary["failed"]),
            "created_by": "benchmarks/galsim_testset.py",
        })

    try:
        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                fill(f)

        atomic_write(out, write)
    finally:
        src.close()
    for k in ("rows", "max_d_peak", "dflux", "max_d_sigma", "attempt"):
        summary[k] = np.concatenate(summary[k]) if summary[k] else np.zeros(0)
    summary["seconds"] = np.array(summary["seconds"])
    return summary


# ----------------------------------------------------------------------------------------------
# Check of the subtraction: the simulator's own galaxies for the first blocks
# ----------------------------------------------------------------------------------------------
def simulator_galaxies(path: str | os.PathLike, blocks: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Re-run ``galnet simulate`` on the first ``blocks`` blocks of ``path`` (same preset, seed,
    bank and options, from the file's attributes) and return ``(images, galaxies)``: the
    regenerated stamps and the noiseless galaxies the simulator added to them, (m, H, W) float32.

    Needs the bank file named in the attributes (when the file used one). The galaxy of a stamp is
    the last render of its final parameters (``snr_min`` redraws re-render some).
    """
    import galnet.sim.compose as compose
    from galnet.presets import Preset

    with h5py.File(path, "r") as f:
        a = dict(f.attrs)
        n_file = len(f["params"])
    preset = Preset.from_json(a["preset_config"])
    bank = None
    if a["background"] == "bank":
        from galnet.sim.bank import Bank

        bank = Bank(json.loads(a["bank"])["path"])
    snr_min = None if str(a["snr_min"]) == "none" else float(a["snr_min"])
    blocks = min(blocks, -(-n_file // compose.BLOCK))
    seeds = np.random.SeedSequence(int(a["seed"])).spawn(blocks)  # child k depends only on k
    calls: list[tuple[dict, np.ndarray]] = []

    def recording(params, psfs, shape, nuisance=False):
        img = render_stamps(params, psfs, shape, nuisance)
        if not nuisance:
            calls.append(({k: np.array(params[k]) for k in ("x", "y", "flux")}, img))
        return img

    compose.render_stamps = recording
    try:
        res = compose.compute_chunk(preset, bank, float(a["bank_psf_fraction"]), snr_min, seeds)
    finally:
        compose.render_stamps = render_stamps
    last = {}
    for p, img in calls:  # later renders of the same parameters overwrite earlier ones
        for i in range(len(img)):
            last[(p["x"][i], p["y"][i], p["flux"][i])] = img[i]
    final = res["params"]
    m = min(len(res["images"]), n_file)
    gal = np.stack([last[(final["x"][i], final["y"][i], final["flux"][i])] for i in range(m)])
    return res["images"][:m], gal


def verify(path: str | os.PathLike, blocks: int) -> None:
    """Print how well the stored images and galnet_stamps reproduce the simulator's galaxies."""
    images, gal = simulator_galaxies(path, blocks)
    m = len(gal)
    with h5py.File(path, "r") as f:
        stored, psfs, par = f["images"][:m], f["psfs"][:m], f["params"][:m]
    mine = galnet_stamps({k: par[k] for k in SHAPE_KEYS}, psfs, gal.shape[1:])
    peak = gal.max(axis=(1, 2))
    e_img = (np.abs(images - stored).max(axis=(1, 2)) / peak).max()
    e_gal = (np.abs(mine - gal).max(axis=(1, 2)) / peak).max()
    print(f"verify ({m} stamps re-simulated): max |regenerated - stored image| / peak = "
          f"{e_img:.2e}; max |galnet_stamps - simulator galaxy| / peak = {e_gal:.2e}")


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _q(a: np.ndarray, fmt: str = ".2e") -> str:
    if a.size == 0:
        return "(none)"
    return (f"median {np.median(a):{fmt}}  p99 {np.quantile(a, 0.99):{fmt}}  "
            f"max {a.max():{fmt}}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--in", dest="path_in", required=True, help="galnet simulate file (.h5)")
    ap.add_argument("--out", required=True, help="output file (.h5), written atomically")
    ap.add_argument("-n", type=int, default=2000, help="first n rows of the input [2000]")
    ap.add_argument("--workers", type=int, default=1, help="GalSim processes [1]")
    ap.add_argument("--verify-blocks", type=int, default=0,
                    help="first re-simulate this many blocks of 64 stamps and check the "
                         "subtraction (needs the input's bank file) [0]")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.verify_blocks > 0:
        verify(args.path_in, args.verify_blocks)
    s = convert(args.path_in, args.out, args.n, args.workers, progress=not args.no_progress)
    kept = len(s["rows"])
    print(f"# command: {' '.join(sys.argv)}")
    print(f"stamps: {s['n_in']} read, {kept} written to {args.out}; dropped: {s['n_high_n']} "
          f"with n > {N_RANGE[1]}, {len(s['failed'])} GalSim failures")
    for row, msg in s["failed"][:10]:
        print(f"  row {row}: {msg}")
    sec = s["seconds"]
    if sec.size:
        print(f"GalSim CPU time per stamp: mean {sec.mean():.3f} s, median {np.median(sec):.3f} "
              f"s, max {sec.max():.2f} s; wall {s['wall_s']:.0f} s with {args.workers} worker(s)")
    used = np.bincount(s["attempt"].astype(int), minlength=len(ATTEMPTS))
    print("GalSim attempts used (see ATTEMPTS): " + ", ".join(f"#{i}: {k}" for i, k in
                                                             enumerate(used)))
    print(f"max|galsim - galnet| / peak:     {_q(s['max_d_peak'])}")
    print(f"|sum(galsim - galnet)| / flux:   {_q(np.abs(s['dflux']))}")
    ds = s["max_d_sigma"]
    print(f"max|galsim - galnet| / sigma:    {_q(ds)}   "
          f"(> 0.5: {np.mean(ds > 0.5):.1%}, > 1: {np.mean(ds > 1):.1%})")
    if used[1:].any():
        first = s["attempt"] == 0
        print(f"  first attempt only ({first.sum()}): max|d|/peak {_q(s['max_d_peak'][first])}; "
              f"|dflux|/flux max {np.abs(s['dflux'][first]).max():.2e}")


if __name__ == "__main__":
    main()
