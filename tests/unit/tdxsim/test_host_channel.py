"""The host channel's message framing and the L1 image header: good input round-trips, bad input is
refused with an error naming the field (or message type) and offset."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from tdxsim.host.channel import (
    ENTER_FORMAT,
    HEADER,
    INTERRUPT_FORMAT,
    MAX_MESSAGE,
    REPLY_FORMAT,
    REPLY_REFUSED,
    Channel,
    ChannelClosed,
    ChannelError,
    MsgType,
)
from tdxsim.host.l1_image import HEADER_SIZE, L1Image, L1ImageError, build_l1_image, zip_packages
from tdxsim.host.td_process import TdProcess
from tdxsim.module.registers import Regs

L1_MIN = Path(__file__).parents[2] / "integration" / "tdxsim" / "l1_min"


# --- channel --------------------------------------------------------------------------------------
def test_enter_round_trips_registers_over_a_socket_pair() -> None:
    a, b = Channel.pair()
    host, td = Channel(a), Channel(b)
    regs = Regs.from_list(list(range(16)))
    regs.r15 = (1 << 64) - 1
    host.send_enter(regs, fixed=True)
    msg = td.recv()
    assert msg.type == MsgType.ENTER
    values = msg.fields(ENTER_FORMAT)
    assert values[1] == 1 and list(values[2:]) == regs.as_list()
    host.close()
    with pytest.raises(ChannelClosed):
        td.recv()
    td.close()


def test_enter_carries_the_interrupts_to_post_after_the_registers() -> None:
    a, b = Channel.pair()
    host, td = Channel(a), Channel(b)
    host.send_enter(Regs(rax=7), interrupts=[(0, 0x51), (1, 0x30)])
    msg = td.recv()
    assert msg.type == MsgType.ENTER and msg.fields(ENTER_FORMAT)[2] == 7
    posted = list(INTERRUPT_FORMAT.iter_unpack(msg.rest(ENTER_FORMAT)))
    assert posted == [(0, 0x51), (1, 0x30)]
    host.close()
    td.close()


def test_an_enter_with_a_partial_interrupt_is_refused_by_name() -> None:
    a, b = Channel.pair()
    host, td = Channel(a), Channel(b)
    payload = ENTER_FORMAT.pack(0, 0, *range(16)) + INTERRUPT_FORMAT.pack(0, 0x51) + b"xyz"
    host.send(MsgType.ENTER, payload)
    process = TdProcess(td)
    msg = process.receive()
    assert msg is not None and process.handle(msg) is None
    reply = host.recv()
    assert reply.type == MsgType.REPLY and reply.fields(REPLY_FORMAT) == (REPLY_REFUSED,)
    assert b"ENTER: 11 bytes after the registers are not whole 8-byte interrupts" in reply.rest(
        REPLY_FORMAT
    )
    host.close()
    td.close()


def test_a_td_exit_waits_past_a_malformed_enter_for_a_good_one() -> None:
    a, b = Channel.pair()
    host, td = Channel(a), Channel(b)
    regs = Regs.from_list(list(range(16)))
    good = HEADER.pack(MsgType.ENTER, 0, ENTER_FORMAT.size) + ENTER_FORMAT.pack(0, 1, *range(16))
    lying = HEADER.pack(MsgType.ENTER, 0, ENTER_FORMAT.size + 8) + good[HEADER.size :]
    host.sock.send(lying)  # the length field says 8 bytes more than came
    host.sock.send(good)
    flags, answer = TdProcess(td).serve_until_enter()
    assert (flags, answer) == (1, regs)
    reply = host.recv()
    assert reply.type == MsgType.REPLY and b"length field" in reply.rest(REPLY_FORMAT)
    host.close()
    td.close()


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b"\x01\x00", "shorter than its header"),
        (HEADER.pack(MsgType.ENTER, 0, 9) + b"x", "length field 9, payload 1"),
        (HEADER.pack(4242, 0, 0), "unknown message type 4242"),
    ],
)
def test_malformed_messages_are_refused_by_name(raw: bytes, named: str) -> None:
    with pytest.raises(ChannelError, match=named):
        Channel.parse(raw)


def test_short_fixed_fields_are_refused() -> None:
    msg = Channel.parse(HEADER.pack(MsgType.ENTER, 0, 4) + bytes(4))
    with pytest.raises(ChannelError, match=f"ENTER: payload of 4 bytes, need {ENTER_FORMAT.size}"):
        msg.fields(ENTER_FORMAT)


def test_oversized_messages_are_not_sent() -> None:
    a, b = Channel.pair()
    with pytest.raises(ChannelError, match="exceed"):
        Channel(a).send(MsgType.ADD_PAGE, bytes(MAX_MESSAGE))
    a.close()
    b.close()


def test_fds_travel_with_created() -> None:
    a, b = Channel.pair()
    r, w = os.pipe()
    Channel(b).send(MsgType.CREATED, b"regions", fds=[r])
    msg, fds = Channel(a).recv_with_fds()
    assert msg.payload == b"regions" and len(fds) == 1
    os.write(w, b"ok")
    assert os.read(fds[0], 2) == b"ok"
    for fd in (r, w, fds[0]):
        os.close(fd)
    a.close()
    b.close()


# --- L1 image -------------------------------------------------------------------------------------
def test_image_round_trips_and_is_deterministic() -> None:
    image = build_l1_image([L1_MIN], "l1_min.main:entry")
    assert image == build_l1_image([L1_MIN], "l1_min.main:entry")
    parsed = L1Image.unpack(image + bytes(100))  # page padding after the payload is allowed
    assert parsed.module == "l1_min.main" and parsed.function == "entry"
    assert parsed.payload == zip_packages([L1_MIN])


def _field(image: bytes, offset: int, fmt: str, value: int | bytes) -> bytes:
    out = bytearray(image)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "named"),
    [
        (0, "<8s", b"NOTL1IMG", "magic at offset 0"),
        (8, "<H", 2, "version at offset 8"),
        (10, "<H", 128, "header_size at offset 10"),
        (12, "<I", 1, "flags at offset 12"),
        (80, "<Q", 1 << 40, "payload_size at offset 80"),
        (88, "<48s", hashlib.sha384(b"other").digest(), "payload_sha384 at offset 88"),
        (16, "<64s", b"no colon here", "entry at offset 16"),
        (16, "<64s", b"\xff\xfe:x", "entry at offset 16"),
    ],
)
def test_bad_image_headers_name_the_field(
    offset: int, fmt: str, value: int | bytes, named: str
) -> None:
    image = build_l1_image([L1_MIN], "l1_min.main:entry")
    with pytest.raises(L1ImageError, match=named):
        L1Image.unpack(_field(image, offset, fmt, value))


def test_truncated_image_and_bad_entry_names_are_refused() -> None:
    with pytest.raises(L1ImageError, match="header at offset 0"):
        L1Image.unpack(bytes(HEADER_SIZE - 1))
    with pytest.raises(L1ImageError, match="entry"):
        L1Image("not an entry", b"").pack()
    with pytest.raises(ValueError, match="not a Python package"):
        zip_packages([L1_MIN.parent / "nonexistent"])
