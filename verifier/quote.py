"""TDX quote version 4: layouts, a bounds-checked parser, and verification against a chosen root.

Layouts follow reference/tdx-partitioning-abi.md 7.2 (DCAP `sgx_quote_4.h`/`sgx_quote_3.h`). The
parser accepts any v4 TD quote, real or simulated; `verify_quote` checks the PCK chain up to the
root the caller passes (no default trust), the QE report signature, the QE report's binding of the
attestation key, and the quote signature. Every parse error names the field and its offset.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import struct
from dataclasses import dataclass
from typing import ClassVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from verifier.chain import MalformedCertificateError, check_well_formed, verify_chain
from verifier.errors import VerificationError
from verifier.layout import StructLayout

# --- 7.2 constants -------------------------------------------------------------------------------
QUOTE_VERSION_4 = 4
ATT_KEY_TYPE_ECDSA_P256 = 2
ATT_KEY_TYPE_ECDSA_P384 = 3
TEE_TYPE_SGX = 0x00
TEE_TYPE_TDX = 0x81
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

CERT_TYPE_PPID_CLEARTEXT = 1
CERT_TYPE_PPID_RSA2048 = 2
CERT_TYPE_PPID_RSA3072 = 3
CERT_TYPE_PCK_LEAF = 4
CERT_TYPE_PCK_CERT_CHAIN = 5
CERT_TYPE_QE_REPORT = 6
CERT_TYPE_PLATFORM_MANIFEST = 7
KNOWN_CERT_TYPES = range(CERT_TYPE_PPID_CLEARTEXT, CERT_TYPE_PLATFORM_MANIFEST + 1)

ECDSA_P256_SIGNATURE_SIZE = 64
ECDSA_P256_KEY_SIZE = 64
SEC1_UNCOMPRESSED = b"\x04"
QE_REPORT_DATA_BINDING_SIZE = 32
SGX_REPORT_DATA_SIZE = 64
MAX_CERT_NESTING = 1
PEM_PADDING = b"\x00"
PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)


class QuoteParseError(VerificationError, ValueError):
    """The quote bytes do not follow the v4 layout; names the field and its byte offset."""

    def __init__(self, field: str, offset: int, reason: str) -> None:
        super().__init__(f"{field} at offset {offset}: {reason}")
        self.field = field
        self.offset = offset


class QuoteVerificationError(VerificationError):
    """A well-formed quote whose signatures or bindings do not hold."""


class CertificationDataError(QuoteVerificationError):
    """The certification data is not the QE report (type 6) with a PCK chain (type 5) inside."""


class QeReportSignatureError(QuoteVerificationError):
    """The QE report body's signature does not verify with the PCK leaf key."""


class QeReportBindingError(QuoteVerificationError):
    """QE report_data is not SHA-256(attestation key || QE authentication data) || zeros."""


class QuoteSignatureError(QuoteVerificationError):
    """The signature over header and body does not verify with the attestation key."""


class _Reader:
    """Reads fields from a byte string, naming the field and offset on any overrun."""

    def __init__(self, data: bytes, base: int = 0) -> None:
        self.data = data
        self.pos = 0
        self.base = base

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def take(self, size: int, field: str) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise QuoteParseError(
                field,
                self.offset,
                f"needs {size} bytes, only {len(self.data) - self.pos} left",
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: struct.Struct, field: str) -> tuple[int, ...]:
        return tuple(fmt.unpack(self.take(fmt.size, field)))

    def remaining(self) -> int:
        return len(self.data) - self.pos


