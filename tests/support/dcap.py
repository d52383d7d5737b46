"""Cross-checking with dcap-qvl (Phala Network's DCAP quote verification library, Rust core with
Python bindings, pinned in the dev dependencies), and the public Intel TDX quotes it is run on.

dcap-qvl refuses any quote whose QE vendor ID is not Intel's, so a simulated quote is handed to it
re-signed with Intel's vendor ID in the header (`as_intel_vendor`, tests only: the simulated
quoting service itself never claims to be Intel's); everything else it checks as for a real one.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import dcap_qvl
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from tdxdefs.quote import INTEL_QE_VENDOR_ID, QuoteHeader
from verifier.collateral import Collateral
from verifier.quote import parse_quote

from .public_data import require

PUBLIC_SET = "intel-dcap"
PCS_SET = "attestation-rs-tdx"
VENDOR_AT = QuoteHeader.offset("qe_vendor_id")
CHAIN_ONLY_AT = datetime.datetime(2026, 4, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class PublicQuote:
    """A public Intel TDX quote, its collateral file, and a time inside the collateral's window."""

    name: str
    quote: bytes
    collateral_json: str
    at: datetime.datetime


# (data set, quote file, collateral: a dcap-qvl collateral file, or the TCB info PCS response)
PUBLIC_QUOTES = (
    ("tdx_quote", "tdx_quote_collateral.json"),
    ("tdx_quote_outdated", "tdx_quote_outdated_collateral.json"),
    ("tdx_quote_td15ex", "tdx_quote_td15ex_collateral.json"),
)
PUBLIC_CASES = (
    (PUBLIC_SET, "tdx_quote", "tdx_quote_collateral.json"),
    (PUBLIC_SET, "tdx_quote_outdated", "tdx_quote_outdated_collateral.json"),
    (PUBLIC_SET, "tdx_quote_td15ex", "tdx_quote_td15ex_collateral.json"),
    (PCS_SET, "tdx_quote_4.dat", "tcb_info_50806f000000.json"),
    (PCS_SET, "tdx_quote_5.dat", "tcb_info_90c06f000000.json"),
)
CHAIN_ONLY = ("az_tdx_td_quote.bin", "tdx_quote_live.dat")  # signatures and chain, no collateral
PCS_FILES = (
    "td_qe_identity.json",
    "tcb_signing_chain.pem",
    "pck_crl_platform.der",
    "root_ca_crl.der",
)


def public_quote(name: str, collateral: str) -> PublicQuote:
    """A public quote and its dcap-qvl collateral file (skips naming the folder when absent),
    judged one hour after the TCB info was issued."""
    folder: Path = require(PUBLIC_SET, name, collateral)
    return _judged(name, (folder / name).read_bytes(), (folder / collateral).read_text())


def public_case(data_set: str, name: str, collateral: str) -> PublicQuote:
    """A case of PUBLIC_CASES; PCS responses are assembled into a collateral file (the PCK CRL
    issuer chain is the quote's own PCK chain above the leaf)."""
    if data_set == PUBLIC_SET:
        return public_quote(name, collateral)
    folder = require(data_set, name, collateral, *PCS_FILES)
    quote = (folder / name).read_bytes()
    issuers = "".join(
        c.public_bytes(Encoding.PEM).decode() for c in parse_quote(quote).pck_chain[1:]
    )
    assembled = Collateral.from_pcs_responses(
        tcb_info_response=(folder / collateral).read_text(),
        qe_identity_response=(folder / "td_qe_identity.json").read_text(),
        tcb_info_issuer_chain=(folder / "tcb_signing_chain.pem").read_text(),
        pck_crl=(folder / "pck_crl_platform.der").read_bytes(),
        pck_crl_issuer_chain=issuers,
        root_ca_crl=(folder / "root_ca_crl.der").read_bytes(),
    )
    return _judged(name, quote, assembled.to_json())


def chain_only_quote(name: str) -> bytes:
    return (require(PCS_SET, name) / name).read_bytes()


def _judged(name: str, quote: bytes, text: str) -> PublicQuote:
    issued = Collateral.from_json(text).tcb_info.issue_date
    return PublicQuote(name, quote, text, issued + datetime.timedelta(hours=1))


def as_intel_vendor(quote: bytes, attestation_key: ec.EllipticCurvePrivateKey) -> bytes:
    """`quote` with Intel's QE vendor ID in the header, re-signed by its attestation key."""
    parsed = parse_quote(quote)
    end = parsed.signed_size
    signed = quote[:VENDOR_AT] + INTEL_QE_VENDOR_ID + quote[VENDOR_AT + 16 : end]
    r, s = decode_dss_signature(attestation_key.sign(signed, ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return signed + quote[end : end + 4] + signature + quote[end + 4 + 64 :]


def dcap_verdict(
    quote: bytes, collateral_json: str, at: datetime.datetime, root_der: bytes | None = None
) -> tuple[str, list[str]] | str:
    """dcap-qvl's (status, advisory IDs), or its error text when it refuses the quote."""
    collateral = dcap_qvl.QuoteCollateralV3.from_json(collateral_json)
    now = int(at.timestamp())
    try:
        if root_der is None:
            report = dcap_qvl.verify(quote, collateral, now)
        else:
            report = dcap_qvl.verify_with_root_ca(quote, collateral, root_der, now)
    except ValueError as exc:
        return str(exc)
    return report.status, list(report.advisory_ids)
