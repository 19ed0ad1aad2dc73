"""Translation experiments: pixel vs gradient vs gradient-flow losses, with and without z_spec
conditioning, at 100%, 10% and 1% of the training pairs, judged by physical probes.

Usage (what made docs/translation.md and benchmarks/translation/results.json)::

    galnet translate simulate --n 3600 --seed 1 --out DATA/train.h5
    galnet translate simulate --n 600 --seed 2 --out DATA/test.h5
    python benchmarks/translation/run_experiments.py --train DATA/train.h5 --test DATA/test.h5 \
        --work DATA/experiments --steps 600 --photoz-steps 1500 --jobs 2

Stages (each skipped when its output exists, so an interrupted run resumes):

1. photo-z probes: a PhotoZNet trained on the *target-domain* training images (the probe), and
   one trained on the regridded *source* training images (the intra-domain reference);
2. the structure reference: galnet's fitter on the noiseless target r band of the first
   ``--structure-rows`` test galaxies;
3. the grid of translators (``--jobs`` processes, one torch thread each), each applied to the
   test set and evaluated (galnet.translate.evaluate.evaluate_translation);
4. ``results.json`` (contract: a list of records {loss, conditioning, fraction, sigma_mad, bias,
   outlier, pz_width, colour_err, d_re, d_n} plus ``loss`` = "target" and "source"), a
   Markdown table and the plots (``make_plots.py``).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from galnet.io.files import jsonable as _jsonable

LOSSES = ("pixel", "gradient", "gradient-flow")
CONDITIONING = ("none", "zspec")
FRACTIONS = (1.0, 0.1, 0.01)


def run_name(loss: str, cond: str, fraction: float) -> str:
    return f"{loss}_{cond}_{fraction:g}"


# ---- stage 1: photo-z probes -------------------------------------------------------------------
def _train_photoz(kind: str, train: str, out: str, steps: int, threads: int, n_val: int
                  ) -> dict:
    import torch

    from galnet.translate.evaluate import regrid
    from galnet.translate.simulate import read_pairs
    from galnet.translate.train import PhotoZTrainConfig, train_photoz

    torch.set_num_threads(threads)
    p = read_pairs(train)
    if kind == "target":
        images = p.target
    else:  # the intra-domain reference: source images regridded to the target grid
        images = regrid(p.source, p.source_scale, p.target_scale, p.target.shape[-1])
    cfg = PhotoZTrainConfig(steps=steps, threads=threads, n_val=n_val)
    t0 = time.time()
    summary = train_photoz(images, np.asarray(p.catalog["z"]), p.target_sky, cfg, out,
                           progress=False)
    return {"kind": kind, "seconds": time.time() - t0, **summary}


# ---- stage 3: one translator -------------------------------------------------------------------
def _run_one(loss: str, cond: str, fraction: float, a: dict) -> dict:
    import torch

    from galnet.translate.evaluate import colour_profile, evaluate_translation
    from galnet.translate.model import load_photoz, load_translator
    from galnet.translate.simulate import read_pairs
    from galnet.translate.train import TranslatorTrainConfig, apply_translator, train_translator

    torch.set_num_threads(a["threads"])
    work = Path(a["work"])
    name = run_name(loss, cond, fraction)
    weights = work / "runs" / f"{name}.safetensors"
    t0 = time.time()
    if not weights.exists():
        pairs = read_pairs(a["train"])
        cfg = TranslatorTrainConfig(loss=loss, conditioning=cond, fraction=fraction,
                                    steps=a["steps"], batch=a["batch"], seed=a["seed"],
                                    threads=a["threads"], val_every=a["val_every"],
                                    n_val=a["n_val"])
        train_translator(pairs, cfg, weights, progress=False)
        del pairs
    train_s = time.time() - t0
    meta_path = weights.with_suffix(".json")
    test = read_pairs(a["test"])
    model = load_translator(weights)
    z = np.asarray(test.catalog["z"])
    t1 = time.time()
    pred = apply_translator(model, test.source, cond=z if cond == "zspec" else None)
    apply_s = time.time() - t1
    pz = predict_photoz(load_photoz(work / "photoz_target.safetensors"), pred)
    rec = evaluate_translation(pred, test, pz, structure_rows=a["structure_rows"],
                               reference_fit=_reference(work))
    prof = colour_profile(pred, test.target_sky, test.catalog, test.target_scale)
    np.savez_compressed(work / "runs" / f"{name}.npz", z_phot=pz["z_mean"], width=pz["width"],
                        examples=pred[: a["examples"]], colour_profile=prof)
    history = json.loads(meta_path.read_text()) if meta_path.exists() else None
    return _jsonable({"loss": loss, "conditioning": cond, "fraction": fraction, **rec,
                      "train_seconds": train_s, "apply_seconds_per_1000": 1000 * apply_s / len(z),
                      "steps": a["steps"], "n_train_pairs": _n_train(a, fraction),
                      "history_last": history[-1] if history else None})


def predict_photoz(model, images):
    from galnet.translate.train import predict_photoz as _p

    return _p(model, images)


def _n_train(a: dict, fraction: float) -> int:
    return max(1, round(fraction * (a["n_train"] - a["n_val"])))


def _reference(work: Path):
    from astropy.table import Table

    return Table.read(work / "structure_reference.ecsv")


# ---- stage 4: reference records -----------------------------------------------------------------
def _reference_records(a: dict) -> list[dict]:
    from galnet.translate.evaluate import (
        colour_profile,
        evaluate_translation,
        photoz_metrics,
        regrid,
        structure_deltas,
        structure_fits,
    )
    from galnet.translate.model import load_photoz
    from galnet.translate.simulate import read_pairs

    work = Path(a["work"])
    test = read_pairs(a["test"])
    z = np.asarray(test.catalog["z"])
    pz_model = load_photoz(work / "photoz_target.safetensors")
    ref = _reference(work)
    out = []
    # the true target images (noisy): the photo-z probe in its own domain
    pz = predict_photoz(pz_model, test.target)
    rec = evaluate_translation(test.target, test, pz, structure_rows=a["structure_rows"],
                               reference_fit=ref)
    out.append({"loss": "target", "conditioning": "none", "fraction": None, **rec})
    np.savez_compressed(work / "runs" / "target.npz", z_phot=pz["z_mean"], width=pz["width"],
                        examples=test.target[: a["examples"]],
                        truth=test.target_truth[: a["examples"]],
                        colour_profile=colour_profile(test.target_truth, test.target_sky,
                                                      test.catalog, test.target_scale))
    # the source images regridded onto the target grid, seen by the same probe; the structure
    # probe fits the source r band at its own pixels with its own PSF (a fair baseline)
    src = regrid(test.source, test.source_scale, test.target_scale, test.target.shape[-1])
    pz = predict_photoz(pz_model, src)
    rec = evaluate_translation(src, test, pz, structure_rows=0)
    r = test.bands.index("r")
    rows = a["structure_rows"]
    fit = structure_fits(test.source[:rows, r], test.source_psf[:rows, r],
                         float(test.source_sky[r]), test.source_scale)
    rec.update({k: v for k, v in structure_deltas(fit, ref).items() if k != "n"})
    out.append({"loss": "source", "conditioning": "none", "fraction": None, **rec})
    np.savez_compressed(work / "runs" / "source.npz", z_phot=pz["z_mean"], width=pz["width"],
                        examples=src[: a["examples"]], source=test.source[: a["examples"]],
                        colour_profile=colour_profile(src, test.target_sky, test.catalog,
                                                      test.target_scale))
    # the intra-domain reference: a photo-z trained on regridded source images, applied to them
    pz = predict_photoz(load_photoz(work / "photoz_source.safetensors"), src)
    out.append({"loss": "source-intra", "conditioning": "none", "fraction": None,
                **photoz_metrics(z, pz["z_mean"], pz["width"])})
    return [_jsonable(r) for r in out]


def _table(records: list[dict]) -> str:
    cols = ("loss", "conditioning", "fraction", "sigma_mad", "preservation", "gain_vs_pixel",
            "bias", "outlier", "pz_width", "colour_err", "colour_grad_err", "flux_err",
            "total_colour_err", "sky_rms", "d_re", "d_n", "d_mag", "mse", "ssim")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--work", required=True, help="folder for weights, predictions, results")
    ap.add_argument("--out", default="benchmarks/translation", help="results.json and table")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("--photoz-steps", type=int, default=1500)
    ap.add_argument("--structure-rows", type=int, default=200)
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--n-val", type=int, default=256, help="validation pairs (end of --train)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--losses", nargs="+", default=list(LOSSES))
    ap.add_argument("--conditioning", nargs="+", default=list(CONDITIONING))
    ap.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    a = ap.parse_args()
    import h5py

    from galnet.translate.evaluate import preservation, preservation_gain, structure_reference
    from galnet.translate.simulate import read_pairs

    work = Path(a.work)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    with h5py.File(a.train) as f:
        n_train = int(f.attrs["n_done"])
    args = {**vars(a), "threads": 1, "n_train": n_train}
    t0 = time.time()

    # 1. photo-z probes (two in parallel), 2. structure reference
    with ProcessPoolExecutor(a.jobs) as ex:
        futs = {k: ex.submit(_train_photoz, k, a.train, str(work / f"photoz_{k}.safetensors"),
                             a.photoz_steps, 1, a.n_val)
                for k in ("target", "source") if not (work / f"photoz_{k}.safetensors").exists()}
        if not (work / "structure_reference.ecsv").exists():
            ref = structure_reference(read_pairs(a.test, rows=slice(0, a.structure_rows)),
                                      rows=a.structure_rows)
            ref.write(work / "structure_reference.ecsv", overwrite=True)
        for k, f in futs.items():
            (work / f"photoz_{k}.json").write_text(json.dumps(_jsonable(f.result()), indent=1))
            print(f"photo-z probe ({k}) trained, {time.time() - t0:.0f} s", flush=True)

    # 3. the grid
    grid = [(lo, c, fr) for fr in a.fractions for c in a.conditioning for lo in a.losses]
    todo = [g for g in grid if not (work / "runs" / f"{run_name(*g)}.record.json").exists()]
    with ProcessPoolExecutor(a.jobs) as ex:
        futs = {ex.submit(_run_one, *g, args): g for g in todo}
        for f in futs:
            rec = f.result()
            (work / "runs" / f"{run_name(*futs[f])}.record.json").write_text(
                json.dumps(rec, indent=1))
            print(f"{run_name(*futs[f])}: sigma_mad {rec['sigma_mad']:.4f} colour_err "
                  f"{rec['colour_err']:.3f} ({time.time() - t0:.0f} s)", flush=True)

    # 4. references and results
    refs_path = work / "reference_records.json"
    if not refs_path.exists():
        refs_path.write_text(json.dumps(_reference_records(args), indent=1))
    refs = json.loads(refs_path.read_text())
    records = [json.loads((work / "runs" / f"{run_name(*g)}.record.json").read_text())
               for g in grid]
    s_tgt = next(r["sigma_mad"] for r in refs if r["loss"] == "target")
    s_src = next(r["sigma_mad"] for r in refs if r["loss"] == "source")
    for r in records:
        r["preservation"] = preservation(r["sigma_mad"], s_src, s_tgt)
    for r in records:
        base = next(b for b in records if b["loss"] == "pixel" and
                    b["conditioning"] == r["conditioning"] and b["fraction"] == r["fraction"])
        r["gain_vs_pixel"] = preservation_gain(r["preservation"], base["preservation"])
    contract = [r for r in records] + [r for r in refs if r["loss"] in ("target", "source")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps([_jsonable(r) for r in contract], indent=1))
    intra = [r for r in refs if r["loss"] == "source-intra"]
    (out / "reference.json").write_text(json.dumps(intra, indent=1))
    (out / "results.md").write_text(_table(records + refs) + "\n")
    print(_table(records + refs))
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
