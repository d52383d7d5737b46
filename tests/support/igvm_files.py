"""Builders for IGVM test files: the V4 sample image (a TDX platform header, a parameter area
and four kinds of page) rebuilt from its description, and hand-assembled raw files whose
headers a test can break on purpose."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import yaml

from igvm.build import build
from igvm.format import IgvmFile
from igvm.headers import (
    IGVM_PAGE_FLAG_SHARED,
    IGVM_PAGE_FLAG_UNMEASURED,
    IGVM_PLATFORM_TDX,
    PageData,
    ParameterArea,
    ParameterInsert,
    SupportedPlatform,
)

TDX_SHARED_BOUNDARY = 1 << 47
PATTERN_PAGE = bytes(i % 256 for i in range(4096))
V4_SHA256 = "b4264dfd031e778f738f5c11b5d1469f2dc81d03103ad781a1d6a6df924dd84d"
V4_FIXED_HEADER = bytes.fromhex("4947564d0100000018000000c8000000e010000094715198")
V4_MRTD = (
    "1faa7ca89266c27b09943dd749060ff82f84461fc330f6e94e9629818d5da5ea"
    "7734ecce63342839a0ffca0deda11846"
)


def tdx_platform(mask: int = 1) -> SupportedPlatform:
    return SupportedPlatform(mask, 0, IGVM_PLATFORM_TDX, 1, TDX_SHARED_BOUNDARY)


def v4_image() -> IgvmFile:
    """The V4 sample image (sample_tdx.igvm) rebuilt from its description."""
    return IgvmFile(
        [tdx_platform()],
        [],
        [
            ParameterArea(4096, 0),
            PageData(0x1000, 1, data=PATTERN_PAGE),
            PageData(0x0, 1),
            PageData(0x2000, 1, IGVM_PAGE_FLAG_UNMEASURED),
            PageData(0x3000, 1, IGVM_PAGE_FLAG_SHARED, data=PATTERN_PAGE),
            ParameterInsert(0x4000, 1, 0),
        ],
    )


def tlv(
    header_type: int, payload: bytes, length: int | None = None, pad: bytes | None = None
) -> bytes:
    """One variable-header entry, padded to 8 bytes (override length or padding to break it)."""
    raw = struct.pack("<II", header_type, len(payload) if length is None else length) + payload
    padding = bytes((-len(raw)) % 8) if pad is None else pad
    return raw + padding


def assemble(
    entries: list[bytes],
    data: bytes = bytes(4096),
    *,
    version: int = 1,
    arch: int = 0,
    vh_offset: int | None = None,
    total: int | None = None,
    magic: int = 0x4D564749,
    crc: int | None = None,
) -> bytes:
    """A raw file from TLV entries, with a correct CRC unless one is given."""
    fixed_size = 32 if version == 2 else 24
    offset = fixed_size if vh_offset is None else vh_offset
    variable = b"".join(entries)
    size = max(offset, fixed_size) + len(variable) + len(data)
    fields = [magic, version, offset, len(variable), size if total is None else total, 0]
    fixed = struct.pack("<6I", *fields) + (struct.pack("<II", arch, 4096) if version == 2 else b"")
    checksum = zlib.crc32(fixed + variable) if crc is None else crc
    fixed = fixed[:20] + struct.pack("<I", checksum) + fixed[24:]
    gap = bytes(offset - fixed_size) if offset > fixed_size else b""
    return fixed + gap + variable + data


def platform_entry(mask: int = 1, platform_type: int = IGVM_PLATFORM_TDX) -> bytes:
    boundary = TDX_SHARED_BOUNDARY if platform_type == IGVM_PLATFORM_TDX else 0
    return tlv(0x001, SupportedPlatform(mask, 0, platform_type, 1, boundary).pack())


@pytest.fixture
def v4_bytes() -> bytes:
    """The V4 sample image as file bytes."""
    return v4_image().to_bytes()


def l1_igvm(l1_image: Path, out: Path, gpa: int = 0x100000) -> Path:
    """`l1_image` as the paravisor of a TDX IGVM file `out`, with the boot-params page at 0x9000
    carrying a command line (how the relay's launch options reach L1); the recipe is written
    beside `out`."""
    recipe = {
        "platform": {"compatibility_mask": 1, "highest_vtl": 2, "shared_gpa_boundary": 47},
        "components": [{"name": "l1", "kind": "paravisor", "file": str(l1_image), "gpa": gpa}],
        "parameter_areas": [
            {
                "name": "boot-params",
                "gpa": 0x9000,
                "size": "4KiB",
                "parameters": [{"type": "command_line", "offset": 0x800}],
            }
        ],
    }
    out.with_suffix(".yaml").write_text(yaml.safe_dump(recipe))
    build(out.with_suffix(".yaml"), out)
    return out
