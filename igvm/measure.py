"""TDX launch measurement (MRTD) of an IGVM file, and RTMR prediction.

Intel TDX Module ABI Specification: TDH.MEM.PAGE.ADD and TDH.MR.EXTEND extend MRTD.

MRTD is SHA-384 over 128-byte blocks: TDH.MEM.PAGE.ADD gives one block (ASCII "MEM.PAGE.ADD",
GPA at byte 16), TDH.MR.EXTEND gives a block (ASCII "MR.EXTEND", chunk GPA at byte 16) followed by
the 256 data bytes, sixteen times per 4 KiB page. Two mappings from IGVM directives are offered:

- "igvm" (default; microsoft/igvm generate_tdx_measurement, OpenVMM, MigTD): directives in file
  order, filtered by the TDX compatibility mask; shared pages skipped; unmeasured pages and every
  page of a parameter insert get PAGE.ADD only; a measured zero page is extended with zeros.
- "td-shim" (td-shim build_igvmmrtd): masks ignored, parameter inserts ignored, and a zero page gets
  PAGE.ADD only (MR.EXTEND only for pages that carry data).

The 2 MiB page flag is not expanded (only 4 KiB is measured), as in both references.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import queue
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any, BinaryIO, Literal

from igvm.errors import IgvmError
from igvm.format import IgvmFile, scan
from igvm.headers import (
    IGVM_PAGE_FLAG_SHARED,
    IGVM_PAGE_FLAG_UNMEASURED,
    PAGE_SIZE,
    DirectiveHeader,
    PageData,
    ParameterArea,
    ParameterInsert,
)
from tdxdefs.tdcall import RTMR_COUNT

MRTD_SIZE = 48
BLOCK_SIZE = 128
MR_EXTEND_CHUNK = 256
CHUNKS_PER_PAGE = PAGE_SIZE // MR_EXTEND_CHUNK
PAGE_ADD_TAG = b"MEM.PAGE.ADD"
MR_EXTEND_TAG = b"MR.EXTEND"
# The 128-byte extension block: 16-byte ASCII tag (NUL padded), u64 GPA, 104 zero bytes.
EXTENSION_BLOCK = struct.Struct("<16sQ104x")
# A fully measured page: PAGE.ADD block, then 16 x (MR.EXTEND block + 256 data bytes) = 6272 bytes.
MEASURED_PAGE = struct.Struct("<16sQ104x" + "16sQ104x256s" * CHUNKS_PER_PAGE)
PAGE_CHUNKS = struct.Struct("256s" * CHUNKS_PER_PAGE)
MEASURED_PAGE_BYTES = MEASURED_PAGE.size
PAGE_ADD_BYTES = BLOCK_SIZE
_EXTEND_TAGS = (MR_EXTEND_TAG,) * CHUNKS_PER_PAGE
_ZERO_PAGE = bytes(PAGE_SIZE)
_NOT_EXTENDED = IGVM_PAGE_FLAG_SHARED | IGVM_PAGE_FLAG_UNMEASURED
# The accumulator hashes in batches: one hashlib call per batch (the GIL is released while hashing).
FLUSH_BYTES = 64 * MEASURED_PAGE_BYTES
BACKGROUND_QUEUE_DEPTH = 4

Variant = Literal["igvm", "td-shim"]
VARIANTS: tuple[Variant, ...] = ("igvm", "td-shim")


def page_add_block(gpa: int) -> bytes:
    """The 128-byte block TDH.MEM.PAGE.ADD feeds into MRTD for a 4 KiB-aligned GPA."""
    _check_gpa(gpa, PAGE_SIZE, "TDH.MEM.PAGE.ADD")
    return EXTENSION_BLOCK.pack(PAGE_ADD_TAG, gpa)


def mr_extend_block(gpa: int) -> bytes:
    """The 128-byte header block of one TDH.MR.EXTEND (the 256 data bytes follow it)."""
    _check_gpa(gpa, MR_EXTEND_CHUNK, "TDH.MR.EXTEND")
    return EXTENSION_BLOCK.pack(MR_EXTEND_TAG, gpa)


def measured_page_stream(gpa: int, page4k: bytes) -> bytes:
    """PAGE.ADD plus the 16 MR.EXTENDs of one page: the 6272 bytes it feeds into MRTD."""
    return MEASURED_PAGE.pack(
        PAGE_ADD_TAG,
        gpa,
        *chain.from_iterable(
            zip(
                _EXTEND_TAGS,
                range(gpa, gpa + PAGE_SIZE, MR_EXTEND_CHUNK),
                PAGE_CHUNKS.unpack(page4k),
                strict=True,
            )
        ),
    )


def _check_gpa(gpa: int, alignment: int, operation: str) -> None:
    if gpa < 0 or gpa >= 1 << 64 or gpa % alignment:
        raise ValueError(f"{operation}: GPA {gpa:#x} must be a {alignment}-byte aligned u64")


class _BackgroundHasher:
    """Feeds batches to SHA-384 on a worker thread so hashing overlaps block building."""

    def __init__(self, digest: Any) -> None:
        self._hash = digest
        self._queue: queue.Queue[bytes | None] = queue.Queue(BACKGROUND_QUEUE_DEPTH)
        self._thread = threading.Thread(target=self._run, name="mrtd-hasher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._hash.update(item)

    def update(self, data: bytes) -> None:
        self._queue.put(data)
        # Hand the GIL over now: otherwise the worker waits a whole switch interval (5 ms) to
        # return from each hash call, and the two threads barely overlap.
        time.sleep(0)

    def finish(self) -> None:
        self._queue.put(None)
        self._thread.join()


class MrtdAccumulator:
    """A running MRTD: the operations a TDX module performs before TDH.MR.FINALIZE.

    With background=True hashing runs on a worker thread and digest() may be called once.
    """

    def __init__(self, *, background: bool = False) -> None:
        self._hash = hashlib.sha384()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._worker = _BackgroundHasher(self._hash) if background else None
        self._finished = False
        self.page_adds = 0
        self.extends = 0

    def feed(self, data: bytes) -> None:
        """Raw extension blocks, already formatted (e.g. from measured_page_stream)."""
        if self._finished:
            raise RuntimeError("MrtdAccumulator: digest() already finalized the background hash")
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        batch = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if self._worker is not None:
            self._worker.update(batch)
        else:
            self._hash.update(batch)

    def page_add(self, gpa: int) -> None:
        """TDH.MEM.PAGE.ADD of the page at `gpa`."""
        self.feed(page_add_block(gpa))
        self.page_adds += 1

    def mr_extend(self, gpa: int, chunk256: bytes) -> None:
        """TDH.MR.EXTEND of one 256-byte chunk at `gpa`."""
        if len(chunk256) != MR_EXTEND_CHUNK:
            raise ValueError(
                f"TDH.MR.EXTEND: chunk at GPA {gpa:#x} is {len(chunk256)} bytes, "
                f"must be {MR_EXTEND_CHUNK}"
            )
        self.feed(mr_extend_block(gpa) + bytes(chunk256))
        self.extends += 1

    def extend_page(self, gpa: int, page4k: bytes) -> None:
        """The 16 MR.EXTENDs of a whole page (no PAGE.ADD), in chunk order."""
        _check_gpa(gpa, PAGE_SIZE, "TDH.MR.EXTEND")
        if len(page4k) != PAGE_SIZE:
            raise ValueError(f"page at GPA {gpa:#x} is {len(page4k)} bytes, must be {PAGE_SIZE}")
        self.feed(measured_page_stream(gpa, bytes(page4k))[PAGE_ADD_BYTES:])
        self.extends += CHUNKS_PER_PAGE

    def add_measured_page(self, gpa: int, page4k: bytes) -> None:
        """PAGE.ADD then 16 MR.EXTENDs (the single-pass order KVM uses), in one step."""
        _check_gpa(gpa, PAGE_SIZE, "TDH.MEM.PAGE.ADD")
        if len(page4k) != PAGE_SIZE:
            raise ValueError(f"page at GPA {gpa:#x} is {len(page4k)} bytes, must be {PAGE_SIZE}")
        self.feed(measured_page_stream(gpa, page4k))
        self.page_adds += 1
        self.extends += CHUNKS_PER_PAGE

    def digest(self) -> bytes:
        """The 48-byte MRTD as TDH.MR.FINALIZE would leave it."""
        self._flush()
        if self._worker is not None and not self._finished:
            self._worker.finish()
            self._finished = True
        return self._hash.digest()


@dataclass(frozen=True, slots=True)
class DirectiveMeasurement:
    """What one directive fed into MRTD: counts, a digest of its bytes, and MRTD after it."""

    index: int
    description: str
    page_adds: int
    extends: int
    contribution: bytes
    mrtd_after: bytes
    note: str


def _page_bytes(page: PageData) -> bytes:
    data = page.data
    if len(data) == PAGE_SIZE:
        return data
    return data.ljust(PAGE_SIZE, b"\0") if data else _ZERO_PAGE


def _insert_blocks(gpa: int, size: int) -> Iterator[bytes]:
    """The PAGE.ADD blocks of an inserted parameter area, one page at a time (memory stays flat)."""
    for page in range(0, size, PAGE_SIZE):
        yield page_add_block(gpa + page)


def _operations(
    header: DirectiveHeader, mask: int, variant: Variant, areas: dict[int, int]
) -> tuple[Iterable[bytes], int, int, str]:
    """(byte pieces fed to MRTD, page adds, extends, note) for one directive."""
    if (
        type(header) is PageData
        and variant == "igvm"
        and header.compatibility_mask & mask == mask
        and not header.flags & _NOT_EXTENDED
    ):
        # The common case first, without the generic checks below.
        return (
            [measured_page_stream(header.gpa, _page_bytes(header))],
            1,
            CHUNKS_PER_PAGE,
            "measured page" if header.data else "measured zero page",
        )
    if isinstance(header, ParameterArea):
        areas[header.parameter_area_index] = header.number_of_bytes
        return [], 0, 0, "parameter area declared (not measured)"
    header_mask = getattr(header, "compatibility_mask", None)
    if variant == "igvm" and header_mask is not None and header_mask & mask != mask:
        return [], 0, 0, "not for this platform mask"
    if isinstance(header, PageData):
        if header.shared:
            return [], 0, 0, "shared page (not added)"
        if header.unmeasured or (variant == "td-shim" and not header.data):
            note = "unmeasured page" if header.unmeasured else "zero page (td-shim: add only)"
            return [page_add_block(header.gpa)], 1, 0, note
        note = "measured page" if header.data else "measured zero page"
        return ([measured_page_stream(header.gpa, _page_bytes(header))], 1, CHUNKS_PER_PAGE, note)
    if isinstance(header, ParameterInsert):
        if variant == "td-shim":
            return [], 0, 0, "parameter insert (ignored by td-shim)"
        size = areas.get(header.parameter_area_index, 0)
        pages = size // PAGE_SIZE
        return _insert_blocks(header.gpa, size), pages, 0, "parameter insert (add only)"
    return [], 0, 0, "not measured"


def _resolve(
    source: str | os.PathLike[str] | BinaryIO | IgvmFile, mask: int | None, variant: str
) -> tuple[Iterator[tuple[int, DirectiveHeader]], int, Any]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown MRTD variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if isinstance(source, IgvmFile):
        platform = source.tdx_platform
        platforms = source.platforms
        directives: Iterator[tuple[int, DirectiveHeader]] = enumerate(
            source.directives, len(source.platforms) + len(source.initializations)
        )
        closer = None
    else:
        opened = scan(source)
        platform = opened.tdx_platform
        platforms = opened.platforms
        directives = ((index, header) for index, _offset, header in opened.indexed_directives())
        # close only what was opened here: a caller's stream stays open for the caller
        closer = opened if isinstance(source, str | os.PathLike) else None
    if mask is None:
        if variant == "td-shim":
            mask = 0
        elif platform is None:
            if closer is not None:
                closer.close()
            raise IgvmError("the file has no TDX SUPPORTED_PLATFORM header; give a mask")
        else:
            mask = platform.compatibility_mask
    if mask < 0:
        raise ValueError(f"compatibility mask {mask} must not be negative")
    declared = 0
    for declared_platform in platforms:
        declared |= getattr(declared_platform, "compatibility_mask", 0)
    if mask & ~declared:
        if closer is not None:
            closer.close()
        raise IgvmError(
            f"no SUPPORTED_PLATFORM has compatibility mask {mask:#x} (the file declares "
            f"{declared:#x}); nothing would be measured"
        )
    return directives, mask, closer


def mrtd(
    source: str | os.PathLike[str] | BinaryIO | IgvmFile,
    mask: int | None = None,
    variant: str = "igvm",
) -> bytes:
    """The 48-byte MRTD a TDX host produces loading `source` (a path, stream or IgvmFile).

    mask None takes the file's TDX platform mask. A path is streamed: memory stays flat.
    """
    directives, mask, closer = _resolve(source, mask, variant)
    try:
        accumulator = MrtdAccumulator(background=not isinstance(source, IgvmFile))
        areas: dict[int, int] = {}
        try:
            for _index, header in directives:
                pieces, _adds, _extends, _note = _operations(header, mask, variant, areas)  # type: ignore[arg-type]
                for piece in pieces:
                    accumulator.feed(piece)
        finally:
            digest = accumulator.digest()
        return digest
    finally:
        if closer is not None:
            closer.close()


def measurement_log(
    source: str | os.PathLike[str] | BinaryIO | IgvmFile,
    mask: int | None = None,
    variant: str = "igvm",
    *,
    running: bool = True,
) -> Iterator[DirectiveMeasurement]:
    """Per directive: what it fed into MRTD and the running MRTD after it (for explaining diffs).

    running=False gives mrtd_after only on the last record (the final MRTD; b"" before it) and
    hashes the MRTD on a worker thread, overlapping the per-directive digests: what diff needs.
    """
    directives, mask, closer = _resolve(source, mask, variant)
    total = hashlib.sha384()
    accumulator = None if running else MrtdAccumulator(background=True)
    areas: dict[int, int] = {}
    pending: DirectiveMeasurement | None = None
    try:
        for index, header in directives:
            pieces, adds, extends, note = _operations(header, mask, variant, areas)  # type: ignore[arg-type]
            contribution = hashlib.sha384()
            for piece in pieces:
                contribution.update(piece)
                if accumulator is None:
                    total.update(piece)
                else:
                    accumulator.feed(piece)
            record = DirectiveMeasurement(
                index,
                header.describe(),
                adds,
                extends,
                contribution.digest() if adds or extends else b"",
                total.digest() if accumulator is None else b"",
                note,
            )
            if accumulator is None:
                yield record
                continue
            if pending is not None:
                yield pending
            pending = record
        if pending is not None and accumulator is not None:
            yield dataclasses.replace(pending, mrtd_after=accumulator.digest())
    finally:
        if accumulator is not None:
            accumulator.digest()  # stops the worker thread
        if closer is not None:
            closer.close()


def rtmr_extend(current: bytes, event_digest: bytes) -> bytes:
    """RTMR[i] = SHA-384(RTMR[i] || digest), as TDG.MR.RTMR.EXTEND does."""
    if len(current) != MRTD_SIZE or len(event_digest) != MRTD_SIZE:
        raise ValueError(
            f"RTMR extend needs 48-byte values (got {len(current)} and {len(event_digest)})"
        )
    return hashlib.sha384(current + event_digest).digest()


def rtmr_replay(events: Iterable[bytes], initial: bytes = bytes(MRTD_SIZE)) -> bytes:
    """The RTMR value after extending each 48-byte event digest in order, from `initial`."""
    value = bytes(initial)
    for number, event in enumerate(events):
        if len(event) != MRTD_SIZE:
            raise ValueError(f"RTMR event {number} is {len(event)} bytes, must be 48 (SHA-384)")
        value = rtmr_extend(value, bytes(event))
    return value


def rtmr_predict(events: Iterable[tuple[int, bytes]]) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0..3 after (rtmr index, 48-byte digest) events, all starting from zero."""
    values = [bytes(MRTD_SIZE)] * RTMR_COUNT
    for number, (index, event) in enumerate(events):
        if not 0 <= index < RTMR_COUNT:
            raise ValueError(f"RTMR event {number}: index {index} is not 0-3")
        if len(event) != MRTD_SIZE:
            raise ValueError(f"RTMR event {number} is {len(event)} bytes, must be 48 (SHA-384)")
        values[index] = rtmr_extend(values[index], event)
    return (values[0], values[1], values[2], values[3])
