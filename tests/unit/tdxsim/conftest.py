"""Fixtures: a small default TD with two L2 VMs, the test acting as L1 (tests.support)."""

from __future__ import annotations

from tests.support.td_harness import h

__all__ = ["h"]
