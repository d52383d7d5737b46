"""A TD built from an IGVM file: directive order, MRTD equal to the offline measurement."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from igvm import format as igvm_format
from igvm import headers, measure
from tdxsim.host.igvm_loader import IgvmLoadError
from tdxsim.host.shared_memory import HostAccessDenied, SharedMemory
from tdxsim.module.build import BuildError
from tdxsim.module.memory import PageState
from tdxsim.testing import TdHarness

TDX_MASK, SNP_MASK = 1, 2
CODE_GPA, UNMEASURED_GPA, SHARED_GPA, SNP_ONLY_GPA = 0x100000, 0x101000, 0x102000, 0x103000
PARAM_GPA, MAP_GPA = 0x200000, 0x201000
ROOT = Path(__file__).resolve().parents[3]


def image(code: bytes = b"\x90" * 100 + b"\xf4") -> igvm_format.IgvmFile:
    return igvm_format.IgvmFile(
        platforms=[
            headers.SupportedPlatform(TDX_MASK, 0, 3, 1, 1 << 47),
            headers.SupportedPlatform(SNP_MASK, 0, 2, 1, 0),
        ],
        directives=[
            headers.ParameterArea(0x1000, 0),
            headers.ParameterArea(0x1000, 1),
            headers.PageData(CODE_GPA, TDX_MASK, data=code),
            headers.PageData(UNMEASURED_GPA, TDX_MASK, flags=2, data=b"config"),
            headers.PageData(SHARED_GPA, TDX_MASK, flags=4),
            headers.PageData(SNP_ONLY_GPA, SNP_MASK, data=b"snp only"),
            headers.VpCount(0, 0),
            headers.MemoryMap(1, 0),
            headers.ParameterInsert(PARAM_GPA, TDX_MASK, 0),
            headers.ParameterInsert(MAP_GPA, TDX_MASK, 1),
        ],
    )


@pytest.fixture
def igvm_path(tmp_path: Path) -> Path:
    path = tmp_path / "td.igvm"
    path.write_bytes(image().to_bytes())
    return path


def test_mrtd_equals_offline_measurement(igvm_path: Path) -> None:
    h = TdHarness.from_igvm(igvm_path, vcpus=2)
    assert h.td.mrtd == measure.mrtd(igvm_path)
    assert h.td.mrtd != hashlib.sha384().digest()


def test_mrtd_equals_igvm_cli(igvm_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "igvm", "measure", str(igvm_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    h = TdHarness.from_igvm(igvm_path)
    assert h.td.mrtd.hex() in out.stdout


def test_directives_replayed_in_order(igvm_path: Path) -> None:
    h = TdHarness.from_igvm(igvm_path, vcpus=2)
    mem = h.memory
    assert mem.page_state(CODE_GPA) == PageState.MAPPED
    assert h.read(CODE_GPA, 101) == b"\x90" * 100 + b"\xf4"
    assert h.read(UNMEASURED_GPA, 6) == b"config"
    assert mem.page_state(SHARED_GPA) == PageState.NOT_PRESENT  # shared: never PAGE.ADDed
    assert h.read(SHARED_GPA | (1 << 47), 8) == bytes(8)  # but mapped for the host
    assert mem.page_state(SNP_ONLY_GPA) == PageState.PENDING  # other platform: skipped
    assert h.read(PARAM_GPA, 4) == (2).to_bytes(4, "little")  # VP count
    first_entry = h.read(MAP_GPA, 24)
    assert int.from_bytes(first_entry[8:16], "little") == (64 << 20) // 4096
    assert mem.page_state(0x300000) == PageState.PENDING  # the rest of RAM waits for ACCEPT
    assert len(h.td.vcpus) == 2


def test_shared_page_data_is_open_to_the_host_view(igvm_path: Path) -> None:
    h = TdHarness.from_igvm(igvm_path)
    host = SharedMemory.of_memory(h.memory)
    try:
        assert host.is_mapped(SHARED_GPA | (1 << 47))
        host.write(SHARED_GPA | (1 << 47), b"from the host")
        assert h.read(SHARED_GPA | (1 << 47), 13) == b"from the host"
        with pytest.raises(HostAccessDenied, match="not converted to shared"):
            host.read(CODE_GPA | (1 << 47), 1)  # a measured private page stays closed
    finally:
        host.close()


def test_changed_page_changes_mrtd(tmp_path: Path, igvm_path: Path) -> None:
    other = tmp_path / "other.igvm"
    other.write_bytes(image(b"\x90" * 99 + b"\xcc\xf4").to_bytes())
    assert TdHarness.from_igvm(other).td.mrtd != TdHarness.from_igvm(igvm_path).td.mrtd


def test_file_without_tdx_platform_is_refused(tmp_path: Path) -> None:
    f = image()
    f.platforms = [headers.SupportedPlatform(SNP_MASK, 0, 2, 1, 0)]
    f.directives = [
        d for d in f.directives if getattr(d, "compatibility_mask", SNP_MASK) == SNP_MASK
    ]
    path = tmp_path / "snp.igvm"
    path.write_bytes(f.to_bytes())
    with pytest.raises(IgvmLoadError, match="no TDX"):
        TdHarness.from_igvm(path)


def test_page_outside_ram_is_a_build_error(tmp_path: Path, igvm_path: Path) -> None:
    with pytest.raises(BuildError, match="0x100000"):
        TdHarness.from_igvm(igvm_path, ram=[(0, 0x100000)])
