"""pytest plugin that runs tpm2-pytss's upstream suite against `vtpm serve --wipe-on-power-cycle`.

The suite (test/TSS2_BaseTest.py) starts a fresh swtpm for every test through
`TpmSimulator.getSimulator()`. This plugin replaces that factory: one `vtpm serve` runs for the
whole session, and each simulator "start" power-cycles it through the mssim platform port. With
--wipe-on-power-cycle a power-on forgets all NV and re-manufactures, so every test gets a fresh
TPM: hierarchies and their auth values, NV indices and counters, persistent handles, PCR bank
allocation and dictionary-attack state all start over, exactly as a new swtpm state dir would.

Load it with `-p tests.integration.vtpm_suite.plugin` and VTPM_SUITE_ROOT=<unpacked sdist>.
"""

from __future__ import annotations

import importlib
import os
import socket
import struct
import sys
from typing import Any

import pytest
from tpm2_pytss import TCTILdr  # bound now: the suite's test_import later unloads tpm2_pytss

from tests.support.vtpm_process import VtpmProcess, launch_l2_serve, launch_vtpm
from vtpm.protocol import MssimCommand

SUITE_ROOT_ENV = "VTPM_SUITE_ROOT"
TARGET_ENV = "VTPM_SUITE_TARGET"  # "direct" (vtpm serve) or "l2" (invoke run --serve)
SUITE_BASE_MODULE = "test.TSS2_BaseTest"
PLATFORM_TIMEOUT = 60.0

_server: VtpmProcess | None = None


def _shared_server() -> VtpmProcess:
    global _server
    if _server is None or _server.proc.poll() is not None:
        if os.environ.get(TARGET_ENV, "direct") == "l2":
            _server = launch_l2_serve()
        else:
            _server = launch_vtpm("--wipe-on-power-cycle")
    return _server


def power_cycle(server: VtpmProcess) -> None:
    """POWER_OFF then POWER_ON (+NV_ON) on the platform port; fail loudly on a non-zero ack."""
    with socket.create_connection(
        (server.host, server.platform_port), timeout=PLATFORM_TIMEOUT
    ) as sock:
        for sig in (MssimCommand.POWER_OFF, MssimCommand.POWER_ON, MssimCommand.NV_ON):
            sock.sendall(struct.pack(">I", sig))
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    raise ConnectionError(f"platform port closed during {sig.name}")
                reply += chunk
            if reply != bytes(4):
                raise RuntimeError(f"platform {sig.name} failed: ack {reply.hex()}")
        sock.sendall(struct.pack(">I", MssimCommand.SESSION_END))


class VtpmSimulator:
    """Stands in for the suite's SwtpmSimulator: same attributes, backed by our shared server."""

    exe = "vtpm serve"
    libname = "libtss2-tcti-swtpm.so"

    def __init__(self) -> None:
        self._port: int | None = None
        self.tpm: Any = None

    def start(self) -> None:
        server = _shared_server()
        power_cycle(server)  # wipe + re-manufacture; the suite then sends TPM2_Startup(CLEAR)
        self._port = server.port
        self.tpm = server.proc

    def close(self) -> None:
        """Nothing to stop: the next start() power-cycles to a fresh TPM."""

    @property
    def tcti_name_conf(self) -> str | None:
        if self._port is None:
            return None
        return f"swtpm:host=127.0.0.1,port={self._port}"

    def get_tcti(self) -> Any:
        if self._port is None:
            return None
        return TCTILdr("swtpm", f"host=127.0.0.1,port={self._port}")

    def __str__(self) -> str:
        return self.exe


def pytest_configure(config: pytest.Config) -> None:
    """Import the suite's base module first and point its simulator factory at vtpm serve."""
    root = os.environ.get(SUITE_ROOT_ENV)
    if not root:
        raise pytest.UsageError(f"{SUITE_ROOT_ENV} must name the unpacked tpm2-pytss sdist")
    if root not in sys.path:
        sys.path.insert(0, root)
    base = importlib.import_module(SUITE_BASE_MODULE)
    if not str(getattr(base, "__file__", "")).startswith(root):
        raise pytest.UsageError(f"{SUITE_BASE_MODULE} resolved to {base.__file__}, not {root}")
    base.TpmSimulator.getSimulator = staticmethod(lambda: VtpmSimulator())


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the shared server."""
    global _server
    if _server is not None:
        code, _out, err = _server.stop()
        if code != 0:
            print(f"vtpm serve exited with {code}: {err}", file=sys.stderr)
        _server = None
