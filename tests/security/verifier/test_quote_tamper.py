"""Tampered, forged, truncated and mutated quotes: each is refused with an error naming why."""

from __future__ import annotations

import dataclasses
import random
import struct
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tdxdefs.quote import SgxReportBody
from tdxsim.attestation.pck import generate_pck_chain
from tdxsim.attestation.quoting import QuotingService, SimulatedAttestation
from verifier.chain import ChainError, UntrustedRootError
from verifier.errors import VerificationError
from verifier.quote import (
    CertificationData,
    CertificationDataError,
    QeReportBindingError,
    QeReportSignatureError,
    QuoteParseError,
    QuoteSignatureError,
    parse_quote,
    qe_report_data_binding,
    verify_quote,
)

from .conftest import REPORTDATA, TD

HEADER_PARSED_FIELDS = {
    0: "header.version",
    1: "header.version",
    2: "header.att_key_type",
    3: "header.att_key_type",
    4: "header.tee_type",
    5: "header.tee_type",
    6: "header.tee_type",
    7: "header.tee_type",
}
MUTATION_COUNT = 1500
MUTATION_SECONDS = 20.0


def _flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def _sign_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]


def test_every_byte_of_header_and_body_is_covered(sim: SimulatedAttestation, quote: bytes) -> None:
    root = sim.quoting.trusted_root_der
    for offset in range(632):
        tampered = _flip(quote, offset)
        with pytest.raises(VerificationError) as err:
            verify_quote(tampered, root)
        if offset == 0:  # version 4 -> 5: the body is read as a v5 body descriptor and refused
            assert isinstance(err.value, QuoteParseError), offset
            assert err.value.field.startswith("body_descriptor."), err.value.field
        elif offset in HEADER_PARSED_FIELDS:
            assert isinstance(err.value, QuoteParseError), offset
            assert err.value.field == HEADER_PARSED_FIELDS[offset]
        else:
            assert isinstance(err.value, QuoteSignatureError), offset
            assert "quote signature over header and TD quote body" in str(err.value)


def _qe_body_spans(*, reserved: bool) -> list[tuple[int, int]]:
    """(start, end) of the QE report body's reserved fields, or of its other fields."""
    return [
        (SgxReportBody.offset(name), SgxReportBody.offset(name) + SgxReportBody.field_size(name))
        for name, _code in SgxReportBody.FIELDS
        if name.startswith("reserved") == reserved
    ]


def test_samples_of_signature_and_certification_data(
    sim: SimulatedAttestation, quote: bytes
) -> None:
    root = sim.quoting.trusted_root_der
    parsed = parse_quote(quote)
    qe_at = parsed.certification.offset
    auth_at = qe_at + 384 + 64
    nested = parsed.qe_report.certification
    regions: list[tuple[range, tuple[type[Exception], ...]]] = [
        (range(632, 636), (QuoteParseError,)),  # signature_data_len
        (range(636, 700), (QuoteSignatureError,)),  # quote signature
        (range(700, 764), (QeReportBindingError,)),  # attestation key
        (range(764, 770), (QuoteParseError, CertificationDataError)),  # type, size
        *(
            (range(qe_at + start, qe_at + end, 3), (QeReportSignatureError,))
            for start, end in _qe_body_spans(reserved=False)
        ),  # QE report body: the signature covers it
        *(
            (range(qe_at + start, qe_at + end), (QuoteParseError,))
            for start, end in _qe_body_spans(reserved=True)
        ),  # QE report body reserved fields: nonzero is malformed before any signature check
        (range(qe_at + 384, auth_at), (QeReportSignatureError,)),  # QE report signature
        (range(auth_at, auth_at + 2), (QuoteParseError,)),  # QE auth data size
        (range(auth_at + 2, nested.offset - 6), (QeReportBindingError,)),  # QE auth data
        (range(nested.offset - 6, nested.offset), (QuoteParseError, CertificationDataError)),
    ]
    for region, errors in regions:
        for offset in region:
            with pytest.raises(errors, match=r"\w"):
                verify_quote(_flip(quote, offset), root)
    original = [c.public_bytes(Encoding.DER) for c in parsed.pck_chain]
    for offset in range(nested.offset, len(quote)):  # every byte of the PEM chain
        tampered = _flip(quote, offset)
        try:
            verify_quote(tampered, root)
        except (QuoteParseError, ChainError):
            continue
        # Accepted only if no certificate changed: an encoding no-op (unused base64 bits), or
        # the root's PEM armour broken so the root drops out (the caller supplies the root).
        changed = [c.public_bytes(Encoding.DER) for c in parse_quote(tampered).pck_chain]
        assert changed in (original, original[:-1]), offset


def test_wrong_root_and_other_platform_fail(sim: SimulatedAttestation, quote: bytes) -> None:
    other = SimulatedAttestation.create(b"another platform")
    with pytest.raises(UntrustedRootError):
        verify_quote(quote, other.quoting.trusted_root_der)
    foreign = other.quoting.quote(other.reports.tdreport(TD, REPORTDATA))
    with pytest.raises(UntrustedRootError):
        verify_quote(foreign, sim.quoting.trusted_root_der)


def test_resigned_quote_with_own_attestation_key_breaks_the_qe_binding(
    sim: SimulatedAttestation, quote: bytes
) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    body = quote[:48] + b"\x66" * 48 + quote[96:632]  # a different MRSEAM, re-signed
    forged = body + quote[632:636] + _sign_raw(attacker, body) + _raw_key(attacker) + quote[764:]
    with pytest.raises(QeReportBindingError, match="attestation key is not the one"):
        verify_quote(forged, sim.quoting.trusted_root_der)


