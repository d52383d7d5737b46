"""`invoke remote`: arguments to hosts and options, then the fleet; prints one table."""

from __future__ import annotations

import getpass
import sys
import time
from pathlib import Path

from orchestrator.remote.errors import RemoteError
from orchestrator.remote.fleet import run_fleet
from orchestrator.remote.inventory import load_inventory, parse_hosts
from orchestrator.remote.runner import SUITES, SuiteName

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "out" / "remote"


def main(
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
) -> int:
    """Exit status: 0 when every host passed, 1 when one failed, 2 for bad arguments."""
    if bool(hosts) == bool(inventory):
        print("invoke remote: give exactly one of --hosts and --inventory", file=sys.stderr)
        return 2
    try:
        suite_name = SuiteName(suite)
    except ValueError:
        names = ", ".join(s.value for s in SuiteName)
        print(f"invoke remote: unknown suite {suite!r}; choose from {names}", file=sys.stderr)
        return 2
    if parallel < 0:
        print(f"invoke remote: --parallel {parallel} must be 0 (all) or more", file=sys.stderr)
        return 2
    key = Path(identity).expanduser() if identity else None
    default_user = user or getpass.getuser()
    try:
        targets = (
            parse_hosts(hosts, default_user, key)
            if hosts
            else load_inventory(Path(inventory), default_user, key)
        )
        run_dir = OUT_DIR / time.strftime("%Y%m%d-%H%M%S")
        print(f"invoke remote: suite {suite_name.value} on {len(targets)} host(s)", flush=True)
        fleet = run_fleet(
            targets,
            SUITES[suite_name],
            known_hosts=Path(known_hosts).expanduser(),
            out_dir=run_dir,
            parallel=parallel,
            junit_dir=Path(junit) if junit else None,
            keep=keep,
            accept_new_host_keys=accept_new_host_keys,
        )
    except RemoteError as exc:
        print(f"invoke remote: {exc}", file=sys.stderr)
        return 2
    return fleet.exit_code
