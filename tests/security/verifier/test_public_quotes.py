"""Public Intel TDX quotes (v4 and v5) with their PCK chains and collateral: verified against
Intel's SGX Root CA, rejected against the simulated root, and every single-byte flip of the
signed region (header, v5 body descriptor, body) rejected with a named error."""

from __future__ import annotations

import pytest

from tdxdefs.quote import QuoteHeader, TdQuoteBody15Ex
from verifier.chain import UntrustedRootError
from verifier.errors import VerificationError
from verifier.quote import (
    QuoteParseError,
    QuoteSignatureError,
    parse_quote,
    verify_quote,
)
from verifier.trust_anchors import intel_sgx_root_ca, simulated_root

from ...support.dcap import (
    CHAIN_ONLY,
    CHAIN_ONLY_AT,
    PUBLIC_CASES,
    PUBLIC_QUOTES,
    chain_only_quote,
    public_case,
    public_quote,
)

PARSED_HEADER_END = QuoteHeader.offset("qe_svn")  # version, key type, TEE type are checked first
V5_DESCRIPTOR = range(48, 54)


@pytest.mark.parametrize(("name", "collateral"), PUBLIC_QUOTES)
def test_verified_against_intel_root_rejected_against_simulated(name: str, collateral: str) -> None:
    data = public_quote(name, collateral)
    parsed = verify_quote(data.quote, intel_sgx_root_ca(), at=data.at)
    assert parsed.version in (4, 5)
    assert parsed.pck_chain[-1].subject.rfc4514_string().endswith("CN=Intel SGX Root CA")
    with pytest.raises(UntrustedRootError, match="Intel SGX Root CA"):
        verify_quote(data.quote, simulated_root(), at=data.at)


def test_both_quote_versions_and_trailing_bytes_are_present() -> None:
    v4, v5, v5_extended = (public_quote(*pair) for pair in PUBLIC_QUOTES)
    assert parse_quote(v4.quote).version == 4 and parse_quote(v5.quote).version == 5
    extended = parse_quote(v5_extended.quote)
    assert extended.version == 5 and isinstance(extended.body, TdQuoteBody15Ex)
    assert extended.body.vm_index == 0  # the L1 (or an unpartitioned TD) asked for this report
    padded = parse_quote(v4.quote)
    assert len(padded.trailing) == 70 and padded.trailing_offset == len(v4.quote) - 70
    live = parse_quote(chain_only_quote("tdx_quote_live.dat"))
    assert live.trailing == bytes(307)


@pytest.mark.parametrize(
    ("data_set", "name", "collateral"),
    [*PUBLIC_CASES, *(("attestation-rs-tdx", n, "") for n in CHAIN_ONLY)],
)
def test_every_byte_flip_in_the_signed_region_is_rejected(
    data_set: str, name: str, collateral: str
) -> None:
    if collateral:
        data = public_case(data_set, name, collateral)
        quote, at = data.quote, data.at
    else:
        quote, at = chain_only_quote(name), CHAIN_ONLY_AT
    root = intel_sgx_root_ca()
    verify_quote(quote, root, at=at)
    parsed = parse_quote(quote)
    descriptor = V5_DESCRIPTOR if parsed.version == 5 else range(0)
    for offset in range(parsed.signed_size):
        flipped = bytearray(quote)
        flipped[offset] ^= 0x01
        with pytest.raises(VerificationError) as err:
            verify_quote(bytes(flipped), root, at=at)
        if offset < PARSED_HEADER_END or offset in descriptor:
            assert isinstance(err.value, QuoteParseError), (offset, err.value)
            assert err.value.field.startswith(("header.", "body_descriptor.", "signature")), (
                offset,
                err.value.field,
            )
        else:
            assert isinstance(err.value, QuoteSignatureError), (offset, err.value)
            assert f"bytes 0..{parsed.signed_size - 1}" in str(err.value)
