"""The host process side of the local backend: start the TD process, build the TD, run the KVM loop.

`Vmm` spawns the TD process (`python -I -S` with a bootstrap: only tdxsim/igvm/verifier from the
checkout, only third-party site-packages on the path), sends the host-side calls over the channel,
and runs `run()`: enter the TD, handle each TD exit with `HostVmm` (TDVMCALL services, AUG for
ACCEPT, host-routed L2 exits resumed to L1), post host interrupts, enter again, until L1 returns,
fails, reports a fatal error, the deadline passes, or the vTPM relay's stop is set (STOPPED: L1
is left inside its TD exit and `close` shuts the TD process down). A TD process that dies is
noticed at once (its channel end closes) and at the latest after `DEATH_POLL_S`; nothing here
blocks without a timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import subprocess
import sys
import sysconfig
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType

import tdxsim
from tdxdefs import timeline
from tdxdefs.tdcall import GPAW_48, PAGE_SIZE
from tdxdefs.timeline import Mark
from tdxsim.attestation.quoting import QuotingService
from tdxsim.attestation.report import ReportMacKey
from tdxsim.errors import TdxsimError
from tdxsim.host.channel import (
    ADD_PAGE_FORMAT,
    AUG_FORMAT,
    CONVERT_FORMAT,
    CREATE_FORMAT,
    DONE_FORMAT,
    EXIT_GPRS_AT,
    EXIT_KIND_NAMES,
    EXIT_MSG,
    EXTEND_FORMAT,
    FINALIZE_FORMAT,
    FINALIZED_FORMAT,
    MAC_KEY_SIZE,
    REGION,
    REPLY_FORMAT,
    REPLY_OK,
    Channel,
    ChannelClosed,
    ExitKind,
    Message,
    MsgType,
)
from tdxsim.host.faults import FaultSet
from tdxsim.host.l1_image import HEADER_SIZE, L1IMAGE_MAGIC, L1ImageHeader
from tdxsim.host.services import HostVmm
from tdxsim.host.shared_memory import RamRegion, SharedMemory
from tdxsim.module.build import MR_EXTEND_CHUNK
from tdxsim.module.host_interface import TdExit, TdExitKind
from tdxsim.module.registers import Regs

CHECKOUT = Path(tdxsim.__file__).resolve().parent.parent
MODEL_PACKAGES = ("tdxsim", "tdxdefs", "igvm", "verifier")
DEATH_POLL_S = 0.1
CALL_TIMEOUT_S = 30.0
SHUTDOWN_WAIT_S = 2.0
MS_PER_S = 1000
CHUNKS_PER_PAGE = PAGE_SIZE // MR_EXTEND_CHUNK
EXIT_FIELDS_AT = 3  # EXIT_MSG fields after the message header
EXIT_R11_AT = EXIT_GPRS_AT - EXIT_FIELDS_AT + 11  # R11 (the TDVMCALL sub-function) past the header
# argv: checkout root, channel fd, site dirs...; the finder serves only the model's packages.
BOOTSTRAP = """
import sys
from importlib.machinery import PathFinder
root, fd, packages = sys.argv[1], int(sys.argv[2]), set(sys.argv[3].split(","))
class ModelPackageFinder:
    enabled = True
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if cls.enabled and path is None and name in packages:
            return PathFinder.find_spec(name, [root])
        return None
sys.meta_path.append(ModelPackageFinder)
sys.path.extend(sys.argv[4:])
from tdxsim.host.td_process import main
sys.exit(main(fd, ModelPackageFinder))
"""


class TdProcessDied(TdxsimError, RuntimeError):
    """The TD process ended without being asked to (crash, kill)."""


class HostCallRefused(TdxsimError, RuntimeError):
    """The TD process refused a host-side call (the text names the operation and the GPA)."""


class RunStatus(StrEnum):
    """How a run of L1 ended."""

    DONE = "done"  # L1 returned
    FAILED = "failed"  # L1 raised
    FATAL = "fatal"  # L1 sent a GHCI ReportFatalError
    DIED = "died"  # the TD process ended on its own or closed the channel
    TIMEOUT = "timeout"  # no end within the run's time limit
    STOPPED = "stopped"  # the host ended the run on request (relay stop), L1 still running


@dataclass
class RunResult:
    """How a run ended, L1's result payload, the TD exits served, the time taken and why."""

    status: RunStatus
    output: bytes
    exits: int
    seconds: float
    detail: str = ""


def simulated_platform(seed: bytes | None = None) -> tuple[bytes, QuotingService]:
    """A SIMULATED platform's report MAC key (for the TD process) and its quoting service (for
    the host): fresh per call, or derived from `seed` for reproducible tests."""
    mac_key = (
        os.urandom(MAC_KEY_SIZE)
        if seed is None
        else hashlib.sha256(b"tdxsim vmm report MAC key" + seed).digest()
    )
    return mac_key, QuotingService(ReportMacKey(mac_key), seed=seed)


