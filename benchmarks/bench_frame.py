"""Frame-mode speed: a per-step time table of :func:`galnet.frame.pipeline.run_frame`.

    python benchmarks/bench_frame.py --frame ../shared/data/frames/kids_viking_9band/r.fits \
        --hdu 1 --psf kids_r_psf.fits --pixel-scale 0.339 [--refine] [--out CAT.ecsv]
        [--threads 2] [--profile prof.out] [--old-guard]

The PSF of a frame without one comes from ``scripts/frame_psf.py FRAME PSF.fits``. The run is
the real :func:`run_frame` (same code path as ``galnet predict --frame ... --detect``); the steps
are timed by wrapping the functions it calls (no change to the pipeline): noise/background
(:func:`galnet.io.background.frame_noise`), read (the rest of ``read_frame``), detection
(:func:`galnet.io.detect.detect`), sources (the rest of ``find_sources``: cutout plan), network
(stamps + GaLNet), cutouts (native cutouts and PSFs), paint (the frame model image), refine (the
fits of each pass, and the orchestration around them), final guard, measure (chi2, point-source
and misfit tests), catalogue (table + writing). Prints the table (wall and CPU seconds: on a
shared machine the CPU seconds of this process are the steadier measure) and galaxies/s;
``--profile`` writes a cProfile dump of the whole run.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import time
from collections import defaultdict

T: dict[str, float] = defaultdict(float)  # wall seconds per step
C: dict[str, float] = defaultdict(float)  # CPU seconds of this process per step (all threads)
N: dict[str, int] = defaultdict(int)


def _timed(owner, name: str, label: str) -> None:
    f = getattr(owner, name)

    @functools.wraps(f)
    def wrap(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        try:
            return f(*a, **k)
        finally:
            T[label] += time.perf_counter() - t
            C[label] += time.process_time() - c
            N[label] += 1

    setattr(owner, name, wrap)


class _PassLog(logging.Handler):
    """Records the 'refine pass' log lines of the pipeline (fits per pass)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("refine pass") or "reverted" in msg:
            self.lines.append(msg)


def _old_guard(pl) -> None:
    """Swap in the round-1 frame-level guard (same answers, more work; see --old-guard)."""

    def old(st, nn, params, flags):
        st._nn_models = None  # rendered again on first use
        n = 0
        for _ in range(pl._GUARD_ROUNDS):
            k = pl._guard_round(st, nn, params, flags)  # dirty=None: every source
            n += k
            if k == 0:
                break
        return n

    pl._final_guard = old


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frame", required=True)
    p.add_argument("--psf", required=True)
    p.add_argument("--hdu", type=int, default=None)
    p.add_argument("--pixel-scale", type=float, default=None)
    p.add_argument("--refine", action="store_true")
    p.add_argument("--out", default=None, help="catalogue path (overwritten)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", default=None, help="cProfile output path")
    p.add_argument("--old-guard", action="store_true",
                   help="the round-1 orchestration, for comparisons: the network's models "
                        "rendered again for the guard, every source re-checked every round")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    import galnet.frame.pipeline as pl
    import galnet.io.background as bg
    import galnet.io.catalog as cat
    import galnet.io.detect as det

    _timed(bg, "frame_noise", "noise/background")
    _timed(pl, "read_frame", "read (total)")
    _timed(det, "detect", "detection")
    _timed(pl, "find_sources", "sources (total)")
    _timed(pl, "_network", "network (stamps + GaLNet)")
    _timed(pl._Frame, "__init__", "cutouts + PSFs")
    _timed(pl._Frame, "paint", "paint model image")
    _timed(pl, "fit_cutouts", "refine: fits")
    _timed(pl, "_refine", "refine (total)")
    if a.old_guard:
        _old_guard(pl)
    _timed(pl, "_final_guard", "final guard")
    _timed(pl, "_measure", "measure")
    _timed(pl, "frame_catalog", "catalogue")
    _timed(cat, "write_catalog", "write")
    h = _PassLog()
    lg = logging.getLogger("galnet.frame.pipeline")
    lg.addHandler(h)
    lg.setLevel(logging.INFO)
    load0 = f"{os.getloadavg()[0]:.2f}"
    frame = a.frame if a.hdu is None else f"{a.frame}[{a.hdu}]"
    prof = None
    if a.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0, c0 = time.perf_counter(), time.process_time()
    t = pl.run_frame(frame, a.psf, a.out, refine=a.refine, pixel_scale=a.pixel_scale,
                     progress=False, overwrite=True)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    if prof is not None:
        prof.disable()
        prof.dump_stats(a.profile)
    for D in (T, C):
        D["read (other)"] = D.pop("read (total)") - D["noise/background"]
        D["sources (other)"] = D.pop("sources (total)") - D["detection"]
        if "refine (total)" in D:
            D["refine: orchestration"] = D.pop("refine (total)") - D["refine: fits"]
        D["catalogue"] += D.pop("write", 0.0)
    order = ["noise/background", "read (other)", "detection", "sources (other)",
             "network (stamps + GaLNet)", "cutouts + PSFs", "paint model image", "refine: fits",
             "refine: orchestration", "final guard", "measure", "catalogue"]
    print(f"{frame}: {len(t)} sources, refine={a.refine}, torch threads {a.threads}")
    print(f"load average before/after: {load0} / {os.getloadavg()[0]:.2f}")
    print(f"{'step':28s} {'wall s':>8s} {'cpu s':>8s} {'calls':>6s}")
    for k in order:
        if k in T:
            print(f"{k:28s} {T[k]:8.2f} {C[k]:8.2f} {N.get(k, 1) if k in N else '':>6}")
    print(f"{'(other: imports, glue)':28s} {dt - sum(T[k] for k in order if k in T):8.2f} "
          f"{dc - sum(C[k] for k in order if k in C):8.2f}")
    print(f"{'total':28s} {dt:8.2f} {dc:8.2f}   {len(t) / dt:.1f} galaxies/s (wall), "
          f"{len(t) / dc:.1f} per CPU-s")
    for line in h.lines:
        print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
