"""Appraise a TD quote step by step: parse, PCK chain, QE report, binding, quote signature and,
with collateral, CRLs, revocation, TCB info, QE identity, TCB level and the status policy.

Each step records a line saying what held; the first failing step stops the appraisal and names
itself and the reason. One code path for real and simulated quotes: only the root differs.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from cryptography import x509

from tdxdefs.quote import QuoteBodyType
from verifier.collateral import (
    QE_IDENTITY_ID_TDX,
    QE_IDENTITY_VERSION,
    TCB_INFO_ID_TDX,
    TCB_INFO_VERSION,
    Collateral,
    CollateralFormatError,
    check_crls,
    check_not_revoked,
    verify_signed_json,
)
from verifier.errors import VerificationError
from verifier.pck_extensions import PckExtensions
from verifier.quote import (
    ParsedQuote,
    check_pck_chain,
    check_qe_binding,
    check_qe_report_signature,
    check_quote_signature,
    parse_quote,
)
from verifier.tcb import TcbStatus, TcbVerdict, platform_status, qe_identity_status

DEFAULT_ACCEPTED = frozenset({TcbStatus.UP_TO_DATE})
BODY_NAMES: dict[int, str] = {
    QuoteBodyType.TD_REPORT_10: "TD report 1.0",
    QuoteBodyType.TD_REPORT_15: "TD report 1.5",
    QuoteBodyType.TD_REPORT_15_EX: "TD report 1.5 with extensions",
}
TD_ATTRIBUTES_DEBUG = 1 << 0  # Intel TDX Module ABI Specification, ATTRIBUTES bit 0: DEBUG


class DebugTdError(VerificationError):
    """The quoted TD is a debug TD: the host can read and write its memory and registers."""


class TcbStatusNotAcceptedError(VerificationError):
    """The TCB status is one the caller did not accept."""


@dataclass(frozen=True)
class Step:
    """One appraisal step: its name, whether it held, and what it found or why it failed."""

    name: str
    ok: bool
    detail: str
    error: str = ""


@dataclass
class Appraisal:
    """The steps run, the parsed quote (once parsed) and the TCB verdict (with collateral)."""

    steps: list[Step] = field(default_factory=list)
    quote: ParsedQuote | None = None
    verdict: TcbVerdict | None = None
    at: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    @property
    def failure(self) -> Step | None:
        return next((s for s in self.steps if not s.ok), None)

    def run(self, name: str, check: Callable[[], str]) -> bool:
        """Run one step; record its detail, or its error naming the step."""
        try:
            detail = check()
        except VerificationError as exc:
            self.steps.append(Step(name, False, str(exc), type(exc).__name__))
            return False
        self.steps.append(Step(name, True, detail))
        return True


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def appraise(
    quote: bytes,
    root: x509.Certificate,
    *,
    collateral: Collateral | None = None,
    at: datetime.datetime | None = None,
    accept: Collection[TcbStatus] = DEFAULT_ACCEPTED,
    allow_debug: bool = False,
) -> Appraisal:
    """Appraise `quote` against `root` (and `collateral`) at `at` (default: now); a debug TD is
    refused unless `allow_debug`."""
    result = Appraisal() if at is None else Appraisal(at=at)
    when = result.at
    state: dict[str, object] = {}

    def parse() -> str:
        parsed = parse_quote(quote)
        result.quote = parsed
        body = BODY_NAMES.get(parsed.body_type, f"body type {parsed.body_type}")
        trailing = (
            f"; {len(parsed.trailing)} bytes after the signature data at offset "
            f"{parsed.trailing_offset} (not used)"
            if parsed.trailing
            else ""
        )
        signed = f"signed bytes 0..{parsed.signed_size - 1}"
        return f"TD quote v{parsed.version}, {body} body, {signed}{trailing}"

    def chain() -> str:
        assert result.quote is not None
        leaf = check_pck_chain(result.quote, root, when)
        state["leaf"] = leaf
        return f"'{_describe(leaf)}' chains to '{_describe(root)}' at {when.isoformat()}"

    def qe_signature() -> str:
        assert result.quote is not None
        leaf = state["leaf"]
        assert isinstance(leaf, x509.Certificate)
        check_qe_report_signature(result.quote, leaf)
        return "QE report signed by the PCK leaf key"

    def binding() -> str:
        assert result.quote is not None
        check_qe_binding(result.quote)
        return "QE report_data = SHA-256(attestation key || QE authentication data)"

    def signature() -> str:
        assert result.quote is not None
        check_quote_signature(result.quote)
        return "header and body signed by the attestation key"

    def td_attributes() -> str:
        assert result.quote is not None
        attributes = result.quote.body.tdattributes
        if attributes & TD_ATTRIBUTES_DEBUG:
            if not allow_debug:
                raise DebugTdError(
                    f"TD ATTRIBUTES {attributes:#018x} has DEBUG (bit 0) set: the host can read "
                    "and change this TD, so its measurements prove nothing"
                )
            return f"ATTRIBUTES {attributes:#018x}: a DEBUG TD, accepted as asked"
        return f"ATTRIBUTES {attributes:#018x}: not a debug TD"

    steps: list[tuple[str, Callable[[], str]]] = [
        ("parse", parse),
        ("PCK chain", chain),
        ("QE report signature", qe_signature),
        ("QE binding", binding),
        ("quote signature", signature),
        ("TD attributes", td_attributes),
    ]
    if collateral is not None:
        steps += _collateral_steps(result, root, collateral, when, state, accept)
    for name, check in steps:
        if not result.run(name, check):
            break
    return result


def _collateral_steps(
    result: Appraisal,
    root: x509.Certificate,
    collateral: Collateral,
    when: datetime.datetime,
    state: dict[str, object],
    accept: Collection[TcbStatus],
) -> list[tuple[str, Callable[[], str]]]:
    def crls() -> str:
        check_crls(collateral, root, when)
        check_not_revoked(root, collateral.root_ca_crl, "trusted root", "root CA CRL")
        return (
            f"root CA CRL and PCK CRL signed and current (PCK CRL next update "
            f"{collateral.pck_crl.next_update_utc})"
        )

    def revocation() -> str:
        assert result.quote is not None
        chain = result.quote.pck_chain
        if collateral.pck_crl.issuer != chain[0].issuer:
            raise CollateralFormatError(
                f"PCK CRL is issued by '{collateral.pck_crl.issuer.rfc4514_string()}', the PCK "
                f"leaf by '{chain[0].issuer.rfc4514_string()}': the leaf's revocation is unknown"
            )
        check_not_revoked(chain[0], collateral.pck_crl, "PCK leaf", "PCK CRL")
        for cert in chain[1:]:
            check_not_revoked(cert, collateral.root_ca_crl, "PCK issuer", "root CA CRL")
        return "no certificate of the PCK chain is revoked"

    def tcb_info() -> str:
        item = collateral.tcb_info
        verify_signed_json(
            item, root, collateral.root_ca_crl, when, TCB_INFO_ID_TDX, TCB_INFO_VERSION
        )
        return (
            f"signed by '{_describe(item.issuer_chain[0])}', FMSPC {item.body.get('fmspc')}, "
            f"evaluation data number {item.body.get('tcbEvaluationDataNumber')}, next update "
            f"{item.next_update.isoformat()}"
        )

    def qe_identity() -> str:
        item = collateral.qe_identity
        verify_signed_json(
            item, root, collateral.root_ca_crl, when, QE_IDENTITY_ID_TDX, QE_IDENTITY_VERSION
        )
        return (
            f"signed by '{_describe(item.issuer_chain[0])}', next update "
            f"{item.next_update.isoformat()}"
        )

    def qe_match() -> str:
        assert result.quote is not None
        verdict = qe_identity_status(result.quote.qe_report.report_body, collateral.qe_identity)
        state["qe"] = verdict
        return f"MRSIGNER, ISVPRODID, MISCSELECT, ATTRIBUTES match; QE status {verdict.status}"

    def tcb_level() -> str:
        assert result.quote is not None
        pck = PckExtensions.from_certificate(result.quote.pck_chain[0])
        verdict = platform_status(result.quote.body, pck, collateral.tcb_info)
        qe = state["qe"]
        assert isinstance(qe, TcbVerdict)
        result.verdict = verdict.merge(qe)
        return (
            f"FMSPC {pck.fmspc.hex()}, PCESVN {pck.pcesvn}, SGX TCB "
            f"{list(pck.sgx_tcb_components)}, TEE_TCB_SVN {result.quote.body.tee_tcb_svn.hex()}: "
            f"platform {verdict.status}"
        )

    def status() -> str:
        verdict = result.verdict
        assert verdict is not None
        advisories = f" ({', '.join(verdict.advisory_ids)})" if verdict.advisory_ids else ""
        if verdict.status not in accept or verdict.status is TcbStatus.REVOKED:
            raise TcbStatusNotAcceptedError(
                f"TCB status {verdict.status}{advisories} is not accepted "
                f"(accepted: {', '.join(sorted(accept))})"
            )
        return f"{verdict.status}{advisories}"

    return [
        ("CRLs", crls),
        ("revocation", revocation),
        ("TCB info", tcb_info),
        ("QE identity", qe_identity),
        ("QE identity match", qe_match),
        ("TCB level", tcb_level),
        ("TCB status", status),
    ]
