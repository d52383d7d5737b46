"""The relying party's check of a TD-bound vTPM: TD quote -> vTPM CA certificate -> EK certificates.

The vTPM CA certificate carries, in two non-critical extensions, the TD quote it is bound to and the
CC event log that explains the quote's RTMRs. The chain holds when, in order:

1. the quote's signature, QE report and PCK chain verify up to the root the caller trusts;
2. the quote's REPORTDATA is SHA-384 of the CA public key (an uncompressed SEC1 point 0x04||X||Y)
   followed by 16 zero bytes, so the quote vouches for this CA key and no other;
3. the quote's MRTD is the expected one (computed offline from the image);
4. RTMR0..3 of the quote replay from the CA certificate's event log;
5. optionally, a later event log of the same TD starts with the quoted events and then holds only
   one EV_SEPARATOR per RTMR (the boot seals the RTMRs after the quote);
6. every EK certificate is signed by the CA key.

`verify_td_attestation` returns an `AttestationReport`: each step with its name, verdict, expected
and actual values. The first failing step ends the check; `AttestationReport.raise_for_failure`
turns it into an `AttestationStepError` naming the step.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import NoReturn, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tdxdefs.quote import L1_VM_INDEX, TdQuoteBody15Ex
from verifier import eventlog
from verifier.errors import VerificationError
from verifier.eventlog import CcEvent, EventLog
from verifier.quote import ParsedQuote, verify_quote

# Extensions of the vTPM CA certificate, in Intel's OID arc: the numbers Intel's TD-partitioning
# vTPM prototype code uses (its design guide lists 2.16.840.1.113741.1.5.5.4.x instead).
OID_TD_QUOTE = x509.ObjectIdentifier("2.16.840.1.113741.1.5.5.2.2")
OID_EVENT_LOG = x509.ObjectIdentifier("2.16.840.1.113741.1.5.5.2.3")
REPORT_DATA_SIZE = 64
T = TypeVar("T")


class AttestationStepError(VerificationError):
    """A step of the TD attestation chain failed; `step` names it, `report` holds every step."""

    def __init__(self, report: AttestationReport, step: Step) -> None:
        super().__init__(
            f"relying party step '{step.name}' failed: {step.detail} "
            f"(expected {step.expected}, actual {step.actual})"
        )
        self.report = report
        self.step = step


@dataclass(frozen=True)
class Step:
    """One check: its name, verdict, what was expected and found, and a sentence saying so."""

    name: str
    ok: bool
    expected: str
    actual: str
    detail: str


@dataclass
class AttestationReport:
    """The steps run so far (in order), and what they established for later use."""

    steps: list[Step] = field(default_factory=list)
    quote: ParsedQuote | None = None
    quoted_log: EventLog | None = None
    later_log: EventLog | None = None

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)

    @property
    def failed(self) -> Step | None:
        """The failing step, None when every step passed."""
        return next((step for step in self.steps if not step.ok), None)

    def raise_for_failure(self) -> None:
        failed = self.failed
        if failed is not None:
            raise AttestationStepError(self, failed)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "steps": [
                {
                    "name": s.name,
                    "ok": s.ok,
                    "expected": s.expected,
                    "actual": s.actual,
                    "detail": s.detail,
                }
                for s in self.steps
            ],
        }


class _Stop(VerificationError):
    """Ends the chain at a failed step; never leaves `verify_td_attestation`."""


def ca_extension(ca: x509.Certificate, oid: x509.ObjectIdentifier, what: str) -> bytes:
    """The raw bytes of a vTPM CA certificate extension; VerificationError if absent or not raw."""
    try:
        value = ca.extensions.get_extension_for_oid(oid).value
    except (x509.ExtensionNotFound, ValueError) as exc:
        raise VerificationError(
            f"the CA certificate has no {what} extension ({oid.dotted_string})"
        ) from exc
    if not isinstance(value, x509.UnrecognizedExtension):
        raise VerificationError(f"the CA certificate's {what} extension is not raw bytes")
    return value.value


def report_data_for(ca_key: ec.EllipticCurvePublicKey) -> bytes:
    """REPORTDATA binding a CA key: SHA-384 of its uncompressed SEC1 point, then 16 zero bytes."""
    point = ca_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    digest = hashlib.sha384(point).digest()
    return digest + bytes(REPORT_DATA_SIZE - len(digest))


def _rtmrs_text(values: tuple[bytes, ...] | list[bytes]) -> str:
    return ", ".join(f"RTMR{i}={v.hex()}" for i, v in enumerate(values))


def _records(events: list[CcEvent]) -> str:
    return ", ".join(f"RTMR{e.rtmr}:{eventlog.event_type_name(e.event_type)}" for e in events)


class _Checker:
    """Appends steps to a report; a failed step ends the chain by raising _Stop."""

    def __init__(self, report: AttestationReport) -> None:
        self.report = report

    def fail(self, name: str, expected: str, actual: str, detail: str) -> NoReturn:
        self.report.steps.append(Step(name, False, expected, actual, detail))
        raise _Stop

    def step(self, name: str, expected: str, actual: str, ok: bool, detail: str) -> None:
        if not ok:
            self.fail(name, expected, actual, detail)
        self.report.steps.append(Step(name, True, expected, actual, detail))

    def guarded(self, name: str, expected: str, action: Callable[[], T]) -> T:
        """Run `action`; a VerificationError (or malformed input) fails step `name`."""
        try:
            return action()
        except (VerificationError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            self.fail(name, expected, f"{type(exc).__name__}: {exc}", str(exc))


def verify_td_attestation(
    ca_certificate: bytes,
    ek_certificates: Mapping[str, bytes],
    *,
    trusted_root: bytes | x509.Certificate,
    expected_mrtd: bytes,
    root_label: str = "the trusted root",
    later_event_log: bytes | None = None,
    at: datetime.datetime | None = None,
) -> AttestationReport:
    """Check the chain of the module docstring; return the report (failed or not).

    `ca_certificate` and the EK certificates are DER. `root_label` names the trusted root in the
    report (say SIMULATION for the tdxsim root). `later_event_log` is a later CC log of the same TD.
    """
    report = AttestationReport()
    check = _Checker(report)
    with contextlib.suppress(_Stop):
        _run(
            check,
            ca_certificate,
            ek_certificates,
            trusted_root,
            expected_mrtd,
            root_label,
            later_event_log,
            at,
        )
    return report


def _run(
    check: _Checker,
    ca_der: bytes,
    ek_certificates: Mapping[str, bytes],
    trusted_root: bytes | x509.Certificate,
    expected_mrtd: bytes,
    root_label: str,
    later_event_log: bytes | None,
    at: datetime.datetime | None,
) -> None:
    report = check.report
    name = "quote chain"
    ca = check.guarded(
        name, "a DER X.509 CA certificate", lambda: x509.load_der_x509_certificate(ca_der)
    )
    raw_quote = check.guarded(
        name, "a TD quote extension", lambda: ca_extension(ca, OID_TD_QUOTE, "TD quote")
    )
    quote = check.guarded(
        name, f"signed up to {root_label}", lambda: verify_quote(raw_quote, trusted_root, at=at)
    )
    report.quote = quote
    if isinstance(quote.body, TdQuoteBody15Ex) and quote.body.vm_index != L1_VM_INDEX:
        check.fail(
            name,
            f"a report L1 made for itself (VM index {L1_VM_INDEX})",
            f"VM index {quote.body.vm_index}",
            f"the quote's report was made for L2 VM {quote.body.vm_index}, not for the paravisor "
            "whose CA it must vouch for",
        )
    check.step(
        name,
        f"signed up to {root_label}",
        "verified",
        True,
        f"quote signature and PCK chain verify against {root_label}",
    )

    name = "REPORTDATA binding"
    ca_key = ca.public_key()
    if not isinstance(ca_key, ec.EllipticCurvePublicKey):
        check.fail(name, "an EC CA key", type(ca_key).__name__, "the CA key is not an EC key")
    expected = report_data_for(ca_key)
    actual = quote.body.reportdata
    check.step(
        name,
        expected.hex(),
        actual.hex(),
        actual == expected,
        "REPORTDATA = SHA-384(CA public key)"
        if actual == expected
        else "the quote's REPORTDATA is not SHA-384 of the CA public key: the quote vouches "
        "for another key",
    )

    name = "MRTD"
    mrtd = quote.body.mrtd
    check.step(
        name,
        expected_mrtd.hex(),
        mrtd.hex(),
        mrtd == expected_mrtd,
        "quote MRTD equals the image's offline MRTD"
        if mrtd == expected_mrtd
        else "the quote's MRTD is not the image's offline MRTD",
    )

    name = "RTMR replay"
    quoted = quote.body.rtmrs
    log = check.guarded(
        name,
        _rtmrs_text(quoted),
        lambda: eventlog.parse(ca_extension(ca, OID_EVENT_LOG, "event log")),
    )
    report.quoted_log = log
    replayed = check.guarded(name, _rtmrs_text(quoted), log.replay)
    bad = eventlog.mismatched_rtmrs(replayed, quoted)
    check.step(
        name,
        _rtmrs_text(quoted),
        _rtmrs_text(replayed),
        not bad,
        f"RTMR0..3 of the quote replay from the CA certificate's event log "
        f"({len(log.events)} events)"
        if not bad
        else f"the CA certificate's event log does not replay to the quote's "
        f"{', '.join(f'RTMR{i}' for i in bad)}",
    )

    if later_event_log is not None:
        name = "later event log"
        later = check.guarded(name, "a CC event log", lambda: eventlog.parse(later_event_log))
        report.later_log = later
        prefix, rest = later.events[: len(log.events)], later.events[len(log.events) :]
        seals = [eventlog.separator(rtmr) for rtmr in range(eventlog.RTMR_COUNT)]
        ok = (
            len(prefix) == len(log.events)
            and all(eventlog.same_record(a, b) for a, b in zip(prefix, log.events, strict=True))
            and len(rest) == len(seals)
            and all(eventlog.same_record(a, b) for a, b in zip(rest, seals, strict=True))
        )
        check.step(
            name,
            f"the quoted events, then {_records(seals)}",
            _records(later.events),
            ok,
            "the later event log: the quoted events, then separators into RTMR0..3 after the quote"
            if ok
            else "the later event log is not the quoted log followed by one separator per RTMR",
        )

    for kind, der in ek_certificates.items():
        name = f"EK certificate ({kind})"
        ek = check.guarded(
            name, "a DER X.509 certificate", partial(x509.load_der_x509_certificate, der)
        )
        try:
            ek.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            check.fail(
                name,
                f"issued by '{ca.subject.rfc4514_string()}'",
                f"issuer '{ek.issuer.rfc4514_string()}', signature does not verify",
                f"EK certificate ({kind}) is not issued by the CA: {type(exc).__name__} {exc}",
            )
        check.step(
            name,
            f"issued by '{ca.subject.rfc4514_string()}'",
            "signature verifies",
            True,
            f"EK certificate ({kind}) is issued by the CA",
        )
