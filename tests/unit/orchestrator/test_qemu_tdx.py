"""The qemu-tdx backend's QEMU command lines against the documented flags (canonical/tdx's
run_td and Intel's TD-partitioning guide), run.sh, and its refusals on a machine without TDX."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.backends.qemu_tdx import (
    QemuTdxError,
    TdConfig,
    command_line,
    missing_here,
    preflight_here,
    write_run_script,
)
from orchestrator.remote.preflight import qemu_tdx_missing

WORK = Path("/run/tdp/td")
IGVM = Path("/srv/images/tdp.igvm")


def _expected(num_l2_vms: int) -> list[str]:
    """The command line for the default configuration, flag by flag as documented."""
    tdx_guest = (
        '{"qom-type":"tdx-guest","id":"tdx","sept-ve-disable":true,'
        f'"num-l2-vms":{num_l2_vms},'
        '"quote-generation-socket":{"type":"vsock","cid":"2","port":"4050"}}'
    )
    return [
        "qemu-system-x86_64",
        "-accel", "kvm",
        "-m", "2048M",
        "-smp", "2",
        "-name", "td,process=td,debug-threads=on",
        "-cpu", "host",
        "-object", tdx_guest,
        "-object", "memory-backend-ram,id=mem0,size=2048M",
        "-machine", "q35,kernel_irqchip=split,confidential-guest-support=tdx,"
        "memory-backend=mem0,hpet=off,pic=off,pit=off,sata=off,igvm-cfg=igvm0",
        "-object", f"igvm-cfg,id=igvm0,file={IGVM}",
        "-nographic", "-nodefaults", "-vga", "none", "-no-reboot",
        "-device", "virtio-net-pci,netdev=nic0_td",
        "-netdev", "user,id=nic0_td,hostfwd=tcp:127.0.0.1:10022-:22",
        "-chardev", f"file,id=serial0,path={WORK}/serial.log",
        "-serial", "chardev:serial0",
        "-pidfile", f"{WORK}/qemu.pid",
        "-qmp", f"unix:{WORK}/qmp.sock,server=on,wait=off",
        "-device", "vhost-vsock-pci,guest-cid=3",
    ]  # fmt: skip


@pytest.mark.parametrize("num_l2_vms", [1, 2, 3])
def test_command_line_for_one_two_three_l2_vms(num_l2_vms: int) -> None:
    cmd = command_line(TdConfig(workdir=WORK, igvm=IGVM, num_l2_vms=num_l2_vms))
    assert cmd == _expected(num_l2_vms)
    guest = json.loads(cmd[cmd.index("-object") + 1])
    assert guest["num-l2-vms"] == num_l2_vms


def test_firmware_l2bios_disk_and_sizes_reach_their_flags() -> None:
    cmd = command_line(
        TdConfig(
            workdir=WORK,
            firmware=Path("/fw/svsm.bin"),
            l2_firmware=Path("/fw/OVMF,l2.fd"),
            memory_mib=4096,
            vcpus=4,
            quote_generation=False,
            ssh_port=2224,
            disk=Path("/img/guest.qcow2"),
        )
    )
    assert cmd[cmd.index("-bios") + 1] == "/fw/svsm.bin"
    assert "igvm-cfg=igvm0" not in cmd[cmd.index("-machine") + 1]
    assert cmd[cmd.index("-machine") + 1].endswith(",l2bios=/fw/OVMF,,l2.fd")  # comma doubled
    assert cmd[cmd.index("-m") + 1] == "4096M" and cmd[cmd.index("-smp") + 1] == "4"
    assert "memory-backend-ram,id=mem0,size=4096M" in cmd
    assert "user,id=nic0_td,hostfwd=tcp:127.0.0.1:2224-:22" in cmd
    assert "quote-generation-socket" not in cmd[cmd.index("-object") + 1]
    assert not any(arg.startswith("vhost-vsock-pci") for arg in cmd)
    assert "file=/img/guest.qcow2,if=none,id=virtio-disk0,snapshot=on" in cmd


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_l2_vms": 0}, "num-l2-vms 0 is not 1 to 3"),
        ({"num_l2_vms": 4}, "num-l2-vms 4 is not 1 to 3"),
        ({"firmware": Path("/fw.bin")}, "exactly one of igvm and firmware"),
        ({"vcpus": 0}, "vcpus 0"),
        ({"memory_mib": 128}, "memory 128 MiB"),
    ],
)
def test_bad_run_configuration_is_refused_by_field(fields: dict[str, object], message: str) -> None:
    config = TdConfig(workdir=WORK, igvm=IGVM, **fields)  # type: ignore[arg-type]
    with pytest.raises(QemuTdxError, match=message):
        command_line(config)


def test_run_sh_replays_the_exact_command(tmp_path: Path) -> None:
    workdir = tmp_path / "logs with space;$(x)"
    config = TdConfig(workdir=workdir, igvm=tmp_path / "a b.igvm", num_l2_vms=2)
    cmd = command_line(config)
    script = write_run_script(config, cmd)
    assert script == workdir / "run.sh" and script.stat().st_mode & 0o111
    exec_line = next(line for line in script.read_text().splitlines() if line.startswith("exec "))
    assert shlex.split(exec_line)[1:] == cmd
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0


def test_missing_pieces_are_named() -> None:
    full = {
        "kvm_tdx": "Y",
        "dev_kvm": "yes",
        "qemu": "QEMU emulator version 9.0",
        "qemu_tdx_guest": "yes",
        "qemu_num_l2_vms": "yes",
    }
    assert qemu_tdx_missing(full) == []
    assert qemu_tdx_missing({**full, "kvm_tdx": "N"}) == [
        "TDX enabled in the kernel (kvm_intel tdx=Y)"
    ]
    no_tdp = {k: v for k, v in full.items() if k != "qemu_num_l2_vms"}
    assert qemu_tdx_missing(no_tdp) == ["TD partitioning (tdx-guest without num-l2-vms)"]
    no_object = {k: v for k, v in no_tdp.items() if k != "qemu_tdx_guest"}
    assert qemu_tdx_missing(no_object) == ["QEMU's tdx-guest object"]
    assert "QEMU (qemu-system-x86_64)" in qemu_tdx_missing({"kvm_tdx": "Y", "dev_kvm": "yes"})


def test_preflight_on_this_machine_refuses_the_backend_naming_what_is_missing() -> None:
    missing = missing_here()
    if not missing:
        pytest.skip("this machine has TDX, TD partitioning and QEMU's tdx-guest")
    with pytest.raises(QemuTdxError) as refused:
        preflight_here()
    assert str(refused.value).startswith("qemu-tdx backend refused on this machine: missing ")
    for piece in missing:
        assert piece in str(refused.value)
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.backends.qemu_tdx", "launch", "--image", "x.igvm"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "qemu-tdx backend refused on this machine: missing" in result.stderr
