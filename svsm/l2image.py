"""The layout of an L2 image, as L1 reads it to build that L2's aliases (l2-firmware/README.md).

Our firmware starts with a jump over a 64-byte header (magic "TDPL2FW1") that gives the end of its
code and read-only data (aliased R+X), of its initialized data and of its zeroed data (both R+W),
and where its measured payload lies. An image without the magic is a user's flat binary
(`invoke run --l2-image`): it has no layout to read, so L1 treats it as one region. The image is
L2-supplied input as far as L1 is concerned: every offset is checked against the image's size and
page alignment before anything is aliased.
"""

from __future__ import annotations

from dataclasses import dataclass

from svsm.errors import SvsmError
from tdxdefs.errors import LayoutError
from tdxdefs.l2boot import (
    DESCRIPTOR_MAGIC,
    HEADER_VERSION,
    MAGIC,
    MAX_L2_IMAGE,
    L2FirmwareHeader,
    L2ImageDescriptor,
)
from tdxdefs.tdcall import PAGE_SIZE


class L2ImageError(SvsmError, ValueError):
    """An L2 image's header is inconsistent; the message names the field and its value."""


@dataclass(frozen=True)
class L2ImageLayout:
    """Byte offsets from the image's start: code [0, text_end), data [text_end, bss_end)."""

    size: int
    text_end: int
    data_end: int
    bss_end: int
    payload_start: int
    payload_end: int
    has_header: bool

    @property
    def payload(self) -> range:
        """The measured payload's byte range within the image."""
        return range(self.payload_start, self.payload_end)

    @classmethod
    def parse(cls, image: bytes) -> L2ImageLayout:
        """Read the header of our firmware, or describe a user's headerless flat image."""
        if len(image) == 0:
            raise L2ImageError("L2 image is empty")
        magic_at = L2FirmwareHeader.offset("magic")
        if image[magic_at : magic_at + len(MAGIC)] != MAGIC:
            end = -(-len(image) // PAGE_SIZE) * PAGE_SIZE
            return cls(len(image), end, end, end, 0, 0, False)
        try:
            head = L2FirmwareHeader.unpack(image)
        except LayoutError as exc:
            raise L2ImageError(f"L2 image: {exc}") from exc
        header_size, version = head.header_size, head.version
        text_end, data_end, bss_end = head.text_end, head.data_end, head.bss_end
        p_start, p_end = head.payload_start, head.payload_end
        if header_size != L2FirmwareHeader.SIZE:
            raise L2ImageError(f"L2 image header_size {header_size} (expected 64)")
        if version != HEADER_VERSION:
            raise L2ImageError(f"L2 image header version {version} (expected {HEADER_VERSION})")
        if text_end % PAGE_SIZE or not text_end >= L2FirmwareHeader.SIZE:
            raise L2ImageError(
                f"L2 image text_end {text_end:#x} is not a page boundary after the header"
            )
        if not text_end <= data_end <= len(image) or data_end < len(image):
            raise L2ImageError(
                f"L2 image data_end {data_end:#x} does not end the file's {len(image)} bytes"
            )
        if bss_end % PAGE_SIZE or bss_end < data_end:
            raise L2ImageError(f"L2 image bss_end {bss_end:#x} is not a page boundary after data")
        if not 0 <= p_start <= p_end <= data_end:
            raise L2ImageError(
                f"L2 image payload [{p_start:#x}, {p_end:#x}) lies outside the image"
            )
        return cls(len(image), text_end, data_end, bss_end, p_start, p_end, True)


def parse_descriptor(raw: bytes) -> L2ImageDescriptor:
    """The descriptor page, its magic and the bounds of the image it names checked."""
    try:
        found = L2ImageDescriptor.unpack(raw)
    except LayoutError as exc:
        raise L2ImageError(str(exc)) from exc
    if found.magic != DESCRIPTOR_MAGIC:
        raise L2ImageError(f"L2 image descriptor magic {found.magic!r} (expected TDPL2IMG)")
    if not 0 < found.size <= MAX_L2_IMAGE or found.gpa % PAGE_SIZE:
        raise L2ImageError(
            f"L2 image descriptor names {found.size:#x} bytes at GPA {found.gpa:#x} "
            f"(at most {MAX_L2_IMAGE:#x} bytes, page aligned)"
        )
    return found
