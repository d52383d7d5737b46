"""L2 vCPUs running real x86-64 code (GNU as) under the module: EPT violations, exit routing,
instruction lengths, interrupts through RVI/SVI and VM-entry injection, VP.ENTER preconditions."""

from __future__ import annotations

import pytest

from tdxdefs.attributes import ATTR_R, ATTR_VALID, ATTR_W, ATTR_XS
from tdxdefs.metadata import L2_CTLS_ENABLE_TDVMCALL
from tdxdefs.tdcall import (
    TDX_L2_EXIT_HOST_ROUTED_ASYNC,
    TDX_L2_EXIT_HOST_ROUTED_TDVMCALL,
    TDX_L2_EXIT_PENDING_INTERRUPT,
    TDX_OPERAND_INVALID,
    TDX_PENDING_INTERRUPT,
    TDX_SUCCESS,
    Leaf,
    OperandId,
)
from tdxdefs.vmcs import (
    EEQ_PEND_EPT_VIOLATION,
    EPTV_EXECUTABLE,
    EPTV_FETCH,
    EPTV_GLA_VALID,
    EPTV_READ,
    EPTV_READABLE,
    EPTV_TRANSLATED,
    EPTV_WRITABLE,
    EPTV_WRITE,
    INTR_INFO_VALID,
    PROC_INTERRUPT_WINDOW_EXITING,
    PROC_USE_MSR_BITMAPS,
    SEC_VIRTUAL_INTR_DELIVERY,
    VM_ENTRY_FAILURE,
    ExitReason,
    Vmcs,
)
from tdxdefs.x86 import VAPIC_IRR
from tdxsim.module.host_interface import NullHost, TdExitKind
from tdxsim.module.registers import Regs
from tdxsim.testing import L2Context, TdHarness, assemble

CODE = 0x10000
STACK_PAGE = 0x20000
STACK_TOP = STACK_PAGE + 0x1000
IDT = 0x30000
DATA = 0x40000
RO_PAGE = 0x50000
L1_ONLY = 0x60000
PENDING = 0x400000
RW = ATTR_R | ATTR_W | ATTR_VALID
RO = ATTR_R | ATTR_VALID
VECTOR = 0x41


def run(l2: L2Context, source: str, **regs: int):  # type: ignore[no-untyped-def]
    l2.load(CODE, assemble(source, CODE))
    return l2.enter(rip=CODE, rsp=STACK_TOP, **regs)


@pytest.fixture
def l2(h: TdHarness) -> L2Context:
    ctx = h.l2(vm=1)
    h.set_alias(1, STACK_PAGE, RW)
    h.set_alias(1, DATA, RW)
    h.set_alias(1, RO_PAGE, RO)
    return ctx


# --- EPT violations (TD partitioning: L2 accesses to unaliased pages) ---
def test_write_to_read_only_alias_exits_with_qualification_and_gpa(l2: L2Context) -> None:
    ex = run(l2, f"mov rax, 0x1122\nmov qword ptr [{RO_PAGE + 0x18:#x}], rax\nhlt")
    assert ex.regs.rax == TDX_SUCCESS | ExitReason.EPT_VIOLATION
    assert ex.qualification == EPTV_WRITE | EPTV_READABLE | EPTV_GLA_VALID | EPTV_TRANSLATED
    assert ex.gpa == RO_PAGE + 0x18 and ex.gla == RO_PAGE + 0x18
    assert ex.rip == CODE + 7  # RIP stays on the faulting MOV (after the 7-byte mov rax)
    assert ex.guest.rax == 0x1122
    assert l2.harness.memory.read(RO_PAGE + 0x18, 8) == bytes(8)


def test_removing_alias_makes_next_access_exit(h: TdHarness, l2: L2Context) -> None:
    src = f"mov rax, qword ptr [{DATA:#x}]\ncpuid\nmov rbx, qword ptr [{DATA:#x}]\nhlt"
    h.write(DATA, (0xABCD).to_bytes(8, "little"))
    ex = run(l2, src)
    assert ex.reason == ExitReason.CPUID and ex.guest.rax == 0xABCD  # identity-mapped alias
    h.set_alias(1, DATA, ATTR_VALID)  # VALID without R/W/X removes the alias
    l2.skip(ex)
    ex = l2.enter()
    assert ex.reason == ExitReason.EPT_VIOLATION
    assert ex.qualification == EPTV_READ | EPTV_GLA_VALID | EPTV_TRANSLATED
    assert ex.gpa == DATA
    assert ex.guest.rbx == 0


