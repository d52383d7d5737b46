"""One L2 vCPU as L1 drives it: its guest-state block, TDG.VP.ENTER, and the exit that comes back
(Intel TDX Module TD Partitioning Architecture Specification, TDG.VP.ENTER: inputs RCX = VM index
and invalidation, RDX = L2_ENTER_GUEST_STATE; outputs RAX = status | exit reason, RCX exit
qualification, RDX guest linear address, R8 guest-physical address, R9 exit interruption, R10
IDT vectoring, R11 instruction info | length, R12 CPL, R13 extended exit qualification).

The guest-state block is in an L1 page no L2 has an alias for, so L1 reads it directly; everything
in it is still the L2's doing and is treated as untrusted values, never as addresses L1 follows
without checking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from svsm.errors import SvsmError
from svsm.memory import Memory
from svsm.tdcall import Tdcall, TdcallError
from tdxdefs.guest_state import L2EnterGuestState
from tdxdefs.metadata import l2_vmcs_field
from tdxdefs.tdcall import (
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    RAX,
    RCX,
    RDX,
    STATUS_CLASS_MASK,
    STATUS_ERROR_BIT,
    TDX_L2_EXIT_HOST_ROUTED_ASYNC,
    TDX_L2_EXIT_HOST_ROUTED_TDVMCALL,
    TDX_L2_EXIT_PENDING_INTERRUPT,
    TDX_PENDING_INTERRUPT,
    TDX_SUCCESS,
    U64_MASK,
    VM_INDEX_SHIFT,
    Leaf,
    is_error,
    status_name,
)
from tdxdefs.vmcs import (
    INTR_INFO_DELIVER_ERROR,
    INTR_INFO_TYPE_SHIFT,
    INTR_INFO_VALID,
    INTR_TYPE_HW_EXCEPTION,
    ExitReason,
    Vmcs,
    pack_intr_status,
    unpack_intr_status,
)
from tdxdefs.x86 import EXCEPTIONS_WITH_ERROR_CODE

EXIT_REASON_MASK = 0xFFFF
EVENT_INFO_MASK = 0x80000FFF  # valid, deliver-error, type, vector
INSTRUCTION_LENGTH_SHIFT = 32
REASON_NAMES = {reason.value: reason.name for reason in ExitReason}
GUEST_STATE = L2EnterGuestState.STRUCT  # the block L1 writes before and reads after VP.ENTER
U32 = 0xFFFFFFFF
L2_EXIT_STATUSES = frozenset(
    {
        TDX_SUCCESS,
        TDX_L2_EXIT_HOST_ROUTED_ASYNC,
        TDX_L2_EXIT_HOST_ROUTED_TDVMCALL,
        TDX_L2_EXIT_PENDING_INTERRUPT,
    }
)


class VcpuError(SvsmError):
    """TDG.VP.ENTER failed for a reason that is L1's or the module's, not the L2's."""


class EnterResult(Enum):
    """What a TDG.VP.ENTER came back with."""

    EXIT = "exit"  # the L2 ran and exited to L1
    L1_INTERRUPT = "l1-interrupt"  # L1 has an interrupt to take first; the L2 did not run


_EXIT = EnterResult.EXIT
_L1_INTERRUPT = EnterResult.L1_INTERRUPT
assert not any(is_error(status) for status in L2_EXIT_STATUSES)


class L2Exit(NamedTuple):
    """An L2 -> L1 exit, decoded from the registers TDG.VP.ENTER returns (immutable: a tuple
    builds in a fraction of a frozen dataclass's time, once per exit)."""

    status: int
    reason: int
    qualification: int
    gla: int
    gpa: int
    interruption: int
    idt_vectoring: int
    idt_vectoring_error: int
    instruction_length: int
    cpl: int
    extended_qualification: int

    @classmethod
    def from_registers(cls, out: list[int]) -> L2Exit:
        """Decode the 16 output registers of TDG.VP.ENTER."""
        rax, r10 = out[RAX], out[R10]
        return cls(
            rax & STATUS_CLASS_MASK,  # status
            rax & EXIT_REASON_MASK,  # reason
            out[RCX],  # qualification
            out[RDX],  # gla
            out[R8],  # gpa
            out[R9] & U32,  # interruption
            r10 & U32,  # idt_vectoring
            r10 >> 32,  # idt_vectoring_error
            (out[R11] >> INSTRUCTION_LENGTH_SHIFT) & U32,  # instruction_length
            out[R12] & 0x3,  # cpl
            out[R13],  # extended_qualification
        )

    @property
    def reason_name(self) -> str:
        """The VMX exit reason by name (Intel SDM Vol. 3, appendix C), or its number."""
        return REASON_NAMES.get(self.reason) or f"exit reason {self.reason}"


