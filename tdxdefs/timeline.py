"""The relay path's timeline: when each process hands a TPM command on, recorded on request.

With TIMELINE_ENV naming a directory, each process of the path (the host's relay server and VMM
loop, the TD process, the vTPM worker) appends (CLOCK_MONOTONIC ns, Mark) records to a file of
its own there, `timeline-<pid>.bin`, as little-endian u64 pairs. CLOCK_MONOTONIC is one clock for
every process of a machine, so `orchestrator.timeline` can merge the files and print per-step
medians (`invoke run --serve --timeline DIR`). Unset, `mark` is a function that does nothing.
Records are buffered and written every FLUSH_RECORDS marks and at exit; a process killed with
SIGKILL loses at most that many. A forked child starts with an empty buffer and a file of its own.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from array import array
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path

TIMELINE_ENV = "TDP_TIMELINE"
FLUSH_RECORDS = 512
RECORD_BYTES = 16  # two u64: the time and the mark
FILE_GLOB = "timeline-*.bin"


class Mark(IntEnum):
    """The moments a relayed TPM command passes, in the order it passes them. A process marks
    a hand-on before its send and a take-over after its receive, so that the order holds even
    when the receiver runs before the sender returns from its send."""

    CLIENT_COMMAND = 1  # host relay server: a client's command read and queued for the TD
    HOST_ENTER = 2  # host VMM: ENTER sends (the command in the ring, its interrupt posted)
    TD_ENTER = 3  # TD process: that ENTER received
    WORKER_COMMAND = 4  # vTPM worker: the command received (L1's CRB START)
    WORKER_ANSWER = 5  # vTPM worker: the response sends
    TD_EXIT = 6  # TD process: EXIT sends (L1 halted with the ring answered)
    HOST_EXIT = 7  # host VMM: that EXIT received
    CLIENT_ANSWER = 8  # host relay server: the answer sends to the client


class _Recorder:
    """One process's buffered records and its file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.records = array("Q")
        self.clock = time.monotonic_ns

    def mark(self, mark: Mark) -> None:
        records = self.records
        records.append(self.clock())
        records.append(mark)
        if len(records) >= 2 * FLUSH_RECORDS:
            self.flush()

    def flush(self) -> None:
        if not self.records:
            return
        if sys.byteorder != "little":
            self.records.byteswap()
        path = self.directory / f"timeline-{os.getpid()}.bin"
        try:
            with open(path, "ab") as file:
                self.records.tofile(file)
        except OSError:
            pass  # a timeline is a diagnostic: losing it must not stop the command path
        del self.records[:]

    def forked(self) -> None:
        del self.records[:]


def _off(_mark: Mark) -> None:
    """A mark while no timeline is recorded."""


mark: Callable[[Mark], None] = _off
_recorder: _Recorder | None = None


def enable(directory: Path) -> None:
    """Record this process's marks (and, through TIMELINE_ENV, its children's) in `directory`."""
    global mark, _recorder
    os.environ[TIMELINE_ENV] = str(directory)
    if _recorder is not None:
        _recorder.flush()
        _recorder.directory = directory
        return
    recorder = _recorder = _Recorder(directory)
    mark = recorder.mark
    atexit.register(recorder.flush)
    os.register_at_fork(after_in_child=recorder.forked)


def flush() -> None:
    """Write this process's buffered marks now."""
    if _recorder is not None:
        _recorder.flush()


if os.environ.get(TIMELINE_ENV):
    enable(Path(os.environ[TIMELINE_ENV]))
