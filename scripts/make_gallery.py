"""Gallery: simulated survey stamps beside real galaxy cutouts, on the same noise-unit stretch.

    python scripts/make_gallery.py --data ../shared/data --bank /tmp/galnet_bank.h5 \
        --out docs/gallery.png [--seed 0] [--preset hsc-r]

Left block: stamps simulated by :func:`galnet.sim.simulate.simulate` with the bank (real backgrounds
rescaled to the preset's depth, the preset's share of real PSFs, analytic ones otherwise),
chosen to span S/N, n and r_e.
Right block: real isolated galaxies cut from the frames in ``--data``
(:func:`galnet.sim.bank.real_galaxy_cutouts`, sky-subtracted, native pixels). Every panel is
shown in units of its own 1-sigma sky noise, x = image / sigma_sky, with ONE asinh stretch
asinh(x / SOFT) and ONE vmin/vmax for all panels (no per-panel normalisation).

Also prints numbers for the comparison (in sigma units): the sky-pixel distribution, the fraction
of stamps with a neighbour above 5 sigma, and the peak S/N distribution. Sky pixels are those
outside the dilated footprint of the central source (the connected region of the smoothed stamp
above SKY_CUT around the centre); a neighbour is a connected group of >= 2 pixels above 5 sigma
that does not touch that footprint. The real frames are third-party data (see
``../shared/data/README.md``): the PNG shows cutouts of them and must not be used as a data file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

#: asinh softening (sigma): linear below ~SOFT, logarithmic above.
SOFT = 3.0
#: Display limits (sigma) shared by all panels.
VMIN, VMAX = -2.0, 300.0
#: Smoothed-stamp threshold (sigma of the raw noise) and dilation (px) of the central footprint.
SKY_CUT, SKY_DILATE = 0.5, 3
#: Neighbour detection: threshold (sigma) and minimum connected pixels.
NB_SIGMA, NB_MIN_PIX = 5.0, 2
#: Radius (px) around the stamp centre where the peak of the central source is looked for.
PEAK_R = 5
#: PSFs with a pixel below -PSF_NEG x their peak are reported (noisy empirical PSFs).
PSF_NEG = 0.01
#: Frames used for the real cutouts, with their native pixel scales (arcsec/px) for the titles.
REAL_FRAMES = {"kids_r": 0.339, "vst_r": 0.2, "ctio_i": 0.26, "ntt_emmi": 0.27,
               "decam_170316_062107_N2_z": 0.262}
SHORT = {"decam_170316_062107_N2_z": "decam_N2_z"}
#: Source repository and licence of each frame (from ../shared/data/README.md).
PROVENANCE = {"kids_r": "KiDS r: asgr/ProFound, LGPL-3", "vst_r": "VST r: asgr/magicaxis, LGPL-3",
              "ctio_i": "CTIO i: GalSim-developers/GalSim, BSD-3",
              "ntt_emmi": "NTT/EMMI: kbarbary/sep, MIT/BSD",
              "decam_170316_062107_N2_z": "DECam z: legacysurvey/legacypipe, BSD-3"}


def stretch(x: np.ndarray) -> np.ndarray:
    """The common display stretch of a stamp in sigma units."""
    return np.arcsinh(np.asarray(x, dtype=float) / SOFT)


def _radius(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    return np.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2)


def central_footprint(x: np.ndarray) -> np.ndarray:
    """Dilated footprint (bool, like ``x``) of the source at the centre of a sigma-unit stamp.

    Connected region of the Gaussian-smoothed (1.5 px) stamp above SKY_CUT that touches the
    central PEAK_R px, dilated by SKY_DILATE px; the central disc itself is always included.
    """
    sm = ndimage.gaussian_filter(x, 1.5)
    lab, _ = ndimage.label(sm > SKY_CUT)
    centre = _radius(x.shape) <= PEAK_R
    ids = np.unique(lab[centre & (lab > 0)])
    fp = np.isin(lab, ids) & (lab > 0) | centre
    return ndimage.binary_dilation(fp, iterations=SKY_DILATE)


def stamp_stats(x: np.ndarray) -> tuple[np.ndarray, bool, float]:
    """(sky pixels, has a neighbour above NB_SIGMA, peak S/N) of one stamp in sigma units."""
    fp = central_footprint(x)
    lab, n = ndimage.label(x > NB_SIGMA)
    neighbour = False
    if n:
        sizes = ndimage.sum_labels(np.ones_like(x), lab, index=np.arange(1, n + 1))
        touch = ndimage.maximum(fp.astype(float), lab, index=np.arange(1, n + 1))
        neighbour = bool(np.any((sizes >= NB_MIN_PIX) & (np.asarray(touch) == 0)))
    peak = float(x[_radius(x.shape) <= PEAK_R].max())
    return x[~fp], neighbour, peak


def summarise(name: str, stamps: np.ndarray) -> dict[str, np.ndarray]:
    """Print the comparison numbers for (N, H, W) sigma-unit stamps; return the per-stamp ones."""
    sky, nb, peak = zip(*(stamp_stats(s) for s in stamps), strict=True)
    sky = np.concatenate(sky)
    p = np.percentile(sky, [0.1, 2.275, 15.87, 50, 84.13, 97.725, 99.9])
    mad = 1.4826 * np.median(np.abs(sky - np.median(sky)))
    nb, peak = np.array(nb), np.array(peak)
    print(f"{name}: {len(stamps)} stamps, {sky.size} sky pixels (sigma units)")
    print(f"  sky median {p[3]:+.3f}  robust std (1.4826 MAD) {mad:.3f}  "
          f"(p84-p16)/2 {(p[4] - p[2]) / 2:.3f}   [N(0,1): 0, 1, 1]")
    print("  sky percentiles 0.1/2.3/16/50/84/97.7/99.9: "
          + " ".join(f"{v:+.2f}" for v in p) + "   [N(0,1): -3.09 -2 -1 0 1 2 3.09]")
    print(f"  sky pixels > 5 sigma: {np.mean(sky > 5):.2e}   < -5 sigma: {np.mean(sky < -5):.2e}"
          "   [N(0,1): 2.9e-07 each]")
    print(f"  stamps with a neighbour > {NB_SIGMA:g} sigma (>= {NB_MIN_PIX} px, off the central "
          f"footprint): {nb.mean():.2f} ({nb.sum()}/{len(nb)})")
    q = np.percentile(peak, [10, 25, 50, 75, 90])
    print("  peak S/N (max within 5 px of centre) p10/25/50/75/90: "
          + " ".join(f"{v:.0f}" for v in q))
    return {"neighbour": nb, "peak": peak}


def pick_spread(features: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` rows of ``features`` (N, d) spread out: greedy farthest-point sampling
    on the standardised features, starting from the row nearest the median."""
    z = (features - features.mean(0)) / np.maximum(features.std(0), 1e-12)
    first = int(np.argmin(np.sum((z - np.median(z, 0)) ** 2, 1)))
    chosen = [first]
    d = np.sum((z - z[first]) ** 2, 1)
    while len(chosen) < min(k, len(z)):
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, np.sum((z - z[i]) ** 2, 1))
    return np.array(chosen)


