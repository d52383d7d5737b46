"""A `python -m vtpm serve` process on a free port, started from the checkout, and the pytest
fixtures that start and stop it."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tpm2_pytss import ESAPI

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"vtpm: ready on (\S+) command port (\d+) platform port (\d+)")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


@dataclass
class VtpmProcess:
    """A running `vtpm serve` and the TCTI strings that reach it."""

    proc: subprocess.Popen[str]
    host: str
    port: int
    platform_port: int
    banner: list[str] = field(default_factory=list)
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    reader: threading.Thread | None = None

    @property
    def mssim(self) -> str:
        return f"mssim:host={self.host},port={self.port}"

    @property
    def swtpm(self) -> str:
        return f"swtpm:host={self.host},port={self.port}"

    def esapi(self, tcti: str) -> ESAPI:
        """An ESAPI context over `tcti` ("mssim" or "swtpm"). ESAPI loads the TCTI itself, so
        its close() also closes the TCTI's connections (an ESAPI handed a TCTI object leaves
        that TCTI, and an mssim TCTI's two sockets, open)."""
        return ESAPI(f"{tcti}:host={self.host},port={self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        """Signal the server, wait, and return (exit code, rest of stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.reader is not None:
            self.reader.join(timeout=STOP_TIMEOUT)
        rest = []
        while not self.lines.empty():
            line = self.lines.get()
            if line is not None:
                rest.append(line)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        return self.proc.returncode, "\n".join(rest), err


L2_READY = re.compile(r"mssim:host=(\S+),port=(\d+)")


def launch_l2_serve(*args: str) -> VtpmProcess:
    """`invoke run --serve --dev-platform-port` (orchestrator.serve): the L1 vTPM of L2 1, reached
    through the host relay, L1 and the L2 firmware; ready once it prints its TCTI strings."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.serve", "--port", "0", "--dev-platform-port", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    banner: list[str] = []
    deadline = time.monotonic() + 4 * START_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        banner.append(line.rstrip())
        found = L2_READY.search(line)
        if found:
            host, port = found.group(1), int(found.group(2))
            server = VtpmProcess(proc, host, port, port + 1, banner)

            def pump(lines: queue.Queue[str | None] = server.lines) -> None:
                assert proc.stdout is not None
                for rest in proc.stdout:
                    lines.put(rest.rstrip("\n"))
                lines.put(None)

            server.reader = threading.Thread(target=pump, daemon=True)
            server.reader.start()
            return server
    proc.kill()
    raise RuntimeError("invoke run --serve did not come up:\n" + "\n".join(banner))


def launch_vtpm(
    *args: str, cwd: Path | None = None, extra_env: dict[str, str] | None = None
) -> VtpmProcess:
    """Start `python -m vtpm serve --port 0 ARGS` and wait for its ready line."""
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vtpm", "serve", "--port", "0", *args],
        cwd=cwd or ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    banner: list[str] = []
    while True:
        try:
            line = lines.get(timeout=START_TIMEOUT)
        except queue.Empty:
            break
        if line is None:
            break
        banner.append(line)
        match = READY.search(line)
        if match:
            return VtpmProcess(proc, match[1], int(match[2]), int(match[3]), banner, lines, reader)
    proc.kill()
    _out, err = proc.communicate()
    raise RuntimeError(f"vtpm serve did not become ready: stdout={banner!r} stderr={err!r}")


# The two ways `vtpm serve` answers the swtpm data channel; server tests run against both.
CHANNEL_PATHS = {"native": (), "python": ("--no-fastpath",)}
CHANNEL_BANNERS = {
    "native": "swtpm data channel: native fast path",
    "python": "swtpm data channel: Python path",
}


def launch_on_path(
    path: str, *args: str, cwd: Path | None = None, extra_env: dict[str, str] | None = None
) -> VtpmProcess:
    """launch_vtpm() answering the swtpm channel on `path`, checked against its banner (so a
    missing native library fails here instead of quietly testing the Python path twice)."""
    server = launch_vtpm(*CHANNEL_PATHS[path], *args, cwd=cwd, extra_env=extra_env)
    if not any(CHANNEL_BANNERS[path] in line for line in server.banner):
        server.stop()
        raise AssertionError(f"vtpm serve is not on the {path} path: {server.banner}")
    return server


@pytest.fixture(params=sorted(CHANNEL_PATHS))
def vtpm_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., VtpmProcess]]:
    """Start `vtpm serve` processes with the given arguments, on each swtpm-channel path in
    turn (native fast path, Python); all are stopped afterwards."""
    started: list[VtpmProcess] = []

    def start(
        *args: str, cwd: Path | None = None, extra_env: dict[str, str] | None = None
    ) -> VtpmProcess:
        server = launch_on_path(request.param, *args, cwd=cwd, extra_env=extra_env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def vtpm_server() -> Iterator[VtpmProcess]:
    """One provisioned `vtpm serve` (default arguments) shared by a test module."""
    server = launch_vtpm()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ectx(vtpm_server: VtpmProcess) -> Iterator[ESAPI]:
    """An ESAPI context over the mssim TCTI to the module's server, closed with its TCTI after."""
    ctx = vtpm_server.esapi("mssim")
    try:
        yield ctx
    finally:
        ctx.close()
