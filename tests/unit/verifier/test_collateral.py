"""Collateral on simulated quotes: chains, CRLs, revocation, expiry, QE identity, TCB levels and
statuses, v4 and v5 quotes, trailing bytes; the same appraisal path real quotes take."""

from __future__ import annotations

import dataclasses
import datetime
import json

import pytest

from tdxdefs.quote import TdQuoteBody15
from tdxsim.attestation.collateral import SIMULATED_ADVISORY, SimulatedCollateral, _sign_raw_hex
from tdxsim.attestation.pck import (
    WELL_KNOWN_SEED,
    SimulatedTcb,
    generate_pck_chain,
    sgx_extensions_der,
)
from tdxsim.attestation.quoting import QuotingService, SimulatedAttestation
from verifier.appraisal import Appraisal, appraise
from verifier.chain import UntrustedRootError
from verifier.collateral import Collateral, CollateralFormatError
from verifier.pck_extensions import PckExtensionError, PckExtensions
from verifier.tcb import TcbStatus
from verifier.trust_anchors import (
    INTEL_SGX_ROOT_CA_SHA256,
    fingerprint,
    intel_sgx_root_ca,
    simulated_root,
)

from .conftest import REPORTDATA, TD

ISSUED = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
AT = ISSUED + datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def well_known() -> SimulatedAttestation:
    return SimulatedAttestation.create(WELL_KNOWN_SEED)


def _quote(sim: SimulatedAttestation, version: int = 4) -> bytes:
    return sim.quoting.quote(sim.reports.tdreport(TD, REPORTDATA), version=version)


def _collateral(sim: SimulatedAttestation, **kwargs: object) -> SimulatedCollateral:
    return SimulatedCollateral(sim.quoting.pck, issue_date=ISSUED, **kwargs)  # type: ignore[arg-type]


