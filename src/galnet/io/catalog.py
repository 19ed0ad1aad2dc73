"""Catalogues: the one module that builds, writes and reads galnet's output tables.

- Schema: column units and descriptions come from the parameter table
  (:func:`galnet.params.column_units`, :func:`galnet.params.column_descriptions`);
  :func:`catalog_columns` is the column order of ``galnet predict``.
- Building: :func:`catalog_table` (named columns -> QTable with units and descriptions),
  :func:`stamp_catalog` (stamp-pixel results of a :class:`~galnet.io.cutouts.StampBatch` -> the
  ``galnet predict`` / ``galnet fit`` catalogue in input pixels), :func:`provenance` (what made it).
- Files: :func:`write_catalog` / :func:`read_catalog` for ECSV, FITS and Parquet, written
  atomically (:func:`galnet.io.files.atomic_write`); an existing output is refused unless
  ``overwrite``. Parquet is written and read with pyarrow alone (no pandas): units, descriptions
  and table meta live in the schema metadata (``table_meta_yaml``, astropy's layout). FITS
  catalogues keep the whole table meta as JSON in the ``GNMETA`` header card and the flag
  definitions as cards ``FLAGnn = 'NAME' / description`` (bit ``nn``); :func:`read_catalog`
  restores both (``meta['flags'] = {name: value}``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import sys
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from galnet.conventions import magnitudes
from galnet.errors import GalnetFileError, GalnetValueError
from galnet.flags import DESCRIPTIONS, Flag
from galnet.io.files import atomic_write, check_writable, jsonable
from galnet.params import SERSIC, ModelTable, column_descriptions, column_units

__all__ = [
    "CATALOG_FORMATS", "READ_FORMATS", "catalog_format", "catalog_columns", "catalog_table",
    "stamp_catalog", "provenance", "sha256_file", "write_catalog", "read_catalog",
]

#: Catalogue formats written, by file suffix (astropy format names).
CATALOG_FORMATS: dict[str, str] = {".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits",
                                   ".parquet": "parquet"}
#: Formats read: those written plus CSV (input positions, foreign catalogues).
READ_FORMATS: dict[str, str] = {**CATALOG_FORMATS, ".pq": "parquet", ".csv": "ascii.csv"}
#: Header card holding the table meta of a FITS catalogue as JSON.
FITS_META_CARD = "GNMETA"
_FLAG_CARD = re.compile(r"^FLAG(\d\d)$")
_CARD_KEY = re.compile(r"^[A-Z0-9_-]{1,8}$")
#: Columns derived from a parameter's role, written right after it (with their own ``_err``).
_DERIVED_BY_ROLE = {"mag": "flux", "re": "re_arcsec"}


def reported_columns(model: ModelTable = SERSIC) -> tuple[str, ...]:
    """Parameters reported with an ``_err`` column, in catalogue order: the model's parameters
    (:mod:`galnet.params`), each followed by the column derived from it (flux, re_arcsec)."""
    out: list[str] = []
    for p in model:
        out.append(p.name)
        if p.role in _DERIVED_BY_ROLE:
            out.append(_DERIVED_BY_ROLE[p.role])
    return tuple(out)


_REPORTED = reported_columns()


def catalog_format(path, read: bool = False) -> str:
    """The astropy format name of a catalogue path from its suffix: ``.ecsv``, ``.fits`` /
    ``.fit``, ``.parquet`` (and, with ``read=True``, ``.csv``, ``.pq``). GalnetValueError naming
    the path for any other suffix (call it on an output path before any work)."""
    suffix = Path(path).suffix.lower()
    formats = READ_FORMATS if read else CATALOG_FORMATS
    if suffix not in formats:
        known = ", ".join(sorted(formats))
        raise GalnetValueError(f"{path}: unknown catalogue format {suffix!r} (use {known})",
                               "path", suffix)
    return formats[suffix]


def catalog_columns() -> list[str]:
    """The catalogue columns of ``galnet predict``, in order (``galnet fit`` appends its own)."""
    cols = ["id"]
    for p in _REPORTED:
        cols += [p, f"{p}_err"]
    return cols + ["chi2nu", "snr", "flags"]


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------
def catalog_table(columns: Mapping, meta: Mapping | None = None, *,
                  model: ModelTable = SERSIC, descriptions: Mapping | None = None):
    """A QTable of ``columns`` (name -> array or Quantity, in order) with units and descriptions
    from the parameter table of ``model``.

    A plain array whose column has a unit in :func:`galnet.params.column_units` gets it; a
    Quantity keeps its own; dimensionless schema columns stay as given. Descriptions come from
    :func:`galnet.params.column_descriptions`, overridden by ``descriptions``. ``meta`` is copied
    into the table meta; with a ``flags`` column, ``meta['flags']`` defaults to the flag
    definitions ``{name: value}`` of :class:`galnet.flags.Flag`.
    """
    from astropy import units as u
    from astropy.table import QTable

    units = column_units(model)
    desc = {**column_descriptions(model), **(descriptions or {})}
    t = QTable()
    for name, values in columns.items():
        if not isinstance(values, u.Quantity) and units.get(name):
            values = np.asarray(values) * u.Unit(units[name])
        t[name] = values
        if name in desc:
            t[name].info.description = desc[name]
    t.meta.update(dict(meta or {}))
    if "flags" in t.colnames:
        t.meta.setdefault("flags", {f.name: int(f) for f in Flag})
    return t


def stamp_catalog(stamps, res: Mapping, flags, meta: Mapping | None = None):
    """The ``galnet predict`` / ``galnet fit`` catalogue of a StampBatch's results.

    ``res`` holds stamp-pixel ``x, y, flux, re_pix, n, q, pa_deg``, their ``_err`` and ``chi2nu``,
    ``snr``. Positions map to input pixels (``x_in = x0 + k x + (k - 1)/2``), radii and their
    errors scale by ``k``; ``mag = zeropoint - 2.5 log10(flux)`` (NaN for flux <= 0),
    ``mag_err = 2.5 / ln 10 * flux_err / flux``; ``re_arcsec`` from the input pixel scale;
    ``ra``, ``dec`` (deg) for a frame with a celestial WCS. Columns as :func:`catalog_columns`
    (then ``ra``, ``dec``); meta: ``pixel_scale``, ``zeropoint``, flag definitions, ``meta``.
    """
    from astropy import units as u

    k = np.asarray(stamps.rebin, dtype=float)
    x = np.asarray(stamps.x0) + k * res["x"] + (k - 1) / 2
    y = np.asarray(stamps.y0) + k * res["y"] + (k - 1) / 2
    re = k * res["re_pix"]
    zp = float(stamps.zeropoint)
    scale = float(stamps.pixel_scale)
    flux = res["flux"]
    mag, mag_err = magnitudes(flux, res["flux_err"], zp)
    one = u.dimensionless_unscaled
    vals = {
        "x": (x, k * res["x_err"]), "y": (y, k * res["y_err"]), "mag": (mag, mag_err),
        "flux": (flux * one, res["flux_err"] * one), "re_pix": (re, k * res["re_pix_err"]),
        "re_arcsec": (re * scale, k * res["re_pix_err"] * scale),
        "n": (res["n"] * one, res["n_err"] * one), "q": (res["q"] * one, res["q_err"] * one),
        "pa_deg": (res["pa_deg"], res["pa_deg_err"]),
    }
    cols: dict = {"id": np.asarray(stamps.ids)}
    for name in _REPORTED:
        cols[name], cols[f"{name}_err"] = vals[name]
    cols.update(chi2nu=res["chi2nu"], snr=res["snr"], flags=np.asarray(flags, dtype=np.int64))
    if getattr(stamps, "wcs", None) is not None:  # frame with a celestial WCS: sky positions
        sky = stamps.wcs.pixel_to_world(x, y)
        cols["ra"], cols["dec"] = sky.ra.deg, sky.dec.deg
    return catalog_table(cols, {"pixel_scale": scale, "zeropoint": zp, **dict(meta or {})})


def sha256_file(path) -> str:
    """Hex SHA-256 of a file's bytes (GalnetFileError naming the file if unreadable)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as err:
        raise GalnetFileError(f"{path}: cannot read ({err.strerror or err})") from err
    return h.hexdigest()


