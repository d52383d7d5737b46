"""Register movement between the model and unicorn: batched reads and writes, and the layout of
the L2 guest-state block that TDG.VP.ENTER takes and returns (Intel TDX Module TD Partitioning
Architecture Specification, L2_ENTER_GUEST_STATE: 16 GPRs, RFLAGS, RIP, SSP, RVI and SVI)."""

from __future__ import annotations

import ctypes
import struct
from typing import Any, cast

from unicorn import x86_const as X

from tdxsim.l2.engine import (
    REG_READ,
    REG_READ_BATCH,
    REG_WRITE,
    REG_WRITE_BATCH,
    engine_handle,
    raise_status,
)

# The guest-state block: 16 GPRs, RFLAGS, RIP, SSP, u16 RVI|SVI<<8
GUEST_STATE = struct.Struct("<16QQQQH")
# Its parts as entry and exit move them: GPRs, RFLAGS and RIP are copied as bytes between the
# block and the batch-register buffer (same order, both little-endian on an x86-64 host).
GUEST_STATE_REGS_SIZE = 18 * 8
GUEST_STATE_TAIL = struct.Struct("<QQQH")  # RFLAGS, RIP, SSP, RVI|SVI<<8
GUEST_STATE_TAIL_AT = 16 * 8
GUEST_STATE_STATUS = struct.Struct("<QH")  # SSP, RVI|SVI<<8

UC_GPRS = (
    X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX,
    X.UC_X86_REG_RSP, X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI,
    X.UC_X86_REG_R8, X.UC_X86_REG_R9, X.UC_X86_REG_R10, X.UC_X86_REG_R11,
    X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14, X.UC_X86_REG_R15,
)  # fmt: skip
UC_STATE_REGS = (*UC_GPRS, X.UC_X86_REG_RFLAGS, X.UC_X86_REG_RIP)
UC_CRS = (X.UC_X86_REG_CR0, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4)
# What an exit reads in one batch: the guest-state block's registers, the CRs, CS.
UC_EXIT_REGS = (*UC_STATE_REGS, *UC_CRS, X.UC_X86_REG_CS)
RFLAGS_AT, RIP_AT = len(UC_GPRS), len(UC_GPRS) + 1
EXIT_TAIL = struct.Struct("=5Q")  # RIP, CR0, CR3, CR4, CS: the end of UC_EXIT_REGS


class RegisterBlock:
    """Batch access to a fixed list of 64-bit registers with preallocated ctypes buffers.

    The binding's per-register path costs microseconds of Python per register; entry and exit
    move 18 registers, so they go through uc_reg_{read,write}_batch with buffers made once.
    """

    def __init__(self, uc: Any, regs: tuple[int, ...]) -> None:
        self._uc = uc  # keeps the engine behind the handle alive
        self._handle = engine_handle(uc)
        self._count = len(regs)
        self._ids = (ctypes.c_int * len(regs))(*regs)
        self._vals = (ctypes.c_uint64 * len(regs))()
        self._layout = struct.Struct(f"<{len(regs)}Q")  # unpacks the buffer in one C call
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * len(regs))(*(base + 8 * i for i in range(len(regs))))
        self.raw = memoryview(self._vals).cast("B")  # the values' bytes, native order

    def load(self) -> None:
        """Read every register of the block into `raw`."""
        status = REG_READ_BATCH(self._handle, self._ids, self._ptrs, self._count)
        if status:
            raise_status(status)

    def store(self) -> None:
        """Write every register of the block from `raw`."""
        status = REG_WRITE_BATCH(self._handle, self._ids, self._ptrs, self._count)
        if status:
            raise_status(status)

    def set(self, index: int, value: int) -> None:
        """Change one value in `raw` (truncated to 64 bits), without writing it to unicorn."""
        self._vals[index] = value

    def get(self, index: int) -> int:
        """One value of `raw` as last loaded or set."""
        return int(self._vals[index])

    def read(self) -> list[int]:
        """Current values, in the order given at construction."""
        self.load()
        return list(self._layout.unpack_from(self._vals))

    def write(self, values: list[int] | tuple[int, ...]) -> None:
        """Set every register of the block (ctypes truncates each value to 64 bits)."""
        cast(Any, self._vals)[:] = values
        self.store()


class TableRegister(ctypes.Structure):
    """Unicorn's layout of a descriptor-table register (uc_x86_mmr: selector, base, limit,
    flags), for reading IDTR without the binding's per-call conversions."""

    _fields_ = (
        ("selector", ctypes.c_uint16),
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    )


class FastRegs:
    """Single 64-bit register reads and writes straight through uc_reg_{read,write}, one
    preallocated buffer per register (a narrower register would leave its upper bytes as they
    were, so buffers are never shared between registers)."""

    def __init__(self, uc: Any) -> None:
        self._uc = uc  # keeps the engine behind the handle alive
        self._handle = engine_handle(uc)
        self._buffers: dict[int, tuple[ctypes.c_uint64, Any]] = {}
        self._table = TableRegister()

    def _buffer(self, reg: int) -> tuple[ctypes.c_uint64, Any]:
        buffer = self._buffers.get(reg)
        if buffer is None:
            value = ctypes.c_uint64()
            buffer = self._buffers[reg] = (value, ctypes.byref(value))
        return buffer

    def read(self, reg: int) -> int:
        """One 64-bit register."""
        value, ref = self._buffers.get(reg) or self._buffer(reg)
        status = REG_READ(self._handle, reg, ref)
        if status:
            raise_status(status)
        return value.value

    def read_table(self, reg: int) -> tuple[int, int]:
        """(base, limit) of a descriptor-table register (IDTR, GDTR)."""
        status = REG_READ(self._handle, reg, ctypes.byref(self._table))
        if status:
            raise_status(status)
        return int(self._table.base), int(self._table.limit)

    def write(self, reg: int, value: int) -> None:
        """Set one 64-bit register (truncated to 64 bits)."""
        buffer, ref = self._buffers.get(reg) or self._buffer(reg)
        buffer.value = value
        status = REG_WRITE(self._handle, reg, ref)
        if status:
            raise_status(status)
