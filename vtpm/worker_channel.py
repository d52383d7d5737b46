"""The channel between L1 and a vTPM worker process: one message per SOCK_SEQPACKET datagram.

libtpms keeps global state, so each vTPM instance runs in its own worker process; L1 holds one end
of an AF_UNIX SOCK_SEQPACKET socket pair and the worker inherits the other. Every message is a
16-byte `WorkerHeader` (little-endian) followed by `length` payload bytes:

| offset | size | field |
|---|---|---|
| 0 | 4 | magic 0x57505456 ("VTPW" little-endian) |
| 4 | 2 | op (`WorkerOp`) |
| 6 | 2 | reserved (0) |
| 8 | 4 | sequence: L1's request number; every message about that request repeats it |
| 12 | 4 | length of the payload; must equal the datagram's size minus 16 |

A worker's first message is READY(its pid, u32), unasked, with sequence 0. Then requests and
answers (L1 -> worker, worker -> L1):

    MANUFACTURE(attester name)  -> [QUOTE_REQUEST(REPORTDATA) <- QUOTE(quote) | REFUSED(text)]
                                   [EVENT_LOG_REQUEST <- EVENT_LOG(CC event log) | REFUSED(text)]
                                -> MANUFACTURED | ERROR(text)
    EXPECT                      (no answer: a COMMAND is on its way, see below)
    COMMAND(TPM command)        -> RESPONSE(TPM response)
    POWER_CYCLE(attester name)  -> (as MANUFACTURE: forget NV, manufacture again) -> MANUFACTURED
    SHUTDOWN                    -> (the worker exits)

Only L1 can TDCALL, so a worker's attester asks L1 for quotes over the same channel. Each op has
its own payload bound (`MAX_PAYLOAD`); a datagram over `MAX_DATAGRAM` is cut by the kernel and
refused (MSG_TRUNC), and a malformed message raises `WorkerChannelError` naming the field, so
either side can refuse it and go on.

Waking a process that sleeps in a blocking receive costs tens of microseconds, more than libtpms
needs for a small command, so a receive may first poll the socket without sleeping for a bounded
spin (`recv`'s `spin_ns`), giving the CPU away (sched_yield) between polls: where the peer shares
this CPU it runs at once, on an idle core neither sleeps. L1 spins while its command runs; L1 sends
EXPECT when it learns that an L2 is about to start a command (the relay handed it one), so the
worker spins for it instead of sleeping (bounded: a worker that hears nothing goes back to sleep).
The spin only changes when a message is seen, never which one or how it is checked.
"""

from __future__ import annotations

import os
import select
import socket
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from tdxdefs.errors import LayoutError
from tdxdefs.layout import Layout
from tdxdefs.tdcall import REPORTDATA_SIZE
from vtpm.engine import TPM_MAX_COMMAND_SIZE
from vtpm.errors import VtpmError

WORKER_MAGIC = 0x57505456  # "VTPW" little-endian
MAX_QUOTE = 16 * 1024  # a TD quote v4 with its certification data; the GetQuote buffer is 8 KiB
MAX_EVENT_LOG = 64 * 1024
MAX_TEXT = 1024  # ERROR and REFUSED explanations, cut to this many bytes
MAX_ATTESTER_NAME = 64
PID_SIZE = 4  # READY's payload: the worker's process id, u32 little-endian
MS_PER_S = 1000
NS_PER_S = 1_000_000_000
# A sched_yield that comes back later than this gave the CPU to another process that wanted it:
# spinning on would only take turns with that process (each turn a whole scheduler slice), so
# the receive sleeps instead and the kernel wakes it when the message comes.
YIELD_TAKEN_NS = 50_000


class WorkerOp(IntEnum):
    """What a message asks or answers."""

    # L1 -> worker
    MANUFACTURE = 1
    COMMAND = 2
    POWER_CYCLE = 3
    SHUTDOWN = 4
    QUOTE = 5
    EVENT_LOG = 6
    REFUSED = 7
    EXPECT = 8
    # worker -> L1
    MANUFACTURED = 16
    RESPONSE = 17
    QUOTE_REQUEST = 18
    EVENT_LOG_REQUEST = 19
    ERROR = 20
    READY = 21


