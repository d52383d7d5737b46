"""Running the L2 guests: enter each runnable L2 in turn for a slice of exits, handle each exit,
until every L2 has exited or been stopped, or a bound on exits is reached (no L2 can keep L1 busy
forever). An L2 in HLT is not entered until an interrupt is posted to it; when every running L2
is halted, L1 itself halts (TDG.VP.VMCALL<Instruction.HLT>) so the host can deliver what would
wake one, a bounded number of times, then stops the L2s nothing will wake.

The relay (svsm.relay) relies on that order: once no L2 is runnable, L1 enters none and makes no
other TD exit before that HLT (only `poll` runs in between, and it makes an L2 runnable only by
taking a new command, which the host posts at a TD exit). So an answer L1 writes into the host's
ring while no L2 is runnable needs no doorbell of its own: the host finds it at the HLT.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from svsm.exits import ExitHandlers
from svsm.l2guest import L2Guest
from svsm.tdcall import Tdcall
from svsm.vcpu import EnterResult
from tdxdefs.tdvmcall import Tdvmcall

SLICE_EXITS = 64
MAX_L1_INTERRUPTS_IN_A_ROW = 1000
MAX_IDLE_L1_HALTS = 64
HLT_INTERRUPTS_BLOCKED = 0  # TDG.VP.VMCALL<Instruction.HLT> R12: interrupts were not blocked
_L1_INTERRUPT = EnterResult.L1_INTERRUPT


def run_guests(
    guests: Sequence[L2Guest],
    max_exits: int = 200_000,
    tdcall: Tdcall | None = None,
    poll: Callable[[], None] | None = None,
    serving: bool = False,
    until_idle: bool = False,
) -> int:
    """Run until no L2 is running; returns the number of exits handled. `poll` runs between
    slices (the relay's ring); `serving` lifts the bounds: L1 halts to the host for as long as
    the host keeps it, since a relay command is what wakes a serving L2. `until_idle` returns
    as soon as every running L2 is halted (a caller that delivers the next event itself)."""
    handlers = {guest.vm: ExitHandlers(guest) for guest in guests}
    handled = 0
    idle_halts = 0
    streak = 0  # entries in a row that only let L1 take an interrupt
    while any(guest.running for guest in guests):
        if poll is not None:
            poll()
        runnable = [g for g in guests if g.running and not g.halted]
        if not runnable:
            if until_idle:
                return handled
            idle_halts += 1
            if tdcall is None or (idle_halts > MAX_IDLE_L1_HALTS and not serving):
                for guest in guests:
                    if guest.running:
                        guest.stop("halted with interrupts enabled and nothing to wake it")
                break
            tdcall.tdvmcall(Tdvmcall.HLT, r12=HLT_INTERRUPTS_BLOCKED)
            continue
        idle_halts = 0
        for guest in runnable:
            exits, interrupts = _slice(guest, handlers[guest.vm])
            handled += exits
            streak = 0 if exits else streak + interrupts
            if streak > MAX_L1_INTERRUPTS_IN_A_ROW:
                for other in guests:
                    if other.running:
                        other.stop("L1 kept taking host interrupts: no L2 could be entered")
                return handled
            if handled >= max_exits and not serving:
                for other in guests:
                    if other.running:
                        other.stop(f"still running after {max_exits} exits in all")
                return handled
    return handled


def _slice(guest: L2Guest, handlers: ExitHandlers) -> tuple[int, int]:
    """Up to SLICE_EXITS entries of one L2, fewer if it halts, exits or is stopped: (exits
    handled, entries that only let L1 take an interrupt)."""
    handled = interrupts = 0
    enter, handle = guest.vcpu.enter, handlers.handle
    for _ in range(SLICE_EXITS):
        if not guest.running or guest.halted:
            break
        result, ex = enter()
        if result is _L1_INTERRUPT or ex is None:
            interrupts += 1  # the platform ran L1's handler; enter again
            continue
        handle(ex)
        handled += 1
    return handled, interrupts
