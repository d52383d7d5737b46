"""L1's handling of every L2 exit: one handler per VMX exit reason (Intel SDM Vol. 3, appendix C),
with the TD-partitioning conventions of the Intel TDX Module TD Partitioning Architecture
Specification (exit 77 for an L2 TDCALL; host-routed exits come back as
TDX_L2_EXIT_HOST_ROUTED_ASYNC).

A handler either completes the instruction (RIP advances by the exit's instruction length),
injects an exception into the L2 (#GP(0) for accesses and instructions L1 refuses, #UD for
VMCALL), or ends the L2 (its exit code, or a fatal report naming the exit and RIP). Nothing an L2
does raises out of `handle`: L1 and the other L2s keep running.
"""

from __future__ import annotations

from collections.abc import Callable

from svsm.crb import CRB_BASE, CRB_REGISTER_PAGE_SIZE
from svsm.decode import Direction, NotEmulatable, decode_mmio
from svsm.errors import SvsmError
from svsm.guestmem import GuestMemoryError
from svsm.l2guest import L2Guest
from svsm.ports import COM1_DATA, COM1_LINE_STATUS, DEBUG_EXIT_PORT, LSR_TRANSMIT_EMPTY
from svsm.vcpu import REASON_NAMES, GuestState, L2Exit
from tdxdefs.attributes import GpaAttr
from tdxdefs.relay import L2_DOORBELL_PORT
from tdxdefs.tdcall import (
    PAGE_SIZE,
    R10,
    R11,
    R12,
    R13,
    RAX,
    RBX,
    RCX,
    RDX,
    TDX_OPERAND_INVALID,
    TDX_SUCCESS,
)
from tdxdefs.tdvmcall import GHCI_STANDARD, TDVMCALL_OPERAND_INVALID, TDVMCALL_SUCCESS, Tdvmcall
from tdxdefs.vmcs import (
    EPTV_FETCH,
    EPTV_GLA_VALID,
    EPTV_WRITE,
    INTR_INFO_TYPE_MASK,
    INTR_INFO_TYPE_SHIFT,
    INTR_INFO_VALID,
    INTR_INFO_VECTOR_MASK,
    INTR_TYPE_EXTERNAL,
    INTR_TYPE_HW_EXCEPTION,
    IOQ_IN,
    IOQ_PORT_SHIFT,
    IOQ_SIZE_MASK,
    IOQ_STRING,
    PROC_INTERRUPT_WINDOW_EXITING,
    ExitReason,
    Vmcs,
)
from tdxdefs.x86 import CR0_PG, RFLAGS_IF, VECTOR_GP, VECTOR_UD

X2APIC_SELF_IPI = 0x83F
X2APIC_ID = 0x802
CPUID_TDP_LEAF = 0x21
# CPUID as L1 presents it to an L2: the TD-partitioning convention on leaf 0x21 (subleaf 0
# "IntelTDX    ", subleaf 1 EBX = 1), leaf 0 naming that highest leaf, leaf 1 with x2APIC (ECX 21)
# and hypervisor-present (ECX 31). Every other leaf reads as zeros.
CPUID_VIEW: dict[tuple[int, int], tuple[int, int, int, int]] = {
    (0, 0): (CPUID_TDP_LEAF, 0x756E6547, 0x6C65746E, 0x49656E69),  # "GenuineIntel"
    (1, 0): (0, 0, (1 << 21) | (1 << 31), 0),
    (CPUID_TDP_LEAF, 0): (0, 0x65746E49, 0x20202020, 0x5844546C),  # "Inte" "    " "lTDX"
    (CPUID_TDP_LEAF, 1): (0, 1, 0, 0),
}
SUBLEAF_LEAVES = frozenset({CPUID_TDP_LEAF})
DECODE_CACHE_SIZE = 256
CRB_END = CRB_BASE + CRB_REGISTER_PAGE_SIZE
U32 = 0xFFFFFFFF


class ExitError(SvsmError):
    """An exit L1 cannot handle for this L2; the L2 is stopped with this message."""


