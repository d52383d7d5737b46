"""Hosts in parallel: one live progress line per host, one table at the end, JUnit per host and
merged, and an exit status of 0 only when every host passed.

A thread per host over paramiko, not Fabric's ThreadingGroup: a group runs one command on every
host in lockstep and raises a GroupException at the end, while a host's run here is a pipeline of
steps whose failure must stop that host alone, report live, and still clean up.
"""

from __future__ import annotations

import re
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from orchestrator.remote import junit, transfer
from orchestrator.remote.inventory import Host
from orchestrator.remote.runner import HostResult, HostRun, Options, Status, Suite

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def host_dir_name(index: int, host: Host) -> str:
    """A local directory name for a host: its position and its name with unsafe characters
    replaced, so a name with slashes or shell metacharacters names no other path."""
    return f"{index + 1:02d}-{_SAFE.sub('_', host.name)[:40].strip('._') or 'host'}"


class ProgressBoard:
    """One line per host (step, elapsed). On a terminal the lines are redrawn in place every
    second; otherwise a line is printed whenever a host starts a step or ends."""

    def __init__(self, hosts: Sequence[Host], out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.lock = threading.Lock()
        self.start = time.monotonic()
        # name, step, when the host's run began (None while it waits for a worker)
        self.lines: list[tuple[str, str, float | None]] = [
            (h.label, "waiting", None) for h in hosts
        ]
        self.done = threading.Event()
        self._drawn = False

    def update(self, index: int, step: str) -> None:
        with self.lock:
            name, _, began = self.lines[index]
            self.lines[index] = (name, step, time.monotonic() if began is None else began)
            if not self.tty:
                self.out.write(f"  {self._line(index)}\n")
                self.out.flush()
            else:
                self._redraw()

    def _line(self, index: int) -> str:
        name, step, since = self.lines[index]
        elapsed = 0.0 if since is None else time.monotonic() - since
        return f"{name[:30]:30} {step:28} {elapsed:6.1f} s"

    def _redraw(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{len(self.lines)}F")
        for index in range(len(self.lines)):
            self.out.write(f"\x1b[2K  {self._line(index)}\n")
        self._drawn = True
        self.out.flush()

    def ticker(self) -> None:
        while self.tty and not self.done.wait(1.0):
            with self.lock:
                self._redraw()


@dataclass
class FleetResult:
    results: list[HostResult]
    out_dir: Path
    junit_files: list[Path]

    @property
    def exit_code(self) -> int:
        return 0 if all(r.status is Status.PASSED for r in self.results) else 1


def run_fleet(
    hosts: Sequence[Host],
    suite: Suite,
    known_hosts: Path,
    out_dir: Path,
    parallel: int = 0,
    junit_dir: Path | None = None,
    keep: bool = False,
    accept_new_host_keys: bool = False,
    out: TextIO = sys.stdout,
) -> FleetResult:
    """Run `suite` on every host, `parallel` at a time (0: all at once); print the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    board = ProgressBoard(hosts, out)
    with tempfile.TemporaryDirectory(prefix="tdp-remote-") as scratch:
        archive = transfer.archive_head(Path(scratch) / transfer.ARCHIVE_NAME)
        options = Options(suite, known_hosts, out_dir, archive, accept_new_host_keys, keep)

        def one(index: int) -> HostResult:
            def progress(step: str) -> None:
                board.update(index, step)

            run = HostRun(
                hosts[index], options, out_dir / host_dir_name(index, hosts[index]), progress
            )
            result = run.run()
            board.update(index, f"{result.status.value} ({result.failed_step or 'all steps'})")
            return result

        ticker = threading.Thread(target=board.ticker, daemon=True)
        ticker.start()
        workers = parallel if parallel > 0 else len(hosts)
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="remote") as pool:
            results = list(pool.map(one, range(len(hosts))))
        board.done.set()
    junit_files = _write_junit(results, hosts, junit_dir) if junit_dir else []
    out.write(render_table(results) + "\n")
    for result in results:
        for line in _details(result):
            out.write(line + "\n")
    out.write(f"logs and results: {out_dir}\n")
    out.flush()
    return FleetResult(results, out_dir, junit_files)


def _write_junit(results: list[HostResult], hosts: Sequence[Host], junit_dir: Path) -> list[Path]:
    files = []
    roots = []
    for index, result in enumerate(results):
        if result.junit_root is None:
            continue
        path = junit_dir / f"{host_dir_name(index, hosts[index])}.xml"
        junit.write(result.junit_root, path)
        files.append(path)
        roots.append(result.junit_root)
    merged = junit_dir / "merged.xml"
    junit.write(junit.merge(roots), merged)
    files.append(merged)
    return files


def render_table(results: list[HostResult]) -> str:
    """host, backend, passed/failed/skipped, duration, result."""
    header = ("host", "backend", "passed", "failed", "skipped", "duration", "result")
    rows = [header]
    for r in results:
        outcome = "PASS" if r.status is Status.PASSED else f"FAIL at {r.failed_step or 'tests'}"
        rows.append(
            (
                r.host.label,
                r.backend,
                str(r.counts.passed),
                str(r.counts.failed),
                str(r.counts.skipped),
                f"{r.seconds:.1f} s",
                outcome,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _details(result: HostResult) -> list[str]:
    lines = []
    name = result.host.label
    if result.failed_step:
        lines.append(f"{name}: failed at {result.failed_step}: {result.reason}")
    lines += [f"{name}: {note}" for note in result.notes]
    lines += [f"{name}: {figure}" for figure in result.figures]
    steps = ", ".join(f"{s.name} {s.seconds:.2f} s" for s in result.steps)
    lines.append(f"{name}: steps: {steps}")
    return lines
