"""IGVM file structure: fixed headers, the TLV variable header section, validation and reading.

Follows the IGVM specification (file structure, CRC32 checksum, per-type header rules).
Choices where the reference leaves room, written down as DESIGN.md asks:
- variable_header_offset must be 8-byte aligned (the spec's rule; the Rust parser omits the check).
- The file-data section must not be empty (the Rust parser's strict `<`); the writer complies.
- Unknown types with IGVM_VHT_OPTIONAL_BIT are kept as UnknownOptionalHeader with an IgvmWarning
  (the spec's intent; microsoft/igvm#120), unknown mandatory types are rejected.
- A blob a file_offset points at must lie wholly inside the file-data section.
- Padding after a header's payload should be zero (the spec), but Microsoft's Rust `igvm` crate
  does not check it and Microsoft's Python generator `igvm-tooling` fills it with text: reading
  accepts it with an IgvmFinding, which `igvm check --strict` reports.
- What a TDX host refuses at load time is refused here too, for headers that apply to the TDX
  platform: a shared-GPA boundary other than 0, 2^47 or 2^51; a private page (PAGE_DATA or a
  PARAMETER_INSERT page) at or above the boundary; one GPA added twice. A PARAMETER_INSERT whose
  area runs past 2^64 is refused for every platform, and all parameter areas together are capped
  at MAX_TOTAL_PARAMETER_AREA_BYTES.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from igvm.errors import IgvmError, IgvmFinding, IgvmWarning
from igvm.headers import (
    HEADER_CLASSES,
    IGVM_PAGE_FLAG_SHARED,
    IGVM_PAGE_FLAG_UNMEASURED,
    IGVM_PLATFORM_CCA,
    IGVM_PLATFORM_TDX,
    IGVM_PLATFORM_VSM_ISOLATION,
    IGVM_VHT_OPTIONAL_BIT,
    IGVM_VHT_PAGE_DATA,
    IGVM_VHT_RESERVED_DO_NOT_USE,
    MAX_TOTAL_PARAMETER_AREA_BYTES,
    PAGE_DATA_TYPE_NAMES,
    PAGE_SIZE,
    PLATFORM_NAMES,
    TDX_DEFAULT_SHARED_GPA_BOUNDARY,
    TDX_POLICY_DEFINED,
    TDX_SHARED_GPA_BOUNDARIES,
    AnyHeader,
    DirectiveHeader,
    GuestPolicy,
    InitializationHeader,
    PageData,
    PageTableRelocation,
    ParameterArea,
    ParameterHeader,
    ParameterInsert,
    PlatformHeader,
    RelocatableRegion,
    SupportedPlatform,
    UnknownOptionalHeader,
    VpContext,
)
from igvm.source import open_regular

__all__ = [
    "IgvmError",
    "IgvmFile",
    "IgvmScan",
    "IgvmWarning",
    "iter_directives",
    "read",
    "scan",
]

IGVM_MAGIC = 0x4D564749
IGVM_FORMAT_VERSION_1 = 1
IGVM_FORMAT_VERSION_2 = 2
ARCH_X64 = 0
ARCH_AARCH64 = 1
ARCH_NAMES = {ARCH_X64: "X64", ARCH_AARCH64: "AARCH64"}
V2_PAGE_SIZE = 4096
VARIABLE_HEADER_ALIGNMENT = 8

# IGVM_FIXED_HEADER (24 bytes) and the two fields IGVM_FIXED_HEADER_V2 appends (32 bytes in all).
IGVM_FIXED_HEADER = struct.Struct("<IIIIII")
IGVM_FIXED_HEADER_V2_EXTRA = struct.Struct("<II")
IGVM_FIXED_HEADER_V2_SIZE = IGVM_FIXED_HEADER.size + IGVM_FIXED_HEADER_V2_EXTRA.size
CHECKSUM_OFFSET = 20
# IGVM_VHS_VARIABLE_HEADER: u32 type, u32 length (content only).
IGVM_VHS_VARIABLE_HEADER = struct.Struct("<II")

PLATFORM_RANGE = range(0x001, 0x101)
INITIALIZATION_RANGE = range(0x101, 0x201)
DIRECTIVE_RANGE = range(0x301, 0x401)
SECTION_PLATFORM, SECTION_INITIALIZATION, SECTION_DIRECTIVE = 0, 1, 2
SECTION_NAMES = ("platform", "initialization", "directive")
X86_PLATFORMS = frozenset(PLATFORM_NAMES) - {IGVM_PLATFORM_CCA, IGVM_PLATFORM_VSM_ISOLATION}
READ_WINDOW = 1 << 20
# One PAGE_DATA entry: TLV header + IGVM_VHS_PAGE_DATA (24 bytes, already 8-aligned).
PAGE_DATA_PAYLOAD = PageData.payload_size()
PAGE_DATA_ENTRY_SIZE = IGVM_VHS_VARIABLE_HEADER.size + PAGE_DATA_PAYLOAD
PAGE_DATA_ENTRY = struct.Struct("<I" + PageData.LAYOUT.format.lstrip("<"))
PAGE_FLAGS_4K = IGVM_PAGE_FLAG_UNMEASURED | IGVM_PAGE_FLAG_SHARED
READ_WINDOWS = 2
GPA_SPACE_END = 1 << 64


def align8(value: int) -> int:
    """Round up to the 8-byte alignment every TLV entry starts on."""
    return (value + VARIABLE_HEADER_ALIGNMENT - 1) & ~(VARIABLE_HEADER_ALIGNMENT - 1)


def section_of(header_type: int) -> int | None:
    """Which section a (base) header type belongs to, or None for no range."""
    if header_type in PLATFORM_RANGE:
        return SECTION_PLATFORM
    if header_type in INITIALIZATION_RANGE:
        return SECTION_INITIALIZATION
    if header_type in DIRECTIVE_RANGE:
        return SECTION_DIRECTIVE
    return None


@dataclass(frozen=True, slots=True)
class FixedHeader:
    """IGVM_FIXED_HEADER / IGVM_FIXED_HEADER_V2 (architecture and page_size only in v2)."""

    format_version: int
    variable_header_offset: int
    variable_header_size: int
    total_file_size: int
    checksum: int
    architecture: int = ARCH_X64
    page_size: int = V2_PAGE_SIZE

    @property
    def size(self) -> int:
        return IGVM_FIXED_HEADER_V2_SIZE if self.format_version >= 2 else IGVM_FIXED_HEADER.size

    def pack(self, checksum: int | None = None) -> bytes:
        """The fixed header bytes, with `checksum` substituted when given (0 for the CRC input)."""
        value = self.checksum if checksum is None else checksum
        raw = IGVM_FIXED_HEADER.pack(
            IGVM_MAGIC,
            self.format_version,
            self.variable_header_offset,
            self.variable_header_size,
            self.total_file_size,
            value,
        )
        if self.format_version >= 2:
            raw += IGVM_FIXED_HEADER_V2_EXTRA.pack(self.architecture, self.page_size)
        return raw

    @classmethod
    def unpack(cls, raw: bytes, file_size: int) -> FixedHeader:
        """Decode and check the fixed header against the actual file size."""
        if len(raw) < IGVM_FIXED_HEADER.size:
            raise IgvmError(
                f"file is {len(raw)} bytes, shorter than the 24-byte fixed header", None, 0
            )
        magic, version, vh_offset, vh_size, total, checksum = IGVM_FIXED_HEADER.unpack_from(raw)
        if magic != IGVM_MAGIC:
            raise IgvmError(
                f"magic is {magic:#010x}, expected {IGVM_MAGIC:#010x} ('IGVM')", None, 0
            )
        if version not in (IGVM_FORMAT_VERSION_1, IGVM_FORMAT_VERSION_2):
            raise IgvmError(f"format_version {version} is not 1 or 2", None, 4)
        header = cls(version, vh_offset, vh_size, total, checksum)
        if version == IGVM_FORMAT_VERSION_2:
            if len(raw) < IGVM_FIXED_HEADER_V2_SIZE:
                raise IgvmError("file is shorter than the 32-byte v2 fixed header", None, 24)
            arch, page_size = IGVM_FIXED_HEADER_V2_EXTRA.unpack_from(raw, IGVM_FIXED_HEADER.size)
            if arch not in ARCH_NAMES:
                raise IgvmError(f"v2 architecture {arch} is not X64 (0) or AARCH64 (1)", None, 24)
            if page_size != V2_PAGE_SIZE:
                raise IgvmError(f"v2 page_size {page_size} is unsupported (only 4096)", None, 28)
            header = cls(version, vh_offset, vh_size, total, checksum, arch, page_size)
        if total != file_size:
            raise IgvmError(
                f"total_file_size {total} does not match the file length {file_size}", None, 16
            )
        if vh_offset < header.size or vh_offset % VARIABLE_HEADER_ALIGNMENT:
            raise IgvmError(
                f"variable_header_offset {vh_offset} must be >= {header.size} and 8-byte aligned",
                None,
                8,
            )
        if vh_offset >= file_size:
            raise IgvmError(
                f"variable_header_offset {vh_offset} is past the end of the file", None, 8
            )
        if vh_offset + vh_size >= file_size:
            raise IgvmError(
                f"variable header section ends at {vh_offset + vh_size}, leaving no "
                f"file data before the end of the file ({file_size})",
                None,
                12,
            )
        return header

    @property
    def data_start(self) -> int:
        return self.variable_header_offset + self.variable_header_size


class _Reader(Protocol):
    size: int

    def read(self, offset: int, length: int) -> bytes: ...


class _BytesReader:
    """Random access into an in-memory file."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


