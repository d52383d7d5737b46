"""The L2 firmware's measured boot on the paravisor, with a real vTPM behind its CRB: L1's PCR0
events handed over by L1VTPM Detect, the payload extended into PCR 4 with TPM2_PCR_Event, and the
crypto-agile log in the platform NV index, which the verifier parses and replays to the TPM's own
PCRs. A log the firmware cannot keep, or an L1 record it cannot vouch for, stops it before it
extends anything; a log altered after the fact is refused naming the record or the PCR."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import pytest

from orchestrator.firmware import Firmware
from svsm.l1vtpm import L1VtpmService
from svsm.measurement import PcrEvent, extend_pcr, pcr_event
from svsm.scheduler import run_guests
from tdxdefs.eventlog import EV_POST_CODE, EV_S_CRTM_VERSION, EventType, TpmAlgorithm
from tdxdefs.firmware_log import (
    EVENT_LOG_NV_ATTRIBUTES,
    EVENT_LOG_NV_INDEX,
    NV_WRITE_MAX,
    PAYLOAD_PCR,
)
from tests.support.svsm_td import Paravisor
from verifier import firmware_log
from verifier.firmware_log import FirmwareLogError, PcrMismatchError, verify_firmware_log
from verifier.reference import payload_of, pcr4_for
from vtpm import wire
from vtpm.engine import TpmEngine

VERSION = b"tdp-svsm 0.1.0\0"
BANKS = {"sha256": wire.TPM_ALG_SHA256, "sha384": wire.TPM_ALG_SHA384}
EXIT_MEASURED_BOOT_FAILED = 2


@dataclass
class Booted:
    console: list[str]
    exit_code: int | None
    tpm: wire.TpmClient
    log: bytes | None

    def pcrs(self, *indexes: int) -> dict[int, dict[str, bytes]]:
        return {
            pcr: {bank: wire.pcr_read(self.tpm, alg, pcr) for bank, alg in BANKS.items()}
            for pcr in indexes
        }


def boot(firmware: Firmware, engine: TpmEngine, events: list[PcrEvent] | None = None) -> Booted:
    """Run the firmware as L1 does: L1's PCR0 events in the vTPM first (unless `events` replaces
    what Detect hands over), then the L2 with the CRB and the L1VTPM service."""
    tpm = wire.TpmClient(engine)
    measured = [
        pcr_event(0, EV_S_CRTM_VERSION, VERSION),
        pcr_event(0, EV_POST_CODE, firmware.image),
    ]
    for event in measured:
        extend_pcr(tpm, event)
    pv = Paravisor(1)
    service = L1VtpmService(measured if events is None else events)
    (guest,) = pv.guests({1: firmware.image}, tpms={1: engine.process}, service=service)
    run_guests([guest])
    public = tpm.nv_read_public(EVENT_LOG_NV_INDEX)
    log = tpm.nv_read(EVENT_LOG_NV_INDEX, public.data_size, NV_WRITE_MAX) if public else None
    return Booted(list(guest.console.lines), guest.outcome.exit_code, tpm, log)


def test_the_log_replays_to_the_tpms_pcr0_and_pcr4(firmware: Firmware, engine: TpmEngine) -> None:
    booted = boot(firmware, engine)
    assert booted.exit_code == 0, booted.console
    assert booted.log is not None
    assert booted.console[-1] == "measured boot: ok"
    public = booted.tpm.nv_read_public(EVENT_LOG_NV_INDEX)
    assert public is not None
    assert public.attributes & EVENT_LOG_NV_ATTRIBUTES == EVENT_LOG_NV_ATTRIBUTES
    assert public.attributes & wire.TPMA_NV_WRITELOCKED
    tpm_pcrs = booted.pcrs(0, PAYLOAD_PCR)
    log = verify_firmware_log(booted.log, tpm_pcrs)
    payload = payload_of(firmware.image)
    assert payload is not None and payload.startswith(b"tdpvtpm L2 payload")
    assert tpm_pcrs[PAYLOAD_PCR] == log.pcrs[PAYLOAD_PCR] == pcr4_for(payload)
    records = [(e.mr_index, e.event_type, e.data) for e in log.log.events]
    assert records == [
        (0, EventType.EV_S_CRTM_VERSION, VERSION),
        (0, EventType.EV_POST_CODE, f"{len(firmware.image)} bytes measured by L1\0".encode()),
        (PAYLOAD_PCR, EventType.EV_IPL, payload),
    ]


def test_a_log_that_would_not_fit_the_nv_index_extends_nothing(
    firmware: Firmware, engine: TpmEngine
) -> None:
    data = b"x" * 63 + b"\0"
    digests = {alg: hashlib.new(bank, data).digest() for bank, alg in BANKS.items()}
    events = [PcrEvent(0, EV_POST_CODE, data, digests)] * 12  # 12 x 164 bytes: past 2048
    booted = boot(firmware, engine, events)
    assert booted.exit_code == EXIT_MEASURED_BOOT_FAILED
    expected = 69 + 12 * 164 + 100 + len(payload_of(firmware.image) or b"")
    assert booted.console[-1] == f"measured boot: FAIL (event log bytes={expected:#x})"
    assert booted.log is None
    assert booted.pcrs(PAYLOAD_PCR)[PAYLOAD_PCR]["sha256"] == bytes(32)


def test_an_l1_record_without_both_banks_stops_the_measured_boot(
    firmware: Firmware, engine: TpmEngine
) -> None:
    both = {alg: hashlib.new(bank, VERSION).digest() for bank, alg in BANKS.items()}
    sha1_only = {wire.TPM_ALG_SHA1: bytes(20)}
    events = [PcrEvent(0, EV_S_CRTM_VERSION, VERSION, d) for d in (both, sha1_only)]
    booted = boot(firmware, engine, events)
    assert booted.exit_code == EXIT_MEASURED_BOOT_FAILED
    assert booted.console[-1] == "measured boot: FAIL (malformed L1 event at log offset 0x45)"
    assert booted.log is None
    assert booted.pcrs(PAYLOAD_PCR)[PAYLOAD_PCR]["sha384"] == bytes(48)


# --- the verifier against a real log, altered ----------------------------------------------------
@pytest.fixture
def real(firmware: Firmware, engine: TpmEngine) -> tuple[bytes, dict[int, dict[str, bytes]]]:
    booted = boot(firmware, engine)
    assert booted.log is not None
    return booted.log, booted.pcrs(0, PAYLOAD_PCR)


def test_a_truncated_log_is_refused_at_its_end(
    real: tuple[bytes, dict[int, dict[str, bytes]]],
) -> None:
    log, pcrs = real
    payload = firmware_log.parse(log).payload_event
    data_at = payload.offset + 100  # after the head, both digests and the event size
    needs = f"offset {data_at}: event data: needs {len(payload.data)} bytes"
    with pytest.raises(FirmwareLogError, match=needs):
        verify_firmware_log(log[:-10], pcrs)
    with pytest.raises(FirmwareLogError, match="offset 0: TCG_PCR_EVENT header: needs 32"):
        verify_firmware_log(log[:20], pcrs)


def test_a_tampered_digest_names_the_record(
    real: tuple[bytes, dict[int, dict[str, bytes]]],
) -> None:
    log, pcrs = real
    parsed = firmware_log.parse(log)
    payload = parsed.payload_event
    at = payload.offset + 12 + 2  # the SHA-256 digest after the head and its algorithm ID
    tampered = log[:at] + bytes([log[at] ^ 1]) + log[at + 1 :]
    with pytest.raises(FirmwareLogError, match=rf"record 2 at offset {payload.offset} \(PCR 4, "):
        verify_firmware_log(tampered, pcrs)
    image_event = parsed.log.events[1]  # its data describes the image: only the replay can tell
    at = image_event.offset + 12 + 2 + 32 + 2
    tampered = log[:at] + bytes([log[at] ^ 1]) + log[at + 1 :]
    with pytest.raises(PcrMismatchError, match="PCR 0 sha384: replayed") as caught:
        verify_firmware_log(tampered, pcrs)
    assert caught.value.mismatches == ((0, "sha384"),)


def test_an_extra_event_is_refused(real: tuple[bytes, dict[int, dict[str, bytes]]]) -> None:
    log, pcrs = real
    parsed = firmware_log.parse(log)
    payload = log[parsed.payload_event.offset :]
    with pytest.raises(PcrMismatchError, match="PCR 4 sha256: replayed") as caught:
        verify_firmware_log(log + payload, pcrs)  # the payload event twice
    assert caught.value.mismatches == ((4, "sha256"), (4, "sha384"))
    pcr7 = struct.pack("<I", 7) + log[parsed.log.events[0].offset + 4 : parsed.payload_event.offset]
    with pytest.raises(PcrMismatchError, match=r"extends PCR 7, of which the TPM gives no value"):
        verify_firmware_log(log[: parsed.payload_event.offset] + pcr7 + payload, pcrs)


def test_fill_after_the_log_and_other_algorithms_are_refused(
    real: tuple[bytes, dict[int, dict[str, bytes]]],
) -> None:
    log, pcrs = real
    with pytest.raises(FirmwareLogError, match=rf"offset {len(log)}: 16 bytes of fill"):
        verify_firmware_log(log + bytes(16), pcrs)
    sha512 = log[:60] + struct.pack("<H", TpmAlgorithm.SHA512) + log[62:]
    with pytest.raises(FirmwareLogError, match="offset 60: the Spec ID event declares SHA512"):
        verify_firmware_log(sha512, pcrs)
