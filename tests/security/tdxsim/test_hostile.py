"""Hostile L2 guests and hostile L1 register values: the module never breaks, never leaks."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tdxdefs.attributes import ATTR_R, ATTR_VALID, ATTR_W, ATTR_XS, attr_word
from tdxdefs.tdcall import MAX_L2_VMS, TDX_L2_EXIT_HOST_ROUTED_ASYNC, TDX_SUCCESS, Leaf
from tdxdefs.vmcs import INTR_INFO_VALID, ExitReason, Vmcs
from tdxsim.module.memory import PageState
from tdxsim.module.registers import Regs
from tdxsim.testing import L2Context, TdHarness, assemble

CODE = 0x10000
L1_SECRET = 0x70000
SECRET = b"L1-ONLY-SECRET!!" * 4
U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
INTERESTING = st.one_of(
    U64,
    st.sampled_from([0, 1, 0x1000, 0x3000, 0x400000, 1 << 47, 1 << 52, (1 << 64) - 1]),
)


@pytest.fixture
def small_budget() -> TdHarness:
    h = TdHarness.default(ram_mib=8, num_l2_vms=2, instruction_budget=20_000)
    h.accept(0, 0x200000)
    h.write(L1_SECRET, SECRET)
    return h


def enter_code(h: TdHarness, source: str, vm: int = 1, **regs: int):  # type: ignore[no-untyped-def]
    l2 = h.l2(vm)
    l2.load(CODE, assemble(source, CODE))
    return l2, l2.enter(rip=CODE, rsp=0, **regs)


def assert_no_secret(l2: L2Context, exit_regs: Regs) -> None:
    blob = b"".join(v.to_bytes(8, "little") for v in l2.regs.as_list() + exit_regs.as_list())
    for i in range(0, len(SECRET), 8):
        assert SECRET[i : i + 8] not in blob


def test_infinite_loop_is_bounded_by_the_instruction_budget(small_budget: TdHarness) -> None:
    l2, ex = enter_code(small_budget, "1: jmp 1b")
    assert ex.regs.rax == TDX_L2_EXIT_HOST_ROUTED_ASYNC | ExitReason.EXTERNAL_INTERRUPT
    assert ex.rip == CODE
    # the module keeps working afterwards
    assert small_budget.tdcall(Leaf.VP_INFO).rax == TDX_SUCCESS
    l2.load(CODE, assemble("hlt", CODE))
    assert l2.enter(rip=CODE).reason == ExitReason.HLT


def test_l2_cannot_read_l1_only_page(small_budget: TdHarness) -> None:
    src = f"mov rax, qword ptr [{L1_SECRET:#x}]\nmov rbx, qword ptr [{L1_SECRET + 8:#x}]\nhlt"
    l2, ex = enter_code(small_budget, src)
    assert ex.reason == ExitReason.EPT_VIOLATION and ex.gpa == L1_SECRET
    assert_no_secret(l2, ex.regs)


def test_l2_cannot_jump_into_l1_only_page(small_budget: TdHarness) -> None:
    l2, ex = enter_code(small_budget, f"mov rax, {L1_SECRET:#x}\njmp rax")
    assert ex.reason == ExitReason.EPT_VIOLATION
    assert ex.gpa == L1_SECRET and ex.qualification & 0x4  # instruction fetch
    assert_no_secret(l2, ex.regs)


def test_l2_cannot_write_guest_state_block_or_vapic(small_budget: TdHarness) -> None:
    l2 = small_budget.l2(1)
    for target in (l2.state_gpa, l2.vapic_gpa, l2.gdt_gpa):
        l2.load(CODE, assemble(f"mov qword ptr [{target:#x}], 0x41\nhlt", CODE))
        ex = l2.enter(rip=CODE)
        assert ex.reason == ExitReason.EPT_VIOLATION and ex.gpa == target


def test_other_vm_alias_does_not_leak(small_budget: TdHarness) -> None:
    small_budget.set_alias(2, L1_SECRET, ATTR_R | ATTR_VALID)  # VM2 may read, VM1 may not
    _, ex = enter_code(small_budget, f"mov rax, qword ptr [{L1_SECRET:#x}]\nhlt", vm=1)
    assert ex.reason == ExitReason.EPT_VIOLATION
    _, ex2 = enter_code(small_budget, f"mov rax, qword ptr [{L1_SECRET:#x}]\nhlt", vm=2)
    assert ex2.reason == ExitReason.HLT and ex2.guest.rax == int.from_bytes(SECRET[:8], "little")


@pytest.mark.parametrize(
    "source",
    [
        "mov rax, 0xdeadbeef000\njmp rax",  # unbacked GPA
        "mov rax, 0x800000000000\njmp rax",  # shared GPA
        "ud2",  # invalid opcode, no IDT: triple fault
        "int3",
        "xor eax, eax\ndiv eax",
        "mov rsp, 0\npush rax\nhlt",  # push into an unmapped stack
        "lidt [0]\nhlt",
    ],
)
def test_wild_guest_never_breaks_module(small_budget: TdHarness, source: str) -> None:
    l2, ex = enter_code(small_budget, source)
    assert ex.reason in {
        ExitReason.EPT_VIOLATION,
        ExitReason.TRIPLE_FAULT,
        ExitReason.HLT,
        ExitReason.EXCEPTION_NMI,
    }
    assert not small_budget.module.internal_errors
    assert small_budget.tdcall(Leaf.VP_INFO).rax == TDX_SUCCESS
    assert_no_secret(l2, ex.regs)


def test_exception_bitmap_routes_guest_fault_to_l1(small_budget: TdHarness) -> None:
    l2 = small_budget.l2(1)
    l2.vmcs_write(Vmcs.EXCEPTION_BITMAP, 1 << 6)
    l2.load(CODE, assemble("nop\nud2", CODE))
    ex = l2.enter(rip=CODE)
    assert ex.reason == ExitReason.EXCEPTION_NMI
    assert ex.regs.r9 & 0xFF == 6 and ex.regs.r9 & INTR_INFO_VALID
    assert ex.rip == CODE + 1


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    leaf=st.integers(min_value=0, max_value=40),
    rcx=INTERESTING,
    rdx=INTERESTING,
    r8=INTERESTING,
    r9=INTERESTING,
)
def test_random_l1_registers_never_raise(
    small_budget: TdHarness, leaf: int, rcx: int, rdx: int, r8: int, r9: int
) -> None:
    if leaf == Leaf.VP_ENTER:
        rdx &= ~0xFF  # keep entries short; guest-state content is fuzzed elsewhere
    out = small_budget.tdcall(leaf, rcx=rcx, rdx=rdx, r8=r8, r9=r9)
    assert 0 <= out.rax < 1 << 64
    assert not small_budget.module.internal_errors
    # invariants: VM0 never gets a stored alias word, no alias for a VM that does not exist
    words = small_budget.module.aliases.words
    for index in range(0, len(words), 97):
        packed = words[index]
        assert attr_word(packed, 0) == 0
        assert attr_word(packed, MAX_L2_VMS) == 0
        if small_budget.memory.state[index] == PageState.NOT_PRESENT:
            assert packed == 0


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(block=st.binary(min_size=256, max_size=256))
def test_random_guest_state_block_is_contained(small_budget: TdHarness, block: bytes) -> None:
    l2 = small_budget.l2(1)
    small_budget.set_alias(1, CODE, ATTR_R | ATTR_W | ATTR_XS | ATTR_VALID)
    small_budget.memory.write(l2.state_gpa, block)
    out = small_budget.tdcall(Leaf.VP_ENTER, rcx=1 << 52, rdx=l2.state_gpa)
    assert 0 <= out.rax < 1 << 64
    assert not small_budget.module.internal_errors
    assert small_budget.read(L1_SECRET, len(SECRET)) == SECRET


def test_hostile_guest_cannot_corrupt_memory_outside_its_aliases(small_budget: TdHarness) -> None:
    src = """
        mov rdi, 0
    1:  mov qword ptr [rdi], -1
        add rdi, 8
        jmp 1b
    """
    small_budget.set_alias(1, 0x11000, ATTR_R | ATTR_W | ATTR_VALID)
    _, ex = enter_code(small_budget, src)
    assert ex.reason == ExitReason.EPT_VIOLATION and ex.gpa == 0  # page 0 has no alias
    assert small_budget.read(L1_SECRET, len(SECRET)) == SECRET
