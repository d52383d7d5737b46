"""TDX 1.5 TD-partitioning ABI constants: leaves, status codes, operand ids, field ids, exits.

Values follow reference/tdx-partitioning-abi.md sections 1 to 4 (taken there from the TDX module
1.5.01 source). Names follow the module's own spelling. A few values the reference does not list
are marked "[not in reference]" with where they come from.
"""

from __future__ import annotations

from enum import IntEnum

# --- 1.1 TDCALL leaves (RAX bits 15:0 = leaf, 23:16 = version) -------------------------------
LEAF_MASK = 0xFFFF
LEAF_VERSION_SHIFT = 16
LEAF_VERSION_MASK = 0xFF


class Leaf(IntEnum):
    """TDCALL leaf numbers (reference 1.1)."""

    VP_VMCALL = 0
    VP_INFO = 1
    MR_RTMR_EXTEND = 2
    VP_VEINFO_GET = 3
    MR_REPORT = 4
    VP_CPUIDVE_SET = 5
    MEM_PAGE_ACCEPT = 6
    VM_RD = 7
    VM_WR = 8
    VP_RD = 9
    VP_WR = 10
    SYS_RD = 11
    SYS_RDALL = 12
    SERVTD_RD = 18
    SERVTD_WR = 20
    MR_VERIFYREPORT = 22
    MEM_PAGE_ATTR_RD = 23
    MEM_PAGE_ATTR_WR = 24
    VP_ENTER = 25
    VP_INVEPT = 26
    VP_INVVPID = 27


# --- 1.4 status codes in RAX --------------------------------------------------------------------
TDX_SUCCESS = 0x0000000000000000
TDX_OPERAND_INVALID = 0xC000010000000000
TDX_OPERAND_BUSY = 0x8000020000000000
TDX_NO_VALID_VE_INFO = 0xC000070400000000
TDX_PAGE_ALREADY_ACCEPTED = 0x00000B0A00000000
TDX_PAGE_SIZE_MISMATCH = 0xC0000B0B00000000
TDX_L2_SEPT_WALK_FAILED = 0xC0000B0F00000000
TDX_L2_SEPT_ENTRY_NOT_FREE = 0xC0000B1000000000
TDX_PAGE_ATTR_INVALID = 0xC0000B1100000000
TDX_L2_SEPT_PAGE_NOT_PROVIDED = 0xC0000B1200000000
TDX_METADATA_FIELD_ID_INCORRECT = 0xC0000C0000000000
TDX_METADATA_FIELD_NOT_WRITABLE = 0xC0000C0100000000
TDX_METADATA_FIELD_NOT_READABLE = 0xC0000C0200000000
TDX_METADATA_FIELD_VALUE_NOT_VALID = 0xC0000C0300000000
TDX_L2_EXIT_HOST_ROUTED_ASYNC = 0x0000110000000000
TDX_L2_EXIT_HOST_ROUTED_TDVMCALL = 0x0000110100000000
TDX_L2_EXIT_PENDING_INTERRUPT = 0x0000110200000000
TDX_PENDING_INTERRUPT = 0x0000112000000000
TDX_TD_EXIT_BEFORE_L2_ENTRY = 0x0000114000000000
TDX_GLA_NOT_CANONICAL = 0xC000116000000000

STATUS_CLASS_MASK = 0xFFFFFFFF00000000
STATUS_DETAILS_MASK = 0x00000000FFFFFFFF
STATUS_ERROR_BIT = 1 << 63


def status_class(rax: int) -> int:
    """The class half of a completion status (RAX[63:32], kept in place)."""
    return rax & STATUS_CLASS_MASK


def is_error(rax: int) -> bool:
    """True for an error status (bit 63)."""
    return bool(rax & STATUS_ERROR_BIT)


# --- operand ids (details of TDX_OPERAND_INVALID): the GPR number in architectural order --------
class OperandId(IntEnum):
    """Operand ids named in OPERAND_INVALID details (MOD: register index order)."""

    RAX = 0
    RCX = 1
    RDX = 2
    RBX = 3
    RSP = 4
    RBP = 5
    RSI = 6
    RDI = 7
    R8 = 8
    R9 = 9
    R10 = 10
    R11 = 11
    R12 = 12
    R13 = 13
    R14 = 14
    R15 = 15
    L2_VAPIC_GPA = 170


