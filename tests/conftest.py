"""Test configuration: one torch thread per pytest-xdist worker (`make test` runs 2 workers on
the 2-core machines), and the location of the optional real data."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip the test when it is absent (a user's machine)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent: real-data test skipped")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def tiny_sim(tmp_path_factory) -> Path:
    """A small simulated hsc-r file (256 stamps, synthetic backgrounds), made once per session."""
    from galnet.sim.simulate import simulate

    out = tmp_path_factory.mktemp("sim") / "tiny.h5"
    return simulate("hsc-r", 256, 0, out, progress=False)


@pytest.fixture(scope="session")
def tiny_model():
    """A small untrained GaLNet (width 4) in eval mode: fast, deterministic outputs."""
    from galnet.nn.model import GaLNet, ModelConfig

    torch.manual_seed(0)
    return GaLNet(ModelConfig(width=4, psf_dim=8, hidden=16)).eval()
