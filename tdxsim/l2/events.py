"""Event delivery into L2 through its IDT, 64-bit mode (Intel SDM Vol. 3, chapter "Interrupt and
Exception Handling": 64-bit IDT gate descriptors, the interrupt stack frame, RFLAGS on entry to
a handler), and the interruption-information word that describes an event in the VMCS (Intel
SDM Vol. 3, VM-entry interruption-information and IDT-vectoring information fields).

Same-privilege (CPL0) interrupt and trap gates only; the IST and a stack switch are not
modelled.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from tdxdefs.vmcs import (
    INTR_INFO_DELIVER_ERROR,
    INTR_INFO_TYPE_SHIFT,
    INTR_INFO_VALID,
    INTR_TYPE_HW_EXCEPTION,
    INTR_TYPE_SW_EXCEPTION,
    INTR_TYPE_SW_INTERRUPT,
)
from tdxdefs.x86 import RFLAGS_IF, RFLAGS_NT, RFLAGS_RF, RFLAGS_TF, VECTOR_UD
from tdxsim.l2.decode import OP_INTN, SOFTWARE_INT_OPS

U64 = (1 << 64) - 1
IDT_GATE_SIZE = 16
IDT_GATE = struct.Struct("<HHBBHIxxxx")  # offset 15:0, selector, IST, type/attr, 31:16, 63:32
GATE_PRESENT = 0x80
GATE_TYPE_MASK = 0x0F
GATE_TYPE_INTERRUPT = 0x0E
GATE_TYPE_TRAP = 0x0F
STACK_ALIGN = ~0xF & U64
CPL_MASK = 0x3
FRAME = struct.Struct("<5Q")  # RIP, CS, RFLAGS, RSP, SS: one 8-byte slot each
FRAME_WITH_ERROR = struct.Struct("<6Q")  # the error code, then FRAME


class IdtGate(NamedTuple):
    """A 64-bit IDT gate descriptor (a tuple: one is parsed for every event delivered)."""

    handler: int
    selector: int
    gate_type: int
    present: bool

    @classmethod
    def parse(cls, raw: bytes) -> IdtGate:
        lo, selector, _ist, type_attr, mid, hi = IDT_GATE.unpack(raw)
        return cls(
            lo | (mid << 16) | (hi << 32),
            selector,
            type_attr & GATE_TYPE_MASK,
            bool(type_attr & GATE_PRESENT),
        )

    @property
    def usable(self) -> bool:
        """Present, and an interrupt or trap gate (anything else is a #GP: here a triple
        fault, as nested faults are not modelled)."""
        return self.present and self.gate_type in (GATE_TYPE_INTERRUPT, GATE_TYPE_TRAP)

    def handler_rflags(self, rflags: int) -> int:
        """RFLAGS on entry to the handler: TF, NT, RF clear; IF clear through an interrupt
        gate, kept through a trap gate."""
        rflags &= ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF)
        if self.gate_type == GATE_TYPE_INTERRUPT:
            rflags &= ~RFLAGS_IF
        return rflags


def gate_address(idt_base: int, idt_limit: int, vector: int) -> int | None:
    """Linear address of the vector's gate, or None when it lies beyond the IDT limit."""
    gate = idt_base + vector * IDT_GATE_SIZE
    if gate + IDT_GATE_SIZE - 1 > idt_base + idt_limit:
        return None
    return gate


def interrupt_frame(
    rip: int, cs: int, rflags: int, rsp: int, ss: int, error: int | None
) -> tuple[int, bytes]:
    """The new RSP and the bytes pushed there: [error code,] RIP, CS, RFLAGS, RSP, SS, on a
    stack aligned down to 16 bytes first."""
    aligned = rsp & STACK_ALIGN
    if error is None:
        return (aligned - FRAME.size) & U64, FRAME.pack(rip, cs, rflags, rsp, ss)
    return (aligned - FRAME_WITH_ERROR.size) & U64, FRAME_WITH_ERROR.pack(
        error, rip, cs, rflags, rsp, ss
    )


def event_type(first_byte: int | None, vector: int) -> int:
    """Interruption type of an exception raised by the instruction whose first byte is given:
    INT n is a software interrupt, INT3/INTO/INT1 software exceptions, else hardware."""
    if first_byte in SOFTWARE_INT_OPS and vector != VECTOR_UD:
        return INTR_TYPE_SW_INTERRUPT if first_byte == OP_INTN else INTR_TYPE_SW_EXCEPTION
    return INTR_TYPE_HW_EXCEPTION


def interruption_info(vector: int, kind: int, has_error: bool = False) -> int:
    """The interruption-information word: vector, type, error-code-valid, valid."""
    info = vector | (kind << INTR_INFO_TYPE_SHIFT) | INTR_INFO_VALID
    return info | (INTR_INFO_DELIVER_ERROR if has_error else 0)
