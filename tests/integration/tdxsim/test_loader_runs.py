"""The loader's batched page runs: same MRTD, contents and page state as page-by-page loading."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from igvm import format as igvm_format
from igvm import headers, measure
from tdxsim.host.igvm_loader import load_igvm
from tdxsim.module.build import BuildError, TdBuilder, TdConfig
from tdxsim.module.memory import PageState

PAGE = 0x1000
TDX_MASK = 1
UNMEASURED, SHARED = 2, 4
RUN_PAGES = 150  # longer than one batch of the loader (64 pages)


def _page(seed: int) -> bytes:
    return random.Random(seed).randbytes(PAGE)


def test_long_runs_across_adjacent_regions_match_offline_mrtd(tmp_path: Path) -> None:
    base = 0x100000
    directives: list[headers.DirectiveHeader] = [
        headers.PageData(base + i * PAGE, TDX_MASK, data=_page(i)) for i in range(RUN_PAGES)
    ]
    directives += [
        headers.PageData(base + (RUN_PAGES + i) * PAGE, TDX_MASK, flags=UNMEASURED, data=_page(-i))
        for i in range(70)
    ]
    directives.append(headers.PageData(0x800000, TDX_MASK, flags=SHARED))
    path = tmp_path / "runs.igvm"
    path.write_bytes(
        igvm_format.IgvmFile(
            platforms=[headers.SupportedPlatform(TDX_MASK, 0, 3, 1, 1 << 47)],
            directives=directives,
        ).to_bytes()
    )
    # Two adjacent RAM regions split the measured run in the middle.
    split = base + 100 * PAGE
    ram = [(0, split), (split, 0x1000000 - split)]
    builder = load_igvm(path, ram=ram)
    module = builder.finalize()
    assert module.td.mrtd == measure.mrtd(path)
    for i in range(RUN_PAGES):
        gpa = base + i * PAGE
        assert module.memory.read(gpa, PAGE) == _page(i), f"page at {gpa:#x}"
        assert module.memory.page_state(gpa) == PageState.MAPPED
    assert module.memory.page_state(base + (RUN_PAGES + 69) * PAGE) == PageState.MAPPED


def test_duplicate_page_inside_a_run_is_refused_naming_its_gpa() -> None:
    builder = TdBuilder(TdConfig(ram=[(0, 0x400000)]))
    builder.add_page_run(0x10000, [_page(1)], measured=True)
    pages = [_page(i) for i in range(8)]
    with pytest.raises(BuildError, match="0x10000"):
        builder.add_page_run(0x10000 - 3 * PAGE, pages, measured=True)
    # The three pages before the duplicate were added, as page-by-page PAGE.ADD would have.
    for i in range(3):
        assert builder.memory.page_state(0x10000 - (3 - i) * PAGE) == PageState.MAPPED
    assert builder.memory.read(0x10000, PAGE) == _page(1)
