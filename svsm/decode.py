"""Decoding an L2's MMIO instruction, so L1 can emulate the access it faulted on.

When an L2 touches private MMIO (an EPT violation on a GPA with no alias, such as the TPM CRB),
L1 copies the instruction bytes out of L2 memory once and decodes them with iced-x86 (a
maintained x86 decoder). Only the forms a C compiler emits for volatile device accesses are
emulated: MOV loads and stores of 1, 2, 4 or 8 bytes (register or immediate source, the moffs
forms included), MOVZX, MOVSX and MOVSXD loads, with any ModRM/SIB/displacement addressing and
operand-size or REX prefixes. Everything else (string and LOCK'd instructions, FS/GS overrides,
SIMD moves, read-modify-write arithmetic, undecodable or truncated bytes) raises
`NotEmulatable`, which L1 answers by injecting #GP(0) into that L2; it never reaches L1's own
state. Register semantics follow the Intel SDM Vol. 1, 3.4.1.1: a 32-bit destination
zero-extends to 64 bits, 8- and 16-bit destinations keep the other bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from iced_x86 import (
    Code,
    Decoder,
    DecoderOptions,
    Instruction,
    MemorySizeExt,
    OpKind,
    Register,
    Register_,
    RegisterExt,
)

from svsm.errors import SvsmError

MAX_INSTRUCTION_LENGTH = 15  # Intel SDM Vol. 2, 2.3.11
GPR_COUNT = 16
MASK64 = (1 << 64) - 1
HIGH_BYTE_REGISTERS = {Register.AH: 0, Register.CH: 1, Register.DH: 2, Register.BH: 3}


class NotEmulatable(SvsmError, ValueError):
    """The bytes are not an MMIO access L1 emulates; the message names the bytes and why."""


class Direction(Enum):
    """Whether the instruction reads the device (a load) or writes it (a store)."""

    READ = "read"
    WRITE = "write"


class Extension(Enum):
    """How a load's value is widened into its destination register."""

    NONE = "none"
    ZERO = "zero"
    SIGN = "sign"


_LOADS = {
    Code.MOV_R8_RM8: Extension.NONE,
    Code.MOV_R16_RM16: Extension.NONE,
    Code.MOV_R32_RM32: Extension.NONE,
    Code.MOV_R64_RM64: Extension.NONE,
    Code.MOV_AL_MOFFS8: Extension.NONE,
    Code.MOV_AX_MOFFS16: Extension.NONE,
    Code.MOV_EAX_MOFFS32: Extension.NONE,
    Code.MOV_RAX_MOFFS64: Extension.NONE,
    Code.MOVZX_R16_RM8: Extension.ZERO,
    Code.MOVZX_R32_RM8: Extension.ZERO,
    Code.MOVZX_R64_RM8: Extension.ZERO,
    Code.MOVZX_R16_RM16: Extension.ZERO,
    Code.MOVZX_R32_RM16: Extension.ZERO,
    Code.MOVZX_R64_RM16: Extension.ZERO,
    Code.MOVSX_R16_RM8: Extension.SIGN,
    Code.MOVSX_R32_RM8: Extension.SIGN,
    Code.MOVSX_R64_RM8: Extension.SIGN,
    Code.MOVSX_R16_RM16: Extension.SIGN,
    Code.MOVSX_R32_RM16: Extension.SIGN,
    Code.MOVSX_R64_RM16: Extension.SIGN,
    Code.MOVSXD_R16_RM16: Extension.SIGN,
    Code.MOVSXD_R32_RM32: Extension.SIGN,
    Code.MOVSXD_R64_RM32: Extension.SIGN,
}
_REGISTER_STORES = {
    Code.MOV_RM8_R8,
    Code.MOV_RM16_R16,
    Code.MOV_RM32_R32,
    Code.MOV_RM64_R64,
    Code.MOV_MOFFS8_AL,
    Code.MOV_MOFFS16_AX,
    Code.MOV_MOFFS32_EAX,
    Code.MOV_MOFFS64_RAX,
}
_IMMEDIATE_STORES = {
    Code.MOV_RM8_IMM8,
    Code.MOV_RM16_IMM16,
    Code.MOV_RM32_IMM32,
    Code.MOV_RM64_IMM32,
}


