"""Reading and validating IGVM files: the V4 sample, and one negative case per file rule."""

from __future__ import annotations

import hashlib
import struct
import warnings
import zlib
from pathlib import Path

import pytest

from igvm.errors import IgvmError, IgvmWarning
from igvm.format import IgvmFile, iter_directives, read, scan
from igvm.headers import (
    IGVM_PLATFORM_CCA,
    IGVM_PLATFORM_SEV_SNP,
    IGVM_PLATFORM_TDX,
    GuestPolicy,
    PageData,
    PageTableRelocation,
    ParameterArea,
    ParameterInsert,
    RelocatableRegion,
    SupportedPlatform,
    UnknownOptionalHeader,
    VpContext,
    VpCount,
)
from tests.support.igvm_files import (
    V4_FIXED_HEADER,
    V4_SHA256,
    assemble,
    platform_entry,
    tlv,
    v4_image,
)


def _page(gpa: int = 0x1000, mask: int = 1, file_offset: int = 0, flags: int = 0) -> bytes:
    return tlv(0x302, struct.pack("<QIIIHH", gpa, mask, file_offset, flags, 0, 0))


def _area(index: int = 0, size: int = 0x1000) -> bytes:
    return tlv(0x301, struct.pack("<QII", size, index, 0))


def _reject(
    raw: bytes, message: str, index: int | None = None, offset: int | None = None
) -> IgvmError:
    with pytest.raises(IgvmError) as caught:
        IgvmFile.from_bytes(raw)
    assert message in caught.value.rule, caught.value
    if index is not None:
        assert caught.value.header_index == index
    if offset is not None:
        assert caught.value.offset == offset
    return caught.value


def test_v4_sample_file_reproduced_byte_for_byte(v4_bytes: bytes) -> None:
    assert len(v4_bytes) == 4320
    assert hashlib.sha256(v4_bytes).hexdigest() == V4_SHA256
    assert v4_bytes[:24] == V4_FIXED_HEADER
    assert struct.unpack_from("<I", v4_bytes, 20)[0] == 0x98517194
    parsed = IgvmFile.from_bytes(v4_bytes)
    assert parsed == v4_image()
    assert parsed.tdx_platform is not None and parsed.tdx_platform.compatibility_mask == 1


def test_crc_covers_fixed_header_with_zeroed_checksum_and_variable_headers(v4_bytes: bytes) -> None:
    covered = v4_bytes[:20] + bytes(4) + v4_bytes[24 : 24 + 0xC8]
    assert zlib.crc32(covered) == 0x98517194
    tampered_data = v4_bytes[:-1] + b"\x01"  # file data is not covered by the CRC
    assert IgvmFile.from_bytes(tampered_data).directives[4].data[-1] == 1  # type: ignore[union-attr]


def test_read_and_stream_from_path(tmp_path: Path, v4_bytes: bytes) -> None:
    path = tmp_path / "v4.igvm"
    path.write_bytes(v4_bytes)
    assert read(path) == v4_image()
    assert list(iter_directives(path)) == v4_image().directives
    with scan(path) as opened:
        assert opened.platforms == v4_image().platforms
        assert [i for i, _o, _h in opened.indexed_directives()] == [1, 2, 3, 4, 5, 6]


def test_error_string_names_index_offset_and_rule(v4_bytes: bytes) -> None:
    broken = bytearray(v4_bytes)
    broken[24 + 24 + 24 + 8] = 0x01  # PAGE_DATA #2 gpa low byte -> unaligned
    raw = assemble([bytes(broken[24 : 24 + 0xC8])], bytes(broken[224:]))
    error = _reject(raw, "4 KiB aligned", index=2, offset=24 + 24 + 24 + 8)
    assert "header index 2" in str(error) and "file offset 0x50" in str(error)
    assert "PAGE_DATA.gpa" in str(error)