@dataclass(frozen=True)
class QuoteHeader(StructLayout):
    """sgx_quote4_header_t: 48 bytes at offset 0 (reference 7.2 "Header")."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<HHII16s20s")

    version: int
    att_key_type: int
    tee_type: int
    reserved: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdQuoteBody(StructLayout):
    """sgx_report2_body_t, the TD quote body: 584 bytes at offset 48 (reference 7.2)."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<16s48s48sQQQ48s48s48s48s48s48s48s48s64s")

    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seamattributes: int
    tdattributes: int
    xfam: int
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    reportdata: bytes

    @property
    def attributes(self) -> int:
        """The TD's ATTRIBUTES (TDATTRIBUTES in the quote body)."""
        return self.tdattributes

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)


@dataclass(frozen=True)
class SgxReportBody(StructLayout):
    """sgx_report_body_t, 384 bytes: the QE report body inside certification data type 6."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct("<16sI12s16s16s32s32s32s32s64sHHH42s16s64s")

    cpu_svn: bytes
    misc_select: int
    reserved1: bytes
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    reserved2: bytes
    mr_signer: bytes
    reserved3: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    reserved4: bytes
    isv_family_id: bytes
    report_data: bytes


CERT_DATA_HEADER = struct.Struct("<HI")  # certification data type u16, size u32
SIGNATURE_DATA_LEN = struct.Struct("<I")
QE_AUTH_DATA_SIZE = struct.Struct("<H")

HEADER_OFFSET = 0
ATT_KEY_TYPE_OFFSET = HEADER_OFFSET + 2
TEE_TYPE_OFFSET = HEADER_OFFSET + 4
BODY_OFFSET = HEADER_OFFSET + QuoteHeader.FORMAT.size
SIGNATURE_DATA_LEN_OFFSET = BODY_OFFSET + TdQuoteBody.FORMAT.size
SIGNATURE_DATA_OFFSET = SIGNATURE_DATA_LEN_OFFSET + SIGNATURE_DATA_LEN.size
SGX_REPORT_BODY_SIZE = SgxReportBody.FORMAT.size


@dataclass(frozen=True)
class QeReportCertificationData:
    """Certification data type 6: QE report, its PCK signature, QE auth data, nested cert data."""

    report_body: SgxReportBody
    report_body_raw: bytes
    report_signature: bytes
    auth_data: bytes
    certification: CertificationData

    def pack(self) -> bytes:
        return (
            self.report_body_raw
            + self.report_signature
            + QE_AUTH_DATA_SIZE.pack(len(self.auth_data))
            + self.auth_data
            + self.certification.pack()
        )


@dataclass(frozen=True)
class CertificationData:
    """Certification data: type u16, size u32, data; types 5 and 6 are decoded further."""

    cert_type: int
    data: bytes
    offset: int = 0
    qe_report: QeReportCertificationData | None = None
    pck_chain: tuple[x509.Certificate, ...] = ()

    def pack(self) -> bytes:
        return CERT_DATA_HEADER.pack(self.cert_type, len(self.data)) + self.data


@dataclass(frozen=True)
class ParsedQuote:
    """A parsed v4 TD quote; `raw` is kept so signatures are checked over the original bytes."""

    header: QuoteHeader
    body: TdQuoteBody
    signature: bytes
    attestation_key: bytes
    certification: CertificationData
    raw: bytes

    @property
    def signed_data(self) -> bytes:
        """Header plus body: the bytes the attestation key signs."""
        return self.raw[:SIGNATURE_DATA_LEN_OFFSET]

    @property
    def qe_report(self) -> QeReportCertificationData:
        """The QE report certification data (type 6), as every v4 TD quote carries."""
        if self.certification.qe_report is None:
            raise CertificationDataError(
                f"certification data at offset {self.certification.offset} has type "
                f"{self.certification.cert_type}, not QE report ({CERT_TYPE_QE_REPORT})"
            )
        return self.certification.qe_report

    @property
    def pck_chain(self) -> tuple[x509.Certificate, ...]:
        """The PCK chain (leaf first) nested in the QE report certification data."""
        inner = self.qe_report.certification
        if inner.cert_type != CERT_TYPE_PCK_CERT_CHAIN:
            raise CertificationDataError(
                f"certification data at offset {inner.offset} nested in the QE report has type "
                f"{inner.cert_type}, not PCK certificate chain ({CERT_TYPE_PCK_CERT_CHAIN})"
            )
        return inner.pck_chain


def _parse_pem_chain(data: bytes, offset: int) -> tuple[x509.Certificate, ...]:
    pem = data.rstrip(PEM_PADDING)
    stray = PEM_BLOCK.sub(b"", pem).strip()
    if stray:
        at = offset + pem.find(stray[:1])
        raise QuoteParseError("pck_cert_chain", at, "bytes outside the PEM certificate blocks")
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise QuoteParseError("pck_cert_chain", offset, f"not PEM certificates: {exc}") from exc
    for index, cert in enumerate(certs):
        try:
            check_well_formed(cert, f"PCK chain[{index}]")
        except MalformedCertificateError as exc:
            raise QuoteParseError("pck_cert_chain", offset, str(exc)) from exc
    return tuple(certs)


def _parse_qe_report(data: bytes, base: int, depth: int) -> QeReportCertificationData:
    reader = _Reader(data, base)
    raw_body = reader.take(SGX_REPORT_BODY_SIZE, "qe_report_body")
    signature = reader.take(ECDSA_P256_SIGNATURE_SIZE, "qe_report_signature")
    (auth_size,) = reader.unpack(QE_AUTH_DATA_SIZE, "qe_auth_data.size")
    auth_data = reader.take(auth_size, "qe_auth_data")
    nested = _parse_certification_data(reader, depth + 1)
    if reader.remaining():
        raise QuoteParseError(
            "qe_report_certification_data",
            reader.offset,
            f"{reader.remaining()} bytes after the nested certification data",
        )
    return QeReportCertificationData(
        SgxReportBody.unpack(raw_body), raw_body, signature, auth_data, nested
    )


def _parse_certification_data(reader: _Reader, depth: int) -> CertificationData:
    name = "certification_data" if depth == 0 else "qe_report_certification_data.nested"
    type_offset = reader.offset
    cert_type, size = reader.unpack(CERT_DATA_HEADER, f"{name}.header")
    if cert_type not in KNOWN_CERT_TYPES:
        raise QuoteParseError(f"{name}.type", type_offset, f"unknown type {cert_type}")
    data_offset = reader.offset
    data = reader.take(size, f"{name}.data")
    if cert_type == CERT_TYPE_QE_REPORT:
        if depth >= MAX_CERT_NESTING:
            raise QuoteParseError(f"{name}.type", type_offset, "QE report nested in QE report")
        qe = _parse_qe_report(data, data_offset, depth)
        return CertificationData(cert_type, data, data_offset, qe_report=qe)
    if cert_type == CERT_TYPE_PCK_CERT_CHAIN:
        chain = _parse_pem_chain(data, data_offset)
        return CertificationData(cert_type, data, data_offset, pck_chain=chain)
    return CertificationData(cert_type, data, data_offset)


def parse_quote(quote: bytes) -> ParsedQuote:
    """Parse a v4 TD quote (any issuer); raise QuoteParseError naming field and offset."""
    reader = _Reader(bytes(quote))
    header_raw = reader.take(QuoteHeader.FORMAT.size, "header")
    header = QuoteHeader.unpack(header_raw)
    if header.version != QUOTE_VERSION_4:
        raise QuoteParseError("header.version", HEADER_OFFSET, f"{header.version}, expected 4")
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise QuoteParseError(
            "header.att_key_type",
            ATT_KEY_TYPE_OFFSET,
            f"{header.att_key_type}, only {ATT_KEY_TYPE_ECDSA_P256} (ECDSA P-256) is supported",
        )
    if header.tee_type != TEE_TYPE_TDX:
        raise QuoteParseError(
            "header.tee_type",
            TEE_TYPE_OFFSET,
            f"{header.tee_type:#x}, expected {TEE_TYPE_TDX:#x} (TDX)",
        )
    body = TdQuoteBody.unpack(reader.take(TdQuoteBody.FORMAT.size, "td_quote_body"))
    (sig_len,) = reader.unpack(SIGNATURE_DATA_LEN, "signature_data_len")
    if sig_len != reader.remaining():
        raise QuoteParseError(
            "signature_data_len",
            SIGNATURE_DATA_LEN_OFFSET,
            f"{sig_len}, but {reader.remaining()} bytes follow",
        )
    signature = reader.take(ECDSA_P256_SIGNATURE_SIZE, "signature_data.signature")
    att_key = reader.take(ECDSA_P256_KEY_SIZE, "signature_data.attestation_key")
    certification = _parse_certification_data(reader, 0)
    if reader.remaining():
        raise QuoteParseError(
            "signature_data",
            reader.offset,
            f"{reader.remaining()} bytes after the certification data",
        )
    return ParsedQuote(header, body, signature, att_key, certification, bytes(quote))


def _raw_to_der(signature: bytes) -> bytes:
    half = len(signature) // 2
    r = int.from_bytes(signature[:half], "big")
    s = int.from_bytes(signature[half:], "big")
    return encode_dss_signature(r, s)


def p256_public_key(raw_xy: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 key whose X||Y (64 bytes, big-endian) the quote carries."""
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), SEC1_UNCOMPRESSED + raw_xy)


