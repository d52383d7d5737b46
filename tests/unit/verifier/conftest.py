"""Fixtures: a seeded simulated platform and one of its quotes (tests may use the simulator)."""

from __future__ import annotations

import pytest

from tdxsim.attestation.quoting import SimulatedAttestation
from tdxsim.module.attestation_interface import TdInfo

REPORTDATA = bytes(range(64))
TD = TdInfo(
    attributes=0x10000000,
    xfam=0xE7,
    mrtd=b"\x11" * 48,
    mrconfigid=b"\x22" * 48,
    mrowner=b"\x33" * 48,
    mrownerconfig=b"\x44" * 48,
    rtmr=(b"\xa0" * 48, b"\xa1" * 48, b"\xa2" * 48, b"\xa3" * 48),
    num_l2_vms=1,
    num_vcpus=1,
)


@pytest.fixture(scope="package")
def sim() -> SimulatedAttestation:
    return SimulatedAttestation.create(b"verifier tests")


@pytest.fixture(scope="package")
def quote(sim: SimulatedAttestation) -> bytes:
    return sim.quoting.quote(sim.reports.tdreport(TD, REPORTDATA))
