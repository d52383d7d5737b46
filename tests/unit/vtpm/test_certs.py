"""Certificate assembly: DER codec, TPM identity strings, and signing through a digest signer."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from vtpm import certs, wire

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def software_signer(key: ec.EllipticCurvePrivateKey) -> certs.DigestSigner:
    def sign(digest: bytes) -> tuple[int, int]:
        assert len(digest) == 48
        r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA384()))))
        return r, s

    return sign


@pytest.mark.parametrize(("n", "octets"), [(0, "00"), (127, "7f"), (128, "8180"), (300, "82012c")])
def test_der_length(n: int, octets: str) -> None:
    assert certs.der_length(n).hex() == octets


def test_der_elements_split_and_errors() -> None:
    a = certs.der_tlv(0x04, b"x" * 200)
    b = certs.der_tlv(0x05, b"")
    assert certs.der_elements(a + b) == [a, b]
    assert certs.der_content(a) == b"x" * 200
    with pytest.raises(certs.CertificateError, match="runs past the end"):
        certs.der_elements(a[:-1])
    with pytest.raises(certs.CertificateError, match="truncated header at offset 0"):
        certs.der_elements(b"\x30")


def test_identity_from_properties() -> None:
    props = {
        wire.TPM_PT_MANUFACTURER: 0x49424D00,
        wire.TPM_PT_VENDOR_STRING_1: int.from_bytes(b"SW  ", "big"),
        wire.TPM_PT_VENDOR_STRING_2: int.from_bytes(b" TPM", "big"),
        wire.TPM_PT_VENDOR_STRING_3: 0,
        wire.TPM_PT_VENDOR_STRING_4: 0,
        wire.TPM_PT_FIRMWARE_VERSION_1: 0x20191023,
    }
    ident = certs.TpmIdentity.from_properties(props)
    assert ident == certs.TpmIdentity("id:49424D00", "SW   TPM", "id:20191023")
    with pytest.raises(certs.CertificateError, match="0x105"):
        certs.TpmIdentity.from_properties({wire.TPM_PT_FIRMWARE_VERSION_1: 1})


def test_ca_and_ek_certificates_signed_by_digest_signer() -> None:
    ca_priv = ec.generate_private_key(ec.SECP384R1())
    ca_pub = ca_priv.public_key()
    signer = software_signer(ca_priv)
    subject = certs.ca_subject("fake", simulated=True, fake=True)
    ca_der = certs.build_ca_certificate(ca_pub, subject, b"QUOTE", b"LOG", signer, NOW)
    ca = x509.load_der_x509_certificate(ca_der)
    ca.verify_directly_issued_by(ca)
    for oid, value in ((certs.OID_TD_QUOTE, b"QUOTE"), (certs.OID_EVENT_LOG, b"LOG")):
        ext = ca.extensions.get_extension_for_oid(oid).value
        assert isinstance(ext, x509.UnrecognizedExtension)
        assert ext.value == value
    assert "FAKE" in ca.subject.rfc4514_string()

    ident = certs.TpmIdentity("id:49424D00", "SW TPM", "id:20191023")
    for ek_priv, usage in (
        (rsa.generate_private_key(65537, 2048), "key_encipherment"),
        (ec.generate_private_key(ec.SECP256R1()), "key_agreement"),
    ):
        ek_der = certs.build_ek_certificate(
            ek_priv.public_key(), subject, ca_pub, ident, signer, NOW
        )
        certs.verify_issued_by(ek_der, ca_der)
        ek = x509.load_der_x509_certificate(ek_der)
        assert len(ek.subject) == 0
        san = ek.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert san.critical
        aki = ek.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == x509.SubjectKeyIdentifier.from_public_key(ca_pub).digest
        assert getattr(ek.extensions.get_extension_for_class(x509.KeyUsage).value, usage)


def test_verify_issued_by_rejects_other_issuer_and_tampering() -> None:
    ca_priv = ec.generate_private_key(ec.SECP384R1())
    subject = certs.ca_subject("x", simulated=False, fake=False)
    ca_der = certs.build_ca_certificate(
        ca_priv.public_key(), subject, b"Q", b"L", software_signer(ca_priv), NOW
    )
    other = ec.generate_private_key(ec.SECP384R1())
    other_der = certs.build_ca_certificate(
        other.public_key(), subject, b"Q", b"L", software_signer(other), NOW
    )
    with pytest.raises(certs.CertificateError):
        certs.verify_issued_by(ca_der, other_der)
    tampered = bytearray(ca_der)
    tampered[ca_der.index(b"Q")] ^= 0x01
    with pytest.raises(certs.CertificateError):
        certs.verify_issued_by(bytes(tampered), ca_der)


def test_public_key_of_rejects_unsupported_curve() -> None:
    public = wire.Public(
        wire.TPM_ALG_ECC,
        wire.TPM_ALG_SHA256,
        0,
        b"",
        wire.EccParms(curve_id=0x0020),
        (b"\x01", b"\x02"),
    )
    with pytest.raises(certs.CertificateError, match="curve 0x0020"):
        certs.public_key_of(public)
