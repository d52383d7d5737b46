"""The relying party's check of a vTPM reached through an L2: the TD half, then the TPM half.

The TD half is `verifier.td_attestation` (TD quote -> vTPM CA -> EK certificates, RTMR replay)
plus the quote's RTMRs against the reference values. The TPM half, on evidence the relying party
collected from the TPM (`TpmEvidence`):

1. the TPM's EK (recreated from its TCG template) is the key the EK certificate certifies;
2. the AK is a restricted signing key that never leaves its TPM (TPMA_OBJECT fixedTPM,
   fixedParent, sensitiveDataOrigin, restricted, sign);
3. the AK lives in the same TPM as the EK: TPM2_ActivateCredential returned the secret this relying
   party sealed with MakeCredential to the EK public key and the AK's Name (TPM 2.0 Library
   Part 1, section 24, "Credential Protection");
4. TPM2_Quote: the AK's signature over the TPMS_ATTEST, its magic and type, the fresh nonce in
   extraData, and the PCR values read equal to the quoted selection and digest
   (TPM 2.0 Library Part 2, sections 10.12.1 TPMS_QUOTE_INFO and 10.12.12 TPMS_ATTEST);
5. the L2 firmware's event log (NV index `tdxdefs.firmware_log.EVENT_LOG_NV_INDEX`), when there is
   one, replays to every quoted PCR it covers; "not present" otherwise;
6. PCR0 equals the reference (the L1 version, then the whole L2 image).

Everything here is a pure function on bytes; signatures and keys go through `cryptography`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from tdxdefs.firmware_log import EVENT_LOG_NV_INDEX
from tdxdefs.tpm import (
    HASH_NAMES,
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    EccCurve,
    TpmAlg,
    TpmaObject,
)
from verifier import eventlog
from verifier.errors import VerificationError
from verifier.firmware_log import verify_firmware_log
from verifier.reference import ReferenceValues
from verifier.td_attestation import (
    AttestationReport,
    _Checker,
    _Stop,
    verify_td_attestation,
)

AES_BLOCK_BITS = 128
IDENTITY_LABEL = b"IDENTITY\0"  # Part 1, section 24.4: the seed's label for a credential
STORAGE_LABEL = b"STORAGE"
INTEGRITY_LABEL = b"INTEGRITY"
CREDENTIAL_SIZE = 32
QUOTE_BANKS = ("sha256", "sha384")
PCR_SELECT_BYTES = 3  # PCRs 0..23

# The banks and hashes a relying party of this project accepts (a policy, not all of Part 2).
BANK_ALGORITHM = {"sha256": TpmAlg.SHA256, "sha384": TpmAlg.SHA384}
HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    TpmAlg.SHA256: hashes.SHA256,
    TpmAlg.SHA384: hashes.SHA384,
}
CURVES: dict[int, ec.EllipticCurve] = {
    EccCurve.NIST_P256: ec.SECP256R1(),
    EccCurve.NIST_P384: ec.SECP384R1(),
}


AK_REQUIRED = (
    TpmaObject.FIXED_TPM
    | TpmaObject.FIXED_PARENT
    | TpmaObject.SENSITIVE_DATA_ORIGIN
    | TpmaObject.RESTRICTED
    | TpmaObject.SIGN_ENCRYPT
)


class TpmStructureError(VerificationError, ValueError):
    """A TPM structure that does not parse; names the structure, the offset and the field."""


class _Reader:
    """Big-endian TPM marshalling (TPM 2.0 Library Part 2, section 4), each read bounds-checked."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = bytes(data)
        self.offset = 0
        self.what = what

    def take(self, size: int, name: str) -> bytes:
        if self.offset + size > len(self.data):
            raise TpmStructureError(
                f"{self.what} offset {self.offset}: {name} needs {size} bytes, "
                f"{len(self.data) - self.offset} left"
            )
        value = self.data[self.offset : self.offset + size]
        self.offset += size
        return value

    def u8(self, name: str) -> int:
        return int(self.take(1, name)[0])

    def u16(self, name: str) -> int:
        return int(struct.unpack(">H", self.take(2, name))[0])

    def u32(self, name: str) -> int:
        return int(struct.unpack(">I", self.take(4, name))[0])

    def u64(self, name: str) -> int:
        return int(struct.unpack(">Q", self.take(8, name))[0])

    def sized(self, name: str) -> bytes:
        return self.take(self.u16(f"{name}.size"), name)

    def end(self) -> None:
        if self.offset != len(self.data):
            raise TpmStructureError(
                f"{self.what} offset {self.offset}: {len(self.data) - self.offset} bytes after "
                "the structure"
            )


