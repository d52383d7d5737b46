"""Test harness: build a TD on the simulated module and act as its L1, in-process.

The L1 paravisor is tested through this. A test builds a TD, issues raw
TDCALLs with register values, reads and writes L1 memory (a pending page refuses, as a #VE
would), and places L2 code at a GPA::

    from tdxdefs.tdcall import Leaf
    from tdxdefs.vmcs import ExitReason
    from tdxsim.testing import TdHarness, assemble

    h = TdHarness.default(ram_mib=8, num_l2_vms=1)   # all RAM pending; L1 accepts what it uses
    r = h.tdcall(Leaf.VP_INFO)                        # -> Regs; r.rax is the status, r.rcx GPAW
    h.accept(0, 0x400000)                             # TDG.MEM.PAGE.ACCEPT (2M where mapped 2M)
    h.write(0x100000, b"hello")                       # L1 memory (pending pages raise)
    l2 = h.l2(vm=1)                                   # vAPIC page, guest-state block, flat GDT
    l2.load(0x200000, assemble("cpuid", 0x200000))    # code plus an R|W|Xs alias for VM1
    ex = l2.enter(rip=0x200000)                       # TDG.VP.ENTER until the next L2 exit
    assert ex.reason == ExitReason.CPUID and ex.instr_len == 2
    l2.skip(ex)                                       # L1 advances L2's RIP, then enters again

`TdHarness.from_igvm(path)` builds from an IGVM file in directive order instead (rest of RAM
pending). `h.module`, `h.td` and `h.memory` expose the model for assertions.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tdxdefs.attributes import ATTR_R, ATTR_VALID, ATTR_W, ATTR_XS, pack_attr
from tdxdefs.guest_state import L2_ENTER_GUEST_STATE_SIZE, L2EnterGuestState
from tdxdefs.metadata import (
    ELEM_SIZE_64,
    ELEM_SIZE_OF_WIDTH,
    l2_ctls_field_id,
    l2_vmcs_field_id,
    msr_bitmap_field_id,
)
from tdxdefs.tdcall import (
    GPR_COUNT,
    LEVEL_2M,
    LEVEL_4K,
    PAGE_SIZE,
    STATUS_DETAILS_MASK,
    TDX_SUCCESS,
    VM_INDEX_SHIFT,
    Leaf,
    is_error,
)
from tdxdefs.vmcs import (
    EPTV_READ,
    EPTV_WRITE,
    MSR_BITMAP_READ_LOW,
    MSR_BITMAP_WRITE_LOW,
    ExitReason,
    Vmcs,
    pack_intr_status,
    unpack_intr_status,
    width_of,
)
from tdxdefs.x86 import GDT_CODE64, GDT_DATA, GDT_FLAT_LIMIT, SELECTOR_CODE, SELECTOR_DATA
from tdxsim.errors import TdxsimError
from tdxsim.l2.vcpu import DEFAULT_INSTRUCTION_BUDGET
from tdxsim.module.attestation_interface import AttestationInterface
from tdxsim.module.build import Accumulator, TdBuilder, TdConfig
from tdxsim.module.dispatch import TdxModule
from tdxsim.module.host_interface import HostInterface
from tdxsim.module.memory import PAGES_PER_2M, PageState
from tdxsim.module.registers import Regs
from tdxsim.module.td_state import VeInfo

MIB = 1 << 20
BITS_PER_BYTE = 8
QWORD_BITS = 64
GUEST_STATE = L2EnterGuestState.STRUCT
RFLAGS_AT, RIP_AT, INTR_STATUS_AT = (
    L2EnterGuestState.index(name) for name in ("rflags", "rip", "guest_interrupt_status")
)
ALL_ONES = (1 << 64) - 1
RWX = ATTR_R | ATTR_W | ATTR_XS | ATTR_VALID
ATTR_MASK_RWX = ATTR_R | ATTR_W | ATTR_XS
SEL_CODE, SEL_DATA = SELECTOR_CODE, SELECTOR_DATA
GDT_LIMIT = GDT_FLAT_LIMIT


class TdcallFailed(TdxsimError, AssertionError):
    """A harness convenience call got an error status (names the leaf and the status)."""


class PendingPageAccess(TdxsimError):
    """L1 touched a page it has not accepted: on hardware a #VE (EPT violation, pending)."""

    def __init__(self, gpa: int) -> None:
        super().__init__(f"L1 access to GPA {gpa:#x}: page is pending (not accepted); #VE")
        self.gpa = gpa


