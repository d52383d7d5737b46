"""The L1 vTPM through the whole path: tpm2-pytss -> host relay socket -> ring page -> L1 -> the L2
firmware's mailbox -> its CRB driver -> L1's CRB -> libtpms, and back. What a user checks first:
PCR0 holds exactly the L1 version and the whole L2 firmware image, the EK certificates come out
of NV and chain to the CA whose TD quote verifies, and commands keep flowing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from tpm2_pytss import ESAPI
from tpm2_pytss.types import TPML_PCR_SELECTION

from orchestrator.l2image import L2_IMAGE
from svsm.version import SVSM_VERSION
from tdxsim.host.vmm import simulated_platform
from tests.support.served_product import ServedProduct, serving_product
from verifier.td_attestation import verify_td_attestation

MAC_KEY, QUOTING = simulated_platform(b"vtpm through l2")
EK_NV = {"rsa": 0x01C00002, "ecc": 0x01C0000A}
CA_NV_FIRST = 0x01C00100


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProduct]:
    image = tmp_path_factory.mktemp("td") / "tdp.igvm"
    with serving_product(image, MAC_KEY, QUOTING) as td:
        yield td


def read_nv(ectx: ESAPI, index: int) -> bytes:
    handle = ectx.tr_from_tpmpublic(index)
    public, _name = ectx.nv_read_public(handle)
    data = b""
    while len(data) < public.nvPublic.dataSize:
        chunk = min(1024, public.nvPublic.dataSize - len(data))
        data += bytes(ectx.nv_read(handle, chunk, len(data)))
    return data


def test_pcr0_is_the_l1_version_then_the_whole_l2_image(served: ServedProduct) -> None:
    version = SVSM_VERSION.encode() + b"\0"
    with ESAPI(served.tcti) as ectx:
        for bank, algorithm in (("sha256", "sha256"), ("sha384", "sha384")):
            _, _, values = ectx.pcr_read(TPML_PCR_SELECTION.parse(f"{algorithm}:0"))
            value = bytes(values[0])
            expected = bytes(hashlib.new(bank).digest_size)
            for data in (version, L2_IMAGE.read_bytes()):
                expected = hashlib.new(bank, expected + hashlib.new(bank, data).digest()).digest()
            assert value == expected, bank


def test_certificates_come_out_of_nv_and_chain_to_the_td_quote(served: ServedProduct) -> None:
    with ESAPI(served.tcti) as ectx:
        eks = {kind: read_nv(ectx, index) for kind, index in EK_NV.items()}
        ca = b""
        index = CA_NV_FIRST
        while True:  # the CA certificate is stored in chunks from 0x01C00100
            try:
                ca += read_nv(ectx, index)
            except Exception:
                break
            index += 1
    verdict = verify_td_attestation(
        ca, eks, trusted_root=QUOTING.trusted_root_der, expected_mrtd=served.mrtd
    )
    verdict.raise_for_failure()


def test_commands_flow_with_one_td_exit_each(served: ServedProduct) -> None:
    with ESAPI(served.tcti) as ectx:
        # The first command after boot may wait for the L2 to finish its self-test and reach
        # its relay loop; the TD exits of that boot work are counted with it.
        ectx.get_random(8)
        before = served.relay.stats.answered
        at_halt = served.relay.stats.at_halt
        seen = {bytes(ectx.get_random(16)) for _ in range(20)}
    assert len(seen) == 20
    assert served.relay.stats.answered - before >= 20
    # L1 answers into the ring and halts: the host takes the answer at that HLT, no notify
    assert served.relay.stats.at_halt - at_halt == served.relay.stats.answered - before
    assert list(served.relay.stats.exits_per_command)[-20:] == [1] * 20
