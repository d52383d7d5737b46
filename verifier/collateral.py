"""Collateral for a TD quote, offline: TCB info, QE identity, their signatures and issuer chains,
and the PCK and root CRLs, as Intel's Provisioning Certification Service (and a PCCS caching it)
serves them.

The file format is one JSON object holding the served bodies byte for byte (the signed JSON text
of `tcbInfo` and `enclaveIdentity`), their signatures as hex r||s, the issuer chains from the
response headers as PEM, and the CRLs as hex DER; the keys are those of dcap-qvl's
QuoteCollateralV3 JSON, so its collateral files load as they are. Intel SGX and TDX DCAP
specifications: "TCB Info V3" (id "TDX"), "Enclave Identity V2" (id "TD_QE"), "PCK Certificate
and CRL Profile".
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from verifier.chain import ChainError, verify_chain
from verifier.errors import VerificationError
from verifier.quote import p256_signature_valid

PEM_MARKER = "-----BEGIN"
TCB_INFO_ID_TDX = "TDX"
TCB_INFO_VERSION = 3
QE_IDENTITY_ID_TDX = "TD_QE"
QE_IDENTITY_VERSION = 2
COLLATERAL_KEYS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)


class CollateralError(VerificationError):
    """Collateral did not verify, or says the platform may not be trusted."""


class CollateralFormatError(CollateralError, ValueError):
    """A collateral file or item does not decode; names the item."""


class CollateralSignatureError(CollateralError):
    """A TCB info, QE identity or CRL signature does not verify with its issuer's key."""


class CollateralExpiredError(CollateralError):
    """An item of collateral is outside its issueDate..nextUpdate window at the judging time."""


class CertificateRevokedError(CollateralError):
    """A certificate of the PCK or collateral chains is listed in a CRL."""


