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
import logging
import queue
import socket
import threading
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
Serve = Callable[[socket.socket, str], None]


@dataclass
class _Pending:
    command: RelayCommand
    done: threading.Event = field(default_factory=threading.Event)
    state: RelayState = RelayState.ERROR
    answer: bytes = b""
    cancelled: bool = False


class RelayHub:
    """Commands from the server's connections to the host loop, answers back (a RelayHook)."""

    def __init__(self, command_timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        self.command_timeout_s = command_timeout_s
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._issued: deque[_Pending] = deque()
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, command: RelayCommand) -> tuple[RelayState, bytes]:
        """Queue `command` and wait (bounded) for its answer; ERROR if none came in time."""
        pending = _Pending(command)
        with self._lock:
            if self._closed:
                return RelayState.ERROR, b""
            self._queue.put(pending)
        if not pending.done.wait(self.command_timeout_s):
            pending.cancelled = True
            log.warning("relay: no answer for vm %d in %.0f s", command.vm, self.command_timeout_s)
            return RelayState.ERROR, b""
        return pending.state, pending.answer

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
            if not pending.cancelled:
                self._issued.append(pending)
                return pending.command

    def response(self, sequence: int, state: RelayState, message: bytes) -> None:
        """The answer to the oldest command handed out (the host answers each once, in order)."""
        if not self._issued:
            log.warning("relay: answer %d with no command outstanding: dropped", sequence)
            return
        pending = self._issued.popleft()
        pending.state, pending.answer = state, message
        pending.done.set()

    def close(self) -> None:
        """Fail every waiting command; later submissions fail at once."""
        with self._lock:
            self._closed = True
        while True:
            try:
                self._queue.get_nowait().done.set()
            except queue.Empty:
                break
        while self._issued:
            self._issued.popleft().done.set()


class RelayServer:
    """The command port and the platform port right above it, serving one L2's vTPM."""

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
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
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
        """Accept on both ports in background threads."""
        for listener, serve in ((self._command, self._serve_command),
                                (self._platform, self._serve_platform)):  # fmt: skip
            thread = threading.Thread(
                target=self._accept, args=(listener, serve), name="relay-accept", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop accepting, close every connection, wait for the threads."""
        self._stop.set()
        self.hub.close()
        with self._lock:
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(POLL_S * 10)
        for listener in (self._command, self._platform):
            listener.close()

    # --- connections -------------------------------------------------------------------
    def _accept(self, listener: socket.socket, serve: Serve) -> None:
        listener.settimeout(POLL_S)
        while not self._stop.is_set():
            try:
                sock, address = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if len(self._sockets) >= MAX_CONNECTIONS:
                    log.warning("relay: %d connections open; refusing %s", MAX_CONNECTIONS, address)
                    sock.close()
                    continue
                self._sockets.add(sock)
            thread = threading.Thread(
                target=self._connection, args=(sock, address, serve), daemon=True
            )
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            thread.start()

    def _connection(self, sock: socket.socket, address: tuple[str, int], serve: Serve) -> None:
        peer = f"{address[0]}:{address[1]}"
        sock.settimeout(POLL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            serve(sock, peer)
        except ProtocolError as exc:
            log.warning("relay connection %s: %s", peer, exc)
            with contextlib.suppress(OSError):
                sock.sendall(exc.reply)
        except (OSError, ValueError) as exc:
            log.info("relay connection %s: %s: closing", peer, exc)
        finally:
            with self._lock:
                self._sockets.discard(sock)
            sock.close()

    def _chunks(self, sock: socket.socket) -> bytes:
        """The next bytes from `sock`, b"" at its end, the stop request or the idle timeout."""
        idle = 0.0
        while not self._stop.is_set() and idle < IDLE_TIMEOUT_S:
            try:
                data = sock.recv(RECV_SIZE)
                if HAVE_QUICKACK:  # the mssim TCTI writes a frame in pieces: ACK each at once
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                return data
            except TimeoutError:
                idle += POLL_S
        return b""

    def _serve_command(self, sock: socket.socket, peer: str) -> None:
        channel = CommandChannel()
        while data := self._chunks(sock):
            channel.feed(data)
            while (request := channel.next_request()) is not None:
                if isinstance(request, TpmRequest):
                    mssim = channel.framing is Framing.MSSIM
                    locality = request.locality if mssim else self._swtpm_locality
                    response = self._run(request.command, locality)
                    sock.sendall(mssim_response(response) if mssim else response)
                elif request.code is MssimCommand.REMOTE_HANDSHAKE:
                    sock.sendall(handshake_response())
                elif request.code is MssimCommand.SESSION_END:
                    return
                else:  # TPM_STOP
                    self._refuse(peer, "TPM_STOP (SIGINT or SIGTERM end the relay)")
                    sock.sendall(U32.pack(PLATFORM_FAILURE))

    def _run(self, command: bytes, locality: int) -> bytes:
        if self._powered_off:
            return error_response(TPM_RC_FAILURE)  # a powered-off TPM answers nothing useful
        state, answer = self.hub.submit(
            RelayCommand(self.vm, RelayKind.TPM_COMMAND, locality, command)
        )
        if state != RelayState.RESPONSE or not answer:
            return error_response(TPM_RC_FAILURE)
        return answer

    def _serve_platform(self, sock: socket.socket, peer: str) -> None:
        channel = PlatformChannel()
        while data := self._chunks(sock):
            channel.feed(data)
            while (request := channel.next_request()) is not None:
                if isinstance(request, SwtpmControlRequest):
                    sock.sendall(U32.pack(self._set_locality(request, peer)))
                    continue
                reply = self._signal(request, peer)
                if reply is None:
                    return
                sock.sendall(reply)

    def _set_locality(self, request: SwtpmControlRequest, peer: str) -> int:
        if request.argument > MAX_LOCALITY:
            self._refuse(peer, f"CMD_SET_LOCALITY {request.argument}")
            return TPM_FAIL
        self._swtpm_locality = request.argument
        return TPM_SUCCESS

    def _signal(self, request: ControlRequest, peer: str) -> bytes | None:
        """The reply to a platform signal; None to close the connection (SESSION_END)."""
        code = request.code
        if code is MssimCommand.SESSION_END:
            return None
        if code is MssimCommand.ACT_GET_SIGNALED:
            return U32.pack(0) + U32.pack(0)
        if code in HARMLESS_SIGNALS and not self._powered_off:
            return U32.pack(0)
        if not self.dev_platform_port or code is MssimCommand.STOP:
            self._refuse(peer, f"platform signal {code.name} without --dev-platform-port")
            return U32.pack(PLATFORM_FAILURE)
        with self._lock:
            if code is MssimCommand.POWER_OFF:
                self._powered_off = True
                self._swtpm_locality = 0
                return U32.pack(0)
            if code is MssimCommand.POWER_ON or code in POWER_CYCLE_SIGNALS:
                return U32.pack(self._power_cycle())
        return U32.pack(0)  # NV, physical presence, cancel, key cache: nothing to do

    def _power_cycle(self) -> int:
        state, _answer = self.hub.submit(RelayCommand(self.vm, RelayKind.POWER_CYCLE, 0, b""))
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
