"""L1's side of an L2 vCPU: the TDCALLs it makes at every exit (TDG.VP.RD of the L2 VMCS,
TDG.VP.ENTER) with registers built once, per VM, and the errors that name the leaf and field."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from svsm.l2guest import SupportPage
from svsm.tdcall import Tdcall, TdcallError
from svsm.vcpu import EnterResult
from tdxdefs.tdcall import R8, RAX, RCX, RDX, U64_MASK, Leaf
from tdxdefs.vmcs import ExitReason, Vmcs
from tests.support.svsm_td import Paravisor

HLT = b"\xf4"
NO_SUCH_FIELD = 0x7FFE  # not a VMCS encoding the module has


def test_input_registers_are_placed_and_truncated_like_named_ones() -> None:
    built = Tdcall.input_registers(Leaf.VP_RD, rcx=-1, rdx=0x1234, r8=1 << 64)
    assert len(built) == 16
    assert built[RAX] == Leaf.VP_RD and built[RCX] == U64_MASK and built[RDX] == 0x1234
    assert built[R8] == 0 and type(built[RAX]) is int  # a plain number, not the enum


def test_a_platform_that_returns_the_wrong_register_count_is_named() -> None:
    def short(regs: Sequence[int]) -> list[int]:
        return [0] * 15

    with pytest.raises(TdcallError, match=r"TDG\.VP\.RD failed: .*15 registers came back"):
        Tdcall(short).raw_values(Tdcall.input_registers(Leaf.VP_RD, rdx=1))


def test_each_vm_reads_its_own_vmcs() -> None:
    pv = Paravisor(2)
    first, second = pv.guests({1: HLT, 2: HLT})
    for guest in (first, second, first):  # the registers built for one VM are not the other's
        cr3 = guest.vcpu.vmcs_read(Vmcs.GUEST_CR3)
        assert cr3 == guest.layout.page(SupportPage.PML4)


def test_a_vmcs_read_the_module_refuses_names_the_leaf_and_field() -> None:
    pv = Paravisor(1)
    (guest,) = pv.guests({1: HLT})
    with pytest.raises(
        TdcallError, match=rf"TDG\.VP\.RD failed: RAX = .*VMCS field {NO_SUCH_FIELD:#x}"
    ):
        guest.vcpu.vmcs_read(NO_SUCH_FIELD)
    assert guest.vcpu.vmcs_read(Vmcs.GUEST_CR3) == guest.layout.page(SupportPage.PML4)


def test_enter_runs_the_l2_to_its_exit_and_reads_its_registers_back() -> None:
    pv = Paravisor(1)
    (guest,) = pv.guests({1: HLT})
    start = guest.vcpu.state.rip
    result, ex = guest.vcpu.enter()
    assert result is EnterResult.EXIT and ex is not None
    assert ex.reason == ExitReason.HLT and ex.instruction_length == 1
    assert guest.vcpu.state.rip == start  # the exit leaves RIP at the HLT; L1 steps over it
    assert guest.vcpu.entries == 1
