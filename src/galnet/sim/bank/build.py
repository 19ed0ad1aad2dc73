"""Building the bank: background cutouts and PSFs from the shared data directory, with their
provenance, written atomically to one HDF5 file (``galnet bank build``; see docs/bank.md).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import time
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.files import atomic_write
from galnet.runner import progress as runner_progress
from galnet.sim.bank.frames import STAMP, discover_frames, frame_cutouts
from galnet.sim.bank.psf_inputs import (
    FWHM_RANGE,
    PSF_FAMILIES,
    PSF_SIZE,
    PSFInput,
    finish_psf,
    psf_fwhm,
    psf_inputs,
)

__all__ = ["build_bank", "DEFAULT_SCALES", "FORMAT_VERSION"]

#: Pixel scales (arcsec/px) of the hsc-r, kids-r and sdss-r presets.
DEFAULT_SCALES = (0.168, 0.2, 0.396)

#: Sample format of the bank file (attribute ``galnet_bank_format``).
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------
def _readme_rows(data_dir: Path) -> list[tuple[str, str]]:
    """(path pattern, table row) pairs of the data README's file table."""
    readme = data_dir / "README.md"
    if not readme.is_file():
        return []
    rows = []
    for line in readme.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| ") or line.startswith("| path") or line.startswith("|---"):
            continue
        pat = line.split("|")[1].strip()
        # expand {a,b,c} alternatives into fnmatch patterns
        pats = [pat]
        while any("{" in p for p in pats):
            new = []
            for p in pats:
                m = re.search(r"\{([^}]*)\}", p)
                if not m:
                    new.append(p)
                    continue
                new += [p[:m.start()] + alt + p[m.end():] for alt in m[1].split(",")]
            pats = new
        rows += [(p, line) for p in pats]
    return rows


def _provenance(data_dir: Path, files: Sequence[str]) -> dict[str, str]:
    """Per used file, the data README's table row (path, what, scale, source, licence): the most
    specific matching pattern, else the row sharing the longest name prefix (marked)."""
    rows = _readme_rows(data_dir)
    out = {}
    for f in sorted(set(files)):
        hits = [(p.count("*"), -len(p), line) for p, line in rows if fnmatch.fnmatch(f, p)]
        if hits:
            out[f] = min(hits)[2]
            continue
        best, line = max(((len(os.path.commonprefix([f, p])), line) for p, line in rows),
                         default=(0, ""))
        out[f] = (f"(closest README row) {line}" if best > len(os.path.dirname(f)) + 8
                  else "not listed in the data README")
    return out


# ----------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------
def _scale_key(scale: float) -> str:
    return f"{scale:.4f}"


def _check_scales(pixel_scales) -> tuple[float, ...]:
    try:
        scales = tuple(sorted({float(s) for s in np.atleast_1d(pixel_scales)}))
    except (TypeError, ValueError):
        raise GalnetValueError(f"pixel_scales must be numbers, got {pixel_scales!r}",
                               "pixel_scales", pixel_scales) from None
    if not scales or not all(np.isfinite(s) and 0.01 <= s <= 2.0 for s in scales):
        raise GalnetValueError(f"pixel_scales must be in [0.01, 2] arcsec/px, got {scales}",
                               "pixel_scales", pixel_scales)
    return scales


def _str_array(values: Sequence[str]) -> np.ndarray:
    return np.array([v.encode("utf-8") for v in values], dtype=object)


