"""TDREPORT_STRUCT, as TDG.MR.REPORT writes it: REPORTMACSTRUCT, TEE_TCB_INFO, TDINFO_STRUCT.

Intel TDX Module v1.5 ABI Specification, "TDREPORT_STRUCT" (1024 bytes, 1024-byte aligned),
"REPORTMACSTRUCT" (256 bytes: REPORTTYPE, CPUSVN, TEE_TCB_INFO_HASH, TEE_INFO_HASH, REPORTDATA,
MAC over bytes 0..223), "TEE_TCB_INFO" (256 bytes; TEE_TCB_SVN2 added in v1.5) and "TDINFO_STRUCT"
(512 bytes: ATTRIBUTES, XFAM, MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0..3, SERVTD_HASH).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tdxdefs.layout import Layout

TEE_TYPE_SGX = 0x00
TEE_TYPE_TDX = 0x81
REPORT_SUBTYPE_TD = 0
REPORT_VERSION_NO_SERVTD_HASH = 0
REPORT_VERSION_SERVTD_HASH = 1
MAC_SIZE = 32
CPUSVN_SIZE = 16
TEE_TCB_SVN_SIZE = 16
VALID_BIT_GRANULE = 8  # TEE_TCB_INFO.VALID: bit i marks the 8-byte granule at offset 8 * i


@dataclass(frozen=True, slots=True)
class ReportMacStruct(Layout):
    """REPORTMACSTRUCT: 256 bytes at offset 0 of TDREPORT_STRUCT."""

    NAME: ClassVar[str] = "REPORTMACSTRUCT"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("tee_type", "B"),
        ("subtype", "B"),
        ("version", "B"),
        ("reserved_type", "B"),
        ("reserved1", "12s"),
        ("cpusvn", "16s"),
        ("tee_tcb_info_hash", "48s"),
        ("tee_info_hash", "48s"),
        ("reportdata", "64s"),
        ("reserved2", "32s"),
        ("mac", "32s"),
    )
    SIZE: ClassVar[int] = 256

    tee_type: int
    subtype: int
    version: int
    reserved_type: int
    reserved1: bytes
    cpusvn: bytes
    tee_tcb_info_hash: bytes
    tee_info_hash: bytes
    reportdata: bytes
    reserved2: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class TeeTcbInfo(Layout):
    """TEE_TCB_INFO: 256 bytes at offset 256 of TDREPORT_STRUCT."""

    NAME: ClassVar[str] = "TEE_TCB_INFO"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("valid", "Q"),
        ("tee_tcb_svn", "16s"),
        ("mrseam", "48s"),
        ("mrsignerseam", "48s"),
        ("attributes", "Q"),
        ("tee_tcb_svn2", "16s"),
        ("reserved", "112s"),
    )
    SIZE: ClassVar[int] = 256
    # The fields VALID marks in a v1.0-layout report: TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM, ATTRIBUTES.
    VALID_FIELDS: ClassVar[tuple[str, ...]] = (
        "tee_tcb_svn",
        "mrseam",
        "mrsignerseam",
        "attributes",
    )

    valid: int
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    attributes: int
    tee_tcb_svn2: bytes
    reserved: bytes

    @classmethod
    def valid_bitmap(cls) -> int:
        """VALID with bit i set for each 8-byte granule of a field in VALID_FIELDS."""
        bits = 0
        for name in cls.VALID_FIELDS:
            start, size = cls.OFFSETS[name], cls.SIZES[name]
            for granule in range(start // VALID_BIT_GRANULE, (start + size) // VALID_BIT_GRANULE):
                bits |= 1 << granule
        return bits


@dataclass(frozen=True, slots=True)
class TdInfoStruct(Layout):
    """TDINFO_STRUCT: 512 bytes at offset 512 of TDREPORT_STRUCT."""

    NAME: ClassVar[str] = "TDINFO_STRUCT"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("attributes", "Q"),
        ("xfam", "Q"),
        ("mrtd", "48s"),
        ("mrconfigid", "48s"),
        ("mrowner", "48s"),
        ("mrownerconfig", "48s"),
        ("rtmr0", "48s"),
        ("rtmr1", "48s"),
        ("rtmr2", "48s"),
        ("rtmr3", "48s"),
        ("servtd_hash", "48s"),
        ("reserved", "64s"),
    )
    SIZE: ClassVar[int] = 512

    attributes: int
    xfam: int
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    servtd_hash: bytes
    reserved: bytes

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)


REPORTMACSTRUCT_OFFSET = 0
TEE_TCB_INFO_OFFSET = REPORTMACSTRUCT_OFFSET + ReportMacStruct.SIZE
TDINFO_OFFSET = TEE_TCB_INFO_OFFSET + TeeTcbInfo.SIZE
TDREPORT_STRUCT_SIZE = TDINFO_OFFSET + TdInfoStruct.SIZE
MAC_FIELD_OFFSET = REPORTMACSTRUCT_OFFSET + ReportMacStruct.offset("mac")
TEE_TCB_INFO_HASH_OFFSET = REPORTMACSTRUCT_OFFSET + ReportMacStruct.offset("tee_tcb_info_hash")
TEE_INFO_HASH_OFFSET = REPORTMACSTRUCT_OFFSET + ReportMacStruct.offset("tee_info_hash")
REPORTDATA_OFFSET = REPORTMACSTRUCT_OFFSET + ReportMacStruct.offset("reportdata")
