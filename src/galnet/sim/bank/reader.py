"""Reading the bank: :class:`Bank` loads a bank file into memory once and draws backgrounds and
PSFs from it for the simulator.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.sim.bank.build import FORMAT_VERSION

__all__ = ["Bank"]



# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
class Bank:
    """A background/PSF bank built by :func:`build_bank`, loaded into memory once.

    Attributes: ``path``; ``n_backgrounds``; ``pixel_scales`` (arcsec/px, sorted);
    ``background_meta`` (astropy Table: frame, x, y (cutout centre in the frame, 0-based px),
    native_scale, rms, corr1_x, corr1_y, corr1, max_overlap); ``psf_meta(scale)``;
    ``provenance`` (dict).
    """

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise GalnetFileError(f"bank file {str(self.path)!r} not found")
        try:
            f = h5py.File(self.path, "r")
        except OSError:
            raise GalnetFileError(f"{str(self.path)!r} is not a galnet bank "
                                  "(not an HDF5 file)") from None
        with f:
            if "galnet_bank_format" not in f.attrs or "backgrounds" not in f or "psfs" not in f:
                raise GalnetFileError(f"{str(self.path)!r} is not a galnet bank")
            if int(f.attrs["galnet_bank_format"]) > FORMAT_VERSION:
                raise GalnetFileError(f"{str(self.path)!r}: bank format "
                                      f"{int(f.attrs['galnet_bank_format'])} is newer than this "
                                      f"galnet reads ({FORMAT_VERSION})")
            prov = json.loads(f.attrs["provenance"])
            rows = prov.pop("readme_rows", None)
            if rows is not None:
                prov["files"] = {k: rows[i] for k, i in prov["files"].items()}
            self.provenance: dict = prov
            self._bg = np.asarray(f["backgrounds"][...], dtype=np.float32)
            bm = f["background_meta"]
            self._bg_meta = {k: bm[k][...] for k in bm}
            self._bg_meta["frame"] = np.array(
                [v.decode() if isinstance(v, bytes) else str(v) for v in self._bg_meta["frame"]])
            self._psf: dict[float, dict[str, np.ndarray]] = {}
            for key, sg in f["psfs"].items():
                d = {k: sg[k][...] for k in sg}
                for k in ("source", "band", "file"):
                    d[k] = np.array([v.decode() if isinstance(v, bytes) else str(v)
                                     for v in d[k]])
                d["images"] = np.asarray(d["images"], dtype=np.float32)
                self._psf[float(sg.attrs.get("pixel_scale", float(key)))] = d
        m = self._bg_meta
        self._origin = np.array([f"{fr}:{x},{y}" for fr, x, y in zip(m["frame"], m["x"], m["y"],
                                                                     strict=True)])

    def __repr__(self) -> str:
        counts = {s: len(d["images"]) for s, d in self._psf.items()}
        return f"Bank({str(self.path)!r}, backgrounds={self.n_backgrounds}, psfs={counts})"

    @property
    def n_backgrounds(self) -> int:
        return int(len(self._bg))

    @property
    def pixel_scales(self) -> tuple[float, ...]:
        return tuple(sorted(s for s, d in self._psf.items() if len(d["images"])))

    @property
    def background_meta(self):
        from astropy.table import Table

        m = self._bg_meta
        t = Table({k: m[k] for k in ("frame", "x", "y", "native_scale", "rms", "corr1_x",
                                     "corr1_y", "max_overlap")})
        t["corr1"] = 0.5 * (t["corr1_x"] + t["corr1_y"])
        t["native_scale"].unit = "arcsec/pix"
        return t

    def _scale(self, pixel_scale: float) -> float:
        for s in self._psf:
            if abs(s - float(pixel_scale)) <= 1e-6 * max(1.0, abs(s)) and len(
                    self._psf[s]["images"]):
                return s
        raise GalnetValueError(f"bank {str(self.path)!r} has no PSFs at pixel scale "
                               f"{pixel_scale} arcsec/px; available: {list(self.pixel_scales)}",
                               "pixel_scale", pixel_scale)

    def psf_meta(self, pixel_scale: float):
        """Astropy Table of the PSFs at ``pixel_scale``: source (family), band, file, x, y
        (model position, NaN for fixed images), native_scale, native_fwhm_arcsec, fwhm_arcsec,
        flux_in_stamp (fraction of the PSF flux inside the 25 x 25 stamp before normalising)."""
        from astropy.table import Table

        d = self._psf[self._scale(pixel_scale)]
        return Table({k: d[k] for k in ("source", "band", "file", "x", "y", "native_scale",
                                        "native_fwhm_arcsec", "fwhm_arcsec", "flux_in_stamp")})

    def psf_images(self, pixel_scale: float) -> np.ndarray:
        """All PSFs at ``pixel_scale``, (M, 25, 25) float32, unit sum (read-only view)."""
        v = self._psf[self._scale(pixel_scale)]["images"].view()
        v.flags.writeable = False
        return v

    def sample_backgrounds(self, rng: np.random.Generator, n: int, *, augment: bool = True,
                           frames: Sequence[str] | None = None,
                           native_scale: tuple[float, float] | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random noise-normalised background cutouts (with replacement).

        Returns (images (n, 61, 61) float32, unit noise rms; origins (n,) str
        ``"frame:x,y"``). With ``augment`` each cutout is also given one of the 8 flips/90-degree
        rotations at random (noise statistics are unchanged; x and y correlations swap).
        ``frames`` restricts the draw to those frame names, ``native_scale`` (min, max) to frames
        with a native pixel scale (arcsec/px) in that range.
        """
        n = int(n)
        if n < 0:
            raise GalnetValueError(f"n must be >= 0, got {n}", "n", n)
        pool = None
        if frames is not None or native_scale is not None:
            keep = np.ones(self.n_backgrounds, dtype=bool)
            if frames is not None:
                keep &= np.isin(self._bg_meta["frame"], list(frames))
            if native_scale is not None:
                lo, hi = (float(v) for v in native_scale)
                ns = self._bg_meta["native_scale"]
                keep &= (ns >= lo - 1e-6) & (ns <= hi + 1e-6)
            pool = np.flatnonzero(keep)
            if len(pool) == 0:
                raise GalnetValueError(f"no background cutouts with frames={frames} and "
                                       f"native_scale={native_scale}; bank has "
                                       f"{sorted(set(self._bg_meta['frame']))}", "frames", frames)
        if self.n_backgrounds == 0:
            raise GalnetValueError(f"bank {str(self.path)!r} has no background cutouts", "n", n)
        idx = rng.integers(0, self.n_backgrounds, n) if pool is None else pool[
            rng.integers(0, len(pool), n)]
        out = self._bg[idx]
        if augment and n:
            t = rng.integers(0, 8, n)
            for k in range(1, 8):
                sel = np.flatnonzero(t == k)
                if len(sel) == 0:
                    continue
                a = out[sel]
                if k >= 4:
                    a = a[:, :, ::-1]
                out[sel] = np.rot90(a, k % 4, axes=(1, 2))
        return out, self._origin[idx]

    def sample_psfs(self, rng: np.random.Generator, n: int, pixel_scale: float, *,
                    sources: Sequence[str] | None = None,
                    fwhm_range: tuple[float, float] | None = None,
                    weighting: str = "family") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` random bank PSFs at ``pixel_scale`` arcsec/px (with replacement).

        Returns (images (n, 25, 25) float32, unit sum, centred on (12, 12); fwhm_arcsec (n,);
        sources (n,) str ``"family:band"``, e.g. ``"hsc:r"``). ``weighting="family"`` gives each
        PSF family (hsc, des_psfex, decam_psfex, sdss_psfield, profit_kids, profit_sdss) the same
        share, ``"uniform"`` each PSF. ``sources`` keeps only those families; ``fwhm_range``
        (arcsec) only PSFs with a FWHM inside it. Raises :class:`GalnetValueError` if the bank has
        no PSFs at this scale (the message lists those it has) or none pass the filters.
        """
        d = self._psf[self._scale(pixel_scale)]
        n = int(n)
        if n < 0:
            raise GalnetValueError(f"n must be >= 0, got {n}", "n", n)
        keep = np.ones(len(d["images"]), dtype=bool)
        if sources is not None:
            keep &= np.isin(d["source"], list(sources))
        if fwhm_range is not None:
            lo, hi = (float(v) for v in fwhm_range)
            keep &= (d["fwhm_arcsec"] >= lo) & (d["fwhm_arcsec"] <= hi)
        pool = np.flatnonzero(keep)
        if len(pool) == 0:
            raise GalnetValueError(f"no bank PSFs at {pixel_scale} arcsec/px with sources="
                                   f"{sources} and fwhm_range={fwhm_range}", "sources", sources)
        if weighting == "family":
            fam = d["source"][pool]
            _, inv, counts = np.unique(fam, return_inverse=True, return_counts=True)
            p = 1.0 / counts[inv]
            idx = pool[rng.choice(len(pool), size=n, p=p / p.sum())]
        elif weighting == "uniform":
            idx = pool[rng.integers(0, len(pool), n)]
        else:
            raise GalnetValueError(f"weighting must be 'family' or 'uniform', got {weighting!r}",
                                   "weighting", weighting)
        labels = np.char.add(np.char.add(d["source"][idx].astype(str), ":"),
                             d["band"][idx].astype(str))
        return d["images"][idx].copy(), d["fwhm_arcsec"][idx].astype(np.float64), labels
