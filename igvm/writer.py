"""Deterministic IGVM serializer (IGVM specification: fixed header, variable headers, file data).

The same IgvmFile always gives the same bytes: headers in list order, file data in first-use order,
identical blobs stored once, pages padded to 4 KiB, v1 unless a platform needs v2 (NATIVE or CCA,
or a non-X64 architecture). Every output is parsed back before it is returned, so the writer never
emits a file the reader would reject. The Rust parser rejects an empty file-data section, so a file
whose headers need no data gets one zero page of file data.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from igvm.errors import IgvmError
from igvm.format import (
    ARCH_X64,
    IGVM_FIXED_HEADER,
    IGVM_FIXED_HEADER_V2_SIZE,
    IGVM_FORMAT_VERSION_1,
    IGVM_FORMAT_VERSION_2,
    IGVM_VHS_VARIABLE_HEADER,
    FixedHeader,
    IgvmFile,
    align8,
)
from igvm.headers import (
    IGVM_PLATFORM_CCA,
    IGVM_PLATFORM_NATIVE,
    PAGE_SIZE,
    AnyHeader,
    SupportedPlatform,
    UnknownOptionalHeader,
)

V2_PLATFORMS = (IGVM_PLATFORM_NATIVE, IGVM_PLATFORM_CCA)
FILE_SIZE_LIMIT = 1 << 32


def format_version_for(igvm: IgvmFile) -> int:
    """v1 unless the content needs the v2 fixed header."""
    needs_v2 = igvm.architecture != ARCH_X64 or any(
        isinstance(p, SupportedPlatform) and p.platform_type in V2_PLATFORMS for p in igvm.platforms
    )
    return IGVM_FORMAT_VERSION_2 if needs_v2 else IGVM_FORMAT_VERSION_1


def _tlv(header: AnyHeader, payload: bytes) -> bytes:
    raw = IGVM_VHS_VARIABLE_HEADER.pack(header.TYPE, len(payload)) + payload
    return raw.ljust(align8(len(raw)), b"\0")


def serialize(igvm: IgvmFile, *, verify: bool = True) -> bytes:
    """The file's bytes; raises IgvmError (header index of the offending header) if invalid."""
    version = format_version_for(igvm)
    fixed_size = (
        IGVM_FIXED_HEADER_V2_SIZE if version == IGVM_FORMAT_VERSION_2 else (IGVM_FIXED_HEADER.size)
    )
    headers = igvm.headers()
    sizes = [align8(IGVM_VHS_VARIABLE_HEADER.size + len(h.pack(0))) for h in headers]
    vh_size = sum(sizes)
    data_start = fixed_size + vh_size
    offsets: dict[bytes, int] = {}
    blobs: list[bytes] = []
    cursor = data_start
    entries: list[bytes] = []
    for index, header in enumerate(headers):
        if not isinstance(header, UnknownOptionalHeader):
            try:
                header.check()
            except IgvmError as exc:
                raise IgvmError(exc.rule, index) from None
        blob = header.file_data()
        file_offset = 0
        if blob:
            file_offset = offsets.get(blob, 0)
            if not file_offset:
                file_offset = offsets[blob] = cursor
                blobs.append(blob)
                cursor += len(blob)
            if cursor > FILE_SIZE_LIMIT:
                raise IgvmError("file data exceeds the 4 GiB limit of u32 file offsets", index)
        entries.append(_tlv(header, header.pack(file_offset)))
    if not blobs:
        blobs.append(bytes(PAGE_SIZE))
        cursor += PAGE_SIZE
    variable = b"".join(entries)
    fixed = FixedHeader(version, fixed_size, vh_size, cursor, 0, igvm.architecture)
    checksum = zlib.crc32(fixed.pack(checksum=0) + variable)
    out = b"".join([fixed.pack(checksum=checksum), variable, *blobs])
    if verify:
        IgvmFile.from_bytes(out)
    return out


def write(igvm: IgvmFile, path: str | os.PathLike[str]) -> None:
    """Serialize to a file (written whole, after validation)."""
    Path(path).write_bytes(serialize(igvm))
