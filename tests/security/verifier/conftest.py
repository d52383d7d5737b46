"""Fixtures: a seeded simulated platform, one of its quotes, and the quote's region offsets."""

from __future__ import annotations

import pytest

from tdxsim.attestation.quoting import SimulatedAttestation
from tdxsim.module.attestation_interface import TdInfo

REPORTDATA = b"\x5a" * 64
TD = TdInfo(
    attributes=0,
    xfam=0xE7,
    mrtd=b"\x11" * 48,
    mrconfigid=bytes(48),
    mrowner=bytes(48),
    mrownerconfig=bytes(48),
    rtmr=(b"\xa0" * 48, b"\xa1" * 48, b"\xa2" * 48, b"\xa3" * 48),
    num_l2_vms=1,
    num_vcpus=1,
)


@pytest.fixture(scope="package")
def sim() -> SimulatedAttestation:
    return SimulatedAttestation.create(b"security tests")


@pytest.fixture(scope="package")
def quote(sim: SimulatedAttestation) -> bytes:
    return sim.quoting.quote(sim.reports.tdreport(TD, REPORTDATA))
