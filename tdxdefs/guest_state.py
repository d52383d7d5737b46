"""L2_ENTER_GUEST_STATE: the block TDG.VP.ENTER loads into the L2 vCPU and writes back on exit.

Intel TDX Module TD Partitioning Architecture Specification, TDG.VP.ENTER ("L2_ENTER_GUEST_STATE":
16 GPRs in architectural order, RFLAGS, RIP, SSP and the 16-bit GUEST_INTERRUPT_STATUS, RVI in the
low byte and SVI in the high byte; 154 bytes in a 256-byte aligned block).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tdxdefs.layout import Layout

L2_ENTER_GUEST_STATE_ALIGN = 256
L2_ENTER_GUEST_STATE_SIZE = 256  # the aligned block L1 provides; the structure uses its start


@dataclass(frozen=True, slots=True)
class L2EnterGuestState(Layout):
    """L2_ENTER_GUEST_STATE (154 bytes)."""

    NAME: ClassVar[str] = "L2_ENTER_GUEST_STATE"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("rax", "Q"),
        ("rcx", "Q"),
        ("rdx", "Q"),
        ("rbx", "Q"),
        ("rsp", "Q"),
        ("rbp", "Q"),
        ("rsi", "Q"),
        ("rdi", "Q"),
        ("r8", "Q"),
        ("r9", "Q"),
        ("r10", "Q"),
        ("r11", "Q"),
        ("r12", "Q"),
        ("r13", "Q"),
        ("r14", "Q"),
        ("r15", "Q"),
        ("rflags", "Q"),
        ("rip", "Q"),
        ("ssp", "Q"),
        ("guest_interrupt_status", "H"),
    )
    SIZE: ClassVar[int] = 154

    rax: int
    rcx: int
    rdx: int
    rbx: int
    rsp: int
    rbp: int
    rsi: int
    rdi: int
    r8: int
    r9: int
    r10: int
    r11: int
    r12: int
    r13: int
    r14: int
    r15: int
    rflags: int
    rip: int
    ssp: int
    guest_interrupt_status: int

    @property
    def gprs(self) -> tuple[int, ...]:
        """The 16 GPRs in architectural order."""
        return tuple(self.values()[:16])
