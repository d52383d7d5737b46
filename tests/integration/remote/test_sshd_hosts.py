"""The test hosts themselves: a test process that is killed (SIGKILL skips fixture teardown)
leaves no sshd listening behind it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import sshd

from .conftest import WHY_NOT

ROOT = Path(__file__).resolve().parents[3]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_a_killed_test_process_leaves_no_sshd(tmp_path: Path) -> None:
    if WHY_NOT:
        pytest.skip(WHY_NOT)
    user_key = sshd.keygen(tmp_path / "user")
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from pathlib import Path\n"
        "from tests.support import sshd\n"
        f"server = sshd.start(Path({str(tmp_path / 'host')!r}), Path({str(user_key) + '.pub'!r}))\n"
        "print(server.port, flush=True)\n"
        "time.sleep(120)\n"
    )
    test_process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    )
    try:
        assert test_process.stdout is not None
        port = int(test_process.stdout.readline())
        assert _listening(port)
    finally:
        test_process.kill()
        test_process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _listening(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _listening(port), f"sshd on port {port} outlived the killed test process"
