"""Markers come from the directory a test lives in (tests/conftest.py): `pytest -m integration`
selects exactly the tests under tests/integration, and each directory's tests carry its marker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import directory_marker

ROOT = Path(__file__).resolve().parents[2]
COLLECT_TIMEOUT_S = 120


def collected(*args: str) -> set[str]:
    """The node ids `pytest --collect-only -q ARGS` lists, run from the project root."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=COLLECT_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {line for line in result.stdout.splitlines() if "::" in line}


def test_marker_integration_selects_exactly_the_integration_directory() -> None:
    # `-m integration` replaces the default `-m 'not slow and not tpm_suite'`, so slow and
    # tpm_suite tests under tests/integration are selected too; `-m ""` selects everything.
    everything = collected("-m", "")
    expected = {node for node in everything if node.startswith("tests/integration/")}
    selected = collected("-m", "integration")
    assert expected, "nothing collected under tests/integration"
    assert selected == expected, {
        "selected outside tests/integration": sorted(selected - expected)[:10],
        "missed under tests/integration": sorted(expected - selected)[:10],
    }
    outside = {node.split("/")[1] for node in everything - expected}
    assert outside <= {"unit", "security"}, f"tests outside unit/integration/security: {outside}"


@pytest.mark.parametrize(
    ("path", "marker"),
    [
        ("tests/unit/igvm/test_format.py", "unit"),
        ("tests/integration/vtpm/test_server.py", "integration"),
        ("tests/security/vtpm/test_connection_limit.py", "security"),
        ("tests/benchmarks/bench_vtpm.py", None),
        ("igvm/format.py", None),
    ],
)
def test_directory_marker_of_a_path(path: str, marker: str | None) -> None:
    assert directory_marker(ROOT / path) == marker


def test_a_unit_test_carries_the_unit_marker_only(request: pytest.FixtureRequest) -> None:
    names = {mark.name for mark in request.node.iter_markers()}
    assert "unit" in names and not names & {"integration", "security"}, names
