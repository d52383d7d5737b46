"""One L2 guest as L1 sets it up: its RAM, the identity paging and flat GDT of the L2 contract,
its image, its aliases, its VMCS entry state and its devices (l2-firmware/README.md).

Per L2, L1 uses a support area of its own pages: the page tables and GDT (aliased read-only to
that L2: it must read them and must not write them), the virtual-APIC page and the guest-state
block (L1's alone), and the TPM CRB command/response buffer (aliased read/write). Code pages of
our firmware are aliased R+X and data R+W from its header; a user's headerless image gets R+X for
its pages and R+W for the rest of its RAM.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from svsm.aliases import AliasManager
from svsm.crb import CRB_BASE, CrbDevice
from svsm.decode import MmioInstruction
from svsm.guestmem import GuestMemory
from svsm.interrupts import VirtualApic
from svsm.l1vtpm import L1VtpmService
from svsm.l2image import L2ImageLayout
from svsm.memory import Memory
from svsm.ports import L2Console
from svsm.tdcall import Tdcall
from svsm.vcpu import L2Vcpu
from tdxdefs.attributes import GpaAttr
from tdxdefs.metadata import msr_bitmap_field_id
from tdxdefs.tdcall import PAGE_SIZE, RCX, RDI, RDX, RSI, RSP, U64_MASK, Leaf
from tdxdefs.vmcs import MSR_BITMAP_WRITE_LOW, SEC_VIRTUAL_INTR_DELIVERY, Vmcs
from tdxdefs.x86 import (
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    GDT_CODE64,
    GDT_DATA,
    GDT_FLAT_LIMIT,
    RFLAGS_FIXED,
    SELECTOR_CODE,
    SELECTOR_DATA,
    X2APIC_MSR_EOI,
)

ENTRY_FLAG_SERVE_RELAY = 1 << 0  # RCX at entry: our firmware serves the relay after its self-test
PTE_PRESENT_WRITABLE = 0x3
PDE_LARGE = 0x80
IDENTITY_GIB = 4
ENTRIES = 512
PAGE_2M = 0x200000
BITS_PER_BYTE = 8
QWORD_BITS = 64


class SupportPage(Enum):
    """The pages of an L2's support area, in order."""

    PML4 = 0
    PDPT = 1
    PD0 = 2  # PD0..PD3 map 0..4 GiB
    GDT = 6
    VAPIC = 7
    GUEST_STATE = 8
    CRB_BUFFER = 9
    MAILBOX = 10  # the relay mailbox (tdxdefs.relay), aliased read/write


SUPPORT_PAGES = 11


@dataclass(frozen=True)
class L2Layout:
    """Where an L2 lives: its RAM and L1's support pages for it."""

    vm: int
    ram_gpa: int
    ram_size: int
    support_gpa: int

    def page(self, which: SupportPage) -> int:
        """The GPA of one support page."""
        return self.support_gpa + which.value * PAGE_SIZE

    def owns(self, gpa: int) -> bool:
        """True if `gpa` is in this L2's RAM."""
        return self.ram_gpa <= gpa < self.ram_gpa + self.ram_size


class L2State(Enum):
    """Where an L2 is in its life."""

    RUNNING = "running"
    EXITED = "exited"
    STOPPED = "stopped"


_RUNNING = L2State.RUNNING


@dataclass
class L2Outcome:
    """How an L2 ended: an exit code it chose, or a fatal report naming the exit and RIP."""

    state: L2State = L2State.RUNNING
    exit_code: int | None = None
    fatal: str = ""
    exits: Counter[str] = field(default_factory=Counter)


