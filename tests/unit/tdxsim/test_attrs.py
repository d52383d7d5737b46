"""TDG.MEM.PAGE.ATTR.RD/WR and every rule the TDX module enforces, each with its negative case."""

from __future__ import annotations

import pytest

from tdxdefs.attributes import (
    ATTR_FLAGS_INVEPT,
    ATTR_PWA,
    ATTR_R,
    ATTR_SVE,
    ATTR_VALID,
    ATTR_W,
    ATTR_XS,
    ATTR_XU,
    L1_FULL_ATTR,
    attr_word,
    pack_attr,
)
from tdxdefs.tdcall import (
    GPA_MAPPING_PENDING,
    LEVEL_2M,
    TDX_OPERAND_INVALID,
    TDX_PAGE_ATTR_INVALID,
    TDX_PAGE_SIZE_MISMATCH,
    TDX_SUCCESS,
    Leaf,
    OperandId,
)
from tdxsim.testing import TdHarness

PAGE = 0x3000
PENDING = 0x400000
RWX = ATTR_R | ATTR_W | ATTR_XS


def attr_wr(h: TdHarness, rcx: int, words: dict[int, int], masks: dict[int, int]):  # type: ignore[no-untyped-def]
    return h.tdcall(Leaf.MEM_PAGE_ATTR_WR, rcx=rcx, rdx=pack_attr(words), r8=pack_attr(masks))


def test_attr_rd_of_fresh_accepted_page(h: TdHarness) -> None:
    out = h.tdcall(Leaf.MEM_PAGE_ATTR_RD, rcx=PAGE + 0x123)
    assert out.rax == TDX_SUCCESS
    assert out.rcx == 0 | LEVEL_2M  # the fixture accepted this 2M block at 2M; not pending
    assert attr_word(out.rdx, 0) == L1_FULL_ATTR  # VM0 from the L1 SEPT entry
    assert out.rdx >> 16 == 0  # no aliases yet


def test_attr_rd_pending_bit_and_level(h: TdHarness) -> None:
    out = h.tdcall(Leaf.MEM_PAGE_ATTR_RD, rcx=PENDING + 0x5000)
    assert out.rcx == PENDING | LEVEL_2M | GPA_MAPPING_PENDING


@pytest.mark.parametrize("rcx", [PAGE | (1 << 47), 1 << 48, 0x4000000])
def test_attr_rd_rejects_shared_out_of_gpaw_absent(h: TdHarness, rcx: int) -> None:
    assert h.tdcall(Leaf.MEM_PAGE_ATTR_RD, rcx=rcx).rax == TDX_OPERAND_INVALID | OperandId.RCX


def test_create_alias_returns_resulting_attrs(h: TdHarness) -> None:
    out = attr_wr(h, PAGE, {1: RWX | ATTR_VALID}, {1: RWX})
    assert out.rax == TDX_SUCCESS
    assert out.rcx == PAGE
    assert attr_word(out.rdx, 1) == RWX | ATTR_VALID
    assert attr_word(out.rdx, 0) == L1_FULL_ATTR
    assert attr_word(out.rdx, 2) == 0
    assert h.tdcall(Leaf.MEM_PAGE_ATTR_RD, rcx=PAGE).rdx == out.rdx


def test_vm0_word_must_be_zero(h: TdHarness) -> None:
    out = attr_wr(h, PAGE, {0: ATTR_R | ATTR_VALID, 1: RWX | ATTR_VALID}, {1: RWX})
    assert out.rax == TDX_OPERAND_INVALID | OperandId.RDX
    out = attr_wr(h, PAGE, {1: RWX | ATTR_VALID}, {0: ATTR_R, 1: RWX})
    assert out.rax == TDX_OPERAND_INVALID | OperandId.R8
    assert h.tdcall(Leaf.MEM_PAGE_ATTR_RD, rcx=PAGE).rdx >> 16 == 0


def test_absent_vm_words_must_be_zero(h: TdHarness) -> None:
    # the fixture TD has two L2 VMs; VM3 does not exist
    out = attr_wr(h, PAGE, {3: RWX | ATTR_VALID}, {3: RWX})
    assert out.rax == TDX_OPERAND_INVALID | OperandId.RDX
    out = attr_wr(h, PAGE, {1: RWX | ATTR_VALID}, {1: RWX, 3: RWX})
    assert out.rax == TDX_OPERAND_INVALID | OperandId.R8
    assert attr_wr(h, PAGE, {2: RWX | ATTR_VALID}, {2: RWX}).rax == TDX_SUCCESS


def test_valid_zero_requires_empty_word_and_skips_vm(h: TdHarness) -> None:
    attr_wr(h, PAGE, {1: RWX | ATTR_VALID}, {1: RWX})
    assert attr_wr(h, PAGE, {1: ATTR_R}, {1: RWX}).rax == TDX_OPERAND_INVALID | OperandId.RDX
    # VALID=0 with an empty word: VM1 is not processed even though its mask is set
    out = attr_wr(h, PAGE, {1: 0, 2: ATTR_R | ATTR_VALID}, {1: RWX, 2: ATTR_R})
    assert out.rax == TDX_SUCCESS
    assert attr_word(out.rdx, 1) == RWX | ATTR_VALID
    assert attr_word(out.rdx, 2) == ATTR_R | ATTR_VALID


