"""Test-set report of a GaLNet model: predict on a simulated test file, evaluate, write the report.

    python benchmarks/testset_report.py --test test.h5 --out docs/testset \
        [--galsim test_galsim.h5] [--model W.safetensors] [--threads 2]

Runs `galnet.nn.predict.predict_files` on the stamps (with their sigma maps and PSFs, as a user
would give them), then `galnet.evaluate.metrics.evaluate` against the true parameters: overall,
S/N > 20, 10 < S/N <= 20, binned by S/N and n, with plots, into OUT/
(metrics.json, report.md, PNGs).
With --galsim (from benchmarks/galsim_testset.py: the same stamps with the galaxy rendered by
GalSim) the same is done into OUT/galsim/, and a comparison table of the two is printed and
written to OUT/summary.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from astropy.table import Table

from galnet.evaluate.metrics import evaluate
from galnet.nn.model import load_model
from galnet.nn.predict import predict_files
from galnet.sim.simulate import read_params

ROWS = [("mag", "r2"), ("re", "r2_log"), ("n", "r2_log"), ("q", "r2"), ("re", "outlier_frac"),
        ("n", "outlier_frac"), ("mag", "nmad"), ("re", "nmad"), ("n", "nmad"), ("q", "nmad"),
        ("pa_deg", "nmad"), ("x", "nmad")]
CALIB = ["mag", "re", "n", "q", "x", "y", "pa_deg"]


def run(h5: Path, out: Path, model, threads: int | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with h5py.File(h5) as f:
        images, sigma, psfs = f["images"][:], f["sigma"][:], f["psfs"][:]
        zp, scale = float(f.attrs["zeropoint"]), float(f.attrs["pixel_scale"])
    t0 = time.perf_counter()
    predict_files(out / "catalog.fits", images=images, psf=psfs, sigma=sigma, zeropoint=zp,
                  pixel_scale=scale, model=model, progress=False, overwrite=True)
    dt = time.perf_counter() - t0
    # ids = row indices of the HDF5 file; no stamp gallery (the backgrounds are real cutouts)
    m = evaluate(out / "catalog.fits", h5, out, gallery=False)
    m["predict_seconds"] = dt
    print(f"{h5}: {len(images)} stamps predicted in {dt:.1f} s ({len(images) / dt:.0f}/s)")
    return m


def table(ms: dict[str, dict], subsets=("overall", "snr>20", "10<snr<=20")) -> str:
    heads = [f"{name} {s}" for name in ms for s in subsets]
    lines = ["| metric | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for p, k in ROWS:
        vals = []
        for m in ms.values():
            for s in subsets:
                v = m.get(s, {}).get(p, {}).get(k)
                vals.append("-" if v is None else f"{v:.4f}")
        lines.append(f"| {p} {k} | " + " | ".join(vals) + " |")
    for p in CALIB:
        vals = []
        for m in ms.values():
            for s in subsets:
                v = m.get(s, {}).get(p, {}).get("calib_frac_1sigma")
                vals.append("-" if v is None else f"{v:.3f}")
        lines.append(f"| {p} frac(abs err < sigma) | " + " | ".join(vals) + " |")
    n = []
    for m in ms.values():
        for s in subsets:
            n.append(str(m.get(s, {}).get("re", {}).get("N", "-")))
    lines.append("| N | " + " | ".join(n) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test", type=Path, required=True)
    p.add_argument("--galsim", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_model(a.model)
    ms = {"galnet-rendered": run(a.test, a.out, model, a.threads)}
    if a.galsim is not None:
        ms["GalSim-rendered"] = run(a.galsim, a.out / "galsim", model, a.threads)
        # the same rows of the galnet-rendered set, for a like-for-like comparison
        with h5py.File(a.galsim) as f:
            rows = f["rows"][:]
        pred = Table.read(a.out / "catalog.fits")[rows]
        truth = Table(read_params(a.test))[rows]
        pred["id"] = truth["id"] = np.arange(len(rows))
        ms["galnet-rendered, same rows"] = evaluate(pred, truth, None)
    text = table(ms)
    print(text)
    (a.out / "summary.md").write_text(
        "# Test-set summary\n\nCommand: `python benchmarks/testset_report.py "
        f"--test {a.test.name} --out {a.out}"
        + (f" --galsim {a.galsim.name}" if a.galsim else "") + "`\n\n" + text + "\n")
    (a.out / "summary.json").write_text(json.dumps(
        {k: {s: v.get(s) for s in ("overall", "snr>20", "10<snr<=20", "predict_seconds")}
         for k, v in ms.items()}, indent=1, default=float))


if __name__ == "__main__":
    main()
