"""Package a trained GaLNet as the shipped default model (src/galnet/data/galnet-hsc-r.safetensors).

Adds to the weights' metadata what `galnet predict` needs to flag out-of-prior predictions (the
training prior in pixel units, from the preset) and the provenance shown in docs/model-card.md.

    python scripts/package_model.py RUN_DIR/model.safetensors --preset hsc-r \
        [--out src/galnet/data/galnet-hsc-r.safetensors]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from galnet.nn.model import DEFAULT_WEIGHTS, count_flops, load_model, save_model, training_prior
from galnet.presets import get_preset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", type=Path, help="model.safetensors of a training run")
    p.add_argument("--preset", default="hsc-r")
    p.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    a = p.parse_args()
    model = load_model(a.weights)
    pre = get_preset(a.preset)
    info = dict(model.config.info)
    log_dir = a.weights.parent / "log.jsonl"
    if log_dir.is_file():
        log = [json.loads(line) for line in log_dir.read_text().splitlines()]
        info["epochs"] = len(log)
        info["train_seconds"] = round(sum(r["seconds"] for r in log), 1)
        info["final_val"] = {k: v for k, v in log[-1].items() if k.startswith(("r2", "outlier"))}
    info.update(
        name=f"galnet-{pre.name}",
        preset=pre.name,
        pixel_scale=pre.pixel_scale,
        zeropoint=pre.zeropoint,
        prior=training_prior(pre),
        **count_flops(model),
    )
    model.config.info = info
    save_model(model, a.out)
    os.chmod(a.out, 0o644)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.1f} MB)")
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
