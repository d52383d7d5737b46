"""TDREPORT_STRUCT as TDG.MR.REPORT writes it, with a simulated MAC.

Layout: `tdxdefs.report`, after the Intel TDX Module v1.5 ABI Specification (TDREPORT_STRUCT,
REPORTMACSTRUCT, TEE_TCB_INFO and TDINFO_STRUCT).

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
from dataclasses import dataclass
from typing import Self

from tdxdefs.errors import LayoutError
from tdxdefs.report import (
    CPUSVN_SIZE,
    MAC_FIELD_OFFSET,
    MAC_SIZE,
    REPORT_SUBTYPE_TD,
    REPORT_VERSION_NO_SERVTD_HASH,
    REPORTMACSTRUCT_OFFSET,
    TDINFO_OFFSET,
    TEE_INFO_HASH_OFFSET,
    TEE_TCB_INFO_HASH_OFFSET,
    TEE_TCB_INFO_OFFSET,
    TEE_TCB_SVN_SIZE,
    TEE_TYPE_TDX,
    ReportMacStruct,
    TdInfoStruct,
    TeeTcbInfo,
)
from tdxdefs.tdcall import REPORTDATA_SIZE, RTMR_COUNT, SHA384_SIZE, TDREPORT_SIZE
from tdxsim.errors import TdxsimError
from tdxsim.module.attestation_interface import TdInfo

MAC_KEY_SIZE = 32

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
        try:
            return cls(
                ReportMacStruct.unpack(raw, REPORTMACSTRUCT_OFFSET),
                TeeTcbInfo.unpack(raw, TEE_TCB_INFO_OFFSET),
                TdInfoStruct.unpack(raw, TDINFO_OFFSET),
            )
        except LayoutError as exc:
            raise TdReportError(f"{exc.structure}.{exc.field}", exc.offset, exc.reason) from exc


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
        tee_tcb_svn2=tee_tcb_svn,  # the module running now is the one the TD was built on
        reserved=bytes(TeeTcbInfo.field_size("reserved")),
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
        bytes(TdInfoStruct.field_size("reserved")),
    )
    unsigned = ReportMacStruct(
        tee_type=TEE_TYPE_TDX,
        subtype=REPORT_SUBTYPE_TD,
        version=REPORT_VERSION_NO_SERVTD_HASH,
        reserved_type=0,
        reserved1=bytes(ReportMacStruct.field_size("reserved1")),
        cpusvn=cpusvn,
        tee_tcb_info_hash=hashlib.sha384(tcb.pack()).digest(),
        tee_info_hash=hashlib.sha384(info.pack()).digest(),
        reportdata=report_data,
        reserved2=bytes(ReportMacStruct.field_size("reserved2")),
        mac=bytes(MAC_SIZE),
    )
    mac = key.mac(unsigned.pack()[:MAC_FIELD_OFFSET])
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
