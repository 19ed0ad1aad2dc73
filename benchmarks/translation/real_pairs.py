"""Real pairs: SDSS r -> KiDS-like r with translators trained on simulated sdss-r -> kids-r
pairs, compared with the real KiDS r images of the same ten GAMA galaxies.

Usage (what made benchmarks/translation/real_pairs.{json,md}; ``--figure PNG`` draws the real
stamps, which stay outside the repository like the data)::

    .venv/bin/python benchmarks/translation/real_pairs.py --data ../shared/data \
        --work /work/data_galnet/translate/real --n-pairs 1000 --steps 300 \
        --out benchmarks/translation

Data: ProFit's ten GAMA galaxies (``../shared/data/galaxies/profit_gama_kids_sdss``, ICRAR/ProFit,
LGPL-3), loaded with ``benchmarks/gama_galaxies.py`` (:func:`load_gama`: image, sigma map, mask =
``mskim`` and the other segments, clipped unit-sum PSF; magzero 0, so nanomaggies = image * 1e9).
Nothing from them is written into the repository except numbers and one small PNG plot.

Stages (each skipped when its output under ``--work`` exists; ``--redo-eval`` recomputes 3-5):

1. ``pairs.h5``: ``--n-pairs`` simulated pairs, domains ``sdss-r`` (0.339"/px, 99 x 99) and
   ``kids-r`` (0.2"/px, 168 x 168) of ``galnet/data/translation.toml``;
2. ``translator_{pixel,gradient-flow}.safetensors``: two translators, no conditioning;
3. ``stamps.npz``: per galaxy, the 99 x 99 SDSS stamp (nanomaggies) whose centre is the sky point
   of the 168 x 168 KiDS stamp's centre, the KiDS stamp with its sigma, mask and segmentation,
   the translations and the regridded SDSS baseline (:func:`galnet.translate.evaluate.regrid`).
   Alignment: the headers have no WCS; both cutouts are centred on the galaxy with the same
   orientation (gama_galaxies.py), so the two views are tied by the galaxy centre, taken from
   galnet single-Sersic fits of the full native images (float64, ExampleInit start). The KiDS
   stamp is an integer-pixel cut (real pixels untouched, zero-padded and masked where the image
   is smaller); the SDSS stamp is resampled (cubic spline, ``scipy.ndimage.map_coordinates``) at
   the matching sub-pixel positions and zero-padded (counted in ``sdss_padded``) beyond its edges;
4. ``fits.json``: galnet fits (``galnet.fitting.lm.fit_arrays``, float64, start = ExampleInit
   mapped to the stamp) of (a) the KiDS stamp (sigma map, mask, KiDS PSF), (b) the regridded
   SDSS and the two translations (KiDS PSF, sigma = the kids-r sky rms, the KiDS mask), (c) an
   integer-pixel 99 x 99 cut of the SDSS image (its sigma map, mask, PSF);
5. ``<out>/real_pairs.json``, ``<out>/real_pairs.md`` and, with ``--figure``, a PNG.

Pixel comparison, over the unmasked pixels of the galaxy's own KiDS segment:
``chi2nu = mean(((T - K) / sigma_K)^2)`` and ``flux_ratio = sum(T) / sum(K)``, for T = the
translations and the regridded SDSS. Two references: ``sersic`` (the PSF-convolved Sersic model of
fit (a), i.e. what a one-component model of the KiDS image leaves) and ``noise_floor_regrid``
(``1 + mean((regrid(n) / sigma_K)^2)`` for SDSS noise realisations ``n`` drawn from the SDSS sigma
map: the chi2nu a perfect regridded-SDSS image would get from the two images' noise alone).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from galnet.io.files import jsonable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gama_galaxies as gg  # noqa: E402  (benchmarks/gama_galaxies.py: loaders of the data)

#: nanomaggies per image unit of the ProFit images (magzero 0; AB zeropoint 22.5).
NMGY = 10.0 ** (0.4 * 22.5)
SOURCE, TARGET = "sdss-r", "kids-r"
LOSSES = ("pixel", "gradient-flow")
#: Suffix of the translations of the noise-matched input (Gaussian noise added to the real SDSS
#: stamp up to the sdss-r domain's sky rms; a diagnostic of the noise-level gap).
NM = "+noise"
#: Methods compared with the real KiDS image: the regridded SDSS, the two translations, and the
#: two translations of the noise-matched SDSS input.
METHODS = ("regrid", *LOSSES, *(f"{loss}{NM}" for loss in LOSSES))
#: Fitted views: the SDSS stamp at its own pixels and every method (all vs the KiDS fit).
FIT_VIEWS = ("sdss", *METHODS)
PARAMS = ("re_arcsec", "n", "q", "mag")


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(jsonable(obj), indent=1) + "\n")


# ---- stages 1-2: simulation and training -------------------------------------------------------
def simulate(work: Path, n: int) -> tuple[Path, float]:
    from galnet.translate.simulate import simulate_pairs

    path = work / "pairs.h5"
    if path.exists():
        return path, 0.0
    t0 = time.time()
    simulate_pairs(path, n, source=SOURCE, target=TARGET, threads=1)
    return path, time.time() - t0


def train(work: Path, pairs_path: Path, steps: int) -> dict[str, dict]:
    from galnet.translate.model import read_metadata
    from galnet.translate.simulate import read_pairs
    from galnet.translate.train import TranslatorTrainConfig, train_translator

    pairs = None
    out = {}
    for loss in LOSSES:
        path = work / f"translator_{loss}.safetensors"
        if not path.exists():
            pairs = pairs if pairs is not None else read_pairs(pairs_path)
            cfg = TranslatorTrainConfig(loss=loss, steps=steps, threads=1, n_val=100,
                                        val_every=100)
            train_translator(pairs, cfg, path)
        out[loss] = {"path": str(path), **read_metadata(path)["summary"]}
    return out


# ---- stage 3: stamps ---------------------------------------------------------------------------
def _cut(a: np.ndarray, x0: int, y0: int, size: int, fill) -> tuple[np.ndarray, np.ndarray]:
    """Integer cut ``a[y0:y0+size, x0:x0+size]``, ``fill`` outside; and the outside mask."""
    out = np.full((size, size), fill, dtype=a.dtype)
    outside = np.ones((size, size), dtype=bool)
    ny, nx = a.shape
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + size, ny), min(x0 + size, nx)
    if ye > ys and xe > xs:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = a[ys:ye, xs:xe]
        outside[ys - y0:ye - y0, xs - x0:xe - x0] = False
    return out, outside


def _centroid(gal: dict) -> tuple[float, float]:
    """Flux-weighted centroid (x, y) of the target segment (negative pixels clipped)."""
    w = np.where(gal["segim"] == gal["target"], np.clip(gal["image"], 0, None), 0.0)
    yy, xx = np.indices(w.shape)
    return float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())


def _sky_rms(gal: dict) -> float:
    """Robust (MAD) rms of the sky pixels (segment 0, unmasked), nanomaggies."""
    v = gal["image"][(gal["segim"] == 0) & ~gal["mask"]] * NMGY
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def make_stamps(data: str, cataids: list[int]) -> tuple[dict[str, np.ndarray], list[dict]]:
    from scipy.ndimage import map_coordinates

    from galnet.translate.simulate import get_domain

    src, tgt = get_domain(SOURCE), get_domain(TARGET)
    S, T = src.stamp, tgt.stamp
    ratio = tgt.pixel_scale / src.pixel_scale
    arrays: dict[str, list] = {k: [] for k in (
        "sdss", "sdss_cut", "sdss_cut_sigma", "sdss_cut_mask", "sdss_psf", "kids", "kids_sigma",
        "kids_mask", "kids_seg", "kids_psf", "sdss_sigma_shifted")}
    info = []
    for cid in cataids:
        k = gg.load_gama(data, cid, "KiDS")
        s = gg.load_gama(data, cid, "SDSS")
        fk, fs = gg.galnet_fit(k, "example", "float64"), gg.galnet_fit(s, "example", "float64")
        ck, cs = _centroid(k), _centroid(s)
        # KiDS: integer cut whose centre (T - 1) / 2 lies within half a pixel of the galaxy
        x0 = int(math.floor(fk["x"] - (T - 1) / 2 + 0.5))
        y0 = int(math.floor(fk["y"] - (T - 1) / 2 + 0.5))
        img, out_k = _cut(k["image"] * NMGY, x0, y0, T, 0.0)
        sig, _ = _cut(k["sigma"] * NMGY, x0, y0, T, 1.0)
        msk, _ = _cut(k["mask"], x0, y0, T, True)
        seg, _ = _cut(k["segim"], x0, y0, T, -1)
        seg = np.where(seg == k["target"], 1, np.where(seg == 0, 0, 2))  # 1 target, 2 other
        # the sky point of the KiDS stamp centre, relative to the galaxy, in SDSS pixels
        dx = (x0 + (T - 1) / 2 - fk["x"]) * ratio
        dy = (y0 + (T - 1) / 2 - fk["y"]) * ratio
        j = np.arange(S) - (S - 1) / 2
        ys, xs = np.meshgrid(fs["y"] + dy + j, fs["x"] + dx + j, indexing="ij")
        ny, nx = s["image"].shape
        pad = (xs < 0) | (ys < 0) | (xs > nx - 1) | (ys > ny - 1)
        stamp = map_coordinates(s["image"] * NMGY, [ys, xs], order=3, mode="constant", cval=0.0)
        stamp[pad] = 0.0
        ssig = map_coordinates(s["sigma"] * NMGY, [ys, xs], order=1, mode="nearest")
        # SDSS at its own pixels: the integer cut nearest to the same sky field
        sx0 = int(round(fs["x"] + dx - (S - 1) / 2))
        sy0 = int(round(fs["y"] + dy - (S - 1) / 2))
        scut, out_s = _cut(s["image"] * NMGY, sx0, sy0, S, 0.0)
        ssc, _ = _cut(s["sigma"] * NMGY, sx0, sy0, S, 1.0)
        smk, _ = _cut(s["mask"], sx0, sy0, S, True)
        for key, val in (("sdss", stamp), ("sdss_cut", scut), ("sdss_cut_sigma", ssc),
                         ("sdss_cut_mask", smk | out_s), ("sdss_psf", s["psf"]), ("kids", img),
                         ("kids_sigma", sig), ("kids_mask", msk | out_k), ("kids_seg", seg),
                         ("kids_psf", k["psf"]), ("sdss_sigma_shifted", ssig)):
            arrays[key].append(val)
        init_k = {key: float(k["init"][key]) for key in gg.FIT_KEYS}
        init_k["x"] -= x0
        init_k["y"] -= y0
        init_s = {key: float(s["init"][key]) for key in gg.FIT_KEYS}
        init_s["x"] -= sx0
        init_s["y"] -= sy0
        for init in (init_k, init_s):
            init["flux"] *= NMGY
        info.append({
            "cataid": cid, "kids_shape": k["image"].shape, "sdss_shape": s["image"].shape,
            "kids_fit_centre": (fk["x"], fk["y"]), "sdss_fit_centre": (fs["x"], fs["y"]),
            "kids_centroid": ck, "sdss_centroid": cs,
            # alignment check: fitted centre minus segment centroid, KiDS minus SDSS (arcsec)
            "centre_vs_centroid_mismatch_arcsec": (
                (fk["x"] - ck[0]) * 0.2 - (fs["x"] - cs[0]) * 0.339,
                (fk["y"] - ck[1]) * 0.2 - (fs["y"] - cs[1]) * 0.339),
            "kids_cut_origin": (x0, y0), "sdss_cut_origin": (sx0, sy0),
            "kids_padded": int(out_k.sum()), "sdss_padded": int(pad.sum()),
            "sdss_cut_padded": int(out_s.sum()),
            "sky_rms_kids": _sky_rms(k), "sky_rms_sdss": _sky_rms(s),
            "kids_psf_fwhm_arcsec": gg.psf_fwhm_pix(k["psf"]) * 0.2,
            "sdss_psf_fwhm_arcsec": gg.psf_fwhm_pix(s["psf"]) * 0.339,
            "init_kids": init_k, "init_sdss": init_s,
        })
    return {key: np.asarray(v) for key, v in arrays.items()}, info


def translate(st: dict[str, np.ndarray], info: list[dict], work: Path, seed: int = 0
              ) -> dict[str, np.ndarray]:
    """The regridded SDSS stamps and the translations of the SDSS stamps as they are and with
    white Gaussian noise added up to the sdss-r sky rms (``sqrt(rms_domain^2 - rms_real^2)``,
    ``rms_real`` the MAD sky rms of each SDSS image)."""
    from galnet.translate.evaluate import regrid
    from galnet.translate.model import load_translator
    from galnet.translate.simulate import get_domain
    from galnet.translate.train import apply_translator

    src, tgt = get_domain(SOURCE), get_domain(TARGET)
    x = st["sdss"][:, None].astype(np.float64)
    rms = np.array([r["sky_rms_sdss"] for r in info])
    add = np.sqrt(np.clip(float(src.sky_rms[0]) ** 2 - rms**2, 0, None))
    xn = x + add[:, None, None, None] * np.random.default_rng(seed).standard_normal(x.shape)
    out = {"regrid": regrid(x, src.pixel_scale, tgt.pixel_scale, tgt.stamp)[:, 0]}
    for loss in LOSSES:
        net = load_translator(work / f"translator_{loss}.safetensors")
        for key, inp in ((loss, x), (f"{loss}{NM}", xn)):
            out[key] = apply_translator(net, inp.astype(np.float32))[:, 0].astype(np.float64)
    return out


def sim_check(work: Path, n_val: int = 100) -> dict:
    """The translators on their own validation pairs (the last ``n_val`` simulated pairs):
    median flux ratio sum(pred) / sum(noiseless target) and median chi2nu
    ``mean(((pred - target) / sky)^2)`` over the stamp, for all and for mag_r_sdss < 18 (the
    real galaxies are r = 14.9-18.2)."""
    from galnet.translate.evaluate import regrid
    from galnet.translate.model import load_translator
    from galnet.translate.simulate import read_pairs
    from galnet.translate.train import apply_translator

    p = read_pairs(work / "pairs.h5")
    p = p.subset(slice(len(p) - n_val, len(p)))
    bright = np.asarray(p.catalog["mag_r_sdss"]) < 18
    truth = p.target_truth.sum(axis=(1, 2, 3))
    preds = {"regrid": regrid(p.source, p.source_scale, p.target_scale, p.target.shape[-1])}
    for loss in LOSSES:
        preds[loss] = apply_translator(load_translator(work / f"translator_{loss}.safetensors"),
                                       p.source)
    out = {"n": n_val, "n_bright": int(bright.sum())}
    for m, pr in preds.items():
        fr = pr.sum(axis=(1, 2, 3)) / truth
        chi = (((pr - p.target) / p.target_sky[None, :, None, None]) ** 2).mean(axis=(1, 2, 3))
        out[m] = {"flux_ratio": float(np.median(fr)), "chi2nu": float(np.median(chi)),
                  "flux_ratio_bright": float(np.median(fr[bright])),
                  "chi2nu_bright": float(np.median(chi[bright]))}
    return out


# ---- stage 4: comparisons and fits -------------------------------------------------------------
def _fit(image, psf, sigma, mask, init) -> dict:
    from galnet.fitting.lm import fit_arrays
    from galnet.fitting.problem import FitConfig

    t0 = time.perf_counter()
    r = fit_arrays(image, psf, sigma=sigma, mask=mask, init=init,
                   config=FitConfig(dtype="float64"))
    out = {k: v[0].item() for k, v in r.items()}
    out["time_s"] = time.perf_counter() - t0
    out["converged"], out["bound"] = bool(out["converged"]), bool(out["bound"])
    return out


def _summary(r: dict, scale: float) -> dict:
    mag = 22.5 - 2.5 * math.log10(r["flux"]) if r["flux"] > 0 else math.nan
    return {"re_arcsec": r["re_pix"] * scale, "n": r["n"], "q": r["q"], "pa_deg": r["pa_deg"],
            "mag": mag, "x": r["x"], "y": r["y"], "chi2nu": r["chi2nu"],
            "converged": r["converged"], "bound": r["bound"], "niter": r["niter"]}


def compare(st: dict, tr: dict, info: list[dict], seed: int = 0) -> list[dict]:
    from galnet.profiles.render import render
    from galnet.translate.evaluate import regrid
    from galnet.translate.simulate import get_domain

    src, tgt = get_domain(SOURCE), get_domain(TARGET)
    sky_t = float(tgt.sky_rms[0])
    rng = np.random.default_rng(seed)
    rows = []
    for i, inf in enumerate(info):
        K, sK, mK = st["kids"][i], st["kids_sigma"][i], st["kids_mask"][i]
        seg = (st["kids_seg"][i] == 1) & ~mK & (sK > 0)
        row = {"cataid": inf["cataid"], "npix_segment": int(seg.sum()), "chi2nu": {},
               "flux_ratio": {}, "fit": {}}
        fits = {"kids": _fit(K, st["kids_psf"][i], sK, mK, inf["init_kids"])}
        for m in METHODS:
            Ti = tr[m][i]
            row["chi2nu"][m] = float(np.mean(((Ti - K)[seg] / sK[seg]) ** 2))
            row["flux_ratio"][m] = float(Ti[seg].sum() / K[seg].sum())
            fits[m] = _fit(Ti, st["kids_psf"][i], np.full_like(Ti, sky_t), mK, inf["init_kids"])
        fits["sdss"] = _fit(st["sdss_cut"][i], st["sdss_psf"][i], st["sdss_cut_sigma"][i],
                            st["sdss_cut_mask"][i], inf["init_sdss"])
        # references: the Sersic model of the KiDS fit, and the noise floor of the regrid
        fk = fits["kids"]
        model = np.asarray(render({k: fk[k] for k in gg.FIT_KEYS}, st["kids_psf"][i], K.shape,
                                  dtype=np.float64)).reshape(K.shape)
        row["chi2nu"]["sersic"] = float(np.mean(((model - K)[seg] / sK[seg]) ** 2))
        row["flux_ratio"]["sersic"] = float(model[seg].sum() / K[seg].sum())
        noise = rng.standard_normal((8, 1, *st["sdss"][i].shape)) * st["sdss_sigma_shifted"][i]
        rn = regrid(noise, src.pixel_scale, tgt.pixel_scale, tgt.stamp)[:, 0]
        row["chi2nu"]["noise_floor_regrid"] = float(1 + np.mean((rn[:, seg] / sK[seg]) ** 2))
        for view, r in fits.items():
            scale = src.pixel_scale if view == "sdss" else tgt.pixel_scale
            row["fit"][view] = _summary(r, scale)
        row["fit_time_s"] = sum(r["time_s"] for r in fits.values())
        rows.append(row)
    return rows


def medians(rows: list[dict]) -> dict:
    med: dict = {"chi2nu": {}, "flux_ratio": {}, "abs_delta_vs_kids": {},
                 "delta_vs_kids": {}, "abs_rel_delta_re": {}}
    for key in ("chi2nu", "flux_ratio"):
        for m in rows[0][key]:
            med[key][m] = float(np.median([r[key][m] for r in rows]))
    for v in FIT_VIEWS:
        d = {p: np.array([r["fit"][v][p] - r["fit"]["kids"][p] for r in rows]) for p in PARAMS}
        med["abs_delta_vs_kids"][v] = {p: float(np.nanmedian(np.abs(d[p]))) for p in PARAMS}
        med["delta_vs_kids"][v] = {p: float(np.nanmedian(d[p])) for p in PARAMS}
        rel = [r["fit"][v]["re_arcsec"] / r["fit"]["kids"]["re_arcsec"] - 1 for r in rows]
        med["abs_rel_delta_re"][v] = float(np.nanmedian(np.abs(rel)))
    med["fits_converged"] = {v: int(sum(r["fit"][v]["converged"] and not r["fit"][v]["bound"]
                                        for r in rows)) for v in ("kids", *FIT_VIEWS)}
    med["kids_fit"] = {p: float(np.median([r["fit"]["kids"][p] for r in rows])) for p in PARAMS}
    return med


# ---- stage 5: outputs --------------------------------------------------------------------------
def figure(path: Path, st: dict, tr: dict, ids: list[int], cataids: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from galnet.translate.simulate import get_domain

    src, tgt = get_domain(SOURCE), get_domain(TARGET)
    area = (tgt.pixel_scale / src.pixel_scale) ** 2  # SDSS pixel -> KiDS-pixel flux
    soft = 2.0 * float(tgt.sky_rms[0])
    cols = (("SDSS r", None), ("regridded SDSS", "regrid"), ("pixel loss", "pixel"),
            ("gradient-flow loss", "gradient-flow"), ("pixel, +noise", f"pixel{NM}"),
            ("grad.-flow, +noise", f"gradient-flow{NM}"), ("real KiDS r", "kids"))
    fig, ax = plt.subplots(len(ids), len(cols), figsize=(1.45 * len(cols), 1.5 * len(ids)),
                           squeeze=False)
    for r, cid in enumerate(ids):
        i = cataids.index(cid)
        top = np.percentile(np.arcsinh(st["kids"][i] / soft), 99.8)
        for c, (title, key) in enumerate(cols):
            im = (st["sdss"][i] * area if key is None else st["kids"][i] if key == "kids"
                  else tr[key][i])
            ax[r, c].imshow(np.clip(np.arcsinh(im / soft) / top, 0, 1), origin="lower",
                            cmap="gray_r", interpolation="nearest")
            ax[r, c].set_xticks([])
            ax[r, c].set_yticks([])
            if r == 0:
                ax[r, c].set_title(title, fontsize=7)
        ax[r, 0].set_ylabel(f"G{cid}", fontsize=8)
    fig.text(0.5, 0.005, "GAMA galaxies of ICRAR/ProFit (LGPL-3), 33.6\" fields; asinh stretch "
             "in KiDS-pixel flux, the same for every panel of a row; +noise: SDSS input with "
             "noise added up to the sdss-r sky rms", ha="center", va="bottom", fontsize=6)
    fig.tight_layout(pad=0.3, rect=(0, 0.025, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, dpi=70, format="png")
    plt.close(fig)
    buf.seek(0)
    Image.open(buf).convert("L").save(path, optimize=True)  # grey: a third of the bytes


def _f(v, fmt=".3f") -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, fmt)


def markdown(res: dict, command: str, hsc_note: str) -> str:
    med, meta = res["medians"], res["meta"]
    names = {"sdss": "SDSS (own pixels, SDSS PSF)", "regrid": "regridded SDSS",
             "pixel": "translated, pixel loss", "gradient-flow": "translated, gradient-flow loss",
             f"pixel{NM}": "translated, pixel loss, noise-matched input",
             f"gradient-flow{NM}": "translated, gradient-flow loss, noise-matched input",
             "sersic": "Sersic fit of real KiDS", "noise_floor_regrid": "noise floor (regrid)"}
    lines = [
        "# Real pairs: SDSS r -> KiDS-like r on ten GAMA galaxies",
        "",
        "Made by (`benchmarks/translation/real_pairs.py`; data: ICRAR/ProFit GAMA examples, "
        "LGPL-3, not in the repo):",
        "",
        f"    {command}",
        "",
        f"Translators trained on {meta['n_pairs']} simulated {SOURCE} -> {TARGET} pairs, "
        f"{meta['steps']} steps each (" + ", ".join(
            f"{k}: best val loss {_f(v['best_val_loss'], '.4g')} at step {v['best_step']}, "
            f"{_f(v['wall_s'], '.0f')} s" for k, v in meta["train"].items()) + ").",
        "",
        "Pixels vs the real KiDS image, over the galaxy's own unmasked KiDS segment "
        "(median of 10 galaxies): chi2nu = mean(((T - K) / sigma_K)^2), flux ratio = "
        "sum T / sum K.",
        "",
        "| image T | chi2nu | flux ratio |",
        "|---|---|---|",
    ]
    for m in med["chi2nu"]:
            lines.append(f"| {names.get(m, m)} | {_f(med['chi2nu'][m], '.2f')} | "
                     f"{_f(med['flux_ratio'].get(m, math.nan), '.3f')} |")
    lines += [
        "",
        "galnet single-Sersic fits, median |difference| from the fit of the real KiDS stamp "
        "(re relative; median signed difference in brackets):",
        "",
        "| fitted image | abs(d re) arcsec | abs(d re)/re | abs(d n) | abs(d q) | abs(d mag) "
        "| fits ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in FIT_VIEWS:
        a, s = med["abs_delta_vs_kids"][v], med["delta_vs_kids"][v]
        lines.append(f"| {names[v]} | {_f(a['re_arcsec'], '.3f')} ({_f(s['re_arcsec'], '+.3f')}) "
                     f"| {_f(med['abs_rel_delta_re'][v], '.3f')} | {_f(a['n'], '.2f')} "
                     f"({_f(s['n'], '+.2f')}) | {_f(a['q'], '.3f')} ({_f(s['q'], '+.3f')}) | "
                     f"{_f(a['mag'], '.3f')} ({_f(s['mag'], '+.3f')}) | "
                     f"{med['fits_converged'][v]}/10 |")
    k = med["kids_fit"]
    lines += ["", f"Real KiDS fits (reference): median re {_f(k['re_arcsec'], '.2f')}\", n "
              f"{_f(k['n'], '.2f')}, q {_f(k['q'], '.2f')}, r {_f(k['mag'], '.2f')} mag (AB); "
              f"{med['fits_converged']['kids']}/10 converged within the bounds. 'fits ok' = "
              "converged and no parameter on a bound."]
    sim = res["simulated_validation"]
    lines += ["", f"The same translators on their {sim['n']} simulated validation pairs (all; "
              f"the {sim['n_bright']} with r < 18 in brackets), whole stamp: flux ratio = "
              "sum(pred) / sum(noiseless target), chi2nu = mean(((pred - target) / sky)^2).", "",
              "| image | flux ratio | chi2nu |", "|---|---|---|"]
    for m in ("regrid", *LOSSES):
        v = sim[m]
        lines.append(f"| {names[m]} | {_f(v['flux_ratio'])} ({_f(v['flux_ratio_bright'])}) | "
                     f"{_f(v['chi2nu'], '.2f')} ({_f(v['chi2nu_bright'], '.2f')}) |")
    noise = meta["noise"]
    lines += [
        "",
        f"Noise: the real SDSS images have a sky rms of {_f(noise['sdss_real_median'], '.4f')} "
        f"nanomaggies/px (median; range {_f(noise['sdss_real_min'], '.4f')}-"
        f"{_f(noise['sdss_real_max'], '.4f')}), the {SOURCE} domain "
        f"{_f(noise['sdss_domain'], '.4f')}; KiDS real {_f(noise['kids_real_median'], '.4f')}, "
        f"{TARGET} domain {_f(noise['kids_domain'], '.4f')}. 'noise-matched input': the real "
        f"SDSS stamp plus white Gaussian noise up to the {SOURCE} sky rms.",
        "",
        hsc_note,
        "",
    ]
    return "\n".join(lines)


def hsc_hst_note(data: str) -> str:
    from astropy.io import fits

    from galnet.translate.simulate import list_domains

    d = Path(data) / "pairs" / "hsc_hst_cosmos"
    try:
        hsc, hst = fits.getdata(d / "Cut_HSC.fits"), fits.getdata(d / "Cut_HST.fits")
    except OSError:
        return "HSC/HST COSMOS pairs: not found."
    return (f"HSC/HST COSMOS pairs (`pairs/hsc_hst_cosmos`, pmelchior/scarlet, MIT): HSC "
            f"{hsc.shape[0]} bands x {hsc.shape[1]}x{hsc.shape[2]} px at 0.168\" and HST "
            f"{hst.shape[0]}x{hst.shape[1]} px at 0.03\" (7.5-8.4\" fields), but translation.toml "
            f"has no HSC or HST domain (only {', '.join(list_domains())}), so no trained "
            "translator applies to them; not evaluated.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--work", default="/work/data_galnet/translate/real")
    ap.add_argument("--n-pairs", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/translation")
    ap.add_argument("--figure", default=None,
                    help="optional PNG of the real stamps (real data: keep it out of the repo)")
    ap.add_argument("--figure-ids", type=int, nargs="*",
                    default=[265911, 266035, 267199, 278109])
    ap.add_argument("--redo-eval", action="store_true", help="recompute stages 3-5")
    a = ap.parse_args(argv)
    command = "python benchmarks/translation/real_pairs.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))

    import torch

    torch.set_num_threads(1)
    from galnet.translate.simulate import get_domain

    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    t0 = time.time()
    pairs_path, times["simulate_s"] = simulate(work, a.n_pairs)
    print(f"# pairs: {pairs_path}", flush=True)
    t1 = time.time()
    train_info = train(work, pairs_path, a.steps)
    times["train_s"] = time.time() - t1
    print("# translators: " + ", ".join(f"{k} {v['wall_s']:.0f} s" for k, v in
                                          train_info.items()), flush=True)

    cataids = gg.list_cataids(a.data)
    st_path, info_path = work / "stamps.npz", work / "stamps.json"
    t2 = time.time()
    if a.redo_eval or not st_path.exists():
        st, info = make_stamps(a.data, cataids)
        st.update({f"tr_{k}": v for k, v in translate(st, info, work).items()})
        np.savez_compressed(st_path, **st)
        _write_json(info_path, info)
    with np.load(st_path) as z:
        st = {k: z[k] for k in z.files}
    info = json.loads(info_path.read_text())
    tr = {m: st[f"tr_{m}"] for m in METHODS}
    times["stamps_s"] = time.time() - t2

    t3 = time.time()
    fits_path = work / "fits.json"
    if a.redo_eval or not fits_path.exists():
        _write_json(fits_path, compare(st, tr, info))
    rows = json.loads(fits_path.read_text())
    sim_path = work / "sim_check.json"
    if a.redo_eval or not sim_path.exists():
        _write_json(sim_path, sim_check(work))
    sim = json.loads(sim_path.read_text())
    times["compare_fit_s"] = time.time() - t3

    src, tgt = get_domain(SOURCE), get_domain(TARGET)
    ks = [r["sky_rms_kids"] for r in info]
    ss = [r["sky_rms_sdss"] for r in info]
    meta = {
        "command": command, "n_pairs": a.n_pairs, "steps": a.steps, "source": SOURCE,
        "target": TARGET, "train": {k: {x: v[x] for x in ("best_step", "best_val_loss",
                                                          "best_val_l1", "wall_s")}
                                    for k, v in train_info.items()},
        "noise": {"sdss_real_median": float(np.median(ss)), "sdss_real_min": min(ss),
                  "sdss_real_max": max(ss), "sdss_domain": float(src.sky_rms[0]),
                  "kids_real_median": float(np.median(ks)), "kids_domain": float(tgt.sky_rms[0])},
        # wall times of this invocation (0 for stages skipped because their outputs existed);
        # the training times are in "train" (wall_s)
        "times_this_invocation_s": {**times, "total": time.time() - t0},
    }
    per_gal = []
    for inf, row in zip(info, rows, strict=True):
        per_gal.append({**row, "alignment": {k: inf[k] for k in (
            "kids_shape", "sdss_shape", "kids_fit_centre", "sdss_fit_centre",
            "centre_vs_centroid_mismatch_arcsec", "kids_padded", "sdss_padded",
            "sdss_cut_padded", "kids_psf_fwhm_arcsec", "sdss_psf_fwhm_arcsec",
            "sky_rms_kids", "sky_rms_sdss")}})
    res = {"meta": meta, "medians": medians(rows), "simulated_validation": sim,
           "galaxies": per_gal}
    _write_json(out / "real_pairs.json", res)
    (out / "real_pairs.md").write_text(markdown(res, command, hsc_hst_note(a.data)))
    if a.figure:
        fig = Path(a.figure)
        fig.parent.mkdir(parents=True, exist_ok=True)
        figure(fig, st, tr, [c for c in a.figure_ids if c in cataids], cataids)
    print((out / "real_pairs.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
