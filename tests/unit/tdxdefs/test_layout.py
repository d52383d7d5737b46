"""The layout idiom: computed offsets, a size checked at class creation, reserved fields checked
zero, and parse errors that name the structure, the field and the offset."""

from __future__ import annotations

import struct
from dataclasses import FrozenInstanceError, dataclass
from typing import ClassVar

import pytest

from tdxdefs.errors import LayoutError, TdxDefsError
from tdxdefs.layout import BIG_ENDIAN, Layout


@dataclass(frozen=True, slots=True)
class Sample(Layout):
    NAME: ClassVar[str] = "SAMPLE"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("kind", "H"),
        ("reserved1", "H"),
        ("value", "Q"),
        ("reserved2", "4s"),
        ("tag", "8s"),
    )
    SIZE: ClassVar[int] = 24

    kind: int
    reserved1: int
    value: int
    reserved2: bytes
    tag: bytes


@dataclass(frozen=True, slots=True)
class WireLength(Layout):
    NAME: ClassVar[str] = "LENGTH"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("length", "I"),)
    SIZE: ClassVar[int] = 4
    BYTE_ORDER: ClassVar[str] = BIG_ENDIAN

    length: int


def sample_bytes(**changes: bytes) -> bytearray:
    raw = bytearray(struct.pack("<HHQ4s8s", 7, 0, 0x1122334455667788, bytes(4), b"tag12345"))
    for name, data in changes.items():
        raw[Sample.offset(name) : Sample.offset(name) + len(data)] = data
    return raw


def test_offsets_and_sizes_follow_the_field_list() -> None:
    assert [Sample.offset(name) for name, _ in Sample.FIELDS] == [0, 2, 4, 12, 16]
    assert Sample.field_size("reserved2") == 4
    assert Sample.SIZE == Sample.STRUCT.size == 24


def test_round_trip() -> None:
    raw = bytes(sample_bytes())
    parsed = Sample.unpack(raw)
    assert parsed == Sample(7, 0, 0x1122334455667788, bytes(4), b"tag12345")
    assert parsed.pack() == raw
    out = bytearray(30)
    parsed.pack_into(out, 3)
    assert bytes(out[3:27]) == raw
    with pytest.raises(FrozenInstanceError):
        parsed.kind = 8  # type: ignore[misc]


def test_field_values_without_an_object_are_checked_like_unpack_and_pack() -> None:
    raw = bytes(sample_bytes())
    assert Sample.unpack_values(raw) == Sample.unpack(raw).values()
    assert Sample.pack_values(*Sample.unpack_values(raw)) == raw
    bad = b"\xee" * 10 + bytes(sample_bytes(reserved2=b"\0\0\x01\0"))
    with pytest.raises(LayoutError, match=r"SAMPLE\.reserved2 at offset 22: reserved"):
        Sample.unpack_values(bad, 10)
    with pytest.raises(LayoutError, match=r"SAMPLE\.tag at offset 16: truncated"):
        Sample.unpack_values(raw[:20])
    with pytest.raises(LayoutError, match=r"SAMPLE.kind at offset 0: 65536"):
        Sample.pack_values(0x10000, 0, 0, bytes(4), bytes(8))


def test_unpack_at_an_offset_reports_offsets_in_the_whole_buffer() -> None:
    raw = b"\xee" * 10 + bytes(sample_bytes(reserved2=b"\0\0\x01\0"))
    with pytest.raises(LayoutError) as err:
        Sample.unpack(raw, 10)
    assert (err.value.structure, err.value.field, err.value.offset) == ("SAMPLE", "reserved2", 22)
    assert str(err.value) == "SAMPLE.reserved2 at offset 22: reserved, must be zero"


@pytest.mark.parametrize(("field", "data", "offset"), [("reserved1", b"\x01\x00", 2)])
def test_nonzero_reserved_integer_is_rejected_with_field_and_offset(
    field: str, data: bytes, offset: int
) -> None:
    with pytest.raises(LayoutError, match=f"SAMPLE.{field} at offset {offset}: reserved"):
        Sample.unpack(bytes(sample_bytes(**{field: data})))


@pytest.mark.parametrize(("length", "field", "offset"), [(0, "kind", 0), (13, "reserved2", 12)])
def test_truncated_input_names_the_first_missing_field(
    length: int, field: str, offset: int
) -> None:
    with pytest.raises(LayoutError) as err:
        Sample.unpack(bytes(sample_bytes())[:length])
    assert (err.value.field, err.value.offset) == (field, offset)
    assert f"24 bytes needed, {length} available" in str(err.value)
    assert isinstance(err.value, TdxDefsError) and isinstance(err.value, ValueError)


def test_big_endian_layout() -> None:
    assert WireLength(0x01020304).pack() == b"\x01\x02\x03\x04"
    assert WireLength.unpack(b"\x00\x00\x01\x00").length == 256


def test_a_value_that_does_not_fit_names_its_field() -> None:
    with pytest.raises(LayoutError, match=r"SAMPLE.kind at offset 0: 65536"):
        Sample(0x10000, 0, 0, bytes(4), bytes(8)).pack()


def test_wrong_declared_size_fails_at_class_creation() -> None:
    with pytest.raises(LayoutError, match=r"BAD\.SIZE at offset 0: declared 16 bytes, .* up to 12"):

        @dataclass(frozen=True)
        class Bad(Layout):
            NAME: ClassVar[str] = "BAD"
            FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("a", "I"), ("b", "Q"))
            SIZE: ClassVar[int] = 16  # as if "Q" were aligned; the wire has no padding

            a: int
            b: int


def test_attributes_must_match_the_field_list() -> None:
    with pytest.raises(LayoutError, match=r"BAD.FIELDS at offset 0: attributes \['b', 'a'\]"):

        @dataclass(frozen=True)
        class Bad(Layout):
            NAME: ClassVar[str] = "BAD"
            FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("a", "I"), ("b", "I"))
            SIZE: ClassVar[int] = 8

            b: int
            a: int


def test_a_field_declared_twice_is_refused() -> None:
    with pytest.raises(LayoutError, match=r"BAD\.a at offset 4: declared twice"):

        class Bad(Layout):
            NAME: ClassVar[str] = "BAD"
            FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("a", "I"), ("a", "I"))
            SIZE: ClassVar[int] = 8


def test_unknown_field_name_is_an_error() -> None:
    with pytest.raises(LayoutError, match=r"SAMPLE\.nothing"):
        Sample.offset("nothing")
