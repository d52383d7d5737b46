"""The platform layer: all the paravisor asks of the machine it runs on.

On a TDX host this is the CPU's TDCALL instruction and the TD's memory; on the local backend the
TD process hands L1 an object with the same shape (tdxsim.host.td_process.L1Platform). Nothing in
svsm looks past this interface, so nothing in svsm knows whether the module is simulated:
TDCALLs go through `svsm.tdcall.Tdcall`, private and shared memory through `svsm.memory.Memory`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Platform(Protocol):
    """What the TD gives L1: the register-level TDCALL and views of TD memory."""

    memory: memoryview  # all TD RAM; private and shared GPAs alias the same pages
    shared_bit: int  # the GPA bit that selects the shared view
    regions: list[tuple[int, int, int]]  # (GPA, size, offset in `memory`) of each RAM region
    image_path: str  # L1's measured payload zip on disk: the vTPM workers start from it

    def tdcall(self, regs: Sequence[int]) -> list[int]:
        """TDCALL: 16 GPRs in architectural order in (leaf in RAX), 16 out (status in RAX)."""
        ...

    def offset(self, gpa: int) -> int:
        """Offset in `memory` of a GPA (the shared bit ignored)."""
        ...
