"""One L2 vCPU: real x86-64 code under unicorn over the TD's RAM, entered by TDG.VP.ENTER and
leaving by L2 exits as the Intel TDX Module TD Partitioning Architecture Specification describes
them (L2 exits and their routing to L1 or the host, EPT violations of L2 accesses, interrupt
virtualization); exit reasons, qualifications and event injection per Intel SDM Vol. 3
("VM Exits", "VM Entries", "APIC Virtualization and Virtual Interrupts").

The TD RAM is mapped into unicorn once (mem_map_ptr over the memfd, private and shared views);
each page's unicorn protection is this VM's alias (R/W/X), or none when the alias is missing or
the L1 SEPT page is not mapped. Unicorn checks a protection only when it fills a TLB entry, so
an entry never grants a read or write the EPT refuses: such an access gets an entry into a
window of GPAs unicorn never maps, one page per TD page and view, and faults every time with
its exact GPA (an EPT-violation exit, no TLB flush). A fetch the alias refuses faults on the
protection check (then the TLB is flushed); any change of the EPT flushes it too. Shared and
unbacked GPAs become host-routed exits. No memory-access hooks are installed on RAM.

Unicorn runs in virtual-TLB mode: its TLB misses call `_on_tlb_fill`, which walks L2's own page
tables (identity while CR0.PG is clear). Every paging-structure read is checked against the
alias, as the EPT checks it on hardware, so L2 cannot use L1-only memory as page tables; the
exit then has the translated-access bit clear. A non-present entry is a #PF for L2.

Unicorn has no hook that stops before CPUID, IN/OUT or RDMSR/WRMSR (its CPUID/IO hooks run the
rest of the translation block, and MSR hooks are not supported). So code pages are scanned for
the instructions that may exit and unicorn stops before each of them (see `codepages`), with
no Python call on the instructions in between; the model then decodes the instruction
(`decode`) and either exits to L1 or runs that one instruction. The instruction budget is
unicorn's instruction count (a runaway L2 ends in a host-routed timer exit); an L1 interrupt
kick calls emu_stop. While an interrupt window is wanted or an STI/MOV-SS shadow is in force,
every instruction is hooked, so the window opens and the shadow ends at the exact instruction.

Simulator choices, documented: paging-entry permission bits (R/W, U/S, NX) and accessed/dirty
bits are not modelled, only presence and the EPT side; event delivery through the IDT handles
same-privilege (CPL0) 64-bit gates only; the error code of a #GP raised inside unicorn is
delivered as 0; EPT-violation exits report instruction length 0 (the SDM leaves it undefined);
virtualize-x2APIC mode behaves as fixed to 1 (the TDX module's write mask for the secondary
controls leaves bit 4 out); a host-routed L2 TDVMCALL completes (RIP advanced) before L1 sees
TDX_L2_EXIT_HOST_ROUTED_TDVMCALL; L1 and host writes to pages L2 executed from are detected at
the next entry and drop unicorn's stale translations of those pages. GETSEC, the VMX
instructions, INVEPT/INVVPID/VMFUNC exit to L1 as the L2 exit routing says, with no
CR4.SMXE/VMXE #UD check first and the VMX instruction-information field left 0; their lengths
come from the opcode bytes. The
STI shadow is tracked only while every instruction is hooked, so an exit by the budget or a kick
right after STI reports no blocking; the budget does not count instructions run between stops
that resume (bounded by MAX_STOPS_PER_ENTRY).
"""

from __future__ import annotations

from typing import Any

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_PROT,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_PROT,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_PROT,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MEM_FETCH,
    UC_MEM_FETCH_PROT,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_READ_PROT,
    UC_MEM_WRITE,
    UC_MEM_WRITE_PROT,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_NONE,
    UC_PROT_READ,
    UC_PROT_WRITE,
    UC_TLB_VIRTUAL,
)
from unicorn import x86_const as X
from unicorn.unicorn import Uc, UcError

from tdxdefs.attributes import ATTR_R, ATTR_VALID, ATTR_W, ATTR_XS, ATTR_XU
from tdxdefs.metadata import L2_CTLS_ENABLE_SHARED_EPTP, L2_CTLS_ENABLE_TDVMCALL
from tdxdefs.tdcall import (
    PAGE_SHIFT,
    PAGE_SIZE,
    TDX_L2_EXIT_HOST_ROUTED_ASYNC,
    TDX_L2_EXIT_HOST_ROUTED_TDVMCALL,
    TDX_L2_EXIT_PENDING_INTERRUPT,
    TDX_SUCCESS,
    U16_MASK,
    U32_MASK,
    pack_u32_pair,
)
from tdxdefs.vmcs import (
    EEQ_PEND_EPT_VIOLATION,
    EPTV_EXECUTABLE,
    EPTV_FETCH,
    EPTV_GLA_VALID,
    EPTV_READ,
    EPTV_READABLE,
    EPTV_TRANSLATED,
    EPTV_USER_EXECUTABLE,
    EPTV_WRITABLE,
    EPTV_WRITE,
    INTERRUPTIBILITY_MOV_SS,
    INTERRUPTIBILITY_STI,
    INTR_INFO_DELIVER_ERROR,
    INTR_INFO_TYPE_MASK,
    INTR_INFO_TYPE_SHIFT,
    INTR_INFO_VALID,
    INTR_INFO_VECTOR_MASK,
    INTR_TYPE_EXTERNAL,
    INTR_TYPE_HW_EXCEPTION,
    INTR_TYPE_NMI,
    INTR_TYPE_SW_EXCEPTION,
    INTR_TYPE_SW_INTERRUPT,
    IOQ_PORT_SHIFT,
    PROC_INTERRUPT_WINDOW_EXITING,
    PROC_USE_MSR_BITMAPS,
    VM_ENTRY_FAILURE,
    ExitReason,
    Vmcs,
    pack_intr_status,
    unpack_intr_status,
)
from tdxdefs.x86 import (
    EXCEPTIONS_WITH_ERROR_CODE,
    RFLAGS_FIXED,
    RFLAGS_IF,
    VAPIC_TPR,
    VECTOR_DF,
    VECTOR_PF,
    VECTOR_UD,
    X2APIC_MSR_EOI,
    X2APIC_MSR_TPR,
)
from tdxsim.l2.codepages import CodePages
from tdxsim.l2.decode import (
    FIRST_BYTES,
    FIRST_BYTES_AFTER_REX,
    MAX_INSN_LEN,
    PAGE_OFFSET_MASK,
    PREFIX_FS,
    PREFIX_GS,
    REX_FIRST,
    REX_LAST,
    SCAN_CONTROLS,
    Action,
    decode,
    operand_address,
)
from tdxsim.l2.engine import (
    RUN_FOREVER,
    Runner,
    TlbEntry,
    add_memory_fault_hook,
    add_tlb_fill_hook,
)
from tdxsim.l2.ept import EptView
from tdxsim.l2.events import (
    CPL_MASK,
    IDT_GATE_SIZE,
    IdtGate,
    event_type,
    gate_address,
    interrupt_frame,
    interruption_info,
)
from tdxsim.l2.exit_hook import ExitHook
from tdxsim.l2.exits import ExitInfo, Stop, StopKind
from tdxsim.l2.paging import CR0_PG, page_fault_error, walker
from tdxsim.l2.registers import (
    EXIT_TAIL,
    GUEST_STATE,
    GUEST_STATE_REGS_SIZE,
    GUEST_STATE_STATUS,
    GUEST_STATE_TAIL,
    GUEST_STATE_TAIL_AT,
    RFLAGS_AT,
    RIP_AT,
    UC_CRS,
    UC_EXIT_REGS,
    UC_GPRS,
    UC_STATE_REGS,
    FastRegs,
    RegisterBlock,
)
from tdxsim.l2.vapic import VirtualApic
from tdxsim.module.host_interface import TdExit, TdExitKind
from tdxsim.module.memory import PageState, TdMemory
from tdxsim.module.registers import Regs
from tdxsim.module.sept import AliasTable
from tdxsim.module.vmcs import L2Vmcs

