"""Plain-socket clients of the swtpm data channel of `vtpm serve`: exact receives, whole TPM
responses, one command per connection (as the swtpm TCTI does) or many on one connection, and
an orderly close that returns only once the server has dropped the connection."""

from __future__ import annotations

import socket

from tests.support.vtpm_process import VtpmProcess

IO_TIMEOUT_S = 30.0
TPM_HEADER_SIZE = 10  # TPM 2.0 response header: tag u16, responseSize u32, responseCode u32
TPM_SIZE_FIELD = slice(2, 6)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly `n` bytes from `sock`; ConnectionError if it closes first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def recv_response(sock: socket.socket) -> bytes:
    """One whole TPM response: the header, then as many bytes as its size field says."""
    header = recv_exact(sock, TPM_HEADER_SIZE)
    size = int.from_bytes(header[TPM_SIZE_FIELD], "big")
    return header + recv_exact(sock, size - TPM_HEADER_SIZE)


def close_after_server(sock: socket.socket) -> None:
    """Close `sock` once the server has closed its end: shut down our sending side, read until
    the server's EOF, then close. `vtpm serve` forgets a connection before closing it, so when
    this returns the server no longer counts it (a plain close() returns before the server has
    even seen the EOF)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    except ConnectionError:  # reset instead of closed: gone from the server all the same
        pass
    finally:
        sock.close()


def swtpm_raw(server: VtpmProcess, command: bytes) -> bytes:
    """One command over the swtpm data channel with a plain socket, as the swtpm TCTI does."""
    with socket.create_connection((server.host, server.port), timeout=IO_TIMEOUT_S) as sock:
        sock.sendall(command)
        return recv_response(sock)


class SwtpmSocket:
    """A `vtpm.wire.Transport` that sends each command on a new swtpm data connection and
    closes it only after the server has (close_after_server), so each command leaves no
    connection behind on the server."""

    def __init__(self, server: VtpmProcess) -> None:
        self.server = server

    def process(self, command: bytes) -> bytes:
        sock = socket.create_connection((self.server.host, self.server.port), IO_TIMEOUT_S)
        try:
            sock.sendall(command)
            return recv_response(sock)
        finally:
            close_after_server(sock)


class SocketTransport:
    """A `vtpm.wire.Transport` that sends every command on one swtpm data connection."""

    def __init__(self, server: VtpmProcess) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=IO_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def process(self, command: bytes) -> bytes:
        self.sock.sendall(command)
        return recv_response(self.sock)

    def close(self) -> None:
        self.sock.close()
