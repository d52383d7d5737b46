"""An L2 access to a page it has no alias for exits to L1 every time, not only the first time:
unicorn's TLB must not keep what the first access filled (a read of L1 memory would go through)."""

from __future__ import annotations

import pytest

from tdxdefs.attributes import ATTR_R, ATTR_VALID, ATTR_W, ATTR_XS
from tdxdefs.tdcall import TDX_L2_EXIT_HOST_ROUTED_ASYNC
from tdxdefs.vmcs import EPTV_READ, EPTV_WRITE, ExitReason
from tdxsim.testing import TdHarness, assemble

CODE, SECRET = 0x10000, 0x300000


@pytest.mark.parametrize(
    "access",
    ["mov eax, dword ptr [{gpa}]", "mov dword ptr [{gpa}], eax"],
    ids=["read", "write"],
)
def test_every_access_to_an_unaliased_page_exits(access: str) -> None:
    h = TdHarness.default(ram_mib=8, num_l2_vms=1)
    h.accept(0, 0x800000)
    h.write(SECRET, b"L1 secret")
    l2 = h.l2(1)
    offsets = (0, 0, 4, 0x800)
    source = "\n".join(access.format(gpa=hex(SECRET + o)) for o in offsets) + "\nhlt"
    l2.load(CODE, assemble(source, CODE))
    l2.rip = CODE
    for offset in offsets:
        ex = l2.enter()
        assert ex.reason == ExitReason.EPT_VIOLATION and ex.gpa == SECRET + offset
        assert ex.guest.rax != int.from_bytes(b"L1 s", "little")
        l2.rip += 7


def test_an_alias_granted_after_a_violation_lets_the_access_through() -> None:
    h = TdHarness.default(ram_mib=8, num_l2_vms=1)
    h.accept(0, 0x800000)
    h.write(SECRET, b"visible!")
    l2 = h.l2(1)
    l2.load(CODE, assemble(f"mov rax, qword ptr [{SECRET:#x}]\nhlt", CODE))
    ex = l2.enter(rip=CODE)
    assert ex.reason == ExitReason.EPT_VIOLATION
    h.set_alias(1, SECRET, ATTR_R | ATTR_VALID)  # L1 decides the access may go on
    ex = l2.enter()
    assert ex.reason == ExitReason.HLT and ex.guest.rax == int.from_bytes(b"visible!", "little")


def test_writes_to_a_read_only_page_exit_every_time_and_reads_between_go_through() -> None:
    h = TdHarness.default(ram_mib=8, num_l2_vms=1)
    h.accept(0, 0x800000)
    h.write(SECRET, b"readable")
    l2 = h.l2(1)
    h.set_alias(1, SECRET, ATTR_R | ATTR_VALID)
    read, write = f"mov rbx, qword ptr [{SECRET:#x}]", f"mov qword ptr [{SECRET:#x}], rax"
    l2.load(CODE, assemble("\n".join([read, write, read, write, read, "hlt"]), CODE))
    l2.rip = CODE
    for _ in range(2):
        l2.regs.rbx = 0
        ex = l2.enter(rax=0x5741)
        assert ex.reason == ExitReason.EPT_VIOLATION and ex.gpa == SECRET
        assert ex.qualification & EPTV_WRITE
        assert ex.guest.rbx == int.from_bytes(b"readable", "little")  # the read went through
        l2.rip = ex.rip + 8  # L1 emulates nothing: skips the 8-byte store
    ex = l2.enter()
    assert ex.reason == ExitReason.HLT
    assert h.read(SECRET, 8) == b"readable"


def test_write_access_removed_after_l2_wrote_the_page_exits_the_next_write() -> None:
    h = TdHarness.default(ram_mib=8, num_l2_vms=1)
    h.accept(0, 0x800000)
    l2 = h.l2(1)
    h.set_alias(1, SECRET, ATTR_R | ATTR_W | ATTR_VALID)
    store = f"mov qword ptr [{SECRET:#x}], rax"
    l2.load(CODE, assemble(f"{store}\ncpuid\n{store}\nhlt", CODE))
    ex = l2.enter(rip=CODE, rax=1)
    assert ex.reason == ExitReason.CPUID and h.read(SECRET, 8) == (1).to_bytes(8, "little")
    h.set_alias(1, SECRET, ATTR_R | ATTR_VALID)  # L1 takes write access away
    l2.skip(ex)
    ex = l2.enter(rax=2)
    assert ex.reason == ExitReason.EPT_VIOLATION and ex.qualification & EPTV_WRITE
    assert h.read(SECRET, 8) == (1).to_bytes(8, "little")


def test_every_access_to_an_unmapped_shared_gpa_is_host_routed() -> None:
    h = TdHarness.default(ram_mib=8, num_l2_vms=1)
    h.accept(0, 0x800000)
    l2 = h.l2(1)
    shared = h.memory.shared_bit | SECRET
    load = f"mov rax, {shared:#x}\nmov rbx, qword ptr [rax]"
    l2.load(CODE, assemble(f"{load}\n{load}\nhlt", CODE))
    ex = l2.enter(rip=CODE)
    for _ in range(2):
        assert ex.status == TDX_L2_EXIT_HOST_ROUTED_ASYNC and ex.gpa == shared
        l2.rip = ex.rip + 3  # past the 3-byte load
        ex = l2.enter()
    assert ex.reason == ExitReason.HLT


def test_read_access_removed_from_a_read_only_page_exits_the_next_read() -> None:
    h = TdHarness.default(ram_mib=8, num_l2_vms=1)
    h.accept(0, 0x800000)
    h.write(SECRET, b"was read")
    l2 = h.l2(1)
    h.set_alias(1, SECRET, ATTR_R | ATTR_VALID)
    load = f"mov rbx, qword ptr [{SECRET:#x}]"
    l2.load(CODE, assemble(f"{load}\ncpuid\n{load}\nhlt", CODE))
    ex = l2.enter(rip=CODE)
    assert ex.reason == ExitReason.CPUID and ex.guest.rbx == int.from_bytes(b"was read", "little")
    h.set_alias(1, SECRET, ATTR_VALID)  # L1 removes the alias
    l2.skip(ex)
    ex = l2.enter(rbx=0)
    assert ex.reason == ExitReason.EPT_VIOLATION and ex.gpa == SECRET
    assert ex.guest.rbx == 0


def test_code_on_an_execute_only_page_cannot_read_it() -> None:
    h = TdHarness.default(ram_mib=8, num_l2_vms=1)
    h.accept(0, 0x800000)
    l2 = h.l2(1)
    code = assemble("lea rax, [rip]\nmov rbx, qword ptr [rax]\nhlt", SECRET)
    h.write(SECRET, code)
    h.set_alias(1, SECRET, ATTR_XS | ATTR_VALID)
    l2.load(CODE, assemble(f"mov rax, {SECRET:#x}\njmp rax", CODE))
    ex = l2.enter(rip=CODE, rbx=0)
    assert ex.reason == ExitReason.EPT_VIOLATION
    assert ex.qualification & EPTV_READ and ex.gpa == SECRET + 7
    assert ex.guest.rbx == 0
