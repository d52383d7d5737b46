"""Adaptive spinning before a blocking wait, per kind of wait, for the host channel's two ends.

Waking a sleeping process costs tens of microseconds on a loaded two-CPU machine, more than many
waits of the TD command path last (the host waiting for L1's answer to a relay command, the TD
process waiting for the host to serve an IO exit). So a wait first polls its descriptor without
sleeping for up to a window, yielding the CPU between polls (sched_yield), so that when the
processes outnumber the CPUs, the one with work gets the CPU. Whether a wait spins is decided per
kind of wait (`SpinWindow`): a kind whose last PATIENCE waits all outlasted the window (an idle
TD's HLT, a client that pauses) stops spinning, so an idle TD costs a few windows of CPU in all;
any wait of that kind shorter than the window, measured while blocking, turns spinning on again.
A yield that comes back late gave the CPU to a process that wanted it: that wait stops spinning
and sleeps (spinning on would only take turns with that process, a scheduler slice each). On a
single CPU nothing spins: the peer needs the CPU the spinner would hold.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Hashable

# Longest spin of one wait; waits longer than this are cheaper asleep (the wake-up is a small
# share of them). Covers the host's wait for L1's answer to a relay command without L2.
DEFAULT_WINDOW_NS = 300_000
# Waits in a row longer than the window before that kind of wait stops spinning.
PATIENCE = 3
# A sched_yield that comes back later than this gave the CPU to another process that wanted it
# (vtpm.worker_channel uses the same rule for L1's spin on its vTPM workers).
YIELD_TAKEN_NS = 50_000
READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


def can_spin() -> bool:
    """True when this process may run on two or more CPUs (spinning on one starves the peer)."""
    return len(os.sched_getaffinity(0)) > 1


class SpinWindow:
    """Whether one kind of wait spins: yes unless its last PATIENCE waits outlasted the window."""

    __slots__ = ("_long_waits", "window_ns")

    def __init__(self, window_ns: int) -> None:
        if window_ns < 0:
            raise ValueError(f"spin window {window_ns} ns is negative")
        self.window_ns = window_ns
        self._long_waits = 0

    @property
    def spinning(self) -> bool:
        """True while a wait of this kind should poll before it sleeps."""
        return self.window_ns > 0 and self._long_waits < PATIENCE

    def waited(self, waited_ns: int) -> None:
        """Account one wait of `waited_ns` (spin and sleep together)."""
        if waited_ns < self.window_ns:
            self._long_waits = 0
        elif self._long_waits < PATIENCE:
            self._long_waits += 1


class Spinner:
    """Polls one descriptor without sleeping, with a `SpinWindow` per kind of wait."""

    def __init__(self, fd: int, window_ns: int | None = None) -> None:
        if window_ns is None:
            window_ns = DEFAULT_WINDOW_NS if can_spin() else 0
        self.window_ns = window_ns
        self._poll = select.poll()
        self._poll.register(fd, READABLE)
        self._windows: dict[Hashable, SpinWindow] = {}

    def window(self, kind: Hashable) -> SpinWindow:
        """The window of one kind of wait (created at its first use)."""
        window = self._windows.get(kind)
        if window is None:
            window = self._windows[kind] = SpinWindow(self.window_ns)
        return window

    def spin(self, window: SpinWindow, start_ns: int) -> bool:
        """Poll until the descriptor is readable (True), the window from `start_ns` is over or
        a yield lost the CPU to another process (False)."""
        if not window.spinning:
            return False
        poll = self._poll.poll
        clock = time.perf_counter_ns
        end = start_ns + window.window_ns
        while not poll(0):
            now = clock()
            if now >= end:
                return False
            os.sched_yield()
            if clock() - now > YIELD_TAKEN_NS:
                return bool(poll(0))  # this CPU is wanted: stop spinning
        return True
