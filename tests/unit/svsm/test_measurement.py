"""Measurements: the CC event log replays to the RTMRs in a TDREPORT; PCR0 in two banks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from svsm import eventlog
from svsm.measurement import MeasurementError, Rtmrs, extend_pcr, pcr_event
from svsm.tdcall import TdcallError
from tdxdefs.eventlog import EV_PLATFORM_CONFIG_FLAGS, EV_S_CRTM_VERSION
from tests.support.svsm_td import Td
from vtpm import wire
from vtpm.attest import cc_event_log_separators
from vtpm.engine import TpmEngine

WORK = 0x200000
RTMR_OFFSETS = (720, 768, 816, 864)  # TDREPORT_STRUCT (Intel TDX Module ABI Specification)


def tdreport_rtmrs(td: Td) -> tuple[bytes, ...]:
    td.memory.write(WORK + 0x1000, bytes(64))
    td.tdcall.mr_report(WORK + 0x400, WORK + 0x1000)
    report = td.memory.read(WORK + 0x400, 1024)
    return tuple(report[o : o + 48] for o in RTMR_OFFSETS)


def test_event_log_replays_to_the_rtmrs_in_a_tdreport(td: Td) -> None:
    td.memory.accept(WORK, 0x200000)
    rtmrs = Rtmrs(td.tdcall, td.memory, WORK + 0x40)
    rtmrs.extend(0, EV_PLATFORM_CONFIG_FLAGS, b"launch parameters")
    rtmrs.extend(2, EV_PLATFORM_CONFIG_FLAGS, b"x", hashlib.sha384(b"other").digest())
    rtmrs.separators()
    measured = tdreport_rtmrs(td)
    assert measured == rtmrs.expected()
    parsed = eventlog.parse(rtmrs.event_log())
    assert parsed == rtmrs.events
    assert eventlog.replay(parsed) == measured
    assert measured[0] != bytes(48) and measured[1] != measured[0]


def test_separators_only_log_is_the_vtpm_one() -> None:
    assert eventlog.encode(eventlog.separator(i) for i in range(4)) == cc_event_log_separators()


def test_a_tampered_log_no_longer_replays(td: Td) -> None:
    td.memory.accept(WORK, 0x200000)
    rtmrs = Rtmrs(td.tdcall, td.memory, WORK)
    rtmrs.extend(0, EV_PLATFORM_CONFIG_FLAGS, b"launch parameters")
    log = bytearray(rtmrs.event_log())
    log[-30] ^= 1  # a byte of the digest
    assert eventlog.replay(eventlog.parse(bytes(log)))[0] != tdreport_rtmrs(td)[0]


@pytest.mark.parametrize(
    ("cut", "field"), [(10, "TCG_PCR_EVENT.digest"), (-3, "event data"), (-60, "digest")]
)
def test_truncated_log_names_offset_and_field(td: Td, cut: int, field: str) -> None:
    td.memory.accept(WORK, 0x200000)
    rtmrs = Rtmrs(td.tdcall, td.memory, WORK)
    rtmrs.extend(1, EV_PLATFORM_CONFIG_FLAGS, b"some event data")
    with pytest.raises(eventlog.EventLogError, match=f"offset \\d+: {field}"):
        eventlog.parse(rtmrs.event_log()[:cut])


def test_bad_rtmr_index_and_digest(td: Td) -> None:
    td.memory.accept(WORK, 0x200000)
    rtmrs = Rtmrs(td.tdcall, td.memory, WORK)
    with pytest.raises(MeasurementError, match="RTMR index 4"):
        rtmrs.extend(4, 0, b"")
    with pytest.raises(MeasurementError, match="digest of 32 bytes"):
        rtmrs.extend(0, 0, b"", bytes(32))
    with pytest.raises(MeasurementError, match="not 64-byte aligned"):
        Rtmrs(td.tdcall, td.memory, WORK + 8)
    assert not rtmrs.events


def test_rtmr_extend_error_names_the_leaf(td: Td) -> None:
    with pytest.raises(TdcallError, match=r"TDG\.MR\.RTMR\.EXTEND failed"):
        td.tdcall.rtmr_extend(0x7FF000, 0)  # a pending page: the module refuses


@pytest.fixture
def tpm() -> Iterator[wire.TpmClient]:
    engine = TpmEngine()
    try:
        engine.power_on()
        client = wire.TpmClient(engine)
        client.startup_clear()
        yield client
    finally:
        engine.close()


def test_pcr0_extended_in_sha256_and_sha384(tpm: wire.TpmClient) -> None:
    event = pcr_event(0, EV_S_CRTM_VERSION, b"tdp-svsm 0.1.0\0")
    extend_pcr(tpm, event)
    for bank, name, size in (
        (wire.TPM_ALG_SHA256, "sha256", 32),
        (wire.TPM_ALG_SHA384, "sha384", 48),
    ):
        digest = hashlib.new(name, b"tdp-svsm 0.1.0\0").digest()
        assert event.digests[bank] == digest
        assert wire.pcr_read(tpm, bank, 0) == hashlib.new(name, bytes(size) + digest).digest()


def test_pcr_extend_refusal_is_named(tpm: wire.TpmClient) -> None:
    with pytest.raises(MeasurementError, match="PCR30 event 0x8"):
        extend_pcr(tpm, pcr_event(30, EV_S_CRTM_VERSION, b"v"))
