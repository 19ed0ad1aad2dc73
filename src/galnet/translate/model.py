"""Networks of the image translation: a U-Net translator (source survey -> target survey) and a
binned photo-z CNN used as a physics probe of translated images.

Both work on fluxes in nanomaggies per pixel and carry their normalisation (per-band sky rms)
in their config, saved with the weights, so a loaded model needs nothing else.

:class:`Translator` (SDSS-like 5 x 64 x 64 at 0.396"/px -> CFHTLS-like 5 x 136 x 136 at
0.187"/px, the same field of view):

- input ``x = asinh(f / (soft sky_src))`` per band, resampled bilinearly onto a working grid of
  ``out_size // 2`` pixels (68: twice the target pixel);
- a U-Net at the working resolution (``depth`` stride-2 stages, 68 -> 34 -> 17; 3x3 convolutions
  with GroupNorm + SiLU; decoder: learned x2 transposed convolutions, skip connections added
  (not concatenated: half the cost at the same depth)), FiLM conditioning (per-channel scale and
  shift from an MLP of ``cond``, e.g. the spectroscopic redshift) at every resolution level of
  encoder and decoder;
- a learned x2 upsampling to the target grid (3x3 convolution + PixelShuffle) and a 3x3
  convolutional head that also sees the base image below (as ``asinh(b / soft)``);
- output in target sky-rms units ``y = flux / sky_tgt``, as a residual on a physical base
  ``b = bicubic(f) * scale_ratio / sky_tgt`` (the source image resampled onto the target pixels,
  surface brightness conserved, times the pixel-area ratio: flux is conserved). The residual
  ``r`` acts in asinh space, ``y = soft sinh(asinh(b / soft) + r)``: linear in faint pixels and
  relative (``dy / y = dr``) in bright ones, so one output scale covers the ~10^4 dynamic range
  of a galaxy. The last layer starts at zero: an untrained network returns the base.

Resampling geometry: the stamps share their centre pixel ``(side - 1) / 2`` (the same sky point
in both domains); a target pixel ``j`` samples source coordinate
``(64 - 1) / 2 + (j - (136 - 1) / 2) sqrt(scale_ratio)``, exact even though 136 x 0.187" is not
exactly 64 x 0.396".

:class:`PhotoZNet`: a CNN on target-domain images -> logits over ``nbins`` equal redshift bins on
``[0, zmax]`` (a binned softmax p(z), as in Pasquet et al. 2019, A&A 621, A26).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.files import atomic_write

__all__ = [
    "TranslatorConfig",
    "Translator",
    "PhotoZConfig",
    "PhotoZNet",
    "save_translator",
    "load_translator",
    "save_photoz",
    "load_photoz",
    "read_metadata",
]

_FORMAT_TRANSLATOR = "galnet-translator-1"
_FORMAT_PHOTOZ = "galnet-photoz-1"


def _fill_sky(sky: list[float] | None, bands: int, name: str) -> list[float]:
    if sky is None:
        return [1.0] * bands
    sky = [float(s) for s in np.ravel(np.asarray(sky, dtype=float))]
    if len(sky) != bands:
        raise GalnetValueError(f"{name} has {len(sky)} values, expected one per band ({bands})",
                               name, sky)
    if not all(math.isfinite(s) and s > 0 for s in sky):
        raise GalnetValueError(f"{name} must be finite and > 0 (got {sky})", name, sky)
    return sky


@dataclass
class TranslatorConfig:
    """Architecture and normalisation of a :class:`Translator`; saved with the weights."""

    bands: int = 5  # channels C of source and target images (same band order)
    in_size: int = 64  # source stamp side (pixels)
    out_size: int = 136  # target stamp side (pixels, even); the U-Net works at out_size // 2
    width: int = 24  # channels of the first U-Net level (doubled at each downsampling)
    depth: int = 2  # number of stride-2 downsamplings; (out_size // 2) / 2**depth must be whole
    cond_dim: int = 0  # conditioning inputs: 0 = none, 1 = z_spec (FiLM at every level)
    scale_ratio: float = (0.187 / 0.396) ** 2  # (target_scale / source_scale)**2: flux per pixel
    source_sky: list[float] | None = None  # per-band sky rms of the source (nanomaggies / px)
    target_sky: list[float] | None = None  # per-band sky rms of the target (nanomaggies / px)
    soft: float = 2.0  # asinh softening (sky rms) of the inputs and of the output residual

    def __post_init__(self) -> None:
        self.source_sky = _fill_sky(self.source_sky, self.bands, "source_sky")
        self.target_sky = _fill_sky(self.target_sky, self.bands, "target_sky")


def _groups(c: int) -> int:
    return math.gcd(8, c)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution -> GroupNorm -> SiLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                         nn.GroupNorm(_groups(cout), cout), nn.SiLU(inplace=True))


def _grid(in_size: int, out_size: int, step: float) -> torch.Tensor:
    """Sampling grid (1, out, out, 2) for F.grid_sample (align_corners=False): output pixel ``j``
    reads input coordinate ``(in - 1) / 2 + (j - (out - 1) / 2) * step`` (``step``: output pixel
    size in input pixels), in x and y."""
    j = torch.arange(out_size, dtype=torch.float64)
    src = (in_size - 1) / 2 + (j - (out_size - 1) / 2) * step
    g = ((2 * src + 1) / in_size - 1).float()
    gy, gx = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([gx, gy], dim=-1)[None]


class Translator(nn.Module):
    """Source flux (B, C, in, in) nanomaggies -> target image (B, C, out, out) in target sky-rms
    units (see the module doc)."""

    def __init__(self, config: TranslatorConfig | None = None):
        super().__init__()
        self.config = c = config or TranslatorConfig()
        if c.out_size % 2 or c.out_size < 4:
            raise GalnetValueError(f"out_size must be even and >= 4 (got {c.out_size})")
        work = c.out_size // 2
        if c.depth < 0 or work % (2 ** c.depth):
            raise GalnetValueError(
                f"depth {c.depth} does not divide the working grid: out_size // 2 = {work} must "
                f"be a multiple of 2**depth = {2 ** max(c.depth, 0)}", "depth", c.depth)
        if c.width < 2 or c.bands < 1 or c.in_size < 4 or c.cond_dim < 0:
            raise GalnetValueError(f"invalid translator config {asdict(c)}")
        if not (c.scale_ratio > 0 and math.isfinite(c.scale_ratio)):
            raise GalnetValueError(f"scale_ratio must be > 0 (got {c.scale_ratio})")
        C, w = c.bands, c.width
        ch = [w * 2 ** i for i in range(c.depth + 1)]  # channels per level
        step = math.sqrt(c.scale_ratio)  # target pixel size in source pixels
        self.register_buffer("grid_out", _grid(c.in_size, c.out_size, step), persistent=False)
        self.register_buffer("grid_work", _grid(c.in_size, work, 2 * step), persistent=False)
        self.register_buffer("src_sky", torch.tensor(c.source_sky).view(1, C, 1, 1),
                             persistent=False)
        self.register_buffer("tgt_sky", torch.tensor(c.target_sky).view(1, C, 1, 1),
                             persistent=False)

        self.stem = _block(C, w)
        self.enc = nn.ModuleList([_block(w, w)])
        for i in range(1, c.depth + 1):
            self.enc.append(nn.Sequential(_block(ch[i - 1], ch[i], 2), _block(ch[i], ch[i])))
        self.up = nn.ModuleList()  # decoder, deepest first: learned x2 (transposed conv) ...
        self.dec = nn.ModuleList()  # ... then a block on (upsampled + skip)
        for i in reversed(range(c.depth)):
            self.up.append(nn.ConvTranspose2d(ch[i + 1], ch[i], 2, 2))
            self.dec.append(_block(ch[i], ch[i]))
        hi = max(4, w // 3)  # channels at the target resolution
        self.to_out = nn.Sequential(nn.Conv2d(w, 4 * hi, 3, 1, 1), nn.PixelShuffle(2),
                                    nn.SiLU())  # learned x2: (B, hi, out, out)
        self.out = nn.Conv2d(hi + C, C, 3, 1, 1)  # head, also sees the base (asinh)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

        # FiLM sites: encoder levels 0..depth, decoder levels depth-1..0
        self.film_channels = ch + ch[-2::-1]
        self.film = None
        if c.cond_dim > 0:
            self.film = nn.Sequential(nn.Linear(c.cond_dim, 64), nn.SiLU(),
                                      nn.Linear(64, 2 * sum(self.film_channels)))
            nn.init.zeros_(self.film[-1].weight)
            nn.init.zeros_(self.film[-1].bias)

    # ---- pieces ------------------------------------------------------------------------------
    def base(self, source_flux: torch.Tensor) -> torch.Tensor:
        """The physical base (B, C, out, out) in target sky-rms units: bicubic resampling of the
        source flux onto the target pixels, times ``scale_ratio``, over the target sky rms."""
        B = source_flux.shape[0]
        f = F.grid_sample(source_flux, self.grid_out.expand(B, -1, -1, -1), mode="bicubic",
                          padding_mode="border", align_corners=False)
        return f * self.config.scale_ratio / self.tgt_sky

    def to_flux(self, y: torch.Tensor) -> torch.Tensor:
        """Target-units image (B, C, H, W) -> flux in nanomaggies per target pixel."""
        return y * self.tgt_sky

    def _check(self, source_flux: torch.Tensor, cond: torch.Tensor | None
               ) -> torch.Tensor | None:
        c = self.config
        if source_flux.ndim != 4 or tuple(source_flux.shape[1:]) != (c.bands, c.in_size,
                                                                      c.in_size):
            raise GalnetValueError(f"source images must be (B, {c.bands}, {c.in_size}, "
                                   f"{c.in_size}), got {tuple(source_flux.shape)}")
        if c.cond_dim == 0:
            return None
        if cond is None:
            raise GalnetValueError(f"this translator is conditioned (cond_dim={c.cond_dim}): "
                                   "pass cond (B, cond_dim)")
        cond = torch.as_tensor(cond, dtype=source_flux.dtype, device=source_flux.device)
        cond = cond.reshape(len(cond), -1)
        if tuple(cond.shape) != (source_flux.shape[0], c.cond_dim):
            raise GalnetValueError(f"cond must be (B, {c.cond_dim}) = "
                                   f"({source_flux.shape[0]}, {c.cond_dim}), "
                                   f"got {tuple(cond.shape)}")
        return cond

    def forward(self, source_flux: torch.Tensor, cond: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``source_flux`` (B, C, in, in) nanomaggies; ``cond`` (B, cond_dim) or (B,) (z_spec)
        when ``cond_dim > 0``. Returns the target image (B, C, out, out) in target sky units."""
        cond = self._check(source_flux, cond)
        c = self.config
        B = source_flux.shape[0]
        films: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.film is not None:
            p = self.film(cond).split([2 * n for n in self.film_channels], dim=1)
            films = [tuple(q.view(B, 2, -1, 1, 1).unbind(1)) for q in p]  # (gamma, beta)

        def mod(h: torch.Tensor, k: int) -> torch.Tensor:
            if not films:
                return h
            gamma, beta = films[k]
            return h * (1 + gamma) + beta

        x = torch.asinh(source_flux / (c.soft * self.src_sky))  # (B, C, in, in)
        x = F.grid_sample(x, self.grid_work.expand(B, -1, -1, -1), mode="bilinear",
                          padding_mode="border", align_corners=False)  # (B, C, out/2, out/2)
        h = self.stem(x)
        skips = []
        for i, level in enumerate(self.enc):
            h = mod(level(h), i)
            skips.append(h)
        k = len(self.enc)
        for up, dec, skip in zip(self.up, self.dec, skips[-2::-1], strict=True):
            h = mod(dec(up(h) + skip), k)
            k += 1
        b = self.base(source_flux)  # (B, C, out, out) target sky units
        u = torch.asinh(b / c.soft)
        h = torch.cat([self.to_out(h), u], dim=1)  # (B, hi + C, out, out)
        r = 10.0 * torch.tanh(self.out(h) / 10.0)  # residual in asinh space, |r| < 10
        return c.soft * torch.sinh(u + r)


