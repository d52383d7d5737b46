"""Fixtures for the vTPM security tests: a `vtpm serve` per module (tests.support)."""

from __future__ import annotations

from tests.support.vtpm_process import vtpm_server

__all__ = ["vtpm_server"]
