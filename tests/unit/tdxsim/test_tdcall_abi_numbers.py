"""The L1 TDCALL leaves return the leaf numbers, status codes, field IDs and write masks that
the Intel TDX Module ABI Specification and the TD Partitioning Architecture Specification give.

Every expected number is spelled out here, not imported from tdxdefs or tdxsim, so a wrong
constant in the module model fails a test instead of agreeing with itself. test_leaves.py and
test_attrs.py cover the same leaves through the module's own names.
"""

from __future__ import annotations

import hashlib

import pytest

from tdxsim.testing import PendingPageAccess, TdHarness

# --- numbers from the specifications -------------------------------------------------------------
ALL_ONES = (1 << 64) - 1
# TDCALL leaf numbers (RAX)
VP_INFO, RTMR_EXTEND, VEINFO_GET, PAGE_ACCEPT = 1, 2, 3, 6
VM_RD, VM_WR, VP_RD, VP_WR = 7, 8, 9, 10
ATTR_RD, ATTR_WR, VP_ENTER, VP_INVEPT, VP_INVVPID = 23, 24, 25, 26, 27
# completion status codes
SUCCESS = 0x0000000000000000
OPERAND_INVALID = 0xC000010000000000
NO_VALID_VE_INFO = 0xC000070400000000
PAGE_ALREADY_ACCEPTED = 0x00000B0A00000000
PAGE_SIZE_MISMATCH = 0xC0000B0B00000000
PAGE_ATTR_INVALID = 0xC0000B1100000000
FIELD_ID_INCORRECT = 0xC0000C0000000000
FIELD_NOT_WRITABLE = 0xC0000C0100000000
CLASS_MASK = 0xFFFFFFFF00000000
# operand ids (the TDX module source, operand_id_e: RAX 0, RCX 1, RDX 2, R8 8)
OP_RAX, OP_RCX, OP_RDX, OP_R8 = 0, 1, 2, 8
# L2 page attribute bits (TDG.MEM.PAGE.ATTR.RD/WR)
R, W, XS, XU, VGP, PWA, SSS, SVE, VALID = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x8000
INVEPT_FLAG = 0x8000
GPA_MAPPING_PENDING = 1 << 62
LEVEL_2M = 1
# metadata field IDs (TDG.VM.RD/WR, TDG.VP.RD/WR)
NUM_L2_VMS_FIELD = 0x9010000100000005
NOTIFY_ENABLES_FIELD = 0x9100000000000010
CONTEXT_VCPU = 2
SIZE_16, SIZE_32, SIZE_64 = 1, 2, 3

PAGE = 0x3000  # accepted by the fixture
PENDING = 0x400000  # pending 2M block
BEYOND_RAM = 0x4000000


def vmcs_fid(vm: int, encoding: int) -> int:
    """(class(vm) << 56) | (2 << 52) | (size << 32) | encoding, size from encoding bits 14:13."""
    width = (encoding >> 13) & 3  # 0 = 16-bit, 1 = 64-bit, 2 = 32-bit, 3 = natural width
    size = {0: SIZE_16, 1: SIZE_64, 2: SIZE_32, 3: SIZE_64}[width]
    return ((36 + 8 * (vm - 1)) << 56) | (CONTEXT_VCPU << 52) | (size << 32) | encoding


def msr_bitmap_fid(vm: int, qword: int) -> int:
    """Class 37 + 8*(vm-1); field code = 8-byte offset into the 4 KiB MSR bitmap page."""
    return ((37 + 8 * (vm - 1)) << 56) | (CONTEXT_VCPU << 52) | (SIZE_64 << 32) | qword


def l2_ctls_fid(vm: int) -> int:
    return 0xA020000300000050 + vm


def width_mask(encoding: int) -> int:
    return {0: 0xFFFF, 1: ALL_ONES, 2: 0xFFFFFFFF, 3: ALL_ONES}[(encoding >> 13) & 3]


def attrs(words: dict[int, int]) -> int:
    return sum((w & 0xFFFF) << (16 * vm) for vm, w in words.items())


def word(packed: int, vm: int) -> int:
    return (packed >> (16 * vm)) & 0xFFFF


def attr_wr(h: TdHarness, rcx: int, new: dict[int, int], mask: dict[int, int]):  # type: ignore[no-untyped-def]
    return h.tdcall(ATTR_WR, rcx=rcx, rdx=attrs(new), r8=attrs(mask))


