"""Training GaLNet on stamps from :func:`galnet.sim.simulate.simulate` (Adam + Huber loss).

One file, read top to bottom: :class:`TrainConfig` -> :func:`load_training_data` (an HDF5 file
from ``galnet simulate``; the first ``n_train`` stamps train, the next ``n_val`` validate) ->
:func:`train` (epochs of shuffled mini-batches with random flips/transposes of stamp and PSF,
the targets transformed to match; a per-epoch validation; resumable checkpoints) ->
:func:`calibrate` (per-parameter scale of the predicted uncertainties on the validation set).

Loss: Huber (``huber_delta``, in standardised target units) on the 8 targets, the PA pair weighted
by ``min(1, (1 - q) / 0.3)`` (the PA of a round galaxy is undefined), plus ``nll_weight`` x the
Laplace negative log-likelihood ``|r| / b + log b`` of the *detached* residuals, which trains the
uncertainty outputs without pulling the point estimates.

Files in ``out_dir``: ``checkpoint.safetensors`` (model, Adam state, epoch; safetensors, no
pickle; written atomically each epoch), ``log.jsonl`` (one JSON line per epoch: losses, validation
metrics, time), ``model.safetensors`` (best validation loss, calibrated), ``config.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from galnet.conventions import flux_to_mag
from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.files import atomic_write
from galnet.nn.checkpoint import adam_state, load_adam, read_checkpoint, save_checkpoint
from galnet.nn.model import (
    PA_SIGMA_UNIT,
    GaLNet,
    ModelConfig,
    decode,
    encode_targets,
    load_model,
    prepare_inputs,
    save_model,
    sky_rms,
    training_prior,
)
from galnet.params import SERSIC
from galnet.runner import progress as progress_bar
from galnet.runner import resolve_device
from galnet.stats import outlier_fraction, r2_score

__all__ = ["TrainConfig", "load_config", "check_config", "load_training_data", "train",
           "calibrate", "augment", "RESUME_FREE"]

log = logging.getLogger(__name__)

#: Options a resumed run may change; any other option must equal the checkpoint's.
RESUME_FREE = ("epochs", "data", "out_dir", "device", "threads")


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved with the weights."""

    data: str = ""  # HDF5 file from `galnet simulate`
    out_dir: str = "runs/hsc-r"  # checkpoints, log and weights
    n_train: int = 160_000  # first n_train stamps train ...
    n_val: int = 20_000  # ... the next n_val validate
    epochs: int = 20
    batch: int = 256
    lr: float = 2e-3  # Adam learning rate (peak), cosine decay to lr * 0.02 with 1 warm-up epoch
    weight_decay: float = 0.0
    huber_delta: float = 0.2  # standardised target units
    nll_weight: float = 0.05
    augment: bool = True  # random flips / transposes (the 8 symmetries of the square)
    seed: int = 0
    device: str = "auto"  # "auto": cuda if available, else cpu
    threads: int | None = None  # torch CPU threads [torch default]
    model: ModelConfig = field(default_factory=ModelConfig)


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a TOML file (top-level keys and a ``[model]`` table), then
    ``overrides`` (None values ignored). Every value is checked (:func:`check_config`): a wrong
    type, a value out of range or an unknown key is a one-line :class:`GalnetValueError` naming
    the key."""
    d: dict[str, Any] = {}
    where = str(path) if path is not None else "training config"
    if path is not None:
        try:
            d = tomllib.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise GalnetFileError(f"{path}: cannot read training config ({err})") from err
    d.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise GalnetValueError(f"{where}: unknown training option(s) {unknown}", unknown[0])
    m = d.pop("model", {})
    if isinstance(m, ModelConfig):
        m = asdict(m)
    if not isinstance(m, dict):
        raise GalnetValueError(f"{where}: model must be a table of model options, got {m!r}",
                               "model", m)
    mnames = {f.name for f in fields(ModelConfig)}
    if set(m) - mnames:
        bad = sorted(set(m) - mnames)
        raise GalnetValueError(f"{where}: unknown model option(s) {bad}", f"model.{bad[0]}")
    cfg = TrainConfig(**d, model=ModelConfig(**m))
    check_config(cfg, where)
    return cfg


#: Integer options and their minimum.
_INTS = {"n_train": 1, "n_val": 1, "epochs": 1, "batch": 1, "seed": 0, "threads": 1,
         "model.stamp": 1, "model.psf_size": 1, "model.width": 1, "model.psf_dim": 1,
         "model.hidden": 1}
#: Real options: True if they must be > 0, False if >= 0.
_FLOATS = {"lr": True, "weight_decay": False, "huber_delta": True, "nll_weight": False}
#: List options of the model and their length.
_LISTS = {"model.loc": 8, "model.scale": 8, "model.sigma_scale": 7}


def check_config(cfg: TrainConfig, where: str = "training config") -> TrainConfig:
    """Check the type and range of every option of ``cfg``; return it. Raises a one-line
    :class:`GalnetValueError` naming the key (``epochs must be an integer >= 1, got 'ten'``)."""
    def get(key):
        obj, _, name = key.rpartition(".")
        return getattr(cfg.model if obj else cfg, name)

    def bad(key, what, v):
        return GalnetValueError(f"{where}: {key} must be {what}, got {v!r}", key, v)

    for key, lo in _INTS.items():
        v = get(key)
        if key == "threads" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise bad(key, f"an integer >= {lo}", v)
    for key, positive in _FLOATS.items():
        v = get(key)
        ok = (isinstance(v, int | float | np.number) and not isinstance(v, bool)
              and math.isfinite(v) and (v > 0 if positive else v >= 0))
        if not ok:
            raise bad(key, "a finite number " + ("> 0" if positive else ">= 0"), v)
    for key in ("data", "out_dir", "device"):
        if not isinstance(get(key), str):
            raise bad(key, "a string", get(key))
    if not isinstance(cfg.augment, bool):
        raise bad("augment", "true or false", cfg.augment)
    for key, length in _LISTS.items():
        v = get(key)
        if (not isinstance(v, list | tuple) or len(v) != length
                or not all(isinstance(x, int | float) and not isinstance(x, bool)
                           and math.isfinite(x) for x in v)):
            raise bad(key, f"a list of {length} finite numbers", v)
    if any(x <= 0 for x in cfg.model.scale) or any(x <= 0 for x in cfg.model.sigma_scale):
        raise GalnetValueError(f"{where}: model.scale and model.sigma_scale must be > 0",
                               "model.scale")
    if not isinstance(cfg.model.info, dict):
        raise bad("model.info", "a table", cfg.model.info)
    if cfg.batch > cfg.n_train:
        raise GalnetValueError(f"{where}: batch ({cfg.batch}) must not exceed n_train "
                               f"({cfg.n_train})", "batch", cfg.batch)
    return cfg


# ---- data --------------------------------------------------------------------------------------
@dataclass
class Split:
    """Stamps (float32 tensors), their sky rms and standardised targets; the truth table."""

    images: torch.Tensor  # (N, S, S) image units
    psfs: torch.Tensor  # (N, P, P) unit sum
    noise: torch.Tensor  # (N,) sky rms (galnet.nn.model.sky_rms)
    targets: torch.Tensor  # (N, 8) standardised (galnet.nn.model.encode_targets)
    truth: dict[str, np.ndarray]


def _load_split(f: h5py.File, lo: int, hi: int, config: ModelConfig) -> Split:
    images = torch.from_numpy(f["images"][lo:hi].astype(np.float32, copy=False))
    psfs = torch.from_numpy(f["psfs"][lo:hi].astype(np.float32, copy=False))
    rows = f["params"][lo:hi]
    truth = {k: np.ascontiguousarray(rows[k], dtype=float) for k in rows.dtype.names
             if np.issubdtype(rows[k].dtype, np.number)}
    noise = torch.cat([sky_rms(images[i:i + 8192]) for i in range(0, len(images), 8192)])
    p = {k: torch.as_tensor(truth[k], dtype=torch.float32)
         for k in ("flux" if q.role == "mag" else q.name for q in SERSIC)}
    return Split(images, psfs, noise, encode_targets(p, noise, config), truth)


def load_training_data(cfg: TrainConfig) -> tuple[Split, Split, dict[str, Any]]:
    """Train and validation splits from ``cfg.data`` and the file's metadata."""
    try:
        with h5py.File(cfg.data, "r") as f:
            N = f["images"].shape[0]
            if cfg.n_train + cfg.n_val > N:
                raise GalnetValueError(
                    f"{cfg.data}: has {N} stamps, n_train + n_val = {cfg.n_train + cfg.n_val}")
            meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            tr = _load_split(f, 0, cfg.n_train, cfg.model)
            va = _load_split(f, cfg.n_train, cfg.n_train + cfg.n_val, cfg.model)
    except (OSError, KeyError) as err:
        raise GalnetFileError(f"{cfg.data}: cannot read training data ({err})") from err
    return tr, va, meta


