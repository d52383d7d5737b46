"""`invoke remote` against real sshd "hosts" on loopback: the whole flow, and each failure
giving its documented outcome while the other hosts pass."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from io import StringIO
from pathlib import Path

import yaml

from orchestrator.remote.connection import Connection
from orchestrator.remote.errors import HostKeyError
from orchestrator.remote.fleet import host_dir_name, run_fleet
from orchestrator.remote.inventory import Host
from orchestrator.remote.runner import Status, Suite, SuiteStep
from tests.integration.remote.conftest import LOCAL_VENV, Lab
from tests.support import sshd

ROOT = Path(__file__).resolve().parents[3]
INVOKE = Path(sys.executable).parent / "invoke"
METACHAR_NAME = "lab$(touch {canary});`touch {canary}`|x&y>z"


def _host(lab: Lab, index: int, name: str = "", **kw: object) -> Host:
    server = lab.servers[index]
    fields: dict[str, object] = {
        "name": name or f"host{index}",
        "address": "127.0.0.1",
        "user": "root",
        "port": server.port,
        "identity": lab.user_key,
        "venv": LOCAL_VENV,
    }
    fields.update(kw)
    return Host(**fields)  # type: ignore[arg-type]


def test_smoke_suite_on_three_hosts_through_invoke_remote(lab: Lab, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    inventory = tmp_path / "inventory.yaml"
    entries = [
        {"name": f"host{i}", "address": "127.0.0.1", "port": s.port, "venv": LOCAL_VENV}
        for i, s in enumerate(lab.servers[:3])
    ]
    entries[2]["name"] = METACHAR_NAME.format(canary=canary)
    inventory.write_text(
        yaml.safe_dump(
            {"defaults": {"user": "root", "identity": str(lab.user_key)}, "hosts": entries}
        )
    )
    junit_dir = tmp_path / "junit"
    result = subprocess.run(
        [
            str(INVOKE),
            "remote",
            "--inventory",
            str(inventory),
            "--known-hosts",
            str(lab.known_hosts(*lab.servers[:3])),
            "--junit",
            str(junit_dir),
            "--suite",
            "smoke",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout[result.stdout.index("host  ") :].splitlines()
    assert table[0].split() == [
        "host",
        "backend",
        "passed",
        "failed",
        "skipped",
        "duration",
        "result",
    ]
    for row in table[1:4]:
        assert row.split()[-1] == "PASS" and " tdxsim " in row, row
    assert "tdxsim backend only (no qemu-tdx: missing TDX enabled in the kernel" in result.stdout
    assert "done: 6 steps in" in result.stdout  # the run's own figures came back
    assert not canary.exists(), "a host name reached a shell"
    files = sorted(p.name for p in junit_dir.iterdir())
    assert len(files) == 4 and "merged.xml" in files
    merged = ET.parse(junit_dir / "merged.xml").getroot()
    cases = list(merged.iter("testcase"))
    assert {c.get("name") for c in cases} >= {
        "connect",
        "preflight",
        "copy",
        "run",
        "collect",
        "cleanup",
    }
    assert len([c for c in cases if c.get("name") == "run"]) == 3
    assert not any(c.find("failure") is not None for c in cases)
    out_dir = Path(result.stdout.split("logs and results: ")[1].split()[0])
    host_logs = sorted(out_dir.glob("*/host.log"))
    assert len(host_logs) == 3
    secret = lab.user_key.read_text().splitlines()[1]
    for log in host_logs:
        text = log.read_text()
        removed = text.split("removed ")[1].split()[0]
        assert removed.startswith("/tmp/tdp-remote.") and not Path(removed).exists()
        assert secret not in text
    assert secret not in result.stdout + result.stderr


def test_failures_are_reported_by_step_while_other_hosts_pass(lab: Lab, tmp_path: Path) -> None:
    """Wrong host key (even with accept-new), refused user key, sshd killed mid-run, an address
    with shell metacharacters; an unknown key is accepted with accept-new; the good host passes."""
    canary = tmp_path / "canary"
    suite = Suite("fake", (SuiteStep("sleep", command="echo started; sleep 3; echo finished"),))
    good, unknown_key, killed, changed = lab.servers
    hosts = [
        _host(lab, 0, "good"),
        _host(lab, 1, "unknown-key"),
        _host(lab, 2, "killed"),
        _host(lab, 3, "wrong-host-key"),  # known_hosts has host0's key under host3's port
        Host("refused-key", "127.0.0.1", "root", lab.refusing.port, lab.user_key),
        Host("metachar", f"127.0.0.1;touch {canary}", "root", good.port, lab.user_key),
    ]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        good.public_host_key_line()
        + killed.public_host_key_line()
        + good.public_host_key_line().replace(str(good.port), str(changed.port))
        + lab.refusing.public_host_key_line()
    )
    out_dir = tmp_path / "out"
    killed_log = out_dir / host_dir_name(2, hosts[2]) / "sleep.log"

    def kill_when_started() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if killed_log.exists() and b"started" in killed_log.read_bytes():
                killed.kill()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    out = StringIO()
    fleet = run_fleet(
        hosts,
        suite,
        known_hosts,
        out_dir,
        accept_new_host_keys=True,
        out=out,
    )
    killer.join()
    by_name = {r.host.name: r for r in fleet.results}
    assert fleet.exit_code == 1

    assert by_name["good"].status is Status.PASSED
    assert by_name["good"].removed_dir and not Path(by_name["good"].removed_dir).exists()
    assert by_name["unknown-key"].status is Status.PASSED
    assert f"[127.0.0.1]:{unknown_key.port} ssh-ed25519" in known_hosts.read_text()

    wrong = by_name["wrong-host-key"]
    assert (wrong.failed_step, wrong.status) == ("connect", Status.FAILED)
    assert "CHANGED" in wrong.reason and "refused" in wrong.reason

    refused = by_name["refused-key"]
    assert refused.failed_step == "connect"
    assert "authentication refused for root" in refused.reason

    drop = by_name["killed"]
    assert drop.failed_step == "sleep"
    assert "connection lost" in drop.reason
    assert any("could not remove /" in note for note in drop.notes)
    assert b"started" in killed_log.read_bytes()  # partial results kept
    assert (drop.local_dir / "host.log").read_bytes().count(b"== step") >= 4

    meta = by_name["metachar"]
    assert meta.failed_step == "connect"
    assert "neither a DNS name nor an IP address" in meta.reason
    assert not canary.exists()

    text = out.getvalue()
    assert "wrong-host-key: failed at connect: host key for" in text
    assert "killed: failed at sleep: connection lost" in text


def test_failing_step_and_timeout_still_remove_the_run_directory(lab: Lab, tmp_path: Path) -> None:
    known_hosts = lab.known_hosts(lab.servers[0])
    for step, expected in (
        (
            SuiteStep("fails", command="echo partial output; exit 3"),
            "exit status 3: partial output",
        ),
        (SuiteStep("hangs", command="sleep 30", timeout=1), "timed out after 1 s"),
    ):
        fleet = run_fleet(
            [_host(lab, 0)],
            Suite("fake", (step,)),
            known_hosts,
            tmp_path / step.name,
            out=StringIO(),
        )
        (result,) = fleet.results
        assert fleet.exit_code == 1
        assert result.failed_step == step.name
        assert expected in result.reason
        assert result.counts.failed == 1
        assert result.removed_dir and not Path(result.removed_dir).exists()


def test_unknown_host_key_is_refused_without_accept_new(lab: Lab, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    try:
        Connection.open(_host(lab, 1), known_hosts, accept_new=False)
    except HostKeyError as exc:
        assert f"[127.0.0.1]:{lab.servers[1].port} is not in {known_hosts}" in str(exc)
        assert "--accept-new-host-keys" in str(exc)
    else:
        raise AssertionError("an unknown host key was accepted")
    assert not known_hosts.exists()


def test_invoke_remote_refuses_bad_arguments() -> None:
    for args, expected in (
        ([], "exactly one of --hosts and --inventory"),
        (["--hosts", "root@127.0.0.1", "--suite", "nightly"], "unknown suite 'nightly'"),
        (["--hosts", "root@127.0.0.1:ssh"], "port 'ssh' is not a number"),
    ):
        result = subprocess.run(
            [str(INVOKE), "remote", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, args
        assert expected in result.stderr, result.stderr


def test_parallel_one_runs_hosts_one_after_another(lab: Lab, tmp_path: Path) -> None:
    suite = Suite("fake", (SuiteStep("quick", command="echo quick"),))
    out = StringIO()
    fleet = run_fleet(
        [_host(lab, 0), _host(lab, 1)],
        suite,
        lab.known_hosts(*lab.servers[:2]),
        tmp_path,
        parallel=1,
        out=out,
    )
    assert fleet.exit_code == 0
    lines = [line.split() for line in out.getvalue().splitlines() if line.startswith("  host")]
    first_done = next(i for i, w in enumerate(lines) if w[:2] == ["host0", "passed"])
    second_starts = next(i for i, w in enumerate(lines) if w[:2] == ["host1", "connect"])
    assert first_done < second_starts


def test_pytest_junit_from_the_host_is_collected_and_counted(lab: Lab, tmp_path: Path) -> None:
    """A suite step that runs `invoke test` on the host: its JUnit XML comes back and counts."""
    target = "tests/unit/orchestrator/test_qemu_tdx.py"
    step = SuiteStep("unit", ("test", "--path", target), junit=True)
    junit_dir = tmp_path / "junit"
    fleet = run_fleet(
        [_host(lab, 0)],
        Suite("fake", (step,)),
        lab.known_hosts(lab.servers[0]),
        tmp_path / "out",
        junit_dir=junit_dir,
        out=StringIO(),
    )
    (result,) = fleet.results
    assert fleet.exit_code == 0, result.reason
    local = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    collected = int(local.stdout.strip().splitlines()[-1].split()[0])
    assert (result.counts.passed + result.counts.skipped, result.counts.failed) == (collected, 0)
    assert (result.local_dir / "results" / "unit.xml").is_file()
    host_file = ET.parse(junit_dir / "01-host0.xml").getroot()
    assert [s.get("name") for s in host_file.iter("testsuite")] == ["host0: steps", "host0: pytest"]


def test_unusable_keys_and_closed_ports_fail_at_connect_by_name(lab: Lab, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    encrypted = tmp_path / "encrypted"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "passphrase", "-f", str(encrypted)],
        check=True,
        timeout=30,
    )
    hosts = [
        _host(lab, 0, "garbage", identity=garbage),
        _host(lab, 0, "encrypted", identity=encrypted),
        _host(lab, 0, "no-key-file", identity=tmp_path / "absent"),
        _host(lab, 0, "closed", port=sshd.free_port()),
    ]
    fleet = run_fleet(
        hosts,
        Suite("fake", (SuiteStep("quick", command="true"),)),
        lab.known_hosts(lab.servers[0]),
        tmp_path / "out",
        out=StringIO(),
    )
    reasons = {r.host.name: (r.failed_step, r.reason) for r in fleet.results}
    assert reasons["garbage"][1].startswith(f"identity {garbage} is not a private key")
    assert reasons["encrypted"][1] == f"identity {encrypted} is encrypted; load it into ssh-agent"
    assert reasons["no-key-file"][1] == f"identity file {tmp_path / 'absent'} does not exist"
    assert reasons["closed"][1].startswith("cannot reach root@127.0.0.1:")
    assert {step for step, _ in reasons.values()} == {"connect"}
    assert "passphrase" not in "".join(reason for _, reason in reasons.values())
