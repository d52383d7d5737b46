"""The common base of every verification failure, so a relying party can catch them all at once."""

from __future__ import annotations


class VerificationError(Exception):
    """Evidence (quote, certificate, signature) did not verify; the message names what failed."""
