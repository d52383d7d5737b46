"""CC event logs: a real CCEL log replays to its quote; hostile lengths, counts and algorithms are
named errors with their offset; one changed event breaks the replay of exactly its RTMR."""

from __future__ import annotations

import hashlib
import struct

import pytest

from svsm import eventlog as svsm_eventlog
from tests.support.public_data import require
from verifier import eventlog
from verifier.cli import quote_rtmrs
from verifier.eventlog import EventLogError, EventType, ReplayError, RtmrMismatchError, TpmAlgorithm
from vtpm.attest import cc_event, cc_event_log_header, cc_separator_event


@pytest.fixture(scope="module")
def real_log() -> bytes:
    return (require("ccel", "ccel_data.bin") / "ccel_data.bin").read_bytes()


@pytest.fixture(scope="module")
def real_quote() -> bytes:
    return (require("ccel", "td_quote_v4.dat") / "td_quote_v4.dat").read_bytes()


# Facts of the public sample (see tests/data/ccel/PROVENANCE.md), read with a hex viewer.
REAL_EVENTS, REAL_END = 20, 2120
REAL_RECORD_OFFSETS = {0: 65, 11: 1122, 16: 1732}  # record number -> offset; MR index 1, 2, 3

SHA256, SHA384 = 0x000B, 0x000C


def hand_log(algorithms: list[tuple[int, int]], records: list[bytes], header_pcr: int = 0) -> bytes:
    """A crypto-agile log written from the TCG PC Client Platform Firmware Profile by hand."""
    spec = b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algorithms))
    spec += b"".join(struct.pack("<HH", alg, size) for alg, size in algorithms) + b"\0"
    return struct.pack("<II20sI", header_pcr, 3, bytes(20), len(spec)) + spec + b"".join(records)


def hand_record(
    mr_index: int, event_type: int, digests: list[tuple[int, bytes]], data: bytes
) -> bytes:
    body = struct.pack("<III", mr_index, event_type, len(digests))
    body += b"".join(struct.pack("<H", alg) + digest for alg, digest in digests)
    return body + struct.pack("<I", len(data)) + data


def sha384_log(*records: bytes) -> bytes:
    return hand_log([(SHA384, 48)], list(records))


def record(mr_index: int, data: bytes, event_type: int = 0x0D) -> bytes:
    return hand_record(mr_index, event_type, [(SHA384, hashlib.sha384(data).digest())], data)


def test_reference_numbers_of_the_tcg_specifications() -> None:
    assert (EventType.EV_NO_ACTION, EventType.EV_SEPARATOR) == (3, 4)
    assert EventType.EV_EFI_ACTION == 0x80000007
    assert (TpmAlgorithm.SHA256, TpmAlgorithm.SHA384) == (0x0B, 0x0C)
    assert eventlog.MR_INDEX_OF_RTMR0 == 1
    assert eventlog.TCG_PCR_EVENT_HEADER.size == 32
    assert eventlog.SPEC_ID_EVENT.size == 24 + 4


def test_the_public_ccel_sample_replays_to_its_quote(real_log: bytes, real_quote: bytes) -> None:
    log = eventlog.parse(real_log)
    assert (len(log.events), log.end, log.padding) == (
        REAL_EVENTS,
        REAL_END,
        len(real_log) - REAL_END,
    )
    assert log.spec.algorithms == {SHA384: 48}
    assert {e.number: e.offset for e in log.events if e.number in REAL_RECORD_OFFSETS} == (
        REAL_RECORD_OFFSETS
    )
    assert {e.mr_index for e in log.events} == {1, 2, 3}
    rtmrs = quote_rtmrs(real_quote)
    assert log.replay() == rtmrs
    assert rtmrs[3] == bytes(48) and all(value != bytes(48) for value in rtmrs[:3])
    eventlog.check_replay(log.events, rtmrs)


