"""The host VMM's GHCI sub-functions, valid and invalid arguments, with the test acting as L1."""

from __future__ import annotations

import struct

import pytest

from tdxdefs.tdcall import PAGE_SIZE, TDX_SUCCESS, Leaf
from tdxdefs.tdvmcall import (
    SERVICE_STATUS_UNSUPPORTED,
    TDVMCALL_ALIGN_ERROR,
    TDVMCALL_OPERAND_INVALID,
    TDVMCALL_RETRY,
    TDVMCALL_SUCCESS,
    Tdvmcall,
)
from tdxdefs.tdvmcall import ServiceBufferHeader as Header
from tdxsim.attestation.quoting import (
    GET_QUOTE_DEFAULT_BUFFER_SIZE,
    GET_QUOTE_ERROR,
    decode_get_quote_response,
)
from tdxsim.host.services import (
    LOG_KEEP,
    UART_BASE,
    UART_LSR,
    UART_LSR_THR_EMPTY,
    ModuleControl,
)
from tdxsim.host.shared_memory import HostAccessDenied
from tdxsim.module.build import TdBuilder, TdConfig
from tdxsim.module.host_interface import TdExitKind
from tdxsim.module.memory import PageState
from tdxsim.testing import TdHarness
from tests.support.host_td import BUF, REPORT, SHARED_BIT, HostTd
from verifier.quote import verify_quote


@pytest.fixture
def td() -> HostTd:
    return HostTd()


# --- MapGPA ------------------------------------------------------------------------------------
def test_map_gpa_to_shared_and_back(td: HostTd) -> None:
    out = td.vmcall(Tdvmcall.MAP_GPA, r12=BUF | SHARED_BIT, r13=2 * PAGE_SIZE)
    assert out.r10 == TDVMCALL_SUCCESS
    assert td.h.memory.page_state(BUF) == PageState.NOT_PRESENT
    td.shared.write(BUF | SHARED_BIT, b"from host")
    assert td.h.read(BUF | SHARED_BIT, 9) == b"from host"  # L1 sees what the host wrote
    out = td.vmcall(Tdvmcall.MAP_GPA, r12=BUF, r13=2 * PAGE_SIZE)
    assert out.r10 == TDVMCALL_SUCCESS
    assert td.h.memory.page_state(BUF) == PageState.PENDING  # L1 must accept it again
    assert not td.shared.is_mapped(BUF | SHARED_BIT)


def test_map_gpa_in_chunks_answers_retry_with_resume_gpa() -> None:
    td = HostTd(chunk=1)
    out = td.vmcall(Tdvmcall.MAP_GPA, r12=BUF | SHARED_BIT, r13=3 * PAGE_SIZE)
    assert out.r10 == TDVMCALL_RETRY and out.r11 == (BUF | SHARED_BIT) + PAGE_SIZE
    td.map_shared(BUF + PAGE_SIZE, 2 * PAGE_SIZE)
    assert all(td.shared.is_mapped((BUF + i * PAGE_SIZE) | SHARED_BIT) for i in range(3))


@pytest.mark.parametrize(
    ("gpa", "length", "status"),
    [
        (BUF | SHARED_BIT | 0x10, PAGE_SIZE, TDVMCALL_ALIGN_ERROR),
        (BUF | SHARED_BIT, 100, TDVMCALL_ALIGN_ERROR),
        (BUF | SHARED_BIT, 0, TDVMCALL_OPERAND_INVALID),
        (0x4000000 | SHARED_BIT, PAGE_SIZE, TDVMCALL_OPERAND_INVALID),  # not RAM
        (0x3FF000 | SHARED_BIT, 2 * PAGE_SIZE, TDVMCALL_OPERAND_INVALID),  # runs off RAM
        (1 << 48, PAGE_SIZE, TDVMCALL_OPERAND_INVALID),  # beyond GPAW
    ],
)
def test_map_gpa_rejects_bad_ranges(td: HostTd, gpa: int, length: int, status: int) -> None:
    out = td.vmcall(Tdvmcall.MAP_GPA, r12=gpa, r13=length)
    assert out.r10 == status
    assert td.h.memory.page_state(BUF) == PageState.MAPPED  # nothing converted


# --- GetQuote ----------------------------------------------------------------------------------
def test_get_quote_returns_a_quote_that_verifies(td: HostTd) -> None:
    td.quote_request(b"\x5a" * 64)
    out = td.get_quote()
    assert out.r10 == TDVMCALL_SUCCESS
    quote = decode_get_quote_response(td.buffer())
    parsed = verify_quote(quote, td.att.quoting.trusted_root_der)
    assert parsed.body.reportdata == b"\x5a" * 64
    assert parsed.body.mrtd == td.h.td.mrtd


