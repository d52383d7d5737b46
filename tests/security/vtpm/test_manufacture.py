"""Manufacture under hostile conditions: lying or failing attesters, tampered certificates,
attempts to rewrite the provisioned certificates, and a CA key that must not outlive manufacture."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.tpm_socket import SocketTransport
from tests.support.vtpm_process import VtpmProcess
from vtpm import attest, certs, wire
from vtpm.manufacture import ManufactureError, ManufactureResult, manufacture
from vtpm.nvindex import NV_ECC_EK_CERT, NV_EK_CHAIN_FIRST, NV_RSA_EK_CERT, read_ca_certificate

TPM_RC_NV_LOCKED = 0x148
TPM_RC_NV_AUTHORIZATION = 0x149
TPM_RC_AUTH_UNAVAILABLE = 0x12F
REFUSED = (TPM_RC_NV_LOCKED, TPM_RC_NV_AUTHORIZATION, TPM_RC_AUTH_UNAVAILABLE)
TPM_CAP_HANDLES = 0x00000001
TPM_HT_TRANSIENT_FIRST = 0x80000000


@pytest.fixture
def transport(vtpm_server: VtpmProcess) -> Iterator[SocketTransport]:
    t = SocketTransport(vtpm_server)
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def provisioned(transport: SocketTransport) -> ManufactureResult:
    return manufacture(transport, attester=attest.FakeAttester())


class LyingAttester:
    """Quotes someone else's REPORTDATA, as a compromised host's quoting path might."""

    name = "lying"
    simulated = False

    def quote(self, report_data: bytes) -> bytes:
        return attest.FakeAttester().quote(bytes(64))

    def event_log(self) -> bytes:
        return b""


class FailingAttester:
    name = "broken-tdx"
    simulated = False

    def quote(self, report_data: bytes) -> bytes:
        raise OSError("GetQuote: TDVMCALL returned status 0xffffffff")

    def event_log(self) -> bytes:
        return b""


class EmptyAttester(FailingAttester):
    name = "empty"

    def quote(self, report_data: bytes) -> bytes:
        return b""


class DisguisedFakeAttester(attest.FakeAttester):
    """Claims to be real hardware but returns the fake quote."""

    name = "tdx"
    simulated = False


def transient_handles(tpm: wire.TpmClient) -> list[int]:
    resp = tpm.call(
        wire.TPM_CC_GET_CAPABILITY,
        params=struct.pack(">III", TPM_CAP_HANDLES, TPM_HT_TRANSIENT_FIRST, 64),
    )
    count = int.from_bytes(resp.params[5:9], "big")
    return [int.from_bytes(resp.params[9 + 4 * i : 13 + 4 * i], "big") for i in range(count)]


def test_lying_attester_is_refused(transport: SocketTransport) -> None:
    with pytest.raises(ManufactureError, match="REPORTDATA"):
        manufacture(transport, attester=LyingAttester())


def test_failing_attester_stops_manufacture_without_fallback(transport: SocketTransport) -> None:
    with pytest.raises(ManufactureError, match="attester 'broken-tdx' failed: GetQuote"):
        manufacture(transport, attester=FailingAttester())
    with pytest.raises(ManufactureError, match="no quote"):
        manufacture(transport, attester=EmptyAttester())


def test_failed_manufacture_leaves_no_key_loaded(transport: SocketTransport) -> None:
    with pytest.raises(ManufactureError):
        manufacture(transport, attester=FailingAttester())
    assert transient_handles(wire.TpmClient(transport)) == []


def test_ca_key_is_flushed_and_never_the_same(
    transport: SocketTransport, provisioned: ManufactureResult
) -> None:
    assert transient_handles(wire.TpmClient(transport)) == []
    again = manufacture(transport, attester=attest.FakeAttester())
    assert again.ca_public_point != provisioned.ca_public_point


def test_fake_quote_is_labelled_even_when_attester_claims_real(
    transport: SocketTransport,
) -> None:
    result = manufacture(transport, attester=DisguisedFakeAttester())
    ca = x509.load_der_x509_certificate(result.ca_certificate)
    assert "FAKE" in ca.subject.rfc4514_string()
    assert result.simulated
    quote = ca.extensions.get_extension_for_oid(certs.OID_TD_QUOTE).value
    assert isinstance(quote, x509.UnrecognizedExtension)
    assert attest.is_fake_quote(quote.value)


@pytest.mark.parametrize(
    "index", [NV_RSA_EK_CERT, NV_ECC_EK_CERT, NV_EK_CHAIN_FIRST], ids=lambda i: f"0x{i:08X}"
)
def test_certificates_cannot_be_rewritten(
    transport: SocketTransport, provisioned: ManufactureResult, index: int
) -> None:
    tpm = wire.TpmClient(transport)
    before = read_ca_certificate(tpm) if index == NV_EK_CHAIN_FIRST else None
    # Platform: locked. Owner, index auth: no write authorization (PPWRITE only) or locked.
    for auth_handle in (wire.TPM_RH_PLATFORM, wire.TPM_RH_OWNER, index):
        with pytest.raises(wire.TpmError) as err:
            tpm.nv_write(index, b"evil", 1024, auth_handle=auth_handle)
        assert wire.rc_base(err.value.rc) in REFUSED
    public = tpm.nv_read_public(index)
    assert public is not None
    assert public.attributes & wire.TPMA_NV_WRITELOCKED
    if before is not None:
        assert read_ca_certificate(tpm) == before == provisioned.ca_certificate


def test_unknown_ek_kind(transport: SocketTransport) -> None:
    with pytest.raises(ManufactureError, match=r"EK kinds \['dsa'\] unknown"):
        manufacture(transport, ek=("rsa", "dsa"), attester=attest.FakeAttester())


def test_tampered_certificates_fail_verification(
    provisioned: ManufactureResult, tmp_path: Path
) -> None:
    ca_der = provisioned.ca_certificate
    ek_der = provisioned.eks["ecc"].certificate
    ek = x509.load_der_x509_certificate(ek_der)
    pub_der = ek.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tampered = bytearray(ek_der)
    tampered[ek_der.index(pub_der) + len(pub_der) - 1] ^= 0x01
    with pytest.raises(certs.CertificateError):
        certs.verify_issued_by(bytes(tampered), ca_der)
    # A CA certificate with a swapped quote extension no longer verifies either.
    quote_at = ca_der.index(provisioned.quote[:64])
    bad_ca = bytearray(ca_der)
    bad_ca[quote_at + 600] ^= 0xFF
    with pytest.raises(certs.CertificateError):
        certs.verify_issued_by(bytes(bad_ca), bytes(bad_ca))
    if shutil.which("openssl"):
        ca_pem = tmp_path / "ca.pem"
        ek_pem = tmp_path / "ek.pem"
        ca_pem.write_bytes(_pem(ca_der))
        ek_pem.write_bytes(_pem(bytes(tampered)))
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca_pem), str(ek_pem)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode != 0


def _pem(der: bytes) -> bytes:
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode()


def test_quote_for_another_ca_key_is_detected(provisioned: ManufactureResult) -> None:
    other_rd = attest.report_data_for(b"\x04" + bytes(96))
    foreign_quote = attest.FakeAttester().quote(other_rd)
    with pytest.raises(attest.BindingError, match="REPORTDATA"):
        attest.check_binding(foreign_quote, provisioned.ca_public_point)
    attest.check_binding(provisioned.quote, provisioned.ca_public_point)


def test_result_matches_what_the_tpm_holds(
    transport: SocketTransport, provisioned: ManufactureResult
) -> None:
    tpm = wire.TpmClient(transport)
    for record in provisioned.eks.values():
        public = tpm.nv_read_public(record.nv_index)
        assert public is not None
        assert tpm.nv_read(record.nv_index, public.data_size, 512) == record.certificate
        assert record.name == wire.name_of(wire.TPM_ALG_SHA256, record.public_area)
        cert = x509.load_der_x509_certificate(record.certificate)
        assert cert.public_key() == certs.public_key_of(record.public)
    assert read_ca_certificate(tpm) == provisioned.ca_certificate
    ca = x509.load_der_x509_certificate(provisioned.ca_certificate)
    assert ca.public_key() == provisioned.ca_public_key
    assert provisioned.report_data == attest.report_data_for(provisioned.ca_public_point)