def _appraise(
    sim: SimulatedAttestation, collateral: SimulatedCollateral | dict[str, str], **kwargs: object
) -> Appraisal:
    bundle = collateral if isinstance(collateral, dict) else collateral.bundle()
    return appraise(
        _quote(sim, int(kwargs.pop("version", 4))),  # type: ignore[call-overload]
        sim.quoting.pck.root,
        collateral=Collateral.from_json(json.dumps(bundle)),
        at=kwargs.pop("at", AT),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def _failed(result: Appraisal) -> tuple[str, str, str]:
    failure = result.failure
    assert failure is not None, [s.name for s in result.steps]
    return failure.name, failure.error, failure.detail


def _resign(collateral: SimulatedCollateral, key: str, body: dict[str, object]) -> dict[str, str]:
    bundle = collateral.bundle()
    text = json.dumps(body, separators=(",", ":"))
    bundle[key] = text
    bundle[f"{key}_signature"] = _sign_raw_hex(collateral.signing_key, text.encode())
    return bundle


@pytest.mark.parametrize("version", [4, 5])
def test_simulated_quote_and_collateral_verify_up_to_date(
    sim: SimulatedAttestation, version: int
) -> None:
    result = _appraise(sim, _collateral(sim), version=version)
    assert result.ok, result.failure
    assert [s.name for s in result.steps] == [
        "parse",
        "PCK chain",
        "QE report signature",
        "QE binding",
        "quote signature",
        "TD attributes",
        "CRLs",
        "revocation",
        "TCB info",
        "QE identity",
        "QE identity match",
        "TCB level",
        "TCB status",
    ]
    assert result.verdict is not None and result.verdict.status is TcbStatus.UP_TO_DATE
    assert result.quote is not None and result.quote.version == version


def test_v5_quote_carries_the_tdx_1_5_body(sim: SimulatedAttestation) -> None:
    result = _appraise(sim, _collateral(sim), version=5)
    assert result.quote is not None
    body = result.quote.body
    assert result.quote.signed_size == 48 + 6 + 648
    assert isinstance(body, TdQuoteBody15)
    assert body.tee_tcb_svn2 == body.tee_tcb_svn
    assert body.mrservicetd == bytes(48)
    assert "TD report 1.5 body" in result.steps[0].detail


def test_out_of_date_tcb_fails_unless_accepted(sim: SimulatedAttestation) -> None:
    collateral = _collateral(sim, platform_status="OutOfDate")
    assert _failed(_appraise(sim, collateral)) == (
        "TCB status",
        "TcbStatusNotAcceptedError",
        f"TCB status OutOfDate ({SIMULATED_ADVISORY}) is not accepted (accepted: UpToDate)",
    )
    accepted = _appraise(
        sim, collateral, accept={TcbStatus.UP_TO_DATE, TcbStatus.OUT_OF_DATE}, version=5
    )
    assert accepted.ok and accepted.verdict is not None
    assert accepted.verdict.status is TcbStatus.OUT_OF_DATE
    assert accepted.verdict.advisory_ids == (SIMULATED_ADVISORY,)


@pytest.mark.parametrize(
    "status",
    [
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDateConfigurationNeeded",
    ],
)
def test_each_status_is_reported(sim: SimulatedAttestation, status: str) -> None:
    result = _appraise(sim, _collateral(sim, platform_status=status), accept=set(TcbStatus))
    assert result.ok and result.verdict is not None
    assert result.verdict.status == status


def test_revoked_tcb_level_is_never_accepted(sim: SimulatedAttestation) -> None:
    result = _appraise(sim, _collateral(sim, platform_status="Revoked"), accept=set(TcbStatus))
    assert _failed(result)[:2] == ("TCB status", "TcbStatusNotAcceptedError")


def test_revoked_pck_certificate_fails_revocation(sim: SimulatedAttestation) -> None:
    name, error, detail = _failed(_appraise(sim, _collateral(sim, revoked_pck=True)))
    assert (name, error) == ("revocation", "CertificateRevokedError")
    assert f"{sim.quoting.pck.leaf.serial_number:#x}" in detail and "PCK CRL" in detail


def test_expired_collateral_is_reported_at_the_judging_time(sim: SimulatedAttestation) -> None:
    collateral = _collateral(sim)
    late = collateral.next_update + datetime.timedelta(seconds=1)
    name, error, detail = _failed(_appraise(sim, collateral, at=late))
    assert (name, error) == ("CRLs", "CollateralExpiredError")
    assert "not current at" in detail
    early = ISSUED - datetime.timedelta(seconds=1)
    assert _failed(_appraise(sim, collateral, at=early))[1] == "CollateralExpiredError"
    assert _appraise(sim, collateral, at=collateral.next_update).ok


def test_stale_tcb_info_alone_is_reported(sim: SimulatedAttestation) -> None:
    collateral = _collateral(sim)
    body = collateral.tcb_info()
    body["nextUpdate"] = "2026-11-01T12:00:00Z"
    name, error, detail = _failed(_appraise(sim, _resign(collateral, "tcb_info", body)))
    assert (name, error) == ("TCB info", "CollateralExpiredError")
    assert "TCB info is not current" in detail


def test_tampered_tcb_info_signature_fails(sim: SimulatedAttestation) -> None:
    bundle = _collateral(sim).bundle()
    bundle["tcb_info"] = bundle["tcb_info"].replace('"pcesvn":11', '"pcesvn":10')
    name, error, _ = _failed(_appraise(sim, bundle))
    assert (name, error) == ("TCB info", "CollateralSignatureError")
    signature = bytearray.fromhex(_collateral(sim).bundle()["tcb_info_signature"])
    signature[5] ^= 1
    bundle = _collateral(sim).bundle()
    bundle["tcb_info_signature"] = signature.hex()
    assert _failed(_appraise(sim, bundle))[:2] == ("TCB info", "CollateralSignatureError")


def test_collateral_of_another_simulated_root_fails(sim: SimulatedAttestation) -> None:
    other = SimulatedAttestation.create(b"another platform")
    bundle = _collateral(sim).bundle()
    foreign = SimulatedCollateral(other.quoting.pck, issue_date=ISSUED).bundle()
    bundle["tcb_info_issuer_chain"] = foreign["tcb_info_issuer_chain"]
    bundle["tcb_info_signature"] = foreign["tcb_info_signature"]
    assert _failed(_appraise(sim, bundle))[:2] == ("TCB info", "CollateralSignatureError")
    crl_swapped = _collateral(sim).bundle()
    crl_swapped["pck_crl"] = foreign["pck_crl"]
    assert _failed(_appraise(sim, crl_swapped))[:2] == ("CRLs", "CollateralSignatureError")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("mrsigner", "00" * 32, "MRSIGNER"),
        ("isvprodid", 7, "ISVPRODID"),
        ("miscselect", "01000000", "MISCSELECT"),
        ("attributes", "02" + "00" * 15, "ATTRIBUTES"),
    ],
)
def test_qe_identity_mismatch_fails(
    sim: SimulatedAttestation, field: str, value: object, reason: str
) -> None:
    collateral = _collateral(sim)
    body = collateral.qe_identity()
    body[field] = value
    name, error, detail = _failed(_appraise(sim, _resign(collateral, "qe_identity", body)))
    assert (name, error) == ("QE identity match", "QeIdentityMismatchError")
    assert reason in detail


