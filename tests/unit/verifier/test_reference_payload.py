"""The payload a verifier finds in an L2 image (where the firmware header says) and the PCR 4 it
predicts from it; a header whose payload lies outside the image is refused by field and offset."""

from __future__ import annotations

import hashlib

import pytest

from tdxdefs.l2boot import HEADER_VERSION, MAGIC, L2FirmwareHeader
from verifier.reference import ReferenceError, payload_of, pcr4_for

PAYLOAD = b"a measured blob\n"


def image(start: int, end: int, size: int = 0x2000, version: int = HEADER_VERSION) -> bytes:
    head = L2FirmwareHeader(b"\xeb\x3e" + bytes(6), MAGIC, 64, version, 0x1000, size, 0x3000,
                            start, end, bytes(20))  # fmt: skip
    body = bytearray(head.pack().ljust(size, b"\0"))
    body[0x1800 : 0x1800 + len(PAYLOAD)] = PAYLOAD
    return bytes(body)


def test_the_payload_is_where_the_header_says() -> None:
    assert payload_of(image(0x1800, 0x1800 + len(PAYLOAD))) == PAYLOAD
    assert payload_of(image(0x1800, 0x1800)) == b""


def test_pcr4_is_the_payloads_digest_extended_from_zero() -> None:
    assert pcr4_for(PAYLOAD) == {
        "sha256": hashlib.sha256(bytes(32) + hashlib.sha256(PAYLOAD).digest()).digest(),
        "sha384": hashlib.sha384(bytes(48) + hashlib.sha384(PAYLOAD).digest()).digest(),
    }


def test_a_users_flat_image_has_no_payload() -> None:
    assert payload_of(b"\x90" * 0x1000) is None


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (0x1800, 0x2001, r"offset 36: payload \[0x1800, 0x2001\) is not within"),
        (0x1900, 0x1800, r"offset 36: payload \[0x1900, 0x1800\)"),
        (0x10, 0x20, r"offset 36: payload \[0x10, 0x20\)"),  # inside the header
        (0x1000, 0x1401, "the L2 firmware payload is 1025 bytes; TPM2_PCR_Event takes 1024"),
    ],
)
def test_a_payload_outside_the_image_is_refused(start: int, end: int, message: str) -> None:
    with pytest.raises(ReferenceError, match=message):
        payload_of(image(start, end))


def test_an_unknown_header_version_is_refused() -> None:
    with pytest.raises(ReferenceError, match="offset 20: version 2, expected 1"):
        payload_of(image(0x1800, 0x1810, version=2))
    with pytest.raises(ReferenceError, match="L2 firmware header"):
        payload_of(image(0x1800, 0x1810)[:40])
