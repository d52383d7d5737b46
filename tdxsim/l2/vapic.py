"""The virtual-APIC page of one L2 VM: IRR and ISR bit arrays, TPR, PPR, virtual EOI, and the
RVI/SVI pair of the guest interrupt status (Intel SDM Vol. 3, chapter "APIC Virtualization and
Virtual Interrupts": PPR virtualization, EOI virtualization, virtual-interrupt delivery).

The page lives in TD memory at the VMCS virtual-APIC address; RVI and SVI travel in the L2
guest-state block (Intel TDX Module TD Partitioning Architecture Specification).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from tdxdefs.tdcall import PAGE_SIZE
from tdxdefs.vmcs import SEC_VIRTUAL_INTR_DELIVERY, Vmcs
from tdxdefs.x86 import VAPIC_IRR, VAPIC_ISR, VAPIC_PPR, VAPIC_REG_STRIDE, VAPIC_TPR
from tdxsim.module.memory import PageState, TdMemory
from tdxsim.module.vmcs import L2Vmcs

BITS_PER_APIC_REG = 32
VAPIC_BIT_REGS = 8  # a 256-bit array is 8 32-bit registers at a 16-byte stride
APIC_PRIORITY_CLASS = 0xF0
APIC_REG = struct.Struct("<I")
# a 256-bit array (IRR, ISR): 8 32-bit registers, each starting a 16-byte slot
APIC_BIT_ARRAY = struct.Struct(
    "<" + f"I{VAPIC_REG_STRIDE - APIC_REG.size}x" * (VAPIC_BIT_REGS - 1) + "I"
)
EOI_BITMAP_BITS = 64
MAPPED = PageState.MAPPED
VIRTUAL_APIC_PAGE_ADDR = Vmcs.VIRTUAL_APIC_PAGE_ADDR
SECONDARY_CONTROLS = Vmcs.SECONDARY_CONTROLS


class VirtualApic:
    """One L2 VM's virtual APIC, read and written in place in TD memory; `wrote(gpa, length)`
    tells the model's code-page tracking what the model wrote."""

    def __init__(self, memory: TdMemory, vmcs: L2Vmcs, wrote: Callable[[int, int], None]) -> None:
        self.memory = memory
        self.vmcs = vmcs
        self._wrote = wrote
        self.rvi = 0  # requesting virtual interrupt: highest vector in IRR
        self.svi = 0  # servicing virtual interrupt: highest vector in ISR
        # (GPA, page index, memfd offset) of the page last looked up: where a GPA lies in the
        # memfd never changes, so this holds until L1 points the VMCS at another page. The
        # page's state is checked on every use.
        self._at: tuple[int, int, int] | None = None

    def page(self) -> int | None:
        """GPA of the virtual-APIC page (4 KiB aligned by the VMCS write mask), or None while
        it is not a mapped page."""
        gpa = self.vmcs.read(Vmcs.VIRTUAL_APIC_PAGE_ADDR)
        index = self.memory.page_index(gpa)
        if index is None or self.memory.state[index] != MAPPED:
            return None
        return gpa

    def _view(self) -> tuple[int, memoryview] | None:
        """(GPA, bytes) of the mapped virtual-APIC page."""
        gpa = self.vmcs.values.get(VIRTUAL_APIC_PAGE_ADDR, 0)  # L2Vmcs.read, without a call
        at = self._at
        if at is None or at[0] != gpa:
            index = self.memory.page_index(gpa)
            if index is None:
                return None
            at = self._at = (gpa, index, self.memory.offset_of(gpa))
        if self.memory.state[at[1]] != MAPPED:
            return None
        offset = at[2]  # a fresh slice: none outlives the call (the mapping can be closed)
        return gpa, self.memory.view[offset : offset + PAGE_SIZE]

    @staticmethod
    def _highest(view: memoryview, base: int) -> int:
        words = APIC_BIT_ARRAY.unpack_from(view, base)  # the 8 registers in one call
        if not any(words):
            return 0  # the common case: the last vector was just taken or ended
        for reg in range(VAPIC_BIT_REGS - 1, -1, -1):
            word: int = words[reg]
            if word:
                return reg * BITS_PER_APIC_REG + word.bit_length() - 1
        return 0

    @staticmethod
    def _set_bit(view: memoryview, base: int, vector: int, value: bool) -> None:
        at = base + (vector // BITS_PER_APIC_REG) * VAPIC_REG_STRIDE
        (reg,) = APIC_REG.unpack_from(view, at)
        bit = 1 << (vector % BITS_PER_APIC_REG)
        APIC_REG.pack_into(view, at, reg | bit if value else reg & ~bit)

    def _update_ppr(self, view: memoryview) -> int:
        tpr = view[VAPIC_TPR]
        svi_class = self.svi & APIC_PRIORITY_CLASS
        ppr = tpr if (tpr & APIC_PRIORITY_CLASS) >= svi_class else svi_class
        APIC_REG.pack_into(view, VAPIC_PPR, ppr)
        return ppr

    def bit(self, base: int, vector: int, value: bool | None = None) -> bool:
        """The bit of `vector` in the 256-bit array at `base` (IRR or ISR); set it if given."""
        page = self._view()
        if page is None:
            return False
        gpa, view = page
        if value is not None:
            self._set_bit(view, base, vector, value)
            self._wrote(gpa, PAGE_SIZE)
        (reg,) = APIC_REG.unpack_from(view, base + (vector // BITS_PER_APIC_REG) * VAPIC_REG_STRIDE)
        return bool(reg >> (vector % BITS_PER_APIC_REG) & 1)

    def highest(self, base: int) -> int:
        """Highest vector set in the 256-bit IRR or ISR, 0 if none."""
        page = self._view()
        return 0 if page is None else self._highest(page[1], base)

    def register(self, offset: int) -> int:
        """The low byte of the register at `offset` (TPR, PPR)."""
        page = self._view()
        return 0 if page is None else page[1][offset]

    def update_ppr(self) -> int:
        """PPR = TPR if its priority class is at least SVI's, else SVI's class (PPR
        virtualization); written to the page and returned."""
        page = self._view()
        if page is None:
            return 0
        gpa, view = page
        ppr = self._update_ppr(view)
        self._wrote(gpa + VAPIC_PPR, APIC_REG.size)
        return ppr

    def write_tpr(self, value: int) -> None:
        """A virtualized TPR write (x2APIC MSR 808h): TPR, then PPR."""
        page = self._view()
        if page is None:
            return
        gpa, view = page
        APIC_REG.pack_into(view, VAPIC_TPR, value)
        self._update_ppr(view)
        self._wrote(gpa, PAGE_SIZE)

    def delivery_on(self) -> bool:
        """Virtual-interrupt delivery is enabled in the secondary controls."""
        return bool(self.vmcs.values.get(SECONDARY_CONTROLS, 0) & SEC_VIRTUAL_INTR_DELIVERY)

    def interrupt_pending(self) -> bool:
        """RVI's priority class is above PPR's, so virtual-interrupt delivery would take it."""
        if not self.delivery_on() or not self.rvi:
            return False
        return (self.rvi & APIC_PRIORITY_CLASS) > (self.update_ppr() & APIC_PRIORITY_CLASS)

    def acknowledge(self) -> int:
        """Take RVI for delivery: IRR to ISR, SVI = the vector, RVI = the next highest IRR
        vector, PPR updated. Returns the vector."""
        vector = self.rvi
        self.svi = vector
        page = self._view()
        if page is None:
            self.rvi = 0
            return vector
        gpa, view = page
        self._set_bit(view, VAPIC_IRR, vector, False)
        self._set_bit(view, VAPIC_ISR, vector, True)
        self.rvi = self._highest(view, VAPIC_IRR)
        self._update_ppr(view)
        self._wrote(gpa, PAGE_SIZE)
        return vector

    def eoi(self) -> tuple[int, bool]:
        """A virtual EOI: clear SVI's ISR bit, SVI = next highest ISR vector, PPR updated.
        Returns the vector and whether its EOI-exit bitmap bit asks for an exit."""
        vector = self.svi
        page = self._view()
        if page is None:
            self.svi = 0
        else:
            gpa, view = page
            self._set_bit(view, VAPIC_ISR, vector, False)
            self.svi = self._highest(view, VAPIC_ISR)
            self._update_ppr(view)
            self._wrote(gpa, PAGE_SIZE)
        field = Vmcs.EOI_EXIT_BITMAP0 + 2 * (vector // EOI_BITMAP_BITS)
        return vector, bool(self.vmcs.read(field) >> (vector % EOI_BITMAP_BITS) & 1)