# --- dispatcher: every leaf outside the implemented set ------------------------------------------
@pytest.mark.parametrize("leaf", [5, 11, 12, 13, 14, 18, 20, 22, 28, 29, 30, 31, 0x80])
def test_unimplemented_leaves_are_operand_invalid_naming_rax(h: TdHarness, leaf: int) -> None:
    out = h.tdcall(leaf, rcx=0x1234, rdx=0x5678)
    assert out.rax == OPERAND_INVALID | OP_RAX
    assert (out.rcx, out.rdx) == (0x1234, 0x5678)


# --- TDG.VP.INFO ---------------------------------------------------------------------------------
def test_vp_info_every_output_register() -> None:
    h = TdHarness.default(ram_mib=4, num_l2_vms=3, vcpus=3, attributes=0x1)
    out = h.tdcall(VP_INFO, vcpu=2, rdx=0xAA, r8=0xBB, r9=0xCC, r10=0xDD, r11=0xEE)
    assert out.rax == SUCCESS
    assert out.rcx & 0x3F == 48 and out.rcx >> 6 == 0
    assert out.rdx == 0x1  # TD ATTRIBUTES
    assert out.r8 == 3 | (3 << 32)  # NUM_VCPUS | MAX_VCPUS << 32
    assert out.r9 == 2  # VCPU_INDEX
    assert out.r10 & ~1 == 0  # only bit 0 (TDG.SYS.RD) is defined
    assert out.r11 == 0


# --- TDG.MR.RTMR.EXTEND --------------------------------------------------------------------------
def test_rtmr_extend_index_3_and_only_that_rtmr(h: TdHarness) -> None:
    digest = hashlib.sha384(b"rtmr3").digest()
    h.write(0x1040, digest)  # 64-byte aligned, not page aligned
    assert h.tdcall(RTMR_EXTEND, rcx=0x1040, rdx=3).rax == SUCCESS
    assert h.td.rtmr[3] == hashlib.sha384(bytes(48) + digest).digest()
    assert h.td.rtmr[:3] == [bytes(48)] * 3


# --- TDG.VP.VEINFO.GET: the whole register layout ------------------------------------------------
def test_veinfo_register_layout_after_pending_read(h: TdHarness) -> None:
    gpa = PENDING + 0x2468
    with pytest.raises(PendingPageAccess):
        h.read(gpa, 8)
    out = h.tdcall(VEINFO_GET)
    assert out.rax == SUCCESS
    assert out.rcx == 48  # exit reason: EPT violation
    assert out.rdx & 0x7 == 0x1  # qualification: a data read
    assert out.r9 == gpa  # GPA in R9
    assert h.tdcall(VEINFO_GET).rax == NO_VALID_VE_INFO


# --- TDG.MEM.PAGE.ACCEPT -------------------------------------------------------------------------
def test_accept_4k_twice_is_already_accepted_and_keeps_contents() -> None:
    h = TdHarness.default(ram_mib=4)
    h.memory.level[0:512] = bytes(512)  # host mapped the first 2M as 4K pages
    assert h.tdcall(PAGE_ACCEPT, rcx=0x5000).rax == SUCCESS
    h.write(0x5000, b"keep")
    out = h.tdcall(PAGE_ACCEPT, rcx=0x5000)
    assert out.rax == PAGE_ALREADY_ACCEPTED  # success class: bit 63 clear
    assert out.rax >> 63 == 0
    assert h.read(0x5000, 4) == b"keep"  # not zeroed again


def test_accept_2m_already_accepted_keeps_contents(h: TdHarness) -> None:
    h.write(0x1000, b"data")
    assert h.tdcall(PAGE_ACCEPT, rcx=0 | LEVEL_2M).rax == PAGE_ALREADY_ACCEPTED
    assert h.read(0x1000, 4) == b"data"


def test_accept_size_mismatch_class_exact(h: TdHarness) -> None:
    out = h.tdcall(PAGE_ACCEPT, rcx=PENDING + 0x3000)
    assert out.rax & CLASS_MASK == PAGE_SIZE_MISMATCH
    with pytest.raises(PendingPageAccess):
        h.read(PENDING + 0x3000, 1)


