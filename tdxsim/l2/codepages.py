"""Which L2 code unicorn may run without the model looking: code pages scanned for exiting
instructions, unicorn exits placed before each of them, and the guarantees that keep those
scans true while code changes.

The first fetch from a page (the TLB fill) scans it (`decode.exit_candidates`) and every possible
start of an exiting instruction becomes an exit: the native exit hook (`exit_hook`) stops unicorn
before it, with no Python call on the instructions in between. A scanned page is
mapped read+execute in the TLB, so L2's first write to it refills the entry: the page is then
decoded per instruction by a code hook limited to it, and its translations are dropped. An
unscanned page is mapped without execute, so its first fetch refills even after a data access;
so is a page scanned only ahead or through another GLA page (its first fetch checks the scan).
Writes by L1, the host and the model itself are found by comparing a page with its scan.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unicorn import (
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_HOOK_CODE,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
)
from unicorn.unicorn import UcError

from tdxdefs.tdcall import PAGE_SHIFT, PAGE_SIZE
from tdxdefs.vmcs import EPTV_FETCH, EPTV_WRITE
from tdxsim.l2.decode import MAX_INSN_LEN, PAGE_OFFSET_MASK, exit_candidates
from tdxsim.l2.engine import Runner
from tdxsim.l2.exit_hook import ExitHook
from tdxsim.module.memory import TdMemory

MAX_APPLY_ROUNDS = 8


@dataclass(slots=True)
class CodePage:
    """A code page as scanned: where it lives, its bytes then, its exit addresses."""

    gpa_page: int
    offset: int  # in the TD memory file
    data: bytes
    exits: frozenset[int]
    index: int  # of the page in TD memory; -1 (and offset -1) for a GPA no code runs from
    executable: bool  # by this VM's alias when scanned; a page it cannot run has no exits
    fetched: bool = False  # unicorn has fetched code from it (else only scanned ahead)


@dataclass(slots=True)
class ScannedRun:
    """Fetched scans of consecutive TD memory pages [start, end) in the memfd: their bytes and
    executability (one byte, 0 or 1, per page) as scanned."""

    start: int
    end: int
    data: bytes
    executable: bytes
    pages: list[tuple[int, CodePage]]  # (GLA page, its scan)


# bytes.translate table: a unicorn protection byte -> 1 if it lets L2 execute, else 0
EXECUTABLE_OF_PROT = bytes(int(bool(prot & UC_PROT_EXEC)) for prot in range(256))


class CodePages:
    """The scanned code pages of one L2 vCPU's unicorn instance and its exits.

    `prot` is the VM's unicorn protection per TD memory page (EptView.prot); `probe(gla)`
    translates a GLA without side effects (None if unmapped); `on_insn` is the per-instruction
    hook for pages L2 writes; `runner` runs unicorn with `exit_hook`, which holds the exits.
    """

    def __init__(
        self,
        uc: Any,
        memory: TdMemory,
        prot: bytearray,
        probe: Callable[[int], int | None],
        on_insn: Callable[[Any, int, int, object], None],
        runner: Runner,
        exit_hook: ExitHook,
    ) -> None:
        self.uc = uc
        self._runner = runner
        self._exit_hook = exit_hook
        self.memory = memory
        self._prot = prot
        self._probe = probe
        self._on_insn = on_insn
        self.scanned: dict[int, CodePage] = {}  # GLA page -> its scan
        self._checked: list[ScannedRun] | None = None  # fetched scans of TD memory, in runs
        self._glas_of_code: dict[int, set[int]] = {}  # GPA page -> GLA pages scanned from it
        self._decoded_pages: set[int] = set()  # GPA pages L2 wrote: decoded per instruction
        self._page_hooks: dict[int, int] = {}  # GLA page -> its per-instruction hook
        self._writable_unscanned: set[int] = set()  # GPA pages a TLB entry may write
        self._stale_pages: set[int] = set()  # GLA pages whose translations must be dropped
        self._tlb_flush_pending = False
        self._exits_dirty = False
        self._pending_hooks: set[int] = set()  # GLA pages to hook when unicorn stops
        self.stopped_to_resume = False  # unicorn was stopped only to apply the above
        self.controls = -1  # the processor-based controls the scans were made for
        self._exits_enabled = True
        # Unicorn's own exits stay on with none set: then it neither compiles exits into its
        # translations nor drops translations after a run for them.
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])

    # --- the TLB fill ------------------------------------------------------------------------
    # A fill only keeps books: changing unicorn's exits, hooks, translations or TLB from inside
    # it (which may run in the middle of a translation) is not safe, so it asks unicorn to
    # stop, which happens before the block being translated runs, and `_apply` does the rest.
    def perms(self, gla_page: int, gpa_page: int, kind: int) -> int:
        """TLB permissions for a GLA page filled for a fetch, read or write (EPTV_* kind)."""
        if kind == EPTV_FETCH:
            self._prepare(gla_page, gpa_page)
            following = self._probe((gla_page + 1) << PAGE_SHIFT)
            if following is not None:  # a translation block may run on into the next page
                self._prepare(gla_page + 1, following >> PAGE_SHIFT, neighbour=True)
            return UC_PROT_ALL if gpa_page in self._decoded_pages else UC_PROT_READ | UC_PROT_EXEC
        if gpa_page in self._glas_of_code:
            if kind != EPTV_WRITE:
                scan = self.scanned.get(gla_page)
                if scan is not None and scan.fetched and scan.gpa_page == gpa_page:
                    return UC_PROT_READ | UC_PROT_EXEC
                # scanned only ahead, or from another GLA page: no execute, so that the first
                # fetch through this GLA page refills and checks or makes its scan
                return UC_PROT_READ
            if not self._writable(gpa_page):
                # the alias refuses the write: unicorn's region check faults it (an EPT violation
                # for L1) and no code changes, so the page keeps its scan and unicorn's speed
                return UC_PROT_ALL
            self._decode_per_instruction(gpa_page)
            self._stop_to_resume()
            return UC_PROT_ALL
        if gpa_page in self._decoded_pages:  # executable where its hook is in place
            return UC_PROT_ALL if gla_page in self._page_hooks else UC_PROT_READ | UC_PROT_WRITE
        self._writable_unscanned.add(gpa_page)
        return UC_PROT_READ | UC_PROT_WRITE

    def _writable(self, gpa_page: int) -> bool:
        index = self.memory.page_index(gpa_page << PAGE_SHIFT)
        return index is not None and bool(self._prot[index] & UC_PROT_WRITE)

    def _stop_to_resume(self) -> None:
        self.stopped_to_resume = True
        self.uc.emu_stop()  # before the next block runs

    def _prepare(self, gla_page: int, gpa_page: int, neighbour: bool = False) -> None:
        """Make sure unicorn stops before every exiting instruction of this code page. Only
        the filled page may have a translation made without its exits; one running on into
        the `neighbour` page overlaps the filled page, so dropping the filled page's drops it."""
        if gpa_page in self._decoded_pages:
            if gla_page not in self._page_hooks:
                self._pending_hooks.add(gla_page)
                if not neighbour:
                    self._stale_pages.add(gla_page)
                self._stop_to_resume()
            return
        scan = self.scanned.get(gla_page)
        if scan is not None and scan.gpa_page == gpa_page:
            if scan.fetched or neighbour:
                return
            scan.fetched = True  # scanned ahead: still the same bytes and executability?
            self._checked = None
            if scan.index < 0 or (
                self.memory.buf[scan.offset : scan.offset + PAGE_SIZE] == scan.data
                and bool(self._prot[scan.index] & UC_PROT_EXEC) == scan.executable
            ):
                return
        self._scan(gla_page, gpa_page)
        self.scanned[gla_page].fetched = not neighbour
        self._exits_dirty = True
        if not neighbour:
            self._stale_pages.add(gla_page)  # a translation, if any, may predate these bytes
        if gpa_page in self._writable_unscanned:  # another TLB entry may still write it
            self._tlb_flush_pending = True
        self._stop_to_resume()

    def _scan(self, gla_page: int, gpa_page: int) -> None:
        self._checked = None
        old = self.scanned.pop(gla_page, None)
        if old is not None:
            self._glas_of_code.get(old.gpa_page, set()).discard(gla_page)
        gpa = gpa_page << PAGE_SHIFT
        index = self.memory.page_index(gpa)
        if index is None or self.memory.is_shared(gpa):  # a fetch from here faults
            self.scanned[gla_page] = CodePage(gpa_page, -1, b"", frozenset(), -1, False)
            return
        offset = self.memory.offset_of(gpa)
        data = self.memory.buf[offset : offset + PAGE_SIZE]
        base = gla_page << PAGE_SHIFT
        executable = bool(self._prot[index] & UC_PROT_EXEC)
        candidates = exit_candidates(data, self.controls) if executable else set()
        exits = frozenset(base + at for at in candidates)
        self.scanned[gla_page] = CodePage(gpa_page, offset, data, exits, index, executable)
        self._glas_of_code.setdefault(gpa_page, set()).add(gla_page)

    def _set_exits(self) -> None:
        exits: set[int] = set()
        for scan in self.scanned.values():
            exits |= scan.exits
        self._exit_hook.set_exits(exits)

    def _hook_page(self, gla_page: int) -> None:
        if gla_page not in self._page_hooks:
            self._page_hooks[gla_page] = self.uc.hook_add(
                UC_HOOK_CODE,
                self._on_insn,
                None,
                gla_page << PAGE_SHIFT,
                ((gla_page + 1) << PAGE_SHIFT) - 1,
            )

    def _decode_per_instruction(self, gpa_page: int) -> None:
        """L2 writes a page it runs code from: decode that page per instruction from now on.

        Its translations are dropped when unicorn stops (unicorn does not see these writes as
        self-modifying code in virtual-TLB mode).
        """
        self._decoded_pages.add(gpa_page)
        self._checked = None
        for gla_page in self._glas_of_code.pop(gpa_page, set()):
            self.scanned.pop(gla_page, None)
            self._pending_hooks.add(gla_page)
            self._stale_pages.add(gla_page)
        self._exits_dirty = True

    # --- around each run ---------------------------------------------------------------------
    def before_run(self) -> None:
        self.stopped_to_resume = False
        self.after_run()

    def after_run(self) -> None:
        """Apply what the fills asked for while unicorn ran."""
        if self._exits_dirty or self._pending_hooks or self._tlb_flush_pending or self._stale_pages:
            self._apply()

    def _apply(self) -> None:
        """Exits, page hooks, TLB flush and dropped translations the books ask for. Dropping a
        translation may fill the TLB again, which may ask for more: repeat until settled."""
        for _ in range(MAX_APPLY_ROUNDS):
            if self._exits_dirty:
                self._exits_dirty = False
                self._set_exits()
            for gla_page in self._pending_hooks:
                self._hook_page(gla_page)
            self._pending_hooks.clear()
            if self._tlb_flush_pending:
                self._flush_tlb()
            stale, self._stale_pages = self._stale_pages, set()
            for gla_page in stale:
                self._remove_cache(gla_page)
            if not (self._exits_dirty or self._pending_hooks or self._stale_pages):
                return

    def is_exit(self, rip: int) -> bool:
        """Unicorn stopped at `rip` because it is an exit."""
        return self._exits_enabled and self._exit_hook.stopped_at_exit(rip)

    def exit_here(self, rip: int, translate: Callable[[int], int | None]) -> bool:
        """`rip` is an exit of its page's scan, made for the page it maps to now."""
        scan = self.scanned.get(rip >> PAGE_SHIFT)
        if scan is None or rip not in scan.exits:
            return False
        gpa = translate(rip)
        return gpa is not None and gpa >> PAGE_SHIFT == scan.gpa_page

    def code_at(self, rip: int) -> bytes | None:
        """The bytes of the instruction at `rip` from memory, through its page's scan (None
        when the page was not scanned or the instruction may cross the page end)."""
        scan = self.scanned.get(rip >> PAGE_SHIFT)
        at = rip & PAGE_OFFSET_MASK
        if scan is None or scan.index < 0 or at > PAGE_SIZE - MAX_INSN_LEN:
            return None
        start = scan.offset + at
        return self.memory.buf[start : start + MAX_INSN_LEN]

    def set_exits_enabled(self, enabled: bool) -> None:
        """Exits on (only exiting instructions stop) or off (every instruction is hooked)."""
        self._exits_enabled = enabled
        self._exit_hook.set_enabled(enabled)
        self._apply()

    def step(self, rip: int) -> None:
        """Run the one instruction unicorn stopped before (it turned out not to exit)."""
        with contextlib.suppress(UcError):  # faults were recorded by the hooks
            self._runner.start(rip, 1, pass_once=rip)

    # --- between entries ---------------------------------------------------------------------
    def reset(self, controls: int) -> None:
        """Forget every scan: the controls that decide which instructions exit changed."""
        self.controls = controls
        self.scanned.clear()
        self._checked = None
        self._glas_of_code.clear()
        self._set_exits()
        self._flush_tlb()
        self._apply()

    def model_wrote(self, gpa: int, length: int) -> None:
        """The model wrote L2 memory (event delivery, virtual APIC): a scanned page written so
        is decoded per instruction from now on."""
        first, last = gpa >> PAGE_SHIFT, (gpa + length - 1) >> PAGE_SHIFT
        code = self._glas_of_code
        if first in code:
            self._decode_per_instruction(first)
        if last != first and last in code:
            self._decode_per_instruction(last)
        self.after_run()  # applies what is asked for, if anything

    def drop_stale(self) -> bool:
        """L1 and the host write TD memory behind unicorn's back: rescan code pages whose bytes
        or executability changed and drop their translations. True if any did. Pages only
        scanned ahead are checked when unicorn first fetches from them."""
        runs = self._checked
        if runs is None:
            runs = self._checked = self._scanned_runs()
        buf = self.memory.buf  # mmap slices are bytes: one memcmp (memoryview compares per item)
        prot = self._prot
        changed: list[tuple[int, int]] = []
        for run in runs:
            start, end = run.start, run.end
            if (
                buf[start:end] == run.data
                and prot[start >> PAGE_SHIFT : end >> PAGE_SHIFT].translate(EXECUTABLE_OF_PROT)
                == run.executable
            ):
                continue  # the common case: every page of the run as scanned
            changed.extend(
                (gla_page, scan.gpa_page)
                for gla_page, scan in run.pages
                if buf[scan.offset : scan.offset + PAGE_SIZE] != scan.data
                or bool(prot[scan.index] & UC_PROT_EXEC) != scan.executable
            )
        if not changed:
            return False
        for gla_page, gpa_page in changed:
            self._scan(gla_page, gpa_page)
            self.scanned[gla_page].fetched = True
            self._stale_pages.add(gla_page)
        self._exits_dirty = True
        self._apply()
        return True

    def _scanned_runs(self) -> list[ScannedRun]:
        """The fetched scans of TD memory as runs of consecutive pages: each entry compares a
        whole run's bytes and executability at once (L2's code is a few adjacent pages)."""
        pages = sorted(
            ((gla_page, scan) for gla_page, scan in self.scanned.items()
             if scan.fetched and scan.index >= 0),
            key=lambda page: page[1].offset,
        )  # fmt: skip
        groups: list[list[tuple[int, CodePage]]] = []
        for gla_page, scan in pages:
            if not groups or groups[-1][-1][1].offset + PAGE_SIZE != scan.offset:
                groups.append([])
            groups[-1].append((gla_page, scan))
        return [
            ScannedRun(
                group[0][1].offset,
                group[-1][1].offset + PAGE_SIZE,
                b"".join(scan.data for _gla_page, scan in group),
                bytes(int(scan.executable) for _gla_page, scan in group),
                group,
            )
            for group in groups
        ]

    def _remove_cache(self, gla_page: int) -> None:
        self.uc.ctl_remove_cache(gla_page << PAGE_SHIFT, (gla_page + 1) << PAGE_SHIFT)

    def request_tlb_flush(self) -> None:
        """Flush unicorn's TLB before the next run (between runs, never inside a fill)."""
        self._tlb_flush_pending = True

    def _flush_tlb(self) -> None:
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        self._tlb_flush_pending = False
        self._writable_unscanned.clear()
