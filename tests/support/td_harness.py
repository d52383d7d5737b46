"""The default small TD for module-level tests: the test acts as L1 through `TdHarness`."""

from __future__ import annotations

import pytest

from tdxsim.testing import TdHarness

ACCEPTED_AT_START = 0x200000  # the first 2 MiB, which L1 has accepted


@pytest.fixture
def h() -> TdHarness:
    """8 MiB TD, 2 L2 VMs, 2 vCPUs; RAM pending except the first 2 MiB, which L1 accepted."""
    harness = TdHarness.default(ram_mib=8, num_l2_vms=2, vcpus=2)
    harness.accept(0, ACCEPTED_AT_START)
    return harness
