"""The qemu-tdx backend: a TD with TD partitioning under QEMU/KVM on a real TDX host.

The command line follows canonical/tdx's `run_td` (the tdx-guest object with a vsock
quote-generation socket, a RAM memory backend, `kernel_irqchip=split`, user networking with an
SSH host forward, no display) and Intel's TD-partitioning installation guide (`num-l2-vms` on
the tdx-guest object, `sept-ve-disable`, q35 without HPET, PIC, PIT and SATA). The image is an
IGVM file (QEMU's igvm-cfg object) or a firmware binary (`-bios`). The command is written as
`run.sh` next to the logs so a person can replay it. UNTESTED ON HARDWARE: on machines without
TDX it is checked by its command lines and by its preflight refusal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import OrchestratorError
from orchestrator.remote.preflight import FACT_SCRIPT, parse_facts, qemu_tdx_missing

MAX_L2_VMS = 3  # a TD has at most three L2 VMs (Intel TDX Module Base Spec, TD partitioning)
QGS_VSOCK_CID = 2  # the host, where the quote generation service listens (run_td's default)
QGS_VSOCK_PORT = 4050
GUEST_VSOCK_CID = 3
BANNER_TIMEOUT_S = 300.0
POWERDOWN_TIMEOUT_S = 60.0
# The TPM checks a Linux guest runs against its TPM device (COCONUT-SVSM's release test plan,
# "TPM Tests"): each is one JUnit testcase.
GUEST_TPM_CHECKS = (
    ("tpm-device", "test -c /dev/tpmrm0"),
    ("selftest", "tpm2_selftest -f"),
    ("getrandom", "tpm2_getrandom --hex 16"),
    ("pcrread", "tpm2_pcrread sha256:0,1,2,3"),
)


class QemuTdxError(OrchestratorError):
    """The qemu-tdx backend cannot run here, or its TD failed; the message says what and where."""


@dataclass(frozen=True)
class TdConfig:
    """What a TD launch needs; `igvm` or `firmware` names the image (exactly one)."""

    workdir: Path
    igvm: Path | None = None
    firmware: Path | None = None
    l2_firmware: Path | None = None
    memory_mib: int = 2048
    vcpus: int = 2
    num_l2_vms: int = 1
    quote_generation: bool = True
    ssh_port: int = 10022
    disk: Path | None = None
    qemu: str = "qemu-system-x86_64"
    debug: bool = False

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    def check(self) -> None:
        """Refuse a configuration QEMU or the TDX module would refuse, naming the field."""
        if (self.igvm is None) == (self.firmware is None):
            raise QemuTdxError("run configuration: give exactly one of igvm and firmware")
        if not 1 <= self.num_l2_vms <= MAX_L2_VMS:
            raise QemuTdxError(f"run configuration: num-l2-vms {self.num_l2_vms} is not 1 to 3")
        if self.vcpus < 1:
            raise QemuTdxError(f"run configuration: vcpus {self.vcpus} must be at least 1")
        if self.memory_mib < 256:
            raise QemuTdxError(f"run configuration: memory {self.memory_mib} MiB is below 256")
        if not 0 < self.ssh_port < 65536:
            raise QemuTdxError(f"run configuration: ssh port {self.ssh_port} out of range")


def option_value(path: Path) -> str:
    """A path as a QEMU option value: QEMU's option parser reads ",," as a literal comma."""
    return str(path).replace(",", ",,")


def tdx_guest_object(config: TdConfig) -> str:
    """The tdx-guest object as QEMU's JSON -object argument."""
    guest: dict[str, object] = {
        "qom-type": "tdx-guest",
        "id": "tdx",
        "sept-ve-disable": True,
        "num-l2-vms": config.num_l2_vms,
    }
    if config.quote_generation:
        guest["quote-generation-socket"] = {
            "type": "vsock",
            "cid": str(QGS_VSOCK_CID),
            "port": str(QGS_VSOCK_PORT),
        }
    if config.debug:
        guest["debug"] = True
    return json.dumps(guest, separators=(",", ":"))


