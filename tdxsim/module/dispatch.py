"""The simulated TDX 1.5 module: the TDCALL dispatcher L1 talks to.

Leaves, operands and completion statuses: Intel TDX Module v1.5 ABI Specification (TDCALL leaves);
the L2 leaves and rules: Intel TDX Module TD Partitioning Architecture Specification.

`TdxModule.tdcall(regs, vcpu=0) -> Regs` takes the leaf in RAX and operands in the other GPRs and
returns every register as the module leaves it, status in RAX. Bad operands produce the exact status
the TDX module source returns, with the operand id in RAX[31:0]; no Python exception escapes (an
internal error is recorded in `internal_errors` and reported as TDX_OPERAND_INVALID naming RAX,
unless `strict` asks for it to be raised, which tests do).

Simulator choices, documented: a TDCALL that on hardware would cause a TD exit the host must
service (ACCEPT or ATTR.WR on a page the host has not mapped) calls `HostInterface.td_exit`; if the
host fixes the cause the leaf is retried once, otherwise the call returns TDX_OPERAND_INVALID
naming the GPA operand instead of spinning forever. ATTR.WR at 4K inside a 2M mapping demotes the
mapping (the host's job on hardware, transparent to L1). Only leaf version 0 is supported.
L2 SEPT paging pages are not modelled, so TDX_L2_SEPT_WALK_FAILED never occurs.

Host-side operations on a running TD (the host VMM calls these): `post_l1_interrupt`,
`host_convert_to_shared` / `host_convert_to_private` (MapGPA), `host_block` / `host_unblock`.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Sequence

from tdxdefs.guest_state import L2_ENTER_GUEST_STATE_ALIGN
from tdxdefs.metadata import (
    ELEM_SIZE_OF_WIDTH,
    FIELD_CODE_MASK,
    FIELD_ELEM_SIZE_MASK,
    FIELD_ELEM_SIZE_SHIFT,
    NO_NEXT_FIELD,
    NOTIFY_ENABLES_FIELD,
    NUM_L2_VMS_FIELD,
)
from tdxdefs.tdcall import (
    BYTE_MASK,
    CPL_MASK,
    GLA_LIST_INFO_FIRST_ENTRY_MASK,
    GLA_LIST_INFO_NUM_MASK,
    GLA_LIST_INFO_NUM_SHIFT,
    GLA_LIST_MAX_ENTRIES,
    GPA_MAPPING_PENDING,
    GPA_MAPPING_RESERVED,
    GPA_PAGE_MASK,
    INVVPID_LIST,
    INVVPID_RESERVED,
    LEAF_MASK,
    LEAF_VERSION_MASK,
    LEAF_VERSION_SHIFT,
    LEVEL_1G,
    LEVEL_2M,
    LEVEL_4K,
    LEVEL_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    REPORTDATA_ALIGN,
    REPORTDATA_SIZE,
    RTMR_COUNT,
    RTMR_EXTEND_ALIGN,
    SHA384_SIZE,
    TDREPORT_ALIGN,
    TDREPORT_SIZE,
    TDX_GLA_NOT_CANONICAL,
    TDX_METADATA_FIELD_ID_INCORRECT,
    TDX_METADATA_FIELD_NOT_WRITABLE,
    TDX_METADATA_FIELD_VALUE_NOT_VALID,
    TDX_NO_VALID_VE_INFO,
    TDX_OPERAND_INVALID,
    TDX_PAGE_ALREADY_ACCEPTED,
    TDX_PAGE_ATTR_INVALID,
    TDX_PAGE_SIZE_MISMATCH,
    TDX_PENDING_INTERRUPT,
    TDX_SUCCESS,
    VM_INDEX_MASK,
    VM_INDEX_SHIFT,
    VP_ENTER_INVD_MASK,
    VP_ENTER_RESERVED,
    VP_INFO_GPAW_MASK,
    Leaf,
    OperandId,
    pack_cs_info,
    pack_u32_pair,
)
from tdxdefs.vmcs import EEQ_ACCEPT, EEQ_ATTR_WR, Vmcs, width_of
from tdxsim.errors import TdxsimError
from tdxsim.l2.vcpu import DEFAULT_INSTRUCTION_BUDGET, L2Vcpu
from tdxsim.module.attestation_interface import AttestationInterface
from tdxsim.module.host_interface import HostInterface, NullHost, TdExit, TdExitKind
from tdxsim.module.memory import PAGES_PER_2M, PageState, TdMemory
from tdxsim.module.registers import GPR_NAMES, Regs
from tdxsim.module.sept import AliasTable, check_attr_operands
from tdxsim.module.td_state import TdState, VcpuState
from tdxsim.module.vmcs import (
    FIELD_CACHE_SIZE,
    KNOWN,
    READ_ONLY,
    VALUE_MASK_OF_WIDTH,
    FieldKind,
    decode_vp_field,
    is_guest_state,
    l2_ctls_valid,
)

U64 = (1 << 64) - 1
MAPPED = PageState.MAPPED
# VMCS fields read on every VP.ENTER (an enum member costs a class lookup)
VIRTUAL_APIC_PAGE_ADDR = Vmcs.VIRTUAL_APIC_PAGE_ADDR
GUEST_CS_AR, GUEST_CS_LIMIT = Vmcs.GUEST_CS_AR, Vmcs.GUEST_CS_LIMIT
GUEST_CS_BASE = Vmcs.GUEST_CS_BASE
VMCALL_RESERVED_GPRS = (1 << OperandId.RAX) | (1 << OperandId.RCX) | (1 << OperandId.RSP)
VMCALL_GPR_BITS = 0xFFFF
NOTIFY_ENABLES_MASK = 0x1
GLA_PAGE_MASK = ~(PAGE_SIZE - 1) & U64
CANONICAL_BITS = 48
GLA_ENTRY_SIZE = 8
LEVEL_PAGES = {LEVEL_4K: 1, LEVEL_2M: PAGES_PER_2M}
LEVEL_ALIGN = {LEVEL_4K: PAGE_SIZE, LEVEL_2M: PAGE_SIZE << 9, LEVEL_1G: PAGE_SIZE << 18}


_KNOWN_SORTED = sorted(KNOWN)  # VMCS fields in encoding order, for TDG.VP.RD's next field


class LeafStatusError(TdxsimError):
    """A leaf handler ends the TDCALL with this completion status (caught inside the module)."""

    def __init__(self, status: int, operand: int | None = None) -> None:
        super().__init__(f"{status:#x}")
        self.status = status | (operand if operand is not None else 0)


def _fail(status: int, operand: int | None = None) -> LeafStatusError:
    return LeafStatusError(status, operand)


@functools.cache
def _exposed_indexes(bitmap: int) -> tuple[int, ...]:
    """The GPR indexes a TDG.VP.VMCALL RCX bitmap exposes to the host."""
    return tuple(index for index in range(len(GPR_NAMES)) if bitmap >> index & 1)


def _canonical(gla: int) -> bool:
    top = gla >> (CANONICAL_BITS - 1)
    return top in (0, (1 << (64 - CANONICAL_BITS + 1)) - 1)


class TdxModule:
    """TDCALL leaves for L1 over one TD's state, memory and aliases."""

    def __init__(
        self,
        td: TdState,
        memory: TdMemory,
        host: HostInterface | None = None,
        attestation: AttestationInterface | None = None,
        *,
        strict: bool = False,
        instruction_budget: int = DEFAULT_INSTRUCTION_BUDGET,
    ) -> None:
        self.td = td
        self.memory = memory
        # (first GPA, end GPA, memfd offset - GPA) of each RAM region: VP.ENTER checks two GPAs
        self._ram_ranges = tuple((r.gpa, r.end, r.offset - r.gpa) for r in memory.regions)
        self._low_range = self._ram_ranges[0] if self._ram_ranges else (0, 0, 0)
        self.aliases = AliasTable(memory)
        self.host: HostInterface = host if host is not None else NullHost()
        self.attestation = attestation
        self.strict = strict
        self.instruction_budget = instruction_budget
        self.internal_errors: list[str] = []
        self.invept_requests: list[int] = []
        self.invvpid_requests: list[tuple[int, int]] = []
        self._l2: dict[tuple[int, int], L2Vcpu] = {}
        self._leaves: dict[int, Callable[[Regs, VcpuState], None]] = {
            Leaf.VP_VMCALL: self._vp_vmcall,
            Leaf.VP_INFO: self._vp_info,
            Leaf.MR_RTMR_EXTEND: self._rtmr_extend,
            Leaf.VP_VEINFO_GET: self._veinfo_get,
            Leaf.MR_REPORT: self._mr_report,
            Leaf.MEM_PAGE_ACCEPT: self._accept,
            Leaf.VM_RD: self._vm_rd,
            Leaf.VM_WR: self._vm_wr,
            Leaf.VP_RD: self._vp_rd,
            Leaf.VP_WR: self._vp_wr,
            Leaf.MEM_PAGE_ATTR_RD: self._attr_rd,
            Leaf.MEM_PAGE_ATTR_WR: self._attr_wr,
            Leaf.VP_ENTER: self._vp_enter,
            Leaf.VP_INVEPT: self._invept,
            Leaf.VP_INVVPID: self._invvpid,
        }

    # --- entry point ----------------------------------------------------------------------
    def tdcall(self, regs: Regs, vcpu: int = 0) -> Regs:
        """Execute one TDCALL from L1 on vCPU `vcpu`; returns all registers after it."""
        return self._execute(regs.copy(), vcpu, regs)

    def tdcall_values(self, values: Sequence[int], vcpu: int = 0) -> list[int]:
        """`tdcall` at the register level: 16 GPR values in architectural order in (leaf in
        RAX), truncated to 64 bits, and 16 out. The registers are built once from the values
        (no second copy), which are never changed."""
        return self._execute(Regs.from_list(values), vcpu, values).as_list()

    def _execute(self, out: Regs, vcpu: int, given: Regs | Sequence[int]) -> Regs:
        """Run the leaf in `out` (the caller's own copy of the registers `given`) in place."""
        leaf_in = out.rax
        try:
            vcpus = self.td.vcpus
            if not 0 <= vcpu < len(vcpus):
                raise _fail(TDX_OPERAND_INVALID, OperandId.RAX)
            # The leaves are keyed by their number: RAX equal to one is that leaf at version 0
            # with no other bit set, the common case, found by one lookup
            handler = self._leaves.get(leaf_in)
            if handler is None:
                leaf = leaf_in & LEAF_MASK
                version = (leaf_in >> LEAF_VERSION_SHIFT) & LEAF_VERSION_MASK
                handler = self._leaves.get(leaf)
                if handler is None or version or leaf_in >> (LEAF_VERSION_SHIFT + 8):
                    raise _fail(TDX_OPERAND_INVALID, OperandId.RAX)
            out.rax = TDX_SUCCESS
            handler(out, vcpus[vcpu])
        except LeafStatusError as err:
            out.rax = err.status
        except Exception as exc:
            if self.strict:
                raise
            self.internal_errors.append(f"leaf {leaf_in:#x}: {exc!r}")
            out = given.copy() if isinstance(given, Regs) else Regs.from_list(given)
            out.rax = TDX_OPERAND_INVALID | OperandId.RAX
        return out

    # --- helpers -------------------------------------------------------------------------
    def _private_mapped(self, gpa: int, operand: int, align: int, length: int) -> None:
        """GPA must be aligned, private, in GPAW, and on accepted L1 pages for `length` bytes."""
        if gpa % align or not self.memory.in_gpaw(gpa) or self.memory.is_shared(gpa):
            raise _fail(TDX_OPERAND_INVALID, operand)
        for page in range(gpa & ~(PAGE_SIZE - 1), gpa + length, PAGE_SIZE):
            if self.memory.page_state(page) != PageState.MAPPED:
                raise _fail(TDX_OPERAND_INVALID, operand)

    def _host_fix(self, event: TdExit) -> bool:
        return bool(self.host.td_exit(event))

    def l2_vcpu(self, vcpu: int, vm: int) -> L2Vcpu:
        """The L2 vCPU of (vCPU, VM), created on first use and kept across entries."""
        key = (vcpu, vm)
        if key not in self._l2:
            state = self.td.vcpus[vcpu]
            self._l2[key] = L2Vcpu(
                self.memory,
                self.aliases,
                vm,
                state.vmcs[vm],
                self.host,
                self.instruction_budget,
            )
        return self._l2[key]

    # --- host side (the host VMM drives these) ---------------------------------------------------
    def post_l1_interrupt(self, vcpu: int, vector: int) -> None:
        """A host interrupt posted to L1: raise L1's RVI and make a running L2 exit."""
        state = self.td.vcpus[vcpu]
        state.l1_rvi = max(state.l1_rvi, vector & BYTE_MASK)
        if state.l1_interrupt_deliverable():
            for (index, _vm), l2 in self._l2.items():
                if index == vcpu:
                    l2.kick()

    def l1_interrupt_taken(self, vcpu: int) -> None:
        """L1 took its pending interrupt (clears RVI in this simple L1 interrupt model)."""
        self.td.vcpus[vcpu].l1_rvi = 0

    def _convertible_range(self, gpa: int, npages: int, what: str) -> int:
        """Index of the first page of [gpa, gpa + npages pages), all in one RAM region; checked
        before anything changes, so a bad range from the host alters no state."""
        first = self.memory.page_index(gpa)
        region = self.memory.region_of(gpa)
        if first is None or region is None or gpa % PAGE_SIZE or npages <= 0:
            raise ValueError(f"{what}: GPA {gpa:#x} ({npages} pages) is not a RAM page range")
        if gpa + npages * PAGE_SIZE > region.end:
            raise ValueError(f"{what}: GPA {gpa:#x} + {npages} pages runs past its RAM region")
        return first

    def host_convert_to_shared(self, gpa: int, npages: int = 1) -> None:
        """MapGPA to shared, host side: remove the private pages (and their aliases), then map
        the shared view. Contents are not preserved across a conversion on hardware."""
        first = self._convertible_range(gpa, npages, "convert to shared")
        for i in range(first, first + npages):
            self.aliases.store(i, 0, 0, self.td.num_l2_vms)
        self.memory.set_range_state(gpa, npages, PageState.NOT_PRESENT, LEVEL_4K)
        for i in range(npages):
            self.memory.zero_page(gpa + i * PAGE_SIZE)
        self.memory.set_shared(gpa, npages, True)

    def host_convert_to_private(self, gpa: int, npages: int = 1) -> None:
        """MapGPA to private, host side: unmap the shared view and AUG pending private pages."""
        self._convertible_range(gpa, npages, "convert to private")
        self.memory.set_shared(gpa, npages, False)
        self.memory.set_range_state(gpa, npages, PageState.PENDING, LEVEL_4K)

    def host_page_aug(self, gpa: int) -> bool:
        """TDH.MEM.PAGE.AUG of one 4K page: pending if it is RAM, not present and not mapped
        shared; False (nothing changed) otherwise."""
        memory = self.memory
        index = memory.page_index(gpa)
        if index is None or memory.state[index] != PageState.NOT_PRESENT or memory.shared[index]:
            return False
        memory.set_state(gpa & ~(PAGE_SIZE - 1), PageState.PENDING)
        return True

    def host_block(self, gpa: int) -> None:
        """TDH.MEM.RANGE.BLOCK of one mapped 4K page: L1 and L2 accesses fault until unblocked."""
        if self.memory.page_state(gpa) != PageState.MAPPED:
            raise ValueError(f"block: GPA {gpa:#x} is not a mapped private page")
        self.memory.set_state(gpa, PageState.BLOCKED, self.memory.page_level(gpa))

    def host_unblock(self, gpa: int) -> None:
        """TDH.MEM.RANGE.UNBLOCK: the page is mapped again."""
        if self.memory.page_state(gpa) != PageState.BLOCKED:
            raise ValueError(f"unblock: GPA {gpa:#x} is not blocked")
        self.memory.set_state(gpa, PageState.MAPPED, self.memory.page_level(gpa))

    # --- leaves ------------------------------------------------------------------------------
    def _vp_vmcall(self, r: Regs, vcpu: VcpuState) -> None:
        bitmap = r.rcx
        if bitmap & ~VMCALL_GPR_BITS or bitmap & VMCALL_RESERVED_GPRS:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        indexes = _exposed_indexes(bitmap)
        values = r.as_list()
        exposed = [0] * len(values)
        for index in indexes:
            exposed[index] = values[index] & U64
        exposed[OperandId.RCX] = bitmap
        answer = self.host.tdvmcall(Regs(*exposed)).as_list()
        for index in indexes:
            setattr(r, GPR_NAMES[index], answer[index] & U64)
        r.rax = TDX_SUCCESS

    def _vp_info(self, r: Regs, vcpu: VcpuState) -> None:
        r.rcx = self.memory.gpaw & VP_INFO_GPAW_MASK
        r.rdx = self.td.attributes
        r.r8 = pack_u32_pair(len(self.td.vcpus), self.td.max_vcpus)
        r.r9 = vcpu.index
        r.r10 = 0
        r.r11 = 0

    def _rtmr_extend(self, r: Regs, vcpu: VcpuState) -> None:
        self._private_mapped(r.rcx, OperandId.RCX, RTMR_EXTEND_ALIGN, SHA384_SIZE)
        if not 0 <= r.rdx < RTMR_COUNT:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RDX)
        self.td.extend_rtmr(r.rdx, self.memory.read(r.rcx, SHA384_SIZE))

    def _veinfo_get(self, r: Regs, vcpu: VcpuState) -> None:
        info = vcpu.ve_info
        if info is None:
            raise _fail(TDX_NO_VALID_VE_INFO)
        vcpu.ve_info = None
        r.rcx, r.rdx, r.r8, r.r9 = info.exit_reason, info.qualification, info.gla, info.gpa
        r.r10 = pack_u32_pair(info.instr_length, info.instr_info)

    def _mr_report(self, r: Regs, vcpu: VcpuState) -> None:
        self._private_mapped(r.rcx, OperandId.RCX, TDREPORT_ALIGN, TDREPORT_SIZE)
        self._private_mapped(r.rdx, OperandId.RDX, REPORTDATA_ALIGN, REPORTDATA_SIZE)
        if r.r8:
            raise _fail(TDX_OPERAND_INVALID, OperandId.R8)
        if self.attestation is None:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RAX)
        report = self.attestation.tdreport(self.td.info(), self.memory.read(r.rdx, REPORTDATA_SIZE))
        if len(report) != TDREPORT_SIZE:
            raise RuntimeError(f"attestation returned {len(report)} bytes, not {TDREPORT_SIZE}")
        self.memory.write(r.rcx, report)

    def _decode_mapping(self, value: int, levels: tuple[int, ...]) -> tuple[int, int]:
        """(GPA, level) from a GPA_MAPPING operand in RCX, checking reserved bits and alignment."""
        level = value & LEVEL_MASK
        gpa = value & GPA_PAGE_MASK
        if value & GPA_MAPPING_RESERVED or level not in levels:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        if gpa % LEVEL_ALIGN[level] or not self.memory.in_gpaw(gpa):
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        if self.memory.is_shared(gpa):
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        return gpa, level

    def _accept(self, r: Regs, vcpu: VcpuState) -> None:
        gpa, level = self._decode_mapping(r.rcx, (LEVEL_4K, LEVEL_2M))
        for _attempt in range(2):
            state = self.memory.page_state(gpa)
            if state not in (PageState.NOT_PRESENT, PageState.BLOCKED):
                break
            if not self._host_fix(TdExit(TdExitKind.EPT_VIOLATION, gpa=gpa, eeq_type=EEQ_ACCEPT)):
                raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        else:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        if self.memory.page_level(gpa) != level:
            raise _fail(TDX_PAGE_SIZE_MISMATCH, OperandId.RCX)
        if state == PageState.MAPPED:
            raise _fail(TDX_PAGE_ALREADY_ACCEPTED)
        npages = LEVEL_PAGES[level]
        for i in range(npages):
            self.memory.zero_page(gpa + i * PAGE_SIZE)
        self.memory.set_range_state(gpa, npages, PageState.MAPPED, level)

    def _vm_rd(self, r: Regs, vcpu: VcpuState) -> None:
        if r.rcx:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        if r.rdx == NUM_L2_VMS_FIELD:
            r.r8 = self.td.num_l2_vms
        elif r.rdx == NOTIFY_ENABLES_FIELD:
            r.r8 = self.td.notify_enables
        else:
            raise _fail(TDX_METADATA_FIELD_ID_INCORRECT)
        r.rdx = NO_NEXT_FIELD

    def _vm_wr(self, r: Regs, vcpu: VcpuState) -> None:
        if r.rcx:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        if r.rdx == NUM_L2_VMS_FIELD:
            raise _fail(TDX_METADATA_FIELD_NOT_WRITABLE)
        if r.rdx != NOTIFY_ENABLES_FIELD:
            raise _fail(TDX_METADATA_FIELD_ID_INCORRECT)
        mask = r.r9 & NOTIFY_ENABLES_MASK
        old = self.td.notify_enables
        self.td.notify_enables = (old & ~mask) | (r.r8 & mask)
        r.r8 = old

    def _vp_rd(self, r: Regs, vcpu: VcpuState) -> None:
        if r.rcx:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        ref = decode_vp_field(r.rdx, self.td.num_l2_vms)
        if ref is None:
            raise _fail(TDX_METADATA_FIELD_ID_INCORRECT)
        vmcs = vcpu.vmcs[ref.vm]
        if ref.kind == FieldKind.VMCS:
            r.r8 = vmcs.read(ref.code)
        elif ref.kind == FieldKind.MSR_BITMAP:
            r.r8 = vmcs.msr_qword(ref.code)
        elif ref.kind == FieldKind.L2_CTLS:
            r.r8 = vmcs.l2_ctls
        else:
            r.r8 = vmcs.read(Vmcs.VIRTUAL_APIC_PAGE_ADDR)
        r.rdx = self._next_field(r.rdx, ref.kind, ref.code)

    @staticmethod
    @functools.lru_cache(maxsize=FIELD_CACHE_SIZE)
    def _next_field(field_id: int, kind: FieldKind, code: int) -> int:
        if kind != FieldKind.VMCS:
            return NO_NEXT_FIELD
        at = bisect.bisect_right(_KNOWN_SORTED, code)
        if at == len(_KNOWN_SORTED):
            return NO_NEXT_FIELD
        nxt = _KNOWN_SORTED[at]
        base = field_id & ~FIELD_CODE_MASK & ~(FIELD_ELEM_SIZE_MASK << FIELD_ELEM_SIZE_SHIFT)
        return base | (ELEM_SIZE_OF_WIDTH[width_of(nxt)] << FIELD_ELEM_SIZE_SHIFT) | nxt

    def _vp_wr(self, r: Regs, vcpu: VcpuState) -> None:
        if r.rcx:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        ref = decode_vp_field(r.rdx, self.td.num_l2_vms)
        if ref is None:
            raise _fail(TDX_METADATA_FIELD_ID_INCORRECT)
        vmcs = vcpu.vmcs[ref.vm]
        value, mask = r.r8, r.r9
        if ref.kind == FieldKind.VMCS:
            if ref.code in READ_ONLY:
                raise _fail(TDX_METADATA_FIELD_NOT_WRITABLE)
            if value & mask & ~VALUE_MASK_OF_WIDTH[width_of(ref.code)]:
                raise _fail(TDX_METADATA_FIELD_VALUE_NOT_VALID)
            r.r8 = vmcs.l1_write(ref.code, value, mask)
            if is_guest_state(ref.code):
                vmcs.dirty_guest.add(ref.code)
        elif ref.kind == FieldKind.MSR_BITMAP:
            old = vmcs.msr_qword(ref.code)
            vmcs.set_msr_qword(ref.code, (old & ~mask) | (value & mask))
            r.r8 = old
        elif ref.kind == FieldKind.L2_CTLS:
            new = (vmcs.l2_ctls & ~mask) | (value & mask)
            if not l2_ctls_valid(new):
                raise _fail(TDX_METADATA_FIELD_VALUE_NOT_VALID)
            r.r8, vmcs.l2_ctls = vmcs.l2_ctls, new
        else:
            r.r8 = vmcs.l1_write(Vmcs.VIRTUAL_APIC_PAGE_ADDR, value, mask)

    def _attr_rd(self, r: Regs, vcpu: VcpuState) -> None:
        gpa = r.rcx & GPA_PAGE_MASK
        if r.rcx & ~GPA_PAGE_MASK & ~(PAGE_SIZE - 1) or not self.memory.in_gpaw(r.rcx):
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        if self.memory.is_shared(gpa):
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        index = self.memory.page_index(gpa)
        if index is None or self.memory.state[index] == PageState.NOT_PRESENT:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        r.rcx = self._mapping_out(gpa, index)
        r.rdx = self.aliases.packed(index)

    def _mapping_out(self, gpa: int, index: int) -> int:
        level = self.memory.level[index]
        base = gpa & ~(PAGE_SIZE * LEVEL_PAGES[level] - 1)
        pending = GPA_MAPPING_PENDING if self.memory.state[index] == PageState.PENDING else 0
        return base | level | pending

    def _attr_wr(self, r: Regs, vcpu: VcpuState) -> None:
        gpa, level = self._decode_mapping(r.rcx, (LEVEL_4K, LEVEL_2M, LEVEL_1G))
        check = check_attr_operands(r.rdx, r.r8, self.td.num_l2_vms)
        if check.bad_rdx:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RDX)
        if check.bad_r8:
            raise _fail(TDX_OPERAND_INVALID, OperandId.R8)
        if level == LEVEL_1G:
            raise _fail(TDX_PAGE_SIZE_MISMATCH, OperandId.RCX)
        for _attempt in range(2):
            if self.memory.page_state(gpa) not in (PageState.NOT_PRESENT, PageState.BLOCKED):
                break
            if not self._host_fix(TdExit(TdExitKind.EPT_VIOLATION, gpa=gpa, eeq_type=EEQ_ATTR_WR)):
                raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        else:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        mapped_level = self.memory.page_level(gpa)
        if level > mapped_level:
            raise _fail(TDX_PAGE_SIZE_MISMATCH, OperandId.RCX)
        if level < mapped_level:
            self._demote(gpa)
        npages = LEVEL_PAGES[level]
        first = self.memory.page_index(gpa)
        assert first is not None
        results = []
        for i in range(first, first + npages):
            new = self.aliases.compute(i, r.rdx, r.r8, self.td.num_l2_vms)
            if new is None:
                r.rcx = 0
                r.rdx = self.aliases.packed(first)
                raise _fail(TDX_PAGE_ATTR_INVALID)
            results.append(new)
        for i, new in zip(range(first, first + npages), results, strict=True):
            self.aliases.store(i, new, r.r8, self.td.num_l2_vms)
        r.rcx = self._mapping_out(gpa, first)
        r.rdx = self.aliases.packed(first)

    def _demote(self, gpa: int) -> None:
        """Split the 2M mapping around `gpa` into 4K mappings (host work, transparent to L1)."""
        block = self.memory.huge_block(gpa)
        assert block is not None
        first, _base = block
        self.host.td_exit(TdExit(TdExitKind.EPT_VIOLATION, gpa=gpa, eeq_type=EEQ_ATTR_WR))
        self.memory.level[first : first + PAGES_PER_2M] = bytes([LEVEL_4K]) * PAGES_PER_2M

    def _vp_enter(self, r: Regs, vcpu: VcpuState) -> None:
        rcx = r.rcx
        if rcx & VP_ENTER_RESERVED:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        vm = (rcx >> VM_INDEX_SHIFT) & VM_INDEX_MASK
        if not 1 <= vm <= self.td.num_l2_vms:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        state_gpa = r.rdx
        # 256-byte aligned, so the block lies in one page: private, in GPAW, accepted
        state_offset = self._mapped_private_offset(state_gpa)
        if state_gpa % L2_ENTER_GUEST_STATE_ALIGN or state_offset is None:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RDX)
        vmcs = vcpu.vmcs[vm]
        if self._mapped_private_offset(vmcs.values.get(VIRTUAL_APIC_PAGE_ADDR, 0)) is None:
            raise _fail(TDX_OPERAND_INVALID, OperandId.L2_VAPIC_GPA)
        if vcpu.l1_interrupt_deliverable():
            raise _fail(TDX_PENDING_INTERRUPT)
        if rcx & VP_ENTER_INVD_MASK:
            self.invept_requests.append(1 << vm)
        l2 = self._l2.get((vcpu.index, vm)) or self.l2_vcpu(vcpu.index, vm)
        exit_ = l2.run_at(self.memory.view, state_offset)
        cs_sel = l2.exit_cs  # CS as of the exit; its other parts are the VMCS's
        values = l2.vmcs.values
        r.rax = exit_.status | exit_.reason
        r.rbx = 0
        r.rcx = exit_.qualification
        r.rdx = exit_.gla
        r.rsi = pack_cs_info(cs_sel, values.get(GUEST_CS_AR, 0), values.get(GUEST_CS_LIMIT, 0))
        r.rdi = values.get(GUEST_CS_BASE, 0)
        r.r8 = exit_.gpa
        r.r9 = pack_u32_pair(exit_.intr_info, exit_.intr_error)
        r.r10 = pack_u32_pair(exit_.idt_info, exit_.idt_error)
        r.r11 = pack_u32_pair(exit_.instr_info, exit_.instr_len)
        r.r12 = cs_sel & CPL_MASK
        r.r13 = exit_.eeq
        r.r14 = 0
        r.r15 = 0

    def _mapped_private_offset(self, gpa: int) -> int | None:
        """memfd offset of `gpa` if it is a private GPA inside GPAW, in RAM, on a mapped
        (accepted) page; else None. (RAM lies below the shared bit, so a GPA with it set, or
        outside GPAW, is in no range.)"""
        low, high, delta = self._low_range  # the guest-state block and vAPIC page are here
        to_offset: int | None = delta if low <= gpa < high else None
        if to_offset is None:
            to_offset = next((d for lo, hi, d in self._ram_ranges if lo <= gpa < hi), None)
            if to_offset is None:
                return None
        offset = gpa + to_offset
        return offset if self.memory.state[offset >> PAGE_SHIFT] == MAPPED else None

    def _invept(self, r: Regs, vcpu: VcpuState) -> None:
        allowed = ((1 << (self.td.num_l2_vms + 1)) - 1) & ~1
        if r.rcx & ~allowed:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        self.invept_requests.append(r.rcx)

    def _invvpid(self, r: Regs, vcpu: VcpuState) -> None:
        if r.rcx & INVVPID_RESERVED:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        vm = (r.rcx >> VM_INDEX_SHIFT) & VM_INDEX_MASK
        if not 1 <= vm <= self.td.num_l2_vms:
            raise _fail(TDX_OPERAND_INVALID, OperandId.RCX)
        if r.rcx & INVVPID_LIST:
            first = r.rdx & GLA_LIST_INFO_FIRST_ENTRY_MASK
            count = (r.rdx >> GLA_LIST_INFO_NUM_SHIFT) & GLA_LIST_INFO_NUM_MASK
            list_gpa = r.rdx & GPA_PAGE_MASK
            reserved = r.rdx & ~(
                GLA_LIST_INFO_FIRST_ENTRY_MASK
                | GPA_PAGE_MASK
                | (GLA_LIST_INFO_NUM_MASK << GLA_LIST_INFO_NUM_SHIFT)
            )
            if reserved or count > GLA_LIST_MAX_ENTRIES or first + count > GLA_LIST_MAX_ENTRIES:
                raise _fail(TDX_OPERAND_INVALID, OperandId.RDX)
            self._private_mapped(list_gpa, OperandId.RDX, PAGE_SIZE, PAGE_SIZE)
            raw = self.memory.read(list_gpa + first * GLA_ENTRY_SIZE, count * GLA_ENTRY_SIZE)
            entries = [
                int.from_bytes(raw[i : i + GLA_ENTRY_SIZE], "little")
                for i in range(0, len(raw), GLA_ENTRY_SIZE)
            ]
        else:
            entries = [r.rdx]
        for entry in entries:
            if not _canonical(entry & GLA_PAGE_MASK):
                raise _fail(TDX_GLA_NOT_CANONICAL)
        for entry in entries:
            self.invvpid_requests.append((vm, entry))