# --- 1.3 TDVMCALL status in R10 -----------------------------------------------------------------
TDVMCALL_SUCCESS = 0
TDVMCALL_RETRY = 1
TDVMCALL_OPERAND_INVALID = 0x8000000000000000
TDVMCALL_GPA_INUSE = 0x8000000000000001
TDVMCALL_ALIGN_ERROR = 0x8000000000000002

# --- 1.2 operand layouts --------------------------------------------------------------------------
PAGE_SIZE = 4096
PAGE_SHIFT = 12
LEVEL_4K = 0
LEVEL_2M = 1
LEVEL_1G = 2
LEVEL_MASK = 0x7
GPA_PAGE_MASK = 0x000FFFFFFFFFF000  # GPA[51:12]
GPA_MAPPING_PENDING = 1 << 62
GPA_MAPPING_RESERVED = 0xFFF0000000000FF8  # bits 63:52 and 11:3
RTMR_COUNT = 4
RTMR_EXTEND_ALIGN = 64
SHA384_SIZE = 48
TDREPORT_SIZE = 1024
TDREPORT_ALIGN = 1024
REPORTDATA_SIZE = 64
REPORTDATA_ALIGN = 64
VP_INFO_GPAW_MASK = 0x3F
NO_VE_INFO = 0

# VP.ENTER RCX (VM_AND_FLAGS) and INVVPID RCX
VM_INDEX_SHIFT = 52
VM_INDEX_MASK = 0x3
VP_ENTER_INVD_MASK = 0x3
VP_ENTER_RESERVED = ~((VM_INDEX_MASK << VM_INDEX_SHIFT) | VP_ENTER_INVD_MASK) & (2**64 - 1)
INVVPID_LIST = 1
INVVPID_RESERVED = ~((VM_INDEX_MASK << VM_INDEX_SHIFT) | INVVPID_LIST) & (2**64 - 1)
GLA_LIST_MAX_ENTRIES = 512
GLA_LIST_INFO_FIRST_ENTRY_MASK = 0x1FF
GLA_LIST_INFO_NUM_SHIFT = 52
GLA_LIST_INFO_NUM_MASK = 0x3FF
L2_ENTER_GUEST_STATE_ALIGN = 256
L2_ENTER_GUEST_STATE_SIZE = 256

MAX_L2_VMS = 3
GPAW_48 = 48
GPAW_52 = 52

# --- register packing used by VP.INFO, VEINFO.GET and the VP.ENTER exit registers (3.3) ----
U16_MASK = 0xFFFF
U32_MASK = 0xFFFFFFFF
BYTE_MASK = 0xFF
CPL_MASK = 0x3
SVI_SHIFT = 8


def pack_u32_pair(low: int, high: int) -> int:
    """low[31:0] | high[63:32], as in R8 of VP.INFO and R9..R11 of a VP.ENTER exit."""
    return (low & U32_MASK) | ((high & U32_MASK) << 32)


def pack_cs_info(selector: int, access_rights: int, limit: int) -> int:
    """RSI of a VP.ENTER exit: CS selector[15:0] | CS AR[31:16] | CS limit[63:32]."""
    return (selector & U16_MASK) | ((access_rights & U16_MASK) << 16) | ((limit & U32_MASK) << 32)


def pack_intr_status(rvi: int, svi: int) -> int:
    """GUEST_INTERRUPT_STATUS: RVI in the low byte, SVI in the high byte."""
    return (rvi & BYTE_MASK) | ((svi & BYTE_MASK) << SVI_SHIFT)


def unpack_intr_status(value: int) -> tuple[int, int]:
    """(RVI, SVI) from GUEST_INTERRUPT_STATUS."""
    return value & BYTE_MASK, (value >> SVI_SHIFT) & BYTE_MASK