UNICORN: Any = Uc  # the binding is untyped
SEGMENT_BASES = {PREFIX_FS: X.UC_X86_REG_FS_BASE, PREFIX_GS: X.UC_X86_REG_GS_BASE}
# Module constants for what every entry and exit reads (an enum member costs a class lookup)
ACTION_EXIT = Action.EXIT
STOP_EXIT = StopKind.EXIT
REG_RIP = X.UC_X86_REG_RIP
FIELD_INTERRUPTIBILITY = Vmcs.GUEST_INTERRUPTIBILITY
FIELD_PROC_CONTROLS = Vmcs.PROC_BASED_CONTROLS
FIELD_ENTRY_INTR_INFO = Vmcs.ENTRY_INTR_INFO
BLOCKING_STI_MOV_SS = INTERRUPTIBILITY_STI | INTERRUPTIBILITY_MOV_SS
EPT_VIOLATION = ExitReason.EPT_VIOLATION
NOT_PRESENT, PENDING = PageState.NOT_PRESENT, PageState.PENDING
HOST_ROUTED_STATES = frozenset({PageState.NOT_PRESENT, PageState.BLOCKED})
__all__ = ["DEFAULT_INSTRUCTION_BUDGET", "GUEST_STATE", "ExitInfo", "L2Vcpu"]

# A runaway L2 gets about as long as a host timer tick of a few seconds at unicorn's speed
DEFAULT_INSTRUCTION_BUDGET = 200_000_000
MAX_STOPS_PER_ENTRY = 10_000

CR_FIELDS = (Vmcs.GUEST_CR0, Vmcs.GUEST_CR3, Vmcs.GUEST_CR4)
# VMCS fields every exit writes (module constants: an enum member costs a class lookup)
EXIT_REASON, EXIT_QUALIFICATION = Vmcs.EXIT_REASON, Vmcs.EXIT_QUALIFICATION
GUEST_LINEAR_ADDRESS = Vmcs.GUEST_LINEAR_ADDRESS
GUEST_PHYSICAL_ADDRESS = Vmcs.GUEST_PHYSICAL_ADDRESS
EXIT_INTR_INFO, EXIT_INTR_ERROR_CODE = Vmcs.EXIT_INTR_INFO, Vmcs.EXIT_INTR_ERROR_CODE
IDT_VECTORING_INFO = Vmcs.IDT_VECTORING_INFO
IDT_VECTORING_ERROR_CODE = Vmcs.IDT_VECTORING_ERROR_CODE
EXIT_INSTRUCTION_LENGTH = Vmcs.EXIT_INSTRUCTION_LENGTH
EXIT_INSTRUCTION_INFO = Vmcs.EXIT_INSTRUCTION_INFO
GUEST_CR0, GUEST_CR3, GUEST_CR4 = CR_FIELDS
GUEST_CR_FIELDS = frozenset({*CR_FIELDS})

# --- what the TLB fill maps unicorn to when L2 has no translation ------------------------------
TRAP_GPA = (1 << 51) - PAGE_SIZE  # never mapped: below the GPAW-52 shared bit, above any RAM
LOOKAHEAD_GPA = TRAP_GPA - PAGE_SIZE  # a no-access page unicorn owns, for the `until` probe
UNTIL_PAGE = RUN_FOREVER >> PAGE_SHIFT  # the page of emu_start's `until`
# A no-access page unicorn owns, for the page QEMU looks up before an empty block (see
# _empty_block_fill). An access that reaches it went through such an entry: retried once the
# TLB is flushed.
EMPTY_BLOCK_GPA = LOOKAHEAD_GPA - PAGE_SIZE
# Data accesses the EPT refuses get TLB entries into a window of GPAs unicorn never maps, one
# page per TD memory page and view, ending here: an unmapped GPA never gets unicorn's fast
# path, so every such access faults (no TLB flush needed) and the fault names its page.
REFUSED_WINDOW_END = EMPTY_BLOCK_GPA
DATA_PROT = UC_PROT_READ | UC_PROT_WRITE

WRITE_ACCESSES = frozenset({UC_MEM_WRITE_PROT, UC_MEM_WRITE_UNMAPPED})
# Faults from unicorn's check of a RAM region's protection (not from an unmapped GPA)
REGION_CHECKS = frozenset({UC_MEM_READ_PROT, UC_MEM_WRITE_PROT, UC_MEM_FETCH_PROT})
NEED_PROT = {EPTV_READ: UC_PROT_READ, EPTV_WRITE: UC_PROT_WRITE, EPTV_FETCH: UC_PROT_EXEC}
FETCH_ACCESSES = frozenset({UC_MEM_FETCH_PROT, UC_MEM_FETCH_UNMAPPED})
UC_EVENT_REGS = (X.UC_X86_REG_CS, X.UC_X86_REG_RFLAGS, X.UC_X86_REG_RSP, X.UC_X86_REG_SS)
UC_HANDLER_REGS = (X.UC_X86_REG_RSP, X.UC_X86_REG_RFLAGS, X.UC_X86_REG_RIP)


