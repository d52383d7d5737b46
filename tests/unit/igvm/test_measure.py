"""MRTD: reference vectors V0-V4, block formats built by hand, both variants, masks, streaming."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from igvm.errors import IgvmError
from igvm.format import IgvmFile
from igvm.headers import (
    IGVM_PAGE_FLAG_SHARED,
    IGVM_PAGE_FLAG_UNMEASURED,
    IGVM_PLATFORM_SEV_SNP,
    PageData,
    ParameterArea,
    ParameterInsert,
    SupportedPlatform,
)
from igvm.measure import (
    MrtdAccumulator,
    measurement_log,
    mr_extend_block,
    mrtd,
    page_add_block,
    rtmr_predict,
    rtmr_replay,
)
from tests.support.igvm_files import PATTERN_PAGE, V4_MRTD, tdx_platform, v4_image
from tests.support.mrtd_by_hand import hand_add, hand_extend, hand_page

V0 = (
    "38b060a751ac96384cd9327eb1b1e36a21fdb71114be0743"
    "4c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b"
)
V1 = (
    "8d411e4377a0da03b249acbe9a7939b44b4483b5a6c81341"
    "f00d60c1f417257f9a5c1c03f2f223c59f010f4933f238b8"
)
V2 = (
    "236f0efa607ff8843f1855d7ef80dc3dda8fb455787a186b"
    "8787212951eab0096e3193bb26f817c2b63c21f5e10f9938"
)
V2B = (
    "8f3e9a8aca6784eab874f7aa4dda5d49104a88047f1f8669"
    "5ef2a88f5691a90e34aac48ce45ffa1f5a23c7d62980d570"
)
V3 = (
    "15a8464628b6214951c4a1b57775507dd950263654e8790e"
    "257995b45013c84aba1d87a3bcbc1929b5f7db6d3e92cad6"
)


def image(*directives: object) -> IgvmFile:
    return IgvmFile([tdx_platform()], [], list(directives))  # type: ignore[arg-type]


def test_block_builders_match_the_reference_format() -> None:
    assert page_add_block(0xFFFFF000) == hand_add(0xFFFFF000)
    assert mr_extend_block(0x1100) == hand_extend(0x1100, b"")
    assert len(page_add_block(0)) == len(mr_extend_block(0)) == 128
    with pytest.raises(ValueError, match="aligned"):
        page_add_block(0x1001)
    with pytest.raises(ValueError, match="aligned"):
        mr_extend_block(0x1080)


def test_v0_no_operations() -> None:
    assert hashlib.sha384(b"").hexdigest() == V0
    assert MrtdAccumulator().digest().hex() == V0
    assert mrtd(image()).hex() == V0


def test_v1_page_add_only() -> None:
    assert hashlib.sha384(hand_add(0xFFFFF000)).hexdigest() == V1
    assert mrtd(image(PageData(0xFFFFF000, 1, IGVM_PAGE_FLAG_UNMEASURED))).hex() == V1


def test_v2_measured_zero_page_and_td_shim_variant() -> None:
    assert hashlib.sha384(hand_page(0, bytes(4096))).hexdigest() == V2
    assert hashlib.sha384(hand_add(0)).hexdigest() == V2B
    zero_page = image(PageData(0, 1))
    assert mrtd(zero_page).hex() == V2
    assert mrtd(zero_page, variant="td-shim").hex() == V2B


def test_v3_pattern_page() -> None:
    assert hashlib.sha384(hand_page(0x1000, PATTERN_PAGE)).hexdigest() == V3
    assert mrtd(image(PageData(0x1000, 1, data=PATTERN_PAGE))).hex() == V3


def test_short_page_data_is_zero_padded() -> None:
    short = PATTERN_PAGE[:100]
    expected = hashlib.sha384(hand_page(0x1000, short + bytes(4096 - 100))).hexdigest()
    assert mrtd(image(PageData(0x1000, 1, data=short))).hex() == expected


def test_v4_sample_file(tmp_path: Path) -> None:
    path = tmp_path / "sample_tdx.igvm"
    path.write_bytes(v4_image().to_bytes())
    by_hand = hashlib.sha384(
        hand_page(0x1000, PATTERN_PAGE)
        + hand_page(0, bytes(4096))
        + hand_add(0x2000)
        + hand_add(0x4000)
    ).hexdigest()
    assert by_hand == V4_MRTD
    assert mrtd(path).hex() == V4_MRTD
    assert mrtd(v4_image()).hex() == V4_MRTD
    with path.open("rb") as stream:
        assert mrtd(stream).hex() == V4_MRTD
    # td-shim: zero page gets ADD only, the parameter insert is ignored.
    td_shim = hashlib.sha384(hand_page(0x1000, PATTERN_PAGE) + hand_add(0) + hand_add(0x2000))
    assert mrtd(path, variant="td-shim") == td_shim.digest()


def test_a_callers_stream_stays_open(tmp_path: Path) -> None:
    """mrtd and measurement_log close only files they opened: the caller's stream stays usable,
    even when the file is refused."""
    raw = v4_image().to_bytes()
    stream = io.BytesIO(raw)
    assert mrtd(stream).hex() == V4_MRTD
    assert not stream.closed
    stream.seek(0)
    assert mrtd(stream).hex() == V4_MRTD  # usable again after a rewind
    stream.seek(0)
    assert list(measurement_log(stream))[-1].mrtd_after.hex() == V4_MRTD
    assert not stream.closed
    snp_only = IgvmFile(
        [SupportedPlatform(1, 0, IGVM_PLATFORM_SEV_SNP, 1, 0)], [], [PageData(0, 1)]
    ).to_bytes()
    refused = io.BytesIO(snp_only)
    with pytest.raises(IgvmError, match="no TDX SUPPORTED_PLATFORM"):
        mrtd(refused)
    assert not refused.closed
    garbage = io.BytesIO(b"not an IGVM file at all")
    with pytest.raises(IgvmError):
        mrtd(garbage)
    assert not garbage.closed


def test_shared_page_is_skipped_entirely() -> None:
    assert mrtd(image(PageData(0x3000, 1, IGVM_PAGE_FLAG_SHARED, data=PATTERN_PAGE))).hex() == V0


def test_parameter_insert_adds_every_page_lowest_first() -> None:
    digest = mrtd(image(ParameterArea(0x3000, 4), ParameterInsert(0x8000, 1, 4)))
    expected = hashlib.sha384(hand_add(0x8000) + hand_add(0x9000) + hand_add(0xA000)).digest()
    assert digest == expected


def test_directive_order_matters() -> None:
    a = image(PageData(0x1000, 1, data=b"a"), PageData(0x2000, 1, data=b"b"))
    b = image(PageData(0x2000, 1, data=b"b"), PageData(0x1000, 1, data=b"a"))
    assert mrtd(a) != mrtd(b)


def test_mask_selects_headers_and_td_shim_ignores_masks() -> None:
    snp = SupportedPlatform(2, 0, IGVM_PLATFORM_SEV_SNP, 1, 0)
    both = IgvmFile(
        [tdx_platform(1), snp],
        [],
        [
            PageData(0x1000, 3, data=PATTERN_PAGE),  # both platforms
            PageData(0x5000, 2, data=b"snp only"),  # SNP only
            PageData(0xFFFFF000, 1, IGVM_PAGE_FLAG_UNMEASURED),
        ],
    )
    tdx = hashlib.sha384(hand_page(0x1000, PATTERN_PAGE) + hand_add(0xFFFFF000)).digest()
    assert mrtd(both) == tdx
    assert mrtd(both, mask=1) == tdx
    snp_view = hashlib.sha384(
        hand_page(0x1000, PATTERN_PAGE) + hand_page(0x5000, b"snp only".ljust(4096, b"\0"))
    ).digest()
    assert mrtd(both, mask=2) == snp_view
    everything = hashlib.sha384(
        hand_page(0x1000, PATTERN_PAGE)
        + hand_page(0x5000, b"snp only".ljust(4096, b"\0"))
        + hand_add(0xFFFFF000)
    ).digest()
    assert mrtd(both, variant="td-shim") == everything


def test_no_tdx_platform_needs_an_explicit_mask() -> None:
    snp_only = IgvmFile(
        [SupportedPlatform(1, 0, IGVM_PLATFORM_SEV_SNP, 1, 0)], [], [PageData(0, 1)]
    )
    with pytest.raises(IgvmError, match="no TDX SUPPORTED_PLATFORM"):
        mrtd(snp_only)
    assert mrtd(snp_only, mask=1).hex() == V2
    with pytest.raises(ValueError, match="unknown MRTD variant"):
        mrtd(snp_only, mask=1, variant="tdvf")


def test_accumulator_operations_match_the_module_view() -> None:
    one_by_one = MrtdAccumulator()
    one_by_one.page_add(0x1000)
    for k in range(16):
        one_by_one.mr_extend(0x1000 + 256 * k, PATTERN_PAGE[256 * k : 256 * (k + 1)])
    fast = MrtdAccumulator()
    fast.page_add(0x1000)
    fast.extend_page(0x1000, PATTERN_PAGE)
    combined = MrtdAccumulator(background=True)
    combined.add_measured_page(0x1000, PATTERN_PAGE)
    assert one_by_one.digest().hex() == fast.digest().hex() == combined.digest().hex() == V3
    assert (one_by_one.page_adds, one_by_one.extends) == (1, 16) == (fast.page_adds, fast.extends)
    with pytest.raises(RuntimeError, match="finalized"):
        combined.page_add(0)
    with pytest.raises(ValueError, match="256"):
        MrtdAccumulator().mr_extend(0, b"short")
    with pytest.raises(ValueError, match="4096"):
        MrtdAccumulator().extend_page(0, b"short")


def test_many_pages_through_batches_equal_the_hand_stream() -> None:
    pages = [(0x100000 + i * 4096, bytes([i % 251]) * 4096) for i in range(300)]
    accumulator = MrtdAccumulator()
    for gpa, data in pages:
        accumulator.add_measured_page(gpa, data)
    hand = hashlib.sha384(b"".join(hand_page(gpa, data) for gpa, data in pages)).digest()
    assert accumulator.digest() == hand
    built = image(*(PageData(gpa, 1, data=data) for gpa, data in pages))
    assert mrtd(built) == hand


def test_measurement_log_explains_each_directive() -> None:
    records = list(measurement_log(v4_image()))
    assert [(r.index, r.page_adds, r.extends) for r in records] == [
        (1, 0, 0),
        (2, 1, 16),
        (3, 1, 16),
        (4, 1, 0),
        (5, 0, 0),
        (6, 1, 0),
    ]
    assert records[-1].mrtd_after.hex() == V4_MRTD
    assert records[1].contribution.hex() == V3
    assert "shared" in records[4].note and records[4].contribution == b""


def test_rtmr_replay_chains_sha384() -> None:
    events = [hashlib.sha384(b"event %d" % i).digest() for i in range(3)]
    expected = bytes(48)
    for event in events:
        expected = hashlib.sha384(expected + event).digest()
    assert rtmr_replay(events) == expected
    assert rtmr_replay([]) == bytes(48)
    start = b"\x11" * 48
    assert rtmr_replay(events[:1], start) == hashlib.sha384(start + events[0]).digest()
    rtmrs = rtmr_predict([(0, events[0]), (2, events[1]), (0, events[2])])
    assert rtmrs[0] == rtmr_replay([events[0], events[2]])
    assert rtmrs[2] == rtmr_replay([events[1]]) and rtmrs[1] == rtmrs[3] == bytes(48)
    with pytest.raises(ValueError, match="48"):
        rtmr_replay([b"short"])
    with pytest.raises(ValueError, match="index 4"):
        rtmr_predict([(4, events[0])])
