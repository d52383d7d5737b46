"""IGVM variable header types: one dataclass per type, laid out as the IGVM specification says.

Each class declares its on-disk payload as WIRE, a list of (field name, struct code) pairs in file
order. Fields named ``reserved*`` must be zero and are not dataclass fields; ``file_offset`` is
not a field either: the blob it points at is carried in the class's data field (``data``,
``initial_data``) and the writer assigns the offset. ``check()`` applies the rules that need only
the header itself; rules spanning several headers live in ``igvm.format``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from igvm.errors import IgvmError
from tdxdefs.layout import compile_fields

PAGE_SIZE = 4096
PAGE_SIZE_2MB = 2 * 1024 * 1024
VP_CONTEXT_DATA_SIZE = PAGE_SIZE
# Our limit, not the spec's: an insert PAGE.ADDs every page of its area, so a hostile file with a
# huge area would make a loader (and measure) add billions of pages.
MAX_PARAMETER_AREA_BYTES = 1 << 30
# The same bound over all areas of a file together: a thousand areas of 1 GiB each would
# otherwise pass every per-area check and still make measure add a trillion bytes of pages.
MAX_TOTAL_PARAMETER_AREA_BYTES = 1 << 30
# Shared-GPA boundaries a TDX host can honour: the GPA width is 48 or 52 bits, and the shared bit
# is its top bit (Intel TDX Module ABI Specification, TD_PARAMS.CONFIG_FLAGS.GPAW); 0 means the
# platform leaves it to the host, which loads with GPAW 48.
TDX_SHARED_GPA_BOUNDARIES = (0, 1 << 47, 1 << 51)
TDX_DEFAULT_SHARED_GPA_BOUNDARY = 1 << 47
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()[:16]

# IgvmVariableHeaderType codes (section 2, "Type codes").
IGVM_VHT_SUPPORTED_PLATFORM = 0x001
IGVM_VHT_GUEST_POLICY = 0x101
IGVM_VHT_RELOCATABLE_REGION = 0x102
IGVM_VHT_PAGE_TABLE_RELOCATION_REGION = 0x103
IGVM_VHT_CORIM_DOCUMENT = 0x104
IGVM_VHT_CORIM_SIGNATURE = 0x105
IGVM_VHT_CCA_POLICY = 0x106
IGVM_VHT_PARAMETER_AREA = 0x301
IGVM_VHT_PAGE_DATA = 0x302
IGVM_VHT_PARAMETER_INSERT = 0x303
IGVM_VHT_VP_CONTEXT = 0x304
IGVM_VHT_REQUIRED_MEMORY = 0x305
IGVM_VHT_RESERVED_DO_NOT_USE = 0x306
IGVM_VHT_VP_COUNT_PARAMETER = 0x307
IGVM_VHT_SRAT = 0x308
IGVM_VHT_MADT = 0x309
IGVM_VHT_MMIO_RANGES = 0x30A
IGVM_VHT_SNP_ID_BLOCK = 0x30B
IGVM_VHT_MEMORY_MAP = 0x30C
IGVM_VHT_ERROR_RANGE = 0x30D
IGVM_VHT_COMMAND_LINE = 0x30E
IGVM_VHT_SLIT = 0x30F
IGVM_VHT_PPTT = 0x310
IGVM_VHT_VBS_MEASUREMENT = 0x311
IGVM_VHT_DEVICE_TREE = 0x312
IGVM_VHT_ENVIRONMENT_INFO_PARAMETER = 0x313
IGVM_VHT_OPTIONAL_BIT = 1 << 31

# IgvmPlatformType (section 2, "Platform types").
IGVM_PLATFORM_NATIVE = 0
IGVM_PLATFORM_VSM_ISOLATION = 1
IGVM_PLATFORM_SEV_SNP = 2
IGVM_PLATFORM_TDX = 3
IGVM_PLATFORM_SEV = 4
IGVM_PLATFORM_SEV_ES = 5
IGVM_PLATFORM_CCA = 6
PLATFORM_NAMES = {
    IGVM_PLATFORM_NATIVE: "NATIVE",
    IGVM_PLATFORM_VSM_ISOLATION: "VSM_ISOLATION",
    IGVM_PLATFORM_SEV_SNP: "SEV_SNP",
    IGVM_PLATFORM_TDX: "TDX",
    IGVM_PLATFORM_SEV: "SEV",
    IGVM_PLATFORM_SEV_ES: "SEV_ES",
    IGVM_PLATFORM_CCA: "CCA",
}
IGVM_PLATFORM_VERSION = 1
ALLOWED_HIGHEST_VTL = (0, 2)

# IGVM_VHS_PAGE_DATA flags and data types.
IGVM_PAGE_FLAG_IS_2MB_PAGE = 1 << 0
IGVM_PAGE_FLAG_UNMEASURED = 1 << 1
IGVM_PAGE_FLAG_SHARED = 1 << 2
IGVM_PAGE_FLAGS_DEFINED = (
    IGVM_PAGE_FLAG_IS_2MB_PAGE | IGVM_PAGE_FLAG_UNMEASURED | IGVM_PAGE_FLAG_SHARED
)
IGVM_PAGE_DATA_TYPE_NORMAL = 0
IGVM_PAGE_DATA_TYPE_SECRETS = 1
IGVM_PAGE_DATA_TYPE_CPUID_DATA = 2
IGVM_PAGE_DATA_TYPE_CPUID_XF = 3
PAGE_DATA_TYPE_NAMES = {
    IGVM_PAGE_DATA_TYPE_NORMAL: "NORMAL",
    IGVM_PAGE_DATA_TYPE_SECRETS: "SECRETS",
    IGVM_PAGE_DATA_TYPE_CPUID_DATA: "CPUID_DATA",
    IGVM_PAGE_DATA_TYPE_CPUID_XF: "CPUID_XF",
}

# RELOCATABLE_REGION flags, REQUIRED_MEMORY flags.
IGVM_RELOC_FLAG_IS_VTL2 = 1 << 0
IGVM_RELOC_FLAG_APPLY_PC = 1 << 1
IGVM_RELOC_FLAG_APPLY_GDTR = 1 << 2
IGVM_RELOC_FLAGS_DEFINED = (
    IGVM_RELOC_FLAG_IS_VTL2 | IGVM_RELOC_FLAG_APPLY_PC | IGVM_RELOC_FLAG_APPLY_GDTR
)
IGVM_REQUIRED_MEMORY_FLAG_VTL2_PROTECTABLE = 1 << 0

# TdxPolicy (an IGVM encoding, not the TD ATTRIBUTES layout), section 2 "Policy bitfields".
TDX_POLICY_DEBUG_ALLOWED = 1 << 0
TDX_POLICY_SEPT_VE_DISABLE = 1 << 1
TDX_POLICY_MIGRATABLE = 1 << 2
TDX_POLICY_DEFINED = TDX_POLICY_DEBUG_ALLOWED | TDX_POLICY_SEPT_VE_DISABLE | TDX_POLICY_MIGRATABLE

# IGVM_VHS_MEMORY_MAP_ENTRY entry_type values.
IGVM_MEMORY_MAP_ENTRY_TYPE_MEMORY = 0
IGVM_MEMORY_MAP_ENTRY_TYPE_PLATFORM_RESERVED = 1
IGVM_MEMORY_MAP_ENTRY_TYPE_PERSISTENT = 2
IGVM_MEMORY_MAP_ENTRY_TYPE_VTL2_PROTECTABLE = 3
IGVM_MEMORY_MAP_ENTRY_TYPE_SPECIFIC_PURPOSE = 4
IGVM_MEMORY_MAP_ENTRY_TYPE_HIDDEN = 5

U32_MAX = 0xFFFF_FFFF


def _rule(rule: str, field_offset: int | None = None) -> IgvmError:
    """A rule violation located at a payload-relative field offset (format makes it absolute)."""
    return IgvmError(rule, None, field_offset)


def _is_pow2_page_multiple(value: int) -> bool:
    return value != 0 and value % PAGE_SIZE == 0


@dataclass(frozen=True, slots=True)
class _Header:
    """Generic pack/unpack driven by WIRE; subclasses add fields, TYPE, NAME and check()."""

    TYPE: ClassVar[int] = 0
    NAME: ClassVar[str] = ""
    WIRE: ClassVar[tuple[tuple[str, str], ...]] = ()
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<")
    OFFSETS: ClassVar[dict[str, int]] = {}
    DATA_FIELD: ClassVar[str | None] = None

    FIELD_POSITIONS: ClassVar[tuple[tuple[int, str], ...]] = ()
    RESERVED_POSITIONS: ClassVar[tuple[tuple[int, str], ...]] = ()

    def __init_subclass__(cls) -> None:
        if "WIRE" in cls.__dict__:  # compiled as every binary layout is (tdxdefs.layout)
            compiled = compile_fields(cls.NAME or cls.__name__, cls.WIRE)
            cls.LAYOUT = compiled.struct
            cls.OFFSETS = compiled.offsets
        has_data = cls.DATA_FIELD is not None
        cls.FIELD_POSITIONS = tuple(
            (position, name)
            for position, (name, _code) in enumerate(cls.WIRE)
            if not name.startswith("reserved")
            and not (has_data and name in ("file_offset", "size_bytes"))
        )
        cls.RESERVED_POSITIONS = tuple(
            (position, name)
            for position, (name, _code) in enumerate(cls.WIRE)
            if name.startswith("reserved")
        )

    @classmethod
    def payload_size(cls) -> int:
        """Payload length the TLV `length` field must hold for this type."""
        return cls.LAYOUT.size

    @classmethod
    def file_data_span(cls, payload: bytes) -> tuple[int, int]:
        """(file_offset, byte count) of the blob this payload points at; (0, 0) when none."""
        return (0, 0)

    @classmethod
    def unpack(cls, payload: bytes, data: bytes = b"") -> Self:
        """Decode a payload of exactly size() bytes; `data` is the blob at its file_offset."""
        if len(payload) != cls.LAYOUT.size:
            raise _rule(f"{cls.NAME} payload must be {cls.LAYOUT.size} bytes, got {len(payload)}")
        values = cls.LAYOUT.unpack(payload)
        for position, name in cls.RESERVED_POSITIONS:
            value = values[position]
            if any(value) if isinstance(value, bytes) else value:
                raise _rule(f"{cls.NAME}.{name} must be zero", cls.OFFSETS[name])
        kwargs: dict[str, Any] = {name: values[position] for position, name in cls.FIELD_POSITIONS}
        if cls.DATA_FIELD is not None:
            kwargs[cls.DATA_FIELD] = data
        header = cls(**kwargs)
        header.check()
        return header

    def wire_values(self, file_offset: int) -> list[Any]:
        """The WIRE values in order, with reserved fields zero and the given file_offset."""
        values: list[Any] = []
        for name, code in self.WIRE:
            if name.startswith("reserved"):
                values.append(b"" if code.endswith("s") else 0)
            elif name == "file_offset":
                values.append(file_offset)
            elif name == "size_bytes" and self.DATA_FIELD is not None:
                values.append(len(self.file_data()))
            else:
                values.append(getattr(self, name))
        return values

    def pack(self, file_offset: int = 0) -> bytes:
        """Encode the payload (without the 8-byte TLV header)."""
        try:
            return self.LAYOUT.pack(*self.wire_values(file_offset))
        except struct.error as exc:
            raise _rule(f"{self.NAME}: a field is out of range for its type ({exc})") from exc

    def file_data(self) -> bytes:
        """The blob to store in file data, padded as the writer stores it; empty when none."""
        return b""

    def check(self) -> None:
        """Rules that need only this header; raises IgvmError with a payload-relative offset."""

    def describe(self) -> str:
        """One line naming the header and its fields, for dumps and diffs."""
        parts = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bytes):
                digest = hashlib.sha256(value).hexdigest()[:16]
                parts.append(f"{field.name}=<{len(value)} B sha256:{digest}>")
            else:
                parts.append(
                    f"{field.name}={value:#x}"
                    if isinstance(value, int)
                    else f"{field.name}={value!r}"
                )
        return f"{self.NAME} " + " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """Fields as JSON-ready values (bytes as hex, only when short)."""
        out: dict[str, Any] = {"type": self.NAME, "type_code": self.TYPE}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bytes):
                out[field.name + "_length"] = len(value)
                out[field.name + "_sha256"] = hashlib.sha256(value).hexdigest()
            else:
                out[field.name] = value
        return out

    def _check_mask(self) -> None:
        mask = getattr(self, "compatibility_mask", None)
        if mask == 0:
            raise _rule(
                f"{self.NAME}.compatibility_mask must not be zero",
                self.OFFSETS["compatibility_mask"],
            )


# ---------------------------------------------------------------- platform section (0x001-0x100)


@dataclass(frozen=True, slots=True)
class SupportedPlatform(_Header):
    """IGVM_VHS_SUPPORTED_PLATFORM (16 bytes): one supported platform, owning one mask bit."""

    TYPE: ClassVar[int] = IGVM_VHT_SUPPORTED_PLATFORM
    NAME: ClassVar[str] = "SUPPORTED_PLATFORM"
    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("compatibility_mask", "I"),
        ("highest_vtl", "B"),
        ("platform_type", "B"),
        ("platform_version", "H"),
        ("shared_gpa_boundary", "Q"),
    )
    compatibility_mask: int
    highest_vtl: int
    platform_type: int
    platform_version: int = IGVM_PLATFORM_VERSION
    shared_gpa_boundary: int = 0

    def check(self) -> None:
        mask = self.compatibility_mask
        if mask == 0 or mask & (mask - 1):
            raise _rule(
                f"SUPPORTED_PLATFORM.compatibility_mask must have exactly one bit set "
                f"(got {mask:#x})",
                self.OFFSETS["compatibility_mask"],
            )
        if self.highest_vtl not in ALLOWED_HIGHEST_VTL:
            raise _rule(
                f"SUPPORTED_PLATFORM.highest_vtl must be 0 or 2 (got {self.highest_vtl})",
                self.OFFSETS["highest_vtl"],
            )
        if self.platform_type not in PLATFORM_NAMES:
            raise _rule(
                f"SUPPORTED_PLATFORM.platform_type {self.platform_type} is unknown",
                self.OFFSETS["platform_type"],
            )
        if self.platform_version != IGVM_PLATFORM_VERSION:
            raise _rule(
                f"SUPPORTED_PLATFORM.platform_version must be {IGVM_PLATFORM_VERSION} "
                f"(got {self.platform_version})",
                self.OFFSETS["platform_version"],
            )
        enlightened = (IGVM_PLATFORM_NATIVE, IGVM_PLATFORM_VSM_ISOLATION)
        if self.platform_type in enlightened and self.shared_gpa_boundary != 0:
            raise _rule(
                "SUPPORTED_PLATFORM.shared_gpa_boundary must be 0 for NATIVE and VSM",
                self.OFFSETS["shared_gpa_boundary"],
            )


# ------------------------------------------------------------ initialization section (0x101-0x200)


@dataclass(frozen=True, slots=True)
class GuestPolicy(_Header):
    """IGVM_VHS_GUEST_POLICY (16 bytes): platform policy bits (TdxPolicy for a TDX mask)."""

    TYPE: ClassVar[int] = IGVM_VHT_GUEST_POLICY
    NAME: ClassVar[str] = "GUEST_POLICY"
    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("policy", "Q"),
        ("compatibility_mask", "I"),
        ("reserved", "I"),
    )
    policy: int
    compatibility_mask: int

    def check(self) -> None:
        self._check_mask()


@dataclass(frozen=True, slots=True)
class RelocatableRegion(_Header):
    """IGVM_VHS_RELOCATABLE_REGION (48 bytes): a region the loader may move."""

    TYPE: ClassVar[int] = IGVM_VHT_RELOCATABLE_REGION
    NAME: ClassVar[str] = "RELOCATABLE_REGION"
    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("compatibility_mask", "I"),
        ("vp_index", "H"),
        ("vtl", "B"),
        ("flags", "B"),
        ("relocation_alignment", "Q"),
        ("relocation_region_gpa", "Q"),
        ("relocation_region_size", "Q"),
        ("minimum_relocation_gpa", "Q"),
        ("maximum_relocation_gpa", "Q"),
    )
    compatibility_mask: int
    vp_index: int
    vtl: int
    flags: int
    relocation_alignment: int
    relocation_region_gpa: int
    relocation_region_size: int
    minimum_relocation_gpa: int
    maximum_relocation_gpa: int

    def check(self) -> None:
        self._check_mask()
        if self.flags & ~IGVM_RELOC_FLAGS_DEFINED:
            raise _rule("RELOCATABLE_REGION.flags has reserved bits set", self.OFFSETS["flags"])
        for name in ("relocation_alignment", "relocation_region_size"):
            if not _is_pow2_page_multiple(getattr(self, name)):
                raise _rule(
                    f"RELOCATABLE_REGION.{name} must be a non-zero multiple of 4 KiB",
                    self.OFFSETS[name],
                )
        for name in ("relocation_region_gpa", "minimum_relocation_gpa", "maximum_relocation_gpa"):
            if getattr(self, name) % self.relocation_alignment:
                raise _rule(
                    f"RELOCATABLE_REGION.{name} must be aligned to relocation_alignment",
                    self.OFFSETS[name],
                )
        if self.minimum_relocation_gpa > self.maximum_relocation_gpa:
            raise _rule(
                "RELOCATABLE_REGION.minimum_relocation_gpa exceeds maximum",
                self.OFFSETS["minimum_relocation_gpa"],
            )


@dataclass(frozen=True, slots=True)
class PageTableRelocation(_Header):
    """IGVM_VHS_PAGE_TABLE_RELOCATION (32 bytes): where the page tables live, for relocation."""

    TYPE: ClassVar[int] = IGVM_VHT_PAGE_TABLE_RELOCATION_REGION
    NAME: ClassVar[str] = "PAGE_TABLE_RELOCATION_REGION"
    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("compatibility_mask", "I"),
        ("vp_index", "H"),
        ("vtl", "B"),
        ("reserved", "B"),
        ("gpa", "Q"),
        ("size", "Q"),
        ("used_size", "Q"),
    )
    compatibility_mask: int
    vp_index: int
    vtl: int
    gpa: int
    size: int
    used_size: int

    def check(self) -> None:
        self._check_mask()
        for name in ("gpa", "size", "used_size"):
            if getattr(self, name) % PAGE_SIZE:
                raise _rule(
                    f"PAGE_TABLE_RELOCATION_REGION.{name} must be 4 KiB aligned", self.OFFSETS[name]
                )
        if self.used_size > self.size:
            raise _rule(
                "PAGE_TABLE_RELOCATION_REGION.used_size exceeds size", self.OFFSETS["used_size"]
            )


@dataclass(frozen=True, slots=True)
class _CorimData(_Header):
    """IGVM_VHS_CORIM_DATA (16 bytes): a CoRIM blob in file data (size_bytes = len(data))."""

    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("compatibility_mask", "I"),
        ("file_offset", "I"),
        ("size_bytes", "I"),
        ("reserved", "I"),
    )
    DATA_FIELD: ClassVar[str | None] = "data"
    compatibility_mask: int
    data: bytes

    @classmethod
    def file_data_span(cls, payload: bytes) -> tuple[int, int]:
        _mask, file_offset, size_bytes, _reserved = cls.LAYOUT.unpack(payload)
        return (file_offset, size_bytes)

    def file_data(self) -> bytes:
        return self.data

    def check(self) -> None:
        self._check_mask()


@dataclass(frozen=True, slots=True)
class CorimDocument(_CorimData):
    """IGVM_VHT_CORIM_DOCUMENT: the CoRIM document."""

    TYPE: ClassVar[int] = IGVM_VHT_CORIM_DOCUMENT
    NAME: ClassVar[str] = "CORIM_DOCUMENT"


@dataclass(frozen=True, slots=True)
class CorimSignature(_CorimData):
    """IGVM_VHT_CORIM_SIGNATURE: the CoRIM document's signature."""

    TYPE: ClassVar[int] = IGVM_VHT_CORIM_SIGNATURE
    NAME: ClassVar[str] = "CORIM_SIGNATURE"