MAX_PAYLOAD: dict[WorkerOp, int] = {
    WorkerOp.MANUFACTURE: MAX_ATTESTER_NAME,
    WorkerOp.COMMAND: TPM_MAX_COMMAND_SIZE,
    WorkerOp.POWER_CYCLE: MAX_ATTESTER_NAME,
    WorkerOp.SHUTDOWN: 0,
    WorkerOp.QUOTE: MAX_QUOTE,
    WorkerOp.EVENT_LOG: MAX_EVENT_LOG,
    WorkerOp.REFUSED: MAX_TEXT,
    WorkerOp.EXPECT: 0,
    WorkerOp.MANUFACTURED: 0,
    WorkerOp.RESPONSE: TPM_MAX_COMMAND_SIZE,
    WorkerOp.QUOTE_REQUEST: REPORTDATA_SIZE,
    WorkerOp.EVENT_LOG_REQUEST: 0,
    WorkerOp.ERROR: MAX_TEXT,
    WorkerOp.READY: PID_SIZE,
}
EXACT_PAYLOAD = {WorkerOp.QUOTE_REQUEST: REPORTDATA_SIZE, WorkerOp.READY: PID_SIZE}
TEXT_OPS = frozenset({WorkerOp.REFUSED, WorkerOp.ERROR})


@dataclass(frozen=True, slots=True)
class WorkerHeader(Layout):
    """The fixed header in front of every message on a worker channel."""

    NAME: ClassVar[str] = "vTPM worker message header"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("magic", "I"),
        ("op", "H"),
        ("reserved", "2s"),
        ("sequence", "I"),
        ("length", "I"),
    )
    SIZE: ClassVar[int] = 16

    magic: int
    op: int
    reserved: bytes
    sequence: int
    length: int


HEADER_SIZE = WorkerHeader.SIZE
MAX_DATAGRAM = HEADER_SIZE + max(MAX_PAYLOAD.values())
OP_OFFSET = WorkerHeader.offset("op")
LENGTH_OFFSET = WorkerHeader.offset("length")


class WorkerChannelError(VtpmError, ValueError):
    """A malformed message on a worker channel: names the field, its offset and the op."""


class WorkerChannelClosed(VtpmError, ConnectionError):
    """The other end of a worker channel is gone."""


class WorkerChannelTimeout(VtpmError, TimeoutError):
    """No message arrived on a worker channel in time."""


@dataclass(frozen=True, slots=True)
class WorkerMessage:
    """One checked message."""

    op: WorkerOp
    sequence: int
    payload: bytes

    @property
    def text(self) -> str:
        """The payload as text (ERROR and REFUSED explanations)."""
        return self.payload.decode("utf-8", errors="replace")


def encode(op: WorkerOp, payload: bytes = b"", sequence: int = 0) -> bytes:
    """One message's bytes; an explanation is cut to its bound, any other oversize refused."""
    if op in TEXT_OPS:
        payload = payload[:MAX_TEXT]
    bound = MAX_PAYLOAD[op]
    if len(payload) > bound or len(payload) < EXACT_PAYLOAD.get(op, 0):
        raise WorkerChannelError(
            f"{op.name}: a payload of {len(payload)} bytes is outside its bound "
            f"[{EXACT_PAYLOAD.get(op, 0)}, {bound}]"
        )
    return WorkerHeader(WORKER_MAGIC, op, b"\0\0", sequence, len(payload)).pack() + payload


def decode(data: bytes) -> WorkerMessage:
    """Check and parse one datagram; `WorkerChannelError` names what is wrong and where."""
    try:
        header = WorkerHeader.unpack(data)
    except LayoutError as exc:
        raise WorkerChannelError(f"worker message: {exc}") from None
    if header.magic != WORKER_MAGIC:
        raise WorkerChannelError(
            f"worker message magic at offset 0: {header.magic:#010x}, expected {WORKER_MAGIC:#010x}"
        )
    try:
        op = WorkerOp(header.op)
    except ValueError:
        raise WorkerChannelError(
            f"worker message op at offset {OP_OFFSET}: {header.op} is not a known op"
        ) from None
    if header.length != len(data) - HEADER_SIZE:
        raise WorkerChannelError(
            f"worker message {op.name} length at offset {LENGTH_OFFSET}: {header.length}, "
            f"but {len(data) - HEADER_SIZE} payload bytes arrived"
        )
    least, bound = EXACT_PAYLOAD.get(op, 0), MAX_PAYLOAD[op]
    if not least <= header.length <= bound:
        raise WorkerChannelError(
            f"worker message {op.name} length at offset {LENGTH_OFFSET}: {header.length} is "
            f"outside [{least}, {bound}]"
        )
    return WorkerMessage(op, header.sequence, bytes(data[HEADER_SIZE:]))


