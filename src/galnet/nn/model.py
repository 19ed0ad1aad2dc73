"""GaLNet: a PSF-aware convolutional network that reads a galaxy stamp and its PSF and returns the
seven Sérsic parameters with uncertainties.

Inputs (pixel units throughout, so one model can serve several surveys):

- ``images`` (B, 61, 61): the stamp in image units. It is divided by the stamp's sky rms
  (:func:`sky_rms`, a robust estimate from the stamp's outer ring, the same at training and
  prediction time), which makes the input independent of flux units, then compressed into two
  channels ``asinh(x / 3)`` and ``asinh(x / 100)`` (noise-level and bright-core detail).
- ``psfs`` (B, 25, 25): the effective PSF, unit sum; the network sees it divided by its peak.

Outputs (:class:`GaLNet` ``forward``): ``(B, 8)`` standardised targets and ``(B, 7)`` log
uncertainties. The targets (:data:`TARGETS`) are ``dx, dy`` (pixels from the stamp centre),
``log10(flux / sky_rms)``, ``log10 re_pix``, ``log10 n``, ``q`` and ``(cos 2 pa, sin 2 pa)``, so
that 0 and 180 degrees are the same angle. :func:`decode` turns them into catalogue parameters in
the conventions of :mod:`galnet.conventions`, with 1-sigma errors.

Architecture: a VGG-like stamp branch (a full-resolution stem, then three stride-2 stages
61 -> 31 -> 16 -> 8 keeping the spatial layout for the centre), a small PSF branch whose embedding
modulates the second stage (FiLM: per-channel scale and shift) and joins the head, and an MLP head.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from galnet.conventions import mag_to_flux
from galnet.errors import GalnetFileError
from galnet.io.files import atomic_write
from galnet.params import SERSIC

__all__ = [
    "ModelConfig",
    "GaLNet",
    "TARGETS",
    "SIGMA_NAMES",
    "sky_rms",
    "prepare_inputs",
    "encode_targets",
    "decode",
    "count_flops",
    "save_model",
    "load_model",
    "training_prior",
    "DEFAULT_WEIGHTS",
]

#: The network's regression targets, in order: the centre offsets, log10 of the flux over the sky
#: rms, then ``re_pix``, ``n`` and ``q`` (log10 where galnet.params.SERSIC marks them log) and the
#: angle as (cos, sin) of 2 pi pa / period (the period from the table: 180 degrees).
TARGETS: tuple[str, ...] = ("dx", "dy", "logflux", "logre", "logn", "q", "cos2pa", "sin2pa")
#: The parameter table entries behind targets 3, 4, 5 and the angle pair.
_RE, _N, _Q, _PA = SERSIC["re_pix"], SERSIC["n"], SERSIC["q"], SERSIC["pa_deg"]
#: The parameters that get an uncertainty, in order (pa in degrees).
SIGMA_NAMES: tuple[str, ...] = ("dx", "dy", "logflux", "logre", "logn", "q", "pa")

#: Shipped weights of the default (hsc-r) model.
DEFAULT_WEIGHTS = Path(__file__).parent.parent / "data" / "galnet-hsc-r.safetensors"

#: Scale (degrees) of the PA uncertainty output: sigma_pa = exp(log_sigma) * PA_SIGMA_UNIT.
PA_SIGMA_UNIT = 30.0
#: Width (pixels) of the outer ring of the stamp used to estimate the sky rms.
_RING = 6


@dataclass
class ModelConfig:
    """Architecture and target normalisation; saved with the weights (safetensors metadata)."""

    stamp: int = 61  # stamp side (pixels)
    psf_size: int = 25  # PSF image side (pixels)
    width: int = 16  # channels of the first stage (doubled at each later stage)
    psf_dim: int = 64  # PSF embedding size
    hidden: int = 256  # MLP head width
    # Standardisation of the targets: t_std = (t - loc) / scale, in the order of TARGETS.
    loc: list[float] = field(default_factory=lambda: [0.0, 0.0, 3.5, 0.5, 0.2, 0.55, 0.0, 0.0])
    scale: list[float] = field(default_factory=lambda: [2.0, 2.0, 0.8, 0.45, 0.4, 0.26, 0.7, 0.7])
    # Calibration of the predicted uncertainties (multiplies sigma), in the order of SIGMA_NAMES;
    # set after training on the validation set (galnet.nn.train.calibrate).
    sigma_scale: list[float] = field(default_factory=lambda: [1.0] * 7)
    # Free-form provenance (preset, training data, ...), saved with the weights.
    info: dict = field(default_factory=dict)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class GaLNet(nn.Module):
    """Stamp + PSF -> standardised Sérsic targets and log-uncertainties (see the module doc)."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = c = config or ModelConfig()
        w = c.width
        self.stem = _conv(2, w)  # 61
        self.stage1 = nn.Sequential(_conv(w, w, 2), _conv(w, w))  # 31
        self.stage2a = _conv(w, 2 * w, 2)  # 16
        self.stage2b = _conv(2 * w, 2 * w)
        self.stage3 = nn.Sequential(_conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w))  # 8
        side = c.stamp
        for _ in range(3):
            side = (side + 1) // 2
        self.psf_net = nn.Sequential(
            nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(inplace=True),  # 13
            nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(inplace=True),  # 7
            nn.Flatten(),
            nn.Linear(32 * ((c.psf_size + 3) // 4) ** 2, c.psf_dim), nn.ReLU(inplace=True),
        )
        self.film = nn.Linear(c.psf_dim, 4 * w)
        self.head = nn.Sequential(
            nn.Linear(4 * w * side * side + c.psf_dim, c.hidden), nn.ReLU(inplace=True),
            nn.Linear(c.hidden, c.hidden), nn.ReLU(inplace=True),
        )
        self.out = nn.Linear(c.hidden, len(TARGETS))
        self.out_sigma = nn.Linear(c.hidden, len(SIGMA_NAMES))
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def folded(self) -> GaLNet:
        """An inference copy (eval mode) with each BatchNorm folded into the preceding convolution:
        the same outputs to float rounding, ~1.5-2x faster on a CPU."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        m = copy.deepcopy(self).eval()
        for mod in m.modules():
            if (isinstance(mod, nn.Sequential) and len(mod) == 3
                    and isinstance(mod[0], nn.Conv2d) and isinstance(mod[1], nn.BatchNorm2d)):
                mod[0] = fuse_conv_bn_eval(mod[0], mod[1])
                mod[1] = nn.Identity()
        return m

    def forward(self, x: torch.Tensor, psf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: (B, 2, S, S) from :func:`prepare_inputs`; ``psf``: (B, 1, P, P) (peak 1).
        Returns (B, 8) standardised targets and (B, 7) log-sigmas (before calibration)."""
        B = x.shape[0]
        p = self.psf_net(psf)  # (B, psf_dim)
        h = self.stage1(self.stem(x))
        h = self.stage2a(h)
        gamma, beta = self.film(p).view(B, 2, -1, 1, 1).unbind(1)  # (B, 2w, 1, 1) each
        h = self.stage2b(h * (1 + gamma) + beta)
        h = self.stage3(h).flatten(1)  # (B, 4w * 8 * 8)
        h = self.head(torch.cat([h, p], dim=1))
        return self.out(h), self.out_sigma(h)


# ---- input and target transforms ---------------------------------------------------------------
def sky_rms(images: torch.Tensor, ring: int = _RING, nan: bool = False) -> torch.Tensor:
    """Robust sky rms of each stamp, (B,): 1.4826 x the median absolute deviation of the pixels in
    the outer ``ring`` pixels of the stamp (image units). With ``nan=True``, NaN pixels (masked)
    are ignored. Floored at 1e-6 of the stamp's brightest pixel (noiseless stamps)."""
    B, H, W = images.shape
    edge = torch.cat([images[:, :ring].reshape(B, -1), images[:, -ring:].reshape(B, -1),
                      images[:, ring:-ring, :ring].reshape(B, -1),
                      images[:, ring:-ring, -ring:].reshape(B, -1)], dim=1)
    if nan:
        med = edge.nanmedian(dim=1, keepdim=True).values
        mad = (edge - med).abs().nanmedian(dim=1).values
        mad = torch.nan_to_num(mad, nan=0.0)
        scale = torch.nan_to_num(images.abs(), nan=0.0).flatten(1).amax(dim=1)
    else:
        med = edge.median(dim=1, keepdim=True).values
        mad = (edge - med).abs().median(dim=1).values
        scale = images.abs().flatten(1).amax(dim=1)
    return torch.clamp(1.4826 * mad, min=1e-6 * scale + 1e-30)


def prepare_inputs(images: torch.Tensor, psfs: torch.Tensor, noise: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network inputs from stamps (B, S, S) in image units and PSFs (B, P, P).

    Returns ``(x, psf, noise)``: x (B, 2, S, S), psf (B, 1, P, P) divided by its peak, and the
    sky rms used (B,) (:func:`sky_rms` unless given)."""
    if noise is None:
        noise = sky_rms(images)
    z = images / noise[:, None, None]
    x = torch.stack([torch.asinh(z / 3.0), torch.asinh(z / 100.0)], dim=1)
    peak = psfs.flatten(1).amax(dim=1).clamp_min(1e-30)
    return x, (psfs / peak[:, None, None])[:, None], noise


def encode_targets(params: dict[str, torch.Tensor], noise: torch.Tensor, config: ModelConfig,
                   centre: float | None = None) -> torch.Tensor:
    """Standardised targets (B, 8) from catalogue parameters (x, y, flux, re_pix, n, q, pa_deg)."""
    c0 = (config.stamp - 1) / 2 if centre is None else centre
    th = torch.deg2rad(params["pa_deg"] * (360.0 / _PA.cyclic))
    t = torch.stack([params["x"] - c0, params["y"] - c0,
                     torch.log10(params["flux"] / noise), _to_target(_RE, params["re_pix"]),
                     _to_target(_N, params["n"]), _to_target(_Q, params["q"]),
                     torch.cos(th), torch.sin(th)], dim=1)
    loc = t.new_tensor(config.loc)
    scale = t.new_tensor(config.scale)
    return (t - loc) / scale


def decode(out: torch.Tensor, log_sigma: torch.Tensor, noise: torch.Tensor, config: ModelConfig
           ) -> dict[str, torch.Tensor]:
    """Catalogue parameters and 1-sigma errors from the network outputs.

    Returns tensors ``x, y, flux, re_pix, n, q, pa_deg`` (conventions of galnet.conventions) and
    ``*_err``. Errors of log quantities are propagated linearly (``flux_err = ln10 flux sigma``);
    ``q`` is clipped to its physical bounds in galnet.params.SERSIC ([0.02, 1]); ``pa_deg`` is
    wrapped into [0, 180) (its period in the table)."""
    loc = out.new_tensor(config.loc)
    scale = out.new_tensor(config.scale)
    t = out * scale + loc
    c0 = (config.stamp - 1) / 2
    s = torch.exp(log_sigma) * out.new_tensor(config.sigma_scale)
    s_t = s[:, :6] * scale[:6]  # sigmas of dx, dy, logflux, logre, logn, q in target units
    ln10 = math.log(10.0)
    flux = noise * 10 ** t[:, 2]
    re, n, q = (_from_target(p, t[:, j]) for p, j in ((_RE, 3), (_N, 4), (_Q, 5)))
    pa = torch.rad2deg(torch.atan2(t[:, 7], t[:, 6])) * (_PA.cyclic / 360.0) % _PA.cyclic
    return {
        "x": t[:, 0] + c0, "y": t[:, 1] + c0, "flux": flux, "re_pix": re, "n": n,
        "q": q.clamp(_Q.lower, _Q.upper), "pa_deg": pa,
        "x_err": s_t[:, 0], "y_err": s_t[:, 1], "flux_err": ln10 * flux * s_t[:, 2],
        "re_pix_err": _err(_RE, re, s_t[:, 3]), "n_err": _err(_N, n, s_t[:, 4]),
        "q_err": _err(_Q, q, s_t[:, 5]), "pa_deg_err": s[:, 6] * PA_SIGMA_UNIT,
    }


def _to_target(spec, v: torch.Tensor) -> torch.Tensor:
    return torch.log10(v) if spec.log else v


def _from_target(spec, t: torch.Tensor) -> torch.Tensor:
    return 10 ** t if spec.log else t


def _err(spec, value: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """1-sigma error of a parameter from the sigma of its target (linear propagation of log10)."""
    return math.log(10.0) * value * sigma_t if spec.log else sigma_t


# ---- bookkeeping -------------------------------------------------------------------------------
def count_flops(model: GaLNet) -> dict[str, int]:
    """Parameters and multiply-accumulate count (MACs) per stamp of one forward pass;
    FLOPs = 2 MACs. Counted with forward hooks on Conv2d and Linear layers."""
    c = model.config
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            macs += out[0].numel() * k
        elif isinstance(mod, nn.Linear):
            macs += mod.in_features * mod.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, nn.Conv2d | nn.Linear)]
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 2, c.stamp, c.stamp), torch.zeros(1, 1, c.psf_size, c.psf_size))
    model.train(was)
    for h in hs:
        h.remove()
    params = sum(p.numel() for p in model.parameters())
    return {"params": int(params), "macs": int(macs), "flops": int(2 * macs)}


def save_model(model: GaLNet, path: str | Path, extra: dict | None = None) -> Path:
    """Write the weights (safetensors, no pickle) with the config as JSON metadata; atomic."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(asdict(model.config)), "format": "galnet-1"}
    if extra:
        meta.update({k: json.dumps(v) for k, v in extra.items()})
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> GaLNet:
    """Load a GaLNet from safetensors (default: the shipped hsc-r weights), in eval mode.

    Raises a one-line :class:`GalnetFileError` naming the file when it is missing, is not galnet
    weights (corrupt header, truncated, other tensors) or holds non-finite values."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise GalnetFileError(f"{path}: model weights not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise ValueError("no galnet config in the metadata")
        config = ModelConfig(**json.loads(meta["config"]))
        state = load_file(str(path))
        model = GaLNet(config)
        model.load_state_dict(state)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, SafetensorError) as err:
        msg = " ".join(str(err).split())
        msg = msg if len(msg) <= 200 else msg[:197] + "..."
        raise GalnetFileError(f"{path}: not galnet weights ({msg})") from err
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise GalnetFileError(f"{path}: weights contain non-finite values ({len(bad)} tensor(s), "
                              f"e.g. {bad[0]}): the file is corrupt")
    return model.to(device).eval()


def training_prior(preset) -> dict[str, list[float]]:
    """The training prior recorded in the weights (``config.info['prior']``) for a network
    trained on simulations of ``preset`` (a :class:`galnet.presets.Preset`), in pixel units:
    ``re_pix`` and ``n`` ranges, ``q`` range, and ``logflux_noise`` = log10(flux / sky rms)."""
    pr = preset.priors
    s = preset.pixel_scale
    flux = [float(mag_to_flux(m, preset.zeropoint)) for m in (pr["mag"].high, pr["mag"].low)]
    return {
        "re_pix": [pr["re_arcsec"].low / s, pr["re_arcsec"].high / s],
        "n": [pr["n"].low, pr["n"].high],
        "q": [pr["q"].low, pr["q"].high],
        "logflux_noise": [math.log10(f / preset.sky_rms) for f in flux],
    }
