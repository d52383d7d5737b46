"""Register movement between the model and unicorn: batched reads and writes, and the layout of
the L2 guest-state block that TDG.VP.ENTER takes and returns (Intel TDX Module TD Partitioning
Architecture Specification, L2_ENTER_GUEST_STATE: 16 GPRs, RFLAGS, RIP, SSP, RVI and SVI)."""

from __future__ import annotations

import ctypes
import struct
from typing import Any, cast

from unicorn import x86_const as X
from unicorn.unicorn import UcError

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
        self._uc = uc
        self._count = ctypes.c_int(len(regs))
        self._ids = (ctypes.c_int * len(regs))(*regs)
        self._vals = (ctypes.c_uint64 * len(regs))()
        self._layout = struct.Struct(f"<{len(regs)}Q")  # unpacks the buffer in one C call
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * len(regs))(*(base + 8 * i for i in range(len(regs))))
        self.raw = memoryview(self._vals).cast("B")  # the values' bytes, native order

    def load(self) -> None:
        """Read every register of the block into `raw`."""
        status = self._uc._do_reg_read_batch(self._ids, self._ptrs, self._count)
        if status:
            raise cast(Any, UcError)(status)

    def store(self) -> None:
        """Write every register of the block from `raw`."""
        status = self._uc._do_reg_write_batch(self._ids, self._ptrs, self._count)
        if status:
            raise cast(Any, UcError)(status)

    def set(self, index: int, value: int) -> None:
        """Change one value in `raw` (truncated to 64 bits), without writing it to unicorn."""
        self._vals[index] = value

    def read(self) -> list[int]:
        """Current values, in the order given at construction."""
        status = self._uc._do_reg_read_batch(self._ids, self._ptrs, self._count)
        if status:
            raise cast(Any, UcError)(status)
        return list(self._layout.unpack_from(self._vals))

    def first(self) -> int:
        """The current value of the block's first register."""
        status = self._uc._do_reg_read_batch(self._ids, self._ptrs, self._count)
        if status:
            raise cast(Any, UcError)(status)
        return int(self._vals[0])

    def write(self, values: list[int] | tuple[int, ...]) -> None:
        """Set every register of the block (ctypes truncates each value to 64 bits)."""
        cast(Any, self._vals)[:] = values
        status = self._uc._do_reg_write_batch(self._ids, self._ptrs, self._count)
        if status:
            raise cast(Any, UcError)(status)


class FastRegs:
    """Single-register reads and writes through the batch path (see RegisterBlock)."""

    def __init__(self, uc: Any) -> None:
        self._uc = uc
        self._blocks: dict[int, RegisterBlock] = {}

    def _block(self, reg: int) -> RegisterBlock:
        block = self._blocks.get(reg)
        if block is None:
            block = self._blocks[reg] = RegisterBlock(self._uc, (reg,))
        return block

    def read(self, reg: int) -> int:
        """One 64-bit register."""
        return self._block(reg).first()

    def write(self, reg: int, value: int) -> None:
        """Set one 64-bit register."""
        self._block(reg).write((value,))