class _FileReader:
    """Random access into a file through two bounded read windows (memory stays flat).

    Two windows, because a walk alternates between the header section and file data.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.size = os.fstat(stream.fileno()).st_size if _has_fileno(stream) else _seek_size(stream)
        self._windows: list[tuple[int, bytes]] = []

    def read(self, offset: int, length: int) -> bytes:
        for position, (window_start, window) in enumerate(self._windows):
            start = offset - window_start
            if start >= 0 and start + length <= len(window):
                if position:
                    self._windows.reverse()
                return window[start : start + length]
        self._stream.seek(offset)
        if length >= READ_WINDOW:
            return self._stream.read(length)
        window = self._stream.read(READ_WINDOW)
        self._windows = [(offset, window), *self._windows[: READ_WINDOWS - 1]]
        return window[:length]


def _has_fileno(stream: BinaryIO) -> bool:
    try:
        stream.fileno()
    except (OSError, io.UnsupportedOperation):
        return False
    return True


def _seek_size(stream: BinaryIO) -> int:
    return stream.seek(0, io.SEEK_END)


def _read_fixed(reader: _Reader) -> FixedHeader:
    fixed = FixedHeader.unpack(reader.read(0, IGVM_FIXED_HEADER_V2_SIZE), reader.size)
    crc = zlib.crc32(fixed.pack(checksum=0))
    position, end = fixed.variable_header_offset, fixed.data_start
    while position < end:
        chunk = reader.read(position, min(READ_WINDOW, end - position))
        crc = zlib.crc32(chunk, crc)
        position += len(chunk)
    if crc != fixed.checksum:
        raise IgvmError(
            f"checksum {fixed.checksum:#010x} does not match the CRC-32 of the fixed "
            f"and variable headers ({crc:#010x})",
            None,
            CHECKSUM_OFFSET,
        )
    return fixed


@dataclass
class _AreaState:
    number_of_bytes: int
    inserted: bool = False


@dataclass
class _Validator:
    """Cross-header rules: section order, platforms, masks, parameter areas."""

    fixed: FixedHeader
    section: int = SECTION_PLATFORM
    platform_types: set[int] = field(default_factory=set)
    all_masks: int = 0
    tdx_mask: int = 0
    areas: dict[int, _AreaState] = field(default_factory=dict)
    # (mask, start, end) of PAGE_TABLE_RELOCATION_REGION and RELOCATABLE_REGION headers seen.
    page_table_regions: list[tuple[int, int, int]] = field(default_factory=list)
    relocatable_regions: list[tuple[int, int, int]] = field(default_factory=list)
    total_area_bytes: int = 0
    tdx_boundary: int = TDX_DEFAULT_SHARED_GPA_BOUNDARY
    # Private GPA ranges the TDX platform adds, as runs of consecutive pages: each closed run as
    # (start, end, header index, file offset), then the open run in the run_* fields. A page that
    # extends the open run below the boundary only moves run_end (the streaming fast path does
    # that inline).
    private_runs: list[tuple[int, int, int, int]] = field(default_factory=list)
    run_start: int = 0
    run_end: int = -1
    run_index: int = 0
    run_offset: int = 0

    def private_pages(self, start: int, size: int, index: int, offset: int, what: str) -> None:
        """Record GPAs [start, start+size) a TDX host PAGE.ADDs; refuse those it cannot add."""
        end = start + size
        if end > self.tdx_boundary:
            raise IgvmError(
                f"{what} at GPA {start:#x} (+{size:#x} bytes) is private but reaches the "
                f"TDX shared-GPA boundary {self.tdx_boundary:#x}; a TDX host cannot add it",
                index,
                offset,
            )
        if start == self.run_end:
            self.run_end = end
            return
        self._close_run()
        self.run_start, self.run_end, self.run_index, self.run_offset = start, end, index, offset

    def _close_run(self) -> None:
        if self.run_end > self.run_start:
            self.private_runs.append(
                (self.run_start, self.run_end, self.run_index, self.run_offset)
            )

    def finish(self) -> None:
        """Rules that need the whole file: no GPA is added twice for TDX (sorted runs)."""
        self._close_run()
        runs = sorted(self.private_runs)
        for (_s, end_a, index_a, _o), (start_b, _e, index_b, offset_b) in itertools.pairwise(runs):
            if start_b < end_a:
                first, second = sorted((index_a, index_b))
                raise IgvmError(
                    f"GPA {start_b:#x} is added twice for TDX (the pages from header "
                    f"{first} and from header {second} overlap); a TDX host adds a page once",
                    index_b,
                    offset_b,
                )

    def enter(self, section: int | None, base_type: int, index: int, offset: int) -> None:
        if section is None:
            return
        if section < self.section:
            raise IgvmError(
                f"type {base_type:#x} ({SECTION_NAMES[section]} section) appears after "
                f"the {SECTION_NAMES[self.section]} section; sections must be in order "
                "platform, initialization, directive",
                index,
                offset,
            )
        if section > SECTION_PLATFORM and not self.platform_types:
            raise IgvmError(
                "no SUPPORTED_PLATFORM header before the first "
                f"{SECTION_NAMES[section]} header; at least one is required",
                index,
                offset,
            )
        self.section = section

    def accept(self, header: AnyHeader, index: int, offset: int) -> None:
        def fail(rule: str, field_name: str | None = None) -> IgvmError:
            offsets = getattr(header, "OFFSETS", {})
            field_offset = offsets.get(field_name, 0) if field_name else 0
            return IgvmError(rule, index, offset + 8 + field_offset if field_name else offset)

        if isinstance(header, UnknownOptionalHeader):
            return
        if isinstance(header, SupportedPlatform):
            self._platform(header, fail)
            return
        mask = getattr(header, "compatibility_mask", None)
        if mask is not None and mask & ~self.all_masks:
            raise fail(
                f"{header.NAME}.compatibility_mask {mask:#x} names platforms the file does "
                f"not declare (declared {self.all_masks:#x})",
                "compatibility_mask",
            )
        if (
            isinstance(header, GuestPolicy)
            and mask is not None
            and mask & self.tdx_mask
            and header.policy & ~TDX_POLICY_DEFINED
        ):
            raise fail(
                f"GUEST_POLICY.policy {header.policy:#x} sets TdxPolicy reserved bits 3-63",
                "policy",
            )
        if isinstance(header, VpContext) and mask is not None and mask & self.tdx_mask:
            raise fail(
                "VP_CONTEXT is invalid for TDX (architectural reset state)", "compatibility_mask"
            )
        if isinstance(header, PageTableRelocation):
            if any(mask & header.compatibility_mask for mask, _s, _e in self.page_table_regions):
                raise fail(
                    "second PAGE_TABLE_RELOCATION_REGION for the same compatibility mask; "
                    "at most one per mask",
                    "compatibility_mask",
                )
            self.page_table_regions.append(
                (header.compatibility_mask, header.gpa, header.gpa + header.size)
            )
        elif isinstance(header, RelocatableRegion):
            start = header.relocation_region_gpa
            end = start + header.relocation_region_size
            for mask, other_start, other_end in self.relocatable_regions:
                if mask & header.compatibility_mask and start < other_end and other_start < end:
                    raise fail(
                        f"RELOCATABLE_REGION [{start:#x}, {end:#x}) overlaps another "
                        f"region [{other_start:#x}, {other_end:#x}) for the same mask",
                        "relocation_region_gpa",
                    )
            self.relocatable_regions.append((header.compatibility_mask, start, end))
        elif isinstance(header, ParameterInsert):
            for mask, start, end in self.page_table_regions:
                if mask & header.compatibility_mask and start <= header.gpa < end:
                    raise fail(
                        f"PARAMETER_INSERT gpa {header.gpa:#x} is inside the page table "
                        f"relocation region [{start:#x}, {end:#x})",
                        "gpa",
                    )
        if (
            isinstance(header, PageData)
            and header.compatibility_mask & self.tdx_mask
            and not header.shared
        ):
            self.private_pages(header.gpa, PAGE_SIZE, index, offset, "PAGE_DATA")
        if isinstance(header, ParameterArea):
            if header.parameter_area_index in self.areas:
                raise fail(
                    f"PARAMETER_AREA index {header.parameter_area_index} is declared twice",
                    "parameter_area_index",
                )
            self.total_area_bytes += header.number_of_bytes
            if self.total_area_bytes > MAX_TOTAL_PARAMETER_AREA_BYTES:
                raise fail(
                    f"parameter areas total {self.total_area_bytes:#x} bytes with this one, "
                    f"more than the {MAX_TOTAL_PARAMETER_AREA_BYTES:#x}-byte limit for a file",
                    "number_of_bytes",
                )
            self.areas[header.parameter_area_index] = _AreaState(header.number_of_bytes)
        elif isinstance(header, ParameterInsert | ParameterHeader):
            area = self.areas.get(header.parameter_area_index)
            if area is None:
                raise fail(
                    f"{header.NAME} uses parameter area {header.parameter_area_index}, "
                    "which is not declared before it",
                    "parameter_area_index",
                )
            if area.inserted:
                raise fail(
                    f"{header.NAME} uses parameter area {header.parameter_area_index} "
                    "after it was already inserted",
                    "parameter_area_index",
                )
            if isinstance(header, ParameterInsert):
                area.inserted = True
                if header.gpa + area.number_of_bytes > GPA_SPACE_END:
                    raise fail(
                        f"PARAMETER_INSERT at GPA {header.gpa:#x}: its "
                        f"{area.number_of_bytes:#x}-byte area {header.parameter_area_index} "
                        "runs past the 64-bit GPA space",
                        "gpa",
                    )
                if header.compatibility_mask & self.tdx_mask:
                    self.private_pages(
                        header.gpa, area.number_of_bytes, index, offset, "PARAMETER_INSERT"
                    )
            elif header.byte_offset + header.MIN_BYTES > area.number_of_bytes:
                raise fail(
                    f"{header.NAME}.byte_offset {header.byte_offset:#x} leaves less than "
                    f"{header.MIN_BYTES} bytes in parameter area "
                    f"{header.parameter_area_index} ({area.number_of_bytes:#x} bytes)",
                    "byte_offset",
                )

    def _platform(self, header: SupportedPlatform, fail: _Fail) -> None:
        if header.platform_type in self.platform_types:
            raise fail(
                f"second SUPPORTED_PLATFORM for platform "
                f"{PLATFORM_NAMES[header.platform_type]}; one per type",
                "platform_type",
            )
        if header.compatibility_mask & self.all_masks:
            raise fail(
                f"SUPPORTED_PLATFORM.compatibility_mask {header.compatibility_mask:#x} is "
                "already owned by another platform",
                "compatibility_mask",
            )
        arch = self.fixed.architecture
        needs = (
            ARCH_AARCH64
            if header.platform_type == IGVM_PLATFORM_CCA
            else (ARCH_X64 if header.platform_type in X86_PLATFORMS else None)
        )
        if needs is not None and needs != arch:
            raise fail(
                f"platform {PLATFORM_NAMES[header.platform_type]} needs architecture "
                f"{ARCH_NAMES[needs]}, the file is {ARCH_NAMES[arch]}"
                + (" (v1 files are X64)" if self.fixed.format_version == 1 else ""),
                "platform_type",
            )
        self.platform_types.add(header.platform_type)
        self.all_masks |= header.compatibility_mask
        if header.platform_type == IGVM_PLATFORM_TDX:
            if header.shared_gpa_boundary not in TDX_SHARED_GPA_BOUNDARIES:
                raise fail(
                    f"SUPPORTED_PLATFORM.shared_gpa_boundary {header.shared_gpa_boundary:#x} "
                    "is not one a TDX host supports (0, 1 << 47 for a 48-bit GPA width, "
                    "1 << 51 for 52 bits)",
                    "shared_gpa_boundary",
                )
            self.tdx_mask = header.compatibility_mask
            self.tdx_boundary = header.shared_gpa_boundary or TDX_DEFAULT_SHARED_GPA_BOUNDARY


class _Fail(Protocol):
    def __call__(self, rule: str, field_name: str | None = None) -> IgvmError: ...


def _walk(reader: _Reader, fixed: FixedHeader) -> Iterator[tuple[int, int, int, AnyHeader]]:
    """Yield (section, index, file offset, header) for every entry, validating as it goes."""
    validator = _Validator(fixed)
    offset, end = fixed.variable_header_offset, fixed.data_start
    index = 0
    data_start, file_size = fixed.data_start, reader.size
    while offset < end:
        if end - offset < IGVM_VHS_VARIABLE_HEADER.size:
            raise IgvmError(
                f"{end - offset} stray bytes at the end of the variable header section "
                "(too short for a TLV header)",
                index,
                offset,
            )
        head = reader.read(offset, PAGE_DATA_ENTRY_SIZE)
        header_type, length = IGVM_VHS_VARIABLE_HEADER.unpack_from(head)
        if (
            header_type == IGVM_VHT_PAGE_DATA
            and len(head) == PAGE_DATA_ENTRY_SIZE
            and validator.section == SECTION_DIRECTIVE
            and offset + PAGE_DATA_ENTRY_SIZE <= end
        ):
            # Fast path for the common valid PAGE_DATA; anything unusual takes the checked path.
            size, gpa, mask, file_offset, flags, data_type, reserved = PAGE_DATA_ENTRY.unpack_from(
                head, 4
            )
            if (
                size == PAGE_DATA_PAYLOAD
                and not reserved
                and not flags & ~PAGE_FLAGS_4K
                and not gpa % PAGE_SIZE
                and mask
                and not mask & ~validator.all_masks
                and data_type in PAGE_DATA_TYPE_NAMES
                and (
                    not file_offset
                    or (file_offset >= data_start and file_offset + PAGE_SIZE <= file_size)
                )
            ):
                if mask & validator.tdx_mask and not flags & IGVM_PAGE_FLAG_SHARED:
                    if gpa == validator.run_end and gpa < validator.tdx_boundary - PAGE_SIZE:
                        validator.run_end = gpa + PAGE_SIZE  # the open run goes on
                    else:
                        validator.private_pages(gpa, PAGE_SIZE, index, offset, "PAGE_DATA")
                data = reader.read(file_offset, PAGE_SIZE) if file_offset else b""
                yield SECTION_DIRECTIVE, index, offset, PageData(gpa, mask, flags, data_type, data)
                offset += PAGE_DATA_ENTRY_SIZE
                index += 1
                continue
        padded_end = offset + align8(IGVM_VHS_VARIABLE_HEADER.size + length)
        if padded_end > end or length > end:
            raise IgvmError(
                f"header type {header_type:#x} length {length} runs past the end of "
                f"the variable header section ({end:#x})",
                index,
                offset + 4,
            )
        base_type = header_type & ~IGVM_VHT_OPTIONAL_BIT
        cls = HEADER_CLASSES.get(base_type)
        section = section_of(base_type)
        if base_type == IGVM_VHT_RESERVED_DO_NOT_USE:
            raise IgvmError("header type 0x306 is RESERVED_DO_NOT_USE", index, offset)
        if cls is None and not header_type & IGVM_VHT_OPTIONAL_BIT:
            raise IgvmError(
                f"unknown mandatory header type {header_type:#x} (set bit 31 to make it optional)",
                index,
                offset,
            )
        validator.enter(section, base_type, index, offset)
        entry = (
            head if padded_end - offset == len(head) else reader.read(offset, padded_end - offset)
        )
        body = entry[8 : 8 + length]
        if any(entry[8 + length :]):
            warnings.warn(
                IgvmFinding(
                    f"IGVM header {index} at offset {offset:#x}: padding after the payload "
                    f"is not zero (at {offset + 8 + length:#x})",
                    "padding after a header payload is not zero",
                    index,
                    offset + 8 + length,
                ),
                stacklevel=3,
            )
        header: AnyHeader
        if cls is None:
            warnings.warn(
                IgvmWarning(
                    f"IGVM header {index} at offset {offset:#x}: unknown optional type "
                    f"{header_type:#x} skipped",
                    f"unknown optional header type {header_type:#x} skipped",
                    index,
                    offset,
                ),
                stacklevel=3,
            )
            header = UnknownOptionalHeader(header_type, body)
        else:
            if length != cls.payload_size():
                raise IgvmError(
                    f"{cls.NAME} length is {length}, must be {cls.payload_size()}",
                    index,
                    offset + 4,
                )
            file_offset, data_length = cls.file_data_span(body)
            data = b""
            if file_offset:
                if file_offset < fixed.data_start or file_offset + data_length > reader.size:
                    raise IgvmError(
                        f"{cls.NAME} file_offset {file_offset:#x} (+{data_length:#x} "
                        f"bytes) is outside the file data section "
                        f"[{fixed.data_start:#x}, {reader.size:#x})",
                        index,
                        offset + 8 + cls.OFFSETS["file_offset"],
                    )
                data = reader.read(file_offset, data_length)
            try:
                header = cls.unpack(body, data)  # type: ignore[assignment]
            except IgvmError as exc:
                field_offset = exc.offset if exc.offset is not None else -8
                raise IgvmError(exc.rule, index, offset + 8 + field_offset) from None
        validator.accept(header, index, offset)
        yield validator.section, index, offset, header
        offset = padded_end
        index += 1
    validator.finish()
    if not validator.platform_types:
        raise IgvmError(
            "the file has no SUPPORTED_PLATFORM header", None, fixed.variable_header_offset
        )


@dataclass
class IgvmFile:
    """A whole IGVM file in memory: headers by section, in file order, with their data."""

    platforms: list[PlatformHeader] = field(default_factory=list)
    initializations: list[InitializationHeader] = field(default_factory=list)
    directives: list[DirectiveHeader] = field(default_factory=list)
    architecture: int = ARCH_X64

    @classmethod
    def from_bytes(cls, data: bytes) -> IgvmFile:
        """Parse and validate a file; raises IgvmError naming header, offset and rule."""
        reader = _BytesReader(bytes(data))
        fixed = _read_fixed(reader)
        result = cls(architecture=fixed.architecture)
        for section, _index, _offset, header in _walk(reader, fixed):
            _append(result, section, header)
        return result

    def to_bytes(self) -> bytes:
        """Serialize deterministically (see igvm.writer)."""
        from igvm.writer import serialize

        return serialize(self)

    @property
    def tdx_platform(self) -> SupportedPlatform | None:
        return _tdx_platform(self.platforms)

    def headers(self) -> list[AnyHeader]:
        """All headers in file order."""
        return [*self.platforms, *self.initializations, *self.directives]


def _tdx_platform(platforms: list[PlatformHeader]) -> SupportedPlatform | None:
    for platform in platforms:
        if isinstance(platform, SupportedPlatform) and platform.platform_type == IGVM_PLATFORM_TDX:
            return platform
    return None


def _append(target: IgvmFile | IgvmScan, section: int, header: AnyHeader) -> None:
    if section == SECTION_PLATFORM:
        target.platforms.append(header)  # type: ignore[arg-type]
    elif section == SECTION_INITIALIZATION:
        target.initializations.append(header)  # type: ignore[arg-type]
    elif isinstance(target, IgvmFile):
        target.directives.append(header)  # type: ignore[arg-type]


def read(path: str | os.PathLike[str]) -> IgvmFile:
    """Read and validate a whole file into memory."""
    with open_regular(path) as stream:
        return IgvmFile.from_bytes(stream.read())


@dataclass
class IgvmScan:
    """A file opened for streaming: platform and initialization headers read, directives pending."""

    fixed: FixedHeader
    platforms: list[PlatformHeader]
    initializations: list[InitializationHeader]
    _walker: Iterator[tuple[int, int, int, AnyHeader]]
    _first: tuple[int, int, DirectiveHeader] | None
    _stream: BinaryIO

    @property
    def tdx_platform(self) -> SupportedPlatform | None:
        return _tdx_platform(self.platforms)

    def directives(self) -> Iterator[DirectiveHeader]:
        """Directives in file order, each with its own page data; validated as they stream."""
        for _index, _offset, header in self.indexed_directives():
            yield header

    def indexed_directives(self) -> Iterator[tuple[int, int, DirectiveHeader]]:
        """(header index, file offset, header) for each directive, streaming."""
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        for _section, index, offset, header in self._walker:
            yield index, offset, header  # type: ignore[misc]

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> IgvmScan:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def scan(source: str | os.PathLike[str] | BinaryIO) -> IgvmScan:
    """Open a file for streaming: fixed header and checksum checked, directives pending."""
    owned = isinstance(source, str | os.PathLike)
    if isinstance(source, str | os.PathLike):
        stream: BinaryIO = open_regular(source)  # closed by IgvmScan.close
    else:
        stream = source
    try:
        reader = _FileReader(stream)
        fixed = _read_fixed(reader)
        walker = _walk(reader, fixed)
        platforms: list[PlatformHeader] = []
        initializations: list[InitializationHeader] = []
        first: tuple[int, int, DirectiveHeader] | None = None
        for section, index, offset, header in walker:
            if section == SECTION_PLATFORM:
                platforms.append(header)  # type: ignore[arg-type]
            elif section == SECTION_INITIALIZATION:
                initializations.append(header)  # type: ignore[arg-type]
            else:
                first = (index, offset, header)  # type: ignore[assignment]
                break
    except BaseException:
        if owned:  # a caller's stream is the caller's to close
            stream.close()
        raise
    return IgvmScan(fixed, platforms, initializations, walker, first, stream)


def iter_directives(path: str | os.PathLike[str]) -> Iterator[DirectiveHeader]:
    """Stream a file's directives without holding its page data in memory."""
    with scan(path) as opened:
        yield from opened.directives()
