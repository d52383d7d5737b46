"""What a host has before anything is copied: OS, Python, the project's Debian packages, and
the TDX facts that choose the backend.

TDX facts come from what the Linux kernel exposes: the `tdx` parameter of kvm_intel
(/sys/module/kvm_intel/parameters/tdx, Linux KVM TDX support), the TDX module version line the
kernel logs at initialisation ("virt/tdx: ... module version"), and QEMU's `tdx-guest` object with
the `num-l2-vms` property that TD partitioning adds (Intel's TD-partitioning installation guide).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from orchestrator.remote.connection import Connection
from orchestrator.remote.errors import PreflightError

PREFLIGHT_TIMEOUT_S = 60.0
MIN_PYTHON = (3, 11)
# The bootstrap's Debian packages (scripts/bootstrap.sh); it installs those missing, as root.
DEBIAN_PACKAGES = (
    "libtpms0", "swtpm", "swtpm-tools", "tpm2-tools", "libtss2-dev", "libtss2-tcti-mssim0",
    "libtss2-tcti-swtpm0", "libtss2-tctildr0", "pkg-config", "gcc", "binutils", "openssl",
)  # fmt: skip

# A fixed script: nothing from an inventory is in it. One KEY=VALUE line per fact.
FACT_SCRIPT = r"""
. /etc/os-release 2>/dev/null && echo "os=$PRETTY_NAME"
echo "kernel=$(uname -r)"
echo "arch=$(uname -m)"
echo "uid=$(id -u)"
if [ "$(id -u)" != 0 ] && sudo -n true 2>/dev/null; then echo sudo=yes; fi
for p in python3.11 python3; do
  if command -v "$p" >/dev/null 2>&1; then
    echo "python=$("$p" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"; break
  fi
done
for t in tar timeout dpkg-query; do command -v "$t" >/dev/null 2>&1 && echo "tool=$t"; done
echo "tmpdir=${TMPDIR:-/tmp}"
if command -v dpkg-query >/dev/null 2>&1; then
  installed=" $(dpkg-query -W -f='${db:Status-Abbrev}${Package} ' PACKAGES 2>/dev/null) "
  for p in PACKAGES; do
    case "$installed" in *" ii $p "*) ;; *) echo "missing_package=$p";; esac
  done
fi
k=/sys/module/kvm_intel/parameters/tdx
[ -r $k ] && echo "kvm_tdx=$(cat $k)"
grep -qw tdx_host_platform /proc/cpuinfo 2>/dev/null && echo "cpu_tdx=yes"
v=$( (dmesg 2>/dev/null || journalctl -k -b -q --no-pager -n 5000 2>/dev/null) |
  grep -io 'tdx.*module.*version[^,]*' | tail -n1)
[ -n "$v" ] && echo "tdx_module=$v"
[ -c /dev/kvm ] && echo "dev_kvm=yes"
for q in qemu-system-x86_64 /usr/libexec/qemu-kvm; do
  if command -v "$q" >/dev/null 2>&1; then
    echo "qemu=$("$q" --version | head -n1)"
    "$q" -object help 2>/dev/null | grep -qw tdx-guest && echo "qemu_tdx_guest=yes"
    "$q" -object tdx-guest,help 2>/dev/null | grep -qw num-l2-vms && echo "qemu_num_l2_vms=yes"
    break
  fi
done
exit 0
""".replace("PACKAGES", " ".join(DEBIAN_PACKAGES))


@dataclass
class Preflight:
    """A host's facts and the backends it can run, with the reason for each one it cannot."""

    facts: dict[str, str] = field(default_factory=dict)
    missing_packages: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    no_qemu_tdx: str = ""

    @property
    def summary(self) -> str:
        os_name = self.facts.get("os", "unknown OS")
        python = self.facts.get("python", "no python")
        return f"{os_name}, Python {python}, backend {'+'.join(self.backends)}"


def parse_facts(text: str) -> Preflight:
    """Facts from the script's KEY=VALUE lines; repeated keys collect into lists."""
    result = Preflight()
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "missing_package":
            result.missing_packages.append(value)
        elif key == "tool":
            result.tools.append(value)
        else:
            result.facts[key] = value.strip()
    return result


def qemu_tdx_missing(facts: dict[str, str]) -> list[str]:
    """What a host lacks for the qemu-tdx backend (empty when it has everything)."""
    missing = []
    if facts.get("kvm_tdx", "N").upper() not in ("Y", "1"):
        missing.append("TDX enabled in the kernel (kvm_intel tdx=Y)")
    if facts.get("dev_kvm") != "yes":
        missing.append("/dev/kvm")
    if "qemu" not in facts:
        missing.append("QEMU (qemu-system-x86_64)")
    elif facts.get("qemu_tdx_guest") != "yes":
        missing.append("QEMU's tdx-guest object")
    elif facts.get("qemu_num_l2_vms") != "yes":
        missing.append("TD partitioning (tdx-guest without num-l2-vms)")
    return missing


def decide(result: Preflight) -> Preflight:
    """Refuse a host that cannot run the suite; choose its backends."""
    problems = []
    for tool in ("tar", "timeout", "dpkg-query"):
        if tool not in result.tools:
            problems.append(f"{tool} not found (the bootstrap supports Debian 12)")
    python = result.facts.get("python")
    if python is None:
        problems.append("no python3")
    else:
        match = re.match(r"(\d+)\.(\d+)", python)
        if not match or (int(match.group(1)), int(match.group(2))) < MIN_PYTHON:
            problems.append(f"Python {python} is older than 3.11")
    can_install = result.facts.get("uid") == "0" or result.facts.get("sudo") == "yes"
    if result.missing_packages and not can_install:
        problems.append(
            "Debian packages missing and neither root nor sudo to install them: "
            + ", ".join(result.missing_packages)
        )
    if problems:
        raise PreflightError("; ".join(problems))
    result.backends = ["tdxsim"]
    missing = qemu_tdx_missing(result.facts)
    if missing:
        result.no_qemu_tdx = "no qemu-tdx: missing " + ", ".join(missing)
    else:
        result.backends.append("qemu-tdx")
    return result


def preflight(connection: Connection) -> Preflight:
    """Run the fact script on the host and decide what it can run."""
    output = connection.run(FACT_SCRIPT, PREFLIGHT_TIMEOUT_S).output.decode(errors="replace")
    return decide(parse_facts(output))