def _access(ex: L2Exit) -> str:
    if ex.qualification & EPTV_WRITE:
        return "write"
    return "fetch" if ex.qualification & EPTV_FETCH else "read"


class ExitHandlers:
    """The exit handlers for one L2."""

    def __init__(self, guest: L2Guest) -> None:
        self.guest = guest
        self.decoded = guest.decoded  # by (bytes, RIP): a decoding depends on nothing else

    @property
    def state(self) -> GuestState:
        """The L2's registers, as the last exit left them."""
        return self.guest.vcpu.state

    def handle(self, ex: L2Exit) -> None:
        """Handle one exit; a failure stops this L2 with a report, never more."""
        guest = self.guest
        guest.outcome.exits[REASON_NAMES.get(ex.reason) or ex.reason_name] += 1
        handler = HANDLERS.get(ex.reason)
        if handler is None:
            guest.stop(f"unhandled {ex.reason_name} exit at RIP {self.state.rip:#x}")
            return
        try:
            handler(self, ex)
        except (SvsmError, ValueError) as exc:
            guest.stop(f"{ex.reason_name} exit at RIP {self.state.rip:#x}: {exc}")
            return
        if ex.idt_vectoring & INTR_INFO_VALID and guest.running:
            self.vectored(ex)

    def vectored(self, ex: L2Exit) -> None:
        """The exit interrupted the delivery of an event: deliver it again, unless the handler
        injects an exception; a fault while delivering a hardware exception ends the L2 (on
        hardware a double fault, then a shutdown; injecting #GP again could loop forever)."""
        guest = self.guest
        vector = ex.idt_vectoring & INTR_INFO_VECTOR_MASK
        kind = (ex.idt_vectoring >> INTR_INFO_TYPE_SHIFT) & INTR_INFO_TYPE_MASK
        if not guest.vcpu.event_pending:
            guest.vcpu.reinject(ex.idt_vectoring, ex.idt_vectoring_error)
        elif kind == INTR_TYPE_HW_EXCEPTION:
            guest.stop(f"a fault while delivering exception {vector} at RIP {self.state.rip:#x}")
        elif kind == INTR_TYPE_EXTERNAL:
            guest.post_interrupt(vector)  # the exception goes first; the interrupt stays pending

    def complete(self, ex: L2Exit) -> None:
        """The instruction is done: step over it."""
        self.state.rip = (self.state.rip + ex.instruction_length) & 0xFFFF_FFFF_FFFF_FFFF

    def refuse(self, why: str, vector: int = VECTOR_GP) -> None:
        """Log and deliver #GP(0) (or `vector`) into the L2; the instruction is not done."""
        self.guest.log(f"L2[{self.guest.vm}] refused at RIP {self.state.rip:#x}: {why}")
        self.guest.vcpu.inject_exception(vector, 0)

    def resume(self, ex: L2Exit) -> None:
        """Nothing to do: enter again."""

    # --- instructions -----------------------------------------------------------------------
    def cpuid(self, ex: L2Exit) -> None:
        gprs = self.state.gprs
        leaf = gprs[RAX] & U32
        sub = gprs[RCX] & U32 if leaf in SUBLEAF_LEAVES else 0
        gprs[RAX], gprs[RBX], gprs[RCX], gprs[RDX] = CPUID_VIEW.get((leaf, sub), (0, 0, 0, 0))
        self.complete(ex)

    def hlt(self, ex: L2Exit) -> None:
        """HLT: the L2 is parked (not entered again) until an interrupt is posted to it; the
        relay then looks for an answered mailbox (`L2Guest.on_halt`)."""
        guest = self.guest
        if not self.state.rflags & RFLAGS_IF and not self.state.rvi:
            guest.stop(f"HLT with interrupts disabled at RIP {self.state.rip:#x}: it cannot wake")
            return
        self.complete(ex)
        if not self.state.rvi:
            guest.halted = True
        if guest.on_halt is not None:
            guest.on_halt(guest)

    def io(self, ex: L2Exit) -> None:
        q = ex.qualification
        port, size, is_in = q >> IOQ_PORT_SHIFT & 0xFFFF, (q & IOQ_SIZE_MASK) + 1, q & IOQ_IN
        gprs = self.state.gprs
        if q & IOQ_STRING:
            self.refuse(f"string IO on port {port:#x} is not emulated")
            return
        if is_in:
            value = {COM1_LINE_STATUS: LSR_TRANSMIT_EMPTY, COM1_DATA: 0}.get(port)
            if value is None:
                self.refuse(f"IN from port {port:#x}: no device there")
                return
            mask = (1 << 8 * size) - 1
            gprs[RAX] = (gprs[RAX] & ~mask) | value if size < 4 else value
            self.complete(ex)
            return
        if port == COM1_DATA:
            self.guest.console.write(gprs[RAX] & 0xFF)
        elif port == L2_DOORBELL_PORT and self.guest.doorbell is not None:
            self.complete(ex)
            self.guest.doorbell(self.guest)
            return
        elif port == DEBUG_EXIT_PORT:
            self.complete(ex)
            self.guest.finish(gprs[RAX] & 0xFF)
            return
        else:
            self.refuse(f"OUT to port {port:#x}: no device there")
            return
        self.complete(ex)

    def msr_read(self, ex: L2Exit) -> None:
        gprs = self.state.gprs
        msr = gprs[RCX] & U32
        if msr != X2APIC_ID:
            self.refuse(f"RDMSR {msr:#x}: not an MSR this L2 has")
            return
        gprs[RAX], gprs[RDX] = 0, 0
        self.complete(ex)

    def msr_write(self, ex: L2Exit) -> None:
        gprs = self.state.gprs
        msr, value = gprs[RCX] & U32, (gprs[RDX] & U32) << 32 | gprs[RAX] & U32
        if msr != X2APIC_SELF_IPI:
            self.refuse(f"WRMSR {msr:#x} = {value:#x}: not an MSR this L2 may write")
            return
        try:
            self.guest.post_interrupt(value & 0xFF)
        except SvsmError as exc:
            self.refuse(f"self-IPI: {exc}")
            return
        self.complete(ex)

    def vmcall(self, ex: L2Exit) -> None:
        self.refuse("VMCALL is not a paravisor call here", VECTOR_UD)

    def interrupt_window(self, ex: L2Exit) -> None:
        controls = self.guest.vcpu.vmcs_read(Vmcs.PROC_BASED_CONTROLS)
        self.guest.vcpu.vmcs_write(
            Vmcs.PROC_BASED_CONTROLS, controls & ~PROC_INTERRUPT_WINDOW_EXITING
        )

    # --- TDCALL from the L2 (exit 77) -------------------------------------------------------
    def tdcall(self, ex: L2Exit) -> None:
        gprs = self.state.gprs
        leaf = gprs[RAX] & U32
        if leaf != 0:
            gprs[RAX] = TDX_OPERAND_INVALID
        elif gprs[R10] != GHCI_STANDARD:
            gprs[RAX], gprs[R10] = TDX_SUCCESS, TDVMCALL_OPERAND_INVALID
        elif gprs[R11] == Tdvmcall.SERVICE and self.guest.service is not None:
            gprs[RAX] = TDX_SUCCESS
            gprs[R10] = self.service(gprs[R12], gprs[R13])
        else:
            gprs[RAX] = TDX_SUCCESS
            gprs[R10] = TDVMCALL_OPERAND_INVALID  # the only sub-function L2s get is Service
            self.guest.log(f"L2[{self.guest.vm}] TDVMCALL sub-function {gprs[R11]:#x} refused")
        self.complete(ex)

    def service(self, command_gpa: int, response_gpa: int) -> int:
        """TDG.VP.VMCALL<Service>: both pages must be whole pages of this L2's own RAM that it
        may read and write; the command is copied once, the response written once."""
        guest = self.guest
        need = GpaAttr.R | GpaAttr.W
        for what, gpa in (("command", command_gpa), ("response", response_gpa)):
            if (
                gpa % PAGE_SIZE
                or not guest.layout.owns(gpa)
                or guest.aliases.attrs(guest.vm, gpa) & need != need
            ):
                guest.log(f"L2[{guest.vm}] Service refused: {what} page {gpa:#x} is not its own")
                return TDVMCALL_OPERAND_INVALID
        assert guest.service is not None
        response = guest.service.handle(guest.memory.read(command_gpa, PAGE_SIZE))
        guest.memory.write(response_gpa, response)
        return TDVMCALL_SUCCESS

    # --- memory -----------------------------------------------------------------------------
    def ept_violation(self, ex: L2Exit) -> None:
        guest = self.guest
        if CRB_BASE <= ex.gpa < CRB_END:  # the L2's TPM: guest.is_crb, inline at every access
            self.mmio(ex)
            return
        owner = guest.aliases.owner(ex.gpa)
        if owner is not None:
            where = f"L1's {owner.what}"
        elif guest.layout.owns(ex.gpa):
            where = f"its own RAM, alias {guest.aliases.attrs(guest.vm, ex.gpa).name or 'none'}"
        else:
            where = "memory that is not this L2's"
        self.refuse(f"{_access(ex)} at GPA {ex.gpa:#x} ({where})")

    def mmio(self, ex: L2Exit) -> None:
        """An access to the CRB register page: the instruction is copied out of L2 memory once,
        decoded (or found decoded under those very bytes and RIP), checked against the exit and
        emulated on the device."""
        guest, state = self.guest, self.guest.vcpu.state
        rip = state.rip
        cr3 = guest.vcpu.vmcs_read(GUEST_CR3)  # 64-bit mode: paging is on (CR0.PG = 1)
        try:
            code = guest.guest_memory.fetch_instruction(rip, CR0_PG, cr3)
            key = (code, rip)
            insn = self.decoded.get(key)
            if insn is None:
                insn = decode_mmio(code, rip)
                if len(self.decoded) >= DECODE_CACHE_SIZE:
                    self.decoded.clear()
                self.decoded[key] = insn
        except (GuestMemoryError, NotEmulatable) as exc:
            self.refuse(f"MMIO at GPA {ex.gpa:#x}: {exc}")
            return
        is_write = insn.direction is _WRITE
        if is_write != bool(ex.qualification & EPTV_WRITE):
            self.refuse(f"MMIO at GPA {ex.gpa:#x}: {insn.text} does not match the {_access(ex)}")
            return
        if ex.qualification & EPTV_GLA_VALID:
            address = insn.memory.linear_address(state.gprs, rip + insn.length)
            if address != ex.gla:
                self.refuse(f"MMIO: {insn.text} addresses {address:#x}, the exit says {ex.gla:#x}")
                return
        offset = ex.gpa - CRB_BASE
        if is_write:
            guest.crb.write(offset, insn.size, insn.stored(state.gprs))
        else:
            insn.load(state.gprs, guest.crb.read(offset, insn.size))
        state.rip += insn.length


_WRITE = Direction.WRITE
GUEST_CR3 = int(Vmcs.GUEST_CR3)
# The handler of each exit reason L1 handles; the others stop the L2 (`ExitHandlers.handle`).
HANDLERS: dict[int, Callable[[ExitHandlers, L2Exit], None]] = {
    ExitReason.CPUID: ExitHandlers.cpuid,
    ExitReason.HLT: ExitHandlers.hlt,
    ExitReason.IO: ExitHandlers.io,
    ExitReason.MSR_READ: ExitHandlers.msr_read,
    ExitReason.MSR_WRITE: ExitHandlers.msr_write,
    ExitReason.EPT_VIOLATION: ExitHandlers.ept_violation,
    ExitReason.TDCALL: ExitHandlers.tdcall,
    ExitReason.VMCALL: ExitHandlers.vmcall,
    ExitReason.INTERRUPT_WINDOW: ExitHandlers.interrupt_window,
    ExitReason.VIRTUALIZED_EOI: ExitHandlers.resume,
    ExitReason.EXTERNAL_INTERRUPT: ExitHandlers.resume,
}
