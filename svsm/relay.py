"""L1's part of the vTPM relay path (tdxdefs.relay): between the host's ring page and each L2's
mailbox page.

The ring page is shared: the host may rewrite it at any time, so L1 copies it once
(`SharedBuffer.snapshot`) and checks the copy (magic, version, state, length, L2 number). The
mailbox is L2-writable: its response is copied once and checked the same way (state, length,
sequence). The L2 rings L1's doorbell by writing L2_DOORBELL_PORT or, as our firmware does, by
halting with its mailbox answered (`halted`: one exit per command fewer). A bad ring is answered
with state ERROR; a bad mailbox answer gives the host ERROR and is logged; neither reaches L1's
state. Commands for one L2 are serialized: a second command before the first is answered gets
ERROR (never queued silently).

L1 tells the host its answer is in the ring the same way, one level up: when no L2 is runnable
it writes nothing more, since L1 halts next (svsm.scheduler) and the host takes a ring answered
at that HLT as the doorbell, one TD exit per command; when an L2 is runnable, L1 enters it before
it halts, so it rings the host with a TDVMCALL<IO> write to RELAY_NOTIFY_PORT first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from svsm.errors import SvsmError
from svsm.l2guest import L2Guest
from svsm.memory import Memory, SharedBuffer
from svsm.tdcall import Tdcall
from tdxdefs.errors import LayoutError
from tdxdefs.relay import (
    L2_RELAY_VECTOR,
    MAX_TPM_MESSAGE,
    RELAY_NOTIFY_PORT,
    RELAY_VECTOR,
    RING_MAGIC,
    RING_PAGE_SIZE,
    RING_VERSION,
    MailboxHeader,
    RelayKind,
    RelayState,
    RingHeader,
)
from tdxdefs.tdvmcall import IO_DIRECTION_WRITE, Tdvmcall

IO_SIZE_1 = 1


_COMMAND = int(RelayState.COMMAND)


class RelayError(SvsmError):
    """A ring or mailbox page that does not check; names the field."""


class RingCommand(NamedTuple):
    """A command copied out of the ring page and checked (immutable; a tuple: one per command,
    built in a fraction of a frozen dataclass's time)."""

    vm: int
    sequence: int
    kind: RelayKind
    locality: int
    message: bytes


def parse_ring(raw: bytes, vms: range) -> RingCommand:
    """Check one copy of the ring page; RelayError names the first bad field."""
    try:
        magic, version, vm, sequence, state, length, locality, kind_value, _reserved = (
            RingHeader.unpack_values(raw)
        )
    except LayoutError as exc:
        raise RelayError(f"ring page: {exc}") from exc
    if magic != RING_MAGIC or version != RING_VERSION:
        raise RelayError(f"ring page: magic {magic:#x} version {version}")
    if state != RelayState.COMMAND:
        raise RelayError(f"ring page: state {state}, not COMMAND")
    if vm not in vms:
        raise RelayError(f"ring page: L2 {vm} does not exist")
    if length > MAX_TPM_MESSAGE:
        raise RelayError(f"ring page: length {length} past the page")
    kind = _KINDS.get(kind_value)
    if kind is None:
        raise RelayError(f"ring page: kind {kind_value}")
    body = raw[RingHeader.SIZE : RingHeader.SIZE + length]
    return RingCommand(vm, sequence, kind, locality, bytes(body))


_KINDS = {int(kind): kind for kind in RelayKind}


class Relay:
    """The ring page and the L2 mailboxes, driven by interrupts and doorbells."""

    def __init__(
        self,
        tdcall: Tdcall,
        memory: Memory,
        ring: SharedBuffer,
        guests: dict[int, L2Guest],
        log: Callable[[str], None],
        power_cycle: Callable[[int], bool] | None = None,
    ) -> None:
        self.tdcall = tdcall
        self.memory = memory
        self.ring = ring
        self.guests = guests
        self.log = log
        self.power_cycle = power_cycle
        # Told the L2 number when its L2 is handed a command, before the L2 runs (the vTPM
        # workers' `expect`, so the worker is awake when the L2's CRB starts the command).
        self.expect: Callable[[int], None] | None = None
        self.pending = False
        self.inflight: dict[int, int] = {}  # vm -> sequence being answered
        self.relayed = 0
        self.refused = 0
        self.notified = 0  # answers rung with RELAY_NOTIFY_PORT (the others: by L1's HLT)

    def on_interrupt(self, vector: int) -> None:
        """L1's interrupt handler hook: remember the doorbell; `service` does the work."""
        if vector == RELAY_VECTOR:
            self.pending = True

    def service(self) -> None:
        """Take a command from the ring, if the host rang, and hand it to its L2."""
        if not self.pending:
            return
        self.pending = False
        try:
            command = parse_ring(self.ring.snapshot(), range(1, len(self.guests) + 1))
        except RelayError as exc:
            self.refused += 1
            self.log(f"relay: refused: {exc}")
            self._answer(0, 0, RelayState.ERROR, b"")
            return
        guest = self.guests[command.vm]
        if self.inflight.get(command.vm) == command.sequence:
            return  # the host rang again for the command the L2 is working on
        if command.kind is RelayKind.POWER_CYCLE:
            done = self.power_cycle(command.vm) if self.power_cycle else False
            state = RelayState.RESPONSE if done else RelayState.ERROR
            self._answer(command.vm, command.sequence, state, b"")
            return
        if command.vm in self.inflight or not guest.running:
            self.refused += 1
            why = "a command is in flight" if guest.running else "the L2 is not running"
            self.log(f"relay: L2 {command.vm} refused command {command.sequence}: {why}")
            self._answer(command.vm, command.sequence, RelayState.ERROR, b"")
            return
        mailbox = guest.mailbox_gpa
        head = MailboxHeader.pack_values(
            _COMMAND, len(command.message), command.sequence, guest.crb.epoch, bytes(16)
        )
        self.memory.write(mailbox + MailboxHeader.SIZE, command.message)
        self.memory.write(mailbox, head)
        self.inflight[command.vm] = command.sequence
        guest.post_interrupt(L2_RELAY_VECTOR)
        if self.expect is not None:
            self.expect(command.vm)

    def doorbell(self, guest: L2Guest) -> None:
        """The L2 says its mailbox holds the response (a write to L2_DOORBELL_PORT)."""
        sequence = self.inflight.pop(guest.vm, None)
        if sequence is None:
            self.log(f"relay: L2 {guest.vm} rang with no command in flight")
            return
        raw = self._mailbox(guest)
        try:
            state, length, answered, _epoch, _reserved = MailboxHeader.unpack_values(raw)
        except LayoutError as exc:
            self._unchecked(guest, sequence, exc)
            return
        self._respond(guest, sequence, raw, state, length, answered)

    def halted(self, guest: L2Guest) -> None:
        """The L2 halted: if its command is in flight and the mailbox is answered (state no longer
        COMMAND), that is its doorbell, as the relay loop of our firmware halts right after
        answering (an exit fewer than a doorbell write). Otherwise nothing: an L2 may halt for
        other reasons, and the command stays in flight until it answers."""
        sequence = self.inflight.get(guest.vm)
        if sequence is None:
            return
        raw = self._mailbox(guest)
        try:
            state, length, answered, _epoch, _reserved = MailboxHeader.unpack_values(raw)
        except LayoutError as exc:
            del self.inflight[guest.vm]
            self._unchecked(guest, sequence, exc)
            return
        if state == RelayState.COMMAND:
            return
        del self.inflight[guest.vm]
        self._respond(guest, sequence, raw, state, length, answered)

    def _mailbox(self, guest: L2Guest) -> bytes:
        """One copy of the L2's mailbox page (L2-writable: every check is on this copy)."""
        return self.memory.read(guest.mailbox_gpa, RING_PAGE_SIZE)

    def _unchecked(self, guest: L2Guest, sequence: int, exc: LayoutError) -> None:
        """A mailbox header that does not check (a reserved byte set): the host gets ERROR."""
        self.refused += 1
        self.log(f"relay: L2 {guest.vm} answered command {sequence}: {exc}: refused")
        self._answer(guest.vm, sequence, RelayState.ERROR, b"")

    def _respond(
        self, guest: L2Guest, sequence: int, raw: bytes, state: int, length: int, answered: int
    ) -> None:
        """Check the copied mailbox's answer (its header's state, length and sequence) to
        command `sequence` and pass it to the host."""
        if (
            state not in (RelayState.RESPONSE, RelayState.ERROR)
            or length > MAX_TPM_MESSAGE
            or answered != sequence
        ):
            self.refused += 1
            self.log(
                f"relay: L2 {guest.vm} answered state {state} length {length} "
                f"sequence {answered} (expected {sequence}): refused"
            )
            self._answer(guest.vm, sequence, RelayState.ERROR, b"")
            return
        if state != RelayState.RESPONSE:
            length = 0  # ERROR carries nothing
        body = raw[MailboxHeader.SIZE : MailboxHeader.SIZE + length]
        self._answer(guest.vm, sequence, state, bytes(body))
        self.relayed += 1

    def _answer(self, vm: int, sequence: int, state: int, body: bytes) -> None:
        """Write the answer (`state` a RelayState) into the ring; ring the host only if L1 will
        not halt next."""
        head = RingHeader.pack_values(
            RING_MAGIC, RING_VERSION, vm, sequence, int(state), len(body), 0, 0, bytes(4)
        )
        self.ring.write(RingHeader.SIZE, body)
        self.ring.write(0, head)
        if any(guest.running and not guest.halted for guest in self.guests.values()):
            self.notified += 1
            self.tdcall.tdvmcall(
                Tdvmcall.IO, r12=IO_SIZE_1, r13=IO_DIRECTION_WRITE, r14=RELAY_NOTIFY_PORT, r15=1
            )
