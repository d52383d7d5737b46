"""The MRTD update blocks written out by hand, independently of `igvm.measure`, so a test can
compare the code's stream with bytes spelled out here (Intel TDX Module Base Architecture
Specification, TD measurement: TDH.MEM.PAGE.ADD and TDH.MR.EXTEND)."""

from __future__ import annotations

MR_EXTEND_CHUNK = 256
CHUNKS_PER_PAGE = 16


def hand_add(gpa: int) -> bytes:
    """The 128-byte MEM.PAGE.ADD block: ASCII name, zeros to 16, GPA little-endian at 16..23,
    zeros to 128."""
    return b"MEM.PAGE.ADD" + bytes(4) + gpa.to_bytes(8, "little") + bytes(104)


def hand_extend(gpa: int, chunk: bytes) -> bytes:
    """The MR.EXTEND block: ASCII name, zeros to 16, chunk GPA at 16, zeros to 128, then the
    256 bytes of the chunk."""
    return b"MR.EXTEND" + bytes(7) + gpa.to_bytes(8, "little") + bytes(104) + chunk


def hand_page(gpa: int, data: bytes) -> bytes:
    """A measured page: MEM.PAGE.ADD, then one MR.EXTEND per 256-byte chunk."""
    chunks = range(0, CHUNKS_PER_PAGE * MR_EXTEND_CHUNK, MR_EXTEND_CHUNK)
    return hand_add(gpa) + b"".join(
        hand_extend(gpa + at, data[at : at + MR_EXTEND_CHUNK]) for at in chunks
    )
