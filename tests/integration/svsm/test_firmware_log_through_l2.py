"""The L2 firmware's measured-boot log as a verifier reads it: tpm2-pytss -> host relay -> L1 ->
the L2 firmware's CRB driver -> the vTPM. The NV index holds the crypto-agile log, which replays to
exactly the PCR 0 and PCR 4 the TPM reports, and PCR 4 is what the image's payload gives. The
index is write-locked, and a power cycle through the development platform port leaves a fresh TPM
(no log, PCRs at zero) that still serves."""

from __future__ import annotations

import io
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_RC, TPM2_SU, TPMA_NV
from tpm2_pytss.types import TPML_PCR_SELECTION

from svsm.version import SVSM_VERSION
from tdxdefs.firmware_log import EVENT_LOG_NV_ATTRIBUTES, EVENT_LOG_NV_INDEX, PAYLOAD_PCR
from tdxsim.host.vmm import simulated_platform
from tests.support.served_product import ServedProduct, serving_product
from verifier.cli import main as verifier_cli
from verifier.firmware_log import verify_firmware_log
from verifier.reference import reference_values
from vtpm.protocol import MssimCommand

MAC_KEY, QUOTING = simulated_platform(b"firmware log through l2")
BANKS = ("sha256", "sha384")
NV_READ_CHUNK = 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProduct]:
    image = tmp_path_factory.mktemp("td") / "tdp.igvm"
    with serving_product(image, MAC_KEY, QUOTING) as td:
        yield td


def read_log(ectx: ESAPI) -> tuple[bytes, TPMA_NV]:
    handle = ectx.tr_from_tpmpublic(EVENT_LOG_NV_INDEX)
    public, _name = ectx.nv_read_public(handle)
    size = public.nvPublic.dataSize
    data = b""
    while len(data) < size:  # authorized by the index itself (TPMA_NV_AUTHREAD, empty auth)
        data += bytes(ectx.nv_read(handle, min(NV_READ_CHUNK, size - len(data)), len(data)))
    return data, TPMA_NV(public.nvPublic.attributes)


def read_pcrs(ectx: ESAPI, *indexes: int) -> dict[int, dict[str, bytes]]:
    values: dict[int, dict[str, bytes]] = {}
    for pcr in indexes:
        for bank in BANKS:
            _, _, digests = ectx.pcr_read(TPML_PCR_SELECTION.parse(f"{bank}:{pcr}"))
            values.setdefault(pcr, {})[bank] = bytes(digests[0])
    return values


def test_the_nv_log_replays_to_the_tpms_pcr0_and_pcr4(served: ServedProduct) -> None:
    reference = reference_values(served.image, l1_version=SVSM_VERSION)
    with ESAPI(served.tcti) as ectx:
        data, attributes = read_log(ectx)
        pcrs = read_pcrs(ectx, 0, PAYLOAD_PCR)
    assert attributes & EVENT_LOG_NV_ATTRIBUTES == EVENT_LOG_NV_ATTRIBUTES
    assert attributes & TPMA_NV.WRITTEN and attributes & TPMA_NV.WRITELOCKED
    log = verify_firmware_log(data, pcrs, reference)
    assert set(log.pcrs) == {0, PAYLOAD_PCR}
    assert pcrs[0] == log.pcrs[0] == reference.pcr0
    assert pcrs[PAYLOAD_PCR] == log.pcrs[PAYLOAD_PCR] == reference.pcr4
    assert reference.payload is not None and log.payload_event.data == reference.payload


def test_the_reference_command_prints_pcr4_from_the_image(served: ServedProduct) -> None:
    out = io.StringIO()
    assert verifier_cli(["reference", str(served.image)], out) == 0
    reference = reference_values(served.image)
    for bank in BANKS:
        assert f"PCR4 {bank:<12} {reference.pcr4[bank].hex()}" in out.getvalue()
    payload = reference.payload or b""
    assert f"note: PCR4: the {len(payload)}-byte payload of the L2 firmware" in out.getvalue()


def test_the_log_can_be_neither_rewritten_nor_undefined(served: ServedProduct) -> None:
    with ESAPI(served.tcti) as ectx:
        handle = ectx.tr_from_tpmpublic(EVENT_LOG_NV_INDEX)
        public, _name = ectx.nv_read_public(handle)
        assert public.nvPublic.attributes & TPMA_NV.WRITELOCKED
        before, _ = read_log(ectx)
        # the firmware disabled the platform hierarchy after writing: its empty authorization
        # reaches nothing, so the relay's clients (the host among them) cannot touch the index
        with pytest.raises(TSS2_Exception) as caught:
            ectx.nv_write(handle, b"forged", 0, auth_handle=ESYS_TR.RH_PLATFORM)
        assert caught.value.error == TPM2_RC.HIERARCHY
        with pytest.raises(TSS2_Exception) as caught:
            ectx.nv_undefine_space(handle, auth_handle=ESYS_TR.RH_PLATFORM)
        assert caught.value.error == TPM2_RC.HIERARCHY
        after, _ = read_log(ectx)
        assert after == before


def power_cycle(tcti: str) -> list[int]:
    port = int(tcti.rsplit("port=", 1)[1]) + 1  # the mssim platform port
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for signal in (MssimCommand.POWER_OFF, MssimCommand.POWER_ON, MssimCommand.NV_ON):
            sock.sendall(struct.pack(">I", signal))
            answers.append(struct.unpack(">I", sock.recv(4))[0])
    return answers


def test_after_a_power_cycle_the_tpm_is_fresh_and_still_served(tmp_path: Path) -> None:
    with serving_product(tmp_path / "tdp.igvm", MAC_KEY, QUOTING, dev_platform_port=True) as td:
        with ESAPI(td.tcti) as ectx:
            assert read_log(ectx)[0]
        assert power_cycle(td.tcti) == [0, 0, 0]
        with ESAPI(td.tcti) as ectx:
            ectx.startup(TPM2_SU.CLEAR)
            # the firmware measured at its boot only: no log is written again, and the PCRs it
            # explains start from zero, so a verifier finds neither
            with pytest.raises(TSS2_Exception):
                ectx.tr_from_tpmpublic(EVENT_LOG_NV_INDEX)
            pcrs = read_pcrs(ectx, 0, PAYLOAD_PCR)
            assert all(value == bytes(len(value)) for v in pcrs.values() for value in v.values())
            assert len(bytes(ectx.get_random(16))) == 16
