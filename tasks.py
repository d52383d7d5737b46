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
PACKAGES = ("tdxdefs", "igvm", "vtpm", "tdxsim", "svsm", "orchestrator", "verifier")
BENCH_DIR = ROOT / "tests" / "benchmarks"
DEFAULT_IMAGE = ROOT / "out" / "tdp.igvm"


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
    from tdxsim.l2.exit_hook import library_status

    print(f"{'l2 exit hook':14} {library_status()}")


@task(
    help={
        "recipe": "build this YAML image recipe instead of the product (e.g. "
        "igvm/recipes/test-image.yaml)",
        "output": f"where to write the IGVM file (default: {DEFAULT_IMAGE.relative_to(ROOT)})",
        "l2-image": "a user's flat x86-64 L2 binary instead of l2-firmware",
    }
)
def build(
    c: Context, recipe: str = "", output: str = str(DEFAULT_IMAGE), l2_image: str = ""
) -> None:
    """Build the product image (l2-firmware by gcc, the L1 image, the IGVM) and print its MRTD."""
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    if recipe:
        code = _run([PYTHON, "-m", "igvm", "build", recipe, "-o", output])
        if code:
            raise Exit(code=code)
        return
    from orchestrator.boot import build_product
    from orchestrator.errors import OrchestratorError

    try:
        build_product(Path(output), l2_image=Path(l2_image) if l2_image else None)
    except (OrchestratorError, OSError, ValueError) as exc:
        raise Exit(f"invoke build: {exc}", code=1) from exc


@task(
    help={
        "recipe": "YAML image recipe with an L1 image (default: orchestrator/recipes/tdp.yaml)",
        "faults": "make the untrusted host lie, e.g. getquote-status=error,irq-storm=100 "
        "(switches in tdxsim/host/faults.py)",
        "l2-count": "how many L2 guests the TD has and L1 boots (1 to 3; default 1)",
        "l2-image": "boot this flat x86-64 binary in every L2 instead of l2-firmware "
        "(the contract is in l2-firmware/README.md)",
        "show-aliases": "print L1's GPA x VM page-alias permission map",
        "serve": "after booting, serve an L2's vTPM on loopback (swtpm and mssim TCTIs) until "
        "SIGINT or SIGTERM",
        "port": "--serve: the command port (platform port is port + 1; default: a free pair)",
        "dev-platform-port": "--serve: accept platform power cycles on port + 1 (recorded by L1)",
        "l2": "--serve: which L2's vTPM to serve (default 1)",
        "timeline": "--serve: record when each TPM command passes each process in this "
        "directory and print per-step medians at the end (python -m orchestrator.timeline DIR)",
    }
)
def run(
    c: Context,
    recipe: str = "",
    faults: str = "",
    l2_count: int = 1,
    l2_image: str = "",
    show_aliases: bool = False,
    serve: bool = False,
    port: int = 0,
    dev_platform_port: bool = False,
    l2: int = 1,
    timeline: str = "",
) -> None:
    """Build the image, boot the TD on the embedded simulator: L1, its vTPM, and the L2 guests."""
    if timeline and not serve:
        raise Exit("invoke run: --timeline records a --serve run; add --serve", code=2)
    if serve:
        from orchestrator import serve as serving

        code = serving.main(port, dev_platform_port, l2, l2_count, recipe=recipe, timeline=timeline)
        if code:
            raise Exit(code=code)
        return
    from orchestrator.boot import main

    code = main(
        recipe=recipe,
        image=str(DEFAULT_IMAGE),
        faults=faults,
        l2_count=l2_count,
        l2_image=l2_image,
        show_aliases=show_aliases,
    )
    if code:
        raise Exit(code=code)


@task(
    help={
        "slow": "also run tests marked slow",
        "tpm_suite": "run tpm2-pytss's own upstream test suite against our vTPM",
        "vtpm": "with --tpm-suite: direct (vtpm serve, the default) or l2 (the L1 vTPM through "
        "the host relay and an L2: invoke run --serve --dev-platform-port)",
        "k": "only tests matching this pytest -k expression",
        "path": "test path(s) under tests/, comma-separated (default: all)",
    }
)
def test(
    c: Context,
    slow: bool = False,
    tpm_suite: bool = False,
    k: str = "",
    path: str = "",
    vtpm: str = "direct",
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
    if vtpm not in ("direct", "l2"):
        raise Exit(f"invoke test: --vtpm {vtpm!r}: choose direct or l2", code=2)
    if not tpm_suite:
        _run([PYTHON, "-m", "tests.support.registry_data"])  # a set it cannot fetch is skipped
    code = _run(cmd, TDP_TPM_SUITE_VTPM=vtpm)
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


@task(
    help={
        "port": "the command port `invoke run --serve` printed (mssim on 127.0.0.1)",
        "tcti": "a TCTI string instead of --port (e.g. swtpm:host=127.0.0.1,port=2321)",
        "image": "the IGVM image the TD was built from (default: out/tdp.igvm)",
        "json": "print the report as JSON",
        "root": "the quote's root: simulated (default: tdxsim's), intel, or a PEM/DER file",
        "dev-platform-port": "the TD was served with --dev-platform-port (in RTMR0 and RTMR3)",
    }
)
def attest(
    c: Context,
    port: int = 0,
    tcti: str = "",
    image: str = "",
    json: bool = False,
    root: str = "simulated",
    dev_platform_port: bool = False,
) -> None:
    """Attest a running `invoke run --serve` end to end: TD quote, CA, EKs, AK, TPM2_Quote, PCRs."""
    from orchestrator.attest import main

    code = main(port, tcti, image, json, root, dev_platform_port)
    if code:
        raise Exit(code=code)


@task(
    help={
        "hosts": "USER@HOST[:PORT],... (the short form of an inventory)",
        "inventory": "YAML inventory of hosts (format: orchestrator/remote/inventory.py)",
        "identity": "private key for hosts that name none",
        "parallel": "how many hosts run at once (default: all)",
        "suite": "smoke (./tdp run), default (+ ./tdp test), tpm (+ tpm2-pytss suite), all",
        "junit": "write one JUnit XML file per host and merged.xml into this directory",
        "keep": "leave each host's run directory in place",
        "accept-new-host-keys": "record unknown host keys in known_hosts (a changed key is "
        "always refused)",
        "known-hosts": "known_hosts file (default: ~/.ssh/known_hosts)",
        "user": "user for hosts that name none (default: the local user)",
    }
)
def remote(
    c: Context,
    hosts: str = "",
    inventory: str = "",
    identity: str = "",
    parallel: int = 0,
    suite: str = "smoke",
    junit: str = "",
    keep: bool = False,
    accept_new_host_keys: bool = False,
    known_hosts: str = "~/.ssh/known_hosts",
    user: str = "",
) -> None:
    """Run the project's suite on hosts over SSH, in parallel; one table, JUnit per host."""
    from orchestrator.remote.cli import main as remote_main

    code = remote_main(
        hosts=hosts,
        inventory=inventory,
        identity=identity,
        parallel=parallel,
        suite=suite,
        junit=junit,
        keep=keep,
        accept_new_host_keys=accept_new_host_keys,
        known_hosts=known_hosts,
        user=user,
    )
    if code:
        raise Exit(code=code)
