"""TD quotes versions 4 and 5: a bounds-checked parser, and verification against a chosen root.

Layouts are `tdxdefs.quote` (Intel TDX DCAP Quoting Library API, appendix "TD Quote Format"). The
parser accepts v4 quotes and v5 quotes with a TD report 1.0 or 1.5 body, real or simulated. Bytes
after the signature data (Intel's quote generation hands out a padded buffer) are kept in
`ParsedQuote.trailing` and never read. `verify_quote` checks the PCK chain up to the root the caller
passes, the QE report signature, the QE report's binding of the attestation key, and the quote
signature. Every parse error names the field and its offset.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tdxdefs.errors import LayoutError
from tdxdefs.layout import Layout
from tdxdefs.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    ATT_KEY_TYPE_OFFSET,
    ECDSA_P256_KEY_SIZE,
    ECDSA_P256_SIGNATURE_SIZE,
    HEADER_OFFSET,
    QE_REPORT_DATA_BINDING_SIZE,
    QUOTE_VERSION_4,
    QUOTE_VERSION_5,
    SGX_REPORT_DATA_SIZE,
    SIGNATURE_DATA_LEN_OFFSET,
    TD_BODY_LAYOUTS,
    TEE_TYPE_OFFSET,
    V5_BODY_DESCRIPTOR_OFFSET,
    CertificationDataHeader,
    CertificationDataType,
    QeAuthDataSize,
    QuoteBodyDescriptor,
    QuoteBodyType,
    QuoteHeader,
    SgxReportBody,
    SignatureDataLength,
    TdQuoteBody,
)
from tdxdefs.report import TEE_TYPE_TDX
from verifier.chain import MalformedCertificateError, check_well_formed, verify_chain
from verifier.errors import VerificationError

KNOWN_CERT_TYPES = frozenset(int(t) for t in CertificationDataType)
CERT_TYPE_PCK_CERT_CHAIN = int(CertificationDataType.PCK_CERT_CHAIN)
CERT_TYPE_QE_REPORT = int(CertificationDataType.QE_REPORT)
SEC1_UNCOMPRESSED = b"\x04"
MAX_CERT_NESTING = 1
PEM_PADDING = b"\x00"
PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)


L = TypeVar("L", bound=Layout)


class QuoteParseError(VerificationError, ValueError):
    """The quote bytes do not follow the v4/v5 layout; names the field and its byte offset."""

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

    def layout(self, layout: type[L], field: str) -> L:
        """Parse `layout` at the current position; errors name `field` and the quote offset."""
        raw = self.take(layout.SIZE, field)
        try:
            return layout.unpack(raw)
        except LayoutError as exc:
            at = self.offset - layout.SIZE + (exc.offset or 0)
            raise QuoteParseError(f"{field}.{exc.field}", at, exc.reason) from exc

    def remaining(self) -> int:
        return len(self.data) - self.pos


SGX_REPORT_BODY_SIZE = SgxReportBody.SIZE


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
            + QeAuthDataSize(len(self.auth_data)).pack()
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
        return CertificationDataHeader(self.cert_type, len(self.data)).pack() + self.data


@dataclass(frozen=True)
class ParsedQuote:
    """A parsed v4 or v5 TD quote; `raw` is kept so signatures are checked over the original bytes.

    `signed_size` is where the signed part (header, v5 body descriptor, body) ends; `trailing` is
    whatever followed the signature data (reported, never used), starting at `trailing_offset`.
    """

    header: QuoteHeader
    body: TdQuoteBody
    signature: bytes
    attestation_key: bytes
    certification: CertificationData
    raw: bytes
    signed_size: int = SIGNATURE_DATA_LEN_OFFSET
    body_type: int = int(QuoteBodyType.TD_REPORT_10)
    trailing: bytes = b""
    trailing_offset: int = 0

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def signed_data(self) -> bytes:
        """Header, v5 body descriptor and body: the bytes the attestation key signs."""
        return self.raw[: self.signed_size]

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
    auth_size = reader.layout(QeAuthDataSize, "qe_auth_data").size
    auth_data = reader.take(auth_size, "qe_auth_data")
    nested = _parse_certification_data(reader, depth + 1)
    if reader.remaining():
        raise QuoteParseError(
            "qe_report_certification_data",
            reader.offset,
            f"{reader.remaining()} bytes after the nested certification data",
        )
    try:
        body = SgxReportBody.unpack(raw_body)
    except LayoutError as exc:
        raise QuoteParseError(f"qe_report_body.{exc.field}", base + exc.offset, exc.reason) from exc
    return QeReportCertificationData(body, raw_body, signature, auth_data, nested)


def _parse_certification_data(reader: _Reader, depth: int) -> CertificationData:
    name = "certification_data" if depth == 0 else "qe_report_certification_data.nested"
    type_offset = reader.offset
    header = reader.layout(CertificationDataHeader, f"{name}.header")
    cert_type, size = header.cert_type, header.size
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


def _parse_body(reader: _Reader, version: int) -> tuple[TdQuoteBody, int]:
    """The TD quote body (and its type) after the header: v4 fixed, v5 per its descriptor."""
    if version == QUOTE_VERSION_4:
        return reader.layout(TdQuoteBody, "td_quote_body"), int(QuoteBodyType.TD_REPORT_10)
    descriptor = reader.layout(QuoteBodyDescriptor, "body_descriptor")
    layout = TD_BODY_LAYOUTS.get(descriptor.body_type)
    if layout is None:
        raise QuoteParseError(
            "body_descriptor.body_type",
            V5_BODY_DESCRIPTOR_OFFSET,
            f"{descriptor.body_type}, expected 2 (TD report 1.0), 3 (TD report 1.5) or 4 "
            "(TD report 1.5 with extensions)",
        )
    if descriptor.size != layout.SIZE:
        raise QuoteParseError(
            "body_descriptor.size",
            V5_BODY_DESCRIPTOR_OFFSET + QuoteBodyDescriptor.offset("size"),
            f"{descriptor.size}, a body of type {descriptor.body_type} is {layout.SIZE} bytes",
        )
    return reader.layout(layout, "td_quote_body"), descriptor.body_type


def parse_quote(quote: bytes) -> ParsedQuote:
    """Parse a v4 or v5 TD quote (any issuer); raise QuoteParseError naming field and offset."""
    raw = bytes(quote)
    reader = _Reader(raw)
    header = reader.layout(QuoteHeader, "header")
    if header.version not in (QUOTE_VERSION_4, QUOTE_VERSION_5):
        raise QuoteParseError("header.version", HEADER_OFFSET, f"{header.version}, expected 4 or 5")
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
    body, body_type = _parse_body(reader, header.version)
    signed_size = reader.offset
    sig_len = reader.layout(SignatureDataLength, "signature_data_len").length
    if sig_len > reader.remaining():
        raise QuoteParseError(
            "signature_data_len",
            signed_size,
            f"{sig_len}, but only {reader.remaining()} bytes follow",
        )
    sig_base = reader.offset
    sig = _Reader(reader.take(sig_len, "signature_data"), sig_base)
    signature = sig.take(ECDSA_P256_SIGNATURE_SIZE, "signature_data.signature")
    att_key = sig.take(ECDSA_P256_KEY_SIZE, "signature_data.attestation_key")
    certification = _parse_certification_data(sig, 0)
    if sig.remaining():
        raise QuoteParseError(
            "signature_data",
            sig.offset,
            f"{sig.remaining()} bytes after the certification data, inside signature_data_len",
        )
    trailing_offset = reader.offset
    trailing = raw[trailing_offset:]
    return ParsedQuote(
        header,
        body,
        signature,
        att_key,
        certification,
        raw,
        signed_size,
        body_type,
        trailing,
        trailing_offset,
    )


def _raw_to_der(signature: bytes) -> bytes:
    half = len(signature) // 2
    r = int.from_bytes(signature[:half], "big")
    s = int.from_bytes(signature[half:], "big")
    return encode_dss_signature(r, s)


def p256_public_key(raw_xy: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 key whose X||Y (64 bytes, big-endian) the quote carries."""
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), SEC1_UNCOMPRESSED + raw_xy)


