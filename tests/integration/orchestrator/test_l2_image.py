"""`invoke build` builds the product and `invoke run --l2-image FILE` boots a user's own L2 code
under the L2 contract: its console in the host log, its exit code printed and in the status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tdxsim.testing import assemble

ROOT = Path(__file__).resolve().parents[3]
SAY_AND_EXIT = """
    lea rsi, [rip + text]
    mov dx, 0x3f8
1:  lodsb
    test al, al
    jz 2f
    out dx, al
    jmp 1b
2:  mov al, {code}
    out 0xf4, al
    hlt
text: .asciz "hello from a user's L2\\n"
"""


def run_with(image: Path, igvm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys; from orchestrator.boot import main\n"
        f"sys.exit(main(image={str(igvm)!r}, l2_image={str(image)!r}, {', '.join(args)}))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_users_image_runs_and_its_exit_code_decides(tmp_path: Path) -> None:
    for exit_code, status in ((0, 0), (3, 1)):
        user = tmp_path / f"user{exit_code}.bin"
        user.write_bytes(assemble(SAY_AND_EXIT.format(code=exit_code)))
        result = run_with(user, tmp_path / "u.igvm", "l2_count=2")
        assert result.returncode == status, result.stdout + result.stderr
        assert "L1| L2[1]| hello from a user's L2" in result.stdout
        assert "L1| L2[2]| hello from a user's L2" in result.stdout
        assert f"L2 1 exited with code {exit_code}" in result.stdout
        assert f"L2 2 exited with code {exit_code}" in result.stdout
        if status:
            assert "not every L2 ended with code 0: L2 1: exit code 3" in result.stderr


def test_a_faulting_users_image_is_reported_not_a_traceback(tmp_path: Path) -> None:
    user = tmp_path / "bad.bin"
    user.write_bytes(assemble("mov rax, qword ptr [0x100000]\nmov al, 0\nout 0xf4, al"))
    result = run_with(user, tmp_path / "b.igvm")
    assert result.returncode == 1
    assert "refused at RIP 0x1600000: read at GPA 0x100000" in result.stdout
    assert "L2 1 stopped: unhandled TRIPLE_FAULT exit" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_missing_or_oversized_image_is_refused_by_name(tmp_path: Path) -> None:
    result = run_with(tmp_path / "nope.bin", tmp_path / "n.igvm")
    assert result.returncode == 1 and "--l2-image" in result.stderr and "nope.bin" in result.stderr
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(2 << 20))
    result = run_with(big, tmp_path / "n.igvm")
    assert result.returncode == 1 and "1 to 1048576 allowed" in result.stderr


def test_build_is_the_product_and_reproducible(tmp_path: Path) -> None:
    invoke = Path(sys.executable).parent / "invoke"
    outputs = []
    for name in ("a.igvm", "b.igvm"):
        done = subprocess.run(
            [str(invoke), "build", "--output", str(tmp_path / name)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "l2-firmware, built by gcc" in done.stdout
        outputs.append(done.stdout.strip().splitlines()[-1].split("MRTD ")[1])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 96
    assert (tmp_path / "a.igvm").read_bytes() == (tmp_path / "b.igvm").read_bytes()
