"""TPM 2.0 constants every side uses (TCG TPM 2.0 Library, Part 2: Structures): algorithm IDs,
ECC curves, object and NV index attributes, the tag and magic of an attestation structure, and
the digest sizes and hashlib names of the hash algorithms."""

from __future__ import annotations

from enum import IntEnum, IntFlag


class TpmAlg(IntEnum):
    """TPM_ALG_ID (Part 2, section 6.3): the algorithms the project's TPM code names."""

    RSA = 0x0001
    SHA1 = 0x0004
    AES = 0x0006
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    SM3_256 = 0x0012
    RSASSA = 0x0014
    ECDSA = 0x0018
    ECC = 0x0023
    CFB = 0x0043


class EccCurve(IntEnum):
    """TPM_ECC_CURVE (Part 2, section 6.4)."""

    NIST_P256 = 0x0003
    NIST_P384 = 0x0004


class TpmaObject(IntFlag):
    """TPMA_OBJECT (Part 2, section 8.3)."""

    FIXED_TPM = 1 << 1
    ST_CLEAR = 1 << 2
    FIXED_PARENT = 1 << 4
    SENSITIVE_DATA_ORIGIN = 1 << 5
    USER_WITH_AUTH = 1 << 6
    ADMIN_WITH_POLICY = 1 << 7
    NO_DA = 1 << 10
    ENCRYPTED_DUPLICATION = 1 << 11
    RESTRICTED = 1 << 16
    DECRYPT = 1 << 17
    SIGN_ENCRYPT = 1 << 18


class TpmaNv(IntFlag):
    """TPMA_NV (Part 2, section 13.4): the bits the project's NV indices use or check."""

    PPWRITE = 1 << 0
    WRITELOCKED = 1 << 11
    WRITEDEFINE = 1 << 13
    PPREAD = 1 << 16
    OWNERREAD = 1 << 17
    AUTHREAD = 1 << 18
    NO_DA = 1 << 25
    WRITTEN = 1 << 29
    PLATFORMCREATE = 1 << 30


TPM_GENERATED_VALUE = 0xFF544347  # section 6.2: TPMS_ATTEST.magic of a structure the TPM made
TPM_ST_ATTEST_QUOTE = 0x8018  # section 6.9
DIGEST_SIZES: dict[int, int] = {
    TpmAlg.SHA1: 20,
    TpmAlg.SHA256: 32,
    TpmAlg.SHA384: 48,
    TpmAlg.SHA512: 64,
    TpmAlg.SM3_256: 32,
}
HASH_NAMES: dict[int, str] = {  # hashlib's names (SM3 has none there)
    TpmAlg.SHA1: "sha1",
    TpmAlg.SHA256: "sha256",
    TpmAlg.SHA384: "sha384",
    TpmAlg.SHA512: "sha512",
}
