"""Where a relayed TPM command's time goes: per-step medians from a recorded timeline.

`invoke run --serve --timeline DIR` has every process of the path record its marks in DIR
(`tdxdefs.timeline`); this merges them on their common clock into commands, each the marks from
a client's command to its answer in the order the command passes them, and prints each step's
median and 90th percentile. Run: python -m orchestrator.timeline DIR.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import OrchestratorError
from tdxdefs.timeline import FILE_GLOB, RECORD_BYTES, Mark

RECORD = struct.Struct("<QQ")
assert RECORD.size == RECORD_BYTES
ORDER = tuple(Mark)
STEPS: dict[Mark, str] = {
    Mark.HOST_ENTER: "host: the command into the ring, ENTER with L1's relay interrupt",
    Mark.TD_ENTER: "channel: that ENTER reaches the TD process",
    Mark.WORKER_COMMAND: "TD: L1 hands the L2 the command, the L2 copies it to its CRB buffer "
    "and STARTs, L1 sends it to the vTPM worker",
    Mark.WORKER_ANSWER: "vTPM worker: libtpms runs the command",
    Mark.TD_EXIT: "TD: the response reaches L1, which completes the START; the L2 polls "
    "START, reads the status, copies the response out and halts, L1 writes the ring and halts",
    Mark.HOST_EXIT: "channel: that EXIT reaches the host",
    Mark.CLIENT_ANSWER: "host: the ring's answer checked, to the client's socket",
}


class TimelineError(OrchestratorError):
    """A timeline directory that cannot be read."""


@dataclass(frozen=True)
class Summary:
    """Per-step times of the complete commands of a timeline, in microseconds."""

    commands: int
    incomplete: int
    steps: dict[Mark, list[float]]  # each step by the mark that ends it
    totals: list[float]  # a client's command to its answer
    between: list[float]  # an answer to the next command: the client's own time


def read_marks(directory: Path) -> list[tuple[int, Mark]]:
    """Every process's marks in `directory`, by time."""
    files = sorted(directory.glob(FILE_GLOB))
    if not files:
        raise TimelineError(f"{directory}: no {FILE_GLOB} files (was --timeline given?)")
    marks: list[tuple[int, Mark]] = []
    for path in files:
        data = path.read_bytes()
        if len(data) % RECORD.size:
            raise TimelineError(
                f"{path}: {len(data)} bytes are not whole {RECORD.size}-byte records"
            )
        for offset in range(0, len(data), RECORD.size):
            when, value = RECORD.unpack_from(data, offset)
            try:
                marks.append((when, Mark(value)))
            except ValueError:
                raise TimelineError(f"{path}, offset {offset}: unknown mark {value}") from None
    marks.sort()
    return marks


def summarize(marks: list[tuple[int, Mark]]) -> Summary:
    """Commands from merged marks: a CLIENT_COMMAND starts one; each later mark that is the next
    in ORDER fills it (other marks, such as the exits of L1's other work, are passed over) and
    CLIENT_ANSWER completes it. A command a new CLIENT_COMMAND interrupts is incomplete."""
    steps: dict[Mark, list[float]] = {mark: [] for mark in ORDER[1:]}
    totals: list[float] = []
    between: list[float] = []
    current: list[int] = []
    incomplete = 0
    last_answer: int | None = None
    for when, mark in marks:
        if mark is Mark.CLIENT_COMMAND:
            incomplete += bool(current)
            current = [when]
            if last_answer is not None:
                between.append((when - last_answer) / 1000)
                last_answer = None
        elif current and mark is ORDER[len(current)]:
            current.append(when)
            if mark is Mark.CLIENT_ANSWER:
                for index, later in enumerate(ORDER[1:], 1):
                    steps[later].append((current[index] - current[index - 1]) / 1000)
                totals.append((when - current[0]) / 1000)
                last_answer = when
                current = []
    return Summary(len(totals), incomplete + bool(current), steps, totals, between)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(summary: Summary) -> str:
    """The per-step table of a summary."""
    if not summary.commands:
        return f"timeline: no complete relayed command ({summary.incomplete} incomplete)"
    lines = [
        f"timeline of {summary.commands} relayed TPM commands ({summary.incomplete} incomplete), "
        "us: median, 90th percentile",
    ]
    for mark, values in summary.steps.items():
        text = STEPS[mark]
        median, p90 = statistics.median(values), _percentile(values, 0.9)
        lines.append(f"  {median:7.0f} {p90:7.0f}  {text}")
    median, p90 = statistics.median(summary.totals), _percentile(summary.totals, 0.9)
    lines.append(f"  {median:7.0f} {p90:7.0f}  in all, from a client's command to its answer")
    if summary.between:
        median = statistics.median(summary.between)
        p90 = _percentile(summary.between, 0.9)
        lines.append(
            f"  {median:7.0f} {p90:7.0f}  from an answer to the next command: the send to the "
            "client, the client's own work, its connection, the host's wait"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.timeline", description=__doc__.splitlines()[0]
    )
    parser.add_argument("directory", type=Path, help="the --timeline directory of a serve run")
    args = parser.parse_args(argv)
    try:
        print(report(summarize(read_marks(args.directory))))
    except (TimelineError, OSError) as exc:
        print(f"timeline: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