def psf_label(source: str, negative: bool) -> str:
    """Short PSF label for a panel title (``*``: the PSF has negative lobes)."""
    fam = source.split(":")[0]
    name = {"moffat": "Moffat", "kolmogorov": "Kolm.", "hsc": "HSC", "decam_psfex": "DECam",
            "des_psfex": "DES", "profit_kids": "KiDS", "profit_sdss": "SDSS",
            "sdss_psfield": "SDSS"}.get(fam, fam)
    return name + ("*" if negative else "")


def simulated(preset: str, bank: str, n: int, seed: int) -> tuple[np.ndarray, dict, dict]:
    """(stamps in sigma units (n, S, S), params table as a dict of arrays plus ``psf_neg``, the
    most negative pixel of each stamp's PSF over its peak, file attributes)."""
    from galnet.sim.simulate import read_params, simulate

    with tempfile.TemporaryDirectory(prefix="galnet_gallery_") as tmp:
        path = simulate(preset, n, seed, Path(tmp) / "sim.h5", bank=bank, progress=False)
        with h5py.File(path, "r") as f:
            images = f["images"][...].astype(float)
            sigma = f["sigma"][...].astype(float)
            psfs = f["psfs"][...]
            attrs = dict(f.attrs)
        params = read_params(path)
    # sky term of the per-pixel noise (its minimum: source Poisson noise only adds to it)
    sigma_sky = sigma.min(axis=(1, 2))
    table = {k: np.asarray(getattr(params[k], "value", params[k])) for k in params.colnames}
    table["psf_neg"] = psfs.min(axis=(1, 2)) / psfs.max(axis=(1, 2))
    return images / sigma_sky[:, None, None], table, attrs


