"""A TD in one process with the test acting as L1 and an in-process `HostVmm` as its host, for
tests of the host's GHCI services (Intel TDX Guest-Hypervisor Communication Interface), fault
injection and host isolation."""

from __future__ import annotations

from tdxdefs.tdcall import TDX_SUCCESS, Leaf
from tdxdefs.tdvmcall import TDVMCALL_RETRY, TDVMCALL_SUCCESS, Tdvmcall
from tdxsim.attestation.quoting import (
    GET_QUOTE_DEFAULT_BUFFER_SIZE,
    SimulatedAttestation,
    encode_get_quote_request,
)
from tdxsim.host.faults import FaultSet
from tdxsim.host.services import HostVmm, ModuleControl
from tdxsim.host.shared_memory import SharedMemory
from tdxsim.module.registers import Regs
from tdxsim.testing import TdHarness

SEED = b"test_host seed"
EXPOSE_R10_R15 = 0xFC00
SHARED_BIT = 1 << 47
BUF = 0x100000  # two pages L1 converts to shared for GetQuote
REPORT = 0x110000
REPORTDATA = 0x111000
ATTESTATION = SimulatedAttestation.create(SEED)


class HostTd:
    """A TD with the test as L1 and a `HostVmm` as its host, in one process."""

    def __init__(
        self, faults: FaultSet | None = None, *, chunk: int = 512, harness: TdHarness | None = None
    ) -> None:
        self.h = harness if harness is not None else TdHarness.default(ram_mib=4, num_l2_vms=1)
        if harness is None:
            self.h.accept(0, 0x200000)
        self.att = ATTESTATION
        self.h.module.attestation = self.att.reports
        self.shared = SharedMemory.of_memory(self.h.memory)
        self.host = HostVmm(
            self.shared,
            ModuleControl(self.h.module),
            self.att.quoting,
            faults,
            mapgpa_chunk_pages=chunk,
        )
        self.h.module.host = self.host

    def vmcall(self, sub: int, *, r10: int = 0, **regs: int) -> Regs:
        """TDG.VP.VMCALL exposing R10..R15; the TDCALL itself must succeed."""
        out = self.h.tdcall(Leaf.VP_VMCALL, rcx=EXPOSE_R10_R15, r10=r10, r11=sub, **regs)
        assert out.rax == TDX_SUCCESS
        return out

    def map_shared(self, gpa: int, length: int) -> None:
        """MapGPA to shared until done (L1's retry loop)."""
        start = gpa | SHARED_BIT
        end = start + length
        while True:
            out = self.vmcall(Tdvmcall.MAP_GPA, r12=start, r13=end - start)
            if out.r10 == TDVMCALL_SUCCESS:
                return
            assert out.r10 == TDVMCALL_RETRY
            start = out.r11

    def quote_request(self, report_data: bytes = b"\x42" * 64) -> bytes:
        """MR.REPORT into private memory, then the GetQuote request bytes in the shared buffer."""
        self.h.write(REPORTDATA, report_data)
        self.h.ok(Leaf.MR_REPORT, rcx=REPORT, rdx=REPORTDATA)
        request = encode_get_quote_request(self.h.read(REPORT, 1024))
        self.map_shared(BUF, GET_QUOTE_DEFAULT_BUFFER_SIZE)
        self.h.write(BUF | SHARED_BIT, request)
        return request

    def get_quote(self) -> Regs:
        return self.vmcall(
            Tdvmcall.GET_QUOTE, r12=BUF | SHARED_BIT, r13=GET_QUOTE_DEFAULT_BUFFER_SIZE
        )

    def buffer(self) -> bytes:
        return self.h.read(BUF | SHARED_BIT, GET_QUOTE_DEFAULT_BUFFER_SIZE)