def test_qe_below_every_identity_level_fails(sim: SimulatedAttestation) -> None:
    collateral = _collateral(sim)
    body = collateral.qe_identity()
    body["tcbLevels"] = [
        {"tcb": {"isvsvn": 9}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "UpToDate"}
    ]
    name, _, detail = _failed(_appraise(sim, _resign(collateral, "qe_identity", body)))
    assert name == "QE identity match" and "ISVSVN 1" in detail


def test_qe_identity_out_of_date_sets_the_status(sim: SimulatedAttestation) -> None:
    collateral = _collateral(sim)
    body = collateral.qe_identity()
    body["tcbLevels"] = [
        {"tcb": {"isvsvn": 2}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "UpToDate"},
        {
            "tcb": {"isvsvn": 0},
            "tcbDate": "2023-01-01T00:00:00Z",
            "tcbStatus": "OutOfDate",
            "advisoryIDs": ["SIMULATED-SA-QE"],
        },
    ]
    result = _appraise(sim, _resign(collateral, "qe_identity", body), accept=set(TcbStatus))
    assert result.verdict is not None and result.verdict.status is TcbStatus.OUT_OF_DATE
    assert result.verdict.advisory_ids == ("SIMULATED-SA-QE",)


def test_tcb_info_for_another_fmspc_fails(sim: SimulatedAttestation) -> None:
    collateral = _collateral(sim)
    body = collateral.tcb_info()
    body["fmspc"] = "00AA55000001"
    name, error, detail = _failed(_appraise(sim, _resign(collateral, "tcb_info", body)))
    assert (name, error) == ("TCB level", "TcbMatchError")
    assert "FMSPC 00aa55000001" in detail


def test_tdx_module_signer_mismatch_fails(sim: SimulatedAttestation) -> None:
    collateral = _collateral(sim)
    body = collateral.tcb_info()
    identities = body["tdxModuleIdentities"]
    assert isinstance(identities, list)
    identities[0]["mrsigner"] = "AB" * 48
    name, _, detail = _failed(_appraise(sim, _resign(collateral, "tcb_info", body)))
    assert name == "TCB level" and "MRSIGNERSEAM" in detail


def test_platform_below_every_level_fails(sim: SimulatedAttestation) -> None:
    pck = generate_pck_chain(b"old platform", SimulatedTcb(pcesvn=3))
    collateral = SimulatedCollateral(pck, issue_date=ISSUED)
    body = collateral.tcb_info()
    levels = body["tcbLevels"]
    assert isinstance(levels, list)
    levels[0]["tcb"]["pcesvn"] = 4
    sim_old = SimulatedAttestation(
        sim.reports, QuotingService(sim.quoting.report_key, pck, seed=b"old platform")
    )
    name, error, detail = _failed(_appraise(sim_old, _resign(collateral, "tcb_info", body)))
    assert (name, error) == ("TCB level", "TcbMatchError")
    assert "PCESVN 3" in detail


