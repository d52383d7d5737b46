"""One host's remote run: connect, preflight, copy, the suite's commands, collect, clean up.

Every step is timed and logged to the host's local directory; a failed step ends the host's run
with the step and the reason, keeps what was collected so far, and still removes the remote
directory when the host can be reached (unless the caller keeps it).
"""

from __future__ import annotations

import contextlib
import enum
import re
import shlex
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from orchestrator.remote import junit, transfer
from orchestrator.remote.connection import Connection
from orchestrator.remote.errors import RemoteError
from orchestrator.remote.inventory import Host, printable
from orchestrator.remote.preflight import Preflight, preflight

RUN_TIMEOUT_S = 600.0
TEST_TIMEOUT_S = 3600.0
COLLECT = "results"
# Lines of `./tdp run` worth bringing back as the run's figures (orchestrator/boot.py prints them).
_FIGURE = re.compile(rb"^(done: .*|L1 returned after .*)$", re.MULTILINE)


@dataclass(frozen=True)
class SuiteStep:
    """A command of a suite: an `invoke` task with arguments, or (for tests) a fixed command."""

    name: str
    invoke_args: tuple[str, ...] = ()
    command: str | None = None
    junit: bool = False
    timeout: float = RUN_TIMEOUT_S


@dataclass(frozen=True)
class Suite:
    name: str
    steps: tuple[SuiteStep, ...]


class SuiteName(enum.StrEnum):
    """The suites `invoke remote --suite` runs."""

    SMOKE = "smoke"
    DEFAULT = "default"
    TPM = "tpm"
    ALL = "all"


_RUN = SuiteStep("run", ("run",))
_TEST = SuiteStep("test", ("test",), junit=True, timeout=TEST_TIMEOUT_S)
_TPM = SuiteStep("tpm-suite", ("test", "--tpm-suite"), junit=True, timeout=TEST_TIMEOUT_S)
_SLOW = SuiteStep("test-slow", ("test", "--slow"), junit=True, timeout=TEST_TIMEOUT_S)
SUITES = {
    SuiteName.SMOKE: Suite("smoke", (_RUN,)),
    SuiteName.DEFAULT: Suite("default", (_RUN, _TEST)),
    SuiteName.TPM: Suite("tpm", (_RUN, _TEST, _TPM)),
    SuiteName.ALL: Suite("all", (_RUN, _SLOW, _TPM)),
}
# On a host with TD partitioning: build the product image and launch it under QEMU.
QEMU_TDX_STEPS = (
    SuiteStep("build", ("build",)),
    SuiteStep(
        "qemu-tdx",
        command=".venv/bin/python -m orchestrator.backends.qemu_tdx launch --image out/tdp.igvm "
        "--workdir {results}/qemu-tdx",
        timeout=RUN_TIMEOUT_S,
    ),
)


