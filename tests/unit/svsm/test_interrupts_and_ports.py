"""The L2's virtual APIC as L1 keeps it, and its console: bounded whatever the L2 does."""

from __future__ import annotations

import pytest

from svsm.interrupts import InterruptError, VirtualApic
from svsm.ports import MAX_LINE, L2Console
from svsm.vcpu import GuestState
from tdxdefs.x86 import VAPIC_IRR
from tests.support.svsm_td import Td

VAPIC = 0x200000


@pytest.fixture
def apic(td: Td) -> VirtualApic:
    td.memory.accept(VAPIC, 0x200000)
    return VirtualApic(td.memory, VAPIC)


def test_post_sets_irr_and_raises_rvi(apic: VirtualApic, td: Td) -> None:
    state = GuestState()
    assert apic.post(0x41, state) and state.rvi == 0x41
    assert apic.post(0x30, state) and state.rvi == 0x41  # RVI is the highest pending
    assert td.memory.read(VAPIC + VAPIC_IRR + 0x20, 4) == (1 << 1).to_bytes(4, "little")
    assert apic.pending(0x41) and apic.pending(0x30) and not apic.pending(0x42)
    assert apic.highest(VAPIC_IRR) == 0x41


def test_a_flood_is_coalesced(apic: VirtualApic) -> None:
    state = GuestState()
    results = [apic.post(0x50, state) for _ in range(1000)]
    assert results.count(True) == 1 and apic.coalesced == 999 and apic.posted == 1


@pytest.mark.parametrize("vector", [0, 13, 31, 256, -1])
def test_exception_vectors_cannot_be_posted(apic: VirtualApic, vector: int) -> None:
    with pytest.raises(InterruptError, match="not an external interrupt vector"):
        apic.post(vector, GuestState())


def test_console_lines_are_bounded_and_printable() -> None:
    lines: list[str] = []
    console = L2Console(2, lines.append)
    for byte in b"hello\x1b[31m\n":
        console.write(byte)
    for _ in range(3 * MAX_LINE):
        console.write(ord("x"))
    console.flush()
    assert lines[0] == "L2[2]| hello?[31m"
    assert [len(line) for line in lines[1:]] == [len("L2[2]| ") + MAX_LINE] * 3
