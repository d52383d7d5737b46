"""`vtpm serve` through tpm2-pytss (mssim and swtpm TCTIs) and tpm2-tools."""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RC, TPM2_SU, TPMA_NV
from tpm2_pytss.types import (
    TPM2B_AUTH,
    TPM2B_NV_PUBLIC,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_NV_PUBLIC,
    TPMT_HA,
    TPMU_HA,
)

from tests.support.tpm_socket import SwtpmSocket, recv_exact, swtpm_raw
from tests.support.vtpm_process import CHANNEL_PATHS, VtpmProcess, launch_on_path
from vtpm import wire
from vtpm.libtpms import TPM_FAIL, TPM_SUCCESS
from vtpm.protocol import MssimCommand, SwtpmControl
from vtpm.server import DEFAULT_BUSY_POLL_US, MAX_BUSY_POLL_US, default_busy_poll_us

TCTIS = ("swtpm", "mssim")
BANKS = {"sha256": (TPM2_ALG.SHA256, hashlib.sha256), "sha384": (TPM2_ALG.SHA384, hashlib.sha384)}
RSA_EK_CERT_INDEX = 0x01C00002
ECC_EK_CERT_INDEX = 0x01C0000A
STARTUP_CLEAR = struct.pack(">HIIH", 0x8001, 12, 0x144, 0)
GET_RANDOM_16 = struct.pack(">HIIH", 0x8001, 12, 0x17B, 16)
DRTM_PCR = 20  # PC Client: extended from localities 1-3, not 0
IDLE_SETTLE_S = 0.2  # more than the busy-poll windows of the idle test's server
IDLE_MEASURE_S = 1.0
SLOW_WINDOW_US = 2000  # busy-poll window of the slow-client test's server
SLOW_GAP_S = 0.006  # its client's think time: longer than the window
SLOW_COMMANDS = 150
NV_ATTRS = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE


@pytest.fixture(scope="module", params=sorted(CHANNEL_PATHS))
def vtpm_server(request: pytest.FixtureRequest) -> Iterator[VtpmProcess]:
    """One provisioned `vtpm serve` per swtpm-channel path (native fast path, Python)."""
    server = launch_on_path(request.param)
    yield server
    server.stop()


def platform(server: VtpmProcess, *signals: MssimCommand) -> list[int]:
    """Send mssim platform signals to port+1 and return the acks."""
    acks = []
    with socket.create_connection((server.host, server.platform_port), timeout=30) as sock:
        for sig in signals:
            sock.sendall(struct.pack(">I", sig))
            acks.append(struct.unpack(">I", recv_exact(sock, 4))[0])
        sock.sendall(struct.pack(">I", MssimCommand.SESSION_END))
    return acks


def ha(bank: str, digest: bytes) -> TPMT_HA:
    """A TPMT_HA for one bank."""
    return TPMT_HA(hashAlg=BANKS[bank][0], digest=TPMU_HA(**{bank: digest}))


def define_nv(esapi: ESAPI, index: int, data: bytes) -> None:
    public = TPM2B_NV_PUBLIC(
        nvPublic=TPMS_NV_PUBLIC(
            nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=NV_ATTRS, dataSize=len(data)
        )
    )
    handle = esapi.nv_define_space(TPM2B_AUTH(b""), public)
    esapi.nv_write(handle, data, 0)


def read_nv(esapi: ESAPI, index: int, size: int) -> bytes:
    return bytes(esapi.nv_read(esapi.tr_from_tpmpublic(index), size, 0))


def read_pcr(esapi: ESAPI, bank: str, pcr: int) -> bytes:
    selection = TPML_PCR_SELECTION.parse(f"{bank}:{pcr}")
    _counter, _sel, digests = esapi.pcr_read(selection)
    values = digests  # keep the parent alive while reading (tpm2-pytss pitfall)
    return bytes(values[0])


def test_banner_names_both_tcti_strings(vtpm_server: VtpmProcess) -> None:
    text = "\n".join(vtpm_server.banner)
    assert f"mssim:host=127.0.0.1,port={vtpm_server.port}" in text
    assert f"swtpm:host=127.0.0.1,port={vtpm_server.port}" in text
    assert vtpm_server.platform_port == vtpm_server.port + 1
    assert "NV in memory only" in text


@pytest.mark.parametrize("tcti", TCTIS)
def test_tpm_is_started_and_gives_random(vtpm_server: VtpmProcess, tcti: str) -> None:
    startup = swtpm_raw(vtpm_server, STARTUP_CLEAR)
    # The server already started it (like swtpm --flags startup-clear).
    assert struct.unpack(">I", startup[6:10])[0] == TPM2_RC.INITIALIZE
    esapi = vtpm_server.esapi(tcti)
    a, b = bytes(esapi.get_random(32)), bytes(esapi.get_random(32))
    assert len(a) == 32 and a != b
    esapi.close()


