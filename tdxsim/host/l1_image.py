"""The L1 image: a fixed header then a zip of Python packages, measured into MRTD page by page.

Layout (little-endian), `L1ImageHeader`:

| offset | size | field |
|---|---|---|
| 0 | 8 | magic "TDXSIML1" |
| 8 | 2 | version (1) |
| 10 | 2 | header_size (136) |
| 12 | 4 | flags (0; reserved) |
| 16 | 64 | entry: "package.module:function", ASCII, NUL padded |
| 80 | 8 | payload_size in bytes |
| 88 | 48 | SHA-384 of the payload |

The payload (a zip) follows the header directly; the image is zero padded to whole pages when it is
placed in TD memory. The zip is built deterministically (sorted names, fixed timestamps), so the
same sources always give the same MRTD.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

from tdxdefs.layout import Layout
from tdxdefs.tdcall import SHA384_SIZE
from tdxsim.errors import TdxsimError

L1IMAGE_MAGIC = b"TDXSIML1"
L1IMAGE_VERSION = 1
ENTRY_SIZE = 64
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
ENTRY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
SKIPPED_PARTS = ("__pycache__",)
ZIP_MODE = 0o644 << 16  # rw-r--r--, in the high half of external_attr


class L1ImageError(TdxsimError, ValueError):
    """An L1 image that cannot be used (names the field and its offset)."""

    def __init__(self, field: str, offset: int, reason: str) -> None:
        super().__init__(f"L1 image {field} at offset {offset}: {reason}")
        self.field = field
        self.offset = offset


@dataclass(frozen=True, slots=True)
class L1ImageHeader(Layout):
    """The 136-byte header in front of the payload."""

    NAME: ClassVar[str] = "L1 image header"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("magic", "8s"),
        ("version", "H"),
        ("header_size", "H"),
        ("flags", "I"),
        ("entry", f"{ENTRY_SIZE}s"),
        ("payload_size", "Q"),
        ("payload_sha384", f"{SHA384_SIZE}s"),
    )
    SIZE: ClassVar[int] = 136

    magic: bytes
    version: int
    header_size: int
    flags: int
    entry: bytes
    payload_size: int
    payload_sha384: bytes


HEADER_SIZE = L1ImageHeader.SIZE
ENTRY_OFFSET = L1ImageHeader.offset("entry")
PAYLOAD_SIZE_OFFSET = L1ImageHeader.offset("payload_size")
DIGEST_OFFSET = L1ImageHeader.offset("payload_sha384")


@dataclass(frozen=True)
class L1Image:
    """An entry point and its payload zip."""

    entry: str
    payload: bytes

    def pack(self) -> bytes:
        """Header then payload."""
        if not ENTRY_PATTERN.match(self.entry) or len(self.entry) > ENTRY_SIZE:
            raise L1ImageError(
                "entry",
                ENTRY_OFFSET,
                f"{self.entry!r} is not module:function of at most {ENTRY_SIZE} characters",
            )
        header = L1ImageHeader(
            L1IMAGE_MAGIC,
            L1IMAGE_VERSION,
            HEADER_SIZE,
            0,
            self.entry.encode("ascii"),
            len(self.payload),
            hashlib.sha384(self.payload).digest(),
        )
        return header.pack() + self.payload

    @classmethod
    def unpack(cls, raw: bytes) -> Self:
        """Parse and check an image (trailing page padding allowed)."""
        if len(raw) < HEADER_SIZE:
            raise L1ImageError("header", 0, f"{len(raw)} bytes, need {HEADER_SIZE}")
        h = L1ImageHeader.unpack(raw[:HEADER_SIZE])
        if h.magic != L1IMAGE_MAGIC:
            raise L1ImageError("magic", 0, f"{h.magic!r}, expected {L1IMAGE_MAGIC!r}")
        if h.version != L1IMAGE_VERSION:
            raise L1ImageError(
                "version",
                L1ImageHeader.offset("version"),
                f"{h.version}, expected {L1IMAGE_VERSION}",
            )
        if h.header_size != HEADER_SIZE:
            raise L1ImageError(
                "header_size",
                L1ImageHeader.offset("header_size"),
                f"{h.header_size}, expected {HEADER_SIZE}",
            )
        if h.flags:
            raise L1ImageError(
                "flags", L1ImageHeader.offset("flags"), f"{h.flags:#x}, reserved bits must be 0"
            )
        if HEADER_SIZE + h.payload_size > len(raw):
            raise L1ImageError(
                "payload_size",
                PAYLOAD_SIZE_OFFSET,
                f"{h.payload_size} overruns the {len(raw)}-byte image",
            )
        payload = raw[HEADER_SIZE : HEADER_SIZE + h.payload_size]
        if hashlib.sha384(payload).digest() != h.payload_sha384:
            raise L1ImageError("payload_sha384", DIGEST_OFFSET, "does not match the payload")
        try:
            entry = h.entry.rstrip(b"\0").decode("ascii")
        except UnicodeDecodeError:
            raise L1ImageError("entry", ENTRY_OFFSET, "not ASCII") from None
        if not ENTRY_PATTERN.match(entry):
            raise L1ImageError("entry", ENTRY_OFFSET, f"{entry!r} is not module:function")
        return cls(entry, payload)

    def packages(self) -> frozenset[str]:
        """The top-level packages the payload zip carries (what L1 imports from the image)."""
        with zipfile.ZipFile(io.BytesIO(self.payload)) as archive:
            return frozenset(name.partition("/")[0] for name in archive.namelist() if "/" in name)

    @property
    def module(self) -> str:
        return self.entry.partition(":")[0]

    @property
    def function(self) -> str:
        return self.entry.partition(":")[2]


def package_files(packages: list[Path]) -> list[tuple[str, Path]]:
    """(name in the zip, file) of every file of the package directories, each stored under its
    own name, sorted; `__pycache__` and stray `.pyc`/`.pyo` files are left out."""
    files: list[tuple[str, Path]] = []
    for package in sorted(packages, key=lambda p: p.name):
        if not (package / "__init__.py").is_file():
            raise ValueError(f"{package} is not a Python package (no __init__.py)")
        for path in sorted(package.rglob("*")):
            if path.is_dir() or any(part in SKIPPED_PARTS for part in path.parts):
                continue
            if path.suffix not in (".pyc", ".pyo"):
                files.append((path.relative_to(package.parent).as_posix(), path))
    return files


def zip_entries(entries: Iterable[tuple[str, bytes]]) -> bytes:
    """A deterministic zip of (name, bytes) in the order given: fixed timestamps and modes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = ZIP_MODE
            zf.writestr(info, data)
    return out.getvalue()


def zip_packages(packages: list[Path]) -> bytes:
    """A deterministic zip of package directories' sources (each stored under its own name)."""
    return zip_entries((name, path.read_bytes()) for name, path in package_files(packages))


def build_l1_image(packages: list[Path], entry: str) -> bytes:
    """The image bytes for these packages and entry point."""
    return L1Image(entry, zip_packages(packages)).pack()
