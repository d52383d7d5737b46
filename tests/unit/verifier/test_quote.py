"""v4 TD quote parsing at the reference offsets, and verification against a chosen root."""

from __future__ import annotations

import datetime
import struct

import pytest
from cryptography import x509

from tdxdefs.quote import SIGNATURE_DATA_LEN_OFFSET, QuoteHeader, SgxReportBody, TdQuoteBody
from tdxsim.attestation.quoting import SimulatedAttestation
from verifier.chain import UntrustedRootError
from verifier.errors import VerificationError
from verifier.quote import (
    SGX_REPORT_BODY_SIZE,
    CertificationData,
    CertificationDataError,
    QuoteParseError,
    parse_quote,
    verify_quote,
)

from .conftest import REPORTDATA, TD


def test_layout_sizes_follow_reference() -> None:
    assert QuoteHeader.SIZE == 48
    assert TdQuoteBody.SIZE == 584
    assert SgxReportBody.SIZE == SGX_REPORT_BODY_SIZE == 384
    assert SIGNATURE_DATA_LEN_OFFSET == 632


def test_body_fields_at_reference_offsets(quote: bytes) -> None:
    body = quote[48:632]
    assert body[136:184] == TD.mrtd
    assert body[184:232] == TD.mrconfigid
    assert body[232:280] == TD.mrowner
    assert body[280:328] == TD.mrownerconfig
    for i in range(4):
        assert body[328 + 48 * i : 376 + 48 * i] == TD.rtmr[i]
    assert body[520:584] == REPORTDATA
    assert struct.unpack_from("<QQ", body, 120) == (TD.attributes, TD.xfam)


def test_parse_names_fields(quote: bytes) -> None:
    parsed = parse_quote(quote)
    assert parsed.body.mrtd == TD.mrtd and parsed.body.reportdata == REPORTDATA
    assert parsed.body.rtmrs == TD.rtmr and parsed.body.attributes == TD.attributes
    assert parsed.signed_data == quote[:632]
    (sig_len,) = struct.unpack_from("<I", quote, 632)
    assert sig_len == len(quote) - 636
    assert parsed.signature == quote[636:700]
    assert parsed.attestation_key == quote[700:764]
    assert parsed.certification.offset == 770


def test_layouts_pack_what_they_unpack(quote: bytes) -> None:
    parsed = parse_quote(quote)
    assert parsed.header.pack() == quote[:48]
    assert parsed.body.pack() == quote[48:632]
    assert parsed.certification.pack() == quote[764:]
    assert parsed.qe_report.pack() == parsed.certification.data
    assert parsed.qe_report.report_body.pack() == parsed.qe_report.report_body_raw


def test_verify_against_simulated_root_in_any_encoding(
    sim: SimulatedAttestation, quote: bytes
) -> None:
    for root in (sim.quoting.pck.root_der(), sim.quoting.pck.root_pem(), sim.quoting.pck.root):
        assert verify_quote(quote, root).body.mrtd == TD.mrtd


def test_wrong_root_fails(quote: bytes) -> None:
    other = SimulatedAttestation.create(b"someone else")
    with pytest.raises(UntrustedRootError, match="not the trusted root"):
        verify_quote(quote, other.quoting.trusted_root_der)


def test_no_default_trust(quote: bytes) -> None:
    with pytest.raises(TypeError):
        verify_quote(quote)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="trusted root is not a PEM or DER"):
        verify_quote(quote, b"not a certificate")


def test_verification_time_is_checked(sim: SimulatedAttestation, quote: bytes) -> None:
    late = datetime.datetime(2150, 1, 1, tzinfo=datetime.UTC)
    with pytest.raises(VerificationError, match="not valid at 2150"):
        verify_quote(quote, sim.quoting.trusted_root_der, at=late)


def test_quote_without_qe_report_is_refused(sim: SimulatedAttestation, quote: bytes) -> None:
    pem = sim.quoting.pck.pem_chain()
    cert = CertificationData(5, pem).pack()
    forged = quote[:632] + struct.pack("<I", 128 + len(cert)) + quote[636:764] + cert
    assert parse_quote(forged).certification.pck_chain[0] == sim.quoting.pck.leaf
    with pytest.raises(CertificationDataError, match="not QE report"):
        verify_quote(forged, sim.quoting.trusted_root_der)