@pytest.mark.parametrize(
    "word",
    [
        ATTR_SVE | ATTR_R | ATTR_VALID,  # SVE rejected
        ATTR_W | ATTR_VALID,  # W needs R
        ATTR_PWA | ATTR_XS | ATTR_VALID,  # PWA needs R
        (1 << 9) | ATTR_R | ATTR_VALID,  # reserved bit
    ],
)
def test_illegal_result_is_page_attr_invalid(h: TdHarness, word: int) -> None:
    before = attr_wr(h, PAGE, {1: ATTR_R | ATTR_XS | ATTR_VALID}, {1: RWX}).rdx
    out = attr_wr(h, PAGE, {1: word}, {1: 0x7FFF})
    assert out.rax == TDX_PAGE_ATTR_INVALID == 0xC0000B1100000000
    assert out.rcx == 0
    assert out.rdx == before  # the current attributes
    assert h.tdcall(Leaf.MEM_PAGE_ATTR_RD, rcx=PAGE).rdx == before


def test_w_with_r_is_legal(h: TdHarness) -> None:
    out = attr_wr(h, PAGE, {1: ATTR_R | ATTR_W | ATTR_VALID}, {1: ATTR_R | ATTR_W})
    assert out.rax == TDX_SUCCESS


def test_mask_selects_changed_bits(h: TdHarness) -> None:
    attr_wr(h, PAGE, {1: RWX | ATTR_VALID}, {1: RWX})
    out = attr_wr(h, PAGE, {1: ATTR_R | ATTR_VALID}, {1: ATTR_W})  # write-protect only
    assert attr_word(out.rdx, 1) == ATTR_R | ATTR_XS | ATTR_VALID
    out = attr_wr(h, PAGE, {1: ATTR_XU | ATTR_VALID}, {1: 0})  # empty mask: nothing changes
    assert attr_word(out.rdx, 1) == ATTR_R | ATTR_XS | ATTR_VALID


def test_valid_without_access_removes_alias(h: TdHarness) -> None:
    attr_wr(h, PAGE, {1: RWX | ATTR_VALID, 2: ATTR_R | ATTR_VALID}, {1: RWX, 2: ATTR_R})
    out = attr_wr(h, PAGE, {1: ATTR_VALID}, {1: RWX})
    assert out.rax == TDX_SUCCESS
    assert attr_word(out.rdx, 1) == 0
    assert attr_word(out.rdx, 2) == ATTR_R | ATTR_VALID  # other VM untouched


def test_pending_page_alias_reports_pending(h: TdHarness) -> None:
    # a 4K alias inside a pending 2M mapping: the module demotes the mapping (host work)
    out = attr_wr(h, PENDING + 0x3000, {1: RWX | ATTR_VALID}, {1: RWX})
    assert out.rax == TDX_SUCCESS
    assert out.rcx == (PENDING + 0x3000) | GPA_MAPPING_PENDING
    assert attr_word(out.rdx, 1) == RWX | ATTR_VALID


def test_2m_alias_on_2m_mapping_covers_512_pages(h: TdHarness) -> None:
    out = attr_wr(h, PENDING | LEVEL_2M, {2: ATTR_R | ATTR_VALID}, {2: ATTR_R})
    assert out.rax == TDX_SUCCESS
    last = h.tdcall(Leaf.MEM_PAGE_ATTR_RD, rcx=PENDING + 0x1FF000)
    assert attr_word(last.rdx, 2) == ATTR_R | ATTR_VALID


def test_2m_alias_on_4k_mapping_is_size_mismatch(h: TdHarness) -> None:
    attr_wr(h, PENDING + 0x1000, {1: ATTR_R | ATTR_VALID}, {1: ATTR_R})  # demotes
    out = attr_wr(h, PENDING | LEVEL_2M, {1: ATTR_R | ATTR_VALID}, {1: ATTR_R})
    assert out.rax == TDX_PAGE_SIZE_MISMATCH | OperandId.RCX


def test_invept_flag_is_honoured_per_vm(h: TdHarness) -> None:
    before = list(h.module.aliases.invept_count)
    attr_wr(h, PAGE, {1: RWX | ATTR_VALID}, {1: RWX | ATTR_FLAGS_INVEPT})
    assert h.module.aliases.invept_count[1] == before[1] + 1
    assert h.module.aliases.invept_count[2] == before[2]


@pytest.mark.parametrize(
    "rcx",
    [
        PAGE | (1 << 47),  # shared GPA
        1 << 48,  # beyond GPAW
        PAGE | 0x10,  # reserved bits 11:3
        PAGE | (1 << 55),  # reserved bits 63:52
        (PAGE | LEVEL_2M),  # 2M level, GPA not 2M aligned
        PAGE | 3,  # level 3
    ],
)
def test_attr_wr_rejects_bad_gpa_mapping(h: TdHarness, rcx: int) -> None:
    out = attr_wr(h, rcx, {1: RWX | ATTR_VALID}, {1: RWX})
    assert out.rax == TDX_OPERAND_INVALID | OperandId.RCX


def test_attr_wr_on_absent_page_goes_to_host(h: TdHarness) -> None:
    out = attr_wr(h, 0x4000000, {1: RWX | ATTR_VALID}, {1: RWX})
    assert out.rax == TDX_OPERAND_INVALID | OperandId.RCX
    assert h.module.host.exits[-1].eeq_type == 5  # type: ignore[attr-defined]
