"""Property tests: random valid images round-trip byte for byte; mutations never crash."""

from __future__ import annotations

import dataclasses
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from igvm.errors import IgvmError
from igvm.format import IgvmFile
from igvm.headers import (
    IGVM_PAGE_FLAG_IS_2MB_PAGE,
    IGVM_PAGE_FLAG_SHARED,
    IGVM_PAGE_FLAG_UNMEASURED,
    IGVM_PLATFORM_SEV_SNP,
    IGVM_PLATFORM_TDX,
    PAGE_SIZE,
    PAGE_SIZE_2MB,
    CommandLine,
    DirectiveHeader,
    ErrorRange,
    GuestPolicy,
    InitializationHeader,
    MemoryMap,
    PageData,
    ParameterArea,
    ParameterInsert,
    PlatformHeader,
    RequiredMemory,
    SupportedPlatform,
    VpCount,
)
from igvm.measure import mrtd

MASKS = st.sampled_from([1, 2, 3])
# GPAs below 2^46: under the TDX shared-GPA boundary (2^47), with room above for _distinct().
PAGE_NUMBERS = st.integers(min_value=0, max_value=(1 << 34) - 1)
RELOCATED_BASE = 1 << 46
RELOCATED_STRIDE = 4 << 20
DATA = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=64),
    st.binary(min_size=PAGE_SIZE, max_size=PAGE_SIZE),
)


@st.composite
def page_data(draw: st.DrawFn) -> PageData:
    flags = draw(
        st.sampled_from(
            [0, IGVM_PAGE_FLAG_UNMEASURED, IGVM_PAGE_FLAG_SHARED, IGVM_PAGE_FLAG_IS_2MB_PAGE]
        )
    )
    unit = PAGE_SIZE_2MB if flags & IGVM_PAGE_FLAG_IS_2MB_PAGE else PAGE_SIZE
    gpa = draw(PAGE_NUMBERS) * PAGE_SIZE // unit * unit
    return PageData(gpa, draw(MASKS), flags, draw(st.integers(0, 3)), draw(DATA))


@st.composite
def parameter_block(draw: st.DrawFn, index: int) -> list[DirectiveHeader]:
    pages = draw(st.integers(1, 4))
    initial = draw(st.one_of(st.just(b""), st.binary(min_size=1, max_size=100)))
    block: list[DirectiveHeader] = [ParameterArea(pages * PAGE_SIZE, index, initial)]
    for kind in draw(st.lists(st.sampled_from([VpCount, MemoryMap, CommandLine]), max_size=3)):
        block.append(kind(index, draw(st.integers(0, pages * PAGE_SIZE - 24))))
    block.append(ParameterInsert(draw(PAGE_NUMBERS) * PAGE_SIZE, draw(MASKS), index))
    return block


@st.composite
def images(draw: st.DrawFn) -> IgvmFile:
    vtl = draw(st.sampled_from([0, 2]))
    boundary = draw(st.sampled_from([0, 1 << 47]))
    platforms: list[PlatformHeader] = [
        SupportedPlatform(1, vtl, IGVM_PLATFORM_TDX, 1, boundary),
        SupportedPlatform(2, 0, IGVM_PLATFORM_SEV_SNP, 1, 0),
    ]
    inits: list[InitializationHeader] = []
    if draw(st.booleans()):
        inits.append(GuestPolicy(draw(st.integers(0, 7)), 1))
    directives: list[DirectiveHeader] = []
    for index in range(draw(st.integers(0, 2))):
        directives.extend(draw(parameter_block(index)))
    others = st.one_of(
        page_data(),
        st.builds(
            RequiredMemory,
            st.builds(lambda n: n * PAGE_SIZE, PAGE_NUMBERS),
            MASKS,
            st.integers(1, 16).map(lambda n: n * PAGE_SIZE),
            st.integers(0, 1),
        ),
        st.builds(ErrorRange, PAGE_NUMBERS, MASKS, st.integers(0, 0xFFFF)),
    )
    directives.extend(draw(st.lists(others, max_size=12)))
    return IgvmFile(platforms, inits, _distinct(directives))


def _distinct(directives: list[DirectiveHeader]) -> list[DirectiveHeader]:
    """Move pages the TDX platform (mask bit 1) would add twice to fresh GPAs: a TDX host
    adds each GPA once, so a valid image never repeats one."""
    used: set[int] = set()
    sizes = {
        d.parameter_area_index: d.number_of_bytes
        for d in directives
        if isinstance(d, ParameterArea)
    }
    result: list[DirectiveHeader] = []
    for number, d in enumerate(directives):
        if isinstance(d, PageData) and d.compatibility_mask & 1 and not d.shared:
            pages = {d.gpa}
        elif isinstance(d, ParameterInsert) and d.compatibility_mask & 1:
            pages = set(range(d.gpa, d.gpa + sizes[d.parameter_area_index], PAGE_SIZE))
        else:
            result.append(d)
            continue
        if pages & used:
            gpa = RELOCATED_BASE + number * RELOCATED_STRIDE
            pages = {page - d.gpa + gpa for page in pages}
            d = dataclasses.replace(d, gpa=gpa)
        used |= pages
        result.append(d)
    return result


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images())
def test_random_valid_images_round_trip_byte_for_byte(image: IgvmFile) -> None:
    raw = image.to_bytes()
    parsed = IgvmFile.from_bytes(raw)
    assert parsed.to_bytes() == raw
    assert len(parsed.directives) == len(image.directives)
    assert parsed.platforms == image.platforms and parsed.initializations == image.initializations
    for before, after in zip(image.directives, parsed.directives, strict=True):
        assert type(before) is type(after)
        assert before.file_data() == after.file_data()  # data padded, otherwise unchanged
    # Streaming measurement sees exactly what the in-memory one sees.
    assert mrtd(io.BytesIO(raw)) == mrtd(parsed) == mrtd(image)


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "cut", "insert", "delete"]),
        st.integers(0, 1 << 16),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images(), MUTATIONS, st.booleans())
def test_mutated_files_parse_or_raise_igvm_error(
    image: IgvmFile, mutations: list[tuple[str, int, int]], fix_crc: bool
) -> None:
    import struct
    import zlib

    raw = bytearray(image.to_bytes())
    for kind, position, value in mutations:
        if not raw:
            break
        where = position % len(raw)
        if kind == "flip":
            raw[where] ^= 1 << (value % 8)
        elif kind == "set":
            raw[where] = value
        elif kind == "cut":
            del raw[where:]
        elif kind == "insert":
            raw[where:where] = bytes([value]) * (value % 9)
        else:
            del raw[where : where + value % 9]
    if fix_crc and len(raw) >= 24:
        # Recompute the CRC so mutations reach the header walk instead of the checksum check.
        vh_offset, vh_size = struct.unpack_from("<II", raw, 8)
        fixed = raw[:20] + bytes(4) + raw[24 : min(vh_offset, 32)]
        raw[20:24] = struct.pack(
            "<I", zlib.crc32(bytes(fixed) + bytes(raw[vh_offset : vh_offset + vh_size]))
        )
    try:
        parsed = IgvmFile.from_bytes(bytes(raw))
    except IgvmError as exc:
        assert exc.rule
        return
    assert IgvmFile.from_bytes(parsed.to_bytes()) is not None