@pytest.mark.parametrize(("tcti", "pcr"), [("swtpm", 16), ("mssim", 23)])
def test_pcr_extend_and_read_in_sha256_and_sha384(
    vtpm_server: VtpmProcess, tcti: str, pcr: int
) -> None:
    esapi = vtpm_server.esapi(tcti)
    esapi.pcr_reset(ESYS_TR.parse(f"PCR{pcr}"))
    measurements = [b"first", b"second"]
    for m in measurements:
        esapi.pcr_extend(
            ESYS_TR.parse(f"PCR{pcr}"),
            TPML_DIGEST_VALUES([ha(bank, fn(m).digest()) for bank, (_alg, fn) in BANKS.items()]),
        )
    for bank, (_alg, fn) in BANKS.items():
        expected = bytes(fn().digest_size)
        for m in measurements:
            expected = fn(expected + fn(m).digest()).digest()
        assert read_pcr(esapi, bank, pcr) == expected, bank
    esapi.close()


@pytest.mark.parametrize(("tcti", "index"), [("swtpm", 0x01500020), ("mssim", 0x01500021)])
def test_nv_define_write_read(vtpm_server: VtpmProcess, tcti: str, index: int) -> None:
    esapi = vtpm_server.esapi(tcti)
    data = os.urandom(48)
    define_nv(esapi, index, data)
    assert read_nv(esapi, index, len(data)) == data
    esapi.nv_undefine_space(esapi.tr_from_tpmpublic(index))
    with pytest.raises(TSS2_Exception):
        esapi.tr_from_tpmpublic(index)
    esapi.close()


