"""The native swtpm-channel fast path against an in-process engine: what it answers itself, what
it hands back to Python untouched, and that it never runs a command the Python path would not."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest
from tpm2_pytss.constants import TPM2_RC

from tests.support.tpm_socket import recv_response
from vtpm import wire
from vtpm.engine import TpmEngine, response_code
from vtpm.fastpath import DEFAULT_LIBRARY, LIBRARY_ENV, Accepted, FastPath, Status
from vtpm.server import VtpmServer
from vtpm.wire import TPM_RC_FAILURE, TPM_RC_SUCCESS

GET_RANDOM_16 = struct.pack(">HIIH", 0x8001, 12, 0x17B, 16)
PCR_LOCALITY_1_TO_3 = 20  # PC Client: extendable from localities 1, 2 and 3 only
CONNECT_TIMEOUT_S = 10


@pytest.fixture
def fastpath() -> FastPath:
    """The built library; its absence is a failure (./tdp setup builds it), never a skip."""
    loaded, why_not = FastPath.load()
    assert loaded is not None, f"{DEFAULT_LIBRARY}: {why_not}"
    return loaded


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A plain listening socket (no TCP_DEFER_ACCEPT, so a silent client is accepted too)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def connect_and_send(listener: socket.socket, data: bytes) -> socket.socket:
    client = socket.create_connection(listener.getsockname(), timeout=CONNECT_TIMEOUT_S)
    if data:
        client.sendall(data)
    return client


def accept(
    fastpath: FastPath, engine: TpmEngine, listener: socket.socket, locality: int = 0
) -> Accepted:
    """Accept the connection waiting on `listener` (the client's bytes are on loopback already)."""
    for _ in range(1000):
        accepted = fastpath.accept(engine, listener.fileno(), locality)
        if accepted is not None:
            return accepted
    raise AssertionError("the fast path accepted nothing")


def test_whole_command_is_answered_in_the_call(
    fastpath: FastPath,
    engine: TpmEngine,
    listener: socket.socket,
) -> None:
    with connect_and_send(listener, GET_RANDOM_16) as client:
        accepted = accept(fastpath, engine, listener)
        try:
            assert accepted.status is Status.ANSWERED
            assert accepted.received == len(GET_RANDOM_16) and accepted.unsent == b""
            response = recv_response(client)
        finally:
            socket.close(accepted.fd)
    assert response_code(response) == TPM_RC_SUCCESS
    assert len(response) == 10 + 2 + 16


@pytest.mark.parametrize(
    "data",
    [
        GET_RANDOM_16[:7],  # truncated header
        GET_RANDOM_16[:11],  # truncated body
        struct.pack(">HIIH", 0x8001, 5000, 0x17B, 16) + bytes(4990),  # size over 4096
        struct.pack(">HIIH", 0x4242, 12, 0x17B, 16),  # bad tag
        GET_RANDOM_16 + GET_RANDOM_16,  # two commands at once
        struct.pack(">I", 8) + bytes(8),  # an mssim frame
    ],
    ids=["short-header", "short-body", "oversized", "bad-tag", "pipelined", "mssim"],
)
def test_anything_else_goes_back_to_python_unprocessed(
    fastpath: FastPath,
    engine: TpmEngine,
    listener: socket.socket,
    data: bytes,
) -> None:
    with connect_and_send(listener, data):
        accepted = accept(fastpath, engine, listener)
        socket.close(accepted.fd)
    assert accepted.status is Status.RECEIVED
    assert accepted.data == data and accepted.received == len(data)


def test_powered_off_tpm_is_never_reached(
    fastpath: FastPath,
    engine: TpmEngine,
    listener: socket.socket,
) -> None:
    engine.power_off()
    with connect_and_send(listener, GET_RANDOM_16):
        accepted = accept(fastpath, engine, listener)
        socket.close(accepted.fd)
    assert accepted.status is Status.RECEIVED and accepted.data == GET_RANDOM_16


def test_silent_and_vanished_clients(
    fastpath: FastPath,
    engine: TpmEngine,
    listener: socket.socket,
) -> None:
    with connect_and_send(listener, b""):
        accepted = accept(fastpath, engine, listener)
        socket.close(accepted.fd)
    assert accepted.status is Status.NOTHING_YET
    connect_and_send(listener, b"").close()
    accepted = accept(fastpath, engine, listener)
    socket.close(accepted.fd)
    assert accepted.status is Status.CLOSED


def test_nothing_waiting_accepts_nothing(
    fastpath: FastPath,
    engine: TpmEngine,
    listener: socket.socket,
) -> None:
    assert fastpath.accept(engine, listener.fileno(), 0) is None


def test_a_bad_listener_is_an_error(fastpath: FastPath, engine: TpmEngine) -> None:
    with socket.socket() as not_listening, pytest.raises(OSError):
        fastpath.accept(engine, not_listening.fileno(), 0)


def test_commands_run_at_the_locality_given(
    fastpath: FastPath,
    engine: TpmEngine,
    listener: socket.socket,
) -> None:
    """PC Client PCR 20 extends from localities 1-3 only."""
    digest = {wire.TPM_ALG_SHA256: hashlib.sha256(b"fast").digest()}
    extend = wire.build_command(
        wire.TPM_CC_PCR_EXTEND,
        [PCR_LOCALITY_1_TO_3],
        struct.pack(">I", 1) + struct.pack(">H", wire.TPM_ALG_SHA256) + digest[wire.TPM_ALG_SHA256],
        [wire.PasswordAuth()],
    )
    results = {}
    for locality in (3, 0):
        with connect_and_send(listener, extend) as client:
            accepted = accept(fastpath, engine, listener, locality)
            try:
                results[locality] = response_code(recv_response(client))
            finally:
                socket.close(accepted.fd)
    assert results[3] == TPM_RC_SUCCESS
    assert wire.rc_base(results[0]) == TPM2_RC.LOCALITY


def test_load_says_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LIBRARY_ENV, "off")
    assert FastPath.load() == (None, f"{LIBRARY_ENV}=off")
    monkeypatch.setenv(LIBRARY_ENV, "/nonexistent/libvtpm_fastpath.so")
    loaded, why_not = FastPath.load()
    assert loaded is None and "/nonexistent/libvtpm_fastpath.so not built" in why_not


