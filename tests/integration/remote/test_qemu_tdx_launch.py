"""The qemu-tdx launch sequence with a stand-in for QEMU (this machine has no TDX): run.sh,
the wait for the guest's SSH banner (a real sshd from the lab stands in for the guest), the TPM
checks over SSH as JUnit, and the QMP power-down."""

from __future__ import annotations

import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

from orchestrator.backends.qemu_tdx import GUEST_TPM_CHECKS, TdConfig, launch
from tests.integration.remote.conftest import Lab

# Reads the -chardev and -qmp arguments QEMU would, logs to the serial file, answers QMP, and
# exits when asked to power down.
FAKE_QEMU = """\
import json, socket, sys
args = sys.argv[1:]
serial = next(a for a in args if a.startswith("file,id=serial0,path=")).split("path=", 1)[1]
qmp_path = next(a for a in args if a.startswith("unix:")).split(":", 1)[1].split(",")[0]
log = open(serial, "a")
log.write("stand-in TD booted\\n"); log.flush()
server = socket.socket(socket.AF_UNIX); server.bind(qmp_path); server.listen(1)
conn, _ = server.accept()
conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\\n')
for _ in range(2):
    request = json.loads(conn.recv(4096))
    log.write(f"qmp {request['execute']}\\n"); log.flush()
    conn.sendall(b'{"return": {}}\\n')
sys.exit(0 if request["execute"] == "system_powerdown" else 3)
"""


def test_launch_waits_for_ssh_runs_guest_checks_and_powers_down(lab: Lab, tmp_path: Path) -> None:
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_QEMU))
    qemu.chmod(0o755)
    workdir = tmp_path / "td"
    config = TdConfig(
        workdir=workdir,
        igvm=tmp_path / "tdp.igvm",
        num_l2_vms=2,
        ssh_port=lab.servers[0].port,
        disk=tmp_path / "guest.qcow2",
        qemu=str(qemu),
    )
    status = launch(config, "root", lab.user_key, preflight=lambda: None, timeout=30)
    assert (workdir / "run.sh").read_text().count('"num-l2-vms":2') == 1
    serial = (workdir / "serial.log").read_text()
    assert serial.splitlines() == [
        "stand-in TD booted",
        "qmp qmp_capabilities",
        "qmp system_powerdown",
    ]
    suite = ET.parse(workdir / "guest.xml").getroot()
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert list(cases) == [name for name, _ in GUEST_TPM_CHECKS]
    # this "guest" has no TPM device: the device check fails, so the launch reports failure
    assert cases["tpm-device"].find("failure") is not None
    assert status == 1
