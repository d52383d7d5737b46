"""Remote runs, in process: the inventory and --hosts forms, preflight decisions, JUnit counts
and merging, and the final table."""

from __future__ import annotations

import io
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.remote import junit
from orchestrator.remote.errors import InventoryError, PreflightError
from orchestrator.remote.fleet import ProgressBoard, host_dir_name, render_table
from orchestrator.remote.inventory import Host, check_address, load_inventory, parse_hosts
from orchestrator.remote.preflight import decide, parse_facts
from orchestrator.remote.runner import SUITES, HostResult, SuiteName, remote_command


def test_short_form_hosts_ports_and_ipv6() -> None:
    hosts = parse_hosts("alice@lab1:2222, lab2,root@[fe80::1]:22022", "bob", Path("/k"))
    assert [(h.user, h.address, h.port) for h in hosts] == [
        ("alice", "lab1", 2222),
        ("bob", "lab2", 22),
        ("root", "fe80::1", 22022),
    ]
    assert all(h.identity == Path("/k") for h in hosts)


@pytest.mark.parametrize(
    ("text", "message"),
    [("a@h:x", "port 'x' is not a number"), ("a@h:0", "port 0 out of range"), (" , ", "no host")],
)
def test_short_form_errors_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(InventoryError, match=message):
        parse_hosts(text, "bob")


def test_inventory_file_defaults_labels_and_relative_keys(tmp_path: Path) -> None:
    inventory = tmp_path / "lab.yaml"
    inventory.write_text(
        "defaults: {user: tester, identity: keys/lab}\n"
        "hosts:\n"
        "  - {name: spr-1, address: 10.0.0.5, port: 2222, labels: [tdx, tdp]}\n"
        "  - {address: lab2.example, user: root, venv: /opt/venv}\n"
    )
    first, second = load_inventory(inventory, "nobody")
    assert (first.name, first.user, first.port, first.labels) == (
        "spr-1",
        "tester",
        2222,
        ("tdx", "tdp"),
    )
    assert first.identity == tmp_path / "keys/lab"
    assert (second.name, second.user, second.venv) == ("lab2.example", "root", "/opt/venv")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hosts: []\n", "'hosts' is empty"),
        ("[1]\n", "top-level 'hosts' list"),
        ("hosts: [{name: x}]\n", r"hosts\[0\]: missing 'address'"),
        ("hosts: [{address: h, port: 70000}]\n", r"hosts\[0\]: port 70000"),
        ("hosts: [{address: h, password: s3cret}]\n", r"unknown key\(s\) password"),
        ("hosts: [{address: h, labels: tdx}]\n", "'labels' must be a list"),
        ("hosts: [\n", "inventory .*lab.yaml"),
    ],
)
def test_inventory_errors_name_file_entry_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    inventory = tmp_path / "lab.yaml"
    inventory.write_text(text)
    with pytest.raises(InventoryError, match=message) as raised:
        load_inventory(inventory, "nobody")
    assert isinstance(raised.value, OrchestratorError)
    assert "s3cret" not in str(raised.value)  # an unknown key is named, its value never shown


@pytest.mark.parametrize(
    "address", ["127.0.0.1;id", "$(id)", "a b", "-oProxyCommand=x", "h`x`", "", "a..b"]
)
def test_addresses_with_shell_metacharacters_are_refused(address: str) -> None:
    assert check_address(address) is not None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "[fe80::1]", "lab-1.example.com"])
def test_dns_names_and_ip_addresses_are_accepted(address: str) -> None:
    assert check_address(address) is None


def test_host_directory_and_label_never_carry_metacharacters() -> None:
    host = Host("../x;$(id)\x1b[2J", "h", "u")
    assert host_dir_name(0, host) == "01-x_id_2J"
    assert "\x1b" not in host.label


FACTS = """os=Debian GNU/Linux 12 (bookworm)
uid=1000
sudo=no
python=3.11.2
tool=tar
tool=timeout
tool=dpkg-query
"""


def test_preflight_picks_tdxsim_without_tdx_and_says_why() -> None:
    result = decide(parse_facts(FACTS))
    assert result.backends == ["tdxsim"]
    assert "missing TDX enabled in the kernel" in result.no_qemu_tdx


def test_preflight_adds_qemu_tdx_with_td_partitioning() -> None:
    facts = FACTS + "kvm_tdx=Y\ndev_kvm=yes\nqemu=QEMU 9\nqemu_tdx_guest=yes\nqemu_num_l2_vms=yes\n"
    assert decide(parse_facts(facts)).backends == ["tdxsim", "qemu-tdx"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("python=3.11.2", "python=3.9.2"), "Python 3.9.2 is older than 3.11"),
        (("tool=tar\n", ""), "tar not found"),
        (("uid=1000", "uid=1000\nmissing_package=swtpm"), "neither root nor sudo .*: swtpm"),
    ],
)
def test_preflight_refuses_naming_what_is_missing(change: tuple[str, str], message: str) -> None:
    with pytest.raises(PreflightError, match=message):
        decide(parse_facts(FACTS.replace(*change)))


