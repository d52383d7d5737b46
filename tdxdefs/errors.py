"""The exception root of tdxdefs, and the parse error every binary layout raises."""

from __future__ import annotations


class TdxDefsError(Exception):
    """Root of every error tdxdefs raises, so a caller can catch the definitions' errors at once."""


class LayoutError(TdxDefsError, ValueError):
    """Bytes that do not fit a declared layout: names the structure, the field and its offset."""

    def __init__(self, structure: str, field: str, offset: int, reason: str) -> None:
        super().__init__(f"{structure}.{field} at offset {offset}: {reason}")
        self.structure = structure
        self.field = field
        self.offset = offset
        self.reason = reason
