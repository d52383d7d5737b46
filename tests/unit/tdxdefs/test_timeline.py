"""The relay path's timeline recorder: nothing without TDP_TIMELINE, one file per process with
it, a forked child's marks in a file of its own, records as the reader expects them."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

from tdxdefs.timeline import FILE_GLOB, FLUSH_RECORDS, RECORD_BYTES, TIMELINE_ENV, Mark

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = """
import os, sys
from tdxdefs import timeline
from tdxdefs.timeline import Mark
timeline.mark(Mark.CLIENT_COMMAND)
child = os.fork()
if child == 0:
    timeline.mark(Mark.TD_ENTER)
    timeline.mark(Mark.TD_EXIT)
    timeline.flush()
    os._exit(0)
os.waitpid(child, 0)
for _ in range(int(sys.argv[1])):
    timeline.mark(Mark.HOST_ENTER)
print(os.getpid(), child, timeline.mark is timeline._off)
"""


def run(directory: Path | None, marks: int = 1) -> tuple[int, int, bool]:
    """Run SCRIPT (in `directory` as its working directory too); its pid, its child's, and
    whether its marks were the function that does nothing."""
    env = {k: v for k, v in os.environ.items() if k != TIMELINE_ENV}
    if directory is not None:
        env[TIMELINE_ENV] = str(directory)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(marks)],
        cwd=directory or ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1]), out[2] == "True"


def records(path: Path) -> list[tuple[int, Mark]]:
    data = path.read_bytes()
    assert len(data) % RECORD_BYTES == 0
    return [(when, Mark(value)) for when, value in struct.iter_unpack("<QQ", data)]


def test_each_process_writes_its_own_marks_in_order(tmp_path: Path) -> None:
    parent, child, off = run(tmp_path, marks=3)
    assert not off
    assert sorted(p.name for p in tmp_path.glob(FILE_GLOB)) == sorted(
        [f"timeline-{parent}.bin", f"timeline-{child}.bin"]
    )
    mine = records(tmp_path / f"timeline-{parent}.bin")
    assert [mark for _, mark in mine] == [Mark.CLIENT_COMMAND] + [Mark.HOST_ENTER] * 3
    theirs = records(tmp_path / f"timeline-{child}.bin")
    assert [mark for _, mark in theirs] == [Mark.TD_ENTER, Mark.TD_EXIT]
    times = [when for when, _ in mine]
    assert times == sorted(times)
    assert mine[0][0] < theirs[0][0] < theirs[1][0] < mine[1][0]  # one clock for both


def test_a_long_run_is_written_in_batches_without_losing_a_mark(tmp_path: Path) -> None:
    parent, _child, _off = run(tmp_path, marks=3 * FLUSH_RECORDS + 7)
    assert len(records(tmp_path / f"timeline-{parent}.bin")) == 3 * FLUSH_RECORDS + 8


def test_without_the_variable_a_mark_does_nothing(tmp_path: Path) -> None:
    before = set(ROOT.glob(FILE_GLOB))
    _parent, _child, off = run(None)
    assert off
    assert set(ROOT.glob(FILE_GLOB)) == before