def p256_signature_valid(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    """An ECDSA P-256/SHA-256 signature given as raw r||s (as quotes and collateral carry it)."""
    try:
        key.verify(_raw_to_der(signature), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def qe_report_data_binding(attestation_key: bytes, auth_data: bytes) -> bytes:
    """The 64-byte QE report_data that binds the attestation key (Intel TDX DCAP Quoting Library
    API, "QE Report": SHA-256 of attestation key and QE authentication data, then zeros)."""
    digest = hashlib.sha256(attestation_key + auth_data).digest()
    return digest + bytes(SGX_REPORT_DATA_SIZE - QE_REPORT_DATA_BINDING_SIZE)


def check_pck_chain(
    parsed: ParsedQuote, trusted_root: bytes | x509.Certificate, at: datetime.datetime | None
) -> x509.Certificate:
    """The PCK chain verifies up to `trusted_root` at `at`; returns the PCK leaf."""
    return verify_chain(parsed.pck_chain, trusted_root, at=at)


def check_qe_report_signature(parsed: ParsedQuote, leaf: x509.Certificate) -> None:
    """The QE report body is signed by the PCK leaf's P-256 key."""
    pck_key = leaf.public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey) or not isinstance(
        pck_key.curve, ec.SECP256R1
    ):
        raise QeReportSignatureError("PCK leaf certificate key is not an ECDSA P-256 key")
    qe = parsed.qe_report
    if not p256_signature_valid(pck_key, qe.report_signature, qe.report_body_raw):
        raise QeReportSignatureError(
            "QE report signature does not verify with the PCK leaf key "
            f"'{leaf.subject.rfc4514_string()}'"
        )


def check_qe_binding(parsed: ParsedQuote) -> None:
    """The QE report's report_data binds the attestation key and the QE authentication data."""
    qe = parsed.qe_report
    expected = qe_report_data_binding(parsed.attestation_key, qe.auth_data)
    if qe.report_body.report_data != expected:
        raise QeReportBindingError(
            "QE report_data is not SHA-256(attestation key || QE authentication data) || 32 zero "
            "bytes: the attestation key is not the one the QE vouched for"
        )


def check_quote_signature(parsed: ParsedQuote) -> None:
    """The attestation key signs header, v5 body descriptor and body."""
    try:
        att_key = p256_public_key(parsed.attestation_key)
    except ValueError as exc:
        raise QuoteSignatureError("attestation key is not a valid P-256 point") from exc
    if not p256_signature_valid(att_key, parsed.signature, parsed.signed_data):
        raise QuoteSignatureError(
            "quote signature over header and TD quote body "
            f"(bytes 0..{parsed.signed_size - 1}) does not verify with the attestation key"
        )


def verify_parsed_quote(
    parsed: ParsedQuote,
    trusted_root: bytes | x509.Certificate,
    *,
    at: datetime.datetime | None = None,
) -> ParsedQuote:
    """Verify chain, QE report signature, key binding and quote signature, in that order."""
    leaf = check_pck_chain(parsed, trusted_root, at)
    check_qe_report_signature(parsed, leaf)
    check_qe_binding(parsed)
    check_quote_signature(parsed)
    return parsed


def verify_quote(
    quote: bytes,
    trusted_root: bytes | x509.Certificate,
    *,
    at: datetime.datetime | None = None,
) -> ParsedQuote:
    """Parse and verify a v4/v5 TD quote against `trusted_root` (PEM, DER or certificate)."""
    return verify_parsed_quote(parse_quote(quote), trusted_root, at=at)
