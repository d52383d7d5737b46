"""Conformance of the L1 TDCALL leaves: registers in and out, exact status codes, negative cases."""

from __future__ import annotations

import hashlib

import pytest

from tdxdefs.metadata import (
    NO_NEXT_FIELD,
    NOTIFY_ENABLES_FIELD,
    NUM_L2_VMS_FIELD,
    l2_ctls_field_id,
    l2_vapic_gpa_field_id,
    l2_vmcs_field_id,
    msr_bitmap_field_id,
)
from tdxdefs.tdcall import (
    LEVEL_1G,
    LEVEL_2M,
    TDX_GLA_NOT_CANONICAL,
    TDX_METADATA_FIELD_ID_INCORRECT,
    TDX_METADATA_FIELD_NOT_WRITABLE,
    TDX_METADATA_FIELD_VALUE_NOT_VALID,
    TDX_NO_VALID_VE_INFO,
    TDX_OPERAND_INVALID,
    TDX_PAGE_ALREADY_ACCEPTED,
    TDX_PAGE_SIZE_MISMATCH,
    TDX_SUCCESS,
    Leaf,
    OperandId,
    is_error,
)
from tdxdefs.tdvmcall import TDVMCALL_SUCCESS
from tdxdefs.vmcs import ExitReason, Vmcs
from tdxsim.module.attestation_interface import TdInfo
from tdxsim.module.host_interface import NullHost, TdExit
from tdxsim.module.memory import PageState
from tdxsim.module.registers import Regs
from tdxsim.testing import PendingPageAccess, TdHarness

INVALID_RAX = TDX_OPERAND_INVALID | OperandId.RAX
INVALID_RCX = TDX_OPERAND_INVALID | OperandId.RCX
INVALID_RDX = TDX_OPERAND_INVALID | OperandId.RDX
INVALID_R8 = TDX_OPERAND_INVALID | OperandId.R8
PENDING_GPA = 0x400000  # inside RAM, never accepted by the fixture
BEYOND_RAM = 0x4000000
SHARED_BIT_48 = 1 << 47


# --- dispatcher ------------------------------------------------------------------------------
@pytest.mark.parametrize("rax", [13, 99, 0xFFFF, Leaf.VP_CPUIDVE_SET, Leaf.SYS_RD])
def test_unknown_or_unsupported_leaf_is_operand_invalid_rax(h: TdHarness, rax: int) -> None:
    out = h.tdcall(rax, rcx=7)
    assert out.rax == INVALID_RAX
    assert out.rcx == 7  # registers otherwise untouched


def test_leaf_version_or_high_rax_bits_rejected(h: TdHarness) -> None:
    assert h.tdcall(Leaf.VP_INFO | (1 << 16)).rax == INVALID_RAX
    assert h.tdcall(Leaf.VP_INFO | (1 << 40)).rax == INVALID_RAX
    assert h.tdcall(Leaf.VP_INFO).rax == TDX_SUCCESS


def test_unknown_vcpu_index_rejected(h: TdHarness) -> None:
    assert h.tdcall(Leaf.VP_INFO, vcpu=5).rax == INVALID_RAX


# --- VP.INFO ---------------------------------------------------------------------------------
def test_vp_info_registers(h: TdHarness) -> None:
    out = h.tdcall(Leaf.VP_INFO, vcpu=1)
    assert out.rax == TDX_SUCCESS
    assert out.rcx == 48
    assert out.r8 == 2 | (2 << 32)
    assert out.r9 == 1
    assert out.r10 == 0 and out.r11 == 0


def test_vp_info_gpaw_52_and_attributes() -> None:
    h = TdHarness.default(ram_mib=4, gpaw=52, attributes=0x10000000)
    out = h.tdcall(Leaf.VP_INFO)
    assert out.rcx == 52
    assert out.rdx == 0x10000000


