"""vTPM workers as L1 starts them, outside the TD: real worker processes from an image zip built
from this checkout, libtpms in each, the L1 side's channel, and each L2's real CRB device."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from svsm import vtpm_launcher, vtpm_workers
from svsm.crb import CrbDevice, CrbRegister, CrbState, CtrlSts
from svsm.vtpm_workers import CrbBackend, VtpmWorkerError, VtpmWorkers
from tdxsim.host.l1_image import zip_packages
from tests.support.processes import running
from vtpm import certs, wire
from vtpm.attest import FakeAttester, check_binding
from vtpm.worker_channel import WorkerChannelTimeout, WorkerOp

ROOT = Path(__file__).resolve().parents[3]
GET_RANDOM_8 = bytes.fromhex("80010000000c0000017b0008")
PCR = 16
BUFFER_GPA, BUFFER_SIZE = 0x1409000, 0x1000
CTRL_START_GO = 1


@pytest.fixture(scope="module")
def image_zip(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("workers") / "l1image.zip"
    path.write_bytes(zip_packages([ROOT / "svsm", ROOT / "vtpm", ROOT / "tdxdefs"]))
    return str(path)


@pytest.fixture
def workers(image_zip: str) -> Iterator[VtpmWorkers]:
    pool = VtpmWorkers(2, image_zip)
    try:
        pool.manufacture(FakeAttester())
        yield pool
    finally:
        pool.close()


def crb_for(backend: CrbBackend) -> tuple[CrbDevice, bytearray]:
    buffer = bytearray(BUFFER_SIZE)

    def write(offset: int, data: bytes) -> None:
        buffer[offset : offset + len(data)] = data

    crb = CrbDevice(
        BUFFER_GPA,
        BUFFER_SIZE,
        lambda offset, size: bytes(buffer[offset : offset + size]),
        write,
        backend,
    )
    backend.attach(crb)
    return crb, buffer


def start(crb: CrbDevice, buffer: bytearray, command: bytes) -> None:
    """What an L2's CRB driver does: locality, cmdReady, the command, START."""
    crb.write(CrbRegister.LOC_CTRL, 4, 1)
    crb.write(CrbRegister.CTRL_REQ, 4, 1)
    buffer[: len(command)] = command
    crb.write(CrbRegister.CTRL_START, 4, CTRL_START_GO)


def pcr_value(tpm: wire.TpmClient) -> bytes:
    return wire.pcr_read(tpm, wire.TPM_ALG_SHA256, PCR)


def test_each_l2_gets_its_own_vtpm_with_its_own_eks_and_ca(workers: VtpmWorkers) -> None:
    one, two = workers[1].identity(), workers[2].identity()
    assert workers[1].pid != workers[2].pid
    for kind in ("rsa", "ecc"):
        assert one.ek_certificates[kind] != two.ek_certificates[kind]
        certs.verify_issued_by(one.ek_certificates[kind], one.ca_certificate)
        certs.verify_issued_by(two.ek_certificates[kind], two.ca_certificate)
        with pytest.raises(certs.CertificateError):
            certs.verify_issued_by(one.ek_certificates[kind], two.ca_certificate)
    # each CA carries its own quote, over REPORTDATA = SHA-384 of that CA's key
    quotes = []
    for identity in (one, two):
        ca = x509.load_der_x509_certificate(identity.ca_certificate)
        quote = ca.extensions.get_extension_for_oid(certs.OID_TD_QUOTE).value.value
        key = ca.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        check_binding(quote, certs.sec1_point(key))
        quotes.append(quote)
    assert quotes[0] != quotes[1]


def test_pcrs_are_independent(workers: VtpmWorkers) -> None:
    tpm1, tpm2 = wire.TpmClient(workers[1]), wire.TpmClient(workers[2])
    before = pcr_value(tpm2)
    wire.pcr_extend(tpm1, PCR, {wire.TPM_ALG_SHA256: bytes(range(32))})
    assert pcr_value(tpm1) != before
    assert pcr_value(tpm2) == before


def test_a_terminal_interrupt_leaves_the_workers_serving(workers: VtpmWorkers) -> None:
    os.kill(workers[1].pid, signal.SIGINT)  # what Ctrl-C sends the whole process group
    crb, buffer = crb_for(CrbBackend(workers[1]))
    start(crb, buffer, GET_RANDOM_8)
    assert crb.state is CrbState.READY and workers[1].alive
    assert wire.TPM_HEADER.unpack_from(buffer)[2] == wire.TPM_RC_SUCCESS


