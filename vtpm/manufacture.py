"""Manufacture a fresh vTPM: TCG-template EKs, a TD-bound CA inside the TPM, certificates in NV.

Order (as Intel's TD-partitioning vTPM prototype does, with the choices below):
TPM2_Startup(CLEAR); read manufacturer, model and version; create the EKs (RSA-2048 template L-1,
ECC P-256 template L-2 from the TCG EK Credential Profile); create the CA key inside the TPM;
REPORTDATA = SHA-384 of the CA public point plus 16 zero bytes; get the quote and the CC event log
from the attester; sign the CA and EK certificates with TPM2_Sign; flush the CA key; store the
certificates in NV.

Choices where the reference differs from what we build:
- EKs: the TCG low-range templates L-1/L-2 at NV 0x01C00002/0x01C0000A (what tpm2-tools looks for),
  not the prototype's P-384 H-4 EK; EKs are not made persistent (tools recreate them from the
  template).
- CA key: ECC P-384, ECDSA/SHA-384 as in the prototype, but an ordinary key from the TPM RNG
  (TPM2_CreateLoaded under a temporary NULL-hierarchy storage key, with a random authValue), so
  nobody can recreate it from a template once it is flushed; its private blob is discarded.
- REPORTDATA is bound to the CA public key, not the EK ([CONFLICT] in the reference, see
  vtpm.attest); certificate OIDs are .5.5.2.x ([CONFLICT], see vtpm.certs).
- NV: attributes PLATFORMCREATE|AUTHREAD|OWNERREAD|PPREAD|PPWRITE|NO_DA|WRITEDEFINE as the
  reference lists, then TPM2_NV_WriteLock so no one rewrites a certificate until the index is
  undefined; chunks are TPM_PT_NV_INDEX_MAX bytes (2048 in libtpms, as in the prototype).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vtpm import wire
from vtpm.attest import Attester, AttesterError, check_binding, is_fake_quote, report_data_for
from vtpm.errors import VtpmError
from vtpm.nvindex import (
    EK_KINDS,
    NV_ECC_EK_CERT,
    NV_EK_CHAIN_FIRST,
    NV_EK_CHAIN_LAST,
    NV_RSA_EK_CERT,
)

if TYPE_CHECKING:  # imported where used: see `manufacture`
    from cryptography.hazmat.primitives.asymmetric import ec

    from vtpm import certs

NV_CERT_ATTRIBUTES = (
    wire.TPMA_NV_PLATFORMCREATE
    | wire.TPMA_NV_AUTHREAD
    | wire.TPMA_NV_OWNERREAD
    | wire.TPMA_NV_PPREAD
    | wire.TPMA_NV_PPWRITE
    | wire.TPMA_NV_NO_DA
    | wire.TPMA_NV_WRITEDEFINE
)

# TCG EK Credential Profile 2.x, B.3.3: PolicyA, SHA-256 (PolicySecret(TPM_RH_ENDORSEMENT)).
EK_POLICY_A_SHA256 = bytes.fromhex(
    "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa"
)
EK_ATTRIBUTES = (
    wire.TPMA_OBJECT_FIXEDTPM
    | wire.TPMA_OBJECT_FIXEDPARENT
    | wire.TPMA_OBJECT_SENSITIVEDATAORIGIN
    | wire.TPMA_OBJECT_ADMINWITHPOLICY
    | wire.TPMA_OBJECT_RESTRICTED
    | wire.TPMA_OBJECT_DECRYPT
)
AES_128_CFB = wire.SymDefObject(wire.TPM_ALG_AES, 128, wire.TPM_ALG_CFB)
RSA_2048_UNIQUE_SIZE = 256
ECC_P256_UNIQUE_SIZE = 32

EK_TEMPLATE_L1_RSA = wire.Public(
    wire.TPM_ALG_RSA,
    wire.TPM_ALG_SHA256,
    EK_ATTRIBUTES,
    EK_POLICY_A_SHA256,
    wire.RsaParms(AES_128_CFB, wire.Scheme(), 2048, 0),
    bytes(RSA_2048_UNIQUE_SIZE),
)
EK_TEMPLATE_L2_ECC = wire.Public(
    wire.TPM_ALG_ECC,
    wire.TPM_ALG_SHA256,
    EK_ATTRIBUTES,
    EK_POLICY_A_SHA256,
    wire.EccParms(AES_128_CFB, wire.Scheme(), wire.TPM_ECC_NIST_P256, wire.Scheme()),
    (bytes(ECC_P256_UNIQUE_SIZE), bytes(ECC_P256_UNIQUE_SIZE)),
)

STORAGE_PARENT_TEMPLATE = wire.Public(
    wire.TPM_ALG_ECC,
    wire.TPM_ALG_SHA256,
    wire.TPMA_OBJECT_FIXEDTPM
    | wire.TPMA_OBJECT_FIXEDPARENT
    | wire.TPMA_OBJECT_SENSITIVEDATAORIGIN
    | wire.TPMA_OBJECT_USERWITHAUTH
    | wire.TPMA_OBJECT_NODA
    | wire.TPMA_OBJECT_RESTRICTED
    | wire.TPMA_OBJECT_DECRYPT,
    b"",
    wire.EccParms(AES_128_CFB, wire.Scheme(), wire.TPM_ECC_NIST_P256, wire.Scheme()),
    (b"", b""),
)
CA_KEY_TEMPLATE = wire.Public(
    wire.TPM_ALG_ECC,
    wire.TPM_ALG_SHA384,
    wire.TPMA_OBJECT_FIXEDTPM
    | wire.TPMA_OBJECT_FIXEDPARENT
    | wire.TPMA_OBJECT_SENSITIVEDATAORIGIN
    | wire.TPMA_OBJECT_USERWITHAUTH
    | wire.TPMA_OBJECT_NODA
    | wire.TPMA_OBJECT_SIGN,
    b"",
    wire.EccParms(
        wire.SymDefObject(),
        wire.Scheme(wire.TPM_ALG_ECDSA, wire.TPM_ALG_SHA384),
        wire.TPM_ECC_NIST_P384,
        wire.Scheme(),
    ),
    (b"", b""),
)
CA_AUTH_SIZE = 32


@dataclass(frozen=True)
class EkKind:
    """One EK flavour: its TCG template and the NV index of its certificate."""

    kind: str
    template_name: str
    template: wire.Public
    nv_index: int


EK_KIND_TABLE = {
    "rsa": EkKind("rsa", "L-1", EK_TEMPLATE_L1_RSA, NV_RSA_EK_CERT),
    "ecc": EkKind("ecc", "L-2", EK_TEMPLATE_L2_ECC, NV_ECC_EK_CERT),
}


class ManufactureError(VtpmError, RuntimeError):
    """Manufacture could not complete; the message names the step that failed."""


@dataclass(frozen=True)
class EkRecord:
    """One manufactured EK: public area, Name, certificate and where the certificate is."""

    kind: str
    template_name: str
    public: wire.Public
    name: bytes
    certificate: bytes
    nv_index: int

    @property
    def public_area(self) -> bytes:
        """The marshalled TPMT_PUBLIC."""
        return self.public.pack()


@dataclass(frozen=True)
class ManufactureResult:
    """Everything manufacture produced that a caller may publish or check."""

    eks: dict[str, EkRecord]
    ca_certificate: bytes
    ca_nv_indices: tuple[int, ...]
    ca_public_point: bytes
    report_data: bytes
    quote: bytes
    event_log: bytes
    attester_name: str
    simulated: bool
    identity: certs.TpmIdentity

    @property
    def ca_public_key(self) -> ec.EllipticCurvePublicKey:
        """The CA public key (it never existed outside the TPM in private form)."""
        from cryptography.hazmat.primitives.asymmetric import ec

        from vtpm import certs

        return ec.EllipticCurvePublicKey.from_encoded_point(certs.CA_CURVE, self.ca_public_point)


def _step(what: str, exc: Exception) -> ManufactureError:
    return ManufactureError(f"manufacture: {what}: {exc}")


def _clear_index(tpm: wire.TpmClient, index: int) -> None:
    """Undefine a platform index left from an earlier manufacture of the same TPM."""
    if tpm.nv_read_public(index) is not None:
        tpm.nv_undefine(index)


def _store(tpm: wire.TpmClient, index: int, data: bytes, buffer_max: int) -> None:
    """Define a certificate index, write it and write-lock it."""
    tpm.nv_define(wire.NvPublic(index, wire.TPM_ALG_SHA256, NV_CERT_ATTRIBUTES, b"", len(data)))
    tpm.nv_write(index, data, buffer_max)
    tpm.nv_write_lock(index)


def chain_chunks(der: bytes, index_max: int) -> list[tuple[int, bytes]]:
    """Split a certificate over the EK chain range from 0x01C00100, index_max bytes per index."""
    chunks = [der[i : i + index_max] for i in range(0, len(der), index_max)]
    if NV_EK_CHAIN_FIRST + len(chunks) - 1 > NV_EK_CHAIN_LAST:
        raise ManufactureError(f"CA certificate of {len(der)} bytes overflows the chain NV range")
    return [(NV_EK_CHAIN_FIRST + i, c) for i, c in enumerate(chunks)]


def manufacture(
    engine: wire.Transport,
    ek: Sequence[str] = EK_KINDS,
    *,
    attester: Attester,
    now: datetime.datetime | None = None,
) -> ManufactureResult:
    """Provision a powered-on TPM; raises ManufactureError (never falls back) on any failure.

    The X.509 machinery (`vtpm.certs`, cryptography) is imported only once the keys exist: a vTPM
    worker imports it on another thread while libtpms generates them (`vtpm.worker`)."""
    kinds = list(dict.fromkeys(ek))
    unknown = [k for k in kinds if k not in EK_KIND_TABLE]
    if unknown or not kinds:
        raise ManufactureError(f"manufacture: EK kinds {unknown or '[]'} unknown; use rsa, ecc")
    when = (now or datetime.datetime.now(datetime.UTC)).replace(microsecond=0)
    tpm = wire.TpmClient(engine)
    try:
        tpm.startup_clear()
        props = tpm.get_properties(wire.TPM_PT_FIXED, 64)
        index_max = props.get(wire.TPM_PT_NV_INDEX_MAX, 0)
        buffer_max = props.get(wire.TPM_PT_NV_BUFFER_MAX, 0)
        if not index_max or not buffer_max:
            raise ManufactureError("TPM did not report TPM_PT_NV_INDEX_MAX/NV_BUFFER_MAX")

        ek_objects: dict[str, wire.CreatedObject] = {}
        for kind in kinds:
            created = tpm.create_primary(wire.TPM_RH_ENDORSEMENT, EK_KIND_TABLE[kind].template)
            tpm.flush(created.handle)
            if created.name != created.public.name():
                raise ManufactureError(f"{kind} EK: the Name the TPM returned does not match")
            ek_objects[kind] = created

        ca_auth = os.urandom(CA_AUTH_SIZE)
        parent = tpm.create_primary(wire.TPM_RH_NULL, STORAGE_PARENT_TEMPLATE)
        try:
            ca = tpm.create_loaded(
                parent.handle, CA_KEY_TEMPLATE, wire.SensitiveCreate(user_auth=ca_auth)
            )
        finally:
            tpm.flush(parent.handle)
    except (wire.TpmError, wire.WireError) as exc:
        raise _step("creating keys", exc) from exc

    from cryptography.hazmat.primitives.asymmetric import ec

    from vtpm import certs

    try:
        try:
            identity = certs.TpmIdentity.from_properties(props)
        except certs.CertificateError as exc:
            raise _step("creating keys", exc) from exc
        ca_key = certs.public_key_of(ca.public)
        if not isinstance(ca_key, ec.EllipticCurvePublicKey):
            raise ManufactureError("manufacture: the TPM returned a CA key that is not ECC")
        ca_point = certs.sec1_point(ca_key)
        report_data = report_data_for(ca_point)
        try:
            quote = attester.quote(report_data)
            event_log = attester.event_log()
            if not isinstance(quote, bytes) or not quote:
                raise AttesterError(f"attester {attester.name!r} returned no quote")
            check_binding(quote, ca_point)
        except Exception as exc:
            raise ManufactureError(
                f"manufacture: attester {attester.name!r} failed: {exc}"
            ) from exc
        fake = is_fake_quote(quote)

        def signer(digest: bytes) -> tuple[int, int]:
            sig = tpm.sign(ca.handle, digest, ca_auth)
            return sig.r, sig.s

        subject = certs.ca_subject(attester.name, attester.simulated or fake, fake)
        ca_der = certs.build_ca_certificate(ca_key, subject, quote, event_log, signer, when)
        certs.verify_issued_by(ca_der, ca_der)
        records: dict[str, EkRecord] = {}
        for kind, created in ek_objects.items():
            ek_key = certs.public_key_of(created.public)
            ek_der = certs.build_ek_certificate(ek_key, subject, ca_key, identity, signer, when)
            certs.verify_issued_by(ek_der, ca_der)
            table = EK_KIND_TABLE[kind]
            records[kind] = EkRecord(
                kind, table.template_name, created.public, created.name, ek_der, table.nv_index
            )
    except ManufactureError:
        raise
    except Exception as exc:
        raise _step("issuing certificates", exc) from exc
    finally:
        with contextlib.suppress(wire.TpmError, wire.WireError):
            tpm.flush(ca.handle)

    try:
        for record in records.values():
            if len(record.certificate) > index_max:
                raise ManufactureError(
                    f"{record.kind} EK certificate ({len(record.certificate)} bytes) exceeds "
                    f"TPM_PT_NV_INDEX_MAX {index_max}"
                )
            _clear_index(tpm, record.nv_index)
            _store(tpm, record.nv_index, record.certificate, buffer_max)
        chunks = chain_chunks(ca_der, index_max)
        for index in range(NV_EK_CHAIN_FIRST, NV_EK_CHAIN_LAST + 1):
            if tpm.nv_read_public(index) is None:
                break
            tpm.nv_undefine(index)
        for index, chunk in chunks:
            _store(tpm, index, chunk, buffer_max)
    except (wire.TpmError, wire.WireError) as exc:
        raise _step("storing certificates in NV", exc) from exc

    return ManufactureResult(
        records,
        ca_der,
        tuple(i for i, _ in chunks),
        ca_point,
        report_data,
        quote,
        event_log,
        attester.name,
        attester.simulated or fake,
        identity,
    )