# ---- photo-z probe -----------------------------------------------------------------------------
@dataclass
class PhotoZConfig:
    """Architecture, redshift binning and normalisation of a :class:`PhotoZNet`."""

    bands: int = 5  # channels C of the (target-domain) images
    size: int = 136  # image side (pixels, even: average-pooled 2x first)
    width: int = 32  # channels of the first stage (doubled twice)
    nbins: int = 50  # equal redshift bins on [0, zmax]
    zmax: float = 0.5  # upper edge of the last bin
    target_sky: list[float] | None = None  # per-band sky rms (nanomaggies / px); None = 1
    soft: float = 2.0  # asinh softening (sky rms) of the inputs

    def __post_init__(self) -> None:
        self.target_sky = _fill_sky(self.target_sky, self.bands, "target_sky")


class PhotoZNet(nn.Module):
    """Target-domain flux (B, C, size, size) nanomaggies -> logits (B, nbins) of p(z).

    ``asinh(f / (soft sky))`` -> 2x average pooling -> conv stages (GroupNorm + SiLU) at
    1/2, 1/4, 1/8, 1/16 of the size -> global average and max pooling -> MLP -> logits."""

    def __init__(self, config: PhotoZConfig | None = None):
        super().__init__()
        self.config = c = config or PhotoZConfig()
        if c.size % 2 or c.size < 16 or c.nbins < 2 or not c.zmax > 0 or c.width < 2:
            raise GalnetValueError(f"invalid photo-z config {asdict(c)}")
        w, C = c.width, c.bands
        self.register_buffer("sky", torch.tensor(c.target_sky).view(1, C, 1, 1),
                             persistent=False)
        self.register_buffer("bin_centres", (torch.arange(c.nbins) + 0.5) * (c.zmax / c.nbins),
                             persistent=False)
        self.features = nn.Sequential(
            _block(C, w),  # 68
            _block(w, 2 * w, 2), _block(2 * w, 2 * w),  # 34
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w),  # 17
            _block(4 * w, 4 * w, 2),  # 9
        )
        self.head = nn.Sequential(nn.Linear(8 * w, 8 * w), nn.SiLU(), nn.Dropout(0.1),
                                  nn.Linear(8 * w, c.nbins))

    def _check(self, flux: torch.Tensor) -> None:
        c = self.config
        if flux.ndim != 4 or tuple(flux.shape[1:]) != (c.bands, c.size, c.size):
            raise GalnetValueError(f"photo-z images must be (B, {c.bands}, {c.size}, {c.size}), "
                                   f"got {tuple(flux.shape)}")

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        """``flux`` (B, C, size, size) nanomaggies -> logits (B, nbins)."""
        self._check(flux)
        x = F.avg_pool2d(torch.asinh(flux / (self.config.soft * self.sky)), 2)
        h = self.features(x)  # (B, 4w, size/16, size/16)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # (B, 8w)
        return self.head(h)

    def pdf(self, flux: torch.Tensor) -> torch.Tensor:
        """p(z) per bin (B, nbins), rows summing to 1."""
        return torch.softmax(self.forward(flux), dim=1)

    @staticmethod
    def summarize(pdf: np.ndarray | torch.Tensor, bin_centres: np.ndarray | torch.Tensor
                  ) -> dict[str, np.ndarray]:
        """Point estimates of binned p(z) (N, nbins): ``z_mean`` = sum p z_c, ``z_mode`` = the
        centre of the most probable bin, ``width`` = the standard deviation of p(z),
        sqrt(sum p (z_c - z_mean)^2) (a 1-sigma-like uncertainty; >= 0). Arrays (N,)."""
        p = np.asarray(pdf.detach().cpu() if isinstance(pdf, torch.Tensor) else pdf, dtype=float)
        zc = np.asarray(bin_centres.detach().cpu() if isinstance(bin_centres, torch.Tensor)
                        else bin_centres, dtype=float)
        p = p / p.sum(axis=1, keepdims=True)
        mean = p @ zc
        var = np.clip(p @ zc ** 2 - mean ** 2, 0.0, None)
        return {"z_mean": mean, "z_mode": zc[np.argmax(p, axis=1)], "width": np.sqrt(var)}


