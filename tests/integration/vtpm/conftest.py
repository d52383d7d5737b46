"""Fixtures for the vTPM tests: `vtpm serve` processes (one per module, or started on demand on
each swtpm-channel path), an ESAPI context to the module's server, and an in-process engine
(tests.support)."""

from __future__ import annotations

from tests.support.engine_tcti import engine
from tests.support.vtpm_process import ectx, vtpm_factory, vtpm_server

__all__ = ["ectx", "engine", "vtpm_factory", "vtpm_server"]
