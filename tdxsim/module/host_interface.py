"""What the module asks of the untrusted host VMM: TDVMCALLs to service and TD exits to handle.

A TDG.VP.VMCALL (Intel TDX Module v1.5 ABI Specification, TDG.VP.VMCALL leaf; GHCI v1.5,
section 3) and an exit the host must see (an EPT violation, an L2 exit routed to the host per the
Intel TDX Module TD Partitioning Architecture Specification) leave the TD through this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tdxsim.abi import TDVMCALL_OPERAND_INVALID
from tdxsim.module.registers import Regs


@dataclass(frozen=True)
class TdExit:
    """A TD exit to the host: why, for which GPA, and (for L2 exits) which VM.

    `kind` is one of "ept_violation", "tdvmcall", "l2_host_routed", "timer".
    """

    kind: str
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