def test_pending_page_exits_with_type_6(h: TdHarness, l2: L2Context) -> None:
    h.set_alias(1, PENDING + 0x2000, RW)  # alias exists but L1 never accepted the page
    ex = run(l2, f"mov dword ptr [{PENDING + 0x2010:#x}], 1\nhlt")
    assert ex.status == TDX_SUCCESS
    assert ex.reason == ExitReason.EPT_VIOLATION
    assert ex.eeq == EEQ_PEND_EPT_VIOLATION == 6
    assert ex.gpa == PENDING + 0x2010
    h.accept(PENDING, 0x200000)  # L1 accepts; the alias becomes usable
    ex = l2.enter()
    assert ex.reason == ExitReason.HLT
    assert h.read(PENDING + 0x2010, 4) == (1).to_bytes(4, "little")


def test_fetch_from_non_executable_alias(h: TdHarness, l2: L2Context) -> None:
    h.write(DATA, assemble("hlt"))
    ex = run(l2, f"mov rax, {DATA:#x}\njmp rax")
    assert ex.reason == ExitReason.EPT_VIOLATION
    assert ex.qualification & EPTV_FETCH
    assert ex.qualification & (EPTV_READABLE | EPTV_WRITABLE) == EPTV_READABLE | EPTV_WRITABLE
    assert not ex.qualification & EPTV_EXECUTABLE
    assert ex.gpa == DATA and ex.rip == DATA


@pytest.mark.parametrize("gpa", [0x4000000, (1 << 47) | 0x1000])
def test_unbacked_or_shared_gpa_is_host_routed(h: TdHarness, l2: L2Context, gpa: int) -> None:
    ex = run(l2, f"mov rax, {gpa:#x}\nmov rbx, qword ptr [rax]\nhlt")
    assert ex.status == TDX_L2_EXIT_HOST_ROUTED_ASYNC
    assert ex.reason == ExitReason.EPT_VIOLATION
    assert ex.gpa == gpa
    host = h.module.host
    assert isinstance(host, NullHost)
    assert host.exits[-1].kind == TdExitKind.L2_HOST_ROUTED and host.exits[-1].gpa == gpa


# --- exit routing and instruction lengths (TDG.VP.ENTER) ---
@pytest.mark.parametrize(
    ("source", "reason", "length"),
    [
        ("cpuid", ExitReason.CPUID, 2),
        ("hlt", ExitReason.HLT, 1),
        ("vmcall", ExitReason.VMCALL, 3),
        ("tdcall", ExitReason.TDCALL, 4),
        ("wbinvd", ExitReason.WBINVD, 2),
        ("xsetbv", ExitReason.XSETBV, 3),
        ("rdmsr", ExitReason.MSR_READ, 2),
        ("wrmsr", ExitReason.MSR_WRITE, 2),
    ],
)
def test_exiting_instruction_length(l2: L2Context, source: str, reason: int, length: int) -> None:
    ex = run(l2, f"nop\n{source}\nud2")
    assert ex.regs.rax == TDX_SUCCESS | reason
    assert ex.instr_len == length
    assert ex.rip == CODE + 1  # RIP on the instruction; L1 advances it


def test_cpuid_does_not_execute_following_instructions(l2: L2Context) -> None:
    ex = run(l2, "mov eax, 7\ncpuid\ninc rbx\nmov qword ptr [0x40000], rbx\nhlt", rbx=5)
    assert ex.reason == ExitReason.CPUID
    assert ex.guest.rax == 7 and ex.guest.rbx == 5  # CPUID itself did not run either
    l2.regs.rax, l2.regs.rbx = 0x11, 0x22  # L1 emulates CPUID
    l2.skip(ex)
    ex = l2.enter()
    assert ex.reason == ExitReason.HLT
    assert l2.harness.memory.read(0x40000, 8) == (0x23).to_bytes(8, "little")


@pytest.mark.parametrize(
    ("source", "qualification"),
    [
        ("in al, 0x60", (0x60 << 16) | 0x40 | 0x8 | 0),
        ("out dx, eax", (0x3F8 << 16) | 3),
        ("out dx, ax", (0x3F8 << 16) | 1),
        ("rep insb", (0x3F8 << 16) | 0x20 | 0x10 | 0x8),
    ],
)
def test_io_exit_qualification(l2: L2Context, source: str, qualification: int) -> None:
    ex = run(l2, f"{source}\nhlt", rdx=0x3F8, rdi=DATA)
    assert ex.reason == ExitReason.IO
    assert ex.qualification == qualification


