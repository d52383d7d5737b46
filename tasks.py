"""Invoke tasks: thin wrappers that parse arguments and call into the project's packages.

Run them through `./tdp TASK` (bootstraps first) or `.venv/bin/invoke TASK`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

ROOT = Path(__file__).resolve().parent
PYTHON = sys.executable
PACKAGES = ("igvm", "vtpm", "tdxsim", "svsm", "orchestrator", "verifier")
BENCH_DIR = ROOT / "tests" / "benchmarks"
DEFAULT_IMAGE = ROOT / "out" / "tdp.igvm"
TEST_RECIPE = ROOT / "igvm" / "recipes" / "test-image.yaml"


def _not_yet(task_name: str, needs: str) -> None:
    """Fail plainly for a task whose part does not exist yet; never pretend."""
    raise Exit(f"invoke {task_name}: not available yet: it needs {needs}.", code=2)


def _run(cmd: list[str], **env: str) -> int:
    """Run a command from the project root with the venv's tools first on PATH."""
    full_env = dict(os.environ)
    full_env["PATH"] = f"{Path(PYTHON).parent}{os.pathsep}{full_env.get('PATH', '')}"
    full_env.update(env)
    return subprocess.call(cmd, cwd=ROOT, env=full_env)


@task
def setup(c: Context) -> None:
    """Install what is missing (Debian packages, .venv, pinned packages) and print versions."""
    code = _run(["bash", str(ROOT / "scripts" / "bootstrap.sh")], TDP_VERBOSE="1")
    if code:
        raise Exit(code=code)
    from importlib.metadata import version

    for dist in ("invoke", "cryptography", "tpm2-pytss", "unicorn", "paramiko", "pyyaml"):
        print(f"{dist:14} {version(dist)}")
    from vtpm.fastpath import FastPath

    fastpath, why_not = FastPath.load()
    print(f"{'vtpm fastpath':14} {fastpath.library if fastpath else 'missing: ' + why_not}")


@task(
    help={
        "recipe": "YAML image recipe (default: igvm/recipes/test-image.yaml)",
        "output": f"where to write the IGVM file (default: {DEFAULT_IMAGE.relative_to(ROOT)})",
    }
)
def build(c: Context, recipe: str = "", output: str = str(DEFAULT_IMAGE)) -> None:
    """Build an IGVM image from a recipe and print its MRTD."""
    if not recipe:
        print(
            "invoke build: the paravisor image needs svsm and l2-firmware, not built yet; "
            f"building the test recipe {TEST_RECIPE.relative_to(ROOT)}"
        )
        recipe = str(TEST_RECIPE)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    code = _run([PYTHON, "-m", "igvm", "build", recipe, "-o", output])
    if code:
        raise Exit(code=code)


@task(
    help={"recipe": "YAML image recipe with an L1 image (default: orchestrator/recipes/tdp.yaml)"}
)
def run(c: Context, recipe: str = "") -> None:
    """Build the image, boot the TD on the embedded simulator and show the vTPM working."""
    from orchestrator.boot import main

    code = main(recipe=recipe, image=str(DEFAULT_IMAGE))
    if code:
        raise Exit(code=code)


@task(
    help={
        "slow": "also run tests marked slow",
        "tpm_suite": "run tpm2-pytss's own upstream test suite against our vTPM",
        "k": "only tests matching this pytest -k expression",
        "path": "test path(s) under tests/, comma-separated (default: all)",
    }
)
def test(
    c: Context, slow: bool = False, tpm_suite: bool = False, k: str = "", path: str = ""
) -> None:
    """Run the test suite with pytest (unit, integration, security)."""
    cmd = [PYTHON, "-m", "pytest"]
    cmd += [p.strip() for p in path.split(",") if p.strip()]
    if tpm_suite:
        cmd += ["-m", "tpm_suite"]
    elif slow:
        cmd += ["-m", "not tpm_suite"]
    if k:
        cmd += ["-k", k]
    code = _run(cmd)
    if code:
        raise Exit(code=code)


@task(help={"only": "run one check: ruff, format, mypy or imports"})
def lint(c: Context, only: str = "") -> None:
    """ruff, ruff format --check, mypy --strict on the packages, and the layering contracts."""
    checks = {
        "ruff": [PYTHON, "-m", "ruff", "check", "."],
        "format": [PYTHON, "-m", "ruff", "format", "--check", "."],
        "mypy": [PYTHON, "-m", "mypy"],
        "imports": [str(Path(PYTHON).parent / "lint-imports"), "--no-cache", "--no-logo"],
    }
    if only and only not in checks:
        raise Exit(f"invoke lint: unknown check {only!r}; choose from {', '.join(checks)}", code=2)
    failed = []
    for name, cmd in checks.items():
        if only and name != only:
            continue
        print(f"== lint: {name}", flush=True)
        if _run(cmd):
            failed.append(name)
    if failed:
        raise Exit(f"invoke lint: failed: {', '.join(failed)}", code=1)


@task(
    help={
        "only": "run only benchmarks whose name contains this (e.g. igvm, vtpm, tdxsim)",
        "quick": "smaller workloads, for a smoke run",
    }
)
def bench(c: Context, only: str = "", quick: bool = False) -> None:
    """Run the benchmarks and print medians and ratios measured side by side."""
    scripts = sorted(p for p in BENCH_DIR.glob("bench_*.py") if only in p.stem)
    if not scripts:
        raise Exit(f"invoke bench: no benchmark matches {only!r} in {BENCH_DIR}", code=2)
    failed = []
    for script in scripts:
        print(f"== bench: {script.stem}", flush=True)
        if _run([PYTHON, str(script), *(["--quick"] if quick else [])]):
            failed.append(script.stem)
    if failed:
        raise Exit(f"invoke bench: failed: {', '.join(failed)}", code=1)


@task
def attest(c: Context) -> None:
    """Verify the combined attestation chain of a running TD (quote, CA, EK, TPM quote)."""
    _not_yet("attest", "the verifier's combined attestation and a running TD")


@task
def remote(c: Context) -> None:
    """Run the test suite on remote TDX hosts over SSH."""
    _not_yet("remote", "the orchestrator's SSH backend")
