"""The untrusted host VMM's services: GHCI v1.5 TDVMCALL sub-functions and TD-exit handling.

`HostVmm` implements `HostInterface`. It answers TDG.VP.VMCALL with R10 = 0 by sub-function in R11
(R10 status, R11 return value, R12..R15 arguments; GHCI v1.5, TDG.VP.VMCALL), touches TD memory only
through `SharedMemory` (shared GPAs the TD converted), and reaches the module's host-side operations
(conversions, PAGE.AUG, interrupt posting) through a `TdControl`: in process `ModuleControl`, across
processes the channel (tdxsim.host.vmm). Misbehaviour on purpose comes from a `FaultSet`.

Choices GHCI leaves to the host, documented: GetQuote is answered synchronously (status set
before the TDVMCALL returns), then the notification vector is posted if L1 set one up. Register
layouts per GHCI v1.5:
ReportFatalError (R12 = error code, bit 63 = R13 holds the shared GPA of a NUL-terminated message),
Service (R12/R13 = shared command/response buffer GPAs; buffers start with GUID[16], length u32,
then reserved u32 in a command, status u32 in a response). MapGPA converts at most
`mapgpa_chunk_pages` pages per call and answers RETRY with R11 = the GPA to resume at. With a
relay attached (`attach_relay`, tdxsim.host.relay), HLT takes L1's answer from the ring and waits
a bounded time for the next vTPM command, and IO writes to RELAY_NOTIFY_PORT hand back an answer
L1 gives before it halts; without one HLT returns at once.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tdxdefs.getquote import (
    PAYLOAD_OFFSET,
    QGS_BODY_OFFSET,
    GetQuoteHeader,
    GetQuoteResp,
)
from tdxdefs.quote import REPORTDATA_OFFSET
from tdxdefs.relay import RELAY_NOTIFY_PORT
from tdxdefs.tdcall import PAGE_SIZE
from tdxdefs.tdvmcall import (
    FATAL_CODE_MASK,
    FATAL_MESSAGE_VALID,
    GHCI_STANDARD,
    IO_DIRECTION_READ,
    IO_DIRECTION_WRITE,
    SERVICE_STATUS_UNSUPPORTED,
    TDVMCALL_ALIGN_ERROR,
    TDVMCALL_OPERAND_INVALID,
    TDVMCALL_RETRY,
    TDVMCALL_SUCCESS,
    ServiceBufferHeader,
    Tdvmcall,
)
from tdxdefs.x86 import FIRST_EXTERNAL_VECTOR, LAST_VECTOR
from tdxsim.attestation.quoting import QuotingService
from tdxsim.host.faults import (
    FOREVER,
    GETQUOTE_LENGTH_SHORTFALL,
    FaultSet,
    GetQuoteLength,
)
from tdxsim.host.relay import HostRelay, RelayHook
from tdxsim.host.shared_memory import HostAccessDenied, SharedMemory
from tdxsim.module.dispatch import TdxModule
from tdxsim.module.host_interface import TdExit, TdExitKind
from tdxsim.module.registers import Regs

U64 = (1 << 64) - 1
IO_SIZES = (1, 2, 4)
MMIO_SIZES = (1, 2, 4, 8)
IO_PORT_MAX = 0xFFFF
HLT_FLAGS = (0, 1)
VECTOR_MIN = FIRST_EXTERNAL_VECTOR  # GHCI SetupEventNotifyInterrupt needs 32..255
VECTOR_MAX = LAST_VECTOR
DEFAULT_STORM_VECTOR = 0xEC
DEFAULT_MAPGPA_CHUNK_PAGES = 512
GETQUOTE_MAX_SIZE = 64 * PAGE_SIZE
FATAL_MESSAGE_MAX = PAGE_SIZE
WIDE_DATA_FILL = U64  # io-wide: every bit above the access size set
REWRITE_PERIOD_S = 0.0002
# getquote-rewrite flips the first REPORTDATA byte of the quote in the answered buffer
REWRITE_AT = QGS_BODY_OFFSET + GetQuoteResp.SIZE + REPORTDATA_OFFSET
# GHCI v1.5 Service buffers: GUID, length, then reserved (command) or status
LOG_KEEP = 1024
UART_BASE = 0x3F8
UART_LSR = UART_BASE + 5
UART_LSR_THR_EMPTY = 0x60


class TdControl(Protocol):
    """The module's host-side operations the VMM needs while the TD runs."""

    def convert_to_shared(self, gpa: int, npages: int) -> None: ...
    def convert_to_private(self, gpa: int, npages: int) -> None: ...
    def page_aug(self, gpa: int) -> bool: ...
    def post_interrupt(self, vcpu: int, vector: int) -> None: ...