def real(data: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(all real cutouts in sigma units (k, 61, 61), their frame names (k,))."""
    from galnet.sim.bank import real_galaxy_cutouts

    stamps, names = [], []
    for frame in REAL_FRAMES:
        img, rms = real_galaxy_cutouts(data, 1000, seed, frames=(frame,))
        stamps.append(img / rms[:, None, None])
        names += [frame] * len(img)
    return np.concatenate(stamps), np.array(names)


def pick_real(names: np.ndarray, peak: np.ndarray, k: int) -> np.ndarray:
    """``k`` real stamps: frames taken in turn (round robin) so that every frame appears, and
    within each frame the chosen ones spread evenly over its sorted peak S/N."""
    frames = list(dict.fromkeys(names))
    avail = {f: int(np.sum(names == f)) for f in frames}
    quota = dict.fromkeys(frames, 0)
    while sum(quota.values()) < min(k, len(names)):
        for f in frames:
            if quota[f] < avail[f] and sum(quota.values()) < k:
                quota[f] += 1
    out = []
    for f in frames:
        idx = np.flatnonzero(names == f)
        idx = idx[np.argsort(peak[idx])]
        pos = ((np.arange(quota[f]) + 0.5) / max(quota[f], 1) * len(idx)).astype(int)
        out += list(idx[pos])
    return np.array(out, dtype=int)


def plot(out: Path, sim: np.ndarray, sim_titles: list[str], rl: np.ndarray, rl_titles: list[str],
         suptitle: str, labels: tuple[str, str], ncol: int = 3) -> None:
    """Two blocks of ``ncol`` columns (simulated, real) of sigma-unit stamps, one stretch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    nrow = int(np.ceil(max(len(sim), len(rl)) / ncol))
    head = 0.16 * (suptitle.count("\n") + 1) + 0.55  # inches above the panels
    height = nrow * 1.7 + head + 0.75
    fig = plt.figure(figsize=(2 * ncol * 1.55 + 0.5, height))
    gs = GridSpec(nrow + 1, 2 * ncol + 1, figure=fig,
                  width_ratios=[1] * ncol + [0.18] + [1] * ncol,
                  height_ratios=[1] * nrow + [0.09], hspace=0.42, wspace=0.06,
                  left=0.02, right=0.98, top=1 - head / height, bottom=0.45 / height)
    lo, hi = stretch(VMIN), stretch(VMAX)
    im = None
    for block, (stamps, titles) in enumerate(((sim, sim_titles), (rl, rl_titles))):
        for i, (s, t) in enumerate(zip(stamps, titles, strict=True)):
            ax = fig.add_subplot(gs[i // ncol, block * (ncol + 1) + i % ncol])
            im = ax.imshow(stretch(s), cmap="gray", vmin=lo, vmax=hi, origin="lower",
                           interpolation="nearest")
            ax.set_title(t, fontsize=6.5, pad=2, linespacing=1.1)
            ax.set_xticks([])
            ax.set_yticks([])
    top = gs[0, 0].get_position(fig).y1
    for block, label in enumerate(labels):
        x0 = gs[0, block * (ncol + 1)].get_position(fig).x0
        x1 = gs[0, block * (ncol + 1) + ncol - 1].get_position(fig).x1
        fig.text((x0 + x1) / 2, top + 0.3 / fig.get_figheight(), label, ha="center",
                 va="bottom", fontsize=9.5, weight="bold")
    cax = fig.add_subplot(gs[nrow, 1:2 * ncol])
    ticks = np.array([-2, 0, 1, 3, 10, 30, 100, 300], dtype=float)
    cb = fig.colorbar(im, cax=cax, orientation="horizontal", ticks=stretch(ticks))
    cb.ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize=7)
    cb.set_label(f"pixel value / sky noise rms (sigma); display asinh(x / {SOFT:g})", fontsize=8)
    fig.suptitle(suptitle, fontsize=8, y=0.995, va="top", linespacing=1.25)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="survey data directory (../shared/data)")
    ap.add_argument("--bank", required=True, help="background/PSF bank (galnet bank build)")
    ap.add_argument("--out", required=True, help="output PNG")
    ap.add_argument("--seed", type=int, default=0, help="random seed [0]")
    ap.add_argument("--preset", default="hsc-r", help="simulation preset [hsc-r]")
    ap.add_argument("--n-sim", type=int, default=300, help="stamps simulated [300]")
    ap.add_argument("--n-show", type=int, default=18, help="panels per block [18]")
    ap.add_argument("--snr-range", type=float, nargs=2, default=(20.0, 300.0),
                    help="optimal S/N range of the simulated stamps shown [20 300]")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()

    sim, par, attrs = simulated(a.preset, a.bank, a.n_sim, a.seed)
    scale = float(attrs["pixel_scale"])
    rl, names = real(a.data, a.seed)
    print(f"simulated {len(sim)} {a.preset} stamps (bank {a.bank}), {len(rl)} real cutouts from "
          + ", ".join(f"{f} {int(np.sum(names == f))}" for f in REAL_FRAMES)
          + f"  [{time.perf_counter() - t0:.0f} s]")

    s_sim = summarise("simulated (all)", sim)
    clean = par["psf_neg"] >= -PSF_NEG
    fams = sorted({str(v).split(":")[0] for v in par["psf_source"][~clean]})
    print(f"  {np.sum(~clean)}/{len(sim)} simulated stamps have a PSF with pixels below "
          f"-{PSF_NEG:g} x its peak (families: {', '.join(fams) or '-'}; worst "
          f"{par['psf_neg'].min():.3f}); most negative sky pixel of those stamps "
          f"{sim[~clean].min() if np.any(~clean) else np.nan:.0f} sigma, of the others "
          f"{sim[clean].min():.0f} sigma")
    summarise(f"simulated (PSF min >= -{PSF_NEG:g} peak)", sim[clean])
    s_rl = summarise("real (all)", rl)

    snr = par["snr"]
    cand = np.flatnonzero((snr >= a.snr_range[0]) & (snr <= a.snr_range[1]))
    if len(cand) == 0 or len(rl) == 0:
        raise SystemExit(f"make_gallery: nothing to show ({len(cand)} simulated stamps with S/N "
                         f"in {a.snr_range}, {len(rl)} real cutouts)")
    feats = np.column_stack([np.log(snr[cand]), np.log(par["n"][cand]),
                             np.log(par["re_arcsec"][cand])])
    pick = cand[pick_spread(feats, a.n_show)]
    pick = pick[np.argsort(snr[pick])]
    pick_r = pick_real(names, s_rl["peak"], a.n_show)
    pick_r = pick_r[np.argsort(s_rl["peak"][pick_r])]
    summarise("simulated (shown)", sim[pick])
    print("shown simulated stamps: index, S/N, peak, re_arcsec, n, q, psf (fwhm), background")
    for i in pick:
        print(f"  {i:4d} {snr[i]:6.0f} {s_sim['peak'][i]:5.0f} {par['re_arcsec'][i]:5.2f} "
              f"{par['n'][i]:4.1f} {par['q'][i]:4.2f}  {par['psf_source'][i]} "
              f"({par['psf_fwhm'][i]:.2f}\")  {par['bg_origin'][i]}")
    summarise("real (shown)", rl[pick_r])

    sim_titles = [f're {par["re_arcsec"][i]:.2f}" n {par["n"][i]:.1f} q {par["q"][i]:.2f}\n'
                  f'S/N {snr[i]:.0f} (peak {s_sim["peak"][i]:.0f}) '
                  + psf_label(str(par["psf_source"][i]), bool(par["psf_neg"][i] < -PSF_NEG))
                  for i in pick]
    rl_titles = [f'{SHORT.get(names[i], names[i])} ({REAL_FRAMES[names[i]]:g}"/px)\n'
                 f'peak S/N {s_rl["peak"][i]:.0f}' for i in pick_r]
    px = 61
    sup = "\n".join([
        f"galnet: simulated {a.preset} stamps (left) vs real isolated galaxies cut from the "
        f"frames in ../shared/data (right), seed {a.seed}",
        "Same stretch for every panel: x = image / its own sky noise rms, shown as "
        f"asinh(x/{SOFT:g}) between {VMIN:g} and {VMAX:g} sigma (no per-panel scaling)",
        "Left: single Sérsic convolved with a real or analytic PSF, on real sky cutouts "
        f"rescaled to the preset depth, {scale:g}\"/px ({px} px = {px * scale:.1f}\"); "
        "titles: r_e (semi-major), n, q,",
        "optimal S/N (peak-pixel S/N), PSF (* = real PSF with negative lobes below "
        f"-{PSF_NEG:g} x peak).  Right: native 0.2-0.34\"/px ({px} px = 12-21\"); "
        "frame, peak S/N.",
        "Real frames (third-party, unchanged; see the data directory's README): "
        "\n" + ";  ".join(PROVENANCE[f] for f in REAL_FRAMES if f in set(names[pick_r])),
    ])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = (f"simulated ({a.preset} preset, {scale:g}\"/px)",
              "real cutouts (native pixels, 0.2-0.34\"/px)")
    plot(out, sim[pick], sim_titles, rl[pick_r], rl_titles, sup, labels)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) "
          f"[{time.perf_counter() - t0:.0f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
