"""Reference values a relying party pins for a built image: MRTD, the expected RTMRs, PCR0.

- MRTD: what TDH.MEM.PAGE.ADD/TDH.MR.EXTEND of the image's pages give (`igvm.measure.mrtd`).
- RTMR0 at quote time: L1 extends SHA-384 of the IGVM parameter area the host filled in (VP count
  and memory map, IGVM specification, IGVM_VHT_VP_COUNT_PARAMETER and IGVM_VHT_MEMORY_MAP) as its
  first event, before the vTPM CA's quote; RTMR1..3 are still zero then. These launch parameters
  come from the host, so the prediction takes the memory map and VP count the host is expected to
  give (the local backend: 32 MiB of RAM at GPA 0, one VP).
- RTMR0..3 after boot: each then gets one EV_SEPARATOR (SHA-384 of four zero bytes).
- PCR0 (SHA-256 and SHA-384 banks): L1 extends its version string, NUL terminated, as
  EV_S_CRTM_VERSION, then the whole L2 image. The image carries no version record a verifier can
  read (L1 is a zip of Python sources inside a component), so the version is an input.
- PCR4 (both banks): the L2 firmware extends its payload with TPM2_PCR_Event
  (`tdxdefs.firmware_log`); the payload's bytes are where the L2 image's header says (its
  payload start and end offsets, l2-firmware/README.md), so PCR4 needs no input. A user's L2 image
  without our header has no payload: no PCR4.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from igvm import headers
from igvm.format import IgvmFile
from igvm.format import read as read_igvm
from igvm.measure import mrtd, rtmr_predict
from tdxdefs.errors import LayoutError
from tdxdefs.firmware_log import PAYLOAD_MAX, PAYLOAD_PCR
from tdxdefs.l2boot import (
    DESCRIPTOR_MAGIC,
    HEADER_VERSION,
    L2_DESCRIPTOR_GPA,
    MAGIC,
    MAX_L2_IMAGE,
    TPM_CRB_BASE,
    TPM_CRB_SIZE,
    L2FirmwareHeader,
    L2ImageDescriptor,
)
from tdxdefs.relay import (
    DEV_PLATFORM_PORT_EVENT,
    DEV_PLATFORM_PORT_RTMR,
    LAUNCH_OPTION_DEV_PLATFORM_PORT,
)
from verifier import eventlog
from verifier.errors import VerificationError

PAGE_SIZE = 4096
# the memory map the local backend gives a TD: 32 MiB, and the TPM CRB page as private memory
LOCAL_BACKEND_RAM = ((0, 32 << 20), (TPM_CRB_BASE, TPM_CRB_SIZE))
LOCAL_BACKEND_VCPUS = 1
PCR0_BANKS = ("sha256", "sha384")
L1_PARAMETER_AREA_RTMR = 0


class ReferenceError(VerificationError):
    """Reference values cannot be computed from this image (names what is missing)."""


@dataclass(frozen=True)
class ReferenceValues:
    """What a relying party compares a TD's quote and PCRs with."""

    mrtd: bytes
    launch_event: bytes | None  # SHA-384 of the filled parameter area, L1's first RTMR0 event
    rtmrs_at_quote: tuple[bytes, bytes, bytes, bytes] | None
    rtmrs_after_boot: tuple[bytes, bytes, bytes, bytes] | None
    pcr0: dict[str, bytes]  # bank name -> value; empty without an L1 version
    notes: tuple[str, ...]
    pcr4: dict[str, bytes] = field(default_factory=dict)  # bank -> value; empty without a payload
    payload: bytes | None = None  # the L2 firmware's measured payload, as the image carries it

    def as_dict(self) -> dict[str, object]:
        def rtmrs(values: Sequence[bytes] | None) -> list[str] | None:
            return None if values is None else [v.hex() for v in values]

        return {
            "mrtd": self.mrtd.hex(),
            "launch_event_sha384": self.launch_event.hex() if self.launch_event else None,
            "rtmrs_at_quote": rtmrs(self.rtmrs_at_quote),
            "rtmrs_after_boot": rtmrs(self.rtmrs_after_boot),
            "pcr0": {bank: value.hex() for bank, value in self.pcr0.items()},
            "pcr4": {bank: value.hex() for bank, value in self.pcr4.items()},
            "payload_size": None if self.payload is None else len(self.payload),
            "notes": list(self.notes),
        }


