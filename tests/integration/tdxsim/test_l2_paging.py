"""L2 with its own page tables: walks go through the EPT (alias) like on hardware."""

from __future__ import annotations

import pytest
from unicorn.x86_const import UC_X86_REG_CR2

from tdxdefs.attributes import ATTR_R, ATTR_VALID, ATTR_W, ATTR_XS
from tdxdefs.vmcs import (
    EPTV_GLA_VALID,
    EPTV_READ,
    EPTV_TRANSLATED,
    EPTV_WRITE,
    INTR_INFO_VALID,
    ExitReason,
    Vmcs,
)
from tdxsim.testing import L2Context, TdHarness, assemble

CODE = 0x10000
PML4, PDPT, PD, PD_HIGH, PT = 0x70000, 0x71000, 0x72000, 0x74000, 0x73000
DATA = 0x40000
SECRET_PAGE = 0x90000
HIGH_GLA = 0x4000_0000  # 1 GiB: PML4[0] -> PDPT[1] -> PD[0] -> PT[0]
ENABLE_PAGING = f"""
    mov rax, {PML4:#x}
    mov cr3, rax
    mov rax, cr4
    or rax, 0x20
    mov cr4, rax
    mov rax, cr0
    bts rax, 31
    mov cr0, rax
"""


def q(value: int) -> bytes:
    return value.to_bytes(8, "little")


def build_tables(h: TdHarness, pml4: int = PML4, data_present: bool = True) -> None:
    h.write(pml4, q(PDPT | 3))
    h.write(PDPT, q(PD | 3))  # GLA 0..1G: identity through a 2M page in PD[0]
    h.write(PD, q(0 | 0x83))
    h.write(PDPT + 8, q(PD_HIGH | 3))  # GLA 1G..2G
    h.write(PD_HIGH, q(PT | 3))
    h.write(PT, q((DATA | 3) if data_present else 0))
    for page in (pml4, PDPT, PD, PD_HIGH, PT):
        h.set_alias(1, page, ATTR_R | ATTR_VALID)


@pytest.fixture
def l2(h: TdHarness) -> L2Context:
    ctx = h.l2(1)
    h.set_alias(1, DATA, ATTR_R | ATTR_W | ATTR_VALID)
    h.set_alias(1, 0x20000, ATTR_R | ATTR_W | ATTR_VALID)  # stack
    return ctx


def test_translated_access_reaches_mapped_page(h: TdHarness, l2: L2Context) -> None:
    build_tables(h)
    h.write(DATA + 0x18, q(0xFEEDFACE))
    src = ENABLE_PAGING + f"mov rbx, qword ptr [{HIGH_GLA + 0x18:#x}]\nhlt"
    l2.load(CODE, assemble(src, CODE))
    ex = l2.enter(rip=CODE)
    assert ex.reason == ExitReason.HLT
    assert ex.guest.rbx == 0xFEEDFACE


def test_ept_violation_through_paging_reports_gla_and_gpa(h: TdHarness, l2: L2Context) -> None:
    build_tables(h)
    h.set_alias(1, DATA, ATTR_R | ATTR_VALID)  # read-only now
    src = ENABLE_PAGING + f"mov rax, {HIGH_GLA + 0x20:#x}\nmov qword ptr [rax], 1\nhlt"
    l2.load(CODE, assemble(src, CODE))
    ex = l2.enter(rip=CODE)
    assert ex.reason == ExitReason.EPT_VIOLATION
    assert ex.gpa == DATA + 0x20
    assert ex.gla == HIGH_GLA + 0x20
    assert ex.qualification & (EPTV_WRITE | EPTV_TRANSLATED) == EPTV_WRITE | EPTV_TRANSLATED


def test_page_tables_in_l1_only_memory_do_not_leak(h: TdHarness, l2: L2Context) -> None:
    h.write(SECRET_PAGE, q(DATA | 3) * 512)  # L1 data that happens to look like a PML4
    src = ENABLE_PAGING.replace(f"{PML4:#x}", f"{SECRET_PAGE:#x}") + "mov rbx, 1\nhlt"
    l2.load(CODE, assemble(src, CODE))
    ex = l2.enter(rip=CODE)
    assert ex.reason == ExitReason.EPT_VIOLATION
    assert ex.gpa == SECRET_PAGE  # the paging-structure read itself faulted
    assert ex.qualification & EPTV_READ and ex.qualification & EPTV_GLA_VALID
    assert not ex.qualification & EPTV_TRANSLATED
    assert ex.guest.rbx == 0