# --- TDG.VM.RD / TDG.VM.WR -----------------------------------------------------------------------
def test_vm_rd_num_l2_vms_exact_field_id(h: TdHarness) -> None:
    out = h.tdcall(VM_RD, rdx=NUM_L2_VMS_FIELD)
    assert out.rax == SUCCESS and out.r8 == 2


def test_vm_wr_write_mask_limits_change(h: TdHarness) -> None:
    before = h.tdcall(VM_RD, rdx=NOTIFY_ENABLES_FIELD).r8
    out = h.tdcall(VM_WR, rdx=NOTIFY_ENABLES_FIELD, r8=ALL_ONES, r9=0)  # empty write mask
    assert out.rax == SUCCESS and out.r8 == before
    assert h.tdcall(VM_RD, rdx=NOTIFY_ENABLES_FIELD).r8 == before


# --- TDG.VP.RD / TDG.VP.WR: the write mask of each L2 VMCS field ---------------------------------
WRITE_MASKS = [
    (0x201A, 0x80),  # EPTP
    (0x2012, 0xFFFFFFFFFFFFF000),  # VIRTUAL_APIC_PAGE_ADDR
    (0x2806, 0x501),  # GUEST_IA32_EFER
    (0x4002, 0x48F99A04),  # PROC_BASED controls
    (0x401E, 0xC513F0C),  # SECONDARY controls
    (0x2034, 0xE),  # TERTIARY controls
    (0x4012, 0x200),  # ENTRY_CONTROLS
    (0x4004, 0xFFFFFFFFFFFBFFFF),  # EXCEPTION_BITMAP
    (0x6800, 0x8005001F),  # GUEST_CR0
    (0x6804, 0x3FF1FBF),  # GUEST_CR4
    (0x2802, 0xFFC1),  # DEBUGCTL
]


@pytest.mark.parametrize(("encoding", "mask"), WRITE_MASKS, ids=[hex(e) for e, _ in WRITE_MASKS])
def test_vp_wr_applies_the_field_write_mask(h: TdHarness, encoding: int, mask: int) -> None:
    fid = vmcs_fid(1, encoding)
    mask &= width_mask(encoding)
    before = h.tdcall(VP_RD, rdx=fid)
    assert before.rax == SUCCESS
    ones = width_mask(encoding)  # a value of the field's own width
    out = h.tdcall(VP_WR, rdx=fid, r8=ones, r9=ones)
    assert out.rax == SUCCESS
    assert out.r8 == before.r8  # previous value in R8
    assert h.tdcall(VP_RD, rdx=fid).r8 == (before.r8 & ~mask) | mask
    h.tdcall(VP_WR, rdx=fid, r8=0, r9=ones)
    assert h.tdcall(VP_RD, rdx=fid).r8 == before.r8 & ~mask


def test_vp_wr_caller_mask_in_r9_narrows_the_write(h: TdHarness) -> None:
    fid = vmcs_fid(1, 0x6804)  # GUEST_CR4, bit 5 (PAE) is in the field mask
    before = h.tdcall(VP_RD, rdx=fid).r8
    assert h.tdcall(VP_WR, rdx=fid, r8=ALL_ONES, r9=0x20).rax == SUCCESS
    assert h.tdcall(VP_RD, rdx=fid).r8 == before | 0x20
    out = h.tdcall(VP_WR, rdx=fid, r8=0, r9=0x20)
    assert out.r8 == before | 0x20
    assert h.tdcall(VP_RD, rdx=fid).r8 == before & ~0x20


@pytest.mark.parametrize(
    "encoding",
    [0x2000, 0x2002, 0x2016, 0x2018, 0x202A, 0x203C],
    ids=["IO_BITMAP_A", "IO_BITMAP_B", "PID_ADDR", "VMFUNC_CTLS", "VE_INFO_ADDR", "SHARED_EPTP"],
)
def test_read_only_vmcs_fields_refuse_writes(h: TdHarness, encoding: int) -> None:
    fid = vmcs_fid(1, encoding)
    before = h.tdcall(VP_RD, rdx=fid)
    assert before.rax == SUCCESS  # readable ...
    out = h.tdcall(VP_WR, rdx=fid, r8=0x5000, r9=ALL_ONES)
    assert out.rax == FIELD_NOT_WRITABLE  # ... but not writable
    assert h.tdcall(VP_RD, rdx=fid).r8 == before.r8


