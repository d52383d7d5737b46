"""The TDCALL register file (tdxsim.module.registers.Regs): 16 GPRs in architectural order,
each truncated to 64 bits on the way in (Intel TDX Module v1.5 ABI Specification, TDCALL)."""

from __future__ import annotations

import pytest

from tdxsim.module.registers import GPR_NAMES, Regs

U64 = (1 << 64) - 1


def test_values_that_fit_are_taken_as_they_are() -> None:
    values = [U64 - i for i in range(len(GPR_NAMES))]
    regs = Regs.from_list(values)
    assert regs.as_list() == values
    assert all(type(value) is int for value in regs.as_list())


def test_values_outside_64_bits_are_truncated() -> None:
    values = [(1 << 64) + 5, -1, *range(2, 16)]
    assert Regs.from_list(values).as_list() == [5, U64, *range(2, 16)]


def test_fewer_values_leave_the_other_registers_zero() -> None:
    assert Regs.from_list([7, 8]).as_list() == [7, 8] + [0] * 14


def test_a_value_that_is_not_an_integer_is_refused() -> None:
    with pytest.raises(TypeError):
        Regs.from_list([1.5] + [0] * 15)  # type: ignore[arg-type]