@dataclass(frozen=True, slots=True)
class CcaPolicy(_Header):
    """IGVM_VHS_CCA_POLICY (32 bytes): Arm CCA realm attributes and hash algorithm."""

    TYPE: ClassVar[int] = IGVM_VHT_CCA_POLICY
    NAME: ClassVar[str] = "CCA_POLICY"
    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("compatibility_mask", "I"),
        ("reserved", "I"),
        ("attributes_required_zeroes", "Q"),
        ("attributes_required_ones", "Q"),
        ("hash_algorithm", "B"),
        ("lfa_policy", "B"),
        ("reserved2", "6s"),
    )
    compatibility_mask: int
    attributes_required_zeroes: int
    attributes_required_ones: int
    hash_algorithm: int
    lfa_policy: int

    CCA_HASH_ALGORITHMS: ClassVar[tuple[int, ...]] = (0, 1, 2)

    def check(self) -> None:
        self._check_mask()
        if self.hash_algorithm not in self.CCA_HASH_ALGORITHMS:
            raise _rule(
                f"CCA_POLICY.hash_algorithm {self.hash_algorithm} is unknown",
                self.OFFSETS["hash_algorithm"],
            )
        if self.attributes_required_zeroes & self.attributes_required_ones:
            raise _rule(
                "CCA_POLICY requires the same attribute bits both zero and one",
                self.OFFSETS["attributes_required_ones"],
            )


