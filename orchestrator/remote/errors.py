"""Errors of a remote run; each names the host and the step or file that failed."""

from __future__ import annotations

from orchestrator.errors import OrchestratorError


class RemoteError(OrchestratorError):
    """A remote run failed: an inventory, a connection, a preflight check or a remote command."""


class InventoryError(RemoteError):
    """The inventory file or `--hosts` list is malformed; the message names the entry and field."""


class HostKeyError(RemoteError):
    """The server's host key is unknown (and not accepted) or differs from known_hosts."""


class ConnectError(RemoteError):
    """The host could not be reached or refused the key."""


class PreflightError(RemoteError):
    """The host lacks something a run needs; the message names what is missing."""


class ConnectionLostError(RemoteError):
    """The SSH connection dropped while a step was running."""


class RemoteCommandError(RemoteError):
    """A remote command failed or exceeded its timeout."""
