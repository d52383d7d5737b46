"""The simulated PCK chain: labelled as a simulation, reproducible from a seed, a valid chain."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tdxsim.attestation.pck import derive_p256_key, generate_pck_chain
from verifier.chain import verify_chain


def test_root_subject_says_simulation_and_never_intel() -> None:
    chain = generate_pck_chain(b"pck")
    for cert in (chain.root, chain.intermediate, chain.leaf):
        subject = cert.subject.rfc4514_string()
        assert "tdxsim" in subject and "SIMULATED" in subject
        assert "intel" not in subject.lower()
        assert "intel" not in cert.issuer.rfc4514_string().lower()
    assert chain.root.subject == chain.root.issuer


def test_keys_are_p256_and_roles_are_marked() -> None:
    chain = generate_pck_chain()
    for cert in (chain.root, chain.intermediate, chain.leaf):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    ca = chain.intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value
    leaf = chain.leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ca.ca and not leaf.ca
    assert chain.leaf_key.public_key() == chain.leaf.public_key()


def test_pem_chain_is_leaf_intermediate_root_and_verifies() -> None:
    chain = generate_pck_chain()
    certs = x509.load_pem_x509_certificates(chain.pem_chain())
    assert certs == [chain.leaf, chain.intermediate, chain.root]
    assert verify_chain(certs, chain.root_der()) == chain.leaf


def test_seeded_keys_repeat_and_differ_per_role_and_seed() -> None:
    a, b = generate_pck_chain(b"seed"), generate_pck_chain(b"seed")
    assert a.root.public_key() == b.root.public_key()
    assert a.leaf_key.private_numbers() == b.leaf_key.private_numbers()
    assert a.root.serial_number == b.root.serial_number
    assert a.root.public_key() != a.intermediate.public_key()
    assert generate_pck_chain(b"other").root.public_key() != a.root.public_key()
    assert (
        derive_p256_key(b"s", "x").private_numbers() == derive_p256_key(b"s", "x").private_numbers()
    )


def test_unseeded_chains_differ_per_instance() -> None:
    assert generate_pck_chain().root.public_key() != generate_pck_chain().root.public_key()
