"""What an L2 exit reports to L1, and why the model stopped unicorn on the way there."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class StopKind(IntEnum):
    """Why unicorn was stopped."""

    EXIT = 0
    EXCEPTION = 1
    WINDOW = 2
    VIRT_EOI = 3
    EMULATE_MSR = 4


@dataclass(slots=True)
class ExitInfo:
    """Everything TDG.VP.ENTER reports on an L2->L1 exit (Intel TDX Module TD Partitioning
    Architecture Specification, TDG.VP.ENTER output operands; Intel SDM Vol. 3, VM-exit
    information fields)."""

    status: int
    reason: int
    qualification: int = 0
    gla: int = 0
    gpa: int = 0
    intr_info: int = 0
    intr_error: int = 0
    idt_info: int = 0
    idt_error: int = 0
    instr_info: int = 0
    instr_len: int = 0
    eeq: int = 0


@dataclass(slots=True)
class Stop:
    """Where and why unicorn stopped, as the hooks record it for the run loop."""

    kind: StopKind
    exit: ExitInfo | None = None
    vector: int = 0
    error_code: int | None = None
    rip: int = 0
    next_rip: int = 0
    msr: int = 0
    value: int = 0
    write: bool = False
    cr2: int | None = None
    addr: int = -1  # the instruction that raised an exception, when known
