"""Real OpenSSH servers on loopback for remote-run tests: each its own sshd, config, port,
generated host key and authorized key, run in the foreground (`sshd -D -e -f CONFIG`)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _end_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL, so a
    killed pytest leaves no sshd listening (prctl(2), PR_SET_PDEATHSIG survives execve)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def available() -> str | None:
    """Why these servers cannot run here, or None."""
    if not SSHD.exists():
        return f"{SSHD} not installed (Debian openssh-server)"
    if os.geteuid() != 0:
        return "sshd for tests runs as root (privilege separation needs it)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen not found"
    return None


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tdp-test", "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SshServer:
    """One sshd: its port, host key, and the process group to kill it with."""

    port: int
    host_key: Path
    directory: Path
    process: subprocess.Popen[bytes]

    def public_host_key_line(self) -> str:
        kind, blob = (self.host_key.with_suffix(".pub")).read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}\n"

    def kill(self) -> None:
        """Kill the listener and every session process it forked (sessions call setsid(), so
        they are found by parent links in /proc, not by process group)."""
        if self.process.poll() is not None:
            return
        for pid in [self.process.pid, *_descendants(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def start(directory: Path, authorized_key: Path) -> SshServer:
    """Start an sshd that accepts `authorized_key` (a public key file) for root on loopback."""
    directory.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    host_key = keygen(directory / "host_ed25519")
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"PidFile {directory / 'sshd.pid'}\nAuthorizedKeysFile {authorized_key}\n"
        "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nUsePAM no\n"
        "Subsystem sftp internal-sftp\nMaxSessions 30\nMaxStartups 30\nLogLevel ERROR\n"
    )
    process = subprocess.Popen(
        [str(SSHD), "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(directory / "sshd.log").open("wb"),
        start_new_session=True,
        preexec_fn=_end_with_parent,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited: {(directory / 'sshd.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    return SshServer(port, host_key, directory, process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"sshd on port {port} did not answer within 10 s")
