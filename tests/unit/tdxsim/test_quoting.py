"""The simulated quoting service: TDREPORT -> v4 TD quote, and the GetQuote shared buffer."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from tdxdefs.getquote import GET_QUOTE_ERROR, GET_QUOTE_IN_FLIGHT, GET_QUOTE_SUCCESS, GetQuoteHeader
from tdxdefs.quote import INTEL_QE_VENDOR_ID
from tdxsim.attestation.quoting import (
    SIM_QE_VENDOR_ID,
    GetQuoteFormatError,
    QuoteRequestRefused,
    SimulatedAttestation,
    decode_get_quote_request,
    decode_get_quote_response,
    encode_get_quote_request,
    encode_get_quote_response,
)
from tdxsim.attestation.report import ReportMacKey, build_tdreport
from tdxsim.module.attestation_interface import TdInfo
from verifier.quote import (
    QuoteParseError,
    parse_quote,
    qe_report_data_binding,
    verify_quote,
)

REPORTDATA = bytes(range(64))
TD = TdInfo(
    attributes=0x10000000,
    xfam=0x61AE7,
    mrtd=b"\x11" * 48,
    mrconfigid=bytes(48),
    mrowner=bytes(48),
    mrownerconfig=bytes(48),
    rtmr=(b"\xa0" * 48, b"\xa1" * 48, b"\xa2" * 48, b"\xa3" * 48),
    num_l2_vms=1,
    num_vcpus=1,
)


@pytest.fixture(scope="module")
def sim() -> SimulatedAttestation:
    return SimulatedAttestation.create(b"quoting tests")


@pytest.fixture(scope="module")
def tdreport(sim: SimulatedAttestation) -> bytes:
    return sim.reports.tdreport(TD, REPORTDATA)


def test_round_trip_reads_back_td_measurements(sim: SimulatedAttestation, tdreport: bytes) -> None:
    parsed = verify_quote(sim.quoting.quote(tdreport), sim.quoting.trusted_root_der)
    body = parsed.body
    assert body.reportdata == REPORTDATA
    assert body.mrtd == TD.mrtd
    assert body.rtmrs == TD.rtmr
    assert (body.rtmr0, body.rtmr3) == (TD.rtmr[0], TD.rtmr[3])
    assert body.attributes == body.tdattributes == TD.attributes
    assert body.xfam == TD.xfam


def test_header_is_v4_tdx_p256_and_not_intel(sim: SimulatedAttestation, tdreport: bytes) -> None:
    quote = sim.quoting.quote(tdreport)
    version, att_key_type, tee_type = struct.unpack_from("<HHI", quote)
    assert (version, att_key_type, tee_type) == (4, 2, 0x81)
    header = parse_quote(quote).header
    assert header.qe_vendor_id == SIM_QE_VENDOR_ID != INTEL_QE_VENDOR_ID
    assert header.user_data.startswith(b"tdxsim SIMULATED")


def test_body_copies_tee_tcb_info(sim: SimulatedAttestation, tdreport: bytes) -> None:
    body = parse_quote(sim.quoting.quote(tdreport)).body
    assert body.mrseam == tdreport[280:328]
    assert body.tee_tcb_svn == tdreport[264:280]
    assert body.mrsignerseam == bytes(48)


def test_certification_data_shape(sim: SimulatedAttestation, tdreport: bytes) -> None:
    parsed = parse_quote(sim.quoting.quote(tdreport))
    assert parsed.certification.cert_type == 6
    qe = parsed.qe_report
    assert qe.certification.cert_type == 5
    assert qe.report_body.report_data == qe_report_data_binding(
        parsed.attestation_key, qe.auth_data
    )
    assert qe.report_body.report_data[32:] == bytes(32)
    leaf, intermediate, root = parsed.pck_chain
    assert leaf == sim.quoting.pck.leaf and root == sim.quoting.pck.root
    assert intermediate == sim.quoting.pck.intermediate


def test_bad_mac_is_refused(sim: SimulatedAttestation, tdreport: bytes) -> None:
    tampered = bytearray(tdreport)
    tampered[528] ^= 0xFF  # MRTD
    with pytest.raises(QuoteRequestRefused, match="TEE_INFO_HASH"):
        sim.quoting.quote(bytes(tampered))
    tampered = bytearray(tdreport)
    tampered[230] ^= 0x01  # the MAC itself
    with pytest.raises(QuoteRequestRefused, match="MAC"):
        sim.quoting.quote(bytes(tampered))


def test_report_from_another_platform_is_refused(sim: SimulatedAttestation) -> None:
    foreign = build_tdreport(TD, REPORTDATA, ReportMacKey())
    with pytest.raises(QuoteRequestRefused, match="MAC"):
        sim.quoting.quote(foreign)
    with pytest.raises(QuoteRequestRefused, match="1000 bytes"):
        sim.quoting.quote(bytes(1000))


def test_seed_makes_keys_reproducible_and_instances_differ() -> None:
    a = SimulatedAttestation.create(b"same")
    b = SimulatedAttestation.create(b"same")
    assert a.quoting.attestation_key_raw == b.quoting.attestation_key_raw
    assert a.quoting.pck.root.public_key() == b.quoting.pck.root.public_key()
    c = SimulatedAttestation.create()
    d = SimulatedAttestation.create()
    assert c.quoting.attestation_key_raw != d.quoting.attestation_key_raw
    assert c.quoting.pck.root.public_key() != d.quoting.pck.root.public_key()


# --- GetQuote shared buffer --------------------------------------------------------------------
def test_get_quote_buffer_round_trip(sim: SimulatedAttestation, tdreport: bytes) -> None:
    request = encode_get_quote_request(tdreport)
    assert len(request) == 8192
    header = GetQuoteHeader.unpack(request[:24])
    assert (header.version, header.status, header.out_len) == (1, GET_QUOTE_SUCCESS, 0)
    assert request[24:28] == struct.pack(">I", header.in_len - 4)  # big-endian length
    assert decode_get_quote_request(request) == tdreport
    answered = sim.quoting.serve_get_quote(request)
    assert len(answered) == len(request)
    quote = decode_get_quote_response(answered)
    assert verify_quote(quote, sim.quoting.pck.root_pem()).body.reportdata == REPORTDATA


def test_get_quote_with_bad_mac_answers_error(sim: SimulatedAttestation, tdreport: bytes) -> None:
    tampered = bytearray(tdreport)
    tampered[0x300] ^= 1
    answered = sim.quoting.serve_get_quote(encode_get_quote_request(bytes(tampered)))
    header = GetQuoteHeader.unpack(answered[:24])
    assert (header.status, header.out_len) == (GET_QUOTE_ERROR, 0)
    with pytest.raises(GetQuoteFormatError, match="status"):
        decode_get_quote_response(answered)


def test_quote_too_big_for_buffer_answers_error(sim: SimulatedAttestation, tdreport: bytes) -> None:
    answered = sim.quoting.serve_get_quote(encode_get_quote_request(tdreport, 2048))
    assert GetQuoteHeader.unpack(answered[:24]).status == GET_QUOTE_ERROR


@pytest.mark.parametrize(
    ("offset", "value", "field"),
    [
        (0, 2, "version"),
        (16, 0xFFFFFFF0, "in_len"),
        (24, 0x7FFFFFFF, "message length"),
        (28, 2, "QGS major_version"),
        (32, 1, "QGS type"),
        (36, 7, "QGS size"),
        (44, 1000, "report_size"),
        (48, 9, "id_list_size"),
    ],
)
def test_malformed_request_is_named_and_answered_with_error(
    sim: SimulatedAttestation, tdreport: bytes, offset: int, value: int, field: str
) -> None:
    request = bytearray(encode_get_quote_request(tdreport))
    width = 8 if offset == 0 else 4
    raw = value.to_bytes(width, "big") if offset == 24 else value.to_bytes(width, "little")
    request[offset : offset + width] = raw
    with pytest.raises(GetQuoteFormatError, match=field):
        decode_get_quote_request(bytes(request))
    answered = sim.quoting.serve_get_quote(bytes(request))
    assert GetQuoteHeader.unpack(answered[:24]).status == GET_QUOTE_ERROR


def test_truncated_request_buffers_never_crash_the_service(
    sim: SimulatedAttestation, tdreport: bytes
) -> None:
    request = encode_get_quote_request(tdreport)
    for size in (0, 10, 24, 27, 40, 48, 100, 1000, 1071):
        answered = sim.quoting.serve_get_quote(request[:size])
        if size >= 24:
            assert GetQuoteHeader.unpack(answered[:24]).status == GET_QUOTE_ERROR


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b[:8] + GET_QUOTE_IN_FLIGHT.to_bytes(8, "little") + b[16:], "in flight"),
        (lambda b: b[:20] + (1 << 20).to_bytes(4, "little") + b[24:], "out_len"),
        (lambda b: b[:20] + (100).to_bytes(4, "little") + b[24:], "message length"),
        (lambda b: b[:40] + (1).to_bytes(4, "little") + b[44:], "error_code"),
        (lambda b: b[:48] + (1 << 30).to_bytes(4, "little") + b[52:], "quote_size"),
    ],
)
def test_lying_host_response_is_rejected_by_name(
    sim: SimulatedAttestation, tdreport: bytes, mutate: Callable[[bytes], bytes], field: str
) -> None:
    answered = sim.quoting.serve_get_quote(encode_get_quote_request(tdreport))
    with pytest.raises(GetQuoteFormatError, match=field):
        decode_get_quote_response(mutate(answered))


def test_response_with_garbage_quote_fails_in_the_parser() -> None:
    request = encode_get_quote_request(bytes(1024))
    answered = encode_get_quote_response(request, GET_QUOTE_SUCCESS, b"\x04\x00" + bytes(100))
    with pytest.raises(QuoteParseError, match="header"):
        parse_quote(decode_get_quote_response(answered))
