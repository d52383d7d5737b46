"""A typed wrapper over the register-level TDCALL entry point L1 is given.

The ABI itself (leaves, statuses, TDVMCALL sub-functions) is `tdxdefs.tdcall` and
`tdxdefs.tdvmcall` (Intel TDX Module v1.5 ABI Specification, "TDCALL leaf functions"; GHCI v1.5,
section 2.4).

L1 sees only `Platform.tdcall`: 16 GPRs in architectural order in (leaf in RAX), 16 out (status in
RAX). Every helper raises `TdcallError` naming the leaf, the TDVMCALL sub-function and the status.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from svsm.errors import SvsmError
from tdxdefs.tdcall import (
    GPR_COUNT,
    LEAF_NAMES,
    LEVEL_4K,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    RAX,
    RCX,
    RDX,
    TDREPORT_SUBTYPE_0,
    U64_MASK,
    Leaf,
    is_error,
    status_name,
)
from tdxdefs.tdvmcall import (
    EXPOSE_R10_R15,
    GHCI_STANDARD,
    SUBFUNCTION_NAMES,
    VMCALL_STATUS_NAMES,
    TdvmcallStatus,
)

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


class TdcallError(SvsmError):
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


class Tdcall:
    """Typed TDCALLs over the register-level entry point."""

    def __init__(self, entry: Callable[[Sequence[int]], list[int]]) -> None:
        self._entry = entry

    def raw(self, leaf: int, **regs: int) -> list[int]:
        """One TDCALL with named input registers; all 16 registers after it, status unchecked."""
        values = [0] * GPR_COUNT
        values[RAX] = leaf
        for name, value in regs.items():
            values[REGISTER_NAMES[name]] = value & U64_MASK
        return self.raw_values(values)

    def raw_values(self, values: Sequence[int]) -> list[int]:
        """One TDCALL with all 16 input registers given in architectural order (leaf in RAX,
        each already a 64-bit value); status unchecked. For the calls L1 makes at every L2 exit,
        whose registers it builds once (`input_registers`) instead of by name per call."""
        out = list(self._entry(values))
        if len(out) != GPR_COUNT:
            leaf = values[RAX]
            raise TdcallError(leaf, U64_MASK, detail=f"{len(out)} registers came back, not 16")
        return out

    @staticmethod
    def input_registers(leaf: int, **regs: int) -> tuple[int, ...]:
        """The 16 input registers of a TDCALL with named registers, built once for `raw_values`
        (a tuple: no call can change it)."""
        values = [0] * GPR_COUNT
        values[RAX] = int(leaf)
        for name, value in regs.items():
            values[REGISTER_NAMES[name]] = int(value) & U64_MASK
        return tuple(values)

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
