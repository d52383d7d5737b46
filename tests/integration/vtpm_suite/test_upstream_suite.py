"""tpm2-pytss 3.0.0's own test suite against `vtpm serve`, compared with the same suite on swtpm.

The sdist is fetched at test time (only when this runs) into ~/.cache/tdpvtpm. The suite runs
twice in subprocesses: once through our plugin (one `vtpm serve --wipe-on-power-cycle`,
power-cycled per test), once unchanged (a fresh swtpm per test). Every test that passes on swtpm
must pass on ours.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SUITE_VERSION = "3.0.0"
CACHE_DIR = Path(os.environ.get("TDPVTPM_CACHE", Path.home() / ".cache" / "tdpvtpm"))
SDIST = f"tpm2_pytss-{SUITE_VERSION}.tar.gz"
PLUGIN = "tests.integration.vtpm_suite.plugin"
SUITE_TIMEOUT = 1500

pytestmark = pytest.mark.tpm_suite


def fetch_suite() -> Path:
    """Download and unpack the tpm2-pytss sdist once; return the unpacked root."""
    root = CACHE_DIR / f"tpm2_pytss-{SUITE_VERSION}"
    if (root / "test" / "TSS2_BaseTest.py").is_file():
        return root
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    if not (CACHE_DIR / SDIST).is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                "tpm2-pytss",
                f"tpm2-pytss=={SUITE_VERSION}",
                "-d",
                str(CACHE_DIR),
            ],
            check=True,
            timeout=300,
        )
    with tarfile.open(CACHE_DIR / SDIST) as tar:
        tar.extractall(CACHE_DIR, filter="data")
    return root


def run_suite(root: Path, workdir: Path, *, ours: bool) -> dict[str, str]:
    """Run the suite's test/ folder; return {test id: passed|failed|skipped}."""
    name = "vtpm" if ours else "swtpm"
    junit = workdir / f"{name}.xml"
    ini = workdir / "pytest.ini"
    ini.write_text("[pytest]\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) if ours else ""
    env["VTPM_SUITE_ROOT"] = str(root)
    env["VTPM_SUITE_TARGET"] = os.environ.get("TDP_TPM_SUITE_VTPM", "direct")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-c",
        str(ini),
        "--rootdir",
        str(root),
        f"--junitxml={junit}",
        "test",
    ]
    if ours:
        cmd[3:3] = ["-p", PLUGIN]
    proc = subprocess.run(
        cmd, cwd=root, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT
    )
    (workdir / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if not junit.is_file():
        raise AssertionError(
            f"{name} run produced no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return outcomes(junit)


def outcomes(junit: Path) -> dict[str, str]:
    """Per-test outcome from a JUnit XML report."""
    result: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            result[test_id] = "failed"
        elif case.find("skipped") is not None:
            result[test_id] = "skipped"
        else:
            result[test_id] = "passed"
    return result


def _count(results: dict[str, str]) -> str:
    return ", ".join(
        f"{k} {list(results.values()).count(k)}" for k in ("passed", "failed", "skipped")
    )


@pytest.mark.timeout(2 * SUITE_TIMEOUT + 600)
def test_upstream_suite_passes_wherever_swtpm_does(tmp_path: Path) -> None:
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm is not installed: nothing to compare against")
    root = fetch_suite()
    ours = run_suite(root, tmp_path, ours=True)
    theirs = run_suite(root, tmp_path, ours=False)
    regressions = sorted(t for t, o in theirs.items() if o == "passed" and ours.get(t) != "passed")
    target = "the L2 path" if os.environ.get("TDP_TPM_SUITE_VTPM") == "l2" else "vtpm serve"
    print(f"\nupstream tpm2-pytss {SUITE_VERSION} suite on {target}: {_count(ours)}")
    print(f"upstream tpm2-pytss {SUITE_VERSION} suite on swtpm:      {_count(theirs)}")
    print("pass on swtpm, not on vtpm:", ", ".join(regressions) or "none")
    assert sum(o == "passed" for o in ours.values()) > 0, "nothing ran against vtpm serve"
    assert not regressions, f"{len(regressions)} tests pass on swtpm but not on vtpm: {regressions}"