@dataclass(frozen=True)
class GprOperand:
    """A general-purpose register: its index in architectural order (RAX=0 .. R15=15), its width
    in bytes, and whether it is one of AH, CH, DH, BH (bits 15:8 of registers 0..3)."""

    index: int
    size: int
    high_byte: bool = False

    def read(self, gprs: list[int]) -> int:
        """The operand's value out of the 16 GPRs."""
        value = gprs[self.index]
        if self.high_byte:
            return (value >> 8) & 0xFF
        return value & ((1 << (8 * self.size)) - 1)

    def write(self, gprs: list[int], value: int) -> None:
        """Write `value` with the SDM's merge rules (32-bit zero-extends, 8/16-bit merge)."""
        old = gprs[self.index]
        if self.high_byte:
            gprs[self.index] = (old & ~0xFF00) | ((value & 0xFF) << 8)
        elif self.size == 4:
            gprs[self.index] = value & 0xFFFFFFFF
        elif self.size == 8:
            gprs[self.index] = value & MASK64
        else:
            mask = (1 << (8 * self.size)) - 1
            gprs[self.index] = (old & ~mask & MASK64) | (value & mask)


@dataclass(frozen=True)
class MemoryOperand:
    """The effective-address parts: base and index as GPR indices (None if absent)."""

    base: int | None
    index: int | None
    scale: int
    displacement: int
    rip_relative: bool
    address_size: int

    def linear_address(self, gprs: list[int], next_rip: int) -> int:
        """The effective address (flat segments: CS/DS/ES/SS bases are 0 in 64-bit mode)."""
        if self.rip_relative:
            return self.displacement & MASK64
        total = self.displacement
        if self.base is not None:
            total += gprs[self.base]
        if self.index is not None:
            total += gprs[self.index] * self.scale
        return total & ((1 << (8 * self.address_size)) - 1)


@dataclass(frozen=True)
class MmioInstruction:
    """One decoded MMIO access: what L1 must emulate and how far L2's RIP advances."""

    length: int
    direction: Direction
    size: int
    memory: MemoryOperand
    register: GprOperand | None = None
    immediate: int | None = None
    extension: Extension = Extension.NONE
    text: str = ""

    def store_value(self, gprs: list[int]) -> bytes:
        """The bytes a store writes to the device, little-endian."""
        return self.stored(gprs).to_bytes(self.size, "little")

    def stored(self, gprs: list[int]) -> int:
        """The value a store writes to the device, `size` bytes wide (`store_value` as a number:
        a device register takes it as one, with no bytes in between)."""
        if self.direction is not Direction.WRITE:
            raise NotEmulatable(f"{self.text}: a load has no value to store")
        value = self.register.read(gprs) if self.register is not None else self.immediate or 0
        return value & ((1 << (8 * self.size)) - 1)

    def complete_load(self, gprs: list[int], data: bytes) -> None:
        """Put the device's answer into the destination register of a load."""
        if len(data) != self.size:
            raise NotEmulatable(f"{self.text}: {len(data)} bytes for a {self.size}-byte load")
        self.load(gprs, int.from_bytes(data, "little"))

    def load(self, gprs: list[int], value: int) -> None:
        """`complete_load` with the device's answer as a number (`size` bytes wide: higher bits
        are dropped), as a device register gives it."""
        if self.direction is not Direction.READ or self.register is None:
            raise NotEmulatable(f"{self.text}: not a load")
        bits = 8 * self.size
        value &= (1 << bits) - 1
        if self.extension is Extension.SIGN and value >> (bits - 1):
            value -= 1 << bits
        self.register.write(gprs, value & MASK64)