class L2Vcpu:
    """One L2 VM's vCPU: one unicorn instance kept across entries."""

    def __init__(
        self,
        memory: TdMemory,
        aliases: AliasTable,
        vm: int,
        vmcs: L2Vmcs,
        host: Any,
        instruction_budget: int = DEFAULT_INSTRUCTION_BUDGET,
    ) -> None:
        self.memory = memory
        self.aliases = aliases
        self.vm = vm
        self.vmcs = vmcs
        self.host = host
        self.instruction_budget = instruction_budget
        self.kick_requested = False
        self.vapic = VirtualApic(memory, vmcs, self._model_wrote)
        self.uc: Any = UNICORN(UC_ARCH_X86, UC_MODE_64)
        self._exit_hook = ExitHook(self.uc)  # before any other code hook: it stops first
        self._runner = Runner(self.uc, self._exit_hook)
        for region in memory.regions:
            for view in (region.gpa, region.gpa | memory.shared_bit):
                self.uc.mem_map_ptr(
                    view, region.size, UC_PROT_NONE, memory.host_address + region.offset
                )
        self.uc.mem_map(LOOKAHEAD_GPA, PAGE_SIZE, UC_PROT_NONE)
        self.uc.mem_map(EMPTY_BLOCK_GPA, PAGE_SIZE, UC_PROT_NONE)
        self.ept = EptView(self.uc, memory, aliases, vm)
        self._walk_l2 = walker(
            [(r.gpa, r.end, r.offset - r.gpa) for r in memory.regions],
            memory.buf,
            self.ept.prot,
            UC_PROT_READ,
        )
        views = 2 * memory.size  # the private view's pages, then the shared view's
        self._refused_base = REFUSED_WINDOW_END - views
        if any(region.end > self._refused_base for region in memory.regions):
            raise ValueError(f"TD RAM reaches the refused-access window at {self._refused_base:#x}")
        self._state_regs = RegisterBlock(self.uc, UC_STATE_REGS)
        self._gprs = RegisterBlock(self.uc, UC_GPRS)
        self._crs = RegisterBlock(self.uc, UC_CRS)
        self._exit_regs = RegisterBlock(self.uc, UC_EXIT_REGS)
        # what event delivery reads, and writes to enter the handler
        self._event_regs = RegisterBlock(self.uc, UC_EVENT_REGS)
        self._handler_regs = RegisterBlock(self.uc, UC_HANDLER_REGS)
        # _exit_regs holds unicorn's registers as they are: loaded when unicorn stopped before an
        # exit, and nothing has run or written a register since (the exit reuses that batch)
        self._exit_regs_current = False
        self._retry = False  # unicorn stopped on a stale TLB entry: run again once flushed
        # CR0 and CR3 as of the last exit, for page walks: None once L1 loads new CRs or L2
        # executes a MOV to CR in this entry (then every walk reads them afresh).
        self._cr_cache: tuple[int, int] | None = None
        self._cr_volatile = False
        self._rip_dirty = False  # RIP changed by event delivery since the entry
        self._exit_rip: int | None = None  # where an exiting instruction stopped
        self.exit_cs = 0  # CS selector as of the last exit (TDG.VP.ENTER reports it)
        self.reg = FastRegs(self.uc)
        self._stop: Stop | None = None
        self._budget = 0
        self._watch_window = False
        self._shadow = False
        self._last_addr = 0
        self._last_size = 0
        self._code_off = -1
        self._code_page = -1
        self._running = False  # inside emu_start: a stop must also stop unicorn
        self._slow_mode = False  # every instruction hooked (interrupt window, STI shadow)
        self._slow_hook: int | None = None
        self.code = CodePages(
            self.uc,
            memory,
            self.ept.prot,
            self._probe,
            self._on_page_insn,
            self._runner,
            self._exit_hook,
        )
        self.ept.on_change = self.code.request_tlb_flush
        add_memory_fault_hook(
            self.uc,
            UC_HOOK_MEM_READ_PROT
            | UC_HOOK_MEM_WRITE_PROT
            | UC_HOOK_MEM_FETCH_PROT
            | UC_HOOK_MEM_READ_UNMAPPED
            | UC_HOOK_MEM_WRITE_UNMAPPED
            | UC_HOOK_MEM_FETCH_UNMAPPED,
            self._on_fault,
        )
        self.uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        self._gla_of_gpa_page: dict[int, int] = {}
        self._fill_was_data = False
        self.uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        add_tlb_fill_hook(self.uc, self._on_tlb_fill)
        self.uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)

    # --- address translation and guest memory access ---------------------------------------
    def gla_to_gpa(self, gla: int) -> int | None:
        """Translate through L2's own page tables if paging is on; None if it does not map."""
        gpa, _fault = self._walk(gla, EPTV_READ)
        return gpa

    def _walk(self, gla: int, kind: int, probe: bool = False) -> tuple[int | None, Stop | None]:
        """4-level walk of L2's page tables. Every paging-structure read goes through the EPT
        (the alias) like on hardware: a table in a page L2 may not read is an EPT violation
        with the translated-access bit clear, never a way to read L1 memory. A non-present
        entry is a #PF for L2. Permission bits of the entries are not enforced (documented)."""
        crs = self._cr_cache
        if crs is None:
            cr0, cr3, _cr4 = self._crs.read()
            if not self._cr_volatile:
                self._cr_cache = (cr0, cr3)
        else:
            cr0, cr3 = crs
        result = self._walk_l2(gla, cr0, cr3)
        if result.gpa is not None or probe:
            return result.gpa, None
        if result.unreadable_entry is not None:
            exit_ = self._ept_exit(result.unreadable_entry, gla, EPTV_READ)
            exit_.qualification &= ~EPTV_TRANSLATED
            return None, Stop(StopKind.EXIT, exit_)
        error = page_fault_error(kind == EPTV_WRITE, kind == EPTV_FETCH)
        return None, Stop(StopKind.EXCEPTION, vector=VECTOR_PF, error_code=error, cr2=gla)

    def _on_tlb_fill(self, vaddr: int, access: int, entry: TlbEntry) -> bool:
        """Virtual-TLB mode: unicorn asks us for every GLA->GPA translation it caches."""
        if vaddr >> PAGE_SHIFT == UNTIL_PAGE:  # emu_start probes `until`
            entry.perms = UC_PROT_ALL
            entry.paddr = LOOKAHEAD_GPA  # backed (never accessible), so unicorn caches it
            return True
        if access == UC_MEM_FETCH:
            if self._empty_block_fill(vaddr):
                # No byte is fetched (a fetch refused here would end emu_start with an error).
                # Data accesses miss this entry and refill; a fetch through it faults and runs
                # again.
                entry.perms = UC_PROT_EXEC
                entry.paddr = EMPTY_BLOCK_GPA
                return True
            kind = EPTV_FETCH
        else:
            kind = EPTV_WRITE if access == UC_MEM_WRITE else EPTV_READ
        gpa, fault = self._walk(vaddr, kind)
        if gpa is None:
            entry.perms = UC_PROT_ALL
            entry.paddr = TRAP_GPA  # unmapped: the access faults and _on_fault keeps our stop
            if fault is not None and self._stop is None:
                fault.rip = self.reg.read(X.UC_X86_REG_RIP)  # exact: unicorn syncs it per access
                self._fill_was_data = kind != EPTV_FETCH
                if kind == EPTV_FETCH:
                    # a fetch faults at a TB start, where unicorn's RIP is exact
                    rip = self.reg.read(X.UC_X86_REG_RIP)
                    fault.rip = rip if rip >> PAGE_SHIFT == vaddr >> PAGE_SHIFT else vaddr
                    if fault.exit is not None:
                        fault.exit.gla = fault.rip
                    if fault.cr2 is not None:
                        fault.cr2 = fault.rip
                self._stop = fault
                self.uc.emu_stop()
            return True
        gla_page, gpa_page = vaddr >> PAGE_SHIFT, gpa >> PAGE_SHIFT
        self._gla_of_gpa_page[gpa_page] = gla_page
        memory = self.memory
        index = memory.page_index(gpa)
        if index is None:  # not RAM: unicorn checks every access (it maps nothing there)
            entry.perms = self.code.perms(gla_page, gpa_page, kind)
            entry.paddr = gpa_page << PAGE_SHIFT
            return True
        # the EPT part is the region protection unicorn checks next
        shared = gpa & memory.shared_bit
        ept = self.ept
        refused = DATA_PROT & ~(ept.shared_prot if shared else ept.prot)[index]
        if kind != EPTV_FETCH and refused & (UC_PROT_WRITE if kind == EPTV_WRITE else UC_PROT_READ):
            # only the refused kinds, so an allowed access refills with the page itself
            view_at = memory.size if shared else 0
            entry.paddr = self._refused_base + view_at + (index << PAGE_SHIFT)
            entry.perms = refused
            return True
        # the TLB never lets through a read or write the EPT refuses: it misses, and refills
        entry.perms = self.code.perms(gla_page, gpa_page, kind) & ~refused
        entry.paddr = gpa_page << PAGE_SHIFT
        return True

    def _empty_block_fill(self, vaddr: int) -> bool:
        """Unicorn asks for the page before the block it translates, which starts a page: the
        block is empty (it only stops at an exit), and QEMU's tb_gen_code takes `pc + size - 1`
        as its last byte. No code runs from that page, so it is neither scanned nor walked
        (a walk could fault where L2 maps nothing). Unicorn's RIP is the block's start."""
        rip = self.reg.read(X.UC_X86_REG_RIP)
        return not rip & PAGE_OFFSET_MASK and vaddr >> PAGE_SHIFT == (rip >> PAGE_SHIFT) - 1

    def _fetch(self, gla: int, length: int) -> bytes:
        gpa = self.gla_to_gpa(gla)
        if gpa is None:
            return b""
        try:
            return self.memory.read(gpa, length)
        except Exception:
            try:
                return self.memory.read(gpa, PAGE_SIZE - (gpa & (PAGE_SIZE - 1)))
            except Exception:
                return b""

    def _l2_access(self, gla: int, length: int, write: bool) -> tuple[int, ExitInfo | None]:
        """GPA of an L2 access made by event delivery, or the EPT-violation exit it causes."""
        gpa = self.gla_to_gpa(gla)
        if gpa is None:
            return 0, ExitInfo(TDX_SUCCESS, ExitReason.TRIPLE_FAULT)
        for page in {gpa & ~(PAGE_SIZE - 1), (gpa + length - 1) & ~(PAGE_SIZE - 1)}:
            need = UC_PROT_WRITE if write else UC_PROT_READ
            index = self.memory.page_index(page)
            if index is None or self.memory.is_shared(page) or not self.ept.prot[index] & need:
                fault = max(page, gpa)
                return 0, self._ept_exit(fault, gla, EPTV_WRITE if write else EPTV_READ)
        return gpa, None

    # --- hooks ---------------------------------------------------------------------------------
    def _halt(self, stop: Stop) -> None:
        self._stop = stop
        if self._running:
            self.uc.emu_stop()

    def _on_insn(self, uc: Any, address: int, size: int, _data: object) -> None:
        """Per-instruction hook; the common case reads one or two opcode bytes and returns."""
        self._budget -= 1
        if (self._budget < 0 or self.kick_requested or self._watch_window or self._shadow) and (
            self._slow_checks(address)
        ):
            return
        self._last_addr = address
        self._last_size = size
        page = address >> PAGE_SHIFT
        if page != self._code_page:
            self._enter_code_page(page)
        off = self._code_off + (address & PAGE_OFFSET_MASK)
        if self._code_off < 0 or (address & PAGE_OFFSET_MASK) > PAGE_SIZE - MAX_INSN_LEN:
            code = self._fetch(address, MAX_INSN_LEN)  # page edge or unbacked: careful path
            if not code or code[0] not in FIRST_BYTES:
                return
        else:
            buf = self.memory.buf
            first = buf[off]
            if first not in FIRST_BYTES:
                return
            if REX_FIRST <= first <= REX_LAST and buf[off + 1] not in FIRST_BYTES_AFTER_REX:
                return
            code = buf[off : off + MAX_INSN_LEN]
        self._decode(code, address)

    def _on_page_insn(self, uc: Any, address: int, size: int, data: object) -> None:
        """Per-instruction hook of a page L2 wrote (not needed while every instruction is)."""
        if not self._slow_mode:
            self._on_insn(uc, address, size, data)

    def _slow_checks(self, address: int) -> bool:
        """Budget, L1-interrupt kick and interrupt-window checks; True if L2 must stop here."""
        if self._budget < 0:
            self._halt(Stop(StopKind.EXIT, self._timer_exit(), rip=address))
            return True
        if self.kick_requested:
            exit_ = ExitInfo(TDX_L2_EXIT_PENDING_INTERRUPT, ExitReason.EXTERNAL_INTERRUPT)
            self._halt(Stop(StopKind.EXIT, exit_, rip=address))
            return True
        was_shadow = self._shadow
        self._shadow = False
        if self._watch_window and not was_shadow and self.reg.read(X.UC_X86_REG_RFLAGS) & RFLAGS_IF:
            self._halt(Stop(StopKind.WINDOW, rip=address))
            return True
        return False

    def _enter_code_page(self, page: int) -> None:
        """Cache where the code page now executing lives in the memfd (-1 if nowhere)."""
        self._code_page = page
        gpa = self.gla_to_gpa(page << PAGE_SHIFT)
        self._code_off = -1
        if gpa is not None and not self.memory.is_shared(gpa):
            region = self.memory.region_of(gpa)
            if region is not None:
                self._code_off = region.offset + gpa - region.gpa

    def _decode(self, code: bytes, address: int) -> None:
        """Stop before the instruction at `address` (bytes `code`) if it exits or needs the model
        (routing per the Intel TDX Module TD Partitioning Architecture Specification)."""
        insn = decode(code)
        if insn is None:
            return
        action = insn.action
        if action is ACTION_EXIT:  # the common case first: exits with no condition
            assert insn.reason is not None
            info = ExitInfo(TDX_SUCCESS, insn.reason, 0, 0, 0, 0, 0, 0, 0, 0, insn.length)
            self._stop = Stop(STOP_EXIT, info, 0, None, address)
            if self._running:
                self.uc.emu_stop()
        elif action is Action.SHADOW:
            self._shadow = self._slow_mode  # tracked while every instruction is hooked
        elif action is Action.MOV_TO_CR:
            self._code_page = -1  # paging may change: re-translate the code page next time
            self._cr_cache = None
            self._cr_volatile = True
        elif action is Action.EXIT_IF_CONTROL:
            assert insn.reason is not None
            if self.vmcs.read(Vmcs.PROC_BASED_CONTROLS) & insn.control:
                qualification = 0
                if insn.reason == ExitReason.INVLPG:
                    qualification = operand_address(
                        code,
                        insn.opcode_at,
                        insn.prefixes,
                        address + insn.length,
                        lambda n: self.reg.read(UC_GPRS[n]),
                        lambda prefix: self.reg.read(SEGMENT_BASES[prefix]),
                    )
                self._exit(insn.reason, address, insn.length, qualification)
        elif action is Action.MSR:
            self._msr(insn.write, address, insn.length, address + insn.length)
        elif action is Action.TDCALL:
            self._tdcall(address, insn.length)
        elif action is Action.IO:
            port = insn.port
            if port is None:
                port = self.reg.read(X.UC_X86_REG_RDX) & U16_MASK
            qualification = insn.io_qualification | (port << IOQ_PORT_SHIFT)
            self._exit(ExitReason.IO, address, insn.length, qualification)
        elif action is Action.SOFTWARE_INTERRUPT:
            # caught before unicorn runs it, so the event is delivered as the model does
            error = 0 if insn.vector in EXCEPTIONS_WITH_ERROR_CODE else None
            stop = Stop(StopKind.EXCEPTION, vector=insn.vector, error_code=error, addr=address)
            stop.rip = address + insn.length
            self._halt(stop)

    def _exit(self, reason: int, address: int, size: int, qualification: int = 0) -> None:
        info = ExitInfo(TDX_SUCCESS, reason, qualification=qualification, instr_len=size)
        self._halt(Stop(StopKind.EXIT, info, rip=address))

    def _msr(self, write: bool, address: int, size: int, nxt: int) -> None:
        msr = self.reg.read(X.UC_X86_REG_RCX) & U32_MASK
        uses_bitmap = self.vmcs.read(Vmcs.PROC_BASED_CONTROLS) & PROC_USE_MSR_BITMAPS
        if not uses_bitmap or self.vmcs.msr_exits(msr, write):
            self._exit(ExitReason.MSR_WRITE if write else ExitReason.MSR_READ, address, size)
            return
        # The TDX module's write mask for secondary controls leaves out "virtualize x2APIC
        # mode" (bit 4); the model treats it as fixed to 1, so x2APIC MSRs are virtualized.
        if msr in (X2APIC_MSR_EOI, X2APIC_MSR_TPR):
            value = pack_u32_pair(self.reg.read(X.UC_X86_REG_RAX), self.reg.read(X.UC_X86_REG_RDX))
            kind = StopKind.VIRT_EOI if write and msr == X2APIC_MSR_EOI else StopKind.EMULATE_MSR
            self._halt(Stop(kind, rip=address, next_rip=nxt, msr=msr, value=value, write=write))

    def _tdcall(self, address: int, size: int) -> None:
        if self.vmcs.l2_ctls & L2_CTLS_ENABLE_TDVMCALL and self.reg.read(X.UC_X86_REG_RAX) == 0:
            info = ExitInfo(TDX_L2_EXIT_HOST_ROUTED_TDVMCALL, ExitReason.TDCALL, instr_len=size)
            self._halt(Stop(StopKind.EXIT, info, rip=address, next_rip=address + size))
            return
        self._exit(ExitReason.TDCALL, address, size)

    def _on_fault(self, access: int, address: int, size: int, _value: int) -> bool:
        """A protection or unmapped fault; in virtual-TLB mode `address` is the GPA."""
        if EMPTY_BLOCK_GPA <= address < EMPTY_BLOCK_GPA + PAGE_SIZE:
            self.code.request_tlb_flush()  # drop the empty block's entry and run this again
            self._retry = True
            return False
        stop = self._stop
        if stop is not None:  # a translation fault recorded by _on_tlb_fill
            if self._fill_was_data and TRAP_GPA <= address < TRAP_GPA + PAGE_SIZE:
                offset = address - TRAP_GPA  # the fill saw only the page; this is the byte
                if stop.cr2 is not None:
                    stop.cr2 = (stop.cr2 & ~(PAGE_SIZE - 1)) | offset
                if stop.exit is not None:
                    stop.exit.gla = (stop.exit.gla & ~(PAGE_SIZE - 1)) | offset
            return False
        kind = (
            EPTV_FETCH
            if access in FETCH_ACCESSES
            else EPTV_WRITE
            if access in WRITE_ACCESSES
            else EPTV_READ
        )
        window_offset = address - self._refused_base
        if 0 <= window_offset < 2 * self.memory.size:  # refused by the EPT when filled
            return self._refused_access(window_offset, kind)
        gpa = address
        index = self.memory.page_index(gpa)
        last = (gpa + max(size, 1) - 1) & ~(PAGE_SIZE - 1)
        crosses = last != gpa & ~(PAGE_SIZE - 1)
        if index is not None and crosses and self.ept.prot[index] & self._need(kind):
            gpa = last
        gla_page = self._gla_of_gpa_page.get(gpa >> PAGE_SHIFT, gpa >> PAGE_SHIFT)
        gla = (gla_page << PAGE_SHIFT) | (gpa & (PAGE_SIZE - 1))
        rip = self.reg.read(X.UC_X86_REG_RIP) if kind != EPTV_FETCH else gla
        self._stop = Stop(StopKind.EXIT, self._ept_exit(gpa, gla, kind), rip=rip)
        if access in REGION_CHECKS:
            # Unicorn checks a region's protection only when it fills the TLB, and keeps the
            # entry: the next access to the page must not go through without a check.
            self.code.request_tlb_flush()
        return False

    def _refused_access(self, window_offset: int, kind: int) -> bool:
        """An access through an entry into the refused-access window: its EPT-violation exit
        (or, if the EPT allows it by now, a retry with the stale entry flushed)."""
        memory = self.memory
        shared = window_offset >= memory.size
        offset = window_offset - memory.size if shared else window_offset
        index = offset >> PAGE_SHIFT
        prot = (self.ept.shared_prot if shared else self.ept.prot)[index]
        if prot & NEED_PROT[kind]:
            self.code.request_tlb_flush()
            self._retry = True
            return False
        gpa = memory.page_gpa(index) | (offset & PAGE_OFFSET_MASK)
        if shared:
            gpa |= memory.shared_bit
        gpa_page = gpa >> PAGE_SHIFT
        gla = (self._gla_of_gpa_page.get(gpa_page, gpa_page) << PAGE_SHIFT) | (
            gpa & PAGE_OFFSET_MASK
        )
        rip = self.reg.read(REG_RIP)  # a data access: unicorn syncs RIP to its instruction
        self._stop = Stop(STOP_EXIT, self._ept_exit(gpa, gla, kind, index), 0, None, rip)
        return False

    @staticmethod
    def _need(kind: int) -> int:
        return NEED_PROT[kind]

    def _ept_exit(self, gpa: int, gla: int, kind: int, index: int | None = None) -> ExitInfo:
        """The exit an L2 access to `gpa` (TD memory page `index`, if known) causes:
        host-routed for shared or unbacked GPAs, else an EPT violation to L1 (TD Partitioning
        Architecture Specification)."""
        memory = self.memory
        if index is None:
            index = memory.page_index(gpa)
        state = NOT_PRESENT if index is None else memory.state[index]
        qual = kind | EPTV_GLA_VALID | EPTV_TRANSLATED
        if gpa & memory.shared_bit or state in HOST_ROUTED_STATES:
            self.host.td_exit(
                TdExit(TdExitKind.L2_HOST_ROUTED, gpa=gpa, vm=self.vm,
                       exit_reason=ExitReason.EPT_VIOLATION, qualification=qual)
            )  # fmt: skip
            return ExitInfo(TDX_L2_EXIT_HOST_ROUTED_ASYNC, ExitReason.EPT_VIOLATION, qual, gla, gpa)
        if state == PENDING:
            return ExitInfo(
                TDX_SUCCESS, ExitReason.EPT_VIOLATION, qual, gla, gpa, eeq=EEQ_PEND_EPT_VIOLATION
            )
        assert index is not None
        word = self.aliases.word(index, self.vm)
        if word & ATTR_VALID:
            qual |= EPTV_READABLE if word & ATTR_R else 0
            qual |= EPTV_WRITABLE if word & ATTR_W else 0
            qual |= EPTV_EXECUTABLE if word & ATTR_XS else 0
            qual |= EPTV_USER_EXECUTABLE if word & ATTR_XU else 0
        return ExitInfo(TDX_SUCCESS, EPT_VIOLATION, qual, gla, gpa)

    def _timer_exit(self) -> ExitInfo:
        exit_reason = ExitReason.EXTERNAL_INTERRUPT
        self.host.td_exit(TdExit(TdExitKind.TIMER, vm=self.vm, exit_reason=exit_reason))
        return ExitInfo(TDX_L2_EXIT_HOST_ROUTED_ASYNC, ExitReason.EXTERNAL_INTERRUPT)

    def _on_interrupt(self, uc: Any, intno: int, _data: object) -> None:
        """An exception unicorn raised (software interrupts are stopped before they run)."""
        if self._stop is not None:
            return
        rip = self.reg.read(X.UC_X86_REG_RIP)  # the faulting instruction
        error = 0 if intno in EXCEPTIONS_WITH_ERROR_CODE else None
        self._halt(Stop(StopKind.EXCEPTION, vector=intno, error_code=error, rip=rip, addr=rip))

    def _on_invalid(self, uc: Any, _data: object) -> bool:
        rip = self.reg.read(X.UC_X86_REG_RIP)
        self._stop = Stop(StopKind.EXCEPTION, vector=VECTOR_UD, rip=rip, addr=rip)
        return False

    # --- virtual APIC ------------------------------------------------------------------------
    def _virtual_eoi(self) -> ExitInfo | None:
        vector, exits = self.vapic.eoi()
        if exits:
            return ExitInfo(TDX_SUCCESS, ExitReason.VIRTUALIZED_EOI, qualification=vector)
        return None

    # --- event delivery through the L2 IDT (64-bit gates) ----------------------------------
    def _deliver(self, vector: int, error: int | None, rip: int, idt_info: int) -> ExitInfo | None:
        """Deliver one event through the IDT; an exit if delivery itself exits."""
        uc = self.uc
        reg = self.reg  # straight C calls: the binding's conversions cost microseconds each
        idt_base, idt_limit = reg.read_table(X.UC_X86_REG_IDTR)
        gate_gla = gate_address(idt_base, idt_limit, vector)
        if gate_gla is None:
            return ExitInfo(TDX_SUCCESS, ExitReason.TRIPLE_FAULT)
        gate_gpa, fault = self._l2_access(gate_gla, IDT_GATE_SIZE, write=False)
        if fault is not None:
            fault.idt_info = idt_info
            fault.idt_error = error or 0
            return fault
        gate = IdtGate.parse(self.memory.read(gate_gpa, IDT_GATE_SIZE))
        if not gate.usable:
            return ExitInfo(TDX_SUCCESS, ExitReason.TRIPLE_FAULT)
        # one batch (CS and SS are selectors: their slots' upper bytes stay zero)
        cs, rflags, rsp, ss = self._event_regs.read()
        if cs & CPL_MASK:
            return ExitInfo(TDX_SUCCESS, ExitReason.TRIPLE_FAULT)
        new_rsp, data = interrupt_frame(rip, cs, rflags, rsp, ss, error)
        stack_gpa, fault = self._l2_access(new_rsp, len(data), write=True)
        if fault is not None:
            fault.idt_info = idt_info
            fault.idt_error = error or 0
            return fault
        self._guest_write(stack_gpa, data)
        self._rip_dirty = True
        try:
            if gate.selector != cs:
                uc.reg_write(X.UC_X86_REG_CS, gate.selector)
            # RSP, RFLAGS, RIP in this order, in one batch
            self._handler_regs.write(
                (new_rsp, gate.handler_rflags(rflags) | RFLAGS_FIXED, gate.handler)
            )
        except UcError:
            return ExitInfo(TDX_SUCCESS, ExitReason.TRIPLE_FAULT)
        return None

    def _deliver_virtual_interrupt(self) -> ExitInfo | None:
        vector = self.vapic.acknowledge()
        info = interruption_info(vector, INTR_TYPE_EXTERNAL)
        return self._deliver(vector, None, self.reg.read(X.UC_X86_REG_RIP), info)

    # --- code pages ---------------------------------------------------------------------------
    def _index_executable(self, index: int) -> bool:
        """This VM may run code from TD memory page `index`."""
        return bool(self.ept.prot[index] & UC_PROT_EXEC)

    def _probe(self, gla: int) -> int | None:
        gpa, _ = self._walk(gla, EPTV_READ, probe=True)
        return gpa

    def _guest_write(self, gpa: int, data: bytes) -> None:
        """A write into L2 memory by the model itself (event delivery)."""
        self.memory.write(gpa, data)
        self.code.model_wrote(gpa, len(data))

    def _model_wrote(self, gpa: int, length: int) -> None:
        """The model wrote L2 memory in place (the virtual APIC)."""
        self.code.model_wrote(gpa, length)

    def _select_mode(self, slow: bool) -> None:
        """Hook every instruction (interrupt window, STI shadow) or only the exiting ones."""
        if slow == self._slow_mode:
            return
        if slow:
            self._slow_hook = self.uc.hook_add(UC_HOOK_CODE, self._on_insn)
        elif self._slow_hook is not None:
            self.uc.hook_del(self._slow_hook)
            self._slow_hook = None
        self._slow_mode = slow
        self.code.set_exits_enabled(not slow)

    # --- entry and run loop ----------------------------------------------------------------
    def _load_guest_state_fields(self) -> None:
        """Apply guest-state VMCS fields L1 wrote since the last entry."""
        v = self.vmcs
        dirty = v.dirty_guest
        uc = self.uc
        if dirty & {Vmcs.GUEST_GDTR_BASE, Vmcs.GUEST_GDTR_LIMIT}:
            uc.reg_write(X.UC_X86_REG_GDTR, (0, v.read(Vmcs.GUEST_GDTR_BASE),
                                             v.read(Vmcs.GUEST_GDTR_LIMIT), 0))  # fmt: skip
        if dirty & {Vmcs.GUEST_IDTR_BASE, Vmcs.GUEST_IDTR_LIMIT}:
            uc.reg_write(X.UC_X86_REG_IDTR, (0, v.read(Vmcs.GUEST_IDTR_BASE),
                                             v.read(Vmcs.GUEST_IDTR_LIMIT), 0))  # fmt: skip
        if dirty & GUEST_CR_FIELDS:
            self._cr_cache = None
        for enc, reg in (
            (Vmcs.GUEST_CR3, X.UC_X86_REG_CR3),
            (Vmcs.GUEST_CR4, X.UC_X86_REG_CR4),
            (Vmcs.GUEST_CR0, X.UC_X86_REG_CR0),
            (Vmcs.GUEST_CS_SELECTOR, X.UC_X86_REG_CS),
            (Vmcs.GUEST_SS_SELECTOR, X.UC_X86_REG_SS),
            (Vmcs.GUEST_DS_SELECTOR, X.UC_X86_REG_DS),
            (Vmcs.GUEST_ES_SELECTOR, X.UC_X86_REG_ES),
        ):
            if enc in dirty:
                uc.reg_write(reg, v.read(enc))
        dirty.clear()

    def run_at(self, view: memoryview, offset: int) -> ExitInfo:
        """Enter L2 with the 256-byte guest-state block at `offset` in `view` (TD memory); write
        the updated block back in place and return the exit."""
        rflags, rip, ssp, intr_status = GUEST_STATE_TAIL.unpack_from(
            view, offset + GUEST_STATE_TAIL_AT
        )
        self.vapic.rvi, self.vapic.svi = unpack_intr_status(intr_status)
        self._stop = None
        self._rip_dirty = False
        self._exit_rip = None
        self.kick_requested = False
        vmcs = self.vmcs
        values = vmcs.values
        self._shadow = bool(values.get(FIELD_INTERRUPTIBILITY, 0) & BLOCKING_STI_MOV_SS)
        try:
            if vmcs.dirty_guest:
                self._load_guest_state_fields()
            crs = self._cr_cache
            if crs is None or crs[0] & CR0_PG:
                self._code_page = -1  # CR3 or L2's page tables may have changed since the exit
            shared_eptp = bool(vmcs.l2_ctls & L2_CTLS_ENABLE_SHARED_EPTP)
            if shared_eptp != self.ept.shared_eptp:
                self.ept.set_shared_eptp(shared_eptp)
            code = self.code
            controls = values.get(FIELD_PROC_CONTROLS, 0) & SCAN_CONTROLS
            if controls != code.controls:
                code.reset(controls)
            if code.drop_stale():
                self._code_page = -1
            state = self._state_regs
            state.raw[:] = view[offset : offset + GUEST_STATE_REGS_SIZE]
            state.set(RFLAGS_AT, rflags | RFLAGS_FIXED)
            state.store()
            if values.get(FIELD_ENTRY_INTR_INFO, 0) & INTR_INFO_VALID:
                exit_ = self._inject_from_vmcs()
            else:
                exit_ = None
            if exit_ is None:
                exit_ = self._loop(rip)
        except UcError:
            exit_ = ExitInfo(TDX_SUCCESS, ExitReason.INVALID_GUEST_STATE | VM_ENTRY_FAILURE)
            self._exit_regs_current = False
        regs = self._exit_regs
        if not self._exit_regs_current:
            regs.load()
        self._exit_regs_current = False
        rip, cr0, cr3, cr4, self.exit_cs = EXIT_TAIL.unpack_from(regs.raw, RIP_AT * 8)
        exit_rip = self._exit_rip
        if exit_rip is not None and rip != exit_rip:
            self.reg.write(REG_RIP, exit_rip)
            regs.set(RIP_AT, exit_rip)
        self._cr_cache = (cr0, cr3)
        self._cr_volatile = False
        self._write_exit_fields(exit_, cr0, cr3, cr4)
        view[offset : offset + GUEST_STATE_REGS_SIZE] = regs.raw[:GUEST_STATE_REGS_SIZE]
        GUEST_STATE_STATUS.pack_into(
            view,
            offset + GUEST_STATE_REGS_SIZE,
            ssp,
            pack_intr_status(self.vapic.rvi, self.vapic.svi),
        )
        return exit_

    def _inject_from_vmcs(self) -> ExitInfo | None:
        """VM-entry event injection from the VM-entry interruption-information field (Intel SDM
        Vol. 3, "Event Injection")."""
        info = self.vmcs.read(Vmcs.ENTRY_INTR_INFO)
        if not info & INTR_INFO_VALID:
            return None
        self.vmcs.set(Vmcs.ENTRY_INTR_INFO, info & ~INTR_INFO_VALID)
        vector = info & INTR_INFO_VECTOR_MASK
        kind = (info >> INTR_INFO_TYPE_SHIFT) & INTR_INFO_TYPE_MASK
        if kind == INTR_TYPE_EXTERNAL:
            rflags = self.reg.read(X.UC_X86_REG_RFLAGS)
            if not rflags & RFLAGS_IF or self._shadow:
                return ExitInfo(TDX_SUCCESS, ExitReason.INVALID_GUEST_STATE | VM_ENTRY_FAILURE)
        error = (
            self.vmcs.read(Vmcs.ENTRY_EXCEPTION_ERROR_CODE)
            if info & INTR_INFO_DELIVER_ERROR
            else None
        )
        rip = self.reg.read(X.UC_X86_REG_RIP)
        if kind in (INTR_TYPE_SW_INTERRUPT, INTR_TYPE_SW_EXCEPTION):
            rip += self.vmcs.read(Vmcs.ENTRY_INSTRUCTION_LENGTH)
        elif kind not in (INTR_TYPE_EXTERNAL, INTR_TYPE_NMI, INTR_TYPE_HW_EXCEPTION):
            return ExitInfo(TDX_SUCCESS, ExitReason.INVALID_GUEST_STATE | VM_ENTRY_FAILURE)
        self._shadow = False
        return self._deliver(vector, error, rip, info)

    def _loop(self, entry_rip: int) -> ExitInfo:
        run = self._runner.run
        code = self.code
        self._budget = self.instruction_budget
        rip: int | None = entry_rip
        for _ in range(MAX_STOPS_PER_ENTRY):
            self._exit_regs_current = False
            self._retry = False
            early = self._evaluate_pending()
            if early is not None:
                return early
            slow = self._watch_window or self._shadow
            if slow != self._slow_mode:
                self._select_mode(slow)
            self._stop = None
            if rip is None or self._rip_dirty:
                rip = self.reg.read(REG_RIP)
                self._rip_dirty = False
            if self.kick_requested:
                return ExitInfo(TDX_L2_EXIT_PENDING_INTERRUPT, ExitReason.EXTERNAL_INTERRUPT)
            code.before_run()
            if not slow and code.exit_here(rip, self._probe):
                # unicorn would stop before running anything: decide here, without it
                stop = self._stop_at_exit(rip)
                rip = None
                if stop is None:
                    continue
                result = self._handle_stop(stop)
                if result is not None:
                    return result
                continue
            self._running = True
            try:  # the count bounds a runaway L2 (the instruction budget)
                failed = run(rip, max(self._budget, 0) + 1) != 0  # faults: the hooks recorded
            except UcError:  # a hook's own
                failed = True
            self._running = False
            code.after_run()
            stop = self._stop
            if stop is None and not failed:
                stop = self._unhooked_stop()
            elif stop is None:
                if not self._retry:
                    return ExitInfo(TDX_SUCCESS, ExitReason.TRIPLE_FAULT)
                self._retry = False
            rip = None
            if stop is None:
                continue
            result = self._handle_stop(stop)
            if result is not None:
                return result
        return self._timer_exit()

    def _runnable(self, rip: int, length: int) -> bool:
        """The bytes at `rip` lie on pages L2 may run (else unicorn raises the fetch fault)."""
        for gla in {rip, rip + length - 1}:
            gpa = self.gla_to_gpa(gla)
            if gpa is None or self.memory.is_shared(gpa):
                return False
            index = self.memory.page_index(gpa)
            if index is None or not self._index_executable(index):
                return False
        return True

    def _stop_at_exit(self, rip: int) -> Stop | None:
        """Unicorn stops (or would stop) before `rip`, a possible exiting instruction: the stop
        its decoding asks for, or None once it has run because it does not exit."""
        code = self.code.code_at(rip)  # None if the instruction may cross the page end
        if code is not None:
            self._decode(code, rip)
        else:
            code = self._fetch(rip, MAX_INSN_LEN)
            if code:  # exits exist only on pages this VM may run (see CodePages)
                self._decode(code, rip)
                stop = self._stop
                length = stop.exit.instr_len if stop is not None and stop.exit else 0
                crosses = (rip & PAGE_OFFSET_MASK) + length > PAGE_SIZE
                if crosses and not self._runnable(rip, length):
                    self._stop = None  # its tail is on a page L2 may not run: unicorn faults
        if self._stop is None:
            self._exit_regs_current = False
            self._running = True
            self.code.step(rip)
            self._running = False
        return self._stop

    def _unhooked_stop(self) -> Stop | None:
        """Why unicorn stopped with no hook recording it: an L1 interrupt kick, an exit address
        (decoded now; run if it does not exit), or the instruction budget used up."""
        regs = self._exit_regs
        regs.load()  # the exit's registers, if it is one
        self._exit_regs_current = True
        rip = regs.get(RIP_AT)
        if self.kick_requested:
            exit_ = ExitInfo(TDX_L2_EXIT_PENDING_INTERRUPT, ExitReason.EXTERNAL_INTERRUPT)
            return Stop(StopKind.EXIT, exit_, rip=rip)
        if self.code.stopped_to_resume:
            return None  # resume with the written page's translations dropped
        if not self._slow_mode and self.code.is_exit(rip):
            return self._stop_at_exit(rip)
        self._budget = -1
        return Stop(StopKind.EXIT, self._timer_exit(), rip=rip)

    def _evaluate_pending(self) -> ExitInfo | None:
        """Interrupt-window exit or virtual-interrupt delivery at an instruction boundary."""
        window = self.vmcs.values.get(FIELD_PROC_CONTROLS, 0) & PROC_INTERRUPT_WINDOW_EXITING
        pending = self.vapic.rvi and self.vapic.interrupt_pending()
        self._watch_window = bool(window or pending)
        if not self._watch_window:
            return None
        if self._shadow or not self.reg.read(X.UC_X86_REG_RFLAGS) & RFLAGS_IF:
            return None
        self._watch_window = False
        if window:
            return ExitInfo(TDX_SUCCESS, ExitReason.INTERRUPT_WINDOW)
        return self._deliver_virtual_interrupt()

    def _handle_stop(self, stop: Stop) -> ExitInfo | None:
        if stop.kind is STOP_EXIT:
            assert stop.exit is not None
            if stop.exit.status == TDX_L2_EXIT_HOST_ROUTED_TDVMCALL:
                self._exit_regs_current = False
                self.reg.write(X.UC_X86_REG_RIP, stop.rip)
                self._host_tdvmcall()
                self.reg.write(X.UC_X86_REG_RIP, stop.next_rip)
            else:
                self._exit_rip = stop.rip  # set (if unicorn is not already there) at the exit
            return stop.exit
        self._exit_regs_current = False
        if stop.kind == StopKind.WINDOW:
            self.reg.write(X.UC_X86_REG_RIP, stop.rip)
            return None
        if stop.kind == StopKind.VIRT_EOI:
            self.reg.write(X.UC_X86_REG_RIP, stop.next_rip)
            return self._virtual_eoi()
        if stop.kind == StopKind.EMULATE_MSR:
            self._emulate_x2apic_msr(stop)
            return None
        return self._handle_exception(stop)

    def _emulate_x2apic_msr(self, stop: Stop) -> None:
        """Virtualized x2APIC TPR write/read through the vAPIC page (EOI read returns 0)."""
        if stop.write:
            if stop.msr == X2APIC_MSR_TPR:
                self.vapic.write_tpr(stop.value & INTR_INFO_VECTOR_MASK)
        else:
            value = self.vapic.register(VAPIC_TPR) if stop.msr == X2APIC_MSR_TPR else 0
            self.reg.write(X.UC_X86_REG_RAX, value)
            self.reg.write(X.UC_X86_REG_RDX, 0)
        self.reg.write(X.UC_X86_REG_RIP, stop.next_rip)

    def _handle_exception(self, stop: Stop) -> ExitInfo | None:
        vector = stop.vector
        code = self._fetch(stop.addr, 1) if stop.addr >= 0 else b""
        kind = event_type(code[0] if code else None, vector)
        info = interruption_info(vector, kind, stop.error_code is not None)
        self.reg.write(X.UC_X86_REG_RIP, stop.rip)
        if stop.cr2 is not None:
            self.uc.reg_write(X.UC_X86_REG_CR2, stop.cr2)
        if self.vmcs.read(Vmcs.EXCEPTION_BITMAP) >> vector & 1 and kind == INTR_TYPE_HW_EXCEPTION:
            return ExitInfo(
                TDX_SUCCESS,
                ExitReason.EXCEPTION_NMI,
                intr_info=info,
                intr_error=stop.error_code or 0,
            )
        if vector == VECTOR_DF:
            return ExitInfo(TDX_SUCCESS, ExitReason.TRIPLE_FAULT)
        return self._deliver(vector, stop.error_code, stop.rip, info)

    def _host_tdvmcall(self) -> None:
        """L2 TDVMCALL straight to the host (L2_CTLS.ENABLE_TDVMCALL, leaf 0)."""
        values = self._gprs.read()
        regs = Regs.from_list(values)
        out = self.host.tdvmcall(regs.copy())
        exposed = regs.rcx
        for index in range(len(UC_GPRS)):
            if exposed >> index & 1:
                values[index] = out.get(index)
        values[0] = 0
        self._gprs.write(values)

    def _write_exit_fields(self, exit_: ExitInfo, cr0: int, cr3: int, cr4: int) -> None:
        shadow = INTERRUPTIBILITY_STI if self._shadow else 0
        # one store per field: a dict.update from an iterator costs three times as much
        values = self.vmcs.values
        values[EXIT_REASON] = exit_.reason
        values[EXIT_QUALIFICATION] = exit_.qualification
        values[GUEST_LINEAR_ADDRESS] = exit_.gla
        values[GUEST_PHYSICAL_ADDRESS] = exit_.gpa
        values[EXIT_INTR_INFO] = exit_.intr_info
        values[EXIT_INTR_ERROR_CODE] = exit_.intr_error
        values[IDT_VECTORING_INFO] = exit_.idt_info
        values[IDT_VECTORING_ERROR_CODE] = exit_.idt_error
        values[EXIT_INSTRUCTION_LENGTH] = exit_.instr_len
        values[EXIT_INSTRUCTION_INFO] = exit_.instr_info
        values[FIELD_INTERRUPTIBILITY] = shadow
        values[GUEST_CR0] = cr0
        values[GUEST_CR3] = cr3
        values[GUEST_CR4] = cr4

    def kick(self) -> None:
        """Ask a running L2 to exit to L1 (L1 interrupt pending): unicorn stops at the end of
        the current translation block. The run loop checks the request before each start of
        unicorn; a kick landing just as unicorn starts is seen at its next stop, at the latest
        when the instruction budget ends."""
        self.kick_requested = True
        self.uc.emu_stop()  # thread-safe in unicorn; a no-op unless L2 is running
