"""The SIMULATED PCK (Provisioning Certification Key) certificate chain: root CA, intermediate CA,
PCK leaf (ECDSA P-256).

Every subject says it is a tdxsim simulation; nothing here claims to be Intel, and a verifier only
accepts this chain if it is handed this root on purpose. Keys are fresh per platform instance, or
derived from a seed (HKDF-SHA-256 into `ec.derive_private_key`) for reproducible tests; with a
seed the certificates are signed with deterministic ECDSA (RFC 6979), so they repeat byte for
byte. The leaf carries the SGX extensions a real PCK leaf carries (Intel SGX PCK Certificate and
CRL Profile, "SGX Extensions": PPID, TCB component SVNs, PCESVN, CPUSVN, PCE ID, FMSPC, SGX type),
with SIMULATED values (`SimulatedTcb`), so TCB matching runs on simulated quotes as on real ones.
`WELL_KNOWN_SEED` names the simulated platform whose root the verifier ships as "simulated".
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
WELL_KNOWN_SEED = b"tdxsim well-known SIMULATED platform"

OID_SGX_EXTENSIONS = "1.2.840.113741.1.13.1"
SGX_TCB_COMPONENTS = 16
SGX_TYPE_STANDARD = 0
DER_INTEGER, DER_OCTET_STRING, DER_OID, DER_ENUMERATED, DER_SEQUENCE = 0x02, 0x04, 0x06, 0x0A, 0x30
DER_SHORT_LENGTH_MAX = 0x7F
DER_LONG_LENGTH = 0x80
OID_ARC_BITS = 7


@dataclass(frozen=True)
class SimulatedTcb:
    """The SIMULATED platform TCB the PCK leaf states: FMSPC, PCE ID, PCESVN, SGX TCB SVNs."""

    fmspc: bytes = bytes.fromhex("00AA55000000")  # not an Intel FMSPC: marks the simulation
    pce_id: bytes = bytes(2)
    pcesvn: int = 11
    sgx_components: tuple[int, ...] = (2, 2, 2, 2, 3, 1, 0, 5) + (0,) * 8
    ppid: bytes = hashlib.sha256(b"tdxsim SIMULATED PPID").digest()[:16]

    @property
    def cpusvn(self) -> bytes:
        return bytes(self.sgx_components)


def _der(tag: int, value: bytes) -> bytes:
    if len(value) <= DER_SHORT_LENGTH_MAX:
        return bytes([tag, len(value)]) + value
    size = len(value).to_bytes((len(value).bit_length() + 7) // 8, "big")
    return bytes([tag, DER_LONG_LENGTH | len(size)]) + size + value


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= OID_ARC_BITS
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= OID_ARC_BITS
        out += bytes(reversed(chunk))
    return _der(DER_OID, bytes(out))


def _der_int(value: int) -> bytes:
    return _der(DER_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _pair(oid: str, value: bytes) -> bytes:
    return _der(DER_SEQUENCE, _der_oid(oid) + value)


def sgx_extensions_der(tcb: SimulatedTcb) -> bytes:
    """The SGX extensions value (DER) for a PCK leaf stating `tcb`."""
    base = OID_SGX_EXTENSIONS
    components = b"".join(
        _pair(f"{base}.2.{i + 1}", _der_int(svn)) for i, svn in enumerate(tcb.sgx_components)
    )
    tcb_value = (
        components
        + _pair(f"{base}.2.17", _der_int(tcb.pcesvn))
        + _pair(f"{base}.2.18", _der(DER_OCTET_STRING, tcb.cpusvn))
    )
    return _der(
        DER_SEQUENCE,
        _pair(f"{base}.1", _der(DER_OCTET_STRING, tcb.ppid))
        + _pair(f"{base}.2", _der(DER_SEQUENCE, tcb_value))
        + _pair(f"{base}.3", _der(DER_OCTET_STRING, tcb.pce_id))
        + _pair(f"{base}.4", _der(DER_OCTET_STRING, tcb.fmspc))
        + _pair(f"{base}.5", _der(DER_ENUMERATED, bytes([SGX_TYPE_STANDARD]))),
    )


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


def certificate_serial(seed: bytes | None, label: str) -> int:
    if seed is None:
        return x509.random_serial_number()
    digest = hashlib.sha256(seed + label.encode()).digest()[:SERIAL_BYTES]
    return int.from_bytes(digest, "big") >> 1 | 1  # positive, non-zero, under 20 bytes


def issue_certificate(
    subject: str,
    issuer: str,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    serial: int,
    ca_path_length: int | None,
    is_ca: bool,
    deterministic: bool,
    extra: x509.ExtensionType | None = None,
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
    builder = (
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
    )
    if extra is not None:
        builder = builder.add_extension(extra, critical=False)
    return builder.sign(signer, hashes.SHA256(), ecdsa_deterministic=deterministic)


@dataclass(frozen=True)
class PckChain:
    """One simulated platform's PCK chain, and the PCK leaf key that signs QE reports."""

    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    root_key: ec.EllipticCurvePrivateKey
    intermediate_key: ec.EllipticCurvePrivateKey
    tcb: SimulatedTcb
    seed: bytes | None = None

    def pem_chain(self) -> bytes:
        """leaf | intermediate | root in PEM, as certification data type 5 carries it."""
        return b"".join(
            c.public_bytes(Encoding.PEM) for c in (self.leaf, self.intermediate, self.root)
        )

    def root_pem(self) -> bytes:
        return self.root.public_bytes(Encoding.PEM)

    def root_der(self) -> bytes:
        return self.root.public_bytes(Encoding.DER)


def generate_pck_chain(seed: bytes | None = None, tcb: SimulatedTcb | None = None) -> PckChain:
    """A new simulated PCK chain; with a seed, every key and certificate is reproducible."""
    tcb = tcb if tcb is not None else SimulatedTcb()
    deterministic = seed is not None
    root_key = new_p256_key(seed, "tdxsim pck root")
    inter_key = new_p256_key(seed, "tdxsim pck intermediate")
    leaf_key = new_p256_key(seed, "tdxsim pck leaf")
    root = issue_certificate(
        ROOT_CN,
        ROOT_CN,
        root_key.public_key(),
        root_key,
        certificate_serial(seed, "root"),
        ca_path_length=1,
        is_ca=True,
        deterministic=deterministic,
    )
    intermediate = issue_certificate(
        INTERMEDIATE_CN,
        ROOT_CN,
        inter_key.public_key(),
        root_key,
        certificate_serial(seed, "intermediate"),
        ca_path_length=0,
        is_ca=True,
        deterministic=deterministic,
    )
    leaf = issue_certificate(
        LEAF_CN,
        INTERMEDIATE_CN,
        leaf_key.public_key(),
        inter_key,
        certificate_serial(seed, "leaf"),
        ca_path_length=None,
        is_ca=False,
        deterministic=deterministic,
        extra=x509.UnrecognizedExtension(
            x509.ObjectIdentifier(OID_SGX_EXTENSIONS), sgx_extensions_der(tcb)
        ),
    )
    return PckChain(root, intermediate, leaf, leaf_key, root_key, inter_key, tcb, seed)
