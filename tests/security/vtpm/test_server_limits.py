"""`vtpm serve` limits: port validation, the idle timeout against clients that hold every
connection slot, and TPM_STOP only with --allow-stop."""

from __future__ import annotations

import contextlib
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.tpm_socket import recv_exact, recv_response
from tests.support.vtpm_process import VtpmProcess
from vtpm.protocol import MssimCommand
from vtpm.server import MAX_CONNECTIONS, ServerConfigError, VtpmServer

ROOT = Path(__file__).resolve().parents[3]
GET_RANDOM_16 = struct.pack(">HIIH", 0x8001, 12, 0x17B, 16)
IDLE_TIMEOUT_S = 3.0
# The server looks for idle connections every min(1 s, timeout / 2): a silent connection is
# closed between one timeout and one timeout plus two sweeps after its last traffic.
SWEEP_S = min(1.0, IDLE_TIMEOUT_S / 2)
SCHEDULING_SLACK_S = 2.0
PLATFORM_FAILURE = struct.pack(">I", 1)


@pytest.mark.parametrize("port", ["65535", "-1", "70000", "http"])
def test_bad_ports_are_refused_with_a_clear_line(port: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vtpm", "serve", "--port", port],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"argument --port: port {port}" in result.stderr
    if port != "http":
        assert "must be 0..65534" in result.stderr and "platform port is port + 1" in (
            result.stderr
        )


def test_server_object_refuses_bad_settings(engine: object) -> None:
    from vtpm.engine import TpmEngine

    assert isinstance(engine, TpmEngine)
    for kwargs in ({"port": 65535}, {"port": -1}, {"idle_timeout_s": 0}, {"max_connections": 0}):
        with pytest.raises(ServerConfigError):
            VtpmServer(engine, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def more_descriptors() -> Iterator[None]:
    """Room for 2 x MAX_CONNECTIONS client sockets in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * MAX_CONNECTIONS
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _get_random(server: VtpmProcess) -> bool:
    """One well-behaved swtpm-style client: True if its GetRandom was answered."""
    try:
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(GET_RANDOM_16)
            return len(recv_response(sock)) == 28
    except OSError:  # refused at the limit: closed or reset
        return False


def test_idle_clients_cannot_keep_others_out_past_the_idle_timeout(
    vtpm_factory: Callable[..., VtpmProcess], more_descriptors: None
) -> None:
    server = vtpm_factory("--no-provision", "--idle-timeout", str(IDLE_TIMEOUT_S))
    held: list[socket.socket] = []
    try:
        # 2 x the limit: each client is answered once, then keeps its connection and goes silent.
        for _ in range(2 * MAX_CONNECTIONS):
            sock = socket.create_connection((server.host, server.port), timeout=10)
            held.append(sock)
            with contextlib.suppress(OSError):
                sock.sendall(GET_RANDOM_16)
                recv_response(sock)
        idle_from = time.monotonic()
        assert not _get_random(server), "the idle clients did not reach the connection limit"
        deadline = idle_from + IDLE_TIMEOUT_S + 2 * SWEEP_S + SCHEDULING_SLACK_S
        while not _get_random(server):
            assert time.monotonic() < deadline, "the idle clients kept a client out too long"
            time.sleep(0.1)
        waited = time.monotonic() - idle_from
        assert waited >= IDLE_TIMEOUT_S - SWEEP_S, f"served after {waited:.1f} s: no limit?"
        # The silent clients were disconnected by the server, not by themselves.
        closed = 0
        for sock in held[: MAX_CONNECTIONS // 2]:
            sock.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                closed += sock.recv(1) == b""
        assert closed == MAX_CONNECTIONS // 2
    finally:
        for sock in held:
            sock.close()
    assert server.proc.poll() is None


def test_a_client_that_keeps_talking_is_not_dropped(
    vtpm_factory: Callable[..., VtpmProcess],
) -> None:
    server = vtpm_factory("--no-provision", "--idle-timeout", "1")
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        for _ in range(6):  # 3 s of traffic every half second, past three timeouts
            sock.sendall(GET_RANDOM_16)
            assert len(recv_response(sock)) == 28
            time.sleep(0.5)


@pytest.mark.parametrize("platform", [True, False], ids=["platform_port", "command_port"])
def test_tpm_stop_without_allow_stop_is_refused_and_the_server_serves_on(
    vtpm_factory: Callable[..., VtpmProcess], platform: bool
) -> None:
    server = vtpm_factory("--no-provision")
    port = server.platform_port if platform else server.port
    with socket.create_connection((server.host, port), timeout=30) as sock:
        sock.sendall(struct.pack(">I", MssimCommand.STOP))
        assert recv_exact(sock, 4) == PLATFORM_FAILURE
        # the connection stays usable too
        sock.sendall(struct.pack(">I", MssimCommand.STOP))
        assert recv_exact(sock, 4) == PLATFORM_FAILURE
    time.sleep(0.2)
    assert server.proc.poll() is None
    assert _get_random(server)
    code, out, err = server.stop()
    assert code == 0 and "vtpm: stopped" in out
    assert "TPM_STOP from" in err and "refused" in err


def test_tpm_stop_with_allow_stop_ends_the_server(
    vtpm_factory: Callable[..., VtpmProcess],
) -> None:
    server = vtpm_factory("--no-provision", "--allow-stop")
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(struct.pack(">I", MssimCommand.STOP))
        assert recv_exact(sock, 4) == bytes(4)
    assert server.proc.wait(timeout=15) == 0
