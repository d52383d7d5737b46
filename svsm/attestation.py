"""L1's TDX attester: REPORTDATA -> TDG.MR.REPORT -> GetQuote TDVMCALL -> TD quote.

The GetQuote buffer is shared, so the host can write it at any time and may lie: the answer is
copied once and every field (status, lengths, the big-endian message length, the QGS header, the
GET_QUOTE_RESP sizes, the quote's REPORTDATA) is checked on the copy; a bad one raises
`GetQuoteError` naming the field and its offset. The host answers synchronously or later: while
the status says in flight, L1 waits (HLT) a bounded number of times, then gives up.
The buffer and message layouts are `tdxdefs.getquote` (GHCI v1.5, section 3.3, and the DCAP Quote
Generation Service message library).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from svsm.errors import SvsmError
from svsm.memory import Memory, SharedBuffer
from svsm.tdcall import Tdcall
from tdxdefs.getquote import (
    GET_QUOTE_BUF_VERSION,
    GET_QUOTE_IN_FLIGHT,
    GET_QUOTE_SUCCESS,
    MIN_OUT_LEN,
    OUT_LEN_OFFSET,
    PAYLOAD_OFFSET,
    QGS_BODY_OFFSET,
    QGS_GET_QUOTE_REQ,
    QGS_GET_QUOTE_RESP,
    QGS_MSG_MAJOR_VERSION,
    QGS_MSG_MINOR_VERSION,
    QGS_MSG_OFFSET,
    QGS_MSG_SUCCESS,
    STATUS_OFFSET,
    GetQuoteHeader,
    GetQuoteReq,
    GetQuoteResp,
    MessageLength,
    QgsMsgHeader,
)
from tdxdefs.quote import INTEL_QE_VENDOR_ID, QuoteHeader
from tdxdefs.tdcall import REPORTDATA_ALIGN, REPORTDATA_SIZE, TDREPORT_ALIGN, TDREPORT_SIZE
from tdxdefs.tdvmcall import Tdvmcall
from vtpm.attest import AttesterError, parse_quote_v4

HLT_INTERRUPTS_ENABLED = 0
GETQUOTE_WAIT_MAX = 50  # HLTs while the status says in flight; then a named error, never a hang
QE_VENDOR_ID_OFFSET = QuoteHeader.offset("qe_vendor_id")
QE_VENDOR_ID_SIZE = QuoteHeader.field_size("qe_vendor_id")
QUOTE_OFFSET = QGS_BODY_OFFSET + GetQuoteResp.SIZE  # the quote, when selected_id_size is 0


class GetQuoteError(AttesterError, SvsmError):
    """The host's GetQuote answer is unusable; names the field and its offset in the buffer."""

    def __init__(self, field: str, offset: int, reason: str) -> None:
        super().__init__(f"GetQuote buffer {field} at offset {offset}: {reason}")
        self.field = field
        self.offset = offset


def encode_request(tdreport: bytes, buffer_size: int) -> bytes:
    """The GetQuote buffer L1 hands the host: header (in flight ends at status 0) and request."""
    body = GetQuoteReq(len(tdreport), 0).pack() + tdreport
    header = QgsMsgHeader(
        QGS_MSG_MAJOR_VERSION,
        QGS_MSG_MINOR_VERSION,
        QGS_GET_QUOTE_REQ,
        QgsMsgHeader.SIZE + len(body),
        QGS_MSG_SUCCESS,
    )
    message = header.pack() + body
    payload = MessageLength(len(message)).pack() + message
    if GetQuoteHeader.SIZE + len(payload) > buffer_size:
        raise AttesterError(
            f"GetQuote request of {len(payload)} bytes does not fit the {buffer_size}-byte buffer"
        )
    buffer_header = GetQuoteHeader(GET_QUOTE_BUF_VERSION, GET_QUOTE_SUCCESS, len(payload), 0)
    return (buffer_header.pack() + payload).ljust(buffer_size, b"\0")


