"""TPM attestation on a served vTPM, as a relying party does it: an AK made under the certified EK,
proved resident by credential activation against the EK certificate's key, a quote verified in
Python with cryptography, and data sealed to PCR values."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

NV_ECC_EK_CERT = 0x01C0000A
DEBUG_PCR = 16  # resettable at locality 0 (PC Client), so tests can start it from zeros
SECRET = b"sealed to PCR 16"


def policy_session(ectx: Any) -> Any:
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE
    from tpm2_pytss.types import TPMT_SYM_DEF

    return ectx.start_auth_session(
        ESYS_TR.NONE,
        ESYS_TR.NONE,
        TPM2_SE.POLICY,
        TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
        TPM2_ALG.SHA256,
    )


def ek_session(ectx: Any) -> Any:
    """A policy session satisfying the EK's PolicyA (PolicySecret of the endorsement hierarchy)."""
    from tpm2_pytss.constants import ESYS_TR

    session = policy_session(ectx)
    ectx.policy_secret(ESYS_TR.ENDORSEMENT, session)
    return session


@pytest.fixture
def ek_and_ak(ectx: Any) -> Iterator[tuple[Any, Any, Any, bytes]]:
    """(EK handle, EK TPM2B_PUBLIC, AK handle, EK certificate DER): an ECC AK under the ECC EK."""
    from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_PUBLIC
    from tpm2_pytss.utils import NoSuchIndex, create_ek_template

    def read(index: int) -> bytes:
        if index != NV_ECC_EK_CERT:
            raise NoSuchIndex(index)
        handle = ectx.tr_from_tpmpublic(index)
        size = int(ectx.nv_read_public(handle)[0].nvPublic.dataSize)
        data = b""
        while len(data) < size:
            data += bytes(ectx.nv_read(handle, min(512, size - len(data)), len(data)))
        ectx.tr_close(handle)
        return data

    cert, template = create_ek_template("EK-ECC256", read)
    ek, ek_public, *_ = ectx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
    attrs = (
        TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
        | TPMA_OBJECT.RESTRICTED
        | TPMA_OBJECT.SIGN_ENCRYPT
    )
    ak_template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attrs)
    session = ek_session(ectx)
    private, ak_public, *_ = ectx.create(ek, None, ak_template, session1=session)
    ectx.flush_context(session)
    session = ek_session(ectx)
    ak = ectx.load(ek, private, ak_public, session1=session)
    ectx.flush_context(session)
    yield ek, ek_public, ak, cert
    ectx.flush_context(ak)
    ectx.flush_context(ek)


def test_ak_is_resident_with_the_certified_ek(ectx: Any, ek_and_ak: Any) -> None:
    """A verifier encrypts a credential to the EK certificate's key; only this TPM recovers it."""
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPM2B_PUBLIC
    from tpm2_pytss.utils import make_credential

    ek, ek_public, ak, cert_der = ek_and_ak
    cert_key = x509.load_der_x509_certificate(cert_der).public_key()
    assert isinstance(cert_key, ec.EllipticCurvePublicKey)
    numbers = cert_key.public_numbers()
    # The verifier's EK public: the TCG template with the certificate's point as unique.
    verifier_ek = TPM2B_PUBLIC(publicArea=ek_public.publicArea)
    verifier_ek.publicArea.unique.ecc.x = numbers.x.to_bytes(32, "big")
    verifier_ek.publicArea.unique.ecc.y = numbers.y.to_bytes(32, "big")
    assert verifier_ek.publicArea.marshal() == ek_public.publicArea.marshal()
    credential = os.urandom(32)
    blob, secret = make_credential(verifier_ek, credential, ectx.tr_get_name(ak))
    session = ek_session(ectx)
    recovered = ectx.activate_credential(ak, ek, blob, secret, ESYS_TR.PASSWORD, session)
    ectx.flush_context(session)
    assert bytes(recovered) == credential