# --- MR.RTMR.EXTEND ----------------------------------------------------------------------------
def test_rtmr_extend_chains_sha384(h: TdHarness) -> None:
    digest = hashlib.sha384(b"event").digest()
    h.write(0x1000, digest)
    assert h.tdcall(Leaf.MR_RTMR_EXTEND, rcx=0x1000, rdx=2).rax == TDX_SUCCESS
    expected = hashlib.sha384(bytes(48) + digest).digest()
    assert h.td.rtmr[2] == expected
    assert h.td.rtmr[0] == bytes(48)
    h.tdcall(Leaf.MR_RTMR_EXTEND, rcx=0x1000, rdx=2)
    assert h.td.rtmr[2] == hashlib.sha384(expected + digest).digest()


@pytest.mark.parametrize(
    ("rcx", "rdx", "status"),
    [
        (0x1010, 0, INVALID_RCX),  # not 64-byte aligned
        (PENDING_GPA, 0, INVALID_RCX),  # not accepted
        (0x1000 | SHARED_BIT_48, 0, INVALID_RCX),  # shared
        (BEYOND_RAM, 0, INVALID_RCX),  # no page
        (0x1000, 4, INVALID_RDX),  # RTMR index
    ],
)
def test_rtmr_extend_rejects(h: TdHarness, rcx: int, rdx: int, status: int) -> None:
    before = list(h.td.rtmr)
    assert h.tdcall(Leaf.MR_RTMR_EXTEND, rcx=rcx, rdx=rdx).rax == status
    assert h.td.rtmr == before


# --- VP.VEINFO.GET -----------------------------------------------------------------------------
def test_veinfo_none_pending(h: TdHarness) -> None:
    assert h.tdcall(Leaf.VP_VEINFO_GET).rax == TDX_NO_VALID_VE_INFO == 0xC000070400000000


def test_veinfo_after_pending_access_then_consumed(h: TdHarness) -> None:
    with pytest.raises(PendingPageAccess, match="0x400010"):
        h.read(PENDING_GPA + 0x10, 4)
    out = h.tdcall(Leaf.VP_VEINFO_GET)
    assert out.rax == TDX_SUCCESS
    assert out.rcx == ExitReason.EPT_VIOLATION
    assert out.r9 == PENDING_GPA + 0x10
    assert h.tdcall(Leaf.VP_VEINFO_GET).rax == TDX_NO_VALID_VE_INFO


# --- MR.REPORT ---------------------------------------------------------------------------------
class RecordingAttestation:
    """Returns a recognizable 1024-byte report and records what the module passed."""

    def __init__(self) -> None:
        self.seen: list[tuple[TdInfo, bytes]] = []

    def tdreport(self, td_info: TdInfo, report_data: bytes) -> bytes:
        self.seen.append((td_info, report_data))
        return report_data * 16


def test_mr_report_passes_td_info_and_reportdata() -> None:
    att = RecordingAttestation()
    h = TdHarness.default(ram_mib=4, attestation=att, xfam=0xE7)
    h.accept(0, 0x200000)
    h.write(0x2040, bytes(range(64)))
    out = h.tdcall(Leaf.MR_REPORT, rcx=0x1000, rdx=0x2040, r8=0)
    assert out.rax == TDX_SUCCESS
    info, data = att.seen[0]
    assert data == bytes(range(64))
    assert info.xfam == 0xE7 and info.mrtd == h.td.mrtd and info.num_l2_vms == 1
    assert h.read(0x1000, 1024) == bytes(range(64)) * 16


@pytest.mark.parametrize(
    ("rcx", "rdx", "r8", "status"),
    [
        (0x1200, 0x2000, 0, INVALID_RCX),  # not 1024-aligned
        (0x1000, 0x2020, 0, INVALID_RDX),  # not 64-aligned
        (0x1000, PENDING_GPA, 0, INVALID_RDX),
        (0x1000, 0x2000, 1, INVALID_R8),  # subtype
    ],
)
def test_mr_report_rejects(rcx: int, rdx: int, r8: int, status: int) -> None:
    h = TdHarness.default(ram_mib=8, attestation=RecordingAttestation())
    h.accept(0, 0x200000)
    assert h.tdcall(Leaf.MR_REPORT, rcx=rcx, rdx=rdx, r8=r8).rax == status


