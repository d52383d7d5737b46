"""The project's L2 boot contract as bytes (l2-firmware/README.md): the header our L2 firmware
starts with, and the measured descriptor page that tells L1 where the L2 image lies in TD
memory. L1 (svsm), the image builder (orchestrator) and the relying party (verifier) all read
them, so they are declared once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tdxdefs.layout import Layout

L2_DESCRIPTOR_GPA = 0xA000  # where the image recipe places the descriptor page
# The TPM CRB register page every L2 sees (TCG PC Client Platform TPM Profile, CRB, locality 0).
# When the TD's memory map includes this page, L1 accepts it and gives no L2 an alias: each L2
# access is then an L2 -> L1 exit (private MMIO) instead of a TD exit through the host.
TPM_CRB_BASE = 0xFED40000
TPM_CRB_SIZE = 0x1000
MAGIC = b"TDPL2FW1"
HEADER_VERSION = 1
DESCRIPTOR_MAGIC = b"TDPL2IMG"
MAX_L2_IMAGE = 0x100000  # 1 MiB: what L1 will copy into an L2's RAM


@dataclass(frozen=True, slots=True)
class L2FirmwareHeader(Layout):
    """The 64-byte header after our firmware's entry jump (l2-firmware/README.md)."""

    NAME: ClassVar[str] = "L2 firmware header"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("jump", "8s"),
        ("magic", "8s"),
        ("header_size", "I"),
        ("version", "I"),
        ("text_end", "I"),
        ("data_end", "I"),
        ("bss_end", "I"),
        ("payload_start", "I"),
        ("payload_end", "I"),
        ("reserved", "20s"),
    )
    SIZE: ClassVar[int] = 64

    jump: bytes
    magic: bytes
    header_size: int
    version: int
    text_end: int
    data_end: int
    bss_end: int
    payload_start: int
    payload_end: int
    reserved: bytes


@dataclass(frozen=True, slots=True)
class L2ImageDescriptor(Layout):
    """The measured page that tells L1 where the L2 image is in TD memory and how long it is."""

    NAME: ClassVar[str] = "L2 image descriptor"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("magic", "8s"),
        ("gpa", "Q"),
        ("size", "Q"),
    )
    SIZE: ClassVar[int] = 24

    magic: bytes
    gpa: int
    size: int
