"""The TD process ("the CPU running the TD"): module model, L2 vCPUs and L1, driven by the host.

Started by `tdxsim.host.vmm` as `python -I -S` with a bootstrap that lets only the module model's
packages (tdxsim, tdxdefs, igvm, verifier) come from the checkout and puts only third-party
site-packages on sys.path. It builds the TD from host-side calls, and after FINALIZE reads the L1
image out of TD private memory at the GPA the host names. Every page of the image must have been
PAGE.ADDed and fully MR.EXTENDed (so MRTD covers it) and its header must check, else FINALIZE is
answered with an error and L1 never runs. At the first ENTER it writes the payload zip to a private
temporary file, switches the checkout finder off, drops the model's copies of any package the image
carries (the shared definitions, tdxdefs, are imported by both), and imports L1's entry module from
that zip alone; L1 gets an `L1Platform`: a register-level `tdcall`, views of TD memory, and the path
of the payload zip (for the vTPM workers L1 starts from the same measured bytes), nothing else.

Limits of the simulation, documented: L1 runs in the same interpreter as the module model, so
Python code could reach the model through `sys.modules`; L1's memory view is the whole memfd, with
no #VE on a pending page; host interrupts reach L1 only when it is in a TDCALL or at a TD exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import signal
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Protocol

from tdxdefs import timeline
from tdxdefs.tdcall import PAGE_SIZE
from tdxdefs.timeline import Mark
from tdxsim.attestation.report import ReportMacKey, TdReportBuilder
from tdxsim.host.channel import (
    ADD_PAGE_FORMAT,
    AUG_FORMAT,
    CONVERT_FORMAT,
    CREATE_FORMAT,
    DONE_FORMAT,
    ENTER_FIXED,
    ENTER_FORMAT,
    ENTER_GPRS_AT,
    ENTER_MSG,
    EXIT_KINDS,
    EXTEND_FORMAT,
    FINALIZE_FORMAT,
    FINALIZED_FORMAT,
    GPR_COUNT,
    HEADER,
    INTERRUPT_FORMAT,
    MAX_TEXT,
    REGION,
    Channel,
    ChannelClosed,
    ChannelError,
    ExitKind,
    Message,
    MsgType,
    regs_of,
)
from tdxsim.host.l1_image import L1Image, L1ImageError
from tdxsim.module.build import MR_EXTEND_CHUNK, BuildError, TdBuilder, TdConfig
from tdxsim.module.dispatch import TdxModule
from tdxsim.module.host_interface import TdExit
from tdxsim.module.memory import PageState, TdMemoryError
from tdxsim.module.registers import Regs

CHUNKS_PER_PAGE = PAGE_SIZE // MR_EXTEND_CHUNK
ALL_CHUNKS_EXTENDED = (1 << CHUNKS_PER_PAGE) - 1  # one bit per 256-byte chunk of a page
L1_EXIT_OK = 0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class HostShutdown(BaseException):
    """The host ended the TD while L1 was inside a TD exit (not catchable as Exception by L1)."""


SHARED_WITH_L1 = frozenset({"tdxdefs"})  # the model imports it too; L1 must take the image's


class SwitchableFinder(Protocol):
    """The bootstrap's meta-path finder for the module model's packages: the TD process switches it
    off before importing L1, so L1 comes from its measured image alone."""

    enabled: bool


class RamOffsets:
    """GPA -> offset in the TD memory file, for L1's memory views (shared bit ignored: both views
    alias one page). The first region is tried before any loop: it holds almost every access."""

    def __init__(self, regions: Sequence[tuple[int, int, int]], shared_bit: int) -> None:
        # (first GPA, end GPA, offset - GPA) per (GPA, size, offset) region
        ranges = tuple((gpa, gpa + size, off - gpa) for gpa, size, off in regions)
        first_low, first_high, first_delta = ranges[0] if ranges else (0, 0, 0)
        private_mask = ~shared_bit

        def offset(gpa: int) -> int:
            """Offset in the TD memory file of a GPA; ValueError outside TD RAM."""
            private = gpa & private_mask
            if first_low <= private < first_high:
                return private + first_delta
            for low, high, delta in ranges:
                if low <= private < high:
                    return private + delta
            raise ValueError(f"GPA {gpa:#x} is not TD RAM")

        # a closure over the table: L1 translates about thirty GPAs per TPM command, and
        # closure cells are cheaper to read than instance attributes
        self.offset = offset


class L1Platform:
    """What L1 gets: a register-level TDCALL and TD memory views; nothing from the checkout."""

    def __init__(self, module: TdxModule, image_path: str) -> None:
        self._module = module
        self.image_path = image_path  # the measured payload zip, for workers L1 starts from it
        memory = module.memory
        self.memory: memoryview = memory.view
        self.regions: list[tuple[int, int, int]] = [
            (r.gpa, r.size, r.offset) for r in memory.regions
        ]
        self.shared_bit: int = memory.shared_bit
        self.gpaw: int = memory.gpaw
        self._handler: Callable[[int], None] | None = None
        self._vcpu = module.td.vcpus[0]
        self.offset = RamOffsets(self.regions, self.shared_bit).offset

    def tdcall(self, regs: Sequence[int]) -> list[int]:
        """TDCALL on vCPU 0: 16 GPRs in architectural order in (leaf in RAX), 16 out (status in
        RAX). A deliverable host interrupt is taken after the TDCALL returns, as on hardware."""
        out = self._module.tdcall_values(regs, 0)
        if self._handler is not None and self._vcpu.l1_interrupt_deliverable():
            vector = self._vcpu.l1_rvi
            self._module.l1_interrupt_taken(0)
            self._handler(vector)
        return out

    def set_interrupt_handler(self, handler: Callable[[int], None] | None) -> None:
        """L1's interrupt handler, called with the vector when a host interrupt is taken."""
        self._handler = handler