def _tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


@dataclass(frozen=True)
class TpmPublic:
    """A TPMT_PUBLIC (Part 2, section 12.2.4): what a relying party needs of it, and its bytes."""

    type: int
    name_alg: int
    attributes: TpmaObject
    auth_policy: bytes
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    raw: bytes
    symmetric: tuple[int, int, int] | None = None  # (algorithm, keyBits, mode) of a parent key

    @property
    def name(self) -> bytes:
        """The object's Name: nameAlg || H_nameAlg(TPMT_PUBLIC) (Part 1, section 16)."""
        return struct.pack(">H", self.name_alg) + _digest(self.name_alg, self.raw)


def _hash_name(alg: int) -> str:
    name = HASH_NAMES.get(alg) if alg in HASHES else None
    if name is None:
        raise TpmStructureError(f"hash algorithm {alg:#06x} is not SHA-256 or SHA-384")
    return name


def _digest(alg: int, data: bytes) -> bytes:
    hash_type = HASHES.get(alg)
    if hash_type is None:
        raise TpmStructureError(f"hash algorithm {alg:#06x} is not SHA-256 or SHA-384")
    h = hashes.Hash(hash_type())
    h.update(data)
    return h.finalize()


def _sym_def(r: _Reader) -> tuple[int, int, int] | None:
    algorithm = r.u16("symmetric.algorithm")
    if algorithm == TpmAlg.NULL:
        return None
    return algorithm, r.u16("symmetric.keyBits"), r.u16("symmetric.mode")


def _scheme(r: _Reader, name: str) -> None:
    if r.u16(f"{name}.scheme") != TpmAlg.NULL:
        r.u16(f"{name}.hashAlg")


def parse_public(data: bytes) -> TpmPublic:
    """Parse a marshalled TPMT_PUBLIC (an RSA or ECC key); errors name the offset and field."""
    r = _Reader(data, "TPMT_PUBLIC")
    kind = r.u16("type")
    name_alg = r.u16("nameAlg")
    attributes = TpmaObject(r.u32("objectAttributes"))
    policy = r.sized("authPolicy")
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    if kind == TpmAlg.ECC:
        symmetric = _sym_def(r)
        _scheme(r, "scheme")
        curve_id = r.u16("curveID")
        _scheme(r, "kdf")
        x, y = r.sized("unique.x"), r.sized("unique.y")
        curve = CURVES.get(curve_id)
        if curve is None:
            raise TpmStructureError(f"TPMT_PUBLIC: curve {curve_id:#06x} is not P-256 or P-384")
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
        ).public_key()
    elif kind == TpmAlg.RSA:
        symmetric = _sym_def(r)
        _scheme(r, "scheme")
        r.u16("keyBits")
        exponent = r.u32("exponent") or 65537
        modulus = r.sized("unique.rsa")
        key = rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
    else:
        raise TpmStructureError(f"TPMT_PUBLIC offset 0: type {kind:#06x} is not RSA or ECC")
    r.end()
    return TpmPublic(kind, name_alg, attributes, policy, key, bytes(data), symmetric)


# --- MakeCredential (TPM 2.0 Library Part 1, section 24; KDFa and KDFe, section 11.4.10) -------