def _verify_p256(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(_raw_to_der(signature), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def qe_report_data_binding(attestation_key: bytes, auth_data: bytes) -> bytes:
    """The 64-byte QE report_data that binds the attestation key (reference 7.2 rule)."""
    digest = hashlib.sha256(attestation_key + auth_data).digest()
    return digest + bytes(SGX_REPORT_DATA_SIZE - QE_REPORT_DATA_BINDING_SIZE)


def verify_parsed_quote(
    parsed: ParsedQuote,
    trusted_root: bytes | x509.Certificate,
    *,
    at: datetime.datetime | None = None,
) -> ParsedQuote:
    """Verify chain, QE report signature, key binding and quote signature, in that order."""
    chain = parsed.pck_chain
    leaf = verify_chain(chain, trusted_root, at=at)
    pck_key = leaf.public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey) or not isinstance(
        pck_key.curve, ec.SECP256R1
    ):
        raise QeReportSignatureError("PCK leaf certificate key is not an ECDSA P-256 key")
    qe = parsed.qe_report
    if not _verify_p256(pck_key, qe.report_signature, qe.report_body_raw):
        raise QeReportSignatureError(
            "QE report signature does not verify with the PCK leaf key "
            f"'{leaf.subject.rfc4514_string()}'"
        )
    expected = qe_report_data_binding(parsed.attestation_key, qe.auth_data)
    if qe.report_body.report_data != expected:
        raise QeReportBindingError(
            "QE report_data is not SHA-256(attestation key || QE authentication data) || 32 zero "
            "bytes: the attestation key is not the one the QE vouched for"
        )
    try:
        att_key = p256_public_key(parsed.attestation_key)
    except ValueError as exc:
        raise QuoteSignatureError("attestation key is not a valid P-256 point") from exc
    if not _verify_p256(att_key, parsed.signature, parsed.signed_data):
        raise QuoteSignatureError(
            "quote signature over header and TD quote body "
            f"(bytes 0..{SIGNATURE_DATA_LEN_OFFSET - 1}) does not verify with the attestation key"
        )
    return parsed


def verify_quote(
    quote: bytes,
    trusted_root: bytes | x509.Certificate,
    *,
    at: datetime.datetime | None = None,
) -> ParsedQuote:
    """Parse and verify a v4 TD quote against `trusted_root` (PEM, DER or certificate object)."""
    return verify_parsed_quote(parse_quote(quote), trusted_root, at=at)
