"""vtpm.wire against byte layouts written out from the TPM 2.0 spec tables (Parts 1-3)."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtpm import wire
from vtpm.manufacture import EK_TEMPLATE_L1_RSA, EK_TEMPLATE_L2_ECC

POLICY_A = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")


def be16(v: int) -> bytes:
    return v.to_bytes(2, "big")


def be32(v: int) -> bytes:
    return v.to_bytes(4, "big")


def test_get_capability_command_bytes() -> None:
    # Part 3, 30.2: tag NO_SESSIONS, size, TPM_CC_GetCapability, capability, property, count.
    expected = be16(0x8001) + be32(22) + be32(0x17A) + be32(6) + be32(0x105) + be32(1)
    cmd = wire.build_command(
        wire.TPM_CC_GET_CAPABILITY, params=wire.GET_CAPABILITY_PARAMS.pack(6, 0x105, 1)
    )
    assert cmd == expected


def test_password_session_command_layout() -> None:
    # Part 1, 18.7: handle area, then authorizationSize and TPMS_AUTH_COMMAND for TPM_RS_PW.
    auth = be32(0x40000009) + be16(0) + b"\x01" + be16(3) + b"abc"
    params = b"\xaa\xbb"
    body = be32(0x4000000C) + be32(0x01C00002) + be32(len(auth)) + auth + params
    expected = be16(0x8002) + be32(10 + len(body)) + be32(0x137) + body
    cmd = wire.build_command(
        wire.TPM_CC_NV_WRITE, [0x4000000C, 0x01C00002], params, [wire.PasswordAuth(b"abc")]
    )
    assert cmd == expected


def test_ek_template_l1_rsa_layout() -> None:
    # TCG EK Credential Profile, template L-1: TPMT_PUBLIC field by field.
    expected = (
        be16(0x0001)
        + be16(0x000B)
        + be32(0x000300B2)
        + be16(32)
        + POLICY_A
        + be16(0x0006)
        + be16(128)
        + be16(0x0043)  # AES-128-CFB
        + be16(0x0010)  # scheme NULL
        + be16(2048)
        + be32(0)  # keyBits, exponent
        + be16(256)
        + bytes(256)  # unique
    )
    assert EK_TEMPLATE_L1_RSA.pack() == expected


def test_ek_template_l2_ecc_layout() -> None:
    expected = (
        be16(0x0023)
        + be16(0x000B)
        + be32(0x000300B2)
        + be16(32)
        + POLICY_A
        + be16(0x0006)
        + be16(128)
        + be16(0x0043)
        + be16(0x0010)  # scheme NULL
        + be16(0x0003)  # NIST P-256
        + be16(0x0010)  # kdf NULL
        + be16(32)
        + bytes(32)
        + be16(32)
        + bytes(32)
    )
    assert EK_TEMPLATE_L2_ECC.pack() == expected


@pytest.mark.parametrize(
    ("ours", "theirs"), [(EK_TEMPLATE_L1_RSA, "EK-RSA2048"), (EK_TEMPLATE_L2_ECC, "EK-ECC256")]
)
def test_ek_templates_match_tpm2_pytss(ours: wire.Public, theirs: str) -> None:
    from tpm2_pytss.utils import NoSuchIndex, create_ek_template

    def no_nv(index: int) -> bytes:
        raise NoSuchIndex(index)

    _cert, template = create_ek_template(theirs, no_nv)
    assert template.publicArea.marshal() == ours.pack()


def test_public_round_trip_and_name() -> None:
    data = EK_TEMPLATE_L2_ECC.pack()
    public = wire.Public.from_bytes(data)
    assert public == EK_TEMPLATE_L2_ECC
    assert public.name() == be16(0x000B) + hashlib.sha256(data).digest()


def test_public_rejects_trailing_bytes_and_unknown_type() -> None:
    with pytest.raises(wire.WireError, match="trailing"):
        wire.Public.from_bytes(EK_TEMPLATE_L1_RSA.pack() + b"\0")
    with pytest.raises(wire.WireError, match="type 0x0025"):
        wire.Public.from_bytes(be16(0x0025) + bytes(20))


def test_truncated_public_names_field_and_offset() -> None:
    data = EK_TEMPLATE_L1_RSA.pack()[:-10]
    with pytest.raises(wire.WireError, match=r"unique.rsa at offset \d+ needs 256 bytes"):
        wire.Public.from_bytes(data)


def test_nv_public_layout() -> None:
    # Part 2, 13.5 TPMS_NV_PUBLIC: nvIndex, nameAlg, attributes, authPolicy, dataSize.
    nv = wire.NvPublic(0x01C00002, 0x000B, 0x62072001, b"", 771)
    assert nv.pack() == be32(0x01C00002) + be16(0x000B) + be32(0x62072001) + be16(0) + be16(771)
    assert wire.NvPublic.unpack(wire.Reader(nv.pack())) == nv


def test_sign_response_parsing() -> None:
    # Part 3, 20.2 response: header, parameterSize, TPMT_SIGNATURE (ECDSA), auth response.
    sig = be16(0x0018) + be16(0x000C) + be16(2) + b"\x01\x02" + be16(1) + b"\x03"
    auth_resp = be16(0) + b"\x01" + be16(0)
    body = be32(len(sig)) + sig + auth_resp
    response = be16(0x8002) + be32(10 + len(body)) + be32(0) + body
    parsed = wire.parse_response(wire.TPM_CC_SIGN, response)
    signature = wire.unpack_signature(wire.Reader(parsed.params))
    assert signature == wire.EcdsaSignature(0x000C, 0x0102, 0x03)


def test_error_response_names_command_and_rc() -> None:
    response = be16(0x8001) + be32(10) + be32(0x18B)
    with pytest.raises(wire.TpmError, match=r"TPM2_NV_ReadPublic \(cc 0x00000169\).*rc=0x18b"):
        wire.parse_response(wire.TPM_CC_NV_READ_PUBLIC, response)
    assert wire.rc_base(0x18B) == wire.TPM_RC_HANDLE


def test_response_size_mismatch_is_reported() -> None:
    response = be16(0x8001) + be32(12) + be32(0)
    with pytest.raises(wire.WireError, match="responseSize 12 but 10 bytes"):
        wire.parse_response(wire.TPM_CC_STARTUP, response)


def test_tpm2b_too_large() -> None:
    with pytest.raises(wire.WireError, match="16-bit"):
        wire.tpm2b(bytes(0x10000))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_escapes_as_other_errors(data: bytes) -> None:
    for parse in (
        lambda: wire.Public.from_bytes(data),
        lambda: wire.parse_response(wire.TPM_CC_CREATE_PRIMARY, data, 1),
        lambda: wire.unpack_signature(wire.Reader(data)),
        lambda: wire.NvPublic.unpack(wire.Reader(data)),
    ):
        with contextlib.suppress(wire.WireError, wire.TpmError):
            parse()


def test_capability_parsing_from_spec_layout() -> None:
    # Part 3, 30.2 response: moreData, TPMS_CAPABILITY_DATA (TPM_PROPERTIES, tagged properties)
    props = struct.pack(">II", 0x105, 0x49424D00) + struct.pack(">II", 0x117, 2048)
    params = b"\x00" + be32(6) + be32(2) + props
    response = be16(0x8001) + be32(10 + len(params)) + be32(0) + params

    class Canned:
        def process(self, command: bytes) -> bytes:
            assert command[6:10] == be32(0x17A)
            return response

    assert wire.TpmClient(Canned()).get_properties(0x100, 64) == {0x105: 0x49424D00, 0x117: 2048}