@dataclass
class GuestState:
    """L1's copy of an L2 vCPU's registers, as the guest-state block carries them."""

    gprs: list[int] = field(default_factory=lambda: [0] * 16)
    rflags: int = 0x2
    rip: int = 0
    ssp: int = 0
    rvi: int = 0
    svi: int = 0

    def values(self) -> tuple[int, ...]:
        """The L2_ENTER_GUEST_STATE fields, in its order."""
        status = pack_intr_status(self.rvi, self.svi)
        return (*self.gprs, self.rflags, self.rip, self.ssp, status)

    def pack(self) -> bytes:
        """The L2_ENTER_GUEST_STATE bytes."""
        return L2EnterGuestState.STRUCT.pack(*self.values())

    def load(self, values: Sequence[int]) -> None:
        """Take the L2_ENTER_GUEST_STATE fields, in its order."""
        self.gprs = list(values[:16])
        self.rflags, self.rip, self.ssp, status = values[16:20]
        self.rvi, self.svi = unpack_intr_status(status)

    def unpack(self, raw: bytes) -> None:
        """Take the registers the module wrote back on the exit."""
        self.load(L2EnterGuestState.STRUCT.unpack_from(raw))


class L2Vcpu:
    """vCPU 0 of L2 VM `vm`: VMCS access, event injection and TDG.VP.ENTER."""

    def __init__(self, tdcall: Tdcall, memory: Memory, vm: int, state_gpa: int) -> None:
        self.tdcall = tdcall
        self.memory = memory
        self.vm = vm
        self.state_gpa = state_gpa
        self.state = GuestState()
        self.entries = 0
        self.event_pending = False  # an event is set up for the next entry
        # The input registers of the TDCALLs made at every exit, built once: TDG.VP.ENTER of
        # this VM with the block at `state_gpa`, and TDG.VP.RD by VMCS encoding.
        self._enter_registers = Tdcall.input_registers(
            Leaf.VP_ENTER, rcx=vm << VM_INDEX_SHIFT, rdx=state_gpa
        )
        self._read_registers: dict[int, tuple[int, ...]] = {}

    def vmcs_write(self, encoding: int, value: int) -> None:
        """TDG.VP.WR of one field of this VM's L2 VMCS."""
        self.tdcall.call(Leaf.VP_WR, rdx=l2_vmcs_field(self.vm, encoding), r8=value, r9=U64_MASK)

    def vmcs_read(self, encoding: int) -> int:
        """TDG.VP.RD of one field of this VM's L2 VMCS."""
        registers = self._read_registers.get(encoding)
        if registers is None:
            field = l2_vmcs_field(self.vm, encoding)
            registers = self._read_registers[encoding] = Tdcall.input_registers(
                Leaf.VP_RD, rdx=field
            )
        out = self.tdcall.raw_values(registers)
        if out[RAX] & STATUS_ERROR_BIT:
            raise TdcallError(Leaf.VP_RD, out[RAX], detail=f"VMCS field {encoding:#x}")
        return out[R8]

    def inject_exception(self, vector: int, error_code: int = 0) -> None:
        """Deliver a hardware exception at the next entry (VM-entry interruption information)."""
        info = INTR_INFO_VALID | (INTR_TYPE_HW_EXCEPTION << INTR_INFO_TYPE_SHIFT) | vector
        if vector in EXCEPTIONS_WITH_ERROR_CODE:
            info |= INTR_INFO_DELIVER_ERROR
            self.vmcs_write(Vmcs.ENTRY_EXCEPTION_ERROR_CODE, error_code)
        self.vmcs_write(Vmcs.ENTRY_INTR_INFO, info)
        self.event_pending = True

    def reinject(self, vectoring: int, error_code: int) -> None:
        """Deliver again an event whose delivery the exit interrupted (IDT-vectoring info has the
        VM-entry interruption format; Intel SDM Vol. 3, 28.2.4)."""
        if vectoring & INTR_INFO_DELIVER_ERROR:
            self.vmcs_write(Vmcs.ENTRY_EXCEPTION_ERROR_CODE, error_code)
        self.vmcs_write(Vmcs.ENTRY_INTR_INFO, vectoring & EVENT_INFO_MASK)
        self.event_pending = True

    def enter(self) -> tuple[EnterResult, L2Exit | None]:
        """Write the guest-state block, TDG.VP.ENTER, read the block back."""
        state, memory = self.state, self.memory
        memory.write_struct(
            self.state_gpa,
            GUEST_STATE,
            *state.gprs,
            state.rflags,
            state.rip,
            state.ssp,
            pack_intr_status(state.rvi, state.svi),
        )
        self.event_pending = False
        out = self.tdcall.raw_values(self._enter_registers)
        self.entries += 1
        rax = out[RAX]
        if rax & STATUS_CLASS_MASK not in L2_EXIT_STATUSES:  # none of them is an error
            if rax & STATUS_CLASS_MASK == TDX_PENDING_INTERRUPT:
                return _L1_INTERRUPT, None
            raise VcpuError(
                f"TDG.VP.ENTER of L2 VM {self.vm}: {status_name(rax)}",
            ) from TdcallError(Leaf.VP_ENTER, rax)
        state.load(memory.read_struct(self.state_gpa, GUEST_STATE))
        return _EXIT, L2Exit.from_registers(out)
