"""The L2 VMCS of each L2 VM as L1 sees it through TDG.VP.RD/WR.

Field encodings are `tdxdefs.vmcs`; the field lists and write masks here are the module's behaviour
(Intel TDX Module TD Partitioning Architecture Specification, "L2 VMCS fields"; not checked against
the specification's table); fields outside the list are TDX_METADATA_FIELD_ID_INCORRECT.
Guest-state fields written by L1 are loaded into the L2 vCPU at the next TDG.VP.ENTER.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache

from tdxdefs.metadata import (
    ALLOWED_L2_VCPU_CTLS,
    CLASS_L2_MSR_BITMAP_BASE,
    CLASS_L2_VMCS_BASE,
    CLASS_MANAGEMENT,
    CLASS_PER_VM_STRIDE,
    CONTEXT_VCPU,
    ELEM_SIZE_64,
    ELEM_SIZE_OF_WIDTH,
    FIELD_CLASS_MASK,
    FIELD_CLASS_SHIFT,
    FIELD_CODE_MASK,
    FIELD_CONTEXT_MASK,
    FIELD_CONTEXT_SHIFT,
    FIELD_ELEM_SIZE_MASK,
    FIELD_ELEM_SIZE_SHIFT,
    L2_CTLS_CODE_BASE,
    L2_VAPIC_GPA_CODE_BASE,
)
from tdxdefs.tdcall import MAX_L2_VMS, PAGE_SIZE
from tdxdefs.vmcs import (
    MSR_BITMAP_READ_HIGH,
    MSR_BITMAP_READ_LOW,
    MSR_BITMAP_WRITE_HIGH,
    MSR_BITMAP_WRITE_LOW,
    MSR_HIGH_BASE,
    MSR_LOW_LIMIT,
    NULL_PA,
    PROC_HLT_EXITING,
    PROC_USE_MSR_BITMAPS,
    VMCS_HIGH_ACCESS,
    Vmcs,
    Width,
    width_of,
)

ALL_ONES_64 = 0xFFFFFFFFFFFFFFFF
MSR_BITMAP_QWORDS = PAGE_SIZE // 8
MSR_BITS_PER_BYTE = 8


VALUE_MASK_OF_WIDTH = {
    Width.W16: 0xFFFF,
    Width.W64: ALL_ONES_64,
    Width.W32: 0xFFFFFFFF,
    Width.NATURAL: ALL_ONES_64,
}


# Write masks of the L2 VMCS fields; writable fields without a listed mask take the whole width.
WRITE_MASKS: dict[int, int] = {
    Vmcs.EPT_POINTER: 0x80,
    Vmcs.VIRTUAL_APIC_PAGE_ADDR: 0xFFFFFFFFFFFFF000,
    Vmcs.GUEST_IA32_EFER: 0x501,
    Vmcs.PROC_BASED_CONTROLS: 0x48F99A04,
    Vmcs.SECONDARY_CONTROLS: 0xC513F0C,
    Vmcs.TERTIARY_CONTROLS: 0xE,
    Vmcs.ENTRY_CONTROLS: 0x200,
    Vmcs.EXCEPTION_BITMAP: 0xFFFBFFFF,
    Vmcs.GUEST_CR0: 0x8005001F,
    Vmcs.GUEST_CR4: 0x3FF1FBF,
    Vmcs.GUEST_IA32_DEBUGCTL: 0xFFC1,
}

READ_ONLY: frozenset[int] = frozenset(
    {
        Vmcs.POSTED_INTR_NV,
        Vmcs.IO_BITMAP_A,
        Vmcs.IO_BITMAP_B,
        Vmcs.MSR_BITMAP,
        Vmcs.POSTED_INTR_DESC_ADDR,
        Vmcs.VM_FUNCTION_CONTROLS,
        Vmcs.VE_INFO_ADDR,
        Vmcs.SHARED_EPTP,
        Vmcs.GUEST_PHYSICAL_ADDRESS,
        Vmcs.PIN_BASED_CONTROLS,
        Vmcs.EXIT_CONTROLS,
        Vmcs.VM_INSTRUCTION_ERROR,
        Vmcs.EXIT_REASON,
        Vmcs.EXIT_INTR_INFO,
        Vmcs.EXIT_INTR_ERROR_CODE,
        Vmcs.IDT_VECTORING_INFO,
        Vmcs.IDT_VECTORING_ERROR_CODE,
        Vmcs.EXIT_INSTRUCTION_LENGTH,
        Vmcs.EXIT_INSTRUCTION_INFO,
        Vmcs.GUEST_ACTIVITY_STATE,
        Vmcs.EXIT_QUALIFICATION,
        Vmcs.GUEST_LINEAR_ADDRESS,
    }
)

KNOWN: frozenset[int] = frozenset(int(f) for f in Vmcs)
GUEST_STATE_FIRST = 0x0800
GUEST_STATE_BLOCKS = (
    (0x0800, 0x080F),
    (0x2800, 0x2807),
    (0x4800, 0x482B),
    (0x6800, 0x6827),
)

# Defaults a fresh L2 vCPU starts with: 64-bit flat code segment, MSR bitmaps in use, HLT exits.
CODE64_AR = 0xA09B
DATA_AR = 0xC093
FLAT_LIMIT = 0xFFFFFFFF
DEFAULTS: dict[int, int] = {
    Vmcs.VIRTUAL_APIC_PAGE_ADDR: NULL_PA & ~(PAGE_SIZE - 1),  # unset: beyond any GPAW
    Vmcs.VE_INFO_ADDR: NULL_PA,
    Vmcs.POSTED_INTR_DESC_ADDR: NULL_PA,
    Vmcs.PROC_BASED_CONTROLS: PROC_USE_MSR_BITMAPS | PROC_HLT_EXITING,
    Vmcs.GUEST_CS_AR: CODE64_AR,
    Vmcs.GUEST_CS_LIMIT: FLAT_LIMIT,
    Vmcs.GUEST_SS_AR: DATA_AR,
    Vmcs.GUEST_SS_LIMIT: FLAT_LIMIT,
}


def is_guest_state(encoding: int) -> bool:
    """True for guest-state area fields (loaded into the vCPU at entry)."""
    return any(lo <= encoding <= hi for lo, hi in GUEST_STATE_BLOCKS)


class FieldKind(IntEnum):
    """What a VP.RD/WR field id addresses."""

    VMCS = 0
    MSR_BITMAP = 1
    L2_CTLS = 2
    L2_VAPIC_GPA = 3


FIELD_CACHE_SIZE = 512


@dataclass(frozen=True)
class FieldRef:
    """A decoded TDG.VP.RD/WR field id."""

    kind: FieldKind
    vm: int
    code: int


@lru_cache(maxsize=FIELD_CACHE_SIZE)
def decode_vp_field(field_id: int, num_l2_vms: int) -> FieldRef | None:
    """Decode a VCPU-context field id; None if it names nothing this model knows (cached: L1
    reads the same few exit fields after every L2 exit)."""
    cls = (field_id >> FIELD_CLASS_SHIFT) & FIELD_CLASS_MASK
    context = (field_id >> FIELD_CONTEXT_SHIFT) & FIELD_CONTEXT_MASK
    size = (field_id >> FIELD_ELEM_SIZE_SHIFT) & FIELD_ELEM_SIZE_MASK
    code = field_id & FIELD_CODE_MASK
    if context != CONTEXT_VCPU:
        return None
    if cls == CLASS_MANAGEMENT:
        if size != ELEM_SIZE_64:
            return None
        if L2_CTLS_CODE_BASE < code <= L2_CTLS_CODE_BASE + num_l2_vms:
            return FieldRef(FieldKind.L2_CTLS, code - L2_CTLS_CODE_BASE, code)
        if L2_VAPIC_GPA_CODE_BASE < code <= L2_VAPIC_GPA_CODE_BASE + num_l2_vms:
            return FieldRef(FieldKind.L2_VAPIC_GPA, code - L2_VAPIC_GPA_CODE_BASE, code)
        return None
    for vm in range(1, num_l2_vms + 1):
        base = CLASS_L2_VMCS_BASE + CLASS_PER_VM_STRIDE * (vm - 1)
        if cls == base:
            if code not in KNOWN or code & VMCS_HIGH_ACCESS:
                return None
            if ELEM_SIZE_OF_WIDTH[width_of(code)] != size:
                return None
            return FieldRef(FieldKind.VMCS, vm, code)
        if cls == CLASS_L2_MSR_BITMAP_BASE + CLASS_PER_VM_STRIDE * (vm - 1):
            if size != ELEM_SIZE_64 or code >= MSR_BITMAP_QWORDS:
                return None
            return FieldRef(FieldKind.MSR_BITMAP, vm, code)
    return None


@dataclass
class L2Vmcs:
    """One L2 VM's VMCS for one vCPU, plus its MSR bitmap page and L2_CTLS."""

    vm: int
    values: dict[int, int] = field(default_factory=lambda: dict(DEFAULTS))
    msr_bitmap: bytearray = field(default_factory=lambda: bytearray(b"\xff" * PAGE_SIZE))
    l2_ctls: int = 0
    dirty_guest: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not 1 <= self.vm <= MAX_L2_VMS:
            raise ValueError(f"L2 VM index {self.vm} outside 1..{MAX_L2_VMS}")

    def read(self, encoding: int) -> int:
        """Current value of a VMCS field (0 if never written)."""
        return self.values.get(encoding, 0)

    def set(self, encoding: int, value: int) -> None:
        """Module-internal write (exit information, state written back on exit)."""
        self.values[encoding] = value & VALUE_MASK_OF_WIDTH[width_of(encoding)]

    def l1_write(self, encoding: int, value: int, mask: int) -> int:
        """L1 write through VP.WR with the field's write mask applied; returns the old value."""
        old = self.read(encoding)
        eff = mask & WRITE_MASKS.get(encoding, VALUE_MASK_OF_WIDTH[width_of(encoding)])
        self.values[encoding] = (old & ~eff) | (value & eff)
        if is_guest_state(encoding):
            self.dirty_guest.add(encoding)
        return old

    def msr_qword(self, index: int) -> int:
        """One 8-byte word of the MSR bitmap page."""
        return int.from_bytes(self.msr_bitmap[8 * index : 8 * index + 8], "little")

    def set_msr_qword(self, index: int, value: int) -> None:
        """Store one 8-byte word of the MSR bitmap page."""
        self.msr_bitmap[8 * index : 8 * index + 8] = value.to_bytes(8, "little")

    def msr_exits(self, msr: int, write: bool) -> bool:
        """Whether RDMSR/WRMSR of `msr` exits to L1 per the bitmap (out-of-range MSRs always do)."""
        if msr < MSR_LOW_LIMIT:
            base, bit = (MSR_BITMAP_WRITE_LOW if write else MSR_BITMAP_READ_LOW), msr
        elif MSR_HIGH_BASE <= msr < MSR_HIGH_BASE + MSR_LOW_LIMIT:
            base = MSR_BITMAP_WRITE_HIGH if write else MSR_BITMAP_READ_HIGH
            bit = msr - MSR_HIGH_BASE
        else:
            return True
        byte = self.msr_bitmap[base + bit // MSR_BITS_PER_BYTE]
        return bool(byte >> (bit % MSR_BITS_PER_BYTE) & 1)


def l2_ctls_valid(value: int) -> bool:
    """L2_CTLS: only bits 0 and 1 are allowed in TDX module 1.5.01 (TD Partitioning spec)."""
    return not value & ~ALLOWED_L2_VCPU_CTLS