def test_mr_report_without_attestation_backend(h: TdHarness) -> None:
    assert h.tdcall(Leaf.MR_REPORT, rcx=0x1000, rdx=0x2000).rax == INVALID_RAX


# --- MEM.PAGE.ACCEPT ---------------------------------------------------------------------------
def test_accept_2m_zeroes_and_maps(h: TdHarness) -> None:
    h.memory.write(PENDING_GPA + 8, b"stale host data")
    assert h.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=PENDING_GPA | LEVEL_2M).rax == TDX_SUCCESS
    assert h.memory.page_state(PENDING_GPA + 0x1FF000) == PageState.MAPPED
    assert h.read(PENDING_GPA, 32) == bytes(32)


def test_accept_already_accepted_is_success_class(h: TdHarness) -> None:
    out = h.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=0 | LEVEL_2M)
    assert out.rax == TDX_PAGE_ALREADY_ACCEPTED == 0x00000B0A00000000
    assert not is_error(out.rax)


def test_accept_4k_inside_2m_mapping_is_size_mismatch(h: TdHarness) -> None:
    out = h.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=PENDING_GPA + 0x1000)
    assert out.rax & ~0xFFFFFFFF == TDX_PAGE_SIZE_MISMATCH == 0xC0000B0B00000000
    assert h.memory.page_state(PENDING_GPA + 0x1000) == PageState.PENDING


def test_accept_2m_over_4k_mappings_is_size_mismatch() -> None:
    h = TdHarness.default(ram_mib=4)
    h.builder.memory.level[0:512] = bytes(512)  # host mapped the first 2M as 4K pages
    assert h.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=0).rax == TDX_SUCCESS
    out = h.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=0 | LEVEL_2M)
    assert out.rax & ~0xFFFFFFFF == TDX_PAGE_SIZE_MISMATCH
    assert h.memory.page_state(0x1000) == PageState.PENDING


@pytest.mark.parametrize(
    "rcx",
    [
        PENDING_GPA | 0x8,  # reserved bits 11:3
        PENDING_GPA | (1 << 60),  # reserved bits 63:52
        (PENDING_GPA + 0x1000) | LEVEL_2M,  # 2M not aligned
        PENDING_GPA | LEVEL_1G,  # 1G not supported
        PENDING_GPA | 3,
        PENDING_GPA | SHARED_BIT_48,
    ],
)
def test_accept_rejects_bad_rcx(h: TdHarness, rcx: int) -> None:
    assert h.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=rcx).rax == INVALID_RCX
    assert h.memory.page_state(PENDING_GPA) == PageState.PENDING


def test_accept_of_absent_page_goes_to_host(h: TdHarness) -> None:
    host = h.module.host
    assert isinstance(host, NullHost)
    assert h.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=BEYOND_RAM).rax == INVALID_RCX
    assert host.exits[-1] == TdExit("ept_violation", gpa=BEYOND_RAM, eeq_type=1)


# --- VM.RD / VM.WR -------------------------------------------------------------------------------
def test_vm_rd_num_l2_vms(h: TdHarness) -> None:
    out = h.tdcall(Leaf.VM_RD, rdx=NUM_L2_VMS_FIELD)
    assert (out.rax, out.r8, out.rdx) == (TDX_SUCCESS, 2, NO_NEXT_FIELD)


def test_vm_rd_wr_negative(h: TdHarness) -> None:
    assert h.tdcall(Leaf.VM_RD, rcx=1, rdx=NUM_L2_VMS_FIELD).rax == INVALID_RCX
    assert h.tdcall(Leaf.VM_RD, rdx=0x1234).rax == TDX_METADATA_FIELD_ID_INCORRECT
    wr = h.tdcall(Leaf.VM_WR, rdx=NUM_L2_VMS_FIELD, r8=3, r9=0xFF)
    assert wr.rax == TDX_METADATA_FIELD_NOT_WRITABLE
    assert h.td.num_l2_vms == 2
    assert h.tdcall(Leaf.VM_WR, rdx=0x1234, r8=1, r9=1).rax == TDX_METADATA_FIELD_ID_INCORRECT


