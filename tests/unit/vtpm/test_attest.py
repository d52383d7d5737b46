"""The fake attester's quote has the TDX quote v4 layout (Intel DCAP) and says it is fake."""

from __future__ import annotations

import contextlib
import hashlib
import struct
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from vtpm import attest

REPORT_DATA = bytes(range(64))


def test_fake_quote_layout_from_reference_offsets() -> None:
    quote = attest.FakeAttester().quote(REPORT_DATA)
    version, key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    assert (version, key_type, tee_type) == (4, 2, 0x81)
    assert quote[12:28] == b"FAKE-QE-VENDOR!!"  # QE vendor ID
    assert b"FAKE" in quote[28:48]  # user_data
    assert quote[48 + 520 : 48 + 584] == REPORT_DATA  # body REPORTDATA
    (sig_len,) = struct.unpack_from("<I", quote, 632)
    assert len(quote) == 636 + sig_len
    assert attest.is_fake_quote(quote)


def test_fake_quote_signature_verifies_and_detects_tampering() -> None:
    quote = bytearray(attest.FakeAttester().quote(REPORT_DATA))
    r, s = quote[636:668], quote[668:700]
    x, y = quote[700:732], quote[732:764]
    key = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
    ).public_key()
    der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
    key.verify(der, bytes(quote[:632]), ec.ECDSA(hashes.SHA256()))
    quote[48 + 520] ^= 1
    with pytest.raises(InvalidSignature):
        key.verify(der, bytes(quote[:632]), ec.ECDSA(hashes.SHA256()))
    # QE certification data (type 6): QE report REPORTDATA = SHA-256(attestation key || auth data).
    cert_type, _size = struct.unpack_from("<HI", quote, 764)
    assert cert_type == 6
    qe_report = quote[770 : 770 + 384]
    assert qe_report[320:352] == hashlib.sha256(bytes(x + y)).digest()


def test_fake_quote_rejects_wrong_report_data_size() -> None:
    with pytest.raises(attest.AttesterError, match="64 bytes, got 32"):
        attest.FakeAttester().quote(bytes(32))


def test_report_data_binding() -> None:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    point = key.public_numbers().x.to_bytes(48, "big")
    point = b"\x04" + point + key.public_numbers().y.to_bytes(48, "big")
    rd = attest.report_data_for(point)
    assert rd == hashlib.sha384(point).digest() + bytes(16)
    quote = attest.FakeAttester().quote(rd)
    attest.check_binding(quote, point)
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    other_point = (
        b"\x04"
        + other.public_numbers().x.to_bytes(48, "big")
        + other.public_numbers().y.to_bytes(48, "big")
    )
    with pytest.raises(attest.BindingError, match="REPORTDATA"):
        attest.check_binding(quote, other_point)


def test_binding_rejects_malformed_quotes() -> None:
    point = b"\x04" + bytes(96)
    with pytest.raises(attest.BindingError, match="shorter"):
        attest.check_binding(bytes(100), point)
    quote = bytearray(attest.FakeAttester().quote(attest.report_data_for(point)))
    quote[0] = 3
    with pytest.raises(attest.BindingError, match="version 3"):
        attest.check_binding(bytes(quote), point)
    with pytest.raises(attest.BindingError, match="uncompressed"):
        attest.report_data_for(b"\x02" + bytes(48))


def test_real_looking_quote_is_not_flagged_fake() -> None:
    quote = bytearray(attest.FakeAttester().quote(REPORT_DATA))
    intel_qe = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
    quote[12:28] = intel_qe
    quote[28:48] = bytes(20)
    assert not attest.is_fake_quote(bytes(quote))


def test_event_log_has_spec_id_and_four_rtmr_separators() -> None:
    log = attest.FakeAttester().event_log()
    pcr, etype, _sha1, size = struct.unpack_from("<II20sI", log, 0)
    assert (pcr, etype) == (0, 3)
    assert log[32:48] == b"Spec ID Event03\0"
    offset = 32 + size
    seen = []
    while offset < len(log):
        mr, etype, count, alg = struct.unpack_from("<IIIH", log, offset)
        digest = log[offset + 14 : offset + 62]
        (event_size,) = struct.unpack_from("<I", log, offset + 62)
        event = log[offset + 66 : offset + 66 + event_size]
        assert (etype, count, alg) == (4, 1, 0x000C)
        assert digest == hashlib.sha384(event).digest()
        seen.append(mr)
        offset += 66 + event_size
    assert seen == [1, 2, 3, 4]


def test_attester_from_name() -> None:
    fake = attest.attester_from_name("fake")
    assert isinstance(fake, attest.Attester)
    assert fake.simulated and fake.name == "fake"
    with pytest.raises(attest.AttesterError, match=r"unknown attester 'tdx'.*known: fake, tsm"):
        attest.attester_from_name("tdx")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1200))
def test_garbage_quotes_only_raise_binding_error(data: bytes) -> None:
    with contextlib.suppress(attest.BindingError):
        attest.check_binding(data, b"\x04" + bytes(96))
    attest.is_fake_quote(data)  # must not raise on any bytes


def test_tsm_attester_outside_a_td_fails_loudly(tmp_path: Path) -> None:
    tsm = attest.attester_from_name("tsm")
    assert not tsm.simulated
    absent = attest.TsmAttester(tmp_path / "no-configfs", tmp_path / "no-ccel")
    with pytest.raises(attest.AttesterError, match=r"configfs-tsm not available at .*no-configfs"):
        absent.quote(REPORT_DATA)
    with pytest.raises(attest.AttesterError, match=r"CC event log .*no-ccel"):
        absent.event_log()
