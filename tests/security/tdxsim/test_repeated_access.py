"""An L2 access to a page it has no alias for exits to L1 every time, not only the first time:
unicorn's TLB must not keep what the first access filled (a read of L1 memory would go through)."""

from __future__ import annotations

import pytest

from tdxdefs.attributes import ATTR_R, ATTR_VALID
from tdxdefs.vmcs import ExitReason
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
