"""vTPM worker processes: each holds one libtpms TPM that L1 drives over a `vtpm.worker_channel`.

libtpms keeps global state, so one process holds one TPM. L1 starts one launcher process from its
measured image with one inherited channel per L2; the launcher imports the vTPM once, then forks
one worker per channel (before any TPM exists, so nothing of libtpms is shared) and reaps them;
this saves a Python start-up and an import of the image per worker. A worker says READY with its
pid, then serves requests in order until SHUTDOWN or until L1's end closes. Each process dies with
its parent (PR_SET_PDEATHSIG, and the parent pid is checked once the signal is armed, so a parent
that died during start-up is noticed too): L1 -> launcher -> workers, no orphans. A malformed or
unexpected message is answered ERROR and the worker goes on; nothing L1 sends crashes it. After
EXPECT (a command is on its way) the worker polls for it without sleeping for up to EXPECT_SPIN_NS,
then sleeps again, so a command the L2 starts soon after costs no wake-up and an idle worker no CPU;
spins that do not catch their command shrink the next ones (`vtpm.busypoll.HintedSpin`).

Manufacture follows `vtpm.manufacture`: the worker's attester asks L1 for the TD quote over
REPORTDATA = SHA-384 of the CA public key and for the CC event log, because only L1 can TDCALL.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import signal
import socket
import struct
import threading
import time
import traceback
from collections.abc import Sequence

from tdxdefs import timeline
from tdxdefs.quote import INTEL_QE_VENDOR_ID
from tdxdefs.tdcall import REPORTDATA_SIZE
from tdxdefs.timeline import Mark
from vtpm import libtpms
from vtpm.attest import AttesterError, parse_quote_v4
from vtpm.busypoll import HintedSpin
from vtpm.engine import TpmEngine
from vtpm.errors import VtpmError
from vtpm.manufacture import ManufactureError, manufacture
from vtpm.worker_channel import (
    MAX_ATTESTER_NAME,
    WorkerChannel,
    WorkerChannelError,
    WorkerChannelTimeout,
    WorkerMessage,
    WorkerOp,
)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
QUOTE_WAIT_S = 30.0  # L1 answers a quote request after one TD quote (a GetQuote round trip)
# How long an EXPECT keeps the worker polling: an L2 starts its command within a few L2 exits of
# the relay's interrupt, well inside this, and a worker that hears nothing sleeps again after it.
EXPECT_SPIN_NS = 3_000_000
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ORPHANED = 3
PID = struct.Struct("<I")
CERTIFICATES_MODULE = "vtpm.certs"


class WorkerError(VtpmError, RuntimeError):
    """The worker cannot go on (L1 is gone)."""


def die_with_parent(parent_pid: int) -> bool:
    """Arm PR_SET_PDEATHSIG (SIGKILL) and check L1 is still the parent; False if it is not."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    return os.getppid() == parent_pid


class ChannelAttester:
    """`vtpm.attest.Attester` that asks L1 for the quote and the event log over the channel."""

    def __init__(self, channel: WorkerChannel, name: str, sequence: int) -> None:
        self._channel = channel
        self._sequence = sequence
        self.name = name
        self.last_quote = b""

    @property
    def simulated(self) -> bool:
        """True unless the quote names Intel's quoting enclave (as L1's own attester decides)."""
        try:
            return parse_quote_v4(self.last_quote).qe_vendor_id != INTEL_QE_VENDOR_ID
        except ValueError:
            return True

    def _ask(self, op: WorkerOp, payload: bytes, answer: WorkerOp) -> bytes:
        self._channel.send(op, payload, self._sequence)
        deadline = time.monotonic() + QUOTE_WAIT_S
        reply = None
        while reply is None or reply.op is WorkerOp.EXPECT:  # a hint, never an answer
            try:
                reply = self._channel.recv(deadline - time.monotonic())
            except (WorkerChannelError, WorkerChannelTimeout) as exc:
                raise AttesterError(f"L1 did not answer {op.name}: {exc}") from exc
        if reply.sequence != self._sequence:
            raise AttesterError(
                f"L1 answered {op.name} with sequence {reply.sequence}, not {self._sequence}"
            )
        if reply.op is WorkerOp.REFUSED:
            raise AttesterError(f"L1 refused {op.name}: {reply.text}")
        if reply.op is not answer:
            raise AttesterError(f"L1 answered {op.name} with {reply.op.name}")
        return reply.payload

    def quote(self, report_data: bytes) -> bytes:
        """L1's TD quote over `report_data`."""
        if len(report_data) != REPORTDATA_SIZE:
            raise AttesterError(f"REPORTDATA is {len(report_data)} bytes, must be 64")
        quote = self._ask(WorkerOp.QUOTE_REQUEST, report_data, WorkerOp.QUOTE)
        if not quote:
            raise AttesterError("L1 answered QUOTE_REQUEST with an empty quote")
        self.last_quote = quote
        return quote

    def event_log(self) -> bytes:
        """L1's CC event log (the RTMR extends the quote covers)."""
        return self._ask(WorkerOp.EVENT_LOG_REQUEST, b"", WorkerOp.EVENT_LOG)