@pytest.mark.parametrize(("number", "rtmr"), [(0, 0), (11, 1), (16, 2)])
def test_one_changed_event_breaks_the_replay_of_its_rtmr_only(
    number: int, rtmr: int, real_log: bytes, real_quote: bytes
) -> None:
    changed = bytearray(real_log)
    changed[REAL_RECORD_OFFSETS[number] + 12 + 2 + 7] ^= 0x01  # head, hashAlg, a digest byte
    log = eventlog.parse(bytes(changed))
    with pytest.raises(RtmrMismatchError) as info:
        eventlog.check_replay(log.events, quote_rtmrs(real_quote))
    assert info.value.rtmrs == (rtmr,)
    assert f"RTMR{rtmr}: replayed " in str(info.value)


def test_logs_the_vtpm_encoder_writes_parse_back_and_replay_as_the_svsm_does() -> None:
    events = [
        cc_event(0, EventType.EV_PLATFORM_CONFIG_FLAGS, hashlib.sha384(b"p").digest(), b"p\0"),
        cc_event(2, EventType.EV_EFI_ACTION, hashlib.sha384(b"two").digest(), b""),
        *(cc_separator_event(r) for r in range(4)),
    ]
    raw = cc_event_log_header() + b"".join(events)
    log = eventlog.parse(raw)
    assert [(e.rtmr, e.event_type) for e in log.events] == [
        (0, EventType.EV_PLATFORM_CONFIG_FLAGS),
        (2, EventType.EV_EFI_ACTION),
        (0, EventType.EV_SEPARATOR),
        (1, EventType.EV_SEPARATOR),
        (2, EventType.EV_SEPARATOR),
        (3, EventType.EV_SEPARATOR),
    ]
    assert log.events[0].data == b"p\0" and log.padding == 0 and log.end == len(raw)
    assert eventlog.same_record(log.events[3], eventlog.separator(1))
    assert log.replay() == svsm_eventlog.replay(svsm_eventlog.parse(raw))
    rtmr2 = bytes(48)
    for digest in (hashlib.sha384(b"two").digest(), hashlib.sha384(bytes(4)).digest()):
        rtmr2 = hashlib.sha384(rtmr2 + digest).digest()
    assert log.replay()[2] == rtmr2


def test_every_cut_inside_a_record_is_an_error_naming_an_offset_within_the_log() -> None:
    raw = sha384_log(record(1, b"first"), record(4, b"second event"))
    first_end = len(sha384_log(record(1, b"first")))
    boundaries = {len(sha384_log()), first_end, len(raw)}
    for cut in range(1, len(raw)):
        try:
            log = eventlog.parse(raw[:cut])
        except EventLogError as exc:
            assert cut not in boundaries
            assert 0 <= exc.offset <= cut and f"offset {exc.offset}: " in str(exc)
        else:
            assert cut in boundaries and log.end == cut


FIRST = 65  # offset of the first record after a SHA-384-only Spec ID header


@pytest.mark.parametrize(
    ("at", "value", "field", "offset", "reason"),
    [
        (
            FIRST + 8,
            0xFFFFFFFF,
            "TPML_DIGEST_VALUES.count",
            FIRST + 8,
            "4294967295 digests, the Spec ID event declares 1 algorithms",
        ),
        (
            FIRST + 12 + 2 + 48,
            0xFFFFFFF0,
            "event data",
            FIRST + 12 + 2 + 48 + 4,
            "needs 4294967280 bytes",
        ),
        (28, 0x7FFFFFFF, "Spec ID event", 32, "needs 2147483647 bytes"),
        (32 + 24, 1000, "Spec ID numberOfAlgorithms", 32 + 24, "1000 algorithms do not fit"),
    ],
)
def test_oversized_counts_and_lengths_are_refused_at_their_offset(
    at: int, value: int, field: str, offset: int, reason: str
) -> None:
    raw = bytearray(sha384_log(record(1, b"event")))
    assert len(sha384_log()) == FIRST
    raw[at : at + 4] = struct.pack("<I", value)
    with pytest.raises(EventLogError) as info:
        eventlog.parse(bytes(raw))
    assert (info.value.field, info.value.offset) == (field, offset)
    assert reason in str(info.value)


