"""L1 memory: acceptance, private access discipline, MapGPA with bounded RETRY, shared copies."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from svsm.memory import MAPGPA_MAX_RETRIES, PAGE_SIZE, L1MemoryError
from svsm.tdcall import TdcallError
from tdxdefs.tdvmcall import TdvmcallStatus
from tdxsim.host.faults import FaultSet
from tdxsim.module.memory import PageState
from tdxsim.module.registers import Regs
from tests.support.svsm_td import Td

WORK = 0x200000
BUF = 0x400000


def test_accept_then_private_read_write(td: Td) -> None:
    td.memory.accept(WORK, 0x200000)
    assert td.memory.accept_calls == 1  # one 2M ACCEPT where the host mapped 2M
    assert td.harness.memory.page_state(WORK + 0x1000) == PageState.MAPPED
    td.memory.write(WORK + 8, b"l1 data")
    assert td.memory.read(WORK + 8, 7) == b"l1 data"
    td.memory.accept(WORK + PAGE_SIZE, PAGE_SIZE)  # already accepted: success class, no error
    assert td.memory.accept_calls == 2


def test_accept_of_4k_inside_a_host_2m_mapping_accepts_the_block(td: Td) -> None:
    td.memory.accept(WORK + 3 * PAGE_SIZE, PAGE_SIZE)
    assert td.memory.is_accepted(WORK, 0x200000)
    assert not td.memory.is_accepted(WORK + 0x200000, 1)


def test_unaccepted_private_memory_is_never_touched(td: Td) -> None:
    td.memory.accept(WORK, 0x200000)
    with pytest.raises(L1MemoryError, match=f"GPA {WORK + 0x200000:#x} .* not accepted"):
        td.memory.read(WORK + 0x200000, 1)
    with pytest.raises(L1MemoryError, match="not accepted"):
        td.memory.write(WORK + 0x200000 - 2, b"xyz")  # straddles into the pending block
    assert td.harness.memory.page_state(WORK + 0x200000) == PageState.PENDING


def test_accept_outside_ram_names_the_gpa(td: Td) -> None:
    with pytest.raises(L1MemoryError, match="GPA 0x4000000 size 0x1000 is not inside"):
        td.memory.accept(0x4000000, PAGE_SIZE)


def test_accept_error_names_the_leaf_and_status(td: Td) -> None:
    with pytest.raises(TdcallError, match=r"TDG\.MEM\.PAGE\.ACCEPT failed: RAX = .*GPA 0x201000"):
        td.tdcall.accept(WORK + PAGE_SIZE, 1)  # a 2M accept of a GPA that is not 2M aligned


def test_share_in_chunks_follows_the_resume_gpa(make_td: Callable[..., Td]) -> None:
    td = make_td(chunk=1)  # the host converts one page per MapGPA, answering RETRY for the rest
    buf = td.memory.share(BUF, 4 * PAGE_SIZE)
    assert buf.gpa == BUF | td.platform.shared_bit
    assert td.host.log.calls.count(0x10001) == 4
    indices = [td.harness.memory.page_index(BUF + i * PAGE_SIZE) for i in range(4)]
    assert all(i is not None and td.harness.memory.shared[i] for i in indices)


def test_share_survives_a_few_retries_without_progress(make_td: Callable[..., Td]) -> None:
    td = make_td(FaultSet.parse("mapgpa-retry=3"))
    td.memory.share(BUF, PAGE_SIZE)
    assert td.host.log.calls.count(0x10001) == 4


def test_mapgpa_retry_forever_is_bounded(make_td: Callable[..., Td]) -> None:
    td = make_td(FaultSet.parse("mapgpa-retry=always"))
    with pytest.raises(L1MemoryError, match=f"RETRY {MAPGPA_MAX_RETRIES + 1} times"):
        td.memory.share(BUF, PAGE_SIZE)
    assert td.host.log.calls.count(0x10001) == MAPGPA_MAX_RETRIES + 1


def test_resume_gpa_outside_the_range_is_refused(td: Td) -> None:
    real = td.host

    class Liar:
        def tdvmcall(self, regs: Regs) -> Regs:
            out = real.tdvmcall(regs)
            out.r10, out.r11 = TdvmcallStatus.RETRY, 0x123000  # resume somewhere else
            return out

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    td.harness.module.host = Liar()  # type: ignore[assignment]
    with pytest.raises(L1MemoryError, match=r"resume GPA 0x123000 \(R11\) outside"):
        td.memory.share(BUF, 2 * PAGE_SIZE)


def test_mapgpa_error_status_names_the_subfunction(make_td: Callable[..., Td]) -> None:
    td = make_td(FaultSet.parse("vmcall-status=align"))
    with pytest.raises(TdcallError, match="MAP_GPA failed: R10 = ALIGN_ERROR"):
        td.memory.share(BUF, PAGE_SIZE)


def test_snapshot_is_a_copy_the_host_cannot_change(td: Td) -> None:
    buf = td.memory.share(BUF, PAGE_SIZE)
    buf.write(0, b"request")
    copy = buf.snapshot()
    td.host.shared.write(buf.gpa, b"REWRITE")  # the host rewrites after the copy
    assert copy[:7] == b"request"
    assert buf.snapshot()[:7] == b"REWRITE"
    with pytest.raises(L1MemoryError, match="overruns"):
        buf.write(PAGE_SIZE - 1, b"ab")


def test_shared_range_is_no_longer_private(td: Td) -> None:
    td.memory.accept(BUF, 2 * PAGE_SIZE)
    td.memory.share(BUF, PAGE_SIZE)
    with pytest.raises(L1MemoryError, match="not accepted"):
        td.memory.read(BUF, 1)
    assert td.memory.read(BUF + PAGE_SIZE, 1) == b"\0"  # the rest stays accepted


def test_a_page_checked_before_it_was_shared_is_refused_after(td: Td) -> None:
    td.memory.accept(BUF, 2 * PAGE_SIZE)
    for _ in range(2):  # checked, then found again
        td.memory.write(BUF, b"private")
        assert td.memory.read(BUF, 7) == b"private"
    td.memory.share(BUF, PAGE_SIZE)
    with pytest.raises(L1MemoryError, match="not accepted"):
        td.memory.read(BUF, 7)
    with pytest.raises(L1MemoryError, match="is shared"):
        td.memory.write(BUF | td.memory.shared_bit, b"x")
    assert td.memory.read(BUF + PAGE_SIZE, 1) == b"\0"


def test_structures_go_to_and_come_from_accepted_private_memory_only(td: Td) -> None:
    layout = struct.Struct("<QH")
    td.memory.accept(WORK, 0x200000)
    td.memory.write_struct(WORK + 16, layout, 0x1122334455667788, 0xABCD)
    assert td.memory.read(WORK + 16, layout.size) == layout.pack(0x1122334455667788, 0xABCD)
    assert td.memory.read_struct(WORK + 16, layout) == (0x1122334455667788, 0xABCD)
    end = WORK + 0x200000 - 4  # the structure straddles into the pending block
    with pytest.raises(L1MemoryError, match=f"GPA {end:#x} .* not accepted"):
        td.memory.write_struct(end, layout, 1, 2)
    with pytest.raises(L1MemoryError, match="not accepted"):
        td.memory.read_struct(end, layout)
    assert td.harness.memory.page_state(WORK + 0x200000) == PageState.PENDING
    with pytest.raises(L1MemoryError, match="is shared"):
        td.memory.read_struct(WORK | td.platform.shared_bit, layout)


def test_every_region_and_page_resolves_to_its_own_place(make_td: Callable[..., Td]) -> None:
    extra = 0x10000000  # a second RAM region, far above the first
    td = make_td(extra_ram=((extra, 2 * PAGE_SIZE),))
    td.memory.accept(extra, 2 * PAGE_SIZE)
    td.memory.accept(WORK, 2 * PAGE_SIZE)
    for gpa, data in ((extra + PAGE_SIZE - 2, b"abcd"), (WORK + PAGE_SIZE - 2, b"wxyz")):
        td.memory.write(gpa, data)  # straddles two pages of its region
        assert td.harness.memory.read(gpa, 4) == data  # where the module sees it
        assert td.memory.read(gpa + 2, 2) == data[2:]
    assert td.harness.memory.read(extra, PAGE_SIZE - 2) == bytes(PAGE_SIZE - 2)