def augment(images: torch.Tensor, psfs: torch.Tensor, targets: torch.Tensor, k: int,
            config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply symmetry ``k`` in 0..7 of the square (bit 0: transpose, bit 1: flip x, bit 2: flip y)
    to stamps (B, S, S), PSFs (B, P, P) and standardised targets, about the stamp centre.

    On the parameters: transpose swaps dx, dy and maps pa -> 90 - pa; a flip negates its offset
    and maps pa -> -pa. In (cos 2pa, sin 2pa): transpose -> (-c, s); a flip -> (c, -s)."""
    loc = targets.new_tensor(config.loc)
    scale = targets.new_tensor(config.scale)
    t = targets * scale + loc
    dx, dy, c, s = t[:, 0], t[:, 1], t[:, 6], t[:, 7]
    if k & 1:
        images, psfs = images.transpose(1, 2), psfs.transpose(1, 2)
        dx, dy, c = dy, dx, -c
    if k & 2:
        images, psfs = images.flip(2), psfs.flip(2)
        dx, s = -dx, -s
    if k & 4:
        images, psfs = images.flip(1), psfs.flip(1)
        dy, s = -dy, -s
    t = torch.cat([dx[:, None], dy[:, None], t[:, 2:6], c[:, None], s[:, None]], dim=1)
    return images, psfs, (t - loc) / scale


# ---- loss --------------------------------------------------------------------------------------
def _pa_weight(targets: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    q = targets[:, 5] * config.scale[5] + config.loc[5]
    return torch.clamp((1 - q) / 0.3, 0.0, 1.0)


def _pa_residual_deg(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """|PA error| in degrees (wrapped to [0, period / 2] = [0, 90]) from standardised outputs and
    targets (the (cos, sin) pair covers one period of galnet.params.SERSIC's pa_deg)."""
    a = torch.atan2(out[:, 7], out[:, 6])
    b = torch.atan2(targets[:, 7], targets[:, 6])
    d = torch.remainder(a - b + math.pi, 2 * math.pi) - math.pi
    return torch.rad2deg(d.abs()) * (SERSIC["pa_deg"].cyclic / 360.0)


def loss_terms(out: torch.Tensor, log_b: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Huber loss, Laplace NLL), each a mean over the batch."""
    w = torch.ones_like(targets)
    w[:, 6:] = _pa_weight(targets, cfg.model)[:, None]
    huber = nn.functional.huber_loss(out, targets, delta=cfg.huber_delta, reduction="none")
    huber = (huber * w).sum(1).mean() / cfg.huber_delta
    r = (out[:, :6].detach() - targets[:, :6]).abs()
    r = torch.cat([r, _pa_residual_deg(out.detach(), targets)[:, None] / PA_SIGMA_UNIT], dim=1)
    wn = torch.ones_like(r)
    wn[:, 6] = w[:, 6]
    nll = ((r * torch.exp(-log_b) + log_b) * wn).sum(1).mean()
    return huber, nll


# ---- evaluation on a split -------------------------------------------------------------------
@torch.no_grad()
def predict_split(model: GaLNet, split: Split, device: torch.device, batch: int = 1024
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw outputs (N, 8) and log-sigmas (N, 7) on a split, in eval mode (CPU tensors)."""
    model.eval()
    outs, sigs = [], []
    for i in range(0, len(split.images), batch):
        x, p, _ = prepare_inputs(split.images[i:i + batch].to(device),
                                 split.psfs[i:i + batch].to(device),
                                 split.noise[i:i + batch].to(device))
        o, s = model(x.contiguous(memory_format=torch.channels_last), p)
        outs.append(o.float().cpu())
        sigs.append(s.float().cpu())
    return torch.cat(outs), torch.cat(sigs)


def quick_metrics(pred: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict[str, float]:
    """R^2 (mag, log re, log n, q) and outlier fractions (relative error > 15%: re, n, flux)."""
    m = {"r2_mag": r2_score(flux_to_mag(truth["flux"], 0.0), flux_to_mag(pred["flux"], 0.0))}
    for k in SERSIC.log_names:
        m[f"r2_log_{k}"] = r2_score(np.log10(truth[k]), np.log10(pred[k]))
        m[f"outlier_{k}"] = outlier_fraction(truth[k], pred[k])
    m["r2_q"] = r2_score(truth["q"], pred["q"])
    m["outlier_flux"] = outlier_fraction(truth["flux"], pred["flux"])
    return m


def calibrate(model: GaLNet, split: Split, device: torch.device) -> list[float]:
    """Set ``model.config.sigma_scale`` so that 68.27% of |error| / sigma are below 1 on ``split``
    for each parameter (PA: only galaxies with q < 0.8). Returns the scales."""
    out, log_b = predict_split(model, split, device)
    r = (out[:, :6] - split.targets[:, :6]).abs()
    r = torch.cat([r, _pa_residual_deg(out, split.targets)[:, None] / PA_SIGMA_UNIT], dim=1)
    ratio = r / torch.exp(log_b)
    q = split.truth["q"]
    scales = []
    for j in range(ratio.shape[1]):
        v = ratio[:, j] if j < 6 else ratio[torch.as_tensor(q < 0.8), j]
        scales.append(float(torch.quantile(v, 0.6827)))
    model.config.sigma_scale = scales
    return scales


# ---- checkpoints (galnet.nn.checkpoint: safetensors, no pickle) --------------------------------
def _save_checkpoint(path: Path, model: GaLNet, opt: torch.optim.Optimizer, epoch: int,
                     best: float, cfg: TrainConfig) -> None:
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update(adam_state(opt, "adam."))
    meta = {"epoch": str(epoch), "best": repr(best), "config": json.dumps(asdict(cfg))}
    save_checkpoint(path, state, meta)


def _checkpoint_config(path: Path) -> dict[str, Any]:
    """The training options saved in checkpoint ``path`` (one-line error if it is corrupt)."""
    meta, _ = _read(path)
    try:
        saved = json.loads(meta["config"])
        int(meta["epoch"]), float(meta["best"])
    except (KeyError, ValueError, TypeError) as err:
        raise GalnetFileError(f"{path}: not a galnet training checkpoint (metadata {err}); "
                              "start afresh with --restart") from err
    if not isinstance(saved, dict):
        raise GalnetFileError(f"{path}: not a galnet training checkpoint; start afresh with "
                              "--restart")
    return saved


def _read(path: Path):
    try:
        return read_checkpoint(path)
    except GalnetFileError as err:
        raise GalnetFileError(f"{err}; start afresh with --restart") from err


def _load_checkpoint(path: Path, model: GaLNet, opt: torch.optim.Optimizer) -> tuple[int, float]:
    meta, state = _read(path)
    try:
        model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        load_adam(opt, state, "adam.")
    except (RuntimeError, ValueError, IndexError, KeyError) as err:
        msg = " ".join(str(err).split())[:200]
        raise GalnetFileError(f"{path}: checkpoint does not match the model ({msg}); start "
                              "afresh with --restart") from err
    return int(meta["epoch"]), float(meta["best"])


def _resumed_config(cfg: TrainConfig, ckpt: Path) -> TrainConfig:
    """The configuration of a resumed run: ``cfg``, which must agree with the checkpoint's on
    every option but :data:`RESUME_FREE` (one-line error naming the keys that differ)."""
    saved = _checkpoint_config(ckpt)
    given = asdict(cfg)
    saved_model = dict(saved.get("model") or {})
    diff = [k for k in given if k not in RESUME_FREE and k != "model"
            and k in saved and saved[k] != given[k]]
    diff += [f"model.{k}" for k, v in given["model"].items()
             if k != "info" and k in saved_model and _norm(saved_model[k]) != _norm(v)]
    if diff:
        def show(k):
            obj, _, name = k.rpartition(".")
            a, b = (saved_model, given["model"]) if obj else (saved, given)
            return f"{k} (checkpoint {a[name]!r}, given {b[name]!r})"
        raise GalnetValueError(f"{ckpt}: options differ from the checkpoint's: "
                               f"{', '.join(show(k) for k in diff)}; give the same options, or "
                               "start afresh with --restart", diff[0])
    return cfg


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


# ---- the loop ----------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: bool = True, progress: bool = True,
          data: tuple[Split, Split, dict] | None = None) -> Path:
    """Train, validate each epoch, checkpoint; return the path of the best, calibrated weights.

    With ``resume`` and a checkpoint in ``cfg.out_dir``, training continues after its last epoch;
    every option but :data:`RESUME_FREE` must then equal the checkpoint's (one-line error naming
    those that differ). Without ``resume`` (``galnet train --restart``) the checkpoint is ignored
    and ``log.jsonl`` starts afresh. The weights record the training prior
    (``config.info['prior']``: what :func:`galnet.nn.predict.out_of_prior` flags against)."""
    check_config(cfg)
    out = Path(cfg.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GalnetFileError(f"{out}: cannot create the output directory ({err.strerror})"
                              ) from err
    ckpt = out / "checkpoint.safetensors"
    resuming = resume and ckpt.is_file()
    if resuming:
        cfg = _resumed_config(cfg, ckpt)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tr, va, meta = data if data is not None else load_training_data(cfg)
    if len(tr.images) < cfg.batch:
        raise GalnetValueError(f"batch ({cfg.batch}) must not exceed the {len(tr.images)} "
                               "training stamps", "batch", cfg.batch)
    cfg.model.info = {"data": str(cfg.data), "preset": str(meta.get("preset", "")),
                      "n_train": cfg.n_train, "n_val": cfg.n_val,
                      "bank": str(meta.get("bank", meta.get("bank_path", ""))),
                      **_prior_info(meta, tr)}
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))

    model = GaLNet(cfg.model).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, best = 0, math.inf
    if resuming:
        start, best = _load_checkpoint(ckpt, model, opt)
        log.info("resuming %s at epoch %d", ckpt, start + 1)
    _trim_log(out / "log.jsonl", start)
    steps_per_epoch = len(tr.images) // cfg.batch

    def lr_at(step: int) -> float:
        warm = steps_per_epoch
        if step < warm:
            return cfg.lr * (step + 1) / warm
        f = (step - warm) / max(1, cfg.epochs * steps_per_epoch - warm)
        return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(f, 1.0))))

    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        perm = torch.randperm(len(tr.images), generator=g)
        syms = torch.randint(0, 8 if cfg.augment else 1, (steps_per_epoch,), generator=g)
        model.train()
        sums = np.zeros(2)
        bar = progress_bar(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           enable=progress, leave=False)
        for it in bar:
            for grp in opt.param_groups:
                grp["lr"] = lr_at(epoch * steps_per_epoch + it)
            idx = perm[it * cfg.batch:(it + 1) * cfg.batch]
            im, ps, tg = augment(tr.images[idx], tr.psfs[idx], tr.targets[idx], int(syms[it]),
                                 cfg.model)
            x, p, _ = prepare_inputs(im.to(device), ps.to(device), tr.noise[idx].to(device))
            o, lb = model(x.contiguous(memory_format=torch.channels_last), p.contiguous())
            huber, nll = loss_terms(o, lb, tg.to(device), cfg)
            loss = huber + cfg.nll_weight * nll
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += (huber.item(), nll.item())
            if it % 20 == 0:
                bar.set_postfix(huber=f"{sums[0] / (it + 1):.4f}", nll=f"{sums[1] / (it + 1):.3f}")
        # validation
        o, lb = predict_split(model, va, device)
        vh, vn = loss_terms(o, lb, va.targets, cfg)
        pred = {k: v.numpy() for k, v in decode(o, lb, va.noise, cfg.model).items()}
        rec = {"epoch": epoch + 1, "train_huber": sums[0] / steps_per_epoch,
               "train_nll": sums[1] / steps_per_epoch, "val_huber": float(vh),
               "val_nll": float(vn), **quick_metrics(pred, va.truth),
               "lr": lr_at((epoch + 1) * steps_per_epoch - 1), "seconds": time.time() - t0}
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if progress:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in rec.items()), flush=True)
        if rec["val_huber"] < best:
            best = rec["val_huber"]
            save_model(model, out / "best.safetensors")
        _save_checkpoint(ckpt, model, opt, epoch + 1, best, cfg)

    # the best epoch, calibrated on the validation set
    best_model = load_model(out / "best.safetensors", device=device)
    best_model.config.info = cfg.model.info | {"train_config": asdict(cfg) | {"model": None}}
    calibrate(best_model, va, device)
    return save_model(best_model, out / "model.safetensors")


