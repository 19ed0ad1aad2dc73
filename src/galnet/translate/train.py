"""Training the translator and the photo-z probe (one file, read top to bottom).

Translator (:func:`train_translator`), on paired images from :mod:`galnet.translate.simulate`:

- pairs: the last ``n_val`` pairs validate (the same pairs for every ``fraction``); the first
  ``round(fraction (N - n_val))`` (at least 1) train;
- each step draws a batch (without replacement, or with it when the subset is smaller than the
  batch) from a generator seeded by ``(seed, step)``, so a resumed run draws what an
  uninterrupted one would; optionally one of the 8 symmetries of the square, the same for
  source and target (both stamps are centred on the same sky point);
- targets are in target sky-rms units, ``y = flux / target_sky[band]`` (the unit of the losses);
- order within a step: ``loss.update_flow(pred.detach(), y, cond)`` first (the gradient-flow loss
  fits its flow to the current residuals with its own optimizer; a no-op for the other losses),
  then the generator step on ``loss(pred, y, cond)`` with the updated flow. Gradients the
  generator's backward leaves on the loss module's parameters are discarded;
- the loss is ``make_loss(loss, **loss_options)`` (``n_bands`` defaults to C for
  "gradient-flow");
- Adam, learning rate cosine-decayed from ``lr`` to ``0.1 lr`` at the last step;
- every ``val_every`` steps: the training loss and the pixel L1 (target units) on the validation
  pairs, no gradient; the weights with the best validation value of the training loss are kept
  (``select_by="loss"``; for "gradient-flow" that value is measured with the flow of the moment,
  a moving yardstick: ``select_by="l1"`` selects by the pixel L1 instead); a checkpoint
  ``<out>.ckpt.safetensors`` (model, best weights, Adam state, loss module state and its flow
  optimizer's state, step, history; safetensors, no pickle) is written; a later call with the
  same configuration and data resumes from it; it is removed at the end.

Files: ``out`` (best weights + metadata: training config, validation values, steps, wall time,
fraction, numbers of pairs) and ``out.with_suffix(".json")`` (the validation history).

Photo-z probe (:func:`train_photoz`): binned softmax p(z) trained with cross-entropy on
target-domain images (Gaussian label smoothing over neighbouring bins, ``smooth`` bins wide).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.files import atomic_write
from galnet.nn.checkpoint import (
    adam_state,
    load_adam,
    read_checkpoint,
    save_checkpoint,
    strip_prefix,
)
from galnet.translate.model import (
    PhotoZConfig,
    PhotoZNet,
    Translator,
    TranslatorConfig,
    save_photoz,
    save_translator,
)

__all__ = [
    "LOSSES",
    "CONDITIONING",
    "TranslatorTrainConfig",
    "train_translator",
    "apply_translator",
    "PhotoZTrainConfig",
    "train_photoz",
    "predict_photoz",
]

#: Loss names accepted by :class:`TranslatorTrainConfig` (galnet.translate.losses.make_loss).
LOSSES: tuple[str, ...] = ("pixel", "gradient", "gradient-flow")
#: Conditioning modes: none, or the spectroscopic redshift (catalog column ``z``) via FiLM.
CONDITIONING: tuple[str, ...] = ("none", "zspec")


@dataclass
class TranslatorTrainConfig:
    """Everything a translator training run depends on; saved with the weights."""

    loss: str = "pixel"  # "pixel" | "gradient" | "gradient-flow"
    loss_options: dict = field(default_factory=dict)  # keyword arguments of make_loss
    conditioning: str = "none"  # "none" | "zspec" (catalog["z"] as cond (B, 1))
    fraction: float = 1.0  # of the training pairs used, (0, 1]
    steps: int = 3000  # optimizer steps
    batch: int = 16
    lr: float = 1e-3  # Adam, cosine decay to 0.1 lr at the last step
    weight_decay: float = 0.0
    seed: int = 0
    width: int = 24  # Translator width (channels of the first U-Net level)
    depth: int = 2  # Translator depth (stride-2 downsamplings)
    val_every: int = 250  # steps between validations (and checkpoints)
    n_val: int = 256  # validation pairs, the last n_val of the set
    select_by: str = "loss"  # best weights by validation "loss" (the training loss) or "l1"
    threads: int | None = None  # torch CPU threads [torch default]
    device: str = "cpu"
    augment: bool = True  # random flips / 90-degree rotations, the same for source and target


# ---- shared helpers ----------------------------------------------------------------------------
def _augment(x: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry ``k`` in 0..7 of the square on (B, C, H, W): bit 0 transpose, bit 1 flip x,
    bit 2 flip y."""
    if k & 1:
        x = x.transpose(-1, -2)
    if k & 2:
        x = x.flip(-1)
    if k & 4:
        x = x.flip(-2)
    return x.contiguous()