class ModuleControl:
    """`TdControl` over an in-process `TdxModule` (unit tests, and the TD process itself)."""

    def __init__(self, module: TdxModule) -> None:
        self.module = module

    def convert_to_shared(self, gpa: int, npages: int) -> None:
        self.module.host_convert_to_shared(gpa, npages)

    def convert_to_private(self, gpa: int, npages: int) -> None:
        self.module.host_convert_to_private(gpa, npages)

    def page_aug(self, gpa: int) -> bool:
        return self.module.host_page_aug(gpa)

    def post_interrupt(self, vcpu: int, vector: int) -> None:
        self.module.post_l1_interrupt(vcpu, vector)


class Device(Protocol):
    """A shared device behind IO ports or an MMIO range: offsets are relative to its base."""

    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, size: int, value: int) -> None: ...


class Uart:
    """A write-only 16550 transmitter: L1's debug console (THR collects bytes, LSR says empty)."""

    def __init__(self) -> None:
        self.output = bytearray()

    def read(self, offset: int, size: int) -> int:
        return UART_LSR_THR_EMPTY if offset == UART_LSR - UART_BASE else 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.output.append(value & 0xFF)


@dataclass(frozen=True)
class FatalReport:
    """What L1 said in ReportFatalError."""

    code: int
    message: bytes


def _recent() -> deque[Any]:
    return deque(maxlen=LOG_KEEP)


@dataclass
class HostLog:
    """What the host saw and did, the most recent LOG_KEEP of each (a TD may run for hours)."""

    calls: deque[int] = field(default_factory=_recent)
    exits: deque[TdExit] = field(default_factory=_recent)
    injected: deque[tuple[int, int]] = field(default_factory=_recent)
    halts: int = 0
    quotes: deque[bytes] = field(default_factory=_recent)
    fatal: FatalReport | None = None
    refused: deque[str] = field(default_factory=_recent)