def _trim_log(path: Path, start: int) -> None:
    """Keep the records of epochs <= ``start`` in the training log (none for a fresh run)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", math.inf) <= start:
                keep.append(line)
        except (ValueError, AttributeError):
            continue
    atomic_write(path, lambda tmp: tmp.write_text("".join(k + "\n" for k in keep)))


def _prior_info(meta: dict[str, Any], tr: Split) -> dict[str, Any]:
    """The training prior for the weights: from the simulation's preset when it is a known one
    (as scripts/package_model.py does), else the ranges of the training stamps (logged)."""
    from galnet.errors import GalnetPresetError
    from galnet.presets import get_preset

    name = str(meta.get("preset", ""))
    try:
        preset = get_preset(name) if name else None
    except GalnetPresetError:
        preset = None
    same = preset is not None and (
        "preset_config" not in meta
        or json.loads(preset.to_json()) == json.loads(str(meta["preset_config"])))
    if same:
        return {"pixel_scale": preset.pixel_scale, "zeropoint": preset.zeropoint,
                "prior": training_prior(preset)}
    log.warning("training data preset %r is not a known preset: the training prior recorded "
                "in the weights is the range of the training stamps", name)
    t = tr.truth
    lf = np.log10(np.maximum(t["flux"], 1e-30) / tr.noise.double().numpy())
    rng = lambda a: [float(np.min(a)), float(np.max(a))]  # noqa: E731
    return {"prior": {"re_pix": rng(t["re_pix"]), "n": rng(t["n"]), "q": rng(t["q"]),
                      "logflux_noise": rng(lf)}}
