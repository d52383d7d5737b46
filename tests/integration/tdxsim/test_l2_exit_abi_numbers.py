"""Real x86-64 L2 code under TDG.VP.ENTER: the guest-state block, exit registers, exit routing,
EPT-violation qualifications and interrupt delivery carry the numbers that the Intel TDX Module
TD Partitioning Architecture Specification and the Intel SDM (VMX exit reasons, VMCS encodings)
give. The numbers are spelled out here, not imported from tdxdefs or tdxsim, so a wrong
constant in the module model fails a test; test_l2_exits.py covers the same paths through the
module's names."""

from __future__ import annotations

import struct

import pytest

from tdxsim.testing import L2Context, TdHarness, assemble

ALL_ONES = (1 << 64) - 1
VP_RD, VP_WR, VP_ENTER = 9, 10, 25
SUCCESS = 0
OPERAND_INVALID = 0xC000010000000000
PENDING_INTERRUPT = 0x0000112000000000
# VMX basic exit reasons (Intel SDM Vol. 3, appendix C)
CPUID, GETSEC, HLT, INVD, INVLPG, RDPMC, RDTSC = 10, 11, 12, 13, 14, 15, 16
VMCALL, VMCLEAR, VMLAUNCH, VMPTRLD, VMPTRST, VMREAD = 18, 19, 20, 21, 22, 23
VMRESUME, VMWRITE, VMXOFF, VMXON, MSR_READ, MSR_WRITE = 24, 25, 26, 27, 31, 32
INVEPT, INVVPID, VMFUNC = 50, 53, 59
INVALID_GUEST_STATE, PAUSE, EPT_VIOLATION, TDCALL = 33, 40, 48, 77
ENTRY_FAILURE = 1 << 31
# L2 VMCS field encodings (Intel SDM Vol. 3, appendix B)
GUEST_CS_SELECTOR, GUEST_CS_LIMIT, GUEST_CS_AR, GUEST_CS_BASE = 0x0802, 0x4802, 0x4816, 0x6808
PROC_BASED, SECONDARY, EXCEPTION_BITMAP = 0x4002, 0x401E, 0x4004
ENTRY_INTR_INFO, ENTRY_INSTR_LEN, INTERRUPTIBILITY = 0x4016, 0x401A, 0x4824
GUEST_IDTR_BASE, GUEST_IDTR_LIMIT = 0x6818, 0x4812
PROC_INVLPG, PROC_RDPMC, PROC_RDTSC, PROC_PAUSE = 1 << 9, 1 << 11, 1 << 12, 1 << 30
SEC_VID = 1 << 9
INTR_VALID, TYPE_HW_EXC, TYPE_SW_EXC = 1 << 31, 3 << 8, 6 << 8
STI_BLOCKING, MOV_SS_BLOCKING = 1, 2
L2_CTLS_ENABLE_TDVMCALL = 0x2
# L2 page attribute words (TDG.MEM.PAGE.ATTR.WR)
R, W, XS, VALID = 1, 2, 4, 0x8000
RW, RO = R | W | VALID, R | VALID

CODE = 0x10000
HANDLER = 0x12000
STACK_PAGE = 0x20000
STACK_TOP = STACK_PAGE + 0x1000
IDT = 0x30000
DATA = 0x40000
NO_ALIAS_STACK = 0x70000
VECTOR = 0x41


def vmcs_fid(vm: int, encoding: int) -> int:
    width = (encoding >> 13) & 3
    size = {0: 1, 1: 3, 2: 2, 3: 3}[width]
    return ((36 + 8 * (vm - 1)) << 56) | (2 << 52) | (size << 32) | encoding


def msr_bitmap_fid(vm: int, qword: int) -> int:
    return ((37 + 8 * (vm - 1)) << 56) | (2 << 52) | (3 << 32) | qword


def vmcs_rd(h: TdHarness, encoding: int, vm: int = 1) -> int:
    out = h.tdcall(VP_RD, rdx=vmcs_fid(vm, encoding))
    assert out.rax == SUCCESS
    return out.r8