def decode_response(answer: bytes) -> bytes:
    """The quote from one copy of the answered buffer; every field checked against the copy."""
    if len(answer) < QUOTE_OFFSET:
        raise GetQuoteError("buffer", 0, f"{len(answer)} bytes, too small for a response")
    header = GetQuoteHeader.unpack(answer)
    if header.version != GET_QUOTE_BUF_VERSION:
        raise GetQuoteError("version", 0, f"{header.version}, expected {GET_QUOTE_BUF_VERSION}")
    if header.status == GET_QUOTE_IN_FLIGHT:
        raise GetQuoteError("status", STATUS_OFFSET, "still in flight")
    if header.status != GET_QUOTE_SUCCESS:
        raise GetQuoteError("status", STATUS_OFFSET, f"{header.status:#x} (host reports an error)")
    out_len = header.out_len
    room = len(answer) - GetQuoteHeader.SIZE
    if not MIN_OUT_LEN <= out_len <= room:
        raise GetQuoteError(
            "out_len",
            OUT_LEN_OFFSET,
            f"{out_len} is outside [{MIN_OUT_LEN}, {room}] (the buffer after its header)",
        )
    msg_len = MessageLength.unpack(answer, PAYLOAD_OFFSET).length
    if msg_len + MessageLength.SIZE != out_len:
        raise GetQuoteError(
            "message length",
            PAYLOAD_OFFSET,
            f"{msg_len} + 4 does not equal out_len {out_len}",
        )
    qgs = QgsMsgHeader.unpack(answer, QGS_MSG_OFFSET)
    if qgs.major_version != QGS_MSG_MAJOR_VERSION or qgs.type != QGS_GET_QUOTE_RESP:
        raise GetQuoteError(
            "QGS header",
            QGS_MSG_OFFSET,
            f"version {qgs.major_version}, type {qgs.type}: not a GET_QUOTE_RESP v1",
        )
    if qgs.size != msg_len:
        raise GetQuoteError(
            "QGS size",
            QGS_MSG_OFFSET + QgsMsgHeader.offset("size"),
            f"{qgs.size}, message length {msg_len}",
        )
    if qgs.error_code != QGS_MSG_SUCCESS:
        raise GetQuoteError(
            "QGS error_code",
            QGS_MSG_OFFSET + QgsMsgHeader.offset("error_code"),
            f"{qgs.error_code:#x}",
        )
    response = GetQuoteResp.unpack(answer, QGS_BODY_OFFSET)
    start = QUOTE_OFFSET + response.selected_id_size
    end = start + response.quote_size
    if response.quote_size == 0 or end != QGS_MSG_OFFSET + qgs.size:
        raise GetQuoteError(
            "quote_size",
            QGS_BODY_OFFSET + GetQuoteResp.offset("quote_size"),
            f"selected_id_size {response.selected_id_size} + quote_size {response.quote_size} "
            f"does not fill the {qgs.size}-byte message",
        )
    return answer[start:end]


@dataclass(frozen=True)
class AttestationBuffers:
    """Where the attester works: private TDREPORT and REPORTDATA, and the shared GetQuote buffer."""

    report_gpa: int
    reportdata_gpa: int
    quote: SharedBuffer


class TdxAttester:
    """`vtpm.attest.Attester` for L1: quotes through TDG.MR.REPORT and the host's GetQuote."""

    name = "tdx"

    def __init__(
        self,
        tdcall: Tdcall,
        memory: Memory,
        buffers: AttestationBuffers,
        event_log: Callable[[], bytes],
    ) -> None:
        if buffers.report_gpa % TDREPORT_ALIGN or buffers.reportdata_gpa % REPORTDATA_ALIGN:
            raise AttesterError("TDREPORT must be 1024-byte and REPORTDATA 64-byte aligned")
        self._tdcall = tdcall
        self._memory = memory
        self._buffers = buffers
        self._event_log = event_log
        self.waits = 0
        self.last_quote = b""

    @property
    def simulated(self) -> bool:
        """True unless the last quote names Intel's quoting enclave (the simulation never does)."""
        vendor = self.last_quote[QE_VENDOR_ID_OFFSET : QE_VENDOR_ID_OFFSET + QE_VENDOR_ID_SIZE]
        return vendor != INTEL_QE_VENDOR_ID

    def tdreport(self, report_data: bytes) -> bytes:
        """TDG.MR.REPORT over `report_data` (64 bytes); the 1024-byte TDREPORT."""
        if len(report_data) != REPORTDATA_SIZE:
            raise AttesterError(f"REPORTDATA is {len(report_data)} bytes, must be 64")
        self._memory.write(self._buffers.reportdata_gpa, report_data)
        self._tdcall.mr_report(self._buffers.report_gpa, self._buffers.reportdata_gpa)
        return self._memory.read(self._buffers.report_gpa, TDREPORT_SIZE)

    def quote(self, report_data: bytes) -> bytes:
        """A TD quote over `report_data` from the host's quoting service, checked."""
        buffer = self._buffers.quote
        buffer.write(0, encode_request(self.tdreport(report_data), buffer.size))
        self._tdcall.tdvmcall(Tdvmcall.GET_QUOTE, r12=buffer.gpa, r13=buffer.size)
        answer = buffer.snapshot()
        for _wait in range(GETQUOTE_WAIT_MAX):
            if GetQuoteHeader.unpack(answer).status != GET_QUOTE_IN_FLIGHT:
                break
            self._tdcall.tdvmcall(Tdvmcall.HLT, r12=HLT_INTERRUPTS_ENABLED)
            self.waits += 1
            answer = buffer.snapshot()
        else:
            raise GetQuoteError(
                "status",
                STATUS_OFFSET,
                f"still in flight after {GETQUOTE_WAIT_MAX} waits; giving up",
            )
        quote = decode_response(answer)
        try:
            got = parse_quote_v4(quote).report_data
        except ValueError as exc:
            raise GetQuoteError("quote", QUOTE_OFFSET, str(exc)) from exc
        if got != report_data:
            raise GetQuoteError(
                "quote REPORTDATA",
                QUOTE_OFFSET,
                f"{got[:8].hex()}... is not the REPORTDATA L1 asked for "
                f"({report_data[:8].hex()}...)",
            )
        self.last_quote = quote
        return quote

    def event_log(self) -> bytes:
        """The CC event log of L1's RTMR extends so far."""
        return self._event_log()
