"""Hostile collateral: wrong-typed fields (validly re-signed), flipped bytes of the signed text,
a CRL of another issuer. Each is refused at a named step; none crashes the appraisal."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tdxsim.attestation.collateral import SimulatedCollateral, _sign_raw_hex
from tdxsim.attestation.quoting import SimulatedAttestation
from verifier.appraisal import Appraisal, appraise
from verifier.collateral import Collateral
from verifier.errors import VerificationError

from .conftest import REPORTDATA, TD

ISSUED = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
AT = ISSUED + datetime.timedelta(days=1)
WRONG_VALUES: tuple[object, ...] = (None, -1, "x", [1], {"a": 1}, 2**70, True)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if path:
        yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _set(body: Any, path: tuple[Any, ...], value: object) -> Any:
    copy = json.loads(json.dumps(body))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def _run(sim: SimulatedAttestation, quote: bytes, bundle: dict[str, str]) -> Appraisal:
    return appraise(
        quote, sim.quoting.pck.root, collateral=Collateral.from_json(json.dumps(bundle)), at=AT
    )


@pytest.fixture(scope="module")
def quote(sim: SimulatedAttestation) -> bytes:
    return sim.quoting.quote(sim.reports.tdreport(TD, REPORTDATA))


@pytest.mark.parametrize("item", ["tcb_info", "qe_identity"])
def test_every_field_with_a_wrong_type_is_refused_by_name(
    sim: SimulatedAttestation, quote: bytes, item: str
) -> None:
    collateral = SimulatedCollateral(sim.quoting.pck, issue_date=ISSUED)
    body = getattr(collateral, item)()
    tried = refused = 0
    for path in _paths(body):
        for value in WRONG_VALUES:
            text = json.dumps(_set(body, path, value))
            bundle = collateral.bundle()
            bundle[item] = text
            bundle[f"{item}_signature"] = _sign_raw_hex(collateral.signing_key, text.encode())
            result = _run(sim, quote, bundle)  # must not raise
            tried += 1
            failure = result.failure
            if failure is not None:
                refused += 1
                assert failure.error.endswith("Error") and failure.detail, (path, value, failure)
            elif path[-1] in ("fmspc", "mrsigner", "isvprodid", "pcesvn", "svn", "tcbStatus"):
                pytest.fail(f"{item} {path} = {value!r} was accepted")
    assert tried > 100 and refused > tried // 2


def test_flipped_bytes_of_signed_collateral_fail_its_signature(
    sim: SimulatedAttestation, quote: bytes
) -> None:
    collateral = SimulatedCollateral(sim.quoting.pck, issue_date=ISSUED)
    for item, step in (("tcb_info", "TCB info"), ("qe_identity", "QE identity")):
        text = collateral.bundle()[item]
        for offset in range(0, len(text), 7):
            flipped = text[:offset] + chr(ord(text[offset]) ^ 0x01) + text[offset + 1 :]
            bundle = collateral.bundle()
            bundle[item] = flipped
            try:
                Collateral.from_json(json.dumps(bundle))
            except VerificationError:
                continue  # no longer JSON: refused while loading, naming the item
            failure = _run(sim, quote, bundle).failure
            assert failure is not None and failure.name == step, (item, offset)
            assert failure.error == "CollateralSignatureError", (item, offset, failure)


def test_pck_crl_of_another_issuer_leaves_revocation_unknown(
    sim: SimulatedAttestation, quote: bytes
) -> None:
    bundle = SimulatedCollateral(sim.quoting.pck, issue_date=ISSUED).bundle()
    bundle["pck_crl"] = bundle["root_ca_crl"]
    bundle["pck_crl_issuer_chain"] = sim.quoting.pck.root.public_bytes(Encoding.PEM).decode()
    failure = _run(sim, quote, bundle).failure
    assert failure is not None and failure.name == "revocation"
    assert "revocation is unknown" in failure.detail


def test_pck_crl_signed_by_a_non_ca_is_refused(sim: SimulatedAttestation, quote: bytes) -> None:
    collateral = SimulatedCollateral(sim.quoting.pck, issue_date=ISSUED)
    bundle = collateral.bundle()
    bundle["pck_crl_issuer_chain"] = bundle["tcb_info_issuer_chain"]  # the TCB signing leaf
    failure = _run(sim, quote, bundle).failure
    assert failure is not None and failure.name == "CRLs"
    assert failure.error == "CollateralSignatureError" and "is not a CA" in failure.detail
