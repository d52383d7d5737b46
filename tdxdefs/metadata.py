"""Metadata field identifiers for TDG.VM.RD/WR and TDG.VP.RD/WR, and the TD-scope fields L1 uses.

Intel TDX Module v1.5 ABI Specification, "Metadata field identifier" (bits 23:0 field code,
33:32 element size, 51 write-mask valid, 54:52 context, 61:56 class, 63 non-architectural), and
the TDVPS/TDCS field tables; the per-L2-VM classes (L2 VMCS, MSR bitmap) and L2_CTLS follow the
Intel TDX Module TD Partitioning Architecture Specification, "L2 VM metadata".
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from tdxdefs.vmcs import Width, width_of

FIELD_CODE_MASK = 0xFFFFFF
FIELD_ELEM_SIZE_SHIFT = 32
FIELD_ELEM_SIZE_MASK = 0x3
FIELD_WRITE_MASK_VALID = 1 << 51
FIELD_CONTEXT_SHIFT = 52
FIELD_CONTEXT_MASK = 0x7
FIELD_CLASS_SHIFT = 56
FIELD_CLASS_MASK = 0x3F
FIELD_NON_ARCH = 1 << 63
ELEM_SIZE_16 = 1
ELEM_SIZE_32 = 2
ELEM_SIZE_64 = 3
CONTEXT_TD = 1
CONTEXT_VCPU = 2
NO_NEXT_FIELD = 0xFFFFFFFFFFFFFFFF

CLASS_MANAGEMENT = 32
CLASS_L2_VMCS_BASE = 36
CLASS_L2_MSR_BITMAP_BASE = 37
CLASS_PER_VM_STRIDE = 8

NUM_L2_VMS_FIELD = 0x9010000100000005  # TDCS NUM_L2_VMS, read with TDG.VM.RD
NOTIFY_ENABLES_FIELD = 0x9100000000000010
L2_CTLS_FIELD_BASE = 0xA020000300000050
L2_CTLS_CODE_BASE = 0x50
L2_VAPIC_GPA_CODE_BASE = 0x110  # per-VM codes 0x111..0x113, laid out like L2_CTLS


class FieldContext(IntEnum):
    """Context of a metadata field (bits 54:52)."""

    TD = CONTEXT_TD
    VCPU = CONTEXT_VCPU


class L2Ctls(IntFlag):
    """TDVPS L2_CTLS[vm] bits L1 may set."""

    ENABLE_SHARED_EPTP = 1 << 0
    ENABLE_TDVMCALL = 1 << 1


L2_CTLS_ENABLE_SHARED_EPTP = int(L2Ctls.ENABLE_SHARED_EPTP)
L2_CTLS_ENABLE_TDVMCALL = int(L2Ctls.ENABLE_TDVMCALL)
ALLOWED_L2_VCPU_CTLS = L2_CTLS_ENABLE_SHARED_EPTP | L2_CTLS_ENABLE_TDVMCALL


def vmcs_class(vm: int) -> int:
    """TDVPS class of VM `vm`'s L2 VMCS (36, 44, 52)."""
    return CLASS_L2_VMCS_BASE + CLASS_PER_VM_STRIDE * (vm - 1)


def msr_bitmap_class(vm: int) -> int:
    """TDVPS class of VM `vm`'s MSR bitmap page (37, 45, 53)."""
    return CLASS_L2_MSR_BITMAP_BASE + CLASS_PER_VM_STRIDE * (vm - 1)


def l2_vmcs_field_id(vm: int, encoding: int, elem_size: int) -> int:
    """Field id for TDG.VP.RD/WR of an L2 VMCS field."""
    return (
        (vmcs_class(vm) << FIELD_CLASS_SHIFT)
        | (CONTEXT_VCPU << FIELD_CONTEXT_SHIFT)
        | (elem_size << FIELD_ELEM_SIZE_SHIFT)
        | encoding
    )


# The metadata element size of an L2 VMCS field follows its VMCS width (natural width is 64 bits).
ELEM_SIZE_OF_WIDTH = {
    Width.W16: ELEM_SIZE_16,
    Width.W64: ELEM_SIZE_64,
    Width.W32: ELEM_SIZE_32,
    Width.NATURAL: ELEM_SIZE_64,
}


def l2_vmcs_field(vm: int, encoding: int) -> int:
    """Field id for TDG.VP.RD/WR of an L2 VMCS field, its element size from its encoding."""
    return l2_vmcs_field_id(vm, encoding, ELEM_SIZE_OF_WIDTH[width_of(encoding)])


def msr_bitmap_field_id(vm: int, qword_index: int) -> int:
    """Field id of one 8-byte word of VM `vm`'s MSR bitmap page."""
    return (
        (msr_bitmap_class(vm) << FIELD_CLASS_SHIFT)
        | (CONTEXT_VCPU << FIELD_CONTEXT_SHIFT)
        | (ELEM_SIZE_64 << FIELD_ELEM_SIZE_SHIFT)
        | qword_index
    )


def l2_ctls_field_id(vm: int) -> int:
    """Field id of TDVPS L2_CTLS[vm]."""
    return L2_CTLS_FIELD_BASE + vm


def l2_vapic_gpa_field_id(vm: int) -> int:
    """Field id of TDVPS L2_VAPIC_GPA[vm]."""
    return (L2_CTLS_FIELD_BASE - L2_CTLS_CODE_BASE) + L2_VAPIC_GPA_CODE_BASE + vm
