"""The host's half of the vTPM relay ring (tdxdefs.relay): commands in, responses out.

A `RelayHook` (the relay server, outside tdxsim) supplies TPM commands and takes the answers;
`HostRelay` moves them through the ring page. The host writes a command into the ring only while
no other command is in flight and only once L1 has converted the page to shared (its MapGPA of
RELAY_RING_GPA with the shared bit: `SharedMemory` says whether the host may touch the page, so a
ring L1 has not shared, or has taken back, is never written). It then queues RELAY_VECTOR for L1,
posted on the way back into the TD.

L1 answers by writing the ring and then either halting (TDG.VP.VMCALL<Instruction.HLT>: the
common case, one TD exit per command) or, when it has more work before it halts, with a
TDVMCALL<IO> write to RELAY_NOTIFY_PORT (GHCI 1.5, TDG.VP.VMCALL<Instruction.IO>). Either way
the host copies the ring once and checks every field of the copy: magic, version, the VM and
sequence of the command in flight, state RESPONSE or ERROR, a length that fits the page. At a
HLT, a ring still holding exactly the header the host posted is a command not answered yet;
anything else there is L1's answer and is checked as at the notify. A ring that fails a check
is refused and logged and the command in flight fails (the hook gets ERROR); the host keeps
serving. A TD cannot make the host raise.

An answer taken at a HLT goes to the hook at once, before the host waits for the next command in
that same HLT. An answer taken at the notify reaches the hook when the host has resumed the TD
(`entered`, called by the VMM after each entry and when a run ends): L1 then works on while the
client reads its answer. The hook's housekeeping runs after each entry, while the TD works.

L1 waits for commands in HLT; the host then blocks in the HLT for at most `halt_wait_s` for a
command, so a stop request or a deadline is seen within that time. `RelayStats.exits_per_command`
counts, per command, the TD exits after the one that posted it, through the HLT that took its
answer, or, for an answer taken at the notify, through the next HLT or posting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from tdxdefs.errors import LayoutError
from tdxdefs.relay import (
    MAX_TPM_MESSAGE,
    RELAY_RING_GPA,
    RELAY_VECTOR,
    RING_MAGIC,
    RING_PAGE_SIZE,
    RING_VERSION,
    RelayKind,
    RelayState,
    RingHeader,
)
from tdxsim.errors import TdxsimError
from tdxsim.host.shared_memory import HostAccessDenied, SharedMemory

log = logging.getLogger("tdxsim.host.relay")

HALT_WAIT_S = 0.1  # longest a relay HLT blocks before L1 is resumed (it halts again)
COMMAND_TIMEOUT_S = 30.0  # a command L1 has not answered by then fails
KEEP_SAMPLES = 4096
RING_HEADER = RingHeader.STRUCT
RESERVED = bytes(4)
U32_MAX = 0xFFFFFFFF
U16_MAX = 0xFFFF


class RelayError(TdxsimError, ValueError):
    """A relay command the host cannot put into the ring (names the field)."""


@dataclass(frozen=True)
class RelayCommand:
    """One command for L1: which L2's vTPM, what to do, at which locality, the TPM bytes."""

    vm: int
    kind: RelayKind
    locality: int
    message: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.vm <= U16_MAX:
            raise RelayError(f"relay command: vm {self.vm} does not fit the ring's u16")
        if not 0 <= self.locality <= U32_MAX:
            raise RelayError(f"relay command: locality {self.locality} does not fit a u32")
        if len(self.message) > MAX_TPM_MESSAGE:
            raise RelayError(
                f"relay command: {len(self.message)} bytes, the ring carries {MAX_TPM_MESSAGE}"
            )


class RelayHook(Protocol):
    """Where commands come from and answers go (the relay server implements it)."""

    def next_command(self, timeout: float) -> RelayCommand | None:
        """The next command, waiting at most `timeout` seconds; None if there is none."""
        ...

    def response(self, sequence: int, state: RelayState, message: bytes) -> None:
        """The answer to the command sent as `sequence` (every command gets exactly one, in
        order): RESPONSE with L1's bytes, or ERROR (L1 refused it, or the ring was refused)."""
        ...

    def housekeeping(self) -> None:
        """Work that can wait until the TD is running and the host has nothing else to do."""
        ...