# ----------------------------------------------------------------- directive section (0x301-0x400)


@dataclass(frozen=True, slots=True)
class ParameterArea(_Header):
    """IGVM_VHS_PARAMETER_AREA (16 bytes): a buffer the loader fills with parameters."""

    TYPE: ClassVar[int] = IGVM_VHT_PARAMETER_AREA
    NAME: ClassVar[str] = "PARAMETER_AREA"
    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("number_of_bytes", "Q"),
        ("parameter_area_index", "I"),
        ("file_offset", "I"),
    )
    DATA_FIELD: ClassVar[str | None] = "initial_data"
    number_of_bytes: int
    parameter_area_index: int
    initial_data: bytes = b""

    @classmethod
    def file_data_span(cls, payload: bytes) -> tuple[int, int]:
        number_of_bytes, _index, file_offset = cls.LAYOUT.unpack(payload)
        return (file_offset, number_of_bytes if file_offset else 0)

    def file_data(self) -> bytes:
        if not self.initial_data:
            return b""
        return self.initial_data.ljust(self.number_of_bytes, b"\0")

    def check(self) -> None:
        if not _is_pow2_page_multiple(self.number_of_bytes):
            raise _rule(
                f"PARAMETER_AREA.number_of_bytes must be a non-zero multiple of 4 KiB "
                f"(got {self.number_of_bytes:#x})",
                self.OFFSETS["number_of_bytes"],
            )
        if self.number_of_bytes > MAX_PARAMETER_AREA_BYTES:
            raise _rule(
                f"PARAMETER_AREA.number_of_bytes {self.number_of_bytes:#x} exceeds the "
                f"{MAX_PARAMETER_AREA_BYTES:#x}-byte limit",
                self.OFFSETS["number_of_bytes"],
            )
        if len(self.initial_data) > self.number_of_bytes:
            raise _rule(
                "PARAMETER_AREA initial data is longer than number_of_bytes",
                self.OFFSETS["file_offset"],
            )


