"""Tables of a saved injection or stress run (``--out-rows ROWS.npz`` of
benchmarks/inject_frames.py or benchmarks/stress_stamps.py), with the subsets the summary does
not show: by the truth's resolution (re against the PSF FWHM), by regime within it, by frame.

Usage::

    .venv/bin/python benchmarks/inject_report.py ROWS.npz [--snr-min 20]

Prints :func:`inject_metrics.markdown` of the whole run, then :func:`inject_metrics.subsets`
(network and refine, the "all" regime at S/N above the cut) for: ``re < FWHM/2`` (unresolved
by construction), ``re >= FWHM/2``, ``re >= FWHM``, ``isolated, re >= FWHM/2``, ``isolated,
re >= FWHM``, and each frame. Also the median re ratio (measured / true) and its NMAD for
isolated galaxies with re >= FWHM / 2 (a bias next to the scatter).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inject_metrics as im  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows")
    ap.add_argument("--snr-min", type=float, default=20.0)
    a = ap.parse_args(argv)
    t = dict(np.load(a.rows, allow_pickle=True))
    s = im.summarise(t, t["fwhm"], a.snr_min)
    print(f"# {a.rows}: {s['N_galaxies']} galaxies, {s['N_stars']} stars\n")
    print(im.markdown(s) + "\n")
    r = t["re_pix"] / t["fwhm"]
    iso = t["regime"] == "isolated"
    groups = {"re < FWHM/2": r < 0.5, "re >= FWHM/2": r >= 0.5, "re >= FWHM": r >= 1,
              "isolated, re >= FWHM/2": iso & (r >= 0.5), "isolated, re >= FWHM": iso & (r >= 1)}
    groups.update({str(f): t["frame"] == f for f in np.unique(t["frame"])})
    print(im.subsets_markdown(im.subsets(t, groups)) + "\n")
    sel = (t["kind"] == 0) & t["det"] & (t["snr"] > a.snr_min) & iso & (r >= 0.5)
    print("| run | N | median re_meas / re_true | NMAD of the ratio |\n|---|---|---|---|")
    for p in ("net_", "ref_"):
        q = t[f"{p}re_pix"][sel] / t["re_pix"][sel]
        q = q[np.isfinite(q)]
        med = float(np.median(q)) if q.size else float("nan")
        nmad = 1.4826 * float(np.median(np.abs(q - med))) if q.size else float("nan")
        print(f"| {p[:-1]} | {q.size} | {med:.3f} | {nmad:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
