"""The L2 firmware's measured-boot log, as a verifier reads it from the vTPM's NV index.

The log (`tdxdefs.firmware_log`) is a TCG crypto-agile event log (TCG PC Client Platform Firmware
Profile, section 10): a Spec ID event declaring SHA-256 and SHA-384, then TCG_PCR_EVENT2 records
each carrying both digests, L1's first (PCR 0: its version, the L2 image), the firmware's payload
event (PCR 4, EV_IPL) last. The NV index holds the log's exact length, so no fill may follow it.

`verify_firmware_log` parses it strictly, checks each record whose event data is what was measured
(EV_S_CRTM_VERSION, the payload's EV_IPL) against its own digests, replays every PCR it extends
in both banks (PCR = H(PCR || digest), TCG TPM 2.0 Library, Part 1, PCR extend) and compares the
result with the PCR values the TPM reported and, when given, with the reference values computed
from the image. Every error names the record (its number and byte offset) or the PCR and bank.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from tdxdefs.eventlog import EventType, TcgPcrEvent, TpmAlgorithm
from tdxdefs.firmware_log import EVENT_LOG_MAX, PAYLOAD_EVENT_TYPE, PAYLOAD_PCR
from tdxdefs.tpm import DIGEST_SIZES
from verifier import eventlog
from verifier.errors import VerificationError
from verifier.eventlog import CcEvent, EventLog
from verifier.reference import ReferenceValues

BANKS: dict[int, str] = {TpmAlgorithm.SHA256: "sha256", TpmAlgorithm.SHA384: "sha384"}
# records whose event data is exactly what was measured, so their digests can be recomputed
SELF_DESCRIBING = frozenset({EventType.EV_S_CRTM_VERSION, PAYLOAD_EVENT_TYPE})
SPEC_ID_ALGORITHMS_OFFSET = 60  # TCG_PCR_EVENT header (32) + TCG_EfiSpecIDEvent fields (28)

Pcrs = dict[int, dict[str, bytes]]  # PCR index -> bank name -> value


class FirmwareLogError(VerificationError, ValueError):
    """The firmware's event log does not parse, or a record contradicts itself; names the record
    or the byte offset."""


class PcrMismatchError(VerificationError):
    """The log replays to PCR values that differ from the expected ones; `mismatches` lists each
    (PCR, bank) that differs."""

    def __init__(self, message: str, mismatches: list[tuple[int, str]]) -> None:
        super().__init__(message)
        self.mismatches = tuple(mismatches)


def describe(event: CcEvent) -> str:
    """'record N at offset O (PCR p, TYPE)', how every error names a record."""
    kind = eventlog.event_type_name(event.event_type)
    return f"record {event.number} at offset {event.offset} (PCR {event.mr_index}, {kind})"


@dataclass(frozen=True)
class FirmwareLog:
    """A parsed firmware log and the PCR values it replays to."""

    log: EventLog
    pcrs: Pcrs

    @property
    def payload_event(self) -> CcEvent:
        """The firmware's own record: the last one (checked by `parse`)."""
        return self.log.events[-1]


def _parse(data: bytes) -> EventLog:
    try:
        return eventlog.parse(data)
    except eventlog.EventLogError as exc:
        raise FirmwareLogError(
            f"firmware event log offset {exc.offset}: {exc.field}: {exc.reason}"
        ) from exc


def _parse_log(data: bytes) -> EventLog:
    if len(data) > EVENT_LOG_MAX:
        raise FirmwareLogError(
            f"firmware event log: {len(data)} bytes, an NV index holds at most {EVENT_LOG_MAX}"
        )
    header = TcgPcrEvent.SIZE
    if len(data) >= header:  # the Spec ID event alone first: its algorithms decide the rest
        header += TcgPcrEvent.unpack(data).event_size
    spec = _parse(data[:header]).spec
    if spec.algorithms != {alg: DIGEST_SIZES[alg] for alg in BANKS}:
        declared = ", ".join(
            f"{eventlog.algorithm_name(a)} ({n} bytes)" for a, n in spec.algorithms.items()
        )
        raise FirmwareLogError(
            f"firmware event log offset {SPEC_ID_ALGORITHMS_OFFSET}: the Spec ID event declares "
            f"{declared}; expected SHA256 (32 bytes) and SHA384 (48 bytes)"
        )
    log = _parse(data)
    if log.padding:
        raise FirmwareLogError(
            f"firmware event log offset {log.end}: {log.padding} bytes of fill after the last "
            "record; the NV index holds the log's exact length"
        )
    return log