def _verify_quote(
    ak_public: Any, attest: bytes, signature: Any, nonce: bytes, pcr_values: list[bytes]
) -> None:
    from tpm2_pytss.constants import TPM2_ST
    from tpm2_pytss.types import TPMS_ATTEST

    key = ec.EllipticCurvePublicNumbers(
        int.from_bytes(bytes(ak_public.publicArea.unique.ecc.x), "big"),
        int.from_bytes(bytes(ak_public.publicArea.unique.ecc.y), "big"),
        ec.SECP256R1(),
    ).public_key()
    sig = encode_dss_signature(
        int.from_bytes(bytes(signature.signature.ecdsa.signatureR), "big"),
        int.from_bytes(bytes(signature.signature.ecdsa.signatureS), "big"),
    )
    key.verify(sig, attest, ec.ECDSA(hashes.SHA256()))
    parsed, _ = TPMS_ATTEST.unmarshal(attest)
    assert parsed.type == TPM2_ST.ATTEST_QUOTE
    assert bytes(parsed.extraData) == nonce
    expected = hashlib.sha256(b"".join(pcr_values)).digest()
    assert bytes(parsed.attested.quote.pcrDigest) == expected


def test_quote_verifies_in_python_and_detects_tampering(ectx: Any, ek_and_ak: Any) -> None:
    from tpm2_pytss.constants import ESYS_TR

    _ek, _ek_pub, ak, _cert = ek_and_ak
    ak_public, _name, _qn = ectx.read_public(ak)
    ectx.pcr_event(ESYS_TR.PCR16, b"boot component")
    selection = "sha256:0,1,16"
    _cnt, _sel, values = ectx.pcr_read(selection)
    pcr_values = [bytes(v) for v in values]
    nonce = os.urandom(16)
    attest, signature = ectx.quote(ak, selection, nonce)
    attest_bytes = bytes(attest.attestationData)
    _verify_quote(ak_public, attest_bytes, signature, nonce, pcr_values)

    with pytest.raises(AssertionError):
        _verify_quote(ak_public, attest_bytes, signature, os.urandom(16), pcr_values)
    with pytest.raises(AssertionError):
        _verify_quote(ak_public, attest_bytes, signature, nonce, [bytes(32)] * 3)
    tampered = bytearray(attest_bytes)
    tampered[-1] ^= 1
    with pytest.raises(InvalidSignature):
        _verify_quote(ak_public, bytes(tampered), signature, nonce, pcr_values)


def test_seal_unseal_with_pcr_policy(ectx: Any) -> None:
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_OBJECT
    from tpm2_pytss.TSS2_Exception import TSS2_Exception
    from tpm2_pytss.types import (
        TPM2B_PUBLIC,
        TPM2B_SENSITIVE_CREATE,
        TPM2B_SENSITIVE_DATA,
        TPMS_SENSITIVE_CREATE,
        TPMT_SYM_DEF,
    )

    ectx.pcr_reset(ESYS_TR.PCR16)
    selection = f"sha256:{DEBUG_PCR}"
    trial = ectx.start_auth_session(
        ESYS_TR.NONE,
        ESYS_TR.NONE,
        TPM2_SE.TRIAL,
        TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
        TPM2_ALG.SHA256,
    )
    ectx.policy_pcr(trial, b"", selection)
    policy = ectx.policy_get_digest(trial)
    ectx.flush_context(trial)

    srk, *_ = ectx.create_primary(None, "ecc256:aes128cfb", ESYS_TR.OWNER)
    template = TPM2B_PUBLIC.parse(
        "keyedhash",
        objectAttributes=TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT,
    )
    template.publicArea.authPolicy = policy
    sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(SECRET)))
    private, public, *_ = ectx.create(srk, sensitive, template)
    sealed = ectx.load(srk, private, public)

    def unseal() -> bytes:
        session = policy_session(ectx)
        try:
            ectx.policy_pcr(session, b"", selection)
            return bytes(ectx.unseal(sealed, session1=session))
        finally:
            ectx.flush_context(session)

    try:
        assert unseal() == SECRET
        ectx.pcr_event(ESYS_TR.PCR16, b"tampered")
        with pytest.raises(TSS2_Exception) as err:
            unseal()
        assert "policy" in str(err.value).lower()
        ectx.pcr_reset(ESYS_TR.PCR16)
        assert unseal() == SECRET
    finally:
        ectx.flush_context(sealed)
        ectx.flush_context(srk)