def provenance(command=None, inputs=None, weights=None, options=None, sources=None) -> dict:
    """What made a catalogue, for its meta (JSON-ready).

    Parameters
    ----------
    command : the command line (string or argv list) [default: ``sys.argv``].
    inputs : input files, a mapping role -> path (``{"images": "s.fits", "psf": ...}``) or a list.
    weights : network weights: a path (name and sha256 of the file), or a mapping with ``name``
        (and ``sha256``) for built-in weights.
    options : every option of the run (made JSON-ready with :func:`galnet.io.files.jsonable`).
    sources : where calibration numbers came from, e.g. ``{"zeropoint": "header MAGZERO",
        "pixel_scale": "WCS"}`` ("option", "preset default hsc-r", ...).

    Returns
    -------
    dict with ``galnet_version``, ``date`` (UTC, ISO 8601), ``command`` and, when given,
    ``inputs``, ``weights`` (``name``, ``sha256``), ``options``, ``sources``.
    """
    if command is None:
        command = sys.argv
    if not isinstance(command, str):
        command = shlex.join(str(a) for a in command)
    galnet = sys.modules.get("galnet")
    out: dict = {"galnet_version": getattr(galnet, "__version__", "unknown"),
                 "date": datetime.now(UTC).isoformat(timespec="seconds"),
                 "command": command}
    if inputs is not None:
        out["inputs"] = ({str(k): None if v is None else str(v) for k, v in inputs.items()}
                         if isinstance(inputs, Mapping) else [str(v) for v in inputs])
    if weights is not None:
        if isinstance(weights, str | os.PathLike):
            out["weights"] = {"name": Path(weights).name, "path": str(weights),
                              "sha256": sha256_file(weights)}
        else:
            out["weights"] = {str(k): jsonable(v) for k, v in dict(weights).items()}
    if options is not None:
        out["options"] = jsonable({k: str(v) if isinstance(v, os.PathLike) else v
                                   for k, v in dict(options).items()})
    if sources is not None:
        out["sources"] = {str(k): str(v) for k, v in dict(sources).items()}
    return out


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def _json_meta(meta: Mapping) -> str:
    return json.dumps(jsonable(dict(meta)), separators=(",", ":"))


