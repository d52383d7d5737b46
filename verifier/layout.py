"""Fixed binary layouts: a frozen dataclass whose struct FORMAT lists its fields in order.

The TDX structures (reference tdx-partitioning-abi.md section 7) are declared as such dataclasses
in `verifier.quote` and `tdxsim.attestation.report`; this base gives each its pack/unpack.
"""

from __future__ import annotations

import struct
from dataclasses import astuple
from typing import TYPE_CHECKING, ClassVar, Self, cast

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class StructLayout:
    """Mixin for a dataclass laid out exactly as its `FORMAT` struct (little-endian fields)."""

    FORMAT: ClassVar[struct.Struct]

    def pack(self) -> bytes:
        """The structure's bytes."""
        return self.FORMAT.pack(*astuple(cast("DataclassInstance", self)))

    @classmethod
    def unpack(cls, raw: bytes) -> Self:
        """Parse exactly FORMAT.size bytes (struct.error otherwise)."""
        return cls(*cls.FORMAT.unpack(raw))
