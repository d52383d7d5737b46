"""Build a TD from an IGVM file: PAGE.ADD / MR.EXTEND in directive order, the rest of RAM pending.

Follows the IGVM file format's directive walk as the microsoft/igvm crate does it: headers whose
compatibility mask does not cover the TDX platform's are skipped; shared PAGE_DATA is not added;
measured PAGE_DATA gets PAGE.ADD plus 16 MR.EXTENDs; unmeasured PAGE_DATA and every page of a
PARAMETER_INSERT get PAGE.ADD only, the latter with the host-filled parameter area (memory map,
VP count, command line) as content. The command line (IGVM_VHT_COMMAND_LINE: NUL-terminated
ASCII) carries the host's launch options; a file without that parameter cannot take any.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from igvm import format as igvm_format
from igvm import headers
from igvm.headers import IGVM_PAGE_FLAG_SHARED as SHARED
from igvm.headers import IGVM_PAGE_FLAG_UNMEASURED as UNMEASURED
from igvm.headers import PageData, SupportedPlatform
from igvm.measure import FLUSH_BYTES, MEASURED_PAGE_BYTES
from tdxdefs.tdcall import GPAW_48, GPAW_52, PAGE_SIZE
from tdxsim.module.attestation_interface import AttestationInterface
from tdxsim.module.build import BuildError, TdBuilder, TdConfig
from tdxsim.module.host_interface import HostInterface

SHARED_BOUNDARY_GPAW = {0: GPAW_48, 1 << 47: GPAW_48, 1 << 51: GPAW_52}
DEFAULT_RAM = 64 << 20
HUGE = 2 << 20
MEMORY_TYPE_RAM = 0
# Pages added as one run: one accumulator batch, so hashing starts while the file is still read.
MAX_RUN_PAGES = FLUSH_BYTES // MEASURED_PAGE_BYTES


class IgvmLoadError(BuildError):
    """The IGVM file cannot be loaded as a TDX TD (names the directive and GPA)."""


def tdx_mask(source: Any) -> tuple[int, int]:
    """(compatibility mask, GPAW) of the TDX platform of an IgvmFile, IgvmScan or platform."""
    platform = getattr(source, "tdx_platform", source)
    if not isinstance(platform, SupportedPlatform):
        raise IgvmLoadError("IGVM file has no TDX SUPPORTED_PLATFORM header")
    boundary = platform.shared_gpa_boundary
    if boundary not in SHARED_BOUNDARY_GPAW:
        raise IgvmLoadError(f"TDX platform: unsupported shared_gpa_boundary {boundary:#x}")
    return platform.compatibility_mask, SHARED_BOUNDARY_GPAW[boundary]


def applies(directive: Any, mask: int) -> bool:
    """True if a header's compatibility mask covers the TDX platform's (or it has none)."""
    own = getattr(directive, "compatibility_mask", None)
    return own is None or own & mask == mask


def default_ram(pages: list[int]) -> list[tuple[int, int]]:
    """RAM regions for a file: 64 MiB at 0 plus 2M-aligned islands for pages above it."""
    regions = [(0, DEFAULT_RAM)]
    islands: set[int] = {gpa & ~(HUGE - 1) for gpa in pages if gpa >= DEFAULT_RAM}
    for base in sorted(islands):
        last_base, last_size = regions[-1]
        if last_base + last_size == base:
            regions[-1] = (last_base, last_size + HUGE)
        else:
            regions.append((base, HUGE))
    return regions


def _memory_map(regions: list[tuple[int, int]], size: int) -> bytes:
    out = bytearray()
    for gpa, length in regions:
        out += (gpa // PAGE_SIZE).to_bytes(8, "little")
        out += (length // PAGE_SIZE).to_bytes(8, "little")
        out += MEMORY_TYPE_RAM.to_bytes(2, "little") + bytes(6)
    out += bytes(headers.MEMORY_MAP_ENTRY_BYTES)  # terminator: number_of_pages 0
    if len(out) > size:
        raise IgvmLoadError(f"memory map of {len(regions)} entries does not fit in {size} bytes")
    return bytes(out)


def load_igvm(
    path: str | Path,
    ram: list[tuple[int, int]] | None = None,
    num_l2_vms: int = 1,
    vcpus: int = 1,
    *,
    host: HostInterface | None = None,
    attestation: AttestationInterface | None = None,
    strict: bool = False,
    instruction_budget: int | None = None,
) -> TdBuilder:
    """Create the TD and replay the file's directives; the caller finalizes.

    With `ram` given the file is streamed (memory stays flat, reading overlaps hashing);
    without it the whole file is read first to size RAM around the pages it loads.
    """
    if ram is None:
        igvm_file = igvm_format.read(path)
        mask, gpaw = tdx_mask(igvm_file)
        directives: Iterable[Any] = igvm_file.directives
        ram = default_ram(
            [
                d.gpa
                for d in igvm_file.directives
                if isinstance(d, headers.PageData) and applies(d, mask)
            ]
        )
        return _replay(directives, mask, gpaw, ram, num_l2_vms, vcpus, host, attestation,
                       strict, instruction_budget)  # fmt: skip
    with igvm_format.scan(path) as scan:
        mask, gpaw = tdx_mask(scan)
        return _replay(scan.directives(), mask, gpaw, ram, num_l2_vms, vcpus, host,
                       attestation, strict, instruction_budget)  # fmt: skip


class PageSink(Protocol):
    """Where a directive walk puts pages: the in-process TdBuilder, or the host-process Vmm."""

    def add_page_run(self, gpa: int, pages: Sequence[bytes], *, measured: bool) -> None:
        """PAGE.ADD consecutive private pages from `gpa` (and MR.EXTEND them if `measured`)."""
        ...

    def add_shared_page(self, gpa: int, data: bytes) -> None:
        """A shared (host-visible, unmeasured) PAGE_DATA page with its contents."""
        ...


class _BuilderSink:
    """PageSink over an in-process TdBuilder."""

    def __init__(self, builder: TdBuilder) -> None:
        self.builder = builder

    def add_page_run(self, gpa: int, pages: Sequence[bytes], *, measured: bool) -> None:
        self.builder.add_page_run(gpa, pages, measured=measured)

    def add_shared_page(self, gpa: int, data: bytes) -> None:
        self.builder.memory.write(gpa, bytes(data).ljust(PAGE_SIZE, b"\0"))
        self.builder.memory.set_shared(gpa, 1, True)


def replay_directives(
    directives: Iterable[Any],
    mask: int,
    ram: list[tuple[int, int]],
    vcpus: int,
    sink: PageSink,
    command_line: bytes = b"",
) -> None:
    """Walk directives in file order (as the microsoft/igvm crate does); hand their pages to `sink`.

    Consecutive PAGE_DATA of one kind go as one run (still in file order); parameter areas are
    filled with the host's VP count, memory map and `command_line` and inserted unmeasured.
    """
    if b"\0" in command_line or not command_line.isascii():
        raise IgvmLoadError(f"command line {command_line!r}: must be ASCII without NUL bytes")
    areas: dict[int, bytearray] = {}
    placed = False
    run: list[bytes] = []
    run_gpa, run_end, run_measured = 0, -1, False
    for d in directives:
        if type(d) is PageData and d.compatibility_mask & mask == mask and not d.flags & SHARED:
            measured = not d.flags & UNMEASURED
            if d.gpa != run_end or measured != run_measured or len(run) == MAX_RUN_PAGES:
                if run:
                    sink.add_page_run(run_gpa, run, measured=run_measured)
                run, run_gpa, run_measured = [], d.gpa, measured
            run.append(d.data)
            run_end = d.gpa + PAGE_SIZE
            continue
        if not applies(d, mask):
            continue
        if run:  # every other directive comes after the pages before it
            sink.add_page_run(run_gpa, run, measured=run_measured)
            run, run_end = [], -1
        if isinstance(d, PageData):
            if d.shared:
                sink.add_shared_page(d.gpa, bytes(d.data))
            else:
                sink.add_page_run(d.gpa, (d.data,), measured=not d.unmeasured)
        elif isinstance(d, headers.ParameterArea):
            areas[d.parameter_area_index] = bytearray(
                d.initial_data.ljust(d.number_of_bytes, b"\0")
            )
        elif isinstance(d, headers.ParameterInsert):
            area = areas.get(d.parameter_area_index)
            if area is None:
                raise IgvmLoadError(
                    f"PARAMETER_INSERT at GPA {d.gpa:#x}: area {d.parameter_area_index} undeclared"
                )
            pages = [bytes(area[at : at + PAGE_SIZE]) for at in range(0, len(area), PAGE_SIZE)]
            sink.add_page_run(d.gpa, pages, measured=False)
        else:
            placed |= _fill_parameter(d, areas, ram, vcpus, command_line)
    if run:
        sink.add_page_run(run_gpa, run, measured=run_measured)
    if command_line and not placed:
        raise IgvmLoadError(
            f"command line {command_line.decode()!r}: the IGVM file has no command-line parameter"
        )


def _replay(
    directives: Iterable[Any],
    mask: int,
    gpaw: int,
    ram: list[tuple[int, int]],
    num_l2_vms: int,
    vcpus: int,
    host: HostInterface | None,
    attestation: AttestationInterface | None,
    strict: bool,
    instruction_budget: int | None,
) -> TdBuilder:
    builder = TdBuilder(
        TdConfig(ram=ram, num_l2_vms=num_l2_vms, max_vcpus=vcpus, gpaw=gpaw),
        host,
        attestation,
        strict=strict,
        instruction_budget=instruction_budget,
    )
    replay_directives(directives, mask, ram, vcpus, _BuilderSink(builder))
    for _ in range(vcpus):
        builder.add_vcpu()
    builder.aug_rest()
    return builder


def _fill_parameter(
    directive: Any,
    areas: dict[int, bytearray],
    ram: list[tuple[int, int]],
    vcpus: int,
    command_line: bytes = b"",
) -> bool:
    """Deposit host-supplied parameters (VP count, memory map, command line) into their
    parameter area; True if this was the command line."""
    if not isinstance(directive, (headers.VpCount, headers.MemoryMap, headers.CommandLine)):
        return False  # other directives contribute nothing to a TDX TD
    kind = directive.NAME
    index = directive.parameter_area_index
    area = areas.get(index)
    if area is None:
        raise IgvmLoadError(f"{kind}: parameter area {index} was not declared")
    offset = directive.byte_offset
    if isinstance(directive, headers.VpCount):
        data = vcpus.to_bytes(headers.VP_COUNT_BYTES, "little")
    elif isinstance(directive, headers.CommandLine):
        data = command_line + b"\0"
    else:
        data = _memory_map(ram, len(area) - offset)
    if offset + len(data) > len(area):
        raise IgvmLoadError(f"{kind}: offset {offset} + {len(data)} bytes overflows area {index}")
    area[offset : offset + len(data)] = data
    return isinstance(directive, headers.CommandLine)
