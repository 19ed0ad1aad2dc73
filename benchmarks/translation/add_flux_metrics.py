"""Add ``flux_err``, ``total_colour_err`` and ``sky_rms`` (galnet.translate.evaluate.flux_metrics)
to experiment records made before those metrics were part of ``evaluate_translation``.

Usage: ``python benchmarks/translation/add_flux_metrics.py --test DATA/test.h5 --work DATA/exp``
then re-run ``run_experiments.py`` with the same arguments (it only rewrites the results).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from galnet.translate.evaluate import flux_metrics, regrid
from galnet.translate.model import load_translator
from galnet.translate.simulate import read_pairs
from galnet.translate.train import apply_translator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    test = read_pairs(a.test)
    z = np.asarray(test.catalog["z"])
    for path in sorted((work / "runs").glob("*.record.json")):
        rec = json.loads(path.read_text())
        if "flux_err" in rec:
            continue
        net = load_translator(path.with_name(path.name.replace(".record.json", ".safetensors")))
        pred = apply_translator(net, test.source, cond=z if net.config.cond_dim else None)
        rec.update(flux_metrics(pred, test.target_truth, test.target_sky))
        path.write_text(json.dumps(rec, indent=1))
        print(path.name, {k: round(rec[k], 4) for k in ("flux_err", "total_colour_err",
                                                         "sky_rms")}, flush=True)
    refs_path = work / "reference_records.json"
    if refs_path.exists():
        refs = json.loads(refs_path.read_text())
        src = regrid(test.source, test.source_scale, test.target_scale, test.target.shape[-1])
        for r in refs:
            im = {"target": test.target, "source": src}.get(r["loss"])
            if im is not None and "flux_err" not in r:
                r.update(flux_metrics(im, test.target_truth, test.target_sky))
        refs_path.write_text(json.dumps(refs, indent=1))


if __name__ == "__main__":
    main()