class ScriptedFastPath:
    """Stands in for the native library to drive VtpmServer through outcomes the real one gives
    only when something fails (libtpms refusing, a full socket buffer): it accepts and reads
    for real, then reports `status` with `unsent` as the untaken tail of an answer."""

    library = DEFAULT_LIBRARY

    def __init__(self, status: Status, unsent: bytes = b"") -> None:
        self.status = status
        self.unsent = unsent

    def accept(self, engine: TpmEngine, listener_fd: int, locality: int) -> Accepted | None:
        with socket.socket(fileno=os.dup(listener_fd)) as listener:
            try:
                conn, _addr = listener.accept()
            except BlockingIOError:
                return None
        conn.settimeout(CONNECT_TIMEOUT_S)
        received = len(conn.recv(65536))
        return Accepted(conn.detach(), self.status, received, unsent=self.unsent)


@pytest.fixture
def serve_scripted(engine: TpmEngine) -> Iterator[Callable[[ScriptedFastPath], VtpmServer]]:
    """A VtpmServer in a thread on the engine, with a scripted fast path."""
    running: list[tuple[VtpmServer, threading.Thread]] = []

    def start(fastpath: ScriptedFastPath) -> VtpmServer:
        server = VtpmServer(engine, fastpath=fastpath)  # type: ignore[arg-type]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))
        return server

    yield start
    for server, thread in running:
        server.request_stop()
        thread.join(timeout=CONNECT_TIMEOUT_S)
        assert not thread.is_alive()


def ask(server: VtpmServer, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=CONNECT_TIMEOUT_S) as c:
        c.sendall(command)
        c.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := c.recv(65536):
            data += chunk
        return data


def test_server_answers_a_failed_libtpms_call_with_tpm_rc_failure(
    serve_scripted: Callable[[ScriptedFastPath], VtpmServer],
) -> None:
    server = serve_scripted(ScriptedFastPath(Status.TPM_FAILED))
    response = ask(server, GET_RANDOM_16)
    assert len(response) == 10 and response_code(response) == TPM_RC_FAILURE


def test_server_sends_the_tail_the_socket_did_not_take(
    serve_scripted: Callable[[ScriptedFastPath], VtpmServer],
) -> None:
    tail = b"the rest of a long answer"
    server = serve_scripted(ScriptedFastPath(Status.ANSWERED, unsent=tail))
    assert ask(server, GET_RANDOM_16) == tail
