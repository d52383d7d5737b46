"""CC event logs: parse the TCG crypto-agile log a TD carries and replay RTMR0..3 from it.

The format is the TCG PC Client Platform Firmware Profile Specification's crypto-agile log
(section 10.2: a TCG_PCR_EVENT header holding the "Spec ID Event03" event, then TCG_PCR_EVENT2
records), as the UEFI CC Measurement protocol and the ACPI CCEL table define it for TDX (ACPI 6.5,
section 5.2.34; Intel TDX Guest-Hypervisor Communication Interface, section 4.3): the record's
index is the MR index, 1..4 for RTMR0..3 (MR index 0 is MRTD, never extended by a log event).
Linux exposes the log area as /sys/firmware/acpi/tables/data/CCEL, padded to its full length with
0xFF (or 0x00) after the last record; the vTPM CA certificate carries the same format, SHA-384 only.

Every length is checked against the bytes present; errors name the offset and the field. Replay
uses the SHA-384 digest of each event (RTMR = SHA-384(RTMR || digest), Intel TDX Module ABI
Specification, TDG.MR.RTMR.EXTEND); EV_NO_ACTION records are listed but never extended.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tdxdefs import eventlog as records
from tdxdefs.eventlog import (
    MR_INDEX_OF_RTMR0,
    SEPARATOR_EVENT,
    SPEC_ID_SIGNATURE,
    EventType,
    TpmAlgorithm,
)
from tdxdefs.tdcall import RTMR_COUNT, SHA384_SIZE

__all__ = ["MR_INDEX_OF_RTMR0", "RTMR_COUNT", "EventType", "TpmAlgorithm"]
from verifier.errors import VerificationError

# --- CC event-log records: the layouts are tdxdefs.eventlog's (TCG PC Client Platform Firmware
# Profile, sections 10.2.1 and 10.2.2) ---------------------------------------------------------
TCG_PCR_EVENT_HEADER = records.TcgPcrEvent.STRUCT
SPEC_ID_EVENT = records.SpecIdEvent.STRUCT
SPEC_ID_ALGORITHM = records.SpecIdAlgorithm.STRUCT
SPEC_ID_VENDOR_INFO_SIZE = records.VendorInfoSize.STRUCT
TCG_PCR_EVENT2_HEAD = records.TcgPcrEvent2Prefix.STRUCT
DIGEST_ALGORITHM_ID = records.DigestAlgorithm.STRUCT
EVENT_SIZE = records.EventSize.STRUCT
SEPARATOR_EVENT_DATA = SEPARATOR_EVENT
PADDING_BYTES = (0x00, 0xFF)  # what follows the last record in a CCEL log area
FILL_WORDS = tuple(bytes([b]) * 4 for b in PADDING_BYTES)
# ACPI CCEL table (ACPI 6.5, section 5.2.34): the 36-byte system description header, then CC type
# u8, CC subtype u8, reserved u16, log area minimum length (LAML) u64, log area start address
# (LASA) u64. Linux exposes it as /sys/firmware/acpi/tables/CCEL.
CCEL_TABLE = struct.Struct("<4sIBB6s8sI4sI" + "BBHQQ")
CCEL_SIGNATURE = b"CCEL"
CCEL_LAML_OFFSET = 40
CCEL_CHECKSUM_OFFSET = 9  # every byte of an ACPI table sums to 0 modulo 256
CHECKSUM_MODULUS = 256
CC_TYPE_TDX = 2
# TPM 2.0 defines about a dozen hash algorithms: a larger count is corruption, refused before the
# table is read.
MAX_ALGORITHMS = 16


def event_type_name(value: int) -> str:
    """The TCG name of an event type, or its hex value when the name is not known here."""
    try:
        return EventType(value).name
    except ValueError:
        return f"{value:#010x}"


def algorithm_name(value: int) -> str:
    """The TPM name of a digest algorithm (SHA384), or its hex ID."""
    try:
        return TpmAlgorithm(value).name
    except ValueError:
        return f"{value:#06x}"


class EventLogError(VerificationError, ValueError):
    """A CC event log that does not parse; names the byte offset and the field."""

    def __init__(self, offset: int, field: str, reason: str) -> None:
        super().__init__(f"CC event log offset {offset}: {field}: {reason}")
        self.offset = offset
        self.field = field
        self.reason = reason


class ReplayError(VerificationError):
    """The log parses but cannot be replayed (an event with no SHA-384 digest, MR index 0)."""


class RtmrMismatchError(VerificationError):
    """Replayed RTMRs differ from the expected ones; `rtmrs` lists the indexes that differ."""

    def __init__(self, message: str, rtmrs: Sequence[int]) -> None:
        super().__init__(message)
        self.rtmrs = tuple(rtmrs)


@dataclass(frozen=True)
class SpecIdEvent:
    """The log's first record: which digest algorithms (and their sizes) every event carries."""

    platform_class: int
    version: tuple[int, int, int]  # major, minor, errata
    uintn_size: int
    algorithms: dict[int, int]  # algorithm ID -> digest size, in header order
    vendor_info: bytes