def test_get_quote_with_garbage_buffer_answers_error_status(td: HostTd) -> None:
    td.map_shared(BUF, GET_QUOTE_DEFAULT_BUFFER_SIZE)
    td.h.write(BUF | SHARED_BIT, struct.pack("<QQII", 1, 0, 5000, 0) + b"junk")
    assert td.get_quote().r10 == TDVMCALL_SUCCESS
    assert struct.unpack_from("<Q", td.buffer(), 8)[0] == GET_QUOTE_ERROR


def test_get_quote_refuses_bad_buffers(td: HostTd) -> None:
    td.quote_request()
    size = GET_QUOTE_DEFAULT_BUFFER_SIZE
    assert (
        td.vmcall(Tdvmcall.GET_QUOTE, r12=(BUF | SHARED_BIT) + 8, r13=size).r10
        == TDVMCALL_ALIGN_ERROR
    )
    assert (
        td.vmcall(Tdvmcall.GET_QUOTE, r12=BUF | SHARED_BIT, r13=8).r10 == TDVMCALL_OPERAND_INVALID
    )
    assert td.vmcall(Tdvmcall.GET_QUOTE, r12=REPORT, r13=size).r10 == TDVMCALL_OPERAND_INVALID
    unconverted = 0x180000 | SHARED_BIT
    assert td.vmcall(Tdvmcall.GET_QUOTE, r12=unconverted, r13=size).r10 == TDVMCALL_OPERAND_INVALID
    # three pages where only two are shared: the host does not read past what L1 converted
    assert (
        td.vmcall(Tdvmcall.GET_QUOTE, r12=BUF | SHARED_BIT, r13=size + PAGE_SIZE).r10
        == TDVMCALL_OPERAND_INVALID
    )
    assert not td.host.log.quotes


# --- SetupEventNotifyInterrupt -----------------------------------------------------------------
def test_notify_vector_is_posted_when_the_quote_is_ready(td: HostTd) -> None:
    assert td.vmcall(Tdvmcall.SETUP_EVENT_NOTIFY_INTERRUPT, r12=0x40).r10 == TDVMCALL_SUCCESS
    td.quote_request()
    assert td.h.td.vcpus[0].l1_rvi == 0
    td.get_quote()
    assert td.h.td.vcpus[0].l1_rvi == 0x40
    assert list(td.host.log.injected) == [(0, 0x40)]


@pytest.mark.parametrize("vector", [0, 31, 256, 1 << 63])
def test_notify_vector_outside_32_to_255_is_refused(td: HostTd, vector: int) -> None:
    out = td.vmcall(Tdvmcall.SETUP_EVENT_NOTIFY_INTERRUPT, r12=vector)
    assert out.r10 == TDVMCALL_OPERAND_INVALID
    assert td.host.notify_vector is None


# --- IO and MMIO -------------------------------------------------------------------------------
def test_io_reaches_the_debug_uart(td: HostTd) -> None:
    for ch in b"hi":
        assert td.vmcall(Tdvmcall.IO, r12=1, r13=1, r14=UART_BASE, r15=ch | 0x100).r10 == 0
    assert bytes(td.host.uart.output) == b"hi"  # data masked to the access size
    out = td.vmcall(Tdvmcall.IO, r12=1, r13=0, r14=UART_LSR)
    assert out.r10 == TDVMCALL_SUCCESS and out.r11 == UART_LSR_THR_EMPTY
    out = td.vmcall(Tdvmcall.IO, r12=2, r13=0, r14=0x80)  # nothing there: all ones
    assert out.r10 == TDVMCALL_SUCCESS and out.r11 == 0xFFFF


@pytest.mark.parametrize(
    ("size", "direction", "port"),
    [(3, 0, 0x80), (8, 0, 0x80), (1, 2, 0x80), (1, 0, 0x10000), (4, 0, 0xFFFE)],
)
def test_io_rejects_bad_operands(td: HostTd, size: int, direction: int, port: int) -> None:
    out = td.vmcall(Tdvmcall.IO, r12=size, r13=direction, r14=port, r15=0x41)
    assert out.r10 == TDVMCALL_OPERAND_INVALID


class Register:
    """A 64-bit scratch register device."""

    def __init__(self) -> None:
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        return self.value >> (8 * offset)

    def write(self, offset: int, size: int, value: int) -> None:
        self.value = value << (8 * offset)