def command_line(config: TdConfig) -> list[str]:
    """The QEMU argument vector for the TD (no shell involved)."""
    config.check()
    machine = [
        "q35",
        "kernel_irqchip=split",
        "confidential-guest-support=tdx",
        "memory-backend=mem0",
        "hpet=off",
        "pic=off",
        "pit=off",
        "sata=off",
    ]
    image: list[str] = []
    if config.igvm is not None:
        machine.append("igvm-cfg=igvm0")
        image = ["-object", f"igvm-cfg,id=igvm0,file={option_value(config.igvm)}"]
    else:
        image = ["-bios", str(config.firmware)]
    if config.l2_firmware is not None:
        machine.append(f"l2bios={option_value(config.l2_firmware)}")
    cmd = [
        config.qemu,
        "-accel", "kvm",
        "-m", f"{config.memory_mib}M",
        "-smp", str(config.vcpus),
        "-name", "td,process=td,debug-threads=on",
        "-cpu", "host",
        "-object", tdx_guest_object(config),
        "-object", f"memory-backend-ram,id=mem0,size={config.memory_mib}M",
        "-machine", ",".join(machine),
        *image,
        "-nographic", "-nodefaults", "-vga", "none", "-no-reboot",
        "-device", "virtio-net-pci,netdev=nic0_td",
        "-netdev", f"user,id=nic0_td,hostfwd=tcp:127.0.0.1:{config.ssh_port}-:22",
        "-chardev", f"file,id=serial0,path={option_value(config.serial_log)}",
        "-serial", "chardev:serial0",
        "-pidfile", str(config.workdir / "qemu.pid"),
        "-qmp", f"unix:{option_value(config.workdir / 'qmp.sock')},server=on,wait=off",
    ]  # fmt: skip
    if config.quote_generation:
        cmd += ["-device", f"vhost-vsock-pci,guest-cid={GUEST_VSOCK_CID}"]
    if config.disk is not None:
        cmd += [
            "-drive", f"file={option_value(config.disk)},if=none,id=virtio-disk0,snapshot=on",
            "-device", "virtio-blk-pci,drive=virtio-disk0",
        ]  # fmt: skip
    return cmd


def write_run_script(config: TdConfig, cmd: Sequence[str]) -> Path:
    """run.sh next to the logs: the exact command, every argument quoted, for manual replay."""
    config.workdir.mkdir(parents=True, exist_ok=True)
    path = config.workdir / "run.sh"
    path.write_text(
        "#!/bin/sh\n# The TD launch of the qemu-tdx backend; run it again to reproduce.\n"
        f"exec {shlex.join(cmd)}\n"
    )
    path.chmod(0o755)
    return path


