"""Fixtures for the paravisor security tests (tests.support): the L2 firmware."""

from __future__ import annotations

from tests.support.l2_firmware import firmware

__all__ = ["firmware"]
