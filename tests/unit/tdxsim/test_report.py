"""TDREPORT_STRUCT (Intel TDX Module ABI Specification): its offsets, hashes, simulated MAC."""

from __future__ import annotations

import hashlib

import pytest

from tdxdefs.report import ReportMacStruct, TdInfoStruct, TeeTcbInfo
from tdxdefs.tdcall import Leaf
from tdxsim.attestation.report import (
    SIMULATED_MRSEAM,
    ReportMacKey,
    TdReportBuilder,
    TdReportError,
    build_tdreport,
    verify_tdreport,
)
from tdxsim.module.attestation_interface import TdInfo
from tdxsim.testing import TdHarness

KEY = ReportMacKey.from_seed(b"report tests")
REPORTDATA = bytes(range(64))


def _td(**changes: object) -> TdInfo:
    fields: dict[str, object] = {
        "attributes": 0x10000000,
        "xfam": 0xE7,
        "mrtd": b"\x11" * 48,
        "mrconfigid": b"\x22" * 48,
        "mrowner": b"\x33" * 48,
        "mrownerconfig": b"\x44" * 48,
        "rtmr": (b"\xa0" * 48, b"\xa1" * 48, b"\xa2" * 48, b"\xa3" * 48),
        "num_l2_vms": 1,
        "num_vcpus": 1,
    }
    fields.update(changes)
    return TdInfo(**fields)  # type: ignore[arg-type]


def test_struct_sizes_follow_reference() -> None:
    assert ReportMacStruct.SIZE == 256
    assert TeeTcbInfo.SIZE == 256
    assert TdInfoStruct.SIZE == 512


def test_fields_sit_at_reference_offsets() -> None:
    raw = build_tdreport(_td(), REPORTDATA, KEY)
    assert len(raw) == 1024
    assert raw[0:4] == bytes([0x81, 0, 0, 0])  # REPORTTYPE: TDX, subtype 0, version 0
    assert raw[128:192] == REPORTDATA
    assert raw[280:328] == SIMULATED_MRSEAM
    assert raw[328:376] == bytes(48)  # MRSIGNERSEAM
    assert int.from_bytes(raw[512:520], "little") == 0x10000000
    assert int.from_bytes(raw[520:528], "little") == 0xE7
    assert raw[528:576] == b"\x11" * 48
    assert raw[576:624] == b"\x22" * 48
    assert raw[624:672] == b"\x33" * 48
    assert raw[672:720] == b"\x44" * 48
    for i, offset in enumerate((720, 768, 816, 864)):
        assert raw[offset : offset + 48] == bytes([0xA0 + i]) * 48
    assert raw[912:960] == bytes(48)  # SERVTD_HASH unused


def test_hashes_cover_tcb_info_and_td_info() -> None:
    raw = build_tdreport(_td(), REPORTDATA, KEY)
    assert raw[32:80] == hashlib.sha384(raw[256:512]).digest()
    assert raw[80:128] == hashlib.sha384(raw[512:1024]).digest()


def test_valid_bitmap_marks_svn_mrseam_mrsignerseam_attributes() -> None:
    raw = build_tdreport(_td(), REPORTDATA, KEY)
    valid = int.from_bytes(raw[256:264], "little")
    assert valid == 0xFFFE  # 8-byte granules 1..15: TEE_TCB_SVN .. ATTRIBUTES
    assert not valid & 1


def test_simulated_mrseam_is_labelled() -> None:
    assert (
        hashlib.sha384(b"tdxsim SIMULATED TDX module: no real MRSEAM").digest() == SIMULATED_MRSEAM
    )


def test_verify_reads_back_fields() -> None:
    report = verify_tdreport(build_tdreport(_td(), REPORTDATA, KEY), KEY)
    assert report.report_mac.reportdata == REPORTDATA
    assert report.td_info.mrtd == b"\x11" * 48
    assert report.td_info.rtmrs[3] == b"\xa3" * 48


def _reserved_field_at(offset: int) -> str:
    """The reserved field (as "STRUCTURE.field") holding TDREPORT byte `offset`, or ""."""
    for base, layout in ((0, ReportMacStruct), (256, TeeTcbInfo), (512, TdInfoStruct)):
        for name, _code in layout.FIELDS:
            start = base + layout.offset(name)
            if name.startswith("reserved") and start <= offset < start + layout.field_size(name):
                return f"{layout.NAME}.{name}"
    return ""


def test_every_flipped_byte_is_caught_and_named() -> None:
    raw = build_tdreport(_td(), REPORTDATA, KEY)
    for offset in range(len(raw)):
        tampered = bytearray(raw)
        tampered[offset] ^= 0x01
        with pytest.raises(TdReportError) as err:
            verify_tdreport(bytes(tampered), KEY)
        if _reserved_field_at(offset):
            assert err.value.field == _reserved_field_at(offset), offset
            assert err.value.offset <= offset
        elif offset < 256:
            assert err.value.field in ("MAC", "REPORTTYPE.type"), offset
        elif offset < 512:
            assert err.value.field == "TEE_TCB_INFO_HASH", offset
        else:
            assert err.value.field == "TEE_INFO_HASH", offset


def test_another_platform_key_rejects_the_mac() -> None:
    raw = build_tdreport(_td(), REPORTDATA, KEY)
    with pytest.raises(TdReportError, match="MAC at offset 224"):
        verify_tdreport(raw, ReportMacKey())


def test_wrong_size_is_named() -> None:
    with pytest.raises(TdReportError, match="1023 bytes, expected 1024"):
        verify_tdreport(bytes(1023), KEY)


@pytest.mark.parametrize(
    ("changes", "data", "name"),
    [
        ({}, bytes(63), "REPORTDATA"),
        ({"mrtd": bytes(47)}, REPORTDATA, "MRTD"),
        ({"rtmr": (bytes(48), bytes(48), bytes(49), bytes(48))}, REPORTDATA, "RTMR2"),
    ],
)
def test_bad_inputs_are_named(changes: dict[str, object], data: bytes, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        build_tdreport(_td(**changes), data, KEY)


def test_keys_are_per_instance_unless_seeded() -> None:
    raw = build_tdreport(_td(), REPORTDATA, ReportMacKey())
    assert raw[224:256] != build_tdreport(_td(), REPORTDATA, ReportMacKey())[224:256]
    seeded = ReportMacKey.from_seed(b"report tests")
    assert build_tdreport(_td(), REPORTDATA, seeded) == build_tdreport(_td(), REPORTDATA, KEY)
    with pytest.raises(ValueError, match="32 bytes"):
        ReportMacKey(bytes(16))


def test_mr_report_tdcall_writes_a_verifiable_tdreport() -> None:
    builder = TdReportBuilder(KEY)
    h = TdHarness.default(ram_mib=4, attestation=builder, xfam=0xE7)
    h.accept(0, 0x200000)
    digest = hashlib.sha384(b"event").digest()
    h.write(0x3000, digest)
    h.tdcall(Leaf.MR_RTMR_EXTEND, rcx=0x3000, rdx=1)
    h.write(0x2040, REPORTDATA)
    assert h.tdcall(Leaf.MR_REPORT, rcx=0x1000, rdx=0x2040, r8=0).rax == 0
    report = builder.verify(h.read(0x1000, 1024))
    assert report.report_mac.reportdata == REPORTDATA
    assert report.td_info.mrtd == h.td.mrtd
    assert report.td_info.xfam == 0xE7
    assert report.td_info.rtmr1 == hashlib.sha384(bytes(48) + digest).digest()
