"""The flag registry: stable bits, one description each, decoding and the docs table."""

import numpy as np
import pytest

from galnet.errors import GalnetValueError
from galnet.flags import DESCRIPTIONS, Flag, decode, decode_array, flag_table

# The bit values are part of the catalogue contract: changing one breaks old catalogues.
CONTRACT = {"EDGE": 1, "MASKED_CENTRE": 2, "REBINNED": 4, "OUT_OF_PRIOR": 8, "BAD_PSF": 16,
            "NONFINITE": 32, "PADDED": 64, "FIT_NOT_CONVERGED": 128, "BOUND_HIT": 256,
            "LOW_SNR": 512, "POINT_SOURCE": 1024, "UNRESOLVED": 2048, "RE_UNCONSTRAINED": 4096,
            "N_AT_BOUND": 8192, "MISFIT": 16384, "REVERTED": 32768}


def test_bits_are_the_contract():
    assert {f.name: int(f) for f in Flag} == CONTRACT


def test_every_flag_has_a_one_line_description():
    assert set(DESCRIPTIONS) == set(Flag)
    for f, d in DESCRIPTIONS.items():
        assert d and "\n" not in d and len(d) < 100, f


def test_decode():
    assert decode(0) == []
    assert decode(int(Flag.EDGE | Flag.REBINNED)) == ["EDGE", "REBINNED"]
    assert decode(np.int64(512 + 1)) == ["EDGE", "LOW_SNR"]
    assert decode(Flag.BAD_PSF) == ["BAD_PSF"]
    assert decode(sum(CONTRACT.values())) == list(CONTRACT)


@pytest.mark.parametrize("bad, match", [(-1, "non-negative"), (65536, "unknown bits 65536"),
                                        (1.0, "integer"), (True, "integer"), ("1", "integer")])
def test_decode_rejects(bad, match):
    with pytest.raises(GalnetValueError, match=match):
        decode(bad)


def test_decode_array():
    assert decode_array(np.array([0, 3, 64])) == [[], ["EDGE", "MASKED_CENTRE"], ["PADDED"]]
    with pytest.raises(GalnetValueError, match="1-D integer array"):
        decode_array(np.array([0.5]))


def test_flag_table():
    md = flag_table()
    lines = md.splitlines()
    assert lines[0] == "| value | bit | name | meaning |"
    assert len(lines) == 2 + len(Flag)
    assert "| 4 | 2 | `REBINNED` |" in md
    plain = flag_table("plain").splitlines()
    assert len(plain) == 1 + len(Flag) and plain[1].split()[:3] == ["1", "0", "EDGE"]
    for f in Flag:
        assert DESCRIPTIONS[f] in md
    with pytest.raises(GalnetValueError, match="fmt"):
        flag_table("html")
