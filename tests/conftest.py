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