@dataclass(frozen=True)
class CcEvent:
    """One TCG_PCR_EVENT2 record: where it starts, its MR index, type, digests and data."""

    number: int  # 0 for the first record after the Spec ID header
    offset: int
    mr_index: int
    event_type: int
    digests: dict[int, bytes]
    data: bytes

    @property
    def rtmr(self) -> int | None:
        """The RTMR this record extends (MR index - 1), None for MR index 0."""
        return self.mr_index - MR_INDEX_OF_RTMR0 if self.mr_index >= MR_INDEX_OF_RTMR0 else None

    @property
    def extends(self) -> bool:
        """False for EV_NO_ACTION records, which carry information and extend nothing."""
        return self.event_type != EventType.EV_NO_ACTION

    @property
    def sha384(self) -> bytes | None:
        return self.digests.get(TpmAlgorithm.SHA384)


@dataclass(frozen=True)
class EventLog:
    """A parsed log: its Spec ID header, the records, and where the records end."""

    spec: SpecIdEvent
    events: list[CcEvent]
    end: int  # offset after the last record
    padding: int = 0  # bytes of 0x00/0xFF fill after `end`
    raw: bytes = field(default=b"", repr=False)

    def replay(self) -> tuple[bytes, bytes, bytes, bytes]:
        return replay(self.events)


@dataclass(frozen=True)
class CcelTable:
    """The fields of the ACPI CCEL table that locate the log area."""

    revision: int
    cc_type: int
    cc_subtype: int
    log_area_minimum_length: int
    log_area_start_address: int


class CcelTableError(VerificationError, ValueError):
    """An ACPI CCEL table that does not parse, or does not fit the log data it should describe."""


def parse_ccel_table(table: bytes) -> CcelTable:
    """Parse the ACPI CCEL table (its signature, length and the log area it names)."""
    if len(table) < CCEL_TABLE.size:
        raise CcelTableError(
            f"CCEL table offset 0: {len(table)} bytes, the table has {CCEL_TABLE.size}"
        )
    fields = CCEL_TABLE.unpack_from(table)
    signature, length, revision = fields[0], fields[1], fields[2]
    cc_type, cc_subtype, _reserved, laml, lasa = fields[9:]
    if signature != CCEL_SIGNATURE:
        raise CcelTableError(f"CCEL table offset 0: signature {signature!r}, expected b'CCEL'")
    if length != len(table):
        raise CcelTableError(f"CCEL table offset 4: length {length}, the file has {len(table)}")
    if sum(table) % CHECKSUM_MODULUS:
        raise CcelTableError(
            f"CCEL table offset {CCEL_CHECKSUM_OFFSET}: checksum does not make the bytes sum to 0"
        )
    return CcelTable(revision, cc_type, cc_subtype, laml, lasa)