@dataclass(frozen=True, slots=True)
class PageData(_Header):
    """IGVM_VHS_PAGE_DATA (24 bytes): one page to load at a GPA; empty data means a zero page."""

    TYPE: ClassVar[int] = IGVM_VHT_PAGE_DATA
    NAME: ClassVar[str] = "PAGE_DATA"
    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("gpa", "Q"),
        ("compatibility_mask", "I"),
        ("file_offset", "I"),
        ("flags", "I"),
        ("data_type", "H"),
        ("reserved", "H"),
    )
    DATA_FIELD: ClassVar[str | None] = "data"
    gpa: int
    compatibility_mask: int
    flags: int = 0
    data_type: int = IGVM_PAGE_DATA_TYPE_NORMAL
    data: bytes = b""

    @property
    def is_2mb_page(self) -> bool:
        return bool(self.flags & IGVM_PAGE_FLAG_IS_2MB_PAGE)

    @property
    def unmeasured(self) -> bool:
        return bool(self.flags & IGVM_PAGE_FLAG_UNMEASURED)

    @property
    def shared(self) -> bool:
        return bool(self.flags & IGVM_PAGE_FLAG_SHARED)

    @classmethod
    def file_data_span(cls, payload: bytes) -> tuple[int, int]:
        file_offset = int.from_bytes(payload[12:16], "little")
        return (file_offset, PAGE_SIZE if file_offset else 0)

    @classmethod
    def unpack(cls, payload: bytes, data: bytes = b"") -> Self:
        """The generic decode, unrolled: PAGE_DATA is most of a large file's headers."""
        if len(payload) != cls.LAYOUT.size:
            return super(PageData, cls).unpack(payload, data)
        gpa, mask, _file_offset, flags, data_type, reserved = cls.LAYOUT.unpack(payload)
        if reserved:
            raise _rule("PAGE_DATA.reserved must be zero", cls.OFFSETS["reserved"])
        header = cls(gpa, mask, flags, data_type, data)
        header.check()
        return header

    def file_data(self) -> bytes:
        if not self.data:
            return b""
        return self.data.ljust(PAGE_SIZE, b"\0")

    def describe(self) -> str:
        """The generic one-line form, written out: a large file is mostly PAGE_DATA."""
        digest = _EMPTY_SHA256 if not self.data else hashlib.sha256(self.data).hexdigest()[:16]
        return (
            f"PAGE_DATA gpa={self.gpa:#x} compatibility_mask={self.compatibility_mask:#x} "
            f"flags={self.flags:#x} data_type={self.data_type:#x} "
            f"data=<{len(self.data)} B sha256:{digest}>"
        )

    def check(self) -> None:
        self._check_mask()
        if self.flags & ~IGVM_PAGE_FLAGS_DEFINED:
            raise _rule(
                f"PAGE_DATA.flags has reserved bits set ({self.flags:#x})", self.OFFSETS["flags"]
            )
        alignment = PAGE_SIZE_2MB if self.is_2mb_page else PAGE_SIZE
        if self.gpa % alignment:
            raise _rule(
                f"PAGE_DATA.gpa {self.gpa:#x} must be "
                f"{'2 MiB' if self.is_2mb_page else '4 KiB'} aligned",
                self.OFFSETS["gpa"],
            )
        if self.data_type not in PAGE_DATA_TYPE_NAMES:
            raise _rule(
                f"PAGE_DATA.data_type {self.data_type} is unknown", self.OFFSETS["data_type"]
            )
        if len(self.data) > PAGE_SIZE:
            raise _rule(
                f"PAGE_DATA data is {len(self.data)} bytes; at most 4096",
                self.OFFSETS["file_offset"],
            )


