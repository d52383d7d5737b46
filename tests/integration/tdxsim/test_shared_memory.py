"""Private/shared conversion, the shared EPT for L2 (L2_CTLS bit 0), and blocked pages."""

from __future__ import annotations

import pytest

from tdxdefs.attributes import ATTR_R, ATTR_VALID, ATTR_W
from tdxdefs.metadata import L2_CTLS_ENABLE_SHARED_EPTP
from tdxdefs.tdcall import (
    TDX_L2_EXIT_HOST_ROUTED_ASYNC,
    TDX_OPERAND_INVALID,
    TDX_SUCCESS,
    Leaf,
    OperandId,
)
from tdxdefs.vmcs import ExitReason
from tdxsim.module.memory import PageState
from tdxsim.testing import TdHarness, UnmappedPageAccess, assemble

CODE = 0x10000
RING = 0x80000
SHARED = 1 << 47


def test_shared_page_reachable_by_l2_only_with_shared_eptp(h: TdHarness) -> None:
    h.write(RING, b"private secret!!")
    h.set_alias(1, RING, ATTR_R | ATTR_W | ATTR_VALID)
    h.module.host_convert_to_shared(RING)
    assert h.memory.page_state(RING) == PageState.NOT_PRESENT
    assert h.module.aliases.word(h.memory.page_index(RING) or 0, 1) == 0  # alias dropped
    assert h.read(RING | SHARED, 16) == bytes(16)  # private contents did not leak to the host
    with pytest.raises(UnmappedPageAccess):
        h.read(RING, 1)
    h.write(RING | SHARED, b"from the host ring")
    l2 = h.l2(1)
    l2.load(CODE, assemble(f"mov rax, {RING | SHARED:#x}\nmov rbx, qword ptr [rax]\nhlt", CODE))
    ex = l2.enter(rip=CODE)
    assert ex.status == TDX_L2_EXIT_HOST_ROUTED_ASYNC and ex.reason == ExitReason.EPT_VIOLATION
    h.set_l2_ctls(1, L2_CTLS_ENABLE_SHARED_EPTP)
    ex = l2.enter(rip=CODE)
    assert ex.reason == ExitReason.HLT
    assert ex.guest.rbx == int.from_bytes(b"from the", "little")
    # the private view of the converted page is still closed to L2
    l2.load(CODE, assemble(f"mov rbx, qword ptr [{RING:#x}]\nhlt", CODE))
    ex = l2.enter(rip=CODE)
    assert ex.status == TDX_L2_EXIT_HOST_ROUTED_ASYNC and ex.gpa == RING


def test_convert_back_to_private_needs_accept(h: TdHarness) -> None:
    h.module.host_convert_to_shared(RING)
    h.write(RING | SHARED, b"host data")
    h.module.host_convert_to_private(RING)
    with pytest.raises(UnmappedPageAccess):
        h.read(RING | SHARED, 1)
    assert h.memory.page_state(RING) == PageState.PENDING
    assert h.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=RING).rax == TDX_SUCCESS
    assert h.read(RING, 9) == bytes(9)  # ACCEPT zeroes: no host data shows up as private


def test_blocked_page_faults_to_host_until_unblocked(h: TdHarness) -> None:
    h.set_alias(1, RING, ATTR_R | ATTR_VALID)
    h.module.host_block(RING)
    l2 = h.l2(1)
    l2.load(CODE, assemble(f"mov rbx, qword ptr [{RING:#x}]\nhlt", CODE))
    ex = l2.enter(rip=CODE)
    assert ex.status == TDX_L2_EXIT_HOST_ROUTED_ASYNC and ex.gpa == RING
    assert h.tdcall(Leaf.MR_RTMR_EXTEND, rcx=RING, rdx=0).rax == (
        TDX_OPERAND_INVALID | OperandId.RCX
    )
    h.module.host_unblock(RING)
    assert l2.enter().reason == ExitReason.HLT