def test_missing_packages_are_fine_for_root() -> None:
    facts = FACTS.replace("uid=1000", "uid=0\nmissing_package=swtpm")
    assert decide(parse_facts(facts)).missing_packages == ["swtpm"]


def _pytest_xml(path: Path) -> Path:
    path.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="a" name="ok"/>'
        '<testcase classname="a" name="bad"><failure message="x"/></testcase>'
        '<testcase classname="a" name="err"><error message="y"/></testcase>'
        '<testcase classname="a" name="skip"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    return path


def test_junit_counts_per_host_files_and_merge(tmp_path: Path) -> None:
    suites = junit.suites_of(_pytest_xml(tmp_path / "p.xml"))
    assert junit.count(suites) == junit.Counts(passed=1, failed=2, skipped=1)
    steps = [junit.step_case("h1", "connect", 0.1, None), junit.step_case("h1", "run", 2, "exit 1")]
    root = junit.host_suite("h1", steps, suites)
    junit.write(root, tmp_path / "h1.xml")
    reread = ET.parse(tmp_path / "h1.xml").getroot()
    names = [s.get("name") for s in reread.iter("testsuite")]
    assert names == ["h1: steps", "h1: pytest"]
    assert [s.get("failures") for s in reread.iter("testsuite")] == ["1", "2"]
    other = junit.host_suite("h2", [junit.step_case("h2", "connect", 0.1, "refused")], [])
    merged = junit.merge([root, other])
    assert len(merged.findall("testsuite")) == 3
    assert junit.count(merged.findall("testsuite")) == junit.Counts(passed=2, failed=4, skipped=1)


def test_table_has_one_row_per_host_with_the_failed_step(tmp_path: Path) -> None:
    ok = HostResult(Host("lab-1", "h1", "u"), tmp_path, backend="tdxsim", seconds=4.25)
    ok.counts = junit.Counts(passed=3)
    bad = HostResult(Host("lab-2", "h2", "u"), tmp_path, failed_step="connect", reason="refused")
    lines = render_table([ok, bad]).splitlines()
    assert lines[0].split() == [
        "host",
        "backend",
        "passed",
        "failed",
        "skipped",
        "duration",
        "result",
    ]
    assert lines[1].split() == ["lab-1", "tdxsim", "3", "0", "0", "4.2", "s", "PASS"]
    assert lines[2].split()[-3:] == ["FAIL", "at", "connect"]


def test_remote_command_quotes_every_variable_part() -> None:
    step = SUITES[SuiteName.DEFAULT].steps[1]
    fresh = Host("h", "h", "u")
    reused = Host("h", "h", "u", venv="/opt/v")
    checkout, results = "/tmp/tdp-remote.x/check out;$(id)", "/tmp/tdp-remote.x/res'ults"
    line = remote_command(step, fresh, checkout, results)
    words = shlex.split(line)
    assert words[words.index("cd") + 1] == checkout
    assert f"PYTEST_ADDOPTS=--junitxml={results}/test.xml" in words
    assert words[-2:] == ["./tdp", "test"]
    assert shlex.split(remote_command(SUITES[SuiteName.SMOKE].steps[0], reused, "/c", "/r"))[
        -2:
    ] == [".venv/bin/invoke", "run"]
    assert "TDP_REMOTE_RUN=1" in words


def test_suites_add_commands_in_order() -> None:
    assert [s.name for s in SUITES[SuiteName.SMOKE].steps] == ["run"]
    assert [s.name for s in SUITES[SuiteName.DEFAULT].steps] == ["run", "test"]
    assert [s.name for s in SUITES[SuiteName.TPM].steps] == ["run", "test", "tpm-suite"]
    assert [s.invoke_args for s in SUITES[SuiteName.ALL].steps][-1] == ("test", "--tpm-suite")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_board_redraws_one_line_per_host_on_a_terminal() -> None:
    terminal = _Terminal()
    board = ProgressBoard([Host("a", "h", "u"), Host("b\x1b[2J", "h", "u")], terminal)
    board.update(0, "connect")
    board.update(1, "copy")
    frames = terminal.getvalue().split("\x1b[2F")
    assert len(frames) == 2  # drawn, then moved up over its two lines and redrawn
    last = [line.split() for line in frames[1].replace("\x1b[2K", "").splitlines()]
    assert [words[:2] for words in last] == [["a", "connect"], ["b?[2J", "copy"]]


def test_progress_board_prints_a_line_per_change_elsewhere() -> None:
    stream = io.StringIO()
    board = ProgressBoard([Host("a", "h", "u")], stream)
    board.update(0, "connect")
    board.update(0, "preflight")
    assert [line.split()[:2] for line in stream.getvalue().splitlines()] == [
        ["a", "connect"],
        ["a", "preflight"],
    ]
