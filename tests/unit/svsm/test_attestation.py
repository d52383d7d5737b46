"""TdxAttester against an honest and a lying host: quotes verify, lies give named errors."""

from __future__ import annotations

import contextlib
import hashlib
import re
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.attestation import (
    GETQUOTE_WAIT_MAX,
    AttestationBuffers,
    GetQuoteError,
    TdxAttester,
    decode_response,
)
from svsm.tdcall import TdcallError
from tdxdefs.getquote import QGS_BODY_OFFSET, QGS_MSG_OFFSET, GetQuoteHeader
from tdxsim.attestation.quoting import encode_get_quote_response
from tdxsim.host.faults import FaultSet
from tests.support.svsm_td import ATTESTATION, Td
from verifier.quote import verify_quote
from vtpm.attest import Attester, AttesterError

WORK = 0x200000
QUOTE_BUF, QUOTE_SIZE = 0x400000, 0x2000
REPORT_DATA = hashlib.sha384(b"svsm attester test").digest() + bytes(16)


def attester(td: Td, log: bytes = b"log") -> TdxAttester:
    td.memory.accept(WORK, 0x200000)
    buffers = AttestationBuffers(WORK, WORK + 0x1000, td.memory.share(QUOTE_BUF, QUOTE_SIZE))
    return TdxAttester(td.tdcall, td.memory, buffers, lambda: log)


def test_honest_host_gives_a_quote_that_verifies(td: Td) -> None:
    a = attester(td, b"the log")
    assert isinstance(a, Attester)
    quote = a.quote(REPORT_DATA)
    parsed = verify_quote(quote, ATTESTATION.quoting.trusted_root_der)
    assert parsed.body.reportdata == REPORT_DATA
    assert parsed.body.mrtd == td.harness.td.mrtd
    assert a.simulated  # the simulation's QE vendor ID is not Intel's
    assert a.event_log() == b"the log"
    assert a.waits == 0


@pytest.mark.parametrize(
    ("spec", "field", "text"),
    [
        ("getquote-status=error", "status", "0x8000000000000000 (host reports an error)"),
        ("getquote-status=unavailable", "status", "0x8000000000000001"),
        ("getquote-length=long", "out_len", "is outside"),
        ("getquote-length=short", "message length", "does not equal out_len"),
        ("getquote-length=0", "out_len", "0 is outside"),
    ],
)
def test_lying_host_gives_an_error_naming_the_field(
    make_td: Callable[..., Td], spec: str, field: str, text: str
) -> None:
    a = attester(make_td(FaultSet.parse(spec)))
    with pytest.raises(GetQuoteError, match=re.escape(text)) as info:
        a.quote(REPORT_DATA)
    assert info.value.field == field
    assert isinstance(info.value, AttesterError)  # manufacture stops on it


def test_quote_in_flight_forever_is_bounded(make_td: Callable[..., Td]) -> None:
    td = make_td(FaultSet.parse("getquote-status=inflight"))
    a = attester(td)
    with pytest.raises(GetQuoteError, match=f"still in flight after {GETQUOTE_WAIT_MAX} waits"):
        a.quote(REPORT_DATA)
    assert a.waits == GETQUOTE_WAIT_MAX
    assert td.host.log.halts == GETQUOTE_WAIT_MAX  # each wait was a HLT TDVMCALL to the host


def test_getquote_tdvmcall_failure_names_the_subfunction(td: Td) -> None:
    a = attester(td)
    td.host.faults = FaultSet.parse("vmcall-status=invalid")
    with pytest.raises(TdcallError, match=r"VMCALL GET_QUOTE failed: R10 = OPERAND_INVALID"):
        a.quote(REPORT_DATA)


def test_a_quote_over_other_reportdata_is_refused(td: Td) -> None:
    a = attester(td)
    quoting = td.host.quoting
    assert quoting is not None
    real = quoting

    class Swapping:
        """A host quoting service that quotes a different TDREPORT than L1's."""

        def serve_get_quote(self, buffer: bytes) -> bytes:
            td.harness.write(WORK + 0x3000, bytes(64))
            td.harness.ok(4, rcx=WORK + 0x1400, rdx=WORK + 0x3000)
            other = real.quote(td.harness.read(WORK + 0x1400, 1024))
            return encode_get_quote_response(buffer, 0, other)

    td.host.quoting = Swapping()  # type: ignore[assignment]
    with pytest.raises(GetQuoteError, match="is not the REPORTDATA L1 asked for"):
        a.quote(REPORT_DATA)


def test_reportdata_of_wrong_size_is_refused(td: Td) -> None:
    with pytest.raises(AttesterError, match="REPORTDATA is 63 bytes"):
        attester(td).quote(bytes(63))


def _answer(quote: bytes, *, qgs_type: int = 1, error: int = 0, id_size: int = 0) -> bytearray:
    body = struct.pack("<II", id_size, len(quote)) + quote
    message = struct.pack("<HHIII", 1, 0, qgs_type, 16 + len(body), error) + body
    payload = struct.pack(">I", len(message)) + message
    return bytearray(
        (GetQuoteHeader(1, 0, len(payload), len(payload)).pack() + payload).ljust(0x2000, b"\0")
    )


def test_decode_checks_the_qgs_framing() -> None:
    assert decode_response(bytes(_answer(b"Q" * 700))) == b"Q" * 700
    with pytest.raises(GetQuoteError, match=f"QGS header at offset {QGS_MSG_OFFSET}"):
        decode_response(bytes(_answer(b"Q", qgs_type=0)))
    with pytest.raises(GetQuoteError, match="QGS error_code"):
        decode_response(bytes(_answer(b"Q", error=0x12)))
    with pytest.raises(GetQuoteError, match=f"quote_size at offset {QGS_BODY_OFFSET + 4}"):
        decode_response(bytes(_answer(b"Q", id_size=0x10000)))
    bad_version = _answer(b"Q")
    bad_version[0] = 2
    with pytest.raises(GetQuoteError, match="version at offset 0"):
        decode_response(bytes(bad_version))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.integers(0, 150))
def test_decode_never_crashes_on_host_bytes(noise: bytes, at: int) -> None:
    answer = _answer(b"Q" * 64)
    answer[at : at + len(noise)] = noise
    with contextlib.suppress(GetQuoteError):  # anything else (IndexError, struct.error) fails
        decode_response(bytes(answer))
