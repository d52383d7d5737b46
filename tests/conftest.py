"""Markers derived from where a test lives: every test under tests/unit is marked `unit`, under
tests/integration `integration`, under tests/security `security`, so `pytest -m integration`
selects exactly the integration directory and a new test file needs no marker line of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
DIRECTORY_MARKERS = {"unit": "unit", "integration": "integration", "security": "security"}


def directory_marker(path: Path) -> str | None:
    """The marker of the top-level test directory that holds `path`, if it has one."""
    try:
        top = path.resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return None
    return DIRECTORY_MARKERS.get(top)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = directory_marker(item.path)
        if marker is not None:
            item.add_marker(marker)
