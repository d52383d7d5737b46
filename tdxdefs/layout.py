"""The one way to declare a fixed binary layout: named fields, computed offsets, a checked size.

A layout is a frozen dataclass that also subclasses `Layout` and declares, in wire order,

    NAME = "TDREPORT_STRUCT"        # the structure as the specification names it
    FIELDS = (("version", "H"), ("reserved", "6s"), ...)   # (field name, struct code)
    SIZE = 1024                     # the size the specification gives; checked at class creation
    BYTE_ORDER = "<"                # "<" little-endian (TDX), ">" big-endian (TPM wire)

The dataclass fields must be the FIELDS names in the same order. Fields named ``reserved*`` are
checked zero by `unpack` (a nonzero one raises `LayoutError` naming it and its offset). One
`struct.Struct` is compiled per layout, so pack/unpack cost one struct call and one constructor.
"""

from __future__ import annotations

import inspect
import struct
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar, Self

from tdxdefs.errors import LayoutError

LITTLE_ENDIAN = "<"
BIG_ENDIAN = ">"
RESERVED_PREFIX = "reserved"
_BYTE_ORDERS = (LITTLE_ENDIAN, BIG_ENDIAN)


@dataclass(frozen=True)
class CompiledFields:
    """A field list compiled once: its struct, each field's offset and size, the reserved ones
    as (index, name, offset, zero value)."""

    struct: struct.Struct
    offsets: dict[str, int]
    sizes: dict[str, int]
    reserved: tuple[tuple[int, str, int, object], ...]


def compile_fields(
    name: str, fields: tuple[tuple[str, str], ...], byte_order: str = LITTLE_ENDIAN
) -> CompiledFields:
    """Compile (field name, struct code) pairs in wire order; `LayoutError` names a bad field."""
    if byte_order not in _BYTE_ORDERS:
        raise LayoutError(name, "BYTE_ORDER", 0, f"{byte_order!r} is not '<' or '>'")
    offsets: dict[str, int] = {}
    sizes: dict[str, int] = {}
    reserved: list[tuple[int, str, int, object]] = []
    position = 0
    for index, (field, code) in enumerate(fields):
        if field in offsets:
            raise LayoutError(name, field, position, "declared twice")
        try:
            size = struct.calcsize(byte_order + code)
        except struct.error as exc:
            raise LayoutError(name, field, position, f"bad struct code {code!r}") from exc
        offsets[field] = position
        sizes[field] = size
        if field.startswith(RESERVED_PREFIX):
            reserved.append((index, field, position, bytes(size) if code.endswith("s") else 0))
        position += size
    compiled = struct.Struct(byte_order + "".join(code for _, code in fields))
    if compiled.size != position:
        raise LayoutError(name, "FIELDS", 0, f"codes need alignment padding ({compiled.size})")
    return CompiledFields(compiled, offsets, sizes, tuple(reserved))


