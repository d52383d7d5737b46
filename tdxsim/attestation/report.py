"""TDREPORT_STRUCT as TDG.MR.REPORT writes it, with a simulated MAC.

Layout: Intel TDX Module v1.5 ABI Specification, TDREPORT_STRUCT, REPORTMACSTRUCT, TEE_TCB_INFO
and TDINFO_STRUCT.

On hardware the MAC is computed and checked inside the CPU with a key that never leaves it; here it
is SIMULATED: HMAC-SHA-256 under a key held by one simulated platform instance, over REPORTMACSTRUCT
bytes 0..223 (everything before the MAC field). TEE_TCB_INFO_HASH and TEE_INFO_HASH are SHA-384 of
the full 256-byte TEE_TCB_INFO and 512-byte TDINFO_STRUCT, so the MAC covers the whole report.
MRSEAM is a fixed SIMULATED value (no TDX module is measured); REPORTTYPE.version is 0 because
SERVTD_HASH is unused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from tdxsim.abi import REPORTDATA_SIZE, RTMR_COUNT, SHA384_SIZE, TDREPORT_SIZE
from tdxsim.errors import TdxsimError
from tdxsim.module.attestation_interface import TdInfo
from verifier.layout import StructLayout

TEE_TYPE_TDX = 0x81
REPORT_SUBTYPE_TD = 0
REPORT_VERSION_NO_SERVTD_HASH = 0
MAC_KEY_SIZE = 32
MAC_SIZE = 32
CPUSVN_SIZE = 16
TEE_TCB_SVN_SIZE = 16
VALID_BIT_GRANULE = 8
REPORTMAC_RESERVED1_SIZE = 12
REPORTMAC_RESERVED2_SIZE = 32
TEE_TCB_INFO_RESERVED_SIZE = 128
TDINFO_RESERVED_SIZE = 64
TEE_TCB_INFO_HASH_OFFSET = 32
TEE_INFO_HASH_OFFSET = 80

SIMULATED_MRSEAM = hashlib.sha384(b"tdxsim SIMULATED TDX module: no real MRSEAM").digest()
SIMULATED_MRSIGNERSEAM = bytes(SHA384_SIZE)  # 0, as for an Intel-signed module
SIMULATED_TEE_TCB_SVN = bytes([1, 5] + [0] * (TEE_TCB_SVN_SIZE - 2))  # minor 1, major 5
SIMULATED_CPUSVN = bytes(CPUSVN_SIZE)


class TdReportError(TdxsimError, ValueError):
    """A TDREPORT is malformed or its MAC/hashes do not verify; names the field."""

    def __init__(self, field: str, offset: int, reason: str) -> None:
        super().__init__(f"TDREPORT {field} at offset {offset}: {reason}")
        self.field = field
        self.offset = offset


@dataclass(frozen=True)
class ReportMacStruct(StructLayout):
    """REPORTMACSTRUCT: 256 bytes at offset 0."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<BBBB12s16s48s48s64s32s32s")
    MAC_OFFSET: ClassVar[int] = 224

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


@dataclass(frozen=True)
class TeeTcbInfo(StructLayout):
    """TEE_TCB_INFO: 256 bytes at offset 256 (TEE_TCB_SVN2 kept inside the reserved area)."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<Q16s48s48sQ128s")
    # (offset, size) of the fields that VALID marks, relative to TEE_TCB_INFO.
    VALID_FIELDS: ClassVar[tuple[tuple[int, int], ...]] = ((8, 16), (24, 48), (72, 48), (120, 8))

    valid: int
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    attributes: int
    reserved: bytes

    @classmethod
    def valid_bitmap(cls) -> int:
        """Bit i set for each 8-byte granule of a valid field."""
        bits = 0
        for offset, size in cls.VALID_FIELDS:
            for granule in range(offset // VALID_BIT_GRANULE, (offset + size) // VALID_BIT_GRANULE):
                bits |= 1 << granule
        return bits


@dataclass(frozen=True)
class TdInfoStruct(StructLayout):
    """TDINFO_STRUCT: 512 bytes at offset 512."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<QQ48s48s48s48s48s48s48s48s48s64s")

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
TEE_TCB_INFO_OFFSET = REPORTMACSTRUCT_OFFSET + ReportMacStruct.FORMAT.size
TDINFO_OFFSET = TEE_TCB_INFO_OFFSET + TeeTcbInfo.FORMAT.size
MAC_FIELD_OFFSET = REPORTMACSTRUCT_OFFSET + ReportMacStruct.MAC_OFFSET


@dataclass(frozen=True)
class TdReport:
    """TDREPORT_STRUCT: 1024 bytes = REPORTMACSTRUCT, TEE_TCB_INFO, TDINFO_STRUCT."""

    report_mac: ReportMacStruct
    tee_tcb_info: TeeTcbInfo
    td_info: TdInfoStruct

    def pack(self) -> bytes:
        return self.report_mac.pack() + self.tee_tcb_info.pack() + self.td_info.pack()

    @classmethod
    def unpack(cls, raw: bytes) -> Self:
        if len(raw) != TDREPORT_SIZE:
            raise TdReportError("TDREPORT_STRUCT", 0, f"{len(raw)} bytes, expected {TDREPORT_SIZE}")
        return cls(
            ReportMacStruct.unpack(raw[REPORTMACSTRUCT_OFFSET:TEE_TCB_INFO_OFFSET]),
            TeeTcbInfo.unpack(raw[TEE_TCB_INFO_OFFSET:TDINFO_OFFSET]),
            TdInfoStruct.unpack(raw[TDINFO_OFFSET:TDREPORT_SIZE]),
        )


