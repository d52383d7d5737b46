"""Hostile IGVM files: oversized claims, bad offsets and huge areas are rejected quickly."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from igvm.errors import IgvmError
from igvm.format import IgvmFile, scan
from igvm.measure import mrtd
from tests.support.igvm_files import assemble, platform_entry, tlv


def _timed_reject(raw: bytes, message: str) -> None:
    start = time.monotonic()
    with pytest.raises(IgvmError, match=message):
        IgvmFile.from_bytes(raw)
    assert time.monotonic() - start < 5, "rejection must not depend on claimed sizes"


def test_huge_variable_header_size_claim() -> None:
    raw = bytearray(assemble([platform_entry()]))
    struct.pack_into("<I", raw, 12, 0xFFFF_FFF0)
    _timed_reject(bytes(raw), "no file data|checksum")


def test_huge_tlv_length() -> None:
    _timed_reject(
        assemble([platform_entry(), struct.pack("<II", 0x302, 0xFFFF_FFF0)]), "runs past the end"
    )


def test_parameter_area_claiming_gigabytes_of_file_data() -> None:
    area = tlv(0x301, struct.pack("<QII", 0x4000_0000, 0, 40))
    _timed_reject(assemble([platform_entry(), area]), "outside the file data")


def test_parameter_area_too_large_to_insert() -> None:
    area = tlv(0x301, struct.pack("<QII", 1 << 62, 0, 0))
    insert = tlv(0x303, struct.pack("<QII", 0, 1, 0))
    _timed_reject(assemble([platform_entry(), area, insert]), "exceeds the")


def test_thousands_of_tiny_unknown_optional_headers_are_fine() -> None:
    entries = [platform_entry()] + [tlv(0x8000_0400, b"")] * 5000
    with pytest.warns(Warning):
        parsed = IgvmFile.from_bytes(assemble(entries))
    assert len(parsed.platforms) == 1 and len(parsed.directives) == 5000


def test_streaming_rejects_a_bad_directive_before_returning_a_digest(tmp_path: Path) -> None:
    good = tlv(0x302, struct.pack("<QIIIHH", 0x1000, 1, 0, 0, 0, 0))
    bad = tlv(0x302, struct.pack("<QIIIHH", 0x1001, 1, 0, 0, 0, 0))
    path = tmp_path / "late.igvm"
    path.write_bytes(assemble([platform_entry(), good, good, bad]))
    with pytest.raises(IgvmError) as caught:
        mrtd(path)
    assert caught.value.header_index == 3
    with pytest.raises(IgvmError), scan(path) as opened:
        list(opened.directives())


def test_file_offset_pointing_into_the_fixed_header() -> None:
    page = tlv(0x302, struct.pack("<QIIIHH", 0x1000, 1, 4, 0, 0, 0))
    _timed_reject(assemble([platform_entry(), page]), "outside the file data")