@dataclass(frozen=True, slots=True)
class ParameterInsert(_Header):
    """IGVM_VHS_PARAMETER_INSERT (16 bytes): deposit a parameter area at a GPA (unmeasured)."""

    TYPE: ClassVar[int] = IGVM_VHT_PARAMETER_INSERT
    NAME: ClassVar[str] = "PARAMETER_INSERT"
    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("gpa", "Q"),
        ("compatibility_mask", "I"),
        ("parameter_area_index", "I"),
    )
    gpa: int
    compatibility_mask: int
    parameter_area_index: int

    def check(self) -> None:
        self._check_mask()
        if self.gpa % PAGE_SIZE:
            raise _rule(
                f"PARAMETER_INSERT.gpa {self.gpa:#x} must be 4 KiB aligned", self.OFFSETS["gpa"]
            )


@dataclass(frozen=True, slots=True)
class VpContext(_Header):
    """IGVM_VHS_VP_CONTEXT (20 bytes): a VP's start state; invalid for TDX (section 3)."""

    TYPE: ClassVar[int] = IGVM_VHT_VP_CONTEXT
    NAME: ClassVar[str] = "VP_CONTEXT"
    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("gpa", "Q"),
        ("compatibility_mask", "I"),
        ("file_offset", "I"),
        ("vp_index", "H"),
        ("reserved", "H"),
    )
    DATA_FIELD: ClassVar[str | None] = "data"
    gpa: int
    compatibility_mask: int
    vp_index: int
    data: bytes = b""

    @classmethod
    def file_data_span(cls, payload: bytes) -> tuple[int, int]:
        file_offset = int.from_bytes(payload[12:16], "little")
        return (file_offset, VP_CONTEXT_DATA_SIZE if file_offset else 0)

    def file_data(self) -> bytes:
        return self.data.ljust(VP_CONTEXT_DATA_SIZE, b"\0") if self.data else b""

    def check(self) -> None:
        self._check_mask()
        if len(self.data) > VP_CONTEXT_DATA_SIZE:
            raise _rule("VP_CONTEXT data is longer than 4096 bytes", self.OFFSETS["file_offset"])


