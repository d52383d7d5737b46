"""L1's private-page allocator: pages of a pool L1 accepts at boot, handed out to L1's own uses
(the TDREPORT and REPORTDATA buffers, the RTMR digest, each L2's page tables and support pages).

An allocation is L1's alone unless its owner says an L2 may see it (an L2's page tables,
read-only to it, and its CRB buffer): `l1_regions` lists the L1-only allocations and every free
run, which boot reserves in the alias manager, so no alias can reach them. Pages come back
zeroed: accepted pages are zero (Intel TDX Module ABI Specification, TDG.MEM.PAGE.ACCEPT
initialises the page), and a freed run is scrubbed before it can be handed out again, so nothing
one owner wrote reaches the next.
"""

from __future__ import annotations

from dataclasses import dataclass

from svsm.errors import SvsmError
from svsm.memory import Memory
from tdxdefs.tdcall import PAGE_SIZE


class PageAllocationError(SvsmError):
    """An allocation the pool cannot satisfy, or a free of pages it never handed out."""


@dataclass(frozen=True)
class Allocation:
    """A run of pages and who holds it (named in `invoke run --show-aliases`)."""

    gpa: int
    pages: int
    owner: str
    l1_only: bool = True

    @property
    def end(self) -> int:
        return self.gpa + self.pages * PAGE_SIZE


class PageAllocator:
    """First-fit allocation of contiguous 4 KiB pages from [base, base + size)."""

    def __init__(self, memory: Memory, base: int, size: int) -> None:
        if base % PAGE_SIZE or size % PAGE_SIZE or size <= 0:
            raise PageAllocationError(f"pool at {base:#x} size {size:#x}: not whole 4K pages")
        self._memory = memory
        self.base, self.size = base, size
        self._free: list[tuple[int, int]] = [(base, base + size)]  # sorted, disjoint, merged
        self._used: dict[int, Allocation] = {}

    def accept(self) -> None:
        """Accept the whole pool (TDG.MEM.PAGE.ACCEPT, 2M where aligned)."""
        self._memory.accept(self.base, self.size)

    def allocate(
        self, pages: int, owner: str, *, align: int = PAGE_SIZE, l1_only: bool = True
    ) -> int:
        """The GPA of `pages` contiguous zeroed pages aligned to `align` bytes; `l1_only=False`
        when parts of them will be aliased into an L2 (the owner reserves the rest itself)."""
        if pages <= 0 or align <= 0 or align % PAGE_SIZE:
            raise PageAllocationError(f"{owner}: {pages} page(s) aligned to {align:#x}: invalid")
        want = pages * PAGE_SIZE
        for index, (lo, hi) in enumerate(self._free):
            start = -(-lo // align) * align
            if start + want > hi:
                continue
            pieces = [(a, b) for a, b in ((lo, start), (start + want, hi)) if b > a]
            self._free[index : index + 1] = pieces
            self._used[start] = Allocation(start, pages, owner, l1_only)
            return start
        raise PageAllocationError(
            f"{owner}: no run of {pages} free page(s) aligned to {align:#x} in the pool at "
            f"{self.base:#x} ({self.free_pages} of {self.size // PAGE_SIZE} pages free)"
        )

    def free(self, gpa: int) -> None:
        """Give back the run that starts at `gpa`, scrubbed before anyone else can have it."""
        allocation = self._used.pop(gpa, None)
        if allocation is None:
            raise PageAllocationError(f"free of GPA {gpa:#x}: no allocation starts there")
        self._memory.write(gpa, bytes(allocation.pages * PAGE_SIZE))
        self._free.append((gpa, allocation.end))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in self._free:
            if merged and merged[-1][1] == lo:
                merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        self._free = merged

    @property
    def free_pages(self) -> int:
        return sum(hi - lo for lo, hi in self._free) // PAGE_SIZE

    @property
    def allocations(self) -> tuple[Allocation, ...]:
        """What is handed out, in address order."""
        return tuple(self._used[gpa] for gpa in sorted(self._used))

    def l1_regions(self) -> list[tuple[int, int, str]]:
        """(GPA, size, what) of every L1-only allocation and free run: no L2 alias may reach
        them."""
        regions = [(a.gpa, a.pages * PAGE_SIZE, a.owner) for a in self.allocations if a.l1_only]
        regions += [(lo, hi - lo, "L1 page pool (free)") for lo, hi in self._free]
        return sorted(regions)

    def owner_of(self, gpa: int) -> str | None:
        """Who holds the page at `gpa`, or None when it is free or outside the pool."""
        for allocation in self._used.values():
            if allocation.gpa <= gpa < allocation.end:
                return allocation.owner
        return None