def test_msr_bitmap_controls_msr_exits(l2: L2Context) -> None:
    l2.allow_msr(0x10, read=True, write=False)  # RDMSR(0x10) handled without L1
    ex = run(l2, "mov ecx, 0x10\nrdmsr\nwrmsr\nhlt")
    assert ex.reason == ExitReason.MSR_WRITE
    assert ex.rip == CODE + 7


def test_use_msr_bitmaps_is_not_writable_by_l1(l2: L2Context) -> None:
    l2.allow_msr(0x10)
    l2.vmcs_write(Vmcs.PROC_BASED_CONTROLS, 0, PROC_USE_MSR_BITMAPS)  # masked out (0x48F99A04)
    assert l2.vmcs_read(Vmcs.PROC_BASED_CONTROLS) & PROC_USE_MSR_BITMAPS
    ex = run(l2, "mov ecx, 0x10\nrdmsr\nhlt")
    assert ex.reason == ExitReason.HLT


class TdvmcallHost(NullHost):
    def tdvmcall(self, regs: Regs) -> Regs:
        self.calls.append(regs.copy())
        out = regs.copy()
        out.r10, out.r11 = 0, 0x77
        return out


def test_l2_tdcall_routing_per_l2_ctls() -> None:
    host = TdvmcallHost()
    h = TdHarness.default(ram_mib=8, host=host)
    h.accept(0, 0x200000)
    l2 = h.l2(1)
    source = "xor eax, eax\nmov ecx, 0xc00\ntdcall\nmov eax, 1\ntdcall\nhlt"
    ex = run(l2, source)
    assert ex.reason == ExitReason.TDCALL and ex.status == TDX_SUCCESS  # ENABLE_TDVMCALL=0
    assert host.calls == []
    h.set_l2_ctls(1, L2_CTLS_ENABLE_TDVMCALL)
    ex = l2.enter(rip=CODE)
    assert ex.status == TDX_L2_EXIT_HOST_ROUTED_TDVMCALL and ex.reason == ExitReason.TDCALL
    assert ex.guest.r11 == 0x77 and ex.guest.rax == 0
    assert len(host.calls) == 1
    ex = l2.enter()  # RIP is past the TDVMCALL; leaf 1 still exits to L1
    assert ex.status == TDX_SUCCESS and ex.reason == ExitReason.TDCALL
    assert ex.guest.rax == 1


def test_guest_state_block_written_back(l2: L2Context) -> None:
    ex = run(l2, "mov r15, 0x1234\nadd r14, r15\npush r14\nhlt", r14=1)
    assert ex.guest.r15 == 0x1234 and ex.guest.r14 == 0x1235
    assert ex.guest.rsp == STACK_TOP - 8
    assert l2.harness.memory.read(STACK_TOP - 8, 8) == (0x1235).to_bytes(8, "little")


# --- VP.ENTER preconditions ------------------------------------------------------------------
def test_vp_enter_operand_checks(h: TdHarness, l2: L2Context) -> None:
    state = l2.state_gpa
    assert h.tdcall(Leaf.VP_ENTER, rcx=0, rdx=state).rax == TDX_OPERAND_INVALID | OperandId.RCX
    assert h.tdcall(Leaf.VP_ENTER, rcx=3 << 52, rdx=state).rax == (
        TDX_OPERAND_INVALID | OperandId.RCX
    )
    assert h.tdcall(Leaf.VP_ENTER, rcx=(1 << 52) | (1 << 8), rdx=state).rax == (
        TDX_OPERAND_INVALID | OperandId.RCX
    )
    assert h.tdcall(Leaf.VP_ENTER, rcx=1 << 52, rdx=state + 0x80).rax == (
        TDX_OPERAND_INVALID | OperandId.RDX
    )
    assert h.tdcall(Leaf.VP_ENTER, rcx=1 << 52, rdx=PENDING).rax == (
        TDX_OPERAND_INVALID | OperandId.RDX
    )


def test_vp_enter_needs_virtual_apic_page(h: TdHarness) -> None:
    state = h.scratch_page()
    out = h.tdcall(Leaf.VP_ENTER, rcx=2 << 52, rdx=state)
    assert out.rax == TDX_OPERAND_INVALID | 170


