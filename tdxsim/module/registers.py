"""The register file of a TDCALL: the 16 general-purpose registers in architectural order.

Intel TDX Module v1.5 ABI Specification, section 5 (TDCALL interface): the leaf number is in RAX,
operands and outputs in the other GPRs, named here by their architectural operand index.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, fields
from operator import attrgetter

GPR_NAMES = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
U64 = (1 << 64) - 1
_ALL_GPRS = attrgetter(*GPR_NAMES)  # one C call for all 16 (the TDCALL hot path copies often)
_GPR_BLOCK = struct.Struct(f"={len(GPR_NAMES)}Q")


@dataclass(slots=True)
class Regs:
    """The 16 general-purpose registers as a TDCALL sees them (architectural order)."""

    rax: int = 0
    rcx: int = 0
    rdx: int = 0
    rbx: int = 0
    rsp: int = 0
    rbp: int = 0
    rsi: int = 0
    rdi: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0

    def copy(self) -> Regs:
        """An independent copy."""
        return Regs(*_ALL_GPRS(self))

    def as_list(self) -> list[int]:
        """Values in architectural order (index = operand id)."""
        return list(_ALL_GPRS(self))

    @classmethod
    def from_list(cls, values: Sequence[int]) -> Regs:
        """Build from 16 values in architectural order, truncated to 64 bits. Every TDCALL
        comes through here: 16 values that fit in 64 bits (the common case) are checked and
        taken as ints by one struct round trip, cheaper than masking each."""
        try:
            return cls(*_GPR_BLOCK.unpack(_GPR_BLOCK.pack(*values)))
        except struct.error:  # a value outside 64 bits, or not 16 of them
            return cls(*[v & U64 for v in values])

    def get(self, index: int) -> int:
        """Register by architectural index."""
        return int(getattr(self, GPR_NAMES[index]))

    def set(self, index: int, value: int) -> None:
        """Set a register by architectural index (truncated to 64 bits)."""
        setattr(self, GPR_NAMES[index], value & U64)

    def __repr__(self) -> str:
        names = [f.name for f in fields(self)]
        parts = [f"{n}={getattr(self, n):#x}" for n in names if getattr(self, n)]
        return f"Regs({', '.join(parts)})"
