"""A served vTPM comes up provisioned: EK certificates where tools look, chained to the TD-bound CA.

Everything here is read back through tpm2-pytss (mssim TCTI) from a running `vtpm serve`, and
checked with cryptography and openssl, not with the code that wrote it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from tests.support.vtpm_process import VtpmProcess

ROOT = Path(__file__).resolve().parents[3]
NV_RSA_EK_CERT = 0x01C00002
NV_ECC_EK_CERT = 0x01C0000A
NV_CHAIN_FIRST = 0x01C00100
OID_TD_QUOTE = ObjectIdentifier("2.16.840.1.113741.1.5.5.2.2")
OID_EVENT_LOG = ObjectIdentifier("2.16.840.1.113741.1.5.5.2.3")
OID_VTPM_CA = ObjectIdentifier("2.16.840.1.113741.1.5.5.2.5")
OID_EK_CERT = ObjectIdentifier("2.23.133.8.1")
EK_KINDS = {"rsa": ("EK-RSA2048", NV_RSA_EK_CERT), "ecc": ("EK-ECC256", NV_ECC_EK_CERT)}
NV_BUFFER = 512


def nv_read(ectx: Any, index: int) -> bytes:
    from tpm2_pytss.utils import NoSuchIndex

    _more, data = ectx.get_capability(1, 0x01000000, 256)  # TPM_CAP_HANDLES, NV range
    if index not in {int(h) for h in data.data.handles}:
        raise NoSuchIndex(index)
    handle = ectx.tr_from_tpmpublic(index)
    size = int(ectx.nv_read_public(handle)[0].nvPublic.dataSize)
    blob = b""
    while len(blob) < size:
        blob += bytes(ectx.nv_read(handle, min(NV_BUFFER, size - len(blob)), len(blob)))
    ectx.tr_close(handle)
    return blob


def read_chain(ectx: Any) -> bytes:
    from tpm2_pytss.utils import NoSuchIndex

    data = b""
    index = NV_CHAIN_FIRST
    while True:
        try:
            data += nv_read(ectx, index)
        except NoSuchIndex:
            return data
        index += 1


@pytest.fixture(scope="module")
def ca_cert(ectx: Any) -> x509.Certificate:
    return x509.load_der_x509_certificate(read_chain(ectx))


def ek_public_pem(ectx: Any, kind: str) -> tuple[bytes, bytes]:
    """Create the EK from tpm2-pytss's own TCG template; return (certificate DER, EK public PEM)."""
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.utils import create_ek_template

    cert, template = create_ek_template(EK_KINDS[kind][0], lambda i: nv_read(ectx, i))
    handle, public, *_ = ectx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
    ectx.flush_context(handle)
    return cert, public.publicArea.to_pem()


def spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_ek_certificate_matches_ek_and_chains_to_ca(
    ectx: Any, ca_cert: x509.Certificate, kind: str, tmp_path: Path
) -> None:
    cert_der, ek_pem = ek_public_pem(ectx, kind)
    assert cert_der, f"no {kind} EK certificate at NV 0x{EK_KINDS[kind][1]:08X}"
    cert = x509.load_der_x509_certificate(cert_der)
    ek_key = serialization.load_pem_public_key(ek_pem)
    assert spki(cert.public_key()) == spki(ek_key)
    cert.verify_directly_issued_by(ca_cert)
    assert cert.issuer == ca_cert.subject

    if shutil.which("openssl"):
        (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / "ek.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "ek.pem")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_ek_certificate_follows_tcg_profile(
    ectx: Any, ca_cert: x509.Certificate, kind: str
) -> None:
    from tpm2_pytss.constants import TPM2_CAP, TPM2_PT

    cert = x509.load_der_x509_certificate(nv_read(ectx, EK_KINDS[kind][1]))
    assert len(cert.subject) == 0
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    (dirname,) = san.value.get_values_for_type(x509.DirectoryName)
    values = {a.oid.dotted_string: a.value for a in dirname}
    _more, caps = ectx.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.FIXED, 64)
    props = {int(p.property): int(p.value) for p in caps.data.tpmProperties}
    assert values["2.23.133.2.1"] == f"id:{props[0x105]:08X}"
    assert values["2.23.133.2.3"] == f"id:{props[0x10B]:08X}"
    vendor = b"".join(props.get(p, 0).to_bytes(4, "big") for p in range(0x106, 0x10A))
    assert values["2.23.133.2.2"] == vendor.replace(b"\0", b"").decode()
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        x509.ExtendedKeyUsage([OID_EK_CERT])
    )
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    if kind == "rsa":
        assert isinstance(cert.public_key(), rsa.RSAPublicKey)
        assert usage.value.key_encipherment and not usage.value.key_agreement
    else:
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert usage.value.key_agreement and not usage.value.key_encipherment
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    # The issuer's key, not the EK's (Intel's TD-partitioning vTPM prototype takes the EK's).
    assert aki.key_identifier != x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


