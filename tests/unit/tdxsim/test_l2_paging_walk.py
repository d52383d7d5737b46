"""L2's 4-level page walk (tdxsim.l2.paging.walker, Intel SDM Vol. 3, chapter "Paging"): 4 KiB,
2 MiB and 1 GiB mappings, a non-present entry, and the EPT side of every paging-entry read (a
table on a page L2 may not read, or outside TD RAM, stops the walk at that entry's GPA)."""

from __future__ import annotations

import struct

from tdxsim.l2.paging import CR0_PG, NOT_PRESENT, Translation, walker

PAGE = 0x1000
READABLE = 1
LOW_END = 0x10000  # the first region: GPAs [0, LOW_END) at memfd offsets [0, LOW_END)
HIGH_GPA = 0x100000  # the second region: GPAs [HIGH_GPA, +2 pages) after the first in the memfd
RANGES = ((0, LOW_END, 0), (HIGH_GPA, HIGH_GPA + 2 * PAGE, LOW_END - HIGH_GPA))
PRESENT_RW = 0x3
LARGE = 0x80
GLA = (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x123


class Tables:
    """TD memory holding page tables, and the per-page readable bits the walk checks."""

    def __init__(self) -> None:
        self.memory = bytearray(LOW_END + 2 * PAGE)
        self.prot = bytearray([READABLE]) * (len(self.memory) // PAGE)
        self.walk = walker(RANGES, self.memory, self.prot, READABLE)

    def entry(self, table_gpa: int, index: int, value: int) -> None:
        delta = next(delta for low, high, delta in RANGES if low <= table_gpa < high)
        struct.pack_into("<Q", self.memory, table_gpa + delta + 8 * index, value)


def four_levels(t: Tables, pml4: int = 0x1000) -> None:
    t.entry(pml4, 3, 0x2000 | PRESENT_RW)
    t.entry(0x2000, 5, 0x3000 | PRESENT_RW)
    t.entry(0x3000, 7, 0x4000 | PRESENT_RW)
    t.entry(0x4000, 9, 0x7000 | PRESENT_RW)


def test_paging_off_is_identity() -> None:
    assert Tables().walk(GLA, 0, 0x1000) == Translation(GLA)


def test_four_levels_map_a_4k_page() -> None:
    t = Tables()
    four_levels(t)
    assert t.walk(GLA, CR0_PG, 0x1000) == Translation(0x7123)


def test_large_entries_map_2m_and_1g_pages() -> None:
    t = Tables()
    four_levels(t)
    t.entry(0x3000, 7, 0x40_0000 | PRESENT_RW | LARGE)
    assert t.walk(GLA, CR0_PG, 0x1000).gpa == 0x40_0000 | (GLA & 0x1F_FFFF)
    t.entry(0x2000, 5, 0x8000_0000 | PRESENT_RW | LARGE)
    assert t.walk(GLA, CR0_PG, 0x1000).gpa == 0x8000_0000 | (GLA & 0x3FFF_FFFF)


def test_large_bit_in_a_pml4_entry_is_not_a_mapping() -> None:
    t = Tables()
    four_levels(t)
    t.entry(0x1000, 3, 0x2000 | PRESENT_RW | LARGE)  # PS is reserved in a PML4E: walked on
    assert t.walk(GLA, CR0_PG, 0x1000) == Translation(0x7123)


def test_non_present_entry_ends_the_walk() -> None:
    t = Tables()
    four_levels(t)
    t.entry(0x3000, 7, 0x4000)
    result = t.walk(GLA, CR0_PG, 0x1000)
    assert result == NOT_PRESENT and result.not_present


def test_table_on_a_page_l2_may_not_read_stops_at_that_entry() -> None:
    t = Tables()
    four_levels(t)
    t.prot[0x3000 // PAGE] = 0  # the EPT refuses L2 reads of the page directory
    result = t.walk(GLA, CR0_PG, 0x1000)
    assert result == Translation(None, 0x3000 + 8 * 7) and not result.not_present


def test_tables_in_a_second_region_are_read_through_its_offset() -> None:
    t = Tables()
    four_levels(t, pml4=HIGH_GPA)
    assert t.walk(GLA, CR0_PG, HIGH_GPA) == Translation(0x7123)
    t.prot[LOW_END // PAGE] = 0  # the second region's first page (its PML4) in the memfd
    assert t.walk(GLA, CR0_PG, HIGH_GPA) == Translation(None, HIGH_GPA + 8 * 3)


def test_table_outside_td_ram_stops_the_walk() -> None:
    t = Tables()
    four_levels(t)
    t.entry(0x1000, 3, 0x20_0000 | PRESENT_RW)  # a PDPT in no region
    assert t.walk(GLA, CR0_PG, 0x1000) == Translation(None, 0x20_0000 + 8 * 5)
