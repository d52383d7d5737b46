"""The virtual interrupt controller of one L2 vCPU: an x2APIC whose state lives in the L2's
virtual-APIC page, injected through RVI in the guest-state block (Intel SDM Vol. 3, 30.2
"Evaluation and delivery of virtual interrupts"; Intel TDX Module TD Partitioning Architecture
Specification: L2 has no posted interrupts, L1 raises RVI in L2_ENTER_GUEST_STATE).

L1 posts a vector by setting its bit in the virtual IRR and raising RVI; the CPU (the module)
delivers it when RFLAGS.IF and the priority allow, moves it to the ISR, and virtualizes the EOI
the L2 writes to the x2APIC EOI register. The virtual-APIC page is L1's: no L2 has an alias of it.
A storm of posts cannot grow anything: the IRR is 256 bits and a vector already pending is
counted once.
"""

from __future__ import annotations

from svsm.errors import SvsmError
from svsm.memory import Memory
from svsm.vcpu import GuestState
from tdxdefs.x86 import FIRST_EXTERNAL_VECTOR, LAST_VECTOR, VAPIC_IRR, VAPIC_ISR, VAPIC_REG_STRIDE

BITS_PER_REGISTER = 32


class InterruptError(SvsmError):
    """A vector no L2 can be given (an exception vector or out of range)."""


def _register(base: int, vector: int) -> tuple[int, int]:
    return base + (vector // BITS_PER_REGISTER) * VAPIC_REG_STRIDE, vector % BITS_PER_REGISTER


class VirtualApic:
    """The x2APIC of one L2 vCPU, over its virtual-APIC page."""

    def __init__(self, memory: Memory, page_gpa: int) -> None:
        self.memory = memory
        self.page_gpa = page_gpa
        self.posted = 0
        self.coalesced = 0

    def _bit(self, base: int, vector: int) -> bool:
        offset, bit = _register(base, vector)
        word = int.from_bytes(self.memory.read(self.page_gpa + offset, 4), "little")
        return bool(word >> bit & 1)

    def pending(self, vector: int) -> bool:
        """True if `vector` is requested (IRR) and not yet delivered."""
        return self._bit(VAPIC_IRR, vector)

    def in_service(self, vector: int) -> bool:
        """True if `vector` was delivered and not yet EOI'd (ISR)."""
        return self._bit(VAPIC_ISR, vector)

    def highest(self, base: int) -> int:
        """The highest vector set in the IRR or ISR at `base`, 0 if none."""
        for index in range(LAST_VECTOR // BITS_PER_REGISTER, -1, -1):
            at = self.page_gpa + base + index * VAPIC_REG_STRIDE
            word = int.from_bytes(self.memory.read(at, 4), "little")
            if word:
                return index * BITS_PER_REGISTER + word.bit_length() - 1
        return 0

    def post(self, vector: int, state: GuestState) -> bool:
        """Request `vector` for the L2; False if it was already pending (coalesced)."""
        if not FIRST_EXTERNAL_VECTOR <= vector <= LAST_VECTOR:
            raise InterruptError(f"vector {vector:#x} is not an external interrupt vector")
        offset, bit = _register(VAPIC_IRR, vector)
        at = self.page_gpa + offset
        word = int.from_bytes(self.memory.read(at, 4), "little")
        if word >> bit & 1:
            self.coalesced += 1
            return False
        self.memory.write(at, (word | 1 << bit).to_bytes(4, "little"))
        state.rvi = max(state.rvi, vector)
        self.posted += 1
        return True
