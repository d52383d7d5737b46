"""The connection limit of `vtpm serve`: past MAX_CONNECTIONS a new connection is closed
unanswered before any of its commands runs (the native fast path included), and the server
serves again once clients leave. Each test starts its own server, so no other test's clients
count against the limit."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from tests.support.tpm_socket import SwtpmSocket, close_after_server, recv_response
from tests.support.vtpm_process import CHANNEL_PATHS, VtpmProcess, launch_on_path
from vtpm import wire
from vtpm.server import MAX_CONNECTIONS

GET_RANDOM_16 = struct.pack(">HIIH", 0x8001, 12, 0x17B, 16)
GET_RANDOM_16_RESPONSE_SIZE = 10 + 2 + 16
DEBUG_PCR = 16  # resettable and extendable at locality 0 (PC Client)
CONNECT_TIMEOUT_S = 10


@pytest.fixture(params=sorted(CHANNEL_PATHS))
def server(request: pytest.FixtureRequest) -> Iterator[VtpmProcess]:
    """A fresh server on each swtpm-channel path (native fast path, Python), no client yet."""
    srv = launch_on_path(request.param)
    try:
        yield srv
    finally:
        code, _out, err = srv.stop()
    assert code == 0 and "Traceback" not in err, err


def _connect(server: VtpmProcess) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=CONNECT_TIMEOUT_S)


def _pcr16(server: VtpmProcess) -> bytes:
    """PCR 16 (SHA-256), read on a connection the server has dropped again when this returns."""
    return wire.pcr_read(wire.TpmClient(SwtpmSocket(server)), wire.TPM_ALG_SHA256, DEBUG_PCR)


def _served(server: VtpmProcess, held: list[socket.socket]) -> None:
    """Open one more connection, get GetRandom answered on it, and keep it in `held`."""
    sock = _connect(server)
    held.append(sock)
    sock.sendall(GET_RANDOM_16)
    assert len(recv_response(sock)) == GET_RANDOM_16_RESPONSE_SIZE, f"connection {len(held)}"


def _refused(server: VtpmProcess, command: bytes) -> bool:
    """Whether a new connection sending `command` is closed (or reset) without an answer."""
    with _connect(server) as sock:
        sock.sendall(command)
        try:
            return sock.recv(65536) == b""
        except ConnectionResetError:
            return True


def test_connection_limit_refuses_before_running_anything(server: VtpmProcess) -> None:
    """Exactly MAX_CONNECTIONS connections are served; the next one is closed unanswered and
    its PCR_Extend never reaches the TPM; once the clients have gone, a new one is served."""
    before = _pcr16(server)
    extend = wire.build_command(
        wire.TPM_CC_PCR_EXTEND,
        [DEBUG_PCR],
        struct.pack(">IH", 1, wire.TPM_ALG_SHA256) + bytes(range(32)),
        [wire.PasswordAuth()],
    )
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            _served(server, held)
        assert _refused(server, GET_RANDOM_16)
        assert _refused(server, extend)
    finally:
        for sock in held:
            close_after_server(sock)
    assert _pcr16(server) == before


def test_a_connection_that_leaves_frees_its_place(server: VtpmProcess) -> None:
    """At the limit, one client leaving lets exactly one new client in."""
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            _served(server, held)
        assert _refused(server, GET_RANDOM_16)
        close_after_server(held.pop())
        _served(server, held)
        assert _refused(server, GET_RANDOM_16)
    finally:
        for sock in held:
            close_after_server(sock)
