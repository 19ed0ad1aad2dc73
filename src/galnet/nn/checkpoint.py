"""Training checkpoints: tensors + string metadata in one safetensors file (no pickle), written
atomically; the Adam state flattened into tensors. Used by :mod:`galnet.nn.train` and
:mod:`galnet.translate.train`.

Layout: each tensor under a prefixed key (``model.<name>``, ``adam.<i>.<state key>`` for parameter
``i`` of the optimizer's first parameter group, ...); metadata is a ``str -> str`` mapping (the
caller encodes, e.g. as JSON).
"""

from __future__ import annotations

from pathlib import Path

import torch

from galnet.errors import GalnetFileError
from galnet.io.files import atomic_write

__all__ = ["adam_state", "load_adam", "save_checkpoint", "read_checkpoint", "strip_prefix"]


def adam_state(opt: torch.optim.Optimizer, prefix: str = "adam.") -> dict[str, torch.Tensor]:
    """The state of ``opt`` (first parameter group) as CPU tensors ``{prefix}{i}.{key}``."""
    state = {}
    for i, p in enumerate(opt.param_groups[0]["params"]):
        for k, v in opt.state.get(p, {}).items():
            state[f"{prefix}{i}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    return state


def load_adam(opt: torch.optim.Optimizer, state: dict[str, torch.Tensor],
              prefix: str = "adam.") -> None:
    """Restore the state written by :func:`adam_state` into ``opt`` (moments on each parameter's
    device; ``step`` stays a CPU tensor, as torch's non-capturable Adam expects)."""
    params = opt.param_groups[0]["params"]
    for key, v in state.items():
        if key.startswith(prefix):
            i, k = key[len(prefix):].split(".", 1)
            p = params[int(i)]
            opt.state[p][k] = v if k == "step" else v.to(p.device)


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` whose key starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor],
                    metadata: dict[str, str]) -> Path:
    """Write ``tensors`` (moved to the CPU, made contiguous) and ``metadata`` to ``path``,
    atomically (an interrupted write leaves the previous checkpoint)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in metadata.items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def read_checkpoint(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`GalnetFileError` (one line, naming the file) when it is missing, truncated or
    corrupt."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise GalnetFileError(f"{path}: unreadable checkpoint ({_one_line(err)})") from err
    return meta, tensors


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:197] + "..."