@dataclass(frozen=True, slots=True)
class RequiredMemory(_Header):
    """IGVM_VHS_REQUIRED_MEMORY (24 bytes): memory the guest needs present at a GPA."""

    TYPE: ClassVar[int] = IGVM_VHT_REQUIRED_MEMORY
    NAME: ClassVar[str] = "REQUIRED_MEMORY"
    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("gpa", "Q"),
        ("compatibility_mask", "I"),
        ("number_of_bytes", "I"),
        ("flags", "I"),
        ("reserved", "I"),
    )
    gpa: int
    compatibility_mask: int
    number_of_bytes: int
    flags: int = 0

    def check(self) -> None:
        self._check_mask()
        if self.gpa % PAGE_SIZE:
            raise _rule("REQUIRED_MEMORY.gpa must be 4 KiB aligned", self.OFFSETS["gpa"])
        if not _is_pow2_page_multiple(self.number_of_bytes):
            raise _rule(
                "REQUIRED_MEMORY.number_of_bytes must be a non-zero multiple of 4 KiB",
                self.OFFSETS["number_of_bytes"],
            )
        if self.flags & ~IGVM_REQUIRED_MEMORY_FLAG_VTL2_PROTECTABLE:
            raise _rule("REQUIRED_MEMORY.flags has reserved bits set", self.OFFSETS["flags"])


