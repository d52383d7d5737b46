"""The L1VTPM Detect service (tdxdefs.l1vtpm): an L2 asks, through TDG.VP.VMCALL<Service>, whether
it has a vTPM, and gets L1's measurements into it as TCG_PCR_EVENT2 records in GUIDed HOBs, so
the L2 firmware can start its own event log where L1's ends (TCG PC Client Platform Firmware
Profile, section 10.2.2, crypto-agile event records).

The command page is L2-writable: it is copied once and checked on the copy. Any length past the
page, a GUID L1 does not serve, or a command other than Detect gets a response that says so;
nothing of L1's beyond its published events is ever written into the response.
"""

from __future__ import annotations

from collections.abc import Sequence

from svsm.measurement import PcrEvent
from tdxdefs.errors import LayoutError
from tdxdefs.eventlog import EventSize
from tdxdefs.l1vtpm import (
    HOB_TYPE_END_OF_HOB_LIST,
    HOB_TYPE_GUID_EXTENSION,
    L1VTPM_DETECT,
    L1VTPM_GUID,
    L1VTPM_STATUS_PRESENT,
    L1VTPM_VERSION,
    TCG_EVENT2_HOB_GUID,
    GuidHob,
    HobHeader,
    L1VtpmMessage,
)
from tdxdefs.tdcall import PAGE_SIZE
from tdxdefs.tdvmcall import SERVICE_STATUS_SUCCESS, SERVICE_STATUS_UNSUPPORTED, ServiceBufferHeader

PAGE = PAGE_SIZE
MAX_EVENT_DATA = 64  # a longer event (the L2 image itself) is described, not copied
DETECT_NOT_SUPPORTED = 1  # L1VTPM response status for a command other than Detect


def encode_event2(event: PcrEvent) -> bytes:
    """One TCG_PCR_EVENT2: index, type, every bank's digest, then the event data (or, for a
    long blob such as the L2 image, a description of it)."""
    data = event.data
    if len(data) > MAX_EVENT_DATA:
        data = f"{len(data)} bytes measured by L1\0".encode()
    digests = b"".join(
        alg.to_bytes(2, "little") + digest for alg, digest in sorted(event.digests.items())
    )
    head = event.pcr.to_bytes(4, "little") + event.event_type.to_bytes(4, "little")
    count = len(event.digests).to_bytes(4, "little")
    return head + count + digests + EventSize(len(data)).pack() + data


def detect_response(events: Sequence[PcrEvent]) -> bytes:
    """The L1VTPM Detect response body: the message, one GUIDed HOB per event, the end HOB."""
    out = L1VtpmMessage(L1VTPM_VERSION, L1VTPM_DETECT, L1VTPM_STATUS_PRESENT, 0).pack()
    for event in events:
        record = encode_event2(event)
        hob = GuidHob(HOB_TYPE_GUID_EXTENSION, GuidHob.SIZE + len(record), 0, TCG_EVENT2_HOB_GUID)
        out += hob.pack() + record
    return out + HobHeader(HOB_TYPE_END_OF_HOB_LIST, HobHeader.SIZE, 0).pack()


class L1VtpmService:
    """Answers Service calls whose GUID is L1VTPM, with the events L1 measured."""

    def __init__(self, events: Sequence[PcrEvent]) -> None:
        self.events = list(events)
        self.calls = 0

    def handle(self, command_page: bytes) -> bytes:
        """The response page for one command page (both a page; the command already copied)."""
        self.calls += 1
        try:
            head = ServiceBufferHeader.unpack(command_page)
        except LayoutError:
            return self._reply(b"\0" * 16, SERVICE_STATUS_UNSUPPORTED, b"")
        if head.guid != L1VTPM_GUID:
            return self._reply(head.guid, SERVICE_STATUS_UNSUPPORTED, b"")
        if not ServiceBufferHeader.SIZE + L1VtpmMessage.SIZE <= head.length <= PAGE:
            return self._reply(head.guid, SERVICE_STATUS_UNSUPPORTED, b"")
        message = L1VtpmMessage.unpack(command_page, ServiceBufferHeader.SIZE)
        if message.version != L1VTPM_VERSION or message.command != L1VTPM_DETECT:
            body = L1VtpmMessage(L1VTPM_VERSION, message.command, DETECT_NOT_SUPPORTED, 0).pack()
            return self._reply(head.guid, SERVICE_STATUS_SUCCESS, body)
        body = detect_response(self.events)
        if ServiceBufferHeader.SIZE + len(body) > PAGE:
            return self._reply(head.guid, SERVICE_STATUS_UNSUPPORTED, b"")
        return self._reply(head.guid, SERVICE_STATUS_SUCCESS, body)

    @staticmethod
    def _reply(guid: bytes, status: int, body: bytes) -> bytes:
        length = ServiceBufferHeader.SIZE + len(body)
        return ServiceBufferHeader(guid, length, status).pack() + body
