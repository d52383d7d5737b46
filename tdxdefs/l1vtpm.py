"""The L1VTPM service an L2 calls to find its vTPM and learn L1's measurements: a GHCI
TDG.VP.VMCALL<Service> (GHCI v1.5, section 3.12) with the L1VTPM GUID, as Intel's
TD-partitioning vTPM prototype defines it. The command is Version 0, Command 1 (Detect); the
response is Version, Command, Status (0: a vTPM is there), Reserved, then a list of GUIDed HOBs
(UEFI Platform Initialization Specification, Vol. 3, EFI_HOB_GUID_TYPE, type 0x0004) each holding
one TCG_PCR_EVENT2 record of what L1 measured into the vTPM, ended by an end-of-HOB-list header
(type 0xFFFF). The reference records a conflict on the "present" status value (1 in the design
guide, 0 in the running code); this follows the running code: 0.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import ClassVar

from tdxdefs.layout import Layout

L1VTPM_GUID = uuid.UUID("766cf580-8dc3-4cea-a94e-e5424da1da56").bytes_le
TCG_EVENT2_HOB_GUID = uuid.UUID("d26c221e-2430-4c8a-9170-3fcb4500413f").bytes_le
L1VTPM_VERSION = 0
L1VTPM_DETECT = 1
L1VTPM_STATUS_PRESENT = 0
HOB_TYPE_GUID_EXTENSION = 0x0004
HOB_TYPE_END_OF_HOB_LIST = 0xFFFF


@dataclass(frozen=True, slots=True)
class L1VtpmMessage(Layout):
    """The command (Version, Command, Reserved) or response (Version, Command, Status, Reserved)
    after the Service buffer header; a command's third byte is reserved."""

    NAME: ClassVar[str] = "L1VTPM message"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("version", "B"),
        ("command", "B"),
        ("status", "B"),
        ("reserved", "B"),
    )
    SIZE: ClassVar[int] = 4

    version: int
    command: int
    status: int
    reserved: int


@dataclass(frozen=True, slots=True)
class GuidHob(Layout):
    """EFI_HOB_GENERIC_HEADER (type, length of the whole HOB, reserved) and the HOB's name GUID."""

    NAME: ClassVar[str] = "EFI_HOB_GUID_TYPE"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("hob_type", "H"),
        ("hob_length", "H"),
        ("reserved", "I"),
        ("name", "16s"),
    )
    SIZE: ClassVar[int] = 24

    hob_type: int
    hob_length: int
    reserved: int
    name: bytes


@dataclass(frozen=True, slots=True)
class HobHeader(Layout):
    """EFI_HOB_GENERIC_HEADER alone: how the end of the list is marked."""

    NAME: ClassVar[str] = "EFI_HOB_GENERIC_HEADER"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("hob_type", "H"),
        ("hob_length", "H"),
        ("reserved", "I"),
    )
    SIZE: ClassVar[int] = 8

    hob_type: int
    hob_length: int
    reserved: int
