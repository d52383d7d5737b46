"""Hostile clients against `vtpm serve`: every bad input gets an error or a closed connection,
and the server keeps serving with its NV intact."""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from tpm2_pytss.constants import TPM2_ALG, TPMA_NV
from tpm2_pytss.types import TPM2B_AUTH, TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

from tests.support.vtpm_process import CHANNEL_PATHS, VtpmProcess, launch_on_path
from vtpm.protocol import MssimCommand

GET_RANDOM_16 = struct.pack(">HIIH", 0x8001, 12, 0x17B, 16)
TPM_RC_BAD_TAG = 0x01E
TPM_RC_COMMAND_SIZE = 0x142
TPM_RC_FAILURE = 0x101
CANARY_INDEX = 0x01500040
CANARY = b"NV canary: must survive every hostile client"
FUZZ_CASES = 300
FUZZ_SECONDS = 20.0


@pytest.fixture(scope="module", params=sorted(CHANNEL_PATHS))
def server(request: pytest.FixtureRequest) -> Iterator[VtpmProcess]:
    """A provisioned server with an NV canary written before the hostile clients arrive; once
    with the native swtpm-channel fast path, once with the Python one."""
    srv = launch_on_path(request.param)
    esapi = srv.esapi("mssim")
    public = TPM2B_NV_PUBLIC(
        nvPublic=TPMS_NV_PUBLIC(
            nvIndex=CANARY_INDEX,
            nameAlg=TPM2_ALG.SHA256,
            dataSize=len(CANARY),
            attributes=TPMA_NV.OWNERWRITE
            | TPMA_NV.OWNERREAD
            | TPMA_NV.AUTHREAD
            | TPMA_NV.AUTHWRITE,
        )
    )
    handle = esapi.nv_define_space(TPM2B_AUTH(b""), public)
    esapi.nv_write(handle, CANARY, 0)
    esapi.close()
    yield srv
    code, _out, err = srv.stop()
    assert code == 0 and "Traceback" not in err, err


@pytest.fixture(autouse=True)
def still_healthy(server: VtpmProcess) -> Iterator[None]:
    """After each hostile test: the server answers both TCTIs and the canary is unchanged."""
    yield
    assert server.proc.poll() is None, "server died"
    for tcti in ("swtpm", "mssim"):
        esapi = server.esapi(tcti)
        assert len(bytes(esapi.get_random(8))) == 8
        data = bytes(esapi.nv_read(esapi.tr_from_tpmpublic(CANARY_INDEX), len(CANARY), 0))
        assert data == CANARY
        esapi.close()