FIXED_HEADER_CASES = [
    ("magic", assemble([platform_entry()], magic=0x12345678), "magic", 0),
    ("version", assemble([platform_entry()], version=3), "format_version 3", 4),
    ("total", assemble([platform_entry()], total=99), "total_file_size 99", 16),
    ("checksum", assemble([platform_entry()], crc=0xDEADBEEF), "checksum", 20),
    ("vh_offset_small", assemble([platform_entry()], vh_offset=16), "variable_header_offset", 8),
    ("vh_offset_unaligned", assemble([platform_entry()], vh_offset=28), "8-byte aligned", 8),
    ("no_file_data", assemble([platform_entry()], data=b""), "no file data", 12),
    ("v2_arch", assemble([platform_entry()], version=2, arch=7), "architecture 7", 24),
    ("truncated", b"IGVM\x01\x00", "shorter than the 24-byte", 0),
]


@pytest.mark.parametrize(
    ("raw", "message", "offset"),
    [c[1:] for c in FIXED_HEADER_CASES],
    ids=[c[0] for c in FIXED_HEADER_CASES],
)
def test_fixed_header_rules(raw: bytes, message: str, offset: int) -> None:
    _reject(raw, message, offset=offset)


def test_v2_page_size_must_be_4096() -> None:
    raw = bytearray(assemble([platform_entry()], version=2))
    struct.pack_into("<I", raw, 28, 8192)
    raw[20:24] = struct.pack("<I", zlib.crc32(bytes(raw[:20]) + bytes(4) + bytes(raw[24:56])))
    _reject(bytes(raw), "page_size 8192", offset=28)


def test_v2_cca_needs_aarch64_and_v1_cannot_hold_it() -> None:
    cca = platform_entry(platform_type=IGVM_PLATFORM_CCA)
    IgvmFile.from_bytes(assemble([cca], version=2, arch=1))
    _reject(assemble([cca]), "needs architecture AARCH64", index=0)
    _reject(assemble([platform_entry()], version=2, arch=1), "needs architecture X64")