def test_mmio_on_a_shared_device(td: HostTd) -> None:
    dev = Register()
    base = 0xFEB00000 | SHARED_BIT
    td.host.attach_mmio(base, PAGE_SIZE, dev)
    assert td.vmcall(Tdvmcall.REQUEST_MMIO, r12=8, r13=1, r14=base, r15=0x1122334455667788).r10 == 0
    out = td.vmcall(Tdvmcall.REQUEST_MMIO, r12=4, r13=0, r14=base + 4)
    assert out.r10 == TDVMCALL_SUCCESS and out.r11 == 0x11223344


@pytest.mark.parametrize(
    ("size", "gpa", "status"),
    [
        (3, 0xFEB00000 | SHARED_BIT, TDVMCALL_OPERAND_INVALID),
        (4, 0xFEB00002 | SHARED_BIT, TDVMCALL_ALIGN_ERROR),
        (4, 0xFEB00000, TDVMCALL_OPERAND_INVALID),  # private GPA: not a shared device
        (4, 0xFEC00000 | SHARED_BIT, TDVMCALL_OPERAND_INVALID),  # no device there
    ],
)
def test_mmio_rejects_bad_operands(td: HostTd, size: int, gpa: int, status: int) -> None:
    td.host.attach_mmio(0xFEB00000 | SHARED_BIT, PAGE_SIZE, Register())
    assert td.vmcall(Tdvmcall.REQUEST_MMIO, r12=size, r13=0, r14=gpa).r10 == status


# --- HLT, ReportFatalError, Service, unknown calls --------------------------------------------
def test_hlt(td: HostTd) -> None:
    assert td.vmcall(Tdvmcall.HLT, r12=0).r10 == TDVMCALL_SUCCESS
    assert td.vmcall(Tdvmcall.HLT, r12=1).r10 == TDVMCALL_SUCCESS
    assert td.vmcall(Tdvmcall.HLT, r12=2).r10 == TDVMCALL_OPERAND_INVALID
    assert td.host.log.halts == 2


def test_report_fatal_error_with_message(td: HostTd) -> None:
    td.map_shared(BUF, PAGE_SIZE)
    td.h.write(BUF | SHARED_BIT, b"L1 gave up: no memory\0trailing")
    out = td.vmcall(Tdvmcall.REPORT_FATAL_ERROR, r12=(1 << 63) | 0x1234, r13=BUF | SHARED_BIT)
    assert out.r10 == TDVMCALL_SUCCESS
    assert td.host.log.fatal is not None
    assert td.host.log.fatal.code == 0x1234
    assert td.host.log.fatal.message == b"L1 gave up: no memory"


def test_report_fatal_error_with_private_message_gpa_is_refused(td: HostTd) -> None:
    td.h.write(REPORT, b"private secret\0")
    out = td.vmcall(Tdvmcall.REPORT_FATAL_ERROR, r12=(1 << 63) | 7, r13=REPORT)
    assert out.r10 == TDVMCALL_OPERAND_INVALID
    assert td.host.log.fatal is None
    assert "0x110000" in td.host.log.refused[0]


def test_service_with_unknown_guid_is_unsupported(td: HostTd) -> None:
    td.map_shared(BUF, 2 * PAGE_SIZE)
    guid = bytes(range(16))
    cmd, rsp = BUF | SHARED_BIT, (BUF + PAGE_SIZE) | SHARED_BIT
    td.h.write(cmd, Header.STRUCT.pack(guid, Header.SIZE + 4, 0) + b"ping")
    td.h.write(rsp, Header.STRUCT.pack(bytes(16), PAGE_SIZE, 0xFFFF))
    out = td.vmcall(Tdvmcall.SERVICE, r12=cmd, r13=rsp)
    assert out.r10 == TDVMCALL_SUCCESS
    assert Header.STRUCT.unpack(td.h.read(rsp, Header.SIZE)) == (
        guid,
        Header.SIZE,
        SERVICE_STATUS_UNSUPPORTED,
    )