def _named_rng(seed: int, name: str) -> np.random.Generator:
    """Generator for one frame or PSF family: depends on (seed, name) only, not on which other
    frames or families are built."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]))


def _add_psfs(psf_out: dict[float, dict[str, list]], inputs: Sequence[PSFInput],
              scales: Sequence[float]) -> int:
    """Resample ``inputs`` to every scale and append them to ``psf_out``; returns the number of
    rejected (PSF, scale) pairs."""
    n_rej = 0
    for inp in inputs:
        native = None
        for s in scales:
            res = finish_psf(inp, s)
            if res is None:
                n_rej += 1
                continue
            if native is None:
                native = psf_fwhm(inp.image, inp.sample_scale)
            d = psf_out[s]
            for key, val in (("image", res["image"]), ("fwhm_arcsec", res["fwhm_arcsec"]),
                             ("flux_in_stamp", res["flux_in_stamp"]),
                             ("native_fwhm_arcsec", native), ("source", inp.family),
                             ("band", inp.band), ("file", inp.file),
                             ("native_scale", inp.sample_scale), ("x", inp.x), ("y", inp.y)):
                d.setdefault(key, []).append(val)
    return n_rej


def build_bank(data_dir: str | os.PathLike, out: str | os.PathLike,
               pixel_scales: Sequence[float] = DEFAULT_SCALES, n_per_frame: int = 600,
               seed: int = 0, progress: bool = True, *, frames: Sequence[str] | None = None,
               psf_sources: Sequence[str] | None = None, n_psf_per_model: int = 20) -> Path:
    """Build the background/PSF bank from the real data in ``data_dir`` into the HDF5 file ``out``.

    Parameters
    ----------
    data_dir : the shared data directory (``../shared/data``; see its README.md).
    out : output file; written to a temporary file in the same directory and renamed at the end,
        so ``out`` never holds a partial bank.
    pixel_scales : arcsec/px at which PSFs are stored [default: 0.168, 0.2, 0.396].
    n_per_frame : maximum number of background cutouts per frame [default: 600]; small frames give
        fewer (centres at least :data:`MIN_SEPARATION` px apart, clean centre, no bad pixel).
    seed : seed of the cutout positions and PSF positions.
    progress : show a progress bar (only when stderr is a terminal: :func:`galnet.runner.progress`).
    frames : frame names to use (e.g. ``"kids_r"``, ``"ntt_emmi"``) [default: all found].
    psf_sources : PSF families to use, among ``hsc``, ``des_psfex``, ``decam_psfex``,
        ``sdss_psfield``, ``profit_kids``, ``profit_sdss`` [default: all].
    n_psf_per_model : PSFs drawn at random positions of each spatially varying model (PSFEx,
        SDSS psField band) [default: 20].

    Returns the path of the bank. Raises :class:`GalnetFileError` if ``data_dir`` is missing or
    holds none of the expected files, or if ``out`` cannot be written.
    """
    import h5py

    import galnet

    t0 = time.time()
    data_dir = Path(data_dir).expanduser()
    out = Path(out).expanduser()
    scales = _check_scales(pixel_scales)
    if int(n_per_frame) < 1 or int(n_psf_per_model) < 1:
        raise GalnetValueError("n_per_frame and n_psf_per_model must be >= 1", "n_per_frame",
                               n_per_frame)
    if not data_dir.is_dir():
        raise GalnetFileError(f"data directory {str(data_dir)!r} not found")
    all_frames, skipped = discover_frames(data_dir)
    if frames is not None:
        unknown = set(frames) - {f.name for f in all_frames}
        if unknown:
            raise GalnetValueError(f"unknown or unusable frames {sorted(unknown)}; available: "
                                   f"{[f.name for f in all_frames]}", "frames", frames)
        all_frames = [f for f in all_frames if f.name in set(frames)]
    families = tuple(PSF_FAMILIES if psf_sources is None else psf_sources)
    if set(families) - set(PSF_FAMILIES):
        raise GalnetValueError(f"unknown psf_sources {sorted(set(families) - set(PSF_FAMILIES))}"
                               f"; known: {list(PSF_FAMILIES)}", "psf_sources", psf_sources)
    if not all_frames and not any((data_dir / p).exists() for p in ("psf", "galaxies")):
        raise GalnetFileError(f"data directory {str(data_dir)!r} holds none of the expected files "
                              "(frames/*.fits, psf/, galaxies/; see its README.md)")
    if out.is_dir():
        raise GalnetFileError(f"bank output {str(out)!r} is a directory")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GalnetFileError(f"cannot create directory {str(parent)!r} for the bank: "
                              f"{exc.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GalnetFileError(f"cannot write bank {str(out)!r}: directory {str(parent)!r} is "
                              "not writable")

    bar = runner_progress(total=len(all_frames) + len(families), desc="galnet bank", unit="step",
                          enable=progress)
    try:
        cut_list, meta_cols, frame_summaries, used_files = [], [], [], []
        for fr in all_frames:  # ---- backgrounds
            bar.set_postfix_str(fr.name)
            cuts, cols, summary = frame_cutouts(data_dir, fr, int(n_per_frame),
                                                 _named_rng(seed, fr.name))
            cut_list.append(cuts)
            cols["frame"] = np.array([fr.name] * len(cuts), dtype=object)
            cols["native_scale"] = np.full(len(cuts), fr.scale, dtype=np.float32)
            meta_cols.append(cols)
            frame_summaries.append(summary)
            used_files += [p for p in (fr.image, fr.noise, fr.dq, fr.back) if p]
            bar.update(1)
        psf_out: dict[float, dict[str, list]] = {s: {} for s in scales}
        psf_notes: list[str] = []
        for fam in families:  # ---- PSFs
            bar.set_postfix_str(fam)
            inputs, files = psf_inputs(data_dir, fam, int(n_psf_per_model),
                                        _named_rng(seed, fam))
            used_files += files
            n_rej = _add_psfs(psf_out, inputs, scales)
            if n_rej:
                psf_notes.append(f"{fam}: {n_rej} (PSF, scale) pairs rejected (FWHM outside "
                                 f"{FWHM_RANGE} arcsec, non-finite or off-centre)")
            bar.update(1)
    finally:
        bar.close()

    n_bg = sum(len(c) for c in cut_list)
    n_psf = sum(len(d.get("image", ())) for d in psf_out.values())
    if n_bg == 0 and n_psf == 0:
        raise GalnetFileError(f"data directory {str(data_dir)!r}: no usable frame or PSF found")

    provenance = {
        "galnet_version": galnet.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": str(data_dir.resolve()),
        "seed": int(seed),
        "n_per_frame": int(n_per_frame),
        "n_psf_per_model": int(n_psf_per_model),
        "files": _provenance(data_dir, used_files),
        "frames": frame_summaries,
        "notes": skipped + psf_notes + [
            "No HSC-SSP frame larger than 69x57 px is available: HSC-like simulations use these "
            "other ground-based frames with their noise rescaled to the target depth."],
        "build_seconds": round(time.time() - t0, 1),
    }

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            _write_bank(f, provenance, cut_list, meta_cols, psf_out, scales)

    return atomic_write(out, write)


def _write_bank(f, provenance: dict, cut_list: list, meta_cols: list, psf_out: dict,
                scales: tuple[float, ...]) -> None:
    """Write the bank's datasets and attributes into the open HDF5 file ``f``."""
    import h5py

    import galnet

    f.attrs["galnet_bank_format"] = FORMAT_VERSION
    f.attrs["galnet_version"] = galnet.__version__
    f.attrs["created"] = provenance["created"]
    f.attrs["data_dir"] = provenance["data_dir"]
    # README rows are stored once, files point to them (keeps the attribute small)
    rows = sorted(set(provenance["files"].values()))
    packed = {**provenance, "readme_rows": rows,
              "files": {k: rows.index(v) for k, v in provenance["files"].items()}}
    f.attrs["provenance"] = json.dumps(packed)
    bg = np.concatenate(cut_list) if cut_list else np.zeros((0, STAMP, STAMP), np.float32)
    f.create_dataset("backgrounds", data=bg, dtype="f4", chunks=(1, STAMP, STAMP)
                     if len(bg) else None, compression="gzip" if len(bg) else None,
                     shuffle=bool(len(bg)))
    g = f.create_group("background_meta")
    for key in ("x", "y", "native_scale", "rms", "corr1_x", "corr1_y", "max_overlap"):
        g.create_dataset(key, data=np.concatenate([c[key] for c in meta_cols])
                         if meta_cols else np.zeros(0))
    g.create_dataset("frame", data=_str_array(
        [s for c in meta_cols for s in c["frame"]]), dtype=h5py.string_dtype())
    pg = f.create_group("psfs")
    for s in scales:
        d = psf_out[s]
        sg = pg.create_group(_scale_key(s))
        sg.attrs["pixel_scale"] = s
        imgs = np.array(d.get("image", []), dtype=np.float32).reshape(
            -1, PSF_SIZE, PSF_SIZE)
        sg.create_dataset("images", data=imgs)
        for key in ("fwhm_arcsec", "native_fwhm_arcsec", "flux_in_stamp",
                    "native_scale", "x", "y"):
            sg.create_dataset(key, data=np.asarray(d.get(key, []), dtype=np.float64))
        for key in ("source", "band", "file"):
            sg.create_dataset(key, data=_str_array(d.get(key, [])),
                              dtype=h5py.string_dtype())
