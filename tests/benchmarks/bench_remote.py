"""Benchmark of remote runs on loopback: the overhead of `invoke remote --suite smoke` on one host
against the same suite run locally, step by step, and three hosts in parallel against one.

Run: python tests/benchmarks/bench_remote.py [--quick]. The hosts are real sshd servers on
127.0.0.1 (tests/support/sshd.py) that reuse this machine's venv, so the figures exclude the
bootstrap a fresh host needs. The local run is `invoke run` in a fresh copy of the checkout at
HEAD, like the remote one. Prints medians, targets and whether they were met; never fails on a miss.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from io import StringIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from orchestrator.remote.fleet import run_fleet  # noqa: E402
from orchestrator.remote.inventory import Host  # noqa: E402
from orchestrator.remote.runner import SUITES, HostResult, SuiteName  # noqa: E402
from orchestrator.remote.transfer import archive_head  # noqa: E402
from tests.support import sshd  # noqa: E402

OVERHEAD_TARGET_S = 10.0
PARALLEL_TARGET = 1.5
HOSTS = 3


def local_run(scratch: Path) -> float:
    """`invoke run` in a fresh copy of the checkout at HEAD, timed from start to exit."""
    checkout = Path(tempfile.mkdtemp(dir=scratch))
    archive = archive_head(scratch / "local.tar")
    subprocess.run(["tar", "-xf", str(archive), "-C", str(checkout)], check=True)
    (checkout / ".venv").symlink_to(sys.prefix)
    start = time.perf_counter()
    subprocess.run(
        [str(checkout / ".venv" / "bin" / "invoke"), "run"],
        cwd=checkout,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return time.perf_counter() - start


def fleet(hosts: list[Host], known_hosts: Path, out_dir: Path) -> tuple[float, list[HostResult]]:
    start = time.perf_counter()
    result = run_fleet(hosts, SUITES[SuiteName.SMOKE], known_hosts, out_dir, out=StringIO())
    seconds = time.perf_counter() - start
    failed = [r for r in result.results if r.failed_step]
    if failed:
        raise SystemExit(f"bench_remote: {failed[0].host.name} failed: {failed[0].reason}")
    return seconds, result.results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    repeats = 1 if parser.parse_args().quick else 3
    why_not = sshd.available()
    if why_not:
        print(f"bench_remote: skipped: {why_not}")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as scratch_name:
        scratch = Path(scratch_name)
        user_key = sshd.keygen(scratch / "user")
        servers = [
            sshd.start(scratch / f"h{i}", user_key.with_suffix(".pub")) for i in range(HOSTS)
        ]
        try:
            known_hosts = scratch / "known_hosts"
            known_hosts.write_text("".join(s.public_host_key_line() for s in servers))
            hosts = [
                Host(f"h{i}", "127.0.0.1", "root", s.port, user_key, venv=sys.prefix)
                for i, s in enumerate(servers)
            ]
            local = [local_run(scratch) for _ in range(repeats)]
            single: list[float] = []
            steps: dict[str, list[float]] = {}
            for n in range(repeats):
                seconds, (result,) = fleet(hosts[:1], known_hosts, scratch / f"one{n}")
                single.append(seconds)
                for step in result.steps:
                    steps.setdefault(step.name, []).append(step.seconds)
            parallel = [fleet(hosts, known_hosts, scratch / f"all{n}")[0] for n in range(repeats)]
        finally:
            for server in servers:
                server.kill()
    local_s, single_s, parallel_s = (statistics.median(x) for x in (local, single, parallel))
    overhead = single_s - local_s
    ratio = parallel_s / single_s
    print(f"local `invoke run` in a fresh checkout   {local_s:7.2f} s (median of {repeats})")
    print(f"remote smoke on one loopback host        {single_s:7.2f} s")
    print("  per step: " + ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in steps.items()))
    met = "met" if overhead < OVERHEAD_TARGET_S else "MISSED"
    print(
        f"overhead of the remote run per host      {overhead:7.2f} s"
        f"  target < {OVERHEAD_TARGET_S:.0f} s: {met}"
    )
    met = "met" if ratio < PARALLEL_TARGET else "MISSED"
    print(
        f"{HOSTS} hosts in parallel                      {parallel_s:7.2f} s"
        f"  = {ratio:.2f}x one host; target < {PARALLEL_TARGET}x: {met}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
