"""The relying party: quote -> CA -> EK certificates, step by step; each broken link fails its step
and no later one, with the expected and actual values."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from tdxdefs.eventlog import EV_PLATFORM_CONFIG_FLAGS, EV_S_CRTM_VERSION
from tdxsim.attestation.quoting import SimulatedAttestation
from verifier.quote import parse_quote
from verifier.td_attestation import (
    AttestationReport,
    AttestationStepError,
    verify_td_attestation,
)
from vtpm.attest import cc_event, cc_separator_event

from .conftest import (
    QUOTED_MRTD,
    TdEvidence,
    ca_certificate,
    ek_certificate,
    make_evidence,
)

ALL_STEPS = [
    "quote chain",
    "REPORTDATA binding",
    "MRTD",
    "RTMR replay",
    "later event log",
    "EK certificate (ecc)",
]


def check(
    sim: SimulatedAttestation,
    evidence: TdEvidence,
    *,
    ca_der: bytes | None = None,
    eks: dict[str, bytes] | None = None,
    mrtd: bytes = QUOTED_MRTD,
    later: bytes | None = None,
) -> AttestationReport:
    return verify_td_attestation(
        evidence.ca_der if ca_der is None else ca_der,
        {"ecc": evidence.ek_der} if eks is None else eks,
        trusted_root=sim.quoting.trusted_root_der,
        root_label="the SIMULATION root",
        expected_mrtd=mrtd,
        later_event_log=evidence.later_log if later is None else later,
    )


def failed_at(report: AttestationReport, name: str) -> str:
    """Assert the report stops at step `name`, every earlier step passed; return its detail."""
    names = [step.name for step in report.steps]
    assert names == ALL_STEPS[: ALL_STEPS.index(name) + 1]
    assert all(step.ok for step in report.steps[:-1])
    failed = report.failed
    assert failed is not None and failed.name == name and not failed.ok
    with pytest.raises(AttestationStepError) as info:
        report.raise_for_failure()
    assert info.value.step is failed and f"'{name}'" in str(info.value)
    return failed.detail


def test_a_sound_chain_passes_every_step(sim: SimulatedAttestation, evidence: TdEvidence) -> None:
    report = check(sim, evidence)
    assert report.ok and report.failed is None
    report.raise_for_failure()
    assert [step.name for step in report.steps] == ALL_STEPS
    details = [step.detail for step in report.steps]
    assert details[0] == "quote signature and PCK chain verify against the SIMULATION root"
    assert (
        details[3] == "RTMR0..3 of the quote replay from the CA certificate's event log (1 events)"
    )
    mrtd_step = report.steps[2]
    assert mrtd_step.expected == mrtd_step.actual == QUOTED_MRTD.hex()
    assert report.quote is not None and report.quote.body.mrtd == QUOTED_MRTD
    assert report.quoted_log is not None and len(report.quoted_log.events) == 1
    assert json.loads(json.dumps(report.as_dict()))["ok"] is True


def test_a_quote_under_another_root_fails_the_chain_step(
    sim: SimulatedAttestation, evidence: TdEvidence
) -> None:
    other = SimulatedAttestation.create(b"another platform")
    report = verify_td_attestation(
        evidence.ca_der,
        {},
        trusted_root=other.quoting.trusted_root_der,
        expected_mrtd=QUOTED_MRTD,
    )
    detail = failed_at(report, "quote chain")
    assert "trusted root" in detail


def test_a_ca_without_the_quote_extension_fails_the_chain_step(
    sim: SimulatedAttestation, evidence: TdEvidence
) -> None:
    bare = ca_certificate(evidence.ca_key, None, evidence.event_log)
    detail = failed_at(check(sim, evidence, ca_der=bare.public_bytes(Encoding.DER)), "quote chain")
    assert "no TD quote extension (2.16.840.1.113741.1.5.5.2.2)" in detail


def test_a_quote_binding_another_key_fails_the_reportdata_step(sim: SimulatedAttestation) -> None:
    stranger = ec.generate_private_key(ec.SECP384R1())
    evidence = make_evidence(sim, bind_key=stranger)
    report = check(sim, evidence)
    failed_at(report, "REPORTDATA binding")
    step = report.steps[-1]
    assert step.expected != step.actual and len(bytes.fromhex(step.expected)) == 64


def test_another_image_fails_the_mrtd_step(sim: SimulatedAttestation, evidence: TdEvidence) -> None:
    report = check(sim, evidence, mrtd=b"\x01" * 48)
    assert "not the image's offline MRTD" in failed_at(report, "MRTD")
    assert report.steps[-1].expected == (b"\x01" * 48).hex()
    assert report.steps[-1].actual == QUOTED_MRTD.hex()


@pytest.mark.parametrize("rtmr", [0, 2])
def test_a_changed_event_fails_the_replay_naming_the_rtmr(
    sim: SimulatedAttestation, rtmr: int
) -> None:
    honest = [cc_event(rtmr, EV_PLATFORM_CONFIG_FLAGS, hashlib.sha384(b"a").digest(), b"a")]
    quoted = make_evidence(sim, events=honest).quote
    rtmrs = parse_quote(quoted).body.rtmrs
    changed = [cc_event(rtmr, EV_PLATFORM_CONFIG_FLAGS, hashlib.sha384(b"b").digest(), b"b")]
    evidence = make_evidence(sim, events=changed, quoted_rtmrs=rtmrs)
    detail = failed_at(check(sim, evidence), "RTMR replay")
    assert detail.endswith(f"does not replay to the quote's RTMR{rtmr}")


def test_a_malformed_event_log_fails_the_replay_naming_the_offset(
    sim: SimulatedAttestation, evidence: TdEvidence
) -> None:
    truncated = ca_certificate(evidence.ca_key, evidence.quote, evidence.event_log[:-3])
    # the quote no longer matches this CA's log, but the chain up to the log still holds
    report = check(sim, evidence, ca_der=truncated.public_bytes(Encoding.DER))
    detail = failed_at(report, "RTMR replay")
    assert "CC event log offset" in detail and "event data" in detail


def test_a_later_log_with_more_than_the_seals_fails_its_step(
    sim: SimulatedAttestation, evidence: TdEvidence
) -> None:
    extra = cc_event(0, EV_S_CRTM_VERSION, hashlib.sha384(b"x").digest(), b"x")
    for later in (evidence.later_log + extra, evidence.event_log + cc_separator_event(0)):
        assert "not the quoted log followed by" in failed_at(
            check(sim, evidence, later=later), "later event log"
        )


def test_an_ek_certificate_from_another_ca_fails_its_step(
    sim: SimulatedAttestation, evidence: TdEvidence
) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    other_ca = ca_certificate(other, None, None)
    stray = ek_certificate(other, other_ca.subject)
    report = check(sim, evidence, eks={"ecc": stray})
    assert "EK certificate (ecc) is not issued by the CA" in failed_at(
        report, "EK certificate (ecc)"
    )
