"""`ca_certificate`: a self-signed vTPM CA certificate carrying a TD quote and a CC event log in
the project's extensions, as tests of the relying party forge or tamper with them."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vtpm.certs import OID_EVENT_LOG, OID_TD_QUOTE


def ca_certificate(
    key: ec.EllipticCurvePrivateKey,
    quote: bytes | None,
    event_log: bytes | None,
    common_name: str = "test vTPM CA",
) -> x509.Certificate:
    """A self-signed vTPM CA certificate with the TD quote and event-log extensions."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    )
    if quote is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(OID_TD_QUOTE, quote), False)
    if event_log is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(OID_EVENT_LOG, event_log), False)
    return builder.sign(key, hashes.SHA384())
