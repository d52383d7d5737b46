"""L1's private-page allocator: contiguous aligned runs, zeroed pages, scrubbed frees, errors that
name the owner, and the regions boot keeps away from every L2."""

from __future__ import annotations

import pytest

from svsm.aliases import AliasError, AliasManager
from svsm.memory import PAGE_SIZE
from svsm.pages import PageAllocationError, PageAllocator
from tdxdefs.attributes import GpaAttr
from tests.support.svsm_td import Td

POOL = 0x200000
POOL_PAGES = 16


@pytest.fixture
def pool(td: Td) -> PageAllocator:
    allocator = PageAllocator(td.memory, POOL, POOL_PAGES * PAGE_SIZE)
    allocator.accept()
    return allocator


def test_runs_are_contiguous_aligned_and_disjoint(pool: PageAllocator) -> None:
    first = pool.allocate(1, "TDREPORT")
    second = pool.allocate(3, "L2 VM 1 support pages", l1_only=False)
    aligned = pool.allocate(2, "aligned", align=4 * PAGE_SIZE)
    assert (first, second) == (POOL, POOL + PAGE_SIZE)
    assert aligned % (4 * PAGE_SIZE) == 0 and aligned >= second + 3 * PAGE_SIZE
    assert pool.free_pages == POOL_PAGES - 6
    assert pool.owner_of(second + 2 * PAGE_SIZE) == "L2 VM 1 support pages"
    assert pool.owner_of(aligned + PAGE_SIZE) == "aligned"
    assert pool.owner_of(aligned + 2 * PAGE_SIZE) is None


def test_a_freed_run_is_scrubbed_before_its_next_owner(td: Td, pool: PageAllocator) -> None:
    secret = pool.allocate(2, "REPORTDATA")
    td.memory.write(secret + PAGE_SIZE - 4, b"L1 secret")
    pool.free(secret)
    again = pool.allocate(2, "L2 VM 2 support pages", l1_only=False)
    assert again == secret
    assert td.memory.read(again, 2 * PAGE_SIZE) == bytes(2 * PAGE_SIZE)


def test_frees_merge_so_a_large_run_fits_again(pool: PageAllocator) -> None:
    runs = [pool.allocate(4, f"run {i}") for i in range(4)]
    with pytest.raises(PageAllocationError, match=r"run 5: no run of 1 free page\(s\) .*\(0 of 16"):
        pool.allocate(1, "run 5")
    for gpa in runs:
        pool.free(gpa)
    assert pool.allocate(POOL_PAGES, "everything") == POOL


def test_bad_requests_are_named(pool: PageAllocator) -> None:
    with pytest.raises(PageAllocationError, match="free of GPA 0x201000: no allocation starts"):
        pool.free(POOL + PAGE_SIZE)
    gpa = pool.allocate(2, "twice")
    pool.free(gpa)
    with pytest.raises(PageAllocationError, match="no allocation starts there"):
        pool.free(gpa)
    with pytest.raises(PageAllocationError, match="huge: no run of 17"):
        pool.allocate(POOL_PAGES + 1, "huge")
    with pytest.raises(PageAllocationError, match=r"odd: 1 page.* aligned to 0x800: invalid"):
        pool.allocate(1, "odd", align=0x800)


def test_l1_only_pages_and_free_pages_can_never_be_aliased(td: Td, pool: PageAllocator) -> None:
    report = pool.allocate(1, "TDREPORT")
    support = pool.allocate(2, "L2 VM 1 support pages", l1_only=False)
    regions = pool.l1_regions()
    assert (report, PAGE_SIZE, "TDREPORT") in regions
    assert (support + 2 * PAGE_SIZE, (POOL_PAGES - 3) * PAGE_SIZE, "L1 page pool (free)") in regions
    aliases = AliasManager(td.tdcall, 1)
    for gpa, size, what in regions:
        aliases.reserve(gpa, size, what)
    aliases.grant(1, support, PAGE_SIZE, GpaAttr.R)  # what its owner shares stays grantable
    with pytest.raises(AliasError, match=f"GPA {report:#x} is L1's \\(TDREPORT\\)"):
        aliases.grant(1, report, PAGE_SIZE, GpaAttr.R)
    with pytest.raises(AliasError, match=r"is L1's \(L1 page pool \(free\)\)"):
        aliases.grant(1, POOL + 10 * PAGE_SIZE, PAGE_SIZE, GpaAttr.R | GpaAttr.W)
