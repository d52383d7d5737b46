"""L1's measurements: RTMR extends recorded in the CC event log, PCR extends into the vTPM.

RTMRs (TDG.MR.RTMR.EXTEND) take SHA-384 digests from a 64-byte aligned private buffer; each extend
is logged as a `CcEvent`. PCR0 is extended through TPM2_PCR_Extend in the SHA-256 and SHA-384 banks
(the SHA-1 bank Intel's TD-partitioning vTPM prototype also extends is left out: nothing here
reads it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from svsm import eventlog
from svsm.errors import SvsmError
from svsm.eventlog import CcEvent
from svsm.memory import Memory
from svsm.tdcall import Tdcall
from tdxdefs.tdcall import RTMR_COUNT, RTMR_EXTEND_ALIGN, SHA384_SIZE
from vtpm import wire

PCR_BANKS = (wire.TPM_ALG_SHA256, wire.TPM_ALG_SHA384)


class MeasurementError(SvsmError):
    """A measurement could not be taken; names the register and the event."""


class Rtmrs:
    """RTMR0..3 as L1 extends them, with the CC event log of every extend."""

    def __init__(self, tdcall: Tdcall, memory: Memory, digest_gpa: int) -> None:
        if digest_gpa % RTMR_EXTEND_ALIGN:
            raise MeasurementError(f"RTMR digest buffer {digest_gpa:#x} is not 64-byte aligned")
        self._tdcall = tdcall
        self._memory = memory
        self._digest_gpa = digest_gpa
        self.events: list[CcEvent] = []

    def extend(
        self, rtmr: int, event_type: int, data: bytes, digest: bytes | None = None
    ) -> CcEvent:
        """Extend RTMR `rtmr` with `digest` (default SHA-384 of `data`) and log the event."""
        if not 0 <= rtmr < RTMR_COUNT:
            raise MeasurementError(f"RTMR index {rtmr} is not 0-3")
        value = hashlib.sha384(data).digest() if digest is None else digest
        if len(value) != SHA384_SIZE:
            raise MeasurementError(
                f"RTMR{rtmr} event {event_type:#x}: digest of {len(value)} "
                "bytes, must be 48 (SHA-384)"
            )
        self._memory.write(self._digest_gpa, value)
        self._tdcall.rtmr_extend(self._digest_gpa, rtmr)
        event = CcEvent(rtmr, event_type, value, data)
        self.events.append(event)
        return event

    def separators(self) -> None:
        """A SEPARATOR into each of RTMR0..3."""
        for rtmr in range(RTMR_COUNT):
            sep = eventlog.separator(rtmr)
            self.extend(rtmr, sep.event_type, sep.data, sep.digest)

    def event_log(self) -> bytes:
        """The CC event log of every extend so far."""
        return eventlog.encode(self.events)

    def expected(self) -> tuple[bytes, bytes, bytes, bytes]:
        """RTMR0..3 as the log says they are now."""
        return eventlog.replay(self.events)


@dataclass(frozen=True)
class PcrEvent:
    """One PCR extend: what was measured and the digest per bank."""

    pcr: int
    event_type: int
    data: bytes
    digests: dict[int, bytes]


def pcr_event(pcr: int, event_type: int, data: bytes) -> PcrEvent:
    """The event of measuring `data` into `pcr`: its digest in the SHA-256 and SHA-384 banks."""
    digests = {bank: hashlib.new(wire.HASH_ALGS[bank], data).digest() for bank in PCR_BANKS}
    return PcrEvent(pcr, event_type, data, digests)


def extend_pcr(tpm: wire.TpmClient, event: PcrEvent) -> None:
    """TPM2_PCR_Extend of the event's PCR with its digests (SHA-256 and SHA-384 banks)."""
    try:
        wire.pcr_extend(tpm, event.pcr, event.digests)
    except (wire.TpmError, wire.WireError) as exc:
        raise MeasurementError(f"PCR{event.pcr} event {event.event_type:#x}: {exc}") from exc
