"""Real OpenSSH servers on loopback as the hosts of a remote run (tests/support/sshd.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import sshd

WHY_NOT = sshd.available() or (
    "already inside a remote run" if os.environ.get("TDP_REMOTE_RUN") else None
)
# This venv: a "remote" host that is this machine reuses it (inventory key `venv:`).
LOCAL_VENV = sys.prefix


@dataclass
class Lab:
    """Servers that accept `user_key`, one that accepts only another key, and their files."""

    directory: Path
    user_key: Path
    servers: list[sshd.SshServer]
    refusing: sshd.SshServer

    def known_hosts(self, *servers: sshd.SshServer) -> Path:
        path = self.directory / f"known_hosts-{'-'.join(str(s.port) for s in servers)}"
        path.write_text("".join(s.public_host_key_line() for s in servers))
        return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if WHY_NOT:
        pytest.skip(WHY_NOT)
    directory = tmp_path_factory.mktemp("sshlab")
    user_key = sshd.keygen(directory / "user_ed25519")
    other_key = sshd.keygen(directory / "other_ed25519")
    servers = [sshd.start(directory / f"host{i}", user_key.with_suffix(".pub")) for i in range(4)]
    refusing = sshd.start(directory / "refusing", other_key.with_suffix(".pub"))
    try:
        yield Lab(directory, user_key, servers, refusing)
    finally:
        for server in [*servers, refusing]:
            server.kill()
