"""The instructions an L2 vCPU must not let unicorn run on its own: finding them in a code page
and decoding them (length, and what decides whether they exit).

Which instructions cause VM exits, their exit reasons and qualifications are in Intel SDM
Vol. 3, chapters "VMX Non-Root Operation" and "VM Exits" (exit reasons appendix); which of those
exit to L1 for an L2 VM is in the Intel TDX Module TD Partitioning Architecture Specification
(L2 exit routing). Lengths come from the bytes: legacy prefixes, REX, opcode, ModRM, SIB,
displacement and immediate, 64-bit mode encoding (Intel SDM Vol. 2, chapter "Instruction
Format").
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from enum import Enum
from functools import lru_cache
from typing import NamedTuple

from tdxdefs.vmcs import (
    IOQ_IMMEDIATE,
    IOQ_IN,
    IOQ_REP,
    IOQ_STRING,
    PROC_INVLPG_EXITING,
    PROC_PAUSE_EXITING,
    PROC_RDPMC_EXITING,
    PROC_RDTSC_EXITING,
    ExitReason,
)

MAX_INSN_LEN = 15
U64 = (1 << 64) - 1

# --- opcodes -----------------------------------------------------------------------------------
LEGACY_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})
PREFIX_OPSIZE = 0x66
PREFIX_REP = 0xF3
PREFIX_REPNE = 0xF2
REX_FIRST, REX_LAST = 0x40, 0x4F
OP_TWO_BYTE = 0x0F
OP_HLT = 0xF4
OP_STI = 0xFB
OP_MOV_SREG = 0x8E
OP_NOP_PAUSE = 0x90
MODRM_REG_SHIFT = 3
MODRM_REG_MASK = 0x7
SREG_SS = 2
OP_INT3, OP_INTN, OP_INTO, OP_INT1 = 0xCC, 0xCD, 0xCE, 0xF1
SOFTWARE_INT_OPS = frozenset({OP_INT3, OP_INTN, OP_INTO, OP_INT1})
SOFTWARE_INT_VECTORS = {OP_INT3: 3, OP_INT1: 1}  # INT n carries its vector; INTO is #UD here
IO_IMM = {0xE4: (True, 1), 0xE5: (True, 0), 0xE6: (False, 1), 0xE7: (False, 0)}
IO_DX = {0xEC: (True, 1), 0xED: (True, 0), 0xEE: (False, 1), 0xEF: (False, 0)}
IO_STRING = {0x6C: (True, 1), 0x6D: (True, 0), 0x6E: (False, 1), 0x6F: (False, 0)}
OP2_WRMSR, OP2_RDTSC, OP2_RDMSR, OP2_CPUID = 0x30, 0x31, 0x32, 0xA2
OP2_INVD, OP2_WBINVD, OP2_GROUP7, OP2_MOV_TO_CR = 0x08, 0x09, 0x01, 0x22
OP2_RDPMC, OP2_GETSEC, OP2_VMREAD, OP2_VMWRITE = 0x33, 0x37, 0x78, 0x79
OP2_GROUP9, OP2_ESCAPE_38 = 0xC7, 0x38
OP3_INVEPT, OP3_INVVPID = 0x80, 0x81
MODRM_VMCALL, MODRM_TDCALL, MODRM_XSETBV = 0xC1, 0xCC, 0xD1
MODRM_MONITOR, MODRM_MWAIT = 0xC8, 0xC9
MODRM_VMLAUNCH, MODRM_VMRESUME, MODRM_VMXOFF, MODRM_VMFUNC = 0xC2, 0xC3, 0xC4, 0xD4
GROUP7_OPCODE_LEN = 3  # 0F 01 modrm, after any prefixes
GROUP7_INVLPG = 7  # 0F 01 /7 with a memory operand
GROUP9_VMPTRLD = 6  # 0F C7 /6 memory form: VMPTRLD, 66: VMCLEAR, F3: VMXON
GROUP9_VMPTRST = 7  # 0F C7 /7 memory form, no mandatory prefix
PREFIX_ADDR32, PREFIX_FS, PREFIX_GS = 0x67, 0x64, 0x65
MANDATORY_PREFIXES = frozenset({PREFIX_OPSIZE, PREFIX_REP, PREFIX_REPNE})
NO_PREFIXES: frozenset[int] = frozenset()
# ModRM / SIB fields, 64-bit mode (0x67 keeps the same encoding, with 32-bit arithmetic)
MODRM_MOD_SHIFT = 6
MODRM_RM_MASK = 0x7
MOD_INDIRECT, MOD_DISP8, MOD_DISP32, MOD_REGISTER = 0, 1, 2, 3
RM_SIB = 4
RM_RIP_RELATIVE = 5  # with mod 0
SIB_SCALE_SHIFT, SIB_INDEX_SHIFT = 6, 3
SIB_NO_INDEX = 4  # index 100b without REX.X
SIB_NO_BASE = 5  # base 101b with mod 0: disp32, no base register
REX_B, REX_X = 1 << 0, 1 << 1
REX_REG_EXTEND = 8
DISP8, DISP32 = struct.Struct("<b"), struct.Struct("<i")
U32 = (1 << 32) - 1
UNCONDITIONAL_TWO_BYTE_EXITS = {
    OP2_CPUID: ExitReason.CPUID,
    OP2_INVD: ExitReason.INVD,
    OP2_WBINVD: ExitReason.WBINVD,
    OP2_GETSEC: ExitReason.GETSEC,
}
# 0F 01 register forms that always exit (prefixes only add to the length)
GROUP7_REGISTER_EXITS = {
    MODRM_XSETBV: ExitReason.XSETBV,
    MODRM_MONITOR: ExitReason.MONITOR,
    MODRM_MWAIT: ExitReason.MWAIT,
    MODRM_VMLAUNCH: ExitReason.VMLAUNCH,
    MODRM_VMRESUME: ExitReason.VMRESUME,
    MODRM_VMXOFF: ExitReason.VMXOFF,
    MODRM_VMFUNC: ExitReason.VMFUNC,
}
VMREAD_VMWRITE = {OP2_VMREAD: ExitReason.VMREAD, OP2_VMWRITE: ExitReason.VMWRITE}
INVEPT_INVVPID = {OP3_INVEPT: ExitReason.INVEPT, OP3_INVVPID: ExitReason.INVVPID}
# every second opcode byte _decode_two_byte acts on; the others return at once
TWO_BYTE_OPS = frozenset(
    {*UNCONDITIONAL_TWO_BYTE_EXITS, *VMREAD_VMWRITE, OP2_GROUP7, OP2_GROUP9, OP2_ESCAPE_38}
    | {OP2_MOV_TO_CR, OP2_RDTSC, OP2_RDPMC, OP2_RDMSR, OP2_WRMSR}
)
FIRST_BYTES = (
    LEGACY_PREFIXES
    | set(range(REX_FIRST, REX_LAST + 1))
    | {OP_TWO_BYTE, OP_HLT, OP_STI, OP_MOV_SREG, OP_NOP_PAUSE}
    | set(IO_IMM) | set(IO_DX) | set(IO_STRING)
)  # fmt: skip
FIRST_BYTES_AFTER_REX = FIRST_BYTES - set(range(REX_FIRST, REX_LAST + 1)) - LEGACY_PREFIXES
IO_SIZE_BYTE, IO_SIZE_WORD, IO_SIZE_DWORD = 1, 2, 4
PAGE_OFFSET_MASK = 0xFFF


def modrm_operand_length(code: bytes, at: int) -> int:
    """Bytes the ModRM byte at `at` takes with its SIB and displacement (64-bit mode encoding)."""
    modrm = code[at]
    mod, rm = modrm >> MODRM_MOD_SHIFT, modrm & MODRM_RM_MASK
    if mod == MOD_REGISTER:
        return 1
    length = 1
    if rm == RM_SIB:
        length += 1
        if mod == MOD_INDIRECT and code[at + 1] & MODRM_RM_MASK == SIB_NO_BASE:
            return length + DISP32.size
    elif mod == MOD_INDIRECT and rm == RM_RIP_RELATIVE:
        return length + DISP32.size
    if mod == MOD_DISP8:
        return length + DISP8.size
    if mod == MOD_DISP32:
        return length + DISP32.size
    return length


# --- finding the exiting instructions of a code page ------------------------------------------
PREFIX_LIKE = LEGACY_PREFIXES | frozenset(range(REX_FIRST, REX_LAST + 1))
SCAN_CONTROLS = PROC_RDTSC_EXITING | PROC_RDPMC_EXITING | PROC_PAUSE_EXITING | PROC_INVLPG_EXITING
# ModRM bytes of a memory operand with reg field /6 or /7 (0F C7 VMX forms) and /7 (INVLPG)
MODRM_MEM_6_7 = frozenset(
    m for m in range(256) if m >> MODRM_MOD_SHIFT != MOD_REGISTER and (m >> 3) & 7 in (6, 7)
)
MODRM_MEM_7 = frozenset(m for m in MODRM_MEM_6_7 if (m >> 3) & 7 == GROUP9_VMPTRST)


def _byte_class(values: AbstractSet[int]) -> bytes:
    return b"[" + b"".join(re.escape(bytes([v])) for v in sorted(values)) + b"]"


@lru_cache(maxsize=16)
def candidate_pattern(controls: int) -> re.Pattern[bytes]:
    """Byte patterns of every opcode the model must see before it runs, for these
    processor-based controls (RDTSC, RDPMC, PAUSE and INVLPG exit only when enabled).

    The match is the opcode byte after any prefixes; a pattern cut off by the end of the page
    also matches, so an instruction that crosses into the next page is never missed.
    """
    one = {OP_HLT, *IO_IMM, *IO_DX, *IO_STRING, OP_INT3, OP_INTN, OP_INT1}
    if controls & PROC_PAUSE_EXITING:
        one.add(OP_NOP_PAUSE)
    two = {*UNCONDITIONAL_TWO_BYTE_EXITS, *VMREAD_VMWRITE, OP2_RDMSR, OP2_WRMSR, OP2_MOV_TO_CR}
    if controls & PROC_RDTSC_EXITING:
        two.add(OP2_RDTSC)
    if controls & PROC_RDPMC_EXITING:
        two.add(OP2_RDPMC)
    group7 = set(GROUP7_REGISTER_EXITS) | {MODRM_VMCALL, MODRM_TDCALL}
    if controls & PROC_INVLPG_EXITING:
        group7 |= MODRM_MEM_7
    esc = re.escape(bytes([OP_TWO_BYTE]))
    forms = [
        _byte_class(one),
        esc + _byte_class(two),
        esc + re.escape(bytes([OP2_GROUP7])) + _byte_class(group7),
        esc + re.escape(bytes([OP2_GROUP9])) + _byte_class(MODRM_MEM_6_7),
        esc + re.escape(bytes([OP2_ESCAPE_38])) + _byte_class(set(INVEPT_INVVPID)),
        esc + _byte_class({OP2_GROUP7, OP2_GROUP9, OP2_ESCAPE_38}) + rb"?\Z",
    ]
    return re.compile(b"(?=" + b"|".join(forms) + b")")


def exit_candidates(page: bytes, controls: int) -> set[int]:
    """Offsets in `page` where an instruction the model must see could start.

    For each matching opcode byte, every start the legacy and REX prefixes before it allow is
    a candidate (an instruction is at most 15 bytes); a run of prefixes that reaches the start
    of the page may continue on the previous page, so the offsets can be negative.
    """
    found: set[int] = set()
    for match in candidate_pattern(controls).finditer(page):
        at = match.start()
        start = at
        while start > 0 and at - start < MAX_INSN_LEN - 1 and page[start - 1] in PREFIX_LIKE:
            start -= 1
        if start == 0:
            start = at - (MAX_INSN_LEN - 1)
        found.update(range(start, at + 1))
    return found


class Action(Enum):
    """What the model does with a decoded instruction."""

    EXIT = "exit"  # always exits, with `reason`
    EXIT_IF_CONTROL = "exit if control"  # exits when the processor-based `control` is set
    MSR = "msr"  # RDMSR/WRMSR: the MSR bitmap and the x2APIC virtualization decide
    TDCALL = "tdcall"  # L2_CTLS and RAX decide whether the host takes it directly
    IO = "io"  # always exits; the port comes from the immediate or DX
    SOFTWARE_INTERRUPT = "software interrupt"  # INT3, INT1, INT n: delivered through the IDT
    SHADOW = "interrupt shadow"  # STI, MOV SS: blocks interrupts for one instruction
    MOV_TO_CR = "mov to cr"  # paging may change


DECODE_CACHE_SIZE = 4096


class Insn(NamedTuple):
    """A decoded instruction the model acts on (a tuple: built on every exit, so cheap)."""

    action: Action
    length: int
    reason: ExitReason | None = None
    control: int = 0  # for EXIT_IF_CONTROL
    write: bool = False  # for MSR: WRMSR
    io_qualification: int = 0  # for IO: size, direction, string, REP, immediate (no DX port)
    port: int | None = None  # for IO with an immediate port
    vector: int = 0  # for SOFTWARE_INTERRUPT
    opcode_at: int = 0  # for INVLPG: where 0F is, for operand_address
    prefixes: frozenset[int] = NO_PREFIXES


@lru_cache(maxsize=DECODE_CACHE_SIZE)
def decode(code: bytes) -> Insn | None:
    """The instruction at the start of `code` if the model acts on it, else None (cached: the
    same bytes decode alike, and an L2 in a loop exits at the same few instructions)."""
    i = 0
    while i < len(code) and code[i] in LEGACY_PREFIXES:
        i += 1
    fixed = frozenset(code[:i]) if i else NO_PREFIXES
    prefixes = fixed
    if i < len(code) and REX_FIRST <= code[i] <= REX_LAST:
        i += 1
    if i >= len(code):
        return None
    op = code[i]
    rest = code[i + 1 :]
    if op == OP_STI or (
        op == OP_MOV_SREG and rest and (rest[0] >> MODRM_REG_SHIFT) & MODRM_REG_MASK == SREG_SS
    ):
        return Insn(Action.SHADOW, i + 1 + (op == OP_MOV_SREG), prefixes=fixed)
    if op == OP_HLT:
        return Insn(Action.EXIT, i + 1, ExitReason.HLT, prefixes=fixed)
    if op == OP_NOP_PAUSE and PREFIX_REP in prefixes:
        return Insn(
            Action.EXIT_IF_CONTROL, i + 1, ExitReason.PAUSE, PROC_PAUSE_EXITING, prefixes=fixed
        )
    if op in IO_IMM or op in IO_DX or op in IO_STRING:
        return _io(op, rest, fixed, i)
    if op in SOFTWARE_INT_OPS and op != OP_INTO:
        if op == OP_INTN and not rest:
            return None
        vector = rest[0] if op == OP_INTN else SOFTWARE_INT_VECTORS[op]
        length = i + (2 if op == OP_INTN else 1)
        return Insn(Action.SOFTWARE_INTERRUPT, length, vector=vector, prefixes=fixed)
    if op == OP_TWO_BYTE and rest and rest[0] in TWO_BYTE_OPS:
        return _two_byte(code, i + 1, fixed)
    return None


def _io(op: int, rest: bytes, prefixes: frozenset[int], at: int) -> Insn:
    """IN/OUT/INS/OUTS: the exit qualification from the bytes (Intel SDM Vol. 3, exit
    qualification for I/O instructions); a DX port is added at the exit."""
    table = IO_IMM if op in IO_IMM else IO_DX if op in IO_DX else IO_STRING
    is_in, is_byte = table[op]
    width = (
        IO_SIZE_BYTE if is_byte else IO_SIZE_WORD if PREFIX_OPSIZE in prefixes else IO_SIZE_DWORD
    )
    qual = (width - 1) | (IOQ_IN if is_in else 0)
    port = None
    if op in IO_IMM:
        port = rest[0] if rest else 0
        qual |= IOQ_IMMEDIATE
    if op in IO_STRING:
        qual |= IOQ_STRING
        if prefixes & {PREFIX_REP, PREFIX_REPNE}:
            qual |= IOQ_REP
    length = at + (2 if op in IO_IMM else 1)
    return Insn(
        Action.IO, length, ExitReason.IO, io_qualification=qual, port=port, prefixes=prefixes
    )


def _two_byte(code: bytes, at: int, prefixes: frozenset[int]) -> Insn | None:
    """The 0F-map instruction whose second opcode byte is code[at] (`at` counts the prefixes)."""
    op2 = code[at]
    size = at + 1
    reason = UNCONDITIONAL_TWO_BYTE_EXITS.get(op2)
    if reason is not None:
        return Insn(Action.EXIT, size, reason, prefixes=prefixes)
    if op2 == OP2_MOV_TO_CR:
        return Insn(Action.MOV_TO_CR, size, prefixes=prefixes)
    if op2 == OP2_RDTSC:
        return Insn(Action.EXIT_IF_CONTROL, size, ExitReason.RDTSC, PROC_RDTSC_EXITING)
    if op2 in (OP2_RDMSR, OP2_WRMSR):
        reason = ExitReason.MSR_WRITE if op2 == OP2_WRMSR else ExitReason.MSR_READ
        return Insn(Action.MSR, size, reason, write=op2 == OP2_WRMSR, prefixes=prefixes)
    if op2 == OP2_RDPMC:
        return Insn(Action.EXIT_IF_CONTROL, size, ExitReason.RDPMC, PROC_RDPMC_EXITING)
    if len(code) <= at + 1:
        return None  # cut off at the end of backed memory: unicorn's fetch fault comes first
    if op2 == OP2_GROUP7:
        return _group7(code, at, prefixes)
    if op2 in VMREAD_VMWRITE:
        if prefixes & MANDATORY_PREFIXES:
            return None
        return _operand_exit(VMREAD_VMWRITE[op2], code, at + 1, prefixes)
    if op2 == OP2_GROUP9:
        return _group9(code, at + 1, prefixes)
    if op2 == OP2_ESCAPE_38:
        reason = INVEPT_INVVPID.get(code[at + 1])
        memory_form = len(code) > at + 2 and code[at + 2] >> MODRM_MOD_SHIFT != MOD_REGISTER
        only_66 = PREFIX_OPSIZE in prefixes and not prefixes & {PREFIX_REP, PREFIX_REPNE}
        if reason is not None and memory_form and only_66:
            return _operand_exit(reason, code, at + 2, prefixes)
    return None


def _group7(code: bytes, at: int, prefixes: frozenset[int]) -> Insn | None:
    """0F 01: VMCALL, TDCALL, the register forms that always exit, and INVLPG."""
    modrm = code[at + 1]
    reason = GROUP7_REGISTER_EXITS.get(modrm)
    if reason is not None:
        return Insn(Action.EXIT, at + 2, reason, prefixes=prefixes)
    if modrm == MODRM_VMCALL and not prefixes:
        return Insn(Action.EXIT, at + 2, ExitReason.VMCALL, prefixes=prefixes)
    if modrm == MODRM_TDCALL and PREFIX_OPSIZE in prefixes:
        return Insn(Action.TDCALL, at + 2, ExitReason.TDCALL, prefixes=prefixes)
    if (
        modrm >> MODRM_MOD_SHIFT != MOD_REGISTER
        and (modrm >> MODRM_REG_SHIFT) & MODRM_REG_MASK == GROUP7_INVLPG
    ):
        length = at + 1 + modrm_operand_length(code, at + 1) if len(code) > at + 2 else 0
        if 0 < length <= min(len(code), MAX_INSN_LEN):
            return Insn(
                Action.EXIT_IF_CONTROL,
                length,
                ExitReason.INVLPG,
                PROC_INVLPG_EXITING,
                opcode_at=at - 1,
                prefixes=prefixes,
            )
    return None


def _group9(code: bytes, at: int, prefixes: frozenset[int]) -> Insn | None:
    """0F C7 memory forms /6 (VMPTRLD, 66: VMCLEAR, F3: VMXON) and /7 (VMPTRST)."""
    modrm = code[at]
    if modrm >> MODRM_MOD_SHIFT == MOD_REGISTER or PREFIX_REPNE in prefixes:
        return None  # RDRAND/RDSEED/RDPID, or no VMX instruction
    reg = (modrm >> MODRM_REG_SHIFT) & MODRM_REG_MASK
    if reg == GROUP9_VMPTRST and not prefixes & MANDATORY_PREFIXES:
        return _operand_exit(ExitReason.VMPTRST, code, at, prefixes)
    if reg == GROUP9_VMPTRLD:
        reason = (
            ExitReason.VMXON
            if PREFIX_REP in prefixes
            else ExitReason.VMCLEAR
            if PREFIX_OPSIZE in prefixes
            else ExitReason.VMPTRLD
        )
        return _operand_exit(reason, code, at, prefixes)
    return None


def _operand_exit(
    reason: ExitReason, code: bytes, modrm_at: int, prefixes: frozenset[int]
) -> Insn | None:
    """An instruction ending in a ModRM operand; longer than the bytes or 15: not decoded
    (cut off, or a #GP that unicorn raises)."""
    if len(code) <= modrm_at + 1:
        return None
    length = modrm_at + modrm_operand_length(code, modrm_at)
    if length <= min(len(code), MAX_INSN_LEN):
        return Insn(Action.EXIT, length, reason, prefixes=prefixes)
    return None


def operand_address(
    code: bytes,
    opcode_at: int,
    prefixes: AbstractSet[int],
    next_rip: int,
    gpr: Callable[[int], int],
    segment_base: Callable[[int], int],
) -> int:
    """Linear address of the memory operand of the 0F xx /r instruction at code[opcode_at].

    `gpr(n)` reads general register n (0 = RAX ... 15 = R15); `segment_base(prefix)` the base
    of the FS (64h) or GS (65h) segment; 64-bit mode ignores the other segment overrides.
    """
    rex = code[opcode_at - 1] if opcode_at else 0
    if not REX_FIRST <= rex <= REX_LAST:
        rex = 0
    modrm_at = opcode_at + 2
    modrm = code[modrm_at]
    mod, rm = modrm >> MODRM_MOD_SHIFT, modrm & MODRM_RM_MASK
    at = modrm_at + 1
    if mod == MOD_INDIRECT and rm == RM_RIP_RELATIVE:
        ea = next_rip + DISP32.unpack_from(code, at)[0]
        at += DISP32.size
    else:
        ea = 0
        base = rm | (REX_REG_EXTEND if rex & REX_B else 0)
        if rm == RM_SIB:
            sib = code[at]
            at += 1
            index = (sib >> SIB_INDEX_SHIFT) & MODRM_RM_MASK
            index |= REX_REG_EXTEND if rex & REX_X else 0
            if index != SIB_NO_INDEX:
                ea += gpr(index) << (sib >> SIB_SCALE_SHIFT)
            base = sib & MODRM_RM_MASK | (REX_REG_EXTEND if rex & REX_B else 0)
            if mod == MOD_INDIRECT and sib & MODRM_RM_MASK == SIB_NO_BASE:
                base = -1
        if base >= 0:
            ea += gpr(base)
        if mod == MOD_DISP8:
            ea += DISP8.unpack_from(code, at)[0]
        elif mod == MOD_DISP32 or base < 0:
            ea += DISP32.unpack_from(code, at)[0]
    ea &= U32 if PREFIX_ADDR32 in prefixes else U64
    segment = segment_override(code[:opcode_at])
    if segment is not None:
        ea += segment_base(segment)
    return int(ea) & U64


def segment_override(prefixes: bytes) -> int | None:
    """The last FS or GS prefix byte among `prefixes` (64-bit mode ignores the others)."""
    segment = None
    for byte in prefixes:
        if byte in (PREFIX_FS, PREFIX_GS):
            segment = byte
    return segment
