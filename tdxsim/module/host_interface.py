"""What the module asks of the untrusted host VMM: TDVMCALLs to service and TD exits to handle.

A TDG.VP.VMCALL (Intel TDX Module v1.5 ABI Specification, TDG.VP.VMCALL leaf; GHCI v1.5,
section 3) and an exit the host must see (an EPT violation, an L2 exit routed to the host per the
Intel TDX Module TD Partitioning Architecture Specification) leave the TD through this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from tdxdefs.tdvmcall import TDVMCALL_OPERAND_INVALID
from tdxsim.module.registers import Regs


class TdExitKind(StrEnum):
    """Why the TD exits to the host (a TDVMCALL goes through `HostInterface.tdvmcall` instead)."""

    EPT_VIOLATION = "ept_violation"  # L1 touched a page the host has not mapped (ACCEPT, ATTR.WR)
    L2_HOST_ROUTED = "l2_host_routed"  # an L2 exit the TD partitioning rules route to the host
    TIMER = "timer"  # L2 used its instruction budget: the host's timer interrupt preempts it


@dataclass(frozen=True)
class TdExit:
    """A TD exit to the host: why, for which GPA, and (for L2 exits) which VM."""

    kind: TdExitKind
    gpa: int = 0
    eeq_type: int = 0
    vm: int = 0
    exit_reason: int = 0
    qualification: int = 0


class HostInterface(Protocol):
    """The untrusted host VMM as the module sees it."""

    def tdvmcall(self, regs: Regs) -> Regs:
        """Service a TDG.VP.VMCALL: `regs` holds only the GPRs exposed by the RCX bitmap."""
        ...

    def td_exit(self, event: TdExit) -> bool:
        """A TD exit the host must see; True if the host fixed the cause and the TD may retry."""
        ...


class NullHost:
    """A host that answers every TDVMCALL with OPERAND_INVALID in R10 and fixes no TD exit."""

    def __init__(self) -> None:
        self.exits: list[TdExit] = []
        self.calls: list[Regs] = []

    def tdvmcall(self, regs: Regs) -> Regs:
        self.calls.append(regs.copy())
        out = regs.copy()
        out.r10 = TDVMCALL_OPERAND_INVALID
        return out

    def td_exit(self, event: TdExit) -> bool:
        self.exits.append(event)
        return False