def test_vp_enter_returns_pending_interrupt_without_entering(h: TdHarness, l2: L2Context) -> None:
    l2.load(CODE, assemble("inc rax\nhlt"))
    h.module.post_l1_interrupt(0, 0x30)
    ex = l2.enter(rip=CODE, rax=5)
    assert ex.regs.rax == TDX_PENDING_INTERRUPT == 0x0000112000000000
    assert ex.guest.rax == 5 and ex.rip == CODE  # L2 did not run
    h.module.l1_interrupt_taken(0)
    assert l2.enter().reason == ExitReason.HLT


# --- interrupts (virtual-interrupt delivery, entry injection) ---
def install_idt(h: TdHarness, l2: L2Context, handler_source: str, vector: int = VECTOR) -> None:
    handler = 0x12000
    h.write(handler, assemble(handler_source, handler))
    h.set_alias(1, handler, ATTR_R | ATTR_XS | ATTR_VALID)
    gate = (
        (handler & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | (((handler >> 16) & 0xFFFF) << 48)
    ).to_bytes(8, "little") + (handler >> 32).to_bytes(8, "little")
    h.write(IDT + vector * 16, gate)
    h.set_alias(1, IDT, RO)
    l2.vmcs_write(Vmcs.GUEST_IDTR_BASE, IDT)
    l2.vmcs_write(Vmcs.GUEST_IDTR_LIMIT, 256 * 16 - 1)


HANDLER = f"""
    mov qword ptr [{DATA:#x}], 0x5a5a
    mov ecx, 0x80b
    xor eax, eax
    xor edx, edx
    wrmsr
    iretq
"""


def enable_vid(l2: L2Context) -> None:
    l2.vmcs_write(Vmcs.SECONDARY_CONTROLS, SEC_VIRTUAL_INTR_DELIVERY)
    l2.allow_msr(0x80B, read=False, write=True)


def test_rvi_interrupt_reaches_handler_and_eoi_exits(h: TdHarness, l2: L2Context) -> None:
    install_idt(h, l2, HANDLER)
    enable_vid(l2)
    l2.vmcs_write(Vmcs.EOI_EXIT_BITMAP1, 1 << (VECTOR - 64))  # level-triggered: EOI exits
    h.write(
        l2.vapic_gpa + VAPIC_IRR + (VECTOR // 32) * 16, (1 << (VECTOR % 32)).to_bytes(4, "little")
    )
    l2.rvi = VECTOR
    ex = run(l2, "sti\nnop\n1: jmp 1b", rflags=0x2)
    assert ex.regs.rax == TDX_SUCCESS | ExitReason.VIRTUALIZED_EOI
    assert ex.qualification == VECTOR
    assert h.read(DATA, 8) == (0x5A5A).to_bytes(8, "little")
    assert ex.rvi == 0 and ex.svi == 0  # delivered and EOIed
    assert h.read(l2.vapic_gpa + VAPIC_IRR + 32, 4) == bytes(4)


def test_rvi_not_delivered_while_if_clear(h: TdHarness, l2: L2Context) -> None:
    install_idt(h, l2, HANDLER)
    enable_vid(l2)
    l2.rvi = VECTOR
    ex = run(l2, "nop\nnop\nhlt", rflags=0x2)
    assert ex.reason == ExitReason.HLT
    assert h.read(DATA, 8) == bytes(8)
    assert ex.rvi == VECTOR  # still pending


def test_eoi_without_exit_bitmap_bit_does_not_exit(h: TdHarness, l2: L2Context) -> None:
    install_idt(h, l2, HANDLER)
    enable_vid(l2)
    l2.rvi = VECTOR
    ex = run(l2, "nop\nhlt", rflags=0x202)
    assert ex.reason == ExitReason.HLT
    assert h.read(DATA, 8) == (0x5A5A).to_bytes(8, "little")
    assert ex.svi == 0


def test_vm_entry_injection_runs_handler(h: TdHarness, l2: L2Context) -> None:
    install_idt(h, l2, f"mov qword ptr [{DATA:#x}], 0x77\niretq")
    l2.vmcs_write(Vmcs.ENTRY_INTR_INFO, INTR_INFO_VALID | VECTOR)
    ex = run(l2, "hlt", rflags=0x202)
    assert ex.reason == ExitReason.HLT
    assert h.read(DATA, 8) == (0x77).to_bytes(8, "little")
    assert ex.rflags & 0x200  # IF restored by IRETQ
    assert l2.vmcs_read(Vmcs.ENTRY_INTR_INFO) & INTR_INFO_VALID == 0


def test_vm_entry_injection_with_if_clear_fails_entry(h: TdHarness, l2: L2Context) -> None:
    install_idt(h, l2, "iretq")
    l2.vmcs_write(Vmcs.ENTRY_INTR_INFO, INTR_INFO_VALID | VECTOR)
    ex = run(l2, "hlt", rflags=0x2)
    assert ex.reason == ExitReason.INVALID_GUEST_STATE | VM_ENTRY_FAILURE


def test_interrupt_window_exit_when_if_opens(l2: L2Context) -> None:
    l2.vmcs_write(
        Vmcs.PROC_BASED_CONTROLS, PROC_INTERRUPT_WINDOW_EXITING, PROC_INTERRUPT_WINDOW_EXITING
    )
    ex = run(l2, "mov rax, 1\nsti\nmov rbx, 2\nmov rcx, 3\nhlt", rflags=0x2)
    assert ex.reason == ExitReason.INTERRUPT_WINDOW
    assert ex.guest.rbx == 2 and ex.guest.rcx == 0  # one instruction of STI shadow ran


def test_l1_interrupt_while_l2_runs_exits_pending_interrupt(h: TdHarness, l2: L2Context) -> None:
    import threading

    l2.load(CODE, assemble("1: jmp 1b", CODE))
    timer = threading.Timer(0.05, h.module.post_l1_interrupt, args=(0, 0x40))
    timer.start()
    ex = l2.enter(rip=CODE)
    timer.join()
    assert ex.regs.rax == TDX_L2_EXIT_PENDING_INTERRUPT | ExitReason.EXTERNAL_INTERRUPT


COUNTING_HANDLER = f"""
    inc qword ptr [{DATA:#x}]
    mov ecx, 0x80b
    xor eax, eax
    xor edx, edx
    wrmsr
    iretq
"""


def set_irr(h: TdHarness, l2: L2Context, *vectors: int) -> None:
    for vector in vectors:
        gpa = l2.vapic_gpa + VAPIC_IRR + (vector // 32) * 16
        cur = int.from_bytes(h.read(gpa, 4), "little")
        h.write(gpa, (cur | 1 << (vector % 32)).to_bytes(4, "little"))


def test_two_pending_vectors_delivered_in_priority_order(h: TdHarness, l2: L2Context) -> None:
    install_idt(h, l2, COUNTING_HANDLER, vector=0x41)
    install_idt(h, l2, COUNTING_HANDLER, vector=0x51)
    enable_vid(l2)
    l2.vmcs_write(Vmcs.EOI_EXIT_BITMAP1, 1 << (0x51 - 64))
    set_irr(h, l2, 0x41, 0x51)
    l2.rvi = 0x51
    ex = run(l2, "nop\nhlt", rflags=0x202)
    assert ex.reason == ExitReason.VIRTUALIZED_EOI and ex.qualification == 0x51
    assert ex.rvi == 0x41  # the next IRR vector is now requested
    assert h.read(DATA, 8) == (1).to_bytes(8, "little")
    ex = l2.enter()
    assert ex.reason == ExitReason.HLT
    assert h.read(DATA, 8) == (2).to_bytes(8, "little")
    assert ex.rvi == 0 and ex.svi == 0


def test_tpr_masks_lower_priority_vector(h: TdHarness, l2: L2Context) -> None:
    install_idt(h, l2, COUNTING_HANDLER, vector=0x41)
    enable_vid(l2)
    l2.allow_msr(0x808, read=True, write=True)
    set_irr(h, l2, 0x41)
    l2.rvi = 0x41
    ex = run(l2, "mov ecx, 0x808\nmov eax, 0x50\nxor edx, edx\nwrmsr\nhlt\nhlt", rflags=0x2)
    assert ex.reason == ExitReason.HLT
    l2.skip(ex)
    ex = l2.enter(rflags=0x202)  # IF open but TPR class 5 blocks vector class 4
    assert ex.reason == ExitReason.HLT
    assert h.read(DATA, 8) == bytes(8)
    assert ex.rvi == 0x41
    assert h.read(l2.vapic_gpa + 0x80, 1) == b"\x50"
