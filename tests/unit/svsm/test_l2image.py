"""L1 reads an L2 image's layout only after checking every header field against the image."""

from __future__ import annotations

import pytest

from svsm.l2image import L2ImageError, L2ImageLayout, parse_descriptor
from tdxdefs.l2boot import DESCRIPTOR_MAGIC, MAGIC, L2FirmwareHeader, L2ImageDescriptor

PAGE = 0x1000


def image(
    text_end: int = PAGE,
    data_end: int = PAGE + 0x40,
    bss_end: int = 2 * PAGE,
    payload: tuple[int, int] = (PAGE, PAGE + 0x20),
    header_size: int = L2FirmwareHeader.SIZE,
    version: int = 1,
    reserved: bytes = bytes(20),
) -> bytes:
    head = L2FirmwareHeader(
        b"\xeb\x3e" + bytes(6), MAGIC, header_size, version, text_end, data_end, bss_end,
        *payload, reserved,
    ).pack()  # fmt: skip
    return head.ljust(data_end, b"\x90")


def test_header_gives_the_sections() -> None:
    layout = L2ImageLayout.parse(image())
    assert (layout.text_end, layout.data_end, layout.bss_end) == (PAGE, PAGE + 0x40, 2 * PAGE)
    assert layout.payload == range(PAGE, PAGE + 0x20) and layout.has_header


def test_headerless_image_is_one_region() -> None:
    layout = L2ImageLayout.parse(b"\xf4" * 5000)
    assert not layout.has_header
    assert layout.text_end == layout.bss_end == 2 * PAGE and layout.payload == range(0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text_end": PAGE + 8}, "text_end 0x1008"),
        ({"text_end": 0}, "text_end 0x0"),
        ({"bss_end": PAGE + 0x40}, "bss_end 0x1040"),
        ({"payload": (PAGE, 0x10_0000)}, "payload"),
        ({"payload": (PAGE + 8, PAGE)}, "payload"),
        ({"header_size": 32}, "header_size 32"),
        ({"version": 2}, "version 2"),
        ({"reserved": b"\x01" + bytes(19)}, "reserved.*offset 44"),
    ],
)
def test_inconsistent_header_is_refused_by_name(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(L2ImageError, match=message):
        L2ImageLayout.parse(image(**kwargs))  # type: ignore[arg-type]


def test_data_end_must_be_the_end_of_the_file() -> None:
    raw = image() + b"trailing"
    with pytest.raises(L2ImageError, match="data_end"):
        L2ImageLayout.parse(raw)


def test_truncated_and_empty_images_are_refused() -> None:
    with pytest.raises(L2ImageError, match="truncated"):
        L2ImageLayout.parse(image()[:40])
    with pytest.raises(L2ImageError, match="empty"):
        L2ImageLayout.parse(b"")
    assert L2FirmwareHeader.SIZE == 64 and L2FirmwareHeader.offset("text_end") == 24


def test_descriptor_names_a_bounded_page_aligned_image() -> None:
    good = L2ImageDescriptor(DESCRIPTOR_MAGIC, 0x800000, 5000).pack()
    assert parse_descriptor(good).size == 5000
    for bad, why in (
        (L2ImageDescriptor(b"NOTMAGIC", 0x800000, 5000).pack(), "magic"),
        (L2ImageDescriptor(DESCRIPTOR_MAGIC, 0x800001, 5000).pack(), "page aligned"),
        (L2ImageDescriptor(DESCRIPTOR_MAGIC, 0x800000, 0).pack(), "0x0 bytes"),
        (L2ImageDescriptor(DESCRIPTOR_MAGIC, 0x800000, 1 << 40).pack(), "at most"),
        (good[:10], "truncated|needs"),
    ):
        with pytest.raises(L2ImageError, match=why):
            parse_descriptor(bad)
