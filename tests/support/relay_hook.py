"""A thread-safe `RelayHook` for tests: test code submits relay commands from its own thread
while the host loop (`Vmm.run` in another thread) takes them; each gets exactly one answer.

The product's hook is `orchestrator.relay.RelayServer`, which serves sockets inside the host
loop's thread; this one lets a test put any command (a lying one, a power cycle, a message no
TPM client would send) straight into the ring.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tdxdefs.relay import RelayState
from tdxsim.host.relay import RelayCommand

log = logging.getLogger("tests.relay_hook")

COMMAND_TIMEOUT_S = 20.0
Done = Callable[[RelayState, bytes], None]


@dataclass
class _Pending:
    command: RelayCommand
    done: Done
    queued_at: float = field(default_factory=time.monotonic)
    issued: bool = False  # handed to the host loop: its answer will come
    cancelled: bool = False  # the client gave up before that: skip it


class RelayHub:
    """Commands from test code to the host loop, answers back (a `RelayHook`).

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

    def housekeeping(self) -> None:
        """Nothing to do: the queue needs no tending."""

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
