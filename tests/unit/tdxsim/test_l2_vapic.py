"""The L2 virtual APIC on a real TD memory file: highest pending vector, acknowledge, PPR, virtual
EOI and its exit bitmap (Intel SDM Vol. 3, "APIC Virtualization and Virtual Interrupts").
Register offsets are spelled out here."""

from __future__ import annotations

import pytest

from tdxdefs.vmcs import Vmcs
from tdxsim.l2.vapic import VirtualApic
from tdxsim.testing import TdHarness

IRR, ISR, TPR, PPR = 0x200, 0x100, 0x80, 0xA0
VIRTUAL_INTERRUPT_DELIVERY = 1 << 9


@pytest.fixture
def written() -> list[tuple[int, int]]:
    """What the virtual APIC reported writing, as (GPA, length)."""
    return []


@pytest.fixture
def apic(h: TdHarness, written: list[tuple[int, int]]) -> VirtualApic:
    h.l2(vm=1)
    vmcs = h.module.td.vcpus[0].vmcs[1]
    return VirtualApic(h.memory, vmcs, lambda gpa, length: written.append((gpa, length)))


def set_vectors(apic: VirtualApic, base: int, *vectors: int) -> None:
    for vector in vectors:
        apic.bit(base, vector, True)


def read32(apic: VirtualApic, offset: int) -> int:
    page = apic.page()
    assert page is not None
    return int.from_bytes(apic.memory.read(page + offset, 4), "little")


def test_highest_vector_in_irr(apic: VirtualApic) -> None:
    assert apic.highest(IRR) == 0
    set_vectors(apic, IRR, 0x41, 0x51, 0x22)
    assert apic.highest(IRR) == 0x51
    assert read32(apic, IRR + 2 * 16) == 1 << (0x41 % 32) | 1 << (0x51 % 32)  # vectors 40h-5Fh


def test_acknowledge_moves_the_vector_from_irr_to_isr(
    apic: VirtualApic, written: list[tuple[int, int]]
) -> None:
    set_vectors(apic, IRR, 0x41, 0x51)
    apic.rvi = 0x51
    written.clear()
    assert apic.acknowledge() == 0x51
    page = apic.page()
    assert page is not None and written == [(page, 0x1000)]  # code-page tracking is told
    assert not apic.bit(IRR, 0x51) and apic.bit(ISR, 0x51)
    assert (apic.svi, apic.rvi) == (0x51, 0x41)
    assert read32(apic, PPR) == 0x50  # the class of the vector in service


@pytest.mark.parametrize(
    ("tpr", "svi", "ppr"), [(0x60, 0x51, 0x60), (0x30, 0x51, 0x50), (0x5F, 0x51, 0x5F)]
)
def test_ppr_is_the_higher_of_tpr_and_the_in_service_class(
    apic: VirtualApic, tpr: int, svi: int, ppr: int
) -> None:
    apic.svi = svi
    apic.write_tpr(tpr)
    assert read32(apic, TPR) == tpr and read32(apic, PPR) == ppr


def test_virtual_eoi_and_its_exit_bitmap(apic: VirtualApic) -> None:
    set_vectors(apic, ISR, 0x31, 0x51)
    apic.svi = 0x51
    assert apic.eoi() == (0x51, False)
    assert not apic.bit(ISR, 0x51) and apic.svi == 0x31
    assert read32(apic, PPR) == 0x30
    apic.vmcs.set(Vmcs.EOI_EXIT_BITMAP0, 1 << 0x31)  # vectors 0-63
    assert apic.eoi() == (0x31, True)
    assert apic.svi == 0 and read32(apic, PPR) == 0


def test_interrupt_pending_needs_delivery_on_and_a_higher_class(apic: VirtualApic) -> None:
    apic.rvi = 0x61
    apic.write_tpr(0x50)
    assert not apic.interrupt_pending()  # virtual-interrupt delivery off
    apic.vmcs.set(Vmcs.SECONDARY_CONTROLS, VIRTUAL_INTERRUPT_DELIVERY)
    assert apic.interrupt_pending()
    apic.rvi = 0x55  # same class as PPR: masked
    assert not apic.interrupt_pending()
    apic.rvi = 0
    assert not apic.interrupt_pending()


def test_no_page_no_state(apic: VirtualApic) -> None:
    apic.vmcs.set(Vmcs.VIRTUAL_APIC_PAGE_ADDR, 0x300000)  # pending, not mapped
    assert apic.page() is None
    assert apic.highest(IRR) == 0 and not apic.bit(IRR, 0x41, True)


def test_the_apic_follows_the_vmcs_to_another_page(h: TdHarness, apic: VirtualApic) -> None:
    set_vectors(apic, IRR, 0x41)
    assert apic.highest(IRR) == 0x41
    other = h.scratch_page()
    apic.vmcs.set(Vmcs.VIRTUAL_APIC_PAGE_ADDR, other)
    assert apic.page() == other
    assert apic.highest(IRR) == 0  # the new page holds no request
    set_vectors(apic, IRR, 0x22)
    assert read32(apic, IRR + 16) == 1 << (0x22 % 32)  # vectors 20h-3Fh, on the new page


def test_a_page_no_longer_mapped_is_no_apic(h: TdHarness, apic: VirtualApic) -> None:
    set_vectors(apic, IRR, 0x41)
    page = apic.page()
    assert page is not None
    h.module.host_block(page)
    assert apic.page() is None and apic.highest(IRR) == 0
    assert not apic.bit(IRR, 0x41, True)  # nothing is read or written while it is blocked
    h.module.host_unblock(page)
    assert apic.highest(IRR) == 0x41