def test_vm_wr_notify_enables_returns_old(h: TdHarness) -> None:
    assert h.tdcall(Leaf.VM_WR, rdx=NOTIFY_ENABLES_FIELD, r8=1, r9=1).r8 == 0
    assert h.tdcall(Leaf.VM_RD, rdx=NOTIFY_ENABLES_FIELD).r8 == 1


# --- VP.RD / VP.WR -----------------------------------------------------------------------------
def test_l2_ctls_write_read_and_allowed_bits(h: TdHarness) -> None:
    fid = l2_ctls_field_id(1)
    assert fid == 0xA020000300000051
    out = h.tdcall(Leaf.VP_WR, rdx=fid, r8=0x3, r9=0x7)
    assert (out.rax, out.r8) == (TDX_SUCCESS, 0)
    assert h.tdcall(Leaf.VP_RD, rdx=fid).r8 == 0x3
    assert h.tdcall(Leaf.VP_WR, rdx=fid, r8=0x4, r9=0x7).rax == TDX_METADATA_FIELD_VALUE_NOT_VALID
    assert h.tdcall(Leaf.VP_RD, rdx=fid).r8 == 0x3
    # per vCPU: vCPU 1 still has its own zero value
    assert h.tdcall(Leaf.VP_RD, vcpu=1, rdx=fid).r8 == 0


def test_vmcs_write_masks_apply(h: TdHarness) -> None:
    entry = l2_vmcs_field_id(1, Vmcs.ENTRY_CONTROLS, 2)
    h.tdcall(Leaf.VP_WR, rdx=entry, r8=0xFFFFFFFF, r9=0xFFFFFFFF)
    assert h.tdcall(Leaf.VP_RD, rdx=entry).r8 == 0x200
    cr0 = l2_vmcs_field_id(1, Vmcs.GUEST_CR0, 3)
    h.tdcall(Leaf.VP_WR, rdx=cr0, r8=(1 << 64) - 1, r9=(1 << 64) - 1)
    assert h.tdcall(Leaf.VP_RD, rdx=cr0).r8 == 0x8005001F
    vapic = l2_vmcs_field_id(2, Vmcs.VIRTUAL_APIC_PAGE_ADDR, 3)
    h.tdcall(Leaf.VP_WR, rdx=vapic, r8=0x1234FFF, r9=(1 << 64) - 1)
    assert h.tdcall(Leaf.VP_RD, rdx=vapic).r8 == 0x1234000  # low 12 bits are not writable
    assert h.tdcall(Leaf.VP_RD, rdx=l2_vapic_gpa_field_id(2)).r8 == 0x1234000


@pytest.mark.parametrize(
    "encoding",
    [Vmcs.PIN_BASED_CONTROLS, Vmcs.EXIT_CONTROLS, Vmcs.POSTED_INTR_NV, Vmcs.GUEST_ACTIVITY_STATE],
)
def test_read_only_vmcs_fields(h: TdHarness, encoding: int) -> None:
    from tdxdefs.metadata import ELEM_SIZE_OF_WIDTH
    from tdxdefs.vmcs import width_of

    fid = l2_vmcs_field_id(1, encoding, ELEM_SIZE_OF_WIDTH[width_of(encoding)])
    before = h.tdcall(Leaf.VP_RD, rdx=fid)
    assert before.rax == TDX_SUCCESS
    assert h.tdcall(Leaf.VP_WR, rdx=fid, r8=1, r9=1).rax == TDX_METADATA_FIELD_NOT_WRITABLE
    assert h.tdcall(Leaf.VP_RD, rdx=fid).r8 == before.r8


