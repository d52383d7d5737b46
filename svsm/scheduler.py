"""Running the L2 guests: enter each in turn for a slice of exits, handle each exit, until every
L2 has exited or been stopped, or a bound on exits is reached (no L2 can keep L1 busy forever).
"""

from __future__ import annotations

from collections.abc import Sequence

from svsm.exits import ExitHandlers
from svsm.l2guest import L2Guest
from svsm.vcpu import EnterResult

SLICE_EXITS = 64
MAX_L1_INTERRUPTS_IN_A_ROW = 1000


def run_guests(guests: Sequence[L2Guest], max_exits: int = 200_000) -> int:
    """Run until no L2 is running; returns the number of exits handled."""
    handlers = {guest.vm: ExitHandlers(guest) for guest in guests}
    handled = 0
    while any(guest.running for guest in guests):
        for guest in guests:
            interrupts = 0
            for _ in range(SLICE_EXITS):
                if not guest.running:
                    break
                result, ex = guest.vcpu.enter()
                if result is EnterResult.L1_INTERRUPT or ex is None:
                    interrupts += 1  # the platform ran L1's handler; enter again
                    if interrupts > MAX_L1_INTERRUPTS_IN_A_ROW:
                        guest.stop("L1 kept taking interrupts: the L2 could not be entered")
                    continue
                handlers[guest.vm].handle(ex)
                handled += 1
            if handled >= max_exits:
                for other in guests:
                    if other.running:
                        other.stop(f"still running after {max_exits} exits in all")
                return handled
    return handled
