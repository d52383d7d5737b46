"""GPA_ATTR: the per-VM page attribute words of TDG.MEM.PAGE.ATTR.RD/WR and their packing.

Intel TDX Module TD Partitioning Architecture Specification, "GPA attributes" (one 16-bit word per
VM, VM 0 = L1 in bits 15:0: R, W, XS, XU, VGP, PWA, SSS, SVE, bits 14:8 reserved, bit 15 VALID),
and TDG.MEM.PAGE.ATTR.WR's ATTR_FLAGS operand (per-VM mask in bits 14:0, INVEPT in bit 15).
"""

from __future__ import annotations

from enum import IntFlag


class GpaAttr(IntFlag):
    """The bits of one VM's 16-bit GPA_ATTR word."""

    R = 1 << 0
    W = 1 << 1
    XS = 1 << 2
    XU = 1 << 3
    VGP = 1 << 4
    PWA = 1 << 5
    SSS = 1 << 6
    SVE = 1 << 7
    VALID = 1 << 15


# Plain ints for hot paths (IntFlag operators are slow); each is the GpaAttr bit above.
ATTR_R = int(GpaAttr.R)
ATTR_W = int(GpaAttr.W)
ATTR_XS = int(GpaAttr.XS)
ATTR_XU = int(GpaAttr.XU)
ATTR_VGP = int(GpaAttr.VGP)
ATTR_PWA = int(GpaAttr.PWA)
ATTR_SSS = int(GpaAttr.SSS)
ATTR_SVE = int(GpaAttr.SVE)
ATTR_VALID = int(GpaAttr.VALID)
ATTR_RESERVED = 0x7F00  # bits 14:8
ATTR_ACCESS = ATTR_R | ATTR_W | ATTR_XS | ATTR_XU
GUEST_L2_GPA_ATTR_MASK = 0x7F | ATTR_VALID
ATTR_FLAGS_MASK_BITS = 0x7FFF  # per-VM mask, bits 14:0
ATTR_FLAGS_INVEPT = 1 << 15
ATTR_WORD_BITS = 16
ATTR_WORD_MASK = 0xFFFF
L1_FULL_ATTR = ATTR_R | ATTR_W | ATTR_XS | ATTR_XU | ATTR_VALID


def attr_word(packed: int, vm: int) -> int:
    """The 16-bit word of VM `vm` (0 = L1) in a packed GPA_ATTR or ATTR_FLAGS value."""
    return (packed >> (ATTR_WORD_BITS * vm)) & ATTR_WORD_MASK


def pack_attr(words: dict[int, int]) -> int:
    """Pack per-VM 16-bit words into one 64-bit GPA_ATTR value."""
    out = 0
    for vm, word in words.items():
        out |= (word & ATTR_WORD_MASK) << (ATTR_WORD_BITS * vm)
    return out
