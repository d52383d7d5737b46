"""Host-side TD build operations: create, PAGE.ADD, MR.EXTEND, PAGE.AUG, finalize, add vCPU.

These are the SEAMCALLs the host VMM issues before the TD runs (TDH.MNG.CREATE/INIT,
TDH.MEM.PAGE.ADD, TDH.MR.EXTEND, TDH.MEM.PAGE.AUG, TDH.MR.FINALIZE, TDH.VP.CREATE). MRTD is
accumulated with `igvm.measure.MrtdAccumulator`, so the build and the offline prediction share one
definition of the 128-byte extension blocks (Intel TDX Module Base Architecture Specification,
MRTD measurement by TDH.MEM.PAGE.ADD and TDH.MR.EXTEND).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tdxdefs.tdcall import GPAW_48, LEVEL_2M, LEVEL_4K, PAGE_SIZE
from tdxsim.errors import TdxsimError
from tdxsim.module.attestation_interface import AttestationInterface
from tdxsim.module.dispatch import TdxModule
from tdxsim.module.host_interface import HostInterface
from tdxsim.module.memory import PAGES_PER_2M, PageState, TdMemory
from tdxsim.module.td_state import TdState

MR_EXTEND_CHUNK = 256
HUGE_PAGE = PAGE_SIZE * PAGES_PER_2M
FREE_RUN = re.compile(rb"\0+")  # a run of free pages in a page map


class BuildError(TdxsimError):
    """A host build operation the module refuses (names the operation and the GPA)."""


class Accumulator(Protocol):
    """The MRTD accumulator interface of igvm.measure."""

    def page_add(self, gpa: int) -> None: ...
    def mr_extend(self, gpa: int, chunk: bytes) -> None: ...
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
        self.add_page_run(gpa, (data,), measured=False)

    def add_measured_page(self, gpa: int, data: bytes) -> None:
        """PAGE.ADD followed by the page's 16 MR.EXTENDs (KVM's single-pass order), in one step."""
        self.add_page_run(gpa, (data,), measured=True)

    def add_page_run(self, gpa: int, pages: Sequence[bytes], *, measured: bool) -> None:
        """PAGE.ADD of consecutive pages from `gpa`, each with its 16 MR.EXTENDs if `measured`.

        The same as one page_add/add_measured_page per page in order (a refused page raises after
        the ones before it were added), with one copy and one SEPT update per contiguous run.
        """
        while pages:
            count = self._addable(gpa, pages)
            if count == 0:
                raise self._refusal(gpa, pages[0])
            run = [
                page if len(page) == PAGE_SIZE else bytes(page).ljust(PAGE_SIZE, b"\0")
                for page in pages[:count]
            ]
            self.memory.write_pages(gpa, run)
            self.memory.set_range_state(gpa, count, PageState.MAPPED, LEVEL_4K)
            mrtd = self.mrtd
            if measured:
                for i, page in enumerate(run):
                    mrtd.add_measured_page(gpa + i * PAGE_SIZE, page)
            else:
                for i in range(count):
                    mrtd.page_add(gpa + i * PAGE_SIZE)
            gpa += count * PAGE_SIZE
            pages = pages[count:]

    def _addable(self, gpa: int, pages: Sequence[bytes]) -> int:
        """How many of `pages` from `gpa` PAGE.ADD accepts as one run inside one region."""
        memory = self.memory
        region = memory.region_of(gpa)
        if self.td.finalized or gpa % PAGE_SIZE or memory.is_shared(gpa) or region is None:
            return 0
        first = region.offset // PAGE_SIZE + (gpa - region.gpa) // PAGE_SIZE
        count = min(len(pages), (region.end - gpa) // PAGE_SIZE)
        free = bytes(count)
        if (
            memory.state[first : first + count] == free
            and memory.shared[first : first + count] == free
            and max(map(len, pages[:count])) <= PAGE_SIZE
        ):
            return count
        for i in range(count):  # find the first page to refuse
            if memory.state[first + i] or memory.shared[first + i] or len(pages[i]) > PAGE_SIZE:
                return i
        return count

    def _refusal(self, gpa: int, data: bytes) -> BuildError:
        """Why PAGE.ADD of `data` at `gpa` is refused."""
        self._check_open("PAGE.ADD", gpa)
        if len(data) > PAGE_SIZE:
            return BuildError(f"PAGE.ADD at GPA {gpa:#x}: {len(data)} bytes is more than a page")
        if self.memory.page_index(gpa) is None:
            return BuildError(f"PAGE.ADD at GPA {gpa:#x}: outside the TD's RAM regions")
        return BuildError(f"PAGE.ADD at GPA {gpa:#x}: page already present")

    def mr_extend(self, gpa: int) -> None:
        """TDH.MR.EXTEND of one 256-byte chunk of an added page."""
        if self.td.finalized:
            raise BuildError(f"MR.EXTEND at GPA {gpa:#x}: the TD is already finalized")
        if (
            gpa % MR_EXTEND_CHUNK
            or self.memory.is_shared(gpa)
            or self.memory.page_state(gpa) != PageState.MAPPED
        ):
            raise BuildError(f"MR.EXTEND at GPA {gpa:#x}: not a 256-byte chunk of an added page")
        self.mrtd.mr_extend(gpa, self.memory.read(gpa, MR_EXTEND_CHUNK))

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
        memory = self.memory
        count = 0
        for region in memory.regions:
            gpa = region.gpa
            while gpa < region.end:
                end = min((gpa // HUGE_PAGE + 1) * HUGE_PAGE, region.end)  # next 2M boundary
                first = (region.offset + gpa - region.gpa) // PAGE_SIZE
                npages = (end - gpa) // PAGE_SIZE
                span = slice(first, first + npages)
                # Byte-wise OR of the state and shared bytes (values < 0x80, so no carries):
                # zero exactly where a page is free.
                busy = int.from_bytes(memory.state[span], "little") | int.from_bytes(
                    memory.shared[span], "little"
                )
                if not busy and npages == PAGES_PER_2M:
                    memory.set_range_state(gpa, npages, PageState.PENDING, LEVEL_2M)
                    count += npages
                else:
                    for free in FREE_RUN.finditer(busy.to_bytes(npages, "little")):
                        start, run = free.start(), free.end() - free.start()
                        memory.set_range_state(
                            gpa + start * PAGE_SIZE, run, PageState.PENDING, LEVEL_4K
                        )
                        count += run
                gpa = end
        return count

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
