"""The host relay server of `invoke run --serve`: TPM clients on loopback, commands into the TD.

Port P speaks the swtpm data channel and the mssim command protocol (the first bytes of a
connection choose; `vtpm.protocol` parses both), port P+1 the mssim platform signals and the
swtpm TCTI's CMD_SET_LOCALITY, as `vtpm serve` does. Each TPM command becomes a relay command
for one L2's vTPM (`RelayHub`, the `tdxsim.host.relay.RelayHook` the host loop pulls from); the
answer goes back in the connection's framing. Commands from all connections run one at a time, in
arrival order; a client that vanishes mid-command costs only its own answer, which is dropped.

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
import enum
import logging
import queue
import selectors
import socket
import threading
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
from vtpm.wire import TPM_RC_FAILURE

log = logging.getLogger("orchestrator.relay")

COMMAND_TIMEOUT_S = 60.0  # a client waits this long for the TD's answer, then gets TPM_RC_FAILURE
POLL_S = 0.2  # sockets wake this often to see a stop request
IDLE_TIMEOUT_S = 60.0  # a silent connection is closed after this
MAX_CONNECTIONS = 64
PLATFORM_FAILURE = 1
HAVE_QUICKACK = hasattr(socket, "TCP_QUICKACK")
PORT_PAIR_ATTEMPTS = 50
MAX_PORT = 65534
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
Done = Callable[[RelayState, bytes], None]


@dataclass
class _Pending:
    command: RelayCommand
    done: Done
    queued_at: float = field(default_factory=time.monotonic)
    issued: bool = False  # handed to the host loop: its answer will come
    cancelled: bool = False  # the client gave up before that: skip it


class RelayHub:
    """Commands from the server to the host loop, answers back (a `RelayHook`).

    Every command submitted gets exactly one answer through its callback: the TD's, or ERROR
    when it was cancelled before the host took it or when the hub closed. Callbacks run in the
    host loop's thread (or the closing one) and must only hand the answer on."""

    def __init__(self, command_timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        self.command_timeout_s = command_timeout_s
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._issued: deque[_Pending] = deque()
        self._lock = threading.Lock()
        self._closed = False

    def submit_async(self, command: RelayCommand, done: Done) -> _Pending:
        """Queue `command`; `done(state, answer)` is called once when it is answered."""
        pending = _Pending(command, done)
        with self._lock:
            closed = self._closed
            if not closed:
                self._queue.put(pending)
        if closed:
            done(RelayState.ERROR, b"")
        return pending

    def cancel(self, pending: _Pending) -> bool:
        """Give up on a command the host has not taken yet (answered ERROR); False if taken."""
        with self._lock:
            if pending.issued or pending.cancelled:
                return False
            pending.cancelled = True
        pending.done(RelayState.ERROR, b"")
        return True

    def submit(self, command: RelayCommand) -> tuple[RelayState, bytes]:
        """Queue `command` and wait (bounded) for its answer; ERROR if none came in time."""
        answered = threading.Event()
        result: list[tuple[RelayState, bytes]] = []

        def done(state: RelayState, answer: bytes) -> None:
            result.append((state, answer))
            answered.set()

        pending = self.submit_async(command, done)
        if not answered.wait(self.command_timeout_s):
            if self.cancel(pending):
                log.warning("relay: no answer for vm %d in %.0f s", command.vm,
                            self.command_timeout_s)  # fmt: skip
            answered.wait(self.command_timeout_s)
        return result[0] if result else (RelayState.ERROR, b"")

    # --- RelayHook -------------------------------------------------------------------
    def next_command(self, timeout: float) -> RelayCommand | None:
        """The oldest command no client gave up on (waits at most `timeout` seconds)."""
        while True:
            try:
                pending = (
                    self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                return None
            with self._lock:
                if pending.cancelled:
                    continue
                pending.issued = True
            self._issued.append(pending)
            return pending.command

    def response(self, sequence: int, state: RelayState, message: bytes) -> None:
        """The answer to the oldest command handed out (the host answers each once, in order)."""
        if not self._issued:
            log.warning("relay: answer %d with no command outstanding: dropped", sequence)
            return
        self._issued.popleft().done(state, message)

    def close(self) -> None:
        """Answer every waiting command ERROR; later submissions fail at once."""
        with self._lock:
            self._closed = True
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if not pending.cancelled:
                pending.done(RelayState.ERROR, b"")
        while self._issued:
            self._issued.popleft().done(RelayState.ERROR, b"")


class Port(enum.Enum):
    """Which listening port a connection came in on."""

    COMMAND = "command"
    PLATFORM = "platform"


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    port: Port
    peer: str
    channel: CommandChannel | PlatformChannel
    output: bytearray = field(default_factory=bytearray)
    waiting: _Pending | None = None  # a command of this connection is with the TD
    closing: bool = False  # close once the output is sent
    closed: bool = False
    last_active: float = field(default_factory=time.monotonic)


class RelayServer:
    """The command port and the platform port right above it, serving one L2's vTPM.

    One thread runs a selector loop over both listeners and every connection; a command for the
    TD is handed to the hub and the connection reads nothing more until its answer is back (the
    answer wakes the loop through a socket pair), so each connection's answers keep its order."""

    def __init__(
        self,
        hub: RelayHub,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        vm: int = 1,
        dev_platform_port: bool = False,
    ) -> None:
        self.hub = hub
        self.host = host
        self.vm = vm
        self.dev_platform_port = dev_platform_port
        self._command, self._platform = _bind_pair(host, port)
        self.port: int = self._command.getsockname()[1]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._answers: deque[tuple[_Connection, RelayState, bytes, bool]] = deque()
        self._connections: dict[int, _Connection] = {}
        self._powered_off = False
        self._swtpm_locality = 0
        self.refused: deque[str] = deque(maxlen=256)

    def tcti_strings(self) -> dict[str, str]:
        """The TCTI configuration strings clients use to reach this server."""
        return {
            "mssim": f"mssim:host={self.host},port={self.port}",
            "swtpm": f"swtpm:host={self.host},port={self.port}",
        }

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._loop, name="relay-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop, close every connection and both listeners."""
        self._stop.set()
        self.hub.close()
        self._wake()
        if self._thread is not None:
            self._thread.join(POLL_S * 10)
        else:
            self._shutdown()

    # --- the loop --------------------------------------------------------------------
    def _loop(self) -> None:
        sel = self._selector
        for listener, port in ((self._command, Port.COMMAND), (self._platform, Port.PLATFORM)):
            listener.setblocking(False)
            sel.register(listener, selectors.EVENT_READ, port)
        self._wake_r.setblocking(False)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                for key, _events in sel.select(POLL_S):
                    if isinstance(key.data, Port):
                        self._accept(key.fileobj, key.data)  # type: ignore[arg-type]
                    elif key.data is None:
                        self._take_answers()
                    else:
                        self._service(key.data)
                self._sweep()
        finally:
            self._shutdown()

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
        try:
            if conn.output:
                self._flush(conn)
                return
            data = conn.sock.recv(RECV_SIZE)
            if HAVE_QUICKACK:  # the mssim TCTI writes a frame in pieces: ACK each at once
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            if not data:
                self._close(conn)
                return
            conn.last_active = time.monotonic()
            conn.channel.feed(data)
            self._run_requests(conn)
        except (BlockingIOError, InterruptedError):
            return
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
        while conn.waiting is None and not conn.closing and not conn.closed:
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
        self._relay(conn, command, mssim)

    def _relay(self, conn: _Connection, command: RelayCommand, mssim: bool) -> None:
        def done(state: RelayState, answer: bytes) -> None:  # in the host loop's thread
            self._answers.append((conn, state, answer, mssim))
            self._wake()

        conn.waiting = self.hub.submit_async(command, done)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)  # nothing more from it until the answer

    def _take_answers(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_r.recv(RECV_SIZE)
        while self._answers:
            conn, state, answer, mssim = self._answers.popleft()
            if conn.closed:
                continue  # the client left mid-command: its answer is dropped
            pending, conn.waiting = conn.waiting, None
            if pending is not None and pending.command.kind == RelayKind.POWER_CYCLE:
                conn.output += U32.pack(self._power_cycled(state))
            elif state != RelayState.RESPONSE or not answer:
                failure = error_response(TPM_RC_FAILURE)
                conn.output += mssim_response(failure) if mssim else failure
            else:
                conn.output += mssim_response(answer) if mssim else answer
            conn.last_active = time.monotonic()
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            try:
                self._run_requests(conn)
            except ProtocolError as exc:
                log.warning("relay %s connection %s: %s", conn.port.value, conn.peer, exc)
                conn.output += exc.reply
                conn.closing = True
                self._flush(conn)
            except (OSError, ValueError) as exc:
                log.info("relay connection %s: %s: closing", conn.peer, exc)
                self._close(conn)

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
        if conn.output:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        if conn.closing:
            self._close(conn)
            return
        if conn.waiting is None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _sweep(self) -> None:
        """Close idle connections; give up on commands the host has not taken in time."""
        now = time.monotonic()
        for conn in list(self._connections.values()):
            pending = conn.waiting
            if pending is not None:
                if now - pending.queued_at > self.hub.command_timeout_s:
                    self.hub.cancel(pending)  # answered ERROR through its callback
            elif now - conn.last_active > IDLE_TIMEOUT_S:
                log.info("relay connection %s idle: closing", conn.peer)
                self._close(conn)

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.waiting is not None:
            self.hub.cancel(conn.waiting)  # if the TD has it, its answer is dropped
        self._connections.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()

    def _shutdown(self) -> None:
        for conn in list(self._connections.values()):
            self._close(conn)
        for sock in (self._command, self._platform, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

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
            self._relay(conn, RelayCommand(self.vm, RelayKind.POWER_CYCLE, 0, b""), False)
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


def _listener(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """The command port and the platform port above it (any free pair when `port` is 0)."""
    if not 0 <= port <= MAX_PORT:
        raise ValueError(f"port {port}: must be 0..{MAX_PORT} (the platform port is port + 1)")
    for _ in range(1 if port else PORT_PAIR_ATTEMPTS):
        command = _listener(host, port)
        chosen = command.getsockname()[1]
        if chosen > MAX_PORT:
            command.close()
            continue
        try:
            return command, _listener(host, chosen + 1)
        except OSError as exc:
            command.close()
            if port:
                raise OSError(f"platform port {chosen + 1} on {host}: {exc}") from exc
    raise OSError(f"no free pair of adjacent ports on {host} after {PORT_PAIR_ATTEMPTS} tries")
