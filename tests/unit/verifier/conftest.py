"""Fixtures: a seeded simulated platform, one of its quotes, and the evidence of a TD-bound vTPM
built from the simulator and the vTPM's own encoders (tests may use every part)."""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from svsm import eventlog as svsm_eventlog
from tdxdefs.eventlog import EV_PLATFORM_CONFIG_FLAGS
from tdxsim.attestation.quoting import SimulatedAttestation
from tdxsim.module.attestation_interface import TdInfo
from tests.support.vtpm_ca import ca_certificate
from vtpm.attest import cc_event, cc_event_log_header, cc_separator_event, report_data_for
from vtpm.certs import sec1_point

REPORTDATA = bytes(range(64))
TD = TdInfo(
    attributes=0x10000000,
    xfam=0xE7,
    mrtd=b"\x11" * 48,
    mrconfigid=b"\x22" * 48,
    mrowner=b"\x33" * 48,
    mrownerconfig=b"\x44" * 48,
    rtmr=(b"\xa0" * 48, b"\xa1" * 48, b"\xa2" * 48, b"\xa3" * 48),
    num_l2_vms=1,
    num_vcpus=1,
)


@pytest.fixture(scope="package")
def sim() -> SimulatedAttestation:
    return SimulatedAttestation.create(b"verifier tests")


@pytest.fixture(scope="package")
def quote(sim: SimulatedAttestation) -> bytes:
    return sim.quoting.quote(sim.reports.tdreport(TD, REPORTDATA))


@dataclass(frozen=True)
class TdEvidence:
    """What a TD-bound vTPM hands a relying party, built from real parts: a simulated TD quote
    whose REPORTDATA binds the CA key, the CA certificate carrying it and the CC event log (built
    by the vTPM's own encoder), an EK certificate the CA issued, and the log after sealing."""

    ca_key: ec.EllipticCurvePrivateKey
    quote: bytes
    event_log: bytes
    ca_der: bytes
    ek_der: bytes
    later_log: bytes
    mrtd: bytes


def ek_certificate(issuer: ec.EllipticCurvePrivateKey, issuer_name: x509.Name) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    ek = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer_name)
        .public_key(ek.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(issuer, hashes.SHA384())
    )
    return cert.public_bytes(Encoding.DER)


LAUNCH_DATA = b"launch parameters\0"
QUOTED_MRTD = b"\x5a" * 48


def make_evidence(
    sim: SimulatedAttestation,
    *,
    events: list[bytes] | None = None,
    quoted_rtmrs: tuple[bytes, bytes, bytes, bytes] | None = None,
    bind_key: ec.EllipticCurvePrivateKey | None = None,
) -> TdEvidence:
    """Evidence of one TD; `events` (encoded records) default to one launch event in RTMR0, the
    quote's RTMRs default to their replay, and REPORTDATA binds `bind_key` (default the CA's)."""
    if events is None:
        events = [
            cc_event(0, EV_PLATFORM_CONFIG_FLAGS, hashlib.sha384(LAUNCH_DATA).digest(), LAUNCH_DATA)
        ]
    log = cc_event_log_header() + b"".join(events)
    rtmrs = (
        quoted_rtmrs if quoted_rtmrs is not None else svsm_eventlog.replay(svsm_eventlog.parse(log))
    )
    ca_key = ec.generate_private_key(ec.SECP384R1())
    bound = (bind_key or ca_key).public_key()
    report_data = report_data_for(sec1_point(bound))
    td = replace(TD, mrtd=QUOTED_MRTD, rtmr=rtmrs)
    quote = sim.quoting.quote(sim.reports.tdreport(td, report_data))
    ca = ca_certificate(ca_key, quote, log)
    later = log + b"".join(cc_separator_event(r) for r in range(4))
    return TdEvidence(
        ca_key,
        quote,
        log,
        ca.public_bytes(Encoding.DER),
        ek_certificate(ca_key, ca.subject),
        later,
        QUOTED_MRTD,
    )


@pytest.fixture(scope="package")
def evidence(sim: SimulatedAttestation) -> TdEvidence:
    return make_evidence(sim)
