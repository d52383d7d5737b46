"""VMCS field encodings, VM-exit reasons and exit-information bits of the L2 VMCS L1 programs.

Intel 64 and IA-32 Architectures Software Developer's Manual, Volume 3, appendix B ("Field
encoding in VMCS") and appendix C ("VMX basic exit reasons"), and chapter 28 ("VM exits": exit
qualification for EPT violations and I/O instructions, VM-entry/exit interruption information).
The TDX-specific parts (the TDCALL exit reason, the extended exit qualification types returned in
R13 by TDG.VP.ENTER, GUEST_INTERRUPT_STATUS packing) follow the Intel TDX Module TD Partitioning
Architecture Specification, "L2 VM exit" and the Intel TDX Module v1.5 ABI Specification.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag


class ExitReason(IntEnum):
    """VMX basic exit reasons (bits 15:0 of the exit reason)."""

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


class ExtendedExitQualification(IntEnum):
    """Type of the extended exit qualification TDG.VP.ENTER returns in R13 (bits 3:0)."""

    NONE = 0
    ACCEPT = 1
    GPA_DETAILS = 2
    ATTR_WR = 5
    PEND_EPT_VIOLATION = 6


EEQ_NONE = int(ExtendedExitQualification.NONE)
EEQ_ACCEPT = int(ExtendedExitQualification.ACCEPT)
EEQ_GPA_DETAILS = int(ExtendedExitQualification.GPA_DETAILS)
EEQ_ATTR_WR = int(ExtendedExitQualification.ATTR_WR)
EEQ_PEND_EPT_VIOLATION = int(ExtendedExitQualification.PEND_EPT_VIOLATION)


class EptViolation(IntFlag):
    """Exit qualification of an EPT violation (SDM Vol. 3, table "Exit qualification for EPT
    violations")."""

    READ = 1 << 0
    WRITE = 1 << 1
    FETCH = 1 << 2
    READABLE = 1 << 3
    WRITABLE = 1 << 4
    EXECUTABLE = 1 << 5
    USER_EXECUTABLE = 1 << 6
    GLA_VALID = 1 << 7
    TRANSLATED = 1 << 8


# Plain ints for the L2 hot paths (IntFlag operators are slow); each is the EptViolation bit.
EPTV_READ = int(EptViolation.READ)
EPTV_WRITE = int(EptViolation.WRITE)
EPTV_FETCH = int(EptViolation.FETCH)
EPTV_READABLE = int(EptViolation.READABLE)
EPTV_WRITABLE = int(EptViolation.WRITABLE)
EPTV_EXECUTABLE = int(EptViolation.EXECUTABLE)
EPTV_USER_EXECUTABLE = int(EptViolation.USER_EXECUTABLE)
EPTV_GLA_VALID = int(EptViolation.GLA_VALID)
EPTV_TRANSLATED = int(EptViolation.TRANSLATED)


class IoQualification(IntFlag):
    """Exit qualification of an I/O instruction (SDM Vol. 3, "Exit qualification for I/O
    instructions"): bits 2:0 size - 1, then these flags, the port in bits 31:16."""

    IN = 1 << 3
    STRING = 1 << 4
    REP = 1 << 5
    IMMEDIATE = 1 << 6


IOQ_SIZE_MASK = 0x7
IOQ_IN = int(IoQualification.IN)
IOQ_STRING = int(IoQualification.STRING)
IOQ_REP = int(IoQualification.REP)
IOQ_IMMEDIATE = int(IoQualification.IMMEDIATE)
IOQ_PORT_SHIFT = 16

# --- VM-entry / VM-exit interruption information ------------------------------------------------
INTR_INFO_VALID = 1 << 31
INTR_INFO_VECTOR_MASK = 0xFF
INTR_INFO_TYPE_SHIFT = 8
INTR_INFO_TYPE_MASK = 0x7
INTR_INFO_DELIVER_ERROR = 1 << 11


class InterruptionType(IntEnum):
    """Interruption type, bits 10:8 of the interruption-information fields."""

    EXTERNAL = 0
    NMI = 2
    HW_EXCEPTION = 3
    SW_INTERRUPT = 4
    SW_EXCEPTION = 6


INTR_TYPE_EXTERNAL = int(InterruptionType.EXTERNAL)
INTR_TYPE_NMI = int(InterruptionType.NMI)
INTR_TYPE_HW_EXCEPTION = int(InterruptionType.HW_EXCEPTION)
INTR_TYPE_SW_INTERRUPT = int(InterruptionType.SW_INTERRUPT)
INTR_TYPE_SW_EXCEPTION = int(InterruptionType.SW_EXCEPTION)

INTERRUPTIBILITY_STI = 1 << 0
INTERRUPTIBILITY_MOV_SS = 1 << 1

# --- execution controls ------------------------------------------------------------------------
PROC_INTERRUPT_WINDOW_EXITING = 1 << 2
PROC_HLT_EXITING = 1 << 7
PROC_INVLPG_EXITING = 1 << 9
PROC_RDPMC_EXITING = 1 << 11
PROC_RDTSC_EXITING = 1 << 12
PROC_USE_MSR_BITMAPS = 1 << 28
PROC_PAUSE_EXITING = 1 << 30
SEC_VIRTUALIZE_X2APIC = 1 << 4
SEC_VIRTUAL_INTR_DELIVERY = 1 << 9

# --- MSR bitmap page (SDM Vol. 3, "MSR-bitmap address") ----------------------------------------
MSR_LOW_LIMIT = 0x2000
MSR_HIGH_BASE = 0xC0000000
MSR_BITMAP_READ_LOW = 0x000
MSR_BITMAP_READ_HIGH = 0x400
MSR_BITMAP_WRITE_LOW = 0x800
MSR_BITMAP_WRITE_HIGH = 0xC00
NULL_PA = 0xFFFFFFFFFFFFFFFF

# --- GUEST_INTERRUPT_STATUS: RVI in the low byte, SVI in the high byte ---------------------------
SVI_SHIFT = 8
_BYTE = 0xFF


def pack_intr_status(rvi: int, svi: int) -> int:
    """GUEST_INTERRUPT_STATUS from (RVI, SVI)."""
    return (rvi & _BYTE) | ((svi & _BYTE) << SVI_SHIFT)


def unpack_intr_status(value: int) -> tuple[int, int]:
    """(RVI, SVI) from GUEST_INTERRUPT_STATUS."""
    return value & _BYTE, (value >> SVI_SHIFT) & _BYTE


# --- field encodings ------------------------------------------------------------------------------
VMCS_WIDTH_SHIFT = 13
VMCS_WIDTH_MASK = 0x3
VMCS_HIGH_ACCESS = 1


class Width(IntEnum):
    """VMCS field width, encoding bits 14:13."""

    W16 = 0
    W64 = 1
    W32 = 2
    NATURAL = 3


def width_of(encoding: int) -> Width:
    """Width of a VMCS field from its encoding."""
    return Width((encoding >> VMCS_WIDTH_SHIFT) & VMCS_WIDTH_MASK)


class Vmcs(IntEnum):
    """VMCS field encodings (SDM Vol. 3, appendix B) of the L2 VMCS."""

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