def _card_ok(key, value) -> bool:
    """Whether a meta item is also written as a plain header card (short key, scalar value)."""
    k = str(key).upper()
    if not _CARD_KEY.match(k) or _FLAG_CARD.match(k) or k == FITS_META_CARD:
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, bool | int) or (isinstance(value, str) and value.isprintable())


def _fits_hdul(table):
    """The HDUList of a FITS catalogue: scalar meta as cards, the whole meta as JSON in
    ``GNMETA``, column descriptions in it too, flag definitions as ``FLAGnn`` cards."""
    from astropy.io import fits

    t = table.copy(copy_data=False)
    scalars = {k: v for k, v in t.meta.items() if _card_ok(k, v)}
    full = dict(t.meta)
    desc = {c: t[c].info.description for c in t.colnames if t[c].info.description}
    t.meta.clear()
    t.meta.update(scalars)
    hdu = fits.table_to_hdu(t)
    payload = {"meta": full}
    if desc:
        payload["descriptions"] = desc
    hdu.header[FITS_META_CARD] = (_json_meta(payload), "galnet table meta (JSON)")
    flags = full.get("flags")
    if isinstance(flags, Mapping):
        by_name = {f.name: f for f in Flag}
        for name, value in flags.items():
            try:
                bit = int(value).bit_length() - 1
            except (TypeError, ValueError):
                continue
            if 0 <= bit < 100 and int(value) == 1 << bit:
                f = by_name.get(str(name))
                hdu.header[f"FLAG{bit:02d}"] = (str(name), DESCRIPTIONS.get(f, "") if f else "")
    return fits.HDUList([fits.PrimaryHDU(), hdu])


def _write_parquet(table, path: Path) -> None:
    from astropy.io.misc.parquet import write_table_parquet  # pyarrow only (no pandas)

    write_table_parquet(table, path, overwrite=True)


def write_catalog(table, path, overwrite: bool = False) -> Path:
    """Write a catalogue atomically (a ``.tmp-NAME-*`` file beside it, then ``os.replace``),
    format from the suffix: ``.ecsv``, ``.fits`` / ``.fit``, ``.parquet``. Units, column
    descriptions and table meta are kept (FITS and Parquet as the module docstring says).

    Raises GalnetValueError for an unknown suffix, GalnetFileError ``"PATH exists (use
    --overwrite)"`` for an existing file without ``overwrite``, a missing or unwritable directory,
    or a table that cannot be serialised. Returns the path.
    """
    from astropy.table import QTable, Table

    fmt = catalog_format(path)
    p = check_writable(path, overwrite=overwrite)
    if not isinstance(table, Table):
        table = QTable(table)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy: HIERARCH cards, truncated comments...
            if fmt == "fits":
                _fits_hdul(table).writeto(tmp, overwrite=True)
            elif fmt == "parquet":
                _write_parquet(table, tmp)
            else:
                table.write(tmp, format=fmt, overwrite=True)

    try:
        return atomic_write(p, write)
    except GalnetFileError:
        raise
    except OSError as err:
        raise GalnetFileError(f"{path}: cannot write catalogue ({err.strerror or err})") from err
    except Exception as err:  # noqa: BLE001 - astropy/yaml/pyarrow serialisation errors
        msg = " ".join(str(err).split())
        raise GalnetFileError(f"{path}: cannot write catalogue ({type(err).__name__}: {msg})"
                              ) from err


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
def _read_parquet(path):
    """Parquet with pyarrow only (astropy's reader needs pandas): columns, units, descriptions,
    meta from the ``table_meta_yaml`` schema metadata."""
    import pyarrow.parquet as pq
    from astropy import units as u
    from astropy.table import QTable, meta

    t = pq.read_table(path)
    md = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
    info: dict[str, dict] = {}
    tmeta: dict = {}
    if "table_meta_yaml" in md:
        hdr = meta.get_header_from_yaml(md["table_meta_yaml"].split("\n"))
        info = {d["name"]: dict(d) for d in hdr.get("datatype", [])}
        tmeta = dict(hdr.get("meta", {}))
    for name, ser in tmeta.pop("__serialized_columns__", {}).items():  # Quantity columns
        if isinstance(ser, Mapping) and ser.get("unit") is not None and name in info:
            info[name]["unit"] = str(ser["unit"])
    out = QTable(meta=tmeta)
    for name in t.column_names:
        col = t.column(name)
        try:
            values = col.to_numpy()
        except Exception:  # noqa: BLE001 - nested types: python lists
            values = np.asarray(col.to_pylist(), dtype=object)
        if values.dtype == object and all(isinstance(v, str) for v in values):
            values = values.astype(str)
        unit = info.get(name, {}).get("unit")
        out[name] = values * u.Unit(unit) if unit else values
        if "description" in info.get(name, {}):
            out[name].info.description = info[name]["description"]
    return out


