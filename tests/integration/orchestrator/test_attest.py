"""`invoke attest` against `invoke run --serve`: a sound TD passes every step, and each forgery a
relying party must catch fails at its own step, naming the expected and the actual values.

The evidence is collected once from a TD served by `orchestrator.serve.serve_image` (the code of
`invoke run --serve`, here in a thread); most forgeries swap a piece of it for the same piece taken
from another vTPM or another TD and re-verify, which is fast and deterministic. The extra PCR extend
goes through the L2 path for real, on a TD of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA

from orchestrator.attest import collect, reference_for, serving
from orchestrator.boot import ROOT, build_product
from orchestrator.l2image import L2_IMAGE, write_l2_image
from tdxdefs.eventlog import (
    DigestAlgorithm,
    EventSize,
    EventType,
    TcgPcrEvent2Prefix,
    TpmAlgorithm,
)
from tdxdefs.firmware_log import EVENT_LOG_NV_INDEX, PAYLOAD_PCR
from tdxdefs.tpm import TpmaObject
from tdxsim.attestation.pck import WELL_KNOWN_SEED
from tdxsim.attestation.quoting import SimulatedAttestation
from tdxsim.module.attestation_interface import TdInfo
from tests.support.vtpm_ca import ca_certificate
from tests.support.vtpm_process import launch_vtpm
from verifier.reference import ReferenceValues
from verifier.td_attestation import AttestationReport
from verifier.tpm_attestation import Challenge, TpmEvidence, verify_tpm_attestation
from verifier.trust_anchors import simulated_root
from vtpm.attest import cc_event_log_separators, report_data_for
from vtpm.certs import sec1_point

ROOT_LABEL = "tdxsim SIMULATED root"
TD_HALF = [
    "quote chain",
    "REPORTDATA binding",
    "MRTD",
    "RTMR replay",
    "EK certificate (rsa)",
    "EK certificate (ecc)",
]
TPM_HALF = [
    "RTMRs against the reference",
    "EK public key (ecc)",
    "AK attributes",
    "credential activation (AK and EK in one TPM)",
    "TPM quote signature",
    "TPM quote structure",
    "quote nonce",
    "quoted PCRs",
    "firmware event log",
    "PCR0 against the reference",
]


@dataclass
class ServedTd:
    image: Path
    tcti: str
    port: int


def _serve(image: Path, dev_platform_port: bool = False) -> Iterator[ServedTd]:
    """`invoke run --serve`'s code in a thread until the generator is closed."""
    with serving(image, dev_platform_port=dev_platform_port) as tcti:
        match = re.search(r"port=(\d+)", tcti)
        assert match is not None
        yield ServedTd(image, tcti, int(match.group(1)))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("attest") / "tdp.igvm"
    build_product(path, out=lambda _line: None)
    return path


@pytest.fixture(scope="module")
def served(image: Path) -> Iterator[ServedTd]:
    yield from _serve(image)


@pytest.fixture(scope="module")
def reference(image: Path) -> ReferenceValues:
    return reference_for(image)


@dataclass(frozen=True)
class Collected:
    evidence: TpmEvidence
    challenge: Challenge


@pytest.fixture(scope="module")
def collected(served: ServedTd) -> Collected:
    challenge = Challenge.fresh()
    return Collected(collect(served.tcti, challenge), challenge)


@pytest.fixture(scope="module")
def other_vtpm() -> TpmEvidence:
    """The evidence of another vTPM (`vtpm serve`, its own EKs and CA, the fake attester)."""
    server = launch_vtpm()
    try:
        return collect(server.mssim, Challenge.fresh())
    finally:
        server.stop()


def verify(
    evidence: TpmEvidence, reference: ReferenceValues, challenge: Challenge
) -> AttestationReport:
    return verify_tpm_attestation(
        evidence,
        reference,
        challenge=challenge,
        trusted_root=simulated_root(),
        root_label=ROOT_LABEL,
    )


def failed_at(report: AttestationReport, name: str) -> tuple[str, str]:
    """Assert the report fails at step `name` after every earlier step passed; its values."""
    assert not report.ok
    failed = report.failed
    assert failed is not None
    assert failed.name == name, [(s.name, s.ok, s.detail) for s in report.steps]
    assert report.steps[-1] is failed
    assert all(step.ok for step in report.steps[:-1])
    return failed.expected, failed.actual