TLV_CASES = [
    ("length_mismatch", [tlv(0x001, bytes(16), length=15)], "SUPPORTED_PLATFORM length is 15", 0),
    ("runs_past_section", [tlv(0x001, bytes(16), length=400)], "runs past the end", 0),
    ("stray_bytes", [platform_entry(), b"\x01\x00\x00\x00"], "stray bytes", 1),
    ("unknown_mandatory", [platform_entry(), tlv(0x250, b"")], "unknown mandatory", 1),
    ("reserved_0x306", [platform_entry(), tlv(0x306, bytes(8))], "RESERVED_DO_NOT_USE", 1),
    (
        "section_order",
        [platform_entry(), _page(), tlv(0x101, GuestPolicy(0, 1).pack())],
        "sections must be in order",
        2,
    ),
    ("no_platform_first", [_page()], "no SUPPORTED_PLATFORM", 0),
    ("duplicate_platform_type", [platform_entry(1), platform_entry(2)], "one per type", 1),
    (
        "duplicate_platform_mask",
        [platform_entry(1), platform_entry(1, platform_type=IGVM_PLATFORM_SEV_SNP)],
        "already owned",
        1,
    ),
    ("mask_not_declared", [platform_entry(1), _page(mask=3)], "does not declare", 1),
    (
        "page_offset_in_headers",
        [platform_entry(), _page(file_offset=24)],
        "outside the file data",
        1,
    ),
    (
        "page_offset_past_end",
        [platform_entry(), _page(file_offset=0x10000)],
        "outside the file data",
        1,
    ),
    ("area_declared_twice", [platform_entry(), _area(0), _area(0)], "declared twice", 2),
    (
        "insert_undeclared",
        [platform_entry(), tlv(0x303, struct.pack("<QII", 0x1000, 1, 5))],
        "not declared before",
        1,
    ),
    (
        "insert_twice",
        [
            platform_entry(),
            _area(),
            tlv(0x303, struct.pack("<QII", 0x1000, 1, 0)),
            tlv(0x303, struct.pack("<QII", 0x2000, 1, 0)),
        ],
        "already inserted",
        3,
    ),
    (
        "parameter_after_insert",
        [
            platform_entry(),
            _area(),
            tlv(0x303, struct.pack("<QII", 0x1000, 1, 0)),
            tlv(0x307, struct.pack("<II", 0, 0)),
        ],
        "already inserted",
        3,
    ),
    (
        "parameter_past_area",
        [platform_entry(), _area(), tlv(0x307, struct.pack("<II", 0, 4094))],
        "leaves less than 4 bytes",
        2,
    ),
    (
        "vp_context_for_tdx",
        [platform_entry(), tlv(0x304, VpContext(0, 1, 0).pack())],
        "invalid for TDX",
        1,
    ),
    (
        "page_table_relocation_twice",
        [
            platform_entry(),
            tlv(0x103, PageTableRelocation(1, 0, 0, 0x10000, 0x4000, 0).pack()),
            tlv(0x103, PageTableRelocation(1, 0, 0, 0x20000, 0x4000, 0).pack()),
        ],
        "at most one",
        2,
    ),
    (
        "insert_inside_page_tables",
        [
            platform_entry(),
            tlv(0x103, PageTableRelocation(1, 0, 0, 0x10000, 0x4000, 0).pack()),
            _area(),
            tlv(0x303, struct.pack("<QII", 0x11000, 1, 0)),
        ],
        "inside the page table",
        3,
    ),
    (
        "relocatable_regions_overlap",
        [
            platform_entry(),
            tlv(0x102, RelocatableRegion(1, 0, 0, 0, 0x1000, 0x10000, 0x4000, 0, 0x100000).pack()),
            tlv(0x102, RelocatableRegion(1, 1, 0, 0, 0x1000, 0x12000, 0x4000, 0, 0x100000).pack()),
        ],
        "overlaps another region",
        2,
    ),
    (
        "tdx_policy_reserved_bits",
        [platform_entry(), tlv(0x101, GuestPolicy(0x8, 1).pack())],
        "TdxPolicy reserved",
        1,
    ),
]


@pytest.mark.parametrize(
    ("entries", "message", "index"), [c[1:] for c in TLV_CASES], ids=[c[0] for c in TLV_CASES]
)
def test_variable_header_rules(entries: list[bytes], message: str, index: int) -> None:
    error = _reject(assemble(entries), message, index=index)
    assert error.offset is not None and error.offset >= 24


def test_empty_variable_header_section_has_no_platform() -> None:
    _reject(assemble([]), "no SUPPORTED_PLATFORM")


def test_unknown_optional_header_is_kept_with_a_warning() -> None:
    raw = assemble([platform_entry(), tlv(0x8000_0250, b"abc"), _page()])
    with pytest.warns(IgvmWarning, match="unknown optional type 0x80000250"):
        parsed = IgvmFile.from_bytes(raw)
    assert parsed.platforms[1] == UnknownOptionalHeader(0x8000_0250, b"abc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert parsed.to_bytes() == raw


def test_valid_file_with_every_directive_kind_reads_back() -> None:
    image = IgvmFile(
        [SupportedPlatform(1, 2, IGVM_PLATFORM_TDX, 1, 1 << 47)],
        [GuestPolicy(0x2, 1)],
        [
            ParameterArea(0x2000, 0),
            VpCount(0, 0),
            PageData(0, 1, data=b"x"),
            ParameterInsert(0x10000, 1, 0),
        ],
    )
    parsed = IgvmFile.from_bytes(image.to_bytes())
    assert parsed.directives[2] == PageData(0, 1, data=b"x".ljust(4096, b"\0"))
    assert parsed.initializations == [GuestPolicy(0x2, 1)]