@pytest.mark.parametrize("tcti", TCTIS)
def test_tpm2_pcrread(vtpm_server: VtpmProcess, tcti: str) -> None:
    env = dict(os.environ, TPM2TOOLS_TCTI=getattr(vtpm_server, tcti))
    out = subprocess.run(
        ["tpm2_pcrread", "sha256:0,7+sha384:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "sha256:" in out and "sha384:" in out
    assert "0 : 0x" + "0" * 64 in out  # nothing measured PCR0 on a bare vTPM


def test_ek_certificates_are_in_nv(vtpm_server: VtpmProcess) -> None:
    esapi = vtpm_server.esapi("swtpm")
    for index in (RSA_EK_CERT_INDEX, ECC_EK_CERT_INDEX):
        public, _name = esapi.nv_read_public(esapi.tr_from_tpmpublic(index))
        assert public.nvPublic.dataSize > 300
    esapi.close()


def test_concurrent_clients_get_consistent_results(vtpm_server: VtpmProcess) -> None:
    """Several clients at once: commands are serialized and nobody sees anyone else's state."""
    rounds = 40
    errors: list[BaseException] = []
    pcr_of = {"swtpm": 16, "mssim": 23}

    def extender(tcti: str) -> None:
        try:
            esapi = vtpm_server.esapi(tcti)
            handle = ESYS_TR.parse(f"PCR{pcr_of[tcti]}")
            esapi.pcr_reset(handle)
            for i in range(rounds):
                esapi.pcr_extend(
                    handle, TPML_DIGEST_VALUES([ha("sha256", hashlib.sha256(b"%d" % i).digest())])
                )
            expected = bytes(32)
            for i in range(rounds):
                expected = hashlib.sha256(expected + hashlib.sha256(b"%d" % i).digest()).digest()
            assert read_pcr(esapi, "sha256", pcr_of[tcti]) == expected
            esapi.close()
        except BaseException as exc:
            errors.append(exc)

    def randomizer() -> None:
        try:
            esapi = vtpm_server.esapi("mssim")
            seen = {bytes(esapi.get_random(16)) for _ in range(rounds)}
            assert len(seen) == rounds
            esapi.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=extender, args=(t,)) for t in TCTIS]
    threads += [threading.Thread(target=randomizer) for _ in range(2)]
    threads += [
        threading.Thread(
            target=lambda: [swtpm_raw(vtpm_server, GET_RANDOM_16) for _ in range(rounds)]
        )
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def test_client_vanishing_mid_command_loses_nothing_for_others(vtpm_server: VtpmProcess) -> None:
    esapi = vtpm_server.esapi("mssim")
    define_nv(esapi, 0x01500022, b"stays intact")
    before = read_pcr(esapi, "sha256", 0)
    # Half a command, then gone.
    with socket.create_connection((vtpm_server.host, vtpm_server.port)) as sock:
        sock.sendall(GET_RANDOM_16[:7])
    # A whole command, gone before reading the answer.
    for _ in range(20):
        with socket.create_connection((vtpm_server.host, vtpm_server.port)) as sock:
            sock.sendall(GET_RANDOM_16)
    assert read_nv(esapi, 0x01500022, 12) == b"stays intact"
    assert read_pcr(esapi, "sha256", 0) == before
    assert len(swtpm_raw(vtpm_server, GET_RANDOM_16)) == 10 + 2 + 16
    esapi.nv_undefine_space(esapi.tr_from_tpmpublic(0x01500022))
    esapi.close()


def test_power_cycle_keeps_nv_by_default(vtpm_factory: Callable[..., VtpmProcess]) -> None:
    server = vtpm_factory("--no-provision")
    esapi = server.esapi("mssim")
    define_nv(esapi, 0x01500030, b"persists")
    esapi.pcr_extend(ESYS_TR.PCR16, TPML_DIGEST_VALUES([ha("sha256", bytes(32))]))
    esapi.close()
    assert platform(server, MssimCommand.POWER_OFF) == [0]
    off = swtpm_raw(server, GET_RANDOM_16)
    assert struct.unpack(">I", off[6:10])[0] == 0x101  # TPM_RC_FAILURE while powered off
    assert platform(server, MssimCommand.POWER_ON, MssimCommand.NV_ON) == [0, 0]
    esapi = server.esapi("mssim")
    esapi.startup(TPM2_SU.CLEAR)  # a power-on wants TPM2_Startup, as hardware does
    assert read_nv(esapi, 0x01500030, 8) == b"persists"
    assert read_pcr(esapi, "sha256", 16) == bytes(32)
    esapi.close()


def test_wipe_on_power_cycle_remanufactures(vtpm_factory: Callable[..., VtpmProcess]) -> None:
    server = vtpm_factory("--wipe-on-power-cycle")
    assert "UNPROVISIONED" not in "\n".join(server.banner)
    esapi = server.esapi("swtpm")
    define_nv(esapi, 0x01500031, b"forgotten")
    esapi.close()
    assert platform(server, MssimCommand.POWER_OFF, MssimCommand.POWER_ON) == [0, 0]
    esapi = server.esapi("mssim")
    esapi.startup(TPM2_SU.CLEAR)
    with pytest.raises(TSS2_Exception):
        esapi.tr_from_tpmpublic(0x01500031)
    esapi.tr_from_tpmpublic(RSA_EK_CERT_INDEX)  # re-manufactured: the certificates are back
    esapi.tr_from_tpmpublic(ECC_EK_CERT_INDEX)
    esapi.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stops_cleanly_on_signal(vtpm_factory: Callable[..., VtpmProcess], sig: int) -> None:
    server = vtpm_factory("--no-provision")
    assert len(swtpm_raw(server, GET_RANDOM_16)) == 28
    code, out, err = server.stop(sig)
    assert code == 0, err
    assert "vtpm: stopped" in out
    assert "Traceback" not in err


def test_platform_stop_ends_the_server(vtpm_factory: Callable[..., VtpmProcess]) -> None:
    server = vtpm_factory("--no-provision", "--allow-stop")
    with socket.create_connection((server.host, server.platform_port), timeout=30) as sock:
        sock.sendall(struct.pack(">I", MssimCommand.STOP))
        assert recv_exact(sock, 4) == bytes(4)
    assert server.proc.wait(timeout=15) == 0


def test_no_file_is_ever_written(vtpm_factory: Callable[..., VtpmProcess], tmp_path: Path) -> None:
    """Run in an empty read-only directory (also as HOME and TMPDIR), exercise NV, manufacture
    and power cycles: nothing appears anywhere we pointed it."""
    workdir = tmp_path / "ro"
    workdir.mkdir()
    workdir.chmod(0o555)
    try:
        server = vtpm_factory(
            "--wipe-on-power-cycle",
            cwd=workdir,
            extra_env={
                "HOME": str(workdir),
                "TMPDIR": str(workdir),
                "PYTHONDONTWRITEBYTECODE": "1",
            },
        )
        esapi = server.esapi("mssim")
        define_nv(esapi, 0x01500032, b"nv write")
        esapi.close()
        platform(server, MssimCommand.POWER_OFF, MssimCommand.POWER_ON)
        esapi = server.esapi("swtpm")
        esapi.startup(TPM2_SU.CLEAR)
        define_nv(esapi, 0x01500033, b"again")
        esapi.close()
        code, _out, err = server.stop()
        assert code == 0, err
        assert list(workdir.iterdir()) == []
    finally:
        workdir.chmod(0o755)


def _vtpm_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    return subprocess.run(
        [sys.executable, "-m", "vtpm", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_unknown_attester_is_refused_by_name() -> None:
    result = _vtpm_cli("serve", "--port", "0", "--attester", "no-such-attester")
    assert result.returncode == 2
    assert "no-such-attester" in result.stderr


def test_busy_port_is_reported(vtpm_server: VtpmProcess) -> None:
    result = _vtpm_cli("serve", "--port", str(vtpm_server.port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{vtpm_server.port}" in result.stderr


def test_ek_option_selects_the_eks(vtpm_factory: Callable[..., VtpmProcess]) -> None:
    server = vtpm_factory("--ek", "ecc")
    esapi = server.esapi("mssim")
    esapi.tr_from_tpmpublic(ECC_EK_CERT_INDEX)
    with pytest.raises(TSS2_Exception):
        esapi.tr_from_tpmpublic(RSA_EK_CERT_INDEX)
    esapi.close()


def test_info_command_describes_the_running_tpm(vtpm_server: VtpmProcess) -> None:
    result = _vtpm_cli("info", "--tcti", vtpm_server.mssim)
    assert result.returncode == 0, result.stderr
    assert "sha256" in result.stdout and "sha384" in result.stdout


def swtpm_control(server: VtpmProcess, command: bytes) -> bytes:
    """One swtpm control command on its own platform-port connection, as the swtpm TCTI sends
    every one; returns the TPM_RESULT reply."""
    with socket.create_connection((server.host, server.platform_port), timeout=30) as sock:
        sock.sendall(command)
        return recv_exact(sock, 4)


def set_locality(locality: int) -> bytes:
    return struct.pack(">IB", SwtpmControl.SET_LOCALITY, locality)


def test_swtpm_control_channel_on_the_platform_port(vtpm_server: VtpmProcess) -> None:
    """What the swtpm TCTI sends to port+1: CMD_SET_LOCALITY (5), one command per connection."""
    assert swtpm_control(vtpm_server, set_locality(0)) == struct.pack(">I", TPM_SUCCESS)
    assert swtpm_control(vtpm_server, set_locality(9)) == struct.pack(">I", TPM_FAIL)
    esapi = vtpm_server.esapi("swtpm")
    assert len(bytes(esapi.get_random(8))) == 8
    esapi.close()


def test_swtpm_control_connection_refuses_init(vtpm_server: VtpmProcess) -> None:
    """CMD_INIT (2) is mssim POWER_OFF on the wire, so it is not served as swtpm control: after
    a CMD_SET_LOCALITY it gets TPM_FAIL and the TPM keeps running."""
    cmd_init = struct.pack(">II", 2, 1)  # swtpm CMD_INIT, PTM_INIT_FLAG_DELETE_VOLATILE
    with socket.create_connection(
        (vtpm_server.host, vtpm_server.platform_port), timeout=30
    ) as sock:
        sock.sendall(set_locality(0) + cmd_init)
        assert recv_exact(sock, 8) == struct.pack(">II", TPM_SUCCESS, TPM_FAIL)
        assert sock.recv(1) == b""
    assert len(swtpm_raw(vtpm_server, GET_RANDOM_16)) == 28


def test_swtpm_locality_returns_to_zero_on_power_off(
    vtpm_factory: Callable[..., VtpmProcess],
) -> None:
    """PC Client PCR 20 extends from localities 1-3 only: it shows which locality is in force."""
    server = vtpm_factory("--no-provision")
    tpm = wire.TpmClient(SwtpmSocket(server))
    digest = {wire.TPM_ALG_SHA256: hashlib.sha256(b"locality").digest()}
    assert swtpm_control(server, set_locality(3)) == struct.pack(">I", TPM_SUCCESS)
    wire.pcr_extend(tpm, DRTM_PCR, digest)
    assert platform(server, MssimCommand.POWER_OFF, MssimCommand.POWER_ON) == [0, 0]
    assert tpm.startup_clear()
    with pytest.raises(wire.TpmError) as refused:
        wire.pcr_extend(tpm, DRTM_PCR, digest)
    assert wire.rc_base(refused.value.rc) == TPM2_RC.LOCALITY


class TctiCommon(ctypes.Structure):
    """The head of TSS2_TCTI_CONTEXT_COMMON_V1 (tss2_tcti.h), up to the finalize function."""

    _fields_ = [
        ("magic", ctypes.c_uint64),
        ("version", ctypes.c_uint32),
        ("transmit", ctypes.c_void_p),
        ("receive", ctypes.c_void_p),
        ("finalize", ctypes.CFUNCTYPE(None, ctypes.c_void_p)),
    ]


def test_tss2_swtpm_reset_power_cycles_the_tpm(vtpm_factory: Callable[..., VtpmProcess]) -> None:
    """Tss2_Tcti_Swtpm_Reset's CMD_INIT is served as mssim POWER_OFF, POWER_ON: it succeeds and
    the TPM then waits for TPM2_Startup, with the swtpm locality back at 0."""
    server = vtpm_factory("--no-provision")
    lib = ctypes.CDLL("libtss2-tcti-swtpm.so.0")
    conf = f"host={server.host},port={server.port}".encode()
    size = ctypes.c_size_t()
    assert lib.Tss2_Tcti_Swtpm_Init(None, ctypes.byref(size), conf) == 0
    context = ctypes.create_string_buffer(size.value)
    assert lib.Tss2_Tcti_Swtpm_Init(context, ctypes.byref(size), conf) == 0
    try:
        assert swtpm_control(server, set_locality(3)) == struct.pack(">I", TPM_SUCCESS)
        assert lib.Tss2_Tcti_Swtpm_Reset(context) == 0
    finally:
        TctiCommon.from_buffer(context).finalize(ctypes.addressof(context))
    rc = struct.unpack(">I", swtpm_raw(server, GET_RANDOM_16)[6:10])[0]
    assert rc == TPM2_RC.INITIALIZE
    tpm = wire.TpmClient(SwtpmSocket(server))
    assert tpm.startup_clear()
    with pytest.raises(wire.TpmError) as refused:
        wire.pcr_extend(tpm, DRTM_PCR, {wire.TPM_ALG_SHA256: bytes(32)})
    assert wire.rc_base(refused.value.rc) == TPM2_RC.LOCALITY


@pytest.mark.parametrize("value", ["-1", str(MAX_BUSY_POLL_US + 1)])
def test_busy_poll_option_is_checked(value: str) -> None:
    result = _vtpm_cli("serve", "--port", "0", "--no-provision", "--busy-poll-us", value)
    assert result.returncode == 2
    assert f"busy polling of {value} us: must be 0..{MAX_BUSY_POLL_US}" in result.stderr


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_busy_polling_server_sleeps_once_idle(vtpm_factory: Callable[..., VtpmProcess]) -> None:
    """Busy polling spins only between commands: a second after the last one the server is
    asleep again, and it answers the next command as before."""
    server = vtpm_factory("--no-provision", "--busy-poll-us", "5000")
    assert any("busy-polls 5000 us" in line for line in server.banner)
    for _ in range(200):
        assert len(swtpm_raw(server, GET_RANDOM_16)) == 28
    time.sleep(IDLE_SETTLE_S)
    before = _cpu_seconds(server.proc.pid)
    time.sleep(IDLE_MEASURE_S)
    assert _cpu_seconds(server.proc.pid) - before < IDLE_MEASURE_S / 4
    assert len(swtpm_raw(server, GET_RANDOM_16)) == 28


def test_busy_polling_backs_off_for_a_slow_client(
    vtpm_factory: Callable[..., VtpmProcess],
) -> None:
    """The swtpm TCTI closes its connection after every answer; that is not a request. A client
    sending a command every few milliseconds gets no spinning after the first few windows, so
    the server's CPU stays far below one busy-poll window per command."""
    server = vtpm_factory("--no-provision", "--busy-poll-us", str(SLOW_WINDOW_US))
    before = _cpu_seconds(server.proc.pid)
    for _ in range(SLOW_COMMANDS):
        assert len(swtpm_raw(server, GET_RANDOM_16)) == 28
        time.sleep(SLOW_GAP_S)
    spent = _cpu_seconds(server.proc.pid) - before
    assert spent < SLOW_COMMANDS * SLOW_WINDOW_US * 1e-6 / 4, f"{spent:.3f} s of CPU"


def test_busy_polling_off_by_request(vtpm_factory: Callable[..., VtpmProcess]) -> None:
    server = vtpm_factory("--no-provision", "--busy-poll-us", "0")
    assert any("sleeps between commands" in line for line in server.banner)
    assert len(swtpm_raw(server, GET_RANDOM_16)) == 28


def test_no_busy_polling_on_a_single_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spinning on the only CPU would starve the client it waits for."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert default_busy_poll_us() == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    assert default_busy_poll_us() == DEFAULT_BUSY_POLL_US
