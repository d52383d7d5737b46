"""The TDCALL ABI L1 is written against (reference tdx-partitioning-abi.md section 1), and a typed
wrapper over the register-level entry point L1 is given.

L1 sees only `Platform.tdcall`: 16 GPRs in architectural order in (leaf in RAX), 16 out (status in
RAX). Every helper raises `TdcallError` naming the leaf, the TDVMCALL sub-function and the status.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Protocol

# --- registers (architectural order, as the entry point takes them) ------------------------------
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R8, R9, R10, R11, R12, R13, R14, R15 = range(8, 16)
GPR_COUNT = 16
REGISTER_NAMES = {
    "rcx": RCX,
    "rdx": RDX,
    "r8": R8,
    "r9": R9,
    "r10": R10,
    "r11": R11,
    "r12": R12,
    "r13": R13,
    "r14": R14,
    "r15": R15,
}
U64 = (1 << 64) - 1


class Leaf(IntEnum):
    """TDCALL leaf numbers in RAX (reference 1.1)."""

    VP_VMCALL = 0
    VP_INFO = 1
    MR_RTMR_EXTEND = 2
    VP_VEINFO_GET = 3
    MR_REPORT = 4
    VP_CPUIDVE_SET = 5
    MEM_PAGE_ACCEPT = 6
    VM_RD = 7
    VM_WR = 8
    VP_RD = 9
    VP_WR = 10
    SYS_RD = 11
    SYS_RDALL = 12
    MR_VERIFYREPORT = 22
    MEM_PAGE_ATTR_RD = 23
    MEM_PAGE_ATTR_WR = 24
    VP_ENTER = 25
    VP_INVEPT = 26
    VP_INVVPID = 27


LEAF_NAMES: dict[int, str] = {
    Leaf.VP_VMCALL: "TDG.VP.VMCALL",
    Leaf.VP_INFO: "TDG.VP.INFO",
    Leaf.MR_RTMR_EXTEND: "TDG.MR.RTMR.EXTEND",
    Leaf.VP_VEINFO_GET: "TDG.VP.VEINFO.GET",
    Leaf.MR_REPORT: "TDG.MR.REPORT",
    Leaf.VP_CPUIDVE_SET: "TDG.VP.CPUIDVE.SET",
    Leaf.MEM_PAGE_ACCEPT: "TDG.MEM.PAGE.ACCEPT",
    Leaf.VM_RD: "TDG.VM.RD",
    Leaf.VM_WR: "TDG.VM.WR",
    Leaf.VP_RD: "TDG.VP.RD",
    Leaf.VP_WR: "TDG.VP.WR",
    Leaf.SYS_RD: "TDG.SYS.RD",
    Leaf.SYS_RDALL: "TDG.SYS.RDALL",
    Leaf.MR_VERIFYREPORT: "TDG.MR.VERIFYREPORT",
    Leaf.MEM_PAGE_ATTR_RD: "TDG.MEM.PAGE.ATTR.RD",
    Leaf.MEM_PAGE_ATTR_WR: "TDG.MEM.PAGE.ATTR.WR",
    Leaf.VP_ENTER: "TDG.VP.ENTER",
    Leaf.VP_INVEPT: "TDG.VP.INVEPT",
    Leaf.VP_INVVPID: "TDG.VP.INVVPID",
}


class Tdvmcall(IntEnum):
    """TDG.VP.VMCALL sub-functions in R11 with R10 = 0 (reference 1.3)."""

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
    """TDVMCALL status in R10 (reference 1.3)."""

    SUCCESS = 0
    RETRY = 1
    OPERAND_INVALID = 0x8000000000000000
    GPA_INUSE = 0x8000000000000001
    ALIGN_ERROR = 0x8000000000000002


SUBFUNCTION_NAMES = {int(s): s.name for s in Tdvmcall}
VMCALL_STATUS_NAMES = {int(s): s.name for s in TdvmcallStatus}

# --- RAX completion status (reference 1.4) --------------------------------------------------------
TDX_SUCCESS = 0x0000000000000000
TDX_OPERAND_INVALID = 0xC000010000000000
TDX_OPERAND_BUSY = 0x8000020000000000
TDX_PAGE_ALREADY_ACCEPTED = 0x00000B0A00000000
TDX_PAGE_SIZE_MISMATCH = 0xC0000B0B00000000
TDX_METADATA_FIELD_ID_INCORRECT = 0xC0000C0000000000
TDX_METADATA_FIELD_NOT_READABLE = 0xC0000C0200000000
STATUS_ERROR_BIT = 1 << 63
STATUS_NON_RECOVERABLE_BIT = 1 << 62
STATUS_CLASS_MASK = 0xFFFFFFFF00000000
STATUS_NAMES = {
    TDX_SUCCESS: "TDX_SUCCESS",
    TDX_OPERAND_INVALID: "TDX_OPERAND_INVALID",
    TDX_OPERAND_BUSY: "TDX_OPERAND_BUSY",
    TDX_PAGE_ALREADY_ACCEPTED: "TDX_PAGE_ALREADY_ACCEPTED",
    TDX_PAGE_SIZE_MISMATCH: "TDX_PAGE_SIZE_MISMATCH",
    TDX_METADATA_FIELD_ID_INCORRECT: "TDX_METADATA_FIELD_ID_INCORRECT",
    TDX_METADATA_FIELD_NOT_READABLE: "TDX_METADATA_FIELD_NOT_READABLE",
}

# --- operands -----------------------------------------------------------------------------------
EXPOSE_R10_R15 = 0xFC00  # VP.VMCALL RCX: the GPRs the host may see and write
GHCI_STANDARD = 0  # VP.VMCALL R10 on input: a GHCI-standard call
LEVEL_4K, LEVEL_2M = 0, 1  # MEM.PAGE.ACCEPT RCX[2:0]
TDREPORT_SUBTYPE_0 = 0  # MR.REPORT R8
NUM_L2_VMS_FIELD = 0x9010000100000005  # TDG.VM.RD field ID of NUM_L2_VMS (reference 3.1)
RTMR_COUNT = 4


def is_error(status: int) -> bool:
    """True for an error-class RAX status (bit 63)."""
    return bool(status & STATUS_ERROR_BIT)


def status_class(status: int) -> int:
    """The class of a RAX status (bits 63:32), details cleared."""
    return status & STATUS_CLASS_MASK


def status_name(status: int) -> str:
    """A RAX status as the reference names it, with its hex value."""
    name = STATUS_NAMES.get(status_class(status))
    return f"{name} ({status:#018x})" if name else f"{status:#018x}"


class TdcallError(RuntimeError):
    """A TDCALL or TDVMCALL did not succeed; names the leaf, the sub-function and the status."""

    def __init__(
        self,
        leaf: int,
        status: int,
        *,
        subfunction: int | None = None,
        vmcall_status: int | None = None,
        detail: str = "",
    ) -> None:
        self.leaf = leaf
        self.status = status
        self.subfunction = subfunction
        self.vmcall_status = vmcall_status
        where = LEAF_NAMES.get(leaf, f"leaf {leaf}")
        if subfunction is not None:
            where += f" {SUBFUNCTION_NAMES.get(subfunction, f'{subfunction:#x}')}"
        if vmcall_status is not None:
            code = VMCALL_STATUS_NAMES.get(vmcall_status, f"{vmcall_status:#x}")
            what = f"R10 = {code} ({vmcall_status:#x})"
        else:
            what = f"RAX = {status_name(status)}"
        super().__init__(f"{where} failed: {what}" + (f"; {detail}" if detail else ""))


class Platform(Protocol):
    """What the TD gives L1: the register-level TDCALL and TD memory (private and shared)."""

    memory: memoryview
    shared_bit: int
    regions: list[tuple[int, int, int]]

    def tdcall(self, regs: Sequence[int]) -> list[int]: ...

    def offset(self, gpa: int) -> int: ...


class Tdcall:
    """Typed TDCALLs over the register-level entry point."""

    def __init__(self, entry: Callable[[Sequence[int]], list[int]]) -> None:
        self._entry = entry

    def raw(self, leaf: int, **regs: int) -> list[int]:
        """One TDCALL with named input registers; all 16 registers after it, status unchecked."""
        values = [0] * GPR_COUNT
        values[RAX] = leaf
        for name, value in regs.items():
            values[REGISTER_NAMES[name]] = value & U64
        out = list(self._entry(values))
        if len(out) != GPR_COUNT:
            raise TdcallError(leaf, U64, detail=f"{len(out)} registers came back, not 16")
        return out

    def call(self, leaf: int, **regs: int) -> list[int]:
        """One TDCALL; raises TdcallError on an error-class status."""
        out = self.raw(leaf, **regs)
        if is_error(out[RAX]):
            raise TdcallError(leaf, out[RAX])
        return out

    def vm_rd(self, field_id: int) -> int:
        """TDG.VM.RD of one TD-scope metadata field; its value (R8)."""
        out = self.raw(Leaf.VM_RD, rcx=0, rdx=field_id)
        if is_error(out[RAX]):
            raise TdcallError(Leaf.VM_RD, out[RAX], detail=f"field {field_id:#018x}")
        return out[R8]

    def accept(self, gpa: int, level: int = LEVEL_4K) -> int:
        """TDG.MEM.PAGE.ACCEPT; returns the status (success class includes ALREADY_ACCEPTED)."""
        out = self.raw(Leaf.MEM_PAGE_ACCEPT, rcx=gpa | level)
        if is_error(out[RAX]):
            raise TdcallError(Leaf.MEM_PAGE_ACCEPT, out[RAX], detail=f"GPA {gpa:#x} level {level}")
        return out[RAX]

    def rtmr_extend(self, digest_gpa: int, index: int) -> None:
        """TDG.MR.RTMR.EXTEND of RTMR `index` with the 48-byte digest at `digest_gpa`."""
        out = self.raw(Leaf.MR_RTMR_EXTEND, rcx=digest_gpa, rdx=index)
        if is_error(out[RAX]):
            raise TdcallError(
                Leaf.MR_RTMR_EXTEND, out[RAX], detail=f"RTMR{index}, digest at GPA {digest_gpa:#x}"
            )

    def mr_report(self, report_gpa: int, reportdata_gpa: int) -> None:
        """TDG.MR.REPORT (subtype 0): the TDREPORT at `report_gpa` over the REPORTDATA given."""
        out = self.raw(Leaf.MR_REPORT, rcx=report_gpa, rdx=reportdata_gpa, r8=TDREPORT_SUBTYPE_0)
        if is_error(out[RAX]):
            raise TdcallError(
                Leaf.MR_REPORT,
                out[RAX],
                detail=f"TDREPORT {report_gpa:#x}, REPORTDATA {reportdata_gpa:#x}",
            )

    def tdvmcall(self, subfunction: int, *, allow: Sequence[int] = (), **args: int) -> list[int]:
        """TDG.VP.VMCALL exposing R10..R15; raises unless R10 is SUCCESS or in `allow`."""
        out = self.raw(
            Leaf.VP_VMCALL, rcx=EXPOSE_R10_R15, r10=GHCI_STANDARD, r11=subfunction, **args
        )
        if is_error(out[RAX]):
            raise TdcallError(Leaf.VP_VMCALL, out[RAX], subfunction=subfunction)
        if out[R10] != TdvmcallStatus.SUCCESS and out[R10] not in allow:
            raise TdcallError(
                Leaf.VP_VMCALL, out[RAX], subfunction=subfunction, vmcall_status=out[R10]
            )
        return out
