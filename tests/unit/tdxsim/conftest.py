"""Fixtures: a small default TD with two L2 VMs, the test acting as L1."""

from __future__ import annotations

import pytest

from tdxsim.testing import TdHarness


@pytest.fixture
def h() -> TdHarness:
    """8 MiB TD, 2 L2 VMs, 2 vCPUs; RAM pending except the first 2 MiB, which L1 accepted."""
    harness = TdHarness.default(ram_mib=8, num_l2_vms=2, vcpus=2)
    harness.accept(0, 0x200000)
    return harness
