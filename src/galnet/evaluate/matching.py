"""Reading the predicted and true tables, and matching their rows.

Rows are matched by ``id`` when both tables have one, the ids are unique in each and every
predicted id is in the truth (the prediction may cover a subset of the truth). A simulated HDF5
truth file has no ``id`` column: its ids are the 0-based row indices. Otherwise the rows are
matched in order, which needs equal lengths (``GalnetValueError`` if not; a warning when both
tables had explicit ids that do not match).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from galnet.errors import GalnetFileError, GalnetValueError
from galnet.io.catalog import read_catalog

__all__ = ["read_table", "table_label", "column_values", "match_rows"]

_H5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def read_table(source, role: str = "catalogue"):
    """An astropy Table from a path or a Table passed through: a catalogue (ECSV, FITS, Parquet,
    CSV) through :func:`galnet.io.catalog.read_catalog`, or an HDF5 file of ``galnet simulate``
    through :func:`galnet.sim.simulate.read_params` (its path kept in ``meta["galnet_h5"]``: its
    rows are matched by index, and its stamps drawn in the gallery).

    ``role`` names the table in error messages ("pred", "truth"). Raises
    :class:`GalnetFileError` for a missing or unreadable file.
    """
    if isinstance(source, str | os.PathLike) and Path(source).suffix.lower() in _H5_SUFFIXES:
        from galnet.sim.simulate import read_params

        path = Path(source)
        if path.is_dir():
            raise GalnetFileError(f"{source}: is a directory, not a {role} file")
        if not path.is_file():
            raise GalnetFileError(f"{source}: no such file ({role})")
        t = read_params(path)
        t.meta["galnet_h5"] = str(path)
        return t
    return read_catalog(source, role)


def table_label(source, role: str) -> str:
    """How a table is named in the metrics: its path, or ``<role table>`` for a Table."""
    return str(source) if isinstance(source, str | os.PathLike) else f"<{role} table>"


def column_values(t, name: str, label: str) -> np.ndarray:
    """Column ``name`` of table ``t`` as float64 values, units stripped, masked -> NaN
    (an angle column ``pa_deg*`` with an angle unit converted to degrees first)."""
    from astropy import units as u

    if name not in t.colnames:
        raise GalnetValueError(f"{label} has no column {name!r}", name)
    col = t[name]
    unit = getattr(col, "unit", None)
    if isinstance(col, u.Quantity):
        raw = col.unmasked.value if hasattr(col, "unmasked") else col.value
    else:
        raw = np.ma.getdata(col)
    try:
        v = np.array(raw, dtype=float).reshape(-1)
    except (TypeError, ValueError) as err:
        raise GalnetValueError(f"column {name!r} of {label} is not numeric", name) from err
    if v.size != len(t):
        raise GalnetValueError(f"column {name!r} of {label} is not one value per row", name)
    mask = getattr(col, "mask", None)
    if mask is not None:
        v[np.broadcast_to(np.asarray(mask, dtype=bool).reshape(-1), v.shape)] = np.nan
    if unit is not None and name.startswith("pa_deg"):
        try:
            if u.Unit(unit).physical_type == "angle":
                v = v * u.Unit(unit).to(u.deg)
        except (ValueError, TypeError):
            pass
    return v


def _ids(t) -> np.ndarray | None:
    if "id" not in t.colnames:
        return None
    col = t["id"]
    return np.asarray(np.ma.getdata(getattr(col, "value", col))).reshape(-1)


def _id_index(pid: np.ndarray, tid: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Indices into ``tid`` of each ``pid`` (None and the reason when not consistent)."""
    if pid.dtype.kind != tid.dtype.kind and not (pid.dtype.kind in "iuf"
                                                 and tid.dtype.kind in "iuf"):
        pid, tid = pid.astype(str), tid.astype(str)
    if len(np.unique(tid)) != len(tid):
        return None, "truth ids are not unique"
    if len(np.unique(pid)) != len(pid):
        return None, "pred ids are not unique"
    order = np.argsort(tid, kind="stable")
    ts = tid[order]
    pos = np.clip(np.searchsorted(ts, pid), 0, max(len(ts) - 1, 0))
    found = ts[pos] == pid if len(ts) else np.zeros(len(pid), bool)
    if not np.all(found):
        return None, f"{int(np.sum(~found))} pred ids are not in the truth"
    return order[pos], ""


def match_rows(pred, truth, pred_label: str = "pred", truth_label: str = "truth"
               ) -> tuple[np.ndarray, np.ndarray, str]:
    """Match the rows of two tables: ``(pred_index, truth_index, "id" or "row")``.

    By ``id`` when both have one (an HDF5 truth's ids are its row indices), unique and every pred
    id is in the truth; else by row order, which needs equal lengths (:class:`GalnetValueError`).
    """
    n_p, n_t = len(pred), len(truth)
    pid = _ids(pred)
    tid = _ids(truth)
    explicit_truth_ids = tid is not None
    if tid is None and "galnet_h5" in getattr(truth, "meta", {}):
        tid = np.arange(n_t)
    reason = ""
    if pid is not None and tid is not None:
        idx, reason = _id_index(pid, tid)
        if idx is not None:
            return np.arange(n_p), idx, "id"
    if n_p != n_t:
        why = f" and ids do not match ({reason})" if reason else ""
        raise GalnetValueError(
            f"{pred_label} has {n_p} rows but {truth_label} has {n_t}{why}: cannot match rows "
            "(give both an 'id' column, or the same rows in the same order)", "pred", n_p)
    if reason and explicit_truth_ids:
        warnings.warn(f"{pred_label} and {truth_label}: ids do not match ({reason}); "
                      "matching rows by order", UserWarning, stacklevel=3)
    return np.arange(n_p), np.arange(n_t), "row"
