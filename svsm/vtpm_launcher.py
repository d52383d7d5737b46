"""Starting the vTPM workers' launcher: the first thing L1 does, so this module imports little.

L1 starts one launcher as `python -I -S` with a bootstrap that puts only the measured payload zip
(the file L1 itself was imported from) and the interpreter's third-party site-packages on
sys.path, and refuses to run if any vtpm or tdxdefs module came from anywhere but that zip; the
launcher imports the vTPM once and forks one worker per L2, each on its own channel (a
SOCK_SEQPACKET socket pair; `vtpm.worker_channel` frames it). The launcher's start-up (a fresh
interpreter importing the vTPM and the cryptography it needs) is the longest step of L1's boot,
so L1 starts it before importing the rest of itself (`svsm.entry`); `svsm.vtpm_workers` then
takes the started launcher over.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import sysconfig
from dataclasses import dataclass

IMAGE_PACKAGES = ("vtpm", "tdxdefs")  # what a worker must import from the measured zip alone
# argv: payload zip, channel fds (comma separated), L1's pid, the image packages, site dirs...
BOOTSTRAP = """
import os
import sys
zip_path, fds, parent, packages = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, zip_path)
sys.path.extend(sys.argv[5:])
from vtpm.worker import launch
for name, module in list(sys.modules.items()):
    origin = getattr(module, "__file__", None) or ""
    if name.partition(".")[0] in packages.split(",") and not origin.startswith(zip_path):
        sys.exit(f"vTPM worker launcher: {name} came from {origin}, not the measured image")
status = launch([int(fd) for fd in fds.split(",")], parent)
sys.stderr.flush()
os._exit(status)  # nothing to tear down: the workers are reaped
"""


def site_dirs() -> list[str]:
    """This interpreter's third-party site-packages (libtpms bindings' dependencies, cryptography);
    the project's own packages come from the measured zip, which goes first on sys.path."""
    dirs: list[str] = []
    for key in ("purelib", "platlib"):
        path = sysconfig.get_path(key)
        if path and path not in dirs:
            dirs.append(path)
    return dirs


@dataclass
class StartedLauncher:
    """A launcher process and L1's end of each worker's channel (one per L2, in VM order)."""

    process: subprocess.Popen[bytes]
    channels: list[socket.socket]

    def close(self) -> None:
        """Kill the launcher (its workers die with it) and close L1's ends."""
        for sock in self.channels:
            sock.close()
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.wait()


def start_launcher(count: int, image_path: str, python: str = sys.executable) -> StartedLauncher:
    """Start the launcher of `count` workers from the measured image at `image_path`."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(count)]
    theirs = [their for _mine, their in pairs]
    try:
        process = subprocess.Popen(
            [
                python,
                "-I",
                "-S",
                "-c",
                BOOTSTRAP,
                image_path,
                ",".join(str(sock.fileno()) for sock in theirs),
                str(os.getpid()),
                ",".join(IMAGE_PACKAGES),
                *site_dirs(),
            ],
            pass_fds=[sock.fileno() for sock in theirs],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            cwd="/",
        )
    except BaseException:
        for mine, _their in pairs:
            mine.close()
        raise
    finally:
        for sock in theirs:
            sock.close()
    return StartedLauncher(process, [mine for mine, _their in pairs])
