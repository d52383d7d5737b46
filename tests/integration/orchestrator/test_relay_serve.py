"""The relay server end to end: tpm2-pytss clients over the swtpm and mssim TCTIs, the sockets,
the host relay and the ring, to a stand-in L1 in the TD process that runs a libtpms vTPM
(tests/integration/tdxsim/l1_min/relay.py); the platform port's policy; and `--serve` as a
process that SIGINT stops cleanly."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
from tpm2_pytss.types import TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMT_HA, TPMU_HA

from orchestrator.relay import MAX_CONNECTIONS, RelayServer
from tdxsim.host.l1_image import build_l1_image
from tdxsim.host.relay import HostRelay
from tdxsim.host.vmm import RunResult, RunStatus, Vmm, simulated_platform
from tests.support.igvm_files import l1_igvm

ROOT = Path(__file__).resolve().parents[3]
L1_MIN = ROOT / "tests" / "integration" / "tdxsim" / "l1_min"
IMAGE_GPA = 0x100000
RAM = [(0, 32 << 20)]
MAC_KEY, QUOTING = simulated_platform(b"test_relay_serve")
GET_RANDOM_8 = bytes.fromhex("80010000000c0000017b0008")  # TPM2_GetRandom(8), no sessions
STARTUP_CLEAR = bytes.fromhex("80010000000c000001440000")
TPM_RC_SUCCESS, TPM_RC_INITIALIZE = 0, 0x100
POWER_ON, POWER_OFF, NV_ON, SEND_COMMAND = 1, 2, 11, 8
U32 = struct.Struct(">I")
PCR_DEBUG = 16
SWTPM_CLIENT = """
import sys
from tpm2_pytss import ESAPI
with ESAPI(sys.argv[1]) as ectx:
    count = sum(len(ectx.get_random(8)) == 8 for _ in range(int(sys.argv[2])))