@pytest.mark.parametrize(
    ("offset", "value", "field"),
    [
        (0, b"\x03\x00", "header.version at offset 0"),
        (2, b"\x03\x00", "header.att_key_type at offset 2"),
        (4, b"\x00\x00\x00\x00", "header.tee_type at offset 4"),
        (632, b"\xff\xff\xff\xff", "signature_data_len at offset 632"),
        (764, b"\x09\x00", "certification_data.type at offset 764"),
        (766, b"\xff\xff\xff\x7f", "certification_data.data at offset 770"),
        (770 + 384 + 64, b"\xff\xff", "qe_auth_data at offset 1220"),
    ],
)
def test_malformed_fields_are_named_with_offsets(
    quote: bytes, offset: int, value: bytes, field: str
) -> None:
    bad = quote[:offset] + value + quote[offset + len(value) :]
    with pytest.raises(QuoteParseError, match=field):
        parse_quote(bad)


def test_trailing_bytes_are_reported_never_used(sim: SimulatedAttestation, quote: bytes) -> None:
    padded = quote + b"\x00" * 300 + b"\xff"
    parsed = verify_quote(padded, sim.quoting.trusted_root_der)
    assert parsed.trailing == b"\x00" * 300 + b"\xff"
    assert parsed.trailing_offset == len(quote)
    assert parsed.signed_data == quote[:SIGNATURE_DATA_LEN_OFFSET]
    assert parse_quote(quote).trailing == b""


def test_signature_data_longer_than_the_quote_is_refused(quote: bytes) -> None:
    with pytest.raises(
        QuoteParseError, match=f"signature_data_len at offset {SIGNATURE_DATA_LEN_OFFSET}"
    ):
        parse_quote(quote[:-1])


def test_pck_chain_must_be_pem(quote: bytes) -> None:
    parsed = parse_quote(quote)
    nested = parsed.qe_report.certification
    bad_pem = (
        quote[: nested.offset] + b"X" * len(nested.data) + quote[nested.offset + len(nested.data) :]
    )
    with pytest.raises(QuoteParseError, match=f"pck_cert_chain at offset {nested.offset}"):
        parse_quote(bad_pem)


def test_chain_is_decoded_leaf_first(sim: SimulatedAttestation, quote: bytes) -> None:
    chain = parse_quote(quote).pck_chain
    assert [c.subject for c in chain] == [
        sim.quoting.pck.leaf.subject,
        sim.quoting.pck.intermediate.subject,
        sim.quoting.pck.root.subject,
    ]
    assert all(isinstance(c, x509.Certificate) for c in chain)


def test_v5_body_descriptor_is_checked(sim: SimulatedAttestation) -> None:
    quote = sim.quoting.quote(sim.reports.tdreport(TD, REPORTDATA), version=5)
    parsed = parse_quote(quote)
    assert parsed.version == 5 and parsed.body_type == 3
    assert parsed.body.mrtd == TD.mrtd and parsed.body.reportdata == REPORTDATA
    for body_type in (1, 5, 0xFFFF):  # SGX enclave report, unassigned, unknown
        bad = quote[:48] + struct.pack("<H", body_type) + quote[50:]
        with pytest.raises(QuoteParseError, match=r"body_descriptor\.body_type at offset 48"):
            parse_quote(bad)
    extended = quote[:48] + struct.pack("<H", 4) + quote[50:]  # a 1.5 body labelled extended
    with pytest.raises(QuoteParseError, match=r"body_descriptor\.size at offset 50: 648, .* 885"):
        parse_quote(extended)
    wrong_size = quote[:50] + struct.pack("<I", 584) + quote[54:]
    with pytest.raises(QuoteParseError, match=r"body_descriptor\.size at offset 50: 584"):
        parse_quote(wrong_size)
    with pytest.raises(QuoteParseError, match=r"header\.version at offset 0: 6, expected 4 or 5"):
        parse_quote(struct.pack("<H", 6) + quote[2:])
