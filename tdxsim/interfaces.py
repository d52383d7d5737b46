"""The register file of a TDCALL and the hooks part 2 fills in: host VMM and attestation.

`HostInterface` is what the module calls when a TDCALL or an L2 event needs the host (a TDVMCALL,
or a TD exit the host must service); `AttestationInterface` builds the TDREPORT for MR.REPORT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Protocol

from tdxdefs.tdvmcall import TDVMCALL_OPERAND_INVALID

GPR_NAMES = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
U64 = (1 << 64) - 1
_ALL_GPRS = attrgetter(*GPR_NAMES)  # one C call for all 16 (the TDCALL hot path copies often)


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
        """Build from 16 values in architectural order, truncated to 64 bits."""
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


@dataclass(frozen=True)
class TdInfo:
    """What a TDREPORT builder needs from the TD (reference 7.1 TDINFO_STRUCT fields)."""

    attributes: int
    xfam: int
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]
    num_l2_vms: int
    num_vcpus: int


class HostInterface(Protocol):
    """The untrusted host VMM as the module sees it (filled in by part 2)."""

    def tdvmcall(self, regs: Regs) -> Regs:
        """Service a TDG.VP.VMCALL: `regs` holds only the GPRs exposed by the RCX bitmap."""
        ...

    def td_exit(self, event: TdExit) -> bool:
        """A TD exit the host must see; True if the host fixed the cause and the TD may retry."""
        ...


class AttestationInterface(Protocol):
    """Builds the 1024-byte TDREPORT_STRUCT for TDG.MR.REPORT (filled in by part 2)."""

    def tdreport(self, td_info: TdInfo, report_data: bytes) -> bytes:
        """Return the TDREPORT for this TD and REPORTDATA."""
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
