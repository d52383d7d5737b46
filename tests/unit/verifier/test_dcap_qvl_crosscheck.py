"""Our verdicts against dcap-qvl's, on simulated quotes with simulated collateral (re-signed with
Intel's QE vendor ID, which dcap-qvl insists on) and on the public Intel TDX quotes."""

from __future__ import annotations

import datetime
import json

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tdxsim.attestation.collateral import SimulatedCollateral
from tdxsim.attestation.quoting import SimulatedAttestation
from verifier.appraisal import appraise
from verifier.chain import load_certificate
from verifier.collateral import Collateral
from verifier.tcb import TcbStatus
from verifier.trust_anchors import intel_sgx_root_ca

from ...support.dcap import (
    PUBLIC_CASES,
    PUBLIC_QUOTES,
    as_intel_vendor,
    dcap_verdict,
    public_case,
    public_quote,
)
from .conftest import REPORTDATA, TD

ISSUED = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
AT = ISSUED + datetime.timedelta(hours=3)
ALL = frozenset(TcbStatus)


def _ours(
    quote: bytes, collateral_json: str, root_der: bytes, at: datetime.datetime
) -> tuple[str, list[str]] | str:
    result = appraise(
        quote,
        load_certificate(root_der),
        collateral=Collateral.from_json(collateral_json),
        at=at,
        accept=ALL - {TcbStatus.REVOKED},
    )
    if result.ok and result.verdict is not None:
        return result.verdict.status.value, list(result.verdict.advisory_ids)
    failure = result.failure
    assert failure is not None
    return f"{failure.name}: {failure.error}"


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize(
    "status",
    [
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
    ],
)
def test_tcb_status_matches_dcap_qvl_on_simulated_quotes(
    sim: SimulatedAttestation, version: int, status: str
) -> None:
    quote = as_intel_vendor(
        sim.quoting.quote(sim.reports.tdreport(TD, REPORTDATA), version=version),
        sim.quoting.attestation_key,
    )
    collateral = SimulatedCollateral(sim.quoting.pck, platform_status=status, issue_date=ISSUED)
    text, root = collateral.to_json(), sim.quoting.trusted_root_der
    theirs = dcap_verdict(quote, text, AT, root)
    assert isinstance(theirs, tuple), theirs
    assert _ours(quote, text, root, AT) == theirs
    assert theirs[0] == status


@pytest.mark.parametrize(
    ("kwargs", "at", "step"),
    [
        ({"revoked_pck": True}, AT, "revocation"),
        ({"platform_status": "Revoked"}, AT, "TCB status"),
        ({}, AT + datetime.timedelta(days=40), "CRLs"),
    ],
)
def test_rejections_agree_with_dcap_qvl(
    sim: SimulatedAttestation, kwargs: dict[str, object], at: datetime.datetime, step: str
) -> None:
    quote = as_intel_vendor(
        sim.quoting.quote(sim.reports.tdreport(TD, REPORTDATA)), sim.quoting.attestation_key
    )
    collateral = SimulatedCollateral(sim.quoting.pck, issue_date=ISSUED, **kwargs)  # type: ignore[arg-type]
    text, root = collateral.to_json(), sim.quoting.trusted_root_der
    theirs = dcap_verdict(quote, text, at, root)
    assert isinstance(theirs, str), theirs  # dcap-qvl refuses too
    ours = _ours(quote, text, root, at)
    assert isinstance(ours, str) and ours.startswith(f"{step}:"), ours


def test_dcap_qvl_refuses_the_simulated_vendor_id_we_accept(sim: SimulatedAttestation) -> None:
    quote = sim.quoting.quote(sim.reports.tdreport(TD, REPORTDATA))
    collateral = SimulatedCollateral(sim.quoting.pck, issue_date=ISSUED).to_json()
    theirs = dcap_verdict(quote, collateral, AT, sim.quoting.trusted_root_der)
    assert isinstance(theirs, str) and "QE vendor" in theirs
    assert _ours(quote, collateral, sim.quoting.trusted_root_der, AT) == ("UpToDate", [])


# dcap-qvl's refusal -> the step and error of ours that must match it
SAME_REFUSAL = {
    "No matching TCB level": "TCB level: TcbMatchError",
    "Debug mode is enabled": "TD attributes: DebugTdError",
}


@pytest.mark.parametrize(("data_set", "name", "collateral"), PUBLIC_CASES)
def test_public_quotes_match_dcap_qvl(data_set: str, name: str, collateral: str) -> None:
    data = public_case(data_set, name, collateral)
    root = intel_sgx_root_ca().public_bytes(Encoding.DER)
    theirs = dcap_verdict(data.quote, data.collateral_json, data.at)
    ours = _ours(data.quote, data.collateral_json, root, data.at)
    if isinstance(theirs, tuple):
        assert ours == theirs
    else:
        expected = [step for text, step in SAME_REFUSAL.items() if text in theirs]
        assert [ours] == expected, (ours, theirs)
    late = data.at + datetime.timedelta(days=400)
    assert isinstance(dcap_verdict(data.quote, data.collateral_json, late), str)
    earlier = ours if ours == "TD attributes: DebugTdError" else "CRLs: CollateralExpiredError"
    assert _ours(data.quote, data.collateral_json, root, late) == earlier


def test_public_collateral_loads_as_dcap_qvl_reads_it() -> None:
    data = public_quote(*PUBLIC_QUOTES[0])
    ours = Collateral.from_json(data.collateral_json)
    assert json.loads(ours.tcb_info.text)["fmspc"] == "B0C06F000000"


def test_debug_public_quote_reports_its_status_when_allowed() -> None:
    data = public_case(*PUBLIC_CASES[3])
    result = appraise(
        data.quote,
        intel_sgx_root_ca(),
        collateral=Collateral.from_json(data.collateral_json),
        at=data.at,
        accept=ALL - {TcbStatus.REVOKED},
        allow_debug=True,
    )
    assert result.ok and result.verdict is not None
    assert result.verdict.status is TcbStatus.OUT_OF_DATE
    assert "INTEL-SA-00837" in result.verdict.advisory_ids