def test_a_served_td_passes_every_step_in_order(
    collected: Collected, reference: ReferenceValues
) -> None:
    report = verify(collected.evidence, reference, collected.challenge)
    assert report.ok, report.failed
    assert [step.name for step in report.steps] == TD_HALF + TPM_HALF
    pcr0 = {bank: values[0] for bank, values in collected.evidence.pcrs.items()}
    assert pcr0 == reference.pcr0
    assert set(collected.evidence.pcrs["sha256"]) >= {0, 4}


def test_invoke_attest_passes_against_the_served_td_and_says_simulated(
    served: ServedTd,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "attest", "--port", str(served.port),
         "--image", str(served.image), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert "SIMULATED" in report["root"]
    assert [s["name"] for s in report["steps"]] == TD_HALF + TPM_HALF
    text = subprocess.run(
        [sys.executable, "-m", "invoke", "attest", "--port", str(served.port),
         "--image", str(served.image)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert text.returncode == 0, text.stdout + text.stderr
    assert "ok  PCR0 against the reference" in text.stdout
    assert "SIMULATED" in text.stdout


def test_a_replayed_quote_fails_at_the_nonce_naming_both(
    collected: Collected, reference: ReferenceValues
) -> None:
    fresh = Challenge(secrets.token_bytes(32), collected.challenge.secret)
    expected, actual = failed_at(verify(collected.evidence, reference, fresh), "quote nonce")
    assert expected == fresh.nonce.hex()
    assert actual == collected.challenge.nonce.hex()


def test_a_credential_activated_for_another_challenge_fails_at_the_credential_step(
    collected: Collected, reference: ReferenceValues
) -> None:
    other = Challenge(collected.challenge.nonce, secrets.token_bytes(32))
    expected, actual = failed_at(
        verify(collected.evidence, reference, other), "credential activation (AK and EK in one TPM)"
    )
    assert other.secret.hex() in expected
    assert collected.evidence.activated_secret.hex() in actual


def test_an_ek_certificate_of_another_vtpm_fails_at_the_ek_step(
    collected: Collected, reference: ReferenceValues, other_vtpm: TpmEvidence
) -> None:
    stray = collected.evidence.replace(
        ek_certificates={**collected.evidence.ek_certificates,
                         "ecc": other_vtpm.ek_certificates["ecc"]}
    )  # fmt: skip
    expected, actual = failed_at(
        verify(stray, reference, collected.challenge), "EK certificate (ecc)"
    )
    assert "issued by" in expected
    assert "does not verify" in actual


def test_an_ek_of_another_tpm_fails_at_the_ek_public_key_step(
    collected: Collected, reference: ReferenceValues, other_vtpm: TpmEvidence
) -> None:
    stray = collected.evidence.replace(ek_public=other_vtpm.ek_public)
    expected, actual = failed_at(
        verify(stray, reference, collected.challenge), "EK public key (ecc)"
    )
    assert expected != actual


def test_an_ak_the_ek_did_not_vouch_for_fails_at_the_credential_step(
    collected: Collected, reference: ReferenceValues, other_vtpm: TpmEvidence
) -> None:
    stray = collected.evidence.replace(
        ak_public=other_vtpm.ak_public, attest=other_vtpm.attest, signature=other_vtpm.signature
    )
    failed_at(
        verify(stray, reference, collected.challenge),
        "credential activation (AK and EK in one TPM)",
    )


def test_a_quote_signed_by_another_ak_fails_at_the_signature_step(
    collected: Collected, reference: ReferenceValues, other_vtpm: TpmEvidence
) -> None:
    stray = collected.evidence.replace(signature=other_vtpm.signature)
    failed_at(verify(stray, reference, collected.challenge), "TPM quote signature")


def test_pcr_values_other_than_the_quoted_ones_fail_at_the_quoted_pcrs_step(
    collected: Collected, reference: ReferenceValues
) -> None:
    pcrs = {bank: dict(values) for bank, values in collected.evidence.pcrs.items()}
    pcrs["sha256"][4] = hashlib.sha256(b"not what the quote covers").digest()
    stray = collected.evidence.replace(pcrs=pcrs)
    failed_at(verify(stray, reference, collected.challenge), "quoted PCRs")


def _ca_of_another_td(mrtd: bytes, vm_index: int | None = None) -> bytes:
    """A vTPM CA certificate whose TD quote (under the same SIMULATED root) is another TD's
    (with `vm_index`: a v5 quote with the extended body naming that VM)."""
    sim = SimulatedAttestation.create(WELL_KNOWN_SEED)
    key = ec.generate_private_key(ec.SECP384R1())
    td = TdInfo(
        attributes=0x10000000, xfam=0xE7, mrtd=mrtd, mrconfigid=bytes(48), mrowner=bytes(48),
        mrownerconfig=bytes(48), rtmr=(bytes(48),) * 4, num_l2_vms=1, num_vcpus=1,
    )  # fmt: skip
    report = sim.reports.tdreport(td, report_data_for(sec1_point(key.public_key())))
    quote = (
        sim.quoting.quote(report)
        if vm_index is None
        else sim.quoting.quote(report, version=5, vm_index=vm_index)
    )
    cert = ca_certificate(key, quote, cc_event_log_separators(), "vTPM CA of another TD")
    return cert.public_bytes(serialization.Encoding.DER)


def test_a_ca_quote_of_another_td_fails_at_the_mrtd_step(
    collected: Collected, reference: ReferenceValues
) -> None:
    other_mrtd = hashlib.sha384(b"another TD").digest()
    stray = collected.evidence.replace(ca_certificate=_ca_of_another_td(other_mrtd))
    expected, actual = failed_at(verify(stray, reference, collected.challenge), "MRTD")
    assert expected == reference.mrtd.hex()
    assert actual == other_mrtd.hex()


def test_a_ca_quote_from_a_fake_attester_fails_at_the_quote_chain(
    collected: Collected, reference: ReferenceValues, other_vtpm: TpmEvidence
) -> None:
    stray = collected.evidence.replace(ca_certificate=other_vtpm.ca_certificate)
    failed_at(verify(stray, reference, collected.challenge), "quote chain")


@pytest.fixture(scope="module")
def other_firmware_reference(
    tmp_path_factory: pytest.TempPathFactory, image: Path
) -> ReferenceValues:
    """The reference values of an image that differs from `image` only in its L2 firmware."""
    work = tmp_path_factory.mktemp("other-firmware")
    firmware = bytearray(L2_IMAGE.read_bytes())
    firmware[-1] ^= 0xFF
    (work / "firmware.bin").write_bytes(bytes(firmware))
    write_l2_image(work / "firmware.bin", work / "l2.img", work / "l2-descriptor.bin")
    recipe = (ROOT / "orchestrator" / "recipes" / "tdp.yaml").read_text()
    recipe = recipe.replace("../../out/l1.img", str(ROOT / "out" / "l1.img"))
    recipe = recipe.replace("../../out/l2-descriptor.bin", str(work / "l2-descriptor.bin"))
    recipe = recipe.replace("../../out/l2.img", str(work / "l2.img"))
    (work / "tdp.yaml").write_text(recipe)
    from igvm.build import build as build_igvm

    build_igvm(work / "tdp.yaml", work / "other.igvm")
    return reference_for(work / "other.igvm")


def test_another_l2_firmware_fails_at_the_mrtd_step(
    collected: Collected, reference: ReferenceValues, other_firmware_reference: ReferenceValues
) -> None:
    assert other_firmware_reference.mrtd != reference.mrtd
    expected, actual = failed_at(
        verify(collected.evidence, other_firmware_reference, collected.challenge), "MRTD"
    )
    assert expected == other_firmware_reference.mrtd.hex()
    assert actual == reference.mrtd.hex()


def test_another_l2_firmware_in_pcr0_alone_fails_at_the_log_or_the_pcr0_step(
    collected: Collected, reference: ReferenceValues, other_firmware_reference: ReferenceValues
) -> None:
    only_pcr0 = dataclasses.replace(reference, pcr0=other_firmware_reference.pcr0)
    _, actual = failed_at(
        verify(collected.evidence, only_pcr0, collected.challenge), "firmware event log"
    )
    assert f"the reference {other_firmware_reference.pcr0['sha256'].hex()}" in actual
    # an image that keeps no log: PCR0 itself is compared with the reference
    no_log = dataclasses.replace(only_pcr0, pcr4={}, payload=None)
    expected, actual = failed_at(
        verify(collected.evidence.replace(firmware_log=None), no_log, collected.challenge),
        "PCR0 against the reference",
    )
    assert other_firmware_reference.pcr0["sha256"].hex() in expected
    assert reference.pcr0["sha256"].hex() in actual


def test_an_extra_extend_through_the_l2_path_fails_at_the_firmware_log_naming_pcr0(
    image: Path, reference: ReferenceValues, served: ServedTd
) -> None:
    # a TD of its own: the extend cannot be undone and the other tests need a sound TD
    del served  # served first, so the two TDs never boot at once on two cores
    for tampered in _serve(image):
        digest = hashlib.sha256(b"an extra measurement").digest()
        with ESAPI(tampered.tcti) as ectx:
            ectx.pcr_extend(
                ESYS_TR.PCR0,
                TPML_DIGEST_VALUES(
                    [TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))]
                ),
            )
        challenge = Challenge.fresh()
        evidence = collect(tampered.tcti, challenge)
        _, actual = failed_at(verify(evidence, reference, challenge), "firmware event log")
        after = hashlib.sha256(reference.pcr0["sha256"] + digest).digest()
        assert f"PCR 0 sha256: replayed {reference.pcr0['sha256'].hex()}" in actual
        assert f"the TPM {after.hex()}" in actual
        assert "PCR 0 sha384" not in actual  # the SHA-384 bank was not extended
        # without the log (a user's image keeps none), PCR0 against the reference catches it
        no_payload = dataclasses.replace(reference, pcr4={}, payload=None)
        expected, actual = failed_at(
            verify(evidence.replace(firmware_log=None), no_payload, challenge),
            "PCR0 against the reference",
        )
        assert f"sha256 PCR0={reference.pcr0['sha256'].hex()}" in expected
        assert f"sha256 PCR0={after.hex()}" in actual


def _record(pcr: int, kind: int, data: bytes) -> bytes:
    """One TCG_PCR_EVENT2 record with SHA-256 and SHA-384 digests of `data`."""
    record = TcgPcrEvent2Prefix(pcr, kind, 2).pack()
    for alg, bank in ((TpmAlgorithm.SHA256, "sha256"), (TpmAlgorithm.SHA384, "sha384")):
        record += DigestAlgorithm(alg).pack() + hashlib.new(bank, data).digest()
    return record + EventSize(len(data)).pack() + data


def _served_log(collected: Collected) -> bytes:
    log = collected.evidence.firmware_log
    assert log is not None, f"the served L2 firmware wrote no log in NV {EVENT_LOG_NV_INDEX:#x}"
    return log


def test_the_firmware_log_read_through_l2_replays_to_the_quoted_pcrs(
    collected: Collected, reference: ReferenceValues
) -> None:
    _served_log(collected)
    report = verify(collected.evidence, reference, collected.challenge)
    assert report.ok, report.failed
    step = next(s for s in report.steps if s.name == "firmware event log")
    assert f"3 events replay to the quoted PCRs [0, {PAYLOAD_PCR}]" in step.detail


def test_a_firmware_log_with_an_event_the_pcrs_lack_fails_naming_the_pcr(
    collected: Collected, reference: ReferenceValues
) -> None:
    extra = _record(PAYLOAD_PCR, EventType.EV_IPL, b"a payload the TPM never saw")
    with_log = collected.evidence.replace(firmware_log=_served_log(collected) + extra)
    _, actual = failed_at(verify(with_log, reference, collected.challenge), "firmware event log")
    assert f"PCR {PAYLOAD_PCR} sha256: replayed" in actual
    assert "PCR 0" not in actual


def test_a_removed_or_truncated_firmware_log_fails_at_its_step(
    collected: Collected, reference: ReferenceValues
) -> None:
    truncated = collected.evidence.replace(firmware_log=_served_log(collected)[:-3])
    _, actual = failed_at(verify(truncated, reference, collected.challenge), "firmware event log")
    assert "offset" in actual
    removed = collected.evidence.replace(firmware_log=None)
    expected, actual = failed_at(
        verify(removed, reference, collected.challenge), "firmware event log"
    )
    assert f"{EVENT_LOG_NV_INDEX:#010x}" in expected and actual == "no such index"


def test_other_launch_options_than_the_served_ones_fail_at_the_rtmr_reference(
    collected: Collected, image: Path
) -> None:
    other = reference_for(image, dev_platform_port=True)
    expected, actual = failed_at(
        verify(collected.evidence, other, collected.challenge), "RTMRs against the reference"
    )
    assert other.rtmrs_at_quote is not None
    assert expected.startswith(f"RTMR0={other.rtmrs_at_quote[0].hex()}, RTMR3=")
    assert actual.startswith("RTMR0=") and "RTMR3=" + "00" * 48 in actual


def test_a_td_served_with_the_development_platform_port_attests_and_says_so(
    image: Path, served: ServedTd
) -> None:
    del served  # served first, so the two TDs never boot at once on two cores
    for dev in _serve(image, dev_platform_port=True):
        challenge = Challenge.fresh()
        evidence = collect(dev.tcti, challenge)
        reference = reference_for(image, dev_platform_port=True)
        report = verify(evidence, reference, challenge)
        assert report.ok, report.failed
        assert any("development platform port" in note for note in reference.notes)
        # a reference for the plain serve refuses it: RTMR3 holds the mode
        plain = verify(evidence, reference_for(image), challenge)
        expected, actual = failed_at(plain, "RTMRs against the reference")
        assert "RTMR3=" + "00" * 48 in expected and "RTMR3=" in actual


def test_a_reference_without_rtmrs_fails_the_rtmr_step(
    collected: Collected, reference: ReferenceValues
) -> None:
    blind = dataclasses.replace(
        reference, rtmrs_at_quote=None, notes=("RTMRs not computed: the image inserts 2 areas",)
    )
    _, actual = failed_at(
        verify(collected.evidence, blind, collected.challenge), "RTMRs against the reference"
    )
    assert actual == "none"


def test_a_ca_quote_made_for_an_l2_vm_fails_at_the_quote_chain(
    collected: Collected, reference: ReferenceValues
) -> None:
    for_l2 = collected.evidence.replace(ca_certificate=_ca_of_another_td(reference.mrtd, 1))
    expected, actual = failed_at(verify(for_l2, reference, collected.challenge), "quote chain")
    assert expected == "a report L1 made for itself (VM index 0)" and actual == "VM index 1"
    for_l1 = collected.evidence.replace(ca_certificate=_ca_of_another_td(reference.mrtd, 0))
    report = verify(for_l1, reference, collected.challenge)
    assert report.steps[0].name == "quote chain" and report.steps[0].ok


def test_invoke_attest_without_a_tpm_fails_naming_the_step(image: Path) -> None:
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "attest", "--port", str(port), "--image", str(image)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "attest: opening the TCTI" in result.stderr


@pytest.mark.parametrize(
    ("add", "remove"),
    [(TpmaObject.DECRYPT, TpmaObject(0)), (TpmaObject(0), TpmaObject.RESTRICTED)],
    ids=["may-decrypt", "not-restricted"],
)
def test_an_ak_that_is_not_a_restricted_signing_key_fails_at_its_attributes(
    collected: Collected, reference: ReferenceValues, add: TpmaObject, remove: TpmaObject
) -> None:
    raw = bytearray(collected.evidence.ak_public)
    attributes = (int.from_bytes(raw[4:8], "big") | add) & ~remove  # TPMT_PUBLIC.objectAttributes
    raw[4:8] = attributes.to_bytes(4, "big")
    loose = collected.evidence.replace(ak_public=bytes(raw))
    expected, actual = failed_at(verify(loose, reference, collected.challenge), "AK attributes")
    assert "not DECRYPT" in expected and actual == repr(TpmaObject(attributes))
