"""L1 reading code on an L2's behalf: a remembered walk gives exactly what a new walk would, and
any change to the L2's paging entries, its CR3 or its aliases is seen at the next exit."""

from __future__ import annotations

import pytest

from svsm.guestmem import GuestMemory, GuestMemoryError
from svsm.l2guest import L2Guest
from tdxdefs.attributes import GpaAttr
from tdxdefs.tdcall import PAGE_SIZE
from tdxdefs.x86 import CR0_PG
from tests.support.svsm_td import RAM0, RAM_SIZE, Paravisor

PRESENT_WRITABLE = 0x3
LARGE = 0x80
CODE = b"\x8b\x07" + b"\x90" * 14  # mov eax, dword ptr [rdi]; nops
TABLES = RAM0 + 0x10000  # the L2's own PML4, PDPT and PD, in its R|W RAM
PML4, PDPT, PD = TABLES, TABLES + PAGE_SIZE, TABLES + 2 * PAGE_SIZE


def entry(value: int) -> bytes:
    return value.to_bytes(8, "little")


@pytest.fixture
def setup() -> tuple[Paravisor, L2Guest, GuestMemory]:
    """One L2 whose own tables map linear 0..2 MiB onto its RAM (code page first)."""
    pv = Paravisor(1)
    (guest,) = pv.guests({1: CODE})
    pv.memory.raw_write(PML4, entry(PDPT | PRESENT_WRITABLE))
    pv.memory.raw_write(PDPT, entry(PD | PRESENT_WRITABLE))
    pv.memory.raw_write(PD, entry(RAM0 | PRESENT_WRITABLE | LARGE))
    return pv, guest, guest.guest_memory


def test_a_remembered_walk_is_used_only_while_it_holds(
    setup: tuple[Paravisor, L2Guest, GuestMemory],
) -> None:
    _pv, _guest, mem = setup
    assert mem.fetch_instruction(0x10, CR0_PG, PML4) == CODE[0x10:] + bytes(0x10 + 15 - len(CODE))
    walks = mem.walks
    assert mem.code_gpa(0x20, CR0_PG, PML4) == RAM0 + 0x20
    assert mem.walks == walks  # same CR3, same entries, same aliases: no new walk
    assert mem.code_gpa(RAM0 + 0x20, 0, PML4) == RAM0 + 0x20  # paging off: linear = physical


def test_an_entry_the_l2_rewrites_is_seen_at_once(
    setup: tuple[Paravisor, L2Guest, GuestMemory],
) -> None:
    pv, _guest, mem = setup
    assert mem.code_gpa(0x0, CR0_PG, PML4) == RAM0
    neighbour = RAM0 + RAM_SIZE  # not this L2's
    pv.memory.raw_write(PD, entry(neighbour | PRESENT_WRITABLE | LARGE))
    with pytest.raises(GuestMemoryError, match=f"code at GPA {neighbour:#x}"):
        mem.code_gpa(0x0, CR0_PG, PML4)
    pv.memory.raw_write(PD, entry(0))
    with pytest.raises(GuestMemoryError, match="not mapped"):
        mem.code_gpa(0x0, CR0_PG, PML4)
    pv.memory.raw_write(PD, entry(RAM0 | PRESENT_WRITABLE | LARGE))
    assert mem.code_gpa(0x0, CR0_PG, PML4) == RAM0


def test_a_revoked_alias_or_another_cr3_is_seen(
    setup: tuple[Paravisor, L2Guest, GuestMemory],
) -> None:
    pv, guest, mem = setup
    l1_tables = guest.vcpu.vmcs_read(0x6802)  # GUEST_CR3: L1's identity map for this L2
    assert mem.code_gpa(0x30, CR0_PG, PML4) == RAM0 + 0x30
    assert mem.code_gpa(RAM0, CR0_PG, l1_tables) == RAM0  # another CR3, another walk
    pv.aliases.revoke(1, RAM0, PAGE_SIZE)
    for cr3, gla in ((PML4, 0x0), (l1_tables, RAM0)):
        with pytest.raises(GuestMemoryError, match=f"code at GPA {RAM0:#x} is not"):
            mem.code_gpa(gla, CR0_PG, cr3)
    pv.aliases.grant(1, RAM0, PAGE_SIZE, GpaAttr.R)  # readable, not executable
    with pytest.raises(GuestMemoryError, match="is not XS"):
        mem.code_gpa(0x0, CR0_PG, PML4)


def test_tables_the_l2_may_not_read_are_refused(
    setup: tuple[Paravisor, L2Guest, GuestMemory],
) -> None:
    pv, _guest, mem = setup
    assert mem.code_gpa(0x0, CR0_PG, PML4) == RAM0
    pv.aliases.revoke(1, PD, PAGE_SIZE)  # the PD page no longer readable by the L2
    with pytest.raises(GuestMemoryError, match=f"page-table entry at GPA {PD:#x}"):
        mem.code_gpa(0x0, CR0_PG, PML4)


def test_an_instruction_at_a_page_end_continues_only_onto_an_executable_page(
    setup: tuple[Paravisor, L2Guest, GuestMemory],
) -> None:
    pv, _guest, mem = setup
    pv.memory.raw_write(RAM0 + PAGE_SIZE - 15, bytes(range(1, 16)))
    pv.memory.raw_write(RAM0 + PAGE_SIZE, b"\xcc" * 16)
    assert mem.fetch_instruction(PAGE_SIZE - 15, CR0_PG, PML4) == bytes(range(1, 16))
    # The next page is the L2's R|W data: the copy stops at the page end (a truncated decode).
    assert mem.fetch_instruction(PAGE_SIZE - 14, CR0_PG, PML4) == bytes(range(2, 16))
    pv.aliases.revoke(1, RAM0 + PAGE_SIZE, PAGE_SIZE)
    pv.aliases.grant(1, RAM0 + PAGE_SIZE, PAGE_SIZE, GpaAttr.R | GpaAttr.XS)
    assert mem.fetch_instruction(PAGE_SIZE - 14, CR0_PG, PML4) == bytes(range(2, 16)) + b"\xcc"
    assert mem.fetch_instruction(PAGE_SIZE - 1, CR0_PG, PML4) == b"\x0f" + b"\xcc" * 14
