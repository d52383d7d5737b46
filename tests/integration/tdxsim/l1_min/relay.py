"""A stand-in L1 for the host relay: the L1 half of the ring protocol of tdxdefs.relay, no L2.

It converts the ring page to shared (MapGPA), then waits in HLT. On RELAY_VECTOR it copies the
ring once, answers from the copy and halts again: the host takes the answer at that HLT. A
command whose message starts with b"notify:" is answered with a TDVMCALL<IO> write to
RELAY_NOTIFY_PORT before the HLT instead (the doorbell of an L1 with more work), and the prefix
is dropped. TPM commands run on a libtpms engine when the image carries vtpm (so real TPM
clients work end to end), else they are echoed with a marker. A message starting with b"lie:"
makes it answer with a ring that lies in the way the rest names (see LIES).
POWER_CYCLE powers the engine off and on (the client sends TPM2_Startup again, as after a
platform power cycle) and answers b"power-cycle vm N: " and the host's launch command line (the
IGVM command-line parameter at COMMAND_LINE_GPA, empty without one). Runs until the host stops it.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from .main import GHCI_HLT, GHCI_IO, GHCI_MAP_GPA, L1

RING_GPA = 0x1E00000
RING_MAGIC, RING_VERSION, PAGE = 0x524D5054, 1, 4096
RELAY_VECTOR, NOTIFY_PORT = 0x51, 0xF6
HEADER = struct.Struct("<IHHIIIII4s")  # magic, version, vm, sequence, state, length, locality, kind
IDLE, COMMAND, RESPONSE, ERROR = 0, 1, 2, 3
TPM_COMMAND, POWER_CYCLE = 0, 1
ECHO_MARKER = b"relayed by l1_min:"
NOTIFY = b"notify:"  # answer with the IO notify, not only the HLT
DEAF = b"ignore the first ring"  # L1 acts as if it missed RELAY_VECTOR for this command once
COMMAND_LINE_GPA, COMMAND_LINE_MAX = 0x9800, 0x800  # the project recipe's parameter area
LIES = {
    b"magic": lambda h: h._replace(magic=0xBAD),
    b"sequence": lambda h: h._replace(sequence=(h.sequence + 7) & 0xFFFFFFFF),
    b"length": lambda h: h._replace(length=PAGE),
    b"version": lambda h: h._replace(version=9),
    b"state": lambda h: h._replace(state=COMMAND),
    b"idle": lambda h: h._replace(state=IDLE),
    b"vm": lambda h: h._replace(vm=h.vm + 1),
}


class Ring(NamedTuple):
    """The ring header's fields (tdxdefs.relay.RingHeader, restated: l1_min carries no tdxdefs)."""

    magic: int
    version: int
    vm: int
    sequence: int
    state: int
    length: int
    locality: int
    kind: int
    reserved: bytes

    def pack(self) -> bytes:
        return HEADER.pack(*self)


def _engine() -> Any:
    """A powered, started libtpms engine if vtpm is in the image, else None (echo)."""
    try:
        from vtpm.engine import TpmEngine
    except ImportError:
        return None
    engine = TpmEngine()
    engine.power_on()
    engine.startup_clear()
    return engine


def serve(platform: Any) -> str:
    """Share the ring, then answer relay commands until the host stops the TD."""
    l1 = L1(platform)
    ring = RING_GPA | platform.shared_bit
    l1.vmcall(GHCI_MAP_GPA, r12=ring, r13=PAGE)
    vectors: list[int] = []
    platform.set_interrupt_handler(vectors.append)
    engine = _engine()
    ignored: set[int] = set()
    while True:
        if RELAY_VECTOR not in vectors:  # taken in the HLT (or at a notify, before it)
            l1.vmcall(GHCI_HLT, r12=0)  # also rings the host when the ring holds an answer
            continue
        vectors.clear()
        page = l1.read(ring, PAGE)  # one copy; everything below reads the copy
        header = Ring(*HEADER.unpack_from(page))
        if header.magic != RING_MAGIC or header.state != COMMAND:
            continue
        message = page[HEADER.size : HEADER.size + min(header.length, PAGE - HEADER.size)]
        notify = message.startswith(NOTIFY)
        message = message.removeprefix(NOTIFY)
        if message == DEAF and header.sequence not in ignored:
            ignored.add(header.sequence)  # as if the vector had been lost
            continue
        state, answer = _answer(engine, header, message)
        if header.kind == POWER_CYCLE:
            answer += l1.read(COMMAND_LINE_GPA, COMMAND_LINE_MAX).split(b"\0", 1)[0]
        reply = header._replace(state=state, length=len(answer))
        if message.startswith(b"lie:"):
            reply = LIES.get(message[4:], lambda h: h)(reply)
        l1.write(ring, reply.pack() + answer)
        if notify:
            l1.vmcall(GHCI_IO, r12=1, r13=1, r14=NOTIFY_PORT, r15=1)


def _answer(engine: Any, header: Ring, message: bytes) -> tuple[int, bytes]:
    if header.kind == POWER_CYCLE:
        if engine is not None:
            engine.power_off()
            engine.power_on()
        return RESPONSE, f"power-cycle vm {header.vm}: ".encode()
    if header.kind != TPM_COMMAND:
        return ERROR, b""
    if engine is None or message.startswith(b"lie:"):
        return RESPONSE, ECHO_MARKER + bytes([header.vm, header.locality]) + message
    return RESPONSE, engine.process(message, header.locality)