def missing_here() -> list[str]:
    """What this machine lacks for the backend (the same facts a remote preflight gathers)."""
    output = subprocess.run(
        ["sh", "-c", FACT_SCRIPT], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    return qemu_tdx_missing(parse_facts(output).facts)


def preflight_here() -> None:
    """Refuse the backend on a machine without TDX, TD partitioning or QEMU, naming each."""
    missing = missing_here()
    if missing:
        raise QemuTdxError(
            "qemu-tdx backend refused on this machine: missing " + ", ".join(missing)
        )


def wait_for_banner(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until the guest's sshd answers with its "SSH-" banner through the host forward."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise QemuTdxError(f"QEMU exited with status {process.returncode} before SSH came up")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=2) as sock,
        ):
            sock.settimeout(5)
            if sock.recv(4) == b"SSH-":
                return
        time.sleep(1)
    raise QemuTdxError(f"no SSH banner on 127.0.0.1:{port} within {timeout:.0f} s")


def power_down(config: TdConfig, process: subprocess.Popen[bytes]) -> None:
    """ACPI power-down through QMP, then kill if the TD has not stopped in time."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as qmp:
        qmp.settimeout(5)
        qmp.connect(str(config.workdir / "qmp.sock"))
        qmp.recv(4096)
        for message in ({"execute": "qmp_capabilities"}, {"execute": "system_powerdown"}):
            qmp.sendall(json.dumps(message).encode() + b"\n")
            qmp.recv(4096)
    try:
        process.wait(POWERDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def run_guest_checks(config: TdConfig, user: str, key: Path) -> ET.Element:
    """The TPM checks inside the guest over SSH, as a JUnit suite."""
    import paramiko

    suite = ET.Element("testsuite", name="qemu-tdx guest TPM")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # a fresh guest, just booted
    client.connect("127.0.0.1", port=config.ssh_port, username=user, key_filename=str(key))
    try:
        for name, check in GUEST_TPM_CHECKS:
            start = time.monotonic()
            _, stdout, _ = client.exec_command(check, timeout=60)
            status = stdout.channel.recv_exit_status()
            case = ET.SubElement(
                suite, "testcase", classname="guest", name=name,
                time=f"{time.monotonic() - start:.3f}",
            )  # fmt: skip
            if status != 0:
                ET.SubElement(case, "failure", message=f"{check}: exit status {status}")
    finally:
        client.close()
    return suite


def launch(
    config: TdConfig,
    guest_user: str = "",
    guest_key: Path | None = None,
    preflight: Callable[[], None] = preflight_here,
    timeout: float = BANNER_TIMEOUT_S,
) -> int:
    """Preflight, write run.sh, start QEMU, wait for SSH, run the guest's TPM checks, power down.

    Without a guest disk the TD runs until QEMU exits (or the banner timeout) and the serial log
    is the result.
    """
    preflight()
    cmd = command_line(config)
    write_run_script(config, cmd)
    with (config.workdir / "qemu.log").open("wb") as qemu_log:
        process = subprocess.Popen(cmd, stdout=qemu_log, stderr=subprocess.STDOUT)
    try:
        if config.disk is not None and guest_key is not None:
            wait_for_banner(config.ssh_port, process, timeout)
            suite = run_guest_checks(config, guest_user, guest_key)
            ET.ElementTree(suite).write(config.workdir / "guest.xml", encoding="utf-8")
            return 1 if suite.find("testcase/failure") is not None else 0
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise QemuTdxError(
                f"the TD still ran after {timeout:.0f} s; powered down "
                f"(serial log: {config.serial_log})"
            ) from exc
    finally:
        if process.poll() is None:
            power_down(config, process)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.backends.qemu_tdx")
    parser.add_argument("action", choices=("preflight", "cmdline", "launch"))
    parser.add_argument("--workdir", type=Path, default=Path("out/qemu-tdx"))
    parser.add_argument("--image", type=Path, help="IGVM file")
    parser.add_argument("--firmware", type=Path, help="firmware binary instead of an IGVM file")
    parser.add_argument("--l2-firmware", type=Path)
    parser.add_argument("--l2-count", type=int, default=1)
    parser.add_argument("--memory-mib", type=int, default=2048)
    parser.add_argument("--vcpus", type=int, default=2)
    parser.add_argument("--ssh-port", type=int, default=10022)
    parser.add_argument("--disk", type=Path)
    parser.add_argument("--guest-user", default="root")
    parser.add_argument("--guest-key", type=Path)
    args = parser.parse_args(argv)
    config = TdConfig(
        workdir=args.workdir.resolve(),
        igvm=args.image.resolve() if args.image else None,
        firmware=args.firmware.resolve() if args.firmware else None,
        l2_firmware=args.l2_firmware.resolve() if args.l2_firmware else None,
        memory_mib=args.memory_mib,
        vcpus=args.vcpus,
        num_l2_vms=args.l2_count,
        ssh_port=args.ssh_port,
        disk=args.disk.resolve() if args.disk else None,
    )
    try:
        if args.action == "preflight":
            preflight_here()
            print("qemu-tdx: this machine has TDX, TD partitioning and QEMU's tdx-guest")
        elif args.action == "cmdline":
            print(write_run_script(config, command_line(config)).read_text(), end="")
        else:
            return launch(config, args.guest_user, args.guest_key)
    except (QemuTdxError, OSError) as exc:
        print(f"qemu-tdx: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
