"""The exception root of the paravisor: every svsm error is an `SvsmError`."""

from __future__ import annotations


class SvsmError(Exception):
    """Root of every exception svsm raises, so a caller can catch the paravisor's errors at once."""
