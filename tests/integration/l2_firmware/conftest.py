"""Fixtures for the L2 firmware tests (tests.support): the firmware, built once."""

from __future__ import annotations

from tests.support.l2_firmware import firmware

__all__ = ["firmware"]
