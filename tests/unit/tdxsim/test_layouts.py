"""Pure layout helpers: GPA_ATTR packing and legality, field ids, MSR bitmap bit positions."""

from __future__ import annotations

import pytest

from tdxdefs.attributes import (
    ATTR_PWA,
    ATTR_R,
    ATTR_SVE,
    ATTR_VALID,
    ATTR_W,
    ATTR_XS,
    attr_word,
    pack_attr,
)
from tdxdefs.metadata import l2_ctls_field_id, l2_vmcs_field_id, msr_bitmap_class, vmcs_class
from tdxdefs.vmcs import Vmcs
from tdxsim.module.sept import attr_is_legal
from tdxsim.module.vmcs import FieldKind, L2Vmcs, decode_vp_field


def test_attr_packing_round_trip() -> None:
    packed = pack_attr({1: 0x8007, 3: 0x8001})
    assert packed == 0x8001_0000_8007_0000
    assert attr_word(packed, 1) == 0x8007 and attr_word(packed, 2) == 0


@pytest.mark.parametrize(
    ("word", "legal"),
    [
        (ATTR_R | ATTR_VALID, True),
        (ATTR_R | ATTR_W | ATTR_XS | ATTR_VALID, True),
        (ATTR_W | ATTR_VALID, False),
        (ATTR_PWA | ATTR_VALID, False),
        (ATTR_R | ATTR_SVE | ATTR_VALID, False),
        (ATTR_R | (1 << 14) | ATTR_VALID, False),
    ],
)
def test_attr_legality(word: int, legal: bool) -> None:
    assert attr_is_legal(word) is legal


def test_class_numbers_follow_reference() -> None:
    assert [vmcs_class(vm) for vm in (1, 2, 3)] == [36, 44, 52]
    assert [msr_bitmap_class(vm) for vm in (1, 2, 3)] == [37, 45, 53]
    assert l2_ctls_field_id(2) == 0xA020000300000052


def test_decode_vp_field() -> None:
    ref = decode_vp_field(l2_vmcs_field_id(2, Vmcs.GUEST_CR0, 3), num_l2_vms=2)
    assert ref is not None and ref.kind == FieldKind.VMCS and ref.vm == 2
    assert decode_vp_field(l2_vmcs_field_id(2, Vmcs.GUEST_CR0, 3), num_l2_vms=1) is None
    assert decode_vp_field(l2_ctls_field_id(1) & ~(7 << 52), num_l2_vms=1) is None  # context


def test_msr_bitmap_positions() -> None:
    v = L2Vmcs(1)
    v.msr_bitmap[:] = bytes(4096)
    v.msr_bitmap[0x800 + 0x80B // 8] = 1 << (0x80B % 8)  # write-low bit of MSR 0x80B
    v.msr_bitmap[0x400 + 0x80 // 8] = 1 << (0x80 % 8)  # read-high bit of MSR 0xC0000080
    assert v.msr_exits(0x80B, write=True) and not v.msr_exits(0x80B, write=False)
    assert v.msr_exits(0xC0000080, write=False) and not v.msr_exits(0xC0000080, write=True)
    assert v.msr_exits(0x40000000, write=False)  # outside both ranges: always exits


def test_vm_index_validated() -> None:
    with pytest.raises(ValueError, match="L2 VM index 4"):
        L2Vmcs(4)