@pytest.mark.parametrize("index", [NV_RSA_EK_CERT, NV_ECC_EK_CERT, NV_CHAIN_FIRST])
def test_nv_attributes(ectx: Any, index: int) -> None:
    from tpm2_pytss.constants import TPMA_NV

    handle = ectx.tr_from_tpmpublic(index)
    public = ectx.nv_read_public(handle)[0].nvPublic
    ectx.tr_close(handle)
    expected = (
        TPMA_NV.PLATFORMCREATE
        | TPMA_NV.AUTHREAD
        | TPMA_NV.OWNERREAD
        | TPMA_NV.PPREAD
        | TPMA_NV.PPWRITE
        | TPMA_NV.NO_DA
        | TPMA_NV.WRITEDEFINE
        | TPMA_NV.WRITTEN
        | TPMA_NV.WRITELOCKED
    )
    assert int(public.attributes) == int(expected)


def test_ca_certificate_carries_bound_quote_and_event_log(ca_cert: x509.Certificate) -> None:
    bc = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    eku = ca_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [OID_VTPM_CA]
    assert ExtendedKeyUsageOID.SERVER_AUTH not in list(eku)
    ca_cert.verify_directly_issued_by(ca_cert)
    quote = ca_cert.extensions.get_extension_for_oid(OID_TD_QUOTE).value
    log = ca_cert.extensions.get_extension_for_oid(OID_EVENT_LOG).value
    assert isinstance(quote, x509.UnrecognizedExtension)
    assert isinstance(log, x509.UnrecognizedExtension)
    key = ca_cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    # REPORTDATA sits at quote offset 48 (header) + 520 (body offset), 64 bytes.
    assert quote.value[568:632] == hashlib.sha384(point).digest() + bytes(16)
    assert log.value[32:48] == b"Spec ID Event03\0"
    # The standalone server uses the fake attester, and says so where a verifier looks.
    assert "FAKE" in ca_cert.subject.rfc4514_string()
    assert quote.value[12:28] == b"FAKE-QE-VENDOR!!"


@pytest.mark.parametrize("tcti", ["mssim", "swtpm"])
def test_vtpm_info_cli(vtpm_server: VtpmProcess, ectx: Any, tcti: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vtpm", "info", "--tcti", getattr(vtpm_server, tcti)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.utils import create_ek_template

    for kind, (template_name, _index) in EK_KINDS.items():
        _cert, template = create_ek_template(template_name, lambda i: nv_read(ectx, i))
        handle, *_ = ectx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        name = bytes(ectx.tr_get_name(handle)).hex()
        ectx.flush_context(handle)
        assert f"EK {kind} ({template_name}): name {name}" in out
    assert out.count("verifies against the CA") == 2
    assert "sha256" in out and "sha384" in out
    assert "FAKE" in out and "REPORTDATA binds the CA key" in out


def test_vtpm_info_reports_unreachable_tpm() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vtpm", "info", "--tcti", "mssim:host=127.0.0.1,port=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "mssim:host=127.0.0.1,port=1" in result.stderr
    assert "Traceback" not in result.stderr
