"""The layout of an L2 image, as L1 reads it to build that L2's aliases (l2-firmware/README.md).

Our firmware starts with a jump over a 64-byte header (magic "TDPL2FW1") that gives the end of its
code and read-only data (aliased R+X), of its initialized data and of its zeroed data (both R+W),
and where its measured payload lies. An image without the magic is a user's flat binary
(`invoke run --l2-image`): it has no layout to read, so L1 treats it as one region. The image is
L2-supplied input as far as L1 is concerned: every offset is checked against the image's size and
page alignment before anything is aliased.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from svsm.errors import SvsmError

PAGE_SIZE = 0x1000
MAGIC = b"TDPL2FW1"
HEADER = struct.Struct("<8s8sIIIIIII20s")
HEADER_VERSION = 1
_MAGIC_AT = 8


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
        if image[_MAGIC_AT : _MAGIC_AT + len(MAGIC)] != MAGIC:
            end = -(-len(image) // PAGE_SIZE) * PAGE_SIZE
            return cls(len(image), end, end, end, 0, 0, False)
        if len(image) < HEADER.size:
            raise L2ImageError(f"L2 image header truncated: {len(image)} of {HEADER.size} bytes")
        (_jump, _magic, header_size, version, text_end, data_end, bss_end, p_start, p_end, rsvd) = (
            HEADER.unpack_from(image)
        )
        if header_size != HEADER.size:
            raise L2ImageError(f"L2 image header_size {header_size} (expected {HEADER.size})")
        if version != HEADER_VERSION:
            raise L2ImageError(f"L2 image header version {version} (expected {HEADER_VERSION})")
        if any(rsvd):
            raise L2ImageError("L2 image header reserved bytes at offset 44 are not zero")
        if text_end % PAGE_SIZE or not HEADER.size <= text_end:
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
