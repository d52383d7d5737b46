"""L1's view of its memory: it accepts what it uses, and converts buffers to shared with MapGPA.

Private memory L1 has not accepted is never touched (on hardware: a #VE). Shared memory belongs to
the host as much as to L1: the host may rewrite it at any time, so `SharedBuffer.snapshot` copies
once and every check runs on the copy (reference, threat model: "shared memory can change").
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from svsm.errors import SvsmError
from svsm.platform import Platform
from svsm.tdcall import Tdcall, TdcallError
from tdxdefs.tdcall import (
    LEVEL_2M,
    LEVEL_4K,
    PAGE_SHIFT,
    PAGE_SIZE,
    R10,
    R11,
    TDX_PAGE_SIZE_MISMATCH,
    status_class,
)
from tdxdefs.tdvmcall import Tdvmcall, TdvmcallStatus

PAGE_SIZE_2M = 0x200000
MAPGPA_MAX_RETRIES = 64  # a host that never makes progress gets an error, not a hang
MAX_FOUND_ACCEPTED = 256
U64_LE = struct.Struct("<Q")


PAGE_OFFSET = PAGE_SIZE - 1
MAX_KNOWN_PAGES = 4096


class PageOffsets(dict[int, int]):
    """Page number -> offset of the page in the view of TD memory, asked of the platform once
    per page (a page is contiguous in that view): a lookup here costs no Python call, and L1
    resolves a GPA at every access it makes while handling an L2 exit."""

    def __init__(self, offset: Callable[[int], int]) -> None:
        super().__init__()
        self._offset = offset

    def __missing__(self, page: int) -> int:
        if len(self) >= MAX_KNOWN_PAGES:
            self.clear()
        offset = self[page] = self._offset(page << PAGE_SHIFT)
        return offset


class L1MemoryError(SvsmError):
    """L1 memory misuse or a host answer that breaks the MapGPA contract; names the GPA."""


@dataclass(frozen=True)
class SharedBuffer:
    """A range L1 converted to shared: `gpa` carries the shared bit."""

    memory: Memory
    gpa: int
    size: int

    def write(self, offset: int, data: bytes) -> None:
        """Write into the buffer (the host sees it at once)."""
        if offset < 0 or offset + len(data) > self.size:
            raise L1MemoryError(
                f"shared buffer {self.gpa:#x}: write of {len(data)} bytes at "
                f"offset {offset} overruns its {self.size} bytes"
            )
        self.memory.raw_write(self.gpa + offset, data)

    def snapshot(self) -> bytes:
        """One copy of the whole buffer; parse and validate only this copy."""
        return self.memory.raw_read(self.gpa, self.size)


class Memory:
    """Private memory L1 accepted, and the shared buffers it converted."""

    def __init__(self, platform: Platform, tdcall: Tdcall) -> None:
        self._platform = platform
        self._tdcall = tdcall
        self.shared_bit = platform.shared_bit
        self._pages = PageOffsets(platform.offset)  # every access of L1's resolves a GPA
        self._view = platform.memory
        self._accepted: list[tuple[int, int]] = []
        # (gpa, length) pairs found accepted: L1 checks the same few (a vCPU's guest-state page)
        # at every L2 entry. Accepting more keeps them true; forgetting a range clears them. The
        # private accessors look here first, so a known range costs one lookup, not two calls.
        self._found_accepted: set[tuple[int, int]] = set()
        self.accept_calls = 0

    # --- acceptance ------------------------------------------------------------------------------
    def accept(self, gpa: int, size: int) -> None:
        """TDG.MEM.PAGE.ACCEPT over [gpa, gpa+size): 2M where aligned, else page by page. A size
        mismatch on a 2M accept (the host mapped 4K) falls back to 4K; on a 4K accept (the host
        mapped 2M) L1 accepts the whole enclosing 2M block, which stays accepted."""
        if gpa % PAGE_SIZE or size % PAGE_SIZE or size <= 0:
            raise L1MemoryError(f"accept of GPA {gpa:#x} size {size:#x}: not whole 4K pages")
        self._check_ram(gpa, size)
        end = gpa + size
        cursor = gpa
        while cursor < end:
            if cursor % PAGE_SIZE_2M == 0 and end - cursor >= PAGE_SIZE_2M:
                try:
                    self._tdcall.accept(cursor, LEVEL_2M)
                    self.accept_calls += 1
                    cursor += PAGE_SIZE_2M
                    continue
                except TdcallError as exc:
                    if status_class(exc.status) != TDX_PAGE_SIZE_MISMATCH:
                        raise
            try:
                self._tdcall.accept(cursor, LEVEL_4K)
                self.accept_calls += 1
                cursor += PAGE_SIZE
            except TdcallError as exc:
                if status_class(exc.status) != TDX_PAGE_SIZE_MISMATCH:
                    raise
                block = cursor - cursor % PAGE_SIZE_2M
                self._check_ram(block, PAGE_SIZE_2M)
                self._tdcall.accept(block, LEVEL_2M)
                self.accept_calls += 1
                self._accepted.append((block, block + PAGE_SIZE_2M))
                cursor = block + PAGE_SIZE_2M
        self._accepted.append((gpa, end))

    def is_accepted(self, gpa: int, length: int) -> bool:
        """True if [gpa, gpa+length) lies inside one range L1 accepted."""
        if (gpa, length) in self._found_accepted:
            return True
        if not any(lo <= gpa and gpa + length <= hi for lo, hi in self._accepted):
            return False
        if len(self._found_accepted) >= MAX_FOUND_ACCEPTED:
            self._found_accepted.clear()
        self._found_accepted.add((gpa, length))
        return True

    def _check_ram(self, gpa: int, size: int) -> None:
        private = gpa & ~self.shared_bit
        for base, region_size, _off in self._platform.regions:
            if base <= private and private + size <= base + region_size:
                return
        raise L1MemoryError(f"GPA {gpa:#x} size {size:#x} is not inside one TD RAM region")

    # --- private access --------------------------------------------------------------------------
    def read(self, gpa: int, length: int) -> bytes:
        """Read accepted private memory."""
        if gpa & self.shared_bit or (gpa, length) not in self._found_accepted:
            self._check_private(gpa, length)
        off = self._pages[gpa >> PAGE_SHIFT] + (gpa & PAGE_OFFSET)
        return bytes(self._view[off : off + length])

    def write(self, gpa: int, data: bytes) -> None:
        """Write accepted private memory."""
        length = len(data)
        if gpa & self.shared_bit or (gpa, length) not in self._found_accepted:
            self._check_private(gpa, length)
        off = self._pages[gpa >> PAGE_SHIFT] + (gpa & PAGE_OFFSET)
        self._view[off : off + length] = data

    def write_struct(self, gpa: int, layout: struct.Struct, *values: int) -> None:
        """Pack `values` as `layout` straight into accepted private memory at `gpa`."""
        if gpa & self.shared_bit or (gpa, layout.size) not in self._found_accepted:
            self._check_private(gpa, layout.size)  # the known-accepted case costs one lookup
        off = self._pages[gpa >> PAGE_SHIFT] + (gpa & PAGE_OFFSET)
        layout.pack_into(self._view, off, *values)

    def read_struct(self, gpa: int, layout: struct.Struct) -> tuple[int, ...]:
        """Unpack `layout` from accepted private memory at `gpa` (each field read once)."""
        if gpa & self.shared_bit or (gpa, layout.size) not in self._found_accepted:
            self._check_private(gpa, layout.size)
        off = self._pages[gpa >> PAGE_SHIFT] + (gpa & PAGE_OFFSET)
        values: tuple[int, ...] = layout.unpack_from(self._view, off)
        return values

    def read_measured(self, gpa: int, length: int) -> bytes:
        """Read private memory the host added before finalize (accepted by PAGE.ADD)."""
        if gpa & self.shared_bit:
            raise L1MemoryError(f"GPA {gpa:#x} is shared, not private")
        self._check_ram(gpa, length)
        return self.raw_read(gpa, length)

    def _check_private(self, gpa: int, length: int) -> None:
        if gpa & self.shared_bit:
            raise L1MemoryError(f"GPA {gpa:#x} is shared; use a SharedBuffer")
        if not self.is_accepted(gpa, length):
            raise L1MemoryError(f"GPA {gpa:#x} (+{length}) was not accepted by L1")

    def raw_read(self, gpa: int, length: int) -> bytes:
        off = self._pages[gpa >> PAGE_SHIFT] + (gpa & PAGE_OFFSET)
        return bytes(self._view[off : off + length])

    def raw_u64(self, gpa: int) -> int:
        """The little-endian 64-bit value at `gpa` (8-aligned), unchecked like `raw_read`: one
        copy of the value, no intermediate bytes (a paging entry, read on every MMIO exit)."""
        off = self._pages[gpa >> PAGE_SHIFT] + (gpa & PAGE_OFFSET)
        value: int = U64_LE.unpack_from(self._view, off)[0]
        return value

    def offset_of(self, gpa: int) -> int:
        """Where `gpa` is in the view of TD memory (fixed for the TD's life): for a caller that
        rereads the same places at every exit (`u64s_hold`) without resolving the GPA again."""
        return self._pages[gpa >> PAGE_SHIFT] + (gpa & PAGE_OFFSET)

    def u64s_hold(self, expected: tuple[tuple[int, int], ...]) -> bool:
        """True if every (offset from `offset_of`, value) still has that little-endian 64-bit
        value; each is read once, unchecked like `raw_u64`."""
        view, unpack = self._view, U64_LE.unpack_from
        for offset, value in expected:  # a loop, not all(): no generator per call
            if unpack(view, offset)[0] != value:
                break
        else:
            return True
        return False

    def raw_write(self, gpa: int, data: bytes) -> None:
        off = self._pages[gpa >> PAGE_SHIFT] + (gpa & PAGE_OFFSET)
        self._view[off : off + len(data)] = data

    def _forget(self, lo: int, hi: int) -> None:
        """Drop [lo, hi) from the accepted ranges (it is shared now)."""
        kept: list[tuple[int, int]] = []
        for a, b in self._accepted:
            kept.extend(r for r in ((a, min(b, lo)), (max(a, hi), b)) if r[0] < r[1])
        self._accepted = kept
        self._found_accepted.clear()

    # --- conversion ------------------------------------------------------------------------------
    def share(self, gpa: int, size: int) -> SharedBuffer:
        """MapGPA [gpa, gpa+size) to shared; RETRY resumes at the GPA in R11, a bounded number of
        times, and the resume GPA must lie inside the range still to convert."""
        if gpa % PAGE_SIZE or size % PAGE_SIZE or size <= 0 or gpa & self.shared_bit:
            raise L1MemoryError(f"share of GPA {gpa:#x} size {size:#x}: need private whole pages")
        self._check_ram(gpa, size)
        start = gpa | self.shared_bit
        end = start + size
        for _attempt in range(MAPGPA_MAX_RETRIES + 1):
            out = self._tdcall.tdvmcall(
                Tdvmcall.MAP_GPA, allow=(TdvmcallStatus.RETRY,), r12=start, r13=end - start
            )
            if out[R10] == TdvmcallStatus.SUCCESS:
                self._forget(gpa, gpa + size)
                return SharedBuffer(self, gpa | self.shared_bit, size)
            resume = out[R11]
            if not start <= resume < end or resume % PAGE_SIZE:
                self._forget(gpa, gpa + size)  # part may be shared now: never trust it as private
                raise L1MemoryError(
                    f"MapGPA of {gpa | self.shared_bit:#x} (+{size:#x}): RETRY "
                    f"with resume GPA {resume:#x} (R11) outside [{start:#x}, "
                    f"{end:#x}) or not page aligned"
                )
            start = resume
        self._forget(gpa, gpa + size)
        raise L1MemoryError(
            f"MapGPA of {gpa | self.shared_bit:#x} (+{size:#x}): the host "
            f"answered RETRY {MAPGPA_MAX_RETRIES + 1} times; giving up at "
            f"{start:#x}"
        )
