"""CC event log records: the TCG crypto-agile log that explains the RTMRs.

TCG PC Client Platform Firmware Profile Specification, section 10 ("Event logging": TCG_PCR_EVENT
as the first record carrying the TCG_EfiSpecIDEvent "Spec ID Event03", then TCG_PCR_EVENT2 records
with a TPML_DIGEST_VALUES and the event data) and section 10.4.1 (event types). A TDX CC event
log uses SHA-384 only and logs RTMR n at MR index n + 1 (UEFI specification, EFI_CC_MEASUREMENT_
PROTOCOL; Intel TDX Virtual Firmware Design Guide, "Event log").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from tdxdefs.layout import Layout
from tdxdefs.tpm import TpmAlg


class EventType(IntEnum):
    """TCG event types (TCG PC Client Platform Firmware Profile, section 10.4.1)."""

    EV_POST_CODE = 0x00000001
    EV_NO_ACTION = 0x00000003
    EV_SEPARATOR = 0x00000004
    EV_ACTION = 0x00000005
    EV_EVENT_TAG = 0x00000006
    EV_S_CRTM_CONTENTS = 0x00000007
    EV_S_CRTM_VERSION = 0x00000008
    EV_CPU_MICROCODE = 0x00000009
    EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
    EV_TABLE_OF_DEVICES = 0x0000000B
    EV_COMPACT_HASH = 0x0000000C
    EV_IPL = 0x0000000D
    EV_IPL_PARTITION_DATA = 0x0000000E
    EV_NONHOST_CODE = 0x0000000F
    EV_NONHOST_CONFIG = 0x00000010
    EV_NONHOST_INFO = 0x00000011
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
    EV_EFI_VARIABLE_BOOT = 0x80000002
    EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
    EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
    EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
    EV_EFI_GPT_EVENT = 0x80000006
    EV_EFI_ACTION = 0x80000007
    EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
    EV_EFI_HANDOFF_TABLES = 0x80000009
    EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
    EV_EFI_HANDOFF_TABLES2 = 0x8000000B
    EV_EFI_VARIABLE_BOOT2 = 0x8000000C
    EV_EFI_HCRTM_EVENT = 0x80000010
    EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
    EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
    EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2


EV_NO_ACTION = int(EventType.EV_NO_ACTION)
EV_POST_CODE = int(EventType.EV_POST_CODE)
EV_EVENT_TAG = int(EventType.EV_EVENT_TAG)
EV_SEPARATOR = int(EventType.EV_SEPARATOR)
EV_S_CRTM_VERSION = int(EventType.EV_S_CRTM_VERSION)
EV_PLATFORM_CONFIG_FLAGS = int(EventType.EV_PLATFORM_CONFIG_FLAGS)


TpmAlgorithm = TpmAlg  # the digests' algorithm IDs (TCG TPM 2.0 Library, Part 2, 6.3)
TPM_ALG_SHA384 = int(TpmAlgorithm.SHA384)
SHA1_SIZE = 20  # the TCG_PCR_EVENT digest field, zero for the Spec ID event
SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
SPEC_VERSION_MAJOR = 2
UINTN_SIZE_64BIT = 2
SEPARATOR_EVENT = b"\0\0\0\0"
MR_INDEX_OF_RTMR0 = 1
ONE_DIGEST = 1


@dataclass(frozen=True, slots=True)
class TcgPcrEvent(Layout):
    """TCG_PCR_EVENT header (the SHA-1 format of the first record); `event_size` bytes follow."""

    NAME: ClassVar[str] = "TCG_PCR_EVENT"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("pcr_index", "I"),
        ("event_type", "I"),
        ("digest", "20s"),
        ("event_size", "I"),
    )
    SIZE: ClassVar[int] = 32

    pcr_index: int
    event_type: int
    digest: bytes
    event_size: int


@dataclass(frozen=True, slots=True)
class SpecIdEvent(Layout):
    """TCG_EfiSpecIDEvent up to its algorithm list (numberOfAlgorithms entries follow)."""

    NAME: ClassVar[str] = "TCG_EfiSpecIDEvent"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("signature", "16s"),
        ("platform_class", "I"),
        ("spec_version_minor", "B"),
        ("spec_version_major", "B"),
        ("spec_errata", "B"),
        ("uintn_size", "B"),
        ("number_of_algorithms", "I"),
    )
    SIZE: ClassVar[int] = 28

    signature: bytes
    platform_class: int
    spec_version_minor: int
    spec_version_major: int
    spec_errata: int
    uintn_size: int
    number_of_algorithms: int


@dataclass(frozen=True, slots=True)
class SpecIdAlgorithm(Layout):
    """TCG_EfiSpecIdEventAlgorithmSize: one algorithm of the log and its digest size."""

    NAME: ClassVar[str] = "TCG_EfiSpecIdEventAlgorithmSize"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("algorithm_id", "H"), ("digest_size", "H"))
    SIZE: ClassVar[int] = 4

    algorithm_id: int
    digest_size: int


@dataclass(frozen=True, slots=True)
class VendorInfoSize(Layout):
    """vendorInfoSize, the u8 that closes TCG_EfiSpecIDEvent (then that many bytes)."""

    NAME: ClassVar[str] = "vendorInfoSize"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("size", "B"),)
    SIZE: ClassVar[int] = 1

    size: int


@dataclass(frozen=True, slots=True)
class TcgPcrEvent2Head(Layout):
    """TCG_PCR_EVENT2 up to its first digest: index, type, digest count and the first algorithm."""

    NAME: ClassVar[str] = "TCG_PCR_EVENT2"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("pcr_index", "I"),
        ("event_type", "I"),
        ("digest_count", "I"),
        ("algorithm_id", "H"),
    )
    SIZE: ClassVar[int] = 14

    pcr_index: int
    event_type: int
    digest_count: int
    algorithm_id: int


@dataclass(frozen=True, slots=True)
class TcgPcrEvent2Prefix(Layout):
    """TCG_PCR_EVENT2 up to its digest count: index, type and how many digests follow."""

    NAME: ClassVar[str] = "TCG_PCR_EVENT2"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("pcr_index", "I"),
        ("event_type", "I"),
        ("digest_count", "I"),
    )
    SIZE: ClassVar[int] = 12

    pcr_index: int
    event_type: int
    digest_count: int


@dataclass(frozen=True, slots=True)
class DigestAlgorithm(Layout):
    """The hashAlg u16 in front of each digest of a TPML_DIGEST_VALUES."""

    NAME: ClassVar[str] = "TPMT_HA.hashAlg"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("algorithm_id", "H"),)
    SIZE: ClassVar[int] = 2

    algorithm_id: int


@dataclass(frozen=True, slots=True)
class EventSize(Layout):
    """The u32 eventSize after the digests of a TCG_PCR_EVENT2."""

    NAME: ClassVar[str] = "eventSize"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("size", "I"),)
    SIZE: ClassVar[int] = 4

    size: int
