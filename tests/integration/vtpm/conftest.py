"""Fixtures for the vTPM tests: `vtpm serve` processes (one per module, or started on demand on
each swtpm-channel path) and an in-process engine (tests.support)."""

from __future__ import annotations

from tests.support.engine_tcti import engine
from tests.support.vtpm_process import vtpm_factory, vtpm_server

__all__ = ["engine", "vtpm_factory", "vtpm_server"]