class L2Guest:
    """L2 VM `layout.vm`: built by `setup`, run exit by exit by `svsm.exits`."""

    def __init__(
        self,
        tdcall: Tdcall,
        memory: Memory,
        aliases: AliasManager,
        layout: L2Layout,
        image: bytes,
        log: Callable[[str], None],
        tpm: Callable[[bytes], bytes | None] | None = None,
        probe_gpa: int = 0,
        serve_relay: bool = False,
        doorbell: Callable[[L2Guest], None] | None = None,
        service: L1VtpmService | None = None,
    ) -> None:
        self.tdcall = tdcall
        self.memory = memory
        self.aliases = aliases
        self.layout = layout
        self.vm = layout.vm
        self.image = image
        self.image_layout = L2ImageLayout.parse(image)
        self.log = log
        self.probe_gpa = probe_gpa
        self.serve_relay = serve_relay
        self.doorbell = doorbell
        # Called after each HLT exit: the relay takes an answered mailbox as the doorbell there.
        self.on_halt: Callable[[L2Guest], None] | None = None
        # Decoded MMIO instructions by (their bytes as fetched, RIP), kept across runs (svsm.exits)
        self.decoded: dict[tuple[bytes, int], MmioInstruction] = {}
        self.service = service
        self.mailbox_gpa = layout.page(SupportPage.MAILBOX)  # the relay's, at every command
        self.vcpu = L2Vcpu(tdcall, memory, self.vm, layout.page(SupportPage.GUEST_STATE))
        self.apic = VirtualApic(memory, layout.page(SupportPage.VAPIC))
        self.console = L2Console(self.vm, log)
        self.guest_memory = GuestMemory(memory, aliases, self.vm)
        buffer = layout.page(SupportPage.CRB_BUFFER)
        self.crb = CrbDevice(
            buffer,
            PAGE_SIZE,
            lambda offset, size: memory.read(buffer + offset, size),
            lambda offset, data: memory.write(buffer + offset, data),
            tpm if tpm is not None else self._no_tpm,
            log=lambda line: log(f"L2[{self.vm}] {line}"),
        )
        if tpm is None:
            self.crb.fail("no vTPM is attached to this L2")  # tpmSts from the start
        self.outcome = L2Outcome()
        self.halted = False  # in HLT with nothing pending: not entered until an interrupt

    def _no_tpm(self, command: bytes) -> bytes | None:
        self.crb.fail("no vTPM is attached to this L2")
        return None

    # --- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        """Image, paging, GDT, aliases, VMCS state; afterwards the L2 can be entered."""
        lay = self.layout
        if len(self.image) > lay.ram_size or self.image_layout.bss_end > lay.ram_size:
            raise ValueError(
                f"L2 image of {len(self.image)} bytes (bss to {self.image_layout.bss_end:#x}) "
                f"does not fit L2 VM {self.vm}'s {lay.ram_size:#x} bytes of RAM"
            )
        for which in (SupportPage.VAPIC, SupportPage.GUEST_STATE):
            self.aliases.reserve(lay.page(which), PAGE_SIZE, f"L2 VM {self.vm} {which.name}")
        self.memory.write(lay.ram_gpa, bytes(lay.ram_size))
        self.memory.write(lay.ram_gpa, self.image)
        self._build_paging()
        self._build_gdt()
        self._grant_aliases()
        self._load_vmcs()
        state = self.vcpu.state
        state.rip = lay.ram_gpa
        state.rflags = RFLAGS_FIXED
        state.gprs[RSP] = lay.ram_gpa + lay.ram_size
        state.gprs[RDI] = self.vm
        state.gprs[RSI] = self.probe_gpa
        state.gprs[RDX] = lay.page(SupportPage.MAILBOX)
        state.gprs[RCX] = ENTRY_FLAG_SERVE_RELAY if self.serve_relay else 0

    def _build_paging(self) -> None:
        lay = self.layout
        pml4, pdpt = lay.page(SupportPage.PML4), lay.page(SupportPage.PDPT)
        self.memory.write(
            pml4, (pdpt | PTE_PRESENT_WRITABLE).to_bytes(8, "little").ljust(PAGE_SIZE, b"\0")
        )
        entries = b""
        for gib in range(IDENTITY_GIB):
            pd = lay.support_gpa + (SupportPage.PD0.value + gib) * PAGE_SIZE
            entries += (pd | PTE_PRESENT_WRITABLE).to_bytes(8, "little")
            table = b"".join(
                (((gib << 30) + i * PAGE_2M) | PTE_PRESENT_WRITABLE | PDE_LARGE).to_bytes(
                    8, "little"
                )
                for i in range(ENTRIES)
            )
            self.memory.write(pd, table)
        self.memory.write(pdpt, entries.ljust(PAGE_SIZE, b"\0"))

    def _build_gdt(self) -> None:
        gdt = b"".join(v.to_bytes(8, "little") for v in (0, GDT_CODE64, GDT_DATA))
        self.memory.write(self.layout.page(SupportPage.GDT), gdt.ljust(PAGE_SIZE, b"\0"))

    def _grant_aliases(self) -> None:
        lay, img, vm = self.layout, self.image_layout, self.vm
        tables = lay.page(SupportPage.PML4)
        self.aliases.grant(vm, tables, 6 * PAGE_SIZE, GpaAttr.R, f"L2 VM {vm} page tables")
        self.aliases.grant(vm, lay.page(SupportPage.GDT), PAGE_SIZE, GpaAttr.R, f"L2 VM {vm} GDT")
        self.aliases.grant(
            vm, lay.page(SupportPage.CRB_BUFFER), PAGE_SIZE, GpaAttr.R | GpaAttr.W,
            f"L2 VM {vm} TPM CRB buffer",
        )  # fmt: skip
        self.aliases.grant(
            vm, lay.page(SupportPage.MAILBOX), PAGE_SIZE, GpaAttr.R | GpaAttr.W,
            f"L2 VM {vm} relay mailbox",
        )  # fmt: skip
        code = img.text_end if img.has_header else -(-len(self.image) // PAGE_SIZE) * PAGE_SIZE
        self.aliases.grant(vm, lay.ram_gpa, code, GpaAttr.R | GpaAttr.XS, f"L2 VM {vm} code")
        if lay.ram_size > code:
            self.aliases.grant(
                vm, lay.ram_gpa + code, lay.ram_size - code, GpaAttr.R | GpaAttr.W,
                f"L2 VM {vm} data and RAM",
            )  # fmt: skip

    def _load_vmcs(self) -> None:
        lay, cpu = self.layout, self.vcpu
        cpu.vmcs_write(Vmcs.VIRTUAL_APIC_PAGE_ADDR, lay.page(SupportPage.VAPIC))
        cpu.vmcs_write(Vmcs.GUEST_GDTR_BASE, lay.page(SupportPage.GDT))
        cpu.vmcs_write(Vmcs.GUEST_GDTR_LIMIT, GDT_FLAT_LIMIT)
        cpu.vmcs_write(Vmcs.GUEST_CS_SELECTOR, SELECTOR_CODE)
        cpu.vmcs_write(Vmcs.GUEST_SS_SELECTOR, SELECTOR_DATA)
        cpu.vmcs_write(Vmcs.GUEST_CR3, lay.page(SupportPage.PML4))
        cpu.vmcs_write(Vmcs.GUEST_CR4, CR4_PAE)
        cpu.vmcs_write(Vmcs.GUEST_CR0, CR0_PE | CR0_PG)
        cpu.vmcs_write(Vmcs.SECONDARY_CONTROLS, SEC_VIRTUAL_INTR_DELIVERY)
        self._msr_passthrough_write(X2APIC_MSR_EOI)  # EOI is virtualized, not an exit

    def _msr_passthrough_write(self, msr: int) -> None:
        bit = MSR_BITMAP_WRITE_LOW * BITS_PER_BYTE + msr
        qword, shift = divmod(bit, QWORD_BITS)
        self.tdcall.call(
            Leaf.VP_WR, rdx=msr_bitmap_field_id(self.vm, qword), r8=0, r9=(1 << shift) & U64_MASK
        )

    # --- state ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True until the L2 exits or is stopped."""
        return self.outcome.state is _RUNNING

    def finish(self, code: int) -> None:
        """The L2 wrote its exit code."""
        self.console.flush()
        self.outcome.state = L2State.EXITED
        self.outcome.exit_code = code
        self.log(f"L2 {self.vm} exited with code {code}")

    def stop(self, why: str) -> None:
        """A fatal report: the L2 is stopped; L1 and the other L2s go on."""
        self.console.flush()
        self.outcome.state = L2State.STOPPED
        self.outcome.fatal = why
        self.log(f"L2 {self.vm} stopped: {why}")

    def post_interrupt(self, vector: int) -> None:
        """Request `vector` for this L2 (its virtual APIC) and wake it from HLT."""
        self.apic.post(vector, self.vcpu.state)
        self.halted = False

    def is_crb(self, gpa: int) -> bool:
        """True if `gpa` is in the TPM CRB register page."""
        return CRB_BASE <= gpa < CRB_BASE + PAGE_SIZE
