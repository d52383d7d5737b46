"""`invoke run --faults SPEC`: the host VMM of the local boot lies as told, and every failure of
the run prints a reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.boot import reason
from orchestrator.errors import LocalBootError

ROOT = Path(__file__).resolve().parents[3]
INVOKE = Path(sys.executable).parent / "invoke"
STEP_3 = "step 3 (L1 (svsm) boots from the measured image"


def _main(*args: str) -> subprocess.CompletedProcess[str]:
    # A subprocess: libtpms allows one TPM per process and other tests hold one.
    code = "import sys; from orchestrator.boot import main; sys.exit(main(*sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_l1_survives_a_host_that_storms_interrupts_and_stalls_mapgpa(tmp_path: Path) -> None:
    spec = "irq-storm=50,irq-spurious=0x30,mapgpa-retry=3"
    result = _main("", str(tmp_path / "t.igvm"), spec)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith(
        "host faults on: mapgpa-retry=3,irq-spurious=48,irq-storm=50 (the untrusted host lies"
    )
    assert "quote MRTD equals the image's offline MRTD" in out
    assert "quotes are SIMULATED" in out


def test_a_host_whose_calls_all_say_retry_fails_the_l1_step_with_its_reason(
    tmp_path: Path,
) -> None:
    result = _main("", str(tmp_path / "t.igvm"), "vmcall-status=retry")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"run: {STEP_3}")
    expected = "L1 run failed: svsm.tdcall.TdcallError: TDG.VP.VMCALL IO failed: R10 = RETRY (0x1)"
    assert line.endswith(expected)
    assert "[4]" not in result.stdout


def test_a_bad_fault_spec_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = _main("", str(tmp_path / "t.igvm"), "irq-storm=lots")
    assert result.returncode == 2
    assert result.stderr == (
        "run: --faults: FaultSpecError: fault switch irq-storm: 'lots' is not a number\n"
    )
    assert not (tmp_path / "t.igvm").exists()


def test_invoke_run_passes_faults_to_the_boot() -> None:
    result = subprocess.run(
        [str(INVOKE), "run", "--faults", "no-such-switch=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert result.returncode == 2
    assert "run: --faults: FaultSpecError: " in result.stderr
    assert "no-such-switch" in result.stderr


def test_a_recipe_input_that_is_a_fifo_fails_step_1_with_a_reason(tmp_path: Path) -> None:
    fifo = tmp_path / "blob"
    os.mkfifo(fifo)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("components:\n  - {name: a, kind: blob, gpa: 0x100000, file: blob}\n")
    result = _main(str(recipe), str(tmp_path / "t.igvm"))
    assert result.returncode == 1
    assert f"{fifo}: is a FIFO, not a regular file" in result.stderr
    assert "step 1 (build the L1 image and the IGVM image from r.yaml) failed: " in result.stderr


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (MemoryError(), "MemoryError (no message)"),
        (KeyError("x"), "KeyError: 'x'"),
        (LocalBootError("step 2 failed: why"), "step 2 failed: why"),
        (LocalBootError(""), "LocalBootError (no message)"),
        (OSError(5, "Input/output error"), "OSError: [Errno 5] Input/output error"),
    ],
)
def test_a_reason_is_never_empty(exc: BaseException, text: str) -> None:
    assert reason(exc) == text