def _check_record(event: CcEvent) -> None:
    missing = [BANKS[a] for a in BANKS if a not in event.digests]
    if missing and event.extends:
        raise FirmwareLogError(f"{describe(event)}: no {' or '.join(missing)} digest")
    if event.event_type in SELF_DESCRIBING:
        for alg, bank in BANKS.items():
            if hashlib.new(bank, event.data).digest() != event.digests[alg]:
                raise FirmwareLogError(
                    f"{describe(event)}: its {bank} digest {event.digests[alg].hex()} is not "
                    f"the digest of its {len(event.data)} bytes of event data"
                )


def replay(events: list[CcEvent]) -> Pcrs:
    """Every PCR the events extend, from zero, in the SHA-256 and SHA-384 banks."""
    pcrs: Pcrs = {}
    for event in events:
        if not event.extends:
            continue
        values = pcrs.setdefault(
            event.mr_index, {bank: bytes(DIGEST_SIZES[alg]) for alg, bank in BANKS.items()}
        )
        for alg, bank in BANKS.items():
            values[bank] = hashlib.new(bank, values[bank] + event.digests[alg]).digest()
    return pcrs


def parse(data: bytes) -> FirmwareLog:
    """Parse the NV index's bytes strictly, check each record, and replay the PCRs."""
    log = _parse_log(bytes(data))
    for event in log.events:
        _check_record(event)
    last = log.events[-1] if log.events else None
    if last is None or (last.mr_index, last.event_type) != (PAYLOAD_PCR, PAYLOAD_EVENT_TYPE):
        where = describe(last) if last else f"offset {log.end}"
        raise FirmwareLogError(
            f"firmware event log: the last record ({where}) is not the firmware's payload event "
            f"(PCR {PAYLOAD_PCR}, EV_IPL)"
        )
    return FirmwareLog(log, replay(log.events))


def check_pcrs(
    log: FirmwareLog,
    expected: Mapping[int, Mapping[str, bytes]],
    source: str,
    *,
    every_pcr: bool = True,
) -> None:
    """Raise PcrMismatchError naming every PCR and bank where the replay differs from `expected`
    (what `source` says: the TPM, the reference); with `every_pcr`, each PCR the log extends must
    be in `expected`."""
    for event in log.log.events:
        if every_pcr and event.extends and event.mr_index not in expected:
            raise PcrMismatchError(
                f"{describe(event)} extends PCR {event.mr_index}, of which {source} gives no value",
                [(event.mr_index, bank) for bank in BANKS.values()],
            )
    bad: list[tuple[int, str]] = []
    details = []
    for pcr, banks in sorted(expected.items()):
        for bank, want in banks.items():
            got = log.pcrs.get(pcr, {}).get(bank, bytes(len(want)))
            if got != want:
                bad.append((pcr, bank))
                details.append(f"PCR {pcr} {bank}: replayed {got.hex()}, {source} {want.hex()}")
    if bad:
        raise PcrMismatchError(
            "the firmware event log does not replay to " + source + ": " + "; ".join(details), bad
        )


def check_reference(log: FirmwareLog, reference: ReferenceValues) -> None:
    """The payload event carries the image's payload, and the replayed PCR 0 and PCR 4 are the
    reference values (PCR 0 only when the reference has it: it needs the L1 version)."""
    if reference.payload is not None and log.payload_event.data != reference.payload:
        raise FirmwareLogError(
            f"{describe(log.payload_event)}: its event data ({len(log.payload_event.data)} "
            f"bytes) is not the image's {len(reference.payload)}-byte payload"
        )
    expected = {0: reference.pcr0, PAYLOAD_PCR: reference.pcr4}
    check_pcrs(
        log,
        {pcr: values for pcr, values in expected.items() if values},
        "the reference",
        every_pcr=False,
    )


def verify_firmware_log(
    data: bytes,
    tpm_pcrs: Mapping[int, Mapping[str, bytes]],
    reference: ReferenceValues | None = None,
) -> FirmwareLog:
    """Parse the NV index's log, replay it to the PCRs the TPM reports (PCR index -> bank name ->
    value, for every PCR the log extends) and, when given, to the image's reference values."""
    log = parse(data)
    check_pcrs(log, tpm_pcrs, "the TPM")
    if reference is not None:
        check_reference(log, reference)
    return log