def _tdx_mask(image: IgvmFile) -> int:
    platform = image.tdx_platform
    if platform is None:
        raise ReferenceError("the image has no TDX SUPPORTED_PLATFORM header")
    return platform.compatibility_mask


def _memory_map(ram: Sequence[tuple[int, int]]) -> bytes:
    entries = [headers.MemoryMapEntry(gpa // PAGE_SIZE, size // PAGE_SIZE) for gpa, size in ram]
    return b"".join(e.pack() for e in entries) + bytes(headers.MEMORY_MAP_ENTRY_BYTES)


def inserted_parameter_areas(
    image: IgvmFile, ram: Sequence[tuple[int, int]], vcpus: int, command_line: bytes = b""
) -> list[tuple[int, bytes]]:
    """(GPA, contents) of each parameter area the image inserts for TDX, filled as a host does
    (the command line NUL-terminated, as IGVM_VHT_COMMAND_LINE says)."""
    mask = _tdx_mask(image)
    areas: dict[int, bytearray] = {}
    inserted: list[tuple[int, bytes]] = []
    for d in image.directives:
        if isinstance(d, headers.ParameterArea):
            areas[d.parameter_area_index] = bytearray(
                d.initial_data.ljust(d.number_of_bytes, b"\0")
            )
        elif isinstance(d, (headers.VpCount, headers.MemoryMap, headers.CommandLine)):
            area = areas.get(d.parameter_area_index)
            if area is None:
                raise ReferenceError(
                    f"{d.NAME}: parameter area {d.parameter_area_index} undeclared"
                )
            if isinstance(d, headers.VpCount):
                data = vcpus.to_bytes(headers.VP_COUNT_BYTES, "little")
            elif isinstance(d, headers.CommandLine):
                data = command_line + b"\0"
            else:
                data = _memory_map(ram)
            if d.byte_offset + len(data) > len(area):
                raise ReferenceError(
                    f"{d.NAME}: {len(data)} bytes at offset {d.byte_offset} overflow parameter "
                    f"area {d.parameter_area_index} ({len(area)} bytes)"
                )
            area[d.byte_offset : d.byte_offset + len(data)] = data
        elif isinstance(d, headers.ParameterInsert) and d.compatibility_mask & mask == mask:
            area = areas.get(d.parameter_area_index)
            if area is None:
                raise ReferenceError(
                    f"PARAMETER_INSERT at {d.gpa:#x}: area {d.parameter_area_index} undeclared"
                )
            inserted.append((d.gpa, bytes(area)))
    return inserted


def extended(events: Sequence[bytes]) -> dict[str, bytes]:
    """A PCR in the SHA-256 and SHA-384 banks after extending the digest of each event from 0."""
    values = {}
    for bank in PCR0_BANKS:
        value = bytes(hashlib.new(bank).digest_size)
        for data in events:
            value = hashlib.new(bank, value + hashlib.new(bank, data).digest()).digest()
        values[bank] = value
    return values


def pcr0_for(version: str, l2_image: bytes | None = None) -> dict[str, bytes]:
    """PCR0 after L1's extends from zero: `version` + NUL, then the whole L2 image if given."""
    return extended([version.encode() + b"\0"] + ([l2_image] if l2_image is not None else []))


def pcr4_for(payload: bytes) -> dict[str, bytes]:
    """PCR4 after the L2 firmware's TPM2_PCR_Event of its payload, from zero."""
    return extended([payload])


def payload_of(l2_image: bytes) -> bytes | None:
    """The payload our L2 firmware measures into PCR4, where its header says; None for an image
    without our header (a user's flat binary). Every offset is checked against the image."""
    magic_at = L2FirmwareHeader.offset("magic")
    if l2_image[magic_at : magic_at + len(MAGIC)] != MAGIC:
        return None
    try:
        head = L2FirmwareHeader.unpack(l2_image)
    except LayoutError as exc:
        raise ReferenceError(f"the L2 firmware header: {exc}") from exc
    if head.version != HEADER_VERSION:
        raise ReferenceError(
            f"the L2 firmware header at offset {L2FirmwareHeader.offset('version')}: version "
            f"{head.version}, expected {HEADER_VERSION}"
        )
    start, end = head.payload_start, head.payload_end
    if not L2FirmwareHeader.SIZE <= start <= end <= min(head.data_end, len(l2_image)):
        raise ReferenceError(
            f"the L2 firmware header at offset {L2FirmwareHeader.offset('payload_start')}: payload "
            f"[{start:#x}, {end:#x}) is not within the {len(l2_image)}-byte image's data"
        )
    if end - start > PAYLOAD_MAX:
        raise ReferenceError(
            f"the L2 firmware payload is {end - start} bytes; TPM2_PCR_Event takes {PAYLOAD_MAX}"
        )
    return l2_image[start:end]


def l2_image_of(image: IgvmFile) -> bytes | None:
    """The L2 image the measured descriptor page names, read from the image's PAGE_DATA."""
    pages = {
        d.gpa: d.data.ljust(PAGE_SIZE, b"\0")
        for d in image.directives
        if isinstance(d, headers.PageData) and not d.unmeasured
    }
    page = pages.get(L2_DESCRIPTOR_GPA)
    if page is None:
        return None
    try:
        descriptor = L2ImageDescriptor.unpack(page)
    except LayoutError as exc:
        raise ReferenceError(f"the L2 image descriptor at {L2_DESCRIPTOR_GPA:#x}: {exc}") from exc
    if descriptor.magic != DESCRIPTOR_MAGIC or descriptor.size > MAX_L2_IMAGE:
        raise ReferenceError(f"no valid L2 image descriptor at GPA {L2_DESCRIPTOR_GPA:#x}")
    data = b""
    for gpa in range(descriptor.gpa, descriptor.gpa + descriptor.size, PAGE_SIZE):
        if gpa not in pages:
            raise ReferenceError(f"the L2 image page at GPA {gpa:#x} is not measured data")
        data += pages[gpa]
    return data[: descriptor.size]


def reference_values(
    path: str | os.PathLike[str],
    *,
    ram: Sequence[tuple[int, int]] = LOCAL_BACKEND_RAM,
    vcpus: int = LOCAL_BACKEND_VCPUS,
    l1_version: str | None = None,
    command_line: str = "",
) -> ReferenceValues:
    """The reference values of the image at `path`, for a host giving `ram`, `vcpus` and the
    launch options `command_line` (e.g. `invoke run --serve`'s)."""
    image = read_igvm(path)
    notes: list[str] = []
    areas = inserted_parameter_areas(image, ram, vcpus, command_line.encode())
    launch: bytes | None = None
    at_quote = after = None
    if len(areas) == 1:
        launch = hashlib.sha384(areas[0][1]).digest()
        quoted = [(L1_PARAMETER_AREA_RTMR, launch)]
        if LAUNCH_OPTION_DEV_PLATFORM_PORT in command_line.split():
            quoted.append(
                (DEV_PLATFORM_PORT_RTMR, hashlib.sha384(DEV_PLATFORM_PORT_EVENT).digest())
            )
            notes.append(
                f"RTMR{DEV_PLATFORM_PORT_RTMR}: the development platform port, so the host may "
                "power-cycle (reset) the vTPM"
            )
        at_quote = rtmr_predict(quoted)
        seal = eventlog.separator(0).sha384
        assert seal is not None
        after = rtmr_predict(quoted + [(r, seal) for r in range(eventlog.RTMR_COUNT)])
        ram_text = ", ".join(f"{size >> 20} MiB at {gpa:#x}" for gpa, size in ram)
        notes.append(
            f"RTMRs assume the host's launch parameters: {vcpus} VP(s), RAM {ram_text}, "
            f"command line {command_line!r}; parameter area at {areas[0][0]:#x}"
        )
    else:
        notes.append(
            f"RTMRs not computed: the image inserts {len(areas)} parameter areas, L1 measures one"
        )
    l2_image = l2_image_of(image)
    pcr0 = pcr0_for(l1_version, l2_image) if l1_version is not None else {}
    if l1_version is None:
        notes.append("PCR0 not computed: the image carries no L1 version record; pass the version")
    if l2_image is None:
        notes.append("the image has no L2 image descriptor: PCR0 holds the L1 version only")
    else:
        notes.append(f"PCR0: the L1 version, then the {len(l2_image)}-byte L2 image it boots")
    payload = payload_of(l2_image) if l2_image is not None else None
    pcr4 = pcr4_for(payload) if payload is not None else {}
    if payload is None:
        notes.append(f"PCR{PAYLOAD_PCR} not computed: the L2 image has no firmware header")
    else:
        notes.append(f"PCR{PAYLOAD_PCR}: the {len(payload)}-byte payload of the L2 firmware")
    return ReferenceValues(mrtd(image), launch, at_quote, after, pcr0, tuple(notes), pcr4, payload)
