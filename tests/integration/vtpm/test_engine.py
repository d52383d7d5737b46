"""The libtpms engine: one TPM per process, NV only in memory, lifecycle, malformed commands."""

from __future__ import annotations

import hashlib
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import TPM2_ALG, TPM2_RC, TPM2_SU, TPMA_NV
from tpm2_pytss.types import TPM2B_AUTH, TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

from tests.support.engine_tcti import EngineTcti
from vtpm import wire
from vtpm.engine import TPM_MAX_COMMAND_SIZE, EngineBusyError, TpmEngine, response_code
from vtpm.wire import (
    TPM_RC_BAD_TAG,
    TPM_RC_COMMAND_SIZE,
    TPM_RC_FAILURE,
    TPM_RC_INITIALIZE,
    TPM_RC_SUCCESS,
)

NV_INDEX = 0x01500010
PCR_LOCALITY_1_TO_3 = 20  # PC Client: extendable from localities 1, 2 and 3 only
GET_RANDOM_32 = struct.pack(">HIIH", 0x8001, 12, 0x17B, 32)


def _define_nv(esapi: ESAPI, data: bytes) -> None:
    public = TPM2B_NV_PUBLIC(
        nvPublic=TPMS_NV_PUBLIC(
            nvIndex=NV_INDEX,
            nameAlg=TPM2_ALG.SHA256,
            dataSize=len(data),
            attributes=TPMA_NV.OWNERWRITE
            | TPMA_NV.OWNERREAD
            | TPMA_NV.AUTHREAD
            | TPMA_NV.AUTHWRITE,
        )
    )
    handle = esapi.nv_define_space(TPM2B_AUTH(b""), public)
    esapi.nv_write(handle, data, 0)


def _read_nv(esapi: ESAPI, size: int) -> bytes:
    handle = esapi.tr_from_tpmpublic(NV_INDEX)
    return bytes(esapi.nv_read(handle, size, 0))


def test_get_random_through_tpm2_pytss(engine: TpmEngine) -> None:
    esapi = ESAPI(EngineTcti(engine))
    a, b = bytes(esapi.get_random(32)), bytes(esapi.get_random(32))
    assert len(a) == len(b) == 32 and a != b


def test_second_engine_refused_while_one_is_open(engine: TpmEngine) -> None:
    with pytest.raises(EngineBusyError, match="already open"):
        TpmEngine()


def test_nv_survives_reset_but_not_wipe(engine: TpmEngine) -> None:
    _define_nv(ESAPI(EngineTcti(engine)), b"kept across power cycles")
    engine.reset()
    assert engine.powered
    assert response_code(engine.process(GET_RANDOM_32)) == TPM_RC_INITIALIZE
    engine.startup_clear()
    assert _read_nv(ESAPI(EngineTcti(engine)), 24) == b"kept across power cycles"

    engine.wipe()
    assert not engine.powered and engine.nv_blob_names() == []
    engine.power_on()
    engine.startup_clear()
    with pytest.raises(TSS2_Exception) as err:
        ESAPI(EngineTcti(engine)).tr_from_tpmpublic(NV_INDEX)
    assert err.value.rc & 0xFF == TPM2_RC.HANDLE & 0xFF


def test_a_new_engine_after_close_is_a_fresh_tpm() -> None:
    with TpmEngine() as first:
        first.power_on()
        first.startup_clear()
        _define_nv(ESAPI(EngineTcti(first)), b"first")
    assert first.closed
    with TpmEngine() as second:
        second.power_on()
        assert second.startup_clear() == TPM_RC_SUCCESS
        with pytest.raises(TSS2_Exception):
            ESAPI(EngineTcti(second)).tr_from_tpmpublic(NV_INDEX)


def test_nv_lives_only_in_memory_and_close_overwrites_it() -> None:
    eng = TpmEngine()
    eng.power_on()
    eng.startup_clear()
    _define_nv(ESAPI(EngineTcti(eng)), b"secret-ish")
    assert "permall" in eng.nv_blob_names()
    blobs = list(eng._nv.blobs.values())  # the very buffers libtpms handed over
    assert any(any(blob) for blob in blobs)
    eng.close()
    assert blobs and all(not any(blob) for blob in blobs)
    assert eng.nv_blob_names() == []


