"""The adaptive busy-poll window: it shrinks only for a client whose requests keep it waiting,
and comes back as soon as a request arrives that a spin would have caught."""

from __future__ import annotations

import itertools

import pytest

from vtpm.busypoll import MIN_WINDOW_NS, PATIENCE, PROBE_EVERY, BusyPoll, HintedSpin

WINDOW = 1_000_000
EOF_AFTER_NS = 30_000  # the swtpm TCTI closes its connection right after reading the answer


def slow_client(poll: BusyPoll, commands: int, gap_ns: int) -> list[int]:
    """Requests `gap_ns` apart, each followed by the client's EOF (which is not a request);
    returns the window in force after each, and checks the loop sleeps before the next."""
    windows, now = [], 0
    for _ in range(commands):
        poll.served(now)
        assert poll.spinning(now + EOF_AFTER_NS) or poll.window_ns < EOF_AFTER_NS
        assert not poll.spinning(now + poll.window_ns)
        poll.expired()
        windows.append(poll.window_ns)
        now += gap_ns
    return windows


def test_spins_for_the_window_after_a_request() -> None:
    poll = BusyPoll(WINDOW)
    poll.served(100)
    assert poll.spinning(100) and poll.spinning(100 + WINDOW - 1)
    assert not poll.spinning(100 + WINDOW)


def test_one_quiet_spell_does_not_shrink_the_window() -> None:
    windows = slow_client(BusyPoll(WINDOW), PATIENCE - 1, gap_ns=50 * WINDOW)
    assert windows == [WINDOW] * (PATIENCE - 1)


def test_a_slow_client_shrinks_the_window_to_nothing() -> None:
    windows = slow_client(BusyPoll(WINDOW), PATIENCE + 10, gap_ns=10 * WINDOW)
    assert windows[PATIENCE - 1] == WINDOW // 2
    assert all(b <= a for a, b in itertools.pairwise(windows))
    assert windows[-1] == 0
    # CPU spent spinning for this client in all: bounded by a few windows, not one per request.
    assert sum(windows) < (PATIENCE + 2) * WINDOW


def test_no_window_below_the_minimum() -> None:
    windows = slow_client(BusyPoll(MIN_WINDOW_NS * 3), PATIENCE + 1, gap_ns=10**9)
    assert windows[-1] == 0


def test_a_request_within_the_full_window_restores_it() -> None:
    poll = BusyPoll(WINDOW)
    slow_client(poll, PATIENCE + 3, gap_ns=10 * WINDOW)
    assert poll.window_ns < WINDOW
    now = 10**12
    poll.served(now)
    assert poll.window_ns < WINDOW  # the first request after a long gap proves nothing
    poll.expired()
    poll.served(now + WINDOW // 2)  # a spin of the full window would have caught this one
    assert poll.window_ns == WINDOW and poll.spinning(now + WINDOW // 2 + 1)


def test_a_chatty_client_keeps_the_full_window() -> None:
    poll = BusyPoll(WINDOW)
    for i in range(100):
        poll.served(i * WINDOW // 10)
    assert poll.window_ns == WINDOW


def test_zero_window_never_spins() -> None:
    poll = BusyPoll(0)
    poll.served(5)
    assert not poll.spinning(5)


def test_negative_window_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        BusyPoll(-1)


def test_a_hinted_spin_keeps_its_budget_while_it_catches_and_halves_when_it_does_not() -> None:
    spin = HintedSpin(WINDOW)
    for _ in range(10):
        assert spin.hinted() == WINDOW
        spin.outcome(WINDOW, caught=True)
    budgets = []
    for _ in range(6):
        budget = spin.hinted()
        budgets.append(budget)
        spin.outcome(budget, caught=False)
    assert budgets == [WINDOW, WINDOW // 2, WINDOW // 4, WINDOW // 8, WINDOW // 16, 0]
    assert WINDOW // 32 < MIN_WINDOW_NS  # so the sixth miss stopped spinning altogether
    spin.outcome(0, caught=False)  # a receive that did not spin teaches nothing
    assert spin.budget_ns == 0


def test_a_hinted_spin_that_stopped_probes_now_and_then_and_comes_back() -> None:
    spin = HintedSpin(WINDOW)
    while spin.budget_ns:
        spin.outcome(spin.hinted(), caught=False)
    given = [spin.hinted() for _ in range(PROBE_EVERY)]
    assert given[:-1] == [0] * (PROBE_EVERY - 1) and given[-1] == WINDOW
    spin.outcome(WINDOW, caught=True)  # the probe caught its message: spinning pays again
    assert spin.hinted() == WINDOW


def test_a_negative_hinted_spin_is_refused() -> None:
    with pytest.raises(ValueError, match="-1 ns is negative"):
        HintedSpin(-1)
