"""The alias manager: what it refuses before any TDCALL, and how it treats a busy or failing module.

The busy and failing module is a scripted TDCALL entry point (a real module is busy only under
contention that a single-threaded test cannot make); everything else runs on the simulated module.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from svsm.aliases import BUSY_RETRIES, AliasError, AliasManager
from svsm.tdcall import Tdcall
from tdxdefs.attributes import GpaAttr
from tdxdefs.tdcall import RAX, TDX_OPERAND_BUSY, TDX_OPERAND_INVALID, TDX_SUCCESS, Leaf
from tests.support.svsm_td import Td

PAGE = 0x1000


class ScriptedModule:
    """Answers TDG.MEM.PAGE.ATTR.WR with the statuses it is given, then success."""

    def __init__(self, statuses: Sequence[int]) -> None:
        self.statuses = list(statuses)
        self.calls = 0

    def __call__(self, regs: Sequence[int]) -> list[int]:
        assert regs[RAX] == Leaf.MEM_PAGE_ATTR_WR
        self.calls += 1
        out = list(regs)
        out[RAX] = self.statuses.pop(0) if self.statuses else TDX_SUCCESS
        return out


def test_busy_module_is_retried_a_bounded_number_of_times() -> None:
    module = ScriptedModule([TDX_OPERAND_BUSY] * 3)
    aliases = AliasManager(Tdcall(module), 1)
    aliases.grant(1, 0x400000, PAGE, GpaAttr.R)
    assert module.calls == 4 and aliases.busy_retries == 3
    stuck = ScriptedModule([TDX_OPERAND_BUSY] * (BUSY_RETRIES + 5))
    with pytest.raises(AliasError, match="still TDX_OPERAND_BUSY"):
        AliasManager(Tdcall(stuck), 1).grant(1, 0x400000, PAGE, GpaAttr.R)
    assert stuck.calls == BUSY_RETRIES + 1


def test_refused_write_names_the_gpa_and_vm() -> None:
    aliases = AliasManager(Tdcall(ScriptedModule([TDX_OPERAND_INVALID])), 2)
    with pytest.raises(AliasError, match="GPA 0x401000 for L2 VM 2 failed"):
        aliases.grant(2, 0x401000, PAGE, GpaAttr.R)
    assert aliases.attrs(2, 0x401000) == GpaAttr(0)  # not recorded as granted


@pytest.mark.parametrize(
    ("vm", "gpa", "size", "attrs", "why"),
    [
        (1, 0x400000, PAGE, GpaAttr.R | GpaAttr.W | GpaAttr.XS, "W\\+X"),
        (1, 0x400000, PAGE, GpaAttr.R | GpaAttr.XU, "beyond R/W/X"),
        (3, 0x400000, PAGE, GpaAttr.R, "VM 3 does not exist"),
        (1, 0x400800, PAGE, GpaAttr.R, "not whole pages"),
        (1, 0x200000, PAGE, GpaAttr.R, "is L1's \\(paravisor data\\)"),
        (1, 0x1FE000, 3 * PAGE, GpaAttr.R, "GPA 0x200000 is L1's"),  # its last page is L1's
    ],
)
def test_refused_before_any_tdcall(vm: int, gpa: int, size: int, attrs: GpaAttr, why: str) -> None:
    module = ScriptedModule([])
    aliases = AliasManager(Tdcall(module), 2)
    aliases.reserve(0x200000, PAGE, "paravisor data")
    with pytest.raises(AliasError, match=why):
        aliases.grant(vm, gpa, size, attrs)
    assert module.calls == 0


def test_aliases_on_the_module_grant_revoke_and_reserve(td: Td) -> None:
    td.memory.accept(0x200000, 0x200000)
    aliases = AliasManager(td.tdcall, 2)
    aliases.grant(1, 0x300000, 2 * PAGE, GpaAttr.R | GpaAttr.W, "ram")
    assert aliases.attrs(1, 0x300000) == GpaAttr.R | GpaAttr.W
    assert aliases.attrs(2, 0x300000) == GpaAttr(0)
    aliases.revoke(1, 0x300000, PAGE)
    assert aliases.attrs(1, 0x300000) == GpaAttr(0) and aliases.attrs(1, 0x301000)
    with pytest.raises(AliasError, match="already aliased into L2 VM 1"):
        aliases.reserve(0x301000, PAGE, "vTPM state")
    assert aliases.writes == 3
