"""The SIMULATED PCK (Provisioning Certification Key) certificate chain: root CA, intermediate CA,
PCK leaf (ECDSA P-256).

Every subject says it is a tdxsim simulation; nothing here claims to be Intel, and a verifier only
accepts this chain if it is handed this root on purpose. Keys are fresh per platform instance, or
derived from a seed (HKDF-SHA-256 into `ec.derive_private_key`) for reproducible tests. Real PCK
leaves carry SGX extensions (FMSPC, TCB levels); the simulated leaf carries none.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

# Order of the P-256 base point (SEC 2, secp256r1 n).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
HKDF_KEY_BYTES = 48  # 128 bits more than the order, so the reduction bias is negligible
SERIAL_BYTES = 16
SIM_ORGANIZATION = "tdxsim simulation"
SIM_UNIT = "SIMULATED attestation, no hardware root of trust"
ROOT_CN = "tdxsim SIMULATED PCK Root CA"
INTERMEDIATE_CN = "tdxsim SIMULATED PCK Platform CA"
LEAF_CN = "tdxsim SIMULATED PCK Certificate"
NOT_BEFORE = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
NOT_AFTER = datetime.datetime(2099, 12, 31, tzinfo=datetime.UTC)


def derive_p256_key(seed: bytes, label: str) -> ec.EllipticCurvePrivateKey:
    """A deterministic P-256 private key from `seed`, distinct per `label`."""
    okm = HKDF(hashes.SHA256(), HKDF_KEY_BYTES, salt=None, info=label.encode()).derive(seed)
    scalar = int.from_bytes(okm, "big") % (P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def new_p256_key(seed: bytes | None, label: str) -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key, or the seed-derived one when a seed is given."""
    if seed is None:
        return ec.generate_private_key(ec.SECP256R1())
    return derive_p256_key(seed, label)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, SIM_UNIT),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIM_ORGANIZATION),
        ]
    )


def _serial(seed: bytes | None, label: str) -> int:
    if seed is None:
        return x509.random_serial_number()
    digest = hashlib.sha256(seed + label.encode()).digest()[:SERIAL_BYTES]
    return int.from_bytes(digest, "big") >> 1 | 1  # positive, non-zero, under 20 bytes


def _issue(
    subject: str,
    issuer: str,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    serial: int,
    ca_path_length: int | None,
    is_ca: bool,
) -> x509.Certificate:
    usage = x509.KeyUsage(
        digital_signature=not is_ca,
        content_commitment=not is_ca,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=is_ca,
        crl_sign=is_ca,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=ca_path_length), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        .sign(signer, hashes.SHA256())
    )


@dataclass(frozen=True)
class PckChain:
    """One simulated platform's PCK chain, and the PCK leaf key that signs QE reports."""

    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey

    def pem_chain(self) -> bytes:
        """leaf | intermediate | root in PEM, as certification data type 5 carries it."""
        return b"".join(
            c.public_bytes(Encoding.PEM) for c in (self.leaf, self.intermediate, self.root)
        )

    def root_pem(self) -> bytes:
        return self.root.public_bytes(Encoding.PEM)

    def root_der(self) -> bytes:
        return self.root.public_bytes(Encoding.DER)


def generate_pck_chain(seed: bytes | None = None) -> PckChain:
    """A new simulated PCK chain; with a seed, every key (not every signature) is reproducible."""
    root_key = new_p256_key(seed, "tdxsim pck root")
    inter_key = new_p256_key(seed, "tdxsim pck intermediate")
    leaf_key = new_p256_key(seed, "tdxsim pck leaf")
    root = _issue(
        ROOT_CN,
        ROOT_CN,
        root_key.public_key(),
        root_key,
        _serial(seed, "root"),
        ca_path_length=1,
        is_ca=True,
    )
    intermediate = _issue(
        INTERMEDIATE_CN,
        ROOT_CN,
        inter_key.public_key(),
        root_key,
        _serial(seed, "intermediate"),
        ca_path_length=0,
        is_ca=True,
    )
    leaf = _issue(
        LEAF_CN,
        INTERMEDIATE_CN,
        leaf_key.public_key(),
        inter_key,
        _serial(seed, "leaf"),
        ca_path_length=None,
        is_ca=False,
    )
    return PckChain(root, intermediate, leaf, leaf_key)
