"""Adaptive busy polling: spin between commands only while it pays (`BusyPoll`, the server
loop), and spin after a hint that a message is coming only while that catches it (`HintedSpin`).

The swtpm TCTI opens a new connection for every command, and waking a sleeping Python process
costs more than libtpms needs for a small command. So after serving a request, the loop keeps
polling without sleeping for a window. The window adapts like an adaptive mutex: after PATIENCE
windows in a row run out with no request, each further one is halved (down to nothing, so a
slow client costs a few milliseconds of CPU in all), and a request that comes within the full
window of the previous one, one a spin would have caught, restores it. Only requests count:
a client closing its connection (the swtpm TCTI does after every answer) is not work.
"""

from __future__ import annotations

# A window shorter than this catches nothing a sleep would not: stop spinning instead.
MIN_WINDOW_NS = 50_000
# Windows in a row that may run out unused before the window starts to shrink: one quiet spell
# (a client busy elsewhere) should not cost the commands that follow it their fast answers.
PATIENCE = 3


class BusyPoll:
    """The spin window of one event loop; all times are clock nanoseconds."""

    def __init__(self, max_window_ns: int) -> None:
        if max_window_ns < 0:
            raise ValueError(f"busy-poll window {max_window_ns} ns is negative")
        self.max_window_ns = max_window_ns
        self.window_ns = max_window_ns
        self._spin_until = 0
        self._last_request: int | None = None
        self._unused = 0  # windows in a row that ran out with no request

    def spinning(self, now: int) -> bool:
        """True while the loop should poll without sleeping."""
        return now < self._spin_until

    def served(self, now: int) -> None:
        """A request was just served: if it came within a full window of the previous one,
        spinning pays for this client; spin for the current window from now."""
        if self._last_request is not None and now - self._last_request < self.max_window_ns:
            self.window_ns = self.max_window_ns
            self._unused = 0
        self._last_request = now
        self._spin_until = now + self.window_ns

    def expired(self) -> None:
        """The window ran out (the loop is about to sleep)."""
        if not self._spin_until:
            return
        self._spin_until = 0
        self._unused += 1
        if self._unused >= PATIENCE:
            self.window_ns //= 2
            if self.window_ns < MIN_WINDOW_NS:
                self.window_ns = 0


# A hinted spin that came to nothing this many times in a row is not worth trying at every hint:
# after that, only every PROBE_EVERY-th hint spins (with the full budget) to find out whether
# spinning pays again.
PROBE_EVERY = 64


class HintedSpin:
    """The spin of a receive that a hint says will soon be satisfied (a vTPM worker after L1's
    EXPECT): the full budget while spins catch what they wait for; each one that runs out (or
    gives way to another process) halves it, down to nothing below MIN_WINDOW_NS, and then a
    probe every PROBE_EVERY hints tries the full budget again."""

    def __init__(self, max_ns: int) -> None:
        if max_ns < 0:
            raise ValueError(f"hinted spin of {max_ns} ns is negative")
        self.max_ns = max_ns
        self.budget_ns = max_ns
        self._since_probe = 0

    def hinted(self) -> int:
        """A hint came: how long the next receive may spin."""
        if self.budget_ns:
            return self.budget_ns
        self._since_probe += 1
        if self._since_probe < PROBE_EVERY:
            return 0
        self._since_probe = 0
        return self.max_ns

    def outcome(self, spun_ns: int, caught: bool) -> None:
        """The receive after a hint could spin for `spun_ns` (0: it did not spin, nothing to
        learn): `caught` if the message came while it spun (the full budget again), else halve."""
        if not spun_ns:
            return
        if caught:
            self.budget_ns = self.max_ns
            return
        self.budget_ns //= 2
        if self.budget_ns < MIN_WINDOW_NS:
            self.budget_ns = 0
