"""The virtual-APIC page of one L2 VM: IRR and ISR bit arrays, TPR, PPR, virtual EOI, and the
RVI/SVI pair of the guest interrupt status (Intel SDM Vol. 3, chapter "APIC Virtualization and
Virtual Interrupts": PPR virtualization, EOI virtualization, virtual-interrupt delivery).

The page lives in TD memory at the VMCS virtual-APIC address; RVI and SVI travel in the L2
guest-state block (Intel TDX Module TD Partitioning Architecture Specification).
"""

from __future__ import annotations

from collections.abc import Callable

from tdxdefs.vmcs import SEC_VIRTUAL_INTR_DELIVERY, Vmcs
from tdxdefs.x86 import VAPIC_IRR, VAPIC_ISR, VAPIC_PPR, VAPIC_REG_STRIDE, VAPIC_TPR
from tdxsim.module.memory import PageState, TdMemory
from tdxsim.module.vmcs import L2Vmcs

BITS_PER_APIC_REG = 32
VAPIC_BIT_REGS = 8  # a 256-bit array is 8 32-bit registers at a 16-byte stride
APIC_PRIORITY_CLASS = 0xF0
APIC_REG_SIZE = 4
EOI_BITMAP_BITS = 64


class VirtualApic:
    """One L2 VM's virtual APIC. `write` is how the model writes TD memory (so code-page
    tracking sees it); reads go straight to `memory`."""

    def __init__(self, memory: TdMemory, vmcs: L2Vmcs, write: Callable[[int, bytes], None]) -> None:
        self.memory = memory
        self.vmcs = vmcs
        self._write = write
        self.rvi = 0  # requesting virtual interrupt: highest vector in IRR
        self.svi = 0  # servicing virtual interrupt: highest vector in ISR

    def page(self) -> int | None:
        """GPA of the virtual-APIC page, or None while it is not a mapped page."""
        gpa = self.vmcs.read(Vmcs.VIRTUAL_APIC_PAGE_ADDR)
        return gpa if self.memory.page_state(gpa) == PageState.MAPPED else None

    def bit(self, base: int, vector: int, value: bool | None = None) -> bool:
        """The bit of `vector` in the 256-bit array at `base` (IRR or ISR); set it if given."""
        page = self.page()
        if page is None:
            return False
        gpa = page + base + (vector // BITS_PER_APIC_REG) * VAPIC_REG_STRIDE
        reg = int.from_bytes(self.memory.read(gpa, APIC_REG_SIZE), "little")
        bit = 1 << (vector % BITS_PER_APIC_REG)
        if value is not None:
            reg = reg | bit if value else reg & ~bit
            self._write(gpa, reg.to_bytes(APIC_REG_SIZE, "little"))
        return bool(reg & bit)

    def highest(self, base: int) -> int:
        """Highest vector set in the 256-bit IRR or ISR, 0 if none."""
        page = self.page()
        if page is None:
            return 0
        raw = self.memory.read(page + base, VAPIC_REG_STRIDE * VAPIC_BIT_REGS)
        for reg in range(VAPIC_BIT_REGS - 1, -1, -1):
            at = reg * VAPIC_REG_STRIDE
            word = int.from_bytes(raw[at : at + APIC_REG_SIZE], "little")
            if word:
                return reg * BITS_PER_APIC_REG + word.bit_length() - 1
        return 0

    def register(self, offset: int, value: int | None = None) -> int:
        """The low byte of the register at `offset` (TPR, PPR); write the register if given."""
        page = self.page()
        if page is None:
            return 0
        if value is not None:
            self._write(page + offset, value.to_bytes(APIC_REG_SIZE, "little"))
        return self.memory.read(page + offset, 1)[0]

    def update_ppr(self) -> int:
        """PPR = TPR if its priority class is at least SVI's, else SVI's class (PPR
        virtualization); written to the page and returned."""
        tpr = self.register(VAPIC_TPR)
        svi_class = self.svi & APIC_PRIORITY_CLASS
        ppr = tpr if (tpr & APIC_PRIORITY_CLASS) >= svi_class else svi_class
        self.register(VAPIC_PPR, ppr)
        return ppr

    def write_tpr(self, value: int) -> None:
        """A virtualized TPR write (x2APIC MSR 808h): TPR, then PPR."""
        self.register(VAPIC_TPR, value)
        self.update_ppr()

    def delivery_on(self) -> bool:
        """Virtual-interrupt delivery is enabled in the secondary controls."""
        return bool(self.vmcs.read(Vmcs.SECONDARY_CONTROLS) & SEC_VIRTUAL_INTR_DELIVERY)

    def interrupt_pending(self) -> bool:
        """RVI's priority class is above PPR's, so virtual-interrupt delivery would take it."""
        if not self.delivery_on() or not self.rvi:
            return False
        return (self.rvi & APIC_PRIORITY_CLASS) > (self.update_ppr() & APIC_PRIORITY_CLASS)

    def acknowledge(self) -> int:
        """Take RVI for delivery: IRR to ISR, SVI = the vector, RVI = the next highest IRR
        vector, PPR updated. Returns the vector."""
        vector = self.rvi
        self.bit(VAPIC_IRR, vector, False)
        self.bit(VAPIC_ISR, vector, True)
        self.svi = vector
        self.rvi = self.highest(VAPIC_IRR)
        self.update_ppr()
        return vector

    def eoi(self) -> tuple[int, bool]:
        """A virtual EOI: clear SVI's ISR bit, SVI = next highest ISR vector, PPR updated.
        Returns the vector and whether its EOI-exit bitmap bit asks for an exit."""
        vector = self.svi
        self.bit(VAPIC_ISR, vector, False)
        self.svi = self.highest(VAPIC_ISR)
        self.update_ppr()
        field = Vmcs.EOI_EXIT_BITMAP0 + 2 * (vector // EOI_BITMAP_BITS)
        return vector, bool(self.vmcs.read(field) >> (vector % EOI_BITMAP_BITS) & 1)