def third_party_site_dirs() -> list[str]:
    """site-packages of this interpreter, never the checkout."""
    dirs = []
    for key in ("purelib", "platlib"):
        path = sysconfig.get_path(key)
        if path and path not in dirs and Path(path).resolve() != CHECKOUT:
            dirs.append(path)
    return dirs


class ChannelControl:
    """`TdControl` over the channel: the module's host-side operations in the TD process."""

    def __init__(self, vmm: Vmm) -> None:
        self.vmm = vmm

    def convert_to_shared(self, gpa: int, npages: int) -> None:
        self.vmm.call(MsgType.CONVERT, CONVERT_FORMAT.pack(gpa, npages, 1))

    def convert_to_private(self, gpa: int, npages: int) -> None:
        self.vmm.call(MsgType.CONVERT, CONVERT_FORMAT.pack(gpa, npages, 0))

    def page_aug(self, gpa: int) -> bool:
        return self.vmm.call(MsgType.AUG, AUG_FORMAT.pack(gpa), check=False)

    def post_interrupt(self, vcpu: int, vector: int) -> None:
        self.vmm.interrupts.append((vcpu, vector))  # posted by the next ENTER


class Vmm:
    """One TD process and the host VMM that serves it."""

    def __init__(
        self,
        quoting: QuotingService | None = None,
        faults: FaultSet | None = None,
        *,
        python: str = sys.executable,
    ) -> None:
        self.quoting = quoting
        self.faults = faults
        host_end, td_end = Channel.pair()
        self.channel = Channel(host_end)
        self.proc = subprocess.Popen(
            [
                python,
                "-I",
                "-S",
                "-c",
                BOOTSTRAP,
                str(CHECKOUT),
                str(td_end.fileno()),
                ",".join(MODEL_PACKAGES),
                *third_party_site_dirs(),
            ],
            pass_fds=[td_end.fileno()],
            cwd="/",
        )
        td_end.close()
        self._poll = select.poll()
        self._poll.register(host_end, select.POLLIN | select.POLLHUP)
        self.shared: SharedMemory | None = None
        self.host: HostVmm | None = None
        self.interrupts: list[tuple[int, int]] = []  # (vCPU, vector) for the next ENTER
        self.mrtd: bytes | None = None
        self.l1_location: tuple[int, int] | None = None

    # --- channel with death detection --------------------------------------------------------
    def _died(self, why: str) -> TdProcessDied:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(DEATH_POLL_S)
        return TdProcessDied(
            f"TD process {self.proc.pid} {why} (exit status {self.proc.returncode})"
        )

    def recv(self, deadline: float) -> Message:
        """The next message; raises TdProcessDied or TimeoutError, never blocks past `deadline`."""
        return Channel.parse(self.recv_raw(deadline))

    def _wait(self, deadline: float) -> None:
        """Until the channel is readable; polls the TD process's liveness meanwhile."""
        while not self._poll.poll(0):
            wait = min(DEATH_POLL_S, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError("the TD process did not answer in time")
            if self._poll.poll(wait * MS_PER_S):
                return
            if self.proc.poll() is not None:
                raise self._died("exited")

    def recv_raw(self, deadline: float, wait: Hashable = None) -> bytes:
        """The next message's bytes (see `recv`); `wait` names the kind of wait, whose spin
        window (tdxsim.host.spin) decides whether to poll without sleeping first."""
        spinner = self.channel.spinner
        window = spinner.window(wait)
        start = time.perf_counter_ns()
        try:
            if not spinner.spin(window, start):
                self._wait(deadline)
            data = self.channel.recv_now()
        except ChannelClosed:
            raise self._died("closed the channel") from None
        window.waited(time.perf_counter_ns() - start)
        return data

    def _recv(self, deadline: float, *, with_fds: bool) -> tuple[Message, list[int]]:
        self._wait(deadline)
        try:
            if with_fds:
                return self.channel.recv_with_fds()
            return self.channel.recv(), []
        except ChannelClosed:
            raise self._died("closed the channel") from None

    def send(self, msg_type: MsgType, payload: bytes = b"") -> None:
        """Send one message; a closed channel means the TD process died."""
        try:
            self.channel.send(msg_type, payload)
        except ChannelClosed:
            raise self._died("closed the channel") from None

    def call(self, msg_type: MsgType, payload: bytes = b"", *, check: bool = True) -> bool:
        """A host-side call answered by REPLY; refused calls raise HostCallRefused if `check`."""
        self.send(msg_type, payload)
        reply = self.recv(time.monotonic() + CALL_TIMEOUT_S)
        if reply.type != MsgType.REPLY:
            raise HostCallRefused(f"{msg_type.name}: unexpected answer {reply.type.name}")
        (status,) = reply.fields(REPLY_FORMAT)
        if status != REPLY_OK and check:
            text = reply.rest(REPLY_FORMAT).decode(errors="replace")
            raise HostCallRefused(f"{msg_type.name}: {text}")
        return status == REPLY_OK

    # --- host-side build calls ----------------------------------------------------------------
    def create(
        self,
        ram: list[tuple[int, int]],
        *,
        mac_key: bytes,
        num_l2_vms: int = 1,
        vcpus: int = 1,
        gpaw: int = GPAW_48,
        attributes: int = 0,
        xfam: int = 0,
        instruction_budget: int = 0,
    ) -> HostVmm:
        """TDH.MNG.CREATE/INIT and the vCPUs; maps the TD's memfd and returns the host VMM."""
        payload = CREATE_FORMAT.pack(
            gpaw, num_l2_vms, vcpus, len(ram), attributes, xfam, instruction_budget, mac_key
        )
        payload += b"".join(REGION.pack(gpa, size, 0) for gpa, size in ram)
        self.send(MsgType.CREATE, payload)
        msg, fds = self._recv(time.monotonic() + CALL_TIMEOUT_S, with_fds=True)
        if msg.type != MsgType.CREATED or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise HostCallRefused(f"CREATE: {msg.rest(REPLY_FORMAT).decode(errors='replace')}")
        regions = [
            RamRegion(*REGION.unpack_from(msg.payload, i * REGION.size))
            for i in range(len(msg.payload) // REGION.size)
        ]
        self.shared = SharedMemory(fds[0], regions, gpaw)
        os.close(fds[0])  # the mapping keeps the memory object alive
        self.host = HostVmm(self.shared, ChannelControl(self), self.quoting, self.faults)
        return self.host

    def add_page(self, gpa: int, data: bytes = b"", measure: bool = True) -> None:
        """TDH.MEM.PAGE.ADD, and the 16 TDH.MR.EXTENDs of the page if `measure`."""
        self.call(MsgType.ADD_PAGE, ADD_PAGE_FORMAT.pack(gpa) + data)
        if measure:
            self.call(MsgType.EXTEND, EXTEND_FORMAT.pack(gpa, CHUNKS_PER_PAGE))

    def aug_rest(self) -> None:
        """PAGE.AUG every RAM page not yet present (L1 accepts what it uses)."""
        self.call(MsgType.AUG_REST)

    def load_l1_image(self, image: bytes, gpa: int) -> None:
        """Add and measure the L1 image's pages at `gpa`."""
        for offset in range(0, len(image), PAGE_SIZE):
            self.add_page(gpa + offset, image[offset : offset + PAGE_SIZE])
        self.l1_location = (gpa, len(image))

    def load_igvm(
        self,
        path: str | Path,
        ram: list[tuple[int, int]],
        vcpus: int = 1,
        *,
        command_line: bytes = b"",
    ) -> None:
        """Replay an IGVM file's directives in file order exactly as tdxsim.host.igvm_loader does,
        over the channel, and find the L1 image: the first measured PAGE_DATA whose page starts
        with the image magic (the image's pages follow it). `command_line` goes into the file's
        command-line parameter (the host's launch options)."""
        from igvm import format as igvm_format
        from tdxsim.host.igvm_loader import replay_directives, tdx_mask

        igvm_file = igvm_format.read(path)
        mask, _gpaw = tdx_mask(igvm_file)
        replay_directives(igvm_file.directives, mask, ram, vcpus, self, command_line)

    def add_page_run(self, gpa: int, pages: Sequence[bytes], *, measured: bool) -> None:
        """PageSink: PAGE.ADD (and MR.EXTEND if `measured`) each page; note the L1 image."""
        for index, page in enumerate(pages):
            data = bytes(page)
            if self.l1_location is None and measured and data.startswith(L1IMAGE_MAGIC):
                header = L1ImageHeader.unpack(data[:HEADER_SIZE])
                self.l1_location = (gpa + index * PAGE_SIZE, HEADER_SIZE + header.payload_size)
            self.add_page(gpa + index * PAGE_SIZE, data, measure=measured)

    def add_shared_page(self, gpa: int, data: bytes) -> None:
        """PageSink: shared PAGE_DATA is not part of the TD's private memory; this backend does
        not pre-fill shared pages yet, so one with contents is refused rather than dropped."""
        if any(data):
            raise HostCallRefused(
                f"shared PAGE_DATA at GPA {gpa:#x} has contents; the process backend cannot "
                "pre-fill shared memory yet"
            )

    def finalize(self) -> bytes:
        """TDH.MR.FINALIZE; the TD process checks and reads the L1 image. Returns MRTD."""
        if self.l1_location is None:
            raise HostCallRefused("FINALIZE: no L1 image was loaded")
        gpa, size = self.l1_location
        self.send(MsgType.FINALIZE, FINALIZE_FORMAT.pack(gpa, size))
        msg = self.recv(time.monotonic() + CALL_TIMEOUT_S)
        if msg.type != MsgType.FINALIZED:
            raise HostCallRefused(msg.rest(REPLY_FORMAT).decode(errors="replace"))
        (mrtd,) = msg.fields(FINALIZED_FORMAT)
        self.mrtd = bytes(mrtd)
        return self.mrtd

    # --- the KVM-like loop --------------------------------------------------------------------
    def run(self, timeout: float = 60.0) -> RunResult:
        """Enter the TD and serve its exits until L1 ends, fails, dies, or `timeout` passes."""
        host = self.host
        if host is None:
            raise HostCallRefused("run: CREATE first")
        start = time.monotonic()
        deadline = start + timeout
        exits = 0

        def result(status: RunStatus, output: bytes = b"", detail: str = "") -> RunResult:
            host.entered()  # answers L1 gave before the end still reach their clients
            host.join_rewriters()
            return RunResult(status, output, exits, time.monotonic() - start, detail)

        # The kind of the wait for the next TD exit, for the channel's spin windows: which exit
        # was answered (kind, TDVMCALL sub-function) and whether interrupts went with the ENTER
        # (a relay command posted to L1 takes longer than L1 going back to HLT).
        wait: Hashable = None
        try:
            self._enter(None, False)
            while True:
                data = self.recv_raw(deadline, wait)
                timeline.mark(Mark.HOST_EXIT)
                if len(data) == EXIT_MSG.size and data[0] == MsgType.EXIT and not data[1]:
                    exits += 1
                    values = EXIT_MSG.unpack(data)[EXIT_FIELDS_AT:]
                    kind = values[0]
                    if kind == ExitKind.TDVMCALL:
                        sub = values[EXIT_R11_AT]
                        answer = host.tdvmcall(Regs(*values[EXIT_GPRS_AT - EXIT_FIELDS_AT :]))
                        if host.log.fatal is not None:
                            self.kill()
                            return result(
                                RunStatus.FATAL,
                                host.log.fatal.message,
                                f"ReportFatalError code {host.log.fatal.code:#x}",
                            )
                        fixed = False
                    else:
                        sub = -1
                        _k, _vcpu, vm, eeq, reason, gpa, qual = values[:7]
                        event = TdExit(
                            EXIT_KIND_NAMES.get(kind, TdExitKind.TIMER),
                            gpa=gpa,
                            eeq_type=eeq,
                            vm=vm,
                            exit_reason=reason,
                            qualification=qual,
                        )
                        answer, fixed = None, host.td_exit(event)
                    if host.relay is not None and host.relay.stop.is_set():
                        host.relay.fail_in_flight("the host is stopping")
                        return result(RunStatus.STOPPED, b"", "stopped on request")
                    wait = (kind, sub, bool(self.interrupts))
                    self._enter(answer, fixed)
                    host.entered()
                    continue
                msg = Channel.parse(data)
                if msg.type == MsgType.DONE:
                    return result(RunStatus.DONE, msg.rest(DONE_FORMAT))
                elif msg.type == MsgType.FAILED:
                    text = msg.payload.decode(errors="replace")
                    return result(
                        RunStatus.FAILED, msg.payload, (text.strip().splitlines() or [""])[-1]
                    )
                else:
                    raise HostCallRefused(f"unexpected {msg.type.name} while the TD runs")
        except TdProcessDied as exc:
            return result(RunStatus.DIED, b"", str(exc))
        except ChannelClosed as exc:
            return result(RunStatus.DIED, b"", str(self._died(f"closed the channel ({exc})")))
        except TimeoutError:
            self.kill()
            return result(RunStatus.TIMEOUT, b"", f"no end within {timeout} s")

    def _enter(self, answer: Regs | None, fixed: bool) -> None:
        """ENTER with the TDVMCALL answer and the interrupts queued since the last one."""
        interrupts, self.interrupts = self.interrupts, []
        timeline.mark(Mark.HOST_ENTER)
        self.channel.send_enter(answer, fixed=fixed, interrupts=interrupts)

    # --- teardown -------------------------------------------------------------------------------
    def kill(self) -> None:
        """Kill the TD process now."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(SHUTDOWN_WAIT_S)

    def close(self) -> None:
        """Ask the TD process to end, kill it if it does not, release the channel and memory."""
        if self.proc.poll() is None:
            with contextlib.suppress(ChannelClosed, OSError):
                self.channel.send(MsgType.SHUTDOWN)
            try:
                self.proc.wait(SHUTDOWN_WAIT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.host is not None:
            self.host.join_rewriters()
        if self.shared is not None:
            self.shared.close()
            self.shared = None
        self.channel.close()

    def __enter__(self) -> Vmm:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