class WorkerChannel:
    """One end of a worker channel (an AF_UNIX SOCK_SEQPACKET socket)."""

    def __init__(self, sock: socket.socket) -> None:
        if sock.type != socket.SOCK_SEQPACKET:
            raise WorkerChannelError(f"a worker channel needs SOCK_SEQPACKET, not {sock.type!r}")
        self.sock = sock
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self.caught_spinning = False  # the last receive's datagram came while it spun

    @classmethod
    def pair(cls) -> tuple[socket.socket, socket.socket]:
        """A connected pair: (L1's end, the worker's end)."""
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, op: WorkerOp, payload: bytes = b"", sequence: int = 0) -> None:
        """Send one message (one datagram); a closed peer raises `WorkerChannelClosed`."""
        data = encode(op, payload, sequence)
        try:
            self.sock.send(data)
        except OSError as exc:
            raise WorkerChannelClosed(f"sending {op.name}: {exc}") from exc

    def recv(self, timeout: float | None, spin_ns: int = 0) -> WorkerMessage:
        """The next message, waiting at most `timeout` seconds (None: until one arrives or the
        peer closes), polling for the first `spin_ns` nanoseconds of it without sleeping. Raises
        `WorkerChannelTimeout`, `WorkerChannelClosed` or, for a malformed or oversized message
        (which is consumed whole), `WorkerChannelError`."""
        start = time.perf_counter_ns()
        if timeout is not None:  # the spin is part of the wait, never added to it
            spin_ns = min(spin_ns, int(max(timeout, 0.0) * NS_PER_S))
        received = self._spin(spin_ns) if spin_ns > 0 else None
        self.caught_spinning = received is not None
        if received is None:
            if timeout is not None:
                left = max(timeout - (time.perf_counter_ns() - start) / NS_PER_S, 0.0)
                if not self._poll.poll(left * MS_PER_S):
                    raise WorkerChannelTimeout(f"no message within {timeout:.3f} s")
            received = self._receive(0)
            if received is None:  # a blocking receive returns a datagram or raises
                raise WorkerChannelClosed("receiving: the socket would block")
        data, flags = received
        if flags & socket.MSG_TRUNC:
            raise WorkerChannelError(
                f"worker message of more than {MAX_DATAGRAM} bytes refused (the most any op needs)"
            )
        if not data:
            raise WorkerChannelClosed("the other end closed the channel")
        return decode(data)

    def _receive(self, flags: int) -> tuple[bytes, int] | None:
        """One datagram and its flags; None if `flags` has MSG_DONTWAIT and none is queued."""
        try:
            data, _fds, got, _addr = self.sock.recvmsg(MAX_DATAGRAM, 0, flags)
        except BlockingIOError:
            return None
        except ConnectionResetError:  # it closed with our last message unread
            raise WorkerChannelClosed("the other end closed the channel") from None
        except OSError as exc:
            raise WorkerChannelClosed(f"receiving: {exc}") from exc
        return data, got

    def _spin(self, spin_ns: int) -> tuple[bytes, int] | None:
        """A datagram if one arrives within `spin_ns`, polling without sleeping and yielding
        the CPU between polls (so a peer on this CPU runs); None when the spin runs out."""
        clock = time.perf_counter_ns
        now = clock()
        end = now + spin_ns
        while True:
            received = self._receive(socket.MSG_DONTWAIT)
            if received is not None or now >= end:
                return received
            before = clock()
            os.sched_yield()
            now = clock()
            if now - before > YIELD_TAKEN_NS:
                return self._receive(socket.MSG_DONTWAIT)  # this CPU is wanted: stop spinning

    def close(self) -> None:
        self.sock.close()
