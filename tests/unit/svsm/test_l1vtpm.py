"""The L1VTPM Detect service: what an L2 gets back for each command page, however malformed."""

from __future__ import annotations

import hashlib

import pytest

from svsm.l1vtpm import L1VtpmService, detect_response, encode_event2
from svsm.measurement import PcrEvent
from tdxdefs.l1vtpm import (
    HOB_TYPE_END_OF_HOB_LIST,
    HOB_TYPE_GUID_EXTENSION,
    L1VTPM_GUID,
    TCG_EVENT2_HOB_GUID,
    GuidHob,
    HobHeader,
    L1VtpmMessage,
)
from tdxdefs.tdvmcall import SERVICE_STATUS_SUCCESS, SERVICE_STATUS_UNSUPPORTED, ServiceBufferHeader

VERSION = b"tdp-svsm 0.1.0\0"
IMAGE = bytes(range(256)) * 20
EVENTS = [
    PcrEvent(0, 8, VERSION, {0x0B: hashlib.sha256(VERSION).digest(),
                              0x0C: hashlib.sha384(VERSION).digest()}),
    PcrEvent(0, 1, IMAGE, {0x0B: hashlib.sha256(IMAGE).digest(),
                            0x0C: hashlib.sha384(IMAGE).digest()}),
]  # fmt: skip


def command(guid: bytes = L1VTPM_GUID, length: int = 28, version: int = 0, cmd: int = 1) -> bytes:
    page = ServiceBufferHeader(guid, length, 0).pack() + L1VtpmMessage(version, cmd, 0, 0).pack()
    return page.ljust(4096, b"\xcc")


def test_detect_returns_every_event_in_guided_hobs() -> None:
    raw = L1VtpmService(EVENTS).handle(command())
    head = ServiceBufferHeader.unpack(raw)
    assert head.guid == L1VTPM_GUID and head.status == SERVICE_STATUS_SUCCESS
    assert head.length == len(raw)
    message = L1VtpmMessage.unpack(raw, ServiceBufferHeader.SIZE)
    assert (message.version, message.command, message.status) == (0, 1, 0)
    at, records = ServiceBufferHeader.SIZE + L1VtpmMessage.SIZE, []
    while True:
        hob = HobHeader.unpack(raw, at)
        if hob.hob_type == HOB_TYPE_END_OF_HOB_LIST:
            break
        guided = GuidHob.unpack(raw, at)
        assert guided.hob_type == HOB_TYPE_GUID_EXTENSION and guided.name == TCG_EVENT2_HOB_GUID
        records.append(raw[at + GuidHob.SIZE : at + guided.hob_length])
        at += guided.hob_length
    assert records == [encode_event2(e) for e in EVENTS]
    # a record: PCR 0, its type, two digests (SHA-256 then SHA-384) and the event
    first = records[0]
    assert first[:12] == (0).to_bytes(4, "little") + (8).to_bytes(4, "little") + (2).to_bytes(
        4, "little"
    )
    assert first[12:14] == (0x0B).to_bytes(2, "little") and first[14:46] == EVENTS[0].digests[0x0B]
    assert first.endswith(len(VERSION).to_bytes(4, "little") + VERSION)
    assert records[1].endswith(b"5120 bytes measured by L1\0")  # the image is described, not sent


@pytest.mark.parametrize(
    ("page", "status"),
    [
        (command(guid=bytes(16)), SERVICE_STATUS_UNSUPPORTED),
        (command(length=5000), SERVICE_STATUS_UNSUPPORTED),
        (command(length=3), SERVICE_STATUS_UNSUPPORTED),
        (b"\x01" * 10, SERVICE_STATUS_UNSUPPORTED),
    ],
)
def test_malformed_or_foreign_commands_are_unsupported(page: bytes, status: int) -> None:
    raw = L1VtpmService(EVENTS).handle(page)
    head = ServiceBufferHeader.unpack(raw)
    assert head.status == status and head.length == len(raw) == ServiceBufferHeader.SIZE


def test_another_command_or_version_is_answered_not_supported() -> None:
    for page in (command(cmd=7), command(version=3)):
        raw = L1VtpmService(EVENTS).handle(page)
        assert ServiceBufferHeader.unpack(raw).status == SERVICE_STATUS_SUCCESS
        assert L1VtpmMessage.unpack(raw, ServiceBufferHeader.SIZE).status == 1


def test_response_never_exceeds_a_page() -> None:
    many = EVENTS * 200  # far more than a page of records
    raw = L1VtpmService(many).handle(command())
    assert len(raw) <= 4096 and ServiceBufferHeader.unpack(raw).status == SERVICE_STATUS_UNSUPPORTED
    assert len(detect_response(EVENTS)) < 4096