@dataclass
class RelayStats:
    """What the relay did: commands answered and refused, TD exits per answered command."""

    sent: int = 0
    answered: int = 0
    failed: int = 0
    rerung: int = 0  # RELAY_VECTOR posted again to an L1 that halted with a command in flight
    at_halt: int = 0  # answers (RESPONSE or ERROR, checked) taken at L1's HLT
    at_notify: int = 0  # and at its notify
    refused: deque[str] = field(default_factory=lambda: deque(maxlen=KEEP_SAMPLES))
    exits_per_command: deque[int] = field(default_factory=lambda: deque(maxlen=KEEP_SAMPLES))


@dataclass
class _InFlight:
    sequence: int
    command: RelayCommand
    exit_at: int  # the TD exit that posted it
    sent_at: float
    posted: bytes  # the ring header as the host wrote it: at a HLT, unchanged means unanswered


class HostRelay:
    """The ring page's host side; a `Device` on RELAY_NOTIFY_PORT (see the module docstring)."""

    def __init__(
        self,
        shared: SharedMemory,
        hook: RelayHook,
        *,
        halt_wait_s: float = HALT_WAIT_S,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        stop: threading.Event | None = None,
    ) -> None:
        self.shared = shared
        self.hook = hook
        self.ring = RELAY_RING_GPA | shared.shared_bit
        self.halt_wait_s = halt_wait_s
        self.command_timeout_s = command_timeout_s
        self.stats = RelayStats()
        self.ready = threading.Event()  # set once L1 has shared the ring page
        # set to end the run: the host loop checks it at every TD exit (and a HLT waits no longer)
        self.stop = stop if stop is not None else threading.Event()
        self.exits = 0  # TD exits seen since the relay was attached (the current one included)
        self._sequence = 0
        self._in_flight: _InFlight | None = None
        self._unsettled: int | None = None  # exit_at of a command answered at the notify
        self._post: list[int] = []
        self._answers: list[tuple[int, RelayState, bytes]] = []  # for the hook, in order
        self._asked = False  # halt() just asked the hook: this exit's turn() need not again

    # --- the host loop's calls ------------------------------------------------------------------
    def ring_shared(self) -> bool:
        """True while L1 has the ring page converted to shared (MapGPA done)."""
        shared = self.shared.is_mapped(self.ring)
        if shared and not self.ready.is_set():
            self.ready.set()
        return shared

    def count_exit(self) -> None:
        """A TD exit begins (the VMM calls this before handling it)."""
        self.exits += 1

    def turn(self) -> list[int]:
        """The end of a TD exit: expire a command L1 sat on too long, send a waiting one if the
        ring is free; returns the vectors to post to L1."""
        self._expire()
        asked, self._asked = self._asked, False
        if self._in_flight is None and not asked and self.ring_shared():
            command = self.hook.next_command(0)
            if command is not None:
                self._send(command)
        post, self._post = self._post, []
        return post

    def halt(self) -> None:
        """L1 halted: take its answer if the ring holds one (to the hook at once), then wait (at
        most halt_wait_s) for the next command when the ring is free and shared.

        An L1 that halts with the ring as the host posted it has not taken the command (its
        vector was lost or merged with another, or its L2 halted before answering): after
        halt_wait_s the host rings again. L1 knows a command by its sequence, so a second ring
        for one it is already working on changes nothing."""
        if not self.ring_shared():
            return
        flight = self._in_flight
        if flight is not None:
            if not self._take(flight, halted=True):
                if not self.stop.wait(self.halt_wait_s):
                    self.stats.rerung += 1
                    self._post.append(RELAY_VECTOR)
                return
            self._hand_over()  # the client reads its answer while the host waits for the next
        self._settle()
        if self.stop.is_set():
            return
        command = self.hook.next_command(self.halt_wait_s)
        self._asked = True
        if command is not None and not self.stop.is_set() and self.ring_shared():
            self._send(command)
        elif command is not None:  # taken from the hook, so it must be answered
            self._answers.append((self._next_sequence(), RelayState.ERROR, b""))
            self.stats.failed += 1

    def fail_in_flight(self, why: str) -> None:
        """End the command in flight with ERROR (the run is ending, or L1 lost it)."""
        flight, self._in_flight = self._in_flight, None
        if flight is not None:
            log.warning("relay command %d failed: %s", flight.sequence, why)
            self.stats.failed += 1
            self._answers.append((flight.sequence, RelayState.ERROR, b""))

    def entered(self) -> None:
        """The TD was resumed: hand the answers since the last call to the hook, in order, then
        let it do its housekeeping while the TD runs."""
        self._hand_over()
        self.hook.housekeeping()

    # --- Device on RELAY_NOTIFY_PORT --------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        """L1's notify: the ring holds its answer, and L1 works on before it halts."""
        flight = self._in_flight
        if flight is None:
            self._refuse("notify with no command in flight")
            return
        self._take(flight, halted=False)

    # --- internals -------------------------------------------------------------------
    def _take(self, flight: _InFlight, *, halted: bool) -> bool:
        """Copy the ring once and take L1's answer to `flight` from the copy, or refuse it;
        False only at a HLT with the ring header still as the host posted it (not answered)."""
        try:
            page = self.shared.read(self.ring, RING_PAGE_SIZE)  # one copy; checked from it only
        except HostAccessDenied as exc:
            self._refuse(f"ring at GPA {self.ring:#x} unreadable: {exc}")
            return True
        if halted and page.startswith(flight.posted):
            return False
        try:
            header = RingHeader.unpack(page)
        except LayoutError as exc:
            self._refuse(str(exc))
            return True
        problem = _check(header, flight)
        if problem:
            self._refuse(problem)
            return True
        self._in_flight = None
        if halted:  # L1 is idle again: the exits after the posting one, this HLT included
            self.stats.at_halt += 1
            self.stats.exits_per_command.append(self.exits - flight.exit_at)
        else:  # L1 still has to halt (or be sent the next command): counted then
            self.stats.at_notify += 1
            self._unsettled = flight.exit_at
        if header.state == RelayState.RESPONSE:
            self.stats.answered += 1
            end = RingHeader.SIZE + header.length
            answer = page[RingHeader.SIZE : end]
            self._answers.append((flight.sequence, RelayState.RESPONSE, answer))
        else:
            self.stats.failed += 1
            self._answers.append((flight.sequence, RelayState.ERROR, b""))
        return True

    def _hand_over(self) -> None:
        """The answers taken so far to the hook, in order."""
        while self._answers:
            answers, self._answers = self._answers, []
            for sequence, state, message in answers:
                self.hook.response(sequence, state, message)

    def _settle(self) -> None:
        """L1 halted or the host posts the next command: the command answered at the notify
        has cost the exits from the one after its posting through this one."""
        if self._unsettled is not None:
            self.stats.exits_per_command.append(self.exits - self._unsettled)
            self._unsettled = None

    def _next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) & U32_MAX
        return self._sequence

    def _send(self, command: RelayCommand) -> None:
        self._settle()
        sequence = self._next_sequence()
        header = RING_HEADER.pack(  # RingHeader's fields in order (its dataclass costs more)
            RING_MAGIC,
            RING_VERSION,
            command.vm,
            sequence,
            RelayState.COMMAND,
            len(command.message),
            command.locality,
            command.kind,
            RESERVED,
        )
        try:
            self.shared.write(self.ring, header + command.message)
        except HostAccessDenied as exc:  # L1 took the page back between the check and here
            log.warning("relay command %d not sent: %s", sequence, exc)
            self.stats.failed += 1
            self._answers.append((sequence, RelayState.ERROR, b""))
            return
        self.stats.sent += 1
        self._in_flight = _InFlight(sequence, command, self.exits, time.monotonic(), header)
        self._post.append(RELAY_VECTOR)

    def _expire(self) -> None:
        flight = self._in_flight
        if flight is not None and time.monotonic() - flight.sent_at > self.command_timeout_s:
            self.fail_in_flight(f"L1 did not answer within {self.command_timeout_s} s")

    def _refuse(self, why: str) -> None:
        text = f"relay ring at GPA {self.ring:#x} refused: {why}"
        log.warning("%s", text)
        self.stats.refused.append(text)
        self.fail_in_flight(why)


def _check(header: RingHeader, flight: _InFlight) -> str:
    """What is wrong with L1's answer in the ring, or "" if nothing."""
    if header.magic != RING_MAGIC:
        return f"magic {header.magic:#x}, expected {RING_MAGIC:#x}"
    if header.version != RING_VERSION:
        return f"version {header.version}, expected {RING_VERSION}"
    if header.sequence != flight.sequence:
        return f"sequence {header.sequence}, the command in flight is {flight.sequence}"
    if header.vm != flight.command.vm:
        return f"vm {header.vm}, the command was for vm {flight.command.vm}"
    if header.state not in (RelayState.RESPONSE, RelayState.ERROR):
        return f"state {header.state}, expected RESPONSE or ERROR"
    if header.length > RING_PAGE_SIZE - RingHeader.SIZE:
        return f"length {header.length} runs past the {RING_PAGE_SIZE}-byte page"
    return ""
