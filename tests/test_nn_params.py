"""The network's targets and output squashing agree with the parameter table galnet.params."""

import math

import torch

from galnet.nn.model import TARGETS, ModelConfig, decode, encode_targets
from galnet.nn.predict import RESULT_KEYS
from galnet.params import SERSIC


def test_targets_follow_the_table():
    # log-scaled targets are exactly the table's log parameters (re_pix, n), plus the flux
    by_role = {"re": "logre", "n": "logn", "q": "q"}
    for role, target in by_role.items():
        assert target in TARGETS
        assert target.startswith("log") == SERSIC.by_role(role).log, role
    assert set(RESULT_KEYS) == {"flux" if p.role == "mag" else p.name for p in SERSIC}
    assert SERSIC["pa_deg"].cyclic == 180.0 and TARGETS[-2:] == ("cos2pa", "sin2pa")


def test_decode_squashes_into_the_table_bounds():
    cfg = ModelConfig()
    out = torch.zeros(3, 8)
    out[:, 5] = torch.tensor([-50.0, 0.0, 50.0])  # q far below, inside, far above
    out[:, 6] = torch.tensor([-1.0, 1.0, 0.0]) / cfg.scale[6]  # cos 2pa
    out[:, 7] = torch.tensor([-1e-6, 0.0, -1.0]) / cfg.scale[7]  # sin 2pa
    d = decode(out, torch.zeros(3, 7), torch.ones(3), cfg)
    q = SERSIC["q"]
    assert d["q"][0] == q.lower and d["q"][2] == q.upper and q.lower < d["q"][1] < q.upper
    assert torch.all((d["pa_deg"] >= 0) & (d["pa_deg"] < SERSIC["pa_deg"].cyclic))


def test_encode_uses_log10_for_log_parameters():
    cfg = ModelConfig(loc=[0.0] * 8, scale=[1.0] * 8)
    p = {"x": torch.tensor([30.0]), "y": torch.tensor([30.0]), "flux": torch.tensor([10.0]),
         "re_pix": torch.tensor([100.0]), "n": torch.tensor([4.0]), "q": torch.tensor([0.5]),
         "pa_deg": torch.tensor([45.0])}
    t = encode_targets(p, torch.ones(1), cfg)[0]
    assert math.isclose(t[3], 2.0, rel_tol=1e-6) and math.isclose(t[4], math.log10(4.0),
                                                                  rel_tol=1e-6)
    assert math.isclose(t[5], 0.5) and abs(t[6]) < 1e-6 and math.isclose(t[7], 1.0)