def log_area(data: bytes, table: CcelTable) -> bytes:
    """The log area the table names, out of the CCEL data Linux exposes (at least LAML bytes)."""
    if table.log_area_minimum_length > len(data):
        raise CcelTableError(
            f"CCEL table offset {CCEL_LAML_OFFSET}: log area length "
            f"{table.log_area_minimum_length}, the log data has {len(data)} bytes"
        )
    return data[: table.log_area_minimum_length]


def _take(data: bytes, offset: int, size: int, what: str) -> bytes:
    if size < 0 or offset + size > len(data):
        raise EventLogError(
            offset, what, f"needs {size} bytes, {max(len(data) - offset, 0)} left of {len(data)}"
        )
    return data[offset : offset + size]


def _is_padding(data: bytes, offset: int) -> bool:
    rest = data[offset:]
    return any(rest.count(fill) == len(rest) for fill in (bytes([b]) for b in PADDING_BYTES))


def _parse_spec_id(data: bytes) -> tuple[SpecIdEvent, int]:
    pcr_index, event_type, _sha1, spec_size = TCG_PCR_EVENT_HEADER.unpack(
        _take(data, 0, TCG_PCR_EVENT_HEADER.size, "TCG_PCR_EVENT header")
    )
    if event_type != EventType.EV_NO_ACTION:
        raise EventLogError(
            4, "TCG_PCR_EVENT.eventType", f"{event_type:#x}, expected EV_NO_ACTION (Spec ID event)"
        )
    base = TCG_PCR_EVENT_HEADER.size
    spec = _take(data, base, spec_size, "Spec ID event")
    signature, platform_class, minor, major, errata, uintn_size, count = SPEC_ID_EVENT.unpack(
        _take(spec, 0, SPEC_ID_EVENT.size, "Spec ID event fields")
    )
    if signature != SPEC_ID_SIGNATURE:
        raise EventLogError(base, "Spec ID signature", f"{signature!r}, expected 'Spec ID Event03'")
    table_size = count * SPEC_ID_ALGORITHM.size
    if count == 0 or count > MAX_ALGORITHMS or SPEC_ID_EVENT.size + table_size > len(spec):
        raise EventLogError(
            base + SPEC_ID_EVENT.size - 4,
            "Spec ID numberOfAlgorithms",
            f"{count} algorithms do not fit the {spec_size}-byte Spec ID event "
            f"(1..{MAX_ALGORITHMS} allowed)",
        )
    algorithms: dict[int, int] = {}
    at = SPEC_ID_EVENT.size
    for _ in range(count):
        alg, size = SPEC_ID_ALGORITHM.unpack(_take(spec, at, SPEC_ID_ALGORITHM.size, "algorithm"))
        if alg in algorithms or size == 0:
            raise EventLogError(
                base + at, "Spec ID algorithm", f"algorithm {alg:#06x} size {size} repeated or 0"
            )
        algorithms[alg] = size
        at += SPEC_ID_ALGORITHM.size
    (vendor_size,) = SPEC_ID_VENDOR_INFO_SIZE.unpack(
        _take(spec, at, SPEC_ID_VENDOR_INFO_SIZE.size, "Spec ID vendorInfoSize")
    )
    at += SPEC_ID_VENDOR_INFO_SIZE.size
    vendor = _take(spec, at, vendor_size, "Spec ID vendorInfo")
    del pcr_index  # 0 in the TCG profile; 0 or 1 in CC logs seen in practice: not checked
    return (
        SpecIdEvent(platform_class, (major, minor, errata), uintn_size, algorithms, vendor),
        base + spec_size,
    )


