"""The vTPM's X.509 certificates: the TD-bound CA certificate and the EK certificates.

The CA key lives in the TPM, so a certificate is built with `cryptography` around a throwaway key
of the same algorithm (ECDSA P-384, SHA-384), its TBSCertificate is taken out, the TPM signs the
SHA-384 digest of it, and the certificate is reassembled with that signature in DER.

CA certificate (as Intel's TD-partitioning vTPM prototype issues it): BasicConstraints CA, EKU
vTPM TD-issued CA, the raw TD quote and the CC event log as extensions. [CONFLICT] The prototype's
design guide (Table 10) uses 2.16.840.1.113741.1.5.5.4.x; its running code uses .5.5.2.x, which
we use.
EK certificates follow the TCG EK credential profile: empty subject, critical SAN directoryName
with TPM manufacturer/model/version, EKU tcg-kp-EKCertificate, key usage by key type, CA=false,
and the authority key identifier of the issuing CA key (the prototype's code takes it from the EK,
which the reference marks as a likely bug; we do not copy that).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID, ObjectIdentifier

from vtpm import wire
from vtpm.errors import VtpmError

OID_TD_QUOTE = ObjectIdentifier("2.16.840.1.113741.1.5.5.2.2")
OID_EVENT_LOG = ObjectIdentifier("2.16.840.1.113741.1.5.5.2.3")
OID_VTPM_TD_CA = ObjectIdentifier("2.16.840.1.113741.1.5.5.2.5")
OID_TPM_MANUFACTURER = ObjectIdentifier("2.23.133.2.1")
OID_TPM_MODEL = ObjectIdentifier("2.23.133.2.2")
OID_TPM_VERSION = ObjectIdentifier("2.23.133.2.3")
OID_TCG_KP_EK_CERTIFICATE = ObjectIdentifier("2.23.133.8.1")

CA_COMMON_NAME = "vTPM TD-bound CA"
CA_ORGANIZATION = "tdpvtpm"
FAKE_LABEL = "FAKE attestation (test attester): bound to no TD"
SIMULATED_LABEL = "SIMULATED TDX attestation ({name})"
# RFC 5280 4.1.2.5: no well-defined expiration date.
NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
CA_CURVE = ec.SECP384R1()
CA_HASH = hashes.SHA384()
CA_DIGEST_SIZE = 48
RSA_DEFAULT_EXPONENT = 65537

DER_SEQUENCE = 0x30
DER_BIT_STRING = 0x03
DER_LONG_LENGTH = 0x80

# Signs a SHA-384 digest with the CA key and returns the ECDSA (r, s).
DigestSigner = Callable[[bytes], tuple[int, int]]


class CertificateError(VtpmError, ValueError):
    """A certificate or key could not be built or parsed; names what was wrong."""


# --- a minimal DER codec: only what reassembling a certificate needs --------------------------


def der_length(n: int) -> bytes:
    """The DER length octets for a content of n bytes."""
    if n < DER_LONG_LENGTH:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([DER_LONG_LENGTH | len(raw)]) + raw


def der_tlv(tag: int, content: bytes) -> bytes:
    """One DER element."""
    return bytes([tag]) + der_length(len(content)) + content


def der_elements(data: bytes) -> list[bytes]:
    """Split concatenated DER elements (each returned whole, tag and length included)."""
    out = []
    offset = 0
    while offset < len(data):
        if offset + 2 > len(data):
            raise CertificateError(f"DER: truncated header at offset {offset}")
        first = data[offset + 1]
        header = 2
        length = first
        if first & DER_LONG_LENGTH:
            count = first & ~DER_LONG_LENGTH & 0xFF
            header += count
            if count == 0 or offset + header > len(data):
                raise CertificateError(f"DER: bad long-form length at offset {offset}")
            length = int.from_bytes(data[offset + 2 : offset + header], "big")
        end = offset + header + length
        if end > len(data):
            raise CertificateError(f"DER: element at offset {offset} runs past the end")
        out.append(data[offset:end])
        offset = end
    return out


def der_content(element: bytes) -> bytes:
    """The content octets of one DER element."""
    first = element[1]
    header = 2 + (first & 0x7F if first & DER_LONG_LENGTH else 0)
    return element[header:]


# --- TPM public areas to cryptography keys ------------------------------------------------------

CURVES: dict[int, ec.EllipticCurve] = {
    wire.TPM_ECC_NIST_P256: ec.SECP256R1(),
    wire.TPM_ECC_NIST_P384: ec.SECP384R1(),
}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def public_key_of(public: wire.Public) -> PublicKey:
    """The cryptography public key for a TPMT_PUBLIC (RSA or ECC on P-256/P-384)."""
    params, unique = public.parameters, public.unique
    if isinstance(params, wire.RsaParms) and isinstance(unique, bytes):
        exponent = params.exponent or RSA_DEFAULT_EXPONENT
        return rsa.RSAPublicNumbers(exponent, int.from_bytes(unique, "big")).public_key()
    if not isinstance(params, wire.EccParms) or not isinstance(unique, tuple):
        raise CertificateError(f"TPMT_PUBLIC type 0x{public.type:04x} with mismatched parameters")
    curve = CURVES.get(params.curve_id)
    if curve is None:
        raise CertificateError(f"TPM ECC curve 0x{params.curve_id:04x} not supported")
    x, y = (int.from_bytes(c, "big") for c in unique)
    return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()


def sec1_point(key: ec.EllipticCurvePublicKey) -> bytes:
    """The uncompressed SEC1 encoding 0x04||X||Y."""
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


# --- TPM identity for the EK SAN ----------------------------------------------------------------


@dataclass(frozen=True)
class TpmIdentity:
    """TPM manufacturer, model and version strings as the TCG EK credential profile writes them."""

    manufacturer: str
    model: str
    version: str

    @classmethod
    def from_properties(cls, props: dict[int, int]) -> TpmIdentity:
        """From TPM_PT_MANUFACTURER, TPM_PT_VENDOR_STRING_1..4 and TPM_PT_FIRMWARE_VERSION_1."""
        missing = [
            f"0x{p:x}"
            for p in (wire.TPM_PT_MANUFACTURER, wire.TPM_PT_FIRMWARE_VERSION_1)
            if p not in props
        ]
        if missing:
            raise CertificateError(f"TPM2_GetCapability did not return properties {missing}")
        vendor = b"".join(
            props.get(p, 0).to_bytes(4, "big")
            for p in range(wire.TPM_PT_VENDOR_STRING_1, wire.TPM_PT_VENDOR_STRING_4 + 1)
        )
        model = vendor.rstrip(b"\0").replace(b"\0", b"").decode("ascii", "replace") or "unknown"
        return cls(
            f"id:{props[wire.TPM_PT_MANUFACTURER]:08X}",
            model,
            f"id:{props[wire.TPM_PT_FIRMWARE_VERSION_1]:08X}",
        )

    def directory_name(self) -> x509.Name:
        """The SAN directoryName: one RDN with manufacturer, model and version."""
        return x509.Name(
            [
                x509.RelativeDistinguishedName(
                    [
                        x509.NameAttribute(OID_TPM_MANUFACTURER, self.manufacturer),
                        x509.NameAttribute(OID_TPM_MODEL, self.model),
                        x509.NameAttribute(OID_TPM_VERSION, self.version),
                    ]
                )
            ]
        )


# --- signing with a key that never leaves the TPM -----------------------------------------------


def sign_certificate(builder: x509.CertificateBuilder, signer: DigestSigner) -> bytes:
    """DER certificate from `builder`, signed (ECDSA P-384 / SHA-384) by `signer`."""
    throwaway = ec.generate_private_key(CA_CURVE)
    draft = builder.sign(throwaway, CA_HASH)
    tbs = draft.tbs_certificate_bytes
    outer = der_elements(draft.public_bytes(serialization.Encoding.DER))
    if len(outer) != 1:
        raise CertificateError("draft certificate is not one DER element")
    parts = der_elements(der_content(outer[0]))
    if len(parts) != 3 or parts[0] != tbs:
        raise CertificateError("draft certificate is not SEQUENCE {tbs, algorithm, signature}")
    r, s = signer(hashlib.sha384(tbs).digest())
    signature = encode_dss_signature(r, s)
    return der_tlv(DER_SEQUENCE, tbs + parts[1] + der_tlv(DER_BIT_STRING, b"\0" + signature))


def ca_subject(attester_name: str, simulated: bool, fake: bool) -> x509.Name:
    """CA subject; says FAKE or SIMULATED when the quote inside is not from real TDX."""
    attrs = [
        x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_ORGANIZATION),
    ]
    if fake:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, FAKE_LABEL))
    elif simulated:
        label = SIMULATED_LABEL.format(name=attester_name)
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, label))
    return x509.Name(attrs)


def build_ca_certificate(
    ca_key: ec.EllipticCurvePublicKey,
    subject: x509.Name,
    quote: bytes,
    event_log: bytes,
    signer: DigestSigner,
    now: datetime.datetime,
) -> bytes:
    """The self-signed CA certificate carrying the TD quote and the CC event log."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(ca_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([OID_VTPM_TD_CA]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key), critical=False)
        .add_extension(x509.UnrecognizedExtension(OID_TD_QUOTE, quote), critical=False)
        .add_extension(x509.UnrecognizedExtension(OID_EVENT_LOG, event_log), critical=False)
    )
    return sign_certificate(builder, signer)


def build_ek_certificate(
    ek_key: PublicKey,
    issuer: x509.Name,
    ca_key: ec.EllipticCurvePublicKey,
    identity: TpmIdentity,
    signer: DigestSigner,
    now: datetime.datetime,
) -> bytes:
    """An EK certificate per the TCG EK credential profile, issued by the CA key."""
    is_rsa = isinstance(ek_key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer)
        .public_key(ek_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(NOT_AFTER)
        .add_extension(
            x509.SubjectAlternativeName([x509.DirectoryName(identity.directory_name())]),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=not is_rsa,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([OID_TCG_KP_EK_CERTIFICATE]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key), critical=False)
    )
    return sign_certificate(builder, signer)


def verify_issued_by(cert_der: bytes, issuer_der: bytes) -> None:
    """Raise CertificateError unless `cert_der` is signed by the key in `issuer_der`."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        issuer = x509.load_der_x509_certificate(issuer_der)
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"certificate does not verify against its issuer: {exc}") from exc
    except Exception as exc:  # InvalidSignature carries no message
        raise CertificateError(f"certificate signature invalid ({type(exc).__name__})") from exc