@dataclass(frozen=True, slots=True)
class ParameterHeader(_Header):
    """IGVM_VHS_PARAMETER (8 bytes): where in a parameter area the loader writes one item."""

    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("parameter_area_index", "I"),
        ("byte_offset", "I"),
    )
    MIN_BYTES: ClassVar[int] = 1
    parameter_area_index: int
    byte_offset: int


VP_COUNT_BYTES = 4
ENVIRONMENT_INFO_BYTES = 4
MEMORY_MAP_ENTRY_BYTES = 24


@dataclass(frozen=True, slots=True)
class VpCount(ParameterHeader):
    """IGVM_VHT_VP_COUNT_PARAMETER: the loader writes the u32 VP count."""

    TYPE: ClassVar[int] = IGVM_VHT_VP_COUNT_PARAMETER
    NAME: ClassVar[str] = "VP_COUNT_PARAMETER"
    MIN_BYTES: ClassVar[int] = VP_COUNT_BYTES


@dataclass(frozen=True, slots=True)
class Srat(ParameterHeader):
    """IGVM_VHT_SRAT: the loader writes an ACPI SRAT."""

    TYPE: ClassVar[int] = IGVM_VHT_SRAT
    NAME: ClassVar[str] = "SRAT"


@dataclass(frozen=True, slots=True)
class Madt(ParameterHeader):
    """IGVM_VHT_MADT: the loader writes an ACPI MADT."""

    TYPE: ClassVar[int] = IGVM_VHT_MADT
    NAME: ClassVar[str] = "MADT"


@dataclass(frozen=True, slots=True)
class MmioRanges(ParameterHeader):
    """IGVM_VHT_MMIO_RANGES: the loader writes IGVM_VHS_MMIO_RANGES (32 bytes)."""

    TYPE: ClassVar[int] = IGVM_VHT_MMIO_RANGES
    NAME: ClassVar[str] = "MMIO_RANGES"
    MIN_BYTES: ClassVar[int] = 32


@dataclass(frozen=True, slots=True)
class MemoryMap(ParameterHeader):
    """IGVM_VHT_MEMORY_MAP: the loader writes MEMORY_MAP_ENTRY records ending with a zero entry."""

    TYPE: ClassVar[int] = IGVM_VHT_MEMORY_MAP
    NAME: ClassVar[str] = "MEMORY_MAP"
    MIN_BYTES: ClassVar[int] = MEMORY_MAP_ENTRY_BYTES


@dataclass(frozen=True, slots=True)
class CommandLine(ParameterHeader):
    """IGVM_VHT_COMMAND_LINE: the loader writes a NUL-terminated ASCII command line."""

    TYPE: ClassVar[int] = IGVM_VHT_COMMAND_LINE
    NAME: ClassVar[str] = "COMMAND_LINE"


@dataclass(frozen=True, slots=True)
class Slit(ParameterHeader):
    """IGVM_VHT_SLIT: the loader writes an ACPI SLIT."""

    TYPE: ClassVar[int] = IGVM_VHT_SLIT
    NAME: ClassVar[str] = "SLIT"


@dataclass(frozen=True, slots=True)
class Pptt(ParameterHeader):
    """IGVM_VHT_PPTT: the loader writes an ACPI PPTT."""

    TYPE: ClassVar[int] = IGVM_VHT_PPTT
    NAME: ClassVar[str] = "PPTT"


@dataclass(frozen=True, slots=True)
class DeviceTree(ParameterHeader):
    """IGVM_VHT_DEVICE_TREE: the loader writes a flattened device tree."""

    TYPE: ClassVar[int] = IGVM_VHT_DEVICE_TREE
    NAME: ClassVar[str] = "DEVICE_TREE"


@dataclass(frozen=True, slots=True)
class EnvironmentInfo(ParameterHeader):
    """IGVM_VHT_ENVIRONMENT_INFO_PARAMETER: the loader writes a u32 (bit 0 memory_is_shared)."""

    TYPE: ClassVar[int] = IGVM_VHT_ENVIRONMENT_INFO_PARAMETER
    NAME: ClassVar[str] = "ENVIRONMENT_INFO_PARAMETER"
    MIN_BYTES: ClassVar[int] = ENVIRONMENT_INFO_BYTES


@dataclass(frozen=True, slots=True)
class SnpIdBlock(_Header):
    """IGVM_VHS_SNP_ID_BLOCK (696 bytes): SEV-SNP ID block; signature structures kept as bytes."""

    TYPE: ClassVar[int] = IGVM_VHT_SNP_ID_BLOCK
    NAME: ClassVar[str] = "SNP_ID_BLOCK"
    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("compatibility_mask", "I"),
        ("author_key_enabled", "B"),
        ("reserved", "3s"),
        ("ld", "48s"),
        ("family_id", "16s"),
        ("image_id", "16s"),
        ("version", "I"),
        ("guest_svn", "I"),
        ("id_key_algorithm", "I"),
        ("author_key_algorithm", "I"),
        ("id_key_signature", "144s"),
        ("id_public_key", "152s"),
        ("author_key_signature", "144s"),
        ("author_public_key", "152s"),
    )
    compatibility_mask: int
    author_key_enabled: int
    ld: bytes
    family_id: bytes
    image_id: bytes
    version: int
    guest_svn: int
    id_key_algorithm: int
    author_key_algorithm: int
    id_key_signature: bytes
    id_public_key: bytes
    author_key_signature: bytes
    author_public_key: bytes

    def check(self) -> None:
        self._check_mask()


