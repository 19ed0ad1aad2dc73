"""Plots of the translation experiments (run after run_experiments.py).

Usage::

    python benchmarks/translation/make_plots.py --test DATA/test.h5 --work DATA/experiments \
        --results benchmarks/translation/results.json --out docs

Writes ``translation_examples.png`` (source, each loss, target), ``translation_colours.png``
(colour profiles in units of the disk half-light radius), ``translation_photoz.png`` (z_phot vs
z_spec) and ``translation_fractions.png`` (photo-z sigma_MAD against the share of pairs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from galnet.translate.apply import rgb  # noqa: E402
from galnet.translate.evaluate import PROFILE_RADII, colour_profile  # noqa: E402
from galnet.translate.simulate import read_pairs  # noqa: E402

LOSSES = ("pixel", "gradient", "gradient-flow")
COLOURS = {"pixel": "C3", "gradient": "C1", "gradient-flow": "C2", "source": "0.5",
           "target": "k"}


def _load(work: Path, name: str) -> dict:
    return dict(np.load(work / "runs" / f"{name}.npz"))


def examples(test, work: Path, out: Path, cond: str, n: int = 6) -> None:
    rows = [("SDSS-like source", test.source[:n], test.source_sky)]
    for lo in LOSSES:
        rows.append((f"{lo}", _load(work, f"{lo}_{cond}_1")["examples"][:n], test.target_sky))
    rows.append(("CFHTLS-like target", test.target[:n], test.target_sky))
    fig, ax = plt.subplots(len(rows), n, figsize=(1.9 * n, 1.9 * len(rows)), squeeze=False)
    for r, (title, ims, sky) in enumerate(rows):
        for i in range(n):
            a = ax[r, i]
            s = ims[i].shape[-1]
            c = slice(s // 4, s - s // 4)  # the central half: the galaxies are small
            a.imshow(rgb(ims[i][:, c, c], sky), origin="lower")
            a.set_xticks([])
            a.set_yticks([])
            if i == 0:
                a.set_ylabel(title, fontsize=8)
            if r == 0:
                a.set_title(f"z={test.catalog['z'][i]:.2f} {test.catalog['morph'][i]}",
                            fontsize=7)
    fig.suptitle(f"central 12.7\" of the test stamps (gri, asinh); translators: 100% of the "
                 f"pairs, conditioning {cond}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    plt.close(fig)


def colours(test, work: Path, out: Path, cond: str) -> None:
    truth = colour_profile(test.target_truth, test.target_sky, test.catalog, test.target_scale)
    mid = 0.5 * (np.asarray(PROFILE_RADII[:-1]) + np.asarray(PROFILE_RADII[1:]))
    names = ["source", *(f"{lo}_{cond}_1" for lo in LOSSES)]
    fig, ax = plt.subplots(2, 4, figsize=(13, 5.6), sharex=True)
    bands = test.bands
    for b in range(len(bands) - 1):
        a = ax[0, b]
        a.plot(mid, np.nanmedian(truth[:, b], 0), "k-", lw=2, label="truth")
        for nm in names:
            prof = _load(work, nm)["colour_profile"]
            key = nm.split("_")[0]
            a.plot(mid, np.nanmedian(prof[:, b], 0), "-", color=COLOURS[key], label=key)
            ax[1, b].plot(mid, np.nanmedian(np.abs(prof[:, b] - truth[:, b]), 0), "-o", ms=3,
                          color=COLOURS[key], label=key)
        a.set_title(f"{bands[b]} - {bands[b + 1]}")
        ax[1, b].set_xlabel("elliptical radius / disk r_e")
    ax[0, 0].set_ylabel("median colour (asinh mag)")
    ax[1, 0].set_ylabel("median |colour - truth|")
    ax[0, 0].legend(fontsize=7)
    fig.suptitle(f"colour profiles of {len(test)} test galaxies (translators: 100%, {cond})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    plt.close(fig)


def photoz(test, work: Path, out: Path, cond: str) -> None:
    z = np.asarray(test.catalog["z"])
    names = ["source", *(f"{lo}_{cond}_1" for lo in LOSSES), "target"]
    fig, ax = plt.subplots(1, len(names), figsize=(3 * len(names), 3.2), sharey=True)
    for a, nm in zip(ax, names, strict=True):
        zp = _load(work, nm)["z_phot"]
        dz = (zp - z) / (1 + z)
        smad = 1.4826 * np.median(np.abs(dz - np.median(dz)))
        a.plot(z, zp, ".", ms=2, color=COLOURS[nm.split("_")[0]])
        a.plot([0, 0.45], [0, 0.45], "k-", lw=0.5)
        a.set_title(f"{nm.split('_')[0]}: sigma_MAD {smad:.4f}", fontsize=9)
        a.set_xlabel("z_spec")
        a.set_xlim(0, 0.45)
        a.set_ylim(0, 0.45)
    ax[0].set_ylabel("z_phot (probe trained on target images)")
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    plt.close(fig)


def fractions(results: list[dict], out: Path) -> None:
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    ref = {r["loss"]: r for r in results if r["loss"] in ("source", "target")}
    for a, cond in zip(ax, ("none", "zspec"), strict=True):
        for lo in LOSSES:
            rs = sorted((r for r in results if r["loss"] == lo and r["conditioning"] == cond),
                        key=lambda r: r["fraction"])
            a.plot([r["fraction"] for r in rs], [r["sigma_mad"] for r in rs], "-o",
                   color=COLOURS[lo], label=lo)
        for k in ("source", "target"):
            a.axhline(ref[k]["sigma_mad"], color=COLOURS[k], ls="--", lw=1, label=k)
        a.set_xscale("log")
        a.set_xlabel("share of the training pairs")
        a.set_title(f"conditioning: {cond}", fontsize=9)
    ax[0].set_ylabel("photo-z sigma_MAD")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", default="benchmarks/translation/results.json")
    ap.add_argument("--out", default="docs")
    ap.add_argument("--conditioning", default="none")
    a = ap.parse_args()
    work, out = Path(a.work), Path(a.out)
    test = read_pairs(a.test)
    examples(test, work, out / "translation_examples.png", a.conditioning)
    colours(test, work, out / "translation_colours.png", a.conditioning)
    photoz(test, work, out / "translation_photoz.png", a.conditioning)
    fractions(json.loads(Path(a.results).read_text()), out / "translation_fractions.png")
    print(f"wrote 4 figures to {out}")


if __name__ == "__main__":
    main()