def parse_time(text: object, item: str) -> datetime.datetime:
    """An ISO 8601 UTC time from collateral ("2025-06-19T10:16:03Z")."""
    if not isinstance(text, str):
        raise CollateralFormatError(f"{item} is not an ISO 8601 time: {text!r}")
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CollateralFormatError(f"{item} is not an ISO 8601 time: {text!r}") from exc
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def _hex(value: object, item: str) -> bytes:
    if not isinstance(value, str):
        raise CollateralFormatError(f"{item} is not a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise CollateralFormatError(f"{item} is not hex: {exc}") from exc


def _chain(value: object, item: str) -> tuple[x509.Certificate, ...]:
    if not isinstance(value, str) or PEM_MARKER not in value:
        raise CollateralFormatError(f"{item} is not a PEM certificate chain")
    try:
        return tuple(x509.load_pem_x509_certificates(value.encode()))
    except ValueError as exc:
        raise CollateralFormatError(f"{item} does not decode: {exc}") from exc


def _crl(value: object, item: str) -> x509.CertificateRevocationList:
    try:
        if isinstance(value, str) and value.lstrip().startswith(PEM_MARKER):
            return x509.load_pem_x509_crl(value.encode())
        return x509.load_der_x509_crl(_hex(value, item))
    except ValueError as exc:
        raise CollateralFormatError(f"{item} is not a DER or PEM CRL: {exc}") from exc


def _json_object(text: object, item: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise CollateralFormatError(f"{item} is not the signed JSON text")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CollateralFormatError(f"{item} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CollateralFormatError(f"{item} is not a JSON object")
    return value


@dataclass(frozen=True)
class SignedJson:
    """A signed collateral body (TCB info or QE identity): its exact text, decoded, signature."""

    name: str
    text: str
    body: dict[str, Any]
    signature: bytes
    issuer_chain: tuple[x509.Certificate, ...]

    def field(self, key: str) -> Any:
        if key not in self.body:
            raise CollateralFormatError(f"{self.name} has no '{key}'")
        return self.body[key]

    @property
    def issue_date(self) -> datetime.datetime:
        return parse_time(self.field("issueDate"), f"{self.name} issueDate")

    @property
    def next_update(self) -> datetime.datetime:
        return parse_time(self.field("nextUpdate"), f"{self.name} nextUpdate")


@dataclass(frozen=True)
class Collateral:
    """One quote's collateral, decoded; `raw` keeps the file's object for re-export."""

    tcb_info: SignedJson
    qe_identity: SignedJson
    pck_crl: x509.CertificateRevocationList
    pck_crl_issuer_chain: tuple[x509.Certificate, ...]
    root_ca_crl: x509.CertificateRevocationList
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, text: str | bytes) -> Collateral:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise CollateralFormatError(f"collateral is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise CollateralFormatError("collateral is not a JSON object")
        missing = [k for k in COLLATERAL_KEYS if k not in raw]
        if missing:
            raise CollateralFormatError(f"collateral lacks {', '.join(missing)}")
        return cls(
            tcb_info=SignedJson(
                "TCB info",
                raw["tcb_info"],
                _json_object(raw["tcb_info"], "tcb_info"),
                _hex(raw["tcb_info_signature"], "tcb_info_signature"),
                _chain(raw["tcb_info_issuer_chain"], "tcb_info_issuer_chain"),
            ),
            qe_identity=SignedJson(
                "QE identity",
                raw["qe_identity"],
                _json_object(raw["qe_identity"], "qe_identity"),
                _hex(raw["qe_identity_signature"], "qe_identity_signature"),
                _chain(raw["qe_identity_issuer_chain"], "qe_identity_issuer_chain"),
            ),
            pck_crl=_crl(raw["pck_crl"], "pck_crl"),
            pck_crl_issuer_chain=_chain(raw["pck_crl_issuer_chain"], "pck_crl_issuer_chain"),
            root_ca_crl=_crl(raw["root_ca_crl"], "root_ca_crl"),
            raw=raw,
        )

    @classmethod
    def load(cls, path: str | Path) -> Collateral:
        return cls.from_json(Path(path).read_bytes())

    @classmethod
    def from_pcs_responses(
        cls,
        *,
        tcb_info_response: str,
        qe_identity_response: str,
        tcb_info_issuer_chain: str,
        pck_crl: bytes,
        pck_crl_issuer_chain: str,
        root_ca_crl: bytes,
        qe_identity_issuer_chain: str | None = None,
    ) -> Collateral:
        """Collateral from the responses of Intel's Provisioning Certification Service as served:
        the TCB info body ({"tcbInfo": ..., "signature": ...}), the QE identity body
        ({"enclaveIdentity": ..., "signature": ...}), the issuer chains (response headers, PEM),
        the PCK CRL and root CA CRL (DER or PEM). The signed text is cut from each body as is."""
        tcb_text, tcb_signature = signed_member(tcb_info_response, "tcbInfo")
        qe_text, qe_signature = signed_member(qe_identity_response, "enclaveIdentity")
        bundle = {
            "pck_crl_issuer_chain": pck_crl_issuer_chain,
            "root_ca_crl": _crl_text(root_ca_crl),
            "pck_crl": _crl_text(pck_crl),
            "tcb_info_issuer_chain": tcb_info_issuer_chain,
            "tcb_info": tcb_text,
            "tcb_info_signature": tcb_signature,
            "qe_identity_issuer_chain": qe_identity_issuer_chain or tcb_info_issuer_chain,
            "qe_identity": qe_text,
            "qe_identity_signature": qe_signature,
        }
        return cls.from_json(json.dumps(bundle))

    @classmethod
    def from_pcs_directory(
        cls, folder: str | Path, pck_chain: tuple[x509.Certificate, ...] = ()
    ) -> Collateral:
        """Collateral from a folder of PCS responses saved as served: `tcb_info.json`,
        `qe_identity.json`, `tcb_info_issuer_chain.pem`, `pck_crl.der` (or `.pem`),
        `root_ca_crl.der` (or `.pem`); optional `qe_identity_issuer_chain.pem` (default: the TCB
        info's) and `pck_crl_issuer_chain.pem` (default: `pck_chain` above its leaf)."""
        base = Path(folder)

        def read(*names: str, required: bool = True) -> bytes | None:
            for name in names:
                if (base / name).is_file():
                    return (base / name).read_bytes()
            if required:
                raise CollateralFormatError(f"{base} has no {' or '.join(names)}")
            return None

        issuers = read("pck_crl_issuer_chain.pem", required=False)
        if issuers is None:
            if len(pck_chain) < 2:
                raise CollateralFormatError(
                    f"{base} has no pck_crl_issuer_chain.pem and no PCK chain to take it from"
                )
            issuers = b"".join(c.public_bytes(Encoding.PEM) for c in pck_chain[1:])
        qe_chain = read("qe_identity_issuer_chain.pem", required=False)
        return cls.from_pcs_responses(
            tcb_info_response=_text(read("tcb_info.json")),
            qe_identity_response=_text(read("qe_identity.json")),
            tcb_info_issuer_chain=_text(read("tcb_info_issuer_chain.pem")),
            pck_crl=_bytes(read("pck_crl.der", "pck_crl.pem")),
            pck_crl_issuer_chain=issuers.decode(),
            root_ca_crl=_bytes(read("root_ca_crl.der", "root_ca_crl.pem")),
            qe_identity_issuer_chain=None if qe_chain is None else _text(qe_chain),
        )

    def to_json(self) -> str:
        """The collateral file (the keys `from_json` reads)."""
        return json.dumps(self.raw, indent=1)


def _bytes(data: bytes | None) -> bytes:
    assert data is not None  # read(..., required=True) raised otherwise
    return data


def _text(data: bytes | None) -> str:
    try:
        return _bytes(data).decode()
    except UnicodeDecodeError as exc:
        raise CollateralFormatError(f"collateral file is not text: {exc}") from exc


def _crl_text(crl: bytes) -> str:
    return crl.decode() if crl.lstrip().startswith(PEM_MARKER.encode()) else crl.hex()


def signed_member(body: str, key: str) -> tuple[str, str]:
    """The exact text of `key`'s value in a PCS response body, and the body's hex signature."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise CollateralFormatError(f"PCS response with '{key}' is not JSON: {exc}") from exc
    if not isinstance(document, dict) or key not in document or "signature" not in document:
        raise CollateralFormatError(f"PCS response lacks '{key}' or 'signature'")
    decoder = json.JSONDecoder()
    marker = json.dumps(key)
    start = body.find(marker)
    while start >= 0:
        colon = body.find(":", start + len(marker))
        if colon >= 0 and not body[start + len(marker) : colon].strip():
            value_at = colon + 1
            while body[value_at].isspace():
                value_at += 1
            _, end = decoder.raw_decode(body, value_at)
            return body[value_at:end], str(document["signature"])
        start = body.find(marker, start + 1)
    raise CollateralFormatError(f"PCS response: the text of '{key}' is not found")


def _serial(cert: x509.Certificate) -> str:
    return f"'{cert.subject.rfc4514_string()}' (serial {cert.serial_number:#x})"


def check_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    name: str,
    at: datetime.datetime,
) -> None:
    """The CRL is signed by `issuer` and current at `at`."""
    if crl.issuer != issuer.subject:
        raise CollateralSignatureError(
            f"{name} is issued by '{crl.issuer.rfc4514_string()}', not {_serial(issuer)}"
        )
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(key):
        raise CollateralSignatureError(
            f"{name} signature does not verify with the key of {_serial(issuer)}"
        )
    next_update = crl.next_update_utc
    if at < crl.last_update_utc or (next_update is not None and at > next_update):
        raise CollateralExpiredError(
            f"{name} is not current at {at.isoformat()} (thisUpdate "
            f"{crl.last_update_utc.isoformat()}, nextUpdate "
            f"{next_update.isoformat() if next_update else 'none'})"
        )


def check_not_revoked(
    cert: x509.Certificate, crl: x509.CertificateRevocationList, role: str, crl_name: str
) -> None:
    """`cert` is not listed in `crl` (which must be its issuer's)."""
    if crl.issuer != cert.issuer:
        return
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is not None:
        raise CertificateRevokedError(
            f"{role} certificate {_serial(cert)} is revoked by the {crl_name} (since "
            f"{entry.revocation_date_utc.isoformat()})"
        )


def check_crls(collateral: Collateral, root: x509.Certificate, at: datetime.datetime) -> None:
    """Root CA CRL signed by the root, PCK CRL signed by a CA chaining to the root, both
    current; the root and the PCK CRL issuer not revoked."""
    check_crl(collateral.root_ca_crl, root, "root CA CRL", at)
    try:
        issuer = verify_chain_ca(collateral.pck_crl_issuer_chain, root, at)
    except ChainError as exc:
        raise CollateralSignatureError(f"PCK CRL issuer chain: {exc}") from exc
    check_not_revoked(issuer, collateral.root_ca_crl, "PCK CRL issuer", "root CA CRL")
    check_crl(collateral.pck_crl, issuer, "PCK CRL", at)


def verify_chain_ca(
    chain: tuple[x509.Certificate, ...], root: x509.Certificate, at: datetime.datetime
) -> x509.Certificate:
    """The first certificate of an issuer chain whose first member is a CA (a CRL issuer)."""
    if not chain:
        raise ChainError("certificate chain is empty")
    leaf = chain[0]
    if leaf.public_bytes(Encoding.DER) == root.public_bytes(Encoding.DER):
        return leaf
    # verify_chain insists on an end-entity leaf; a CRL issuer is a CA, so the links are
    # checked here: each certificate issued by the next, the last by the trusted root.
    for cert, issuer in zip(chain, (*chain[1:], root), strict=True):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            raise ChainError(f"{_serial(cert)} is not issued by {_serial(issuer)}") from exc
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise ChainError(f"{_serial(cert)} is not valid at {at.isoformat()}")
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError) as exc:
        raise ChainError(f"CRL issuer {_serial(leaf)} has no BasicConstraints") from exc
    if not constraints.ca:
        raise ChainError(f"CRL issuer {_serial(leaf)} is not a CA")
    return leaf


def verify_signed_json(
    item: SignedJson,
    root: x509.Certificate,
    root_crl: x509.CertificateRevocationList,
    at: datetime.datetime,
    expected_id: str,
    expected_version: int,
) -> None:
    """The issuer chain verifies to `root` and is not revoked, the signature over the exact
    text holds, the id and version are the expected ones, and `at` is in its validity window."""
    try:
        signer = verify_chain(item.issuer_chain, root, at=at)
    except ChainError as exc:
        raise CollateralSignatureError(f"{item.name} issuer chain: {exc}") from exc
    check_not_revoked(signer, root_crl, f"{item.name} signing", "root CA CRL")
    key = signer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not p256_signature_valid(
        key, item.signature, item.text.encode()
    ):
        raise CollateralSignatureError(
            f"{item.name} signature does not verify with the key of {_serial(signer)}"
        )
    if item.field("id") != expected_id or item.field("version") != expected_version:
        raise CollateralFormatError(
            f"{item.name} is id {item.body.get('id')!r} version {item.body.get('version')}, "
            f"expected {expected_id!r} version {expected_version}"
        )
    if not item.issue_date <= at <= item.next_update:
        raise CollateralExpiredError(
            f"{item.name} is not current at {at.isoformat()} (issueDate "
            f"{item.issue_date.isoformat()}, nextUpdate {item.next_update.isoformat()})"
        )
