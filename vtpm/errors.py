"""The root of every exception the vtpm package raises: `except VtpmError` catches them all.

Each vtpm exception also keeps the standard-library base callers relied on before (ValueError
for bad input, RuntimeError for a failed operation, OSError for a missing library, LookupError for
an unknown name), by multiple inheritance.
"""

from __future__ import annotations


class VtpmError(Exception):
    """Something in the vTPM failed: a TPM command, a protocol frame, a certificate, a setting."""
