"""Fixtures for the manufacture security tests: a `vtpm serve` per module (the integration
conftest's launcher) and a raw swtpm-framing socket that `vtpm.manufacture` can drive directly."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.integration.vtpm.conftest import (
    VtpmProcess,
    engine,  # noqa: F401 (a fixture, shared by name)
    launch_vtpm,
    vtpm_factory,  # noqa: F401 (a fixture, shared by name)
)

IO_TIMEOUT_S = 30.0
HEADER_SIZE = 10  # TPM 2.0 response header: tag u16, responseSize u32, responseCode u32
SIZE_FIELD = slice(2, 6)


class SocketTransport:
    """Sends raw TPM commands on the swtpm data channel (one command, one response)."""

    def __init__(self, server: VtpmProcess) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=IO_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("vtpm serve closed the connection")
            data += chunk
        return data

    def process(self, command: bytes) -> bytes:
        self.sock.sendall(command)
        head = self._recv(HEADER_SIZE)
        return head + self._recv(int.from_bytes(head[SIZE_FIELD], "big") - HEADER_SIZE)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def vtpm_server() -> Iterator[VtpmProcess]:
    server = launch_vtpm()
    try:
        yield server
    finally:
        server.stop()