def _draw(n: int, batch: int, augment: bool, seed: int, step: int) -> tuple[np.ndarray, int]:
    """Batch indices into ``range(n)`` and a symmetry for ``step``, reproducible across resumes."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if n >= batch:
        idx = torch.randperm(n, generator=g)[:batch]
    else:
        idx = torch.randint(0, n, (batch,), generator=g)
    k = int(torch.randint(0, 8, (1,), generator=g)) if augment else 0
    return np.sort(idx.numpy()), k


def _lr_at(step: int, steps: int, lr: float) -> float:
    """Cosine decay from ``lr`` (step 0) to ``0.1 lr`` (the last step)."""
    f = step / max(1, steps - 1)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(f, 1.0))))


def _check_steps(cfg: Any) -> None:
    for name in ("steps", "batch", "val_every", "n_val"):
        v = getattr(cfg, name)
        if not isinstance(v, int | np.integer) or v < 1:
            raise GalnetValueError(f"{name} must be an integer >= 1 (got {v!r})", name, v)
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise GalnetValueError(f"lr must be > 0 (got {cfg.lr})", "lr", cfg.lr)


def _setup(threads: int | None, device: str) -> torch.device:
    if threads:
        torch.set_num_threads(threads)
    return torch.device(device)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1)))


# ---- translator: data --------------------------------------------------------------------------
def _check_pairs(pairs: Any, cfg: TranslatorTrainConfig) -> None:
    """One-line GalnetValueError for a bad configuration or bad pair arrays."""
    if cfg.loss not in LOSSES:
        raise GalnetValueError(f"unknown loss {cfg.loss!r} (expected one of {list(LOSSES)})",
                               "loss", cfg.loss)
    if cfg.conditioning not in CONDITIONING:
        raise GalnetValueError(f"unknown conditioning {cfg.conditioning!r} "
                               f"(expected one of {list(CONDITIONING)})",
                               "conditioning", cfg.conditioning)
    if cfg.select_by not in ("loss", "l1"):
        raise GalnetValueError(f"unknown select_by {cfg.select_by!r} (expected 'loss' or 'l1')",
                               "select_by", cfg.select_by)
    if not (0 < cfg.fraction <= 1):
        raise GalnetValueError(f"fraction must be in (0, 1] (got {cfg.fraction})",
                               "fraction", cfg.fraction)
    _check_steps(cfg)
    src, tgt = np.shape(pairs.source), np.shape(pairs.target)
    if len(src) != 4 or src[2] != src[3]:
        raise GalnetValueError(f"source images must be (N, C, S, S), got {src}")
    if len(tgt) != 4 or tgt[2] != tgt[3] or tgt[:2] != src[:2]:
        raise GalnetValueError(f"target images must be (N, C, S', S') matching source {src}, "
                               f"got {tgt}")
    N, C = src[:2]
    for name in ("source_sky", "target_sky"):
        if np.shape(getattr(pairs, name)) != (C,):
            raise GalnetValueError(f"{name} must have one value per band ({C}), "
                                   f"got shape {np.shape(getattr(pairs, name))}")
    if cfg.n_val >= N:
        raise GalnetValueError(f"n_val = {cfg.n_val} leaves no training pairs out of {N}")
    if cfg.conditioning == "zspec":
        z = _zspec(pairs)
        if z.shape != (N,) or not np.all(np.isfinite(z)):
            raise GalnetValueError(f"catalog['z'] must hold {N} finite redshifts")


def _zspec(pairs: Any) -> np.ndarray:
    try:
        return np.asarray(pairs.catalog["z"], dtype=np.float32)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise GalnetValueError("conditioning 'zspec' needs a catalog with a column 'z'") from err


def _fingerprint(pairs: Any, n_train: int) -> str:
    """A cheap identity of the training data (shapes and a few sums), for resuming."""
    s = [float(np.sum(pairs.source[i], dtype=np.float64)) for i in (0, n_train - 1, -1)]
    t = [float(np.sum(pairs.target[i], dtype=np.float64)) for i in (0, n_train - 1, -1)]
    return json.dumps([list(np.shape(pairs.source)), list(np.shape(pairs.target)),
                       n_train, s, t])


class _Batches:
    """Float32 tensors of a set of pair indices, the targets in target sky-rms units."""

    def __init__(self, pairs: Any, cond: np.ndarray | None, device: torch.device):
        self.pairs, self.cond, self.device = pairs, cond, device
        self.tsky = torch.as_tensor(np.asarray(pairs.target_sky, dtype=np.float32)).view(
            1, -1, 1, 1)

    def get(self, idx: np.ndarray, k: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        src = torch.from_numpy(np.asarray(self.pairs.source[idx], dtype=np.float32))
        y = torch.from_numpy(np.asarray(self.pairs.target[idx], dtype=np.float32)) / self.tsky
        cond = None
        if self.cond is not None:
            cond = torch.from_numpy(self.cond[idx]).view(-1, 1).to(self.device)
        return (_augment(src, k).to(self.device), _augment(y, k).to(self.device), cond)


@torch.no_grad()
def _validate(model: Translator, loss_fn: nn.Module, data: _Batches, idx: np.ndarray,
              batch: int = 32) -> tuple[float, float]:
    """(training loss, pixel L1 in target sky units) on the pairs ``idx``, no gradient."""
    model.eval()
    loss_fn.eval()
    tot_loss = tot_l1 = 0.0
    for i in range(0, len(idx), batch):
        src, y, cond = data.get(idx[i:i + batch])
        pred = model(src, cond)
        tot_loss += float(loss_fn(pred, y, cond)) * len(src)
        tot_l1 += float((pred - y).abs().mean()) * len(src)
    model.train()
    loss_fn.train()
    return tot_loss / len(idx), tot_l1 / len(idx)


# ---- translator: checkpoints (safetensors, no pickle) ------------------------------------------
def _save_ckpt(path: Path, model: Translator, best_state: dict[str, torch.Tensor] | None,
               opt: torch.optim.Optimizer, loss_fn: nn.Module, meta: dict[str, Any]) -> None:
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    if best_state is not None:
        state.update({f"best.{k}": v for k, v in best_state.items()})
    state.update({f"loss.{k}": v for k, v in loss_fn.state_dict().items()})
    state.update(adam_state(opt, "adam."))
    if isinstance(getattr(loss_fn, "flow_optimizer", None), torch.optim.Optimizer):
        state.update(adam_state(loss_fn.flow_optimizer, "flowadam."))
    save_checkpoint(path, state, {k: json.dumps(v) for k, v in meta.items()})


def _read_ckpt(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """(metadata, tensors) of a checkpoint, or None (with a warning) when it is unreadable."""
    try:
        raw, state = read_checkpoint(path)
        return {k: json.loads(v) for k, v in raw.items()}, state
    except (GalnetFileError, ValueError) as err:
        warnings.warn(f"{path}: unreadable checkpoint ignored ({err})", stacklevel=3)
        return None


# ---- translator: the loop ----------------------------------------------------------------------
def train_translator(pairs: Any, cfg: TranslatorTrainConfig | None, out: str | Path,
                     progress: bool = True) -> dict[str, Any]:
    """Train a :class:`Translator` on ``pairs`` (a :class:`galnet.translate.simulate.PairSet`:
    ``source`` (N, C, 64, 64) and ``target`` (N, C, 136, 136) nanomaggies, ``source_sky``,
    ``target_sky`` (C,), ``source_scale``, ``target_scale``, ``catalog['z']``); write ``out``
    (best weights) and its ``.json`` history; return a summary dict (see the module doc).
    ``cfg=None``: the defaults of :class:`TranslatorTrainConfig`."""
    from tqdm.auto import tqdm

    from galnet.runner import progress_enabled
    from galnet.translate.losses import make_loss

    cfg = cfg or TranslatorTrainConfig()
    _check_pairs(pairs, cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_path = out.with_suffix(".ckpt.safetensors")
    device = _setup(cfg.threads, cfg.device)

    N, C, S_in = np.shape(pairs.source)[:3]
    S_out = np.shape(pairs.target)[2]
    val_idx = np.arange(N - cfg.n_val, N)
    n_train = max(1, round(cfg.fraction * (N - cfg.n_val)))
    zspec = cfg.conditioning == "zspec"
    data = _Batches(pairs, _zspec(pairs) if zspec else None, device)

    torch.manual_seed(cfg.seed)
    mcfg = TranslatorConfig(
        bands=int(C), in_size=int(S_in), out_size=int(S_out), width=cfg.width, depth=cfg.depth,
        cond_dim=1 if zspec else 0,
        scale_ratio=float(pairs.target_scale / pairs.source_scale) ** 2,
        source_sky=[float(s) for s in pairs.source_sky],
        target_sky=[float(s) for s in pairs.target_sky])
    model = Translator(mcfg).to(device).train()
    opts = dict(cfg.loss_options)
    if cfg.loss == "gradient-flow":
        opts.setdefault("n_bands", int(C))
    loss_fn = make_loss(cfg.loss, **opts).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    # resume from a checkpoint of the same run (configuration and data)
    run_id = {"config": {k: v for k, v in asdict(cfg).items() if k not in ("threads", "device")},
              "data": _fingerprint(pairs, n_train)}
    start, best, best_step, wall0 = 0, math.inf, 0, 0.0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    ck = _read_ckpt(ckpt_path) if ckpt_path.is_file() else None
    if ck is not None and ck[0].get("run") != run_id:
        warnings.warn(f"{ckpt_path}: checkpoint of a different configuration or data; "
                      "starting afresh", stacklevel=2)
        ck = None
    if ck is not None:
        meta, state = ck
        model.load_state_dict(strip_prefix(state, "model."))
        loss_fn.load_state_dict(strip_prefix(state, "loss."))
        load_adam(opt, state, "adam.")
        if isinstance(getattr(loss_fn, "flow_optimizer", None), torch.optim.Optimizer):
            load_adam(loss_fn.flow_optimizer, state, "flowadam.")
        best_state = strip_prefix(state, "best.") or None
        start, best, best_step = meta["step"], meta["best"], meta["best_step"]
        wall0, history = meta["wall_s"], meta["history"]
    resumed_from = start

    t0 = time.time()
    sums = {"loss": 0.0, "flow": 0.0, "n": 0, "n_flow": 0}
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="translator",
               disable=not progress_enabled(progress))
    for step in bar:
        for grp in opt.param_groups:
            grp["lr"] = _lr_at(step, cfg.steps, cfg.lr)
        idx, k = _draw(n_train, cfg.batch, cfg.augment, cfg.seed, step)
        src, y, cond = data.get(idx, k)
        pred = model(src, cond)  # (B, C, 136, 136) target sky units
        flow = loss_fn.update_flow(pred.detach(), y, cond)  # 1: the loss's own flow
        loss = loss_fn(pred, y, cond)  # 2: the generator
        opt.zero_grad(set_to_none=True)
        loss.backward()
        loss_fn.zero_grad(set_to_none=True)  # the flow is trained by update_flow only
        opt.step()
        sums["loss"] += float(loss.detach())
        sums["n"] += 1
        if flow is not None:
            sums["flow"] += float(flow)
            sums["n_flow"] += 1
        done = step + 1
        if done % cfg.val_every and done != cfg.steps:
            continue
        vloss, vl1 = _validate(model, loss_fn, data, val_idx)
        rec = {"step": done, "train_loss": sums["loss"] / max(1, sums["n"]), "val_loss": vloss,
               "val_l1": vl1, "lr": _lr_at(step, cfg.steps, cfg.lr),
               "time": wall0 + time.time() - t0}
        if sums["n_flow"]:
            rec["flow_loss"] = sums["flow"] / sums["n_flow"]
        history.append(rec)
        sums = {"loss": 0.0, "flow": 0.0, "n": 0, "n_flow": 0}
        score = vloss if cfg.select_by == "loss" else vl1
        if math.isfinite(score) and score < best:
            best, best_step = score, done
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{rec['train_loss']:.4g}", val=f"{vloss:.4g}", l1=f"{vl1:.4g}")
        if done < cfg.steps:
            _save_ckpt(ckpt_path, model, best_state, opt, loss_fn,
                       {"run": run_id, "step": done, "best": best, "best_step": best_step,
                        "wall_s": wall0 + time.time() - t0, "history": history})
    bar.close()

    final = history[-1] if history else {}
    if best_state is not None:
        model.load_state_dict(best_state)
    at_best = next((h for h in history if h["step"] == best_step), {})
    summary = {
        "out": str(out), "steps": cfg.steps, "best_step": best_step,
        "best_val_loss": at_best.get("val_loss", math.nan),
        "best_val_l1": at_best.get("val_l1", math.nan),
        "final_val_loss": final.get("val_loss", math.nan),
        "final_val_l1": final.get("val_l1", math.nan),
        "wall_s": wall0 + time.time() - t0, "fraction": cfg.fraction,
        "n_pairs": int(N), "n_train": int(n_train), "n_val": cfg.n_val,
        "resumed_from": resumed_from,
    }
    extra = {"train_config": asdict(cfg), "summary": summary,
             "bands": list(getattr(pairs, "bands", [])),
             "source_domain": str(getattr(pairs, "source_domain", "")),
             "target_domain": str(getattr(pairs, "target_domain", ""))}
    save_translator(out, model.eval(), extra)
    _write_json(out.with_suffix(".json"), history)
    ckpt_path.unlink(missing_ok=True)
    return summary


@torch.no_grad()
def apply_translator(model: Translator, source_flux: np.ndarray, cond: np.ndarray | None = None,
                     batch: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
    """Translate source images (N, C, in, in) nanomaggies -> target flux (N, C, out, out)
    nanomaggies per target pixel, float32; ``cond`` (N,) or (N, cond_dim) for a conditioned
    model. No gradient, in batches; the model is moved to ``device`` and set to eval mode."""
    c = model.config
    shape = np.shape(source_flux)
    if len(shape) != 4 or shape[1:] != (c.bands, c.in_size, c.in_size):
        raise GalnetValueError(f"source images must be (N, {c.bands}, {c.in_size}, {c.in_size}) "
                               f"for this model, got {shape}")
    if c.cond_dim > 0:
        if cond is None:
            raise GalnetValueError(f"this translator is conditioned (cond_dim={c.cond_dim}): "
                                   "pass cond")
        cond = np.asarray(cond, dtype=np.float32).reshape(shape[0], -1)
    model = model.to(device).eval()
    out = np.empty((shape[0], c.bands, c.out_size, c.out_size), dtype=np.float32)
    for i in range(0, shape[0], batch):
        x = torch.as_tensor(np.asarray(source_flux[i:i + batch], dtype=np.float32),
                            device=device)
        cc = None if c.cond_dim == 0 else torch.as_tensor(cond[i:i + batch], device=device)
        out[i:i + batch] = model.to_flux(model(x, cc)).float().cpu().numpy()
    return out


# ---- photo-z probe -----------------------------------------------------------------------------
@dataclass
class PhotoZTrainConfig:
    """Everything a photo-z training run depends on; saved with the weights."""

    steps: int = 2000  # optimizer steps
    batch: int = 32
    lr: float = 1e-3  # Adam, cosine decay to 0.1 lr at the last step
    weight_decay: float = 0.0
    width: int = 32  # PhotoZNet width
    nbins: int = 50  # equal bins on [0, zmax]
    zmax: float = 0.5  # redshifts outside [0, zmax] count in the edge bins
    smooth: float = 1.0  # Gaussian label smoothing: std in bins (0: one-hot on the true bin)
    n_val: int = 256  # validation images, the last n_val
    val_every: int = 200  # steps between validations
    augment: bool = True  # random flips / 90-degree rotations
    seed: int = 0
    threads: int | None = None  # torch CPU threads [torch default]
    device: str = "cpu"


def _labels(z: torch.Tensor, centres: torch.Tensor, zmax: float, smooth: float) -> torch.Tensor:
    """Target distributions (B, nbins): a Gaussian of std ``smooth`` bins about the true z
    (normalised over the bins), or one-hot on the bin holding z when ``smooth == 0``."""
    nb = len(centres)
    dz = zmax / nb
    if smooth <= 0:
        k = torch.clamp((z / dz).floor().long(), 0, nb - 1)
        return nn.functional.one_hot(k, nb).float()
    zc = torch.clamp(z, 0.0, zmax)[:, None]
    w = torch.exp(-0.5 * ((centres[None] - zc) / (smooth * dz)) ** 2)
    return w / w.sum(dim=1, keepdim=True)


def _check_photoz(images: np.ndarray, z: np.ndarray, target_sky: Any, cfg: PhotoZTrainConfig
                  ) -> None:
    _check_steps(cfg)
    shape = np.shape(images)
    if len(shape) != 4 or shape[2] != shape[3]:
        raise GalnetValueError(f"photo-z images must be (N, C, S, S), got {shape}")
    if np.shape(target_sky) != (shape[1],):
        raise GalnetValueError(f"target_sky must have one value per band ({shape[1]}), "
                               f"got shape {np.shape(target_sky)}")
    if np.shape(z) != (shape[0],) or not np.all(np.isfinite(z)):
        raise GalnetValueError(f"z must hold {shape[0]} finite redshifts, got shape "
                               f"{np.shape(z)}")
    if cfg.n_val >= shape[0]:
        raise GalnetValueError(f"n_val = {cfg.n_val} leaves no training images out of "
                               f"{shape[0]}")


def _photoz_metrics(pdf: np.ndarray, z: np.ndarray, model: PhotoZNet) -> dict[str, float]:
    s = PhotoZNet.summarize(pdf, model.bin_centres)
    dz = (s["z_mean"] - z) / (1 + z)
    return {"bias": float(np.median(dz)),
            "sigma_nmad": float(1.4826 * np.median(np.abs(dz - np.median(dz)))),
            "outliers": float(np.mean(np.abs(dz) > 0.05))}


def train_photoz(images: np.ndarray, z: np.ndarray, target_sky: Any,
                 cfg: PhotoZTrainConfig | None, out: str | Path, progress: bool = True
                 ) -> dict[str, Any]:
    """Train a :class:`PhotoZNet` on ``images`` (N, C, S, S) flux (nanomaggies) with redshifts
    ``z`` (N,); the last ``n_val`` validate. Cross-entropy against the (smoothed) true bin, Adam;
    the best validation weights go to ``out`` (safetensors) and the history to its ``.json``.
    Returns a summary (validation loss, bias, sigma_NMAD, outlier fraction |dz|/(1+z) > 0.05)."""
    from tqdm.auto import tqdm

    from galnet.runner import progress_enabled

    cfg = cfg or PhotoZTrainConfig()
    _check_photoz(images, z, target_sky, cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = _setup(cfg.threads, cfg.device)
    N, C, S = np.shape(images)[:3]
    z = np.asarray(z, dtype=np.float32)
    n_train = N - cfg.n_val
    val = slice(n_train, N)

    torch.manual_seed(cfg.seed)
    model = PhotoZNet(PhotoZConfig(bands=int(C), size=int(S), width=cfg.width, nbins=cfg.nbins,
                                   zmax=cfg.zmax,
                                   target_sky=[float(s) for s in target_sky])).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    centres = model.bin_centres

    def loss_of(logits: torch.Tensor, zz: torch.Tensor) -> torch.Tensor:
        q = _labels(zz, centres, cfg.zmax, cfg.smooth)
        return -(q * torch.log_softmax(logits, dim=1)).sum(1).mean()

    t0 = time.time()
    best, best_step, best_state = math.inf, 0, None
    history: list[dict[str, float]] = []
    tot, n = 0.0, 0
    bar = tqdm(range(cfg.steps), desc="photo-z", disable=not progress_enabled(progress))
    for step in bar:
        for grp in opt.param_groups:
            grp["lr"] = _lr_at(step, cfg.steps, cfg.lr)
        idx, k = _draw(n_train, cfg.batch, cfg.augment, cfg.seed, step)
        x = _augment(torch.from_numpy(np.asarray(images[idx], dtype=np.float32)), k)
        model.train()
        loss = loss_of(model(x.to(device)), torch.from_numpy(z[idx]).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot, n = tot + float(loss.detach()), n + 1
        done = step + 1
        if done % cfg.val_every and done != cfg.steps:
            continue
        pdf = _pdf(model, images[val], 64, device)
        vz = torch.from_numpy(z[val])
        vloss = float(loss_of(torch.log(torch.from_numpy(pdf).clamp_min(1e-30)), vz))
        rec = {"step": done, "train_loss": tot / n, "val_loss": vloss,
               **_photoz_metrics(pdf, z[val], model), "time": time.time() - t0}
        history.append(rec)
        tot, n = 0.0, 0
        if math.isfinite(vloss) and vloss < best:
            best, best_step = vloss, done
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{rec['train_loss']:.4g}", val=f"{vloss:.4g}",
                        nmad=f"{rec['sigma_nmad']:.4f}")
    bar.close()

    if best_state is not None:
        model.load_state_dict(best_state)
    at_best = next((h for h in history if h["step"] == best_step), history[-1])
    summary = {"out": str(out), "steps": cfg.steps, "best_step": best_step,
               "best_val_loss": best, "bias": at_best["bias"],
               "sigma_nmad": at_best["sigma_nmad"], "outliers": at_best["outliers"],
               "wall_s": time.time() - t0, "n_train": int(n_train), "n_val": cfg.n_val}
    save_photoz(out, model.eval(), {"train_config": asdict(cfg), "summary": summary})
    _write_json(out.with_suffix(".json"), history)
    return summary


@torch.no_grad()
def _pdf(model: PhotoZNet, images: np.ndarray, batch: int, device: torch.device | str
         ) -> np.ndarray:
    model.eval()
    parts = []
    for i in range(0, len(images), batch):
        x = torch.as_tensor(np.asarray(images[i:i + batch], dtype=np.float32), device=device)
        parts.append(model.pdf(x).double().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, model.config.nbins))


def predict_photoz(model: PhotoZNet, images: np.ndarray, batch: int = 64
                   ) -> dict[str, np.ndarray]:
    """p(z) of images (N, C, S, S) flux (nanomaggies), on the model's device, no gradient.
    Returns ``z_mean``, ``z_mode``, ``width`` (N,) (:meth:`PhotoZNet.summarize`) and ``pdf``
    (N, nbins), float64."""
    c = model.config
    shape = np.shape(images)
    if len(shape) != 4 or shape[1:] != (c.bands, c.size, c.size):
        raise GalnetValueError(f"photo-z images must be (N, {c.bands}, {c.size}, {c.size}) for "
                               f"this model, got {shape}")
    device = next(model.parameters()).device
    pdf = _pdf(model, images, batch, device)
    return {**PhotoZNet.summarize(pdf, model.bin_centres), "pdf": pdf}
