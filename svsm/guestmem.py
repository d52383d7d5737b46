"""Reading an L2's memory on its behalf: the instruction bytes L1 must decode after an MMIO exit.

L1 walks the L2's own 4-level page tables (Intel SDM Vol. 3, 4.5 "4-level paging") from its CR3,
and every table and code page it reads must be one the L2 itself may read (per the alias manager).
So an L2 that points CR3, or its RIP, at L1's memory or another L2's gets a refusal, never a copy
of memory it could not read itself. The bytes are copied once; the decoder works on the copy.

A walk that reached a code page is remembered by (CR3, linear page) with the value of every
paging entry it read and the alias manager's generation. Using it again reads each of those
entries once more and takes the remembered page only if every value, and the generation, are the
same: then a new walk would read the same entries and decide the same way, so the result is
exactly a walk's. Any change (the L2 rewrote an entry, L1 granted or revoked an alias, another
CR3) walks again. An L2 that changes its paging without telling L1 is thus always seen.
"""

from __future__ import annotations

from dataclasses import dataclass

from svsm.aliases import AliasManager
from svsm.decode import MAX_INSTRUCTION_LENGTH
from svsm.errors import SvsmError
from svsm.memory import Memory
from tdxdefs.attributes import GpaAttr
from tdxdefs.tdcall import PAGE_SIZE
from tdxdefs.x86 import CR0_PG

PTE_PRESENT = 1 << 0
PTE_LARGE = 1 << 7
PTE_ADDRESS = 0x000F_FFFF_FFFF_F000
LEVEL_SHIFTS = (39, 30, 21, 12)
LARGE_PAGE_LEVELS = (1, 2)  # a 1 GiB PDPTE or a 2 MiB PDE may map a page
ENTRY_SIZE = 8
INDEX_MASK = 0x1FF
MAX_INSTRUCTION = MAX_INSTRUCTION_LENGTH
PAGE_SHIFT = 12
MAX_REMEMBERED_WALKS = 64


class GuestMemoryError(SvsmError):
    """The L2's page tables or code do not lead to memory the L2 may read; names the address."""


@dataclass(frozen=True, slots=True)
class CodeWalk:
    """A walk to a code page the L2 may execute: the page, and what the walk depended on."""

    page_gpa: int
    generation: int  # the alias manager's, when the walk checked the L2's access
    held: tuple[tuple[int, int], ...]  # each paging entry read, in order, as (offset in memory,
    # value): rereading them at every MMIO exit then costs no GPA lookup (`Memory.u64s_hold`)


class GuestMemory:
    """L2 VM `vm`'s view of memory, as L1 may read it on the L2's behalf."""

    def __init__(self, memory: Memory, aliases: AliasManager, vm: int) -> None:
        self.memory = memory
        self.aliases = aliases
        self.vm = vm
        self._code_walks: dict[tuple[int, int], CodeWalk] = {}
        self.walks = 0  # full walks taken (a remembered walk that still holds is not one)

    def _readable(self, gpa: int, need: GpaAttr, what: str) -> None:
        if not self.aliases.attrs(self.vm, gpa) & need:
            raise GuestMemoryError(
                f"{what} at GPA {gpa:#x} is not {need.name or 'readable'} for L2 VM {self.vm}"
            )

    def translate(self, gla: int, cr0: int, cr3: int) -> int:
        """The GPA of linear address `gla` through the L2's page tables."""
        return self._walk(gla, cr0, cr3, [])

    def _entry(self, gpa: int) -> int:
        return self.memory.raw_u64(gpa)

    def _walk(self, gla: int, cr0: int, cr3: int, read: list[tuple[int, int]]) -> int:
        """`translate`, noting in `read` each paging entry's GPA and the value it had."""
        if not cr0 & CR0_PG:
            return gla
        table = cr3 & PTE_ADDRESS
        for level, shift in enumerate(LEVEL_SHIFTS):
            entry_gpa = table + ((gla >> shift) & INDEX_MASK) * ENTRY_SIZE
            self._readable(entry_gpa, GpaAttr.R, "a page-table entry")
            entry = self._entry(entry_gpa)
            read.append((entry_gpa, entry))
            if not entry & PTE_PRESENT:
                raise GuestMemoryError(f"linear address {gla:#x} is not mapped (level {level})")
            if entry & PTE_LARGE and level in LARGE_PAGE_LEVELS:
                span = (1 << shift) - 1
                return (entry & PTE_ADDRESS & ~span) | (gla & span)
            table = entry & PTE_ADDRESS
        return table | (gla & (PAGE_SIZE - 1))

    def code_gpa(self, gla: int, cr0: int, cr3: int) -> int:
        """The GPA of code at linear address `gla`, on a page the L2 may execute."""
        key = (cr3 if cr0 & CR0_PG else -1, gla >> PAGE_SHIFT)
        known = self._code_walks.get(key)
        if (
            known is not None
            and known.generation == self.aliases.generation
            and self.memory.u64s_hold(known.held)
        ):
            return known.page_gpa | (gla & (PAGE_SIZE - 1))
        read: list[tuple[int, int]] = []
        self.walks += 1
        gpa = self._walk(gla, cr0, cr3, read)
        self._readable(gpa, GpaAttr.XS, "code")
        if len(self._code_walks) >= MAX_REMEMBERED_WALKS:
            self._code_walks.clear()
        page = gpa & ~(PAGE_SIZE - 1)
        offset_of = self.memory.offset_of
        held = tuple((offset_of(entry_gpa), value) for entry_gpa, value in read)
        self._code_walks[key] = CodeWalk(page, self.aliases.generation, held)
        return gpa

    def fetch_instruction(self, rip: int, cr0: int, cr3: int) -> bytes:
        """Up to 15 bytes at `rip`, from pages the L2 may execute; shorter at an unmapped page."""
        if rip % PAGE_SIZE <= PAGE_SIZE - MAX_INSTRUCTION:  # one page holds all 15: one copy
            return self.memory.raw_read(self.code_gpa(rip, cr0, cr3), MAX_INSTRUCTION)
        out = b""
        at = rip
        while len(out) < MAX_INSTRUCTION:
            try:
                gpa = self.code_gpa(at, cr0, cr3)
            except GuestMemoryError:
                if not out:
                    raise
                break  # the decoder reports a truncated instruction if it needed more
            take = min(MAX_INSTRUCTION - len(out), PAGE_SIZE - gpa % PAGE_SIZE)
            out += self.memory.raw_read(gpa, take)
            at += take
        return out
