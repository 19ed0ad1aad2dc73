"""Throughput of ``galnet simulate``: stamps per second and the extrapolated time for 200k stamps.

Usage::

    .venv/bin/python benchmarks/bench_simulate.py [-n 20000] [--preset hsc-r] [--bank BANK]
                                                  [--chunk 4096] [--profile]

Runs the simulator once with synthetic backgrounds and, when ``--bank`` is given, once more with
the bank (real backgrounds and a mix of real and analytic PSFs). The files go to a temporary
directory and are deleted. ``--profile`` prints the 25 most expensive functions (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from galnet.sim.simulate import read_params, simulate

TARGET = 200_000


def run(preset: str, n: int, seed: int, bank: str | None, chunk: int, profile: bool,
        threads: int, workers: int) -> float:
    """Simulate ``n`` stamps into a temporary file; returns the wall time (s)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.h5"
        prof = cProfile.Profile() if profile else None
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        simulate(preset, n, seed, out, bank=bank, chunk=chunk, progress=False, threads=threads,
                 workers=workers)
        if prof:
            prof.disable()
        dt = time.perf_counter() - t0
        t = read_params(out)
        size_mb = out.stat().st_size / 2**20
    label = (f"{'bank ' + bank if bank else 'synthetic'}, {workers} worker(s) x {threads} "
             "torch thread(s)")
    print(f"\n[{label}] {n} stamps in {dt:.1f} s: {n / dt:.0f} stamps/s; "
          f"{TARGET} stamps -> {TARGET / n * dt / 60:.1f} min (target < 10 min); "
          f"file {size_mb / n * TARGET / 1024:.1f} GB per 200k")
    print(f"  S/N quantiles 5/50/95%: {np.percentile(np.asarray(t['snr']), [5, 50, 95]).round(1)}")
    bank_arg = f" --bank {bank}" if bank else ""
    print(f"  command: galnet simulate --preset {preset} -n {TARGET} --seed {seed} "
          f"--out train.h5{bank_arg} --threads {threads} --workers {workers}")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", type=int, default=20_000, help="stamps per run [20000]")
    ap.add_argument("--preset", default="hsc-r")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bank", default=None, help="bank file: also time real backgrounds/PSFs")
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--threads", type=int, nargs="+", default=[1],
                    help="torch thread counts to time, e.g. 1 2 [1]")
    ap.add_argument("--workers", type=int, default=1, help="worker processes [1]")
    ap.add_argument("--profile", action="store_true", help="print a cProfile summary")
    a = ap.parse_args(argv)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{platform.machine()}, load average {os.getloadavg()[0]:.2f} (other processes slow "
          "this down)")
    for threads in a.threads:
        run(a.preset, a.n, a.seed, None, a.chunk, a.profile, threads, a.workers)
        if a.bank:
            run(a.preset, a.n, a.seed, a.bank, a.chunk, a.profile, threads, a.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
