"""One SSH session to a host (paramiko): key authentication, host keys checked against a
known_hosts file, remote commands with timeouts, and SFTP.

Host keys follow OpenSSH's StrictHostKeyChecking (ssh_config(5)): a key already in known_hosts
must match; an unknown key is refused unless the caller accepts new keys ("accept-new"), and a
changed key is always refused. Every command goes through `sh -c` with one quoted argument and
under coreutils `timeout`, so it ends on the host even when the connection is gone.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import paramiko

from orchestrator.remote.errors import (
    ConnectError,
    ConnectionLostError,
    HostKeyError,
    RemoteCommandError,
)
from orchestrator.remote.inventory import Host, check_address, check_user

CONNECT_TIMEOUT_S = 15.0
SFTP_TIMEOUT_S = 120.0
TIMEOUT_EXIT = 124  # coreutils timeout(1): the command timed out
_KNOWN_HOSTS_LOCK = threading.Lock()


def fingerprint(key: paramiko.PKey) -> str:
    """SHA256:... as `ssh-keygen -l` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(host: Host) -> str:
    """The name OpenSSH files a host key under: ADDRESS, or [ADDRESS]:PORT off port 22."""
    return host.address if host.port == 22 else f"[{host.address}]:{host.port}"


class _NewKeyPolicy(paramiko.MissingHostKeyPolicy):
    """An unknown host key: refused, or (accept-new) recorded in the known_hosts file."""

    def __init__(self, known_hosts: Path, accept_new: bool) -> None:
        self.known_hosts = known_hosts
        self.accept_new = accept_new

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if not self.accept_new:
            raise HostKeyError(
                f"host key for {hostname} is not in {self.known_hosts} ({key.get_name()} "
                f"{fingerprint(key)}); refused: check it and pass --accept-new-host-keys"
            )
        with _KNOWN_HOSTS_LOCK:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            with self.known_hosts.open("a") as out:
                out.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


def _load_key(path: Path) -> paramiko.PKey:
    """The private key in `path`; errors name the file, never its content."""
    if not path.is_file():
        raise ConnectError(f"identity file {path} does not exist")
    try:
        return paramiko.PKey.from_path(str(path))
    except paramiko.PasswordRequiredException as exc:
        raise ConnectError(f"identity {path} is encrypted; load it into ssh-agent") from exc
    except TypeError as exc:  # cryptography's way of saying a PEM key needs its passphrase
        if "password" in str(exc):
            raise ConnectError(f"identity {path} is encrypted; load it into ssh-agent") from exc
        raise ConnectError(
            f"identity {path} is not a private key paramiko can read: {exc}"
        ) from exc
    except (paramiko.SSHException, ValueError, OSError) as exc:
        raise ConnectError(
            f"identity {path} is not a private key paramiko can read: {exc}"
        ) from exc


@dataclass
class CommandResult:
    """What a remote command returned: its exit status and combined output."""

    status: int
    output: bytes
    seconds: float


class Connection:
    """An authenticated SSH session to one host."""

    def __init__(self, host: Host, client: paramiko.SSHClient) -> None:
        self.host = host
        self._client = client

    @classmethod
    def open(
        cls,
        host: Host,
        known_hosts: Path,
        accept_new: bool = False,
        timeout: float = CONNECT_TIMEOUT_S,
    ) -> Connection:
        """Connect and authenticate with a key; host keys are checked as this module says."""
        for problem in (check_address(host.address), check_user(host.user)):
            if problem:
                raise ConnectError(f"refused before connecting: {problem}")
        client = paramiko.SSHClient()
        if known_hosts.exists():
            with _KNOWN_HOSTS_LOCK:
                try:
                    client.load_host_keys(str(known_hosts))
                except (OSError, paramiko.SSHException) as exc:
                    raise HostKeyError(f"known_hosts file {known_hosts}: {exc}") from exc
        client.set_missing_host_key_policy(_NewKeyPolicy(known_hosts, accept_new))
        identity = host.identity
        key = _load_key(identity) if identity is not None else None
        try:
            client.connect(
                host.address,
                port=host.port,
                username=host.user,
                pkey=key,
                look_for_keys=identity is None,
                allow_agent=identity is None,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"host key for {known_hosts_name(host)} CHANGED: {known_hosts} has "
                f"{exc.expected_key.get_name()} {fingerprint(exc.expected_key)}, the server "
                f"offered {exc.key.get_name()} {fingerprint(exc.key)}; refused (remove the old "
                "line only if you know why the key changed)"
            ) from exc
        except HostKeyError:
            client.close()
            raise
        except paramiko.AuthenticationException as exc:
            client.close()
            offered = f"key {identity}" if identity else "the agent's and default keys"
            raise ConnectError(
                f"authentication refused for {host.user}: {offered} not accepted"
            ) from exc
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            raise ConnectError(f"cannot reach {host.target}: {exc or type(exc).__name__}") from exc
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(5)
        return cls(host, client)

    @property
    def alive(self) -> bool:
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def run(
        self, command: str, timeout: float, log: BinaryIO | None = None, check: bool = True
    ) -> CommandResult:
        """Run `command` with `sh -c` under `timeout`; stream its output to `log`.

        Raises ConnectionLostError when the session drops, RemoteCommandError on a timeout or
        (with `check`) a non-zero exit status.
        """
        wrapped = f"timeout -k 5 {max(1, int(timeout))} sh -c {shlex.quote(command)}"
        start = time.monotonic()
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectionLostError("connection lost: the SSH session is closed")
        try:
            channel = transport.open_session(timeout=CONNECT_TIMEOUT_S)
            channel.set_combine_stderr(True)
            channel.settimeout(0.5)
            channel.exec_command(wrapped)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise ConnectionLostError(f"connection lost: could not start a command: {exc}") from exc
        output = bytearray()
        deadline = start + timeout + 10
        try:
            while True:
                try:
                    chunk = channel.recv(65536)
                except TimeoutError:
                    chunk = None
                except (OSError, EOFError) as exc:
                    raise ConnectionLostError(f"connection lost: {exc}") from exc
                if chunk:
                    output += chunk
                    if log is not None:
                        log.write(chunk)
                        log.flush()
                elif chunk == b"":
                    break
                if time.monotonic() > deadline:
                    raise RemoteCommandError(f"no end after {timeout:.0f} s (timed out)")
                if not transport.is_active():
                    raise ConnectionLostError("connection lost while the command ran")
            if not channel.status_event.wait(5) and not channel.exit_status_ready():
                raise ConnectionLostError("connection lost before the command's exit status")
            status = channel.recv_exit_status()
        finally:
            channel.close()
        seconds = time.monotonic() - start
        if status == -1:
            raise ConnectionLostError("connection lost: the command ended without an exit status")
        if status == TIMEOUT_EXIT:
            raise RemoteCommandError(f"timed out after {timeout:.0f} s")
        if check and status != 0:
            raise RemoteCommandError(f"exit status {status}")
        return CommandResult(status, bytes(output), seconds)

    def sftp(self) -> paramiko.SFTPClient:
        try:
            sftp = self._client.open_sftp()
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(SFTP_TIMEOUT_S)  # no SFTP request waits longer than this
            return sftp
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise ConnectionLostError(f"SFTP could not start: {exc}") from exc

    def close(self) -> None:
        self._client.close()
