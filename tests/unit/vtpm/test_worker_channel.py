"""The L1 <-> vTPM worker channel: the header layout, per-op bounds, and refusal of malformed,
oversized, truncated and unknown messages without losing the message boundary, with or without
a spin before the receive sleeps."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from vtpm.worker_channel import (
    HEADER_SIZE,
    MAX_DATAGRAM,
    MAX_PAYLOAD,
    MAX_TEXT,
    WORKER_MAGIC,
    WorkerChannel,
    WorkerChannelClosed,
    WorkerChannelError,
    WorkerChannelTimeout,
    WorkerHeader,
    WorkerOp,
    decode,
    encode,
)

GET_RANDOM_8 = bytes.fromhex("80010000000c0000017b0008")


@pytest.fixture
def pair() -> Iterator[tuple[WorkerChannel, WorkerChannel]]:
    left, right = WorkerChannel.pair()
    a, b = WorkerChannel(left), WorkerChannel(right)
    yield a, b
    a.close()
    b.close()


def raw(op: int, payload: bytes, *, length: int | None = None, magic: int = WORKER_MAGIC) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack("<IH2sII", magic, op, b"\0\0", 7, size) + payload


def test_header_layout_is_the_documented_16_bytes() -> None:
    assert WorkerHeader.SIZE == HEADER_SIZE == 16
    assert [WorkerHeader.offset(f) for f in ("magic", "op", "reserved", "sequence", "length")] == [
        0,
        4,
        6,
        8,
        12,
    ]
    data = encode(WorkerOp.COMMAND, GET_RANDOM_8, 7)
    assert data == raw(WorkerOp.COMMAND, GET_RANDOM_8)
    assert data[:4] == b"VTPW"


def test_round_trip_over_a_socket_pair(pair: tuple[WorkerChannel, WorkerChannel]) -> None:
    l1, worker = pair
    l1.send(WorkerOp.COMMAND, GET_RANDOM_8, 41)
    msg = worker.recv(1.0)
    assert (msg.op, msg.sequence, msg.payload) == (WorkerOp.COMMAND, 41, GET_RANDOM_8)
    worker.send(WorkerOp.QUOTE_REQUEST, bytes(range(64)), 41)
    assert l1.recv(1.0).payload == bytes(range(64))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"VTPW\x02\x00", "truncated"),
        (raw(WorkerOp.COMMAND, b"", magic=0x41414141), "magic at offset 0: 0x41414141"),
        (raw(999, b""), "op at offset 4: 999 is not a known op"),
        (raw(WorkerOp.COMMAND, b"abc", length=4), "length at offset 12: 4, but 3 payload bytes"),
        (raw(WorkerOp.COMMAND, bytes(4097)), "COMMAND length at offset 12: 4097 is outside"),
        (raw(WorkerOp.QUOTE_REQUEST, bytes(63)), "QUOTE_REQUEST length at offset 12: 63"),
        (raw(WorkerOp.QUOTE_REQUEST, bytes(65)), "QUOTE_REQUEST length at offset 12: 65"),
        (raw(WorkerOp.SHUTDOWN, b"x"), "SHUTDOWN length at offset 12: 1 is outside [0, 0]"),
        (
            struct.pack("<IH2sII", WORKER_MAGIC, WorkerOp.COMMAND, b"\0\1", 0, 0),
            "reserved at offset 6: reserved, must be zero",
        ),
    ],
)
def test_malformed_messages_are_refused_naming_the_field(data: bytes, message: str) -> None:
    with pytest.raises(WorkerChannelError, match="worker message") as info:
        decode(data)
    assert message in str(info.value)


def test_every_op_has_a_bound_and_sending_past_it_is_refused() -> None:
    assert set(MAX_PAYLOAD) == set(WorkerOp)
    with pytest.raises(WorkerChannelError, match="RESPONSE: a payload of 4097 bytes"):
        encode(WorkerOp.RESPONSE, bytes(4097))
    with pytest.raises(WorkerChannelError, match="QUOTE_REQUEST: a payload of 10 bytes"):
        encode(WorkerOp.QUOTE_REQUEST, bytes(10))
    # an explanation is cut to its bound rather than refused
    assert len(decode(encode(WorkerOp.ERROR, b"e" * 5000)).payload) == MAX_TEXT


def test_an_oversized_datagram_is_refused_and_the_next_message_still_parses(
    pair: tuple[WorkerChannel, WorkerChannel],
) -> None:
    l1, worker = pair
    l1.sock.send(raw(WorkerOp.COMMAND, bytes(MAX_DATAGRAM + 100)))
    l1.sock.send(b"garbage")
    l1.send(WorkerOp.COMMAND, GET_RANDOM_8, 2)
    with pytest.raises(WorkerChannelError, match=f"more than {MAX_DATAGRAM} bytes refused"):
        worker.recv(1.0)
    with pytest.raises(WorkerChannelError, match="truncated"):
        worker.recv(1.0)
    msg = worker.recv(1.0)
    assert (msg.op, msg.sequence, msg.payload) == (WorkerOp.COMMAND, 2, GET_RANDOM_8)


def test_a_closed_peer_and_a_silent_peer_are_told_apart(
    pair: tuple[WorkerChannel, WorkerChannel],
) -> None:
    l1, worker = pair
    with pytest.raises(WorkerChannelTimeout, match=r"no message within 0\.050 s"):
        worker.recv(0.05)
    l1.close()
    with pytest.raises(WorkerChannelClosed, match="closed the channel"):
        worker.recv(1.0)
    with pytest.raises(WorkerChannelClosed, match="sending COMMAND"):
        worker.send(WorkerOp.COMMAND, GET_RANDOM_8)


def test_a_stream_socket_is_not_a_worker_channel() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b, pytest.raises(WorkerChannelError, match="needs SOCK_SEQPACKET"):
        WorkerChannel(a)


def test_expect_carries_nothing() -> None:
    assert decode(encode(WorkerOp.EXPECT, b"", 3)).op is WorkerOp.EXPECT
    with pytest.raises(WorkerChannelError, match=r"EXPECT: a payload of 1 bytes"):
        encode(WorkerOp.EXPECT, b"x")
    with pytest.raises(WorkerChannelError, match=r"EXPECT length at offset 12: 1 is outside"):
        decode(raw(WorkerOp.EXPECT, b"x"))


def send_later(channel: WorkerChannel, delay: float, data: bytes) -> threading.Thread:
    def send() -> None:
        time.sleep(delay)
        channel.sock.send(data)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("spin_ns", "delay", "caught"),
    [(2_000_000_000, 0.005, True), (1_000_000, 0.05, False)],
    ids=["caught-while-spinning", "after-the-spin-ran-out"],
)
def test_a_spinning_receive_gets_the_message_whenever_it_comes(
    pair: tuple[WorkerChannel, WorkerChannel], spin_ns: int, delay: float, caught: bool
) -> None:
    l1, worker = pair
    sender = send_later(worker, delay, encode(WorkerOp.RESPONSE, GET_RANDOM_8, 5))
    msg = l1.recv(5.0, spin_ns)
    sender.join()
    assert (msg.op, msg.sequence, msg.payload) == (WorkerOp.RESPONSE, 5, GET_RANDOM_8)
    if not caught:  # a busy machine may end a spin early, never make one catch more
        assert not l1.caught_spinning


def test_a_spinning_receive_keeps_every_check_and_the_deadline(
    pair: tuple[WorkerChannel, WorkerChannel],
) -> None:
    l1, worker = pair
    with pytest.raises(WorkerChannelTimeout, match=r"no message within 0\.050 s"):
        l1.recv(0.05, 1_000_000)
    sender = send_later(worker, 0.005, raw(WorkerOp.RESPONSE, bytes(MAX_DATAGRAM + 1)))
    with pytest.raises(WorkerChannelError, match=f"more than {MAX_DATAGRAM} bytes refused"):
        l1.recv(5.0, 200_000_000)
    sender.join()
    worker.sock.send(raw(WorkerOp.RESPONSE, b"abc", length=4))
    with pytest.raises(WorkerChannelError, match="length at offset 12: 4, but 3 payload bytes"):
        l1.recv(5.0, 200_000_000)
    worker.close()
    with pytest.raises(WorkerChannelClosed, match="closed the channel"):
        l1.recv(5.0, 200_000_000)