@pytest.mark.parametrize(
    "fid",
    [
        l2_vmcs_field_id(1, Vmcs.GUEST_CR0, 2),  # wrong element size
        l2_vmcs_field_id(1, Vmcs.EPT_POINTER | 1, 2),  # high access
        l2_vmcs_field_id(3, Vmcs.GUEST_CR0, 3),  # VM3 does not exist
        l2_vmcs_field_id(1, 0x6C00, 3),  # host-state field: not exposed
        l2_ctls_field_id(3),
        msr_bitmap_field_id(1, 512),
    ],
)
def test_vp_rd_bad_field_ids(h: TdHarness, fid: int) -> None:
    assert h.tdcall(Leaf.VP_RD, rdx=fid).rax == TDX_METADATA_FIELD_ID_INCORRECT
    assert h.tdcall(Leaf.VP_WR, rdx=fid, r8=0, r9=1).rax == TDX_METADATA_FIELD_ID_INCORRECT


def test_vp_rd_rcx_must_be_zero(h: TdHarness) -> None:
    fid = l2_ctls_field_id(1)
    assert h.tdcall(Leaf.VP_RD, rcx=1, rdx=fid).rax == INVALID_RCX
    assert h.tdcall(Leaf.VP_WR, rcx=1, rdx=fid, r8=1, r9=1).rax == INVALID_RCX


def test_msr_bitmap_words(h: TdHarness) -> None:
    fid = msr_bitmap_field_id(2, 0x100)
    assert h.tdcall(Leaf.VP_RD, rdx=fid).r8 == (1 << 64) - 1  # every MSR exits by default
    h.tdcall(Leaf.VP_WR, rdx=fid, r8=0, r9=0xF0)
    assert h.tdcall(Leaf.VP_RD, rdx=fid).r8 == (1 << 64) - 1 - 0xF0
    # qword 0x100 is byte 0x800: the write bitmap of MSRs 0..63; bits 4..7 now clear
    vmcs = h.module.td.vcpus[0].vmcs[2]
    assert vmcs.msr_exits(4, write=True) is False
    assert vmcs.msr_exits(4, write=False) is True
    assert vmcs.msr_exits(8, write=True) is True


def test_vp_rd_returns_next_field_id(h: TdHarness) -> None:
    out = h.tdcall(Leaf.VP_RD, rdx=l2_vmcs_field_id(1, Vmcs.GUEST_CS_SELECTOR, 1))
    assert out.rdx == l2_vmcs_field_id(1, Vmcs.GUEST_SS_SELECTOR, 1)


# --- VP.INVEPT / VP.INVVPID ------------------------------------------------------------------
def test_invept_bitmap_rules(h: TdHarness) -> None:
    assert h.tdcall(Leaf.VP_INVEPT, rcx=0b110).rax == TDX_SUCCESS
    assert h.module.invept_requests[-1] == 0b110
    assert h.tdcall(Leaf.VP_INVEPT, rcx=0b1).rax == INVALID_RCX  # L1 bit
    assert h.tdcall(Leaf.VP_INVEPT, rcx=0b1000).rax == INVALID_RCX  # VM3 absent


def test_invvpid_single_and_list(h: TdHarness) -> None:
    vm1 = 1 << 52
    assert h.tdcall(Leaf.VP_INVVPID, rcx=vm1, rdx=0x7000_0000_0003).rax == TDX_SUCCESS
    non_canonical = 0x0000_9000_0000_0000
    assert h.tdcall(Leaf.VP_INVVPID, rcx=vm1, rdx=non_canonical).rax == TDX_GLA_NOT_CANONICAL
    assert h.tdcall(Leaf.VP_INVVPID, rcx=0, rdx=0).rax == INVALID_RCX
    assert h.tdcall(Leaf.VP_INVVPID, rcx=vm1 | 0x2, rdx=0).rax == INVALID_RCX
    h.write(0x5000, (0xFFFF_8000_0000_0000).to_bytes(8, "little") + (0x1000).to_bytes(8, "little"))
    info = 0x5000 | (2 << 52)
    assert h.tdcall(Leaf.VP_INVVPID, rcx=vm1 | 1, rdx=info).rax == TDX_SUCCESS
    assert h.module.invvpid_requests[-2:] == [(1, 0xFFFF_8000_0000_0000), (1, 0x1000)]
    too_many = 0x5000 | (513 << 52)
    assert h.tdcall(Leaf.VP_INVVPID, rcx=vm1 | 1, rdx=too_many).rax == INVALID_RDX
    pending_list = PENDING_GPA | (1 << 52)
    assert h.tdcall(Leaf.VP_INVVPID, rcx=vm1 | 1, rdx=pending_list).rax == INVALID_RDX


