"""The adaptive busy-poll window: it shrinks only for a client that keeps it waiting, and
comes back as soon as a spin would have paid."""

from __future__ import annotations

import itertools

import pytest

from vtpm.busypoll import MIN_WINDOW_NS, PATIENCE, BusyPoll

WINDOW = 1_000_000


def idle_spell(poll: BusyPoll, now: int, slept_ns: int) -> int:
    """Serve at `now`, let the window run out, sleep `slept_ns`; return the time after."""
    poll.served(now)
    end = now + poll.window_ns
    assert not poll.spinning(end)
    poll.expired()
    poll.woke(slept_ns)
    return end + slept_ns


def test_spins_for_the_window_after_work() -> None:
    poll = BusyPoll(WINDOW)
    poll.served(100)
    assert poll.spinning(100) and poll.spinning(100 + WINDOW - 1)
    assert not poll.spinning(100 + WINDOW)


def test_one_quiet_spell_does_not_shrink_the_window() -> None:
    poll = BusyPoll(WINDOW)
    now = 0
    for _ in range(PATIENCE - 1):
        now = idle_spell(poll, now, slept_ns=50 * WINDOW)
    assert poll.window_ns == WINDOW


def test_a_slow_client_shrinks_the_window_to_nothing() -> None:
    poll = BusyPoll(WINDOW)
    now, windows = 0, []
    for _ in range(PATIENCE + 10):
        now = idle_spell(poll, now, slept_ns=50 * WINDOW)
        windows.append(poll.window_ns)
    assert windows[PATIENCE - 1] == WINDOW // 2
    assert all(b <= a for a, b in itertools.pairwise(windows))
    assert windows[-1] == 0
    # CPU spent spinning for this client in all: bounded by a few windows.
    assert sum(windows) < (PATIENCE + 2) * WINDOW


def test_no_window_below_the_minimum() -> None:
    poll = BusyPoll(MIN_WINDOW_NS * 3)
    now = 0
    for _ in range(PATIENCE + 1):
        now = idle_spell(poll, now, slept_ns=10**9)
    assert poll.window_ns == 0


def test_a_short_sleep_restores_the_full_window() -> None:
    poll = BusyPoll(WINDOW)
    now = 0
    for _ in range(PATIENCE + 3):
        now = idle_spell(poll, now, slept_ns=50 * WINDOW)
    assert poll.window_ns < WINDOW
    idle_spell(poll, now, slept_ns=WINDOW // 4)
    assert poll.window_ns == WINDOW


def test_work_caught_while_spinning_resets_the_patience() -> None:
    poll = BusyPoll(WINDOW)
    now = 0
    for _ in range(PATIENCE - 1):
        now = idle_spell(poll, now, slept_ns=50 * WINDOW)
    poll.served(now)
    assert poll.spinning(now + 1)
    poll.caught()
    for _ in range(PATIENCE - 1):
        now = idle_spell(poll, now + 2, slept_ns=50 * WINDOW)
    assert poll.window_ns == WINDOW


def test_zero_window_never_spins() -> None:
    poll = BusyPoll(0)
    poll.served(5)
    assert not poll.spinning(5)


def test_negative_window_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        BusyPoll(-1)
