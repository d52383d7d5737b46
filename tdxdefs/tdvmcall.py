"""TDG.VP.VMCALL (TDVMCALL): the register convention, sub-functions and statuses of the GHCI.

Intel TDX Guest-Hypervisor Communication Interface (GHCI) v1.5, section 2.4 ("TDG.VP.VMCALL
interface": R10 = 0 selects a GHCI-standard call, R11 the sub-function, R10 returns the status)
and section 3 (the sub-functions: Instruction.CPUID/HLT/IO/RDMSR/WRMSR, #VE.RequestMMIO, MapGPA,
GetQuote, ReportFatalError, SetupEventNotifyInterrupt, Service).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from tdxdefs.layout import Layout

GHCI_STANDARD = 0  # TDG.VP.VMCALL R10 on input: a GHCI-standard call
EXPOSE_R10_R15 = 0xFC00  # TDG.VP.VMCALL RCX: the GPRs the host may see and write


class Tdvmcall(IntEnum):
    """TDG.VP.VMCALL sub-functions in R11 with R10 = 0 (GHCI v1.5, section 3)."""

    CPUID = 0x0A
    HLT = 0x0C
    IO = 0x1E
    RDMSR = 0x1F
    WRMSR = 0x20
    REQUEST_MMIO = 0x30
    MAP_GPA = 0x10001
    GET_QUOTE = 0x10002
    REPORT_FATAL_ERROR = 0x10003
    SETUP_EVENT_NOTIFY_INTERRUPT = 0x10004
    SERVICE = 0x10005


class TdvmcallStatus(IntEnum):
    """TDVMCALL completion status in R10 (GHCI v1.5, section 2.4.1)."""

    SUCCESS = 0
    RETRY = 1
    OPERAND_INVALID = 0x8000000000000000
    GPA_INUSE = 0x8000000000000001
    ALIGN_ERROR = 0x8000000000000002


TDVMCALL_SUCCESS = int(TdvmcallStatus.SUCCESS)
TDVMCALL_RETRY = int(TdvmcallStatus.RETRY)
TDVMCALL_OPERAND_INVALID = int(TdvmcallStatus.OPERAND_INVALID)
TDVMCALL_GPA_INUSE = int(TdvmcallStatus.GPA_INUSE)
TDVMCALL_ALIGN_ERROR = int(TdvmcallStatus.ALIGN_ERROR)

SUBFUNCTION_NAMES: dict[int, str] = {int(s): s.name for s in Tdvmcall}
VMCALL_STATUS_NAMES: dict[int, str] = {int(s): s.name for s in TdvmcallStatus}

# --- Instruction.IO and #VE.RequestMMIO operands (GHCI v1.5, sections 3.9 and 3.7) --------------
IO_DIRECTION_READ = 0
IO_DIRECTION_WRITE = 1

# --- ReportFatalError (GHCI v1.5, section 3.4): R12 error code, R13 GPA of the message ---------
FATAL_MESSAGE_VALID = 1 << 63
FATAL_CODE_MASK = 0xFFFFFFFF


# --- Service (GHCI v1.5, section 3.12): command and response buffers start with this header ----
SERVICE_STATUS_SUCCESS = 0
SERVICE_STATUS_UNSUPPORTED = 1  # the response status for a GUID the host does not serve


@dataclass(frozen=True, slots=True)
class ServiceBufferHeader(Layout):
    """Header of a Service command or response buffer: the service GUID, the buffer's length
    (header included), then the status in a response (reserved in a command, not checked)."""

    NAME: ClassVar[str] = "Service buffer header"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("guid", "16s"),
        ("length", "I"),
        ("status", "I"),
    )
    SIZE: ClassVar[int] = 24

    guid: bytes
    length: int
    status: int
