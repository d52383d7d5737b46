"""The SIMULATED quoting service: TDREPORT in, TD quote out (layouts: `tdxdefs.quote`): version 4
by default, version 5 with a TD report 1.5 body (TEE_TCB_SVN2, MRSERVICETD) on request.

It stands in for Intel's TD quoting enclave and QGS. It checks the TDREPORT's simulated MAC,
copies the report into a TD quote body, signs header and body with its ECDSA P-256 attestation key,
and attaches certification data type 6: a QE report body (SGX REPORTBODY) binding the attestation
key, signed with the simulated PCK leaf key, and nested type 5 with the PEM chain leaf|intermediate|
root. The QE vendor ID, QE identity and header user_data are tdxsim's own, never Intel's.

The GetQuote shared buffer (`tdxdefs.getquote`; GHCI v1.5, section 3.3) is framed as Intel's
TD-partitioning vTPM prototype frames it: a 24-byte header, then a big-endian u32 length and a QGS
message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from dataclasses import dataclass
from typing import Self, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tdxdefs.errors import LayoutError
from tdxdefs.getquote import (
    GET_QUOTE_BUF_VERSION,
    GET_QUOTE_ERROR,
    GET_QUOTE_IN_FLIGHT,
    GET_QUOTE_SUCCESS,
    IN_LEN_OFFSET,
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
from tdxdefs.layout import Layout
from tdxdefs.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    ECDSA_P256_COORDINATE_SIZE,
    QUOTE_VERSION_4,
    QUOTE_VERSION_5,
    CertificationDataType,
    QeAuthDataSize,
    QuoteBodyDescriptor,
    QuoteBodyType,
    QuoteHeader,
    SgxReportBody,
    SignatureDataLength,
    TdQuoteBody,
    TdQuoteBody15,
    TdQuoteBody15Ex,
)
from tdxdefs.report import TEE_TYPE_TDX
from tdxdefs.tdcall import TDREPORT_SIZE
from tdxsim.attestation.pck import PckChain, generate_pck_chain, new_p256_key
from tdxsim.attestation.report import (
    ReportMacKey,
    TdReport,
    TdReportBuilder,
    TdReportError,
    verify_tdreport,
)
from tdxsim.errors import TdxsimError
from verifier.quote import CertificationData, qe_report_data_binding

# The simulation's QE vendor ID: a name-based UUID of our own, documented here; Intel's is
# 939a7233-f79c-4ca9-940a-0db3957f0607 and is never used.
SIM_QE_VENDOR_ID = uuid.uuid5(uuid.NAMESPACE_URL, "urn:tdxsim:simulated-quoting-enclave").bytes
SIM_USER_DATA = b"tdxsim SIMULATED".ljust(20, b"\x00")
SIM_QE_MRENCLAVE = hashlib.sha256(b"tdxsim SIMULATED quoting enclave").digest()
SIM_QE_MRSIGNER = hashlib.sha256(b"tdxsim SIMULATED quoting enclave signer").digest()
SIM_QE_AUTH_DATA = hashlib.sha256(b"tdxsim SIMULATED QE authentication data").digest()
SIM_QE_ISV_PROD_ID = 2
SIM_QE_ISV_SVN = 1

GET_QUOTE_DEFAULT_BUFFER_SIZE = 2 * 4096  # two shared pages, as Intel's TD-partitioning vTPM uses
QGS_TYPE_AT = QgsMsgHeader.offset("type")
QGS_SIZE_AT = QgsMsgHeader.offset("size")
QGS_ERROR_AT = QgsMsgHeader.offset("error_code")
REQ_ID_LIST_SIZE_AT = GetQuoteReq.offset("id_list_size")
RESP_QUOTE_SIZE_AT = GetQuoteResp.offset("quote_size")


L = TypeVar("L", bound=Layout)


class GetQuoteFormatError(TdxsimError, ValueError):
    """A GetQuote shared buffer breaks the format; names the field and its offset in the buffer."""

    def __init__(self, field: str, offset: int, reason: str) -> None:
        super().__init__(f"GetQuote buffer {field} at offset {offset}: {reason}")
        self.field = field
        self.offset = offset


class QuoteRequestRefused(TdxsimError, ValueError):
    """The quoting service refuses a TDREPORT (bad MAC, bad hashes, wrong size)."""


def _need(buffer: bytes, offset: int, size: int, field: str) -> bytes:
    if offset + size > len(buffer):
        raise GetQuoteFormatError(
            field, offset, f"needs {size} bytes, buffer ends at {len(buffer)}"
        )
    return buffer[offset : offset + size]


def _parse(layout: type[L], buffer: bytes, offset: int, base: int = 0) -> L:
    """`layout` at `offset` of `buffer`; a short or bad one raises GetQuoteFormatError naming the
    field and its offset in the shared buffer (`base` is where `buffer` starts in it)."""
    try:
        return layout.unpack(buffer, offset)
    except LayoutError as exc:
        field = f"{exc.structure} {exc.field}"
        raise GetQuoteFormatError(field, base + exc.offset, exc.reason) from exc


def _frame(msg_type: int, body: bytes) -> bytes:
    header = QgsMsgHeader(
        QGS_MSG_MAJOR_VERSION,
        QGS_MSG_MINOR_VERSION,
        msg_type,
        QgsMsgHeader.SIZE + len(body),
        QGS_MSG_SUCCESS,
    )
    message = header.pack() + body
    return MessageLength(len(message)).pack() + message


def _unframe(buffer: bytes, payload_len: int, msg_type: int) -> bytes:
    """The QGS message body after checking length prefix and header against `payload_len`."""
    msg_len = _parse(MessageLength, buffer, PAYLOAD_OFFSET).length
    if msg_len + MessageLength.SIZE != payload_len:
        raise GetQuoteFormatError(
            "message length",
            PAYLOAD_OFFSET,
            f"{msg_len} + 4 does not equal the payload length {payload_len}",
        )
    header = _parse(QgsMsgHeader, buffer, QGS_MSG_OFFSET)
    if header.major_version != QGS_MSG_MAJOR_VERSION:
        raise GetQuoteFormatError(
            "QGS major_version",
            QGS_MSG_OFFSET,
            f"{header.major_version}, expected {QGS_MSG_MAJOR_VERSION}",
        )
    if header.type != msg_type:
        raise GetQuoteFormatError(
            "QGS type", QGS_MSG_OFFSET + QGS_TYPE_AT, f"{header.type}, expected {msg_type}"
        )
    if header.size != msg_len:
        raise GetQuoteFormatError(
            "QGS size",
            QGS_MSG_OFFSET + QGS_SIZE_AT,
            f"{header.size}, but the message length is {msg_len}",
        )
    if header.error_code != QGS_MSG_SUCCESS:
        raise GetQuoteFormatError(
            "QGS error_code",
            QGS_MSG_OFFSET + QGS_ERROR_AT,
            f"{header.error_code:#x} (the service reported an error)",
        )
    return _need(buffer, QGS_BODY_OFFSET, msg_len - QgsMsgHeader.SIZE, "QGS body")


def _read_header(buffer: bytes) -> GetQuoteHeader:
    header = _parse(GetQuoteHeader, buffer, 0)
    if header.version != GET_QUOTE_BUF_VERSION:
        raise GetQuoteFormatError("version", 0, f"{header.version}, expected 1")
    return header


def encode_get_quote_request(
    tdreport: bytes, buffer_size: int = GET_QUOTE_DEFAULT_BUFFER_SIZE
) -> bytes:
    """The shared buffer L1 hands to GetQuote: header (status 0, out_len 0) and GET_QUOTE_REQ."""
    body = GetQuoteReq(len(tdreport), 0).pack() + tdreport
    payload = _frame(QGS_GET_QUOTE_REQ, body)
    if PAYLOAD_OFFSET + len(payload) > buffer_size:
        raise ValueError(
            f"GetQuote request needs {PAYLOAD_OFFSET + len(payload)} bytes, "
            f"buffer has {buffer_size}"
        )
    header = GetQuoteHeader(GET_QUOTE_BUF_VERSION, GET_QUOTE_SUCCESS, len(payload), 0)
    return (header.pack() + payload).ljust(buffer_size, b"\x00")


def decode_get_quote_request(buffer: bytes) -> bytes:
    """The TDREPORT in a GetQuote request buffer (host side; the buffer is untrusted)."""
    header = _read_header(buffer)
    if PAYLOAD_OFFSET + header.in_len > len(buffer):
        raise GetQuoteFormatError(
            "in_len",
            IN_LEN_OFFSET,
            f"{header.in_len} overruns the buffer "
            f"({len(buffer) - PAYLOAD_OFFSET} bytes after the header)",
        )
    body = _unframe(buffer, header.in_len, QGS_GET_QUOTE_REQ)
    request = _parse(GetQuoteReq, body, 0, QGS_BODY_OFFSET)
    report_size, id_list_size = request.report_size, request.id_list_size
    if report_size != TDREPORT_SIZE:
        raise GetQuoteFormatError(
            "report_size", QGS_BODY_OFFSET, f"{report_size}, expected {TDREPORT_SIZE}"
        )
    if GetQuoteReq.SIZE + report_size + id_list_size != len(body):
        raise GetQuoteFormatError(
            "id_list_size",
            QGS_BODY_OFFSET + REQ_ID_LIST_SIZE_AT,
            f"{id_list_size} does not fill the message exactly",
        )
    return body[GetQuoteReq.SIZE : GetQuoteReq.SIZE + report_size]


def encode_get_quote_response(request: bytes, status: int, quote: bytes = b"") -> bytes:
    """`request` rewritten as the host answers it: status, out_len and GET_QUOTE_RESP."""
    header = _parse(GetQuoteHeader, request, 0)
    payload = (
        _frame(QGS_GET_QUOTE_RESP, GetQuoteResp(0, len(quote)).pack() + quote)
        if status == GET_QUOTE_SUCCESS
        else b""
    )
    if PAYLOAD_OFFSET + len(payload) > len(request):
        raise ValueError(f"quote of {len(quote)} bytes does not fit a {len(request)}-byte buffer")
    answered = GetQuoteHeader(header.version, status, header.in_len, len(payload))
    return answered.pack() + payload + request[PAYLOAD_OFFSET + len(payload) :]


def decode_get_quote_response(buffer: bytes) -> bytes:
    """The quote in an answered GetQuote buffer (TD side: status, lengths, framing all checked)."""
    header = _read_header(buffer)
    if header.status == GET_QUOTE_IN_FLIGHT:
        raise GetQuoteFormatError("status", STATUS_OFFSET, "still in flight")
    if header.status != GET_QUOTE_SUCCESS:
        raise GetQuoteFormatError(
            "status", STATUS_OFFSET, f"{header.status:#x} (host reports an error)"
        )
    if PAYLOAD_OFFSET + header.out_len > len(buffer):
        raise GetQuoteFormatError(
            "out_len",
            OUT_LEN_OFFSET,
            f"{header.out_len} overruns the buffer "
            f"({len(buffer) - PAYLOAD_OFFSET} bytes after the header)",
        )
    body = _unframe(buffer, header.out_len, QGS_GET_QUOTE_RESP)
    response = _parse(GetQuoteResp, body, 0, QGS_BODY_OFFSET)
    id_size, quote_size = response.selected_id_size, response.quote_size
    if GetQuoteResp.SIZE + id_size + quote_size != len(body):
        raise GetQuoteFormatError(
            "quote_size",
            QGS_BODY_OFFSET + RESP_QUOTE_SIZE_AT,
            f"selected_id_size {id_size} + quote_size {quote_size} do not fill the message exactly",
        )
    return body[GetQuoteResp.SIZE + id_size :]


def _sign_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 with SHA-256, as r||s big-endian (the quote's signature encoding)."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(ECDSA_P256_COORDINATE_SIZE, "big") + s.to_bytes(
        ECDSA_P256_COORDINATE_SIZE, "big"
    )


def _raw_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    numbers = key.public_key().public_numbers()
    return numbers.x.to_bytes(ECDSA_P256_COORDINATE_SIZE, "big") + numbers.y.to_bytes(
        ECDSA_P256_COORDINATE_SIZE, "big"
    )


def quote_body_from_report(report: TdReport) -> TdQuoteBody:
    """The TD quote body is TEE_TCB_INFO and TDINFO fields plus REPORTDATA, copied over."""
    tcb, info = report.tee_tcb_info, report.td_info
    return TdQuoteBody(
        tee_tcb_svn=tcb.tee_tcb_svn,
        mrseam=tcb.mrseam,
        mrsignerseam=tcb.mrsignerseam,
        seamattributes=tcb.attributes,
        tdattributes=info.attributes,
        xfam=info.xfam,
        mrtd=info.mrtd,
        mrconfigid=info.mrconfigid,
        mrowner=info.mrowner,
        mrownerconfig=info.mrownerconfig,
        rtmr0=info.rtmr0,
        rtmr1=info.rtmr1,
        rtmr2=info.rtmr2,
        rtmr3=info.rtmr3,
        reportdata=report.report_mac.reportdata,
    )


def quote_body15_from_report(report: TdReport) -> TdQuoteBody15:
    """The TD report 1.5 body: the 1.0 body, TEE_TCB_SVN2 and MRSERVICETD (TDINFO SERVTD_HASH)."""
    base = quote_body_from_report(report)
    fields = {name: getattr(base, name) for name, _code in TdQuoteBody.FIELDS}
    return TdQuoteBody15(
        **fields,
        tee_tcb_svn2=report.tee_tcb_info.tee_tcb_svn2,
        mrservicetd=report.td_info.servtd_hash,
    )


class QuotingService:
    """One simulated platform's quoting service (attestation key, PCK chain, report MAC key)."""

    def __init__(
        self, report_key: ReportMacKey, pck: PckChain | None = None, *, seed: bytes | None = None
    ) -> None:
        self.report_key = report_key
        self.pck = pck if pck is not None else generate_pck_chain(seed)
        self.attestation_key = new_p256_key(seed, "tdxsim attestation key")
        self.attestation_key_raw = _raw_public_key(self.attestation_key)
        self.certification = self._certification_data()

    @property
    def trusted_root_der(self) -> bytes:
        """The simulated root a verifier must be given to accept this service's quotes."""
        return self.pck.root_der()

    def _certification_data(self) -> bytes:
        qe_report = dataclasses.replace(
            SgxReportBody.unpack(bytes(SgxReportBody.SIZE)),
            mr_enclave=SIM_QE_MRENCLAVE,
            mr_signer=SIM_QE_MRSIGNER,
            isv_prod_id=SIM_QE_ISV_PROD_ID,
            isv_svn=SIM_QE_ISV_SVN,
            report_data=qe_report_data_binding(self.attestation_key_raw, SIM_QE_AUTH_DATA),
        ).pack()
        nested = CertificationData(
            CertificationDataType.PCK_CERT_CHAIN, self.pck.pem_chain()
        ).pack()
        qe_data = (
            qe_report
            + _sign_raw(self.pck.leaf_key, qe_report)
            + QeAuthDataSize(len(SIM_QE_AUTH_DATA)).pack()
            + SIM_QE_AUTH_DATA
            + nested
        )
        return CertificationData(CertificationDataType.QE_REPORT, qe_data).pack()

    def quote(
        self, tdreport: bytes, version: int = QUOTE_VERSION_4, vm_index: int | None = None
    ) -> bytes:
        """A v4 (or v5, TD report 1.5 body) TD quote for a TDREPORT whose MAC this platform's key
        verifies; with `vm_index`, a v5 quote with the TD report 1.5 extended body naming the VM
        the report was made for (0: L1; 1-3: an L2 VM of a partitioned TD)."""
        if version not in (QUOTE_VERSION_4, QUOTE_VERSION_5):
            raise QuoteRequestRefused(f"quote version {version} is not 4 or 5")
        if vm_index is not None and (version != QUOTE_VERSION_5 or not 0 <= vm_index <= 3):
            raise QuoteRequestRefused(f"VM index {vm_index}: only 0-3, in a version 5 quote")
        try:
            report = verify_tdreport(tdreport, self.report_key)
        except TdReportError as exc:
            raise QuoteRequestRefused(f"quoting service refuses the TDREPORT: {exc}") from exc
        header = QuoteHeader(
            version,
            ATT_KEY_TYPE_ECDSA_P256,
            TEE_TYPE_TDX,
            0,
            0,
            SIM_QE_VENDOR_ID,
            SIM_USER_DATA,
        ).pack()
        if version == QUOTE_VERSION_4:
            body = quote_body_from_report(report).pack()
        else:
            body15 = quote_body15_from_report(report)
            kind, packed = QuoteBodyType.TD_REPORT_15, body15.pack()
            if vm_index is not None:
                kind, packed = QuoteBodyType.TD_REPORT_15_EX, _extended(body15, vm_index).pack()
            body = QuoteBodyDescriptor(kind, len(packed)).pack() + packed
        signature = _sign_raw(self.attestation_key, header + body)
        signature_data = signature + self.attestation_key_raw + self.certification
        return header + body + SignatureDataLength(len(signature_data)).pack() + signature_data

    def serve_get_quote(self, buffer: bytes) -> bytes:
        """Answer a GetQuote shared buffer: the quote on success, GET_QUOTE_ERROR otherwise."""
        try:
            quote = self.quote(decode_get_quote_request(buffer))
            return encode_get_quote_response(buffer, GET_QUOTE_SUCCESS, quote)
        except ValueError:  # GetQuoteFormatError, QuoteRequestRefused, a quote too big
            if len(buffer) < GetQuoteHeader.SIZE:
                return buffer
            return encode_get_quote_response(buffer, GET_QUOTE_ERROR)


def _extended(body: TdQuoteBody15, vm_index: int) -> TdQuoteBody15Ex:
    """The 1.5 body with the extended fields: the VM index, the rest zero (no service TDs,
    no devices, no instance ID in this simulation)."""
    rest = TdQuoteBody15Ex.SIZE - TdQuoteBody15.SIZE - 1
    return TdQuoteBody15Ex.unpack(body.pack() + bytes([vm_index]) + bytes(rest))


@dataclass
class SimulatedAttestation:
    """A simulated platform's attestation half: the MR.REPORT builder and its quoting service."""

    reports: TdReportBuilder
    quoting: QuotingService

    @classmethod
    def create(cls, seed: bytes | None = None) -> Self:
        """Fresh keys per instance, or every key derived from `seed` (reproducible tests)."""
        key = ReportMacKey() if seed is None else ReportMacKey.from_seed(seed)
        return cls(TdReportBuilder(key), QuotingService(key, seed=seed))