class Worker:
    """The worker's state: its channel and its one TPM engine."""

    def __init__(self, channel: WorkerChannel) -> None:
        self.channel = channel
        self.engine = TpmEngine()
        self.manufactured = False
        self.expect_spin = HintedSpin(EXPECT_SPIN_NS)

    def serve(self) -> int:
        """Answer requests until SHUTDOWN (EXIT_OK) or until L1 closes its end."""
        spin_ns = 0  # for the one receive after an EXPECT
        try:
            while True:
                try:
                    msg = self.channel.recv(None, spin_ns)
                except WorkerChannelError as exc:  # refused; the datagram is consumed whole
                    self.channel.send(WorkerOp.ERROR, f"refused: {exc}".encode())
                    spin_ns = 0
                    continue
                self.expect_spin.outcome(spin_ns, self.channel.caught_spinning)
                if msg.op is WorkerOp.SHUTDOWN:
                    return EXIT_OK
                if msg.op is WorkerOp.EXPECT:
                    spin_ns = self.expect_spin.hinted()
                    continue
                spin_ns = 0
                self.handle(msg)
        except ConnectionError:
            return EXIT_OK  # L1 is gone; so is the reason to run
        finally:
            self.engine.close()

    def handle(self, msg: WorkerMessage) -> None:
        """One request from L1, answered on the channel."""
        seq = msg.sequence
        if msg.op is WorkerOp.COMMAND:
            timeline.mark(Mark.WORKER_COMMAND)
            response = self.engine.process(msg.payload)
            timeline.mark(Mark.WORKER_ANSWER)
            self.channel.send(WorkerOp.RESPONSE, response, seq)
        elif msg.op is WorkerOp.MANUFACTURE and self.manufactured:
            self.channel.send(WorkerOp.ERROR, b"MANUFACTURE: already manufactured", seq)
        elif msg.op in (WorkerOp.MANUFACTURE, WorkerOp.POWER_CYCLE):
            self._manufacture(msg)
        else:
            text = f"{msg.op.name} is not a request L1 may send now"
            self.channel.send(WorkerOp.ERROR, text.encode(), seq)

    def _manufacture(self, msg: WorkerMessage) -> None:
        """Power on (after forgetting all NV, for a power cycle) and manufacture; a power cycle
        leaves the TPM waiting for TPM2_Startup, as a platform power-on does."""
        name = msg.payload.decode("ascii", errors="replace")
        if not name.isprintable() or not 0 < len(name) <= MAX_ATTESTER_NAME:
            text = f"{msg.op.name}: attester name {name!r} is not 1-64 printable characters"
            self.channel.send(WorkerOp.ERROR, text.encode(), msg.sequence)
            return
        cycle = msg.op is WorkerOp.POWER_CYCLE
        try:
            if cycle:
                self.engine.wipe()
            self.engine.power_on()
            manufacture(self.engine, attester=ChannelAttester(self.channel, name, msg.sequence))
            if cycle:
                self.engine.reset()
        except (ManufactureError, VtpmError) as exc:
            self.manufactured = False
            self.channel.send(WorkerOp.ERROR, f"{msg.op.name}: {exc}".encode(), msg.sequence)
            return
        self.manufactured = True
        self.channel.send(WorkerOp.MANUFACTURED, b"", msg.sequence)


def import_certificates_meanwhile() -> threading.Thread:
    """Import the X.509 machinery (`vtpm.certs`, cryptography) on another thread. Manufacture
    needs it only once libtpms has generated the keys, and libtpms runs without the GIL (ctypes
    releases it around each call), so the import and the key generation overlap; the launcher
    left it out, so that it forks the workers sooner."""
    thread = threading.Thread(
        target=importlib.import_module, args=(CERTIFICATES_MODULE,), name="import", daemon=True
    )
    thread.start()
    return thread


def main(sock_fd: int, parent_pid: int) -> int:
    """One worker: say READY, then serve the channel on `sock_fd` while `parent_pid` lives."""
    if not die_with_parent(parent_pid):
        return EXIT_ORPHANED
    import_certificates_meanwhile()
    channel = WorkerChannel(socket.socket(fileno=sock_fd))
    try:
        channel.send(WorkerOp.READY, PID.pack(os.getpid()))
        return Worker(channel).serve()
    except ConnectionError:
        return EXIT_OK  # L1 closed its end before READY: nothing to serve
    finally:
        channel.close()


def _worker(sock_fd: int, all_fds: Sequence[int], launcher: int) -> None:
    """A forked worker: keep only its own channel, serve it, and never return into the launcher."""
    status = EXIT_FAILED
    try:
        for fd in all_fds:
            if fd != sock_fd:
                os.close(fd)
        status = main(sock_fd, launcher)
    except BaseException:
        traceback.print_exc()
    finally:
        timeline.flush()  # os._exit skips atexit
        os._exit(status)


def launch(sock_fds: Sequence[int], parent_pid: int) -> int:
    """The launcher's entry: fork one worker per inherited channel, then reap them all."""
    if not die_with_parent(parent_pid):
        return EXIT_ORPHANED
    # A terminal's Ctrl-C reaches the whole process group: the launcher and its workers end with
    # L1 (PR_SET_PDEATHSIG), never by an interrupt of their own (the ignore survives fork).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    launcher = os.getpid()
    libtpms.load()  # found and opened once; no TPM exists until a worker creates its engine
    for fd in sock_fds:
        if os.fork() == 0:
            _worker(fd, sock_fds, launcher)
    for fd in sock_fds:
        os.close(fd)  # the workers hold them; L1 must see EOF when a worker ends
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return EXIT_OK
