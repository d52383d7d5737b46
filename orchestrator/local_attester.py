"""The local backend's vTPM attester: TDG.MR.REPORT on a simulated TD, then its quoting service.

Until the L1 paravisor (`svsm/`) exists, the host process plays L1's attestation step: it issues
the same register-level TDCALLs L1 will issue (MR.RTMR.EXTEND for the separators, MR.REPORT with
REPORTDATA) on the simulated module, and turns the TDREPORT into a quote with tdxsim's simulated
quoting service. Every quote it returns chains to the tdxsim simulation root, never to Intel.
"""

from __future__ import annotations

import hashlib

from tdxsim.abi import PAGE_SIZE, Leaf, is_error
from tdxsim.interfaces import Regs
from tdxsim.memory import PageState
from tdxsim.module import TdxModule
from tdxsim.quoting import QuotingService
from vtpm.attest import cc_event_log_separators

TDREPORT_SIZE = 1024
REPORTDATA_SIZE = 64
SHA384_SIZE = 48
RTMR_COUNT = 4
SEPARATOR = b"\0\0\0\0"
LEVEL_4K = 0
# Offsets inside the attester's scratch page: TDREPORT (1024-aligned), REPORTDATA and the RTMR
# digest (64-aligned), as TDG.MR.REPORT and TDG.MR.RTMR.EXTEND require.
TDREPORT_OFFSET, REPORTDATA_OFFSET, DIGEST_OFFSET = 0, 1024, 1088


class LocalAttestationError(RuntimeError):
    """A TDCALL of the attestation step failed; names the leaf and the status."""


def separator_events() -> list[tuple[int, bytes]]:
    """The (RTMR index, digest) events this attester extends: a SEPARATOR into RTMR0..3."""
    digest = hashlib.sha384(SEPARATOR).digest()
    return [(index, digest) for index in range(RTMR_COUNT)]


class SimulatedTdAttester:
    """`vtpm.attest.Attester` backed by a simulated TD: its quotes are labelled simulated."""

    name = "tdxsim"
    simulated = True

    def __init__(self, module: TdxModule, quoting: QuotingService) -> None:
        self._module = module
        self._quoting = quoting
        self._scratch = self._accept_scratch_page()
        self._extended = False

    def _tdcall(self, leaf: Leaf, **regs: int) -> Regs:
        out = self._module.tdcall(Regs(rax=leaf, **regs))
        if is_error(out.rax):
            raise LocalAttestationError(f"TDCALL {leaf.name} returned status {out.rax:#018x}")
        return out

    def _accept_scratch_page(self) -> int:
        """Accept the first pending private page of the TD, as L1 accepts memory it uses."""
        memory = self._module.memory
        for index, state in enumerate(memory.state):
            if state == PageState.PENDING and not memory.shared[index]:
                gpa = memory.page_gpa(index)
                self._tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=gpa | LEVEL_4K)
                return gpa
        raise LocalAttestationError("the TD has no pending private page left for attestation")

    def _extend_separators(self) -> None:
        for index, digest in separator_events():
            self._module.memory.write(self._scratch + DIGEST_OFFSET, digest)
            self._tdcall(Leaf.MR_RTMR_EXTEND, rcx=self._scratch + DIGEST_OFFSET, rdx=index)
        self._extended = True

    def quote(self, report_data: bytes) -> bytes:
        """A simulated TD quote over `report_data` (64 bytes)."""
        if len(report_data) != REPORTDATA_SIZE:
            raise LocalAttestationError(f"REPORTDATA is {len(report_data)} bytes, must be 64")
        if not self._extended:
            self._extend_separators()
        memory = self._module.memory
        memory.write(self._scratch + REPORTDATA_OFFSET, report_data)
        self._tdcall(
            Leaf.MR_REPORT,
            rcx=self._scratch + TDREPORT_OFFSET,
            rdx=self._scratch + REPORTDATA_OFFSET,
            r8=0,
        )
        return self._quoting.quote(memory.read(self._scratch + TDREPORT_OFFSET, TDREPORT_SIZE))

    def event_log(self) -> bytes:
        """The CC event log of the separators extended into RTMR0..3."""
        return cc_event_log_separators()


assert TDREPORT_OFFSET % TDREPORT_SIZE == 0 and DIGEST_OFFSET + SHA384_SIZE <= PAGE_SIZE