def _read_fits(path):
    """A FITS catalogue (first table HDU); meta, descriptions and flags restored from GNMETA and
    the FLAGnn cards of a galnet catalogue."""
    from astropy.table import QTable

    from galnet.io.fits import open_fits

    hdul = open_fits(path, "catalogue")  # one-line errors for truncated or corrupt files
    try:
        t = QTable.read(hdul, format="fits", character_as_bytes=False).copy(copy_data=True)
    finally:
        hdul.close()
    flags = {}
    for key in list(t.meta):
        m = _FLAG_CARD.match(str(key).upper())
        if m and isinstance(t.meta[key], str):
            flags[t.meta.pop(key)] = 1 << int(m.group(1))
    raw = None
    for key in list(t.meta):
        if str(key).upper() == FITS_META_CARD:
            raw = t.meta.pop(key)
    if raw is not None:
        try:
            payload = json.loads(raw)
        except (TypeError, ValueError):
            payload = None
        if isinstance(payload, dict):
            full = payload.get("meta") or {}
            dup = {str(k).upper() for k in full}
            for key in [k for k in t.meta if str(k).upper() in dup]:
                del t.meta[key]
            t.meta.update(full)
            for c, d in (payload.get("descriptions") or {}).items():
                if c in t.colnames:
                    t[c].info.description = d
    if flags and not isinstance(t.meta.get("flags"), Mapping):
        t.meta["flags"] = dict(sorted(flags.items(), key=lambda kv: kv[1]))
    return t


def read_catalog(source, role: str = "catalogue"):
    """A catalogue as an astropy QTable with its units: a path (``.ecsv``, ``.fits`` / ``.fit``,
    ``.parquet`` / ``.pq``, ``.csv``) or a Table (returned as a QTable, not copied if it is one).

    ``role`` names the table in messages ("positions", "pred", "truth"). One-line
    GalnetFileError naming the file for a missing file, a directory, an empty or unreadable file;
    GalnetValueError for an unknown suffix or a source that is neither a path nor a Table. (HDF5
    sets of ``galnet simulate`` are read by :func:`galnet.sim.simulate.read_params`.)
    """
    from astropy.table import QTable, Table

    if isinstance(source, QTable):
        return source
    if isinstance(source, Table):
        return QTable(source)
    if not isinstance(source, str | os.PathLike):
        raise GalnetValueError(f"{role} must be a file path or an astropy Table, got "
                               f"{type(source).__name__}", role, source)
    fmt = catalog_format(source, read=True)
    p = Path(source)
    if p.is_dir():
        raise GalnetFileError(f"{source}: is a directory, not a {role} file")
    if not p.is_file():
        raise GalnetFileError(f"{source}: no such file ({role})")
    if p.stat().st_size == 0:
        raise GalnetFileError(f"{source}: empty file ({role})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "parquet":
                return _read_parquet(p)
            if fmt == "fits":
                return _read_fits(p)
            return QTable.read(p, format=fmt)
    except GalnetFileError:
        raise
    except Exception as err:  # noqa: BLE001 - astropy/pyarrow raise many kinds for bad files
        msg = " ".join(str(err).split())[:200]
        raise GalnetFileError(f"{source}: cannot read {role} ({type(err).__name__}: {msg})"
                              ) from err
