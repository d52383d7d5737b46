"""L1's TDX attester: REPORTDATA -> TDG.MR.REPORT -> GetQuote TDVMCALL -> TD quote (reference 6.1).

The GetQuote buffer is shared, so the host can write it at any time and may lie: the answer is
copied once and every field (status, lengths, the big-endian message length, the QGS header, the
GET_QUOTE_RESP sizes, the quote's REPORTDATA) is checked on the copy; a bad one raises
`GetQuoteError` naming the field and its offset. The host answers synchronously or later: while
the status says in flight, L1 waits (HLT) a bounded number of times, then gives up.
QGS message types and the error statuses are not in the reference: they follow the DCAP QGS message
library and the Linux tdx-guest uapi, as tdxsim does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from svsm.memory import Memory, SharedBuffer
from svsm.tdcall import Tdcall, Tdvmcall
from vtpm.attest import REPORT_DATA_SIZE, AttesterError, parse_quote_v4

TDREPORT_SIZE = 1024
TDREPORT_ALIGNMENT = 1024
REPORTDATA_ALIGNMENT = 64
HLT_INTERRUPTS_ENABLED = 0
GETQUOTE_WAIT_MAX = 50  # HLTs while the status says in flight; then a named error, never a hang

# --- GetQuote shared buffer (reference 6.1 "Attestation binding") ---------------------------------
GET_QUOTE_HEADER = struct.Struct("<QQII")  # version, status, in_len, out_len
GET_QUOTE_BUF_VERSION = 1
GET_QUOTE_SUCCESS = 0
GET_QUOTE_IN_FLIGHT = 0xFFFFFFFFFFFFFFFF
STATUS_OFFSET, IN_LEN_OFFSET, OUT_LEN_OFFSET = 8, 16, 20
MESSAGE_LENGTH = struct.Struct(">I")  # big-endian, unlike the rest
QGS_MSG_HEADER = struct.Struct("<HHIII")  # major, minor, type, size (whole message), error_code
QGS_MSG_MAJOR_VERSION = 1
QGS_MSG_MINOR_VERSION = 0
QGS_GET_QUOTE_REQ = 0
QGS_GET_QUOTE_RESP = 1
QGS_MSG_SUCCESS = 0
GET_QUOTE_REQ = struct.Struct("<II")  # report_size, id_list_size; then the TDREPORT
GET_QUOTE_RESP = struct.Struct("<II")  # selected_id_size, quote_size; then id, quote
QGS_MSG_OFFSET = GET_QUOTE_HEADER.size + MESSAGE_LENGTH.size
QGS_BODY_OFFSET = QGS_MSG_OFFSET + QGS_MSG_HEADER.size
MIN_OUT_LEN = MESSAGE_LENGTH.size + QGS_MSG_HEADER.size + GET_QUOTE_RESP.size
QE_VENDOR_ID_OFFSET, QE_VENDOR_ID_SIZE = 12, 16
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")


class GetQuoteError(AttesterError):
    """The host's GetQuote answer is unusable; names the field and its offset in the buffer."""

    def __init__(self, field: str, offset: int, reason: str) -> None:
        super().__init__(f"GetQuote buffer {field} at offset {offset}: {reason}")
        self.field = field
        self.offset = offset


def encode_request(tdreport: bytes, buffer_size: int) -> bytes:
    """The GetQuote buffer L1 hands the host: header (in flight ends at status 0) and request."""
    body = GET_QUOTE_REQ.pack(len(tdreport), 0) + tdreport
    message = (
        QGS_MSG_HEADER.pack(
            QGS_MSG_MAJOR_VERSION,
            QGS_MSG_MINOR_VERSION,
            QGS_GET_QUOTE_REQ,
            QGS_MSG_HEADER.size + len(body),
            QGS_MSG_SUCCESS,
        )
        + body
    )
    payload = MESSAGE_LENGTH.pack(len(message)) + message
    if GET_QUOTE_HEADER.size + len(payload) > buffer_size:
        raise AttesterError(
            f"GetQuote request of {len(payload)} bytes does not fit the {buffer_size}-byte buffer"
        )
    header = GET_QUOTE_HEADER.pack(GET_QUOTE_BUF_VERSION, GET_QUOTE_SUCCESS, len(payload), 0)
    return (header + payload).ljust(buffer_size, b"\0")