# --- 2.1 GPA_ATTR per-VM word ---------------------------------------------------------------------
ATTR_R = 1 << 0
ATTR_W = 1 << 1
ATTR_XS = 1 << 2
ATTR_XU = 1 << 3
ATTR_VGP = 1 << 4
ATTR_PWA = 1 << 5
ATTR_SSS = 1 << 6
ATTR_SVE = 1 << 7
ATTR_RESERVED = 0x7F00  # bits 14:8
ATTR_VALID = 1 << 15
ATTR_ACCESS = ATTR_R | ATTR_W | ATTR_XS | ATTR_XU
GUEST_L2_GPA_ATTR_MASK = 0x7F | ATTR_VALID
ATTR_FLAGS_MASK_BITS = 0x7FFF  # per-VM mask, bits 14:0
ATTR_FLAGS_INVEPT = 1 << 15
ATTR_WORD_BITS = 16
ATTR_WORD_MASK = 0xFFFF
L1_FULL_ATTR = ATTR_R | ATTR_W | ATTR_XS | ATTR_XU | ATTR_VALID


def attr_word(packed: int, vm: int) -> int:
    """The 16-bit word of VM `vm` (0 = L1) in a packed GPA_ATTR or ATTR_FLAGS value."""
    return (packed >> (ATTR_WORD_BITS * vm)) & ATTR_WORD_MASK


def pack_attr(words: dict[int, int]) -> int:
    """Pack per-VM 16-bit words into one 64-bit GPA_ATTR value."""
    out = 0
    for vm, word in words.items():
        out |= (word & ATTR_WORD_MASK) << (ATTR_WORD_BITS * vm)
    return out


# --- extended exit qualification types (R13) ------------------------------------------------------
EEQ_NONE = 0
EEQ_ACCEPT = 1  # [not in reference] MOD vmx_eeq_type_e; used for the host-side ACCEPT TD exit
EEQ_GPA_DETAILS = 2
EEQ_ATTR_WR = 5
EEQ_PEND_EPT_VIOLATION = 6


# --- 3.1 metadata field ids -----------------------------------------------------------------------
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

NUM_L2_VMS_FIELD = 0x9010000100000005
NOTIFY_ENABLES_FIELD = 0x9100000000000010
L2_CTLS_FIELD_BASE = 0xA020000300000050
L2_CTLS_CODE_BASE = 0x50
L2_VAPIC_GPA_CODE_BASE = 0x110  # [UNCONFIRMED per-VM layout: code 0x110 + vm, like L2_CTLS]

L2_CTLS_ENABLE_SHARED_EPTP = 1 << 0
L2_CTLS_ENABLE_TDVMCALL = 1 << 1
ALLOWED_L2_VCPU_CTLS = L2_CTLS_ENABLE_SHARED_EPTP | L2_CTLS_ENABLE_TDVMCALL


def vmcs_class(vm: int) -> int:
    """TDVPS class of VM `vm`'s L2 VMCS (36, 44, 52)."""
    return CLASS_L2_VMCS_BASE + CLASS_PER_VM_STRIDE * (vm - 1)


def msr_bitmap_class(vm: int) -> int:
    """TDVPS class of VM `vm`'s MSR bitmap page (37, 45, 53)."""
    return CLASS_L2_MSR_BITMAP_BASE + CLASS_PER_VM_STRIDE * (vm - 1)


def l2_vmcs_field_id(vm: int, encoding: int, elem_size: int) -> int:
    """Field id for TDG.VP.RD/WR of an L2 VMCS field (reference 3.1)."""
    return (
        (vmcs_class(vm) << FIELD_CLASS_SHIFT)
        | (CONTEXT_VCPU << FIELD_CONTEXT_SHIFT)
        | (elem_size << FIELD_ELEM_SIZE_SHIFT)
        | encoding
    )


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
    """Field id of TDVPS L2_VAPIC_GPA[vm] (per-VM layout unconfirmed)."""
    return (L2_CTLS_FIELD_BASE - L2_CTLS_CODE_BASE) + L2_VAPIC_GPA_CODE_BASE + vm


