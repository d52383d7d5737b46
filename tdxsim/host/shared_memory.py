"""The host's view of TD memory: only GPAs with the shared bit that the host mapped (after MapGPA).

The host maps the TD's memfd itself, but every access goes through a GPA check: a private GPA, or
a shared GPA the TD has not converted, raises `HostAccessDenied` naming the GPA. Private memory is
the module's, and on hardware the host cannot read it (it is encrypted with the TD's key).
"""

from __future__ import annotations

import bisect
import mmap
from dataclasses import dataclass

from tdxdefs.tdcall import PAGE_SHIFT, PAGE_SIZE
from tdxsim.errors import TdxsimError
from tdxsim.module.memory import TdMemory


class HostAccessDenied(TdxsimError):
    """The host touched a GPA it may not (private, or not converted to shared)."""

    def __init__(self, gpa: int, reason: str) -> None:
        super().__init__(f"host access to GPA {gpa:#x} denied: {reason}")
        self.gpa = gpa


@dataclass(frozen=True)
class RamRegion:
    """One TD RAM region: private GPA range and its offset in the memfd."""

    gpa: int
    size: int
    offset: int


class SharedMemory:
    """TD RAM as the host may touch it: shared GPAs of pages converted to shared.

    `mapped` (one byte per memfd page) is the shared-page map to use; a host in another process
    than the TD keeps its own, built up by MapGPA."""

    def __init__(
        self, fd: int, regions: list[RamRegion], gpaw: int, mapped: bytearray | None = None
    ) -> None:
        self.regions = sorted(regions, key=lambda r: r.gpa)
        self._starts = [r.gpa for r in self.regions]
        self.shared_bit = 1 << (gpaw - 1)
        self.gpaw = gpaw
        total = max((r.offset + r.size for r in self.regions), default=PAGE_SIZE)
        npages = total // PAGE_SIZE
        if mapped is not None and len(mapped) != npages:
            raise ValueError(f"shared-page map has {len(mapped)} entries for {npages} RAM pages")
        self._map = mmap.mmap(fd, max(total, PAGE_SIZE))
        self._view = memoryview(self._map)
        # one byte per memfd page, 1 = the shared-GPA view is mapped (the host's half of MapGPA)
        self._mapped = bytearray(npages) if mapped is None else mapped

    @classmethod
    def of_memory(cls, memory: TdMemory) -> SharedMemory:
        """The host view of an in-process `TdMemory` (maps the same memfd a second time); its
        shared-page map is `memory.shared` itself, so pages the loader or the module mapped
        shared are the host's too (one source of truth, not a copy)."""
        return cls(
            memory.fd,
            [RamRegion(r.gpa, r.size, r.offset) for r in memory.regions],
            memory.gpaw,
            memory.shared,
        )

    def _offset(self, gpa: int) -> int | None:
        private = gpa & ~self.shared_bit
        i = bisect.bisect_right(self._starts, private) - 1
        if i < 0:
            return None
        r = self.regions[i]
        return r.offset + private - r.gpa if private < r.gpa + r.size else None

    def is_ram(self, gpa: int, length: int = 1) -> bool:
        """True if [gpa, gpa+length) lies inside one RAM region (shared bit ignored)."""
        start, end = self._offset(gpa), self._offset(gpa + length - 1)
        return start is not None and end is not None and end - start == length - 1

    def set_mapped(self, gpa: int, npages: int, mapped: bool) -> None:
        """Map or unmap the shared view of `npages` pages (the host's half of MapGPA)."""
        off = self._offset(gpa)
        if off is None or not self.is_ram(gpa, npages * PAGE_SIZE):
            raise HostAccessDenied(gpa, f"{npages} pages are not TD RAM")
        first = off >> PAGE_SHIFT
        self._mapped[first : first + npages] = bytes([int(mapped)]) * npages

    def is_mapped(self, gpa: int) -> bool:
        """True if the page holding the shared GPA `gpa` is mapped shared."""
        off = self._offset(gpa)
        return off is not None and bool(self._mapped[off >> PAGE_SHIFT])

    def _check(self, gpa: int, length: int) -> int:
        if length < 0:
            raise HostAccessDenied(gpa, f"negative length {length}")
        if not gpa & self.shared_bit or gpa >> self.gpaw:
            raise HostAccessDenied(gpa, "private GPA (shared bit clear)")
        if not self.is_ram(gpa, max(length, 1)):
            raise HostAccessDenied(gpa, f"{length} bytes are not inside one TD RAM region")
        off = self._offset(gpa)
        assert off is not None
        for page in range(off >> PAGE_SHIFT, (off + max(length, 1) - 1 >> PAGE_SHIFT) + 1):
            if not self._mapped[page]:
                bad = gpa + (page << PAGE_SHIFT) - (off & ~(PAGE_SIZE - 1))
                raise HostAccessDenied(max(bad, gpa), "page not converted to shared by the TD")
        return off

    def read(self, gpa: int, length: int) -> bytes:
        """Bytes at a shared GPA range."""
        off = self._check(gpa, length)
        return bytes(self._view[off : off + length])

    def write(self, gpa: int, data: bytes) -> None:
        """Write at a shared GPA range."""
        off = self._check(gpa, len(data))
        self._view[off : off + len(data)] = data

    def close(self) -> None:
        """Drop the host mapping."""
        self._view.release()
        self._map.close()