class UnmappedPageAccess(TdxsimError):
    """L1 touched a private GPA the host never added: on hardware a TD exit to the host."""

    def __init__(self, gpa: int) -> None:
        super().__init__(f"L1 access to GPA {gpa:#x}: no page present there")
        self.gpa = gpa


def assemble(source: str, base: int = 0) -> bytes:
    """Assemble x86-64 (GNU as, Intel syntax) into flat bytes linked at `base`."""
    if shutil.which("as") is None or shutil.which("objcopy") is None:
        raise RuntimeError("assemble needs binutils (as, ld, objcopy) on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "a.s").write_text(".intel_syntax noprefix\n.code64\n" + source + "\n")
        steps = (
            ["as", "-o", str(d / "a.o"), str(d / "a.s")],
            ["ld", "-o", str(d / "a.elf"), "-Ttext", hex(base), "-e", hex(base), str(d / "a.o")],
            ["objcopy", "-O", "binary", "-j", ".text", str(d / "a.elf"), str(d / "a.bin")],
        )
        for cmd in steps:
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{cmd[0]} failed on the L2 blob:\n{done.stderr}")
        return (d / "a.bin").read_bytes()


@dataclass
class L2Exit:
    """One TDG.VP.ENTER result: the raw registers plus decoded fields and the L2 state after it."""

    regs: Regs
    guest: Regs
    rflags: int
    rip: int
    rvi: int
    svi: int

    @property
    def status(self) -> int:
        return self.regs.rax & ~STATUS_DETAILS_MASK

    @property
    def reason(self) -> int:
        return self.regs.rax & STATUS_DETAILS_MASK

    @property
    def qualification(self) -> int:
        return self.regs.rcx

    @property
    def gla(self) -> int:
        return self.regs.rdx

    @property
    def gpa(self) -> int:
        return self.regs.r8

    @property
    def instr_len(self) -> int:
        return self.regs.r11 >> 32

    @property
    def eeq(self) -> int:
        return self.regs.r13


@dataclass
class L2Context:
    """An L2 VM of one vCPU prepared for entry: its vAPIC page and guest-state block."""

    harness: TdHarness
    vm: int
    vcpu: int
    vapic_gpa: int
    state_gpa: int
    gdt_gpa: int
    regs: Regs = field(default_factory=Regs)
    rflags: int = 0x2
    rip: int = 0
    rvi: int = 0
    svi: int = 0

    def load(self, gpa: int, code: bytes, attrs: int = RWX) -> None:
        """Write `code` at `gpa` (L1 memory) and give this VM an alias with `attrs` on its pages."""
        self.harness.write(gpa, code)
        first = gpa & ~(PAGE_SIZE - 1)
        for page in range(first, gpa + max(len(code), 1), PAGE_SIZE):
            self.harness.set_alias(self.vm, page, attrs)

    def vmcs_write(self, encoding: int, value: int, mask: int = ALL_ONES) -> Regs:
        """TDG.VP.WR of one L2 VMCS field of this VM."""
        return self.harness.vp_write(self.vm_field(encoding), value, mask, vcpu=self.vcpu)

    def vmcs_read(self, encoding: int) -> int:
        """TDG.VP.RD of one L2 VMCS field of this VM."""
        return self.harness.vp_read(self.vm_field(encoding), vcpu=self.vcpu)

    def vm_field(self, encoding: int) -> int:
        """Field id of a VMCS field of this VM."""
        return l2_vmcs_field_id(self.vm, encoding, ELEM_SIZE_OF_WIDTH[width_of(encoding)])

    def allow_msr(self, msr: int, read: bool = True, write: bool = True) -> None:
        """Clear the MSR-bitmap bits so RDMSR/WRMSR of `msr` do not exit (low MSRs only)."""
        for base, wanted in ((MSR_BITMAP_READ_LOW, read), (MSR_BITMAP_WRITE_LOW, write)):
            if not wanted:
                continue
            bit = base * BITS_PER_BYTE + msr
            qword, shift = divmod(bit, QWORD_BITS)
            fid = msr_bitmap_field_id(self.vm, qword)
            self.harness.vp_write(fid, 0, 1 << shift, vcpu=self.vcpu)

    def enter(
        self, rip: int | None = None, rsp: int | None = None, flags: int = 0, **gprs: int
    ) -> L2Exit:
        """Write the guest-state block, TDG.VP.ENTER, read back the block; returns the exit."""
        if rip is not None:
            self.rip = rip
        if rsp is not None:
            self.regs.rsp = rsp
        for name, value in gprs.items():
            if name == "rflags":
                self.rflags = value
            else:
                setattr(self.regs, name, value)
        block = GUEST_STATE.pack(  # the layout's compiled struct: enter() is benchmarked
            *self.regs.as_list(), self.rflags, self.rip, 0, pack_intr_status(self.rvi, self.svi)
        )
        self.harness.memory.write(self.state_gpa, block.ljust(L2_ENTER_GUEST_STATE_SIZE, b"\0"))
        rcx = (self.vm << VM_INDEX_SHIFT) | flags
        out = self.harness.tdcall(Leaf.VP_ENTER, rcx=rcx, rdx=self.state_gpa, vcpu=self.vcpu)
        values = GUEST_STATE.unpack_from(self.harness.memory.read(self.state_gpa, GUEST_STATE.size))
        self.regs = Regs.from_list(list(values[:GPR_COUNT]))
        self.rflags, self.rip = values[RFLAGS_AT], values[RIP_AT]
        self.rvi, self.svi = unpack_intr_status(values[INTR_STATUS_AT])
        return L2Exit(out, self.regs.copy(), self.rflags, self.rip, self.rvi, self.svi)

    def skip(self, exit_: L2Exit) -> None:
        """Advance L2's RIP past the exiting instruction (L1's job after handling it)."""
        self.rip += exit_.instr_len


class TdHarness:
    """A built TD with the test acting as its L1."""

    def __init__(self, builder: TdBuilder, module: TdxModule) -> None:
        self.builder = builder
        self.module = module
        self.td = module.td
        self.memory = module.memory
        self._l2: dict[tuple[int, int], L2Context] = {}
        self._scratch = 0

    @classmethod
    def default(
        cls,
        ram_mib: int = 16,
        num_l2_vms: int = 1,
        vcpus: int = 1,
        *,
        attributes: int = 0,
        xfam: int = 0,
        gpaw: int = 48,
        host: HostInterface | None = None,
        attestation: AttestationInterface | None = None,
        instruction_budget: int = DEFAULT_INSTRUCTION_BUDGET,
        accumulator: Accumulator | None = None,
        extra_ram: tuple[tuple[int, int], ...] = (),
    ) -> TdHarness:
        """A TD with `ram_mib` MiB of RAM at GPA 0 (and any `extra_ram` regions), all pending."""
        config = TdConfig(
            ram=[(0, ram_mib * MIB), *extra_ram],
            attributes=attributes,
            xfam=xfam,
            num_l2_vms=num_l2_vms,
            max_vcpus=vcpus,
            gpaw=gpaw,
        )
        builder = TdBuilder(
            config,
            host,
            attestation,
            strict=True,
            instruction_budget=instruction_budget,
            accumulator=accumulator,
        )
        for _ in range(vcpus):
            builder.add_vcpu()
        builder.aug_rest()
        return cls(builder, builder.finalize())

    @classmethod
    def from_igvm(
        cls,
        path: str | Path,
        ram: list[tuple[int, int]] | None = None,
        num_l2_vms: int = 1,
        vcpus: int = 1,
        *,
        host: HostInterface | None = None,
        attestation: AttestationInterface | None = None,
        instruction_budget: int = DEFAULT_INSTRUCTION_BUDGET,
    ) -> TdHarness:
        """A TD built from an IGVM file in directive order; the rest of RAM pending."""
        from tdxsim.host.igvm_loader import load_igvm

        builder = load_igvm(
            path,
            ram=ram,
            num_l2_vms=num_l2_vms,
            vcpus=vcpus,
            host=host,
            attestation=attestation,
            strict=True,
            instruction_budget=instruction_budget,
        )
        return cls(builder, builder.finalize())

    # --- raw TDCALL -------------------------------------------------------------------------
    def tdcall(self, rax: int, vcpu: int = 0, **regs: int) -> Regs:
        """Issue one TDCALL as L1 with the given registers; returns every register after it."""
        return self.module.tdcall(Regs(rax=rax, **regs), vcpu)

    def ok(self, rax: int, vcpu: int = 0, **regs: int) -> Regs:
        """Like tdcall, but raise TdcallFailed unless the status is a success."""
        out = self.tdcall(rax, vcpu, **regs)
        if is_error(out.rax):
            raise TdcallFailed(f"TDCALL leaf {rax} with {regs} returned status {out.rax:#x}")
        return out

    # --- memory as L1 sees it ------------------------------------------------------------------
    def _check_l1(self, gpa: int, length: int, write: bool) -> None:
        if self.memory.is_shared(gpa):
            for page in range(gpa & ~(PAGE_SIZE - 1), gpa + max(length, 1), PAGE_SIZE):
                index = self.memory.page_index(page)
                if index is None or not self.memory.shared[index]:
                    raise UnmappedPageAccess(max(page, gpa))
            return
        for page in range(gpa & ~(PAGE_SIZE - 1), gpa + max(length, 1), PAGE_SIZE):
            state = self.memory.page_state(page)
            if state == PageState.PENDING:
                qual = EPTV_WRITE if write else EPTV_READ
                self.td.vcpus[0].ve_info = VeInfo(
                    ExitReason.EPT_VIOLATION, qual, max(page, gpa), max(page, gpa)
                )
                raise PendingPageAccess(max(page, gpa))
            if state != PageState.MAPPED:
                raise UnmappedPageAccess(max(page, gpa))

    def read(self, gpa: int, length: int) -> bytes:
        """Read L1 memory (private, or shared with the shared bit); pending pages raise
        PendingPageAccess (and set #VE info), absent ones UnmappedPageAccess."""
        self._check_l1(gpa, length, write=False)
        return self.memory.read(gpa, length)

    def write(self, gpa: int, data: bytes) -> None:
        """Write L1 memory; the same rules as `read`."""
        self._check_l1(gpa, len(data), write=True)
        self.memory.write(gpa, data)

    def accept(self, gpa: int, size: int = PAGE_SIZE) -> None:
        """TDG.MEM.PAGE.ACCEPT over [gpa, gpa+size): 2M where the host mapped 2M, else 4K."""
        end = gpa + size
        while gpa < end:
            huge = PAGE_SIZE * PAGES_PER_2M
            level = LEVEL_2M if self.memory.page_level(gpa) == LEVEL_2M else LEVEL_4K
            if level == LEVEL_2M and gpa % huge == 0:
                out = self.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=gpa | LEVEL_2M)
                if is_error(out.rax):
                    raise TdcallFailed(f"ACCEPT 2M {gpa:#x} returned {out.rax:#x}")
                gpa += huge
                continue
            if level == LEVEL_2M:
                raise TdcallFailed(f"GPA {gpa:#x} is inside a 2M mapping; accept its 2M base")
            out = self.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=gpa)
            if is_error(out.rax):
                raise TdcallFailed(f"ACCEPT {gpa:#x} returned {out.rax:#x}")
            gpa += PAGE_SIZE

    def set_alias(self, vm: int, gpa: int, attrs: int, mask: int = ATTR_MASK_RWX) -> Regs:
        """TDG.MEM.PAGE.ATTR.WR of one 4K page for one VM; attrs=ATTR_VALID alone removes it."""
        return self.ok(
            Leaf.MEM_PAGE_ATTR_WR,
            rcx=gpa & ~(PAGE_SIZE - 1),
            rdx=pack_attr({vm: attrs}),
            r8=pack_attr({vm: mask}),
        )

    def vp_write(self, field_id: int, value: int, mask: int = ALL_ONES, vcpu: int = 0) -> Regs:
        """TDG.VP.WR (raises TdcallFailed on error)."""
        return self.ok(Leaf.VP_WR, vcpu, rdx=field_id, r8=value, r9=mask)

    def vp_read(self, field_id: int, vcpu: int = 0) -> int:
        """TDG.VP.RD value (raises TdcallFailed on error)."""
        return self.ok(Leaf.VP_RD, vcpu, rdx=field_id).r8

    def set_l2_ctls(self, vm: int, value: int, vcpu: int = 0) -> None:
        """TDG.VP.WR of L2_CTLS[vm]."""
        self.vp_write(l2_ctls_field_id(vm), value, vcpu=vcpu)

    # --- L2 setup ------------------------------------------------------------------------------
    def scratch_page(self) -> int:
        """An accepted L1-private page from the top of the first region (no L2 alias)."""
        region = self.memory.regions[0]
        self._scratch += 1
        gpa = region.end - self._scratch * PAGE_SIZE
        if self.memory.page_state(gpa) == PageState.PENDING:
            self.accept(gpa & ~(PAGE_SIZE * PAGES_PER_2M - 1), PAGE_SIZE * PAGES_PER_2M)
        return gpa

    def l2(self, vm: int = 1, vcpu: int = 0) -> L2Context:
        """Prepare (once) an L2 VM for entry: vAPIC page, guest-state block, flat 64-bit GDT."""
        key = (vcpu, vm)
        if key in self._l2:
            return self._l2[key]
        vapic, state, gdt = self.scratch_page(), self.scratch_page(), self.scratch_page()
        ctx = L2Context(self, vm, vcpu, vapic, state, gdt)
        ctx.vmcs_write(Vmcs.VIRTUAL_APIC_PAGE_ADDR, vapic)
        gdt_bytes = b"".join(v.to_bytes(8, "little") for v in (0, GDT_CODE64, GDT_DATA))
        self.write(gdt, gdt_bytes)
        self.set_alias(vm, gdt, ATTR_R | ATTR_VALID)
        ctx.vmcs_write(Vmcs.GUEST_GDTR_BASE, gdt)
        ctx.vmcs_write(Vmcs.GUEST_GDTR_LIMIT, GDT_LIMIT)
        ctx.vmcs_write(Vmcs.GUEST_CS_SELECTOR, SEL_CODE)
        ctx.vmcs_write(Vmcs.GUEST_SS_SELECTOR, SEL_DATA)
        self._l2[key] = ctx
        return ctx

    def status_ok(self, out: Regs) -> bool:
        """True if RAX holds TDX_SUCCESS exactly."""
        return out.rax == TDX_SUCCESS


__all__ = [
    "ELEM_SIZE_64",
    "RWX",
    "L2Context",
    "L2Exit",
    "PendingPageAccess",
    "TdHarness",
    "TdcallFailed",
    "UnmappedPageAccess",
    "assemble",
]
