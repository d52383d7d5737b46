"""The host VMM touches shared memory only, and bad input from either side breaks nothing."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tdxdefs.tdcall import PAGE_SIZE
from tdxdefs.tdvmcall import TDVMCALL_OPERAND_INVALID, TDVMCALL_SUCCESS, Tdvmcall
from tdxsim.host.channel import (
    CONVERT_FORMAT,
    EXTEND_FORMAT,
    FINALIZE_FORMAT,
    HEADER,
    REPLY_FORMAT,
    MsgType,
)
from tdxsim.host.l1_image import build_l1_image
from tdxsim.host.shared_memory import HostAccessDenied
from tdxsim.host.td_process import CHUNKS_PER_PAGE
from tdxsim.host.vmm import HostCallRefused, Vmm, simulated_platform
from tests.support.host_td import BUF, SHARED_BIT, HostTd

SECRET = b"L1 private key material"
PRIVATE = 0x120000
L1_MIN = Path(__file__).parents[2] / "integration" / "tdxsim" / "l1_min"
MAC_KEY, QUOTING = simulated_platform(b"test_host_isolation")


def test_host_cannot_read_a_private_page() -> None:
    td = HostTd()
    td.h.write(PRIVATE, SECRET)
    with pytest.raises(HostAccessDenied, match=f"{PRIVATE:#x}.*private GPA"):
        td.shared.read(PRIVATE, len(SECRET))
    with pytest.raises(HostAccessDenied, match="not converted to shared"):
        td.shared.read(PRIVATE | SHARED_BIT, len(SECRET))  # the shared alias is not mapped
    with pytest.raises(HostAccessDenied):
        td.shared.write(PRIVATE, b"x")
    assert td.h.read(PRIVATE, len(SECRET)) == SECRET


def test_a_range_crossing_into_private_memory_is_denied() -> None:
    td = HostTd()
    td.map_shared(BUF, PAGE_SIZE)
    td.h.write(BUF + PAGE_SIZE, SECRET)  # the next page stays private
    with pytest.raises(HostAccessDenied, match=f"{(BUF + PAGE_SIZE) | SHARED_BIT:#x}"):
        td.shared.read(BUF | SHARED_BIT, 2 * PAGE_SIZE)


def test_conversion_to_shared_does_not_leak_private_contents() -> None:
    td = HostTd()
    td.h.write(BUF, SECRET)
    td.map_shared(BUF, PAGE_SIZE)
    assert td.shared.read(BUF | SHARED_BIT, PAGE_SIZE) == bytes(PAGE_SIZE)


def test_tdvmcalls_pointing_at_private_memory_neither_read_nor_write_it() -> None:
    td = HostTd()
    td.h.write(PRIVATE, SECRET)
    for sub, regs in (
        (Tdvmcall.GET_QUOTE, {"r12": PRIVATE, "r13": PAGE_SIZE}),
        (Tdvmcall.SERVICE, {"r12": PRIVATE, "r13": PRIVATE}),
        (Tdvmcall.REPORT_FATAL_ERROR, {"r12": 1 << 63, "r13": PRIVATE}),
    ):
        assert td.vmcall(sub, **regs).r10 == TDVMCALL_OPERAND_INVALID
    assert td.h.read(PRIVATE, len(SECRET)) == SECRET
    assert td.host.log.fatal is None and not td.host.log.quotes
    assert all("denied" in line for line in td.host.log.refused)


def test_register_values_of_every_width_never_crash_the_host() -> None:
    td = HostTd()
    hostile = [0, 1, PAGE_SIZE - 1, SHARED_BIT, (1 << 64) - 1, 1 << 63, SHARED_BIT | 0xFFF]
    for sub in Tdvmcall:
        for value in hostile:
            out = td.vmcall(sub, r12=value, r13=value, r14=value, r15=value)
            assert out.r10 in (TDVMCALL_SUCCESS, TDVMCALL_OPERAND_INVALID, 1, 1 << 63 | 2)


@pytest.fixture
def vmm() -> Iterator[Vmm]:
    with Vmm(QUOTING) as v:
        v.create([(0, 8 << 20)], mac_key=MAC_KEY)
        yield v


def test_host_vmm_gpa_gate_denies_private_gpas_of_a_separate_td_process(vmm: Vmm) -> None:
    """The host process's VMM view (`Vmm.shared`) refuses the private GPA of an added L1 page
    and its unconverted shared alias. This is the VMM's GPA access gate only: the host process
    maps the whole memfd, so nothing stops its other code from reading private bytes (on
    hardware, encryption with the TD's key does that)."""
    vmm.load_l1_image(build_l1_image([L1_MIN], "l1_min.main:entry"), 0x100000)
    assert vmm.shared is not None
    for gpa in (0x100000, 0x100000 | SHARED_BIT):
        with pytest.raises(HostAccessDenied):
            vmm.shared.read(gpa, 16)


def test_malformed_host_calls_are_refused_and_the_td_process_survives(vmm: Vmm) -> None:
    sock = vmm.channel.sock
    for raw in (
        b"\x01",
        HEADER.pack(999, 0, 0),
        HEADER.pack(MsgType.ADD_PAGE, 0, 50) + b"x",
        HEADER.pack(MsgType.EXTEND, 0, 2) + b"ab",
    ):
        sock.send(raw)
        with pytest.raises(HostCallRefused):
            _expect_refusal(vmm)
    with pytest.raises(HostCallRefused, match="more than a page"):
        vmm.call(MsgType.ADD_PAGE, struct.pack("<Q", 0x1000) + bytes(PAGE_SIZE + 1))
    vmm.add_page(0x1000, b"still alive")  # the TD process still serves correct calls
    assert vmm.proc.poll() is None


def _expect_refusal(vmm: Vmm) -> None:
    """Read the TD process's answer to a raw message; raise HostCallRefused if it refused."""
    reply = vmm.recv(time.monotonic() + 5)
    (status,) = reply.fields(REPLY_FORMAT)
    if reply.type == MsgType.REPLY and status:
        raise HostCallRefused(reply.rest(REPLY_FORMAT).decode())


def test_convert_of_a_bad_range_is_refused_without_killing_the_td(vmm: Vmm) -> None:
    ram_end = 8 << 20
    for gpa, npages in ((ram_end - PAGE_SIZE, 2), (0x1000, 0), (ram_end, 1), (0x1001, 1)):
        with pytest.raises(HostCallRefused):
            vmm.call(MsgType.CONVERT, CONVERT_FORMAT.pack(gpa, npages, 1))
    vmm.add_page(0x1000, b"still alive")
    assert vmm.proc.poll() is None


def test_l1_image_chunks_each_measured_once_or_finalize_refuses(vmm: Vmm) -> None:
    """Sixteen MR.EXTENDs of one chunk do not stand for the sixteen chunks of the page."""
    image = build_l1_image([L1_MIN], "l1_min.main:entry")
    gpa = 0x100000
    for offset in range(0, len(image), PAGE_SIZE):
        page = image[offset : offset + PAGE_SIZE]
        vmm.call(MsgType.ADD_PAGE, struct.pack("<Q", gpa + offset) + page)
        for _ in range(CHUNKS_PER_PAGE):  # always chunk 0 of the page
            vmm.call(MsgType.EXTEND, EXTEND_FORMAT.pack(gpa + offset, 1))
    with pytest.raises(HostCallRefused, match="not fully measured"):
        vmm.call(MsgType.FINALIZE, FINALIZE_FORMAT.pack(gpa, len(image)))
    assert vmm.proc.poll() is None
