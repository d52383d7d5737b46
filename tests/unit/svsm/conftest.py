"""Fixtures for the paravisor's unit tests: a TD on the simulated module (tests.support.svsm_td)."""

from __future__ import annotations

from tests.support.svsm_td import make_td, td

__all__ = ["make_td", "td"]
