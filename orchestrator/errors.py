"""The root of every error the orchestrator raises, so a caller can catch the orchestrator's own."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Something the orchestrator drives (build, TD boot, relying party, vTPM) failed."""


class LocalBootError(OrchestratorError):
    """A step of `invoke run` on the local backend failed; the message names the step.

    Distinct from `svsm.boot.BootStepError`, which L1 raises inside the TD for its own boot steps.
    """