class HostVmm:
    """The host VMM's TDVMCALL and TD-exit handlers (untrusted; misbehaves as `faults` says)."""

    def __init__(
        self,
        shared: SharedMemory,
        control: TdControl,
        quoting: QuotingService | None = None,
        faults: FaultSet | None = None,
        *,
        mapgpa_chunk_pages: int = DEFAULT_MAPGPA_CHUNK_PAGES,
    ) -> None:
        self.shared = shared
        self.control = control
        self.quoting = quoting
        self.faults = faults if faults is not None else FaultSet()
        self.mapgpa_chunk_pages = mapgpa_chunk_pages
        self.notify_vector: int | None = None
        self.log = HostLog()
        self.io: dict[int, tuple[int, Device]] = {}
        self.mmio: list[tuple[int, int, Device]] = []
        self._pending: list[tuple[int, int]] = []
        self._mapgpa_retries = 0
        self._storm_left = self.faults.irq_storm
        self._spurious_done = False
        self._rewriters: list[threading.Thread] = []
        self._handlers = self._handler_table()
        self.uart = Uart()
        self.attach_io(UART_BASE, 8, self.uart)
        self.relay: HostRelay | None = None

    def attach_relay(self, hook: RelayHook, stop: threading.Event | None = None) -> HostRelay:
        """Serve the vTPM relay ring (tdxsim.host.relay) with `hook`: L1's HLT then hands back
        its answer and waits for the next command, RELAY_NOTIFY_PORT takes an answer L1 gives
        before it halts; `stop` ends the run when set."""
        self.relay = HostRelay(self.shared, hook, stop=stop)
        self.attach_io(RELAY_NOTIFY_PORT, 1, self.relay)
        return self.relay

    # --- devices and interrupts ---------------------------------------------------------------
    def attach_io(self, port: int, count: int, device: Device) -> None:
        """Route IO ports [port, port+count) to `device`."""
        for p in range(port, port + count):
            self.io[p] = (port, device)

    def attach_mmio(self, gpa: int, size: int, device: Device) -> None:
        """Route the shared-GPA range [gpa, gpa+size) to `device`."""
        self.mmio.append((gpa, size, device))

    def inject(self, vector: int, vcpu: int = 0) -> None:
        """Queue a host interrupt for L1; posted when the host next returns to the TD."""
        self._pending.append((vcpu, vector & VECTOR_MAX))

    def _deliver(self) -> None:
        """Post queued (and fault-injected) interrupts to L1 on the way back into the TD."""
        if self.faults.irq_spurious is not None and not self._spurious_done:
            self._spurious_done = True
            self._pending.append((0, self.faults.irq_spurious))
        if self._storm_left:
            self._storm_left -= 1
            vector = self.notify_vector if self.notify_vector is not None else DEFAULT_STORM_VECTOR
            self._pending.append((0, vector))
        if self.relay is not None:
            self._pending.extend((0, vector) for vector in self.relay.turn())
        pending, self._pending = self._pending, []
        for vcpu, vector in pending:
            self.log.injected.append((vcpu, vector))
            self.control.post_interrupt(vcpu, vector)

    def entered(self) -> None:
        """The TD was resumed (or the run ended): the relay's answers go to its clients now."""
        if self.relay is not None:
            self.relay.entered()

    def join_rewriters(self, timeout: float = 1.0) -> None:
        """Wait for getquote-rewrite threads (tests, and before the VMM exits)."""
        for thread in self._rewriters:
            thread.join(timeout)
        self._rewriters.clear()

    # --- HostInterface -------------------------------------------------------------------------
    def tdvmcall(self, regs: Regs) -> Regs:
        """Service one TDVMCALL; only the GPRs L1 exposed are read and written."""
        if self.relay is not None:
            self.relay.count_exit()
        out = regs.copy()
        self.log.calls.append(regs.r11)
        try:
            status = self._dispatch(out) if regs.r10 == GHCI_STANDARD else TDVMCALL_OPERAND_INVALID
        except HostAccessDenied as exc:
            self.log.refused.append(str(exc))
            status = TDVMCALL_OPERAND_INVALID
        if status == TDVMCALL_SUCCESS and self.faults.vmcall_status is not None:
            status = self.faults.vmcall_status
        out.r10 = status
        self._deliver()
        return out

    def td_exit(self, event: TdExit) -> bool:
        """A TD exit: AUG a page L1 wants to accept; host-routed L2 exits resume L1."""
        if self.relay is not None:
            self.relay.count_exit()
        self.log.exits.append(event)
        fixed = False
        if event.kind == TdExitKind.EPT_VIOLATION:
            fixed = self.control.page_aug(event.gpa)
        elif event.kind in (TdExitKind.L2_HOST_ROUTED, TdExitKind.TIMER):
            fixed = True  # resume L1 (TDH.VP.ENTER RESUME_L1), it sees L2_EXIT_HOST_ROUTED_ASYNC
        self._deliver()
        return fixed

    # --- sub-functions ---------------------------------------------------------------------------
    def _dispatch(self, r: Regs) -> int:
        handler = self._handlers.get(r.r11)
        if handler is None:
            return TDVMCALL_OPERAND_INVALID
        return handler(r)

    def _handler_table(self) -> dict[int, Callable[[Regs], int]]:
        return {
            Tdvmcall.HLT: self._hlt,
            Tdvmcall.IO: self._io,
            Tdvmcall.REQUEST_MMIO: self._mmio,
            Tdvmcall.MAP_GPA: self._map_gpa,
            Tdvmcall.GET_QUOTE: self._get_quote,
            Tdvmcall.REPORT_FATAL_ERROR: self._fatal,
            Tdvmcall.SETUP_EVENT_NOTIFY_INTERRUPT: self._setup_notify,
            Tdvmcall.SERVICE: self._service,
        }

    def _hlt(self, r: Regs) -> int:
        if r.r12 not in HLT_FLAGS:
            return TDVMCALL_OPERAND_INVALID
        self.log.halts += 1
        if self.relay is not None:
            self.relay.halt()
        return TDVMCALL_SUCCESS

    def _wide(self, value: int, size: int) -> int:
        return value | (WIDE_DATA_FILL << (8 * size)) & U64 if self.faults.io_wide else value

    def _io(self, r: Regs) -> int:
        size, direction, port = r.r12, r.r13, r.r14
        if size not in IO_SIZES or direction not in (IO_DIRECTION_READ, IO_DIRECTION_WRITE):
            return TDVMCALL_OPERAND_INVALID
        if port > IO_PORT_MAX or port + size - 1 > IO_PORT_MAX:
            return TDVMCALL_OPERAND_INVALID
        mask = (1 << (8 * size)) - 1
        route = self.io.get(port)
        if direction == IO_DIRECTION_WRITE:
            if route is not None:
                route[1].write(port - route[0], size, r.r15 & mask)
            return TDVMCALL_SUCCESS
        value = route[1].read(port - route[0], size) & mask if route is not None else mask
        r.r11 = self._wide(value, size)
        return TDVMCALL_SUCCESS

    def _mmio(self, r: Regs) -> int:
        size, direction, gpa = r.r12, r.r13, r.r14
        if size not in MMIO_SIZES or direction not in (IO_DIRECTION_READ, IO_DIRECTION_WRITE):
            return TDVMCALL_OPERAND_INVALID
        if gpa % size:
            return TDVMCALL_ALIGN_ERROR
        if not gpa & self.shared.shared_bit or gpa >> self.shared.gpaw:
            return TDVMCALL_OPERAND_INVALID  # MMIO for shared devices only
        for base, length, device in self.mmio:
            if base <= gpa and gpa + size <= base + length:
                mask = (1 << (8 * size)) - 1
                if direction == IO_DIRECTION_WRITE:
                    device.write(gpa - base, size, r.r15 & mask)
                else:
                    r.r11 = self._wide(device.read(gpa - base, size) & mask, size)
                return TDVMCALL_SUCCESS
        return TDVMCALL_OPERAND_INVALID

    def _map_gpa(self, r: Regs) -> int:
        gpa, length = r.r12, r.r13
        if gpa % PAGE_SIZE or length % PAGE_SIZE:
            return TDVMCALL_ALIGN_ERROR
        if not length or gpa >> self.shared.gpaw or not self.shared.is_ram(gpa, length):
            return TDVMCALL_OPERAND_INVALID
        retries = self.faults.mapgpa_retry
        if retries == FOREVER or self._mapgpa_retries < retries:
            self._mapgpa_retries += 1
            r.r11 = gpa
            return TDVMCALL_RETRY
        to_shared = bool(gpa & self.shared.shared_bit)
        npages = min(length // PAGE_SIZE, self.mapgpa_chunk_pages)
        private = gpa & ~self.shared.shared_bit
        if to_shared:
            self.control.convert_to_shared(private, npages)
            self.shared.set_mapped(gpa, npages, True)
        else:
            self.shared.set_mapped(gpa | self.shared.shared_bit, npages, False)
            self.control.convert_to_private(private, npages)
        if npages * PAGE_SIZE < length:
            r.r11 = gpa + npages * PAGE_SIZE
            return TDVMCALL_RETRY
        return TDVMCALL_SUCCESS

    def _get_quote(self, r: Regs) -> int:
        gpa, size = r.r12, r.r13
        if gpa % PAGE_SIZE:
            return TDVMCALL_ALIGN_ERROR
        if not PAYLOAD_OFFSET <= size <= GETQUOTE_MAX_SIZE:
            return TDVMCALL_OPERAND_INVALID
        buffer = self.shared.read(gpa, size)  # HostAccessDenied -> OPERAND_INVALID
        if self.quoting is None:
            return TDVMCALL_OPERAND_INVALID
        answer = bytearray(self.quoting.serve_get_quote(buffer))
        faults = self.faults
        if faults.getquote_status is not None:
            header = GetQuoteHeader.unpack(answer)
            dataclasses.replace(header, status=faults.getquote_status).pack_into(answer)
        if faults.getquote_length is not None:
            header = GetQuoteHeader.unpack(answer)
            real = header.out_len
            if faults.getquote_length == GetQuoteLength.LONG:
                lie = size
            elif faults.getquote_length == GetQuoteLength.SHORT:
                lie = max(real - GETQUOTE_LENGTH_SHORTFALL, 0)
            else:
                lie = int(faults.getquote_length)
            dataclasses.replace(header, out_len=lie & 0xFFFFFFFF).pack_into(answer)
        self.log.quotes.append(bytes(answer))
        self.shared.write(gpa, bytes(answer))
        if faults.getquote_rewrite:
            self._start_rewriter(gpa, bytes(answer), faults.getquote_rewrite)
        if self.notify_vector is not None:
            self.inject(self.notify_vector)
        return TDVMCALL_SUCCESS

    def _start_rewriter(self, gpa: int, answer: bytes, count: int) -> None:
        """Flip a REPORTDATA byte of the answered quote `count` times while L1 runs, ending
        tampered (odd counts; an even count ends on the original bytes)."""
        end = min(REWRITE_AT, len(answer) - 1)
        original = answer[end]
        tampered = original ^ 0xFF

        def rewrite() -> None:
            for i in range(count):
                time.sleep(REWRITE_PERIOD_S)
                value = tampered if (count - i) % 2 else original
                try:
                    self.shared.write(gpa + end, bytes([value]))
                except (HostAccessDenied, ValueError):
                    return  # L1 converted the buffer back, or the mapping is gone

        thread = threading.Thread(target=rewrite, name="getquote-rewrite", daemon=True)
        self._rewriters.append(thread)
        thread.start()

    def _fatal(self, r: Regs) -> int:
        message = b""
        if r.r12 & FATAL_MESSAGE_VALID:
            page = self.shared.read(r.r13, min(FATAL_MESSAGE_MAX, PAGE_SIZE - r.r13 % PAGE_SIZE))
            message = page.split(b"\0", 1)[0]
        self.log.fatal = FatalReport(r.r12 & FATAL_CODE_MASK, message)
        return TDVMCALL_SUCCESS

    def _setup_notify(self, r: Regs) -> int:
        if not VECTOR_MIN <= r.r12 <= VECTOR_MAX:
            return TDVMCALL_OPERAND_INVALID
        self.notify_vector = r.r12
        return TDVMCALL_SUCCESS

    def _service(self, r: Regs) -> int:
        cmd_gpa, rsp_gpa = r.r12, r.r13
        if cmd_gpa % PAGE_SIZE or rsp_gpa % PAGE_SIZE:
            return TDVMCALL_ALIGN_ERROR
        command = ServiceBufferHeader.unpack(self.shared.read(cmd_gpa, ServiceBufferHeader.SIZE))
        response = ServiceBufferHeader.unpack(self.shared.read(rsp_gpa, ServiceBufferHeader.SIZE))
        guid, cmd_len, rsp_len = command.guid, command.length, response.length
        if cmd_len < ServiceBufferHeader.SIZE or rsp_len < ServiceBufferHeader.SIZE:
            return TDVMCALL_OPERAND_INVALID
        self.shared.read(cmd_gpa, cmd_len)  # the whole command must be shared memory
        self.shared.write(
            rsp_gpa,
            ServiceBufferHeader(guid, ServiceBufferHeader.SIZE, SERVICE_STATUS_UNSUPPORTED).pack(),
        )
        return TDVMCALL_SUCCESS
