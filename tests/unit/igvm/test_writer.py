"""The writer: deterministic bytes, dedup, padding, version choice, and refusal of bad objects."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from igvm.errors import IgvmError
from igvm.format import ARCH_AARCH64, IgvmFile, read
from igvm.headers import (
    IGVM_PLATFORM_CCA,
    IGVM_PLATFORM_NATIVE,
    IGVM_PLATFORM_SEV_SNP,
    PageData,
    ParameterArea,
    ParameterInsert,
    SupportedPlatform,
    VpContext,
)
from igvm.writer import format_version_for, serialize, write
from tests.support.igvm_files import tdx_platform, v4_image


def test_same_object_same_bytes_and_read_write_is_identity(tmp_path: Path) -> None:
    image = v4_image()
    first = serialize(image)
    assert serialize(v4_image()) == first
    path = tmp_path / "a.igvm"
    write(image, path)
    assert read(path).to_bytes() == first


def test_identical_blobs_are_stored_once_and_pages_padded() -> None:
    image = IgvmFile(
        [tdx_platform()],
        [],
        [
            PageData(0x0, 1, data=b"abc"),
            PageData(0x1000, 1, data=b"abc"),
            PageData(0x2000, 1, data=b"abd"),
        ],
    )
    raw = image.to_bytes()
    offsets = [struct.unpack_from("<I", raw, 24 + 24 + 32 * i + 8 + 12)[0] for i in range(3)]
    assert offsets[0] == offsets[1] != offsets[2]
    assert len(raw) == 24 + 24 + 3 * 32 + 2 * 4096
    assert raw[offsets[0] : offsets[0] + 4096] == b"abc".ljust(4096, b"\0")


def test_file_without_blobs_still_has_file_data() -> None:
    raw = IgvmFile([tdx_platform()], [], [PageData(0, 1)]).to_bytes()
    assert len(raw) == 24 + 24 + 32 + 4096
    assert IgvmFile.from_bytes(raw).directives == [PageData(0, 1)]


def test_v1_unless_native_or_cca() -> None:
    assert format_version_for(v4_image()) == 1
    native = IgvmFile([SupportedPlatform(2, 0, IGVM_PLATFORM_NATIVE, 1, 0)], [], [])
    assert format_version_for(native) == 2
    raw = native.to_bytes()
    assert struct.unpack_from("<II", raw, 4) == (2, 32)
    cca = IgvmFile(
        [SupportedPlatform(1, 0, IGVM_PLATFORM_CCA, 1, 0)], [], [], architecture=ARCH_AARCH64
    )
    assert IgvmFile.from_bytes(cca.to_bytes()) == cca


def test_vp_context_allowed_for_snp_and_padded() -> None:
    image = IgvmFile(
        [SupportedPlatform(2, 0, IGVM_PLATFORM_SEV_SNP, 1, 0)],
        [],
        [VpContext(0xFFFFFFFFF000, 2, 0, b"vmsa")],
    )
    back = IgvmFile.from_bytes(image.to_bytes())
    assert back.directives[0].data == b"vmsa".ljust(4096, b"\0")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("directives", "message"),
    [
        ([ParameterInsert(0x1000, 1, 0)], "not declared before"),
        ([PageData(0x1000, 2)], "does not declare"),
        ([PageData(0x1001, 1)], "4 KiB aligned"),
        ([ParameterArea(0x1000, 0, b"x" * 0x1001)], "longer than number_of_bytes"),
        ([PageData(0, 1, data=bytes(4097))], "at most 4096"),
        ([PageData(1 << 64, 1)], "out of range"),
    ],
)
def test_writer_refuses_invalid_objects(directives: list[object], message: str) -> None:
    image = IgvmFile([tdx_platform()], [], directives)  # type: ignore[arg-type]
    with pytest.raises(IgvmError, match=message):
        image.to_bytes()
