"""The artefacts of a run: the checkout at HEAD as a tar (`git archive`), copied over SFTP into
a per-run directory the host creates with mktemp(1), and results fetched back the same way."""

from __future__ import annotations

import re
import secrets
import shlex
import stat
import subprocess
from pathlib import Path

import paramiko

from orchestrator.remote.connection import Connection
from orchestrator.remote.errors import ConnectionLostError, RemoteCommandError, RemoteError

ROOT = Path(__file__).resolve().parents[2]
ARCHIVE_NAME = "checkout.tar"
REMOVE_TIMEOUT_S = 30.0
EXTRACT_TIMEOUT_S = 120.0
_SAFE_REMOTE_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")


def archive_head(destination: Path, root: Path = ROOT) -> Path:
    """Write the checkout at HEAD as a tar file (tracked files only, no venv or build output)."""
    try:
        subprocess.run(
            ["git", "-C", str(root), "archive", "--format=tar", "-o", str(destination), "HEAD"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace").strip()
        raise RemoteError(f"git archive of {root} at HEAD failed: {detail or exc}") from exc
    return destination


def run_directory_name(tmpdir: str) -> str:
    """A fresh, unguessable run directory path under the host's temporary directory."""
    if not _SAFE_REMOTE_PATH.match(tmpdir) or ".." in tmpdir.split("/"):
        raise RemoteError(f"the host's temporary directory {tmpdir!r} is not a plain path")
    return f"{tmpdir.rstrip('/')}/tdp-remote.{secrets.token_hex(6)}"


def upload_checkout(
    connection: Connection, archive: Path, run_dir: str, venv: str | None = None
) -> str:
    """Create `run_dir` over SFTP (mkdir fails on an existing name, so it is ours alone, as with
    mktemp(1)), copy the archive into it, unpack it in `checkout`, and link `venv` as the
    checkout's .venv when given. Returns the checkout's path."""
    remote_tar = f"{run_dir}/{ARCHIVE_NAME}"
    checkout = f"{run_dir}/checkout"
    sftp = connection.sftp()
    try:
        sftp.mkdir(run_dir, mode=0o700)
        sftp.put(str(archive), remote_tar)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        error = RemoteError if connection.alive else ConnectionLostError
        raise error(f"SFTP copy of {archive.name} to {run_dir} failed: {exc}") from exc
    finally:
        sftp.close()
    command = (
        f"mkdir {shlex.quote(checkout)} && tar -xf {shlex.quote(remote_tar)} -C "
        f"{shlex.quote(checkout)} && rm -f {shlex.quote(remote_tar)}"
    )
    if venv:
        command += f" && ln -s {shlex.quote(venv)} {shlex.quote(checkout + '/.venv')}"
    try:
        connection.run(command, EXTRACT_TIMEOUT_S)
    except RemoteError as exc:
        raise type(exc)(f"unpacking the checkout: {exc}") from exc
    return checkout


def fetch_tree(connection: Connection, remote_dir: str, local_dir: Path) -> list[Path]:
    """Copy the regular files under `remote_dir` (one level of subdirectories) into `local_dir`."""
    fetched: list[Path] = []
    sftp = connection.sftp()
    try:
        pending = [(remote_dir, local_dir)]
        while pending:
            remote, local = pending.pop()
            try:
                entries = sftp.listdir_attr(remote)
            except FileNotFoundError:
                continue
            local.mkdir(parents=True, exist_ok=True)
            for entry in entries:
                name = entry.filename
                if name in (".", "..") or "/" in name:
                    continue
                mode = entry.st_mode or 0
                if stat.S_ISDIR(mode):
                    pending.append((f"{remote}/{name}", local / name))
                elif stat.S_ISREG(mode):
                    sftp.get(f"{remote}/{name}", str(local / name))
                    fetched.append(local / name)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise ConnectionLostError(f"SFTP download from {remote_dir} failed: {exc}") from exc
    finally:
        sftp.close()
    return fetched


def remove_run_directory(connection: Connection, run_dir: str) -> None:
    """Remove the per-run directory (only a path `make_run_directory` produced)."""
    if not _SAFE_REMOTE_PATH.match(run_dir) or "tdp-remote." not in run_dir:
        raise RemoteCommandError(f"refusing to remove {run_dir!r}: not a run directory")
    connection.run(f"rm -rf -- {shlex.quote(run_dir)}", REMOVE_TIMEOUT_S)
