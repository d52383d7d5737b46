"""The host relay server of `invoke run --serve`: TPM clients on loopback, commands into the TD.

Port P speaks the swtpm data channel and the mssim command protocol (the first bytes of a
connection choose; `vtpm.protocol` parses both), port P+1 the mssim platform signals and the
swtpm TCTI's CMD_SET_LOCALITY, as `vtpm serve` does. Each TPM command becomes a relay command
for one L2's vTPM; the answer goes back in the connection's framing. Commands from all
connections run one at a time, in arrival order; a client that vanishes mid-command costs only
its own answer, which is dropped.

`RelayServer` is itself the `tdxsim.host.relay.RelayHook`: the sockets are served in the host
loop's thread, inside `next_command` (a bounded wait while L1 halts, a zero-time poll at the
other TD exits), and `response` sends the answer at once. So a command goes from the client's
socket to the ring, and the answer back, with no thread hand-off; while L1 works on a command no
socket is read, and nothing else could run meanwhile anyway.

Speed, for the swtpm TCTI's connection per command: a new command-port connection is read as it
is accepted (the listener defers the accept until the client's first bytes are in), and when
those bytes are one whole swtpm-framed command it goes to the TD at once, before any other
socket is looked at. While L1 halts, the wait polls the sockets without sleeping for up to a
window after each answer (tdxsim.host.spin.SpinWindow; vtpm.server's busy-poll window), since
waking a sleeping process costs more than a client's pause between commands; a client that
pauses longer turns the spinning off until one comes back sooner, and a yield that lost the CPU
to another process ends that wait's spin.

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

import logging
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tdxdefs import timeline
from tdxdefs.relay import RelayKind, RelayState
from tdxdefs.timeline import Mark
from tdxsim.host.relay import RelayCommand
from tdxsim.host.spin import YIELD_TAKEN_NS, SpinWindow
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
from vtpm.server import NS_PER_US, Port, bind_port_pair, default_busy_poll_us
from vtpm.wire import TPM_RC_FAILURE

log = logging.getLogger("orchestrator.relay")

IDLE_TIMEOUT_S = 60.0  # a silent connection is closed after this
SWEEP_EVERY_S = 1.0
MAX_CONNECTIONS = 64
PLATFORM_FAILURE = 1
HAVE_QUICKACK = hasattr(socket, "TCP_QUICKACK")
NOWAIT = socket.MSG_DONTWAIT  # connection sockets are used without blocking, with no fcntl
NS_PER_S = 1_000_000_000
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
    events: int = 0  # what epoll watches for (0: not registered)
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
        self._epoll = select.epoll()
        self._listeners: dict[int, tuple[socket.socket, Port]] = {}
        for listener, kind in ((self._command, Port.COMMAND), (self._platform, Port.PLATFORM)):
            self._listeners[listener.fileno()] = (listener, kind)
            self._epoll.register(listener.fileno(), select.EPOLLIN)
        self._connections: dict[int, _Connection] = {}
        self._queued: deque[_Queued] = deque()  # parsed, waiting for the host to take them
        self._issued: deque[_Queued] = deque()  # taken by the host, answers come in this order
        self._powered_off = False
        self._swtpm_locality = 0
        self._next_sweep = 0.0
        self._closed = False
        # the client's pause from an answer to its next command decides whether to spin for it
        self._pause = SpinWindow(default_busy_poll_us() * NS_PER_US)
        self._answered_at: int | None = None  # perf_counter_ns of the last answer not yet timed
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
        if not self._queued:
            if timeout > 0:
                self._serve_sockets(timeout)
            else:  # a zero-time look at a TD exit: only new connections, nothing else
                self._serve_events(self._epoll.poll(0), connections=False)
            self._time_pause()
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
            output = U32.pack(self._power_cycled(state))
        else:
            answer = message if state == RelayState.RESPONSE and message else b""
            answer = answer or error_response(TPM_RC_FAILURE)
            output = mssim_response(answer) if queued.mssim else answer
        if not conn.output:  # straight to the client; the bookkeeping below runs after
            timeline.mark(Mark.CLIENT_ANSWER)
            try:
                sent = conn.sock.send(output, NOWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            output = output[sent:]
        self._answered_at = time.perf_counter_ns()
        conn.output += output
        conn.last_active = time.monotonic()
        self._guarded(conn, self._run_requests)

    def housekeeping(self) -> None:
        """Serve what the sockets have for us now (a closed connection to close, a command to
        parse for later), without waiting: the host calls this while the TD runs."""
        if not self._closed:
            self._serve_events(self._epoll.poll(0), connections=True, all_events=True)

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
        self._epoll.close()

    # --- waiting -----------------------------------------------------------------------
    def _serve_sockets(self, timeout: float) -> None:
        """Serve socket events until a command is queued or `timeout` seconds pass; spin first
        (see the module docstring) when the host waits for the client's next command."""
        clock = time.perf_counter_ns
        start = clock()
        end = start + int(timeout * NS_PER_S)
        since = self._answered_at
        spin_until = 0
        if since is not None and self._pause.spinning:
            spin_until = since + self._pause.window_ns
        poll = self._epoll.poll
        while True:
            now = clock()
            if now < spin_until:
                events = poll(0)
                if not events:
                    os.sched_yield()  # the client may be waiting for this CPU
                    if clock() - now > YIELD_TAKEN_NS:
                        spin_until = 0  # it was: sleep until the client's command comes
                    continue
            else:
                events = poll(max(end - now, 0) / NS_PER_S)
            self._serve_events(events, connections=True)
            if self._queued:
                break
            self._sweep()
            if clock() >= end:
                break

    def _time_pause(self) -> None:
        """Account the client's pause since the last answer, once: when its next command has
        come, or when the pause has outlasted the spin window."""
        since = self._answered_at
        if since is None:
            return
        paused = time.perf_counter_ns() - since
        if self._queued or paused >= self._pause.window_ns:
            self._pause.waited(paused)
            self._answered_at = None

    def _serve_events(
        self, events: list[tuple[int, int]], *, connections: bool, all_events: bool = False
    ) -> None:
        """Accept and service what epoll reported; new connections first, and unless
        `all_events`, stop at the first queued command (epoll is level-triggered: what is left
        is reported again). Without `connections` only new connections are served: a zero-time
        look at a TD exit other than L1's HLT leaves reads, and the swtpm TCTI's closes (a TCP
        close costs several microseconds), to the wait in the HLT or to `housekeeping`."""
        if len(events) > 1:
            events.sort(key=lambda event: event[0] not in self._listeners)
        for fd, _mask in events:
            listener = self._listeners.get(fd)
            if listener is not None:
                self._accept(*listener)
            elif not connections:
                return
            else:
                conn = self._connections.get(fd)
                if conn is not None:
                    self._service(conn)
            if self._queued and not all_events:
                return

    def _watch(self, conn: _Connection, events: int) -> None:
        """Have epoll watch `conn` for `events` (0: not at all)."""
        if conn.closed or events == conn.events:
            return
        fd = conn.sock.fileno()
        try:
            if not events:
                self._epoll.unregister(fd)
            elif conn.events:
                self._epoll.modify(fd, events)
            else:
                self._epoll.register(fd, events)
        except (OSError, ValueError):
            pass
        conn.events = events

    # --- connections -----------------------------------------------------------------
    def _accept(self, listener: socket.socket, port: Port) -> None:
        try:
            # socket.accept() adds a family lookup and a timeout check to _accept(), microseconds
            # on every command of the swtpm TCTI; vtpm.server builds the socket itself too
            fd, address = listener._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("relay: accept on the %s port failed: %s", port.value, exc)
            return
        sock = socket.socket(listener.family, socket.SOCK_STREAM, 0, fd)
        if len(self._connections) >= MAX_CONNECTIONS:
            log.warning("relay: %d connections open; refusing %s", MAX_CONNECTIONS, address)
            sock.close()
            return
        if sock.gettimeout() is not None:  # a default timeout would make every call poll first
            sock.setblocking(False)
        # TCP_NODELAY is inherited from the listener (Linux)
        channel: CommandChannel | PlatformChannel = (
            CommandChannel() if port is Port.COMMAND else PlatformChannel()
        )
        conn = _Connection(sock, port, f"{address[0]}:{address[1]}", channel)
        self._connections[fd] = conn
        # the listener defers accept until the client's first bytes are in: read them now
        data = self._read(conn)
        if data is None:
            if not conn.closed:  # nothing there yet: wait for it
                self._watch(conn, select.EPOLLIN)
            return
        if (
            isinstance(channel, CommandChannel)
            and not self._powered_off
            and channel.whole_command(data)
        ):  # one whole swtpm command: to the TD now, nothing more from it until the answer
            command = RelayCommand(self.vm, RelayKind.TPM_COMMAND, self._swtpm_locality, data)
            self._enqueue(conn, command, False)
            return
        self._received(conn, data)

    def _service(self, conn: _Connection) -> None:
        if conn.output:
            self._flush(conn)
            return
        data = self._read(conn)
        if data is not None:
            self._received(conn, data)

    def _read(self, conn: _Connection) -> bytes | None:
        """What the client sent; None if nothing is there yet, or if the client closed or the
        read failed (then the connection is closed)."""
        try:
            data = conn.sock.recv(RECV_SIZE, NOWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return None
        return data

    def _received(self, conn: _Connection, data: bytes) -> None:
        """Parse and answer (or queue) what a connection sent."""
        if HAVE_QUICKACK:  # the mssim TCTI writes a frame in pieces: ACK each at once
            try:
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
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
        timeline.mark(Mark.CLIENT_COMMAND)
        self._queued.append(_Queued(conn, command, mssim))
        conn.waiting = True
        self._watch(conn, 0)  # nothing more from it until the answer

    def _flush(self, conn: _Connection) -> None:
        if conn.closed:
            return
        if conn.output:
            try:
                sent = conn.sock.send(conn.output, NOWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            del conn.output[:sent]
        if conn.waiting:
            return  # not watched until its answer is back
        if not conn.output and conn.closing:
            self._close(conn)
            return
        self._watch(conn, select.EPOLLOUT if conn.output else select.EPOLLIN)

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
        conn.sock.close()  # also drops it from epoll (the descriptor is never duplicated)

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