def test_trailing_bytes_are_reported_in_the_parse_step(sim: SimulatedAttestation) -> None:
    padded = _quote(sim) + bytes(128)
    result = appraise(padded, sim.quoting.pck.root)
    assert result.ok
    assert "128 bytes after the signature data" in result.steps[0].detail
    assert result.quote is not None and result.quote.trailing == bytes(128)


def test_simulated_quote_is_rejected_against_intel_root(sim: SimulatedAttestation) -> None:
    result = appraise(_quote(sim), intel_sgx_root_ca(), collateral=None, at=AT)
    assert _failed(result)[:2] == ("PCK chain", UntrustedRootError.__name__)


def test_shipped_roots() -> None:
    intel = intel_sgx_root_ca()
    assert fingerprint(intel) == INTEL_SGX_ROOT_CA_SHA256
    assert intel.subject.rfc4514_string().endswith("CN=Intel SGX Root CA")
    shipped = simulated_root()
    assert shipped == generate_pck_chain(WELL_KNOWN_SEED).root
    assert "SIMULATED" in shipped.subject.rfc4514_string()


def test_well_known_platform_verifies_under_the_shipped_simulated_root(
    well_known: SimulatedAttestation,
) -> None:
    quote = _quote(well_known)
    collateral = SimulatedCollateral(well_known.quoting.pck, issue_date=ISSUED).bundle()
    result = appraise(
        quote, simulated_root(), collateral=Collateral.from_json(json.dumps(collateral)), at=AT
    )
    assert result.ok, result.failure


def test_pck_extensions_round_trip(sim: SimulatedAttestation) -> None:
    tcb = sim.quoting.pck.tcb
    ext = PckExtensions.from_certificate(sim.quoting.pck.leaf)
    assert (ext.fmspc, ext.pce_id, ext.pcesvn, ext.ppid) == (
        tcb.fmspc,
        tcb.pce_id,
        tcb.pcesvn,
        tcb.ppid,
    )
    assert ext.sgx_tcb_components == tcb.sgx_components and ext.cpusvn == tcb.cpusvn
    with pytest.raises(PckExtensionError, match="no SGX extensions"):
        PckExtensions.from_certificate(sim.quoting.pck.intermediate)
    value = sgx_extensions_der(tcb)
    assert PckExtensions.from_der(value) == ext
    for cut in (1, 7, 40):
        with pytest.raises(PckExtensionError):
            PckExtensions.from_der(value[:-cut])


def test_malformed_collateral_names_the_item(sim: SimulatedAttestation) -> None:
    bundle = _collateral(sim).bundle()
    del bundle["pck_crl"]
    with pytest.raises(CollateralFormatError, match="lacks pck_crl"):
        Collateral.from_json(json.dumps(bundle))
    bundle = _collateral(sim).bundle()
    bundle["tcb_info_signature"] = "zz"
    with pytest.raises(CollateralFormatError, match="tcb_info_signature is not hex"):
        Collateral.from_json(json.dumps(bundle))
    with pytest.raises(CollateralFormatError, match="not JSON"):
        Collateral.from_json("{")


def test_debug_td_is_refused_unless_allowed(sim: SimulatedAttestation) -> None:
    debug_td = dataclasses.replace(TD, attributes=TD.attributes | 1)
    quote = sim.quoting.quote(sim.reports.tdreport(debug_td, REPORTDATA))
    refused = appraise(quote, sim.quoting.pck.root, at=AT)
    assert _failed(refused)[:2] == ("TD attributes", "DebugTdError")
    allowed = appraise(quote, sim.quoting.pck.root, at=AT, allow_debug=True)
    assert allowed.ok and "DEBUG TD, accepted as asked" in allowed.steps[-1].detail