class Status(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"


@dataclass
class StepRecord:
    name: str
    seconds: float
    error: str | None = None


@dataclass
class Options:
    """What every host of a run shares."""

    suite: Suite
    known_hosts: Path
    out_dir: Path
    archive: Path
    accept_new_host_keys: bool = False
    keep: bool = False


@dataclass
class HostResult:
    """One host's outcome: backend, steps, test counts, figures, and where its files are."""

    host: Host
    local_dir: Path
    backend: str = "-"
    steps: list[StepRecord] = field(default_factory=list)
    counts: junit.Counts = field(default_factory=junit.Counts)
    figures: list[str] = field(default_factory=list)
    failed_step: str | None = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    remote_dir: str | None = None
    removed_dir: str | None = None
    junit_root: ET.Element | None = None
    seconds: float = 0.0

    @property
    def status(self) -> Status:
        return Status.FAILED if self.failed_step or self.counts.failed else Status.PASSED


Progress = Callable[[str], None]


def remote_command(step: SuiteStep, host: Host, checkout: str, results: str) -> str:
    """The shell line a suite step runs on the host; every variable part is quoted.

    A fresh host runs `./tdp TASK` (it bootstraps .venv first); a host whose inventory names a
    `venv` runs that venv's invoke directly, since its setup is done.
    """
    if step.command is not None:
        command = step.command.format(results=shlex.quote(results))
    elif host.venv:
        command = shlex.join([".venv/bin/invoke", *step.invoke_args])
    else:
        command = shlex.join(["./tdp", *step.invoke_args])
    env = ["TDP_REMOTE_RUN=1"]
    if step.junit:
        env.append("PYTEST_ADDOPTS=" + shlex.quote(f"--junitxml={results}/{step.name}.xml"))
    return (
        f"mkdir -p {shlex.quote(results)} && cd {shlex.quote(checkout)} && "
        f"{' '.join(env)} {command}"
    )


class HostRun:
    """Runs the steps for one host and records them."""

    def __init__(self, host: Host, options: Options, local_dir: Path, progress: Progress) -> None:
        self.host = host
        self.options = options
        self.result = HostResult(host, local_dir)
        self.progress = progress
        self._cases: list[ET.Element] = []
        self._pytest_suites: list[ET.Element] = []
        self._log: BinaryIO | None = None

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a step, log its start and end, and record a failure with its reason."""
        self.progress(name)
        log = self._log
        if log is not None:
            log.write(f"== step {name}\n".encode())
        start = time.monotonic()
        error: str | None = None
        try:
            yield
        except Exception as exc:  # any failure ends this host's run, never the fleet's
            error = str(exc) or type(exc).__name__
            if not isinstance(exc, RemoteError | OSError | ET.ParseError):
                error = f"unexpected {type(exc).__name__}: {error}"
            if self.result.failed_step is None:
                self.result.failed_step, self.result.reason = name, error
            raise
        finally:
            seconds = time.monotonic() - start
            self.result.steps.append(StepRecord(name, seconds, error))
            self._cases.append(junit.step_case(self.host.name, name, seconds, error))
            if log is not None:
                outcome = f"failed: {error}" if error else "ok"
                log.write(f"== step {name}: {outcome} in {seconds:.2f} s\n".encode())
                log.flush()

    def run(self) -> HostResult:
        start = time.monotonic()
        self.result.local_dir.mkdir(parents=True, exist_ok=True)
        connection: Connection | None = None
        with (self.result.local_dir / "host.log").open("wb") as log:
            self._log = log
            try:
                connection = self._connect()
                facts = self._preflight(connection)
                self._copy_and_run(connection, facts)
            except Exception as exc:  # recorded by step() with its name, unless outside one
                if self.result.failed_step is None:
                    self.result.failed_step = "local"
                    self.result.reason = f"{type(exc).__name__}: {exc}"

            finally:
                self._finish(connection)
                self.result.seconds = time.monotonic() - start
                self._write_junit()
            self._log = None
        return self.result

    def _connect(self) -> Connection:
        with self.step("connect"):
            return Connection.open(
                self.host, self.options.known_hosts, self.options.accept_new_host_keys
            )

    def _preflight(self, connection: Connection) -> Preflight:
        with self.step("preflight"):
            facts = preflight(connection)
        self.result.backend = "+".join(facts.backends)
        if facts.no_qemu_tdx:
            self.result.notes.append(f"tdxsim backend only ({facts.no_qemu_tdx})")
        (self.result.local_dir / "preflight.txt").write_text(
            "".join(f"{k}={v}\n" for k, v in sorted(facts.facts.items()))
            + "".join(f"missing_package={p}\n" for p in facts.missing_packages)
        )
        return facts

    def _copy_and_run(self, connection: Connection, facts: Preflight) -> None:
        with self.step("copy"):
            run_dir = transfer.run_directory_name(facts.facts.get("tmpdir", "/tmp"))
            self.result.remote_dir = run_dir
            checkout = transfer.upload_checkout(
                connection, self.options.archive, run_dir, self.host.venv
            )
        results = f"{run_dir}/{COLLECT}"
        steps = list(self.options.suite.steps)
        if "qemu-tdx" in facts.backends:
            steps += QEMU_TDX_STEPS
        try:
            for suite_step in steps:
                with self.step(suite_step.name):
                    self._suite_step(connection, suite_step, checkout, results)
        finally:
            if connection.alive:
                with self.step("collect"):
                    fetched = transfer.fetch_tree(
                        connection, results, self.result.local_dir / COLLECT
                    )
                for path in fetched:
                    if path.suffix == ".xml":
                        suites = junit.suites_of(path)
                        self.result.counts += junit.count(suites)
                        self._pytest_suites += suites

    def _suite_step(
        self, connection: Connection, step: SuiteStep, checkout: str, results: str
    ) -> None:
        line = remote_command(step, self.host, checkout, results)
        log_path = self.result.local_dir / f"{step.name}.log"
        with log_path.open("wb") as step_log:
            try:
                outcome = connection.run(line, step.timeout, log=step_log, check=False)
            except RemoteError as exc:
                if not step.junit:
                    self.result.counts.failed += 1
                raise type(exc)(f"{exc} (output so far in {log_path})") from exc
        self.result.figures += [
            printable(m.decode(errors="replace")) for m in _FIGURE.findall(outcome.output)
        ]
        if not step.junit:
            if outcome.status == 0:
                self.result.counts.passed += 1
            else:
                self.result.counts.failed += 1
        if outcome.status != 0:
            tail = outcome.output.decode(errors="replace").strip().splitlines()[-1:] or [""]
            last = printable(tail[0][:200])
            raise RemoteError(f"exit status {outcome.status}: {last} (log: {log_path})")

    def _finish(self, connection: Connection | None) -> None:
        """Remove the run directory (reconnecting once if the session dropped), close."""
        run_dir = self.result.remote_dir
        if run_dir is None or self.options.keep:
            if run_dir is not None:
                self.result.notes.append(f"kept {run_dir} on the host (--keep)")
            if connection is not None:
                connection.close()
            return
        try:
            with self.step("cleanup"):
                if connection is None or not connection.alive:
                    connection = Connection.open(
                        self.host, self.options.known_hosts, accept_new=False, timeout=5
                    )
                transfer.remove_run_directory(connection, run_dir)
                if self._log is not None:
                    self._log.write(f"removed {run_dir} on the host\n".encode())
            self.result.remote_dir, self.result.removed_dir = None, run_dir
        except Exception as exc:  # the host is unreachable or refuses: say where the files are
            self.result.notes.append(f"could not remove {run_dir} on the host: {exc}")
        finally:
            if connection is not None:
                connection.close()

    def _write_junit(self) -> None:
        self.result.junit_root = junit.host_suite(self.host.name, self._cases, self._pytest_suites)
