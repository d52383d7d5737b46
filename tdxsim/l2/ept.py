"""The EPT side of one L2 VM as unicorn memory protections: each TD page's protection in
unicorn's private view is the VM's alias (read, write, execute), none while the alias is
missing or the L1 Secure EPT page is not mapped; the shared view is read/write where the host
mapped the page and L2_CTLS lets L2 use the shared EPT (Intel TDX Module TD Partitioning
Architecture Specification, L2 page aliases and L2_CTLS). A protection fault in unicorn is then
exactly an EPT violation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from unicorn import UC_PROT_EXEC, UC_PROT_NONE, UC_PROT_READ, UC_PROT_WRITE

from tdxdefs.attributes import ATTR_R, ATTR_VALID, ATTR_W, ATTR_XS, ATTR_XU
from tdxdefs.tdcall import PAGE_SHIFT, PAGE_SIZE
from tdxsim.module.memory import PageState, TdMemory
from tdxsim.module.sept import AliasTable


class EptView:
    """Unicorn protections of one L2 VM's views of TD memory, kept in step with the aliases
    and the page states."""

    def __init__(self, uc: Any, memory: TdMemory, aliases: AliasTable, vm: int) -> None:
        self.uc = uc
        self.memory = memory
        self.aliases = aliases
        self.vm = vm
        self.prot = bytearray(len(memory.state))  # private view, per TD page: UC_PROT_*
        self.shared_prot = bytearray(len(memory.state))
        self.shared_eptp = False
        # called after a protection changes: TLB entries made under the old ones must go
        self.on_change: Callable[[], None] | None = None
        self.sync(0, len(memory.state))
        memory.on_change(self.sync)
        aliases.on_change(self._on_alias_change)

    def set_shared_eptp(self, enabled: bool) -> None:
        """L2_CTLS.ENABLE_SHARED_EPTP as of this entry."""
        if enabled != self.shared_eptp:
            self.shared_eptp = enabled
            self.sync(0, len(self.prot))

    def _prot_of(self, index: int) -> int:
        if self.memory.state[index] != PageState.MAPPED:
            return UC_PROT_NONE
        word = self.aliases.word(index, self.vm)
        if not word & ATTR_VALID:
            return UC_PROT_NONE
        prot = UC_PROT_NONE
        if word & ATTR_R:
            prot |= UC_PROT_READ
        if word & ATTR_W:
            prot |= UC_PROT_WRITE
        if word & (ATTR_XS | ATTR_XU):
            prot |= UC_PROT_EXEC
        return prot

    def _shared_prot_of(self, index: int) -> int:
        """Shared view: R/W when L2_CTLS lets L2 use the shared EPT and the host mapped it."""
        if self.shared_eptp and self.memory.shared[index]:
            return UC_PROT_READ | UC_PROT_WRITE
        return UC_PROT_NONE

    def sync(self, first: int, count: int) -> None:
        """Re-derive unicorn protections for pages [first, first+count), one call per run."""
        self._sync_view(first, count, self.prot, self._prot_of, 0)
        self._sync_view(
            first, count, self.shared_prot, self._shared_prot_of, self.memory.shared_bit
        )

    def _sync_view(
        self,
        first: int,
        count: int,
        current: bytearray,
        wanted: Callable[[int], int],
        view_bit: int,
    ) -> None:
        end = first + count
        for region in self.memory.regions:
            lo = max(first, region.offset >> PAGE_SHIFT)
            hi = min(end, (region.offset + region.size) >> PAGE_SHIFT)
            i = lo
            while i < hi:
                prot = wanted(i)
                j = i + 1
                while j < hi and wanted(j) == prot:
                    j += 1
                if any(current[k] != prot for k in range(i, j)):
                    gpa = (region.gpa + (i << PAGE_SHIFT) - region.offset) | view_bit
                    self.uc.mem_protect(gpa, (j - i) << PAGE_SHIFT, prot)
                    current[i:j] = bytes([prot]) * (j - i)
                    self._changed()
                i = j

    def _on_alias_change(self, index: int, vm: int) -> None:
        if vm == self.vm:
            prot = self._prot_of(index)
            if prot != self.prot[index]:
                self.uc.mem_protect(self.memory.page_gpa(index), PAGE_SIZE, prot)
                self.prot[index] = prot
                self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
