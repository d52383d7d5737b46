"""Fixtures for the paravisor integration tests (tests.support): the L2 firmware and an
in-process engine."""

from __future__ import annotations

from tests.support.engine_tcti import engine
from tests.support.l2_firmware import firmware

__all__ = ["engine", "firmware"]