def parse(data: bytes) -> EventLog:
    """Parse a crypto-agile CC event log; trailing 0x00/0xFF fill (a CCEL log area) ends it."""
    data = bytes(data)
    spec, offset = _parse_spec_id(data)
    events: list[CcEvent] = []
    while offset < len(data):
        if data[offset : offset + 4] in FILL_WORDS and _is_padding(data, offset):
            return EventLog(spec, events, offset, len(data) - offset, data)
        start = offset
        mr_index, event_type, count = TCG_PCR_EVENT2_HEAD.unpack(
            _take(data, offset, TCG_PCR_EVENT2_HEAD.size, "TCG_PCR_EVENT2 header")
        )
        if count > len(spec.algorithms):
            raise EventLogError(
                offset + 8,
                "TPML_DIGEST_VALUES.count",
                f"{count} digests, the Spec ID event declares {len(spec.algorithms)} algorithms",
            )
        offset += TCG_PCR_EVENT2_HEAD.size
        digests: dict[int, bytes] = {}
        for _ in range(count):
            (alg,) = DIGEST_ALGORITHM_ID.unpack(
                _take(data, offset, DIGEST_ALGORITHM_ID.size, "digest hashAlg")
            )
            size = spec.algorithms.get(alg)
            if size is None:
                raise EventLogError(
                    offset,
                    "digest hashAlg",
                    f"algorithm {alg:#06x} is not declared in the Spec ID event "
                    f"({', '.join(f'{a:#06x}' for a in spec.algorithms)})",
                )
            if alg in digests:
                raise EventLogError(offset, "digest hashAlg", f"algorithm {alg:#06x} repeated")
            offset += DIGEST_ALGORITHM_ID.size
            digests[alg] = _take(data, offset, size, f"digest ({alg:#06x})")
            offset += size
        (size,) = EVENT_SIZE.unpack(_take(data, offset, EVENT_SIZE.size, "eventSize"))
        offset += EVENT_SIZE.size
        event_data = _take(data, offset, size, "event data")
        offset += size
        events.append(CcEvent(len(events), start, mr_index, event_type, digests, event_data))
    return EventLog(spec, events, offset, 0, data)


def replay(events: Iterable[CcEvent]) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0..3 after the events, each from zero, with each event's SHA-384 digest."""
    values = [bytes(SHA384_SIZE)] * RTMR_COUNT
    for event in events:
        if not event.extends:
            continue
        rtmr = event.rtmr
        if rtmr is None or rtmr >= RTMR_COUNT:
            raise ReplayError(
                f"event {event.number} at offset {event.offset}: MR index {event.mr_index} is "
                f"not an RTMR (1..{RTMR_COUNT})"
            )
        digest = event.sha384
        if digest is None:
            raise ReplayError(
                f"event {event.number} at offset {event.offset} (RTMR{rtmr}): no SHA-384 digest"
            )
        values[rtmr] = hashlib.sha384(values[rtmr] + digest).digest()
    return (values[0], values[1], values[2], values[3])


def mismatched_rtmrs(replayed: Sequence[bytes], expected: Sequence[bytes]) -> list[int]:
    """The RTMR indexes whose replayed value differs from the expected one."""
    return [i for i, (got, want) in enumerate(zip(replayed, expected, strict=True)) if got != want]


def check_replay(events: Iterable[CcEvent], expected: Sequence[bytes]) -> None:
    """Raise RtmrMismatchError naming every RTMR the events do not replay to."""
    replayed = replay(events)
    bad = mismatched_rtmrs(replayed, expected)
    if bad:
        detail = "; ".join(
            f"RTMR{i}: replayed {replayed[i].hex()}, expected {expected[i].hex()}" for i in bad
        )
        raise RtmrMismatchError(f"the event log does not replay to the expected {detail}", bad)


def separator(rtmr: int) -> CcEvent:
    """The EV_SEPARATOR record (four zero bytes, SHA-384 only) for one RTMR, as a boot seals it."""
    return CcEvent(
        0,
        0,
        rtmr + MR_INDEX_OF_RTMR0,
        EventType.EV_SEPARATOR,
        {TpmAlgorithm.SHA384: hashlib.sha384(SEPARATOR_EVENT_DATA).digest()},
        SEPARATOR_EVENT_DATA,
    )


def same_record(a: CcEvent, b: CcEvent) -> bool:
    """Two records with equal MR index, type, digests and data (their position aside)."""
    return (a.mr_index, a.event_type, a.digests, a.data) == (
        b.mr_index,
        b.event_type,
        b.digests,
        b.data,
    )
