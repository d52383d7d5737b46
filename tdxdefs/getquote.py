"""The GetQuote shared buffer and the Quote Generation Service (QGS) messages framed inside it.

Intel TDX Guest-Hypervisor Communication Interface (GHCI) v1.5, section 3.3 (TDG.VP.VMCALL
<GetQuote>: the shared buffer's header, version u64 = 1, status u64, in_len u32, out_len u32, then
the message; status all-ones while the request is in flight). The message is the DCAP Quote
Generation Service framing (Intel SGX DCAP "qgs_msg_lib": a big-endian u32 length, then a QGS
message header major/minor/type/size/error_code and GET_QUOTE_REQ or GET_QUOTE_RESP).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from tdxdefs.layout import BIG_ENDIAN, Layout

GET_QUOTE_BUF_VERSION = 1
GET_QUOTE_SUCCESS = 0
GET_QUOTE_IN_FLIGHT = 0xFFFFFFFFFFFFFFFF
GET_QUOTE_ERROR = 0x8000000000000000
GET_QUOTE_SERVICE_UNAVAILABLE = 0x8000000000000001

QGS_MSG_MAJOR_VERSION = 1
QGS_MSG_MINOR_VERSION = 0
QGS_MSG_SUCCESS = 0


class QgsMessageType(IntEnum):
    """QGS message types (qgs_msg_lib)."""

    GET_QUOTE_REQ = 0
    GET_QUOTE_RESP = 1


QGS_GET_QUOTE_REQ = int(QgsMessageType.GET_QUOTE_REQ)
QGS_GET_QUOTE_RESP = int(QgsMessageType.GET_QUOTE_RESP)


@dataclass(frozen=True, slots=True)
class GetQuoteHeader(Layout):
    """The GetQuote buffer header: 24 bytes at offset 0."""

    NAME: ClassVar[str] = "GetQuote header"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("version", "Q"),
        ("status", "Q"),
        ("in_len", "I"),
        ("out_len", "I"),
    )
    SIZE: ClassVar[int] = 24

    version: int
    status: int
    in_len: int
    out_len: int


@dataclass(frozen=True, slots=True)
class MessageLength(Layout):
    """The big-endian u32 length of the QGS message that follows the header."""

    NAME: ClassVar[str] = "message length"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("length", "I"),)
    SIZE: ClassVar[int] = 4
    BYTE_ORDER: ClassVar[str] = BIG_ENDIAN

    length: int


@dataclass(frozen=True, slots=True)
class QgsMsgHeader(Layout):
    """QGS message header; `size` counts the whole message, header included."""

    NAME: ClassVar[str] = "QGS header"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("major_version", "H"),
        ("minor_version", "H"),
        ("type", "I"),
        ("size", "I"),
        ("error_code", "I"),
    )
    SIZE: ClassVar[int] = 16

    major_version: int
    minor_version: int
    type: int
    size: int
    error_code: int


@dataclass(frozen=True, slots=True)
class GetQuoteReq(Layout):
    """GET_QUOTE_REQ body: then `report_size` bytes of TDREPORT and the id list."""

    NAME: ClassVar[str] = "GET_QUOTE_REQ"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("report_size", "I"), ("id_list_size", "I"))
    SIZE: ClassVar[int] = 8

    report_size: int
    id_list_size: int


@dataclass(frozen=True, slots=True)
class GetQuoteResp(Layout):
    """GET_QUOTE_RESP body: then the selected id and `quote_size` bytes of quote."""

    NAME: ClassVar[str] = "GET_QUOTE_RESP"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("selected_id_size", "I"), ("quote_size", "I"))
    SIZE: ClassVar[int] = 8

    selected_id_size: int
    quote_size: int


STATUS_OFFSET = GetQuoteHeader.offset("status")
IN_LEN_OFFSET = GetQuoteHeader.offset("in_len")
OUT_LEN_OFFSET = GetQuoteHeader.offset("out_len")
PAYLOAD_OFFSET = GetQuoteHeader.SIZE
QGS_MSG_OFFSET = PAYLOAD_OFFSET + MessageLength.SIZE
QGS_BODY_OFFSET = QGS_MSG_OFFSET + QgsMsgHeader.SIZE
MIN_OUT_LEN = MessageLength.SIZE + QgsMsgHeader.SIZE + GetQuoteResp.SIZE