# --- VMX exit reasons (3.3) -----------------------------------------------------------------------
class ExitReason(IntEnum):
    """VMX basic exit reasons used by the L2 vCPU model."""

    EXCEPTION_NMI = 0
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    INTERRUPT_WINDOW = 7
    CPUID = 10
    GETSEC = 11
    HLT = 12
    INVD = 13
    INVLPG = 14
    RDPMC = 15
    RDTSC = 16
    VMCALL = 18
    VMCLEAR = 19
    VMLAUNCH = 20
    VMPTRLD = 21
    VMPTRST = 22
    VMREAD = 23
    VMRESUME = 24
    VMWRITE = 25
    VMXOFF = 26
    VMXON = 27
    IO = 30
    MSR_READ = 31
    MSR_WRITE = 32
    INVALID_GUEST_STATE = 33
    MWAIT = 36
    MONITOR = 39
    PAUSE = 40
    VIRTUALIZED_EOI = 45
    EPT_VIOLATION = 48
    INVEPT = 50
    INVVPID = 53
    WBINVD = 54
    XSETBV = 55
    VMFUNC = 59
    TDCALL = 77


VM_ENTRY_FAILURE = 1 << 31

# EPT-violation exit qualification (2.5)
EPTV_READ = 1 << 0
EPTV_WRITE = 1 << 1
EPTV_FETCH = 1 << 2
EPTV_READABLE = 1 << 3
EPTV_WRITABLE = 1 << 4
EPTV_EXECUTABLE = 1 << 5
EPTV_USER_EXECUTABLE = 1 << 6
EPTV_GLA_VALID = 1 << 7
EPTV_TRANSLATED = 1 << 8

# IO exit qualification (Intel SDM table "exit qualification for I/O instructions")
IOQ_SIZE_MASK = 0x7
IOQ_IN = 1 << 3
IOQ_STRING = 1 << 4
IOQ_REP = 1 << 5
IOQ_IMMEDIATE = 1 << 6
IOQ_PORT_SHIFT = 16

# --- 4 interrupts: VMCS encodings and bits ---------------------------------------------
INTR_INFO_VALID = 1 << 31
INTR_INFO_VECTOR_MASK = 0xFF
INTR_INFO_TYPE_SHIFT = 8
INTR_INFO_TYPE_MASK = 0x7
INTR_INFO_DELIVER_ERROR = 1 << 11
INTR_TYPE_EXTERNAL = 0
INTR_TYPE_NMI = 2
INTR_TYPE_HW_EXCEPTION = 3
INTR_TYPE_SW_INTERRUPT = 4
INTR_TYPE_SW_EXCEPTION = 6

INTERRUPTIBILITY_STI = 1 << 0
INTERRUPTIBILITY_MOV_SS = 1 << 1

PROC_INTERRUPT_WINDOW_EXITING = 1 << 2
PROC_HLT_EXITING = 1 << 7
PROC_INVLPG_EXITING = 1 << 9
PROC_RDPMC_EXITING = 1 << 11
PROC_RDTSC_EXITING = 1 << 12
PROC_USE_MSR_BITMAPS = 1 << 28
PROC_PAUSE_EXITING = 1 << 30
SEC_VIRTUALIZE_X2APIC = 1 << 4
SEC_VIRTUAL_INTR_DELIVERY = 1 << 9

RFLAGS_IF = 1 << 9
RFLAGS_TF = 1 << 8
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16
RFLAGS_FIXED = 1 << 1

X2APIC_MSR_TPR = 0x808
X2APIC_MSR_EOI = 0x80B
MSR_LOW_LIMIT = 0x2000
MSR_HIGH_BASE = 0xC0000000
MSR_BITMAP_READ_LOW = 0x000
MSR_BITMAP_READ_HIGH = 0x400
MSR_BITMAP_WRITE_LOW = 0x800
MSR_BITMAP_WRITE_HIGH = 0xC00

# virtual-APIC page register offsets (xAPIC layout)
VAPIC_TPR = 0x80
VAPIC_PPR = 0xA0
VAPIC_EOI = 0xB0
VAPIC_ISR = 0x100
VAPIC_IRR = 0x200
VAPIC_REG_STRIDE = 0x10
NULL_PA = 0xFFFFFFFFFFFFFFFF

# exceptions delivered through the L2 IDT
VECTOR_DE = 0
VECTOR_UD = 6
VECTOR_DF = 8
VECTOR_GP = 13
VECTOR_PF = 14
EXCEPTIONS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
