"""L2 page aliases: the GPA_ATTR words of VM1..VM3 for every private page.

Intel TDX Module TD Partitioning Architecture Specification (GPA attributes) and the v1.5 ABI
Specification, TDG.MEM.PAGE.ATTR.RD and TDG.MEM.PAGE.ATTR.WR.

Aliases are identity mapped (L2 GPA == L1 GPA), so the only per-page L2 state is one 16-bit
attribute word per L2 VM. VM0's word is derived from the L1 SEPT entry and never stored.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass

from tdxdefs.attributes import (
    ATTR_ACCESS,
    ATTR_FLAGS_INVEPT,
    ATTR_FLAGS_MASK_BITS,
    ATTR_PWA,
    ATTR_R,
    ATTR_RESERVED,
    ATTR_SVE,
    ATTR_VALID,
    ATTR_W,
    ATTR_WORD_BITS,
    ATTR_WORD_MASK,
    GUEST_L2_GPA_ATTR_MASK,
    L1_FULL_ATTR,
    attr_word,
)
from tdxdefs.tdcall import MAX_L2_VMS
from tdxsim.module.memory import PageState, TdMemory

AliasListener = Callable[[int, int], None]


def attr_is_legal(word: int) -> bool:
    """Legality of a resulting per-VM word: W/PWA need R, no SVE (the TDX module source,
    is_gpa_attr_legal)."""
    if word & ATTR_RESERVED or word & ATTR_SVE:
        return False
    if word & (ATTR_W | ATTR_PWA) and not word & ATTR_R:
        return False
    return not word & ~(GUEST_L2_GPA_ATTR_MASK | ATTR_VALID)


@dataclass(frozen=True)
class AttrCheck:
    """Outcome of validating ATTR.WR operands: which operand is wrong, if any."""

    bad_rdx: bool = False
    bad_r8: bool = False


def check_attr_operands(new_attr: int, flags: int, num_l2_vms: int) -> AttrCheck:
    """Operand checks of TDG.MEM.PAGE.ATTR.WR: VM0 and absent VMs zero; VALID=0 words empty."""
    for vm in range(MAX_L2_VMS + 1):
        word = attr_word(new_attr, vm)
        mask = attr_word(flags, vm)
        if vm == 0 or vm > num_l2_vms:
            if word:
                return AttrCheck(bad_rdx=True)
            if mask:
                return AttrCheck(bad_r8=True)
            continue
        if not word & ATTR_VALID and word:
            return AttrCheck(bad_rdx=True)
    return AttrCheck()


class AliasTable:
    """Per-page packed GPA_ATTR words for VM1..VM3 (VM0 slot always stored as 0)."""

    def __init__(self, memory: TdMemory) -> None:
        self.memory = memory
        self.words = array("Q", bytes(8 * len(memory.state)))
        self._listeners: list[AliasListener] = []
        self.invept_count = [0] * (MAX_L2_VMS + 1)

    def on_change(self, listener: AliasListener) -> None:
        """Register `listener(page_index, vm)` called after an alias of `vm` changes."""
        self._listeners.append(listener)

    def word(self, index: int, vm: int) -> int:
        """Stored attribute word of VM `vm` (1..3) for page `index`."""
        return attr_word(self.words[index], vm)

    def packed(self, index: int) -> int:
        """The full GPA_ATTR of page `index` with VM0 filled from the L1 SEPT entry."""
        l1 = L1_FULL_ATTR if self.memory.state[index] != PageState.NOT_PRESENT else 0
        return (self.words[index] & ~ATTR_WORD_MASK) | l1

    def compute(self, index: int, new_attr: int, flags: int, num_l2_vms: int) -> int | None:
        """The packed VM1..3 words after an update, or None if a resulting word is illegal."""
        cur = self.words[index]
        out = cur
        for vm in range(1, num_l2_vms + 1):
            word = attr_word(new_attr, vm)
            if not word & ATTR_VALID:
                continue
            mask = attr_word(flags, vm) & ATTR_FLAGS_MASK_BITS
            old = attr_word(cur, vm)
            res = ((old & ~mask) | (word & mask)) & ATTR_FLAGS_MASK_BITS
            if not attr_is_legal(res):
                return None
            res = res | ATTR_VALID if res & ATTR_ACCESS else 0
            shift = ATTR_WORD_BITS * vm
            out = (out & ~(ATTR_WORD_MASK << shift)) | (res << shift)
        return out

    def store(self, index: int, packed: int, flags: int, num_l2_vms: int) -> None:
        """Store new words for page `index`, count INVEPT requests, notify listeners of changes."""
        old = self.words[index]
        self.words[index] = packed & ~ATTR_WORD_MASK
        for vm in range(1, num_l2_vms + 1):
            if attr_word(flags, vm) & ATTR_FLAGS_INVEPT:
                self.invept_count[vm] += 1
            if attr_word(old, vm) != attr_word(packed, vm):
                for listener in self._listeners:
                    listener(index, vm)
