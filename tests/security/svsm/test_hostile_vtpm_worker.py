"""A vTPM worker that answers garbage, against L1's side of the worker channel: each answer fails
that worker (killed through its pidfd) and puts its L2's CRB into the fatal error state; nothing
reaches the CRB buffer. The "worker" here is the test, on the other end of a real socket pair."""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest

from svsm.crb import CrbDevice, CrbRegister, CrbState, CtrlSts
from svsm.vtpm_workers import CrbBackend, VtpmWorker, VtpmWorkerError
from vtpm.worker_channel import MAX_DATAGRAM, WorkerChannel, WorkerOp, encode

GET_RANDOM_8 = bytes.fromhex("80010000000c0000017b0008")
BUFFER_SIZE = 0x1000
FIRST_REQUEST = 1
WAIT_S = 5.0


@pytest.fixture
def stand_in() -> Iterator[subprocess.Popen[bytes]]:
    """A process to stand for the worker (and for the launcher): it is what L1 kills."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def sides(
    stand_in: subprocess.Popen[bytes],
) -> Iterator[tuple[VtpmWorker, socket.socket]]:
    mine, theirs = WorkerChannel.pair()
    worker = VtpmWorker(2, WorkerChannel(mine), stand_in)
    yield worker, theirs
    worker.release()
    theirs.close()


def ready(pid: int) -> bytes:
    return encode(WorkerOp.READY, struct.pack("<I", pid))


def crb_on(worker: VtpmWorker) -> tuple[CrbDevice, bytearray]:
    buffer = bytearray(BUFFER_SIZE)

    def write(offset: int, data: bytes) -> None:
        buffer[offset : offset + len(data)] = data

    backend = CrbBackend(worker)
    crb = CrbDevice(
        0x1413000,
        BUFFER_SIZE,
        lambda offset, size: bytes(buffer[offset : offset + size]),
        write,
        backend,
    )
    backend.attach(crb)
    crb.write(CrbRegister.LOC_CTRL, 4, 1)
    crb.write(CrbRegister.CTRL_REQ, 4, 1)
    buffer[: len(GET_RANDOM_8)] = GET_RANDOM_8
    return crb, buffer


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ([b"junk"], "header.op at offset 4: truncated: 16 bytes needed, 4 available"),
        (
            [encode(WorkerOp.RESPONSE, GET_RANDOM_8, FIRST_REQUEST + 6)],
            "RESPONSE for request 7, not 1",
        ),
        (
            [encode(WorkerOp.QUOTE_REQUEST, bytes(64), FIRST_REQUEST)],
            "answered QUOTE_REQUEST where RESPONSE was expected",
        ),
        ([encode(WorkerOp.ERROR, b"libtpms is on fire", FIRST_REQUEST)], "libtpms is on fire"),
        (
            [struct.pack("<IH2sII", 0x57505456, WorkerOp.RESPONSE, b"\0\0", 1, 5000), bytes(5000)],
            "RESPONSE length at offset 12: 5000 is outside [0, 4096]",
        ),
        ([bytes(MAX_DATAGRAM + 1)], f"more than {MAX_DATAGRAM} bytes refused"),
    ],
)
def test_garbage_from_a_worker_kills_it_and_makes_its_crb_fatal(
    sides: tuple[VtpmWorker, socket.socket],
    stand_in: subprocess.Popen[bytes],
    answers: list[bytes],
    message: str,
) -> None:
    worker, theirs = sides
    theirs.send(ready(stand_in.pid))
    theirs.send(b"".join(answers) if len(answers) > 1 else answers[0])
    crb, buffer = crb_on(worker)
    crb.write(CrbRegister.CTRL_START, 4, 1)
    assert crb.state is CrbState.ERROR
    assert crb.read(CrbRegister.CTRL_STS, 4) & CtrlSts.FATAL_ERROR
    assert buffer[: len(GET_RANDOM_8)] == GET_RANDOM_8  # no response was written
    assert message in worker.failure and f"L2 2 (pid {stand_in.pid})" in worker.failure
    assert stand_in.wait(WAIT_S) == -9  # killed through the pidfd taken at READY
    with pytest.raises(VtpmWorkerError, match="L2 2"):
        worker.process(GET_RANDOM_8)


def test_a_second_ready_fails_the_worker(
    sides: tuple[VtpmWorker, socket.socket], stand_in: subprocess.Popen[bytes]
) -> None:
    worker, theirs = sides
    theirs.send(ready(stand_in.pid))
    theirs.send(ready(stand_in.pid))
    with pytest.raises(VtpmWorkerError, match="said READY twice"):
        worker.process(GET_RANDOM_8)
    assert stand_in.wait(WAIT_S) == -9
