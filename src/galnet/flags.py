"""The one registry of galnet's quality flags (the ``flags`` bitmask column of every catalogue).

Each flag is a bit of :class:`Flag` (an :class:`enum.IntFlag`); a catalogue's ``flags`` value is
the bitwise OR of the flags raised for that row (0 = no problem). Bits are part of the catalogue
contract: never renumber one, only add new ones at the end.

>>> int(Flag.EDGE | Flag.PADDED)
65
>>> decode(65)
['EDGE', 'PADDED']
"""

from __future__ import annotations

from enum import IntFlag

import numpy as np

from galnet.errors import GalnetValueError

__all__ = ["Flag", "DESCRIPTIONS", "LOW_SNR_LIMIT", "decode", "decode_array", "flag_table"]

#: Below this model S/N a measurement gets :attr:`Flag.LOW_SNR` (the network trained on S/N >= 5;
#: the reported accuracy is for S/N > 10). Used by ``galnet predict`` and ``galnet fit``.
LOW_SNR_LIMIT = 10.0


class Flag(IntFlag):
    """Quality flags; see :data:`DESCRIPTIONS` for what raises each one."""

    EDGE = 1 << 0
    MASKED_CENTRE = 1 << 1
    REBINNED = 1 << 2
    OUT_OF_PRIOR = 1 << 3
    BAD_PSF = 1 << 4
    NONFINITE = 1 << 5
    PADDED = 1 << 6
    FIT_NOT_CONVERGED = 1 << 7
    BOUND_HIT = 1 << 8
    LOW_SNR = 1 << 9
    POINT_SOURCE = 1 << 10
    UNRESOLVED = 1 << 11
    RE_UNCONSTRAINED = 1 << 12
    N_AT_BOUND = 1 << 13
    MISFIT = 1 << 14
    REVERTED = 1 << 15


#: One line per flag: when it is raised (and by whom).
DESCRIPTIONS: dict[Flag, str] = {
    Flag.EDGE: "the cutout reaches past the edge of the frame (outside pixels are masked)",
    Flag.MASKED_CENTRE: "all 3x3 central pixels of the stamp are masked",
    Flag.REBINNED: "the galaxy was too large for the stamp: image and PSF rebinned by 2 or 3",
    Flag.OUT_OF_PRIOR: "a predicted parameter lies outside the training prior of the network",
    Flag.BAD_PSF: "the PSF peak was > 2 px off-centre or > 10% of its flux fell outside 25x25",
    Flag.NONFINITE: ("non-finite pixels in the stamp or its sigma/ivar (set to 0, masked), "
                     "or a non-finite result"),
    Flag.PADDED: "the stamp was smaller than the model input: padded, padded pixels masked",
    Flag.FIT_NOT_CONVERGED: "the forward-model fit did not converge",
    Flag.BOUND_HIT: "a fitted parameter ended at one of its bounds",
    Flag.LOW_SNR: "the galaxy's signal-to-noise ratio is below the reliable limit",
    Flag.POINT_SOURCE: "a PSF fits as well as the Sersic (a star?); psf_mag is its PSF magnitude",
    Flag.UNRESOLVED: "not resolved: re_pix / re_arcsec hold a 95% upper limit, not a measurement",
    Flag.RE_UNCONSTRAINED: "the radius is larger than the fitted cutout can constrain",
    Flag.N_AT_BOUND: "the Sersic index ended at a bound of its range",
    Flag.MISFIT: "the residuals show structure a single Sersic cannot describe",
    Flag.REVERTED: "the refine ended worse than the network on the same pixels, or at a "
                   "bound: network values",
}

_ALL = sum(int(f) for f in Flag)


def _check_value(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise GalnetValueError(f"flags must be a non-negative integer, got {value!r}",
                               "flags", value)
    v = int(value)
    if v < 0:
        raise GalnetValueError(f"flags must be a non-negative integer, got {v}", "flags", v)
    if v & ~_ALL:
        raise GalnetValueError(
            f"flags value {v} has unknown bits {v & ~_ALL} (known: 0..{_ALL})", "flags", v)
    return v


def decode(value: int) -> list[str]:
    """Names of the flags set in ``value``, lowest bit first (``[]`` for 0).

    Raises
    ------
    GalnetValueError : ``value`` is not a non-negative integer or has bits galnet does not define.
    """
    v = _check_value(value)
    return [f.name for f in Flag if v & f]


def decode_array(values) -> list[list[str]]:
    """:func:`decode` for each element of a 1-D integer array (e.g. a catalogue's ``flags``)."""
    arr = np.asarray(values)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise GalnetValueError(
            f"flags must be a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}", "flags")
    return [decode(v) for v in arr.tolist()]


def flag_table(fmt: str = "markdown") -> str:
    """The flag registry as text: ``fmt="markdown"`` (a Markdown table for the docs) or
    ``"plain"`` (aligned columns for the terminal)."""
    rows = [(str(int(f)), f"{int(f).bit_length() - 1}", f.name, DESCRIPTIONS[f]) for f in Flag]
    head = ("value", "bit", "name", "meaning")
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4) + "|"]
        lines += ["| " + " | ".join((v, b, f"`{n}`", d)) + " |" for v, b, n, d in rows]
        return "\n".join(lines)
    if fmt == "plain":
        w = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
        return "\n".join(f"{v:>{w[0]}}  {b:>{w[1]}}  {n:<{w[2]}}  {d}" for v, b, n, d in
                         [head, *rows])
    raise GalnetValueError(f"fmt must be 'markdown' or 'plain', got {fmt!r}", "fmt", fmt)
