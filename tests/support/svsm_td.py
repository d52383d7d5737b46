"""svsm under test: a TD on the simulated module (TdHarness), its host VMM in process, and a
platform adapter giving svsm what the TD process gives it (register-level tdcall, memory)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from svsm.aliases import AliasManager
from svsm.l2guest import SUPPORT_PAGES, L2Guest, L2Layout
from svsm.memory import Memory
from svsm.tdcall import Tdcall
from tdxdefs.l2boot import TPM_CRB_BASE, TPM_CRB_SIZE
from tdxdefs.tdcall import PAGE_SIZE
from tdxsim.attestation.quoting import SimulatedAttestation
from tdxsim.host.faults import FaultSet
from tdxsim.host.services import HostVmm, ModuleControl
from tdxsim.host.shared_memory import SharedMemory
from tdxsim.host.td_process import RamOffsets
from tdxsim.testing import TdHarness

SEED = b"svsm unit tests"
ATTESTATION = SimulatedAttestation.create(SEED)


class HarnessPlatform:
    """`svsm.platform.Platform` over a TdHarness, as the TD process gives it to L1."""

    def __init__(self, harness: TdHarness) -> None:
        self.harness = harness
        memory = harness.memory
        self.memory: memoryview = memory.view
        self.shared_bit: int = memory.shared_bit
        self.regions: list[tuple[int, int, int]] = [
            (r.gpa, r.size, r.offset) for r in memory.regions
        ]
        self.handler: Callable[[int], None] | None = None
        self.image_path = ""  # no measured image: tests that start vTPM workers pass their own
        self.offset = RamOffsets(self.regions, self.shared_bit).offset

    def tdcall(self, regs: Sequence[int]) -> list[int]:
        return self.harness.module.tdcall_values(regs, 0)

    def set_interrupt_handler(self, handler: Callable[[int], None] | None) -> None:
        self.handler = handler


class Td:
    """A TD (all RAM pending) with an in-process host VMM and svsm's Tdcall and Memory on it."""

    def __init__(
        self,
        faults: FaultSet | None = None,
        *,
        chunk: int = 512,
        ram_mib: int = 8,
        num_l2_vms: int = 2,
        extra_ram: tuple[tuple[int, int], ...] = (),
    ) -> None:
        self.harness = TdHarness.default(
            ram_mib=ram_mib, num_l2_vms=num_l2_vms, extra_ram=extra_ram
        )
        self.harness.module.attestation = ATTESTATION.reports
        self.host = HostVmm(
            SharedMemory.of_memory(self.harness.memory),
            ModuleControl(self.harness.module),
            ATTESTATION.quoting,
            faults,
            mapgpa_chunk_pages=chunk,
        )
        self.harness.module.host = self.host
        self.platform = HarnessPlatform(self.harness)
        self.tdcall = Tdcall(self.platform.tdcall)
        self.memory = Memory(self.platform, self.tdcall)


@pytest.fixture
def td() -> Td:
    return Td()


@pytest.fixture
def make_td() -> Callable[..., Td]:
    return Td


SUPPORT = 0x200000
RAM0, RAM_SIZE = 0x400000, 0x200000


class Paravisor:
    """svsm's L2 side on a TD with `count` L2 VMs, the test holding the log."""

    def __init__(self, count: int, private_crb: bool = False) -> None:
        crb = ((TPM_CRB_BASE, TPM_CRB_SIZE),) if private_crb else ()
        self.td = Td(ram_mib=32, num_l2_vms=count, extra_ram=crb)
        self.harness = self.td.harness
        self.platform = self.td.platform
        self.tdcall = self.td.tdcall
        self.memory = self.td.memory
        self.memory.accept(SUPPORT, 0xA00000)
        self.aliases = AliasManager(self.tdcall, count)
        if private_crb:  # as svsm.boot does when the TD has the CRB page as memory
            self.memory.accept(TPM_CRB_BASE, TPM_CRB_SIZE)
            self.aliases.reserve(TPM_CRB_BASE, TPM_CRB_SIZE, "TPM CRB registers (private MMIO)")
        self.log: list[str] = []
        self.count = count

    def layout(self, vm: int) -> L2Layout:
        support = SUPPORT + (vm - 1) * SUPPORT_PAGES * PAGE_SIZE
        return L2Layout(vm, RAM0 + (vm - 1) * RAM_SIZE, RAM_SIZE, support)

    def guests(
        self,
        images: dict[int, bytes],
        tpms: dict[int, Callable[[bytes], bytes | None]] | None = None,
        **options: Any,
    ) -> list[L2Guest]:
        out = []
        for vm, image in images.items():
            neighbour = self.layout(vm % self.count + 1).ram_gpa if self.count > 1 else 0
            guest = L2Guest(
                self.tdcall, self.memory, self.aliases, self.layout(vm), image,
                self.log.append, tpm=(tpms or {}).get(vm), probe_gpa=neighbour, **options,
            )  # fmt: skip
            guest.setup()
            out.append(guest)
        return out
