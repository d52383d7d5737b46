"""Fixtures for the IGVM tests: the V4 sample image's bytes (tests.support.igvm_files)."""

from __future__ import annotations

from tests.support.igvm_files import v4_bytes

__all__ = ["v4_bytes"]