@pytest.mark.parametrize(
    "encoding",
    [0x0800, 0x0810, 0x201C, 0x2022, 0x4016, 0x4018, 0x401A, 0x401C, 0x4020, 0x4022],
)
def test_writable_vmcs_fields_round_trip(h: TdHarness, encoding: int) -> None:
    fid = vmcs_fid(2, encoding)
    value = 0x10 if encoding < 0x2000 else 0x40
    out = h.tdcall(VP_WR, rdx=fid, r8=value, r9=ALL_ONES)
    assert out.rax == SUCCESS
    assert h.tdcall(VP_RD, rdx=fid).r8 == value
    assert h.tdcall(VP_RD, rdx=vmcs_fid(1, encoding)).r8 != value or value == 0  # per VM


def test_msr_bitmap_field_of_vm1_by_its_field_id(h: TdHarness) -> None:
    # MSR 0xC0000080 read-high: byte 0x400 + 0x80/8 = 0x410 -> qword 0x82, bit 0
    fid = msr_bitmap_fid(1, 0x82)
    assert h.tdcall(VP_RD, rdx=fid).r8 == ALL_ONES
    out = h.tdcall(VP_WR, rdx=fid, r8=0, r9=1)
    assert out.rax == SUCCESS and out.r8 == ALL_ONES
    assert h.tdcall(VP_RD, rdx=fid).r8 == ALL_ONES - 1
    assert h.tdcall(VP_RD, rdx=msr_bitmap_fid(2, 0x82)).r8 == ALL_ONES  # VM2 untouched


def test_l2_ctls_bits_above_1_rejected_and_vm2_field(h: TdHarness) -> None:
    fid = l2_ctls_fid(2)
    assert h.tdcall(VP_WR, rdx=fid, r8=0x2, r9=0x7).rax == SUCCESS
    assert h.tdcall(VP_RD, rdx=fid).r8 == 0x2
    assert h.tdcall(VP_RD, rdx=l2_ctls_fid(1)).r8 == 0
    out = h.tdcall(VP_WR, rdx=fid, r8=0x8, r9=0xF)
    assert out.rax & CLASS_MASK != SUCCESS and out.rax >> 63 == 1
    assert h.tdcall(VP_RD, rdx=fid).r8 == 0x2


def test_vp_rd_of_vmcs_field_with_wrong_context_is_incorrect(h: TdHarness) -> None:
    fid = vmcs_fid(1, 0x6800) & ~(7 << 52) | (1 << 52)  # TD context instead of VCPU
    assert h.tdcall(VP_RD, rdx=fid).rax == FIELD_ID_INCORRECT


# --- TDG.MEM.PAGE.ATTR.WR rules ------------------------------------------------------------------
def test_xu_only_creates_alias(h: TdHarness) -> None:
    out = attr_wr(h, PAGE, {1: XU | VALID}, {1: XU})
    assert out.rax == SUCCESS
    assert word(out.rdx, 1) == XU | VALID


@pytest.mark.parametrize("legal", [PWA | R, VGP | R, SSS | R, R | W | XS | XU | VGP | PWA | SSS])
def test_paging_attribute_bits_are_legal_with_r(h: TdHarness, legal: int) -> None:
    out = attr_wr(h, PAGE, {1: legal | VALID}, {1: 0x7F})
    assert out.rax == SUCCESS
    assert word(out.rdx, 1) == legal | VALID


def test_reserved_bit_14_is_page_attr_invalid(h: TdHarness) -> None:
    out = attr_wr(h, PAGE, {1: (1 << 14) | R | VALID}, {1: 0x7FFF})
    assert out.rax == PAGE_ATTR_INVALID
    assert (out.rcx, word(out.rdx, 1)) == (0, 0)


def test_w_without_r_in_result_after_mask_is_invalid(h: TdHarness) -> None:
    # current R|W; clearing only R leaves W without R: illegal result
    attr_wr(h, PAGE, {1: R | W | VALID}, {1: R | W})
    out = attr_wr(h, PAGE, {1: VALID}, {1: R})
    assert out.rax == PAGE_ATTR_INVALID
    assert out.rcx == 0 and word(out.rdx, 1) == R | W | VALID


def test_valid_alone_on_vm_without_alias_stays_absent(h: TdHarness) -> None:
    out = attr_wr(h, PAGE, {2: VALID}, {2: R | W | XS})
    assert out.rax == SUCCESS
    assert word(out.rdx, 2) == 0


