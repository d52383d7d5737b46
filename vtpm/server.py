"""The vTPM socket server: swtpm data channel and mssim on one port, mssim platform on port+1.

One thread, one epoll loop: every TPM command runs on the loop, so commands from all clients
are serialized and a client that vanishes mid-command affects nobody else. A new command-port
connection whose first bytes are one whole swtpm-framed command is answered before any
bookkeeping, in one native call when vtpm.fastpath is loaded; the loop can busy-poll between
commands (see VtpmServer). Sockets get TCP_NODELAY,
and TCP_QUICKACK is re-armed after every receive so the tss2 mssim TCTI's small writes do not stall
on Nagle plus delayed ACK.

Port+1 also answers the swtpm TCTI's CMD_SET_LOCALITY: the TCTI opens a new connection for each
control command, and one that starts with command 5, no mssim platform signal, is parsed as swtpm
control (see `vtpm.protocol.PlatformChannel`). The locality it sets is one for the whole server,
applies to swtpm-framed commands only (mssim frames carry their own), and goes back to 0 when the
platform powers the TPM off. Other swtpm control commands share their codes with mssim signals and
are served as those: Tss2_Tcti_Swtpm_Reset's CMD_INIT with PTM_INIT_FLAG_DELETE_VOLATILE (tss2
3.2.1 sends u32 2, u32 1) reads as POWER_OFF, POWER_ON, a power cycle that succeeds.

Limits: at most `max_connections` connections at once, and a connection with no traffic for
`idle_timeout_s` is closed, so clients that connect and go quiet cannot hold every slot and keep
others out for longer than that. TPM_STOP (mssim command 21, on either port) ends the server only
when it was started with `allow_stop`; otherwise any local client could stop it, so it is refused
with the simulator protocol's failure reply (a non-zero u32) and the server keeps serving.

At start the TPM is powered on and provisioned (or just started), so it serves like swtpm with
`--flags startup-clear`. A platform POWER_OFF then POWER_ON behaves like hardware: the client must
send TPM2_Startup. With `wipe_on_power_cycle` the power-on first forgets all NV and re-provisions.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vtpm.busypoll import BusyPoll
from vtpm.engine import MAX_LOCALITY, TpmEngine, error_response
from vtpm.errors import VtpmError
from vtpm.fastpath import FastPath, Status
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
    ack,
    handshake_response,
    is_whole_swtpm_command,
    mssim_response,
)
from vtpm.wire import TPM_RC_FAILURE

log = logging.getLogger("vtpm.server")

Provisioner = Callable[[TpmEngine], object]

LISTEN_BACKLOG = 64
# Stop parsing a connection's frames while this much output waits for the client to read it.
OUTPUT_HIGH_WATER = 65536
# Reply to a platform signal that failed (the mssim TCTI treats any non-zero as an error).
PLATFORM_FAILURE = 1
PORT_PAIR_ATTEMPTS = 50
EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
DEFAULT_EPHEMERAL_LOW = 32768
LOW_PORT_FLOOR = 10000
# Connections beyond this are closed at once, so descriptor exhaustion cannot wedge the loop.
MAX_CONNECTIONS = 512
# A connection silent this long is closed. tpm2-pytss and tpm2-tools keep one connection open
# between commands; a minute covers their pauses (key generation runs inside a command, not
# between commands), while a slot held by a silent client frees within that minute.
DEFAULT_IDLE_TIMEOUT_S = 60.0
# How often idle connections are looked for, at most (and at least once per idle timeout).
IDLE_SWEEP_S = 1.0
MAX_PORT = 65534  # the platform port is port + 1, which must itself be a TCP port
# Both listeners are IPv4 (see _listener); accepted sockets are built with this family.
LISTEN_FAMILY = socket.AF_INET
# The peer of a connection that closed before we asked its address.
UNKNOWN_PEER = ("?", 0)
HAVE_QUICKACK = hasattr(socket, "TCP_QUICKACK")
# Wake accept() only once the client's first bytes are in (seconds to wait for them): every client
# of both ports speaks first, so the accept fast path finds its command already there.
DEFER_ACCEPT_S = 1
HAVE_DEFER_ACCEPT = hasattr(socket, "TCP_DEFER_ACCEPT")
# Connection sockets stay in blocking mode (no extra fcntl per connection); every recv and send
# is made non-blocking by this flag instead.
NOWAIT = socket.MSG_DONTWAIT
# What `vtpm serve` busy-polls for after each burst of work (see VtpmServer): long enough to
# cover a tpm2-pytss client's think time between commands, ESAPI unmarshalling included.
DEFAULT_BUSY_POLL_US = 1000
MAX_BUSY_POLL_US = 100_000
NS_PER_US = 1000


class ServerConfigError(VtpmError, ValueError):
    """An option of VtpmServer is out of range (a port, a timeout, a limit)."""


class Port(enum.Enum):
    """Which listening port a connection came in on."""

    COMMAND = "command"
    PLATFORM = "platform"


@dataclass(slots=True)
class _Connection:
    sock: socket.socket
    port: Port
    address: tuple[str, int]
    channel: CommandChannel | PlatformChannel
    output: bytearray = field(default_factory=bytearray)
    close_after_flush: bool = False
    writing: bool = False  # wants EPOLLOUT instead of EPOLLIN
    registered: bool = False  # known to epoll (not yet during the accept fast path)
    active: bool = True  # traffic since the last idle sweep
    idle_since: float = 0.0  # monotonic seconds of the sweep that first found it silent

    @property
    def peer(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"


class VtpmServer:
    """Serve one TpmEngine on a command port and the platform port right above it.

    busy_poll_us > 0: after each burst of work the loop polls without sleeping for up to that
    long before it blocks in epoll again (vtpm.busypoll adapts the window to the client). The
    swtpm TCTI opens a connection per command, and waking a sleeping Python process costs more
    than a small command itself (measured here: +45 us per GetRandom against swtpm when asleep).
    It is only for a server that owns its process: in a thread it would hold the GIL.
    """

    def __init__(
        self,
        engine: TpmEngine,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        wipe_on_power_cycle: bool = False,
        provision: Provisioner | None = None,
        busy_poll_us: int = 0,
        fastpath: FastPath | None = None,
        idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S,
        allow_stop: bool = False,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if not 0 <= busy_poll_us <= MAX_BUSY_POLL_US:
            raise ServerConfigError(
                f"busy polling of {busy_poll_us} us: must be 0..{MAX_BUSY_POLL_US}"
            )
        check_port(port)
        if idle_timeout_s is not None and not idle_timeout_s > 0:
            raise ServerConfigError(
                f"idle timeout {idle_timeout_s} s: must be more than 0 (or None for none)"
            )
        if not 1 <= max_connections <= MAX_CONNECTIONS:
            raise ServerConfigError(
                f"connection limit {max_connections}: must be 1..{MAX_CONNECTIONS}"
            )
        self.idle_timeout_s = idle_timeout_s
        self.allow_stop = allow_stop
        self.max_connections = max_connections
        self._next_sweep = 0.0
        self.engine = engine
        self.busy_poll_us = busy_poll_us
        self.fastpath = fastpath
        self.host = host
        self.wipe_on_power_cycle = wipe_on_power_cycle
        self.provision = provision
        self.provision_result: object = None
        self._epoll = select.epoll()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._connections: dict[int, _Connection] = {}
        self._requests = 0  # requests served (TPM commands, signals): what busy polling waits for
        # Set by swtpm CMD_SET_LOCALITY, used for swtpm framing; 0 again after a power-off.
        self._swtpm_locality = 0
        self._command_listener, self._platform_listener = bind_port_pair(host, port)
        self.port: int = self._command_listener.getsockname()[1]

    # -- public API -----------------------------------------------------------------------------

    @property
    def platform_port(self) -> int:
        """The mssim platform port (always command port + 1)."""
        return self.port + 1

    def tcti_strings(self) -> dict[str, str]:
        """The TCTI configuration strings clients use to reach this server."""
        return {
            "mssim": f"mssim:host={self.host},port={self.port}",
            "swtpm": f"swtpm:host={self.host},port={self.port}",
        }

    def start_tpm(self) -> None:
        """Power the TPM on and provision it (or send TPM2_Startup(CLEAR) if there is nothing to
        provision with)."""
        self.engine.power_on()
        self._provision_or_start()

    def serve_forever(self) -> None:
        """Run the event loop until request_stop() or (with allow_stop) a TPM_STOP signal."""
        ep = self._epoll
        listeners = {
            self._command_listener.fileno(): (self._command_listener, Port.COMMAND),
            self._platform_listener.fileno(): (self._platform_listener, Port.PLATFORM),
        }
        wake_fd = self._wake_r.fileno()
        for fd in listeners:
            ep.register(fd, select.EPOLLIN)
        ep.register(wake_fd, select.EPOLLIN)
        connections = self._connections
        spin = BusyPoll(self.busy_poll_us * NS_PER_US) if self.busy_poll_us else None
        clock = time.monotonic_ns
        sweep_every = (
            -1.0 if self.idle_timeout_s is None else min(IDLE_SWEEP_S, self.idle_timeout_s / 2)
        )
        try:
            while not self._stop.is_set():
                # Block forever only when nothing could go idle; else wake to sweep.
                wait = sweep_every if connections and sweep_every > 0 else -1.0
                if spin is None:
                    ready = ep.poll(wait)
                elif spin.spinning(clock()):
                    ready = ep.poll(0)
                    if not ready:
                        os.sched_yield()  # give way if the client was woken on this CPU
                        continue
                else:
                    spin.expired()
                    ready = ep.poll(wait)
                if wait > 0:
                    self._sweep_idle(time.monotonic())
                requests_before = self._requests
                if len(ready) > 1:  # a waiting client first, other connections' EOFs after
                    ready.sort(key=lambda event: event[0] not in listeners)
                for fd, events in ready:
                    listener = listeners.get(fd)
                    if listener is not None:
                        self._accept(*listener)
                    elif (conn := connections.get(fd)) is not None:
                        self._service(conn, events)
                    elif fd == wake_fd:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(RECV_SIZE)
                if spin is not None and self._requests != requests_before:
                    spin.served(clock())
        finally:
            self._shutdown()

    def _sweep_idle(self, now: float) -> None:
        """Close connections silent for idle_timeout_s (checked at most every IDLE_SWEEP_S).

        Traffic only sets a flag on the connection (no clock read per command); a sweep that
        finds the flag clear starts the connection's idle clock, one that finds it set clears it.
        """
        timeout = self.idle_timeout_s
        if timeout is None or now < self._next_sweep:
            return
        self._next_sweep = now + min(IDLE_SWEEP_S, timeout / 2)
        for conn in list(self._connections.values()):
            if conn.active:
                conn.active = False
                conn.idle_since = now
            elif now - conn.idle_since >= timeout:
                log.info(
                    "%s connection %s idle for %.0f s: closing",
                    conn.port.value,
                    conn.peer,
                    now - conn.idle_since,
                )
                self._close(conn)

    def request_stop(self) -> None:
        """Ask the loop to stop; safe from signal handlers and other threads."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- connections ----------------------------------------------------------------------------

    def _accept(self, listener: socket.socket, port: Port) -> None:
        """Accept one connection (epoll is level-triggered: more pending ones wake us again)."""
        # At the connection limit the Python path below refuses before anything runs.
        if (
            port is Port.COMMAND
            and self.fastpath is not None
            and len(self._connections) < self.max_connections
        ):
            self._accept_native(listener, self.fastpath)
            return
        try:
            # socket.accept() is _accept() plus a family lookup and a timeout check that cost
            # microseconds on every swtpm-TCTI command; build the socket ourselves instead.
            fd, addr = listener._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("accept on %s port failed: %s", port.value, exc)
            return
        sock = socket.socket(LISTEN_FAMILY, socket.SOCK_STREAM, 0, fd)
        if sock.gettimeout() is not None:  # a default timeout would make recv poll first
            sock.setblocking(False)
        if len(self._connections) >= self.max_connections:
            log.warning(
                "%s port: %d connections open; refusing %s:%d",
                port.value,
                self.max_connections,
                addr[0],
                addr[1],
            )
            sock.close()
            return
        # TCP_NODELAY is inherited from the listener (Linux). With TCP_DEFER_ACCEPT the client's
        # first bytes are usually here already: read them now rather than after an epoll round.
        try:
            data: bytes | None = sock.recv(RECV_SIZE, NOWAIT)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError:
            sock.close()
            return
        if data == b"":
            sock.close()
            return
        pending = b""
        if port is Port.COMMAND and data is not None and is_whole_swtpm_command(data):
            # Fast path: the swtpm TCTI sends exactly one command per connection. Answer it
            # before any bookkeeping: the only work between the client's write and our reply.
            try:
                response = self.engine.process(data, self._swtpm_locality)
                self._requests += 1
                try:
                    sent = sock.send(response, NOWAIT)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:  # the client is gone already
                    sock.close()
                    return
            except Exception as exc:  # one client's failure must never take the server down
                log.warning("command connection %s:%d: %s: closing", addr[0], addr[1], exc)
                sock.close()
                return
            command_channel = CommandChannel()
            command_channel.took_whole_command(len(data))
            channel: CommandChannel | PlatformChannel = command_channel
            pending, data = response[sent:], None
        elif port is Port.COMMAND:
            channel = CommandChannel()
        else:
            channel = PlatformChannel()
        conn = _Connection(sock, port, addr, channel, bytearray(pending))
        self._connections[fd] = conn
        if data is not None:  # not the fast path: parse what came like any later data
            self._service_data(conn, data)
        if fd in self._connections:
            conn.registered = True
            if conn.output:
                conn.writing = True
            self._epoll.register(fd, select.EPOLLOUT if conn.writing else select.EPOLLIN)

    def _accept_native(self, listener: socket.socket, fastpath: FastPath) -> None:
        """The command-port accept through vtpm.fastpath: a whole swtpm-framed command is
        answered inside that one call, so everything here runs after the client has its reply."""
        try:
            accepted = fastpath.accept(self.engine, listener.fileno(), self._swtpm_locality)
        except Exception as exc:  # one client's failure must never take the server down
            log.warning("accept on command port failed: %s", exc)
            return
        if accepted is None:
            return
        sock = socket.socket(LISTEN_FAMILY, socket.SOCK_STREAM, 0, accepted.fd)
        if accepted.status in (Status.ANSWERED, Status.TPM_FAILED):
            self._requests += 1
        if accepted.status is Status.CLOSED:
            sock.close()
            return
        try:
            addr = sock.getpeername()
        except OSError:
            addr = UNKNOWN_PEER
        channel = CommandChannel()
        output = b""
        if accepted.status is Status.ANSWERED:
            channel.took_whole_command(accepted.received)
            output = accepted.unsent
        elif accepted.status is Status.TPM_FAILED:
            channel.took_whole_command(accepted.received)
            output = error_response(TPM_RC_FAILURE)
        conn = _Connection(sock, Port.COMMAND, addr, channel, bytearray(output))
        self._connections[accepted.fd] = conn
        if accepted.status is Status.RECEIVED:
            self._service_data(conn, accepted.data)
        elif output:
            self._service_output(conn)
        if accepted.fd in self._connections:
            conn.registered = True
            self._epoll.register(accepted.fd, select.EPOLLOUT if conn.writing else select.EPOLLIN)

    def _service(self, conn: _Connection, events: int) -> None:
        try:
            if conn.writing:
                self._flush(conn)
            else:
                self._receive(conn)
        except Exception as exc:  # one client's failure must never take the server down
            log.warning("%s connection %s: %s: closing", conn.port.value, conn.peer, exc)
            self._close(conn)

    def _receive(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE, NOWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            if self._has_backlog(conn):
                log.info("command connection %s closed mid-frame; frame dropped", conn.peer)
            self._close(conn)
            return
        conn.active = True
        self._handle(conn, data)

    def _service_output(self, conn: _Connection) -> None:
        """_flush() with the same containment as _service()."""
        try:
            self._flush(conn)
        except Exception as exc:
            log.warning("%s connection %s: %s: closing", conn.port.value, conn.peer, exc)
            self._close(conn)

    def _service_data(self, conn: _Connection, data: bytes) -> None:
        """_handle() with the same containment as _service(): a failure closes this connection."""
        try:
            self._handle(conn, data)
        except Exception as exc:
            log.warning("%s connection %s: %s: closing", conn.port.value, conn.peer, exc)
            self._close(conn)

    def _handle(self, conn: _Connection, data: bytes) -> None:
        channel = conn.channel
        if isinstance(channel, CommandChannel) and not conn.output and channel.whole_command(data):
            # One whole swtpm command in one segment: the answer carries the ACK, so no
            # QUICKACK is needed (only mssim's several small writes per frame need it).
            response = self.engine.process(data, self._swtpm_locality)
            self._requests += 1
            try:
                sent = conn.sock.send(response, NOWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            if sent == len(response):
                if conn.writing:
                    self._want_write(conn, False)
                return
            conn.output += response[sent:]
        else:
            if HAVE_QUICKACK:
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            channel.feed(data)
            self._run_requests(conn)
        self._flush(conn)

    def _run_requests(self, conn: _Connection) -> None:
        while len(conn.output) < OUTPUT_HIGH_WATER and not conn.close_after_flush:
            try:
                request = conn.channel.next_request()
            except ProtocolError as exc:
                log.warning("%s connection %s: %s", conn.port.value, conn.peer, exc)
                conn.output += exc.reply
                conn.close_after_flush = True
                return
            if request is None:
                return
            self._requests += 1
            if isinstance(request, TpmRequest):
                assert isinstance(conn.channel, CommandChannel)
                locality = (
                    request.locality
                    if conn.channel.framing is Framing.MSSIM
                    else self._swtpm_locality
                )
                response = self.engine.process(request.command, locality)
                if conn.channel.framing is Framing.MSSIM:
                    conn.output += mssim_response(response)
                else:
                    conn.output += response
            elif isinstance(request, SwtpmControlRequest):
                self._swtpm_control(conn, request)
            elif conn.port is Port.COMMAND:
                self._command_control(conn, request)
            else:
                self._platform_signal(conn, request)

    def _command_control(self, conn: _Connection, request: ControlRequest) -> None:
        if request.code is MssimCommand.REMOTE_HANDSHAKE:
            conn.output += handshake_response()
        elif request.code is MssimCommand.SESSION_END:
            conn.close_after_flush = True
        elif request.code is MssimCommand.STOP:
            if not self.allow_stop:
                self._refuse_stop(conn)
                return
            conn.output += ack()
            conn.close_after_flush = True
            log.info("TPM_STOP from %s", conn.peer)
            self.request_stop()

    def _refuse_stop(self, conn: _Connection) -> None:
        """TPM_STOP without allow_stop: the simulator's failure reply; the server serves on."""
        log.warning(
            "TPM_STOP from %s refused: the server was started without allow_stop", conn.peer
        )
        conn.output += U32.pack(PLATFORM_FAILURE)

    def _platform_signal(self, conn: _Connection, request: ControlRequest) -> None:
        code = request.code
        status = 0
        try:
            if code is MssimCommand.POWER_ON:
                self._power_on()
            elif code is MssimCommand.POWER_OFF:
                self._power_off()
            elif code in (MssimCommand.RESET, MssimCommand.RESTART):
                self._power_off()
                self._power_on()
            elif code is MssimCommand.SESSION_END:
                conn.close_after_flush = True
                return
            elif code is MssimCommand.STOP:
                if not self.allow_stop:
                    self._refuse_stop(conn)
                    return
                log.info("TPM_STOP from %s", conn.peer)
                conn.close_after_flush = True
                self.request_stop()
            elif code is MssimCommand.ACT_GET_SIGNALED:
                conn.output += U32.pack(0)  # no authenticated countdown timer is signalled
        except Exception as exc:
            log.error("platform signal %s from %s failed: %s", code.name, conn.peer, exc)
            status = PLATFORM_FAILURE
        conn.output += U32.pack(status)

    def _swtpm_control(self, conn: _Connection, request: SwtpmControlRequest) -> None:
        """CMD_SET_LOCALITY: reply TPM_SUCCESS, or TPM_FAIL for a locality the TPM lacks."""
        result = TPM_SUCCESS
        if request.argument > MAX_LOCALITY:
            result = TPM_FAIL
        else:
            self._swtpm_locality = request.argument
        conn.output += U32.pack(result)

    def _power_off(self) -> None:
        self.engine.power_off()
        self._swtpm_locality = 0

    def _power_on(self) -> None:
        if self.engine.powered:
            return
        if not self.wipe_on_power_cycle:
            self.engine.power_on()
            return
        self.engine.wipe()
        self.engine.power_on()
        self._provision_or_start()
        # A platform power-on hands the client a TPM waiting for TPM2_Startup, as hardware does.
        self.engine.reset()

    def _provision_or_start(self) -> None:
        if self.provision is None:
            self.engine.startup_clear()
        else:
            self.provision_result = self.provision(self.engine)

    def _flush(self, conn: _Connection) -> None:
        if conn.output:
            try:
                sent = conn.sock.send(conn.output, NOWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            del conn.output[:sent]
            if sent:
                conn.active = True
        if conn.output:
            self._want_write(conn, True)
            return
        if conn.close_after_flush:
            self._close(conn)
            return
        # Output drained: resume frames parsed but held back, then listen again.
        if self._has_backlog(conn):
            self._run_requests(conn)
            if conn.output:
                self._flush(conn)
                return
        self._want_write(conn, False)

    def _want_write(self, conn: _Connection, writing: bool) -> None:
        if conn.writing != writing:
            conn.writing = writing
            if conn.registered:
                mask = select.EPOLLOUT if writing else select.EPOLLIN
                self._epoll.modify(conn.sock.fileno(), mask)

    @staticmethod
    def _has_backlog(conn: _Connection) -> bool:
        return isinstance(conn.channel, CommandChannel) and conn.channel.pending > 0

    def _close(self, conn: _Connection) -> None:
        fd = conn.sock.fileno()
        if fd < 0 or self._connections.pop(fd, None) is None:
            return
        # close() also drops the descriptor from epoll: it is never duplicated.
        conn.sock.close()

    def _shutdown(self) -> None:
        for conn in list(self._connections.values()):
            self._close(conn)
        for sock in (self._command_listener, self._platform_listener, self._wake_r, self._wake_w):
            sock.close()
        self._epoll.close()


def check_port(port: int) -> None:
    """Refuse a command port whose platform port (port + 1) would not be a TCP port."""
    if not 0 <= port <= MAX_PORT:
        raise ServerConfigError(
            f"port {port}: must be 0..{MAX_PORT} (0 picks a free pair; the platform port is "
            "port + 1, so 65535 cannot be the command port)"
        )


def default_busy_poll_us() -> int:
    """DEFAULT_BUSY_POLL_US when this process may run on two or more CPUs, else 0: spinning on
    the only CPU would take it from the very client we wait for."""
    return DEFAULT_BUSY_POLL_US if len(os.sched_getaffinity(0)) > 1 else 0


def _listener(host: str, port: int) -> socket.socket:
    sock = socket.socket(LISTEN_FAMILY, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if HAVE_DEFER_ACCEPT:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_S)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def bind_port_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """Bind the command port and the platform port right above it (any free pair for port 0),
    both listening and non-blocking; a port out of range is a ServerConfigError."""
    check_port(port)
    if port:
        command = _listener(host, port)
        try:
            return command, _listener(host, port + 1)
        except OSError as exc:
            command.close()
            raise OSError(f"platform port {port + 1} on {host}: {exc}") from exc
    # The kernel's pick first; then ports below the ephemeral range, because every swtpm-TCTI
    # command leaves a client socket in TIME_WAIT inside it and bind(port 0) fails once a few
    # ten thousand commands have filled it.
    low_ports = below_ephemeral_ports()
    for attempt in range(PORT_PAIR_ATTEMPTS):
        candidate = 0 if attempt < PORT_PAIR_ATTEMPTS // 2 else random.choice(low_ports)
        try:
            command = _listener(host, candidate)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        chosen = command.getsockname()[1]
        if chosen > MAX_PORT:  # no port above it for the platform channel
            command.close()
            continue
        try:
            return command, _listener(host, chosen + 1)
        except OSError as exc:
            command.close()
            if exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(f"no free pair of adjacent ports on {host} after {PORT_PAIR_ATTEMPTS} tries")


def below_ephemeral_ports() -> range:
    """Ports from LOW_PORT_FLOOR up to just below the kernel's ephemeral (client) port range."""
    try:
        text = Path(EPHEMERAL_RANGE_FILE).read_text()
        ephemeral_low = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = DEFAULT_EPHEMERAL_LOW
    return range(LOW_PORT_FLOOR, max(LOW_PORT_FLOOR + 2, ephemeral_low - 1))
