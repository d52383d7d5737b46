"""The layering contracts of DESIGN.md hold, and `invoke lint` fails when one is broken."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tdxdefs", "igvm", "vtpm", "tdxsim", "svsm", "orchestrator", "verifier")
INVOKE = Path(sys.executable).parent / "invoke"
TDXSIM_LAYERS = "tdxsim layers: the host side above attestation above the module model"


def _copy_tree(dest: Path) -> None:
    for name in ("pyproject.toml", "tasks.py"):
        shutil.copy2(ROOT / name, dest / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INVOKE), "lint", "--only", "imports"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_project_tree_keeps_every_contract(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    result = _lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("importer", "imported", "contract"),
    [
        ("svsm", "tdxsim", "svsm (L1) never reaches the simulated platform"),
        ("tdxsim", "svsm", "tdxsim never imports the paravisor or the vTPM"),
        ("tdxsim.module", "tdxsim.host", TDXSIM_LAYERS),
        ("tdxsim.attestation", "tdxsim.host.vmm", TDXSIM_LAYERS),
        ("tdxdefs", "svsm", "tdxdefs imports nothing of the project"),
        ("tdxdefs", "tdxsim", "tdxdefs imports nothing of the project"),
    ],
)
def test_deliberate_cross_import_fails_lint(
    tmp_path: Path, importer: str, imported: str, contract: str
) -> None:
    _copy_tree(tmp_path)
    (tmp_path / importer.replace(".", "/") / "_deliberate_violation.py").write_text(
        f"import {imported}\n"
    )
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout
    assert f"{importer}._deliberate_violation -> {imported}" in result.stdout


def test_unformatted_code_fails_lint(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    (tmp_path / "igvm" / "_unformatted.py").write_text("x = {  'a':1 }\n")
    result = subprocess.run(
        [str(INVOKE), "lint", "--only", "format"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "_unformatted.py" in result.stdout + result.stderr
    assert "failed: format" in result.stdout + result.stderr
