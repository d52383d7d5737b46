"""Fixtures for the vTPM security tests (tests.support): a `vtpm serve` per module, a factory
that starts one per channel path, and an in-process engine."""

from __future__ import annotations

from tests.support.engine_tcti import engine
from tests.support.vtpm_process import vtpm_factory, vtpm_server

__all__ = ["engine", "vtpm_factory", "vtpm_server"]
