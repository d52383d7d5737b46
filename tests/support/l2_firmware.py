"""The `firmware` fixture: the project's L2 firmware built once per session with gcc (the build is
reproducible, so every test that boots it sees the same bytes)."""

from __future__ import annotations

import pytest

from orchestrator.firmware import Firmware, build_firmware


@pytest.fixture(scope="session")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Firmware:
    """The L2 firmware image and its symbols, built into a temporary directory."""
    return build_firmware(output=tmp_path_factory.mktemp("fw") / "l2-firmware.bin")
