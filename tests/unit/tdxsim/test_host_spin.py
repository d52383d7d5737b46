"""Adaptive spinning of the host channel's waits (tdxsim.host.spin): a kind of wait that keeps
outlasting its window stops spinning and a shorter one turns it back on, kinds are independent,
and a spin ends when the descriptor is readable or, bounded, when its window is over."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tdxsim.host import spin
from tdxsim.host.spin import PATIENCE, Spinner, SpinWindow

WINDOW_NS = 2_000_000
NOT_FOREVER_S = 5.0  # a spin that does not end within this would be a spin without bound


def test_a_kind_of_wait_stops_spinning_after_long_waits_and_resumes_after_a_short_one() -> None:
    window = SpinWindow(WINDOW_NS)
    assert window.spinning
    for _ in range(PATIENCE - 1):
        window.waited(WINDOW_NS * 10)
    assert window.spinning  # one quiet spell is not enough
    window.waited(WINDOW_NS * 10)
    assert not window.spinning
    window.waited(WINDOW_NS * 10)
    assert not window.spinning
    window.waited(WINDOW_NS // 2)  # measured while asleep: a spin would have caught it
    assert window.spinning


def test_a_short_wait_between_long_ones_keeps_spinning() -> None:
    window = SpinWindow(WINDOW_NS)
    for _ in range(PATIENCE * 3):
        window.waited(WINDOW_NS * 10)
        window.waited(WINDOW_NS // 2)
    assert window.spinning


def test_kinds_of_wait_are_independent() -> None:
    a, b = socket.socketpair()
    with a, b:
        spinner = Spinner(a.fileno(), WINDOW_NS)
        for _ in range(PATIENCE):
            spinner.window("halt").waited(WINDOW_NS * 10)
        assert not spinner.window("halt").spinning
        assert spinner.window("io").spinning
        assert spinner.window("halt") is spinner.window("halt")


def test_a_zero_window_never_spins_and_a_negative_one_is_refused() -> None:
    assert not SpinWindow(0).spinning
    with pytest.raises(ValueError, match="spin window -1 ns is negative"):
        SpinWindow(-1)


def test_a_spin_ends_when_the_descriptor_is_readable() -> None:
    a, b = socket.socketpair()
    with a, b:
        spinner = Spinner(a.fileno(), 10 * NOT_FOREVER_S * 1_000_000_000)
        b.send(b"x")
        assert spinner.spin(spinner.window(None), time.perf_counter_ns())


def test_a_spin_with_nothing_to_read_gives_up_after_its_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a yield that comes back late ends a spin early (tested below): not here, where only the
    # window may end it, however loaded the machine
    monkeypatch.setattr(spin, "YIELD_TAKEN_NS", 10**15)
    a, b = socket.socketpair()
    with a, b:
        spinner = Spinner(a.fileno(), WINDOW_NS)
        start = time.perf_counter_ns()
        assert not spinner.spin(spinner.window(None), start)
        elapsed = time.perf_counter_ns() - start
        assert WINDOW_NS <= elapsed < NOT_FOREVER_S * 1_000_000_000


def test_a_kind_that_stopped_spinning_does_not_poll_at_all() -> None:
    a, b = socket.socketpair()
    with a, b:
        spinner = Spinner(a.fileno(), WINDOW_NS)
        window = spinner.window("idle")
        for _ in range(PATIENCE):
            window.waited(WINDOW_NS * 10)
        b.send(b"x")  # readable, but a kind that does not spin does not look
        assert not spinner.spin(window, time.perf_counter_ns())


def test_a_peer_that_closes_ends_the_spin() -> None:
    a, b = socket.socketpair()
    with a:
        spinner = Spinner(a.fileno(), 10 * NOT_FOREVER_S * 1_000_000_000)
        b.close()
        assert spinner.spin(spinner.window(None), time.perf_counter_ns())


@contextmanager
def sharing_a_cpu_with_a_busy_process() -> Iterator[None]:
    """This process and a busy loop pinned to one CPU, so that a yield gives the CPU away."""
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(hog.pid, {cpu})
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.05)  # the busy loop is running
        yield
    finally:
        os.sched_setaffinity(0, before)
        hog.kill()
        hog.wait()


def test_a_spin_whose_yield_lost_the_cpu_to_another_process_stops() -> None:
    a, b = socket.socketpair()
    with a, b, sharing_a_cpu_with_a_busy_process():
        spinner = Spinner(a.fileno(), 2 * NOT_FOREVER_S * 1_000_000_000)
        start = time.perf_counter_ns()
        assert not spinner.spin(spinner.window(None), start)  # nothing came
        assert time.perf_counter_ns() - start < NOT_FOREVER_S * 1_000_000_000