class ChannelHost:
    """`HostInterface` in the TD process: each call is one round trip to the host process."""

    def __init__(self, process: TdProcess) -> None:
        self.process = process

    def tdvmcall(self, regs: Regs) -> Regs:
        timeline.mark(Mark.TD_EXIT)
        try:
            self.process.channel.send_exit(ExitKind.TDVMCALL, regs.as_list())
            _flags, answer = self.process.serve_until_enter(regs.r11)
        except ChannelClosed as exc:
            raise HostShutdown(str(exc)) from exc  # past the module's and L1's handlers
        return answer

    def td_exit(self, event: TdExit) -> bool:
        kind = EXIT_KINDS.get(event.kind, ExitKind.TIMER)
        timeline.mark(Mark.TD_EXIT)
        try:
            self.process.channel.send_exit(
                kind,
                [0] * GPR_COUNT,
                event.vm,
                event.eeq_type,
                event.exit_reason,
                event.gpa,
                event.qualification,
            )
            flags, _answer = self.process.serve_until_enter(event.kind)
        except ChannelClosed as exc:
            raise HostShutdown(str(exc)) from exc
        return bool(flags & ENTER_FIXED)


class TdProcess:
    """The TD process's state and its host-side call handlers."""

    def __init__(self, channel: Channel, finder: SwitchableFinder | None = None) -> None:
        self.channel = channel
        self.finder = finder
        self.builder: TdBuilder | None = None
        self.module: TdxModule | None = None
        self.image: L1Image | None = None
        self.extended: dict[int, int] = {}
        self.started = False

    # --- host-side calls -----------------------------------------------------------------------
    def _create(self, msg: Message) -> None:
        gpaw, vms, vcpus, count, attributes, xfam, budget, key = msg.fields(CREATE_FORMAT)
        rest = msg.rest(CREATE_FORMAT)
        regions = [REGION.unpack_from(rest, i * REGION.size)[:2] for i in range(int(count))]
        config = TdConfig(
            ram=[(int(g), int(s)) for g, s in regions],
            attributes=int(attributes),
            xfam=int(xfam),
            num_l2_vms=int(vms),
            max_vcpus=int(vcpus),
            gpaw=int(gpaw),
        )
        self.builder = TdBuilder(
            config,
            ChannelHost(self),
            TdReportBuilder(ReportMacKey(bytes(key))),
            instruction_budget=int(budget) or None,
        )
        for _ in range(int(vcpus)):
            self.builder.add_vcpu()
        memory = self.builder.memory
        payload = b"".join(REGION.pack(r.gpa, r.size, r.offset) for r in memory.regions)
        self.channel.send(MsgType.CREATED, payload, fds=[memory.fd])

    def _need_builder(self) -> TdBuilder:
        if self.builder is None:
            raise BuildError("no TD: CREATE first")
        return self.builder

    def _extend(self, msg: Message) -> None:
        gpa, chunks = (int(v) for v in msg.fields(EXTEND_FORMAT))
        builder = self._need_builder()
        for i in range(chunks):
            chunk = gpa + i * MR_EXTEND_CHUNK
            builder.mr_extend(chunk)
            page = chunk & ~(PAGE_SIZE - 1)
            bit = 1 << ((chunk % PAGE_SIZE) // MR_EXTEND_CHUNK)
            self.extended[page] = self.extended.get(page, 0) | bit

    def _finalize(self, msg: Message) -> None:
        gpa, size = (int(v) for v in msg.fields(FINALIZE_FORMAT))
        builder = self._need_builder()
        if gpa % PAGE_SIZE or size <= 0:
            raise BuildError(f"FINALIZE: L1 image at GPA {gpa:#x} size {size} is not a page range")
        for page in range(gpa, gpa + size, PAGE_SIZE):
            if (
                builder.memory.page_state(page) != PageState.MAPPED
                or self.extended.get(page, 0) != ALL_CHUNKS_EXTENDED
            ):
                raise BuildError(f"FINALIZE: L1 image page at GPA {page:#x} is not fully measured")
        try:
            self.image = L1Image.unpack(builder.memory.read(gpa, size))
        except L1ImageError as exc:
            raise BuildError(f"FINALIZE: L1 image at GPA {gpa:#x}: {exc}") from exc
        self.module = builder.finalize()
        self.channel.send(MsgType.FINALIZED, FINALIZED_FORMAT.pack(self.module.td.mrtd))

    def handle(self, msg: Message) -> tuple[int, Regs] | None:
        """Serve one host-side call; returns (flags, regs) for ENTER. A malformed call is
        answered REPLY refused, never taken down the TD process."""
        try:
            return self._handle(msg)
        except ChannelError as exc:
            self.channel.send_reply(False, str(exc))
            return None

    def _handle(self, msg: Message) -> tuple[int, Regs] | None:
        kind = msg.type
        if kind == MsgType.ENTER:
            values = msg.fields(ENTER_FORMAT)
            interrupts = msg.rest(ENTER_FORMAT)
            if len(interrupts) % INTERRUPT_FORMAT.size:
                raise ChannelError(
                    f"ENTER: {len(interrupts)} bytes after the registers are not whole "
                    f"{INTERRUPT_FORMAT.size}-byte interrupts"
                )
            self._post(interrupts)
            return int(values[1]), regs_of(values)
        if kind == MsgType.SHUTDOWN:
            raise HostShutdown()
        try:
            if kind == MsgType.CREATE:
                self._create(msg)
                return None
            if kind == MsgType.FINALIZE:
                self._finalize(msg)
                return None
            builder = self._need_builder()
            if kind == MsgType.ADD_PAGE:
                (gpa,) = msg.fields(ADD_PAGE_FORMAT)
                builder.page_add(int(gpa), msg.rest(ADD_PAGE_FORMAT))
            elif kind == MsgType.EXTEND:
                self._extend(msg)
            elif kind == MsgType.AUG_REST:
                builder.aug_rest()
            elif kind == MsgType.AUG:
                (gpa,) = msg.fields(AUG_FORMAT)
                self.channel.send_reply(builder.module.host_page_aug(int(gpa)))
                return None
            elif kind == MsgType.CONVERT:
                gpa, npages, to_shared = (int(v) for v in msg.fields(CONVERT_FORMAT))
                if to_shared:
                    builder.module.host_convert_to_shared(gpa, npages)
                else:
                    builder.module.host_convert_to_private(gpa, npages)
            else:
                raise BuildError(f"unexpected message {kind.name}")
        except (BuildError, ValueError, TdMemoryError) as exc:
            self.channel.send_reply(False, str(exc))
            return None
        self.channel.send_reply(True)
        return None

    def receive(self, data: bytes | None = None) -> Message | None:
        """The next message (or `data` parsed), or None (after a refusal) if it was malformed."""
        try:
            return Channel.parse(data if data is not None else self.channel.recv_raw())
        except ChannelError as exc:
            self.channel.send_reply(False, str(exc))
            return None

    def _post(self, interrupts: bytes) -> None:
        """Post the host interrupts an ENTER carries (vCPUs the TD lacks are ignored)."""
        if self.module is None:
            return
        vcpus = len(self.module.td.vcpus)
        for vcpu, vector in INTERRUPT_FORMAT.iter_unpack(interrupts):
            if vcpu < vcpus:
                self.module.post_l1_interrupt(vcpu, vector)

    def serve_until_enter(self, wait: Hashable = None) -> tuple[int, Regs]:
        """Serve host-side calls until the host enters the TD again (ENTER decoded inline);
        `wait` names the TD exit waited on, for the channel's adaptive spinning."""
        while True:
            data = self.channel.recv_raw(wait)
            size = len(data)
            if (
                size >= ENTER_MSG.size
                and data[0] == MsgType.ENTER
                and not data[1]
                and not (size - ENTER_MSG.size) % INTERRUPT_FORMAT.size
            ):
                values = ENTER_MSG.unpack_from(data)
                if values[2] == size - HEADER.size:
                    timeline.mark(Mark.TD_ENTER)
                    if size > ENTER_MSG.size:
                        self._post(data[ENTER_MSG.size :])
                    return values[ENTER_GPRS_AT - 1], Regs(*values[ENTER_GPRS_AT:])
            msg = self.receive(data)
            entered = self.handle(msg) if msg is not None else None
            if entered is not None:
                return entered

    # --- L1 --------------------------------------------------------------------------------------
    def run_l1(self, workdir: Path) -> bytes:
        """Import L1 from the measured image alone and call its entry point."""
        if self.module is None or self.image is None:
            raise BuildError("ENTER before FINALIZE")
        zip_path = workdir / "l1image.zip"
        fd = os.open(zip_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.image.payload)
        if self.finder is not None:
            self.finder.enabled = False
        image_packages = self.image.packages()
        for name in list(sys.modules):  # the model's copies (e.g. tdxdefs) are not L1's to use
            if name.partition(".")[0] in image_packages | SHARED_WITH_L1:
                del sys.modules[name]
        sys.path.insert(0, str(zip_path))
        importlib.invalidate_caches()
        module = importlib.import_module(self.image.module)
        for name, loaded in list(sys.modules.items()):
            origin = getattr(loaded, "__file__", "") or ""
            if name.partition(".")[0] in image_packages and not origin.startswith(str(zip_path)):
                raise ImportError(f"L1 module {name} came from {origin}, not the image")
        entry = getattr(module, self.image.function)
        result = entry(L1Platform(self.module, str(zip_path)))
        if isinstance(result, str):
            return result.encode()
        return bytes(result) if isinstance(result, bytes | bytearray) else repr(result).encode()


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: if the host process dies, so does the TD (no orphan L1 left running)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main(sock_fd: int, finder: SwitchableFinder | None = None) -> int:
    """Serve the channel on `sock_fd` until SHUTDOWN; runs L1 at the first ENTER."""
    _die_with_parent()
    channel = Channel(socket.socket(fileno=sock_fd))
    process = TdProcess(channel, finder)
    with tempfile.TemporaryDirectory(prefix="tdxsim-l1-") as workdir:
        try:
            while True:
                msg = process.receive()
                if msg is None:
                    continue
                if msg.type == MsgType.ENTER:
                    if process.image is None:
                        channel.send(MsgType.FAILED, b"ENTER before a successful FINALIZE")
                        continue
                    if process.handle(msg) is None:  # refused (malformed); the host was told
                        continue
                    try:
                        result = process.run_l1(Path(workdir))
                    except HostShutdown:
                        raise
                    except BaseException:  # L1's failure is reported, not fatal to the TD
                        channel.send(MsgType.FAILED, traceback.format_exc().encode()[-MAX_TEXT:])
                        continue
                    channel.send(MsgType.DONE, DONE_FORMAT.pack(L1_EXIT_OK) + result[:MAX_TEXT])
                    continue
                process.handle(msg)
        except HostShutdown:
            return 0
        except ChannelClosed:
            return 1  # the host is gone; nothing left to run for
