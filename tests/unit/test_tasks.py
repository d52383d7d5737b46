"""The front door: bootstrap idempotence, invoke task listing, and honest not-yet tasks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INVOKE = Path(sys.executable).parent / "invoke"
TASKS = ("setup", "build", "run", "test", "lint", "bench", "attest", "remote")


def _invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INVOKE), *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_every_task_is_listed_with_one_line_help() -> None:
    result = _invoke("--list")
    assert result.returncode == 0, result.stderr
    listed = {
        line.split()[0]: line.split(maxsplit=1)[1]
        for line in result.stdout.splitlines()
        if line.startswith("  ") and len(line.split()) > 1 and not line.startswith("    ")
    }
    for name in TASKS:
        assert name in listed, f"task {name} missing from invoke --list"
        assert len(listed[name]) > 10, f"task {name} has no help line"


def test_attest_without_a_tpm_to_reach_fails_saying_what_to_give() -> None:
    result = _invoke("attest")
    assert result.returncode == 1
    assert "--port" in result.stderr and "--tcti" in result.stderr


def test_a_timeline_without_serve_is_refused_before_building() -> None:
    result = _invoke("run", "--timeline", "/tmp/never-written")
    assert result.returncode == 2
    assert "--timeline records a --serve run; add --serve" in result.stderr
    assert not Path("/tmp/never-written").exists()


def test_unknown_lint_check_is_refused_by_name() -> None:
    result = _invoke("lint", "--only", "pylint")
    assert result.returncode == 2
    assert "'pylint'" in result.stderr + result.stdout


def test_second_bootstrap_installs_nothing() -> None:
    env = dict(os.environ, TDP_VERBOSE="1")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "bootstrap.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "nothing to install" in result.stderr
    assert "installing" not in result.stderr
