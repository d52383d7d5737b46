"""The harness behaves as its docstring promises (the example runs as written)."""

from __future__ import annotations

import textwrap

import pytest

import tdxsim.testing
from tdxdefs.tdcall import TDX_SUCCESS, Leaf
from tdxsim.testing import PendingPageAccess, TdcallFailed, TdHarness, UnmappedPageAccess


def test_docstring_example_runs() -> None:
    doc = tdxsim.testing.__doc__ or ""
    start = doc.index("::") + 2
    end = doc.index("`TdHarness.from_igvm")
    exec(compile(textwrap.dedent(doc[start:end]), "tdxsim.testing docstring", "exec"), {})


def test_l1_memory_refuses_pending_and_absent_pages() -> None:
    h = TdHarness.default(ram_mib=4)
    with pytest.raises(PendingPageAccess, match="0x1ff8"):
        h.write(0x1FF8, b"x" * 16)
    with pytest.raises(UnmappedPageAccess, match="0x800000"):
        h.read(0x800000, 1)
    h.accept(0, 0x200000)
    h.write(0x1FF8, b"x" * 16)
    assert h.read(0x1FF8, 16) == b"x" * 16


def test_ok_raises_with_leaf_and_status() -> None:
    h = TdHarness.default(ram_mib=4)
    assert h.ok(Leaf.VP_INFO).rax == TDX_SUCCESS
    with pytest.raises(TdcallFailed, match="0xc000010000000001"):
        h.ok(Leaf.MR_RTMR_EXTEND, rcx=0x10)


def test_accept_inside_2m_mapping_is_refused_clearly() -> None:
    h = TdHarness.default(ram_mib=4)
    with pytest.raises(TdcallFailed, match="2M base"):
        h.accept(0x1000, 0x1000)