def test_service_rejects_bad_buffers(td: HostTd) -> None:
    td.map_shared(BUF, 2 * PAGE_SIZE)
    cmd, rsp = BUF | SHARED_BIT, (BUF + PAGE_SIZE) | SHARED_BIT
    td.h.write(cmd, Header.STRUCT.pack(bytes(16), 3 * PAGE_SIZE, 0))  # past the shared pages
    td.h.write(rsp, Header.STRUCT.pack(bytes(16), PAGE_SIZE, 0))
    assert td.vmcall(Tdvmcall.SERVICE, r12=cmd, r13=rsp).r10 == TDVMCALL_OPERAND_INVALID
    assert td.vmcall(Tdvmcall.SERVICE, r12=cmd + 8, r13=rsp).r10 == TDVMCALL_ALIGN_ERROR
    assert td.vmcall(Tdvmcall.SERVICE, r12=REPORT, r13=rsp).r10 == TDVMCALL_OPERAND_INVALID
    td.h.write(cmd, Header.STRUCT.pack(bytes(16), 4, 0))  # shorter than its own header
    assert td.vmcall(Tdvmcall.SERVICE, r12=cmd, r13=rsp).r10 == TDVMCALL_OPERAND_INVALID


@pytest.mark.parametrize(("r10", "sub"), [(0, 0x99), (0, Tdvmcall.CPUID), (1, Tdvmcall.HLT)])
def test_unknown_or_vendor_calls_are_refused(td: HostTd, r10: int, sub: int) -> None:
    out = td.vmcall(sub, r10=r10, r12=0)
    assert out.r10 == TDVMCALL_OPERAND_INVALID
    assert td.host.log.halts == 0


def test_only_exposed_registers_reach_the_host(td: HostTd) -> None:
    out = td.h.tdcall(Leaf.VP_VMCALL, rcx=0x1C00, r10=0, r11=Tdvmcall.HLT, r12=0, r13=0x77)
    assert out.r10 == TDVMCALL_SUCCESS and out.r13 == 0x77  # R13 was not exposed, kept by L1


# --- TD exits ------------------------------------------------------------------------------------
def test_accept_of_a_missing_page_is_fixed_by_the_host_with_page_aug() -> None:
    builder = TdBuilder(TdConfig(ram=[(0, 0x400000)]), strict=True)
    builder.add_vcpu()
    builder.page_aug(0)
    td = HostTd(harness=TdHarness(builder, builder.finalize()))
    assert td.h.memory.page_state(0x300000) == PageState.NOT_PRESENT
    assert td.h.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=0x300000).rax == TDX_SUCCESS
    assert td.h.memory.page_state(0x300000) == PageState.MAPPED
    assert [e.kind for e in td.host.log.exits] == [TdExitKind.EPT_VIOLATION]
    assert td.h.tdcall(Leaf.MEM_PAGE_ACCEPT, rcx=0x5000000).rax != TDX_SUCCESS  # not RAM


def test_host_page_aug_refuses_pages_that_are_not_free_ram() -> None:
    builder = TdBuilder(TdConfig(ram=[(0, 0x400000)]), strict=True)
    builder.add_vcpu()
    builder.page_add(0x1000, b"added")
    module = builder.finalize()
    module.host_convert_to_shared(0x2000)
    for gpa, state in ((0x1000, PageState.MAPPED), (0x2000, PageState.NOT_PRESENT)):
        assert not module.host_page_aug(gpa)  # present, or mapped shared: nothing changes
        assert module.memory.page_state(gpa) == state
    assert not module.host_page_aug(0x5000000)  # not RAM
    assert module.host_page_aug(0x3123)  # any GPA in the page: the whole page goes pending
    assert module.memory.page_state(0x3000) == PageState.PENDING
    assert not module.host_page_aug(0x3000)  # already pending
    assert ModuleControl(module).page_aug(0x4000)  # the in-process host's path is the same
    assert module.memory.page_state(0x4000) == PageState.PENDING


def test_host_view_shares_the_module_s_map_of_shared_pages(td: HostTd) -> None:
    """The in-process host reads `TdMemory.shared` itself: pages mapped shared without the host
    (the loader, the module) are the host's to touch, and unmapped ones are not."""
    td.h.module.host_convert_to_shared(BUF)
    assert td.shared.is_mapped(BUF | SHARED_BIT)
    td.shared.write(BUF | SHARED_BIT, b"host")
    td.h.module.host_convert_to_private(BUF)
    with pytest.raises(HostAccessDenied, match="not converted to shared"):
        td.shared.read(BUF | SHARED_BIT, 4)


def test_the_host_log_stays_bounded_over_a_long_run(td: HostTd) -> None:
    for _ in range(LOG_KEEP + 10):
        td.vmcall(Tdvmcall.HLT, r12=0)
    assert len(td.host.log.calls) == LOG_KEEP and td.host.log.halts == LOG_KEEP + 10