def test_power_off_refuses_commands_without_reaching_libtpms(engine: TpmEngine) -> None:
    engine.power_off()
    assert not engine.powered
    assert response_code(engine.process(GET_RANDOM_32)) == TPM_RC_FAILURE
    engine.power_on()
    engine.startup_clear()
    assert response_code(engine.process(GET_RANDOM_32)) == TPM_RC_SUCCESS


@pytest.mark.parametrize(
    ("command", "rc"),
    [
        (b"", TPM_RC_COMMAND_SIZE),
        (GET_RANDOM_32[:9], TPM_RC_COMMAND_SIZE),
        (b"\x12\x34" + GET_RANDOM_32[2:], TPM_RC_BAD_TAG),
        (GET_RANDOM_32 + b"\x00", TPM_RC_COMMAND_SIZE),  # size field says 12, 13 bytes sent
        (GET_RANDOM_32[:11], TPM_RC_COMMAND_SIZE),
        (
            struct.pack(">HII", 0x8001, TPM_MAX_COMMAND_SIZE + 1, 0x17B)
            + bytes(TPM_MAX_COMMAND_SIZE + 1 - 10),
            TPM_RC_COMMAND_SIZE,
        ),
    ],
    ids=["empty", "short-header", "bad-tag", "size-mismatch", "truncated", "over-4096"],
)
def test_malformed_command_gets_error_response(engine: TpmEngine, command: bytes, rc: int) -> None:
    response = engine.process(command)
    assert len(response) == 10 and response_code(response) == rc
    # The TPM is unharmed.
    assert response_code(engine.process(GET_RANDOM_32)) == TPM_RC_SUCCESS


def test_startup_clear_twice_reports_initialize(engine: TpmEngine) -> None:
    assert engine.startup_clear() == TPM_RC_INITIALIZE
    assert ESAPI(EngineTcti(engine)).get_random(8)


def test_startup_after_reset_through_esapi(engine: TpmEngine) -> None:
    engine.reset()
    esapi = ESAPI(EngineTcti(engine))
    esapi.startup(TPM2_SU.CLEAR)
    assert len(bytes(esapi.get_random(16))) == 16


def test_concurrent_process_calls_are_serialized(engine: TpmEngine) -> None:
    results: list[bytes] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(200):
            response = engine.process(GET_RANDOM_32)
            with lock:
                results.append(response)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 800
    assert all(len(r) == 44 and response_code(r) == TPM_RC_SUCCESS for r in results)
    assert len({r[12:] for r in results}) == 800  # every caller got its own random bytes


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=64), tag=st.sampled_from([0x8001, 0x8002, 0x0000]))
def test_arbitrary_bytes_never_break_the_engine(engine: TpmEngine, data: bytes, tag: int) -> None:
    for command in (data, struct.pack(">HI", tag, len(data) + 6) + data):
        response = engine.process(command)
        assert len(response) >= 10
        assert struct.unpack(">I", response[2:6])[0] == len(response)
    engine.startup_clear()  # a random Shutdown/Startup must not leave it unusable
    assert response_code(engine.process(GET_RANDOM_32)) in (TPM_RC_SUCCESS, TPM_RC_INITIALIZE)


class _AtLocality:
    """A `vtpm.wire.Transport` that runs every command at one locality."""

    def __init__(self, engine: TpmEngine, locality: int) -> None:
        self.engine = engine
        self.locality = locality

    def process(self, command: bytes) -> bytes:
        return self.engine.process(command, self.locality)


def test_each_command_runs_at_its_own_locality(engine: TpmEngine) -> None:
    """PC Client PCR 20 extends from localities 1-3 only. Alternating localities command by
    command shows each one in force: locality 0 runs without libtpms' locality callback, the
    others with it, and the switch between the two must never leak a locality."""
    digest = {wire.TPM_ALG_SHA256: hashlib.sha256(b"locality").digest()}
    for locality in (0, 3, 0, 0, 1, 2, 0, 4, 3):
        tpm = wire.TpmClient(_AtLocality(engine, locality))
        if 1 <= locality <= 3:
            wire.pcr_extend(tpm, PCR_LOCALITY_1_TO_3, digest)
        else:
            with pytest.raises(wire.TpmError) as refused:
                wire.pcr_extend(tpm, PCR_LOCALITY_1_TO_3, digest)
            assert wire.rc_base(refused.value.rc) == TPM2_RC.LOCALITY