def test_qe_report_signed_by_a_non_pck_key_fails(sim: SimulatedAttestation, quote: bytes) -> None:
    parsed = parse_quote(quote)
    qe = parsed.qe_report
    rogue = ec.generate_private_key(ec.SECP256R1())
    qe_data = (
        qe.report_body_raw
        + _sign_raw(rogue, qe.report_body_raw)
        + struct.pack("<H", len(qe.auth_data))
        + qe.auth_data
        + qe.certification.pack()
    )
    forged = quote[:764] + CertificationData(6, qe_data).pack()
    with pytest.raises(QeReportSignatureError, match="PCK leaf"):
        verify_quote(forged, sim.quoting.trusted_root_der)


def test_attacker_chain_under_a_lookalike_root_fails(sim: SimulatedAttestation) -> None:
    attacker = QuotingService(sim.reports.key, generate_pck_chain())  # same names, own keys
    forged = attacker.quote(sim.reports.tdreport(TD, REPORTDATA))
    verify_quote(forged, attacker.trusted_root_der)  # well formed under its own root
    with pytest.raises(UntrustedRootError):
        verify_quote(forged, sim.quoting.trusted_root_der)


def _with_qe_report(sim: SimulatedAttestation, quote: bytes, report_data: bytes) -> bytes:
    """The quote with its QE report's report_data replaced and the QE report re-signed by the
    platform's own PCK leaf key, so chain and QE signature still verify."""
    qe = parse_quote(quote).qe_report
    body = dataclasses.replace(qe.report_body, report_data=report_data).pack()
    qe_data = (
        body
        + _sign_raw(sim.quoting.pck.leaf_key, body)
        + struct.pack("<H", len(qe.auth_data))
        + qe.auth_data
        + qe.certification.pack()
    )
    return quote[:764] + CertificationData(6, qe_data).pack()


def test_qe_report_data_upper_half_must_be_zero(sim: SimulatedAttestation, quote: bytes) -> None:
    root = sim.quoting.trusted_root_der
    parsed = parse_quote(quote)
    binding = qe_report_data_binding(parsed.attestation_key, parsed.qe_report.auth_data)
    assert parsed.qe_report.report_body.report_data == binding
    verify_quote(_with_qe_report(sim, quote, binding), root)  # re-signing alone breaks nothing
    for upper in (b"\x01" + bytes(31), bytes(31) + b"\x80", b"\xff" * 32):
        forged = _with_qe_report(sim, quote, binding[:32] + upper)
        with pytest.raises(QeReportBindingError, match="32 zero bytes"):
            verify_quote(forged, root)


def test_truncation_at_every_length_raises_the_parser_error(quote: bytes) -> None:
    for size in range(len(quote)):
        with pytest.raises(QuoteParseError):
            parse_quote(quote[:size])


def _mutate(rng: random.Random, quote: bytes, size_fields: list[tuple[int, int]]) -> bytes:
    """Overwrites (length kept), inserts/deletes (signature_data_len fixed up), or a size field."""
    data = bytearray(quote)
    kind = rng.random()
    if kind < 0.5:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind < 0.75:
        at = rng.randrange(636, len(data))
        if rng.random() < 0.5:
            del data[at : at + rng.randint(1, 64)]
        else:
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        data[632:636] = struct.pack("<I", len(data) - 636)
    else:
        offset, width = rng.choice(size_fields)
        data[offset : offset + width] = rng.randbytes(width)
    return bytes(data)


def test_random_mutations_raise_only_verification_errors(
    sim: SimulatedAttestation, quote: bytes
) -> None:
    rng = random.Random(0x7D5)
    root = sim.quoting.trusted_root_der
    parsed = parse_quote(quote)
    auth_at = parsed.certification.offset + 384 + 64
    size_fields = [(632, 4), (766, 4), (auth_at, 2), (parsed.qe_report.certification.offset - 4, 4)]
    deadline = time.monotonic() + MUTATION_SECONDS
    seen: set[type[Exception]] = set()
    for _ in range(MUTATION_COUNT):
        if time.monotonic() > deadline:
            break
        data = _mutate(rng, quote, size_fields)
        try:
            accepted = verify_quote(data, root)
        except VerificationError as exc:
            seen.add(type(exc))
            continue
        # Accepted only if nothing that is attested or signed changed.
        assert accepted.signed_data == parsed.signed_data
        assert accepted.attestation_key == parsed.attestation_key
        assert accepted.qe_report.report_body_raw == parsed.qe_report.report_body_raw
    assert {QuoteParseError, QuoteSignatureError, QeReportSignatureError} <= seen  # went deep


def test_length_fields_claiming_huge_sizes(quote: bytes) -> None:
    parsed = parse_quote(quote)
    auth_at = parsed.certification.offset + 384 + 64
    nested_size_at = parsed.qe_report.certification.offset - 4
    for offset, width, field in (
        (632, 4, "signature_data_len"),
        (766, 4, "certification_data"),
        (auth_at, 2, "qe_auth_data"),
        (nested_size_at, 4, "qe_report_certification_data.nested"),
    ):
        bad = quote[:offset] + b"\xff" * width + quote[offset + width :]
        with pytest.raises(QuoteParseError, match=field):
            parse_quote(bad)


def test_bytes_after_the_last_pem_block_are_refused(
    sim: SimulatedAttestation, quote: bytes
) -> None:
    end = quote.rindex(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----")
    assert end < len(quote), "the chain should end with a newline or padding"
    for offset in range(end, len(quote)):
        tampered = bytearray(quote)
        tampered[offset] ^= 0xFF
        with pytest.raises(VerificationError):
            verify_quote(bytes(tampered), sim.quoting.trusted_root_der)
