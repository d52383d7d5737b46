"""X.509 certificate chains up to a root the caller chooses (the PCK chain of a TD quote).

There is no default trust anchor: the caller passes the simulated tdxsim root for simulated quotes,
or Intel's SGX root CA for real ones. Revocation (PCK CRLs) and TCB status are not checked here.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from verifier.errors import VerificationError

PEM_MARKER = b"-----BEGIN"
MAX_CHAIN_LENGTH = 8


class ChainError(VerificationError):
    """A certificate chain does not verify."""


class UntrustedRootError(ChainError):
    """The chain does not end at the trusted root the caller gave."""


class CertificateSignatureError(ChainError):
    """A certificate's signature does not verify with its issuer's key, or the names do not link."""


class CertificateValidityError(ChainError):
    """A certificate is outside its validity period at the verification time."""


class MalformedCertificateError(ChainError):
    """A certificate decodes only partly: a field the verification reads does not parse."""


class TrustedRootFormatError(ChainError, ValueError):
    """The trusted root the caller gave is not one PEM or DER X.509 certificate."""


class CertificateProfileError(ChainError):
    """A certificate is used in a role its extensions do not allow (an issuer that is no CA)."""


def load_certificate(data: bytes | x509.Certificate) -> x509.Certificate:
    """Accept a certificate object, or one certificate as PEM or DER bytes."""
    if isinstance(data, x509.Certificate):
        return data
    try:
        if data.lstrip().startswith(PEM_MARKER):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise TrustedRootFormatError(
            f"trusted root is not a PEM or DER X.509 certificate: {exc}"
        ) from exc


def check_well_formed(cert: x509.Certificate, role: str) -> None:
    """Parse every field verification reads now; cryptography decodes some of them lazily."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # hostile names warn, not only fail
            cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
            _ = (cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc)
            cert.public_key()
            _ = (cert.extensions, cert.signature_hash_algorithm)
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension) as exc:
        raise MalformedCertificateError(f"{role} certificate does not decode: {exc}") from exc


def _describe(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string() or '<empty subject>'} (serial {cert.serial_number:#x})"


def _check_validity(cert: x509.Certificate, role: str, at: datetime.datetime) -> None:
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise CertificateValidityError(
            f"{role} certificate '{_describe(cert)}' is not valid at {at.isoformat()} "
            f"(valid {cert.not_valid_before_utc.isoformat()} to "
            f"{cert.not_valid_after_utc.isoformat()})"
        )


def _check_is_ca(cert: x509.Certificate, role: str) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    except ValueError as exc:
        raise CertificateProfileError(
            f"{role} certificate '{_describe(cert)}' has malformed extensions: {exc}"
        ) from exc
    if constraints is None or not constraints.ca:
        raise CertificateProfileError(
            f"{role} certificate '{_describe(cert)}' issues certificates but is not a CA "
            "(BasicConstraints CA=TRUE missing)"
        )


def _check_end_entity(cert: x509.Certificate) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return
    if constraints.ca:
        raise CertificateProfileError(
            f"leaf certificate '{_describe(cert)}' is a CA, not an end-entity certificate "
            "(was the real leaf dropped from the chain?)"
        )


def _check_issued_by(cert: x509.Certificate, issuer: x509.Certificate, role: str) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except ValueError as exc:
        raise CertificateSignatureError(
            f"{role} certificate '{_describe(cert)}' does not name '{_describe(issuer)}' as its "
            f"issuer: {exc}"
        ) from exc
    except (InvalidSignature, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateSignatureError(
            f"{role} certificate '{_describe(cert)}' signature does not verify with the key of "
            f"'{_describe(issuer)}'"
        ) from exc


def verify_chain(
    chain: Sequence[x509.Certificate],
    trusted_root: bytes | x509.Certificate,
    *,
    at: datetime.datetime | None = None,
) -> x509.Certificate:
    """Verify leaf, intermediates[, root] up to `trusted_root`; return the verified leaf.

    The chain's own root, if present, must be byte-identical to the trusted root: it is never
    trusted on its own say-so. Every issuer must be a CA; every certificate must be valid at `at`.
    """
    root = load_certificate(trusted_root)
    when = at if at is not None else datetime.datetime.now(datetime.UTC)
    if not chain:
        raise ChainError("certificate chain is empty")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise ChainError(
            f"certificate chain has {len(chain)} certificates, more than {MAX_CHAIN_LENGTH}"
        )
    check_well_formed(root, "trusted root")
    for index, cert in enumerate(chain):
        check_well_formed(cert, f"chain[{index}]")
    certs = list(chain)
    last = certs[-1]
    if last.public_bytes(Encoding.DER) == root.public_bytes(Encoding.DER):
        certs.pop()
    elif last.subject == last.issuer and len(certs) > 1:
        raise UntrustedRootError(
            f"chain ends at root '{_describe(last)}', which is not the trusted root "
            f"'{_describe(root)}'"
        )
    if not certs:
        raise ChainError("certificate chain holds only the root, no leaf")
    roles = ["leaf"] + [f"intermediate {i}" for i in range(1, len(certs))]
    _check_end_entity(certs[0])
    _check_validity(root, "trusted root", when)
    _check_is_ca(root, "trusted root")
    for index, (cert, role) in enumerate(zip(certs, roles, strict=True)):
        _check_validity(cert, role, when)
        if index + 1 < len(certs):
            issuer = certs[index + 1]
            _check_is_ca(issuer, roles[index + 1])
            _check_issued_by(cert, issuer, role)
    top = certs[-1]
    try:
        top.verify_directly_issued_by(root)
    except (ValueError, InvalidSignature, TypeError, UnsupportedAlgorithm) as exc:
        raise UntrustedRootError(
            f"{roles[-1]} certificate '{_describe(top)}' is not issued by the trusted root "
            f"'{_describe(root)}'"
        ) from exc
    return certs[0]
