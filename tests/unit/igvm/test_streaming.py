"""Measuring a file streams it: peak memory stays far below the file size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from igvm.format import IgvmFile
from igvm.headers import PAGE_SIZE, PageData
from igvm.measure import mrtd
from tests.support.igvm_files import tdx_platform

ROOT = Path(__file__).resolve().parents[3]
PAGES = 24 * 1024  # 96 MiB of page data
MAX_GROWTH_KIB = 32 * 1024

CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from igvm.measure import mrtd

def peak_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise SystemExit("no VmHWM")

before = peak_kib()
digest = mrtd(sys.argv[2])
print(peak_kib() - before, digest.hex())
"""


def test_measuring_a_96_mib_file_grows_memory_by_less_than_32_mib(tmp_path: Path) -> None:
    image = IgvmFile(
        [tdx_platform()],
        [],
        [
            PageData(n * PAGE_SIZE, 1, data=n.to_bytes(4, "little") * (PAGE_SIZE // 4))
            for n in range(PAGES)
        ],
    )
    path = tmp_path / "large.igvm"
    path.write_bytes(image.to_bytes())
    assert path.stat().st_size > PAGES * PAGE_SIZE
    expected = mrtd(image)
    del image
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    growth_kib, digest = result.stdout.split()
    assert digest == expected.hex()
    assert int(growth_kib) < MAX_GROWTH_KIB, f"measure grew memory by {growth_kib} KiB"
