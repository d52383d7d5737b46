"""Every header type packs to the reference layout and unpacks back; per-header rules reject."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from igvm.errors import IgvmError
from igvm.headers import (
    HEADER_CLASSES,
    IGVM_PAGE_FLAG_IS_2MB_PAGE,
    IGVM_PAGE_FLAG_SHARED,
    IGVM_PAGE_FLAG_UNMEASURED,
    IGVM_PLATFORM_NATIVE,
    IGVM_PLATFORM_TDX,
    CcaPolicy,
    CommandLine,
    CorimDocument,
    CorimSignature,
    DeviceTree,
    EnvironmentInfo,
    ErrorRange,
    GuestPolicy,
    Madt,
    MemoryMap,
    MemoryMapEntry,
    MmioRange,
    MmioRanges,
    PageData,
    PageTableRelocation,
    ParameterArea,
    ParameterInsert,
    Pptt,
    RelocatableRegion,
    RequiredMemory,
    Slit,
    SnpIdBlock,
    Srat,
    SupportedPlatform,
    VbsMeasurement,
    VpContext,
    VpCount,
)

# Reference section 2, "Type codes": code -> TLV length.
REFERENCE_SIZES = {
    0x001: 16,
    0x101: 16,
    0x102: 48,
    0x103: 32,
    0x104: 16,
    0x105: 16,
    0x106: 32,
    0x301: 16,
    0x302: 24,
    0x303: 16,
    0x304: 20,
    0x305: 24,
    0x307: 8,
    0x308: 8,
    0x309: 8,
    0x30A: 8,
    0x30B: 696,
    0x30C: 8,
    0x30D: 16,
    0x30E: 8,
    0x30F: 8,
    0x310: 8,
    0x311: 864,
    0x312: 8,
    0x313: 8,
}

SAMPLES = [
    SupportedPlatform(0x4, 2, IGVM_PLATFORM_TDX, 1, 1 << 47),
    GuestPolicy(0x3, 1),
    RelocatableRegion(1, 0, 2, 0x3, 0x200000, 0x400000, 0x10000, 0x200000, 0x40000000),
    PageTableRelocation(1, 0, 2, 0x10000, 0x8000, 0x3000),
    CorimDocument(1, b"corim-document"),
    CorimSignature(1, b"signature"),
    CcaPolicy(1, 0x10, 0x20, 2, 1),
    ParameterArea(0x2000, 7, b"\x01\x02"),
    PageData(0x5000, 1, IGVM_PAGE_FLAG_UNMEASURED, 1, b"\xaa" * 4096),
    ParameterInsert(0x9000, 1, 7),
    VpContext(0, 2, 1, b"\x55" * 4096),
    RequiredMemory(0x100000, 1, 0x200000, 1),
    SnpIdBlock(
        1,
        1,
        b"L" * 48,
        b"F" * 16,
        b"I" * 16,
        1,
        2,
        1,
        1,
        b"s" * 144,
        b"k" * 152,
        b"t" * 144,
        b"a" * 152,
    ),
    ErrorRange(0x7000, 1, 0x1000),
    VbsMeasurement(1, 1, 2, 3, 4, 5, 1, 1, b"d" * 64, b"s" * 256, b"p" * 512),
    *(
        cls(3, 0x40)
        for cls in (
            VpCount,
            Srat,
            Madt,
            MmioRanges,
            MemoryMap,
            CommandLine,
            Slit,
            Pptt,
            DeviceTree,
            EnvironmentInfo,
        )
    ),
]


def test_every_type_in_the_reference_is_implemented_with_its_size() -> None:
    assert {code: cls.payload_size() for code, cls in HEADER_CLASSES.items()} == REFERENCE_SIZES


@pytest.mark.parametrize("header", SAMPLES, ids=lambda h: h.NAME)
def test_pack_unpack_round_trip(header: object) -> None:
    cls = type(header)
    payload = header.pack(0x1234)  # type: ignore[attr-defined]
    assert len(payload) == cls.payload_size()  # type: ignore[attr-defined]
    data = header.file_data()  # type: ignore[attr-defined]
    back = cls.unpack(payload, data)  # type: ignore[attr-defined]
    assert back.pack(0x1234) == payload
    if cls.DATA_FIELD is None:  # type: ignore[attr-defined]
        assert back == header
    else:
        assert back.file_data() == data


def test_page_data_layout_is_the_reference_layout() -> None:
    page = PageData(0x1000, 0x5, IGVM_PAGE_FLAG_SHARED, 2)
    assert page.pack(0xE0) == struct.pack("<QIIIHH", 0x1000, 5, 0xE0, 4, 2, 0)
    assert page.shared and not page.unmeasured and not page.is_2mb_page


def test_supported_platform_layout() -> None:
    raw = SupportedPlatform(1, 0, IGVM_PLATFORM_TDX, 1, 1 << 47).pack()
    assert raw == bytes.fromhex("01000000000301000000000000800000")


def test_vp_context_payload_is_20_bytes_with_unaligned_u64() -> None:
    raw = VpContext(0xFFFFFFFFF000, 2, 3).pack(0x2000)
    assert raw == struct.pack("<QIIHH", 0xFFFFFFFFF000, 2, 0x2000, 3, 0)


def test_deposited_layouts() -> None:
    entry = MemoryMapEntry(0x100, 0x200, 3, 0)
    assert len(entry.pack()) == 24 and MemoryMapEntry.unpack(entry.pack()) == entry
    assert MmioRange(1, 2).pack() == struct.pack("<QQ", 1, 2)


def _payload(header: object, **overrides: int) -> bytes:
    """Pack a header, then overwrite named wire fields with raw values."""
    cls = type(header)
    values = header.wire_values(0)  # type: ignore[attr-defined]
    for name, value in overrides.items():
        position = [n for n, _ in cls.WIRE].index(name)  # type: ignore[attr-defined]
        values[position] = value
    return cls.LAYOUT.pack(*values)  # type: ignore[attr-defined,no-any-return]


NEGATIVE: list[tuple[Any, dict[str, Any], str]] = [
    (SupportedPlatform(1, 0, 3, 1, 0), {"compatibility_mask": 3}, "exactly one bit"),
    (SupportedPlatform(1, 0, 3, 1, 0), {"compatibility_mask": 0}, "exactly one bit"),
    (SupportedPlatform(1, 0, 3, 1, 0), {"highest_vtl": 1}, "highest_vtl"),
    (SupportedPlatform(1, 0, 3, 1, 0), {"platform_type": 9}, "platform_type"),
    (SupportedPlatform(1, 0, 3, 1, 0), {"platform_version": 2}, "platform_version"),
    (
        SupportedPlatform(1, 0, IGVM_PLATFORM_NATIVE, 1, 0),
        {"shared_gpa_boundary": 1 << 47},
        "must be 0 for NATIVE",
    ),
    (GuestPolicy(0, 1), {"reserved": 1}, "reserved must be zero"),
    (GuestPolicy(0, 1), {"compatibility_mask": 0}, "must not be zero"),
    (PageData(0x1000, 1), {"gpa": 0x1001}, "4 KiB aligned"),
    (PageData(0x1000, 1), {"flags": IGVM_PAGE_FLAG_IS_2MB_PAGE}, "2 MiB aligned"),
    (PageData(0x1000, 1), {"flags": 0x8}, "reserved bits"),
    (PageData(0x1000, 1), {"data_type": 4}, "data_type"),
    (PageData(0x1000, 1), {"reserved": 1}, "reserved must be zero"),
    (PageData(0x1000, 1), {"compatibility_mask": 0}, "must not be zero"),
    (ParameterArea(0x1000, 0), {"number_of_bytes": 0x800}, "multiple of 4 KiB"),
    (ParameterArea(0x1000, 0), {"number_of_bytes": 0}, "multiple of 4 KiB"),
    (ParameterInsert(0x1000, 1, 0), {"gpa": 0x1800}, "4 KiB aligned"),
    (VpContext(0, 1, 0), {"reserved": 5}, "reserved must be zero"),
    (RequiredMemory(0x1000, 1, 0x1000), {"gpa": 0x10}, "4 KiB aligned"),
    (RequiredMemory(0x1000, 1, 0x1000), {"number_of_bytes": 0x10}, "multiple of 4 KiB"),
    (RequiredMemory(0x1000, 1, 0x1000), {"flags": 2}, "reserved bits"),
    (RequiredMemory(0x1000, 1, 0x1000), {"reserved": 2}, "reserved must be zero"),
    (PageTableRelocation(1, 0, 0, 0x1000, 0x2000, 0x1000), {"used_size": 0x3000}, "exceeds"),
    (PageTableRelocation(1, 0, 0, 0x1000, 0x2000, 0x1000), {"gpa": 0x1100}, "aligned"),
    (PageTableRelocation(1, 0, 0, 0x1000, 0x2000, 0x1000), {"reserved": 1}, "reserved"),
    (
        RelocatableRegion(1, 0, 0, 0, 0x1000, 0x1000, 0x1000, 0, 0x10000),
        {"flags": 0x10},
        "reserved bits",
    ),
    (
        RelocatableRegion(1, 0, 0, 0, 0x2000, 0x2000, 0x1000, 0, 0x10000),
        {"relocation_region_gpa": 0x3000},
        "aligned to relocation_alignment",
    ),
    (
        RelocatableRegion(1, 0, 0, 0, 0x1000, 0x1000, 0x1000, 0, 0x10000),
        {"minimum_relocation_gpa": 0x20000},
        "exceeds maximum",
    ),
    (CcaPolicy(1, 0, 0, 0, 0), {"hash_algorithm": 3}, "hash_algorithm"),
    (CcaPolicy(1, 0, 0, 0, 0), {"reserved2": b"\x01"}, "reserved2 must be zero"),
    (
        CcaPolicy(1, 0, 0, 0, 0),
        {"attributes_required_zeroes": 1, "attributes_required_ones": 1},
        "both zero and one",
    ),
    (
        SnpIdBlock(1, 0, b"", b"", b"", 0, 0, 0, 0, b"", b"", b"", b""),
        {"reserved": b"\x01"},
        "reserved must be zero",
    ),
    (ErrorRange(0, 1, 0), {"compatibility_mask": 0}, "must not be zero"),
    (CorimDocument(1, b"x"), {"reserved": 1}, "reserved must be zero"),
]


@pytest.mark.parametrize(
    ("header", "overrides", "message"),
    NEGATIVE,
    ids=[f"{h.NAME}-{'-'.join(o)}" for h, o, _ in NEGATIVE],
)
def test_header_rule_rejects(header: object, overrides: dict[str, int], message: str) -> None:
    cls = type(header)
    with pytest.raises(IgvmError) as caught:
        cls.unpack(_payload(header, **overrides))  # type: ignore[attr-defined]
    assert message in caught.value.rule
    field = next(iter(overrides))
    if "2 MiB" not in message and "both" not in message and "exceeds maximum" not in message:
        assert caught.value.offset == cls.OFFSETS[field]  # type: ignore[attr-defined]


def test_wrong_payload_length_is_rejected() -> None:
    with pytest.raises(IgvmError, match="payload must be 24 bytes, got 23"):
        PageData.unpack(bytes(23))


def test_page_data_longer_than_a_page_is_rejected() -> None:
    with pytest.raises(IgvmError, match="at most 4096"):
        PageData(0, 1, data=bytes(4097)).check()


def test_out_of_range_field_names_the_header() -> None:
    with pytest.raises(IgvmError, match="PAGE_DATA: a field is out of range"):
        PageData(1 << 64, 1).pack()
