"""The host relay server of `invoke run --serve`: TPM clients on loopback, commands into the TD.

Port P speaks the swtpm data channel and the mssim command protocol (the first bytes of a
connection choose; `vtpm.protocol` parses both), port P+1 the mssim platform signals and the
swtpm TCTI's CMD_SET_LOCALITY, as `vtpm serve` does. Each TPM command becomes a relay command
for one L2's vTPM; the answer goes back in the connection's framing. Commands from all
connections run one at a time, in arrival order; a client that vanishes mid-command costs only
its own answer, which is dropped.

`RelayServer` is itself the `tdxsim.host.relay.RelayHook`: the sockets are served in the host
loop's thread, inside `next_command` (a bounded select while L1 halts, a zero-time one at the
other TD exits), and `response` sends the answer at once. So a command goes from the client's
socket to the ring, and the answer back, with no thread hand-off; while L1 works on a command no
socket is read, and nothing else could run meanwhile anyway.

Platform port policy: with `dev_platform_port`, a power cycle (POWER_OFF then POWER_ON, RESET,
RESTART; the swtpm TCTI's reset reads as the first) becomes a POWER_CYCLE relay command (L1
resets and manufactures that L2's vTPM again). Without it, the platform port acknowledges only
what changes nothing and what the TCTIs send when they connect: the swtpm TCTI's
CMD_SET_LOCALITY (the locality of later swtpm-framed commands, passed in the ring, where L1
decides), and POWER_ON of a powered TPM, NV_ON, CANCEL_OFF, SESSION_END and ACT_GET_SIGNALED
(the mssim TCTI sends the first two); every other signal is refused with the simulator
protocol's failure reply and logged, as `vtpm serve` refuses TPM_STOP without `--allow-stop`, and
the server keeps serving. TPM_STOP is always refused: SIGINT or SIGTERM end `--serve`.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tdxdefs.relay import RelayKind, RelayState
from tdxsim.host.relay import RelayCommand
from vtpm.engine import MAX_LOCALITY, error_response
from vtpm.libtpms import TPM_FAIL, TPM_SUCCESS
from vtpm.protocol import (
    RECV_SIZE,
    U32,
    CommandChannel,
    ControlRequest,
    Framing,
    MssimCommand,
    PlatformChannel,
    ProtocolError,
    SwtpmControlRequest,
    TpmRequest,
    handshake_response,
    mssim_response,
)
from vtpm.server import Port, bind_port_pair
from vtpm.wire import TPM_RC_FAILURE

log = logging.getLogger("orchestrator.relay")

IDLE_TIMEOUT_S = 60.0  # a silent connection is closed after this
SWEEP_EVERY_S = 1.0
MAX_CONNECTIONS = 64
PLATFORM_FAILURE = 1
HAVE_QUICKACK = hasattr(socket, "TCP_QUICKACK")
HARMLESS_SIGNALS = frozenset(
    {
        MssimCommand.POWER_ON,
        MssimCommand.NV_ON,
        MssimCommand.CANCEL_OFF,
        MssimCommand.SESSION_END,
        MssimCommand.ACT_GET_SIGNALED,
    }
)
POWER_CYCLE_SIGNALS = frozenset({MssimCommand.RESET, MssimCommand.RESTART})


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    port: Port
    peer: str
    channel: CommandChannel | PlatformChannel
    output: bytearray = field(default_factory=bytearray)
    waiting: bool = False  # a command of this connection is queued or with the TD
    closing: bool = False  # close once the output is sent
    closed: bool = False
    last_active: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Queued:
    conn: _Connection
    command: RelayCommand
    mssim: bool


class RelayServer:
    """The command port and the platform port right above it, serving one L2's vTPM; the
    host loop's `RelayHook` (see the module docstring)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        vm: int = 1,
        dev_platform_port: bool = False,
    ) -> None:
        self.host = host
        self.vm = vm
        self.dev_platform_port = dev_platform_port
        self._command, self._platform = bind_port_pair(host, port)
        self.port: int = self._command.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        for listener, kind in ((self._command, Port.COMMAND), (self._platform, Port.PLATFORM)):
            listener.setblocking(False)
            self._selector.register(listener, selectors.EVENT_READ, kind)
        self._connections: dict[int, _Connection] = {}
        self._queued: deque[_Queued] = deque()  # parsed, waiting for the host to take them
        self._issued: deque[_Queued] = deque()  # taken by the host, answers come in this order
        self._powered_off = False
        self._swtpm_locality = 0
        self._next_sweep = 0.0
        self._closed = False
        self.refused: deque[str] = deque(maxlen=256)

    def tcti_strings(self) -> dict[str, str]:
        """The TCTI configuration strings clients use to reach this server."""
        return {
            "mssim": f"mssim:host={self.host},port={self.port}",
            "swtpm": f"swtpm:host={self.host},port={self.port}",
        }

    # --- RelayHook -------------------------------------------------------------------
    def next_command(self, timeout: float) -> RelayCommand | None:
        """Serve the sockets for at most `timeout` seconds or until a TPM command is parsed."""
        if self._closed:
            return None
        deadline = time.monotonic() + timeout
        while not self._queued:
            remaining = deadline - time.monotonic()
            for key, _events in self._selector.select(max(remaining, 0.0)):
                if isinstance(key.data, Port):
                    self._accept(key.fileobj, key.data)  # type: ignore[arg-type]
                else:
                    self._service(key.data)
            self._sweep()
            if remaining <= 0:
                break
        if not self._queued:
            return None
        queued = self._queued.popleft()
        self._issued.append(queued)
        return queued.command

    def response(self, sequence: int, state: RelayState, message: bytes) -> None:
        """Send the answer to the oldest command the host took, in its connection's framing."""
        if not self._issued:
            log.warning("relay: answer %d with no command outstanding: dropped", sequence)
            return
        queued = self._issued.popleft()
        conn = queued.conn
        if conn.closed:
            return  # the client left mid-command: its answer is dropped
        conn.waiting = False
        if queued.command.kind == RelayKind.POWER_CYCLE:
            conn.output += U32.pack(self._power_cycled(state))
        else:
            answer = message if state == RelayState.RESPONSE and message else b""
            answer = answer or error_response(TPM_RC_FAILURE)
            conn.output += mssim_response(answer) if queued.mssim else answer
        conn.last_active = time.monotonic()
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        self._guarded(conn, self._run_requests)

    def close(self) -> None:
        """Close every connection and both listeners; commands not answered are dropped."""
        if self._closed:
            return
        self._closed = True
        for conn in list(self._connections.values()):
            self._close(conn)
        self._queued.clear()
        self._issued.clear()
        for sock in (self._command, self._platform):
            sock.close()
        self._selector.close()

    # --- connections -----------------------------------------------------------------
    def _accept(self, listener: socket.socket, port: Port) -> None:
        try:
            sock, address = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("relay: accept on the %s port failed: %s", port.value, exc)
            return
        if len(self._connections) >= MAX_CONNECTIONS:
            log.warning("relay: %d connections open; refusing %s", MAX_CONNECTIONS, address)
            sock.close()
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel: CommandChannel | PlatformChannel = (
            CommandChannel() if port is Port.COMMAND else PlatformChannel()
        )
        conn = _Connection(sock, port, f"{address[0]}:{address[1]}", channel)
        self._connections[sock.fileno()] = conn
        self._selector.register(sock, selectors.EVENT_READ, conn)

    def _service(self, conn: _Connection) -> None:
        if conn.output:
            self._flush(conn)
            return
        try:
            data = conn.sock.recv(RECV_SIZE)
            if HAVE_QUICKACK:  # the mssim TCTI writes a frame in pieces: ACK each at once
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.last_active = time.monotonic()
        conn.channel.feed(data)
        self._guarded(conn, self._run_requests)

    def _guarded(self, conn: _Connection, step: Callable[[_Connection], None]) -> None:
        """Run `step`; a framing error answers and closes this connection, nothing else."""
        try:
            step(conn)
        except ProtocolError as exc:
            log.warning("relay %s connection %s: %s", conn.port.value, conn.peer, exc)
            conn.output += exc.reply
            conn.closing = True
            self._flush(conn)
        except (OSError, ValueError) as exc:
            log.info("relay %s connection %s: %s: closing", conn.port.value, conn.peer, exc)
            self._close(conn)

    def _run_requests(self, conn: _Connection) -> None:
        """Answer what is parsed, until a request has to wait for the TD."""
        while not conn.waiting and not conn.closing and not conn.closed:
            request = conn.channel.next_request()
            if request is None:
                break
            if isinstance(request, TpmRequest):
                self._tpm_command(conn, request)
            elif isinstance(request, SwtpmControlRequest):
                conn.output += U32.pack(self._set_locality(request, conn.peer))
            elif conn.port is Port.COMMAND:
                self._command_control(conn, request)
            else:
                self._signal(conn, request)
        self._flush(conn)

    def _tpm_command(self, conn: _Connection, request: TpmRequest) -> None:
        assert isinstance(conn.channel, CommandChannel)
        mssim = conn.channel.framing is Framing.MSSIM
        if self._powered_off:  # a powered-off TPM answers nothing useful
            failure = error_response(TPM_RC_FAILURE)
            conn.output += mssim_response(failure) if mssim else failure
            return
        locality = request.locality if mssim else self._swtpm_locality
        command = RelayCommand(self.vm, RelayKind.TPM_COMMAND, locality, request.command)
        self._enqueue(conn, command, mssim)

    def _enqueue(self, conn: _Connection, command: RelayCommand, mssim: bool) -> None:
        self._queued.append(_Queued(conn, command, mssim))
        conn.waiting = True
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)  # nothing more from it until the answer

    def _flush(self, conn: _Connection) -> None:
        if conn.closed:
            return
        if conn.output:
            try:
                sent = conn.sock.send(conn.output)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            del conn.output[:sent]
        if conn.waiting:
            return  # unregistered until its answer is back
        events = selectors.EVENT_WRITE if conn.output else selectors.EVENT_READ
        if not conn.output and conn.closing:
            self._close(conn)
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.modify(conn.sock, events, conn)

    def _sweep(self) -> None:
        """Close connections silent for IDLE_TIMEOUT_S (checked every SWEEP_EVERY_S)."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY_S
        for conn in list(self._connections.values()):
            if not conn.waiting and now - conn.last_active > IDLE_TIMEOUT_S:
                log.info("relay connection %s idle: closing", conn.peer)
                self._close(conn)

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.waiting:  # not yet with the TD: forget it; with the TD: its answer is dropped
            self._queued = deque(q for q in self._queued if q.conn is not conn)
        self._connections.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()

    # --- requests other than TPM commands -----------------------------------------------
    def _command_control(self, conn: _Connection, request: ControlRequest) -> None:
        if request.code is MssimCommand.REMOTE_HANDSHAKE:
            conn.output += handshake_response()
        elif request.code is MssimCommand.SESSION_END:
            conn.closing = True
        else:  # TPM_STOP
            self._refuse(conn.peer, "TPM_STOP (SIGINT or SIGTERM end the relay)")
            conn.output += U32.pack(PLATFORM_FAILURE)

    def _set_locality(self, request: SwtpmControlRequest, peer: str) -> int:
        if request.argument > MAX_LOCALITY:
            self._refuse(peer, f"CMD_SET_LOCALITY {request.argument}")
            return TPM_FAIL
        self._swtpm_locality = request.argument
        return TPM_SUCCESS

    def _signal(self, conn: _Connection, request: ControlRequest) -> None:
        """Answer a platform signal, or hand a power cycle to the TD."""
        code = request.code
        if code is MssimCommand.SESSION_END:
            conn.closing = True
        elif code is MssimCommand.ACT_GET_SIGNALED:
            conn.output += U32.pack(0) + U32.pack(0)
        elif code in HARMLESS_SIGNALS and not self._powered_off:
            conn.output += U32.pack(0)
        elif not self.dev_platform_port or code is MssimCommand.STOP:
            self._refuse(conn.peer, f"platform signal {code.name} without --dev-platform-port")
            conn.output += U32.pack(PLATFORM_FAILURE)
        elif code is MssimCommand.POWER_OFF:
            self._powered_off = True
            self._swtpm_locality = 0
            conn.output += U32.pack(0)
        elif code is MssimCommand.POWER_ON or code in POWER_CYCLE_SIGNALS:
            self._enqueue(conn, RelayCommand(self.vm, RelayKind.POWER_CYCLE, 0, b""), False)
        else:
            conn.output += U32.pack(0)  # NV, physical presence, cancel, key cache: nothing to do

    def _power_cycled(self, state: RelayState) -> int:
        self._powered_off = False
        if state != RelayState.RESPONSE:
            log.error("relay: power cycle of vm %d failed in the TD", self.vm)
            return PLATFORM_FAILURE
        log.info("relay: vm %d power-cycled", self.vm)
        return 0

    def _refuse(self, peer: str, what: str) -> None:
        text = f"{peer}: {what}: refused"
        log.warning("relay: %s", text)
        self.refused.append(text)