def vmcs_wr(h: TdHarness, encoding: int, value: int, mask: int = ALL_ONES, vm: int = 1) -> None:
    assert h.tdcall(VP_WR, rdx=vmcs_fid(vm, encoding), r8=value, r9=mask).rax == SUCCESS


@pytest.fixture
def l2(h: TdHarness) -> L2Context:
    ctx = h.l2(vm=1)
    h.set_alias(1, STACK_PAGE, RW)
    h.set_alias(1, DATA, RW)
    return ctx


def run(l2: L2Context, source: str, **regs: int):  # type: ignore[no-untyped-def]
    l2.load(CODE, assemble(source, CODE))
    return l2.enter(rip=CODE, rsp=STACK_TOP, **regs)


def install_idt(h: TdHarness, handler_source: str, vector: int = VECTOR) -> None:
    handler = HANDLER + (vector % 32) * 0x40  # every handler on the one aliased page
    h.write(handler, assemble(handler_source, handler))
    h.set_alias(1, HANDLER, R | XS | VALID)
    gate = struct.pack(
        "<HHBBHIxxxx", handler & 0xFFFF, 0x08, 0, 0x8E, (handler >> 16) & 0xFFFF, handler >> 32
    )
    h.write(IDT + vector * 16, gate)
    h.set_alias(1, IDT, RO)
    vmcs_wr(h, GUEST_IDTR_BASE, IDT)
    vmcs_wr(h, GUEST_IDTR_LIMIT, 256 * 16 - 1)


# --- the 256-byte L2_ENTER_GUEST_STATE, by raw offsets -------------------------------------------
GPR_ORDER = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"] + [
    f"r{i}" for i in range(8, 16)
]


def raw_enter(h: TdHarness, ctx: L2Context, block: bytes, **l1: int):  # type: ignore[no-untyped-def]
    h.memory.write(ctx.state_gpa, block.ljust(256, b"\0"))
    return h.tdcall(VP_ENTER, rcx=1 << 52, rdx=ctx.state_gpa, **l1)


def test_guest_state_block_offsets_in_and_out(h: TdHarness, l2: L2Context) -> None:
    stores = "\n".join(
        f"mov qword ptr [{DATA + 8 * i:#x}], {name}" for i, name in enumerate(GPR_ORDER)
    )
    negs = "\n".join(f"neg {name}" for name in GPR_ORDER if name != "rsp")
    src = f"{stores}\npushfq\npop qword ptr [{DATA + 0x80:#x}]\n{negs}\npush rax\nhlt"
    code = assemble(src, CODE)
    l2.load(CODE, code)
    values = [STACK_TOP if n == "rsp" else 0x100 + i for i, n in enumerate(GPR_ORDER)]
    rflags = 0x2 | 0x1 | 0x80 | 0x800  # CF, SF, OF: a recognisable RFLAGS
    block = struct.pack("<16Q", *values) + struct.pack("<QQQH", rflags, CODE, 0, 0)
    out = raw_enter(h, l2, block)
    assert out.rax == SUCCESS | HLT
    stored = struct.unpack("<16Q", h.read(DATA, 128))
    assert list(stored) == values  # 0x00-0x7F: RAX, RCX, ... R15 in architectural order
    assert struct.unpack("<Q", h.read(DATA + 0x80, 8))[0] == rflags  # 0x80: RFLAGS
    after = h.memory.read(l2.state_gpa, 0x9A)
    gprs = struct.unpack_from("<16Q", after)
    for i, name in enumerate(GPR_ORDER):
        want = STACK_TOP - 8 if name == "rsp" else (-(0x100 + i)) & ALL_ONES
        assert gprs[i] == want, name
    rip = struct.unpack_from("<Q", after, 0x88)[0]
    assert rip == CODE + len(code) - 1  # 0x88: RIP, on the HLT
    assert struct.unpack_from("<Q", after, 0x80)[0] & 0x2  # RFLAGS fixed bit 1


