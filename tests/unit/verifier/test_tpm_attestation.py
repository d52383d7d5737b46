"""The TPM half's parsers and key derivations on bytes: malformed TPM structures are refused by
structure, offset and field; KDFa and KDFe agree with tpm2-pytss's implementation of TPM 2.0
Library Part 1, section 11.4.10."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss.internal.crypto import _kdfa, kdfe  # an independent implementation as the oracle

from tdxdefs.tpm import TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE, TpmAlg, TpmaObject
from verifier.tpm_attestation import (
    TpmStructureError,
    kdfa,
    make_credential,
    parse_attest,
    parse_public,
    pcr_selection_bytes,
)
from verifier.tpm_attestation import kdfe as our_kdfe


def attest(kind: int = TPM_ST_ATTEST_QUOTE, nonce: bytes = b"n" * 32) -> bytes:
    head = struct.pack(">IH", TPM_GENERATED_VALUE, kind)
    signer = struct.pack(">H", 34) + bytes(34)
    extra = struct.pack(">H", len(nonce)) + nonce
    clock = struct.pack(">QIIB", 1, 2, 3, 1) + struct.pack(">Q", 4)
    selection = pcr_selection_bytes([(TpmAlg.SHA256, [0, 4]), (TpmAlg.SHA384, [0, 4])])
    return head + signer + extra + clock + selection + struct.pack(">H", 32) + bytes(32)


def ecc_public(attributes: int = int(TpmaObject.SIGN_ENCRYPT)) -> bytes:
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    return (
        struct.pack(">HHI", TpmAlg.ECC, TpmAlg.SHA256, attributes)
        + struct.pack(">H", 0)
        + struct.pack(">HHHHH", TpmAlg.NULL, TpmAlg.ECDSA, TpmAlg.SHA256, 0x0003, TpmAlg.NULL)
        + struct.pack(">H", 32) + point.x.to_bytes(32, "big")
        + struct.pack(">H", 32) + point.y.to_bytes(32, "big")
    )  # fmt: skip


def test_a_quote_attest_parses_into_its_fields() -> None:
    info = parse_attest(attest())
    assert info.magic == TPM_GENERATED_VALUE
    assert info.extra_data == b"n" * 32
    assert info.selection == ((TpmAlg.SHA256, (0, 4)), (TpmAlg.SHA384, (0, 4)))
    assert (info.clock, info.reset_count, info.restart_count, info.firmware_version) == (1, 2, 3, 4)


@pytest.mark.parametrize("cut", [3, 10, 60, 90])
def test_a_truncated_attest_is_refused_naming_offset_and_field(cut: int) -> None:
    with pytest.raises(TpmStructureError, match=r"TPMS_ATTEST offset \d+: \w+.* needs"):
        parse_attest(attest()[:cut])


def test_an_attest_of_another_type_is_refused_naming_the_type() -> None:
    with pytest.raises(TpmStructureError, match="type 0x8017, expected TPM_ST_ATTEST_QUOTE"):
        parse_attest(attest(kind=0x8017))


def test_trailing_bytes_after_an_attest_are_refused() -> None:
    with pytest.raises(TpmStructureError, match="1 bytes after the structure"):
        parse_attest(attest() + b"\0")


def test_an_ecc_public_area_gives_its_key_attributes_and_name() -> None:
    raw = ecc_public()
    public = parse_public(raw)
    assert isinstance(public.key, ec.EllipticCurvePublicKey)
    assert public.attributes == TpmaObject.SIGN_ENCRYPT
    assert public.name[:2] == struct.pack(">H", TpmAlg.SHA256) and len(public.name) == 34


def test_a_public_area_of_an_unknown_type_is_refused() -> None:
    with pytest.raises(TpmStructureError, match="type 0x0008 is not RSA or ECC"):
        parse_public(struct.pack(">HHI", 0x0008, TpmAlg.SHA256, 0) + bytes(2))


@pytest.mark.parametrize("bits", [128, 256, 384, 520])
def test_kdfa_agrees_with_tpm2_pytss(bits: int) -> None:
    args = (b"seed" * 8, b"STORAGE", b"name", b"context")
    assert kdfa(TpmAlg.SHA256, *args, bits) == _kdfa(TpmAlg.SHA256, *args, bits)


def test_kdfe_agrees_with_tpm2_pytss() -> None:
    args = (b"z" * 32, b"IDENTITY\0", b"u" * 32, b"v" * 32)
    assert our_kdfe(TpmAlg.SHA256, *args, 256) == kdfe(TpmAlg.SHA256, *args, 256)


def ecc_ek_public(symmetric: tuple[int, int, int] = (TpmAlg.AES, 128, TpmAlg.CFB)) -> bytes:
    """An ECC P-256 storage key as the TCG EK templates make it: restricted decrypt, AES-CFB."""
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    attributes = int(TpmaObject.DECRYPT | TpmaObject.RESTRICTED)
    return (
        struct.pack(">HHI", TpmAlg.ECC, TpmAlg.SHA256, attributes)
        + struct.pack(">H", 0)
        + struct.pack(">HHH", *symmetric)
        + struct.pack(">HHH", TpmAlg.NULL, 0x0003, TpmAlg.NULL)
        + struct.pack(">H", 32) + point.x.to_bytes(32, "big")
        + struct.pack(">H", 32) + point.y.to_bytes(32, "big")
    )  # fmt: skip


def test_a_credential_for_an_ek_without_aes_cfb_is_refused() -> None:
    ek = parse_public(ecc_ek_public((TpmAlg.AES, 128, 0x0044)))  # OFB
    with pytest.raises(TpmStructureError, match="only AES in CFB mode"):
        make_credential(ek, b"\x00\x0b" + bytes(32))
    with pytest.raises(TpmStructureError, match="only AES in CFB mode"):
        make_credential(parse_public(ecc_public()), b"\x00\x0b" + bytes(32))  # no symmetric


def test_a_credential_blob_holds_an_hmac_then_the_encrypted_secret() -> None:
    ek = parse_public(ecc_ek_public())
    assert ek.symmetric == (TpmAlg.AES, 128, TpmAlg.CFB)
    credential = make_credential(ek, b"\x00\x0b" + bytes(32), b"s" * 32)
    (size,) = struct.unpack(">H", credential.credential_blob[:2])
    assert size == 32
    assert len(credential.credential_blob) == 2 + 32 + 2 + 32  # HMAC, TPM2B(secret) encrypted
    assert len(credential.encrypted_seed) == 2 + 32 + 2 + 32  # the ephemeral point
    assert b"s" * 32 not in credential.credential_blob
