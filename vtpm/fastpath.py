"""The native swtpm-channel fast path: accept, read, TPMLIB_Process and reply in one C call.

The tss2 swtpm TCTI opens a TCP connection per command. Done as separate Python calls (accept,
socket object, recv, framing check, ctypes call, send) that path costs about 10 us more than
swtpm's C loop here; `native/vtpm_fastpath.c` does the same steps in one call with the engine's
lock held, so that only bookkeeping runs in Python, after the client has its answer.

The library is built by `./tdp setup` (scripts/bootstrap.sh) with Debian's gcc against
libtpms-dev into build/native/. Without it the server answers in Python and says so at start.
Set VTPM_FASTPATH to another library path, or to "off" to use the Python path.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtpm.engine import ResponseBuffer, TpmEngine
from vtpm.protocol import RECV_SIZE

LIBRARY_ENV = "VTPM_FASTPATH"
LIBRARY_OFF = "off"
DEFAULT_LIBRARY = Path(__file__).resolve().parents[1] / "build" / "native" / "libvtpm_fastpath.so"


class Status(enum.IntEnum):
    """enum fastpath_status (native/vtpm_fastpath.c)."""

    ANSWERED = 0
    RECEIVED = 1
    NOTHING_YET = 2
    CLOSED = 3
    TPM_FAILED = 4
    ACCEPT_FAILED = 5


class FastpathResult(ctypes.Structure):
    """struct fastpath_result (native/vtpm_fastpath.c)."""

    _fields_ = [
        ("status", ctypes.c_int32),
        ("received", ctypes.c_int32),
        ("sent", ctypes.c_int32),
        ("response_len", ctypes.c_int32),
        ("error", ctypes.c_int32),
    ]


@dataclass(frozen=True)
class Accepted:
    """One connection the fast path accepted, and what became of its first bytes."""

    fd: int
    status: Status
    received: int  # bytes the client had sent
    data: bytes = b""  # RECEIVED: the bytes for the Python path
    unsent: bytes = b""  # ANSWERED: the tail of the response the socket did not take yet


class FastPath:
    """The loaded native library; one per server (it owns the receive buffer)."""

    def __init__(self, library: Path) -> None:
        self.library = library
        lib = ctypes.CDLL(str(library))
        fn = lib.vtpm_fastpath_accept
        fn.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(FastpathResult),
        ]
        fn.restype = ctypes.c_int
        self._accept: Any = fn
        self._buffer = (ctypes.c_ubyte * RECV_SIZE)()
        self._result = FastpathResult()
        self._result_ref = ctypes.byref(self._result)

    @classmethod
    def load(cls) -> tuple[FastPath | None, str]:
        """The fast path if its library is there (or named by VTPM_FASTPATH), and why not."""
        setting = os.environ.get(LIBRARY_ENV, "")
        if setting == LIBRARY_OFF:
            return None, f"{LIBRARY_ENV}={LIBRARY_OFF}"
        library = Path(setting) if setting else DEFAULT_LIBRARY
        if not library.is_file():
            return None, f"{library} not built (./tdp setup builds it)"
        try:
            return cls(library), ""
        except (OSError, AttributeError) as exc:
            return None, f"{library}: {exc}"

    def accept(self, engine: TpmEngine, listener_fd: int, locality: int) -> Accepted | None:
        """Accept one connection on `listener_fd`; answer its command if it is one whole
        swtpm-framed command and the TPM is on. None if nothing was waiting; OSError if accept
        failed."""
        return engine.run_native(locality, self._accept_locked, listener_fd)

    def _accept_locked(self, tpm: ResponseBuffer | None, listener_fd: int) -> Accepted | None:
        refs = (
            (None, None, None) if tpm is None else (tpm.pointer_ref, tpm.length_ref, tpm.size_ref)
        )
        fd = self._accept(listener_fd, self._buffer, RECV_SIZE, *refs, self._result_ref)
        result = self._result
        if fd < 0:
            if result.error in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return None
            raise OSError(result.error, os.strerror(result.error))
        try:
            status = Status(result.status)
            if status is Status.RECEIVED:
                return Accepted(
                    fd,
                    status,
                    result.received,
                    data=bytes(memoryview(self._buffer)[: result.received]),
                )
            if status is Status.ANSWERED and tpm is not None and result.sent < result.response_len:
                return Accepted(
                    fd, status, result.received, unsent=tpm.read(result.sent, result.response_len)
                )
            return Accepted(fd, status, result.received)
        except BaseException:  # the descriptor is ours until a socket object adopts it
            os.close(fd)
            raise
