"""One vTPM per L2, each in its own worker process that L1 starts from its measured image.

libtpms keeps global state, so one process can hold one TPM. L1 starts one launcher from the
measured image (`svsm.vtpm_launcher`), which imports the vTPM once and forks one worker per L2,
each on its own channel (`vtpm.worker`). Workers are manufactured in parallel; L1 answers their
quote requests with its own `TdxAttester` (only L1 can TDCALL), one TD quote per vTPM CA, each
over that CA's REPORTDATA. The channel is `vtpm.worker_channel`. Every wait has a deadline. A
worker that dies, times out or answers garbage is killed (through a pidfd taken when it says
READY) and marked failed: its L2's CRB reports a fatal error (`CrbDevice.fail`) while L1 and the
other L2s go on.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from svsm.errors import SvsmError
from svsm.vtpm_launcher import StartedLauncher, start_launcher
from vtpm import wire
from vtpm.attest import Attester
from vtpm.nvindex import EK_CERT_NV_INDEX, CertificateReadError, read_ca_certificate
from vtpm.worker_channel import (
    MAX_TEXT,
    WorkerChannel,
    WorkerChannelClosed,
    WorkerChannelError,
    WorkerChannelTimeout,
    WorkerMessage,
    WorkerOp,
)

if TYPE_CHECKING:  # the L2 side's; L1 imports it only once the workers have started
    from svsm.crb import CrbDevice

MANUFACTURE_TIMEOUT_S = 60.0  # start-up, EK key generation and a TD quote per worker
COMMAND_TIMEOUT_S = 30.0  # the slowest TPM command (an RSA-2048 TPM2_CreatePrimary)
SHUTDOWN_WAIT_S = 2.0
EXIT_WAIT_S = 0.5  # for the exit status of a worker that closed its end
# How long L1 polls for a command's answer before it sleeps (`WorkerChannel.recv`): a small
# command's answer comes well within it, a slow one (key generation) costs L1 only this much.
ANSWER_SPIN_NS = 300_000
MS_PER_S = 1000
PID = struct.Struct("<I")


class VtpmWorkerError(SvsmError):
    """A vTPM worker failed (died, timed out, answered garbage or refused); names the L2."""


@dataclass(frozen=True)
class VtpmIdentity:
    """What a manufactured vTPM publishes: its CA certificate and EK certificates (DER)."""

    ca_certificate: bytes
    ek_certificates: dict[str, bytes]


class VtpmWorker:
    """L1's handle on one worker: `process` runs one TPM command (a `wire.Transport`)."""

    def __init__(self, vm: int, channel: WorkerChannel, launcher: subprocess.Popen[bytes]) -> None:
        self.vm = vm
        self.channel = channel
        self.launcher = launcher
        self.pid = 0  # from READY
        self.started = time.perf_counter()
        self.ready_ms = 0.0  # from start to READY (the launcher's import and the fork)
        self.manufactured_ms = 0.0  # from start to MANUFACTURED
        self._pidfd = -1
        self.sequence = 0
        self.failure = ""
        self.commands = 0

    @property
    def alive(self) -> bool:
        return not self.failure

    def fail(self, why: str) -> VtpmWorkerError:
        """Kill the worker, remember why; the error to raise."""
        if not self.failure:
            self.failure = f"vTPM worker for L2 {self.vm} (pid {self.pid or 'unknown'}): {why}"
            self._kill()
        return VtpmWorkerError(self.failure)

    def _kill(self) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(OSError):  # already gone
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            os.close(self._pidfd)
            self._pidfd = -1
        self.channel.close()  # a worker that never said READY sees EOF and ends

    def _ready(self, msg: WorkerMessage) -> None:
        """READY: note the worker's pid and hold it by a pidfd (immune to pid reuse)."""
        if self.pid:
            raise self.fail("said READY twice")
        (pid,) = PID.unpack(msg.payload)
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError as exc:
            raise self.fail(f"READY from pid {pid}, which cannot be opened: {exc}") from exc
        self.pid = pid
        self.ready_ms = (time.perf_counter() - self.started) * MS_PER_S

    def request(self, op: WorkerOp, payload: bytes = b"") -> int:
        """Send a request; returns its sequence number (the answer must repeat it)."""
        if self.failure:
            raise VtpmWorkerError(self.failure)
        self.sequence += 1
        try:
            self.channel.send(op, payload, self.sequence)
        except WorkerChannelClosed as exc:
            raise self.fail(f"{op.name}: {exc}") from exc
        return self.sequence

    def receive(self, deadline: float, spin_ns: int = 0) -> WorkerMessage:
        """The next message (polled for during the first `spin_ns`): the worker's READY (taken
        here) or one for the current request; a bad one fails the worker."""
        try:
            msg = self.channel.recv(deadline - time.monotonic(), spin_ns)
        except WorkerChannelTimeout as exc:
            raise self.fail(f"no answer in time ({exc})") from exc
        except WorkerChannelClosed as exc:
            raise self.fail(f"{exc}{self._launcher_status()}") from exc
        except WorkerChannelError as exc:
            raise self.fail(str(exc)) from exc
        if msg.op is WorkerOp.READY:
            self._ready(msg)
            return msg
        if msg.sequence != self.sequence:
            raise self.fail(f"{msg.op.name} for request {msg.sequence}, not {self.sequence}")
        return msg

    def _launcher_status(self) -> str:
        """For a worker that never said READY: how the launcher ended, if it did."""
        if self.pid:
            return ""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.launcher.wait(EXIT_WAIT_S)
        status = self.launcher.returncode
        return f" (the launcher's exit status {status})" if status is not None else ""

    def serve_attestation(self, msg: WorkerMessage, attester: Attester) -> None:
        """Answer a worker's QUOTE_REQUEST or EVENT_LOG_REQUEST with L1's attester. If the
        attester fails the worker is told (REFUSED) and the attester's error is raised, named."""
        try:
            if msg.op is WorkerOp.QUOTE_REQUEST:
                answer, payload = WorkerOp.QUOTE, attester.quote(msg.payload)
            else:
                answer, payload = WorkerOp.EVENT_LOG, attester.event_log()
        except Exception as exc:
            with contextlib.suppress(WorkerChannelClosed, WorkerChannelError):
                self.channel.send(WorkerOp.REFUSED, str(exc).encode()[:MAX_TEXT], msg.sequence)
            raise VtpmWorkerError(
                f"L2 {self.vm} vTPM: manufacture: attester {attester.name!r} failed: {exc}"
            ) from exc
        try:
            self.channel.send(answer, payload, msg.sequence)
        except (WorkerChannelClosed, WorkerChannelError) as exc:
            raise self.fail(f"answering {msg.op.name}: {exc}") from exc

    def answer(self, msg: WorkerMessage, expected: WorkerOp, attester: Attester | None) -> bool:
        """Handle one message of the current request: True when it is the final `expected`
        answer, False after READY or after serving an attestation request; anything else fails
        the worker."""
        if msg.op is expected:
            return True
        if msg.op is WorkerOp.READY:
            return False
        if msg.op in (WorkerOp.QUOTE_REQUEST, WorkerOp.EVENT_LOG_REQUEST) and attester:
            self.serve_attestation(msg, attester)
            return False
        if msg.op is WorkerOp.ERROR:
            raise self.fail(msg.text)
        raise self.fail(f"answered {msg.op.name} where {expected.name} was expected")

    def call(
        self,
        op: WorkerOp,
        payload: bytes,
        expected: WorkerOp,
        timeout: float,
        attester: Attester | None = None,
        spin_ns: int = 0,
    ) -> WorkerMessage:
        """One request and its answer, serving attestation requests on the way; the answer is
        polled for during the first `spin_ns` of each wait."""
        self.request(op, payload)
        deadline = time.monotonic() + timeout
        while True:
            msg = self.receive(deadline, spin_ns)
            if self.answer(msg, expected, attester):
                return msg

    def process(self, command: bytes) -> bytes:
        """Run one TPM command on this L2's vTPM; `VtpmWorkerError` if the worker failed."""
        self.commands += 1
        return self.call(
            WorkerOp.COMMAND, command, WorkerOp.RESPONSE, COMMAND_TIMEOUT_S, spin_ns=ANSWER_SPIN_NS
        ).payload

    def expect(self) -> None:
        """Tell the worker a command is on its way (EXPECT), so it polls for it instead of
        sleeping; nothing if the worker has failed (the command itself reports that)."""
        if self.failure:
            return
        try:
            self.channel.send(WorkerOp.EXPECT)
        except WorkerChannelClosed as exc:
            self.fail(f"EXPECT: {exc}")

    def power_cycle(self, attester: Attester) -> None:
        """Forget all NV and manufacture again (new EKs, a new CA and TD quote); the TPM then
        waits for TPM2_Startup."""
        self.call(
            WorkerOp.POWER_CYCLE,
            attester.name.encode(),
            WorkerOp.MANUFACTURED,
            MANUFACTURE_TIMEOUT_S,
            attester,
        )

    def identity(self) -> VtpmIdentity:
        """The CA and EK certificates, read back from NV with TPM commands, as a verifier would."""
        tpm = wire.TpmClient(self)
        try:
            chunk = tpm.get_properties(wire.TPM_PT_NV_BUFFER_MAX, 1)[wire.TPM_PT_NV_BUFFER_MAX]
            eks = {}
            for kind, index in EK_CERT_NV_INDEX.items():
                public = tpm.nv_read_public(index)
                if public is None:
                    raise VtpmWorkerError(f"L2 {self.vm} vTPM: no EK certificate at {index:#x}")
                eks[kind] = tpm.nv_read(index, public.data_size, chunk)
            return VtpmIdentity(read_ca_certificate(tpm), eks)
        except (wire.TpmError, wire.WireError, KeyError, CertificateReadError) as exc:
            raise VtpmWorkerError(f"L2 {self.vm} vTPM: reading its certificates: {exc}") from exc

    def shutdown(self) -> None:
        """Ask the worker to end (the launcher reaps it)."""
        if self.failure:
            return
        with contextlib.suppress(WorkerChannelClosed, WorkerChannelError):
            self.channel.send(WorkerOp.SHUTDOWN)
        self.failure = f"vTPM worker for L2 {self.vm}: shut down"

    def release(self) -> None:
        """Drop L1's channel end and pidfd (after the worker has ended)."""
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        self.channel.close()