@dataclass(frozen=True, slots=True)
class ErrorRange(_Header):
    """IGVM_VHS_ERROR_RANGE (16 bytes): a host-visible range the guest reports errors into."""

    TYPE: ClassVar[int] = IGVM_VHT_ERROR_RANGE
    NAME: ClassVar[str] = "ERROR_RANGE"
    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("gpa", "Q"),
        ("compatibility_mask", "I"),
        ("size_bytes", "I"),
    )
    gpa: int
    compatibility_mask: int
    size_bytes: int

    def check(self) -> None:
        self._check_mask()


@dataclass(frozen=True, slots=True)
class VbsMeasurement(_Header):
    """IGVM_VHS_VBS_MEASUREMENT (864 bytes): a signed VBS boot measurement."""

    TYPE: ClassVar[int] = IGVM_VHT_VBS_MEASUREMENT
    NAME: ClassVar[str] = "VBS_MEASUREMENT"
    WIRE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("compatibility_mask", "I"),
        ("version", "I"),
        ("product_id", "I"),
        ("module_id", "I"),
        ("security_version", "I"),
        ("policy_flags", "I"),
        ("boot_digest_algo", "I"),
        ("signing_algo", "I"),
        ("boot_measurement_digest", "64s"),
        ("signature", "256s"),
        ("public_key", "512s"),
    )
    compatibility_mask: int
    version: int
    product_id: int
    module_id: int
    security_version: int
    policy_flags: int
    boot_digest_algo: int
    signing_algo: int
    boot_measurement_digest: bytes
    signature: bytes
    public_key: bytes

    def check(self) -> None:
        self._check_mask()


@dataclass(frozen=True, slots=True)
class UnknownOptionalHeader:
    """A header with IGVM_VHT_OPTIONAL_BIT whose type is not understood: kept, not interpreted."""

    header_type: int
    payload: bytes

    NAME: ClassVar[str] = "UNKNOWN_OPTIONAL"

    @property
    def TYPE(self) -> int:
        return self.header_type

    def pack(self, file_offset: int = 0) -> bytes:
        return self.payload

    def file_data(self) -> bytes:
        return b""

    def describe(self) -> str:
        return f"UNKNOWN_OPTIONAL type={self.header_type:#x} length={len(self.payload)}"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.NAME, "type_code": self.header_type, "length": len(self.payload)}


PlatformHeader = SupportedPlatform | UnknownOptionalHeader
InitializationHeader = (
    GuestPolicy
    | RelocatableRegion
    | PageTableRelocation
    | CorimDocument
    | CorimSignature
    | CcaPolicy
    | UnknownOptionalHeader
)
DirectiveHeader = (
    ParameterArea
    | PageData
    | ParameterInsert
    | VpContext
    | RequiredMemory
    | ParameterHeader
    | SnpIdBlock
    | ErrorRange
    | VbsMeasurement
    | UnknownOptionalHeader
)
AnyHeader = PlatformHeader | InitializationHeader | DirectiveHeader

PARAMETER_TYPES: tuple[type[ParameterHeader], ...] = (
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
KNOWN_HEADER_CLASSES: tuple[type[_Header], ...] = (
    SupportedPlatform,
    GuestPolicy,
    RelocatableRegion,
    PageTableRelocation,
    CorimDocument,
    CorimSignature,
    CcaPolicy,
    ParameterArea,
    PageData,
    ParameterInsert,
    VpContext,
    RequiredMemory,
    SnpIdBlock,
    ErrorRange,
    VbsMeasurement,
    *PARAMETER_TYPES,
)
HEADER_CLASSES: dict[int, type[_Header]] = {cls.TYPE: cls for cls in KNOWN_HEADER_CLASSES}


# ------------------------------------------------- data the loader deposits into parameter areas


@dataclass(frozen=True, slots=True)
class MemoryMapEntry:
    """IGVM_VHS_MEMORY_MAP_ENTRY (24 bytes): one run of guest memory, in pages."""

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<QQHHI")
    starting_gpa_page_number: int
    number_of_pages: int
    entry_type: int = IGVM_MEMORY_MAP_ENTRY_TYPE_MEMORY
    flags: int = 0

    def pack(self) -> bytes:
        return self.LAYOUT.pack(
            self.starting_gpa_page_number, self.number_of_pages, self.entry_type, self.flags, 0
        )

    @classmethod
    def unpack(cls, raw: bytes) -> MemoryMapEntry:
        start, count, entry_type, flags, _reserved = cls.LAYOUT.unpack(raw)
        return cls(start, count, entry_type, flags)


@dataclass(frozen=True, slots=True)
class MmioRange:
    """One record of IGVM_VHS_MMIO_RANGES (16 bytes; the structure holds two)."""

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<QQ")
    starting_gpa_page_number: int
    number_of_pages: int

    def pack(self) -> bytes:
        return self.LAYOUT.pack(self.starting_gpa_page_number, self.number_of_pages)
