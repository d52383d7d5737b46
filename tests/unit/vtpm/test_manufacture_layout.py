"""Manufacture constants against the reference's NV layout (tdx-partitioning-abi.md 6.1)."""

from __future__ import annotations

import pytest

from vtpm import manufacture


def test_nv_certificate_attributes_match_reference_list() -> None:
    # TPMA_NV bit positions (TPM 2.0 Part 2, 13.4): PPWRITE 0, WRITEDEFINE 13, PPREAD 16,
    # OWNERREAD 17, AUTHREAD 18, NO_DA 25, PLATFORMCREATE 30.
    expected = sum(1 << bit for bit in (0, 13, 16, 17, 18, 25, 30))
    assert expected == manufacture.NV_CERT_ATTRIBUTES


def test_ek_certificate_indices() -> None:
    assert manufacture.EK_KIND_TABLE["rsa"].nv_index == 0x01C00002
    assert manufacture.EK_KIND_TABLE["ecc"].nv_index == 0x01C0000A
    assert manufacture.EK_KIND_TABLE["rsa"].template_name == "L-1"
    assert manufacture.EK_KIND_TABLE["ecc"].template_name == "L-2"


def test_chain_chunks_split_at_index_max() -> None:
    der = bytes(range(256)) * 18  # 4608 bytes
    chunks = manufacture.chain_chunks(der, 2048)
    assert [index for index, _ in chunks] == [0x01C00100, 0x01C00101, 0x01C00102]
    assert [len(c) for _, c in chunks] == [2048, 2048, 512]
    assert b"".join(c for _, c in chunks) == der


def test_chain_chunks_refuse_to_leave_the_chain_range() -> None:
    with pytest.raises(manufacture.ManufactureError, match="overflows the chain NV range"):
        manufacture.chain_chunks(bytes(257 * 16), 16)
