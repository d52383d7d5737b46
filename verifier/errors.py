"""The root of every exception the verifier raises, so a relying party can catch them all at once.

Every verifier exception derives from `VerificationError`; parse errors also derive from
ValueError, as malformed input.
"""

from __future__ import annotations


class VerificationError(Exception):
    """Evidence (quote, certificate, signature) did not verify; the message names what failed."""