def test_guest_interrupt_status_low_byte_rvi_high_byte_svi(h: TdHarness, l2: L2Context) -> None:
    install_idt(h, "hlt\n1: jmp 1b")  # the handler halts while the vector is in service
    vmcs_wr(h, SECONDARY, SEC_VID)
    l2.load(CODE, assemble("nop\n1: jmp 1b", CODE))
    h.write(l2.vapic_gpa + 0x200 + (VECTOR // 32) * 16, (1 << (VECTOR % 32)).to_bytes(4, "little"))
    block = struct.pack("<16Q", *([0] * 4 + [STACK_TOP] + [0] * 11))
    block += struct.pack("<QQQH", 0x202, CODE, 0, VECTOR)  # RVI = VECTOR, SVI = 0
    out = raw_enter(h, l2, block)
    assert out.rax == SUCCESS | HLT
    status = struct.unpack_from("<H", h.memory.read(l2.state_gpa + 0x98, 2))[0]
    assert status == VECTOR << 8  # RVI 0 (IRR empty), SVI = VECTOR (in service)


# --- TDG.VP.ENTER exit registers -----------------------------------------------------------------
def test_exit_registers_layout_on_cpuid(h: TdHarness, l2: L2Context) -> None:
    l2.load(CODE, assemble("cpuid", CODE))
    block = struct.pack("<16Q", *([0] * 4 + [STACK_TOP] + [0] * 11))
    block += struct.pack("<QQQH", 0x2, CODE, 0, 0)
    junk = 0xDEADBEEF
    out = raw_enter(
        h, l2, block, rbx=junk, rsi=junk, rdi=junk, r12=junk, r13=junk, r14=junk, r15=junk
    )
    assert out.rax == SUCCESS | CPUID
    assert out.rbx == 0 and out.r14 == 0 and out.r15 == 0
    sel, ar = vmcs_rd(h, GUEST_CS_SELECTOR), vmcs_rd(h, GUEST_CS_AR)
    limit, base = vmcs_rd(h, GUEST_CS_LIMIT), vmcs_rd(h, GUEST_CS_BASE)
    assert out.rsi == sel | (ar << 16) | (limit << 32)
    assert sel == 0x08 and out.rdi == base
    assert out.r12 == 0  # CPL 0
    assert out.r9 == 0 and out.r10 == 0  # no exit interruption, no IDT vectoring
    assert out.r11 >> 32 == 2  # CPUID is 2 bytes
    assert out.r13 == 0  # no extended qualification


@pytest.mark.parametrize("invd_type", [2, 3])
def test_vp_enter_invalidation_types_2_and_3(h: TdHarness, l2: L2Context, invd_type: int) -> None:
    ex = run(l2, "hlt")
    l2.skip(ex)
    l2.load(CODE, assemble("hlt", CODE))
    assert l2.enter(rip=CODE, flags=invd_type).regs.rax == SUCCESS | HLT


# --- routing: MSR bitmap, high range and out-of-range MSRs ---------------------------------------
def test_high_msr_read_follows_the_msr_bitmap_field(h: TdHarness, l2: L2Context) -> None:
    # MSR 0xC0000100: read-high bitmap byte 0x400 + 0x100/8 = 0x420 -> qword 0x84, bit 0
    src = "mov ecx, 0xc0000100\nrdmsr\nhlt"
    assert run(l2, src).reason == MSR_READ
    assert h.tdcall(VP_WR, rdx=msr_bitmap_fid(1, 0x84), r8=0, r9=1).rax == SUCCESS
    ex = run(l2, src)
    assert ex.reason == HLT
    assert run(l2, "mov ecx, 0xc0000100\nwrmsr\nhlt").reason == MSR_WRITE  # write bit still set


def test_msr_outside_both_ranges_always_exits(h: TdHarness, l2: L2Context) -> None:
    for qword in range(0x200):  # clear every bit of the whole bitmap page
        h.tdcall(VP_WR, rdx=msr_bitmap_fid(1, qword), r8=0, r9=ALL_ONES)
    assert run(l2, "mov ecx, 0x10\nrdmsr\nhlt").reason == HLT
    ex = run(l2, "mov ecx, 0x40000000\nrdmsr\nhlt")
    assert ex.regs.rax == SUCCESS | MSR_READ and ex.instr_len == 2


# --- routing: conditional and unconditional instruction exits ------------------------------------
@pytest.mark.parametrize(
    ("source", "control", "reason", "length"),
    [
        ("rdtsc", PROC_RDTSC, RDTSC, 2),
        ("pause", PROC_PAUSE, PAUSE, 2),
        ("mov ecx, 0\nrdpmc", PROC_RDPMC, RDPMC, 2),
    ],
)
def test_control_enabled_exits(
    h: TdHarness, l2: L2Context, source: str, control: int, reason: int, length: int
) -> None:
    assert run(l2, f"{source}\nhlt").reason != reason  # off by default: no exit for it
    vmcs_wr(h, PROC_BASED, control, control)
    ex = run(l2, f"{source}\nhlt")
    assert ex.regs.rax == SUCCESS | reason
    assert ex.instr_len == length


def test_invlpg_exit_qualification_is_linear_address(h: TdHarness, l2: L2Context) -> None:
    vmcs_wr(h, PROC_BASED, PROC_INVLPG, PROC_INVLPG)
    ex = run(l2, f"invlpg [{DATA + 0x123:#x}]\nhlt")
    assert ex.regs.rax == SUCCESS | INVLPG
    assert ex.qualification == DATA + 0x123


@pytest.mark.parametrize(
    ("source", "reason", "length"),
    [
        ("invd", INVD, 2),
        ("getsec", GETSEC, 2),
        ("vmlaunch", VMLAUNCH, 3),
        ("vmresume", VMRESUME, 3),
        ("vmxoff", VMXOFF, 3),
        # the other VMX instructions (3.3: 19-27, 50, 53, 59); lengths counted from the SDM
        # encodings: prefixes + opcode + ModRM + SIB + displacement
        ("vmfunc", VMFUNC, 3),  # 0F 01 D4
        ("invept rax, [rbx]", INVEPT, 5),  # 66 0F 38 80 /r
        ("invvpid rcx, [rbx + 8]", INVVPID, 6),  # 66 0F 38 81 /r disp8
        ("vmptrld [rax + rcx*8 + 0x12345678]", VMPTRLD, 8),  # 0F C7 /6, SIB, disp32
        ("vmptrld [rcx*8 + 0x40000]", VMPTRLD, 8),  # SIB with no base: disp32 even at mod 0
        (".byte 0x2e, 0x41, 0x0f, 0xc7, 0x74, 0x24, 0x10", VMPTRLD, 7),  # CS, REX.B, [r12+16]
        ("vmclear [rbx]", VMCLEAR, 4),  # 66 0F C7 /6
        ("vmxon [rbx]", VMXON, 4),  # F3 0F C7 /6
        ("vmptrst [rbx + 0x10]", VMPTRST, 4),  # 0F C7 /7 disp8
        ("vmread rax, rbx", VMREAD, 3),  # 0F 78 /r, register form
        ("vmwrite rax, [rip + 0x100]", VMWRITE, 7),  # 0F 79 /r, RIP-relative disp32
    ],
)
def test_unconditional_exits_go_to_l1(l2: L2Context, source: str, reason: int, length: int) -> None:
    ex = run(l2, f"nop\n{source}\nhlt")
    assert ex.regs.rax == SUCCESS | reason
    assert ex.instr_len == length and ex.rip == CODE + 1


def test_group9_non_vmx_forms_do_not_exit(l2: L2Context) -> None:
    # 0F C7 /1 (CMPXCHG16B) shares the opcode with VMPTRLD/VMPTRST but is no VMX instruction
    ex = run(l2, f"mov rbx, {DATA:#x}\ncmpxchg16b [rbx]\nhlt")
    assert ex.reason == HLT


def test_register_form_invept_raises_ud_not_an_exit(h: TdHarness, l2: L2Context) -> None:
    install_idt(h, f"mov qword ptr [{DATA:#x}], 6\nhlt", vector=6)
    ex = run(l2, ".byte 0x66, 0x0f, 0x38, 0x80, 0xc3\nhlt")  # INVEPT needs a memory operand
    assert ex.reason == HLT
    assert h.read(DATA, 8) == (6).to_bytes(8, "little")  # the #UD handler ran


INVLPG_REGS = {"rbx": 0x40000, "rsi": 3, "r13": 0x7000_0000_0000, "r12": 0x10, "rdi": 1 << 32}


@pytest.mark.parametrize(
    ("source", "length", "linear"),
    [
        ("invlpg [rbx + rsi*4 + 0x10]", 5, 0x40000 + 3 * 4 + 0x10),  # 0F 01 /7 SIB disp8
        ("invlpg [rip + 0x200]", 7, CODE + 1 + 7 + 0x200),  # after the NOP; next RIP + disp
        ("invlpg [rbx - 0x20]", 4, 0x40000 - 0x20),  # negative disp8 is sign-extended
        ("invlpg [r13 + r12*2 + 0x12345]", 9, 0x7000_0000_0000 + 0x20 + 0x12345),  # REX.XB
        ("invlpg [edi + ebx]", 5, 0x40000),  # 67: 32-bit address arithmetic drops bit 32
    ],
)
def test_invlpg_exit_length_and_address_forms(
    h: TdHarness, l2: L2Context, source: str, length: int, linear: int
) -> None:
    assert run(l2, f"nop\n{source}\nhlt", **INVLPG_REGS).reason == HLT  # off by default
    vmcs_wr(h, PROC_BASED, PROC_INVLPG, PROC_INVLPG)
    ex = run(l2, f"nop\n{source}\nhlt", **INVLPG_REGS)
    assert ex.regs.rax == SUCCESS | INVLPG
    assert ex.qualification == linear
    assert ex.instr_len == length and ex.rip == CODE + 1


def test_vmcall_exits_to_l1_even_with_enable_tdvmcall(h: TdHarness, l2: L2Context) -> None:
    h.set_l2_ctls(1, L2_CTLS_ENABLE_TDVMCALL)
    ex = run(l2, "vmcall\nhlt")
    assert ex.regs.rax == SUCCESS | VMCALL and ex.instr_len == 3


def test_l2_accept_tdcall_exits_to_l1_with_leaf_in_rax(h: TdHarness, l2: L2Context) -> None:
    h.set_l2_ctls(1, L2_CTLS_ENABLE_TDVMCALL)  # only leaf 0 may go to the host
    ex = run(l2, "mov eax, 6\nmov ecx, 0x400000\ntdcall\nhlt")
    assert ex.regs.rax == SUCCESS | TDCALL and ex.instr_len == 4
    assert ex.guest.rax == 6 and ex.guest.rcx == 0x400000
    assert h.memory.page_state(0x400000).name == "PENDING"  # L2 did not accept L1's page


# --- EPT-violation qualification -----------------------------------------------------------------
def test_read_of_execute_only_alias(h: TdHarness, l2: L2Context) -> None:
    page = 0x50000
    h.set_alias(1, page, XS | VALID)
    ex = run(l2, f"mov rax, qword ptr [{page + 0x40:#x}]\nhlt")
    assert ex.reason == EPT_VIOLATION
    assert ex.qualification & 0x3F == 0x1 | (1 << 5)  # data read; page executable only
    assert ex.gpa == page + 0x40


# --- interrupts ----------------------------------------------------------------------------------
EOI_HANDLER = f"""
    mov qword ptr [{DATA:#x}], 0x5a
    mov ecx, 0x80b
    xor eax, eax
    xor edx, edx
    wrmsr
    iretq
"""


def test_rvi_delivery_waits_for_sti_blocking(h: TdHarness, l2: L2Context) -> None:
    install_idt(h, EOI_HANDLER)
    vmcs_wr(h, SECONDARY, SEC_VID)
    l2.allow_msr(0x80B, read=False, write=True)
    h.write(l2.vapic_gpa + 0x200 + (VECTOR // 32) * 16, (1 << (VECTOR % 32)).to_bytes(4, "little"))
    vmcs_wr(h, INTERRUPTIBILITY, STI_BLOCKING)
    l2.rvi = VECTOR
    src = f"mov rbx, qword ptr [{DATA:#x}]\nmov rcx, qword ptr [{DATA:#x}]\nhlt"
    ex = run(l2, src, rflags=0x202)
    assert ex.reason == HLT
    assert ex.guest.rbx == 0  # one instruction ran in the STI shadow ...
    assert ex.guest.rcx == 0x5A  # ... then the interrupt was delivered


def test_entry_injection_with_mov_ss_blocking_fails_entry(h: TdHarness, l2: L2Context) -> None:
    install_idt(h, "iretq")
    vmcs_wr(h, INTERRUPTIBILITY, MOV_SS_BLOCKING)
    vmcs_wr(h, ENTRY_INTR_INFO, INTR_VALID | VECTOR)
    ex = run(l2, "hlt", rflags=0x202)
    assert ex.reason == INVALID_GUEST_STATE | ENTRY_FAILURE


def test_entry_injection_of_hw_exception_ignores_if(h: TdHarness, l2: L2Context) -> None:
    install_idt(h, f"mov qword ptr [{DATA:#x}], 0x66\nadd qword ptr [rsp], 2\niretq", vector=6)
    vmcs_wr(h, ENTRY_INTR_INFO, INTR_VALID | TYPE_HW_EXC | 6)
    ex = run(l2, "ud2\nhlt", rflags=0x2)  # IF clear: exceptions are not masked by IF
    assert ex.reason == HLT
    assert h.read(DATA, 8) == (0x66).to_bytes(8, "little")


def test_entry_injection_of_sw_exception_uses_length(h: TdHarness, l2: L2Context) -> None:
    install_idt(h, f"mov rax, qword ptr [rsp]\nmov qword ptr [{DATA:#x}], rax\niretq", vector=3)
    vmcs_wr(h, ENTRY_INTR_INFO, INTR_VALID | TYPE_SW_EXC | 3)
    vmcs_wr(h, ENTRY_INSTR_LEN, 1)
    ex = run(l2, "int3\nhlt", rflags=0x2)
    assert ex.reason == HLT
    assert h.read(DATA, 8) == (CODE + 1).to_bytes(8, "little")  # return RIP = RIP + length


def test_idt_vectoring_info_in_r10_when_delivery_faults(h: TdHarness, l2: L2Context) -> None:
    install_idt(h, "iretq")
    vmcs_wr(h, ENTRY_INTR_INFO, INTR_VALID | VECTOR)
    l2.load(CODE, assemble("hlt", CODE))
    ex = l2.enter(rip=CODE, rsp=NO_ALIAS_STACK + 0x1000, rflags=0x202)  # stack has no alias
    assert ex.reason == EPT_VIOLATION
    frame = NO_ALIAS_STACK + 0x1000 - 5 * 8  # SS, RSP, RFLAGS, CS, RIP; push order is not fixed
    assert frame <= ex.gpa < NO_ALIAS_STACK + 0x1000
    assert ex.qualification & 0x2  # a write (the push)
    assert ex.regs.r10 & 0xFFFFFFFF == INTR_VALID | VECTOR  # external interrupt, re-inject


def test_l1_interrupt_not_above_ppr_does_not_block_entry(h: TdHarness, l2: L2Context) -> None:
    h.td.vcpus[0].l1_ppr = 0x50
    h.module.post_l1_interrupt(0, 0x45)  # class 4 <= PPR class 5: not deliverable
    assert run(l2, "hlt").regs.rax == SUCCESS | HLT
    h.module.post_l1_interrupt(0, 0x61)  # class 6 > 5: VP.ENTER must not enter L2
    ex = run(l2, "inc rax\nhlt", rax=1)
    assert ex.regs.rax == PENDING_INTERRUPT
    assert ex.guest.rax == 1 and ex.rip == CODE


def test_pending_interrupt_checked_before_operands_are_used(h: TdHarness, l2: L2Context) -> None:
    h.module.post_l1_interrupt(0, 0x80)
    out = h.tdcall(VP_ENTER, rcx=1 << 52, rdx=l2.state_gpa)
    assert out.rax == PENDING_INTERRUPT
    assert out.rax >> 63 == 0  # not an error: L1 takes its interrupt and retries
