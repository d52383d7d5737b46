"""The L2 VMCS of each L2 VM as L1 sees it through TDG.VP.RD/WR.

Intel TDX Module TD Partitioning Architecture Specification (L2 VMCS fields, L2_CTLS); field IDs per
the Intel TDX Module v1.5 ABI Specification (metadata field identifiers). Field lists and write
masks follow the TDX module source, Intel's TD-partitioning vTPM prototype and Intel's
TD-partitioning Linux L1 VMM (not yet checked against the specification's field table); fields
outside the list are TDX_METADATA_FIELD_ID_INCORRECT.
Guest-state fields written by L1 are loaded into the L2 vCPU at the next TDG.VP.ENTER.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from tdxsim.abi import (
    ALLOWED_L2_VCPU_CTLS,
    CLASS_L2_MSR_BITMAP_BASE,
    CLASS_L2_VMCS_BASE,
    CLASS_MANAGEMENT,
    CLASS_PER_VM_STRIDE,
    CONTEXT_VCPU,
    ELEM_SIZE_16,
    ELEM_SIZE_32,
    ELEM_SIZE_64,
    FIELD_CLASS_MASK,
    FIELD_CLASS_SHIFT,
    FIELD_CODE_MASK,
    FIELD_CONTEXT_MASK,
    FIELD_CONTEXT_SHIFT,
    FIELD_ELEM_SIZE_MASK,
    FIELD_ELEM_SIZE_SHIFT,
    L2_CTLS_CODE_BASE,
    L2_VAPIC_GPA_CODE_BASE,
    MAX_L2_VMS,
    MSR_BITMAP_READ_HIGH,
    MSR_BITMAP_READ_LOW,
    MSR_BITMAP_WRITE_HIGH,
    MSR_BITMAP_WRITE_LOW,
    MSR_HIGH_BASE,
    MSR_LOW_LIMIT,
    NULL_PA,
    PAGE_SIZE,
    PROC_HLT_EXITING,
    PROC_USE_MSR_BITMAPS,
)

ALL_ONES_64 = 0xFFFFFFFFFFFFFFFF
VMCS_WIDTH_SHIFT = 13
VMCS_WIDTH_MASK = 0x3
VMCS_HIGH_ACCESS = 1
MSR_BITMAP_QWORDS = PAGE_SIZE // 8
MSR_BITS_PER_BYTE = 8


class Width(IntEnum):
    """VMCS field width, encoding bits 14:13."""

    W16 = 0
    W64 = 1
    W32 = 2
    NATURAL = 3


ELEM_SIZE_OF_WIDTH = {
    Width.W16: ELEM_SIZE_16,
    Width.W64: ELEM_SIZE_64,
    Width.W32: ELEM_SIZE_32,
    Width.NATURAL: ELEM_SIZE_64,
}
VALUE_MASK_OF_WIDTH = {
    Width.W16: 0xFFFF,
    Width.W64: ALL_ONES_64,
    Width.W32: 0xFFFFFFFF,
    Width.NATURAL: ALL_ONES_64,
}


class Vmcs(IntEnum):
    """VMCS field encodings (Intel SDM appendix B) used by the L2 model."""

    POSTED_INTR_NV = 0x0002
    GUEST_ES_SELECTOR = 0x0800
    GUEST_CS_SELECTOR = 0x0802
    GUEST_SS_SELECTOR = 0x0804
    GUEST_DS_SELECTOR = 0x0806
    GUEST_FS_SELECTOR = 0x0808
    GUEST_GS_SELECTOR = 0x080A
    GUEST_LDTR_SELECTOR = 0x080C
    GUEST_TR_SELECTOR = 0x080E
    GUEST_INTR_STATUS = 0x0810
    IO_BITMAP_A = 0x2000
    IO_BITMAP_B = 0x2002
    MSR_BITMAP = 0x2004
    VIRTUAL_APIC_PAGE_ADDR = 0x2012
    POSTED_INTR_DESC_ADDR = 0x2016
    VM_FUNCTION_CONTROLS = 0x2018
    EPT_POINTER = 0x201A
    EOI_EXIT_BITMAP0 = 0x201C
    EOI_EXIT_BITMAP1 = 0x201E
    EOI_EXIT_BITMAP2 = 0x2020
    EOI_EXIT_BITMAP3 = 0x2022
    VE_INFO_ADDR = 0x202A
    XSS_EXIT_BITMAP = 0x202C
    TERTIARY_CONTROLS = 0x2034
    SHARED_EPTP = 0x203C
    GUEST_PHYSICAL_ADDRESS = 0x2400
    GUEST_IA32_DEBUGCTL = 0x2802
    GUEST_IA32_PAT = 0x2804
    GUEST_IA32_EFER = 0x2806
    PIN_BASED_CONTROLS = 0x4000
    PROC_BASED_CONTROLS = 0x4002
    EXCEPTION_BITMAP = 0x4004
    PF_ERROR_CODE_MASK = 0x4006
    PF_ERROR_CODE_MATCH = 0x4008
    CR3_TARGET_COUNT = 0x400A
    EXIT_CONTROLS = 0x400C
    ENTRY_CONTROLS = 0x4012
    ENTRY_INTR_INFO = 0x4016
    ENTRY_EXCEPTION_ERROR_CODE = 0x4018
    ENTRY_INSTRUCTION_LENGTH = 0x401A
    TPR_THRESHOLD = 0x401C
    SECONDARY_CONTROLS = 0x401E
    PLE_GAP = 0x4020
    PLE_WINDOW = 0x4022
    VM_INSTRUCTION_ERROR = 0x4400
    EXIT_REASON = 0x4402
    EXIT_INTR_INFO = 0x4404
    EXIT_INTR_ERROR_CODE = 0x4406
    IDT_VECTORING_INFO = 0x4408
    IDT_VECTORING_ERROR_CODE = 0x440A
    EXIT_INSTRUCTION_LENGTH = 0x440C
    EXIT_INSTRUCTION_INFO = 0x440E
    GUEST_ES_LIMIT = 0x4800
    GUEST_CS_LIMIT = 0x4802
    GUEST_SS_LIMIT = 0x4804
    GUEST_DS_LIMIT = 0x4806
    GUEST_FS_LIMIT = 0x4808
    GUEST_GS_LIMIT = 0x480A
    GUEST_LDTR_LIMIT = 0x480C
    GUEST_TR_LIMIT = 0x480E
    GUEST_GDTR_LIMIT = 0x4810
    GUEST_IDTR_LIMIT = 0x4812
    GUEST_ES_AR = 0x4814
    GUEST_CS_AR = 0x4816
    GUEST_SS_AR = 0x4818
    GUEST_DS_AR = 0x481A
    GUEST_FS_AR = 0x481C
    GUEST_GS_AR = 0x481E
    GUEST_LDTR_AR = 0x4820
    GUEST_TR_AR = 0x4822
    GUEST_INTERRUPTIBILITY = 0x4824
    GUEST_ACTIVITY_STATE = 0x4826
    GUEST_SYSENTER_CS = 0x482A
    EXIT_QUALIFICATION = 0x6400
    GUEST_LINEAR_ADDRESS = 0x640A
    GUEST_CR0 = 0x6800
    GUEST_CR3 = 0x6802
    GUEST_CR4 = 0x6804
    GUEST_ES_BASE = 0x6806
    GUEST_CS_BASE = 0x6808
    GUEST_SS_BASE = 0x680A
    GUEST_DS_BASE = 0x680C
    GUEST_FS_BASE = 0x680E
    GUEST_GS_BASE = 0x6810
    GUEST_LDTR_BASE = 0x6812
    GUEST_TR_BASE = 0x6814
    GUEST_GDTR_BASE = 0x6816
    GUEST_IDTR_BASE = 0x6818
    GUEST_DR7 = 0x681A
    GUEST_RSP = 0x681C
    GUEST_RIP = 0x681E
    GUEST_RFLAGS = 0x6820
    GUEST_SYSENTER_ESP = 0x6824
    GUEST_SYSENTER_EIP = 0x6826


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


def width_of(encoding: int) -> Width:
    """Width of a VMCS field from its encoding."""
    return Width((encoding >> VMCS_WIDTH_SHIFT) & VMCS_WIDTH_MASK)


def is_guest_state(encoding: int) -> bool:
    """True for guest-state area fields (loaded into the vCPU at entry)."""
    return any(lo <= encoding <= hi for lo, hi in GUEST_STATE_BLOCKS)


class FieldKind(IntEnum):
    """What a VP.RD/WR field id addresses."""

    VMCS = 0
    MSR_BITMAP = 1
    L2_CTLS = 2
    L2_VAPIC_GPA = 3


@dataclass(frozen=True)
class FieldRef:
    """A decoded TDG.VP.RD/WR field id."""

    kind: FieldKind
    vm: int
    code: int


def decode_vp_field(field_id: int, num_l2_vms: int) -> FieldRef | None:
    """Decode a VCPU-context field id; None if it names nothing this model knows."""
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