@dataclass
class CrbBackend:
    """The `execute` of an L2's CRB: runs the command on that L2's worker; a failed worker puts
    the CRB into its fatal error state (TCG PC Client Platform TPM Profile, CRB interface)."""

    worker: VtpmWorker
    crb: CrbDevice | None = None
    failures: list[str] = field(default_factory=list)

    def attach(self, crb: CrbDevice) -> None:
        self.crb = crb
        if not self.worker.alive:
            crb.fail(self.worker.failure)

    def __call__(self, command: bytes) -> bytes | None:
        try:
            return self.worker.process(command)
        except VtpmWorkerError as exc:
            self.failures.append(str(exc))
            if self.crb is None:
                raise
            self.crb.fail(str(exc))
            return None


class VtpmWorkers:
    """The workers of all L2s, indexed by L2 VM number (1-based)."""

    def __init__(
        self,
        count: int,
        image_path: str,
        python: str = sys.executable,
        started: StartedLauncher | None = None,
    ) -> None:
        """Take the launcher `start_launcher` started (L1 starts it first of all), or start one."""
        started = started or start_launcher(count, image_path, python)
        if len(started.channels) != count:
            started.close()
            raise VtpmWorkerError(f"{len(started.channels)} worker channels for {count} L2s")
        self.launcher = started.process
        self.workers = {
            vm: VtpmWorker(vm, WorkerChannel(mine), self.launcher)
            for vm, mine in enumerate(started.channels, start=1)
        }
        self.backends: dict[int, CrbBackend] = {}
        self.attester: Attester | None = None

    def __getitem__(self, vm: int) -> VtpmWorker:
        return self.workers[vm]

    def expect(self, vm: int) -> None:
        """L2 `vm` was handed a TPM command: its worker should be awake for it."""
        worker = self.workers.get(vm)
        if worker is not None:
            worker.expect()

    def crb_backend(self, vm: int) -> CrbBackend:
        """The `execute` for L2 `vm`'s CRB (attach the CRB once it exists)."""
        self.backends[vm] = CrbBackend(self.workers[vm])
        return self.backends[vm]

    def power_cycle(self, vm: int) -> bool:
        """Power-cycle L2 `vm`'s vTPM: forget its NV, manufacture it again (new EKs, CA and TD
        quote) and reset its CRB to Idle. False if there is no such vTPM or it failed (its CRB
        then reports a fatal error)."""
        worker, backend = self.workers.get(vm), self.backends.get(vm)
        if worker is None or self.attester is None or not worker.alive:
            return False
        try:
            worker.power_cycle(self.attester)
        except VtpmWorkerError as exc:
            if backend is not None and backend.crb is not None:
                backend.crb.fail(str(exc))
            return False
        if backend is not None and backend.crb is not None:
            backend.crb.reset()
        return True

    @property
    def all(self) -> Sequence[VtpmWorker]:
        return list(self.workers.values())

    def start_manufacture(self, attester: Attester) -> None:
        """Ask every worker to manufacture (once); each generates its keys at once and then
        waits for L1 to answer its quote request in `manufacture`."""
        if self.attester is not None:
            return
        self.attester = attester
        for worker in self.all:
            worker.request(WorkerOp.MANUFACTURE, attester.name.encode())

    def manufacture(self, attester: Attester, timeout: float = MANUFACTURE_TIMEOUT_S) -> None:
        """Manufacture every worker in parallel (asked here unless `start_manufacture` did);
        L1 answers their quote and event-log requests as they come. The first failure is raised
        (the other workers are left to `close`)."""
        self.start_manufacture(attester)
        if attester is not self.attester:
            raise VtpmWorkerError("the vTPMs were asked to manufacture with another attester")
        deadline = time.monotonic() + timeout
        pending = {worker.channel.fileno(): worker for worker in self.all}
        poll = select.poll()
        for fd in pending:
            poll.register(fd, select.POLLIN)
        while pending:
            wait = deadline - time.monotonic()
            ready = poll.poll(max(wait, 0.0) * MS_PER_S) if wait > 0 else []
            if not ready:
                worker = next(iter(pending.values()))
                raise worker.fail(f"not manufactured within {timeout} s")
            for fd, _events in ready:
                worker = pending[fd]
                msg = worker.receive(deadline)
                if worker.answer(msg, WorkerOp.MANUFACTURED, attester):
                    worker.manufactured_ms = (time.perf_counter() - worker.started) * MS_PER_S
                    poll.unregister(fd)
                    del pending[fd]

    def close(self) -> None:
        """End every worker: SHUTDOWN each and close L1's end (a worker in the middle of a request
        sees EOF), then the launcher ends once it has reaped them; if it has not within
        SHUTDOWN_WAIT_S it is killed, and its workers die with it."""
        for worker in self.workers.values():
            worker.shutdown()
            worker.release()
        try:
            self.launcher.wait(SHUTDOWN_WAIT_S)
        except subprocess.TimeoutExpired:
            self.launcher.kill()
            self.launcher.wait(SHUTDOWN_WAIT_S)
