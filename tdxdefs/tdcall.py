"""TDCALL (TDG.*) leaves, completion statuses and operand encodings that L1 and the module share.

Intel TDX Module v1.5 ABI Specification: "TDCALL leaf functions" (leaf numbers, RAX[15:0] leaf,
RAX[23:16] version), "Function completion status codes" (RAX on return: class in bits 63:32, an
operand id or other detail in bits 31:0) and the per-leaf operand descriptions (TDG.MEM.PAGE.ACCEPT,
TDG.MR.REPORT, TDG.VP.INFO). The TD-partitioning leaves (TDG.VP.ENTER, TDG.VP.INVEPT,
TDG.VP.INVVPID, TDG.MEM.PAGE.ATTR.RD/WR) and their statuses follow the Intel TDX Module TD
Partitioning Architecture Specification, "TD partitioning TDCALL leaves".
"""

from __future__ import annotations

from enum import IntEnum

# --- leaf and version in RAX ---------------------------------------------------------------------
LEAF_MASK = 0xFFFF
LEAF_VERSION_SHIFT = 16
LEAF_VERSION_MASK = 0xFF


class Leaf(IntEnum):
    """TDCALL leaf numbers (RAX[15:0])."""

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

    @property
    def spec_name(self) -> str:
        """The leaf as the specification spells it, e.g. "TDG.MEM.PAGE.ACCEPT"."""
        return "TDG." + self.name.replace("_", ".")


LEAF_NAMES: dict[int, str] = {int(leaf): leaf.spec_name for leaf in Leaf}

# --- general-purpose registers in architectural order (the TDCALL register block) ----------------
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R8, R9, R10, R11, R12, R13, R14, R15 = range(8, 16)
GPR_COUNT = 16
U64_MASK = (1 << 64) - 1

# --- completion status in RAX --------------------------------------------------------------------
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

STATUS_NAMES: dict[int, str] = {
    value: name for name, value in globals().items() if name.startswith("TDX_")
}

STATUS_CLASS_MASK = 0xFFFFFFFF00000000
STATUS_DETAILS_MASK = 0x00000000FFFFFFFF
STATUS_ERROR_BIT = 1 << 63
STATUS_NON_RECOVERABLE_BIT = 1 << 62


def status_class(rax: int) -> int:
    """The class half of a completion status (RAX[63:32], kept in place, details cleared)."""
    return rax & STATUS_CLASS_MASK


def status_details(rax: int) -> int:
    """The details half of a completion status (RAX[31:0]): an operand id for OPERAND_INVALID."""
    return rax & STATUS_DETAILS_MASK


def is_error(rax: int) -> bool:
    """True for an error-class status (bit 63)."""
    return bool(rax & STATUS_ERROR_BIT)


def status_name(rax: int) -> str:
    """A status as the specification names its class, with the full hex value."""
    name = STATUS_NAMES.get(status_class(rax))
    return f"{name} ({rax:#018x})" if name else f"{rax:#018x}"


class OperandId(IntEnum):
    """Operand ids reported in RAX[31:0] of TDX_OPERAND_INVALID: GPRs in architectural order."""

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


# --- memory operands ------------------------------------------------------------------------------
PAGE_SIZE = 4096
PAGE_SHIFT = 12
LEVEL_4K = 0
LEVEL_2M = 1
LEVEL_1G = 2
LEVEL_MASK = 0x7
GPA_PAGE_MASK = 0x000FFFFFFFFFF000  # GPA[51:12]
GPA_MAPPING_PENDING = 1 << 62
GPA_MAPPING_RESERVED = 0xFFF0000000000FF8  # bits 63:52 and 11:3
GPAW_48 = 48
GPAW_52 = 52
VP_INFO_GPAW_MASK = 0x3F
NO_VE_INFO = 0

# --- measurement and report operands (TDG.MR.RTMR.EXTEND, TDG.MR.REPORT) --------------------------
RTMR_COUNT = 4
RTMR_EXTEND_ALIGN = 64
SHA384_SIZE = 48
TDREPORT_SIZE = 1024
TDREPORT_ALIGN = 1024
REPORTDATA_SIZE = 64
REPORTDATA_ALIGN = 64
TDREPORT_SUBTYPE_0 = 0  # TDG.MR.REPORT R8

# --- TD partitioning operands (TDG.VP.ENTER, TDG.VP.INVVPID) --------------------------------------
MAX_L2_VMS = 3
VM_INDEX_SHIFT = 52
VM_INDEX_MASK = 0x3
VP_ENTER_INVD_MASK = 0x3
VP_ENTER_RESERVED = ~((VM_INDEX_MASK << VM_INDEX_SHIFT) | VP_ENTER_INVD_MASK) & U64_MASK
INVVPID_LIST = 1
INVVPID_RESERVED = ~((VM_INDEX_MASK << VM_INDEX_SHIFT) | INVVPID_LIST) & U64_MASK
GLA_LIST_MAX_ENTRIES = 512
GLA_LIST_INFO_FIRST_ENTRY_MASK = 0x1FF
GLA_LIST_INFO_NUM_SHIFT = 52
GLA_LIST_INFO_NUM_MASK = 0x3FF

# --- register packing of TDG.VP.INFO, TDG.VP.VEINFO.GET and the TDG.VP.ENTER exit registers -----
U16_MASK = 0xFFFF
U32_MASK = 0xFFFFFFFF
BYTE_MASK = 0xFF
CPL_MASK = 0x3


def pack_u32_pair(low: int, high: int) -> int:
    """low[31:0] | high[63:32], as in R8 of TDG.VP.INFO and R9..R11 of a TDG.VP.ENTER exit."""
    return (low & U32_MASK) | ((high & U32_MASK) << 32)


def pack_cs_info(selector: int, access_rights: int, limit: int) -> int:
    """RSI of a TDG.VP.ENTER exit: CS selector[15:0] | CS AR[31:16] | CS limit[63:32]."""
    return (selector & U16_MASK) | ((access_rights & U16_MASK) << 16) | ((limit & U32_MASK) << 32)
