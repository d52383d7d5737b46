"""A tpm2-pytss TCTI over an in-process `vtpm.engine.TpmEngine`, and a fixture that gives a
started engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tpm2_pytss.TCTI import PyTCTI

from vtpm.engine import TpmEngine


class EngineTcti(PyTCTI):  # type: ignore[misc]
    """A tpm2-pytss TCTI that hands each command straight to an in-process TpmEngine."""

    def __init__(self, engine: TpmEngine) -> None:
        super().__init__(max_size=4096)
        self._engine = engine
        self._response = b""

    def do_transmit(self, command: bytes) -> None:
        self._response = self._engine.process(bytes(command))

    def do_receive(self, timeout: int) -> bytes:
        return self._response


@pytest.fixture
def engine() -> Iterator[TpmEngine]:
    """A powered-on, started in-process engine, closed afterwards."""
    eng = TpmEngine()
    try:
        eng.power_on()
        eng.startup_clear()
        yield eng
    finally:
        eng.close()