def test_not_present_pte_is_a_guest_page_fault(h: TdHarness, l2: L2Context) -> None:
    build_tables(h, data_present=False)
    l2.vmcs_write(Vmcs.EXCEPTION_BITMAP, 1 << 14)
    src = ENABLE_PAGING + f"mov rbx, qword ptr [{HIGH_GLA + 8:#x}]\nhlt"
    l2.load(CODE, assemble(src, CODE))
    ex = l2.enter(rip=CODE)
    assert ex.reason == ExitReason.EXCEPTION_NMI
    assert ex.regs.r9 & 0xFF == 14 and ex.regs.r9 & INTR_INFO_VALID
    cr2 = l2.harness.module.l2_vcpu(0, 1).uc.reg_read(UC_X86_REG_CR2)
    assert cr2 == HIGH_GLA + 8


def test_exit_at_a_page_start_after_an_unmapped_page(h: TdHarness, l2: L2Context) -> None:
    # The code page is mapped at HIGH_GLA; the GLA page before it maps nothing. CPUID at the
    # first byte of the page, reached by a jump back from the next instruction.
    build_tables(h)
    h.set_alias(1, DATA, ATTR_R | ATTR_W | ATTR_XS | ATTR_VALID)
    h.write(DATA, bytes.fromhex("0fa2ebfc"))  # cpuid; jmp back to the cpuid
    src = ENABLE_PAGING + f"mov rax, {HIGH_GLA + 2:#x}\njmp rax"
    l2.load(CODE, assemble(src, CODE))
    ex = l2.enter(rip=CODE)
    assert ex.reason == ExitReason.CPUID
    assert ex.rip == HIGH_GLA
    for _ in range(3):  # entered again at the jump, each time
        ex = l2.enter(rip=HIGH_GLA + 2)
        assert ex.reason == ExitReason.CPUID and ex.rip == HIGH_GLA


def test_code_page_read_through_a_second_mapping_exits_when_run_there(
    h: TdHarness, l2: L2Context
) -> None:
    # DATA runs first at its identity GLA, then is read and run through HIGH_GLA: the second
    # mapping needs its own stops before the exiting instructions.
    build_tables(h)
    h.set_alias(1, DATA, ATTR_R | ATTR_W | ATTR_XS | ATTR_VALID)
    h.write(DATA, b"\xc3" + bytes(15) + bytes.fromhex("0fa2f4"))  # ret; ... +0x10: cpuid; hlt
    src = ENABLE_PAGING + (
        f"mov rax, {DATA:#x}\ncall rax\nmov rbx, qword ptr [{HIGH_GLA:#x}]\n"
        f"mov rax, {HIGH_GLA + 0x10:#x}\njmp rax"
    )
    l2.load(CODE, assemble(src, CODE))
    ex = l2.enter(rip=CODE, rsp=0x21000)
    assert ex.reason == ExitReason.CPUID
    assert ex.rip == HIGH_GLA + 0x10
    assert ex.guest.rbx == 0xC3


def test_access_retried_after_l1_maps_the_page_reaches_it(h: TdHarness, l2: L2Context) -> None:
    # x86 caches no translation of a non-present entry: once the PTE is present, the same
    # access succeeds without an INVLPG.
    build_tables(h, data_present=False)
    h.write(DATA + 8, q(0x5EED))
    l2.vmcs_write(Vmcs.EXCEPTION_BITMAP, 1 << 14)
    src = ENABLE_PAGING + f"fault_here:\nmov rbx, qword ptr [{HIGH_GLA + 8:#x}]\nhlt"
    l2.load(CODE, assemble(src, CODE))
    ex = l2.enter(rip=CODE)
    assert ex.reason == ExitReason.EXCEPTION_NMI
    h.write(PT, q(DATA | 3))
    ex = l2.enter()  # at the faulting instruction again
    assert ex.reason == ExitReason.HLT
    assert ex.guest.rbx == 0x5EED