print("answered", count)
"""


def stand_in_image() -> bytes:
    """The stand-in L1 with the vTPM package, so it answers with libtpms."""
    return build_l1_image([L1_MIN, ROOT / "vtpm", ROOT / "tdxdefs"], "l1_min.relay:serve")


@dataclass
class Served:
    server: RelayServer
    relay: HostRelay
    result: list[RunResult]
    vmm: Vmm

    def tcti(self, kind: str) -> str:
        return self.server.tcti_strings()[kind]


@contextmanager
def serving(dev_platform_port: bool) -> Iterator[Served]:
    server = RelayServer(dev_platform_port=dev_platform_port)
    with Vmm(QUOTING) as vmm:
        vmm.create(RAM, mac_key=MAC_KEY)
        vmm.load_l1_image(stand_in_image(), IMAGE_GPA)
        vmm.aug_rest()
        vmm.finalize()
        assert vmm.host is not None
        relay = vmm.host.attach_relay(server)
        result: list[RunResult] = []
        thread = threading.Thread(target=lambda: result.append(vmm.run(120)), daemon=True)
        thread.start()
        try:
            assert relay.ready.wait(30), "the stand-in L1 never shared the ring page"
            yield Served(server, relay, result, vmm)
        finally:
            relay.stop.set()
            thread.join(10)
            server.close()
    assert result and result[0].status == RunStatus.STOPPED


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serving(dev_platform_port=False) as s:
        yield s


def rc(response: bytes) -> int:
    return int.from_bytes(response[6:10], "big")


def swtpm_command(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(command)
        return sock.recv(4096)


def platform_signal(port: int, *codes: int) -> list[int]:
    with socket.create_connection(("127.0.0.1", port + 1), timeout=20) as sock:
        answers = []
        for code in codes:
            sock.sendall(U32.pack(code))
            answers.append(U32.unpack(sock.recv(4))[0])
        return answers


@pytest.mark.parametrize("kind", ["mssim", "swtpm"])
def test_tpm2_pytss_talks_to_the_vtpm_in_the_td_over_both_framings(
    served: Served, kind: str
) -> None:
    before = served.relay.stats.answered
    with ESAPI(served.tcti(kind)) as ectx:
        randoms = {bytes(ectx.get_random(16)) for _ in range(20)}
        digest = hashlib.sha256(kind.encode()).digest()
        _, _, digests = ectx.pcr_read(TPML_PCR_SELECTION.parse(f"sha256:{PCR_DEBUG}"))
        old = bytes(digests[0])
        values = TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))
        ectx.pcr_extend(ESYS_TR.parse(f"PCR{PCR_DEBUG}"), TPML_DIGEST_VALUES([values]))
        _, _, digests = ectx.pcr_read(TPML_PCR_SELECTION.parse(f"sha256:{PCR_DEBUG}"))
        assert bytes(digests[0]) == hashlib.sha256(old + digest).digest()
    assert len(randoms) == 20  # 20 different answers: each command really ran
    assert served.relay.stats.answered >= before + 23  # every command went through the ring
    assert set(served.relay.stats.exits_per_command) == {1}  # answers taken at L1's HLT


def test_many_commands_in_sequence_on_one_and_on_many_connections(served: Served) -> None:
    port = served.server.port
    for _ in range(50):  # swtpm style: a connection per command
        assert rc(swtpm_command(port, GET_RANDOM_8)) == TPM_RC_SUCCESS
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        for _ in range(50):  # mssim style: one connection, framed commands
            sock.sendall(U32.pack(SEND_COMMAND) + bytes([0]) + U32.pack(12) + GET_RANDOM_8)
            size = U32.unpack(sock.recv(4))[0]
            body = b""
            while len(body) < size + 4:
                body += sock.recv(size + 4 - len(body))
            assert rc(body[:size]) == TPM_RC_SUCCESS and body[size:] == bytes(4)


def test_more_short_connections_than_the_limit_in_sequence_are_all_answered(
    served: Served,
) -> None:
    """The swtpm TCTI closes its connection after each answer and opens the next at once, so the
    close and the next command often arrive together: closed connections must still be let go,
    or the server would refuse clients once MAX_CONNECTIONS had come."""
    client = subprocess.run(  # another process, so that it races the host loop as clients do
        [sys.executable, "-c", SWTPM_CLIENT, served.tcti("swtpm"), str(2 * MAX_CONNECTIONS + 5)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert client.returncode == 0, client.stderr[-2000:]
    assert client.stdout.split() == ["answered", str(2 * MAX_CONNECTIONS + 5)]


def test_a_command_split_over_two_writes_on_a_new_connection_is_answered(served: Served) -> None:
    port = served.server.port
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(GET_RANDOM_8[:5])  # what the accept finds is not a whole command
        time.sleep(0.05)
        sock.sendall(GET_RANDOM_8[5:])
        assert rc(sock.recv(4096)) == TPM_RC_SUCCESS


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_an_idle_served_td_does_not_keep_spinning(served: Served) -> None:
    """After commands, the host and the TD process spin for a while for the next one; with no
    client they must soon stop (most of an idle second asleep, in both processes)."""
    for _ in range(20):
        assert rc(swtpm_command(served.server.port, GET_RANDOM_8)) == TPM_RC_SUCCESS
    time.sleep(0.2)  # the spin windows run out
    td_before, host_before = _cpu_seconds(served.vmm.proc.pid), time.process_time()
    time.sleep(1.0)
    td_used = _cpu_seconds(served.vmm.proc.pid) - td_before
    host_used = time.process_time() - host_before  # the host loop is a thread of this process
    assert td_used < 0.3 and host_used < 0.3, (td_used, host_used)


def test_a_client_that_leaves_mid_command_does_not_disturb_the_next(served: Served) -> None:
    port = served.server.port
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(GET_RANDOM_8[:7])  # half a command, then gone
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(GET_RANDOM_8)  # a whole command, gone before the answer
    for _ in range(3):
        assert rc(swtpm_command(port, GET_RANDOM_8)) == TPM_RC_SUCCESS


def test_platform_port_refuses_power_signals_without_the_flag(served: Served) -> None:
    port = served.server.port
    sent = served.relay.stats.sent
    # what the mssim TCTI sends when it connects is acknowledged; a power-off is refused
    assert platform_signal(port, POWER_ON, NV_ON, POWER_OFF) == [0, 0, 1]
    assert "POWER_OFF without --dev-platform-port: refused" in served.server.refused[-1]
    assert served.relay.stats.sent == sent  # nothing reached the TD
    assert rc(swtpm_command(port, GET_RANDOM_8)) == TPM_RC_SUCCESS  # still powered, serving


def test_power_cycle_with_the_flag_reaches_l1_as_power_cycle() -> None:
    with serving(dev_platform_port=True) as s:
        port = s.server.port
        assert rc(swtpm_command(port, GET_RANDOM_8)) == TPM_RC_SUCCESS
        assert platform_signal(port, POWER_OFF, POWER_ON) == [0, 0]
        # L1 power-cycled the vTPM: it waits for TPM2_Startup, as after a platform reset
        assert rc(swtpm_command(port, GET_RANDOM_8)) == TPM_RC_INITIALIZE
        assert rc(swtpm_command(port, STARTUP_CLEAR)) == TPM_RC_SUCCESS
        assert rc(swtpm_command(port, GET_RANDOM_8)) == TPM_RC_SUCCESS


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_the_tctis_and_a_signal_stops_it_cleanly(
    tmp_path: Path, signum: signal.Signals
) -> None:
    (tmp_path / "l1.img").write_bytes(stand_in_image())
    l1_igvm(tmp_path / "l1.img", tmp_path / "l1.igvm", IMAGE_GPA)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.serve", "--image", str(tmp_path / "l1.igvm")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"serve ended early: {proc.communicate()[1]}"
            lines.append(line.strip())
            if line.strip().startswith("swtpm:"):
                break
        mssim = next(line for line in lines if line.startswith("mssim:host=127.0.0.1,port="))
        assert f"swtpm:{mssim.partition(':')[2]}" in lines
        with ESAPI(mssim) as ectx:
            assert len(bytes(ectx.get_random(8))) == 8
        td_processes = _children(proc.pid)
        assert td_processes, "the TD process should be a child of the serve process"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "TD exits per TPM command: median 1; answers taken at L1's HLT 1, at its notify 0" in out
    assert "run --serve: stopped; the TD is shut down" in out
    for pid in td_processes:  # no orphan: the TD process is gone, not re-parented
        assert not Path(f"/proc/{pid}").exists() or _zombie_or_gone(pid)
    assert not _children(os.getpid()) & td_processes


def _zombie_or_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_serve_refuses_an_l2_the_td_does_not_have_before_building(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from orchestrator.serve import main

    assert main(l2=3, l2_count=2) == 2
    assert "--l2 3: the TD has L2 VMs 1..2" in capsys.readouterr().err