def _gpr(register: Register_) -> GprOperand | None:
    if register in HIGH_BYTE_REGISTERS:
        return GprOperand(HIGH_BYTE_REGISTERS[register], 1, high_byte=True)
    if not RegisterExt.is_gpr(register):
        return None
    index = RegisterExt.full_register(register) - Register.RAX
    if not 0 <= index < GPR_COUNT:
        return None
    return GprOperand(index, RegisterExt.size(register))


def decode_mmio(code: bytes, rip: int) -> MmioInstruction:
    """Decode the instruction at `rip` from bytes L1 already copied out of L2 memory."""
    raw = bytes(code[:MAX_INSTRUCTION_LENGTH])
    shown = raw.hex() or "(no bytes)"
    decoder = Decoder(64, raw, DecoderOptions.NONE, ip=rip)
    insn = decoder.decode()
    if insn.code == Code.INVALID:
        raise NotEmulatable(f"bytes {shown} at RIP {rip:#x} do not decode (invalid or truncated)")
    text = f"{insn} ({raw[: insn.len].hex()} at RIP {rip:#x})"
    if insn.has_lock_prefix or insn.has_rep_prefix or insn.has_repne_prefix:
        raise NotEmulatable(f"{text}: LOCK/REP prefixed accesses are not emulated")
    if insn.segment_prefix in (Register.FS, Register.GS):
        raise NotEmulatable(f"{text}: FS/GS-relative MMIO is not emulated")
    kinds = [insn.op_kind(i) for i in range(insn.op_count)]
    memory_at = [i for i, kind in enumerate(kinds) if kind == OpKind.MEMORY]
    if len(memory_at) != 1:
        raise NotEmulatable(f"{text}: not a single memory operand")
    size = MemorySizeExt.size(insn.memory_size)
    if size not in (1, 2, 4, 8):
        raise NotEmulatable(f"{text}: {size}-byte accesses are not emulated")
    memory = _memory_operand(insn, text)
    if insn.code in _LOADS:
        register = _gpr(insn.op0_register)
        if register is None:
            raise NotEmulatable(f"{text}: destination is not a general-purpose register")
        return MmioInstruction(
            insn.len, Direction.READ, size, memory, register, None, _LOADS[insn.code], text
        )
    if insn.code in _REGISTER_STORES:
        register = _gpr(insn.op1_register)
        if register is None:
            raise NotEmulatable(f"{text}: source is not a general-purpose register")
        return MmioInstruction(insn.len, Direction.WRITE, size, memory, register, text=text)
    if insn.code in _IMMEDIATE_STORES:
        immediate = insn.immediate(1) & ((1 << (8 * size)) - 1)
        return MmioInstruction(insn.len, Direction.WRITE, size, memory, None, immediate, text=text)
    raise NotEmulatable(f"{text}: only MOV, MOVZX, MOVSX and MOVSXD are emulated for MMIO")


def _memory_operand(insn: Instruction, text: str) -> MemoryOperand:
    base_reg = insn.memory_base
    index_reg = insn.memory_index
    rip_relative = bool(insn.is_ip_rel_memory_operand)
    base = None if base_reg == Register.NONE or rip_relative else _gpr(base_reg)
    index = None if index_reg == Register.NONE else _gpr(index_reg)
    if (base_reg != Register.NONE and not rip_relative and base is None) or (
        index_reg != Register.NONE and index is None
    ):
        raise NotEmulatable(f"{text}: address registers are not general-purpose")
    address_size = RegisterExt.size(base_reg) if base is not None else 8
    if index is not None:
        address_size = RegisterExt.size(index_reg)
    return MemoryOperand(
        base.index if base else None,
        index.index if index else None,
        insn.memory_index_scale,
        insn.memory_displacement,
        rip_relative,
        address_size,
    )