def decode_response(answer: bytes) -> bytes:
    """The quote from one copy of the answered buffer; every field checked against the copy."""
    if len(answer) < QGS_BODY_OFFSET + GET_QUOTE_RESP.size:
        raise GetQuoteError("buffer", 0, f"{len(answer)} bytes, too small for a response")
    version, status, _in_len, out_len = GET_QUOTE_HEADER.unpack_from(answer)
    if version != GET_QUOTE_BUF_VERSION:
        raise GetQuoteError("version", 0, f"{version}, expected {GET_QUOTE_BUF_VERSION}")
    if status == GET_QUOTE_IN_FLIGHT:
        raise GetQuoteError("status", STATUS_OFFSET, "still in flight")
    if status != GET_QUOTE_SUCCESS:
        raise GetQuoteError("status", STATUS_OFFSET, f"{status:#x} (host reports an error)")
    room = len(answer) - GET_QUOTE_HEADER.size
    if not MIN_OUT_LEN <= out_len <= room:
        raise GetQuoteError(
            "out_len",
            OUT_LEN_OFFSET,
            f"{out_len} is outside [{MIN_OUT_LEN}, {room}] (the buffer after its header)",
        )
    (msg_len,) = MESSAGE_LENGTH.unpack_from(answer, GET_QUOTE_HEADER.size)
    if msg_len + MESSAGE_LENGTH.size != out_len:
        raise GetQuoteError(
            "message length",
            GET_QUOTE_HEADER.size,
            f"{msg_len} + 4 does not equal out_len {out_len}",
        )
    major, _minor, msg_type, size, error = QGS_MSG_HEADER.unpack_from(answer, QGS_MSG_OFFSET)
    if major != QGS_MSG_MAJOR_VERSION or msg_type != QGS_GET_QUOTE_RESP:
        raise GetQuoteError(
            "QGS header",
            QGS_MSG_OFFSET,
            f"version {major}, type {msg_type}: not a GET_QUOTE_RESP v1",
        )
    if size != msg_len:
        raise GetQuoteError("QGS size", QGS_MSG_OFFSET + 8, f"{size}, message length {msg_len}")
    if error != QGS_MSG_SUCCESS:
        raise GetQuoteError("QGS error_code", QGS_MSG_OFFSET + 12, f"{error:#x}")
    id_size, quote_size = GET_QUOTE_RESP.unpack_from(answer, QGS_BODY_OFFSET)
    start = QGS_BODY_OFFSET + GET_QUOTE_RESP.size + id_size
    end = start + quote_size
    if quote_size == 0 or end != QGS_MSG_OFFSET + size:
        raise GetQuoteError(
            "quote_size",
            QGS_BODY_OFFSET + 4,
            f"selected_id_size {id_size} + quote_size {quote_size} does not fill "
            f"the {size}-byte message",
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
        if buffers.report_gpa % TDREPORT_ALIGNMENT or buffers.reportdata_gpa % REPORTDATA_ALIGNMENT:
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
        if len(report_data) != REPORT_DATA_SIZE:
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
            (status,) = struct.unpack_from("<Q", answer, STATUS_OFFSET)
            if status != GET_QUOTE_IN_FLIGHT:
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
            raise GetQuoteError("quote", QGS_BODY_OFFSET + GET_QUOTE_RESP.size, str(exc)) from exc
        if got != report_data:
            raise GetQuoteError(
                "quote REPORTDATA",
                QGS_BODY_OFFSET + GET_QUOTE_RESP.size,
                f"{got[:8].hex()}... is not the REPORTDATA L1 asked for "
                f"({report_data[:8].hex()}...)",
            )
        self.last_quote = quote
        return quote

    def event_log(self) -> bytes:
        """The CC event log of L1's RTMR extends so far."""
        return self._event_log()