def _connect(server: VtpmProcess, platform: bool = False) -> socket.socket:
    port = server.platform_port if platform else server.port
    return socket.create_connection((server.host, port), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def _rc(response: bytes, offset: int = 0) -> int:
    return int(struct.unpack_from(">I", response, offset + 6)[0])


def test_garbage_on_command_port_closes_connection(server: VtpmProcess) -> None:
    with _connect(server) as sock:
        sock.sendall(b"\xde\xad\xbe\xef" * 8)
        assert _read_all(sock) == b""


def test_swtpm_frame_with_bad_tag_after_a_good_one(server: VtpmProcess) -> None:
    with _connect(server) as sock:
        sock.sendall(GET_RANDOM_16 + b"\x00\x01" + GET_RANDOM_16[2:])
        data = _read_all(sock)
    assert _rc(data) == 0 and len(data) == 28 + 10
    assert _rc(data, 28) == TPM_RC_BAD_TAG


@pytest.mark.parametrize("size", [4097, 0xFFFFFFFF, 9, 0])
def test_swtpm_frame_with_impossible_size(server: VtpmProcess, size: int) -> None:
    with _connect(server) as sock:
        sock.sendall(struct.pack(">HII", 0x8001, size, 0x17B) + bytes(64))
        data = _read_all(sock)
    assert len(data) == 10 and _rc(data) == TPM_RC_COMMAND_SIZE


@pytest.mark.parametrize("size", [4097, 0x7FFFFFFF, 3])
def test_mssim_frame_with_impossible_size(server: VtpmProcess, size: int) -> None:
    with _connect(server) as sock:
        sock.sendall(struct.pack(">IBI", MssimCommand.SEND_COMMAND, 0, size) + bytes(32))
        data = _read_all(sock)
    assert struct.unpack(">I", data[:4])[0] == 10 and _rc(data, 4) == TPM_RC_COMMAND_SIZE


def test_mssim_inner_command_malformed_keeps_connection(server: VtpmProcess) -> None:
    bad_inner = struct.pack(">HII", 0x8001, 200, 0x17B) + b"\x00\x10"  # claims 200, is 12
    frames = struct.pack(">IBI", MssimCommand.SEND_COMMAND, 0, len(bad_inner)) + bad_inner
    frames += struct.pack(">IBI", MssimCommand.SEND_COMMAND, 0, 12) + GET_RANDOM_16
    with _connect(server) as sock:
        sock.sendall(frames)
        sock.sendall(struct.pack(">I", MssimCommand.SESSION_END))
        data = _read_all(sock)
    assert _rc(data, 4) == TPM_RC_COMMAND_SIZE
    assert _rc(data, 4 + 10 + 4 + 4) == 0  # size, error, ack, size, response


def test_truncated_frames_then_disconnect(server: VtpmProcess) -> None:
    frame = struct.pack(">IBI", MssimCommand.SEND_COMMAND, 0, 12) + GET_RANDOM_16
    for cut in (1, 3, 5, 9, len(frame) - 1):
        with _connect(server) as sock:
            sock.sendall(frame[:cut])
    for cut in (1, 2, 9, 11):
        with _connect(server) as sock:
            sock.sendall(GET_RANDOM_16[:cut])


def test_stalled_clients_do_not_block_others(server: VtpmProcess) -> None:
    stalled = [_connect(server) for _ in range(20)]
    try:
        for i, sock in enumerate(stalled):
            sock.sendall(GET_RANDOM_16[: 1 + i % 11])
        esapi = server.esapi("swtpm")
        assert len(bytes(esapi.get_random(16))) == 16
        esapi.close()
    finally:
        for sock in stalled:
            sock.close()


def test_client_that_never_reads_does_not_stall_the_server(server: VtpmProcess) -> None:
    hog = _connect(server)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        hog.setblocking(False)
        burst = GET_RANDOM_16 * 4000  # ~112 KB of responses nobody reads
        sent = 0
        deadline = time.monotonic() + 5
        while sent < len(burst) and time.monotonic() < deadline:
            try:
                sent += hog.send(burst[sent:])
            except BlockingIOError:
                time.sleep(0.01)
        esapi = server.esapi("mssim")
        assert len(bytes(esapi.get_random(16))) == 16
        esapi.close()
    finally:
        hog.close()


def test_unknown_platform_signal_closes_that_connection(server: VtpmProcess) -> None:
    with _connect(server, platform=True) as sock:
        sock.sendall(struct.pack(">I", 0x0BADF00D))
        assert _read_all(sock) == b""


def test_commands_while_powered_off_get_failure(server: VtpmProcess) -> None:
    with _connect(server, platform=True) as plat:
        plat.sendall(struct.pack(">I", MssimCommand.POWER_OFF))
        assert plat.recv(4) == bytes(4)
        try:
            with _connect(server) as sock:
                sock.sendall(GET_RANDOM_16)
                response = sock.recv(64)
            assert len(response) == 10 and _rc(response) == TPM_RC_FAILURE
            frame = struct.pack(">IBI", MssimCommand.SEND_COMMAND, 0, 12) + GET_RANDOM_16
            with _connect(server) as sock:
                sock.sendall(frame + struct.pack(">I", MssimCommand.SESSION_END))
                data = _read_all(sock)
            assert _rc(data, 4) == TPM_RC_FAILURE
        finally:
            plat.sendall(struct.pack(">I", MssimCommand.POWER_ON))
            assert plat.recv(4) == bytes(4)
    # Back on: the TPM wants TPM2_Startup, as after any power-on.
    esapi = server.esapi("mssim")
    from tpm2_pytss.constants import TPM2_SU

    esapi.startup(TPM2_SU.CLEAR)
    esapi.close()


def test_random_garbage_fuzz(server: VtpmProcess) -> None:
    """Bounded fuzz: random frames in both framings and on the platform port."""
    rng = random.Random(0x7D7)
    deadline = time.monotonic() + FUZZ_SECONDS
    safe_platform = [
        s
        for s in MssimCommand
        if s
        not in (MssimCommand.STOP, MssimCommand.POWER_OFF, MssimCommand.RESET, MssimCommand.RESTART)
    ]
    for case in range(FUZZ_CASES):
        if time.monotonic() > deadline:
            break
        kind = case % 4
        body = rng.randbytes(rng.randrange(0, 64))
        if kind == 0:
            data = struct.pack(">HI", rng.choice((0x8001, 0x8002)), rng.randrange(0, 6000)) + body
        elif kind == 1:
            data = (
                struct.pack(
                    ">IBI", MssimCommand.SEND_COMMAND, rng.randrange(256), rng.randrange(0, 6000)
                )
                + body
            )
        elif kind == 2:
            data = rng.randbytes(rng.randrange(1, 128))
        else:
            data = struct.pack(">I", rng.choice(safe_platform)) + body
        with _connect(server, platform=kind == 3) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            try:
                while sock.recv(65536):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass


def test_pipelined_commands_all_get_answers(server: VtpmProcess) -> None:
    """A burst larger than the output backlog: every held-back frame is answered, none stranded."""
    count, answer_size = 3000, 10 + 2 + 16
    with _connect(server) as sock:
        sock.sendall(GET_RANDOM_16 * count)
        received = b""
        while len(received) < count * answer_size:
            chunk = sock.recv(65536)  # a stranded frame shows as a timeout here
            assert chunk, "server closed the connection"
            received += chunk
    assert len(received) == count * answer_size
    assert all(_rc(received, i * answer_size) == 0 for i in range(count))