# ---- files (safetensors, no pickle) ------------------------------------------------------------
def _save(path: str | Path, model: nn.Module, fmt: str, extra: dict | None) -> Path:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(asdict(model.config)), "format": fmt}
    for k, v in (extra or {}).items():
        if k in ("config", "format"):
            raise GalnetValueError(f"extra metadata key {k!r} is reserved")
        meta[k] = json.dumps(v)
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def _load(path: str | Path, fmt: str, build, device: str | torch.device) -> nn.Module:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    what = "translator" if fmt == _FORMAT_TRANSLATOR else "photo-z"
    if not path.is_file():
        raise GalnetFileError(f"{path}: {what} weights not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != fmt:
            raise ValueError(f"format {meta.get('format')!r}, expected {fmt!r}")
        model = build(json.loads(meta["config"]))
        model.load_state_dict(load_file(str(path)))
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, SafetensorError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GalnetFileError(f"{path}: not galnet {what} weights ({msg})") from err
    return model.to(device).eval()


def save_translator(path: str | Path, model: Translator, extra_meta: dict | None = None
                    ) -> Path:
    """Write a translator's weights (safetensors) with its config and ``extra_meta`` (each value
    JSON-encoded) as metadata; atomic."""
    return _save(path, model, _FORMAT_TRANSLATOR, extra_meta)


def load_translator(path: str | Path, device: str | torch.device = "cpu") -> Translator:
    """A :class:`Translator` from :func:`save_translator`'s file, in eval mode."""
    return _load(path, _FORMAT_TRANSLATOR, lambda d: Translator(TranslatorConfig(**d)), device)


def save_photoz(path: str | Path, model: PhotoZNet, extra_meta: dict | None = None) -> Path:
    """Write a photo-z network (safetensors, config + ``extra_meta`` as metadata); atomic."""
    return _save(path, model, _FORMAT_PHOTOZ, extra_meta)


def load_photoz(path: str | Path, device: str | torch.device = "cpu") -> PhotoZNet:
    """A :class:`PhotoZNet` from :func:`save_photoz`'s file, in eval mode."""
    return _load(path, _FORMAT_PHOTOZ, lambda d: PhotoZNet(PhotoZConfig(**d)), device)


def read_metadata(path: str | Path) -> dict:
    """The metadata of a saved translator / photo-z file, JSON-decoded (``config`` a dict,
    ``format`` a string, then the training's extras)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise GalnetFileError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return {k: (v if k == "format" else json.loads(v)) for k, v in meta.items()}
    except (OSError, ValueError, SafetensorError) as err:
        raise GalnetFileError(f"{path}: cannot read metadata ({err})") from err