class ReportMacKey:
    """The SIMULATED per-platform report MAC key (on hardware it stays inside the CPU)."""

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(MAC_KEY_SIZE)
        if len(key) != MAC_KEY_SIZE:
            raise ValueError(f"report MAC key must be {MAC_KEY_SIZE} bytes, got {len(key)}")
        self._key = key

    @classmethod
    def from_seed(cls, seed: bytes) -> Self:
        """A reproducible key for tests."""
        return cls(hashlib.sha256(b"tdxsim report MAC key" + seed).digest())

    def mac(self, mac_input: bytes) -> bytes:
        """HMAC-SHA-256 over REPORTMACSTRUCT bytes before the MAC field."""
        return hmac.new(self._key, mac_input, hashlib.sha256).digest()[:MAC_SIZE]


def _check_size(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")


def build_tdreport(
    td: TdInfo,
    report_data: bytes,
    key: ReportMacKey,
    *,
    cpusvn: bytes = SIMULATED_CPUSVN,
    tee_tcb_svn: bytes = SIMULATED_TEE_TCB_SVN,
    mrseam: bytes = SIMULATED_MRSEAM,
) -> bytes:
    """The 1024-byte TDREPORT_STRUCT for `td` and REPORTDATA, MACed with the platform key."""
    _check_size("REPORTDATA", report_data, REPORTDATA_SIZE)
    _check_size("CPUSVN", cpusvn, CPUSVN_SIZE)
    _check_size("TEE_TCB_SVN", tee_tcb_svn, TEE_TCB_SVN_SIZE)
    _check_size("MRSEAM", mrseam, SHA384_SIZE)
    if len(td.rtmr) != RTMR_COUNT:
        raise ValueError(f"TD info has {len(td.rtmr)} RTMRs, expected {RTMR_COUNT}")
    for name, value in (
        ("MRTD", td.mrtd),
        ("MRCONFIGID", td.mrconfigid),
        ("MROWNER", td.mrowner),
        ("MROWNERCONFIG", td.mrownerconfig),
        *((f"RTMR{i}", r) for i, r in enumerate(td.rtmr)),
    ):
        _check_size(name, value, SHA384_SIZE)
    tcb = TeeTcbInfo(
        valid=TeeTcbInfo.valid_bitmap(),
        tee_tcb_svn=tee_tcb_svn,
        mrseam=mrseam,
        mrsignerseam=SIMULATED_MRSIGNERSEAM,
        attributes=0,
        reserved=bytes(TEE_TCB_INFO_RESERVED_SIZE),
    )
    info = TdInfoStruct(
        td.attributes,
        td.xfam,
        td.mrtd,
        td.mrconfigid,
        td.mrowner,
        td.mrownerconfig,
        *td.rtmr,
        bytes(SHA384_SIZE),
        bytes(TDINFO_RESERVED_SIZE),
    )
    unsigned = ReportMacStruct(
        tee_type=TEE_TYPE_TDX,
        subtype=REPORT_SUBTYPE_TD,
        version=REPORT_VERSION_NO_SERVTD_HASH,
        reserved_type=0,
        reserved1=bytes(REPORTMAC_RESERVED1_SIZE),
        cpusvn=cpusvn,
        tee_tcb_info_hash=hashlib.sha384(tcb.pack()).digest(),
        tee_info_hash=hashlib.sha384(info.pack()).digest(),
        reportdata=report_data,
        reserved2=bytes(REPORTMAC_RESERVED2_SIZE),
        mac=bytes(MAC_SIZE),
    )
    mac = key.mac(unsigned.pack()[: ReportMacStruct.MAC_OFFSET])
    signed = dataclasses.replace(unsigned, mac=mac)
    return TdReport(signed, tcb, info).pack()


def verify_tdreport(raw: bytes, key: ReportMacKey) -> TdReport:
    """Check MAC and both hashes, as the quoting enclave does before quoting; return it parsed."""
    report = TdReport.unpack(raw)
    mac = report.report_mac
    if mac.tee_type != TEE_TYPE_TDX:
        raise TdReportError(
            "REPORTTYPE.type",
            REPORTMACSTRUCT_OFFSET,
            f"{mac.tee_type:#x}, expected {TEE_TYPE_TDX:#x}",
        )
    expected = key.mac(raw[REPORTMACSTRUCT_OFFSET:MAC_FIELD_OFFSET])
    if not hmac.compare_digest(expected, mac.mac):
        raise TdReportError(
            "MAC", MAC_FIELD_OFFSET, "does not verify with this platform's report key"
        )
    if hashlib.sha384(raw[TEE_TCB_INFO_OFFSET:TDINFO_OFFSET]).digest() != mac.tee_tcb_info_hash:
        raise TdReportError(
            "TEE_TCB_INFO_HASH",
            REPORTMACSTRUCT_OFFSET + TEE_TCB_INFO_HASH_OFFSET,
            "does not match SHA-384 of TEE_TCB_INFO",
        )
    if hashlib.sha384(raw[TDINFO_OFFSET:TDREPORT_SIZE]).digest() != mac.tee_info_hash:
        raise TdReportError(
            "TEE_INFO_HASH",
            REPORTMACSTRUCT_OFFSET + TEE_INFO_HASH_OFFSET,
            "does not match SHA-384 of TDINFO_STRUCT",
        )
    return report


class TdReportBuilder:
    """The AttestationInterface the module model calls for TDG.MR.REPORT: one simulated platform."""

    def __init__(self, key: ReportMacKey | None = None) -> None:
        self.key = key if key is not None else ReportMacKey()

    def tdreport(self, td_info: TdInfo, report_data: bytes) -> bytes:
        return build_tdreport(td_info, report_data, self.key)

    def verify(self, raw: bytes) -> TdReport:
        return verify_tdreport(raw, self.key)
