"""Host-side TD build operations: create, PAGE.ADD, MR.EXTEND, PAGE.AUG, finalize, add vCPU.

These are the SEAMCALLs the host VMM issues before the TD runs (TDH.MNG.CREATE/INIT,
TDH.MEM.PAGE.ADD, TDH.MR.EXTEND, TDH.MEM.PAGE.AUG, TDH.MR.FINALIZE, TDH.VP.CREATE). MRTD is
accumulated with `igvm.measure.MrtdAccumulator`, so the build and the offline prediction share one
definition of the 128-byte extension blocks (reference igvm.md 4.1).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from tdxsim.abi import GPAW_48, LEVEL_2M, LEVEL_4K, PAGE_SIZE
from tdxsim.interfaces import AttestationInterface, HostInterface
from tdxsim.memory import PAGES_PER_2M, PageState, TdMemory
from tdxsim.module import TdxModule
from tdxsim.td import TdState

MR_EXTEND_CHUNK = 256
HUGE_PAGE = PAGE_SIZE * PAGES_PER_2M


class BuildError(Exception):
    """A host build operation the module refuses (names the operation and the GPA)."""


class Accumulator(Protocol):
    """The MRTD accumulator interface of igvm.measure."""

    def page_add(self, gpa: int) -> None: ...
    def mr_extend(self, gpa: int, chunk: bytes) -> None: ...
    def extend_page(self, gpa: int, page4k: bytes) -> None: ...
    def add_measured_page(self, gpa: int, page4k: bytes) -> None: ...
    def digest(self) -> bytes: ...


@dataclass
class TdConfig:
    """TD_PARAMS the host passes at TDH.MNG.INIT, plus the RAM layout of this simulator."""

    ram: list[tuple[int, int]]
    attributes: int = 0
    xfam: int = 0
    num_l2_vms: int = 1
    max_vcpus: int = 1
    gpaw: int = GPAW_48


def _igvm_accumulator() -> Accumulator:
    """A fresh MRTD accumulator from the igvm package (the one offline prediction uses)."""
    from igvm.measure import MrtdAccumulator

    acc: Accumulator = MrtdAccumulator(background=True)  # hashing overlaps the page copies
    return acc


class TdBuilder:
    """Builds one TD; `finalize()` fixes MRTD and returns the running module."""

    def __init__(
        self,
        config: TdConfig,
        host: HostInterface | None = None,
        attestation: AttestationInterface | None = None,
        *,
        strict: bool = False,
        instruction_budget: int | None = None,
        accumulator: Accumulator | None = None,
    ) -> None:
        self.config = config
        self.memory = TdMemory(config.ram, config.gpaw)
        self.td = TdState(
            attributes=config.attributes,
            xfam=config.xfam,
            num_l2_vms=config.num_l2_vms,
            max_vcpus=config.max_vcpus,
        )
        self._mrtd: Accumulator | None = accumulator
        kwargs = {} if instruction_budget is None else {"instruction_budget": instruction_budget}
        self.module = TdxModule(self.td, self.memory, host, attestation, strict=strict, **kwargs)

    @property
    def mrtd(self) -> Accumulator:
        """The MRTD accumulator, created on first measurement."""
        if self._mrtd is None:
            self._mrtd = _igvm_accumulator()
        return self._mrtd

    def _check_open(self, op: str, gpa: int) -> None:
        if self.td.finalized:
            raise BuildError(f"{op} at GPA {gpa:#x}: the TD is already finalized")
        if gpa % PAGE_SIZE:
            raise BuildError(f"{op} at GPA {gpa:#x}: not 4 KiB aligned")
        if self.memory.is_shared(gpa):
            raise BuildError(f"{op} at GPA {gpa:#x}: shared GPA; only private pages are added")

    def page_add(self, gpa: int, data: bytes = b"") -> None:
        """TDH.MEM.PAGE.ADD: copy `data` (zero padded) into a new private page; extends MRTD."""
        self._add(gpa, data)
        self.mrtd.page_add(gpa)

    def add_measured_page(self, gpa: int, data: bytes) -> None:
        """PAGE.ADD followed by the page's 16 MR.EXTENDs (KVM's single-pass order), in one step."""
        page = self._add(gpa, data)
        self.mrtd.add_measured_page(gpa, page)

    def _add(self, gpa: int, data: bytes) -> bytes:
        self._check_open("PAGE.ADD", gpa)
        if len(data) > PAGE_SIZE:
            raise BuildError(f"PAGE.ADD at GPA {gpa:#x}: {len(data)} bytes is more than a page")
        index = self.memory.page_index(gpa)
        if index is None:
            raise BuildError(f"PAGE.ADD at GPA {gpa:#x}: outside the TD's RAM regions")
        if self.memory.state[index] != PageState.NOT_PRESENT or self.memory.shared[index]:
            raise BuildError(f"PAGE.ADD at GPA {gpa:#x}: page already present")
        page = bytes(data).ljust(PAGE_SIZE, b"\0")
        self.memory.write(gpa, page)
        self.memory.set_state(gpa, PageState.MAPPED, LEVEL_4K)
        return page

    def mr_extend(self, gpa: int) -> None:
        """TDH.MR.EXTEND of one 256-byte chunk of an added page."""
        if self.td.finalized:
            raise BuildError(f"MR.EXTEND at GPA {gpa:#x}: the TD is already finalized")
        if gpa % MR_EXTEND_CHUNK or self.memory.page_state(gpa) != PageState.MAPPED:
            raise BuildError(f"MR.EXTEND at GPA {gpa:#x}: not a 256-byte chunk of an added page")
        self.mrtd.mr_extend(gpa, self.memory.read(gpa, MR_EXTEND_CHUNK))

    def extend_page(self, gpa: int) -> None:
        """The 16 MR.EXTENDs that measure a whole page, in chunk order."""
        if self.td.finalized:
            raise BuildError(f"MR.EXTEND at GPA {gpa:#x}: the TD is already finalized")
        if gpa % PAGE_SIZE or self.memory.page_state(gpa) != PageState.MAPPED:
            raise BuildError(f"MR.EXTEND at GPA {gpa:#x}: not an added page")
        self.mrtd.extend_page(gpa, self.memory.read(gpa, PAGE_SIZE))

    def page_aug(self, gpa: int, level: int = LEVEL_4K) -> None:
        """TDH.MEM.PAGE.AUG: a pending page (or 2M block) L1 must accept; not measured."""
        npages = PAGES_PER_2M if level == LEVEL_2M else 1
        if gpa % (PAGE_SIZE * npages):
            raise BuildError(f"PAGE.AUG at GPA {gpa:#x}: not aligned to its level {level}")
        for i in range(npages):
            if self.memory.page_state(gpa + i * PAGE_SIZE) != PageState.NOT_PRESENT:
                raise BuildError(f"PAGE.AUG at GPA {gpa + i * PAGE_SIZE:#x}: page already present")
        self.memory.set_range_state(gpa, npages, PageState.PENDING, level)

    def aug_rest(self) -> int:
        """AUG every RAM page not yet present: 2M blocks where a whole block is free, else 4K."""
        state, shared = self.memory.state, self.memory.shared
        count = 0
        for region in self.memory.regions:
            first, npages = region.offset // PAGE_SIZE, region.size // PAGE_SIZE
            i = 0
            while i < npages:
                index, gpa = first + i, region.gpa + i * PAGE_SIZE
                block = slice(index, index + PAGES_PER_2M)
                if (
                    gpa % HUGE_PAGE == 0
                    and i + PAGES_PER_2M <= npages
                    and not any(state[block])
                    and not any(shared[block])
                ):
                    self.memory.set_range_state(gpa, PAGES_PER_2M, PageState.PENDING, LEVEL_2M)
                    i += PAGES_PER_2M
                    count += PAGES_PER_2M
                    continue
                run = 0
                while (
                    i + run < npages
                    and not state[index + run]
                    and not shared[index + run]
                    and (run == 0 or (gpa + run * PAGE_SIZE) % HUGE_PAGE)
                ):
                    run += 1
                if run:
                    self.memory.set_range_state(gpa, run, PageState.PENDING, LEVEL_4K)
                    count += run
                i += max(run, 1)
        return count

    def _free(self, gpa: int) -> bool:
        """Neither a private page nor a host-shared one."""
        index = self.memory.page_index(gpa)
        return (
            index is not None
            and self.memory.state[index] == PageState.NOT_PRESENT
            and not self.memory.shared[index]
        )

    def add_vcpu(self) -> int:
        """TDH.VP.CREATE/INIT: returns the new vCPU index."""
        if self.td.finalized:
            raise BuildError("add vCPU: the TD is already finalized")
        return self.td.add_vcpu().index

    def finalize(self) -> TdxModule:
        """TDH.MR.FINALIZE: fix MRTD; afterwards only AUG changes memory."""
        if not self.td.vcpus:
            raise BuildError("finalize: the TD has no vCPU")
        # MRTD is SHA-384 over the extension blocks; a TD with none hashes the empty string.
        self.td.mrtd = self.mrtd.digest() if self._mrtd else hashlib.sha384().digest()
        self.td.finalized = True
        return self.module
