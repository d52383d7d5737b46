"""Adaptive busy polling for the server loop: spin between commands only while it pays.

The swtpm TCTI opens a new connection for every command, and waking a sleeping Python process
costs more than libtpms needs for a small command. So after serving, the loop keeps polling
without sleeping for a window. The window adapts like an adaptive mutex: after PATIENCE windows
in a row run out unused, each further one is halved (down to nothing, so a slow client costs a
few milliseconds of CPU in all), and a sleep shorter than the full window, one a spin would
have covered, restores it. The patience keeps one quiet spell (a client busy elsewhere) from
shrinking the window for the commands that follow it.
"""

from __future__ import annotations

# A window shorter than this catches nothing a sleep would not: stop spinning instead.
MIN_WINDOW_NS = 50_000
# Windows in a row that may run out unused before the window starts to shrink.
PATIENCE = 3


class BusyPoll:
    """The spin window of one event loop; all times are clock nanoseconds."""

    def __init__(self, max_window_ns: int) -> None:
        if max_window_ns < 0:
            raise ValueError(f"busy-poll window {max_window_ns} ns is negative")
        self.max_window_ns = max_window_ns
        self.window_ns = max_window_ns
        self._spin_until = 0
        self._unused = 0  # windows in a row that ran out with nothing to do

    def spinning(self, now: int) -> bool:
        """True while the loop should poll without sleeping."""
        return now < self._spin_until

    def caught(self) -> None:
        """Work arrived while spinning: the window paid."""
        self._unused = 0

    def served(self, now: int) -> None:
        """Work was just done: spin for the current window from now."""
        self._spin_until = now + self.window_ns

    def expired(self) -> None:
        """The window ran out with nothing to do (about to sleep)."""
        if not self._spin_until:
            return
        self._spin_until = 0
        self._unused += 1
        if self._unused >= PATIENCE:
            self.window_ns //= 2
            if self.window_ns < MIN_WINDOW_NS:
                self.window_ns = 0

    def woke(self, slept_ns: int) -> None:
        """A blocking wait ended after `slept_ns`: if a full window would have covered it,
        spinning pays again for this client."""
        if slept_ns < self.max_window_ns:
            self.window_ns = self.max_window_ns
            self._unused = 0