def test_a_killed_worker_makes_its_crb_fatal_and_the_other_l2_goes_on(
    workers: VtpmWorkers,
) -> None:
    crb1, buffer1 = crb_for(CrbBackend(workers[1]))
    crb2, buffer2 = crb_for(CrbBackend(workers[2]))
    os.kill(workers[1].pid, signal.SIGKILL)
    start(crb1, buffer1, GET_RANDOM_8)
    assert crb1.state is CrbState.ERROR
    assert crb1.read(CrbRegister.CTRL_STS, 4) & CtrlSts.FATAL_ERROR
    assert not workers[1].alive and "vTPM worker for L2 1" in workers[1].failure
    start(crb2, buffer2, GET_RANDOM_8)
    assert crb2.state is CrbState.READY
    assert wire.TPM_HEADER.unpack_from(buffer2)[2] == wire.TPM_RC_SUCCESS
    assert len(buffer2[: int.from_bytes(buffer2[2:6], "big")]) == 10 + 2 + 8
    # the failed worker stays failed: no second attempt reaches a dead process
    with pytest.raises(VtpmWorkerError, match="vTPM worker for L2 1"):
        workers[1].process(GET_RANDOM_8)


def test_a_worker_that_stops_answering_is_timed_out_and_killed(
    workers: VtpmWorkers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vtpm_workers, "COMMAND_TIMEOUT_S", 0.3)
    worker = workers[2]
    os.kill(worker.pid, signal.SIGSTOP)
    begin = time.monotonic()
    with pytest.raises(VtpmWorkerError, match=r"L2 2 .*no answer in time"):
        worker.process(GET_RANDOM_8)
    assert time.monotonic() - begin < 5
    gone = time.monotonic() + 5
    while running(worker.pid) and time.monotonic() < gone:  # killed, and reaped
        time.sleep(0.01)
    assert not running(worker.pid)
    assert workers[1].process(GET_RANDOM_8)[6:10] == bytes(4)


def test_a_malformed_request_is_refused_and_the_worker_keeps_serving(
    workers: VtpmWorkers,
) -> None:
    worker = workers[1]
    worker.channel.sock.send(b"VTPW\x02\x00\x00\x00 not a header")
    refusal = worker.channel.recv(5.0)
    assert refusal.op is WorkerOp.ERROR and "refused: worker message" in refusal.text
    worker.channel.send(WorkerOp.QUOTE, b"unasked", 99)
    unexpected = worker.channel.recv(5.0)
    assert unexpected.op is WorkerOp.ERROR and "QUOTE is not a request" in unexpected.text
    response = worker.process(GET_RANDOM_8)
    assert wire.TPM_HEADER.unpack_from(response)[2] == wire.TPM_RC_SUCCESS


def test_power_cycle_manufactures_a_new_vtpm_waiting_for_startup(workers: VtpmWorkers) -> None:
    worker = workers[2]
    before = worker.identity()
    worker.power_cycle(FakeAttester())
    response = worker.process(GET_RANDOM_8)
    assert wire.TPM_HEADER.unpack_from(response)[2] == wire.TPM_RC_INITIALIZE
    tpm = wire.TpmClient(worker)
    tpm.startup_clear()
    after = worker.identity()
    assert after.ek_certificates["rsa"] != before.ek_certificates["rsa"]
    assert after.ca_certificate != before.ca_certificate


def test_close_ends_every_worker(image_zip: str) -> None:
    pool = VtpmWorkers(2, image_zip)
    pool.manufacture(FakeAttester())
    pids = [worker.pid for worker in pool.all]
    assert len(set(pids)) == 2 and all(running(pid) for pid in pids)
    pool.close()
    assert pool.launcher.returncode == 0  # it ended once it had reaped both workers
    assert not [pid for pid in pids if running(pid)]


def test_a_launcher_started_first_is_taken_over(image_zip: str) -> None:
    started = vtpm_launcher.start_launcher(2, image_zip)  # as svsm.entry does, before the rest
    pool = VtpmWorkers(2, image_zip, started=started)
    try:
        assert pool.launcher is started.process
        pool.manufacture(FakeAttester())
        assert all(set(worker.identity().ek_certificates) == {"rsa", "ecc"} for worker in pool.all)
    finally:
        pool.close()
    assert pool.launcher.returncode == 0


