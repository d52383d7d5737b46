"""Every fault-injection switch: parsing, and what L1 sees when the host misbehaves with it."""

from __future__ import annotations

import time

import pytest

from tdxdefs.tdcall import PAGE_SIZE, TDX_PENDING_INTERRUPT, Leaf
from tdxdefs.tdvmcall import (
    TDVMCALL_GPA_INUSE,
    TDVMCALL_OPERAND_INVALID,
    TDVMCALL_RETRY,
    TDVMCALL_SUCCESS,
    Tdvmcall,
)
from tdxsim.attestation.quoting import (
    GET_QUOTE_ERROR,
    GET_QUOTE_IN_FLIGHT,
    GetQuoteFormatError,
    decode_get_quote_response,
)
from tdxsim.host.faults import FOREVER, FaultSet, FaultSpecError, GetQuoteLength
from tdxsim.host.services import DEFAULT_STORM_VECTOR, UART_LSR
from tests.support.host_td import BUF, SHARED_BIT, HostTd
from verifier.errors import VerificationError
from verifier.quote import verify_quote


# --- parsing -------------------------------------------------------------------------------------
def test_parse_the_documented_example() -> None:
    faults = FaultSet.parse("getquote-status=error,irq-storm=100")
    assert faults == FaultSet(getquote_status=GET_QUOTE_ERROR, irq_storm=100)
    assert FaultSet.parse(faults.describe()) == faults


def test_parse_every_switch_and_round_trip() -> None:
    spec = (
        "vmcall-status=inuse, getquote-status=inflight, getquote-length=long, "
        "getquote-rewrite=5, mapgpa-retry=always, io-wide=1, irq-spurious=0x33, irq-storm=2"
    )
    faults = FaultSet.parse(spec)
    assert faults.vmcall_status == TDVMCALL_GPA_INUSE
    assert faults.getquote_status == GET_QUOTE_IN_FLIGHT
    assert faults.getquote_length == GetQuoteLength.LONG
    assert faults.mapgpa_retry == FOREVER and faults.io_wide and faults.irq_spurious == 0x33
    assert FaultSet.parse(faults.describe()) == faults
    assert FaultSet.parse("") == FaultSet() and not FaultSet().active


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("irq-strom=3", "irq-strom"),
        ("irq-storm", "expected name=value"),
        ("irq-storm=lots", "'lots' is not a number"),
        ("irq-spurious=300", "outside 0..255"),
        ("vmcall-status=0x1" + "0" * 17, "64 bits"),
    ],
)
def test_parse_errors_name_the_switch(spec: str, named: str) -> None:
    with pytest.raises(FaultSpecError, match=named):
        FaultSet.parse(spec)


# --- what L1 sees --------------------------------------------------------------------------------
def test_vmcall_status_overrides_every_successful_answer() -> None:
    td = HostTd(FaultSet.parse("vmcall-status=retry"))
    assert td.vmcall(Tdvmcall.HLT, r12=0).r10 == TDVMCALL_RETRY
    assert td.vmcall(Tdvmcall.HLT, r12=9).r10 == TDVMCALL_OPERAND_INVALID  # real errors stay errors


@pytest.mark.parametrize("value", ["error", "unavailable", "inflight", "0x1234"])
def test_getquote_status_error_reaches_l1_as_a_failed_buffer(value: str) -> None:
    td = HostTd(FaultSet.parse(f"getquote-status={value}"))
    td.quote_request()
    assert td.get_quote().r10 == TDVMCALL_SUCCESS
    with pytest.raises(GetQuoteFormatError, match="status"):
        decode_get_quote_response(td.buffer())


@pytest.mark.parametrize(
    ("value", "field"),
    [("long", "out_len"), ("short", "message length"), ("0xFFFFFFFF", "out_len")],
)
def test_getquote_length_lie_is_caught_by_the_decoder(value: str, field: str) -> None:
    td = HostTd(FaultSet.parse(f"getquote-length={value}"))
    td.quote_request()
    td.get_quote()
    with pytest.raises(GetQuoteFormatError, match=field):
        decode_get_quote_response(td.buffer())


