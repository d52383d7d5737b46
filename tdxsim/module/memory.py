"""TD RAM as one shared memory object (a memfd) plus the L1 SEPT state of every private page.

A host process can map the same memfd (`TdMemory.fd`). GPAs with the shared bit set
(bit GPAW-1) alias the same backing page as their private twin; which view is legal is the
module's business, not this object's. Page state follows the L1 Secure EPT: not present,
pending (added by the host, not yet accepted), mapped (accepted or PAGE.ADDed), blocked.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from tdxdefs.tdcall import GPAW_48, GPAW_52, LEVEL_4K, PAGE_SHIFT, PAGE_SIZE
from tdxsim.errors import TdxsimError

PAGES_PER_2M = 512
# Buffers one pwritev may take (POSIX IOV_MAX); Linux gives 1024.
IOV_MAX = os.sysconf("SC_IOV_MAX")


class PageState(IntEnum):
    """L1 SEPT state of one 4 KiB private page."""

    NOT_PRESENT = 0
    PENDING = 1
    MAPPED = 2
    BLOCKED = 3


class TdMemoryError(TdxsimError):
    """Base class for TD memory access errors."""


class GpaNotBacked(TdMemoryError):
    """The GPA lies outside every RAM region of the TD."""

    def __init__(self, gpa: int) -> None:
        super().__init__(f"GPA {gpa:#x} is not backed by any TD RAM region")
        self.gpa = gpa


@dataclass(frozen=True)
class Region:
    """One contiguous GPA range backed by memfd bytes [offset, offset+size)."""

    gpa: int
    size: int
    offset: int
    end: int = field(init=False, repr=False, compare=False)  # gpa + size, looked up per access

    def __post_init__(self) -> None:
        object.__setattr__(self, "end", self.gpa + self.size)


class TdMemory:
    """The TD's RAM: memfd-backed regions, page states and mapping levels."""

    def __init__(self, regions: list[tuple[int, int]], gpaw: int = GPAW_48) -> None:
        if gpaw not in (GPAW_48, GPAW_52):
            raise ValueError(f"GPAW must be 48 or 52, not {gpaw}")
        spans = sorted(regions)
        out: list[Region] = []
        offset = 0
        for gpa, size in spans:
            if gpa % PAGE_SIZE or size % PAGE_SIZE or size <= 0:
                raise ValueError(f"region {gpa:#x}+{size:#x} is not page aligned")
            if out and gpa < out[-1].end:
                raise ValueError(f"region {gpa:#x} overlaps region {out[-1].gpa:#x}")
            if gpa + size > (1 << (gpaw - 1)):
                raise ValueError(f"region {gpa:#x}+{size:#x} crosses the shared bit of GPAW {gpaw}")
            out.append(Region(gpa, size, offset))
            offset += size
        self.gpaw = gpaw
        self.shared_bit = 1 << (gpaw - 1)
        self.regions = out
        self._starts = [r.gpa for r in out]
        self._private_mask = ~self.shared_bit
        # the lowest region (low memory: code, page tables, most data) is tried first, alone
        self._low = out[0].gpa if out else 0
        self._low_end = out[0].end if out else 0
        self._low_region: Region | None = out[0] if out else None
        # the region another lookup found last (an MMIO page L2 keeps touching): regions never
        # change, so this only saves the search
        self._last_region: Region | None = self._low_region
        self.size = offset
        self.fd = os.memfd_create("tdxsim-td-ram", 0)
        os.ftruncate(self.fd, max(offset, PAGE_SIZE))
        self.buf = mmap.mmap(self.fd, max(offset, PAGE_SIZE))
        self.view = memoryview(self.buf)
        self._anchor = ctypes.c_char.from_buffer(self.buf)
        self.host_address = ctypes.addressof(self._anchor)
        npages = offset // PAGE_SIZE
        self.state = bytearray(npages)
        self.level = bytearray(npages)
        self.shared = bytearray(npages)  # 1 = host mapped the shared-GPA view (after MapGPA)
        self._listeners: list[Callable[[int, int], None]] = []

    # --- address arithmetic ---------------------------------------------------------------
    def is_shared(self, gpa: int) -> bool:
        """True if the GPA has the shared bit set."""
        return bool(gpa & self.shared_bit)

    def in_gpaw(self, gpa: int) -> bool:
        """True if the GPA fits in GPAW bits."""
        return 0 <= gpa < (1 << self.gpaw)

    def region_of(self, gpa: int) -> Region | None:
        """The region holding the private view of `gpa`, if any (the lowest region first,
        without a search: it holds almost every access)."""
        gpa &= self._private_mask
        if self._low <= gpa < self._low_end:
            return self._low_region
        last = self._last_region
        if last is not None and last.gpa <= gpa < last.end:
            return last
        if len(self.regions) == 1:
            return None
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i < 0:
            return None
        r = self.regions[i]
        if gpa >= r.end:
            return None
        self._last_region = r
        return r

    def page_index(self, gpa: int) -> int | None:
        """Global page number of the page holding `gpa` (shared bit ignored), or None."""
        private = gpa & self._private_mask
        if self._low <= private < self._low_end:  # the lowest region starts the memfd
            return (private - self._low) >> PAGE_SHIFT
        r = self.region_of(private)
        if r is None:
            return None
        return (r.offset + (private - r.gpa)) >> PAGE_SHIFT

    def offset_of(self, gpa: int) -> int:
        """memfd offset of `gpa`; raises GpaNotBacked outside RAM."""
        r = self.region_of(gpa)
        if r is None:
            raise GpaNotBacked(gpa)
        return r.offset + ((gpa & self._private_mask) - r.gpa)

    def page_gpa(self, index: int) -> int:
        """The private GPA of global page number `index`."""
        off = index << PAGE_SHIFT
        if 0 <= off < self._low_end - self._low:  # the lowest region starts the memfd
            return self._low + off
        last = self._last_region
        if last is not None and last.offset <= off < last.offset + last.size:
            return last.gpa + off - last.offset
        for r in self.regions:
            if r.offset <= off < r.offset + r.size:
                return r.gpa + off - r.offset
        raise IndexError(f"page index {index} outside TD RAM")

    # --- SEPT state -------------------------------------------------------------------------
    def page_state(self, gpa: int) -> PageState:
        """L1 SEPT state of the page holding `gpa`; NOT_PRESENT outside RAM."""
        i = self.page_index(gpa)
        return PageState.NOT_PRESENT if i is None else PageState(self.state[i])

    def page_level(self, gpa: int) -> int:
        """Mapping level (0 = 4K, 1 = 2M) of the page holding `gpa`."""
        i = self.page_index(gpa)
        return LEVEL_4K if i is None else self.level[i]

    def set_state(self, gpa: int, state: PageState, level: int = LEVEL_4K) -> None:
        """Set one page's SEPT state and mapping level, and tell the listeners."""
        i = self.page_index(gpa)
        if i is None:
            raise GpaNotBacked(gpa)
        self.state[i] = state
        self.level[i] = level
        for listener in self._listeners:
            listener(i, 1)

    def set_range_state(self, gpa: int, npages: int, state: PageState, level: int) -> None:
        """Set the state of `npages` consecutive pages (one region) and tell the listeners once."""
        first = self.page_index(gpa)
        last = self.page_index(gpa + (npages - 1) * PAGE_SIZE)
        if first is None or last is None or last - first != npages - 1:
            raise GpaNotBacked(gpa)
        self.state[first : first + npages] = bytes([state]) * npages
        self.level[first : first + npages] = bytes([level]) * npages
        for listener in self._listeners:
            listener(first, npages)

    def set_shared(self, gpa: int, npages: int, mapped: bool) -> None:
        """Map or unmap the shared-GPA view of `npages` pages in the host's shared EPT."""
        first = self.page_index(gpa)
        last = self.page_index(gpa + (npages - 1) * PAGE_SIZE)
        if first is None or last is None or last - first != npages - 1:
            raise GpaNotBacked(gpa)
        self.shared[first : first + npages] = bytes([int(mapped)]) * npages
        for listener in self._listeners:
            listener(first, npages)

    def on_change(self, listener: Callable[[int, int], None]) -> None:
        """Register `listener(first_page_index, count)` for SEPT state changes."""
        self._listeners.append(listener)

    def huge_block(self, gpa: int) -> tuple[int, int] | None:
        """(first page index, 2M GPA base) if the whole 2M block around `gpa` is RAM."""
        base = gpa & ~(PAGES_PER_2M * PAGE_SIZE - 1) & ~self.shared_bit
        r = self.region_of(base)
        if r is None or base + PAGES_PER_2M * PAGE_SIZE > r.end:
            return None
        return (r.offset + base - r.gpa) >> PAGE_SHIFT, base

    # --- raw byte access (no policy: callers check state first) -----------------------------
    def _span(self, gpa: int, length: int) -> int:
        """memfd offset of [gpa, gpa+length), which must lie inside one region."""
        r = self.region_of(gpa)
        if r is None:
            raise GpaNotBacked(gpa)
        private = gpa & self._private_mask
        if private + length > r.end:
            raise GpaNotBacked(r.end)
        return r.offset + private - r.gpa

    def read(self, gpa: int, length: int) -> bytes:
        """Raw bytes at a GPA range inside one region."""
        off = self._span(gpa, length)
        return bytes(self.view[off : off + length])

    def write(self, gpa: int, data: bytes) -> None:
        """Raw write at a GPA range inside one region."""
        off = self._span(gpa, len(data))
        self.view[off : off + len(data)] = data

    def write_pages(self, gpa: int, pages: Sequence[bytes]) -> None:
        """Write whole consecutive 4 KiB pages from `gpa` (inside one region) through the memfd.

        One pwritev per IOV_MAX pages fills fresh memfd pages in the kernel, without the page
        fault per page that a first write through the mapping takes; the mapping sees the bytes.
        """
        if not pages:
            return
        length = len(pages) * PAGE_SIZE
        off = self._span(gpa, length)
        if sum(map(len, pages)) != length:
            raise ValueError(f"write_pages at GPA {gpa:#x}: every page must be {PAGE_SIZE} bytes")
        for start in range(0, len(pages), IOV_MAX):
            batch = pages[start : start + IOV_MAX]
            at, size = off + start * PAGE_SIZE, len(batch) * PAGE_SIZE
            if os.pwritev(self.fd, batch, at) != size:  # a short write: redo it through the map
                self.view[at : at + size] = b"".join(batch)

    def zero_page(self, gpa: int) -> None:
        """Clear one 4 KiB page (ACCEPT initializes the page to zero)."""
        off = self.offset_of(gpa & ~(PAGE_SIZE - 1))
        self.view[off : off + PAGE_SIZE] = bytes(PAGE_SIZE)

    def close(self) -> None:
        """Release the mapping and the memfd."""
        del self._anchor
        self.view.release()
        self.buf.close()
        os.close(self.fd)
