"""L2's own 4-level page walk (Intel SDM Vol. 3, chapter "Paging", 4-level paging with 1 GiB
and 2 MiB pages).

The walk reads each paging entry through the EPT side (the L2 VM's alias, as unicorn
protections per TD page), so a table on a page L2 may not read stops the walk instead of
reading L1 memory.
Entry permission bits (R/W, U/S, NX) and accessed/dirty bits are not modelled: presence only.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Sequence
from typing import NamedTuple

from tdxdefs.tdcall import PAGE_SHIFT, PAGE_SIZE

CR0_PG = 1 << 31
PTE_PRESENT = 1
PTE_LARGE = 1 << 7  # PS: the entry maps a page
PTE_ADDR = 0x000FFFFFFFFFF000
PT_INDEX_MASK = 0x1FF
PT_LEVEL_SHIFTS = (39, 30, 21, 12)  # PML4, PDPT, PD, PT
PT_ENTRY_SIZE = 8
PAGING_ENTRY = struct.Struct("<Q")
LARGE_PAGE_DEPTHS = (1, 2)  # PS in a PDPTE (1 GiB) or PDE (2 MiB)
PF_WRITE = 1 << 1  # #PF error code bits
PF_FETCH = 1 << 4


class Translation(NamedTuple):
    """The result of a walk: the GPA, or why there is none (a tuple: made on every TLB fill)."""

    gpa: int | None = None
    unreadable_entry: int | None = None  # GPA of a paging entry the EPT does not let L2 read

    @property
    def not_present(self) -> bool:
        """A non-present entry ended the walk (a #PF for L2)."""
        return self.gpa is None and self.unreadable_entry is None


NOT_PRESENT = Translation()
# (shift, may map a page) per level: PML4, PDPT (1 GiB pages), PD (2 MiB pages), PT
LEVELS = tuple((shift, depth in LARGE_PAGE_DEPTHS) for depth, shift in enumerate(PT_LEVEL_SHIFTS))


def walker(
    ranges: Sequence[tuple[int, int, int]],
    memory: mmap.mmap | bytearray,
    prot: bytearray,
    readable: int,
) -> Callable[[int, int, int], Translation]:
    """`walk(gla, cr0, cr3)`: translate `gla`, identity while CR0.PG is clear. Each paging
    entry is read from `memory` at its GPA's offset, `ranges` being (first GPA, end GPA,
    offset - GPA) per RAM region, through the EPT: an entry outside every range, or on a page
    whose `prot` byte lacks the `readable` bit, stops the walk (`unreadable_entry`).

    One closure with the reads inline: a walk runs on every TLB fill and twice per event
    delivered, and a call per entry read cost as much as the rest of the walk."""
    unpack = PAGING_ENTRY.unpack_from
    # the lowest region (where L2's page tables are) is tried first, without a loop
    (low, high, delta), rest = (ranges[0], tuple(ranges[1:])) if ranges else ((0, 0, 0), ())

    def walk(gla: int, cr0: int, cr3: int) -> Translation:
        if not cr0 & CR0_PG:
            return Translation(gla)
        table = cr3 & PTE_ADDR
        for shift, may_map in LEVELS:
            entry_gpa = table + ((gla >> shift) & PT_INDEX_MASK) * PT_ENTRY_SIZE
            if low <= entry_gpa < high:
                offset = entry_gpa + delta  # 8-aligned: the entry is inside the page
            else:
                for other_low, other_high, other_delta in rest:
                    if other_low <= entry_gpa < other_high:
                        offset = entry_gpa + other_delta
                        break
                else:  # not RAM (a shared GPA lies above every region)
                    return Translation(None, entry_gpa)
            if not prot[offset >> PAGE_SHIFT] & readable:
                return Translation(None, entry_gpa)
            (entry,) = unpack(memory, offset)
            if not entry & PTE_PRESENT:
                return NOT_PRESENT
            if may_map and entry & PTE_LARGE:
                page_mask = (1 << shift) - 1
                return Translation((entry & PTE_ADDR & ~page_mask) | (gla & page_mask))
            table = entry & PTE_ADDR
        return Translation(table | (gla & (PAGE_SIZE - 1)))

    return walk


def page_fault_error(write: bool, fetch: bool) -> int:
    """The #PF error code of a non-present fault (P clear)."""
    return (PF_WRITE if write else 0) | (PF_FETCH if fetch else 0)