# --- VP.VMCALL -------------------------------------------------------------------------------
class EchoHost(NullHost):
    """Answers every TDVMCALL with success and R11 = R12 + 1, and records what it saw."""

    def tdvmcall(self, regs: Regs) -> Regs:
        self.calls.append(regs.copy())
        out = regs.copy()
        out.r10 = TDVMCALL_SUCCESS
        out.r11 = regs.r12 + 1
        return out


def test_vmcall_exposes_only_bitmap_registers() -> None:
    host = EchoHost()
    h = TdHarness.default(ram_mib=4, host=host)
    out = h.tdcall(Leaf.VP_VMCALL, rcx=0x1C00, r10=0, r11=0x0C, r12=41, r13=5, rbx=0xDEAD)
    assert out.rax == TDX_SUCCESS
    seen = host.calls[0]
    assert (seen.r10, seen.r11, seen.r12) == (0, 0x0C, 41)
    assert seen.r13 == 0 and seen.rbx == 0  # not exposed
    assert (out.r10, out.r11, out.r13, out.rbx) == (0, 42, 5, 0xDEAD)


@pytest.mark.parametrize("rcx", [0x1, 0x2, 0x10, 0x10000])
def test_vmcall_rejects_reserved_bitmap_bits(rcx: int) -> None:
    host = EchoHost()
    h = TdHarness.default(ram_mib=4, host=host)
    assert h.tdcall(Leaf.VP_VMCALL, rcx=rcx | 0x1C00).rax == INVALID_RCX
    assert host.calls == []


# --- GPAW 52: the shared bit moves to bit 51 ---------------------------------------------------
def test_gpaw_52_shared_bit_is_51() -> None:
    h = TdHarness.default(ram_mib=4, gpaw=52)
    host = h.module.host
    assert isinstance(host, NullHost)
    bit47 = 1 << 47  # private under GPAW 52, but not RAM: the host must map it
    assert h.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=bit47).rax == INVALID_RCX
    assert host.exits[-1].gpa == bit47
    exits_before = len(host.exits)
    assert h.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=1 << 51).rax == INVALID_RCX  # shared: refused
    assert len(host.exits) == exits_before  # without bothering the host
    assert h.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=1 << 52).rax == INVALID_RCX  # beyond GPAW


def test_vp_enter_invalidation_flags_are_recorded() -> None:
    from tdxsim.testing import assemble

    h = TdHarness.default(ram_mib=4)
    h.accept(0, 0x200000)
    l2 = h.l2(1)
    l2.load(0x10000, assemble("hlt", 0x10000))
    assert l2.enter(rip=0x10000, flags=1).reason == ExitReason.HLT
    assert h.module.invept_requests[-1] == 1 << 1


class ShortReport:
    """A broken attestation backend: returns 10 bytes."""

    def tdreport(self, td_info: TdInfo, report_data: bytes) -> bytes:
        return b"x" * 10


def test_internal_error_never_escapes_in_non_strict_mode() -> None:
    h = TdHarness.default(ram_mib=4, attestation=ShortReport())
    h.accept(0, 0x200000)
    h.module.strict = False
    out = h.tdcall(Leaf.MR_REPORT, rcx=0x1000, rdx=0x2000)
    assert out.rax == INVALID_RAX
    assert "10 bytes" in h.module.internal_errors[-1]
    assert h.read(0x1000, 16) == bytes(16)  # nothing half-written
    h.module.strict = True
    with pytest.raises(RuntimeError, match="10 bytes"):
        h.tdcall(Leaf.MR_REPORT, rcx=0x1000, rdx=0x2000)