def test_a_launcher_with_the_wrong_number_of_channels_is_refused_and_ended(
    image_zip: str,
) -> None:
    started = vtpm_launcher.start_launcher(1, image_zip)
    with pytest.raises(VtpmWorkerError, match="1 worker channels for 2 L2s"):
        VtpmWorkers(2, image_zip, started=started)
    assert started.process.returncode is not None  # killed and reaped, no orphan
    assert all(sock.fileno() == -1 for sock in started.channels)


def test_a_worker_whose_image_lacks_the_vtpm_fails_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "no-vtpm.zip"
    bad.write_bytes(zip_packages([ROOT / "tdxdefs"]))
    pool = VtpmWorkers(1, str(bad))
    try:
        with pytest.raises(
            VtpmWorkerError, match=r"L2 1 .*closed the channel \(the launcher's exit status 1\)"
        ):
            pool.manufacture(FakeAttester(), timeout=30)
    finally:
        pool.close()


def test_a_launcher_that_would_import_from_the_checkout_refuses_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    partial = tmp_path / "no-tdxdefs.zip"
    partial.write_bytes(zip_packages([ROOT / "vtpm"]))
    real = vtpm_launcher.site_dirs()
    monkeypatch.setattr(vtpm_launcher, "site_dirs", lambda: [str(ROOT), *real])
    pool = VtpmWorkers(1, str(partial))
    try:
        with pytest.raises(VtpmWorkerError, match=r"the launcher's exit status 1"):
            pool.manufacture(FakeAttester(), timeout=30)
    finally:
        pool.close()
    assert f"tdxdefs came from {ROOT}/tdxdefs/__init__.py, not the measured image" in (
        capfd.readouterr().err
    )


def test_power_cycle_by_vm_resets_that_crb_and_refuses_an_unknown_vm(
    workers: VtpmWorkers,
) -> None:
    crb, buffer = crb_for(workers.crb_backend(1))
    start(crb, buffer, GET_RANDOM_8)
    assert crb.state is CrbState.READY
    before = workers[1].identity().ca_certificate
    assert workers.power_cycle(1)
    assert crb.state is CrbState.IDLE and not crb.loc_assigned  # as after a platform reset
    wire.TpmClient(workers[1]).startup_clear()
    assert workers[1].identity().ca_certificate != before
    assert not workers.power_cycle(3)  # no third L2
    os.kill(workers[2].pid, signal.SIGKILL)
    crb2, _ = crb_for(workers.crb_backend(2))
    assert not workers.power_cycle(2)
    assert crb2.state is CrbState.ERROR


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_expect_gets_no_answer_and_the_command_after_it_is_served(workers: VtpmWorkers) -> None:
    worker = workers[1]
    for _ in range(3):
        worker.expect()
        response = worker.process(GET_RANDOM_8)
        assert wire.TPM_HEADER.unpack_from(response)[2] == wire.TPM_RC_SUCCESS
    with pytest.raises(WorkerChannelTimeout):  # nothing left over: EXPECT was not answered
        worker.channel.recv(0.2)
    workers.expect(3)  # no such L2: nothing to wake


def test_a_worker_told_to_expect_a_command_that_never_comes_goes_back_to_sleep(
    workers: VtpmWorkers,
) -> None:
    worker = workers[1]
    worker.expect()
    time.sleep(0.2)  # far past EXPECT_SPIN_NS
    before = cpu_seconds(worker.pid)
    time.sleep(1.0)
    assert cpu_seconds(worker.pid) - before < 0.1  # asleep, not spinning
    assert worker.process(GET_RANDOM_8)[6:10] == bytes(4)


def test_expect_to_a_dead_worker_fails_it_and_its_crb(workers: VtpmWorkers) -> None:
    crb, buffer = crb_for(workers.crb_backend(1))
    pid = workers[1].pid
    os.kill(pid, signal.SIGKILL)
    gone = time.monotonic() + 5
    while running(pid) and time.monotonic() < gone:
        time.sleep(0.01)
    workers.expect(1)
    workers.expect(1)  # a failed worker is not asked again
    assert not workers[1].alive and "EXPECT" in workers[1].failure
    start(crb, buffer, GET_RANDOM_8)
    assert crb.state is CrbState.ERROR
