"""The CC event log (TCG PC Client crypto-agile format, SHA-384 only) that explains the RTMRs.

The record layouts are `tdxdefs.eventlog`; the builders are `vtpm.attest`'s (the same log goes into
the vTPM CA certificate), so a log with only the four separators is
`vtpm.attest.cc_event_log_separators()`. MR index = RTMR + 1 (TCG PC Client Platform Firmware
Profile event log, as the TDX CC event log uses it). `parse` checks every length against the bytes
present and names the offset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from svsm.errors import SvsmError
from tdxdefs.errors import LayoutError
from tdxdefs.eventlog import (
    EV_NO_ACTION,
    EV_SEPARATOR,
    MR_INDEX_OF_RTMR0,
    ONE_DIGEST,
    SEPARATOR_EVENT,
    SPEC_ID_SIGNATURE,
    TPM_ALG_SHA384,
    EventSize,
    SpecIdAlgorithm,
    SpecIdEvent,
    TcgPcrEvent,
    TcgPcrEvent2Head,
)
from tdxdefs.layout import Layout
from tdxdefs.tdcall import RTMR_COUNT, SHA384_SIZE
from vtpm.attest import cc_event, cc_event_log_header

L = TypeVar("L", bound=Layout)


class EventLogError(SvsmError, ValueError):
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


def _layout(layout: type[L], log: bytes, offset: int) -> L:
    try:
        return layout.unpack(log, offset)
    except LayoutError as exc:
        raise EventLogError(
            f"CC event log offset {exc.offset}: {exc.structure}.{exc.field}: {exc.reason}"
        ) from exc


def parse(log: bytes) -> list[CcEvent]:
    """The events of a log, after checking its Spec ID header says SHA-384 only."""
    first = _layout(TcgPcrEvent, log, 0)
    if first.event_type != EV_NO_ACTION:
        raise EventLogError(
            f"CC event log offset {TcgPcrEvent.offset('event_type')}: first event type "
            f"{first.event_type:#x}, expected EV_NO_ACTION (Spec ID event)"
        )
    spec_at = TcgPcrEvent.SIZE
    spec = _take(log, spec_at, first.event_size, "Spec ID event")
    head = _layout(SpecIdEvent, log[: spec_at + len(spec)], spec_at)
    alg = _layout(SpecIdAlgorithm, log[: spec_at + len(spec)], spec_at + SpecIdEvent.SIZE)
    algorithms = head.number_of_algorithms
    if (
        head.signature != SPEC_ID_SIGNATURE
        or algorithms != 1
        or (alg.algorithm_id, alg.digest_size) != (TPM_ALG_SHA384, SHA384_SIZE)
    ):
        raise EventLogError(
            f"CC event log offset {spec_at}: Spec ID event is "
            f"not 'Spec ID Event03' with SHA-384 only ({algorithms} algorithms)"
        )
    offset = spec_at + first.event_size
    events = []
    while offset < len(log):
        event = _layout(TcgPcrEvent2Head, log, offset)
        mr_index, event_type = event.pcr_index, event.event_type
        count, alg_id = event.digest_count, event.algorithm_id
        if not MR_INDEX_OF_RTMR0 <= mr_index <= RTMR_COUNT:
            raise EventLogError(f"CC event log offset {offset}: MR index {mr_index} is not 1-4")
        if count != ONE_DIGEST or alg_id != TPM_ALG_SHA384:
            raise EventLogError(
                f"CC event log offset {offset + 8}: {count} digests of alg "
                f"{alg_id:#x}, expected one SHA-384"
            )
        at = offset + TcgPcrEvent2Head.SIZE
        digest = _take(log, at, SHA384_SIZE, "digest")
        size = _layout(EventSize, log, at + SHA384_SIZE).size
        data = _take(log, at + SHA384_SIZE + EventSize.SIZE, size, "event data")
        events.append(CcEvent(mr_index - MR_INDEX_OF_RTMR0, event_type, digest, data))
        offset = at + SHA384_SIZE + EventSize.SIZE + size
    return events


def replay(events: Iterable[CcEvent]) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0..3 after the events, each RTMR starting from zero."""
    values = [bytes(SHA384_SIZE)] * RTMR_COUNT
    for event in events:
        values[event.rtmr] = hashlib.sha384(values[event.rtmr] + event.digest).digest()
    return (values[0], values[1], values[2], values[3])