def test_a_digest_of_an_undeclared_algorithm_is_refused_at_its_offset() -> None:
    raw = bytearray(sha384_log(record(1, b"event")))
    raw[FIRST + 12 : FIRST + 14] = struct.pack("<H", 0x0013)
    with pytest.raises(EventLogError) as info:
        eventlog.parse(bytes(raw))
    assert info.value.offset == FIRST + 12
    assert "algorithm 0x0013 is not declared in the Spec ID event (0x000c)" in str(info.value)


def test_a_log_without_sha384_parses_but_does_not_replay() -> None:
    digest = hashlib.sha256(b"e").digest()
    raw = hand_log([(SHA256, 32)], [hand_record(2, 0x0D, [(SHA256, digest)], b"e")])
    log = eventlog.parse(raw)
    assert log.events[0].digests == {SHA256: digest}
    with pytest.raises(ReplayError, match=r"event 0 at offset \d+ \(RTMR1\): no SHA-384 digest"):
        log.replay()


def test_a_multi_bank_log_replays_with_its_sha384_digests() -> None:
    digests = [(SHA256, hashlib.sha256(b"e").digest()), (SHA384, hashlib.sha384(b"e").digest())]
    raw = hand_log([(SHA256, 32), (SHA384, 48)], [hand_record(1, 0x0D, digests, b"e")])
    expected = hashlib.sha384(bytes(48) + hashlib.sha384(b"e").digest()).digest()
    assert eventlog.parse(raw).replay() == (expected, bytes(48), bytes(48), bytes(48))


def test_no_action_records_extend_nothing_and_mr_index_0_extends_no_rtmr() -> None:
    info = hand_record(0, EventType.EV_NO_ACTION, [(SHA384, bytes(48))], b"StartupLocality\0\3")
    log = eventlog.parse(sha384_log(info, record(1, b"x")))
    assert [e.extends for e in log.events] == [False, True]
    assert log.replay()[0] == hashlib.sha384(bytes(48) + hashlib.sha384(b"x").digest()).digest()
    with pytest.raises(ReplayError, match="MR index 0 is not an RTMR"):
        eventlog.parse(sha384_log(record(0, b"x"))).replay()
    with pytest.raises(ReplayError, match="MR index 5 is not an RTMR"):
        eventlog.parse(sha384_log(record(5, b"x"))).replay()


@pytest.mark.parametrize("fill", [b"\xff", b"\x00"])
def test_log_area_fill_ends_the_log_and_stray_bytes_after_it_do_not(fill: bytes) -> None:
    raw = sha384_log(record(1, b"x"))
    log = eventlog.parse(raw + fill * 100)
    assert (len(log.events), log.end, log.padding) == (1, len(raw), 100)
    with pytest.raises(EventLogError) as info:
        eventlog.parse(raw + fill * 8 + b"\x01" + fill * 8)
    assert info.value.offset >= len(raw)


def test_a_log_that_does_not_open_with_the_spec_id_event_is_refused() -> None:
    raw = bytearray(sha384_log())
    raw[4:8] = struct.pack("<I", 0x0D)
    with pytest.raises(EventLogError, match=r"offset 4: TCG_PCR_EVENT\.eventType: 0xd"):
        eventlog.parse(bytes(raw))
    raw = bytearray(sha384_log())
    raw[32:36] = b"Spec"[::-1]
    with pytest.raises(EventLogError, match="offset 32: Spec ID signature"):
        eventlog.parse(bytes(raw))
    with pytest.raises(EventLogError, match="offset 0: TCG_PCR_EVENT header: needs 32 bytes"):
        eventlog.parse(b"")
