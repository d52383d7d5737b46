"""The root of every error the orchestrator raises, so a caller can catch the orchestrator's own."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Something the orchestrator drives (build, TD boot, relying party, vTPM) failed."""


class LocalBootError(OrchestratorError):
    """A step of `invoke run` on the local backend failed; the message names the step.

    Distinct from `svsm.boot.BootStepError`, which L1 raises inside the TD for its own boot steps.
    """


def reason(exc: BaseException) -> str:
    """What went wrong, never empty: an exception without a message is named by its type."""
    text = str(exc).strip()
    if isinstance(exc, LocalBootError) and text:
        return text
    name = type(exc).__name__
    return f"{name}: {text}" if text else f"{name} (no message)"
