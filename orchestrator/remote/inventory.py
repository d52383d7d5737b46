"""Which hosts a remote run reaches: `--hosts USER@HOST[:PORT],...` or a YAML inventory file.

Inventory format (YAML)::

    defaults: {user: tester, port: 22, identity: ~/.ssh/id_ed25519}
    hosts:
      - name: lab-spr-1          # free text, shown in the table; never reaches a shell
        address: 10.0.0.5        # DNS name or IP address; anything else is refused
        user: root
        port: 2222
        identity: keys/lab.key
        labels: [tdx, tdp]
        venv: /opt/tdp/.venv     # optional: reuse this virtual environment on the host

A host name is display text; the address is validated before any connection, so neither can
inject into a shell (OpenSSH's ssh_config(5) HostName takes the same forms).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.remote.errors import InventoryError

DEFAULT_PORT = 22
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
_HOST_KEYS = {"name", "address", "user", "port", "identity", "labels", "venv"}


@dataclass(frozen=True)
class Host:
    """One host of a run: where to connect, as whom, with which key, and its labels."""

    name: str
    address: str
    user: str
    port: int = DEFAULT_PORT
    identity: Path | None = None
    labels: tuple[str, ...] = ()
    venv: str | None = field(default=None)

    @property
    def label(self) -> str:
        """The name for a terminal: control characters shown as '?', so none reach it."""
        return printable(self.name)

    @property
    def target(self) -> str:
        """USER@ADDRESS:PORT, for lines a person reads."""
        return f"{self.user}@{self.address}:{self.port}"


def printable(text: str) -> str:
    """`text` with control characters shown as '?': names and remote output never drive a
    terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def check_address(address: str) -> str | None:
    """Why `address` is not a DNS name or IP address, or None when it is one."""
    try:
        ipaddress.ip_address(address.strip("[]"))
        return None
    except ValueError:
        pass
    if _DNS_NAME.match(address):
        return None
    return f"host address {address!r} is neither a DNS name nor an IP address"


def check_user(user: str) -> str | None:
    """Why `user` is not a POSIX user name, or None when it is one."""
    return None if _USER.match(user) else f"user name {user!r} is not a POSIX user name"


def parse_hosts(text: str, default_user: str, identity: Path | None = None) -> list[Host]:
    """Hosts from the short form USER@HOST[:PORT],...; an IPv6 address goes in brackets.

    Addresses are checked later, per host, so one bad entry fails that host and not the run.
    """
    hosts = []
    for index, raw in enumerate(part.strip() for part in text.split(",")):
        if not raw:
            continue
        user, _, rest = raw.rpartition("@")
        address, port = rest, DEFAULT_PORT
        bracket = re.match(r"^\[([^\]]*)\](?::(\d+))?$", rest)
        if bracket:
            address, port = bracket.group(1), int(bracket.group(2) or DEFAULT_PORT)
        elif rest.count(":") == 1:
            address, port_text = rest.split(":")
            if not port_text.isdigit():
                raise InventoryError(
                    f"--hosts entry {index + 1} ({raw!r}): port {port_text!r} is not a number"
                )
            port = int(port_text)
        if not 0 < port < 65536:
            raise InventoryError(f"--hosts entry {index + 1} ({raw!r}): port {port} out of range")
        hosts.append(
            Host(name=raw, address=address, user=user or default_user, port=port, identity=identity)
        )
    if not hosts:
        raise InventoryError("--hosts names no host")
    return hosts


def load_inventory(path: Path, default_user: str, identity: Path | None = None) -> list[Host]:
    """Hosts from a YAML inventory file (format in this module's docstring)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InventoryError(f"inventory {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("hosts"), list):
        raise InventoryError(f"inventory {path}: needs a top-level 'hosts' list")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise InventoryError(f"inventory {path}: 'defaults' must be a mapping")
    hosts = []
    for index, entry in enumerate(data["hosts"]):
        where = f"inventory {path}, hosts[{index}]"
        if not isinstance(entry, dict):
            raise InventoryError(f"{where}: must be a mapping, not {type(entry).__name__}")
        merged: dict[str, Any] = {**defaults, **entry}
        unknown = set(merged) - _HOST_KEYS
        if unknown:
            raise InventoryError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        if "address" not in merged:
            raise InventoryError(f"{where}: missing 'address'")
        port = merged.get("port", DEFAULT_PORT)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise InventoryError(f"{where}: port {port!r} is not 1-65535")
        labels = merged.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise InventoryError(f"{where}: 'labels' must be a list of strings")
        key = merged.get("identity")
        key_path = (path.parent / Path(str(key)).expanduser()) if key else identity
        venv = merged.get("venv")
        hosts.append(
            Host(
                name=str(merged.get("name", merged["address"])),
                address=str(merged["address"]),
                user=str(merged.get("user", default_user)),
                port=port,
                identity=key_path,
                labels=tuple(labels),
                venv=str(venv) if venv else None,
            )
        )
    if not hosts:
        raise InventoryError(f"inventory {path}: 'hosts' is empty")
    return hosts
