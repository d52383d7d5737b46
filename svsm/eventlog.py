"""The CC event log (TCG PC Client crypto-agile format, SHA-384 only) that explains the RTMRs.

The layouts and their builders are `vtpm.attest`'s (the same log goes into the vTPM CA
certificate), so a log with only the four separators is `vtpm.attest.cc_event_log_separators()`.
MR index = RTMR + 1 (reference 6.1). `parse` checks every length against the bytes present and
names the offset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from vtpm.attest import (
    EV_NO_ACTION,
    EV_SEPARATOR,
    EVENT_SIZE,
    MR_INDEX_OF_RTMR0,
    ONE_DIGEST,
    RTMR_COUNT,
    SEPARATOR_EVENT,
    SHA384_SIZE,
    SPEC_ID_ALGORITHM,
    SPEC_ID_EVENT,
    SPEC_ID_SIGNATURE,
    TCG_PCR_EVENT2_HEAD,
    TCG_PCR_EVENT_HEADER,
    TPM_ALG_SHA384,
    cc_event,
    cc_event_log_header,
)

EV_S_CRTM_VERSION = 0x00000008
EV_PLATFORM_CONFIG_FLAGS = 0x0000000A


class EventLogError(ValueError):
    """A CC event log that does not parse; names the offset and the field."""


@dataclass(frozen=True)
class CcEvent:
    """One TCG_PCR_EVENT2 with a single SHA-384 digest."""

    rtmr: int
    event_type: int
    digest: bytes
    data: bytes

    def pack(self) -> bytes:
        return cc_event(self.rtmr, self.event_type, self.digest, self.data)


def separator(rtmr: int) -> CcEvent:
    """The SEPARATOR event (four zero bytes) for one RTMR."""
    return CcEvent(rtmr, EV_SEPARATOR, hashlib.sha384(SEPARATOR_EVENT).digest(), SEPARATOR_EVENT)


def encode(events: Iterable[CcEvent]) -> bytes:
    """The whole log: header then events."""
    return cc_event_log_header() + b"".join(event.pack() for event in events)


def _take(log: bytes, offset: int, size: int, field: str) -> bytes:
    if offset + size > len(log):
        raise EventLogError(
            f"CC event log offset {offset}: {field} needs {size} bytes, "
            f"{max(len(log) - offset, 0)} left"
        )
    return log[offset : offset + size]


def parse(log: bytes) -> list[CcEvent]:
    """The events of a log, after checking its Spec ID header says SHA-384 only."""
    _pcr, event_type, _sha1, spec_size = TCG_PCR_EVENT_HEADER.unpack(
        _take(log, 0, TCG_PCR_EVENT_HEADER.size, "TCG_PCR_EVENT header")
    )
    if event_type != EV_NO_ACTION:
        raise EventLogError(
            f"CC event log offset 4: first event type {event_type:#x}, "
            "expected EV_NO_ACTION (Spec ID event)"
        )
    spec = _take(log, TCG_PCR_EVENT_HEADER.size, spec_size, "Spec ID event")
    signature, *_rest, algorithms = SPEC_ID_EVENT.unpack(
        _take(spec, 0, SPEC_ID_EVENT.size, "Spec ID event fields")
    )
    alg = SPEC_ID_ALGORITHM.unpack(
        _take(spec, SPEC_ID_EVENT.size, SPEC_ID_ALGORITHM.size, "Spec ID algorithm")
    )
    if signature != SPEC_ID_SIGNATURE or algorithms != 1 or alg != (TPM_ALG_SHA384, SHA384_SIZE):
        raise EventLogError(
            f"CC event log offset {TCG_PCR_EVENT_HEADER.size}: Spec ID event is "
            f"not 'Spec ID Event03' with SHA-384 only ({algorithms} algorithms)"
        )
    offset = TCG_PCR_EVENT_HEADER.size + spec_size
    events = []
    while offset < len(log):
        mr_index, event_type, count, alg_id = TCG_PCR_EVENT2_HEAD.unpack(
            _take(log, offset, TCG_PCR_EVENT2_HEAD.size, "TCG_PCR_EVENT2 head")
        )
        if not MR_INDEX_OF_RTMR0 <= mr_index <= RTMR_COUNT:
            raise EventLogError(f"CC event log offset {offset}: MR index {mr_index} is not 1-4")
        if count != ONE_DIGEST or alg_id != TPM_ALG_SHA384:
            raise EventLogError(
                f"CC event log offset {offset + 8}: {count} digests of alg "
                f"{alg_id:#x}, expected one SHA-384"
            )
        at = offset + TCG_PCR_EVENT2_HEAD.size
        digest = _take(log, at, SHA384_SIZE, "digest")
        (size,) = EVENT_SIZE.unpack(_take(log, at + SHA384_SIZE, EVENT_SIZE.size, "eventSize"))
        data = _take(log, at + SHA384_SIZE + EVENT_SIZE.size, size, "event data")
        events.append(CcEvent(mr_index - MR_INDEX_OF_RTMR0, event_type, digest, data))
        offset = at + SHA384_SIZE + EVENT_SIZE.size + size
    return events


def replay(events: Iterable[CcEvent]) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0..3 after the events, each RTMR starting from zero."""
    values = [bytes(SHA384_SIZE)] * RTMR_COUNT
    for event in events:
        values[event.rtmr] = hashlib.sha384(values[event.rtmr] + event.digest).digest()
    return (values[0], values[1], values[2], values[3])