def test_attr_wr_rdx_returns_all_vms_and_vm0_from_l1(h: TdHarness) -> None:
    attr_wr(h, PAGE, {2: R | VALID}, {2: R})
    out = attr_wr(h, PAGE, {1: R | XS | VALID}, {1: R | XS | INVEPT_FLAG})
    assert out.rax == SUCCESS
    assert word(out.rdx, 2) == R | VALID  # resulting attributes of every VM
    assert word(out.rdx, 1) == R | XS | VALID
    assert word(out.rdx, 0) & VALID and word(out.rdx, 0) & R  # L1's own (VM0) entry
    assert word(out.rdx, 3) == 0
    assert out.rcx == PAGE  # GPA_MAPPING, 4K, not pending


def test_attr_wr_only_invept_flag_without_mask_changes_nothing(h: TdHarness) -> None:
    attr_wr(h, PAGE, {1: R | VALID}, {1: R})
    out = attr_wr(h, PAGE, {1: R | W | VALID}, {1: INVEPT_FLAG})
    assert out.rax == SUCCESS
    assert word(out.rdx, 1) == R | VALID


def test_attr_rd_of_any_address_inside_page_after_alias(h: TdHarness) -> None:
    attr_wr(h, 0x7000, {1: R | VALID}, {1: R})
    out = h.tdcall(ATTR_RD, rcx=0x7FFF)
    assert out.rax == SUCCESS
    assert out.rcx & ~0x7 & ~GPA_MAPPING_PENDING == 0x7000
    assert word(out.rdx, 1) == R | VALID


# --- TDG.VP.ENTER operands -----------------------------------------------------------------------
@pytest.mark.parametrize("bit", [2, 12, 51, 54, 62, 63])
def test_vp_enter_reserved_rcx_bits(h: TdHarness, bit: int) -> None:
    ctx = h.l2(1)
    out = h.tdcall(VP_ENTER, rcx=(1 << 52) | (1 << bit), rdx=ctx.state_gpa)
    assert out.rax == OPERAND_INVALID | OP_RCX


def test_vp_enter_guest_state_gpa_shared_or_absent(h: TdHarness) -> None:
    ctx = h.l2(1)
    shared = ctx.state_gpa | (1 << 47)
    assert h.tdcall(VP_ENTER, rcx=1 << 52, rdx=shared).rax == OPERAND_INVALID | OP_RDX
    assert h.tdcall(VP_ENTER, rcx=1 << 52, rdx=BEYOND_RAM).rax == OPERAND_INVALID | OP_RDX


def test_vp_enter_vm_beyond_num_l2_vms_with_one_vm() -> None:
    h = TdHarness.default(ram_mib=4, num_l2_vms=1)
    h.accept(0, 0x200000)
    ctx = h.l2(1)
    assert h.tdcall(VP_ENTER, rcx=2 << 52, rdx=ctx.state_gpa).rax == OPERAND_INVALID | OP_RCX


def test_vp_enter_missing_vapic_is_operand_170_for_vm1(h: TdHarness) -> None:
    state = h.scratch_page()
    assert h.tdcall(VP_ENTER, rcx=1 << 52, rdx=state).rax == OPERAND_INVALID | 170


# --- TDG.VP.INVEPT / TDG.VP.INVVPID --------------------------------------------------------------
@pytest.mark.parametrize("rcx", [1 << 4, 1 << 63, 0b111])
def test_invept_refuses_bad_vm_bitmaps(h: TdHarness, rcx: int) -> None:
    assert h.tdcall(VP_INVEPT, rcx=rcx).rax == OPERAND_INVALID | OP_RCX


def test_invept_each_existing_vm(h: TdHarness) -> None:
    assert h.tdcall(VP_INVEPT, rcx=0b010).rax == SUCCESS
    assert h.tdcall(VP_INVEPT, rcx=0b100).rax == SUCCESS


def test_invvpid_absent_vm_and_reserved_bits(h: TdHarness) -> None:
    assert h.tdcall(VP_INVVPID, rcx=3 << 52, rdx=0).rax == OPERAND_INVALID | OP_RCX
    assert h.tdcall(VP_INVVPID, rcx=(1 << 52) | (1 << 60), rdx=0).rax == OPERAND_INVALID | OP_RCX
    assert h.tdcall(VP_INVVPID, rcx=2 << 52, rdx=0xFFFF_8000_0000_0FFF).rax == SUCCESS
