"""Certificate chains up to a caller-chosen root: each way a chain can fail has its own error."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tdxsim.attestation.pck import PckChain, generate_pck_chain
from verifier.chain import (
    CertificateProfileError,
    CertificateSignatureError,
    CertificateValidityError,
    ChainError,
    UntrustedRootError,
    verify_chain,
)

START = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
END = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _cert(
    subject: str,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    start: datetime.datetime = START,
    end: datetime.datetime = END,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def pck() -> PckChain:
    return generate_pck_chain(b"chain tests")


def test_full_chain_and_chain_without_root_verify(pck: PckChain) -> None:
    assert verify_chain([pck.leaf, pck.intermediate, pck.root], pck.root, at=NOW) == pck.leaf
    assert verify_chain([pck.leaf, pck.intermediate], pck.root_pem(), at=NOW) == pck.leaf


def test_chain_ending_at_another_root_is_untrusted(pck: PckChain) -> None:
    other = generate_pck_chain(b"other")
    with pytest.raises(UntrustedRootError, match="not the trusted root"):
        verify_chain([pck.leaf, pck.intermediate, pck.root], other.root, at=NOW)
    with pytest.raises(UntrustedRootError, match="not issued by the trusted root"):
        verify_chain([pck.leaf, pck.intermediate], other.root, at=NOW)


def test_foreign_intermediate_breaks_the_signature_link(pck: PckChain) -> None:
    other = generate_pck_chain(b"other")  # same subject names, different keys
    with pytest.raises(CertificateSignatureError, match="leaf certificate"):
        verify_chain([pck.leaf, other.intermediate, pck.root], pck.root, at=NOW)


def test_issuer_that_is_not_a_ca_is_refused(pck: PckChain) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    below_leaf = _cert("issued by a leaf", pck.leaf, pck.leaf_key, key, ca=False)
    with pytest.raises(CertificateProfileError, match=r"intermediate 1 .* is not a CA"):
        verify_chain([below_leaf, pck.leaf, pck.intermediate, pck.root], pck.root, at=NOW)


def test_trusted_root_must_be_a_ca(pck: PckChain) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    below_leaf = _cert("issued by a leaf", pck.leaf, pck.leaf_key, key, ca=False)
    with pytest.raises(CertificateProfileError, match="trusted root"):
        verify_chain([below_leaf], pck.leaf, at=NOW)


def test_expired_and_not_yet_valid_certificates(pck: PckChain) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    old = _cert(
        "old leaf",
        pck.intermediate,
        pck.leaf_key,
        key,
        ca=False,
        end=datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC),
    )
    with pytest.raises(CertificateValidityError, match=r"leaf certificate .* not valid"):
        verify_chain([old, pck.intermediate, pck.root], pck.root, at=NOW)
    with pytest.raises(CertificateValidityError, match="not valid at 2023"):
        verify_chain(
            [pck.leaf, pck.intermediate, pck.root],
            pck.root,
            at=datetime.datetime(2023, 6, 1, tzinfo=datetime.UTC),
        )


def test_degenerate_chains(pck: PckChain) -> None:
    with pytest.raises(ChainError, match="empty"):
        verify_chain([], pck.root, at=NOW)
    with pytest.raises(ChainError, match="only the root"):
        verify_chain([pck.root], pck.root, at=NOW)
    with pytest.raises(ChainError, match="more than"):
        verify_chain([pck.leaf] * 9, pck.root, at=NOW)


def test_self_signed_leaf_with_a_trusted_looking_name_is_untrusted(pck: PckChain) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    fake_root = _cert("tdxsim SIMULATED PCK Root CA", None, key, key, ca=True)
    leaf = _cert("leaf", fake_root, key, ec.generate_private_key(ec.SECP256R1()), ca=False)
    with pytest.raises(UntrustedRootError):
        verify_chain([leaf, fake_root], pck.root, at=NOW)
    with pytest.raises(UntrustedRootError):
        verify_chain([leaf], pck.root, at=NOW)