def test_getquote_rewrite_changes_the_buffer_while_l1_reads_it() -> None:
    td = HostTd(FaultSet.parse("getquote-rewrite=3"))
    td.quote_request()
    td.get_quote()
    answered = td.host.log.quotes[0]
    verify_quote(decode_get_quote_response(answered), td.att.quoting.trusted_root_der)
    td.host.join_rewriters()
    later = td.buffer()
    assert later != answered  # a second read by L1 sees other bytes than the first
    with pytest.raises(VerificationError):
        verify_quote(decode_get_quote_response(later), td.att.quoting.trusted_root_der)


def test_mapgpa_retry_keeps_asking_to_retry_without_progress() -> None:
    td = HostTd(FaultSet.parse("mapgpa-retry=2"))
    start = BUF | SHARED_BIT
    for _ in range(2):
        out = td.vmcall(Tdvmcall.MAP_GPA, r12=start, r13=PAGE_SIZE)
        assert out.r10 == TDVMCALL_RETRY and out.r11 == start  # resume GPA: no progress
        assert not td.shared.is_mapped(start)
    assert td.vmcall(Tdvmcall.MAP_GPA, r12=start, r13=PAGE_SIZE).r10 == TDVMCALL_SUCCESS


def test_mapgpa_retry_always_never_completes() -> None:
    td = HostTd(FaultSet.parse("mapgpa-retry=always"))
    statuses = {
        td.vmcall(Tdvmcall.MAP_GPA, r12=BUF | SHARED_BIT, r13=PAGE_SIZE).r10 for _ in range(50)
    }
    assert statuses == {TDVMCALL_RETRY}  # an L1 must bound its retry loop


def test_io_wide_returns_bits_beyond_the_access_size() -> None:
    td = HostTd(FaultSet.parse("io-wide=1"))
    out = td.vmcall(Tdvmcall.IO, r12=1, r13=0, r14=UART_LSR)
    assert out.r11 > 0xFF and out.r11 & 0xFF == 0x60  # L1 must mask to the size it asked


def _vp_enter_sees_pending_interrupt(td: HostTd) -> bool:
    l2 = td.h.l2(vm=1)
    out = td.h.tdcall(Leaf.VP_ENTER, rcx=1 << 52, rdx=l2.state_gpa)
    return out.rax == TDX_PENDING_INTERRUPT


def test_irq_spurious_posts_a_vector_l1_never_asked_for() -> None:
    td = HostTd(FaultSet.parse("irq-spurious=0x33"))
    assert td.host.notify_vector is None
    td.vmcall(Tdvmcall.HLT, r12=0)
    assert td.h.td.vcpus[0].l1_rvi == 0x33
    assert _vp_enter_sees_pending_interrupt(td)  # L1 cannot enter L2 until it takes it
    td.h.module.l1_interrupt_taken(0)
    td.vmcall(Tdvmcall.HLT, r12=0)
    assert td.h.td.vcpus[0].l1_rvi == 0  # once only


def test_irq_storm_posts_at_every_return_for_the_count() -> None:
    td = HostTd(FaultSet.parse("irq-storm=3"))
    seen = []
    start = time.monotonic()
    for _ in range(5):
        td.vmcall(Tdvmcall.HLT, r12=0)
        seen.append(td.h.td.vcpus[0].l1_rvi)
        td.h.module.l1_interrupt_taken(0)
    assert seen == [DEFAULT_STORM_VECTOR] * 3 + [0, 0]
    assert time.monotonic() - start < 5


def test_irq_storm_uses_the_notification_vector_once_set_up() -> None:
    td = HostTd(FaultSet.parse("irq-storm=2"))
    td.vmcall(Tdvmcall.SETUP_EVENT_NOTIFY_INTERRUPT, r12=0x51)
    td.h.module.l1_interrupt_taken(0)
    td.vmcall(Tdvmcall.HLT, r12=0)
    assert td.h.td.vcpus[0].l1_rvi == 0x51
    assert _vp_enter_sees_pending_interrupt(td)