class Layout:
    """Base of every declared binary layout (see the module docstring for what a subclass sets)."""

    __slots__ = ()
    NAME: ClassVar[str] = ""
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = ()
    SIZE: ClassVar[int] = 0
    BYTE_ORDER: ClassVar[str] = LITTLE_ENDIAN

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<")
    OFFSETS: ClassVar[dict[str, int]] = {}
    SIZES: ClassVar[dict[str, int]] = {}
    _RESERVED: ClassVar[tuple[tuple[int, str, int, object], ...]] = ()
    _GETTER: ClassVar[Any] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "FIELDS" not in cls.__dict__:
            return
        name = cls.NAME or cls.__name__
        compiled = compile_fields(name, cls.FIELDS, cls.BYTE_ORDER)
        if compiled.struct.size != cls.SIZE:
            raise LayoutError(
                name,
                "SIZE",
                0,
                f"declared {cls.SIZE} bytes, the fields add up to {compiled.struct.size}",
            )
        declared = [  # a layout may extend another: its fields follow the base's
            field
            for klass in reversed(cls.__mro__)
            if issubclass(klass, Layout)
            for field, annotation in inspect.get_annotations(klass).items()
            if "ClassVar" not in str(annotation)
        ]
        wanted = [field for field, _ in cls.FIELDS]
        if declared != wanted:
            raise LayoutError(name, "FIELDS", 0, f"attributes {declared} are not fields {wanted}")
        cls.NAME = name
        cls.STRUCT = compiled.struct
        cls.OFFSETS = compiled.offsets
        cls.SIZES = compiled.sizes
        cls._RESERVED = compiled.reserved
        cls._GETTER = attrgetter(*wanted) if len(wanted) > 1 else None

    @classmethod
    def from_values(cls, *values: Any) -> Self:
        """The structure from its field values in wire order."""
        return cls(*values)

    @classmethod
    def offset(cls, field: str) -> int:
        """Byte offset of `field` from the start of the structure."""
        try:
            return cls.OFFSETS[field]
        except KeyError:
            raise LayoutError(cls.NAME, field, 0, "no such field") from None

    @classmethod
    def index(cls, field: str) -> int:
        """Position of `field` in the wire order (its index in `STRUCT.unpack` output)."""
        cls.offset(field)
        return next(i for i, (name, _code) in enumerate(cls.FIELDS) if name == field)

    @classmethod
    def field_size(cls, field: str) -> int:
        """Size in bytes of `field`."""
        cls.offset(field)
        return cls.SIZES[field]

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview, offset: int = 0) -> Self:
        """Parse the structure at `offset` of `data`; reserved fields must be zero.

        Error offsets are relative to the start of `data`, so a caller parsing a larger buffer
        gets the offset of the faulty byte in that buffer.
        """
        return cls(*cls.unpack_values(data, offset))

    @classmethod
    def unpack_values(
        cls, data: bytes | bytearray | memoryview, offset: int = 0
    ) -> tuple[Any, ...]:
        """`unpack`'s field values in wire order, checked the same way, with no object built:
        for a caller that parses one structure per L2 exit or relayed command."""
        if offset < 0 or len(data) - offset < cls.SIZE:
            cls._truncated(len(data) - max(offset, 0), offset)
        values: tuple[Any, ...] = cls.STRUCT.unpack_from(data, offset)
        for index, field, at, zero in cls._RESERVED:
            if values[index] != zero:
                raise LayoutError(cls.NAME, field, offset + at, "reserved, must be zero")
        return values

    @classmethod
    def _truncated(cls, available: int, offset: int) -> None:
        for field, _code in cls.FIELDS:
            end = cls.OFFSETS[field] + cls.SIZES[field]
            if end > available:
                raise LayoutError(
                    cls.NAME,
                    field,
                    offset + cls.OFFSETS[field],
                    f"truncated: {cls.SIZE} bytes needed, {max(available, 0)} available",
                )

    def values(self) -> tuple[Any, ...]:
        """The field values in wire order."""
        getter = self._GETTER
        if getter is None:
            return (getattr(self, self.FIELDS[0][0]),)
        result: tuple[Any, ...] = getter(self)
        return result

    def pack(self) -> bytes:
        """The structure's bytes; a value that does not fit its field raises `LayoutError`."""
        try:
            return self.STRUCT.pack(*self.values())
        except struct.error:
            raise self._pack_error() from None

    @classmethod
    def pack_values(cls, *values: Any) -> bytes:
        """`cls(*values).pack()` with no object built (a value that does not fit its field
        raises the same `LayoutError`)."""
        try:
            return cls.STRUCT.pack(*values)
        except struct.error:
            raise cls(*values)._pack_error() from None

    def pack_into(self, buffer: bytearray | memoryview, offset: int = 0) -> None:
        """Write the structure into `buffer` at `offset`."""
        try:
            self.STRUCT.pack_into(buffer, offset, *self.values())
        except struct.error:
            raise self._pack_error() from None

    def _pack_error(self) -> LayoutError:
        for (field, code), value in zip(self.FIELDS, self.values(), strict=True):
            try:
                struct.pack(self.BYTE_ORDER + code, value)
            except struct.error as exc:
                return LayoutError(self.NAME, field, self.OFFSETS[field], f"{value!r}: {exc}")
            if code.endswith("s") and len(value) != self.SIZES[field]:
                return LayoutError(
                    self.NAME,
                    field,
                    self.OFFSETS[field],
                    f"{len(value)} bytes given, the field holds {self.SIZES[field]}",
                )
        return LayoutError(self.NAME, "FIELDS", 0, "values do not pack")
