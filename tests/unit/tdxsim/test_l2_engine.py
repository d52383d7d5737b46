"""Unicorn's C entry points called without the binding's conversions (tdxsim.l2.engine and the
register blocks): the same results and errors as the binding's own calls."""

from __future__ import annotations

from typing import Any

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_MODE_64
from unicorn import x86_const as X
from unicorn.unicorn import Uc, UcError

from tdxsim.l2.engine import Runner
from tdxsim.l2.registers import UC_GPRS, FastRegs, RegisterBlock

UNICORN: Any = Uc  # the binding is untyped
CODE = 0x1000
NOPS_THEN_HLT = b"\x90\x90\x90\xf4"


def engine() -> Any:
    uc = UNICORN(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, 0x1000)
    uc.mem_write(CODE, NOPS_THEN_HLT)
    return uc


def test_runner_runs_the_given_number_of_instructions() -> None:
    uc = engine()
    Runner(uc).start(CODE, 2)
    assert uc.reg_read(X.UC_X86_REG_RIP) == CODE + 2


def test_runner_raises_what_a_hook_raised() -> None:
    uc = engine()

    def hook(_uc: Any, address: int, _size: int, _data: object) -> None:
        if address == CODE + 1:
            raise ValueError(f"hook at {address:#x}")

    uc.hook_add(UC_HOOK_CODE, hook)
    with pytest.raises(ValueError, match="hook at 0x1001"):
        Runner(uc).start(CODE, 3)


def test_runner_raises_unicorns_error_on_a_fault() -> None:
    uc = engine()
    with pytest.raises(UcError):
        Runner(uc).start(0x9000, 1)  # nothing mapped there


def test_register_block_and_single_registers_match_the_binding() -> None:
    uc = engine()
    block = RegisterBlock(uc, UC_GPRS)
    values = [(i + 1) * 0x0101_0000_0000_0001 for i in range(len(UC_GPRS))]
    block.write(values)
    assert [uc.reg_read(r) for r in UC_GPRS] == values
    assert block.read() == values
    regs = FastRegs(uc)
    regs.write(X.UC_X86_REG_RAX, (1 << 64) + 5)  # truncated to 64 bits
    assert uc.reg_read(X.UC_X86_REG_RAX) == 5
    uc.reg_write(X.UC_X86_REG_RBX, 0xFEED)
    assert regs.read(X.UC_X86_REG_RBX) == 0xFEED