def kdfa(
    alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int
) -> bytes:
    """KDFa: SP 800-108 counter mode with HMAC, label followed by one zero byte."""
    name = _hash_name(alg)
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        message = struct.pack(">I", counter) + label + b"\0" + context_u + context_v
        out += hmac.new(key, message + struct.pack(">I", bits), name).digest()
        counter += 1
    return out[: bits // 8]


def kdfe(alg: int, z: bytes, use: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    """KDFe: SP 800-56A concatenation KDF over the ECDH shared value Z."""
    name = _hash_name(alg)
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += hashlib.new(name, struct.pack(">I", counter) + z + use + party_u + party_v).digest()
        counter += 1
    return out[: bits // 8]


@dataclass(frozen=True)
class Credential:
    """A MakeCredential challenge: the blobs for TPM2_ActivateCredential and the secret in them."""

    credential_blob: bytes  # TPM2B_ID_OBJECT contents: TPM2B integrity HMAC || encIdentity
    encrypted_seed: bytes  # TPM2B_ENCRYPTED_SECRET contents
    secret: bytes
    object_name: bytes


def _coordinate(value: int, key: ec.EllipticCurvePublicKey) -> bytes:
    return value.to_bytes((key.curve.key_size + 7) // 8, "big")


def make_credential(ek: TpmPublic, object_name: bytes, secret: bytes | None = None) -> Credential:
    """Seal `secret` (32 random bytes by default) to the EK for the object named `object_name`.

    ECC EKs: the seed is KDFe over an ephemeral ECDH with the EK; RSA EKs: the seed is encrypted
    with RSA-OAEP, label "IDENTITY". The secret is encrypted with the EK's symmetric algorithm,
    which must be AES in CFB mode (the TCG EK Credential Profile's templates use AES-128-CFB).
    """
    if ek.symmetric is None or (ek.symmetric[0], ek.symmetric[2]) != (TpmAlg.AES, TpmAlg.CFB):
        raise TpmStructureError(
            f"EK symmetric definition {ek.symmetric}: only AES in CFB mode seals a credential"
        )
    key_bits = ek.symmetric[1]
    if key_bits not in (128, 192, 256):
        raise TpmStructureError(f"EK symmetric keyBits {key_bits}: not an AES key size")
    secret = os.urandom(CREDENTIAL_SIZE) if secret is None else secret
    digest_bits = len(_digest(ek.name_alg, b"")) * 8
    if isinstance(ek.key, ec.EllipticCurvePublicKey):
        ephemeral = ec.generate_private_key(ek.key.curve)
        z = ephemeral.exchange(ec.ECDH(), ek.key)
        eph = ephemeral.public_key().public_numbers()
        ek_x = _coordinate(ek.key.public_numbers().x, ek.key)
        eph_x, eph_y = _coordinate(eph.x, ek.key), _coordinate(eph.y, ek.key)
        seed = kdfe(ek.name_alg, z, IDENTITY_LABEL, eph_x, ek_x, digest_bits)
        encrypted_seed = _tpm2b(eph_x) + _tpm2b(eph_y)
    else:
        hash_type = HASHES[ek.name_alg]
        seed = os.urandom(digest_bits // 8)
        encrypted_seed = ek.key.encrypt(
            seed, padding.OAEP(padding.MGF1(hash_type()), hash_type(), IDENTITY_LABEL)
        )
    sym_key = kdfa(ek.name_alg, seed, STORAGE_LABEL, object_name, b"", key_bits)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(AES_BLOCK_BITS // 8))).encryptor()
    enc_identity = encryptor.update(_tpm2b(secret)) + encryptor.finalize()
    hmac_key = kdfa(ek.name_alg, seed, INTEGRITY_LABEL, b"", b"", digest_bits)
    name = _hash_name(ek.name_alg)
    integrity = hmac.new(hmac_key, enc_identity + object_name, name).digest()
    return Credential(_tpm2b(integrity) + enc_identity, encrypted_seed, secret, object_name)


# --- TPM2_Quote -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuoteInfo:
    """A TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE (Part 2, sections 10.12.1 and 10.12.12)."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    firmware_version: int
    selection: tuple[tuple[int, tuple[int, ...]], ...]  # (hash algorithm, PCR indexes)
    pcr_digest: bytes


def parse_attest(data: bytes) -> QuoteInfo:
    """Parse the TPMS_ATTEST a TPM2_Quote signed (the contents of TPM2B_ATTEST)."""
    r = _Reader(data, "TPMS_ATTEST")
    magic, kind = r.u32("magic"), r.u16("type")
    signer, extra = r.sized("qualifiedSigner"), r.sized("extraData")
    clock, resets, restarts = r.u64("clock"), r.u32("resetCount"), r.u32("restartCount")
    r.u8("safe")
    firmware = r.u64("firmwareVersion")
    if kind != TPM_ST_ATTEST_QUOTE:
        raise TpmStructureError(
            f"TPMS_ATTEST offset 4: type {kind:#06x}, expected TPM_ST_ATTEST_QUOTE "
            f"{TPM_ST_ATTEST_QUOTE:#06x}"
        )
    selection = []
    for _ in range(r.u32("pcrSelect.count")):
        alg = r.u16("pcrSelections.hash")
        bitmap = r.take(r.u8("pcrSelections.sizeofSelect"), "pcrSelections.pcrSelect")
        pcrs = tuple(i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (i % 8) & 1)
        selection.append((alg, pcrs))
    digest = r.sized("pcrDigest")
    r.end()
    return QuoteInfo(
        magic, kind, signer, extra, clock, resets, restarts, firmware, tuple(selection), digest
    )


def parse_ecdsa_signature(data: bytes) -> tuple[int, bytes]:
    """A marshalled TPMT_SIGNATURE with an ECDSA signature: (hash algorithm, DER signature)."""
    r = _Reader(data, "TPMT_SIGNATURE")
    scheme = r.u16("sigAlg")
    if scheme != TpmAlg.ECDSA:
        raise TpmStructureError(f"TPMT_SIGNATURE offset 0: sigAlg {scheme:#06x}, expected ECDSA")
    alg = r.u16("hash")
    sig_r, sig_s = r.sized("signatureR"), r.sized("signatureS")
    r.end()
    return alg, encode_dss_signature(int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big"))


def pcr_selection_bytes(selection: Sequence[tuple[int, Sequence[int]]]) -> bytes:
    """TPML_PCR_SELECTION for (hash algorithm, PCRs) pairs, as TPM2_Quote and PCR_Read take it."""
    out = struct.pack(">I", len(selection))
    for alg, pcrs in selection:
        bitmap = bytearray(PCR_SELECT_BYTES)
        for pcr in pcrs:
            bitmap[pcr // 8] |= 1 << (pcr % 8)
        out += struct.pack(">HB", alg, PCR_SELECT_BYTES) + bytes(bitmap)
    return out


# --- evidence and the verdict -----------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """What the relying party chose and keeps: the quote's nonce and the credential's secret."""

    nonce: bytes
    secret: bytes

    @classmethod
    def fresh(cls) -> Challenge:
        return cls(secrets.token_bytes(CREDENTIAL_SIZE), secrets.token_bytes(CREDENTIAL_SIZE))


@dataclass(frozen=True)
class TpmEvidence:
    """What the relying party collected from a TD's vTPM, as bytes, for offline checking."""

    ca_certificate: bytes
    ek_certificates: dict[str, bytes]
    ek_kind: str  # the EK whose public area `ek_public` is ("ecc" or "rsa")
    ek_public: bytes  # TPMT_PUBLIC of the EK the TPM recreated from its template
    ak_public: bytes  # TPMT_PUBLIC of the attestation key
    credential_name: bytes  # the Name the credential was made for
    activated_secret: bytes  # what TPM2_ActivateCredential returned
    attest: bytes  # TPMS_ATTEST from TPM2_Quote
    signature: bytes  # TPMT_SIGNATURE from TPM2_Quote
    pcrs: dict[str, dict[int, bytes]]  # bank -> PCR index -> value, as PCR_Read returned them
    firmware_log: bytes | None  # the NV index's contents, None when the index is absent

    def replace(self, **changes: object) -> TpmEvidence:
        """A copy with some fields changed (tests tamper with evidence this way)."""
        from dataclasses import replace

        return replace(self, **changes)  # type: ignore[arg-type]


def _hex(values: Mapping[str, Mapping[int, bytes]]) -> str:
    return "; ".join(
        f"{bank}: " + ", ".join(f"PCR{i}={v.hex()}" for i, v in sorted(pcrs.items()))
        for bank, pcrs in values.items()
    )


def _pcr_differences(
    got: Mapping[str, Mapping[int, bytes]], want: Mapping[str, Mapping[int, bytes]]
) -> list[tuple[str, int, bytes, bytes]]:
    return [
        (bank, pcr, got.get(bank, {}).get(pcr, b""), value)
        for bank, pcrs in want.items()
        for pcr, value in sorted(pcrs.items())
        if got.get(bank, {}).get(pcr) != value
    ]


def _differences_text(diffs: Sequence[tuple[str, int, bytes, bytes]]) -> tuple[str, str, str]:
    expected = "; ".join(f"{bank} PCR{pcr}={want.hex()}" for bank, pcr, _, want in diffs)
    actual = "; ".join(f"{bank} PCR{pcr}={got.hex() or 'absent'}" for bank, pcr, got, _ in diffs)
    names = ", ".join(sorted({f"PCR{pcr}" for _, pcr, _, _ in diffs}))
    return expected, actual, names


def verify_tpm_attestation(
    evidence: TpmEvidence,
    reference: ReferenceValues,
    *,
    challenge: Challenge,
    trusted_root: bytes | x509.Certificate,
    root_label: str,
) -> AttestationReport:
    """Check the TD half and then the TPM half (module docstring); return every step run.

    `challenge` holds the nonce and credential secret this relying party chose; `reference` from
    `verifier.reference.reference_values` of the image the TD was built from.
    """
    report = verify_td_attestation(
        evidence.ca_certificate,
        evidence.ek_certificates,
        trusted_root=trusted_root,
        root_label=root_label,
        expected_mrtd=reference.mrtd,
    )
    if not report.ok:
        return report
    with contextlib.suppress(_Stop):
        _tpm_half(_Checker(report), evidence, reference, challenge)
    return report


def _tpm_half(
    check: _Checker, evidence: TpmEvidence, reference: ReferenceValues, challenge: Challenge
) -> None:
    nonce = challenge.nonce
    report = check.report
    assert report.quote is not None
    name = "RTMRs against the reference"
    quoted = report.quote.body.rtmrs
    want = reference.rtmrs_at_quote
    if want is None:
        check.fail(name, "reference RTMR0..3", "none", "; ".join(reference.notes))
    else:
        bad = eventlog.mismatched_rtmrs(quoted, want)
        check.step(
            name,
            ", ".join(f"RTMR{i}={want[i].hex()}" for i in bad) or "the reference RTMR0..3",
            ", ".join(f"RTMR{i}={quoted[i].hex()}" for i in bad) or "equal",
            not bad,
            "the quote's RTMR0..3 equal the reference (the host's launch parameters)"
            if not bad
            else f"the quote's {', '.join(f'RTMR{i}' for i in bad)} "
            f"{'differs' if len(bad) == 1 else 'differ'} from the reference",
        )

    name = f"EK public key ({evidence.ek_kind})"
    ek = check.guarded(name, "a TPMT_PUBLIC", partial(parse_public, evidence.ek_public))
    der = evidence.ek_certificates.get(evidence.ek_kind)
    if der is None:
        check.fail(name, f"an {evidence.ek_kind} EK certificate", "none", "no EK certificate")
    cert_key = x509.load_der_x509_certificate(der).public_key()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    tpm_key = ek.key.public_bytes(serialization.Encoding.DER, spki)
    cert_spki = cert_key.public_bytes(serialization.Encoding.DER, spki)
    check.step(
        name,
        hashlib.sha256(cert_spki).hexdigest(),
        hashlib.sha256(tpm_key).hexdigest(),
        tpm_key == cert_spki,
        "the TPM's EK is the key its EK certificate certifies (SHA-256 of the public keys)"
        if tpm_key == cert_spki
        else "the TPM's EK is not the key of the EK certificate: the certificate is another TPM's",
    )

    name = "AK attributes"
    ak = check.guarded(name, "a TPMT_PUBLIC", partial(parse_public, evidence.ak_public))
    missing = AK_REQUIRED & ~ak.attributes
    restricted_ok = not missing and not ak.attributes & TpmaObject.DECRYPT
    check.step(
        name,
        f"{AK_REQUIRED!r}, not DECRYPT",
        repr(ak.attributes),
        restricted_ok and isinstance(ak.key, ec.EllipticCurvePublicKey),
        "the AK is a restricted ECC signing key that never leaves its TPM"
        if restricted_ok
        else f"the AK lacks {missing!r} or may decrypt",
    )

    name = "credential activation (AK and EK in one TPM)"
    ok = evidence.credential_name == ak.name and hmac.compare_digest(
        evidence.activated_secret, challenge.secret
    )
    check.step(
        name,
        f"secret {challenge.secret.hex()} for AK Name {ak.name.hex()}",
        f"secret {evidence.activated_secret.hex()} for Name {evidence.credential_name.hex()}",
        ok,
        "TPM2_ActivateCredential with the EK released the secret made for the AK's Name"
        if ok
        else "the credential was not activated for this AK by this EK",
    )

    name = "TPM quote signature"
    alg, signature = check.guarded(
        name, "an ECDSA TPMT_SIGNATURE", partial(parse_ecdsa_signature, evidence.signature)
    )
    assert isinstance(ak.key, ec.EllipticCurvePublicKey)
    try:
        hash_type = HASHES[alg]
        ak.key.verify(signature, evidence.attest, ec.ECDSA(hash_type()))
    except (KeyError, InvalidSignature) as exc:
        check.fail(
            name,
            f"signed by the AK {ak.name.hex()}",
            f"{type(exc).__name__} (hash {alg:#06x})",
            "the TPMS_ATTEST is not signed by the AK",
        )
    check.step(name, f"signed by the AK {ak.name.hex()}", "verifies", True,
               "the AK signed the TPMS_ATTEST")  # fmt: skip

    name = "TPM quote structure"
    info = check.guarded(name, "a TPMS_ATTEST of a quote", partial(parse_attest, evidence.attest))
    check.step(
        name,
        f"magic {TPM_GENERATED_VALUE:#x}",
        f"magic {info.magic:#x}",
        info.magic == TPM_GENERATED_VALUE,
        "TPM_GENERATED_VALUE: the TPM made this structure"
        if info.magic == TPM_GENERATED_VALUE
        else "not TPM_GENERATED_VALUE: not a structure the TPM generated",
    )

    name = "quote nonce"
    fresh = hmac.compare_digest(info.extra_data, nonce)
    check.step(
        name,
        nonce.hex(),
        info.extra_data.hex(),
        fresh,
        "extraData is this relying party's fresh nonce"
        if fresh
        else "extraData is not the nonce sent: a replayed or foreign quote",
    )

    name = "quoted PCRs"
    chosen = [
        (bank_alg, tuple(sorted(evidence.pcrs[bank])))
        for bank, bank_alg in BANK_ALGORITHM.items()
        if evidence.pcrs.get(bank)
    ]
    bank_of: dict[int, str] = {bank_alg: bank for bank, bank_alg in BANK_ALGORITHM.items()}
    # pcrDigest hashes the selected values in the quote's selection order with the signing
    # scheme's hash (TPM 2.0 Library Part 3, TPM2_Quote)
    concatenated = b"".join(
        evidence.pcrs.get(bank_of.get(quoted_alg, ""), {}).get(pcr, b"")
        for quoted_alg, pcrs in info.selection
        for pcr in pcrs
    )
    computed = _digest(alg, concatenated)
    same_selection = tuple(info.selection) == tuple(chosen)
    ok = same_selection and computed == info.pcr_digest
    check.step(
        name,
        f"selection {chosen}, digest {computed.hex()}",
        f"selection {list(info.selection)}, digest {info.pcr_digest.hex()}",
        ok,
        f"the quote covers the PCR values read ({_hex(evidence.pcrs)})"
        if ok
        else "the PCR values read are not the ones the quote signed",
    )

    name = "firmware event log"
    if evidence.firmware_log is None:
        if reference.pcr4:
            check.fail(
                name,
                f"the L2 firmware's log in NV index {EVENT_LOG_NV_INDEX:#010x}",
                "no such index",
                "the reference L2 firmware writes its event log at boot: removed or never written",
            )
        check.step(name, "-", "not present", True,
                   "not present: this L2 image keeps no event log in NV; PCR0 is compared "
                   "with the reference directly")  # fmt: skip
    else:
        by_pcr: dict[int, dict[str, bytes]] = {}
        for bank, values in evidence.pcrs.items():
            for pcr, value in values.items():
                by_pcr.setdefault(pcr, {})[bank] = value
        log = check.guarded(
            name,
            "a log that replays to the quoted PCRs and carries the image's payload",
            partial(verify_firmware_log, evidence.firmware_log, by_pcr, reference),
        )
        check.step(
            name,
            "the quoted PCRs",
            "equal",
            True,
            f"{len(log.log.events)} events replay to the quoted PCRs {sorted(log.pcrs)}; the "
            "payload event carries the image's payload",
        )

    name = "PCR0 against the reference"
    want_pcr0 = {bank: {0: value} for bank, value in reference.pcr0.items()}
    if not want_pcr0:
        check.fail(name, "a reference PCR0", "none", "; ".join(reference.notes))
    diffs = _pcr_differences(evidence.pcrs, want_pcr0)
    expected, actual, _ = _differences_text(diffs)
    check.step(
        name,
        expected or _hex(want_pcr0),
        actual or "equal",
        not diffs,
        "PCR0 is the L1 version, then the reference L2 image"
        if not diffs
        else "PCR0 is not the reference: another L2 image, or an extra extend",
    )


__all__ = [
    "Challenge",
    "Credential",
    "QuoteInfo",
    "TpmEvidence",
    "TpmPublic",
    "make_credential",
    "parse_attest",
    "parse_public",
    "verify_tpm_attestation",
]
